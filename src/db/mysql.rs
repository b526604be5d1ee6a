//! MySQL and MariaDB over mysql_async (rustls).
//!
//! The idle user changes its own password (`SET PASSWORD` / `ALTER USER CURRENT_USER()`), so no
//! account host has to be guessed and no privilege is needed beyond logging in. With a master secret, the user's
//! accounts are looked up in `mysql.user` and each is altered.
//!
//! What reaches the server:
//! - **MariaDB**: the `mysql_native_password` hash (`SET PASSWORD = '*…'`), never the plaintext,
//!   so no server log can hold it.
//! - **MySQL**: the plaintext in `IDENTIFIED BY '…'`, because MySQL 8's default plugin
//!   (`caching_sha2_password`) takes no precomputed hash that we could make without the server's
//!   salt. MySQL rewrites the statement in its general, slow and binary logs (the password becomes
//!   `<secret>`) unless the server runs with `--log-raw`: keep that off (see the README).
//!
//! Names are validated before they get here (letters, digits, `_ $ . -`) and are quoted anyway;
//! passwords never contain `'`, `"` or `\` on these engines (the password policy excludes them),
//! and a password that does is refused rather than escaped, because `NO_BACKSLASH_ESCAPES`
//! changes what an escape means.

use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use secrecy::{ExposeSecret, SecretString};
use sha1::{Digest, Sha1};
use tracing::debug;

use super::tls::{DbTls, TlsMode};
use crate::rotation::ports::{Database, DbError, DbSession, SessionGroup};
use crate::secret::{Credentials, Endpoint, Engine};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Server error codes that mean "these credentials do not log in".
const ER_ACCESS_DENIED_ERROR: u16 = 1045;
const ER_DBACCESS_DENIED_ERROR: u16 = 1044;
const ER_ACCOUNT_HAS_BEEN_LOCKED: u16 = 3118;
const ER_MUST_CHANGE_PASSWORD_LOGIN: u16 = 1862;
/// ... and ones that mean "try again later".
const ER_CON_COUNT_ERROR: u16 = 1040;
const ER_TOO_MANY_USER_CONNECTIONS: u16 = 1203;
const ER_SERVER_SHUTDOWN: u16 = 1053;

pub struct MySql {
    tls: DbTls,
}

/// `` `name` `` with embedded backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `'text'` for text that needs no escaping; anything else is refused (see the module docs).
fn literal(text: &str, what: &str) -> Result<String, DbError> {
    if text
        .chars()
        .any(|c| matches!(c, '\'' | '"' | '\\') || c.is_control())
    {
        return Err(DbError::Refused(format!(
            "the {what} contains a quote, a backslash or a control character, which this engine's adapter never sends"
        )));
    }
    Ok(format!("'{text}'"))
}

/// MySQL's `mysql_native_password` hash: `*` and the upper-case hex of SHA1(SHA1(password)).
pub fn native_password_hash(password: &str) -> String {
    let twice = Sha1::digest(Sha1::digest(password.as_bytes()));
    let hex: String = twice.iter().map(|b| format!("{b:02X}")).collect();
    format!("*{hex}")
}

/// Removes `secret` from a server message (a syntax error quotes the statement around it).
fn scrub(message: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(message.to_owned(), |m, s| m.replace(s, "[redacted]"))
}

