//! `rds-rotator adopt`: makes a single-user secret rotation-ready in one command.
//!
//! Everything is read and checked first (the inspection): nothing is written unless every step
//! can run. Then each step asks whether its effect is already there, so a rerun after a crash
//! finishes the job and a run on an adopted secret changes nothing.
//!
//! | step | effect | already done when |
//! |---|---|---|
//! | clone_secret | the clone's proxy secret `<app>/proxy/<clone>`, with a new password: written first, so the password is never only in the database | that secret exists for the clone (its password is the one used) |
//! | clone_user | the clone, with the original's rights, and that password | the clone has those rights and the password logs in |
//! | user_secret | the original user's proxy secret, with the application's password | a secret of the proxy's, or `<app>/proxy/<user>`, logs in as the user |
//! | app_secret | a new AWSCURRENT with `rotation_usernames` and `proxy_secret_ids` (compare-and-swap); `username` and `password` unchanged | AWSCURRENT lists both users |
//!
//! The DynamoDB lease on the application secret is held throughout, so no rotation of it runs
//! meanwhile. RDS Proxy is not changed: the command prints the call that attaches the secrets.

pub mod mysql;
pub mod ports;
pub mod postgres;
pub mod report;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tracing::warn;

use crate::db::tls::DbTls;
use crate::failpoint;
use crate::rotation::lease::{self, claim_existing_user, heartbeat, identify, Flags, Taken};
use crate::rotation::ports::{
    At, DbError, Lease, PasswordRules, RecordStoreError, SecretMeta, SecretStoreError, Stage,
};
use crate::rotation::LeaseWait;
use crate::rotation::{RotationError, Rotator};
use crate::secret::{
    validate_username, AppSecret, Credentials, Endpoint, Engine, SecretError, UserSecret,
};
use ports::{
    ClonePlan, CloneSession, CloneState, NewSecret, ProxyAuth, ProxyDirectory, ProxyError,
    SecretCatalog,
};
use report::Action;
pub use report::Adoption;

/// Marks a proxy secret made by adopt, with the application secret's ARN: the tag fan-out
/// leaves such secrets out, although they carry the application secret's tags.
pub const PROXY_SECRET_TAG: &str = "rds-rotator:proxy-secret-for";

/// Tokens of the application secret's new version: the same inputs give the same token, so a
/// rerun's PutSecretValue is idempotent.
const TOKEN_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b1f_0c2e_8a4d_4e0b_9c51_2d7a_0f3e_11a4);

#[derive(Debug, Clone)]
pub struct AdoptRequest {
    pub secret_id: String,
    pub master_secret_id: String,
    pub clone_suffix: String,
    pub proxy: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// Bad input or a state adopt must not touch: nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error("the application secret is unusable: {0}")]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] SecretStoreError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Records(#[from] RecordStoreError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("{0} is held by a running rotation (lease of {1}); run adopt again when it ends")]
    Busy(String, String),
    #[error("the lease on the secret may have been taken over; stopped between steps")]
    LeaseLost,
    /// The clone exists and is claimed, or used, by another secret's rotation.
    #[error(transparent)]
    Claimed(RotationError),
}

impl AdoptError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Db(e) => e.is_retryable(),
            Self::Records(e) => e.is_retryable(),
            Self::Proxy(e) => matches!(e, ProxyError::Unavailable(_)),
            Self::Busy(..) | Self::LeaseLost => true,
            Self::Claimed(e) => e.is_retryable(),
            Self::Invalid(_) | Self::Secret(_) => false,
        }
    }
}

