//! The lease around a rotation: acquire (or wait for) it, keep it alive while the work runs; and
//! the claim on the database user it changes, which other secrets naming that user respect.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tracing::warn;

use super::clock::Clock;
use super::ports::{
    Acquired, At, Claimed, DbError, Lease, LeaseSeen, RecordStoreError, SecretStoreError,
    ServerIdentity, Stage, UserClaim,
};
use super::record::{elsewhere, parse_elsewhere, BeginIf, StepRecord};
use super::{LeaseWait, RotationError, Rotator};
use crate::mutants::{self, Mutant};
use crate::secret::{Credentials, Endpoint, Engine};

/// What [`acquire`] got.
pub(crate) enum Taken {
    /// The lease, the record as it stands, and whether we had to wait for it (what was read
    /// before may be stale then).
    Lease(Lease, Option<Box<StepRecord>>, bool),
    /// The lease, and the new rotation's record stored with it.
    Begun(Lease, Box<StepRecord>),
    /// Someone else holds the lease, and the record already answers the request (`skip` said
    /// why): a burst of copies does not queue up behind one lease.
    Answered(String),
}

/// Takes the lease on `arn`. A free or released lease is taken at once. A held one is taken
/// only after this process has seen it unchanged (same owner, fence and beat) for a whole lease
/// period of the holder's, on its own monotonic clock: a live holder renews within that, and a
/// holder that cannot renew stops before it ends (`Flags`). No two clocks are compared.
///
/// With `LeaseWait::No` the wait happens only when the holder's own expiry (read as a hint, on
/// our clock) says it is dead; a live-looking lease is given up on at once. With `begin`, the
/// first attempt also stores that new rotation's record if the item allows it (see `BeginIf`);
/// after a wait it is not tried, since the plan it came from may be stale.
pub(crate) async fn acquire(
    rotator: &Rotator,
    arn: &str,
    wait: LeaseWait,
    skip: impl Fn(&StepRecord) -> Option<String>,
    begin: Option<(&StepRecord, &BeginIf)>,
) -> Result<Taken, RotationError> {
    let period = takeover_period(&rotator.settings);
    // Unique per acquisition, not per process: two tasks of one worker are two holders. (A retry
    // of the same request after a lost answer carries the same owner, and is let in again.)
    let owner = format!(
        "{}#{}",
        rotator.owner,
        &crate::entropy::uuid_v4().simple().to_string()[..8]
    );
    let clock = &rotator.clock;
    let started = clock.now();
    let mut give_up_at = match wait {
        LeaseWait::No => started,
        LeaseWait::UpTo(d) => started + d,
    };
    let mut waited = false;
    // The lease as first seen held, and since when: unchanged for a whole period, it is taken.
    let mut watching: Option<(LeaseSeen, Instant)> = None;
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
        let take_over = watching
            .as_ref()
            .filter(|(seen, since)| clock.now() - *since >= seen.ttl)
            .map(|(seen, _)| seen);
        let acquired = match begin.take() {
            Some((record, cond)) => {
                rotator
                    .records
                    .begin(arn, &owner, period, record, cond)
                    .await?
            }
            None => {
                rotator
                    .records
                    .acquire(arn, &owner, period, take_over)
                    .await?
            }
        };
        match acquired {
            Acquired::Granted { lease, record } => return Ok(Taken::Lease(lease, record, waited)),
            Acquired::Begun { lease, record } => return Ok(Taken::Begun(lease, record)),
            Acquired::NotBegun { record } => {
                // The lease is free, but the record said no: answered from it, or taken alone
                // (next pass) so that `begin::decide` decides.
                if let Some(why) = answered(record) {
                    return Ok(Taken::Answered(why));
                }
            }
            Acquired::Held { seen, record } => {
                if let Some(why) = answered(record) {
                    return Ok(Taken::Answered(why));
                }
                let now = clock.now();
                if mutants::on(Mutant::LeaseByWallClock) && seen.expires_hint_ms < clock.now_ms() {
                    // The defect: the holder's expiry, on its clock, compared with ours.
                    watching = Some((seen.clone(), now.checked_sub(seen.ttl).unwrap_or(now)));
                    continue;
                }
                if watching.as_ref().is_none_or(|(w, _)| *w != seen) {
                    // New, or renewed since: the period starts again, from now.
                    if watching.is_none()
                        && matches!(wait, LeaseWait::No)
                        && seen.expires_hint_ms < clock.now_ms()
                    {
                        // By its own clock the holder stopped renewing: worth one period's wait.
                        give_up_at = now + seen.ttl + Duration::from_secs(1);
                    }
                    watching = Some((seen.clone(), now));
                }
                let since = watching.as_ref().map_or(now, |(_, t)| *t);
                let take_at = since + seen.ttl;
                if now >= give_up_at {
                    return Err(RotationError::Busy {
                        secret: arn.to_owned(),
                        owner: seen.owner,
                    });
                }
                warn!(secret = %arn, holder = %seen.owner,
                      unchanged_for = %humantime::format_duration(Duration::from_millis(now.duration_since(since).as_millis() as u64)),
                      "another process holds the lease; waiting for it to finish, or to stop renewing for a whole lease period");
                // Often enough to see a release soon after it happens.
                let poll = (seen.ttl / 3).clamp(Duration::from_millis(100), POLL_MAX);
                clock
                    .sleep_until(take_at.min(now + poll).min(give_up_at))
                    .await;
                waited = true;
            }
        }
    }
}