fn classify(at: &Endpoint, user: &str, e: mysql_async::Error, secrets: &[&str]) -> DbError {
    use mysql_async::{DriverError, Error, IoError};
    let unreachable = |reason: String| DbError::Unreachable {
        at: at.to_string(),
        reason,
    };
    match e {
        Error::Server(s) => match s.code {
            ER_ACCESS_DENIED_ERROR
            | ER_DBACCESS_DENIED_ERROR
            | ER_ACCOUNT_HAS_BEEN_LOCKED
            | ER_MUST_CHANGE_PASSWORD_LOGIN => DbError::LoginRejected(user.to_owned()),
            ER_CON_COUNT_ERROR | ER_TOO_MANY_USER_CONNECTIONS | ER_SERVER_SHUTDOWN => {
                unreachable(scrub(&s.message, secrets))
            }
            code => DbError::Refused(format!(
                "{} ({code}, SQLSTATE {})",
                scrub(&s.message, secrets),
                s.state
            )),
        },
        Error::Io(IoError::Tls(t)) => DbError::Tls {
            at: at.to_string(),
            reason: t.to_string(),
        },
        Error::Driver(DriverError::NoClientSslFlagFromServer) => DbError::Tls {
            at: at.to_string(),
            reason: "the server does not support TLS".into(),
        },
        Error::Driver(
            d @ (DriverError::UnknownAuthPlugin { .. }
            | DriverError::CleartextPluginDisabled
            | DriverError::MysqlOldPasswordDisabled),
        ) => DbError::Refused(d.to_string()),
        other => {
            // rustls errors may arrive wrapped in an io::Error.
            let text = other.to_string();
            if text.contains("invalid peer certificate") || text.contains("TLS") {
                DbError::Tls {
                    at: at.to_string(),
                    reason: text,
                }
            } else {
                unreachable(text)
            }
        }
    }
}

impl MySql {
    pub fn new(tls: DbTls) -> Self {
        Self { tls }
    }

    fn ssl_opts(&self) -> Option<SslOpts> {
        match self.tls.mode {
            TlsMode::Disable => None,
            // Encrypted, the server not authenticated: like the PostgreSQL adapter's `require`.
            TlsMode::Require => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyFull => {
                let roots = self
                    .tls
                    .ca_bundle
                    .iter()
                    .map(|p| p.clone().into())
                    .collect();
                Some(SslOpts::default().with_root_certs(roots))
            }
        }
    }

    async fn connect(&self, at: &Endpoint, creds: &Credentials) -> Result<Conn, DbError> {
        crate::calls::record("mysql.connect");
        let opts = OptsBuilder::default()
            .ip_or_hostname(at.host.clone())
            .tcp_port(at.port)
            .user(Some(creds.username.clone()))
            .pass(Some(creds.password.expose_secret().to_owned()))
            .db_name((!at.dbname.is_empty()).then(|| at.dbname.clone()))
            .prefer_socket(false)
            .ssl_opts(self.ssl_opts());
        let pw = creds.password.expose_secret();
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
            Ok(r) => r.map_err(|e| classify(at, &creds.username, e, &[pw]))?,
            Err(_) => {
                return Err(DbError::Unreachable {
                    at: at.to_string(),
                    reason: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                })
            }
        };
        debug!(host = %at.host, port = at.port, user = %creds.username, "connected to MySQL/MariaDB");
        Ok(conn)
    }
}

async fn is_mariadb(conn: &mut Conn) -> Result<bool, mysql_async::Error> {
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(version.is_some_and(|v| v.contains("MariaDB")))
}

struct MySqlSession {
    /// Taken when the session ends, to say goodbye to the server.
    conn: Option<Conn>,
    at: Endpoint,
    login: Credentials,
}

