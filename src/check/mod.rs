//! `rds-rotator check`: a preflight that reads and logs in, and changes nothing.
//!
//! It answers the questions an on-call engineer asks before (or instead of) a rotation: is the
//! secret well formed, does every user have exactly one proxy secret, do the users' known
//! credentials log in along the application's path, can the idle user's password be changed, is
//! TLS verified, and are the two users interchangeable (same grants). A problem that would make a
//! rotation fail is `fail`; something a person should look at is `warn`.

mod accounts;
mod grants;
mod in_use;
mod marks;
mod proxy;
mod report;
mod secret;
mod server;
mod tls;
mod topology;

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::adopt::ports::ProxyDirectory;
use crate::db::tls::TlsMode;
use crate::rotation::guard::{look_everywhere, Discovery, InUsePolicy};
use crate::rotation::ports::{At, DbError, PasswordRules, SessionGroup, Stage};
use crate::rotation::Rotator;
use crate::secret::{AppSecret, Credentials, Engine};
use accounts::check_accounts;
use grants::{check_grants, check_valid_until};
use in_use::check_in_use;
use marks::check_marks;
use proxy::check_proxy_auth;
pub use report::{CheckReport, Finding, Status};
use secret::{check_managed_rotation, check_record, read_user_secret};
use server::check_server;
use tls::{check_tls, TlsSeen};
use topology::{check_blue_green, check_readers, ReadersSeen};

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
            // Ours, or (`record::elsewhere`) another secret's that names the same user.
            let (secret, id) = match crate::rotation::record::parse_elsewhere(&id) {
                Some((secret, id)) => (secret.to_owned(), id.to_owned()),
                None => (meta.arn.clone(), id),
            };
            if let Ok(Some(v)) = secrets.get(&secret, At::Version(&id)).await {
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
