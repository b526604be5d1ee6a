//! What to do with a request, decided from what was read: pure functions of the record as the
//! lease found it, the labels, the request and the time, unit-tested table-style. `rotator`
//! reads, asks them, and acts on the answer.

use std::time::Duration;

use super::errors::RotationError;
use super::invocation::{invoked, Invoked};
use super::ports::SecretMeta;
use super::record::{BeginIf, Plan, StepRecord};
use super::request::{Outcome, Request};
use super::run::Earlier;
use super::settings::Settings;
use crate::mutants::{self, Mutant};

/// What to do with a request, given the record as the lease found it.
#[derive(Debug)]
pub(super) enum Decision {
    /// Nothing to run: a call of Secrets Manager's whose rotation is complete, or never began.
    Answer(Outcome),
    /// No new rotation is needed: the request was handled, or the last one is too recent.
    Skip(String),
    /// A rotation in progress is always finished first, whatever was asked.
    Resume(StepRecord),
    /// Secrets Manager retries its failed rotation: in progress again, for everyone, from where
    /// it stopped.
    Retry(StepRecord),
    /// Plan a new rotation (then `new_rotation`); the last rotation's record, if any.
    Begin(Option<StepRecord>),
    /// Take AWSPENDING off this version, where a finished rotation left it, and refuse the call
    /// (`invocation::Invoked::Stranded`).
    Unstrand(String),
}

/// Begin, resume, retry Secrets Manager's call, skip, or refuse (`Err`).
pub(super) fn decide(
    meta: &SecretMeta,
    found: Option<StepRecord>,
    request: &Request,
    now: u64,
) -> Result<Decision, RotationError> {
    let found = match invoked(meta, found, request)? {
        Invoked::Answer(outcome) => return Ok(Decision::Answer(outcome)),
        Invoked::Stranded(version) => return Ok(Decision::Unstrand(version)),
        Invoked::Retry(mut r) => {
            r.retried(now);
            return Ok(Decision::Retry(r));
        }
        Invoked::Record(found) => found,
    };
    Ok(match found {
        Some(mut r) if r.is_in_progress() => {
            r.resumed(now);
            Decision::Resume(r)
        }
        Some(previous) => match skip_reason(&previous, request, now) {
            Some(why) => Decision::Skip(why),
            None => Decision::Begin(Some(previous)),
        },
        None => Decision::Begin(None),
    })
}

/// The id of a new rotation, once AWSPENDING is known to be free for it, and what earlier
/// attempts may have written under it:
/// - Secrets Manager's call begins the rotation it made AWSPENDING for (its token), when the
///   minimum interval has passed;
/// - a version AWSPENDING that a rotation of ours left unfinished is taken over by a new id
///   (`fresh_id`);
/// - otherwise AWSPENDING elsewhere is another rotator's, unless Secrets Manager made it for
///   this tool's own rotation function: then the queue's worker begins that rotation, and the
///   function's calls find it done or in progress.
///
/// Only an id made here is `Earlier::Nothing`. One that Secrets Manager names (its call, or its
/// token taken over by a worker) may have a value already, from an attempt whose record was
/// lost: AWS refuses the same token with another value, so its steps look before they write.
pub(super) fn new_rotation(
    meta: &SecretMeta,
    plan: &Plan,
    previous: Option<&StepRecord>,
    request: &Request,
    settings: &Settings,
    now: u64,
    fresh_id: String,
) -> Result<(String, Earlier), RotationError> {
    let pending = plan.pending_version.as_deref();
    if let Some(call) = &request.invocation {
        if pending != Some(call.token.as_str()) {
            return Err(RotationError::NotStartedBySecretsManager {
                secret: meta.arn.clone(),
                token: call.token.clone(),
                why: match pending {
                    None => "that version is not AWSPENDING".to_owned(),
                    Some(v) => format!("AWSPENDING is on version {v}"),
                },
            });
        }
        if let Some(why) = previous.and_then(|p| too_soon(p, request, now)) {
            return Err(RotationError::TooSoon {
                secret: meta.arn.clone(),
                why,
            });
        }
        return Ok((call.token.clone(), Earlier::Unknown));
    }
    match pending {
        None => Ok((fresh_id, Earlier::Nothing)),
        Some(v) if left_by_us(v, previous) => Ok((fresh_id, Earlier::Nothing)),
        Some(v) if settings.rotated_by_own_function(meta) => {
            let earlier = if mutants::on(Mutant::NoTakeoverRead) {
                Earlier::Nothing
            } else {
                Earlier::Unknown
            };
            Ok((v.to_owned(), earlier))
        }
        Some(v) => Err(RotationError::ForeignPending {
            secret: meta.arn.clone(),
            version: v.to_owned(),
        }),
    }
}