/// Opens a session that can clone users, for the secret's engine.
#[async_trait::async_trait]
pub trait Cloner: Send + Sync {
    async fn open(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn CloneSession>, DbError>;
}

/// The real databases.
pub struct DbCloner {
    pg: crate::db::postgres::Postgres,
    my: crate::db::mysql::MySql,
}

impl DbCloner {
    pub fn new(tls: DbTls) -> Self {
        Self {
            pg: crate::db::postgres::Postgres::new(tls.clone()),
            my: crate::db::mysql::MySql::new(tls),
        }
    }
}

#[async_trait::async_trait]
impl Cloner for DbCloner {
    async fn open(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn CloneSession>, DbError> {
        Ok(match engine {
            Engine::Postgres => {
                Box::new(postgres::PgCloneSession::open(&self.pg, at, login).await?)
            }
            Engine::Mysql | Engine::Mariadb => {
                Box::new(mysql::MyCloneSession::open(&self.my, at, login).await?)
            }
        })
    }
}

pub struct Adopter {
    pub rotator: Rotator,
    pub catalog: Arc<dyn SecretCatalog>,
    pub proxies: Arc<dyn ProxyDirectory>,
    pub cloner: Arc<dyn Cloner>,
    /// How long to wait for another process's lease: a live holder's to end, a dead one's to be
    /// seen unchanged for a whole lease period (`lease::acquire`).
    pub lease_wait: std::time::Duration,
}

/// `<application secret name>/proxy/<user>`: predictable, so a rerun finds what a crashed run
/// made, and Terraform can name it before it exists.
pub fn proxy_secret_name(app_secret_name: &str, user: &str) -> String {
    format!("{app_secret_name}/proxy/{user}")
}

/// A proxy secret as found.
struct Found {
    arn: String,
    secret: UserSecret,
}

/// What the inspection decided for the original user's proxy secret.
enum UserSecretPlan {
    Reuse(String),
    /// `<app>/proxy/<user>` exists with another password: a new version gets the application's.
    Update(Found),
    Create,
}

/// What adoption starts from: the application secret as it stands, and the master's login.
struct Start<'a> {
    req: &'a AdoptRequest,
    meta: SecretMeta,
    current_version: String,
    app: AppSecret,
    master: Found,
    /// Where passwords change (the database itself when the secret says).
    at: Endpoint,
    clone: String,
}

impl Start<'_> {
    fn user(&self) -> &str {
        &self.app.credentials.username
    }
}

/// Everything the inspection decided. The steps only carry it out.
struct Inspection {
    session: Box<dyn CloneSession>,
    plan: ClonePlan,
    /// The server's password rules, which the clone's password meets.
    rules: PasswordRules,
    clone_secret_name: String,
    /// The clone's proxy secret, if a run made it already.
    clone_secret: Option<Found>,
    user_secret_name: String,
    user_secret: UserSecretPlan,
    /// RDS Proxy's Auth list, with `--proxy` (or the secret's `proxy_name`).
    auth: Option<Vec<ProxyAuth>>,
}

impl Adopter {
    pub async fn adopt(&self, req: &AdoptRequest) -> Result<Adoption, AdoptError> {
        let meta = self.rotator.secrets.describe(&req.secret_id).await?;
        if req.dry_run {
            return self.adopt_under(req, meta, None).await;
        }
        failpoint::hit("before:adopt.lease").await;
        let lease = self.take_lease(&meta.arn).await?;
        // Renewed while adoption runs; each step first looks whether it may be lost.
        let flags = Flags::new(
            self.rotator.clock.clone(),
            &lease,
            self.rotator.settings.lease_duration,
        );
        // Stopped inside a step too, as a rotation is: a rerun completes what it left.
        let work = async {
            tokio::select! {
                biased;
                _ = flags.until_lost() => Err(AdoptError::LeaseLost),
                adopted = self.adopt_under(req, meta, Some(&flags)) => adopted,
            }
        };
        let result = heartbeat(&self.rotator, &lease, &flags, work).await;
        if let Err(e) = self.rotator.records.release(&lease).await {
            warn!(error = %e, "could not release the lease; it runs out by itself");
        }
        result
    }