#[async_trait]
impl DbSession for MySqlSession {
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<(), DbError> {
        let (at, login) = (&self.at, &self.login);
        let Some(conn) = self.conn.as_mut() else {
            return Err(DbError::Refused("the session has ended".into()));
        };
        let (pw, login_pw) = (password.expose_secret(), login.password.expose_secret());
        let hash = native_password_hash(pw);
        let secrets = [pw, login_pw, hash.as_str()];
        let err = |e| classify(at, &login.username, e, &secrets);
        let mariadb = is_mariadb(conn).await.map_err(err)?;
        let accounts = if login.username == user {
            // Changing one's own password needs no privilege on either server.
            vec![None]
        } else {
            // The master path: every account (user@host) of that user.
            let hosts: Vec<String> = conn
                .exec("SELECT Host FROM mysql.user WHERE User = ?", (user,))
                .await
                .map_err(err)?;
            if hosts.is_empty() {
                return Err(DbError::Refused(format!(
                    "there is no account for user {user}"
                )));
            }
            hosts
                .iter()
                .map(|h| {
                    Ok(Some(format!(
                        "{}@{}",
                        literal(user, "user name")?,
                        literal(h, "account host")?
                    )))
                })
                .collect::<Result<_, DbError>>()?
        };
        for account in accounts {
            let sql = match (mariadb, account) {
                // MariaDB takes the hash itself: the plaintext never leaves this process.
                (true, None) => format!("SET PASSWORD = '{hash}'"),
                (true, Some(a)) => format!("SET PASSWORD FOR {a} = '{hash}'"),
                (false, None) => format!(
                    "ALTER USER CURRENT_USER() IDENTIFIED BY {}",
                    literal(pw, "new password")?
                ),
                (false, Some(a)) => format!(
                    "ALTER USER {a} IDENTIFIED BY {}",
                    literal(pw, "new password")?
                ),
            };
            conn.query_drop(sql).await.map_err(err)?;
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
        Ok(())
    }

    /// From the process list, which shows a user its own threads (and everyone's with PROCESS):
    /// every account of the user (`user@host`) at once. A `Sleep` thread's `TIME` is how long
    /// ago its last statement ended. MySQL and MariaDB keep no application name there.
    async fn recent_sessions(
        &mut self,
        user: &str,
        within: Duration,
    ) -> Result<Vec<SessionGroup>, DbError> {
        let (at, login) = (&self.at, &self.login);
        let Some(conn) = self.conn.as_mut() else {
            return Err(DbError::Refused("the session has ended".into()));
        };
        let rows: Vec<(Option<String>, Option<String>, Option<i64>)> = conn
            .exec(
                "SELECT HOST, COMMAND, TIME FROM information_schema.PROCESSLIST \
                 WHERE USER = ? AND ID <> CONNECTION_ID()",
                (user,),
            )
            .await
            .map_err(|e| classify(at, &login.username, e, &[login.password.expose_secret()]))?;
        Ok(group_threads(rows, within))
    }
}

/// Threads that run a statement, or slept less than `within`, by client address.
fn group_threads(
    rows: Vec<(Option<String>, Option<String>, Option<i64>)>,
    within: Duration,
) -> Vec<SessionGroup> {
    let mut by_client: std::collections::BTreeMap<String, u32> = Default::default();
    for (host, command, time) in rows {
        let idle_for = Duration::from_secs(time.unwrap_or(0).max(0) as u64);
        match command.as_deref() {
            Some("Sleep") if idle_for >= within => continue,
            // On its way out: a client that just said goodbye (or was killed).
            Some("Quit" | "Killed") => continue,
            _ => {}
        }
        // `host:port` for TCP clients; the port says nothing about who it is.
        let host = host.unwrap_or_else(|| "?".into());
        let client = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_owned(),
            _ => host,
        };
        *by_client.entry(client).or_default() += 1;
    }
    let mut groups: Vec<SessionGroup> = by_client
        .into_iter()
        .map(|(client, sessions)| SessionGroup {
            client,
            application: "-".into(),
            sessions,
        })
        .collect();
    groups.sort_by(|a, b| b.sessions.cmp(&a.sessions).then(a.client.cmp(&b.client)));
    groups
}

/// `SHOW GRANTS` lines in a form two users can be compared in: the grantee becomes `<user>` and
/// credentials (`IDENTIFIED BY PASSWORD '*…'`, `IDENTIFIED VIA …`) are cut off.
fn normalise_grant(line: &str, user: &str) -> String {
    let mut s = line.to_owned();
    for cut in [
        " IDENTIFIED BY PASSWORD",
        " IDENTIFIED VIA",
        " IDENTIFIED WITH",
    ] {
        if let Some(i) = s.find(cut) {
            s.truncate(i);
        }
    }
    for quoted in [format!("`{user}`@"), format!("'{user}'@")] {
        if let Some(i) = s.find(&quoted) {
            let rest = &s[i + quoted.len()..];
            let host_end = rest
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == '`' || *c == '\'')
                .map_or(rest.len(), |(j, _)| j + 1);
            s = format!("{}<user>{}", &s[..i], &rest[host_end..]);
        }
    }
    s
}

