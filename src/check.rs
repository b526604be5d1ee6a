//! `rds-rotator check`: a preflight that reads and logs in, and changes nothing.
//!
//! It answers the questions an on-call engineer asks before (or instead of) a rotation: is the
//! secret well formed, does every user have exactly one proxy secret, do the users' known
//! credentials log in along the application's path, can the idle user's password be changed, is
//! TLS verified, and are the two users interchangeable (same grants). A problem that would make a
//! rotation fail is `fail`; something a person should look at is `warn`.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;

use crate::adopt::ports::{ProxyDirectory, ProxyError};
use crate::db::tls::TlsMode;
use crate::rotation::guard::{look_everywhere, verdict, Discovery, InUsePolicy, Verdict};
use crate::rotation::lease::{identify, user_key, uses, Uses};
use crate::rotation::ports::{
    Accounts, At, DbError, PasswordRules, RdsDb, RdsError, RdsTopology, SecretMeta,
    SecretStoreError, SessionGroup, Stage,
};
use crate::rotation::record::{now_ms, rfc3339, StepRecord};
use crate::rotation::{left_by_us, unlisted_account, RotationError, Rotator};
use crate::secret::{AppSecret, Credentials, Endpoint, Engine, UserSecret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub secret: String,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// What would make a rotation fail, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .map(|f| format!("{}: {}", f.check, f.detail))
            .collect()
    }

    /// No problem that would make a rotation fail.
    pub fn ready(&self) -> bool {
        !self.findings.iter().any(|f| f.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "secret": self.secret,
            "ready": self.ready(),
            "problems": self.count(Status::Fail),
            "warnings": self.count(Status::Warn),
            "findings": self.findings,
        })
    }

    /// For a person: one line per finding, then the verdict.
    pub fn to_text(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0);
        let mut out = format!("check of {}\n", self.secret);
        for f in &self.findings {
            out.push_str(&format!(
                "  {:<4}  {:<width$}  {}\n",
                f.status.label(),
                f.check,
                f.detail
            ));
        }
        let (problems, warnings) = (self.count(Status::Fail), self.count(Status::Warn));
        out.push_str(&if self.ready() {
            format!("ready to rotate ({warnings} warning(s))\n")
        } else {
            format!("NOT ready to rotate: {problems} problem(s), {warnings} warning(s)\n")
        });
        out
    }

    fn push(&mut self, check: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.findings.push(Finding {
            check: check.into(),
            status,
            detail: detail.into(),
        });
    }
}

/// What the logins taught about TLS, per endpoint.
#[derive(Default)]
struct TlsSeen {
    /// endpoint -> a connection got past the TLS handshake (or there is no TLS)
    handshakes: BTreeMap<String, Result<(), String>>,
}

impl TlsSeen {
    fn note(&mut self, at: &Endpoint, result: &Result<(), DbError>) {
        let outcome = match result {
            Err(DbError::Tls { reason, .. }) => Err(reason.clone()),
            // Not reached: says nothing about TLS.
            Err(DbError::Unreachable { .. }) | Err(DbError::Unsupported(_)) => return,
            _ => Ok(()),
        };
        let entry = self
            .handshakes
            .entry(at.to_string())
            .or_insert(outcome.clone());
        if entry.is_ok() {
            *entry = outcome;
        }
    }
}