    /// Under the lease (none in a dry run): AWSCURRENT as it is now decides, so a second adopt
    /// that waited for the first finds its work done.
    async fn adopt_under(
        &self,
        req: &AdoptRequest,
        meta: SecretMeta,
        lease: Option<&Flags>,
    ) -> Result<Adoption, AdoptError> {
        let arn = meta.arn.clone();
        let current = self
            .rotator
            .secrets
            .get(&arn, At::Stage(Stage::Current))
            .await?
            .ok_or_else(|| AdoptError::Invalid(format!("{arn} has no AWSCURRENT version")))?;
        let current_version = current.version_id.clone();
        let app = AppSecret::parse(&current.value)?;
        let proxy = req.proxy.clone().or_else(|| app.proxy_name.clone());
        let mut out = Adoption::new(
            &arn,
            app.engine,
            &app.credentials.username,
            req.dry_run,
            proxy,
        );
        if app.is_multi_user() {
            return self.already_adopted(req, &app, &meta, out).await;
        }
        // Its function would change the user's password behind the proxy secrets' back, and
        // could move AWSCURRENT onto a version without the users: as `rotate`, refuse.
        if meta.rotation_enabled {
            return Err(AdoptError::Invalid(format!(
                "Secrets Manager's own rotation is enabled on {arn} ({}); turn it off first (aws secretsmanager cancel-rotate-secret --secret-id {arn}); nothing was changed",
                meta.rotation_lambda.as_deref().unwrap_or("no function named")
            )));
        }
        let user = &app.credentials.username;
        if req.clone_suffix.is_empty() {
            return Err(AdoptError::Invalid(
                "--clone-suffix must not be empty".into(),
            ));
        }
        let clone = format!("{user}{}", req.clone_suffix);
        validate_username(&clone, app.engine).map_err(|e| {
            AdoptError::Invalid(format!(
                "the clone's name {clone} (user {user} with suffix {}) cannot be used: {e}; choose a shorter --clone-suffix",
                req.clone_suffix
            ))
        })?;
        out.clone = clone.clone();
        let master = self
            .read_user_secret(&req.master_secret_id)
            .await?
            .ok_or_else(|| {
                AdoptError::Invalid(format!(
                    "the master secret {} does not exist or has no AWSCURRENT",
                    req.master_secret_id
                ))
            })?;
        let start = Start {
            req,
            at: app.admin_endpoint().clone(),
            meta,
            current_version,
            app,
            master,
            clone,
        };
        let inspection = self.inspect(&start, &mut out).await?;
        match lease {
            None => out.attach = attach_plan(&start, &inspection, &out),
            Some(flags) => self.run(&start, inspection, flags, &mut out).await?,
        }
        Ok(out)
    }

    /// Reads everything and decides every step; changes nothing a user could see (PostgreSQL
    /// tries the statements in a transaction it rolls back; a real run claims a clone that
    /// existed, and MySQL rehearses on a throwaway account). Bad input ends here.
    async fn inspect(&self, s: &Start<'_>, out: &mut Adoption) -> Result<Inspection, AdoptError> {
        let (db, engine, user, clone) = (&self.rotator.db, s.app.engine, s.user(), &s.clone);
        let master_id = &s.req.master_secret_id;
        let login = &s.master.secret.credentials;
        // As the rotation does, before anything else: a replica or a server whose validation
        // refuses every change ends here; otherwise its password rules.
        let rules = db.login(engine, &s.at, login).await?.preflight().await?;
        let mut session = self
            .cloner
            .open(engine, &s.at, login)
            .await
            .map_err(|e| master_refused(master_id, e))?;
        let plan = session
            .plan(user, clone)
            .await
            .map_err(|e| master_refused(master_id, e))?;
        out.notes.extend(plan.notes.iter().cloned());
        let tags = copied_tags(&s.meta)?.len();

        let clone_secret_name = proxy_secret_name(&s.meta.name, clone);
        let clone_secret = self.find_for(&clone_secret_name, clone).await?;
        match (&plan.state, &clone_secret) {
            (CloneState::Different { differences }, _) => {
                return Err(AdoptError::Invalid(format!(
                    "user {clone} exists with other rights than {user} ({}); drop it, or choose another --clone-suffix",
                    differences.join("; ")
                )))
            }
            (CloneState::Partial { missing }, None) => {
                return Err(AdoptError::Invalid(format!(
                    "user {clone} exists with only part of {user}'s rights (missing {}), and no secret {clone_secret_name} says adopt made it; complete or drop it by hand",
                    missing.join(", ")
                )))
            }
            (CloneState::Same, None) => {
                // A twin made by hand whose password nobody gave us: setting one must not cut
                // off whoever uses it.
                let window = self.rotator.settings.in_use.window;
                let sessions = db
                    .recent_sessions(engine, &s.at, login, clone, window)
                    .await?;
                if !sessions.is_empty() {
                    return Err(AdoptError::Invalid(format!(
                        "user {clone} exists with the right rights but its password is unknown, and it is in use ({} session(s) within {}); put its credentials in a secret named {clone_secret_name}, then run adopt again",
                        sessions.iter().map(|g| g.sessions).sum::<u32>(),
                        humantime::format_duration(window)
                    )));
                }
                out.notes.push(format!("user {clone} exists with {user}'s rights and no known password; it gets a new one"));
            }
            _ => {}
        }
        // A clone that existed before: another secret may use it, as a rotation would find (a
        // claim is a write: not in a dry run).
        let existed = matches!(plan.state, CloneState::Same | CloneState::Partial { .. });
        if existed && !s.req.dry_run {
            self.claim(s, clone).await?;
        }
        // MySQL rehearses on an account of its own: a dry run leaves the server alone.
        if plan.state != CloneState::Same && !(s.req.dry_run && engine != Engine::Postgres) {
            let password = self.new_password(engine, &rules)?;
            session
                .rehearse(&plan, &password)
                .await
                .map_err(|e| master_refused(master_id, e))?;
        }

        let auth = match &out.proxy {
            Some(name) => Some(self.proxies.auth(name).await?),
            None => None,
        };
        let user_secret_name = proxy_secret_name(&s.meta.name, user);
        let user_secret = self
            .plan_user_secret(&s.app, &s.at, &user_secret_name, auth.as_deref(), out)
            .await?;

        let kms = s
            .meta
            .kms_key_id
            .as_deref()
            .unwrap_or("aws/secretsmanager (default)");
        out.step(
            "clone_secret",
            if clone_secret.is_some() {
                Action::Nothing
            } else {
                Action::Create
            },
            format!("proxy secret {clone_secret_name} for {clone}, KMS key {kms}, {tags} tag(s)"),
            Vec::new(),
        );
        let clone_action = match plan.state {
            CloneState::Absent => Action::Create,
            CloneState::Partial { .. } => Action::Complete,
            _ => Action::Nothing,
        };
        out.step(
            "clone_user",
            clone_action,
            format!("user {clone}, with the rights of {user}"),
            if clone_action == Action::Nothing {
                Vec::new()
            } else {
                plan.statements.clone()
            },
        );
        let (action, detail) = match &user_secret {
            UserSecretPlan::Reuse(id) => (
                Action::Reuse,
                format!("proxy secret {id} for {user}: it logs in"),
            ),
            UserSecretPlan::Update(Found { arn: id, .. }) => (
                Action::Update,
                format!(
                    "proxy secret {id} for {user}: a new version with the application's password"
                ),
            ),
            UserSecretPlan::Create => (
                Action::Create,
                format!(
                    "proxy secret {user_secret_name} for {user}, with the application's password"
                ),
            ),
        };
        out.step("user_secret", action, detail, Vec::new());
        out.step(
            "app_secret",
            Action::Update,
            format!("a new AWSCURRENT of {} with rotation_usernames [{user}, {clone}] and proxy_secret_ids; username and password unchanged", out.secret),
            Vec::new(),
        );
        Ok(Inspection {
            session,
            plan,
            rules,
            clone_secret_name,
            clone_secret,
            user_secret_name,
            user_secret,
            auth,
        })
    }