/// A refusal to begin that the record keeps, as a failed rotation of this secret. Refusing a
/// call of Secrets Manager's is not one, nor is a rotator attached that this process does not
/// know as this tool (its rotation's record stays); a retryable failure leaves nothing.
pub(super) fn recorded_refusal(e: &RotationError) -> bool {
    let refused_call = matches!(
        e,
        RotationError::TooSoon { .. }
            | RotationError::NotStartedBySecretsManager { .. }
            | RotationError::ManagedRotation { .. }
    );
    !e.is_retryable() && !refused_call
}

/// `version` is the pending version of a rotation of ours that failed or was aborted, as the
/// record (the last one written for the secret) says; or the version a finished rotation of ours
/// made AWSCURRENT, where finish leaves AWSPENDING, which a later PutSecretValue (a person's edit)
/// strands on it once AWSCURRENT moves on.
pub(crate) fn left_by_us(version: &str, record: Option<&StepRecord>) -> bool {
    record.is_some_and(|p| {
        (p.is_unfinished() && p.rotation_id.as_deref() == Some(version))
            || p.left_pending() == Some(version)
            || p.unfinished_versions.iter().any(|v| v == version)
    })
}

/// Why a request needs no new rotation, if it does not. Checked under the lease, so two workers
/// holding copies of one request cannot both decide to rotate.
pub(super) fn skip_reason(previous: &StepRecord, request: &Request, now: u64) -> Option<String> {
    // Secrets Manager's calls name their rotation: `decide` asks `invoked`.
    if request.invocation.is_some() {
        return None;
    }
    if let (Some(asked), Some(done)) = (&request.request_id, &previous.request_id) {
        if asked == done {
            return Some(format!(
                "request {asked} was already handled ({})",
                previous.state.as_str()
            ));
        }
    }
    if request.force {
        return None;
    }
    too_soon(previous, request, now)
}

/// Why the minimum interval has not passed since the last success `record` knows of, if not.
pub(super) fn too_soon(record: &StepRecord, request: &Request, now: u64) -> Option<String> {
    let (min, last) = (request.min_interval?, record.last_success_at?);
    let age = Duration::from_millis(now.saturating_sub(last));
    (age < min).then(|| {
        format!(
            "the last rotation finished {} ago, less than the minimum interval of {}: credentials that clients read before it must keep working until their caches refresh",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(min)
        )
    })
}

pub(super) fn new_id() -> String {
    crate::entropy::uuid_v4().to_string()
}

/// A new rotation's record.
pub(super) fn new_record(
    arn: &str,
    rotation_id: String,
    plan: Plan,
    request: &Request,
    previous: Option<&StepRecord>,
    now: u64,
) -> StepRecord {
    let mut record = StepRecord::begin(arn, rotation_id, plan, previous, now);
    record.request_id = request.request_id.clone();
    record.reason = request.reason.clone();
    record
}

/// `decide`'s rules for beginning a new rotation, as conditions the store can check in the write that
/// takes the lease: no rotation in progress, no reason to skip (`skip_reason`), labels not stale
/// (`labels_stale`).
pub(super) fn begin_if(plan: &Plan, request: &Request, now: u64) -> BeginIf {
    BeginIf {
        current_version: plan.current_version.clone(),
        request_id: request.request_id.clone(),
        last_success_by: request
            .min_interval
            .filter(|min| !request.force && !min.is_zero())
            .map(|min| now.saturating_sub(min.as_millis() as u64)),
    }
}