/// The longest pause between two looks at a held lease.
const POLL_MAX: Duration = Duration::from_secs(1);

/// The server's answer to an early login's question (see `EarlyLogin`).
pub(super) type Identity = tokio::sync::oneshot::Receiver<Result<ServerIdentity, DbError>>;

/// The database users a rotation claims and marks, and how to ask their server who it is.
pub(super) struct UserClaims {
    /// The identity, asked in a login opened already (a new rotation's): used when it answers.
    pub asked: Option<Identity>,
    /// The user whose password changes.
    pub target: String,
    /// The user the secret's applications use now (AWSCURRENT).
    pub in_use: String,
    pub claim: UserClaim,
    pub engine: Engine,
    /// Where passwords change (`admin_endpoint`).
    pub server: Endpoint,
    /// Logins that may ask the server its identity, best first, each with a label.
    pub logins: Vec<(String, Credentials)>,
    /// The master secret, the last login to try.
    pub master: Option<String>,
    /// The rotation's record as it stands, saved with another secret's unfinished version
    /// before that secret's claim is replaced (see `claim_user`).
    pub record: StepRecord,
}

/// The key of a database user's claim: engine, the server's own identity, and the user's name.
/// Never the name used to reach the server: one server has many. (Secret ARNs, the other keys
/// in the table, start with `arn:`.)
pub(crate) fn user_key(engine: Engine, server: &ServerIdentity, user: &str) -> String {
    format!("dbuser:{engine}:{}/{user}", server.key)
}

/// Asks the server who it is, with the first of `logins` (then the master secret) that may.
pub(crate) async fn identify(
    rotator: &Rotator,
    engine: Engine,
    server: &Endpoint,
    logins: &[(String, Credentials)],
    master: Option<&str>,
) -> Result<ServerIdentity, RotationError> {
    let ask = |login: Credentials| async move {
        let mut session = rotator.db.login(engine, server, &login).await?;
        session.identity().await
    };
    let mut tried = Vec::new();
    // A login that may not ask hands over to the next one.
    let mut next = |label: &str, e: DbError| -> Result<(), RotationError> {
        if !e.try_next_source() {
            return Err(e.into());
        }
        tried.push(format!("{label}: {e}"));
        Ok(())
    };
    for (label, login) in logins {
        match ask(login.clone()).await {
            Ok(id) => return Ok(id),
            Err(e) => next(label, e)?,
        }
    }
    // Read only when the others could not ask: it costs a call.
    if let Some(id) = master {
        if let Some(s) = rotator
            .read_user_secret(id, At::Stage(Stage::Current))
            .await?
        {
            match ask(s.credentials).await {
                Ok(found) => return Ok(found),
                Err(e) => next(&format!("master secret {id}"), e)?,
            }
        }
    }
    Err(RotationError::NoServerIdentity {
        at: server.to_string(),
        tried: tried.join("; "),
    })
}