    /// The steps of the table at the top, in order. Each is done, or finds itself done.
    async fn run(
        &self,
        s: &Start<'_>,
        mut i: Inspection,
        lease: &Flags,
        out: &mut Adoption,
    ) -> Result<(), AdoptError> {
        keep(lease)?;
        let (clone_arn, clone_creds) = self.clone_secret(s, &i, out).await?;
        failpoint::hit("after:adopt.clone_secret").await;
        keep(lease)?;
        self.clone_user(s, &mut i, &clone_creds, out).await?;
        failpoint::hit("after:adopt.clone_user").await;
        keep(lease)?;
        let user_arn = self.user_secret(s, &i, out).await?;
        failpoint::hit("after:adopt.user_secret").await;
        keep(lease)?;
        self.app_secret(s, &user_arn, &clone_arn, out).await?;
        failpoint::hit("after:adopt.app_secret").await;
        out.attach = attach(s, &i, out, user_arn, clone_arn);
        Ok(())
    }

    /// Step 1: the clone's proxy secret holds its password before the database does, so the
    /// password is never only in the database. Its ARN and the credentials it holds.
    async fn clone_secret(
        &self,
        s: &Start<'_>,
        i: &Inspection,
        out: &mut Adoption,
    ) -> Result<(String, Credentials), AdoptError> {
        if let Some(found) = &i.clone_secret {
            return Ok((found.arn.clone(), found.secret.credentials.clone()));
        }
        let password = self.new_password(s.app.engine, &i.rules)?;
        let creds = Credentials::new(&s.clone, password);
        let created = self
            .create_proxy_secret(&i.clone_secret_name, &creds, &s.meta)
            .await?;
        out.changed = true;
        if let Some(arn) = created {
            return Ok((arn, creds));
        }
        // Another run created it a moment before: its password is the one.
        let stored = self
            .find_for(&i.clone_secret_name, &s.clone)
            .await?
            .ok_or_else(|| {
                AdoptError::Invalid(format!(
                    "{} vanished after it was created",
                    i.clone_secret_name
                ))
            })?;
        Ok((stored.arn, stored.secret.credentials))
    }

