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

pub mod ports;
mod proxy_secrets;
pub mod report;
mod steps;

use std::sync::Arc;

use tracing::warn;

use crate::failpoint;
use crate::rotation::lease::{self, claim_existing_user, heartbeat, identify, Flags, Taken};
use crate::rotation::ports::{
    At, DbError, Lease, PasswordRules, RecordStoreError, SecretMeta, SecretStoreError, Stage,
};
use crate::rotation::LeaseWait;
use crate::rotation::{RotationError, Rotator};
use crate::secret::{validate_username, AppSecret, Endpoint, Engine, SecretError, UserSecret};
pub use ports::Cloner;
use ports::{
    ClonePlan, CloneSession, CloneState, ProxyAuth, ProxyDirectory, ProxyError, SecretCatalog,
};
use report::Action;
pub use report::Adoption;
use steps::attach_plan;

/// Marks a proxy secret made by adopt, with the application secret's ARN: the tag fan-out
/// leaves such secrets out, although they carry the application secret's tags.
pub const PROXY_SECRET_TAG: &str = "rds-rotator:proxy-secret-for";

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
        let meta_arn = meta.arn.clone();
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
        if matches!(result, Err(AdoptError::LeaseLost)) {
            // Stopped inside a step, or another process holds the lease now: released, a
            // statement already sent could land after a new holder takes over (as a rotation).
            warn!(secret = %meta_arn, "stopped inside a step: the lease is left to expire");
            return result;
        }
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