/// Marks the user in use as this secret's, and claims the target (`claim_user`), at once, under
/// keys of the server's identity. The mark goes first in effect, even when the claim is refused:
/// another secret then sees it. A user the record says this secret marked already
/// (`StepRecord::marked`) is not marked again; one marked now is pushed to `marked`, for the
/// record.
/// `inherited` gets the pending versions of another secret's rotations that held the claim and
/// ended unfinished (`record::elsewhere`): they may have set the password, and then only they
/// know it. Filled even when a later call fails: the claim that pointed to them may be replaced
/// already.
pub(super) async fn claim_users(
    rotator: &Rotator,
    lease: &Lease,
    c: UserClaims,
    inherited: &mut Vec<String>,
    marked: &mut Vec<String>,
) -> Result<(), RotationError> {
    if mutants::on(Mutant::NoUserClaim) {
        return Ok(());
    }
    let asked = match c.asked {
        Some(rx) => rx.await.ok().and_then(Result::ok),
        None => None,
    };
    let server = match asked {
        Some(server) => server,
        // That login failed (or there was none): another login asks.
        None => identify(rotator, c.engine, &c.server, &c.logins, c.master.as_deref()).await?,
    };
    let server = if mutants::on(Mutant::ClaimsByHostName) {
        ServerIdentity {
            key: format!("host:{}", c.server),
            detail: c.server.to_string(),
        }
    } else {
        server
    };
    let (target_key, in_use_key) = (
        user_key(c.engine, &server, &c.target),
        user_key(c.engine, &server, &c.in_use),
    );
    let mark = async {
        if c.record.marked.contains(&in_use_key) {
            return Ok(());
        }
        rotator
            .records
            .mark_in_use(&in_use_key, &c.claim.secret)
            .await?;
        marked.push(in_use_key.clone());
        Ok::<(), RecordStoreError>(())
    };
    let (claimed, mark) = tokio::join!(
        claim_user(
            rotator,
            &target_key,
            &c.target,
            &c.claim,
            Some((lease, &c.record, inherited))
        ),
        mark
    );
    mark?;
    claimed
}

/// adopt, before it sets the password of a user that existed already: the check a rotation
/// makes, so that a user another secret uses keeps its password.
pub(crate) async fn claim_existing_user(
    rotator: &Rotator,
    engine: Engine,
    server: &ServerIdentity,
    user: &str,
    secret: &str,
) -> Result<(), RotationError> {
    let claim = UserClaim {
        secret: secret.to_owned(),
        rotation_id: "adopt".to_owned(),
    };
    claim_user(rotator, &user_key(engine, server, user), user, &claim, None).await
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
    persist: Option<(&Lease, &StepRecord, &mut Vec<String>)>,
) -> Result<(), RotationError> {
    // A deleted secret's lease, held until the claim that replaces its rotation's is written:
    // restored meanwhile, that secret's resumed rotation could not write a claim of its own.
    let mut deleted: Option<Lease> = None;
    let result = claim_user_holding(rotator, user_key, user, claim, persist, &mut deleted).await;
    if let Some(lease) = deleted {
        if let Err(e) = rotator.records.release(&lease).await {
            warn!(secret = %lease.key, error = %e, "could not release a deleted secret's lease; it runs out by itself");
        }
    }
    result
}

