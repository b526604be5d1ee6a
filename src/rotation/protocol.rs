//! The rotation protocol: the step table and the five steps, in table order.
//!
//! Where everything else went (for the next reader):
//! - `begin`: what to do with a request (begin, resume, retry, skip, refuse), as pure decisions;
//!   `rotator`: the reads around them and the lease, then a `Run`;
//! - `run`: the run's state and `drive`, which runs these steps with the record writes, lease
//!   checks and shutdown around them; `retry`: the loop around `drive`;
//! - `sources`: where the idle user's current password may be known (`KnownSource`);
//!   `accounts`: MySQL's accounts per host; `guard`: the in-use guard; `bluegreen`: RDS
//!   Blue/Green deployments; `lease`: the lease and the claims on database users;
//! - `versions`: idempotent reads and writes of secret versions; `invocation`: Secrets
//!   Manager's calls; `record`: the persisted step record; `ports`: the narrow traits;
//!   `clock`: time; `errors`, `settings`, `request`, `report`, `shutdown`: what they say.
//!
//! A secret names a pair (or ring) of database users. Applications use the user in AWSCURRENT;
//! the rotation changes the password of the *next* user, the idle one, so no application ever
//! holds credentials that stop working. Each rotation runs these steps under a fenced lease.
//! Each step begins with its "already done?" check (skipped only when nothing can be done yet,
//! `Earlier::Nothing`) and returns the next step, which `drive` records:
//!
//! | step           | effect                                              | already done when                         |
//! |----------------|-----------------------------------------------------|-------------------------------------------|
//! | (begin)        | record: rotation id, current version, users (with the lease) | a record in progress exists: resume it |
//! | create_pending | AWSPENDING version, ClientRequestToken = rotation id; beside it, the claim on the idle user | version `rotation id` exists |
//! | set_password   | the idle user's password in the database, unless it is still in use (`guard`) | the pending credentials log in |
//! | update_proxy   | the idle user's RDS Proxy secret = new password (staged, beside set_password in a fresh rotation; then CAS on the planned version) | version `proxy_token(rotation id)` is AWSCURRENT |
//! | test           | pending credentials log in along the app's path      | (read-only: always re-run)                |
//! | finish         | AWSPENDING still ours? AWSCURRENT -> pending (CAS on the old version); AWSPENDING stays there, unless Secrets Manager's rotation is on (then dropped beside the release) | AWSCURRENT is the rotation id |
//!
//! What each call needs, for an undisturbed rotation (`||` runs at once; each line is one serial
//! round trip to AWS, eight in all; the database's own round trips are not AWS's):
//!
//! | # | calls | needs |
//! |---|-------|-------|
//! | 1 | GetSecretValue(AWSCURRENT) \|\| DescribeSecret | the secret's id |
//! | 2 | the idle user's proxy secret: GetSecretValue(AWSCURRENT) \|\| DescribeSecret | AWSCURRENT's value (its proxy secret ids, the idle user) |
//! | 3 | DynamoDB: the lease, with the new record | the plan (1, 2) |
//! | 4 | PutSecretValue(AWSPENDING) \|\| DynamoDB: the claim on the idle user | the lease (the fence), the generated password, the server's identity (a login opened beside 3) |
//! | 5 | beside the database's password change: PutSecretValue(proxy secret, staged) | the pending version (its password), the guard |
//! | 6 | UpdateSecretVersionStage(proxy secret: AWSCURRENT, CAS on the version planning read) \|\| DescribeSecret(app secret) | 5 (the staged version), the database took the password |
//! | 7 | UpdateSecretVersionStage(AWSCURRENT, CAS on the old version) | the test's logins passed; DescribeSecret (AWSPENDING still ours) went beside 6 |
//! | 8 | DynamoDB: the record, finished, with the release | 7 |
//!
//! 12 calls: Secrets Manager's 9 (3 DescribeSecret, 2 GetSecretValue, 2 PutSecretValue, 2
//! UpdateSecretVersionStage), 4 of them writes, and DynamoDB's 3 writes. What went, and why
//! nothing is lost:
//! - dropping AWSPENDING (a Secrets Manager write): AWS's contract lets it stay on the version
//!   that becomes AWSCURRENT. An edit strands it on an older version; planning takes that for
//!   ours (`StepRecord::pending_left`, carried by every later record). Secrets Manager's
//!   RotateSecret would refuse to rotate past it, so with its rotation on, finish still drops it;
//! - the record write beside set_password: every step checks what was done first, and a worker
//!   that lost its lease stops before its next step by its own clock (`drive`);
//! - the mark on the user in use, after a secret's first two rotations: the record remembers
//!   the users it marked (`StepRecord::marked`), and by then each user it uses is also one its
//!   own rotation claimed, which keeps other secrets off it too (`lease::claim_user`).
//!
//! RDS's DescribeDBInstances/Clusters (the guard's readers, Blue/Green) are counted apart and go
//! beside other calls (`guard::Discovery`).
//!
//! The rotation id is persisted before AWSPENDING is written, so a crash at any instant resumes
//! with the same id, and the resumed run reads the password back from that version instead of
//! generating a new one. A rotation that fails or is aborted after set_password leaves its id in
//! the record, and the next one logs in with that version's password (`KnownSource`).
//!
//! Planning refuses, before anything is written, a secret that another rotator also works on:
//! Secrets Manager's own rotation attached to a function that is not this tool, or an AWSPENDING
//! that no rotation of ours made (nor Secrets Manager, for this tool's function).
//!
//! Secrets Manager's rotation function (`crate::lambda`) runs these same steps: each of its calls
//! names the rotation by its ClientRequestToken and runs the steps up to its own
//! (`invocation`), so a rotation may be begun by one process and finished by another.

