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
//!   `<secret>`) unless the server runs with `--log-raw`: keep that off (see
//!   docs/src/reference/mysql-mariadb.md).
//! - **MariaDB with a password validation plugin and `strict_password_validation`**: the server
//!   refuses every hash, so the plaintext goes, but only over verified TLS (warned once);
//!   otherwise the change is refused before a password is made (`preflight`).
//!
//! A user changing its own password changes one account, the one it logged in as: accounts of
//! the same name on other hosts keep their passwords. The rotation looks at `accounts` first.
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
use tracing::{debug, warn};

use super::tls::{DbTls, TlsMode};
use crate::rotation::ports::{
    Accounts, Database, DbError, DbSession, OwnSession, PasswordRules, ServerIdentity, SessionGroup,
};
use crate::secret::{Credentials, Endpoint, Engine};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Server error codes that mean "these credentials do not log in".
const ER_ACCESS_DENIED_ERROR: u16 = 1045;
const ER_DBACCESS_DENIED_ERROR: u16 = 1044;
const ER_ACCOUNT_HAS_BEEN_LOCKED: u16 = 3118;
const ER_MUST_CHANGE_PASSWORD_LOGIN: u16 = 1862;
/// ... "try again later" (the server is full, or going down) ...
const ER_CON_COUNT_ERROR: u16 = 1040;
const ER_SERVER_SHUTDOWN: u16 = 1053;
/// The server gave up waiting for a lock (`lock_wait_timeout`, `innodb_lock_wait_timeout`):
/// another session holds it for now.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// ... the user's own limit (max_user_connections, globally or per account) ...
const ER_TOO_MANY_USER_CONNECTIONS: u16 = 1203;
const ER_USER_LIMIT_REACHED: u16 = 1226;
/// ... logged in, but not allowed ...
const ER_TABLEACCESS_DENIED_ERROR: u16 = 1142;
const ER_SPECIFIC_ACCESS_DENIED_ERROR: u16 = 1227;
const ER_PASSWORD_NOT_ALLOWED: u16 = 1132;
/// MySQL 8's `PASSWORD REQUIRE CURRENT`: a user changing its own password must name the old one.
const ER_MISSING_CURRENT_PASSWORD: u16 = 3892;
const ER_INCORRECT_CURRENT_PASSWORD: u16 = 3893;
/// ... `--read-only` (a replica), and a password validation plugin's refusal.
const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
const ER_NOT_VALID_PASSWORD: u16 = 1819;

pub struct MySql {
    tls: DbTls,
    /// The server gives up a statement of a login session that waits for a lock longer than
    /// this (`lock_wait_timeout` and `innodb_lock_wait_timeout`, MySQL and MariaDB). A client that gives up does not stop it:
    /// it would run whenever the lock came.
    pub(crate) statement_timeout: Option<Duration>,
}

