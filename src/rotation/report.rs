//! What a run learns along the way, turned into the report every `rotate` call ends with
//! (metrics, events).

use std::sync::Mutex;
use std::time::Duration;

use super::errors::RotationError;
use super::ports::{InUse, ReportOutcome, RotationReport};
use super::record::{Step, StepRecord};
use super::request::Outcome;
use crate::calls::Tally;

/// What a run learns along the way, for its report.
#[derive(Debug, Default)]
pub(super) struct Trace(Mutex<TraceData>);

#[derive(Debug, Default)]
pub(super) struct TraceData {
    pub(super) secret: Option<String>,
    pub(super) rotation_id: Option<String>,
    pub(super) from_user: Option<String>,
    pub(super) to_user: Option<String>,
    pub(super) resumed: bool,
    pub(super) steps: Vec<(Step, Duration)>,
    pub(super) last_step: Option<Step>,
    pub(super) retries: u32,
    pub(super) in_use: Option<InUse>,
    /// A rotation split over Secrets Manager's calls: from its beginning to its end.
    pub(super) whole: Option<Duration>,
}

impl Trace {
    pub(super) fn with(&self, f: impl FnOnce(&mut TraceData)) {
        f(&mut self.0.lock().expect("trace lock"));
    }

    pub(super) fn record(&self, r: &StepRecord, resumed: bool) {
        self.with(|t| {
            t.rotation_id.clone_from(&r.rotation_id);
            t.from_user.clone_from(&r.current_user);
            t.to_user.clone_from(&r.target_user);
            t.resumed = resumed;
        });
    }

    pub(super) fn report(
        self,
        secret_id: &str,
        result: &Result<Outcome, RotationError>,
        duration: Duration,
        tally: &Tally,
    ) -> RotationReport {
        let t = self.0.into_inner().expect("trace lock");
        RotationReport {
            secret: t.secret.unwrap_or_else(|| secret_id.to_owned()),
            outcome: match result {
                Ok(Outcome::Rotated(_)) => ReportOutcome::Succeeded,
                Ok(Outcome::Skipped { why, .. }) => ReportOutcome::Skipped { why: why.clone() },
                Ok(Outcome::Advanced { next, .. }) => ReportOutcome::Advanced { next: *next },
                Ok(Outcome::NotBegun { rotation_id, .. }) => ReportOutcome::Skipped {
                    why: format!("no rotation {rotation_id} began"),
                },
                Err(e) => ReportOutcome::Failed {
                    reason: e.to_string(),
                    retryable: e.is_retryable(),
                },
            },
            rotation_id: t.rotation_id,
            from_user: t.from_user,
            to_user: t.to_user,
            resumed: t.resumed,
            duration: t.whole.unwrap_or(duration),
            steps: t.steps,
            last_step: t.last_step,
            retries: t.retries,
            calls: tally.snapshot(),
            in_use: t.in_use,
            waits_for_sessions: matches!(
                result,
                Err(RotationError::UserInUse { .. } | RotationError::ReaderUnchecked { .. })
            ),
        }
    }
}
