//! `rds-rotator abort`: an operator ends a rotation that cannot finish (a proxy that never picks
//! up its secret, say), under the lease, leaving every user's password known.
//!
//! Nothing is undone in the database: the idle user may already have the pending password. The
//! record keeps the rotation id, so the next rotation of that user tries the aborted pending
//! version as a known credential (`KnownSource::Unfinished`), and needs no master secret.

use std::sync::atomic::Ordering;

use tracing::info;

use super::lease::{self, Taken};
use super::ports::{ReportOutcome, RotationReport, SecretStoreError, Stage};
use super::record::State;
use super::{LeaseWait, RotationError, Rotator};

/// What `abort` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aborted {
    pub secret_arn: String,
    pub rotation_id: String,
    /// The step the rotation was at.
    pub step: String,
    /// False when an earlier abort had already ended it (abort is idempotent).
    pub now: bool,
}

impl Rotator {
    /// Ends the rotation in progress on `secret_id`: AWSPENDING leaves its version, the record
    /// says `aborted` with `reason`. A failed rotation may be aborted too (its AWSPENDING goes);
    /// a finished one, or one that already moved AWSCURRENT, is refused.
    pub async fn abort(
        &self,
        secret_id: &str,
        reason: &str,
        wait: LeaseWait,
    ) -> Result<Aborted, RotationError> {
        let started = self.clock.now();
        let tally = crate::calls::Tally::default();
        let result = tally
            .scope(self.abort_under_lease(secret_id, reason, wait))
            .await;
        if let Ok(done) = &result {
            if done.now {
                self.reporter
                    .report(&RotationReport {
                        secret: done.secret_arn.clone(),
                        outcome: ReportOutcome::Aborted {
                            reason: reason.to_owned(),
                        },
                        rotation_id: Some(done.rotation_id.clone()),
                        from_user: None,
                        to_user: None,
                        resumed: false,
                        duration: self.clock.now() - started,
                        steps: Vec::new(),
                        last_step: done.step.parse().ok(),
                        retries: 0,
                        calls: tally.snapshot(),
                        in_use: None,
                        waits_for_sessions: false,
                    })
                    .await;
            }
        }
        result
    }

    async fn abort_under_lease(
        &self,
        secret_id: &str,
        reason: &str,
        wait: LeaseWait,
    ) -> Result<Aborted, RotationError> {
        let meta = self.secrets.describe(secret_id).await?;
        let arn = meta.arn.clone();
        let lease = match lease::acquire(self, &arn, wait, |_| None, None).await? {
            Taken::Lease(lease, _, _) => lease,
            Taken::Begun(..) | Taken::Answered(_) => {
                unreachable!("no rotation is begun or skipped without a plan")
            }
        };
        // Renewed while abort runs, which checks it before its Secrets Manager write: record
        // writes carry the fence, a label move does not.
        let flags = lease::Flags::new(self.clock.clone(), &lease, self.settings.lease_duration);
        // The record as it stands under the lease (the one `acquire` returned may predate a
        // holder's last write when we waited).
        let work = async {
            let refuse = |why: String| RotationError::NotAbortable {
                secret: arn.clone(),
                why,
            };
            let mut record = self
                .records
                .load(&arn)
                .await?
                .filter(|r| r.rotation_id.is_some())
                .ok_or_else(|| refuse("no rotation has been recorded".into()))?;
            let id = record.rotation_id.clone().unwrap_or_default();
            let step = record.step.to_string();
            match record.state {
                State::Finished => {
                    return Err(refuse(format!(
                        "rotation {id} finished; there is nothing to abort"
                    )))
                }
                // A second abort only makes sure the label is gone.
                State::Aborted | State::Failed | State::InProgress => {}
            }
            // Past the compare-and-swap, the rotation has in effect happened: finishing it is
            // the only consistent end.
            let meta = self.secrets.describe(&arn).await?;
            if meta.version_with(Stage::Current) == Some(id.as_str()) {
                return Err(refuse(format!(
                    "rotation {id} already moved AWSCURRENT; run `rds-rotator rotate {arn}` to finish it"
                )));
            }
            if meta.version_with(Stage::Pending) == Some(id.as_str()) {
                if flags.may_be_lost() {
                    return Err(RotationError::LeaseLost(arn.clone()));
                }
                match self.secrets.remove_stage(&arn, Stage::Pending, &id).await {
                    // Gone meanwhile: what we wanted.
                    Ok(()) | Err(SecretStoreError::Refused(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if record.state == State::Aborted {
                self.records.release(&lease).await?;
                flags.released.store(true, Ordering::SeqCst);
                return Ok(Aborted {
                    secret_arn: arn.clone(),
                    rotation_id: id,
                    step,
                    now: false,
                });
            }
            let now = self.clock.now_ms();
            record.state = State::Aborted;
            record.last_error = Some(format!("aborted at step {step}: {reason}"));
            record.updated_at = Some(now);
            record.finished_at = Some(now);
            self.records.save_and_release(&lease, &record).await?;
            flags.released.store(true, Ordering::SeqCst);
            info!(secret = %arn, rotation_id = %id, %step, %reason, "rotation aborted");
            Ok(Aborted {
                secret_arn: arn.clone(),
                rotation_id: id,
                step,
                now: true,
            })
        };
        let result = lease::heartbeat(self, &lease, &flags, work).await;
        if result.is_err() && !flags.may_be_lost() {
            let _ = self.records.release(&lease).await;
        }
        result
    }
}
