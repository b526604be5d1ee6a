//! The lease around a rotation: acquire (or wait for) it, keep it alive while the work runs; and
//! the claim on the database user it changes, which other secrets naming that user respect.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tracing::warn;

use super::ports::{Acquired, At, Claimed, Lease, RecordStoreError, Stage, UserClaim};
use super::record::{now_ms, BeginIf, StepRecord};
use super::{LeaseWait, RotationError, Rotator};

/// What [`acquire`] got.
pub(super) enum Taken {
    /// The lease, the record as it stands, and whether we had to wait for it (what was read
    /// before may be stale then).
    Lease(Lease, Option<Box<StepRecord>>, bool),
    /// The lease, and the new rotation's record stored with it.
    Begun(Lease, Box<StepRecord>),
    /// Someone else holds the lease, and the record already answers the request (`skip` said
    /// why): a burst of copies does not queue up behind one lease.
    Answered(String),
}

/// Takes the lease on `arn`, waiting for an expired holder when allowed. With `begin`, the first
/// attempt also stores that new rotation's record if the item allows it (see `BeginIf`); after a
/// wait it is not tried, since the plan it came from may be stale.
pub(super) async fn acquire(
    rotator: &Rotator,
    arn: &str,
    wait: LeaseWait,
    skip: impl Fn(&StepRecord) -> Option<String>,
    begin: Option<(&StepRecord, &BeginIf)>,
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
    // Tried once, first: after a wait or a refusal the plan may be stale.
    let mut begin = begin;
    // A record that is not in progress says how the last rotation ended, and nothing a holder
    // does now can make a skip wrong: this request was handled, or the last success is recent.
    // (A holder that is starting a rotation may not have written yet.)
    let answered = |record: Option<Box<StepRecord>>| {
        record
            .filter(|r| !r.is_in_progress())
            .and_then(|r| skip(&r))
    };
    loop {
        let acquired = match begin.take() {
            Some((record, cond)) => {
                rotator
                    .records
                    .begin(arn, &owner, ttl, record, cond)
                    .await?
            }
            None => rotator.records.acquire(arn, &owner, ttl).await?,
        };
        match acquired {
            Acquired::Granted { lease, record } => return Ok(Taken::Lease(lease, record, waited)),
            Acquired::Begun { lease, record } => return Ok(Taken::Begun(lease, record)),
            Acquired::NotBegun { record } => {
                // The lease is free, but the record said no: answered from it, or taken alone
                // (next pass) so that `run` decides.
                if let Some(why) = answered(record) {
                    return Ok(Taken::Answered(why));
                }
            }
            Acquired::Held {
                owner,
                expires_at_ms,
                record,
            } => {
                if let Some(why) = answered(record) {
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

/// The database users a rotation claims and marks.
pub(super) struct UserClaims {
    /// The user whose password changes, and its claim key.
    pub target: String,
    pub target_key: String,
    /// The key of the user the secret's applications use now (AWSCURRENT).
    pub in_use_key: String,
    pub claim: UserClaim,
}

/// Marks the user in use as this secret's, and claims the target (`claim_user`), at once. The
/// mark goes first in effect, even when the claim is refused: another secret then sees it.
pub(super) async fn claim_users(rotator: &Rotator, c: &UserClaims) -> Result<(), RotationError> {
    let (claimed, marked) = tokio::join!(
        claim_user(rotator, &c.target_key, &c.target, &c.claim),
        rotator.records.mark_in_use(&c.in_use_key, &c.claim.secret)
    );
    marked?;
    claimed
}

/// adopt, before it sets the password of a user that existed already: the check a rotation
/// makes, so that a user another secret uses keeps its password.
pub(crate) async fn claim_existing_user(
    rotator: &Rotator,
    engine: crate::secret::Engine,
    at: &crate::secret::Endpoint,
    user: &str,
    secret: &str,
) -> Result<(), RotationError> {
    let claim = UserClaim {
        secret: secret.to_owned(),
        rotation_id: "adopt".to_owned(),
    };
    claim_user(rotator, &super::user_key(engine, at, user), user, &claim).await
}

/// Claims the database user that `claim`'s rotation changes, so that no other secret naming the
/// same user changes its password meanwhile; and refuses to change a user that another secret
/// has in AWSCURRENT (it marked it, or its claim says it rotated to it).
///
/// The claim is not a lease: it is never released or renewed. It names the secret and rotation
/// that last changed the user, and another secret may take it over once that rotation has ended.
/// A secret takes over its own claims at once (its rotations take turns under its lease), so a
/// rotation usually pays one conditional write, beside the mark.
async fn claim_user(
    rotator: &Rotator,
    user_key: &str,
    user: &str,
    claim: &UserClaim,
) -> Result<(), RotationError> {
    let mut replacing: Option<UserClaim> = None;
    // Each pass finds a newer holder; a few passes in a row mean a live contest.
    for _ in 0..3 {
        let holder = match rotator
            .records
            .claim_user(user_key, claim, replacing.as_ref())
            .await?
        {
            Claimed::Ours { in_use_by } => {
                for other in in_use_by.iter().filter(|s| **s != claim.secret) {
                    if is_current_user_of(rotator, other, user).await? {
                        return Err(RotationError::UserShared {
                            user: user.to_owned(),
                            secret: other.clone(),
                        });
                    }
                }
                return Ok(());
            }
            Claimed::HeldBy(holder) => holder,
        };
        let record = rotator.records.load(&holder.secret).await?;
        if record.is_some_and(|r| {
            r.is_in_progress() && r.rotation_id.as_deref() == Some(holder.rotation_id.as_str())
        }) {
            return Err(RotationError::UserBusy {
                user: user.to_owned(),
                secret: holder.secret,
                rotation_id: holder.rotation_id,
            });
        }
        // Ended. If the user is what that secret's applications use now, changing its password
        // breaks them.
        if is_current_user_of(rotator, &holder.secret, user).await? {
            return Err(RotationError::UserShared {
                user: user.to_owned(),
                secret: holder.secret,
            });
        }
        replacing = Some(holder);
    }
    let last = replacing.expect("every pass that does not return finds a holder");
    Err(RotationError::UserBusy {
        user: user.to_owned(),
        secret: last.secret,
        rotation_id: last.rotation_id,
    })
}

/// `user` is what `secret`'s applications use now (its AWSCURRENT). A deleted secret uses nobody.
async fn is_current_user_of(
    rotator: &Rotator,
    secret: &str,
    user: &str,
) -> Result<bool, RotationError> {
    let current = rotator
        .secrets
        .get(secret, At::Stage(Stage::Current))
        .await?;
    Ok(current
        .and_then(|v| crate::secret::AppSecret::parse(&v.value).ok())
        .is_some_and(|app| app.credentials.username == user))
}

/// What the work under a lease and its heartbeat tell each other.
#[derive(Debug)]
pub(crate) struct Flags {
    /// A renewal found someone else holding the lease: the work stops at its next step.
    pub lost: AtomicBool,
    /// The work gave the lease back with its last write: nothing is left to renew or release.
    pub released: AtomicBool,
    /// When the lease runs out, by our clock, as last taken or renewed (ms since the epoch).
    expires_at_ms: AtomicU64,
}

impl Flags {
    pub fn new(lease: &Lease) -> Self {
        Self {
            lost: AtomicBool::new(false),
            released: AtomicBool::new(false),
            expires_at_ms: AtomicU64::new(lease.expires_at_ms),
        }
    }

    /// The lease may be someone else's now: a renewal said so, or renewals have failed (say,
    /// the state table is unreachable) until it ran out.
    pub fn may_be_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || now_ms() >= self.expires_at_ms.load(Ordering::SeqCst)
    }
}

/// Runs `work` while renewing the lease every third of its duration. When a renewal finds that
/// someone else took the lease, `lost` is set, so the work stops at its next step; its record
/// writes would be refused by the fence anyway.
pub(crate) async fn heartbeat<T>(
    rotator: &Rotator,
    lease: &Lease,
    flags: &Flags,
    work: impl Future<Output = T>,
) -> T {
    let lost = &flags.lost;
    let ttl = rotator.settings.lease_duration;
    // The lease is fresh: the first renewal is due a period from now. (Not `interval`'s
    // immediate first tick, which waits for the timer's next millisecond.)
    let period = ttl / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick(), if !lost.load(Ordering::SeqCst) && !flags.released.load(Ordering::SeqCst) => {
                match rotator.records.renew(lease, ttl).await {
                    Ok(expires) => flags.expires_at_ms.store(expires, Ordering::SeqCst),
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
