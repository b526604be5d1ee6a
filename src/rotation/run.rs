//! One rotation in progress under a lease: what the run knows, in types that say what it is,
//! and `drive`, which runs the steps (`protocol`) in table order with the record writes, lease
//! checks and shutdown around them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::early_login::ProxyLogin;
use super::errors::RotationError;
use super::guard;
use super::lease;
use super::ports::{Lease, RecordStoreError, SecretMeta, SecretStoreError, Stage, UserClaim};
use super::record::{Step, StepRecord};
use super::report::Trace;
use super::rotator::Rotator;
use crate::failpoint;
use crate::secret::{AppSecret, Credentials, UserSecret};

/// One rotation in progress under a lease.
pub(super) struct Run<'a> {
    pub(super) rotator: &'a Rotator,
    pub(super) lease: &'a Lease,
    pub(super) flags: &'a lease::Flags,
    pub(super) trace: &'a Trace,
    pub(super) record: StepRecord,
    /// Whether the store holds `record` as it is here (see `drive` for when it is written).
    pub(super) saved: Saved,
    /// What earlier attempts may have written: whether the steps look before they write.
    pub(super) earlier: Earlier,
    labels: Labels,
    /// The AWSCURRENT version the rotation began from, parsed.
    pub(super) current: Option<AppSecret>,
    /// The target user's proxy secret as planning read it (a run that begins the rotation).
    pub(super) proxy: Option<UserSecret>,
    /// The target user's new credentials, read back from the pending version.
    pub(super) pending: Option<Credentials>,
    /// The idle user's login with its proxy secret, opened ahead.
    pub(super) login: ProxyLogin,
    /// Whether the in-use guard has let this run change the password.
    pub(super) guard: Guard,
    /// Whether the test may still send the rotation back to set the password again.
    pub(super) set_again: SetAgain,
    /// RDS's readers of the database, asked when the run starts (see `guard::Discovery`).
    pub(super) discovery: guard::Discovery,
    /// The in-use guard's policy for this request.
    pub(super) in_use: guard::InUsePolicy,
    /// The last step to run: a call of Secrets Manager's runs up to its own, anything else to
    /// `Done`.
    pub(super) through: Step,
    /// The idle user's proxy secret holds the staged version already: set_password wrote it
    /// beside the database's change (a fresh rotation), so update_proxy only moves the label.
    pub(super) proxy_staged: bool,
    /// What set_password stages beside its statement, until it does (`proxy_to_stage`).
    pub(super) to_stage: Option<(String, String, secrecy::SecretString)>,
    /// The app secret's labels, read beside the proxy secret's compare-and-swap, and when: finish
    /// uses them instead of reading them again while they are fresh (`LABELS_FRESH`).
    pub(super) labels_ahead: Option<(SecretMeta, tokio::time::Instant)>,
    /// AWSPENDING to drop from the version finish made AWSCURRENT, beside the last record write
    /// and the release (`drive`): no round trip of its own.
    pub(super) drop_pending: Option<(String, String)>,
}

/// What earlier attempts may have left of this rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Earlier {
    /// Its id was made by this run moments ago and no attempt has failed yet: no version carries
    /// it, so the steps write without reading first.
    Nothing,
    /// Resumed, retried, taken over, or named by Secrets Manager: a step may be half done, so
    /// each one looks before it writes.
    Unknown,
}

/// Whether the store holds the record as the run has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Saved {
    Yes,
    /// The run advanced past what the store holds.
    Behind,
}

/// What the in-use guard said in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// It has not looked yet: it looks before this run changes the password.
    ToLook,
    /// It let this run change the password, or the password had changed already. Setting it
    /// again (the test found the database refusing it) does not wait for the guard, which would
    /// count the test's own pooled connection.
    Passed,
}

/// Whether the test may send the rotation back to set the password again, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SetAgain {
    Allowed,
    Spent,
}

/// The labels as the run began.
enum Labels {
    /// Read just before the lease (DescribeSecret): the first look at AWSCURRENT uses them.
    AsBegun(SecretMeta),
    /// Used, or stale after a failed attempt: read again.
    ReadAgain,
}

/// How a run starts: what `rotator` found or made, for `Run::new`.
pub(super) struct Begun<'a> {
    pub lease: &'a Lease,
    pub flags: &'a lease::Flags,
    pub trace: &'a Trace,
    pub record: StepRecord,
    pub labels: SecretMeta,
    pub earlier: Earlier,
    /// What planning read: AWSCURRENT parsed, the idle user's proxy secret.
    pub current: Option<AppSecret>,
    pub proxy: Option<UserSecret>,
    pub login: ProxyLogin,
    pub in_use: guard::InUsePolicy,
    pub through: Step,
}