#[async_trait]
impl Database for MySql {
    async fn check_login(
        &self,
        _engine: Engine,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError> {
        let mut conn = self.connect(at, creds).await?;
        let pw = creds.password.expose_secret();
        conn.query_drop("DO 1")
            .await
            .map_err(|e| classify(at, &creds.username, e, &[pw]))?;
        let _ = conn.disconnect().await;
        Ok(())
    }

    async fn login(
        &self,
        _engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        let conn = self.connect(at, login).await?;
        Ok(Box::new(MySqlSession {
            conn: Some(conn),
            at: at.clone(),
            login: login.clone(),
        }))
    }

    async fn privileges(
        &self,
        _engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Vec<String>, DbError> {
        let mut conn = self.connect(at, login).await?;
        let pw = login.password.expose_secret();
        let err = |e| classify(at, &login.username, e, &[pw]);
        // A user may always read its own grants; another's needs rights on the mysql schema.
        let sql = if login.username == user {
            "SHOW GRANTS FOR CURRENT_USER()".to_owned()
        } else {
            let host: Option<String> = conn
                .exec_first(
                    "SELECT Host FROM mysql.user WHERE User = ? ORDER BY Host LIMIT 1",
                    (user,),
                )
                .await
                .map_err(err)?;
            let host = host
                .ok_or_else(|| DbError::Refused(format!("there is no account for user {user}")))?;
            format!(
                "SHOW GRANTS FOR {}@{}",
                literal(user, "user name")?,
                literal(&host, "account host")?
            )
        };
        let lines: Vec<String> = conn.query(sql).await.map_err(err)?;
        let _ = conn.disconnect().await;
        let mut out: Vec<String> = lines.iter().map(|l| normalise_grant(l, user)).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_password_hash_matches_mysqls_password_function() {
        // SELECT PASSWORD('password') on MySQL 5.7 / MariaDB.
        assert_eq!(
            native_password_hash("password"),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }

    #[test]
    fn literals_with_quotes_or_backslashes_are_refused_not_escaped() {
        assert_eq!(literal("abc", "x").unwrap(), "'abc'");
        for bad in ["a'b", "a\\b", "a\"b", "a\nb"] {
            assert!(literal(bad, "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grants_compare_without_the_grantee_or_credentials() {
        let a = normalise_grant(
            "GRANT SELECT ON `shop`.* TO `app`@`%` IDENTIFIED BY PASSWORD '*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19'",
            "app",
        );
        let b = normalise_grant("GRANT SELECT ON `shop`.* TO 'app_clone'@'%'", "app_clone");
        assert_eq!(a, "GRANT SELECT ON `shop`.* TO <user>");
        assert_eq!(a, b);
    }

    #[test]
    fn threads_count_when_busy_or_recently_busy_and_group_by_client_address() {
        let row = |h: &str, c: &str, t: i64| (Some(h.to_owned()), Some(c.to_owned()), Some(t));
        let groups = group_threads(
            vec![
                row("10.0.0.5:40001", "Sleep", 3),
                row("10.0.0.5:40002", "Query", 0),
                row("10.0.0.6:40003", "Sleep", 3600),
                row("localhost", "Sleep", 1),
                row("10.0.0.7:40004", "Quit", 0),
            ],
            Duration::from_secs(900),
        );
        let seen: Vec<(&str, u32)> = groups
            .iter()
            .map(|g| (g.client.as_str(), g.sessions))
            .collect();
        assert_eq!(seen, [("10.0.0.5", 2), ("localhost", 1)]);
    }

    #[test]
    fn server_messages_lose_the_secrets_they_quote() {
        assert_eq!(
            scrub("near 'IDENTIFIED BY 's3cret'' at line 1", &["s3cret"]),
            "near 'IDENTIFIED BY '[redacted]'' at line 1"
        );
    }
}