/// Runs every check against `secret_id`. Never writes anything.
/// `min_interval`: how soon after a rotation the next may run (the in-use line allows for it).
pub async fn check(
    rotator: &Rotator,
    proxies: &dyn ProxyDirectory,
    proxy_name: Option<&str>,
    tls: TlsMode,
    min_interval: Duration,
    secret_id: &str,
) -> CheckReport {
    let mut report = CheckReport {
        secret: secret_id.to_owned(),
        findings: Vec::new(),
    };
    let secrets = &rotator.secrets;
    let meta = match secrets.describe(secret_id).await {
        Ok(m) => m,
        Err(e) => {
            report.push("secret", Status::Fail, e.to_string());
            return report;
        }
    };
    report.secret = meta.arn.clone();
    let Some(current_version) = meta.version_with(Stage::Current).map(str::to_owned) else {
        report.push("secret", Status::Fail, "no version is labelled AWSCURRENT");
        return report;
    };
    let app = match secrets.get(&meta.arn, At::Version(&current_version)).await {
        Ok(Some(v)) => AppSecret::parse(&v.value),
        Ok(None) => {
            report.push("secret", Status::Fail, "the AWSCURRENT version is gone");
            return report;
        }
        Err(e) => {
            report.push("schema", Status::Fail, e.to_string());
            return report;
        }
    };
    let app = match app {
        Ok(a) => a,
        Err(e) => {
            report.push("schema", Status::Fail, e.to_string());
            return report;
        }
    };
    let users = if app.is_multi_user() {
        app.rotation_usernames.clone()
    } else {
        vec![app.credentials.username.clone()]
    };
    report.push(
        "schema",
        Status::Ok,
        format!(
            "engine {}, users {}, AWSCURRENT is {} (version {current_version}), application path {}{}",
            app.engine,
            users.join(", "),
            app.credentials.username,
            app.endpoint,
            app.direct
                .as_ref()
                .map(|d| format!(", database {d}"))
                .unwrap_or_default()
        ),
    );
    if !app.is_multi_user() {
        report.push(
            "users",
            Status::Warn,
            "single-user rotation: the password in use changes, so applications may briefly fail to log in; list two users in rotation_usernames",
        );
    }
    if let Err(e) = rotator.settings.password.validate(app.engine) {
        report.push("password policy", Status::Fail, e.to_string());
    }
    let own = rotator.settings.rotated_by_own_function(&meta);
    check_managed_rotation(&meta, &mut report, true, own);
    let last_record = check_record(rotator, &meta.arn, &meta, &mut report).await;

    // Proxy secrets: exactly one per user, each for a user of the rotation.
    let mut proxy: BTreeMap<String, (String, Credentials)> = BTreeMap::new();
    // user -> the ARN of its proxy secret, for RDS Proxy's Auth list.
    let mut proxy_arns: BTreeMap<String, String> = BTreeMap::new();
    if app.proxy_secret_ids.is_empty() {
        report.push(
            "proxy secrets",
            Status::Warn,
            "none configured (proxy_secret_ids): RDS Proxy's secrets will not be updated",
        );
    } else {
        let mut problems = Vec::new();
        for id in &app.proxy_secret_ids {
            match read_user_secret(rotator, id).await {
                Err(e) => problems.push(format!("{id}: {e}")),
                Ok((_, s)) if !users.iter().any(|u| u == s.username()) => problems.push(format!(
                    "{id} is for user {}, who is not in the rotation",
                    s.username()
                )),
                Ok((arn, s)) => {
                    proxy_arns.entry(s.username().to_owned()).or_insert(arn);
                    if let Some((other, _)) = proxy.get(s.username()) {
                        problems.push(format!(
                            "{id} and {other} are both for user {}",
                            s.username()
                        ));
                    } else {
                        proxy.insert(s.username().to_owned(), (id.clone(), s.credentials));
                    }
                }
            }
        }
        for u in &users {
            if !proxy.contains_key(u) && !problems.iter().any(|p| p.contains(u.as_str())) {
                problems.push(format!("no proxy secret is for user {u}"));
            }
        }
        if problems.is_empty() {
            report.push(
                "proxy secrets",
                Status::Ok,
                proxy
                    .iter()
                    .map(|(u, (id, _))| format!("{u} -> {id}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        } else {
            report.push("proxy secrets", Status::Fail, problems.join("; "));
        }
        // A rotation function on a proxy secret changes that user's password behind our back:
        // on the user in use, an outage. (Unreadable ones are reported above.)
        for id in &app.proxy_secret_ids {
            if let Ok(m) = secrets.describe(id).await {
                check_managed_rotation(&m, &mut report, false, false);
            }
        }
    }

    if let Some(name) = proxy_name.or(app.proxy_name.as_deref()) {
        check_proxy_auth(proxies, name, &users, &proxy_arns, &meta.arn, &mut report).await;
    }

    // What RDS says about the database (readers, Blue/Green deployments), asked now, beside
    // the logins below.
    let mut discovery = Discovery::start(rotator.rds.clone(), app.rds_db());
    // What the guard looked at besides the writer, or why it could not learn it from RDS.
    let mut readers_seen: Option<ReadersSeen> = None;

    // The application's login, as the application makes it.
    let mut tls_seen = TlsSeen::default();
    let db = &rotator.db;
    let current = &app.credentials;
    let r = db.check_login(app.engine, &app.endpoint, current).await;
    tls_seen.note(&app.endpoint, &r);
    report.push(
        format!("login {}", current.username),
        if r.is_ok() { Status::Ok } else { Status::Fail },
        match &r {
            Ok(()) => format!("AWSCURRENT logs in through {}", app.endpoint),
            Err(e) => format!("AWSCURRENT does not log in through {}: {e}", app.endpoint),
        },
    );
    if let Some((id, creds)) = proxy.get(&current.username) {
        if creds.password.expose_secret() != current.password.expose_secret() {
            report.push(
                format!("proxy secret {}", current.username),
                Status::Fail,
                format!("{id} holds another password than AWSCURRENT: RDS Proxy refuses the application's logins"),
            );
        }
    }

    // Every other user: its known credentials, best first, as the rotation would try them.
    let previous = match secrets.get(&meta.arn, At::Stage(Stage::Previous)).await {
        Ok(Some(v)) => AppSecret::parse(&v.value).ok().map(|p| p.credentials),
        _ => None,
    };
    let master = match &app.master_secret_id {
        Some(id) => match read_user_secret(rotator, id).await {
            Ok((_, s)) => Some((id.clone(), s.credentials)),
            Err(e) => {
                report.push("master secret", Status::Warn, format!("{id}: {e}"));
                None
            }
        },
        None => None,
    };
    let admin_at = app.admin_endpoint().clone();
    let mut working_login: Option<Credentials> = r.is_ok().then(|| current.clone());
    // Each user's own credentials that log in: MySQL lets a user read only its own grants.
    let mut own: BTreeMap<String, Credentials> = BTreeMap::new();
    // The in-use guard's look, as the next rotation takes it: in the session of the login that
    // would change the next user's password (no other login of that user comes before it).
    let next_user = app.next_username().to_owned();
    let guard = &rotator.settings.in_use;
    let guard_on = app.is_multi_user() && guard.policy != InUsePolicy::Off;
    let mut looked: Option<Result<Vec<SessionGroup>, DbError>> = None;
    // Readers the guard could not ask, each with why.
    let mut unchecked: Vec<String> = Vec::new();
    // What the server asks of a password change (a replica, a validation plugin), in the same
    // session: the rotation reads it there before it makes the password.
    let mut server: Option<Result<PasswordRules, DbError>> = None;
    if r.is_ok() {
        own.insert(current.username.clone(), current.clone());
    }
    for user in users.iter().filter(|u| **u != current.username) {
        let mut sources: Vec<(String, Credentials)> = Vec::new();
        if let Some((id, c)) = proxy.get(user) {
            sources.push((format!("proxy secret {id}"), c.clone()));
        }
        if let Some(p) = previous.as_ref().filter(|p| p.username == *user) {
            let same = sources
                .iter()
                .any(|(_, c)| c.password.expose_secret() == p.password.expose_secret());
            if !same {
                sources.push(("AWSPREVIOUS".into(), p.clone()));
            }
        }
        // A failed or aborted rotation's pending version may be all that knows its password.
        for id in last_record
            .as_ref()
            .map(|r| r.unfinished_for(user))
            .unwrap_or_default()
        {
            if let Ok(Some(v)) = secrets.get(&meta.arn, At::Version(&id)).await {
                if let Ok(p) = AppSecret::parse(&v.value) {
                    if p.credentials.username == *user {
                        sources.push((
                            format!("pending version {id} of an unfinished rotation"),
                            p.credentials,
                        ));
                    }
                }
            }
        }
        if let Some((id, c)) = &master {
            sources.push((format!("master secret {id}"), c.clone()));
        }
        let mut tried = Vec::new();
        let mut known = None;
        // The user's own credentials turned away whatever the password (pg_hba.conf, NOLOGIN, a
        // locked account): another source may change its password, but applications could not
        // log in as it after a rotation.
        let mut forbidden = None;
        for (label, creds) in &sources {
            let r = if *user == next_user && server.is_none() {
                match db.login(app.engine, &admin_at, creds).await {
                    Ok(mut session) => {
                        if guard_on {
                            // As the rotation does: the writer and every reader.
                            let found = look_everywhere(
                                session.as_mut(),
                                db,
                                app.engine,
                                &admin_at,
                                &app.readers,
                                &mut discovery,
                                creds,
                                user,
                                guard.window,
                            )
                            .await;
                            looked = Some(found.writer.map(|mut groups| {
                                groups.extend(found.readers);
                                groups
                            }));
                            unchecked = found.unchecked;
                            readers_seen = Some(match found.rds {
                                None => Ok((found.asked, found.notes)),
                                Some(e) => {
                                    unchecked.push(format!("the readers RDS lists ({e})"));
                                    Err(e)
                                }
                            });
                        }
                        server = Some(session.preflight().await);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                db.check_login(app.engine, &admin_at, creds).await
            };
            tls_seen.note(&admin_at, &r);
            match r {
                Ok(()) => {
                    known = Some(label.clone());
                    if creds.username == *user {
                        own.insert(user.clone(), creds.clone());
                    }
                    if working_login.is_none() {
                        working_login = Some(creds.clone());
                    }
                    break;
                }
                Err(e) => {
                    // Not an expired MySQL password (1862): a new one clears that.
                    let expired = e.to_string().contains("(1862)");
                    if creds.username == *user
                        && matches!(e, DbError::LoginForbidden { .. })
                        && !expired
                    {
                        forbidden.get_or_insert_with(|| e.to_string());
                    }
                    tried.push(format!("{label}: {e}"))
                }
            }
        }
        if let (Some(reason), Some(_)) = (&forbidden, &known) {
            // NOLOGIN or a locked account turns applications away too; a pg_hba.conf rule may
            // admit the user only from the application's network.
            let everywhere =
                reason.contains("not permitted to log in") || reason.contains("(3118)");
            report.push(
                format!("login {user}"),
                if everywhere { Status::Fail } else { Status::Warn },
                if everywhere {
                    format!("{reason}: after a rotation to it, applications could not log in")
                } else {
                    format!("{reason} (here, at {admin_at}): applications must log in from where it is allowed")
                },
            );
        }
        match known {
            Some(label) => report.push(
                format!("idle user {user}"),
                Status::Ok,
                format!("its password can be changed: {label} logs in at {admin_at}"),
            ),
            None => report.push(
                format!("idle user {user}"),
                Status::Fail,
                if tried.is_empty() {
                    "no known credentials (no proxy secret, AWSPREVIOUS or master secret for it)"
                        .to_owned()
                } else {
                    format!(
                        "no known credentials log in at {admin_at} ({})",
                        tried.join("; ")
                    )
                },
            ),
        }
        // Through the proxy too: what applications will use after the rotation. Not for the next
        // user while the guard is on: RDS Proxy would keep that login's backend connection in
        // its pool, fresh, and the next rotation would count it.
        let probe = admin_at != app.endpoint && !(guard_on && *user == next_user);
        if let (Some((id, creds)), true) = (proxy.get(user), probe) {
            let r = db.check_login(app.engine, &app.endpoint, creds).await;
            tls_seen.note(&app.endpoint, &r);
            if let Err(e) = r {
                report.push(
                    format!("login {user}"),
                    Status::Warn,
                    format!("its proxy secret {id} does not log in through {}: {e} (a rotation sets a new password first, which may fix it)", app.endpoint),
                );
            }
        }
    }

    if let Some(seen) = readers_seen {
        check_readers(&app, seen, rotator.settings.rds_discovery, &mut report);
    }
    check_blue_green(
        &app,
        discovery.topology().await,
        rotator.settings.rds_discovery,
        &mut report,
    );
    if app.is_multi_user() {
        let last = last_record.as_ref();
        check_in_use(
            rotator,
            &next_user,
            looked,
            &unchecked,
            last,
            min_interval,
            &mut report,
        );
    }
    // Single-user rotation: the user in use is the one whose password changes.
    if server.is_none() && !app.is_multi_user() {
        if let Some(login) = own.get(&current.username) {
            server = Some(match db.login(app.engine, &admin_at, login).await {
                Ok(mut session) => session.preflight().await,
                Err(e) => Err(e),
            });
        }
    }
    check_server(&admin_at, server, &mut report);
    let mut logins: Vec<(String, Credentials)> = own
        .iter()
        .map(|(u, c)| (format!("user {u}"), c.clone()))
        .collect();
    logins.extend(
        working_login
            .iter()
            .map(|c| ("a working login".to_owned(), c.clone())),
    );
    let master_id = app.master_secret_id.as_deref();
    check_marks(
        rotator,
        &app,
        &meta.arn,
        &users,
        &next_user,
        &logins,
        master_id,
        &mut report,
    )
    .await;
    if app.engine != Engine::Postgres {
        let master = master.as_ref().map(|(_, c)| c);
        check_accounts(rotator, &app, &admin_at, master, &own, &users, &mut report).await;
    }
    check_tls(tls, &tls_seen, &mut report);
    if users.len() < 2 {
        if let Some(login) = working_login.as_ref() {
            if let Ok(p) = db.privileges(app.engine, &admin_at, login, &users[0]).await {
                check_valid_until(&[(users[0].clone(), p)], &mut report);
            }
        }
    } else {
        check_grants(
            rotator,
            &app,
            &admin_at,
            working_login.as_ref(),
            &own,
            &users,
            &mut report,
        )
        .await;
    }
    report
}

/// RDS Proxy turns away a user it has no secret for ("no credentials for the role"): after a
/// rotation to that user, every application login.
async fn check_proxy_auth(
    proxies: &dyn ProxyDirectory,
    name: &str,
    users: &[String],
    proxy_arns: &BTreeMap<String, String>,
    app_arn: &str,
    report: &mut CheckReport,
) {
    let auth = match proxies.auth(name).await {
        Ok(a) => a,
        Err(e @ ProxyError::NotFound(_)) => {
            report.push("rds proxy", Status::Fail, e.to_string());
            return;
        }
        Err(e) => {
            report.push(
                "rds proxy",
                Status::Warn,
                format!("{name} not checked: {e}"),
            );
            return;
        }
    };
    let listed = |arn: &str| auth.iter().any(|a| a.secret_arn == arn);
    // Single-user, before adoption: the proxy commonly authenticates with the application
    // secret itself, whose user does not change.
    let single = users.len() < 2 && listed(app_arn);
    let missing: Vec<String> = users
        .iter()
        .filter(|u| !single && !proxy_arns.get(*u).is_some_and(|arn| listed(arn)))
        .map(|u| match proxy_arns.get(u) {
            Some(arn) => format!("{u} ({arn})"),
            None => u.clone(),
        })
        .collect();
    if !missing.is_empty() {
        report.push(
            "rds proxy",
            Status::Fail,
            format!(
                "{name} has no secret for {} in its Auth list: after a rotation to that user, RDS Proxy refuses every application login; attach the proxy secrets (`rds-rotator adopt --dry-run` prints the call)",
                missing.join(", ")
            ),
        );
    } else if listed(app_arn) && users.len() > 1 {
        report.push(
            "rds proxy",
            Status::Warn,
            format!("{name} also authenticates with the application secret itself, whose user changes with every rotation; detach it"),
        );
    } else {
        report.push(
            "rds proxy",
            Status::Ok,
            format!(
                "{name} has a secret for each user ({} in its Auth list)",
                auth.len()
            ),
        );
    }
}

/// The secret's ARN and its credentials.
async fn read_user_secret(rotator: &Rotator, id: &str) -> Result<(String, UserSecret), String> {
    match rotator.secrets.get(id, At::Stage(Stage::Current)).await {
        Ok(Some(v)) => UserSecret::parse(&v.value)
            .map(|s| (v.arn, s))
            .map_err(|e| e.to_string()),
        Ok(None) => Err("it has no AWSCURRENT version".into()),
        Err(SecretStoreError::NotFound(_)) => Err("it does not exist".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Secrets Manager's own rotation attached to the secret: `rotate` refuses it, unless its
/// function is this tool (`own`). `say_ok`: a line also when it is not.
fn check_managed_rotation(meta: &SecretMeta, report: &mut CheckReport, say_ok: bool, own: bool) {
    if own {
        report.push(
            "managed rotation",
            Status::Ok,
            format!(
                "Secrets Manager rotates it with this tool's function {}",
                meta.rotation_lambda.as_deref().unwrap_or_default()
            ),
        );
    } else if meta.rotation_enabled {
        let e = RotationError::ManagedRotation {
            secret: meta.arn.clone(),
            lambda: meta.rotation_lambda.clone(),
        };
        report.push("managed rotation", Status::Fail, e.to_string());
    } else if say_ok {
        report.push(
            "managed rotation",
            Status::Ok,
            "Secrets Manager's own rotation is not enabled",
        );
    }
}

/// The step record's findings; returns the record for the checks that follow.
async fn check_record(
    rotator: &Rotator,
    arn: &str,
    meta: &SecretMeta,
    report: &mut CheckReport,
) -> Option<StepRecord> {
    let record = match rotator.records.load(arn).await {
        Ok(r) => r,
        Err(e) => {
            report.push("state table", Status::Fail, e.to_string());
            return None;
        }
    };
    // AWSPENDING where no rotation of ours put it: `rotate` refuses to begin.
    let pending = meta
        .version_with(Stage::Pending)
        .filter(|v| meta.version_with(Stage::Current) != Some(*v));
    if let Some(v) = pending {
        let in_progress = record
            .as_ref()
            .is_some_and(|r| r.is_in_progress() && r.rotation_id.as_deref() == Some(v));
        // Secrets Manager labels a version for the function it calls: when that is this tool's,
        // the rotation it starts is ours (`rotate` and the function begin it with that id).
        if rotator.settings.rotated_by_own_function(meta)
            && !in_progress
            && !left_by_us(v, record.as_ref())
        {
            report.push(
                "pending version",
                Status::Ok,
                format!("AWSPENDING is on version {v}, which Secrets Manager made for this tool's function: its rotation begins with that id"),
            );
        } else if !in_progress && !left_by_us(v, record.as_ref()) {
            let e = RotationError::ForeignPending {
                secret: arn.to_owned(),
                version: v.to_owned(),
            };
            report.push("pending version", Status::Fail, e.to_string());
        }
    }
    match &record {
        Some(r) if r.is_in_progress() => report.push(
            "rotation",
            Status::Warn,
            format!(
                "rotation {} is in progress at step {} (attempt {}); the next run resumes it{}",
                r.rotation_id.as_deref().unwrap_or("-"),
                r.step,
                r.attempts,
                r.last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            ),
        ),
        Some(r) if r.is_unfinished() => report.push(
            "rotation",
            Status::Warn,
            format!(
                "the last rotation {}: {}; the next one knows the password it may have set",
                r.state.as_str(),
                r.last_error.as_deref().unwrap_or_default()
            ),
        ),
        _ => {}
    }
    record
}

/// Whether a Blue/Green deployment of the database makes the next rotation wait (see
/// `rotation::bluegreen`).
fn check_blue_green(
    app: &AppSecret,
    seen: &Result<Option<RdsTopology>, RdsError>,
    discovery: bool,
    report: &mut CheckReport,
) {
    use crate::rotation::bluegreen::{verdict, Verdict};
    let db = app.rds_db();
    let (status, detail) = match seen {
        _ if !discovery => (
            Status::Warn,
            "off (ROTATOR_RDS_DISCOVERY=off): a Blue/Green deployment whose green would not get the new password is not looked for".to_owned(),
        ),
        Ok(None) => (
            // A proxy in front of an RDS database: the database is surely RDS, and unseen.
            if db.to_string().contains(".proxy-") {
                Status::Warn
            } else {
                Status::Ok
            },
            format!("not looked for: {db} names no RDS instance or cluster (dbInstanceIdentifier or dbClusterIdentifier in the secret would)"),
        ),
        Ok(Some(t)) => match verdict(&t.deployments) {
            Verdict::Clear => (
                Status::Ok,
                format!("no active Blue/Green deployment of {db}"),
            ),
            Verdict::GoOn(what) => (Status::Ok, what),
            Verdict::Wait { deployment, why } => (
                Status::Fail,
                format!("deployment {deployment}: {why}: the next rotation waits"),
            ),
        },
        Err(RdsError::NotFound(what)) if matches!(db, RdsDb::Host(_)) => (
            Status::Warn,
            format!("RDS knows no database at {what}: no deployment can be looked for"),
        ),
        Err(e) => (
            if matches!(e, RdsError::Unavailable(_)) {
                Status::Warn
            } else {
                Status::Fail
            },
            RotationError::Rds { source: e.clone() }.to_string(),
        ),
    };
    report.push("blue/green", status, detail);
}

/// The readers the guard asked and what RDS could not cover, or why RDS could not list them.
type ReadersSeen = Result<(Vec<Endpoint>, Vec<String>), RdsError>;

/// Which servers besides the writer the guard looks at: the secret's `reader_hosts` and what RDS
/// lists for the database's endpoint.
fn check_readers(app: &AppSecret, seen: ReadersSeen, discovery: bool, report: &mut CheckReport) {
    let host = &app.admin_endpoint().host;
    // RDS knows the database by the secret's identifier, or by an RDS endpoint's name.
    let db = app.rds_db();
    let named = !matches!(db, RdsDb::Host(_)) || crate::aws::rds::rds_name(host).is_some();
    match seen {
        Ok((_, notes)) if !notes.is_empty() => {
            report.push("readers", Status::Warn, notes.join("; "))
        }
        Ok((all, _)) if all.is_empty() && !discovery => report.push(
            "readers",
            Status::Warn,
            "none listed in reader_hosts, and RDS is not asked (ROTATOR_RDS_DISCOVERY=off): a reader of this database would not be looked at".to_owned(),
        ),
        Ok((all, _)) if all.is_empty() && named => report.push(
            "readers",
            Status::Ok,
            format!("none: the secret lists no reader_hosts, and RDS lists no reader or replica of {db}"),
        ),
        Ok((all, _)) if all.is_empty() => report.push(
            "readers",
            if host.contains(".proxy-") { Status::Warn } else { Status::Ok },
            format!(
                "none listed in reader_hosts; {host} is not an RDS instance or cluster endpoint, so none are found from RDS (name the database in direct_host, or list its readers)"
            ),
        ),
        Ok((all, _)) => {
            let named: Vec<String> = all
                .iter()
                .map(|r| {
                    let listed = app.readers.iter().any(|l| l == r);
                    format!("{r} ({})", if listed { "reader_hosts" } else { "RDS" })
                })
                .collect();
            report.push(
                "readers",
                Status::Ok,
                format!("the in-use guard also looks at {}", named.join(", ")),
            );
        }
        Err(e) => {
            let retryable = matches!(e, RdsError::Unavailable(_));
            report.push(
                "readers",
                if retryable {
                    Status::Warn
                } else {
                    Status::Fail
                },
                RotationError::Rds { source: e }.to_string(),
            );
        }
    }
}

/// The in-use guard's verdict on what the look found (`None`: no known login of the next user
/// worked). Right after a rotation, sessions of the user it left are expected: clients keep the
/// old credentials until their caches refresh, and the next rotation waits for the minimum
/// interval anyway.
fn check_in_use(
    rotator: &Rotator,
    user: &str,
    looked: Option<Result<Vec<SessionGroup>, DbError>>,
    unchecked: &[String],
    record: Option<&StepRecord>,
    min_interval: Duration,
    report: &mut CheckReport,
) {
    let guard = &rotator.settings.in_use;
    let window = humantime::format_duration(guard.window);
    if guard.policy == InUsePolicy::Off {
        report.push(
            "in use",
            Status::Warn,
            format!("not looked at (ROTATOR_IN_USE=off): the next rotation changes the password of user {user} even if an application still uses it"),
        );
        return;
    }
    let Some(looked) = looked else {
        report.push(
            "in use",
            Status::Warn,
            format!("not looked at: no known credentials of user {user} log in"),
        );
        return;
    };
    if !unchecked.is_empty() {
        report.push(
            "in use",
            if guard.policy == InUsePolicy::Refuse {
                Status::Fail
            } else {
                Status::Warn
            },
            format!(
                "could not look at the sessions of user {user} on {}: the next rotation {} (ROTATOR_IN_USE={})",
                unchecked.join("; "),
                if guard.policy == InUsePolicy::Refuse {
                    "waits until it can"
                } else {
                    "changes the password anyway"
                },
                guard.policy.as_str()
            ),
        );
    }
    let next_allowed = record
        .and_then(|r| r.last_success_at)
        .map(|last| last + min_interval.as_millis() as u64)
        .filter(|at| *at > now_ms());
    match looked.map(|groups| verdict(guard.policy, user, guard.window, groups)) {
        Ok(Verdict::Clear) => report.push(
            "in use",
            Status::Ok,
            format!("no session of user {user} ran a statement within {window}"),
        ),
        Ok(Verdict::Wait(f) | Verdict::GoOn(f)) if next_allowed.is_some() => report.push(
            "in use",
            Status::Ok,
            format!(
                "{f}: expected so soon after a rotation, while clients' caches refresh; the next rotation is not before {} (the minimum interval) and looks again then",
                rfc3339(next_allowed.unwrap_or_default())
            ),
        ),
        Ok(Verdict::Wait(f)) => report.push(
            "in use",
            Status::Fail,
            format!("{f}: the next rotation waits for them (ROTATOR_IN_USE=refuse)"),
        ),
        Ok(Verdict::GoOn(f)) => report.push(
            "in use",
            Status::Warn,
            format!(
                "{f}: the next rotation changes the password anyway (ROTATOR_IN_USE={}), and their next login fails",
                guard.policy.as_str()
            ),
        ),
        Err(e) => report.push(
            "in use",
            Status::Warn,
            format!("could not look at the sessions of user {user}: {e}"),
        ),
    }
}

/// The server as the next rotation finds it before it makes a password.
fn check_server(
    at: &Endpoint,
    server: Option<Result<PasswordRules, DbError>>,
    report: &mut CheckReport,
) {
    match server {
        None => report.push(
            "server",
            Status::Warn,
            format!("not looked at: no known credentials of the next user log in at {at}"),
        ),
        Some(Ok(rules)) => report.push(
            "server",
            Status::Ok,
            match &rules.source {
                None => format!("{at} takes password changes"),
                Some(source) => format!(
                    "{at} takes password changes; {source} asks for at least {} characters, {} lower-case, {} upper-case, {} digits and {} others, and new passwords meet that",
                    rules.min_length, rules.min_lower, rules.min_upper, rules.min_digits, rules.min_other
                ),
            },
        ),
        Some(Err(e @ (DbError::ReadOnly { .. } | DbError::PasswordRejected(_)))) => {
            report.push("server", Status::Fail, format!("{e}; the rotation refuses before it writes AWSPENDING"))
        }
        Some(Err(e)) => report.push(
            "server",
            Status::Warn,
            format!("could not read what {at} asks of a password change: {e}"),
        ),
    }
}

/// The server's own identity, and what the claims and marks on this secret's users, keyed by
/// it, mean for the next rotation: a secret scheduled for deletion (or gone) uses nobody, one
/// that cannot be read refuses the rotation, one that has the next user in AWSCURRENT too.
#[allow(clippy::too_many_arguments)]
async fn check_marks(
    rotator: &Rotator,
    app: &AppSecret,
    arn: &str,
    users: &[String],
    next_user: &str,
    logins: &[(String, Credentials)],
    master: Option<&str>,
    report: &mut CheckReport,
) {
    let server = match identify(rotator, app.engine, app.admin_endpoint(), logins, master).await {
        Ok(s) => s,
        Err(e) => {
            report.push("server identity", Status::Fail, e.to_string());
            return;
        }
    };
    report.push(
        "server identity",
        Status::Ok,
        format!(
            "{} (claims and marks on its users are keyed by it, whatever name reaches it)",
            server.detail
        ),
    );
    let mut found = false;
    for user in users {
        let (claim, marks) = match rotator
            .records
            .user_marks(&user_key(app.engine, &server, user))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                report.push("user marks", Status::Warn, format!("user {user}: {e}"));
                continue;
            }
        };
        let mut others: Vec<String> = marks.into_iter().filter(|s| s != arn).collect();
        if let Some(c) = claim.filter(|c| c.secret != arn && !others.contains(&c.secret)) {
            others.push(c.secret);
        }
        for other in others {
            found = true;
            match uses(rotator, &other, user).await {
                Ok(Uses::Gone) => report.push(
                    "user marks",
                    Status::Warn,
                    format!("user {user}: secret {other} is scheduled for deletion or deleted, so it uses nobody; its mark is cleared when a rotation meets it"),
                ),
                Ok(Uses::Yes) if user == next_user => report.push(
                    "user marks",
                    Status::Fail,
                    format!("user {user}, the next rotation's, is AWSCURRENT of secret {other}: the rotation will refuse to change it"),
                ),
                Ok(Uses::Yes | Uses::No) => report.push(
                    "user marks",
                    Status::Ok,
                    format!("user {user} is also named by secret {other}"),
                ),
                Err(e) => report.push("user marks", Status::Fail, format!("user {user}: {e}")),
            }
        }
    }
    if !found {
        report.push(
            "user marks",
            Status::Ok,
            format!("no other secret claims or marks users {}", users.join(", ")),
        );
    }
}

/// MySQL and MariaDB keep one account per host, each with its own password. A user changing its
/// own password changes one; the master secret changes them all.
async fn check_accounts(
    rotator: &Rotator,
    app: &AppSecret,
    at: &Endpoint,
    master: Option<&Credentials>,
    own: &BTreeMap<String, Credentials>,
    users: &[String],
    report: &mut CheckReport,
) {
    let mut listed = Vec::new();
    let mut problems = Vec::new();
    for u in users {
        let Some(reader) = master.or_else(|| own.get(u)) else {
            listed.push(format!("{u}: not listed (no login)"));
            continue;
        };
        match rotator.db.accounts(app.engine, at, reader, u).await {
            Ok(Accounts::Listed(hosts)) => {
                if hosts.len() > 1 && master.is_none() {
                    problems.push(format!(
                        "{u} has {} accounts, and without a master secret only the one it logs in as would change",
                        hosts.len()
                    ));
                }
                let hosts: Vec<String> = hosts.iter().map(|h| format!("{u}@{h}")).collect();
                listed.push(hosts.join(", "));
            }
            Ok(Accounts::Unlisted { logged_in_as }) => {
                listed.push(format!(
                    "{u}: not listed ({} may not read mysql.user)",
                    reader.username
                ));
                // Without a master secret the user changes its own account: the rotation's rule.
                if master.is_none() {
                    if let Err(why) =
                        unlisted_account(u, &logged_in_as, app.account_host.as_deref())
                    {
                        problems.push(why);
                    }
                }
            }
            Err(e) => listed.push(format!("{u}: not listed ({e})")),
        }
    }
    if problems.is_empty() {
        let unlisted = listed.iter().any(|l| l.contains("not listed"));
        report.push(
            "accounts",
            if unlisted { Status::Warn } else { Status::Ok },
            if unlisted {
                format!("{}: an account on another host would keep its old password; a master secret lists and changes them all", listed.join("; "))
            } else {
                listed.join("; ")
            },
        );
    } else {
        report.push(
            "accounts",
            Status::Fail,
            format!(
                "{}; {}: the rotation refuses (set master_secret_id to a login that may read mysql.user; or drop the extra accounts; or, if the account it logs in as is its only one, add \"account_host\" with that account's host to the secret)",
                listed.join("; "),
                problems.join("; ")
            ),
        );
    }
}

fn check_tls(mode: TlsMode, seen: &TlsSeen, report: &mut CheckReport) {
    let failed: Vec<String> = seen
        .handshakes
        .iter()
        .filter_map(|(at, r)| r.as_ref().err().map(|e| format!("{at}: {e}")))
        .collect();
    let reached: Vec<&str> = seen.handshakes.keys().map(String::as_str).collect();
    if !failed.is_empty() {
        report.push("tls", Status::Fail, failed.join("; "));
        return;
    }
    match mode {
        TlsMode::VerifyFull if reached.is_empty() => report.push(
            "tls",
            Status::Warn,
            "verify-full, but no database answered to be verified",
        ),
        TlsMode::VerifyFull => report.push(
            "tls",
            Status::Ok,
            format!(
                "verify-full: certificate chain and host name verified at {}",
                reached.join(", ")
            ),
        ),
        TlsMode::Require => report.push(
            "tls",
            Status::Warn,
            "require: encrypted, but the server's certificate is not verified (use verify-full with ROTATOR_DB_CA_BUNDLE)",
        ),
        TlsMode::Disable => report.push(
            "tls",
            Status::Warn,
            "disable: database connections are not encrypted (use verify-full)",
        ),
    }
}

async fn check_grants(
    rotator: &Rotator,
    app: &AppSecret,
    at: &Endpoint,
    login: Option<&Credentials>,
    own: &BTreeMap<String, Credentials>,
    users: &[String],
    report: &mut CheckReport,
) {
    let Some(login) = login else {
        report.push(
            "grants",
            Status::Warn,
            "not compared: no user could log in to read them",
        );
        return;
    };
    let mut sets = Vec::new();
    for u in users {
        let reader = own.get(u).unwrap_or(login);
        match rotator.db.privileges(app.engine, at, reader, u).await {
            Ok(p) => sets.push((u.clone(), p)),
            Err(e) => {
                report.push("grants", Status::Warn, format!("not compared: {e}"));
                return;
            }
        }
    }
    check_valid_until(&sets, report);
    let (first, base) = &sets[0];
    let mut drift = Vec::new();
    let mut shared = Vec::new();
    for (u, p) in &sets[1..] {
        // adopt's PostgreSQL clone acts as the original: it holds every privilege of it by
        // membership, so only what it has besides counts.
        let arrangement = |lines: &[String], of: &str| {
            let member = [format!("member of {of}"), format!("member of \"{of}\"")];
            let acts = app.engine == Engine::Postgres
                && lines.iter().any(|l| member.contains(l))
                && lines.contains(&format!("setting role={of}"));
            acts.then(|| {
                let mut own: Vec<String> = member.to_vec();
                own.push(format!("setting role={of}"));
                own
            })
        };
        // Lines one user has and the other lacks; the one that acts as the other lacks nothing.
        let extra = |have: &[String], other: &[String], own: &[String]| -> Vec<String> {
            have.iter()
                .filter(|x| !other.contains(x) && !own.contains(x))
                .cloned()
                .collect()
        };
        let (only_first, only_other) = match (arrangement(p, first), arrangement(base, u)) {
            (Some(own), _) => {
                shared.push(format!("{u} acts as {first}"));
                (Vec::new(), extra(p, base, &own))
            }
            (None, Some(own)) => {
                shared.push(format!("{first} acts as {u}"));
                (extra(base, p, &own), Vec::new())
            }
            (None, None) => (extra(base, p, &[]), extra(p, base, &[])),
        };
        if !only_first.is_empty() {
            drift.push(format!("only {first}: {}", only_first.join(", ")));
        }
        if !only_other.is_empty() {
            drift.push(format!("only {u}: {}", only_other.join(", ")));
        }
    }
    if drift.is_empty() {
        report.push(
            "grants",
            Status::Ok,
            if shared.is_empty() {
                format!(
                    "{} have the same role memberships and privileges ({} entries)",
                    users.join(" and "),
                    base.len()
                )
            } else {
                format!(
                    "{} have the same privileges: {} (a member of it whose sessions start as it, by the role setting), so what either creates is owned by one role and usable by both",
                    users.join(" and "),
                    shared.join(", ")
                )
            },
        );
    } else {
        report.push(
            "grants",
            Status::Warn,
            format!(
                "the users differ, so applications would gain or lose access when AWSCURRENT moves: {}",
                drift.join("; ")
            ),
        );
    }
}

/// A VALID UNTIL ends a password on a date, whatever the rotation does: past it, the user cannot
/// log in (PostgreSQL says "password authentication failed", as for a wrong one).
fn check_valid_until(sets: &[(String, Vec<String>)], report: &mut CheckReport) {
    let mut expired = Vec::new();
    let mut ending = Vec::new();
    for (user, lines) in sets {
        for line in lines {
            let Some(until) = line.strip_prefix("valid until ") else {
                continue;
            };
            match until.strip_suffix(" (expired)") {
                Some(at) => expired.push(format!("{user} expired at {at}")),
                None => ending.push(format!("{user} ends at {until}")),
            }
        }
    }
    if !expired.is_empty() {
        report.push(
            "valid until",
            Status::Fail,
            format!(
                "the password of {}: it cannot log in. A rotation with the master secret clears VALID UNTIL when it sets the new password",
                expired.join(", ")
            ),
        );
    } else if !ending.is_empty() {
        report.push(
            "valid until",
            Status::Warn,
            format!(
                "the password of {} (VALID UNTIL), whatever the rotation does, unless the master secret sets it (which clears VALID UNTIL; a user changing its own password does not)",
                ending.join(", ")
            ),
        );
    }
}
