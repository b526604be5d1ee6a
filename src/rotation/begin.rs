//! What to do with a request, decided from what was read: pure functions of the record as the
//! lease found it, the labels, the request and the time, unit-tested table-style. `rotator`
//! reads, asks them, and acts on the answer.

use std::time::Duration;

use uuid::Uuid;

use super::errors::RotationError;
use super::invocation::{invoked, Invoked};
use super::ports::SecretMeta;
use super::record::{BeginIf, Plan, StepRecord};
use super::request::{Outcome, Request};
use super::run::Earlier;
use super::settings::Settings;

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
        Some(v) if settings.rotated_by_own_function(meta) => Ok((v.to_owned(), Earlier::Unknown)),
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
/// record (the last one written for the secret) says.
pub(crate) fn left_by_us(version: &str, record: Option<&StepRecord>) -> bool {
    record.is_some_and(|p| {
        (p.is_unfinished() && p.rotation_id.as_deref() == Some(version))
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
    Uuid::new_v4().to_string()
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

/// `run`'s rules for beginning a new rotation, as conditions the store can check in the write that
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
