//! PostgreSQL over tokio-postgres. Passwords are set with a SCRAM-SHA-256 verifier computed here,
//! so the plaintext never reaches the server, its logs or `pg_stat_statements`.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{debug, warn};

use super::tls::DbTls;
use crate::rotation::ports::{
    Accounts, Database, DbError, DbSession, PasswordRules, ServerIdentity, SessionGroup,
};
use crate::secret::{Credentials, Endpoint, Engine};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Postgres {
    tls: DbTls,
    /// The server cancels a statement of a login session (and a wait for a lock) after this.
    /// A client that gives up on a statement does not stop it: an ALTER ROLE waiting on a lock
    /// would commit whenever the lock came, perhaps after another process took the lease.
    pub(crate) statement_timeout: Option<Duration>,
}

/// `"name"` with embedded quotes doubled: safe for any string.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled. Backslashes are literal under
/// standard_conforming_strings (on since PostgreSQL 9.1); we only ever quote verifiers, which
/// contain neither.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub(crate) fn classify(at: &Endpoint, user: &str, e: tokio_postgres::Error) -> DbError {
    if let Some(code) = e.code() {
        // The detail says which rule refused ("Only roles with the ADMIN option ...").
        let message = e.as_db_error().map_or_else(
            || e.to_string(),
            |d| match d.detail() {
                Some(detail) => format!("{} ({}): {detail}", d.message(), d.code().code()),
                None => format!("{} ({})", d.message(), d.code().code()),
            },
        );
        let user = user.to_owned();
        return match code {
            // A wrong password (or one past its VALID UNTIL: the server does not say which).
            c if *c == SqlState::INVALID_PASSWORD => DbError::LoginRejected(user),
            // pg_hba.conf's reject, NOLOGIN, RDS Proxy without a secret for the role: no
            // password changes that.
            c if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => DbError::LoginForbidden {
                user,
                reason: message,
            },
            // "too many connections for role": the user's own CONNECTION LIMIT. The server's
            // max_connections ("sorry, too many clients already", or slots reserved for
            // superusers) passes; that one is retried. (A server whose lc_messages is not
            // English says it in its own words: then the limit is retried too.)
            c if *c == SqlState::TOO_MANY_CONNECTIONS
                && message.contains("too many connections for role") =>
            {
                DbError::ConnectionLimit {
                    user,
                    reason: message,
                }
            }
            // Also the session's own bounds (`with_statement_timeout`): another session holds a
            // lock for now, or the server is too slow for now; both pass.
            c if *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::QUERY_CANCELED =>
            {
                DbError::Unreachable {
                    at: at.to_string(),
                    reason: e.to_string(),
                }
            }
            c if *c == SqlState::INSUFFICIENT_PRIVILEGE => DbError::NotPermitted(message),
            c if *c == SqlState::READ_ONLY_SQL_TRANSACTION => DbError::ReadOnly {
                at: at.to_string(),
                writer: None,
            },
            _ => DbError::Refused(message),
        };
    }
    let mut chain = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut tls = false;
    while let Some(err) = source {
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&err.to_string());
        tls |= err.is::<rustls::Error>()
            || err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>());
        source = err.source();
    }
    if tls || chain.contains("TLS") {
        DbError::Tls {
            at: at.to_string(),
            reason: chain,
        }
    } else {
        DbError::Unreachable {
            at: at.to_string(),
            reason: chain,
        }
    }
}

impl Postgres {
    pub fn new(tls: DbTls) -> Self {
        Self {
            tls,
            statement_timeout: None,
        }
    }

    pub(crate) async fn connect(
        &self,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<Client, DbError> {
        crate::calls::record("postgres.connect");
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&at.host)
            .port(at.port)
            .dbname(&at.dbname)
            .user(&creds.username)
            .password(creds.password.expose_secret())
            .application_name("rds-rotator")
            .connect_timeout(CONNECT_TIMEOUT);
        let err = |e| classify(at, &creds.username, e);
        let client = match &self.tls.config {
            None => {
                cfg.ssl_mode(SslMode::Disable);
                let (client, conn) = cfg.connect(NoTls).await.map_err(err)?;
                tokio::spawn(conn);
                client
            }
            Some(tls) => {
                cfg.ssl_mode(SslMode::Require);
                let (client, conn) = cfg
                    .connect(MakeRustlsConnect::new((**tls).clone()))
                    .await
                    .map_err(err)?;
                tokio::spawn(conn);
                client
            }
        };
        debug!(host = %at.host, port = at.port, user = %creds.username, "connected to PostgreSQL");
        Ok(client)
    }
}

