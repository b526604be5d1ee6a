//! The lease around a rotation: acquire (or wait for) it, keep it alive while the work runs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

use super::ports::{Acquired, Lease, RecordStoreError};
use super::record::{now_ms, StepRecord};
use super::{LeaseWait, RotationError, Rotator};

/// What [`acquire`] got.
pub(super) enum Taken {
    /// The lease, the record as it stands, and whether we had to wait for it (what was read
    /// before may be stale then).
    Lease(Lease, Option<Box<StepRecord>>, bool),
    /// Someone else holds the lease, and the record already answers the request (`skip` said
    /// why): a burst of copies does not queue up behind one lease.
    Answered(String),
}

/// Takes the lease on `arn`, waiting for an expired holder when allowed.
pub(super) async fn acquire(
    rotator: &Rotator,
    arn: &str,
    wait: LeaseWait,
    skip: impl Fn(&StepRecord) -> Option<String>,
) -> Result<Taken, RotationError> {
    let ttl = rotator.settings.lease_duration;
    // Unique per acquisition, not per process: two tasks of one worker are two holders. (A retry
    // of the same request after a lost answer carries the same owner, and is let in again.)
    let owner = format!(
        "{}#{}",
        rotator.owner,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let give_up_at = match wait {
        LeaseWait::No => now_ms(),
        LeaseWait::UpTo(d) => now_ms() + d.as_millis() as u64,
    };
    let mut waited = false;
    loop {
        match rotator.records.acquire(arn, &owner, ttl).await? {
            Acquired::Granted { lease, record } => return Ok(Taken::Lease(lease, record, waited)),
            Acquired::Held {
                owner,
                expires_at_ms,
                record,
            } => {
                // A record that is not in progress says how the last rotation ended, and nothing
                // the holder does now can make a skip wrong: this request was handled, or the last
                // success is recent. (A holder that is starting a rotation has not written yet.)
                if let Some(why) = record
                    .filter(|r| !r.is_in_progress())
                    .and_then(|r| skip(&r))
                {
                    return Ok(Taken::Answered(why));
                }
                let now = now_ms();
                if now >= give_up_at {
                    return Err(RotationError::Busy {
                        secret: arn.to_owned(),
                        owner,
                    });
                }
                // A live holder renews, so this may repeat; an dead one's lease simply expires.
                let wait_ms = expires_at_ms.saturating_sub(now).clamp(100, 5_000) + 50;
                warn!(secret = %arn, holder = %owner,
                      expires_in = %humantime::format_duration(Duration::from_millis(expires_at_ms.saturating_sub(now))),
                      "another process holds the lease; waiting for it to finish or expire");
                tokio::time::sleep(Duration::from_millis(wait_ms.min(give_up_at - now))).await;
                waited = true;
            }
        }
    }
}

/// What the work under a lease and its heartbeat tell each other.
#[derive(Debug, Default)]
pub(super) struct Flags {
    /// A renewal found someone else holding the lease: the work stops at its next step.
    pub lost: AtomicBool,
    /// The work gave the lease back with its last write: nothing is left to renew or release.
    pub released: AtomicBool,
}

/// Runs `work` while renewing the lease every third of its duration. When a renewal finds that
/// someone else took the lease, `lost` is set, so the work stops at its next step; its record
/// writes would be refused by the fence anyway.
pub(super) async fn heartbeat<T>(
    rotator: &Rotator,
    lease: &Lease,
    flags: &Flags,
    work: impl Future<Output = T>,
) -> T {
    let lost = &flags.lost;
    let ttl = rotator.settings.lease_duration;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the lease is fresh
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick(), if !lost.load(Ordering::SeqCst) && !flags.released.load(Ordering::SeqCst) => {
                match rotator.records.renew(lease, ttl).await {
                    Ok(_) => {}
                    Err(RecordStoreError::Fenced(fence)) => {
                        warn!(secret = %lease.key, fence, "lease taken over by another worker; stepping back");
                        lost.store(true, Ordering::SeqCst);
                    }
                    Err(e) => warn!(secret = %lease.key, error = %e, "could not renew the lease; will retry"),
                }
            }
        }
    }
}
