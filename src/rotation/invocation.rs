//! A call of Secrets Manager's rotation function (`crate::lambda`): which rotation it may run,
//! decided from the step record before `begin::decide`'s usual rules.

use super::ports::{SecretMeta, Stage};
use super::record::{State, Step, StepRecord};
use super::{Outcome, Request, RotationError};

/// Secrets Manager calls a rotation function once per step, naming the rotation by the version
/// it made for it (ClientRequestToken): that is the rotation id. createSecret may begin the
/// rotation; every call runs the steps up to its own, so a call that finds its work done (by an
/// earlier call, or by the queue's worker) succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub token: String,
    /// The last step this call runs.
    pub through: Step,
}

impl Invocation {
    pub(super) fn begins(&self) -> bool {
        self.through == Step::CreatePending
    }
}

/// What a call of Secrets Manager's finds in the record, before `begin::decide`'s usual rules.
pub(super) enum Invoked {
    /// Not a call, or one the usual rules serve: resume what is in progress, or begin.
    Record(Option<StepRecord>),
    /// The call's rotation failed: Secrets Manager asks again, so it resumes where it stopped.
    Retry(StepRecord),
    Answer(Outcome),
    /// The call names the version where a finished rotation of ours left AWSPENDING, and an
    /// edit moved AWSCURRENT on since (`StepRecord::left_pending`): the label goes, and the call
    /// fails (`RotationError::StrandedPending`).
    Stranded(String),
}

/// A call names its rotation (`Invocation`): it may only run that one. Its rotation finished:
/// nothing to do. Failed: Secrets Manager retries it, so does this (every step checks what is
/// done; a cause that needs a person fails it again). Not begun, after createSecret: Secrets
/// Manager's configuration test.
pub(super) fn invoked(
    meta: &SecretMeta,
    existing: Option<StepRecord>,
    request: &Request,
) -> Result<Invoked, RotationError> {
    let Some(call) = &request.invocation else {
        return Ok(Invoked::Record(existing));
    };
    let token = &call.token;
    let ours = existing
        .as_ref()
        .is_some_and(|r| r.rotation_id.as_deref() == Some(token));
    // AWSCURRENT on the token: the rotation is complete, whatever the record says (it may name
    // a later failure, or have been lost), as AWS's own rotation functions answer. A record still
    // in progress has clean-up left (AWSPENDING, the record): resumed below.
    if meta.version_with(Stage::Current) == Some(token.as_str())
        && !(ours && existing.as_ref().is_some_and(StepRecord::is_in_progress))
    {
        return Ok(Invoked::Answer(complete(meta, token)));
    }
    // RotateSecret does not start while AWSPENDING is on any version but AWSCURRENT's: it calls
    // the function with that one. Answered "complete", every later rotation would be this one
    // again, and nothing would rotate.
    if meta.version_with(Stage::Pending) == Some(token.as_str())
        && existing
            .as_ref()
            .is_some_and(|r| !r.is_in_progress() && r.left_pending() == Some(token.as_str()))
    {
        return Ok(Invoked::Stranded(token.clone()));
    }
    let Some(r) = existing else {
        return Ok(if call.begins() {
            Invoked::Record(None)
        } else {
            Invoked::Answer(not_begun(meta, token))
        });
    };
    match r.state {
        State::InProgress if ours => Ok(Invoked::Record(Some(r))),
        State::InProgress => Err(RotationError::OtherRotation {
            secret: meta.arn.clone(),
            asked: token.clone(),
            running: r.rotation_id.unwrap_or_default(),
        }),
        State::Finished if ours => Ok(Invoked::Answer(complete(meta, token))),
        State::Failed if ours => Ok(Invoked::Retry(r)),
        State::Aborted if ours => Err(RotationError::WasAborted {
            secret: meta.arn.clone(),
            rotation_id: token.clone(),
        }),
        _ if call.begins() => Ok(Invoked::Record(Some(r))),
        _ => Ok(Invoked::Answer(not_begun(meta, token))),
    }
}

fn complete(meta: &SecretMeta, token: &str) -> Outcome {
    Outcome::Skipped {
        secret_arn: meta.arn.clone(),
        why: format!("rotation {token} is complete"),
    }
}