#[async_trait]
impl Database for Postgres {
    async fn check_login(
        &self,
        _engine: Engine,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError> {
        let client = self.connect(at, creds).await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| classify(at, &creds.username, e))?;
        Ok(())
    }

    async fn login(
        &self,
        _engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        let client = self.connect(at, login).await?;
        // A role setting (`ALTER ROLE u SET role = 'owner'`, for shared ownership) makes the
        // session act as another role: ALTER ROLE checks current_user (a role may change its own
        // password, not the owner's), and pg_stat_activity shows the sessions of the roles whose
        // privileges current_user has. Back to the login, for everything this session does; and
        // out of a read-only default. (`RESET ROLE` would go back to the setting.)
        let mut setup = "SET ROLE NONE; SET default_transaction_read_only = off".to_owned();
        if let Some(limit) = self.statement_timeout {
            let ms = limit.as_millis();
            setup.push_str(&format!(
                "; SET statement_timeout = {ms}; SET lock_timeout = {ms}"
            ));
        }
        client
            .batch_execute(&setup)
            .await
            .map_err(|e| classify(at, &login.username, e))?;
        Ok(Box::new(PgSession {
            client,
            at: at.clone(),
            login_user: login.username.clone(),
        }))
    }

    async fn privileges(
        &self,
        _engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Vec<String>, DbError> {
        let client = self.connect(at, login).await?;
        let rows = client
            .query(PRIVILEGES_SQL, &[&user])
            .await
            .map_err(|e| classify(at, &login.username, e))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }
}

struct PgSession {
    client: Client,
    at: Endpoint,
    login_user: String,
}

/// Warned once per process (see `set_password`).
static MD5_WARNED: std::sync::Once = std::sync::Once::new();

/// What a password change must know about the role: read in the session that changes it.
struct RoleFacts {
    can_login: bool,
    /// A finite VALID UNTIL (when the password stops working), as the server prints it.
    valid_until: Option<String>,
    /// `session_user` is this role: it changes its own password.
    is_self: bool,
    /// `password_encryption` as this session has it: `md5` or `scram-sha-256`.
    encryption: String,
}

impl PgSession {
    /// `ReadOnly` on a hot standby, naming its primary when this login may see it.
    async fn refuse_replica(&self) -> Result<(), DbError> {
        let err = |e| classify(&self.at, &self.login_user, e);
        let row = self.client.query_one(REPLICA_SQL, &[]).await.map_err(err)?;
        if row.get::<_, bool>(0) {
            return Err(DbError::ReadOnly {
                at: self.at.to_string(),
                writer: row.get(1),
            });
        }
        Ok(())
    }

    async fn role(&self, user: &str) -> Result<RoleFacts, DbError> {
        let row = self
            .client
            .query_opt(ROLE_SQL, &[&user])
            .await
            .map_err(|e| classify(&self.at, &self.login_user, e))?
            .ok_or_else(|| DbError::Refused(format!("there is no role {user}")))?;
        Ok(RoleFacts {
            can_login: row.get(0),
            valid_until: row.get(1),
            is_self: row.get(2),
            encryption: row.get(3),
        })
    }
}

/// `pg_is_in_recovery()`, and the primary a standby streams from (NULL unless this login may
/// read pg_stat_wal_receiver's connection details).
const REPLICA_SQL: &str = r#"
SELECT pg_is_in_recovery(),
       (SELECT w.sender_host || ':' || w.sender_port FROM pg_stat_wal_receiver w LIMIT 1)
"#;

const ROLE_SQL: &str = r#"
SELECT r.rolcanlogin,
       CASE WHEN r.rolvaliduntil IS NULL OR r.rolvaliduntil = 'infinity' THEN NULL
            ELSE r.rolvaliduntil::text END,
       r.rolname = session_user,
       current_setting('password_encryption')
  FROM pg_roles r WHERE r.rolname = $1::text::name
"#;

/// The verifier PostgreSQL stores for `password`: SCRAM-SHA-256, or MD5 when the server's
/// `password_encryption` says so. 4096 PBKDF2 rounds: off the async threads, which other
/// rotations share.
pub(crate) async fn verifier(user: &str, password: &SecretString, encryption: &str) -> String {
    let plain = password.clone();
    let (md5, name) = (encryption == "md5", user.to_owned());
    tokio::task::spawn_blocking(move || {
        let pw = plain.expose_secret().as_bytes();
        if md5 {
            postgres_protocol::password::md5(pw, &name)
        } else {
            postgres_protocol::password::scram_sha_256(pw)
        }
    })
    .await
    .expect("the verifier task does not panic")
}

#[async_trait]
impl DbSession for PgSession {
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<(), DbError> {
        let err = |e| classify(&self.at, &self.login_user, e);
        // (The session left any role setting when it logged in: see `login`.)
        let (replica, role) = tokio::join!(self.refuse_replica(), self.role(user));
        replica?;
        let role = role?;
        if !role.can_login {
            return Err(DbError::Refused(format!(
                "role {user} has NOLOGIN: it could not log in with any password; grant it LOGIN first"
            )));
        }
        // Follow the server: clients that only speak MD5 need an MD5 verifier (see
        // docs/src/reference/production-databases.md).
        if role.encryption == "md5" {
            MD5_WARNED.call_once(|| {
                warn!(at = %self.at, "password_encryption is md5: setting MD5 verifiers, which log in by themselves under the md5 method; keep statement logging (log_statement = ddl or all, pgaudit) away from them");
            });
        }
        let verifier = verifier(user, password, &role.encryption).await;
        // ALTER ROLE takes no bind parameters: the name is quoted, the verifier is hex or base64.
        let mut sql = format!(
            "ALTER ROLE {} WITH PASSWORD {}",
            quote_ident(user),
            quote_literal(&verifier)
        );
        // A rotated password ends when the next rotation replaces it, not on a date: past its
        // VALID UNTIL, AWSCURRENT would stop logging in. Only a login with CREATEROLE may lift
        // it; a role changing its own password leaves it (`check` warns).
        if let (Some(until), false) = (&role.valid_until, role.is_self) {
            warn!(%user, valid_until = %until, "clearing the role's VALID UNTIL: a rotated password must not expire on a date");
            sql.push_str(" VALID UNTIL 'infinity'");
        }
        self.client.batch_execute(&sql).await.map_err(err)
    }

