//! `rds-rotator forget`: an operator clears a secret's claims and marks on database users (a
//! secret that can no longer be read, and no longer uses them), under the secret's lease: a
//! rotation running meanwhile would write its memory of the marks (`StepRecord::marked`) back.

use tracing::warn;

use super::lease::{self, Taken};
use super::{LeaseWait, RotationError, Rotator};

/// What `forget` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgot {
    /// The user keys whose claim or mark named the secret, now cleared.
    Cleared(Vec<String>),
    /// A rotation of the secret is in progress (this id): its claims keep other secrets off
    /// its users, so nothing was changed.
    InProgress(String),
}

impl Rotator {
    /// Clears every claim and mark of `arn` on database users, and its memory of the marks.
    pub async fn forget(&self, arn: &str, wait: LeaseWait) -> Result<Forgot, RotationError> {
        let (lease, existing) = match lease::acquire(self, arn, wait, |_| None, None).await? {
            Taken::Lease(lease, existing, _) => (lease, existing),
            Taken::Begun(..) | Taken::Answered(_) => {
                unreachable!("no rotation is begun or skipped without a plan")
            }
        };
        // Renewed while the table is scanned: a rotation that took the lease meanwhile (ours
        // ran out) would write the marks back, so the clearing stops there.
        let flags = lease::Flags::new(self.clock.clone(), &lease, self.settings.lease_duration);
        let work = async {
            match existing.filter(|r| r.is_in_progress()) {
                Some(r) => Ok(Forgot::InProgress(r.rotation_id.unwrap_or_default())),
                None => tokio::select! {
                    biased;
                    _ = flags.until_lost() => Err(RotationError::LeaseLost(arn.to_owned())),
                    cleared = self.records.forget(arn) => {
                        cleared.map(Forgot::Cleared).map_err(RotationError::from)
                    }
                },
            }
        };
        let result = lease::heartbeat(self, &lease, &flags, work).await;
        if flags.may_be_lost() {
            return result;
        }
        if let Err(e) = self.records.release(&lease).await {
            warn!(secret = %arn, error = %e, "could not release the lease; it will expire");
        }
        result
    }
}