use std::sync::Mutex;

use backon::Retryable;
use tracing::info;

use super::accounts::{only_account, UNLISTED};
use super::clock::ClockSleeper;
use super::early_login::ProxyLogin;
use super::errors::RotationError;
use super::ports::{At, DbError, DbSession, SecretStoreError, Stage};
use super::record::Step;
use super::run::{Earlier, Guard, Run, Saved, SetAgain};
use super::sources::KnownSource;
use super::versions::{proxy_token, Swap};
use crate::failpoint;
use crate::mutants::{self, Mutant};
use crate::secret::{Credentials, Endpoint, Engine};

impl Run<'_> {
    /// The step table, as code.
    pub(super) async fn run_step(&mut self, step: Step) -> Result<Step, RotationError> {
        match step {
            Step::CreatePending => self.create_pending().await,
            Step::SetPassword => self.set_password().await,
            Step::UpdateProxy => self.update_proxy().await,
            Step::Test => self.test().await,
            Step::Finish => self.finish().await,
            Step::Done => Ok(Step::Done),
        }
    }

    async fn create_pending(&mut self) -> Result<Step, RotationError> {
        let (arn, id) = (self.arn().to_owned(), self.rotation_id().to_owned());
        // Already done? A version cannot carry an id made moments ago. (A write of an earlier
        // attempt may still land after this read: see the put's answer below.)
        let exists = self.earlier == Earlier::Unknown
            && self
                .rotator
                .secrets
                .get(&arn, At::Version(&id))
                .await?
                .is_some();
        if !exists {
            // Only ever generated here, for a version that does not exist yet: a resumed run reads
            // the stored one, since AWS refuses a different value under the same token.
            let current = self.current().await?.clone();
            let rules = self.server_rules().await?;
            // Not even AWSPENDING while the password could not reach green. (RDS was asked
            // when the run started: its answer came beside the server's.)
            self.blue_green().await?;
            let password = self
                .rotator
                .settings
                .password
                .generate_for(current.engine, &rules)?;
            let creds = Credentials::new(self.target_user(), password);
            let value = current.render_with(&creds);
            let secrets = &self.rotator.secrets;
            match secrets.put(&arn, &id, &value, Stage::Pending).await {
                // What we just stored; a resumed run reads it back instead.
                Ok(()) => self.pending = Some(creds),
                // An earlier attempt's write under this token landed after this run looked (its
                // answer was lost, or it was slower than the timeout): it is this rotation's,
                // and its password may be set already. `pending` reads it back below.
                Err(SecretStoreError::VersionExists(_)) if !mutants::on(Mutant::NoTakeoverRead) => {
                    info!(secret = %arn, rotation_id = %id, "an earlier attempt's pending version landed late; its password is kept");
                }
                Err(SecretStoreError::VersionExists(_)) => {
                    self.rotator
                        .put_once(&arn, &id, &value, Stage::Pending)
                        .await?;
                    self.pending = Some(creds);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.pending().await?;
        Ok(Step::SetPassword)
    }

    /// The password in the database and, in a fresh rotation, beside the statement that changes
    /// it (once the guard let it, so a refusal leaves the proxy secret as it was), the proxy
    /// secret's staged version: not AWSCURRENT, so RDS Proxy does not read it.
    async fn set_password(&mut self) -> Result<Step, RotationError> {
        self.to_stage = self.proxy_to_stage().await?;
        self.set_password_in_db().await
    }

    /// What set_password stages beside the database's change: only in a rotation whose id this
    /// run made (no earlier attempt can have written under its token), from the proxy secret
    /// planning read, when it names the idle user (update_proxy says why not, otherwise).
    async fn proxy_to_stage(
        &mut self,
    ) -> Result<Option<(String, String, secrecy::SecretString)>, RotationError> {
        if self.earlier != Earlier::Nothing || self.proxy_staged {
            return Ok(None);
        }
        let (Some(proxy_id), Some(proxy)) =
            (self.record.proxy_secret_id.clone(), self.proxy.clone())
        else {
            return Ok(None);
        };
        let pending = self.pending().await?;
        if proxy.username() != pending.username {
            return Ok(None);
        }
        let value = proxy.render_with_password(&pending.password);
        Ok(Some((proxy_id, proxy_token(self.rotation_id()), value)))
    }

    async fn set_password_in_db(&mut self) -> Result<Step, RotationError> {
        let pending = self.pending().await?;
        let current = self.current().await?.clone();
        let at = current.admin_endpoint();
        let db = &self.rotator.db;
        // Already set by an earlier attempt? With `Earlier::Nothing` it is not. On MySQL an earlier
        // attempt may have changed some of the user's accounts (one per host) and not all: with a
        // master secret, which changes them all, set them again (it is the same password).
        let may_be_partial =
            current.engine != Engine::Postgres && current.master_secret_id.is_some();
        if self.earlier == Earlier::Unknown {
            match db.check_login(current.engine, at, &pending).await {
                Ok(()) => {
                    self.record.database_login_seen = true;
                    // The password changed already: nothing is left for the guard to protect.
                    self.guard = Guard::Passed;
                    if may_be_partial {
                        self.again_with_master(&current, &pending).await?;
                    }
                    self.record.unfinished_versions.clear();
                    return Ok(Step::UpdateProxy);
                }
                Err(e) if e.try_next_source() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.blue_green().await?;
        let mut tried = Vec::new();
        // The idle user's own login, handed over to the master secret because its accounts
        // could not be listed: the last resort if the master secret does not work.
        let mut unlisted_self = None;
        let master_later = current.master_secret_id.is_some();
        // Read one source at a time: the first usually works, and the others cost calls. A
        // source that logs in but may not make the change (a privilege, a pg_hba rule, a
        // connection limit, an account on another host) hands over to the next one.
        for source in KnownSource::ALL {
            for (label, login) in self.known_credentials(source, &current).await? {
                let Some(login) = login else {
                    tried.push(label);
                    continue;
                };
                // The proxy secret's login may be open already (see `Rotator::run`).
                let session = match (source, self.login.take()) {
                    (KnownSource::ProxySecret, ProxyLogin::Opened(session)) => session,
                    (KnownSource::ProxySecret, ProxyLogin::Opening(early)) => early.session().await,
                    _ => db.login(current.engine, at, &login).await,
                };
                let master_later = master_later && !matches!(source, KnownSource::Master);
                let changed = self
                    .change_with(session, &login, &pending, master_later)
                    .await;
                if master_later
                    && matches!(&changed, Err(RotationError::Database(DbError::NotPermitted(m))) if m.contains(UNLISTED))
                {
                    unlisted_self = Some((label.clone(), login.clone()));
                }
                match changed {
                    Ok(()) => return Ok(self.password_set(&pending.username, &label).await),
                    Err(RotationError::Database(e)) if e.try_next_source() => {
                        tried.push(format!("{label}: {e}"))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // The master secret did not work either: the user's own login, whose other accounts
        // could not be listed, goes ahead when it is the catch-all account (or the one the
        // secret names): see `unlisted_account`.
        if let Some((label, login)) = unlisted_self {
            let session = db.login(current.engine, at, &login).await;
            match self.change_with(session, &login, &pending, false).await {
                Ok(()) => return Ok(self.password_set(&pending.username, &label).await),
                Err(RotationError::Database(e)) if e.try_next_source() => {
                    tried.push(format!("{label}, again: {e}"))
                }
                // Not the catch-all account: the master secret's own failure above is what
                // to fix, and `tried` says it.
                Err(e @ RotationError::AccountsUnlisted { .. }) => {
                    tried.push(format!("{label}, again: {e}"))
                }
                Err(e) => return Err(e),
            }
        }
        Err(RotationError::NoKnownCredentials {
            user: pending.username,
            tried: tried.join("; "),
        })
    }

    /// set_password's end, whichever source did it.
    async fn password_set(&mut self, user: &str, via: &str) -> Step {
        info!(secret = %self.arn(), %user, %via, "password set");
        // The pending version knows the password now; older ones know nothing.
        self.record.unfinished_versions.clear();
        failpoint::hit("inside:set_password").await;
        Step::UpdateProxy
    }

    /// Changes the idle user's password in `session`, logged in as `login`.
    pub(super) async fn change_with(
        &mut self,
        session: Result<Box<dyn DbSession>, DbError>,
        login: &Credentials,
        pending: &Credentials,
        master_later: bool,
    ) -> Result<(), RotationError> {
        let mut session = session?;
        if login.username == pending.username {
            self.record.database_login_seen = true;
        }
        // Single-user rotation changes the user in use by design (it warned).
        if self.current().await?.is_multi_user()
            && self.guard == Guard::ToLook
            && !mutants::on(Mutant::NoGuard)
        {
            self.guard(session.as_mut(), login, &pending.username)
                .await?;
            self.guard = Guard::Passed;
        }
        if login.username == pending.username {
            let host = self.current().await?.account_host.clone();
            only_account(
                session.as_mut(),
                &pending.username,
                master_later,
                host.as_deref(),
            )
            .await?;
        }
        let Some((proxy_id, token, value)) = self.to_stage.take() else {
            session
                .set_password(&pending.username, &pending.password)
                .await?;
            return Ok(());
        };
        let rotator = self.rotator;
        let stage = match mutants::on(Mutant::ProxyCurrentBesidePassword) {
            true => Stage::Current,
            false => Stage::Staged,
        };
        let (set, staged) = tokio::join!(
            session.set_password(&pending.username, &pending.password),
            rotator.put_once(&proxy_id, &token, &value, stage)
        );
        match staged {
            Ok(()) => self.proxy_staged = true,
            // update_proxy writes it (or finds that this write landed) and says why it cannot.
            Err(e) => {
                info!(secret = %proxy_id, error = %e, "the proxy secret's staged version was not written beside the password; update_proxy writes it")
            }
        }
        set?;
        Ok(())
    }

    /// The proxy secret's new version goes in under this tool's own label, then AWSCURRENT moves
    /// to it by compare-and-swap from the version planning read: a proxy secret that someone
    /// else changed since (another rotation of the same user, a person) is not overwritten.
    async fn update_proxy(&mut self) -> Result<Step, RotationError> {
        let Some(proxy_id) = self.record.proxy_secret_id.clone() else {
            return Ok(Step::Test);
        };
        let pending = self.pending().await?;
        let token = proxy_token(self.rotation_id());
        let secrets = &self.rotator.secrets;
        // Already done?
        let written = if self.earlier == Earlier::Nothing {
            None
        } else {
            secrets.get(&proxy_id, At::Version(&token)).await?
        };
        if written.as_ref().is_some_and(|v| v.has(Stage::Current)) {
            return Ok(Step::Test);
        }
        // A version under our token that holds other credentials was written by someone else:
        // never moved to AWSCURRENT. (Ours hold the pending ones: written beside the password
        // change or below, from the pending version.)
        if let Some(v) = &written {
            let ours = crate::secret::UserSecret::parse(&v.value).is_ok_and(|s| {
                use secrecy::ExposeSecret;
                s.username() == pending.username
                    && s.credentials.password.expose_secret() == pending.password.expose_secret()
            });
            if !ours {
                return Err(RotationError::Inconsistent {
                    secret: proxy_id,
                    reason: format!(
                        "version {token} already exists with another value: something other than this rotation wrote under its token"
                    ),
                });
            }
        }
        if written.is_none() && !self.proxy_staged {
            let proxy = match self.proxy.clone() {
                Some(p) => Some(p),
                None => {
                    self.rotator
                        .read_user_secret(&proxy_id, At::Stage(Stage::Current))
                        .await?
                }
            };
            let proxy = proxy.ok_or_else(|| RotationError::Inconsistent {
                secret: proxy_id.clone(),
                reason: "the proxy secret does not exist or has no AWSCURRENT version".into(),
            })?;
            if proxy.username() != pending.username {
                return Err(RotationError::Inconsistent {
                    secret: proxy_id,
                    reason: format!(
                        "it now holds user {}, not {}",
                        proxy.username(),
                        pending.username
                    ),
                });
            }
            let value = proxy.render_with_password(&pending.password);
            self.rotator
                .put_once(&proxy_id, &token, &value, Stage::Staged)
                .await?;
        }
        // Planning stores it with the proxy secret's id.
        let from = self.record.proxy_version.clone().unwrap_or_default();
        // Beside this compare-and-swap, where the app secret's labels are: finish looks at them
        // right before its own, and the test between the two is a login to the database. (A run
        // that stops after the test, or waits in it, has finish read them itself.)
        let (secrets, arn) = (&self.rotator.secrets, self.arn().to_owned());
        let finishes = self.through == Step::Done;
        let labels = async {
            match finishes {
                true => secrets.describe(&arn).await.ok(),
                false => None,
            }
        };
        let (swapped, labels) =
            tokio::join!(self.rotator.swap_current(&proxy_id, &token, &from), labels);
        self.labels_ahead = labels.map(|l| (l, self.rotator.clock.now()));
        if let Swap::Moved(found) = swapped? {
            return Err(RotationError::Inconsistent {
                secret: proxy_id,
                reason: format!(
                    "its AWSCURRENT moved from version {from} to {} since the rotation began (another rotation of user {}, or a person); not overwriting it",
                    found.as_deref().unwrap_or("nothing"),
                    pending.username
                ),
            });
        }
        failpoint::hit("inside:update_proxy").await;
        Ok(Step::Test)
    }

    /// Logs in with the pending credentials where the application does, until the deadline: the
    /// proxy may take a while to read its changed secret. And, beside it, where passwords are
    /// changed: RDS Proxy checks a client against its own copy of the secret and may hand it a
    /// pooled connection opened with the old password, so only the database itself shows that
    /// it took the new one.
    async fn test(&mut self) -> Result<Step, RotationError> {
        if mutants::on(Mutant::CurrentBeforeTest) {
            return Ok(Step::Finish);
        }
        let pending = self.pending().await?;
        let current = self.current().await?.clone();
        let deadline = self.rotator.settings.test_deadline;
        let db = &self.rotator.db;
        let (engine, app_path) = (current.engine, &current.endpoint);
        // Only where this run saw the idle user log in: some setups let it in only from the
        // application's network.
        let database = Some(current.admin_endpoint())
            .filter(|at| *at != app_path && self.record.database_login_seen);
        let creds = &pending;
        let login = |at: &Endpoint| {
            let at = at.clone();
            async move {
                db.check_login(engine, &at, creds)
                    .await
                    .map_err(|error| Probe { at, error })
            }
        };
        let attempt = || async {
            match database {
                None => login(app_path).await,
                Some(database) => {
                    let (proxy, direct) = tokio::join!(login(app_path), login(database));
                    proxy.and(direct)
                }
            }
        };
        let waits = |p: &Probe| {
            matches!(
                p.error,
                DbError::LoginRejected(_) | DbError::LoginForbidden { .. }
            ) || p.error.is_retryable()
        };
        // The deadline bounds wall time, not only the sum of the pauses: a login that gets no
        // answer (a path that accepts and never answers) ends with it.
        let clock = self.rotator.clock.clone();
        let end = clock.now() + deadline;
        let timed_out = |last: String| RotationError::TestTimedOut {
            user: pending.username.clone(),
            at: app_path.to_string(),
            deadline: humantime::format_duration(deadline).to_string(),
            last,
        };
        let no_answer = || timed_out("a login got no answer by then".to_owned());
        // Usually the first login passes. If not, the proxy may take minutes to read its secret:
        // the record says the rotation waits here (status shows it, and a crash while waiting
        // resumes here rather than before the proxy step).
        let Ok(first) = clock.timeout_at(end, attempt()).await else {
            return Err(no_answer());
        };
        // The last refusal, for the end: the deadline may come in the middle of a probe.
        let last: Mutex<Option<Refused>> = Mutex::new(None);
        let note = |p: &Probe| {
            *last.lock().expect("last probe") = Some(Refused {
                at: p.at.clone(),
                rejected: matches!(p.error, DbError::LoginRejected(_)),
                error: p.error.to_string(),
            });
        };
        match first {
            Ok(()) => return Ok(Step::Finish),
            Err(p) if waits(&p) => {
                // Waiting for the proxy: the labels read beside its compare-and-swap grow stale.
                self.labels_ahead = None;
                note(&p);
                self.trace.with(|t| t.retries += 1);
                info!(user = %pending.username, at = %p.at, error = %p.error, "new credentials not accepted yet");
                self.save_if_behind().await?;
            }
            Err(p) => return Err(p.error.into()),
        }
        let retried = attempt
            .retry(
                self.rotator
                    .settings
                    .retry
                    .backoff()
                    .with_max_delay(self.rotator.settings.retry.probe_max_delay)
                    .with_max_times(usize::MAX)
                    .with_total_delay(Some(deadline)),
            )
            .sleep(ClockSleeper(clock.clone()))
            .when(waits)
            .notify(|p, delay| {
                note(p);
                self.trace.with(|t| t.retries += 1);
                info!(user = %pending.username, at = %p.at, error = %p.error, retry_in = ?delay, "new credentials not accepted yet");
            });
        let refused = match clock.timeout_at(end, retried).await {
            Ok(Ok(())) => return Ok(Step::Finish),
            Ok(Err(p)) if waits(&p) => {
                note(&p);
                last.lock().expect("last probe").take()
            }
            Ok(Err(p)) => return Err(p.error.into()),
            // In the middle of a probe: the one before it says why.
            Err(_) => last.lock().expect("last probe").take(),
        };
        let Some(refused) = refused else {
            return Err(no_answer());
        };
        let database = database.cloned();
        if database.as_ref() == Some(&refused.at)
            && refused.rejected
            && self.set_again == SetAgain::Allowed
        {
            // The database does not take the password set_password set (someone changed it
            // since): the next attempt sets it again, once, rather than wait here.
            self.set_again = SetAgain::Spent;
            self.record.step = Step::SetPassword;
            self.saved = Saved::Behind;
        }
        Err(RotationError::TestTimedOut {
            user: pending.username,
            at: if database.as_ref() == Some(&refused.at) {
                format!("the database at {} (the proxy took them)", refused.at)
            } else {
                refused.at.to_string()
            },
            deadline: humantime::format_duration(deadline).to_string(),
            last: refused.error,
        })
    }

    async fn finish(&mut self) -> Result<Step, RotationError> {
        let (arn, id) = (self.arn().to_owned(), self.rotation_id().to_owned());
        let secrets = &self.rotator.secrets;
        let expected = self.record.current_version.clone().unwrap_or_default();
        // Right before the compare-and-swap, look where the labels are, whatever came earlier: the CAS
        // checks AWSCURRENT, but not that AWSPENDING is still ours. Another rotator that took it
        // (Secrets Manager's own, attached since we began) may be changing this user's password.
        // update_proxy read them beside its own compare-and-swap, one step ago: used while
        // fresh (a login through a busy proxy may take minutes and still pass).
        let now = self.rotator.clock.now();
        let meta = match self.labels_ahead.take() {
            Some((meta, read)) if now.saturating_duration_since(read) < LABELS_FRESH => meta,
            _ => secrets.describe(&arn).await?,
        };
        let pending_at = meta.version_with(Stage::Pending).map(str::to_owned);
        match meta.version_with(Stage::Current) {
            Some(v) if v == id => {}
            Some(v) if v == expected => {
                if pending_at.as_deref() != Some(id.as_str()) {
                    return Err(RotationError::PendingMoved {
                        secret: arn,
                        expected: id,
                        found: pending_at.unwrap_or_else(|| "nothing".into()),
                    });
                }
                if let Swap::Moved(found) = self.rotator.swap_current(&arn, &id, &expected).await? {
                    return Err(RotationError::CurrentMoved {
                        secret: arn,
                        expected,
                        found: found.unwrap_or_else(|| "nothing".into()),
                    });
                }
            }
            found => {
                return Err(RotationError::CurrentMoved {
                    secret: arn,
                    expected,
                    found: found.unwrap_or("nothing").to_owned(),
                })
            }
        }
        // AWSPENDING stays on the version that is now AWSCURRENT, as AWS's rotation contract
        // allows: one Secrets Manager write less. An edit (a PutSecretValue) would strand it on
        // an older version, which planning takes for ours (`StepRecord::pending_left`) but
        // Secrets Manager's RotateSecret refuses to rotate past: with a rotation function
        // attached (on, or switched off and kept), it goes, beside the release (`drive`). On
        // another version it is not ours: it stays.
        if (meta.rotation_enabled || meta.rotation_lambda.is_some())
            && pending_at.as_deref() == Some(id.as_str())
        {
            self.drop_pending = Some((arn.clone(), id.clone()));
        }
        info!(secret = %arn, rotation_id = %id, user = %self.target_user(), "AWSCURRENT moved to the new credentials");
        Ok(Step::Done)
    }
}

/// How long finish trusts the labels update_proxy read beside its compare-and-swap: about the
/// test's login, not the minutes a login through a busy proxy may take.
const LABELS_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// A login of the test step that failed, and where.
struct Probe {
    at: Endpoint,
    error: DbError,
}

/// What the test step keeps of its last refused login.
struct Refused {
    at: Endpoint,
    /// The password was refused (not an unreachable server).
    rejected: bool,
    error: String,
}
