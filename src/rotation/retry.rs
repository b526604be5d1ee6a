//! The loop around a run: a retryable failure tries the run again after a pause, a few times,
//! and every other end is reported (`Run::record_failure` notes failures in the record).

use backon::BackoffBuilder;
use tracing::warn;

use super::errors::RotationError;
use super::ports::RecordStoreError;
use super::record::Step;
use super::request::{Completed, Outcome, Request};
use super::rotator::Rotator;
use super::run::Run;

/// Whether a run that failed with `e`, at `step` after the attempt, is tried again in this
/// process (otherwise the failure is recorded and returned).
pub(super) fn again(
    e: &RotationError,
    attempt: usize,
    max_attempts: usize,
    stopping: bool,
    step: Step,
) -> bool {
    e.is_retryable()
        && attempt < max_attempts
        && !stopping
        && !matches!(
            e,
            RotationError::LeaseLost(_)
                | RotationError::Interrupted(_)
                | RotationError::Records(RecordStoreError::Fenced(_))
                // Sessions do not end in seconds, nor do unreachable readers come back: a later
                // run looks again.
                | RotationError::UserInUse { .. }
                | RotationError::ReaderUnchecked { .. }
                | RotationError::BlueGreen { .. }
        )
        // The test waited its whole deadline already, unless it sent the rotation back to set
        // the password again.
        && (!matches!(e, RotationError::TestTimedOut { .. }) || step == Step::SetPassword)
}

impl Rotator {
    pub(super) async fn drive_with_retries(
        &self,
        mut run: Run<'_>,
        request: &Request,
        resumed: bool,
    ) -> Result<Outcome, RotationError> {
        let mut attempt = 1;
        let mut delays = self.settings.retry.backoff().build();
        loop {
            let e = match run.drive().await {
                Ok(()) => return Ok(self.outcome(&run, request, resumed)),
                Err(e) => e,
            };
            let (max, stopping) = (
                self.settings.retry.max_attempts,
                self.shutdown.is_triggered(),
            );
            if !again(&e, attempt, max, stopping, run.record.step) {
                run.record_failure(&e).await;
                return Err(e);
            }
            let delay = delays.next().unwrap_or(self.settings.retry.max_delay);
            warn!(secret = %run.record.secret_id, step = %run.record.step, error = %e,
                  retry_in = ?delay, "retryable failure");
            attempt += 1;
            run.after_failure();
            run.trace.with(|t| t.retries += 1);
            self.clock.sleep(delay).await;
        }
    }

    /// How a run that ended without error ended: the rotation is done, or the call's steps are.
    fn outcome(&self, run: &Run<'_>, request: &Request, resumed: bool) -> Outcome {
        let r = &run.record;
        if r.step != Step::Done {
            return Outcome::Advanced {
                secret_arn: r.secret_id.clone(),
                rotation_id: r.rotation_id.clone().unwrap_or_default(),
                next: r.step,
            };
        }
        if request.invocation.is_some() {
            // Secrets Manager's calls split one rotation: it took this long.
            let now = self.clock.now_ms();
            let began = r.started_at.unwrap_or(now);
            let took = std::time::Duration::from_millis(now.saturating_sub(began));
            run.trace.with(|t| t.whole = Some(took));
        }
        Outcome::Rotated(Completed {
            secret_arn: r.secret_id.clone(),
            rotation_id: r.rotation_id.clone().unwrap_or_default(),
            previous_user: r.current_user.clone().unwrap_or_default(),
            current_user: r.target_user.clone().unwrap_or_default(),
            resumed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed_out() -> RotationError {
        RotationError::TestTimedOut {
            user: "b".into(),
            at: "proxy".into(),
            deadline: "1m".into(),
            last: "refused".into(),
        }
    }

    #[test]
    fn a_run_is_tried_again_only_for_a_failure_a_pause_can_cure() {
        let lost = || RotationError::LeaseLost("s".into());
        let in_use = || RotationError::Busy {
            secret: "s".into(),
            owner: "o".into(),
        };
        let fatal = || RotationError::Inconsistent {
            secret: "s".into(),
            reason: "r".into(),
        };
        // (error, attempt, stopping, step after the attempt, tried again?)
        let table: Vec<(RotationError, usize, bool, Step, bool)> = vec![
            (in_use(), 1, false, Step::CreatePending, true),
            (in_use(), 3, false, Step::CreatePending, false),
            (in_use(), 1, true, Step::CreatePending, false),
            (lost(), 1, false, Step::SetPassword, false),
            (fatal(), 1, false, Step::SetPassword, false),
            (timed_out(), 1, false, Step::Test, false),
            (timed_out(), 1, false, Step::SetPassword, true),
        ];
        for (e, attempt, stopping, step, expected) in table {
            assert_eq!(
                again(&e, attempt, 3, stopping, step),
                expected,
                "{e} at attempt {attempt}, stopping {stopping}, {step}"
            );
        }
    }
}