    async fn preflight(&mut self) -> Result<PasswordRules, DbError> {
        self.refuse_replica().await?;
        // A verifier is sent, so password checks on the server (passwordcheck) have nothing
        // to check.
        Ok(PasswordRules::default())
    }

    async fn accounts(&mut self, user: &str) -> Result<Accounts, DbError> {
        Ok(Accounts::Listed(vec![user.to_owned()]))
    }

    /// The system identifier, made by initdb: a physical replica (a hot standby, a Multi-AZ
    /// standby) shares its primary's, and every role may read it (`pg_control_system()` is
    /// executable by PUBLIC). Servers restored from one snapshot, or (on RDS) made from one
    /// image, may share it too: then they count as one server, which refuses more, never less.
    async fn identity(&mut self) -> Result<ServerIdentity, DbError> {
        let row = self
            .client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(|e| match classify(&self.at, &self.login_user, e) {
                DbError::NotPermitted(m) => DbError::NotPermitted(format!(
                    "{m}: reading the server's identity needs EXECUTE on pg_control_system() (PUBLIC has it unless revoked)"
                )),
                other => other,
            })?;
        let id: String = row.get(0);
        Ok(ServerIdentity {
            key: format!("pg:{id}"),
            detail: format!("postgresql system identifier {id}"),
        })
    }