impl<'a> Run<'a> {
    pub(super) fn new(rotator: &'a Rotator, b: Begun<'a>) -> Self {
        Self {
            rotator,
            lease: b.lease,
            flags: b.flags,
            trace: b.trace,
            record: b.record,
            saved: Saved::Yes,
            earlier: b.earlier,
            labels: Labels::AsBegun(b.labels),
            current: b.current,
            proxy: b.proxy,
            pending: None,
            login: b.login,
            guard: Guard::ToLook,
            set_again: SetAgain::Allowed,
            discovery: guard::Discovery::default(),
            in_use: b.in_use,
            through: b.through,
            proxy_staged: false,
            to_stage: None,
            labels_ahead: None,
            drop_pending: None,
        }
    }

    /// After a failed attempt: it may have done part of its step, so the next one checks; the
    /// labels and the login opened ahead are stale.
    pub(super) fn after_failure(&mut self) {
        self.earlier = Earlier::Unknown;
        self.labels = Labels::ReadAgain;
        self.login = ProxyLogin::NotOpened;
        self.labels_ahead = None;
        self.to_stage = None;
        // Looked for again: `written` says whether an earlier attempt's staged version landed.
        self.proxy_staged = false;
    }

    /// Another secret's unfinished pending versions, found with the claim
    /// (`lease::claim_users`): set_password tries them, and the record keeps them until the
    /// password changes.
    fn inherit(&mut self, versions: Vec<String>) {
        let new: Vec<String> = versions
            .into_iter()
            .filter(|v| !self.record.unfinished_versions.contains(v))
            .collect();
        if !new.is_empty() {
            self.record.unfinished_versions.splice(0..0, new);
            self.saved = Saved::Behind;
        }
    }

    /// Writes the record if the run is ahead of the store.
    pub(super) async fn save_if_behind(&mut self) -> Result<(), RotationError> {
        if self.saved == Saved::Behind {
            self.rotator.records.save(self.lease, &self.record).await?;
            self.saved = Saved::Yes;
        }
        Ok(())
    }
}