/// `` `name` `` with embedded backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `'text'` for text that needs no escaping; anything else is refused (see the module docs).
pub(crate) fn literal(text: &str, what: &str) -> Result<String, DbError> {
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

pub(crate) fn classify(
    at: &Endpoint,
    user: &str,
    e: mysql_async::Error,
    secrets: &[&str],
) -> DbError {
    use mysql_async::{DriverError, Error, IoError};
    let unreachable = |reason: String| DbError::Unreachable {
        at: at.to_string(),
        reason,
    };
    match e {
        Error::Server(s) => match s.code {
            ER_ACCESS_DENIED_ERROR => DbError::LoginRejected(user.to_owned()),
            ER_DBACCESS_DENIED_ERROR
            | ER_ACCOUNT_HAS_BEEN_LOCKED
            | ER_MUST_CHANGE_PASSWORD_LOGIN => DbError::LoginForbidden {
                user: user.to_owned(),
                reason: format!("{} ({})", scrub(&s.message, secrets), s.code),
            },
            // 1226 is also max_questions and max_updates: not a connection limit.
            ER_USER_LIMIT_REACHED
                if !s.message.contains("max_user_connections")
                    && !s.message.contains("max_connections_per_hour") =>
            {
                DbError::NotPermitted(format!("{} ({})", scrub(&s.message, secrets), s.code))
            }
            ER_TOO_MANY_USER_CONNECTIONS | ER_USER_LIMIT_REACHED => DbError::ConnectionLimit {
                user: user.to_owned(),
                reason: format!("{} ({})", scrub(&s.message, secrets), s.code),
            },
            ER_CON_COUNT_ERROR | ER_SERVER_SHUTDOWN | ER_LOCK_WAIT_TIMEOUT => {
                unreachable(scrub(&s.message, secrets))
            }
            ER_TABLEACCESS_DENIED_ERROR
            | ER_SPECIFIC_ACCESS_DENIED_ERROR
            | ER_PASSWORD_NOT_ALLOWED
            | ER_MISSING_CURRENT_PASSWORD
            | ER_INCORRECT_CURRENT_PASSWORD => {
                DbError::NotPermitted(format!("{} ({})", scrub(&s.message, secrets), s.code))
            }
            ER_OPTION_PREVENTS_STATEMENT if s.message.contains("read-only") => DbError::ReadOnly {
                at: at.to_string(),
                writer: None,
            },
            ER_OPTION_PREVENTS_STATEMENT if s.message.contains("strict-password-validation") => {
                DbError::PasswordRejected(format!("{} ({})", scrub(&s.message, secrets), s.code))
            }
            ER_NOT_VALID_PASSWORD => {
                DbError::PasswordRejected(format!("{} ({})", scrub(&s.message, secrets), s.code))
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
        Self {
            tls,
            statement_timeout: None,
        }
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

    pub(crate) async fn connect(
        &self,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<Conn, DbError> {
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

/// What the server says about password changes, from one `SHOW VARIABLES`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ServerFacts {
    mariadb: bool,
    /// `read_only` or `innodb_read_only` (an Aurora reader) is on.
    read_only: bool,
    rules: PasswordRules,
    /// MariaDB refuses a change by hash: a validation plugin is loaded and
    /// `strict_password_validation` is on, so only a plaintext change can pass.
    hash_refused: bool,
}

const FACTS_SQL: &str = "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
    ('version', 'read_only', 'innodb_read_only', 'strict_password_validation') \
    OR Variable_name LIKE 'simple_password_check%' \
    OR Variable_name LIKE 'cracklib_password_check%' \
    OR Variable_name LIKE 'password_reuse_check%' \
    OR Variable_name LIKE 'validate_password%'";

const IDENTITY_SQL: &str = "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
    ('server_uuid', 'server_uid', 'server_id', 'hostname', 'port')";

/// What identifies a MySQL-family server, best first:
/// - `server_uuid` (MySQL): kept in the data directory, so a Multi-AZ DB instance's standby (a
///   block-level copy) keeps it when it takes over; a binlog replica, and so a Multi-AZ DB
///   cluster's new writer, has its own (passwords change on the writer anyway). Aurora MySQL's
///   instances may share one: that counts them as one server, which refuses more, never less;
/// - `server_uid` (MariaDB 10.5.26, 10.6.19, 10.11.9, 11.4.3 and later in each series): a hash
///   of a MAC address of the host and the port;
/// - otherwise (older MariaDB) the host name, port and `server_id`.
///
/// MariaDB's two are bound to the host: after a failover to another host the server counts as a
/// new one, and a mark made before it is met again only once that secret rotates.
fn identity_from(vars: &[(String, String)]) -> ServerIdentity {
    let get = |name: &str| {
        vars.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    if let Some(uuid) = get("server_uuid") {
        return ServerIdentity {
            key: format!("mysql:{uuid}"),
            detail: format!("server_uuid {uuid}"),
        };
    }
    if let Some(uid) = get("server_uid") {
        return ServerIdentity {
            key: format!("mariadb:{uid}"),
            detail: format!("MariaDB server_uid {uid} (bound to the host)"),
        };
    }
    let (host, port, id) = (
        get("hostname").unwrap_or("?"),
        get("port").unwrap_or("?"),
        get("server_id").unwrap_or("?"),
    );
    ServerIdentity {
        key: format!("mariadb-host:{}:{port}:{id}", host.to_ascii_lowercase()),
        detail: format!("MariaDB host {host}, port {port}, server_id {id} (bound to the host)"),
    }
}

impl ServerFacts {
    fn from_variables(vars: &[(String, String)]) -> Self {
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let on = |name: &str| get(name).is_some_and(|v| v.eq_ignore_ascii_case("ON") || v == "1");
        let num = |name: &str| get(name).and_then(|v| v.parse().ok()).unwrap_or(0usize);
        let mariadb = get("version").is_some_and(|v| v.contains("MariaDB"));
        let simple = get("simple_password_check_minimal_length").is_some();
        let cracklib = vars
            .iter()
            .any(|(k, _)| k.starts_with("cracklib_password_check"));
        // MariaDB 10.7+: refuses a password used before, so it too takes no hash.
        let reuse = vars
            .iter()
            .any(|(k, _)| k.starts_with("password_reuse_check"));
        // MySQL 8's component (`validate_password.length`) or 5.7's plugin (`_length`).
        let mysql_rules = |suffix: &str| {
            num(&format!("validate_password.{suffix}"))
                .max(num(&format!("validate_password_{suffix}")))
        };
        let validate = vars.iter().any(|(k, _)| k.starts_with("validate_password"));
        let mut rules = PasswordRules::default();
        let mut sources = Vec::new();
        if simple {
            let same_case = num("simple_password_check_letters_same_case");
            rules.min_length = num("simple_password_check_minimal_length");
            rules.min_lower = same_case;
            rules.min_upper = same_case;
            rules.min_digits = num("simple_password_check_digits");
            rules.min_other = num("simple_password_check_other_characters");
            sources.push("simple_password_check");
        }
        if cracklib {
            sources.push("cracklib_password_check");
        }
        if reuse {
            sources.push("password_reuse_check");
        }
        if validate {
            let mixed = mysql_rules("mixed_case_count");
            rules.min_length = rules.min_length.max(mysql_rules("length"));
            rules.min_lower = rules.min_lower.max(mixed);
            rules.min_upper = rules.min_upper.max(mixed);
            rules.min_digits = rules.min_digits.max(mysql_rules("number_count"));
            rules.min_other = rules.min_other.max(mysql_rules("special_char_count"));
            sources.push("validate_password");
        }
        rules.source = (!sources.is_empty()).then(|| sources.join(", "));
        Self {
            mariadb,
            read_only: on("read_only") || on("innodb_read_only"),
            hash_refused: mariadb
                && (simple || cracklib || reuse)
                && on("strict_password_validation"),
            rules,
        }
    }
}

struct MySqlSession {
    /// Taken when the session ends, to say goodbye to the server.
    conn: Option<Conn>,
    at: Endpoint,
    login: Credentials,
    /// The connection's TLS is verified (verify-full): a plaintext password may travel on it.
    verified_tls: bool,
    facts: Option<ServerFacts>,
}

/// Warned once per process: a plaintext password travels to the server (see
/// docs/src/reference/mysql-mariadb.md).
static PLAINTEXT_WARNED: std::sync::Once = std::sync::Once::new();

impl MySqlSession {
    fn conn(&mut self) -> Result<&mut Conn, DbError> {
        self.conn
            .as_mut()
            .ok_or_else(|| DbError::Refused("the session has ended".into()))
    }

    fn err(&self, e: mysql_async::Error, secrets: &[&str]) -> DbError {
        let mut all = vec![self.login.password.expose_secret()];
        all.extend_from_slice(secrets);
        match classify(&self.at, &self.login.username, e, &all) {
            // Logged in already: 1044 on a statement is a missing privilege (`SET PASSWORD FOR`
            // without rights on the mysql schema).
            DbError::LoginForbidden { reason, .. } => DbError::NotPermitted(reason),
            other => other,
        }
    }

    async fn facts(&mut self) -> Result<ServerFacts, DbError> {
        if let Some(f) = &self.facts {
            return Ok(f.clone());
        }
        let vars: Result<Vec<(String, String)>, _> = self.conn()?.query(FACTS_SQL).await;
        let facts = ServerFacts::from_variables(&vars.map_err(|e| self.err(e, &[]))?);
        self.facts = Some(facts.clone());
        Ok(facts)
    }

    /// `ReadOnly` on a replica; `PasswordRejected` when only a plaintext change could pass and
    /// the connection is not verified. `Ok(true)`: send the plaintext.
    async fn how_to_send(&mut self) -> Result<bool, DbError> {
        let facts = self.facts().await?;
        if facts.read_only {
            return Err(DbError::ReadOnly {
                at: self.at.to_string(),
                writer: None,
            });
        }
        if !facts.hash_refused {
            return Ok(!facts.mariadb);
        }
        let plugins = facts
            .rules
            .source
            .as_deref()
            .unwrap_or("a validation plugin");
        if !self.verified_tls {
            return Err(DbError::PasswordRejected(format!(
                "{plugins} is loaded with strict_password_validation on, so MariaDB takes only a plaintext password, and this connection's TLS is not verified (ROTATOR_DB_TLS=verify-full with ROTATOR_DB_CA_BUNDLE); refusing to send it. Use verify-full, or turn strict_password_validation off (passwords made here already meet the plugin's rules)"
            )));
        }
        PLAINTEXT_WARNED.call_once(|| {
            warn!(at = %self.at, %plugins, "MariaDB's strict_password_validation refuses password hashes: sending the plaintext password over verified TLS (it may reach the server's logs; see the book's page on MySQL and MariaDB)");
        });
        Ok(true)
    }
}

/// The statement that sets one account's password (`None`: the login's own). MariaDB takes the
/// `mysql_native_password` hash itself, so the plaintext never leaves this process. MySQL gets
/// the plaintext: `ALTER USER ... IDENTIFIED BY` without `WITH` keeps the account's plugin
/// (`caching_sha2_password`, `sha256_password` or `mysql_native_password`), which hashes it with
/// a salt of its own.
fn password_statement(
    plaintext: bool,
    account: Option<&str>,
    pw: &str,
    hash: &str,
) -> Result<String, DbError> {
    Ok(match (plaintext, account) {
        (false, None) => format!("SET PASSWORD = '{hash}'"),
        (false, Some(a)) => format!("SET PASSWORD FOR {a} = '{hash}'"),
        (true, None) => format!(
            "ALTER USER CURRENT_USER() IDENTIFIED BY {}",
            literal(pw, "new password")?
        ),
        (true, Some(a)) => format!(
            "ALTER USER {a} IDENTIFIED BY {}",
            literal(pw, "new password")?
        ),
    })
}

#[async_trait]
impl DbSession for MySqlSession {
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<(), DbError> {
        let plaintext = self.how_to_send().await?;
        let pw = password.expose_secret();
        let hash = native_password_hash(pw);
        let secrets = [pw, hash.as_str()];
        let own = self.login.username == user;
        let accounts = if own {
            // Changing one's own password needs no privilege on either server.
            vec![None]
        } else {
            // The master path: every account (user@host) of that user.
            let hosts = match self.accounts(user).await? {
                Accounts::Listed(hosts) if !hosts.is_empty() => hosts,
                Accounts::Listed(_) => {
                    return Err(DbError::Refused(format!(
                        "there is no account for user {user}"
                    )))
                }
                Accounts::Unlisted { .. } => {
                    return Err(DbError::NotPermitted(format!(
                        "{} may not read mysql.user, so it cannot find every account of {user}",
                        self.login.username
                    )))
                }
            };
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
            let sql = password_statement(plaintext, account.as_deref(), pw, &hash)?;
            let done = self.conn()?.query_drop(sql).await;
            done.map_err(|e| self.err(e, &secrets))?;
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
        Ok(())
    }

    async fn preflight(&mut self) -> Result<PasswordRules, DbError> {
        self.how_to_send().await?;
        Ok(self.facts().await?.rules)
    }

    async fn own_session(&mut self) -> Result<Option<OwnSession>, DbError> {
        let row: Result<Option<(u64, i64)>, _> = self
            .conn()?
            .query_first("SELECT CONNECTION_ID(), @@global.read_only OR @@global.innodb_read_only")
            .await;
        Ok(row
            .map_err(|e| self.err(e, &[]))?
            .map(|(id, read_only)| OwnSession {
                id,
                writable: read_only == 0,
            }))
    }

    /// See `identity_from`.
    async fn identity(&mut self) -> Result<ServerIdentity, DbError> {
        let vars: Result<Vec<(String, String)>, _> = self.conn()?.query(IDENTITY_SQL).await;
        Ok(identity_from(&vars.map_err(|e| self.err(e, &[]))?))
    }

    /// From `mysql.user`, which only a login with rights on the mysql schema may read; else
    /// the account this login matched, which anyone may ask for.
    async fn accounts(&mut self, user: &str) -> Result<Accounts, DbError> {
        let read: Result<Vec<String>, _> = self
            .conn()?
            .exec(
                "SELECT Host FROM mysql.user WHERE User = ? ORDER BY Host",
                (user,),
            )
            .await;
        match read.map_err(|e| self.err(e, &[])) {
            Ok(hosts) => Ok(Accounts::Listed(hosts)),
            Err(DbError::NotPermitted(_)) => {
                let me: Result<Option<String>, _> =
                    self.conn()?.query_first("SELECT CURRENT_USER()").await;
                let logged_in_as = me.map_err(|e| self.err(e, &[]))?.unwrap_or_default();
                Ok(Accounts::Unlisted { logged_in_as })
            }
            Err(e) => Err(e),
        }
    }

    /// From the process list, which shows a user its own threads (and everyone's with PROCESS):
    /// every account of the user (`user@host`) at once. A `Sleep` thread's `TIME` is how long
    /// ago its last statement ended. MySQL and MariaDB keep no application name there.
    async fn recent_sessions(
        &mut self,
        user: &str,
        within: Duration,
        mine: &[u64],
    ) -> Result<Vec<SessionGroup>, DbError> {
        let (at, login) = (&self.at, &self.login);
        let Some(conn) = self.conn.as_mut() else {
            return Err(DbError::Refused("the session has ended".into()));
        };
        // Ids are numbers: written into the statement, they cannot inject anything.
        let others: String = mine.iter().map(|id| format!(", {id}")).collect();
        let rows: Result<Vec<(Option<String>, Option<String>, Option<i64>)>, DbError> = conn
            .exec(
                format!(
                    "SELECT HOST, COMMAND, TIME FROM information_schema.PROCESSLIST \
                     WHERE USER = ? AND ID NOT IN (CONNECTION_ID(){others})"
                ),
                (user,),
            )
            .await
            .map_err(|e| classify(at, &login.username, e, &[login.password.expose_secret()]));
        let rows = rows.map_err(|e| match e {
            DbError::LoginForbidden { reason, .. } => DbError::NotPermitted(reason),
            other => other,
        })?;
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

/// A `SHOW GRANTS` line without MariaDB's credentials clause (`IDENTIFIED BY PASSWORD '*…'`,
/// `IDENTIFIED VIA …`), keeping what follows it (`WITH GRANT OPTION`, resource limits).
pub(crate) fn without_credentials(line: &str) -> String {
    let Some(i) = line.find(" IDENTIFIED ") else {
        return line.to_owned();
    };
    // The clause's quoted hash holds no ` WITH `; MariaDB prints the options after it.
    match line[i..].find(" WITH ") {
        Some(j) => format!("{}{}", &line[..i], &line[i + j..]),
        None => line[..i].to_owned(),
    }
}

/// `SHOW GRANTS` lines in a form two users can be compared in: the grantee becomes `<user>` and
/// credentials (`IDENTIFIED BY PASSWORD '*…'`, `IDENTIFIED VIA …`) are cut off.
pub(crate) fn normalise_grant(line: &str, user: &str) -> String {
    let mut s = without_credentials(line);
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
        let mut conn = self.connect(at, login).await?;
        if let Some(limit) = self.statement_timeout {
            // Whole seconds, at least one: what both take. MySQL 8's account tables are InnoDB,
            // so a row lock on mysql.user waits by the second one.
            let secs = limit.as_secs().max(1);
            let pw = login.password.expose_secret();
            conn.query_drop(format!(
                "SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}"
            ))
            .await
            .map_err(|e| classify(at, &login.username, e, &[pw]))?;
        }
        Ok(Box::new(MySqlSession {
            conn: Some(conn),
            at: at.clone(),
            login: login.clone(),
            verified_tls: self.tls.mode == TlsMode::VerifyFull,
            facts: None,
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
        assert_eq!(
            normalise_grant(
                "GRANT ALL PRIVILEGES ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*24' WITH GRANT OPTION",
                "app"
            ),
            "GRANT ALL PRIVILEGES ON *.* TO <user> WITH GRANT OPTION"
        );
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
    fn the_servers_variables_give_its_password_rules_and_whether_it_takes_hashes() {
        let vars = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let strict = ServerFacts::from_variables(&vars(&[
            ("version", "10.11.19-MariaDB-0+deb12u1-log"),
            ("read_only", "OFF"),
            ("strict_password_validation", "ON"),
            ("simple_password_check_minimal_length", "12"),
            ("simple_password_check_digits", "2"),
            ("simple_password_check_letters_same_case", "3"),
            ("simple_password_check_other_characters", "1"),
        ]));
        assert!(strict.mariadb && strict.hash_refused && !strict.read_only);
        assert_eq!(
            (
                strict.rules.min_length,
                strict.rules.min_digits,
                strict.rules.min_upper
            ),
            (12, 2, 3)
        );
        let reuse = ServerFacts::from_variables(&vars(&[
            ("version", "10.11.19-MariaDB"),
            ("strict_password_validation", "ON"),
            ("password_reuse_check_interval", "0"),
        ]));
        assert!(reuse.hash_refused);
        let plain = ServerFacts::from_variables(&vars(&[
            ("version", "10.11.19-MariaDB"),
            ("strict_password_validation", "ON"),
        ]));
        assert!(!plain.hash_refused, "no plugin: the hash is taken");
        let aurora_reader = ServerFacts::from_variables(&vars(&[
            ("version", "8.0.32"),
            ("read_only", "OFF"),
            ("innodb_read_only", "ON"),
            ("validate_password.length", "14"),
            ("validate_password.mixed_case_count", "2"),
        ]));
        assert!(aurora_reader.read_only && !aurora_reader.mariadb);
        assert_eq!(
            (
                aurora_reader.rules.min_length,
                aurora_reader.rules.min_lower
            ),
            (14, 2)
        );
    }

    /// MySQL 8 is not installed here: these pin the statements its documentation gives for
    /// `ALTER USER` (the plugin stays the account's own) and `SET PASSWORD` with a hash (MariaDB).
    #[test]
    fn password_statements_send_mariadb_the_hash_and_mysql_the_plaintext_for_its_plugin() {
        let hash = native_password_hash("pw-1");
        let account = "'app'@'%'";
        assert_eq!(
            password_statement(false, None, "pw-1", &hash).unwrap(),
            format!("SET PASSWORD = '{hash}'")
        );
        assert_eq!(
            password_statement(false, Some(account), "pw-1", &hash).unwrap(),
            format!("SET PASSWORD FOR 'app'@'%' = '{hash}'")
        );
        assert!(!password_statement(false, Some(account), "pw-1", &hash)
            .unwrap()
            .contains("pw-1"));
        assert_eq!(
            password_statement(true, None, "pw-1", &hash).unwrap(),
            "ALTER USER CURRENT_USER() IDENTIFIED BY 'pw-1'"
        );
        assert_eq!(
            password_statement(true, Some(account), "pw-1", &hash).unwrap(),
            "ALTER USER 'app'@'%' IDENTIFIED BY 'pw-1'"
        );
        let refused = password_statement(true, None, "pw'1", &hash).unwrap_err();
        assert!(!refused.to_string().contains("pw'1"), "{refused}");
    }

    #[test]
    fn a_server_is_identified_by_its_uuid_else_mariadbs_uid_else_its_host_port_and_id() {
        let vars = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let common = [
            ("hostname", "Ip-10-0-0-5"),
            ("port", "3306"),
            ("server_id", "7"),
        ];
        let mysql = identity_from(&vars(
            &[
                &common[..],
                &[("server_uuid", "3e11fa47-71ca-11e1-9e33-c80aa9429562")],
            ]
            .concat(),
        ));
        assert_eq!(mysql.key, "mysql:3e11fa47-71ca-11e1-9e33-c80aa9429562");
        let mariadb = identity_from(&vars(
            &[
                &common[..],
                &[("server_uid", "H4TRsvs4NUdwnv6KiRMwoSv8E0U=")],
            ]
            .concat(),
        ));
        assert_eq!(mariadb.key, "mariadb:H4TRsvs4NUdwnv6KiRMwoSv8E0U=");
        // An older MariaDB: bound to the host, whatever case the name comes in.
        let older = identity_from(&vars(&common));
        assert_eq!(older.key, "mariadb-host:ip-10-0-0-5:3306:7");
        // Names the server does not know come as empty values: not an identity.
        let empty = identity_from(&vars(&[&common[..], &[("server_uuid", " ")]].concat()));
        assert_eq!(empty.key, older.key);
        // Two names of one server ask the same server, so they get the same answer; the
        // identity never holds the name used to reach it.
        assert!(!mysql.key.contains("3306") && !mariadb.key.contains("3306"));
    }

    #[test]
    fn server_messages_lose_the_secrets_they_quote() {
        assert_eq!(
            scrub("near 'IDENTIFIED BY 's3cret'' at line 1", &["s3cret"]),
            "near 'IDENTIFIED BY '[redacted]'' at line 1"
        );
    }
}