    /// This tool's sessions are left out by their application name, on every server: `_mine`
    /// is not needed.
    async fn recent_sessions(
        &mut self,
        user: &str,
        within: Duration,
        _mine: &[u64],
    ) -> Result<Vec<SessionGroup>, DbError> {
        let rows = self
            .client
            .query(RECENT_SESSIONS_SQL, &[&user, &within.as_secs_f64()])
            .await
            .map_err(|e| classify(&self.at, &self.login_user, e))?;
        Ok(rows
            .iter()
            .map(|r| SessionGroup {
                client: r.get(0),
                application: r.get(1),
                sessions: r.get::<_, i64>(2).try_into().unwrap_or(u32::MAX),
            })
            .collect())
    }
}

/// The user's sessions that run a statement, or ran one within $2 seconds. `state` is NULL for
/// sessions the login may not look into (another role's, without pg_read_all_stats): those
/// count, since nothing says they are idle (as do sessions of a server that does not track
/// activity, `state = 'disabled'`). The session user is what logged in with the
/// password, whatever SET ROLE did since. This tool's own logins (`application_name`) and
/// anything but client backends are left out.
const RECENT_SESSIONS_SQL: &str = r#"
SELECT CASE WHEN a.state IS NULL THEN 'not visible to ' || current_user
            WHEN a.state = 'disabled' THEN 'untracked (track_activities is off)'
            WHEN a.client_addr IS NULL THEN 'local socket'
            ELSE host(a.client_addr) END,
       coalesce(nullif(a.application_name, ''), '-'),
       count(*)
  FROM pg_stat_activity a
 WHERE a.usename = $1::text::name
   AND a.pid <> pg_backend_pid()
   -- NULL, like the state, on rows the login may not look into.
   AND (a.backend_type = 'client backend' OR a.state IS NULL)
   AND a.application_name IS DISTINCT FROM 'rds-rotator'
   AND (a.state IS NULL OR a.state <> 'idle'
        OR a.state_change > now() - make_interval(secs => $2::float8))
 GROUP BY 1, 2
 ORDER BY 3 DESC, 1, 2
"#;

/// Everything that makes two roles interchangeable for an application, from catalogs every role
/// may read: memberships, attributes, per-role settings, ownership and grants on databases,
/// schemas, relations and functions of the connected database, VALID UNTIL, the connection
/// limit, row-level security policies, and the default privileges the role receives.
const PRIVILEGES_SQL: &str = r#"
WITH u AS (SELECT oid FROM pg_roles WHERE rolname = $1)
SELECT 'member of ' || quote_ident(r.rolname)
  FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid, u WHERE m.member = u.oid
UNION
SELECT 'attribute ' || x.a
  FROM pg_roles r, u, LATERAL (VALUES ('superuser', r.rolsuper), ('createdb', r.rolcreatedb),
       ('createrole', r.rolcreaterole), ('replication', r.rolreplication),
       ('bypassrls', r.rolbypassrls), ('noinherit', NOT r.rolinherit),
       ('nologin', NOT r.rolcanlogin)) AS x(a, v)
 WHERE r.oid = u.oid AND x.v
UNION
SELECT 'setting ' || c
  FROM pg_db_role_setting s, u, LATERAL unnest(s.setconfig) AS c WHERE s.setrole = u.oid
UNION
SELECT 'database ' || quote_ident(d.datname) || ': ' || a.privilege_type
  FROM pg_database d, LATERAL aclexplode(d.datacl) a, u WHERE a.grantee = u.oid
UNION
SELECT 'schema ' || quote_ident(n.nspname) || ': ' || a.privilege_type
  FROM pg_namespace n, LATERAL aclexplode(n.nspacl) a, u WHERE a.grantee = u.oid
UNION
SELECT 'owner of schema ' || quote_ident(n.nspname) FROM pg_namespace n, u WHERE n.nspowner = u.oid
UNION
SELECT 'relation ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) || ': ' || a.privilege_type
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, LATERAL aclexplode(c.relacl) a, u
 WHERE a.grantee = u.oid
UNION
SELECT 'owner of relation ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, u
 WHERE c.relowner = u.oid AND c.relkind IN ('r', 'v', 'm', 'S', 'p', 'f')
UNION
SELECT 'function ' || p.oid::regprocedure::text || ': ' || a.privilege_type
  FROM pg_proc p, LATERAL aclexplode(p.proacl) a, u WHERE a.grantee = u.oid
UNION
SELECT 'valid until ' || r.rolvaliduntil::text
       || CASE WHEN r.rolvaliduntil < now() THEN ' (expired)' ELSE '' END
  FROM pg_roles r, u
 WHERE r.oid = u.oid AND r.rolvaliduntil IS NOT NULL AND r.rolvaliduntil <> 'infinity'
UNION
SELECT 'connection limit ' || r.rolconnlimit FROM pg_roles r, u
 WHERE r.oid = u.oid AND r.rolconnlimit <> -1
UNION
SELECT 'policy ' || quote_ident(pol.polname) || ' on ' || quote_ident(n.nspname) || '.'
       || quote_ident(c.relname)
  FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace, u
 WHERE u.oid = ANY (pol.polroles)
UNION
SELECT 'default privilege on new ' || CASE d.defaclobjtype WHEN 'r' THEN 'tables'
         WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions' WHEN 'T' THEN 'types'
         WHEN 'n' THEN 'schemas' ELSE d.defaclobjtype::text END
       || ' of ' || quote_ident(o.rolname)
       || coalesce(' in schema ' || quote_ident(n.nspname), '') || ': ' || a.privilege_type
  FROM pg_default_acl d JOIN pg_roles o ON o.oid = d.defaclrole
       LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
       LATERAL aclexplode(d.defaclacl) a, u
 WHERE a.grantee = u.oid
ORDER BY 1
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_safely() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(
            quote_ident("a\"; DROP ROLE x; --"),
            "\"a\"\"; DROP ROLE x; --\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn verifiers_need_no_escaping_and_do_not_contain_the_password() {
        let v = postgres_protocol::password::scram_sha_256(b"pa'ss\\word");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "$:+/=-".contains(c)),
            "{v}"
        );
        assert!(!v.contains("pa'ss"));
    }
}