fn not_begun(meta: &SecretMeta, token: &str) -> Outcome {
    Outcome::NotBegun {
        secret_arn: meta.arn.clone(),
        rotation_id: token.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::record::Plan;

    fn meta(current: &str, pending: Option<&str>) -> SecretMeta {
        let mut versions = vec![(current.to_owned(), vec!["AWSCURRENT".to_owned()])];
        versions.extend(pending.map(|p| (p.to_owned(), vec!["AWSPENDING".to_owned()])));
        SecretMeta {
            deleted: false,
            arn: "arn:s".into(),
            versions,
            rotation_enabled: true,
            rotation_lambda: Some("arn:aws:lambda:r:1:function:f".into()),
            name: "s".into(),
            kms_key_id: None,
            tags: Vec::new(),
        }
    }

    fn record(id: &str, state: State, step: Step) -> StepRecord {
        let plan = Plan {
            current_version: "v0".into(),
            current_user: "app".into(),
            target_user: "app_clone".into(),
            proxy_secret_id: None,
            proxy_version: None,
            pending_version: None,
            pending_left: None,
        };
        let mut r = StepRecord::begin("arn:s", id.into(), plan, None, 1);
        r.state = state;
        r.step = step;
        r
    }

    fn call(token: &str, through: Step) -> Request {
        Request {
            invocation: Some(Invocation {
                token: token.into(),
                through,
            }),
            ..Request::default()
        }
    }

    fn decide(meta: &SecretMeta, r: Option<StepRecord>, req: &Request) -> String {
        match invoked(meta, r, req) {
            Ok(Invoked::Record(r)) => format!("record {:?}", r.map(|r| r.state)),
            Ok(Invoked::Retry(r)) => format!("retry {}", r.step),
            Ok(Invoked::Answer(Outcome::Skipped { .. })) => "complete".into(),
            Ok(Invoked::Answer(Outcome::NotBegun { .. })) => "not begun".into(),
            Ok(Invoked::Answer(other)) => format!("{other:?}"),
            Ok(Invoked::Stranded(v)) => format!("unstrand {v}"),
            Err(e) => format!(
                "error {}",
                if e.is_retryable() {
                    "retryable"
                } else {
                    "fatal"
                }
            ),
        }
    }

    #[test]
    fn a_call_runs_only_the_rotation_it_names() {
        let m = meta("v0", Some("t"));
        let create = call("t", Step::CreatePending);
        let set = call("t", Step::UpdateProxy);
        // Nothing recorded: createSecret begins, the others find nothing begun.
        assert_eq!(decide(&m, None, &create), "record None");
        assert_eq!(decide(&m, None, &set), "not begun");
        // Its own rotation in progress: resumed; another one: wait for it.
        let mine = record("t", State::InProgress, Step::Test);
        assert_eq!(decide(&m, Some(mine), &set), "record Some(InProgress)");
        let other = record("x", State::InProgress, Step::Test);
        assert_eq!(decide(&m, Some(other), &set), "error retryable");
        // Failed: retried where it stopped; aborted: refused.
        let failed = record("t", State::Failed, Step::Test);
        assert_eq!(decide(&m, Some(failed), &set), "retry test");
        let aborted = record("t", State::Aborted, Step::Test);
        assert_eq!(decide(&m, Some(aborted), &create), "error fatal");
        // Another rotation's record, finished: createSecret may begin; later steps find nothing.
        let before = record("x", State::Finished, Step::Done);
        assert_eq!(
            decide(&m, Some(before.clone()), &create),
            "record Some(Finished)"
        );
        assert_eq!(decide(&m, Some(before), &set), "not begun");
    }

    #[test]
    fn a_call_whose_version_is_awscurrent_is_complete_unless_clean_up_is_left() {
        let m = meta("t", Some("t"));
        let finish = call("t", Step::Finish);
        assert_eq!(decide(&m, None, &finish), "complete");
        let failed_later = record("t", State::Failed, Step::Finish);
        assert_eq!(decide(&m, Some(failed_later), &finish), "complete");
        let lost = record("x", State::Finished, Step::Done);
        assert_eq!(decide(&m, Some(lost), &finish), "complete");
        // Crashed after the compare-and-swap: AWSPENDING and the record are left to clean up.
        let crashed = record("t", State::InProgress, Step::Finish);
        assert_eq!(
            decide(&m, Some(crashed), &finish),
            "record Some(InProgress)"
        );
    }

    /// A finished rotation of ours left AWSPENDING on its version, and an edit moved AWSCURRENT on:
    /// RotateSecret calls with that version. Every step's call takes the label off and fails,
    /// so that the next rotation begins anew; once it is off, a call with it finds nothing.
    #[test]
    fn a_call_naming_the_version_a_finished_rotation_left_awspending_on_unstrands_it() {
        let edited = meta("e1", Some("t"));
        let finished = record("t", State::Finished, Step::Done);
        for through in [Step::CreatePending, Step::UpdateProxy, Step::Finish] {
            assert_eq!(
                decide(&edited, Some(finished.clone()), &call("t", through)),
                "unstrand t"
            );
        }
        // A rotation refused since (a bad edit) carries the version on.
        let refused = StepRecord::failed_to_begin("arn:s", "bad".into(), Some(&finished), 2);
        assert_eq!(
            decide(&edited, Some(refused), &call("t", Step::CreatePending)),
            "unstrand t"
        );
        // Gone from it: the call is not Secrets Manager's rotation.
        let cleared = meta("e1", None);
        assert_eq!(
            decide(&cleared, Some(finished), &call("t", Step::Finish)),
            "complete"
        );
    }

    #[test]
    fn a_request_of_the_queue_is_not_a_call() {
        let m = meta("v0", None);
        let r = record("x", State::Failed, Step::Test);
        assert_eq!(
            decide(&m, Some(r), &Request::default()),
            "record Some(Failed)"
        );
    }
}