    /// Step 2: the clone with the original's rights, logging in with its secret's password.
    async fn clone_user(
        &self,
        s: &Start<'_>,
        i: &mut Inspection,
        creds: &Credentials,
        out: &mut Adoption,
    ) -> Result<(), AdoptError> {
        let (db, engine) = (&self.rotator.db, s.app.engine);
        if matches!(
            i.plan.state,
            CloneState::Absent | CloneState::Partial { .. }
        ) {
            i.session.apply(&i.plan, &creds.password).await?;
            out.changed = true;
        }
        match db.check_login(engine, &s.at, creds).await {
            Ok(()) => Ok(()),
            Err(DbError::LoginRejected(_)) => {
                // A clone that existed (made by hand, or a crashed run's MySQL accounts, which
                // `IF NOT EXISTS` left alone): it takes the secret's password, on every account.
                // Claimed again just before: a rotation of another secret may have come since.
                self.claim(s, &s.clone).await?;
                let master = &s.master.secret.credentials;
                db.set_password(engine, &s.at, master, &s.clone, &creds.password)
                    .await?;
                db.check_login(engine, &s.at, creds).await?;
                out.changed = true;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Step 3: the original user's proxy secret, with the application's password. Its ARN.
    async fn user_secret(
        &self,
        s: &Start<'_>,
        i: &Inspection,
        out: &mut Adoption,
    ) -> Result<String, AdoptError> {
        match &i.user_secret {
            UserSecretPlan::Reuse(arn) => Ok(arn.clone()),
            UserSecretPlan::Update(found) => {
                let arn = &found.arn;
                let value = found
                    .secret
                    .render_with_password(&s.app.credentials.password);
                let token = token(&[arn, &s.current_version, "user_secret"]);
                self.rotator
                    .secrets
                    .put(arn, &token, &value, Stage::Current)
                    .await?;
                out.changed = true;
                Ok(arn.clone())
            }
            UserSecretPlan::Create => {
                let created = self
                    .create_proxy_secret(&i.user_secret_name, &s.app.credentials, &s.meta)
                    .await?;
                out.changed = true;
                if let Some(arn) = created {
                    return Ok(arn);
                }
                self.find_for(&i.user_secret_name, s.user())
                    .await?
                    .map(|f| f.arn)
                    .ok_or_else(|| {
                        AdoptError::Invalid(format!(
                            "{} vanished after it was created",
                            i.user_secret_name
                        ))
                    })
            }
        }
    }

    /// Step 4: the application secret lists both users and their proxy secrets. Its token
    /// follows from its inputs, so a rerun's PutSecretValue is the same request.
    async fn app_secret(
        &self,
        s: &Start<'_>,
        user_arn: &str,
        clone_arn: &str,
        out: &mut Adoption,
    ) -> Result<(), AdoptError> {
        let users = [s.user().to_owned(), s.clone.clone()];
        let ids = [user_arn.to_owned(), clone_arn.to_owned()];
        let master_key = s
            .app
            .master_secret_id
            .is_none()
            .then_some(s.master.arn.as_str());
        let proxy_key = out.proxy.as_deref().filter(|_| s.app.proxy_name.is_none());
        let value = s.app.render_adopted(&users, &ids, master_key, proxy_key);
        let token = token(&[
            &out.secret,
            &s.current_version,
            &users.join(","),
            &ids.join(","),
            master_key.unwrap_or(""),
            proxy_key.unwrap_or(""),
        ]);
        self.write_app_secret(&out.secret, &s.current_version, &token, &value)
            .await?;
        out.changed = true;
        Ok(())
    }

    fn new_password(
        &self,
        engine: Engine,
        rules: &PasswordRules,
    ) -> Result<SecretString, AdoptError> {
        self.rotator
            .settings
            .password
            .generate_for(engine, rules)
            .map_err(|e| AdoptError::Invalid(e.to_string()))
    }

    /// The new version becomes AWSCURRENT only if AWSCURRENT is still the version adoption
    /// read (RemoveFromVersionId): an edit made meanwhile is not overwritten.
    async fn write_app_secret(
        &self,
        arn: &str,
        from: &str,
        token: &str,
        value: &SecretString,
    ) -> Result<(), AdoptError> {
        let secrets = &self.rotator.secrets;
        secrets.put(arn, token, value, Stage::Staged).await?;
        if let Err(e) = secrets.move_stage(arn, Stage::Current, token, from).await {
            let meta = secrets.describe(arn).await?;
            if meta.version_with(Stage::Current) != Some(token) {
                return Err(match e {
                    SecretStoreError::Refused(_) => AdoptError::Invalid(format!(
                        "AWSCURRENT of {arn} changed during adoption; run adopt again"
                    )),
                    e => e.into(),
                });
            }
        }
        secrets.remove_stage(arn, Stage::Staged, token).await?;
        Ok(())
    }

    async fn take_lease(&self, arn: &str) -> Result<Lease, AdoptError> {
        let wait = LeaseWait::UpTo(self.lease_wait);
        let taken = lease::acquire(&self.rotator, arn, wait, |_| None, None).await;
        let (lease, record) = match taken {
            Ok(Taken::Lease(lease, record, _)) => (lease, record),
            Ok(Taken::Begun(..) | Taken::Answered(_)) => {
                unreachable!("no rotation is begun or skipped without a plan")
            }
            Err(RotationError::Busy { owner, .. }) => {
                return Err(AdoptError::Busy(arn.to_owned(), owner))
            }
            Err(e) => return Err(AdoptError::Claimed(e)),
        };
        if let Some(r) = record.filter(|r| r.is_in_progress()) {
            let _ = self.rotator.records.release(&lease).await;
            return Err(AdoptError::Invalid(format!(
                "a rotation of {arn} is in progress (rotation {}, step {}): finish it with `rotate` or end it with `abort`, then adopt",
                r.rotation_id.as_deref().unwrap_or("-"),
                r.step
            )));
        }
        Ok(lease)
    }

    /// Claims a clone that existed already, as a rotation claims the user it changes.
    async fn claim(&self, s: &Start<'_>, clone: &str) -> Result<(), AdoptError> {
        let login = [(
            format!("master secret {}", s.req.master_secret_id),
            s.master.secret.credentials.clone(),
        )];
        let claimed = async {
            let server = identify(&self.rotator, s.app.engine, &s.at, &login, None).await?;
            claim_existing_user(&self.rotator, s.app.engine, &server, clone, &s.meta.arn).await
        };
        claimed.await.map_err(|e| match e {
            RotationError::UserShared { .. } => AdoptError::Invalid(format!(
                "{e}; choose another --clone-suffix; nothing was changed"
            )),
            e => AdoptError::Claimed(e),
        })
    }

    async fn read_user_secret(&self, id: &str) -> Result<Option<Found>, AdoptError> {
        match self
            .rotator
            .secrets
            .get(id, At::Stage(Stage::Current))
            .await
        {
            Ok(Some(v)) => Ok(Some(Found {
                arn: v.arn,
                secret: UserSecret::parse(&v.value).map_err(|e| {
                    AdoptError::Invalid(format!(
                        "secret {id} is not a {{\"username\",\"password\"}} secret: {e}"
                    ))
                })?,
            })),
            Ok(None) | Err(SecretStoreError::NotFound(_)) => Ok(None),
            // Scheduled for deletion: its name is taken until then.
            Err(SecretStoreError::InvalidRequest(why)) => Err(AdoptError::Invalid(format!(
                "secret {id} cannot be read ({why}); if it is scheduled for deletion, restore it (aws secretsmanager restore-secret --secret-id {id}) or delete it for good, or choose another --clone-suffix"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The secret named `name`, which must be for `user`.
    async fn find_for(&self, name: &str, user: &str) -> Result<Option<Found>, AdoptError> {
        match self.read_user_secret(name).await? {
            Some(f) if f.secret.username() != user => Err(AdoptError::Invalid(format!(
                "secret {name} exists for user {}, not {user}; rename or delete it",
                f.secret.username()
            ))),
            found => Ok(found),
        }
    }

    async fn plan_user_secret(
        &self,
        app: &AppSecret,
        at: &Endpoint,
        name: &str,
        auth: Option<&[ProxyAuth]>,
        out: &mut Adoption,
    ) -> Result<UserSecretPlan, AdoptError> {
        let user = &app.credentials.username;
        // The proxy's own secret for the user first (it is attached already), then one the
        // secret names.
        let mut candidates: Vec<&str> = Vec::new();
        for entry in auth.unwrap_or_default() {
            if entry.secret_arn == out.secret {
                out.notes.push(format!("RDS Proxy authenticates {user} with the application secret itself: after the first rotation it holds {}; the attach call below leaves that entry out", out.clone));
            } else {
                candidates.push(&entry.secret_arn);
            }
        }
        candidates.extend(app.proxy_secret_ids.iter().map(String::as_str));
        for id in candidates {
            match self.read_user_secret(id).await {
                Ok(Some(f)) if f.secret.username() == user => {
                    if self
                        .rotator
                        .db
                        .check_login(app.engine, at, &f.secret.credentials)
                        .await
                        .is_ok()
                    {
                        return Ok(UserSecretPlan::Reuse(f.arn));
                    }
                }
                Ok(_) => {}
                Err(e) => out.notes.push(format!("proxy secret {id} not read: {e}")),
            }
        }
        match self.find_for(name, user).await? {
            Some(f) => {
                let same = f.secret.credentials.password.expose_secret()
                    == app.credentials.password.expose_secret();
                // Holding the application's password, it logs in as the application does.
                let usable = same
                    || self
                        .rotator
                        .db
                        .check_login(app.engine, at, &f.secret.credentials)
                        .await
                        .is_ok();
                Ok(if usable {
                    UserSecretPlan::Reuse(f.arn)
                } else {
                    UserSecretPlan::Update(f)
                })
            }
            None => Ok(UserSecretPlan::Create),
        }
    }

    /// Its ARN, or `None` when a secret of that name exists already (made a moment ago by a run
    /// whose answer was lost): the caller reads that one.
    async fn create_proxy_secret(
        &self,
        name: &str,
        creds: &Credentials,
        origin: &SecretMeta,
    ) -> Result<Option<String>, AdoptError> {
        let value = SecretString::from(
            json!({"username": creds.username, "password": creds.password.expose_secret()})
                .to_string(),
        );
        let tags = copied_tags(origin)?;
        let description = format!(
            "RDS Proxy credentials of {}, kept in step with {} by rds-rotator",
            creds.username, origin.name
        );
        match self
            .catalog
            .create(&NewSecret {
                name,
                description: &description,
                value: &value,
                kms_key_id: origin.kms_key_id.as_deref(),
                tags: &tags,
            })
            .await
        {
            Ok(arn) => Ok(Some(arn)),
            Err(SecretStoreError::VersionExists(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A second run: the secret lists two users. Adopted by this suffix, nothing to do.
    async fn already_adopted(
        &self,
        req: &AdoptRequest,
        app: &AppSecret,
        meta: &SecretMeta,
        mut out: Adoption,
    ) -> Result<Adoption, AdoptError> {
        let names = &app.rotation_usernames;
        let ours = names.len() == 2
            && (names[1] == format!("{}{}", names[0], req.clone_suffix)
                || names[0] == format!("{}{}", names[1], req.clone_suffix));
        if !ours {
            return Err(AdoptError::Invalid(format!(
                "{} already rotates users {}: it is not a single-user secret, and not one adopt made with suffix {}",
                meta.arn,
                names.join(", "),
                req.clone_suffix
            )));
        }
        out.user = names[0].clone();
        out.clone = names[1].clone();
        out.already = true;
        // A run that stopped between moving AWSCURRENT and dropping its own label. Read again
        // under the lease: `meta` was read before it, perhaps while another adopt ran.
        if !req.dry_run {
            let now = self.rotator.secrets.describe(&meta.arn).await?;
            if let Some(staged) = now.version_with(Stage::Staged) {
                self.rotator
                    .secrets
                    .remove_stage(&meta.arn, Stage::Staged, staged)
                    .await?;
            }
        }
        if let Some(name) = &out.proxy {
            let auth = self.proxies.auth(name).await?;
            let mut ids = Vec::new();
            for (u, id) in names.iter().zip(&app.proxy_secret_ids) {
                let arn = self
                    .read_user_secret(id)
                    .await?
                    .map(|f| f.arn)
                    .unwrap_or_else(|| id.clone());
                ids.push((u.clone(), arn));
            }
            out.attach = report::attach(Some(name), Some(&auth), &ids, app.engine, &out.secret);
        }
        Ok(out)
    }
}

/// The tags a proxy secret gets: the application secret's own (not AWS's `aws:` ones, which
/// CreateSecret refuses), and the mark of adopt. Secrets Manager allows 50.
fn copied_tags(origin: &SecretMeta) -> Result<Vec<(String, String)>, AdoptError> {
    let mut tags: Vec<(String, String)> = origin
        .tags
        .iter()
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("aws:") && k != PROXY_SECRET_TAG)
        .cloned()
        .collect();
    tags.push((PROXY_SECRET_TAG.to_owned(), origin.arn.clone()));
    if tags.len() > 50 {
        return Err(AdoptError::Invalid(format!(
            "{} has {} tags; with adopt's own the proxy secrets would have {}, over Secrets Manager's 50; remove one; nothing was changed",
            origin.arn,
            tags.len() - 1,
            tags.len()
        )));
    }
    Ok(tags)
}

/// Between steps: a lease that may be someone else's now stops the run (a rerun goes on).
fn keep(lease: &Flags) -> Result<(), AdoptError> {
    if lease.may_be_lost() {
        return Err(AdoptError::LeaseLost);
    }
    Ok(())
}

/// A dry run's attach call: the secrets it would create are named, not yet ARNs.
fn attach_plan(s: &Start<'_>, i: &Inspection, out: &Adoption) -> report::Attach {
    let user_arn = match &i.user_secret {
        UserSecretPlan::Reuse(a) | UserSecretPlan::Update(Found { arn: a, .. }) => a.clone(),
        UserSecretPlan::Create => format!("<ARN of {}>", i.user_secret_name),
    };
    let clone_arn = i
        .clone_secret
        .as_ref()
        .map(|f| f.arn.clone())
        .unwrap_or_else(|| format!("<ARN of {}>", i.clone_secret_name));
    attach(s, i, out, user_arn, clone_arn)
}

/// How to give RDS Proxy both proxy secrets.
fn attach(
    s: &Start<'_>,
    i: &Inspection,
    out: &Adoption,
    user_arn: String,
    clone_arn: String,
) -> report::Attach {
    report::attach(
        out.proxy.as_deref(),
        i.auth.as_deref(),
        &[
            (s.user().to_owned(), user_arn),
            (s.clone.clone(), clone_arn),
        ],
        s.app.engine,
        &out.secret,
    )
}

fn token(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(&TOKEN_NAMESPACE, parts.join("\n").as_bytes()).to_string()
}

/// The master secret's login could not do it: say which secret, and that nothing changed.
fn master_refused(id: &str, e: DbError) -> AdoptError {
    match e {
        DbError::NotPermitted(why) => AdoptError::Invalid(format!(
            "the master secret {id} may not create the clone: {why}; nothing was changed"
        )),
        DbError::LoginRejected(u) => AdoptError::Invalid(format!(
            "the master secret {id} does not log in (user {u}); nothing was changed"
        )),
        DbError::LoginForbidden { user, reason } => AdoptError::Invalid(format!(
            "the master secret {id} (user {user}) may not log in: {reason}; nothing was changed"
        )),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tags: &[(&str, &str)]) -> SecretMeta {
        SecretMeta {
            deleted: false,
            arn: "arn:app".into(),
            versions: Vec::new(),
            rotation_enabled: false,
            rotation_lambda: None,
            name: "app".into(),
            kms_key_id: None,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn proxy_secrets_get_the_users_tags_not_awss_and_the_mark() {
        let tags = copied_tags(&meta(&[
            ("team", "payments"),
            ("aws:cloudformation:stack-name", "shop"),
            ("AWS:rds:x", "y"),
            (PROXY_SECRET_TAG, "arn:other"),
        ]))
        .unwrap();
        assert_eq!(
            tags,
            vec![
                ("team".to_owned(), "payments".to_owned()),
                (PROXY_SECRET_TAG.to_owned(), "arn:app".to_owned()),
            ]
        );
    }

    #[test]
    fn fifty_tags_of_its_own_leave_no_room_for_the_mark() {
        let many: Vec<(String, String)> = (0..50).map(|i| (format!("k{i}"), "v".into())).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(matches!(
            copied_tags(&meta(&refs)),
            Err(AdoptError::Invalid(_))
        ));
        assert_eq!(copied_tags(&meta(&refs[..49])).unwrap().len(), 50);
    }
}