impl Run<'_> {
    pub(super) fn arn(&self) -> &str {
        &self.record.secret_id
    }

    pub(super) fn rotation_id(&self) -> &str {
        self.record
            .rotation_id
            .as_deref()
            .expect("a running rotation has an id")
    }

    pub(super) fn target_user(&self) -> &str {
        self.record
            .target_user
            .as_deref()
            .expect("a running rotation has a target user")
    }

    /// Runs the steps in order. Every step checks what an earlier attempt did, so the record
    /// need not be written after each one; it is written where that buys something:
    /// - a new rotation's record before its first step (with the lease, or in `Rotator::run`), so that
    ///   the rotation id is stored before AWSPENDING is written;
    /// - in the test, once its first login is refused: it may wait minutes for the proxy, so
    ///   status shows that, and a crash while waiting does not redo the proxy step;
    /// - with the release, after finish;
    /// - at shutdown, wherever the run stopped.
    ///
    /// Not beside set_password: a run resumed from create_pending finds the version and the
    /// password in place and moves on, and the record names the rotation's version either way
    /// (`StepRecord::unfinished_for`). A worker that lost its lease stops before the next step by
    /// its own clock, or when a renewal is refused; what it may still send is idempotent (the same
    /// password, read from the pending version) or a compare-and-swap that fails once another
    /// run has moved on (the proxy secret's, AWSCURRENT's).
    ///
    /// "Beside" is at the same time: the step and the write run together, and the step's result
    /// counts only if the write succeeds.
    pub(super) async fn drive(&mut self) -> Result<(), RotationError> {
        // A failure before the first step is not the last attempt's step's.
        self.trace.with(|t| t.last_step = None);
        // What RDS says about the database (its readers for the guard, its Blue/Green
        // deployments): asked now, beside the calls before AWSPENDING is written and the password
        // set, so that neither waits for RDS.
        if self.record.step <= Step::SetPassword {
            let db = self.current().await?.rds_db();
            self.discovery = guard::Discovery::start(self.rotator.rds.clone(), db);
        }
        self.check_current_label().await?;
        // The claims on the database users (see `lease::claim_users`) are taken beside the
        // first step of a new rotation (writing AWSPENDING changes no password), before any other.
        let mut claims = if self.record.step == Step::Done {
            None
        } else {
            let (target, in_use) = (
                self.target_user().to_owned(),
                self.record.current_user.clone().unwrap_or_default(),
            );
            let current = self.current().await?.clone();
            // Who may ask the server who it is: the user in use (its applications log in with
            // it), then the idle user's proxy secret as planning read it, then the master secret.
            let mut logins = vec![("AWSCURRENT".to_owned(), current.credentials.clone())];
            logins.extend(self.proxy.as_ref().map(|p| {
                (
                    "the idle user's proxy secret".to_owned(),
                    p.credentials.clone(),
                )
            }));
            let asked = self.login.identity();
            Some(lease::UserClaims {
                asked,
                target,
                in_use,
                claim: UserClaim {
                    secret: self.record.secret_id.clone(),
                    rotation_id: self.record.rotation_id.clone().unwrap_or_default(),
                },
                engine: current.engine,
                server: current.admin_endpoint().clone(),
                logins,
                master: current.master_secret_id.clone(),
                record: self.record.clone(),
            })
        };
        if self.record.step != Step::CreatePending {
            if let Some(claims) = claims.take() {
                let (mut inherited, mut marked) = (Vec::new(), Vec::new());
                let claimed = lease::claim_users(
                    self.rotator,
                    self.lease,
                    claims,
                    &mut inherited,
                    &mut marked,
                )
                .await;
                self.inherit(inherited);
                self.record.marked.extend(marked);
                claimed?;
            }
        }
        while self.record.step != Step::Done && self.record.step <= self.through {
            if self.flags.may_be_lost() {
                return Err(RotationError::LeaseLost(self.arn().to_owned()));
            }
            if self.rotator.shutdown.is_triggered() {
                self.save_if_behind().await?;
                return Err(RotationError::Interrupted(self.arn().to_owned()));
            }
            let step = self.record.step;
            failpoint::hit(&format!("before:{step}")).await;
            let began = self.rotator.clock.now();
            self.trace.with(|t| t.last_step = Some(step));
            // Stopped inside the step when the lease may be lost (by our own clock) or the
            // process must stop now: every step is idempotent, and the next run resumes it.
            let (flags, shutdown) = (self.flags, self.rotator.shutdown.clone());
            let next = tokio::select! {
                // Checked first: a step ready at the same moment does not send another request.
                biased;
                _ = flags.until_lost() => {
                    flags.cut.store(true, Ordering::SeqCst);
                    return Err(RotationError::LeaseLost(self.arn().to_owned()));
                }
                _ = shutdown.wait_now() => {
                    flags.cut.store(true, Ordering::SeqCst);
                    if self.saved == Saved::Behind {
                        // Lambda's margin is short: a save that gets no answer is left behind.
                        let save = self.rotator.records.save(self.lease, &self.record);
                        if let Ok(saved) = self.rotator.clock.timeout(Duration::from_secs(3), save).await {
                            saved?;
                            self.saved = Saved::Yes;
                        }
                    }
                    return Err(RotationError::Interrupted(self.arn().to_owned()));
                }
                next = self.step_with_claims(step, claims.take()) => next?,
            };
            let took = self.rotator.clock.now() - began;
            self.trace.with(|t| t.steps.push((step, took)));
            failpoint::hit(&format!("after:{step}")).await;
            self.record.advance(next, self.rotator.clock.now_ms());
            self.saved = Saved::Behind;
            if next == Step::Done {
                self.record.calls = crate::calls::snapshot();
                let (records, secrets) = (&self.rotator.records, &self.rotator.secrets);
                // Beside the release: its RemoveFromVersionId names this rotation's version, so a
                // late answer cannot take the label off a later rotation's.
                let drop_pending = async {
                    let Some((arn, id)) = self.drop_pending.take() else {
                        return;
                    };
                    match secrets.remove_stage(&arn, Stage::Pending, &id).await {
                        Ok(()) => {}
                        // Not there: an earlier attempt whose answer was lost removed it, or
                        // someone moved it.
                        Err(SecretStoreError::Refused(_)) => {}
                        // Harmless on AWSCURRENT's version: planning ignores it there, and takes
                        // it for ours (`begin::left_by_us`) if an edit strands it.
                        Err(e) => {
                            warn!(secret = %arn, error = %e, "could not drop AWSPENDING from the rotation's version; it stays on AWSCURRENT's")
                        }
                    }
                };
                let (saved, ()) = tokio::join!(
                    records.save_and_release(self.lease, &self.record),
                    drop_pending
                );
                match saved {
                    Ok(()) => self.flags.released.store(true, Ordering::SeqCst),
                    // The rotation is complete whatever the record says: the next run for this
                    // secret finds AWSCURRENT on the rotation id and only writes the record. Not
                    // an error to retry here (the lease may already be free).
                    Err(e) => warn!(secret = %self.arn(), error = %e,
                                    "rotation complete, but its last record write failed; the next run records it"),
                }
                self.saved = Saved::Yes;
            }
            info!(secret = %self.arn(), rotation_id = %self.rotation_id(), done = %step, next = %next, "step complete");
        }
        // Stopped at the call's step: the next call may run in another process.
        if self.record.step != Step::Done {
            self.save_if_behind().await?;
        }
        Ok(())
    }

    /// One step, with the writes that go beside it (see `drive`).
    async fn step_with_claims(
        &mut self,
        step: Step,
        claims: Option<lease::UserClaims>,
    ) -> Result<Step, RotationError> {
        Ok(if let Some(claims) = claims {
            let (rotator, lease) = (self.rotator, self.lease);
            let (mut inherited, mut marked) = (Vec::new(), Vec::new());
            let (next, claimed) = tokio::join!(
                self.run_step(step),
                lease::claim_users(rotator, lease, claims, &mut inherited, &mut marked)
            );
            // Kept whatever else failed: the claim that pointed to it may be replaced already.
            self.inherit(inherited);
            // Saved with the next record write, whenever that is: until then a run marks again.
            self.record.marked.extend(marked);
            match claimed {
                Ok(()) => {}
                Err(e) => {
                    // Refused for good: this rotation will not run, so its AWSPENDING goes too
                    // (no password changed). A wait keeps it, to resume.
                    if next.is_ok() && !e.is_retryable() {
                        let (arn, id) = (self.arn().to_owned(), self.rotation_id().to_owned());
                        if let Err(undo) = rotator
                            .secrets
                            .remove_stage(&arn, Stage::Pending, &id)
                            .await
                        {
                            warn!(secret = %arn, error = %undo, "could not remove AWSPENDING of a refused rotation");
                        }
                    }
                    return Err(e);
                }
            }
            next?
        } else {
            self.run_step(step).await?
        })
    }

    /// AWSCURRENT must still be where the rotation began, unless this rotation already moved it.
    pub(super) async fn check_current_label(&mut self) -> Result<(), RotationError> {
        // The labels read just before the lease will do: if AWSCURRENT moves after that, the
        // finish step's compare-and-swap refuses.
        let meta = match std::mem::replace(&mut self.labels, Labels::ReadAgain) {
            Labels::AsBegun(m) => m,
            Labels::ReadAgain => self.rotator.secrets.describe(self.arn()).await?,
        };
        // Attached since the rotation began: two rotators must not take turns on one user.
        self.rotator.settings.refuse_managed_rotation(&meta)?;
        let expected = self.record.current_version.clone().unwrap_or_default();
        match meta.version_with(Stage::Current) {
            Some(v) if v == expected => Ok(()),
            // Crashed after the stage move but before the record said so: only cleanup remains.
            Some(v) if v == self.rotation_id() => {
                self.record.step = Step::Finish;
                Ok(())
            }
            found => Err(RotationError::CurrentMoved {
                secret: self.arn().to_owned(),
                expected,
                found: found.unwrap_or("nothing").to_owned(),
            }),
        }
    }

    pub(super) async fn current(&mut self) -> Result<&AppSecret, RotationError> {
        if self.current.is_none() {
            let version = self.record.current_version.clone().unwrap_or_default();
            self.current = Some(self.rotator.read_app_secret(self.arn(), &version).await?);
        }
        Ok(self.current.as_ref().expect("just loaded"))
    }

    /// The pending credentials, always as stored in the version `rotation id`.
    pub(super) async fn pending(&mut self) -> Result<Credentials, RotationError> {
        if let Some(p) = &self.pending {
            return Ok(p.clone());
        }
        let arn = self.arn().to_owned();
        let id = self.rotation_id().to_owned();
        let app = self.rotator.read_app_secret(&arn, &id).await?;
        if app.credentials.username != self.target_user() {
            return Err(RotationError::Inconsistent {
                secret: arn,
                reason: format!(
                    "pending version {id} is for user {}, the rotation targets {}",
                    app.credentials.username,
                    self.target_user()
                ),
            });
        }
        self.pending = Some(app.credentials.clone());
        Ok(app.credentials)
    }

    /// Notes the error in the record: fatal ends the rotation, retryable leaves it to resume.
    pub(super) async fn record_failure(&mut self, e: &RotationError) {
        if matches!(e, RotationError::Interrupted(_)) {
            info!(secret = %self.arn(), step = %self.record.step, "stopped for shutdown; the next run resumes here");
            return;
        }
        if matches!(
            e,
            RotationError::LeaseLost(_) | RotationError::Records(RecordStoreError::Fenced(_))
        ) {
            // Not ours to write any more.
            warn!(secret = %self.arn(), error = %e, "lease lost; leaving the record to its new owner");
            return;
        }
        // The step that failed (the test step may have sent the record back to set_password).
        let mut step = self.record.step;
        self.trace.with(|t| step = t.last_step.unwrap_or(step));
        let reason = format!("{step}: {e}");
        self.record
            .note_error(reason, !e.is_retryable(), self.rotator.clock.now_ms());
        self.record.calls = crate::calls::snapshot();
        if let Err(save) = self.rotator.records.save(self.lease, &self.record).await {
            warn!(secret = %self.arn(), error = %save, "could not record the failure");
        }
    }
}
