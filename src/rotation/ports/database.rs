//! The database ports: a login, what it may do, and what the server says about itself.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::secret::{Credentials, Endpoint, Engine};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The password is wrong, or the server no longer takes it. (PostgreSQL says the same for a
    /// password past its VALID UNTIL, so as not to tell a client which.)
    #[error("login rejected for user {0}")]
    LoginRejected(String),
    /// The server turns this user away whatever the password: a pg_hba.conf rule, NOLOGIN, a
    /// locked account, or RDS Proxy without a secret for it.
    #[error("user {user} may not log in: {reason}")]
    LoginForbidden { user: String, reason: String },
    /// The user's own connection limit is reached (PostgreSQL CONNECTION LIMIT, MySQL
    /// max_user_connections). Not a full server: that is `Unreachable`, and passes.
    #[error("user {user} is at its connection limit: {reason}")]
    ConnectionLimit { user: String, reason: String },
    /// Logged in, but this login may not do it.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The server is a read replica (or a reader of a cluster): passwords change on the writer.
    /// `writer`: where the replica streams from, when it says (on RDS an internal address).
    #[error("{at} is a read replica{}: passwords change only on the writer; point the secret's direct_host (or host) at the writer's endpoint (the cluster endpoint, or the primary instance's)", writer.as_deref().map(|w| format!(" (it streams from {w})")).unwrap_or_default())]
    ReadOnly { at: String, writer: Option<String> },
    /// The server's password validation refuses the change (MariaDB's validation plugins).
    #[error("the server's password validation refuses the change: {0}")]
    PasswordRejected(String),
    #[error("database unreachable at {at}: {reason}")]
    Unreachable { at: String, reason: String },
    #[error("TLS failure at {at}: {reason}")]
    Tls { at: String, reason: String },
    #[error("the database refused the statement: {0}")]
    Refused(String),
    #[error("engine {0} is not supported yet")]
    Unsupported(Engine),
}

impl DbError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// This login cannot change the password, but another source of credentials may (the master
    /// secret): set_password tries the next one.
    pub fn try_next_source(&self) -> bool {
        matches!(
            self,
            Self::LoginRejected(_)
                | Self::LoginForbidden { .. }
                | Self::ConnectionLimit { .. }
                | Self::NotPermitted(_)
        )
    }
}

/// What the server asks of a new password, learnt before the password is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordRules {
    pub min_length: usize,
    pub min_lower: usize,
    pub min_upper: usize,
    pub min_digits: usize,
    pub min_other: usize,
    /// Where the rules come from, for messages (`simple_password_check`, `validate_password`).
    pub source: Option<String>,
}

#[async_trait]
pub trait Database: Send + Sync {
    /// Logs in and runs a trivial query.
    async fn check_login(
        &self,
        engine: Engine,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError>;
    /// Logs in as `login`, to change passwords with the session it returns. Logging in is the
    /// slow part (a new server process, a SCRAM exchange), and it changes nothing, so a rotation
    /// does it while it writes AWSPENDING.
    async fn login(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError>;
    /// Logs in as `login` and sets `user`'s password.
    async fn set_password(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
        password: &SecretString,
    ) -> Result<(), DbError> {
        self.login(engine, at, login)
            .await?
            .set_password(user, password)
            .await
    }
    /// `user`'s role memberships, attributes and grants, one sorted line each, read as `login`:
    /// two users of one rotation should have the same.
    async fn privileges(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Vec<String>, DbError>;
    /// Logs in as `login` and lists `user`'s accounts (`DbSession::accounts`).
    async fn accounts(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Accounts, DbError> {
        self.login(engine, at, login).await?.accounts(user).await
    }
    /// Logs in as `login` and looks for `user`'s recent sessions (`DbSession::recent_sessions`).
    async fn recent_sessions(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
        within: Duration,
    ) -> Result<Vec<SessionGroup>, DbError> {
        self.login(engine, at, login)
            .await?
            .recent_sessions(user, within, &[])
            .await
    }
}

/// A database login that can change passwords. Dropping it closes the connection.
#[async_trait]
pub trait DbSession: Send {
    /// Sets `user`'s password. The plaintext never reaches the server where the engine allows
    /// (PostgreSQL: a SCRAM verifier is sent).
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<(), DbError>;
    /// The sessions of `user` that ran a statement within `within` (or run one now), grouped by
    /// client address and application; this session and this tool's own are left out (and
    /// `mine`, the ids of this tool's other sessions on the server, where the engine knows no
    /// application name: MySQL). Idle sessions do not count: a pool's connections (RDS
    /// Proxy's) stay open long after the last application that used them moved on.
    async fn recent_sessions(
        &mut self,
        user: &str,
        within: Duration,
        mine: &[u64],
    ) -> Result<Vec<SessionGroup>, DbError>;
    /// This session's id on its server, where `recent_sessions` needs it to leave this tool's
    /// sessions out (MySQL's CONNECTION_ID()), and whether the server takes writes.
    async fn own_session(&mut self) -> Result<Option<OwnSession>, DbError> {
        Ok(None)
    }
    /// Before a password is made: `ReadOnly` on a replica, `PasswordRejected` when the server
    /// will refuse every change this adapter may send, else the rules a new password must meet.
    async fn preflight(&mut self) -> Result<PasswordRules, DbError>;
    /// The accounts of `user` (MySQL: one per host, each with its own password; PostgreSQL: the
    /// role), or the one this login is, when it may not list them.
    async fn accounts(&mut self, user: &str) -> Result<Accounts, DbError>;
    /// What the server says it is (see `ServerIdentity`).
    async fn identity(&mut self) -> Result<ServerIdentity, DbError>;
}

/// A session as its server sees it (MySQL, MariaDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnSession {
    /// CONNECTION_ID(): what `recent_sessions` leaves out as this tool's.
    pub id: u64,
    /// Neither `read_only` nor `innodb_read_only` (an Aurora MySQL reader has the latter).
    pub writable: bool,
}

/// A user's accounts, as one login sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accounts {
    /// Every account: MySQL's hosts (one password each), PostgreSQL's one role.
    Listed(Vec<String>),
    /// This login may not list them (MySQL: no read of `mysql.user`). It is logged in as
    /// `logged_in_as`, the account the server matched (`CURRENT_USER()`, `user@host`).
    Unlisted { logged_in_as: String },
}

/// What a database server says it is, the same under every name that reaches it (cluster,
/// instance and proxy endpoints, CNAMEs): claims and marks on its users are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// Part of a claim key: `pg:<system identifier>`, `mysql:<server_uuid>`, ...
    pub key: String,
    /// For people (`check`): what it is and where it comes from.
    pub detail: String,
}

/// Sessions of one database user from one place.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionGroup {
    /// Client address as the database sees it (behind RDS Proxy: the proxy's).
    pub client: String,
    /// The application name the client gave, or `-`.
    pub application: String,
    pub sessions: u32,
}

/// The idle user is still in use: some application holds credentials from two rotations ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    pub user: String,
    pub window: Duration,
    pub groups: Vec<SessionGroup>,
}

impl InUse {
    pub fn sessions(&self) -> u32 {
        self.groups.iter().map(|g| g.sessions).sum()
    }
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                format!(
                    "{} session(s) from {} ({})",
                    g.sessions, g.client, g.application
                )
            })
            .collect();
        write!(
            f,
            "user {} has {} session(s) that ran a statement within {}: {}",
            self.user,
            self.sessions(),
            humantime::format_duration(self.window),
            from.join(", ")
        )
    }
}