/// A record that is not in progress and names a rotation id other than AWSCURRENT as read:
/// another holder finished (or failed after its compare-and-swap) since, so the labels read
/// before the lease may be stale.
pub(super) fn labels_stale(r: &StepRecord, current_version: Option<&str>) -> bool {
    !r.is_in_progress() && r.rotation_id.is_some() && r.rotation_id.as_deref() != current_version
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::invocation::Invocation;
    use crate::rotation::record::{State, Step};

    const HOUR: u64 = 3_600_000;
    const NOW: u64 = 100 * HOUR;
    const OWN: &str = "arn:aws:lambda:r:1:function:rds-rotator";

    fn meta(pending: Option<&str>, function: Option<&str>) -> SecretMeta {
        let mut versions = vec![("v0".to_owned(), vec!["AWSCURRENT".to_owned()])];
        versions.extend(pending.map(|p| (p.to_owned(), vec!["AWSPENDING".to_owned()])));
        SecretMeta {
            deleted: false,
            arn: "arn:s".into(),
            versions,
            rotation_enabled: function.is_some(),
            rotation_lambda: function.map(str::to_owned),
            name: "s".into(),
            kms_key_id: None,
            tags: Vec::new(),
        }
    }

    fn plan(pending: Option<&str>) -> Plan {
        Plan {
            current_version: "v0".into(),
            current_user: "alice".into(),
            target_user: "bob".into(),
            proxy_secret_id: None,
            proxy_version: None,
            pending_version: pending.map(str::to_owned),
            pending_left: None,
        }
    }

    /// A record of rotation `id`, in `state`, whose last success was `ago` before `NOW`.
    fn record(id: &str, state: State, ago: Option<u64>) -> Option<StepRecord> {
        let mut r = StepRecord::begin("arn:s", id.into(), plan(None), None, NOW - 4 * HOUR);
        r.state = state;
        r.step = match state {
            State::InProgress | State::Failed => Step::SetPassword,
            _ => Step::Done,
        };
        r.last_success_at = ago.map(|ago| NOW - ago);
        r.request_id = Some(format!("request-{id}"));
        Some(r)
    }

    fn queue(force: bool, request: Option<&str>) -> Request {
        Request {
            force,
            min_interval: Some(std::time::Duration::from_millis(2 * HOUR)),
            request_id: request.map(str::to_owned),
            ..Request::default()
        }
    }

    fn call(token: &str, through: Step) -> Request {
        Request {
            invocation: Some(Invocation {
                token: token.into(),
                through,
            }),
            min_interval: Some(std::time::Duration::from_millis(2 * HOUR)),
            ..Request::default()
        }
    }

    fn said(decided: Result<Decision, RotationError>) -> String {
        match decided {
            Ok(Decision::Answer(Outcome::NotBegun { .. })) => "answer: not begun".into(),
            Ok(Decision::Answer(Outcome::Skipped { why, .. })) => format!("answer: {why}"),
            Ok(Decision::Answer(other)) => format!("answer: {other:?}"),
            Ok(Decision::Skip(_)) => "skip".into(),
            Ok(Decision::Resume(r)) => format!("resume {} (attempt {})", r.step, r.attempts),
            Ok(Decision::Retry(r)) => format!("retry {} ({})", r.step, r.state.as_str()),
            Ok(Decision::Begin(None)) => "begin".into(),
            Ok(Decision::Begin(Some(p))) => format!("begin after {}", p.state.as_str()),
            Ok(Decision::Unstrand(v)) => format!("unstrand {v}"),
            Err(e) if e.is_retryable() => "refuse, retryable".into(),
            Err(_) => "refuse, fatal".into(),
        }
    }

    #[test]
    fn a_request_begins_resumes_retries_skips_or_is_refused_by_the_record_it_finds() {
        use State::*;
        let rows = [
            ("nothing recorded", None, queue(false, None), "begin"),
            (
                "in progress",
                record("r1", InProgress, None),
                queue(false, None),
                "resume set_password (attempt 2)",
            ),
            (
                "in progress, forced",
                record("r1", InProgress, None),
                queue(true, None),
                "resume set_password (attempt 2)",
            ),
            (
                "success 1 h ago",
                record("r1", Finished, Some(HOUR)),
                queue(false, None),
                "skip",
            ),
            (
                "success 1 h ago, forced",
                record("r1", Finished, Some(HOUR)),
                queue(true, None),
                "begin after finished",
            ),
            (
                "success 3 h ago",
                record("r1", Finished, Some(3 * HOUR)),
                queue(false, None),
                "begin after finished",
            ),
            (
                "the same request again, forced",
                record("r1", Finished, Some(3 * HOUR)),
                queue(true, Some("request-r1")),
                "skip",
            ),
            (
                "the last one failed",
                record("r1", Failed, None),
                queue(false, None),
                "begin after failed",
            ),
            (
                "the last one was aborted",
                record("r1", Aborted, Some(3 * HOUR)),
                queue(false, None),
                "begin after aborted",
            ),
            (
                "createSecret, nothing recorded",
                None,
                call("t", Step::CreatePending),
                "begin",
            ),
            (
                "setSecret, nothing recorded",
                None,
                call("t", Step::SetPassword),
                "answer: not begun",
            ),
            (
                "a call of its failed rotation",
                record("t", Failed, None),
                call("t", Step::Test),
                "retry set_password (in_progress)",
            ),
            (
                "a call of its rotation in progress",
                record("t", InProgress, None),
                call("t", Step::Test),
                "resume set_password (attempt 2)",
            ),
            (
                "a call while another rotation runs",
                record("r1", InProgress, None),
                call("t", Step::Test),
                "refuse, retryable",
            ),
            (
                "a call of its aborted rotation",
                record("t", Aborted, None),
                call("t", Step::Test),
                "refuse, fatal",
            ),
            (
                "createSecret after a success 1 h ago",
                record("r1", Finished, Some(HOUR)),
                call("t", Step::CreatePending),
                "begin after finished",
            ),
        ];
        for (case, found, request, expected) in rows {
            let decided = decide(&meta(Some("t"), None), found, &request, NOW);
            assert_eq!(said(decided), expected, "{case}");
        }
    }

    #[test]
    fn a_new_rotation_takes_a_new_id_unless_awspending_names_one_it_may_take_over() {
        let settings = Settings {
            rotation_functions: vec![OWN.into()],
            ..Settings::default()
        };
        let said = |r: Result<(String, Earlier), RotationError>| match r {
            Ok((id, earlier)) => format!("{id}, {earlier:?}"),
            Err(RotationError::ForeignPending { .. }) => "foreign pending".into(),
            Err(RotationError::NotStartedBySecretsManager { .. }) => "not Secrets Manager's".into(),
            Err(RotationError::TooSoon { .. }) => "too soon".into(),
            Err(e) => format!("{e}"),
        };
        let failed_at_p = {
            let mut r = record("p", State::Failed, Some(3 * HOUR)).unwrap();
            r.unfinished_versions.clear();
            r
        };
        let recent = record("r1", State::Finished, Some(HOUR)).unwrap();
        let rows = [
            (
                "AWSPENDING free",
                None,
                None,
                None,
                queue(false, None),
                "new, Nothing",
            ),
            (
                "AWSPENDING left by our failed rotation",
                Some("p"),
                None,
                Some(&failed_at_p),
                queue(false, None),
                "new, Nothing",
            ),
            (
                "AWSPENDING stranded on our finished rotation's version by an edit since",
                Some("r1"),
                None,
                Some(&recent),
                queue(true, None),
                "new, Nothing",
            ),
            (
                "AWSPENDING nobody here made",
                Some("p"),
                None,
                None,
                queue(false, None),
                "foreign pending",
            ),
            (
                "AWSPENDING another function made",
                Some("p"),
                Some("arn:aws:lambda:r:1:function:other"),
                None,
                queue(false, None),
                "foreign pending",
            ),
            (
                "AWSPENDING our function's rotation made",
                Some("p"),
                Some(OWN),
                None,
                queue(false, None),
                "p, Unknown",
            ),
            (
                "createSecret for AWSPENDING",
                Some("t"),
                Some(OWN),
                None,
                call("t", Step::CreatePending),
                "t, Unknown",
            ),
            (
                "createSecret for another version",
                Some("p"),
                Some(OWN),
                None,
                call("t", Step::CreatePending),
                "not Secrets Manager's",
            ),
            (
                "createSecret, nothing pending",
                None,
                Some(OWN),
                None,
                call("t", Step::CreatePending),
                "not Secrets Manager's",
            ),
            (
                "createSecret 1 h after a success",
                Some("t"),
                Some(OWN),
                Some(&recent),
                call("t", Step::CreatePending),
                "too soon",
            ),
        ];
        for (case, pending, function, previous, request, expected) in rows {
            let m = meta(pending, function);
            let r = new_rotation(
                &m,
                &plan(pending),
                previous,
                &request,
                &settings,
                NOW,
                "new".into(),
            );
            assert_eq!(said(r), expected, "{case}");
        }
    }
}