async fn claim_user_holding(
    rotator: &Rotator,
    user_key: &str,
    user: &str,
    claim: &UserClaim,
    persist: Option<(&Lease, &StepRecord, &mut Vec<String>)>,
    deleted: &mut Option<Lease>,
) -> Result<(), RotationError> {
    let mut replacing: Option<UserClaim> = None;
    let mut persist = persist;
    // Each pass finds a newer holder; a few passes in a row mean a live contest.
    for _ in 0..3 {
        let holder = match rotator
            .records
            .claim_user(user_key, claim, replacing.as_ref())
            .await?
        {
            Claimed::Ours { in_use_by } => {
                for other in in_use_by.iter().filter(|s| **s != claim.secret) {
                    match uses(rotator, other, user).await? {
                        Uses::Yes => {
                            return Err(RotationError::UserShared {
                                user: user.to_owned(),
                                secret: other.clone(),
                            })
                        }
                        Uses::No => {}
                        // Its mark only grows the set: cleared as it is met.
                        Uses::Gone => {
                            if let Err(e) = rotator.records.unmark(user_key, other).await {
                                warn!(%user, secret = %other, error = %e, "could not clear the mark of a deleted secret");
                            }
                        }
                    }
                }
                return Ok(());
            }
            Claimed::HeldBy(holder) => holder,
        };
        let mut record = rotator.records.load(&holder.secret).await?;
        // Read once per holder: a deleted one is known not to use the user below.
        let mut gone = false;
        let its_own =
            |r: &StepRecord| r.rotation_id.as_deref() == Some(holder.rotation_id.as_str());
        if record
            .as_ref()
            .is_some_and(|r| r.is_in_progress() && its_own(r))
        {
            let busy = || RotationError::UserBusy {
                user: user.to_owned(),
                secret: holder.secret.clone(),
                rotation_id: holder.rotation_id.clone(),
            };
            // A secret scheduled for deletion, or gone, can never finish its rotation: once its
            // lease is ours, no process of it is inside a step, and the claim is taken over as
            // an ended one. Otherwise its rotation goes on: wait for it.
            if uses(rotator, &holder.secret, user).await? != Uses::Gone {
                return Err(busy());
            }
            gone = true;
            let Some((lease, ended)) = ended_by_deletion(rotator, &holder.secret).await? else {
                return Err(busy());
            };
            if let Some(earlier) = deleted.replace(lease) {
                let _ = rotator.records.release(&earlier).await;
            }
            // Ended unfinished: its own version may hold the password it set, as a failed
            // rotation's does (read through the claim's hand-over below).
            record = ended.map(|r| {
                let mut r = *r;
                if r.is_in_progress() {
                    r.state = super::record::State::Failed;
                }
                r
            });
        }
        // Ended. If the user is what that secret's applications use now, changing its password
        // breaks them.
        if !gone && uses(rotator, &holder.secret, user).await? == Uses::Yes {
            return Err(RotationError::UserShared {
                user: user.to_owned(),
                secret: holder.secret,
            });
        }
        // Ended. Another secret's rotations that did not finish (this one, and those its record
        // carries) may have set the password, which then only their pending versions know.
        if holder.secret != claim.secret {
            let theirs = record
                .map(|r| r.unfinished_for(user))
                .unwrap_or_default()
                .into_iter()
                .map(|entry| match parse_elsewhere(&entry) {
                    // One that it had from us is ours again.
                    Some((secret, id)) if secret == claim.secret => id.to_owned(),
                    Some(_) => entry,
                    None => elsewhere(&holder.secret, &entry),
                });
            if let Some((lease, record, inherited)) = persist.as_mut() {
                let new: Vec<String> = theirs
                    .filter(|v| !record.unfinished_versions.contains(v) && !inherited.contains(v))
                    .collect();
                if !new.is_empty() {
                    inherited.extend(new);
                    // Stored before the claim that points to them is replaced: a crash in
                    // between must not leave the only reference gone.
                    let mut stored = (*record).clone();
                    stored
                        .unfinished_versions
                        .splice(0..0, inherited.iter().cloned());
                    rotator.records.save(lease, &stored).await?;
                }
            }
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

/// The lease and record of a deleted secret whose rotation is in progress, once nothing of
/// that rotation can still land: the lease was free or released, or its holder stopped
/// renewing it for a whole period (as any taker sees it, `acquire`). `None` while a holder
/// still renews it: that process stops at its next call to Secrets Manager, and a later attempt
/// finds the lease free. The caller releases the lease.
async fn ended_by_deletion(
    rotator: &Rotator,
    secret: &str,
) -> Result<Option<(Lease, Option<Box<StepRecord>>)>, RotationError> {
    match acquire(rotator, secret, LeaseWait::No, |_| None, None).await {
        Ok(Taken::Lease(lease, record, _)) => Ok(Some((lease, record))),
        Ok(Taken::Begun(..) | Taken::Answered(_)) => unreachable!("neither begin nor skip asked"),
        Err(RotationError::Busy { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a secret that marked or claimed a user has it in AWSCURRENT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uses {
    Yes,
    No,
    /// Scheduled for deletion, or gone: it uses nobody.
    Gone,
}

/// Whether `user` is what `secret`'s applications use now (its AWSCURRENT). A secret scheduled
/// for deletion (reads refused with InvalidRequestException, DescribeSecret shows DeletedDate)
/// or gone uses nobody. One that cannot be read for another reason (a policy's deny, a KMS key)
/// may still be in use: refused, naming the command that clears its marks.
pub(crate) async fn uses(
    rotator: &Rotator,
    secret: &str,
    user: &str,
) -> Result<Uses, RotationError> {
    let unreadable = |reason: String| RotationError::MarkUnreadable {
        secret: secret.to_owned(),
        user: user.to_owned(),
        reason,
    };
    match rotator.secrets.get(secret, At::Stage(Stage::Current)).await {
        Ok(Some(v)) => Ok(match crate::secret::AppSecret::parse(&v.value) {
            Ok(app) if app.credentials.username == user => Uses::Yes,
            Ok(_) => Uses::No,
            Err(e) => return Err(unreadable(format!("its AWSCURRENT does not parse: {e}"))),
        }),
        Ok(None) | Err(SecretStoreError::NotFound(_)) => Ok(Uses::Gone),
        Err(SecretStoreError::InvalidRequest(m)) => match rotator.secrets.describe(secret).await {
            Ok(meta) if meta.deleted => Ok(Uses::Gone),
            Err(SecretStoreError::NotFound(_)) => Ok(Uses::Gone),
            Ok(_) => Err(unreadable(m)),
            Err(e) if e.is_retryable() => Err(e.into()),
            Err(e) => Err(unreadable(e.to_string())),
        },
        Err(e) if e.is_retryable() => Err(e.into()),
        Err(e) => Err(unreadable(e.to_string())),
    }
}

/// How much of its lease a holder uses, by its own clock: the rest covers clocks that run at
/// slightly different rates (real ones differ by parts per million; this allows 10 %).
pub(crate) fn holder_window(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

/// How long a taker watches a lease unchanged before it takes it, as the holder writes it in
/// the lease: the holder's lease, plus the longest a database statement it sent just before
/// its window closed may still run (the server's own bound on it, `--db-timeout`). So an
/// effect in flight when the holder stops lands before anyone else may act.
pub(crate) fn takeover_period(settings: &super::Settings) -> Duration {
    settings.lease_duration + settings.retry.db_timeout
}

/// What the work under a lease and its heartbeat tell each other.
#[derive(Debug)]
pub(crate) struct Flags {
    /// A renewal found someone else holding the lease: the work stops at once.
    pub lost: AtomicBool,
    /// The work gave the lease back with its last write: nothing is left to renew or release.
    pub released: AtomicBool,
    /// The work was stopped inside a step: a statement it sent may still land (within the
    /// server's bound, `--db-timeout`), so the lease is left to expire rather than released,
    /// and a taker waits out `takeover_period`, which covers that bound.
    pub cut: AtomicBool,
    /// Until when the lease is ours by our monotonic clock: the send time of the last write that
    /// took or renewed it, plus `holder_window`.
    valid_until: Mutex<Instant>,
    clock: Arc<dyn Clock>,
}

impl Flags {
    pub fn new(clock: Arc<dyn Clock>, lease: &Lease, ttl: Duration) -> Self {
        Self {
            lost: AtomicBool::new(false),
            released: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            valid_until: Mutex::new(lease.sent_at + holder_window(ttl)),
            clock,
        }
    }

    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().expect("lease flags")
    }

    /// The lease may be someone else's now: a renewal said so, or renewals have failed (say,
    /// the state table is unreachable) until it ran out by our own clock.
    pub fn may_be_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.clock.now() >= self.valid_until()
    }

    /// Resolves once `may_be_lost`: the work racing it is stopped there, inside a step, before
    /// its next external effect.
    pub async fn until_lost(&self) {
        while !self.may_be_lost() {
            let until = self
                .valid_until()
                .min(self.clock.now() + Duration::from_millis(50));
            self.clock.sleep_until(until).await;
        }
    }
}

/// Runs `work` while renewing the lease every third of its duration. When a renewal finds that
/// someone else took the lease, `lost` is set; the work stops (`until_lost`), and its record
/// writes would be refused by the fence anyway.
pub(crate) async fn heartbeat<T>(
    rotator: &Rotator,
    lease: &Lease,
    flags: &Flags,
    work: impl Future<Output = T>,
) -> T {
    let lost = &flags.lost;
    let (ttl, advertised) = (
        rotator.settings.lease_duration,
        takeover_period(&rotator.settings),
    );
    // The lease is fresh: the first renewal is due a period from now.
    let (clock, period) = (&rotator.clock, ttl / 3);
    let mut due = clock.now() + period;
    // Beside the work, not inside a select arm: the work goes on while a renewal waits.
    let renewals = async {
        loop {
            clock.sleep_until(due).await;
            // A renewal late by more than a moment (a slow one before it) pushes the next one
            // back, rather than sending two at once.
            let now = clock.now();
            due = if now > due + Duration::from_millis(5) {
                now + period
            } else {
                due + period
            };
            if lost.load(Ordering::SeqCst) || flags.released.load(Ordering::SeqCst) {
                continue;
            }
            // Counted from the send: the taker's period starts no earlier than the write lands.
            let sent = clock.now();
            // A renewal that takes longer than the lease is worth nothing.
            let renewed = clock
                .timeout(holder_window(ttl), rotator.records.renew(lease, advertised))
                .await;
            match renewed {
                Ok(Ok(())) => {
                    *flags.valid_until.lock().expect("lease flags") = sent + holder_window(ttl);
                }
                Ok(Err(RecordStoreError::Fenced(fence))) => {
                    warn!(secret = %lease.key, fence, "lease taken over by another worker; stepping back");
                    lost.store(true, Ordering::SeqCst);
                }
                Ok(Err(e)) => {
                    warn!(secret = %lease.key, error = %e, "could not renew the lease; will retry")
                }
                Err(_) => warn!(secret = %lease.key, "the lease renewal got no answer; will retry"),
            }
        }
    };
    tokio::pin!(work);
    tokio::pin!(renewals);
    tokio::select! {
        // In order, not at random: a simulated run replays exactly (renewals never end anyway).
        biased;
        out = &mut work => out,
        _ = &mut renewals => unreachable!("renewals never end"),
    }
}
