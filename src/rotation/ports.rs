//! The narrow interfaces the protocol needs, in its own words. Adapters live in `crate::aws` and
//! `crate::db`; hand-written fakes in `super::fakes` serve the unit tests.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::record::{BeginIf, StepRecord};
use crate::secret::{Credentials, Endpoint, Engine};

/// Secrets Manager staging labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Current,
    Pending,
    Previous,
    /// This tool's own label on a proxy secret's new version, written before AWSCURRENT moves
    /// to it by compare-and-swap. Not AWSPENDING: on a proxy secret that label may belong to
    /// another tool's rotation, and PutSecretValue would take it away.
    Staged,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Current => "AWSCURRENT",
            Stage::Pending => "AWSPENDING",
            Stage::Previous => "AWSPREVIOUS",
            Stage::Staged => "RDSROTATOR_STAGED",
        }
    }
}

/// Every read names its version: a label or an id. Never "whatever is latest".
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    Stage(Stage),
    Version(&'a str),
}

#[derive(Debug, Clone)]
pub struct SecretVersion {
    /// The secret's ARN, whatever name or ARN the read used.
    pub arn: String,
    pub version_id: String,
    pub stages: Vec<String>,
    pub value: SecretString,
}

impl SecretVersion {
    pub fn has(&self, stage: Stage) -> bool {
        self.stages.iter().any(|s| s == stage.as_str())
    }
}

/// A secret's identity, where its labels are, and whether Secrets Manager rotates it itself.
#[derive(Debug, Clone)]
pub struct SecretMeta {
    pub arn: String,
    /// (version id, labels) of every labelled version.
    pub versions: Vec<(String, Vec<String>)>,
    /// Secrets Manager's own rotation is attached (`RotationEnabled`): its function may change a
    /// password behind this tool's back.
    pub rotation_enabled: bool,
    /// The function of that rotation, if it names one.
    pub rotation_lambda: Option<String>,
    /// What a new secret made beside this one copies (adopt): its name, KMS key (`None`: the
    /// account's default key) and tags.
    pub name: String,
    pub kms_key_id: Option<String>,
    pub tags: Vec<(String, String)>,
    /// Scheduled for deletion (DescribeSecret's DeletedDate): reads of its values are refused
    /// (InvalidRequestException) until it is restored or purged.
    pub deleted: bool,
}

impl SecretMeta {
    pub fn version_with(&self, stage: Stage) -> Option<&str> {
        self.versions
            .iter()
            .find(|(_, labels)| labels.iter().any(|l| l == stage.as_str()))
            .map(|(id, _)| id.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    #[error("secret {0} does not exist")]
    NotFound(String),
    #[error("secret {0} holds binary data, not a JSON string")]
    Binary(String),
    /// The request was refused as invalid: for a stage move this is the compare-and-swap failing.
    #[error("Secrets Manager refused the request: {0}")]
    Refused(String),
    /// The secret's state forbids the request (InvalidRequestException: scheduled for deletion,
    /// say). No retry changes that.
    #[error("Secrets Manager refused the request in the secret's state: {0}")]
    InvalidRequest(String),
    #[error("access denied by Secrets Manager: {0}")]
    Denied(String),
    /// PutSecretValue: a version with this ClientRequestToken exists with another value (AWS's
    /// ResourceExistsException; the same value is an idempotent success).
    #[error("a version with token {0} already exists with another value")]
    VersionExists(String),
    #[error("Secrets Manager is unavailable: {0}")]
    Unavailable(String),
}

impl SecretStoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Resolves a name or ARN to the secret's identity and label map.
    async fn describe(&self, secret_id: &str) -> Result<SecretMeta, SecretStoreError>;
    /// `Ok(None)` when that version or label does not exist (or the secret does not: `describe`
    /// tells the two apart).
    async fn get(
        &self,
        secret_id: &str,
        at: At<'_>,
    ) -> Result<Option<SecretVersion>, SecretStoreError>;
    /// PutSecretValue with `token` as ClientRequestToken: a retry with the same value is a no-op.
    async fn put(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        stage: Stage,
    ) -> Result<(), SecretStoreError>;
    /// Moves `stage` to `to`, only if it is still on `from` (RemoveFromVersionId: a CAS).
    async fn move_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        to: &str,
        from: &str,
    ) -> Result<(), SecretStoreError>;
    /// Removes `stage` from version `from`.
    async fn remove_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        from: &str,
    ) -> Result<(), SecretStoreError>;
}

/// The right to work on one secret. Every write under it is conditional on `fence`.
///
/// Time is never compared across machines: a taker waits until it has seen the same lease
/// (`LeaseSeen`) unchanged for a whole lease period on its own monotonic clock, and a holder
/// counts its lease from when it *sent* the write that took or renewed it, on its own monotonic
/// clock (`lease::Flags`). What remains assumed is a bound on how fast two clocks drift apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: String,
    /// Increases with every acquisition: a stale holder's writes no longer match.
    pub fence: u64,
    /// When the write that took it was sent, on this process's monotonic clock.
    pub sent_at: tokio::time::Instant,
}

/// A lease as another process holds it: what a taker watches for change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSeen {
    pub owner: String,
    pub fence: u64,
    /// The holder's own idea of its expiry (its wall clock, ms since the epoch): every renewal
    /// changes it. Never compared with the taker's clock for safety, only shown, and used as a
    /// hint of whether waiting is worth it.
    pub expires_hint_ms: u64,
    /// Renewals so far.
    pub beat: u64,
    /// How long a taker must see it unchanged, as the holder wrote it (`lease::takeover_period`:
    /// another process may run with other settings).
    pub ttl: Duration,
}

#[derive(Debug)]
pub enum Acquired {
    Granted {
        lease: Lease,
        record: Option<Box<StepRecord>>,
    },
    /// From `begin` only: the lease, and the new rotation's record as stored.
    Begun {
        lease: Lease,
        record: Box<StepRecord>,
    },
    /// From `begin` only: the lease is free, but the record (as it stands) did not allow a new
    /// rotation, and nothing was written.
    NotBegun { record: Option<Box<StepRecord>> },
    Held {
        seen: LeaseSeen,
        /// The record as the item holds it (perhaps the last rotation's, if the holder has not
        /// written yet): it may already answer the request.
        record: Option<Box<StepRecord>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordStoreError {
    #[error("the lease was taken over by another worker (fence {0} is stale)")]
    Fenced(u64),
    #[error("the state table is missing or misconfigured: {0}")]
    Misconfigured(String),
    #[error("the state table is unavailable: {0}")]
    Unavailable(String),
    #[error("the stored step record is unreadable: {0}")]
    Corrupt(String),
}

impl RecordStoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Fenced(_))
    }
}

/// Who is changing, or last changed, one database user's password: a secret and its rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaim {
    pub secret: String,
    pub rotation_id: String,
}

/// What [`RecordStore::claim_user`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The claim is ours now; the secrets that marked the user as their AWSCURRENT
    /// (`mark_in_use`) come with it.
    Ours { in_use_by: Vec<String> },
    /// Another secret's rotation holds it (perhaps one that ended: the caller decides).
    HeldBy(UserClaim),
}

/// Leases and step records; one item per secret holds both.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Takes the lease when it is free (never taken, or released), or when it is still exactly
    /// `take_over`: a lease the caller has watched unchanged for a whole period. `ttl` is this
    /// holder's period, which takers read (`LeaseSeen::ttl`).
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        take_over: Option<&LeaseSeen>,
    ) -> Result<Acquired, RecordStoreError>;
    /// Takes the lease and stores `record`, a new rotation's, in one write: when the lease is
    /// free and `cond` allows it. Otherwise it writes no record: `Held`, `NotBegun`, or (this
    /// default, which takes the lease first) `Granted`. The stored record keeps the item's
    /// `last_success_at`.
    async fn begin(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        record: &StepRecord,
        cond: &BeginIf,
    ) -> Result<Acquired, RecordStoreError> {
        match self.acquire(key, owner, ttl, None).await? {
            Acquired::Granted {
                lease,
                record: existing,
            } if cond.allows(existing.as_deref()) => {
                let mut begun = record.clone();
                begun.last_success_at = existing.and_then(|r| r.last_success_at);
                if let Err(e) = self.save(&lease, &begun).await {
                    let _ = self.release(&lease).await;
                    return Err(e);
                }
                Ok(Acquired::Begun {
                    lease,
                    record: Box::new(begun),
                })
            }
            other => Ok(other),
        }
    }
    /// Renews the lease (a new beat, which takers see); `Fenced` when someone else holds it now.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), RecordStoreError>;
    /// Writes the record, only if `lease.fence` is still the item's fence.
    async fn save(&self, lease: &Lease, record: &StepRecord) -> Result<(), RecordStoreError>;
    async fn release(&self, lease: &Lease) -> Result<(), RecordStoreError>;
    /// The last save and the release together: one write where the store can do that.
    async fn save_and_release(
        &self,
        lease: &Lease,
        record: &StepRecord,
    ) -> Result<(), RecordStoreError> {
        self.save(lease, record).await?;
        self.release(lease).await
    }
    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError>;
    /// Claims database user `user_key` for `claim`, in one conditional write: when nobody has
    /// claimed it, the claim is of `claim.secret` already (that secret's rotations take turns
    /// under its own lease), or it is still `replacing`.
    async fn claim_user(
        &self,
        user_key: &str,
        claim: &UserClaim,
        replacing: Option<&UserClaim>,
    ) -> Result<Claimed, RecordStoreError>;
    /// Notes that `secret` has database user `user_key` in AWSCURRENT (an unconditional add to
    /// a set: a claim of that user by another secret then sees it).
    async fn mark_in_use(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError>;
    /// Takes `secret` off the marks of database user `user_key` (it is deleted: it uses nobody).
    async fn unmark(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        let _ = (user_key, secret);
        Err(RecordStoreError::Misconfigured(
            "this store cannot clear marks".into(),
        ))
    }
    /// Who claimed database user `user_key`, and which secrets marked it (`check`).
    async fn user_marks(
        &self,
        user_key: &str,
    ) -> Result<(Option<UserClaim>, Vec<String>), RecordStoreError> {
        let _ = user_key;
        Ok((None, Vec::new()))
    }
    /// Removes every claim and mark of `secret` (`rds-rotator forget`); returns the user keys.
    async fn forget(&self, secret: &str) -> Result<Vec<String>, RecordStoreError> {
        let _ = secret;
        Err(RecordStoreError::Misconfigured(
            "this store cannot forget a secret".into(),
        ))
    }
}

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

/// What one `rotate` call came to. Holds no secret material: it goes to logs, metrics and events.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationReport {
    /// The secret's ARN, or the id as given when it could not be resolved.
    pub secret: String,
    pub outcome: ReportOutcome,
    pub rotation_id: Option<String>,
    pub from_user: Option<String>,
    pub to_user: Option<String>,
    /// This run continued a rotation an earlier process had started.
    pub resumed: bool,
    pub duration: Duration,
    /// Time spent in each step this run, in order.
    pub steps: Vec<(super::record::Step, Duration)>,
    /// The step the run was on when it ended (`None`: it ended before the first step).
    pub last_step: Option<super::record::Step>,
    /// Failures this run retried itself (whole-rotation retries plus login probes of the test step).
    pub retries: u32,
    /// External calls this run made: `Service.Operation` for AWS, `<engine>.connect` for databases.
    pub calls: std::collections::BTreeMap<String, u64>,
    /// What the in-use guard found, when it found sessions of the idle user.
    pub in_use: Option<InUse>,
    /// The run stopped because of them (the guard refused), not for another reason.
    pub waits_for_sessions: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    Succeeded,
    Skipped {
        why: String,
    },
    /// `retryable`: the rotation stays in progress and a later run resumes it; otherwise it needs
    /// a person.
    Failed {
        reason: String,
        retryable: bool,
    },
    /// A call of Secrets Manager's ran its steps; the rotation goes on with `next`.
    Advanced {
        next: super::record::Step,
    },
    /// An operator ended the rotation in progress (`rds-rotator abort`).
    Aborted {
        reason: String,
    },
}

/// How a database is named to RDS: by the secret (`dbClusterIdentifier`, `dbInstanceIdentifier`,
/// as AWS's own RDS secrets carry them; with the host, whose name may say the region), else by
/// its endpoint's host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsDb {
    Cluster(String, String),
    Instance(String, String),
    Host(String),
}

impl std::fmt::Display for RdsDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RdsDb::Cluster(id, _) => write!(f, "cluster {id}"),
            RdsDb::Instance(id, _) => write!(f, "instance {id}"),
            RdsDb::Host(h) => write!(f, "{h}"),
        }
    }
}

/// How a Blue/Green deployment keeps green in sync, which decides whether a password changed
/// on blue reaches green.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// WAL (RDS for PostgreSQL within one major version): role changes reach green.
    Physical,
    /// Logical (Aurora PostgreSQL; RDS for PostgreSQL across major versions): DDL and DCL, so
    /// ALTER ROLE, do not reach green.
    Logical,
    /// MySQL's and MariaDB's binlog: ALTER USER reaches green as a statement.
    Binlog,
}

/// A Blue/Green deployment that names this database as its source (blue) or target (green).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueGreen {
    pub id: String,
    pub name: String,
    /// PROVISIONING, AVAILABLE, SWITCHOVER_IN_PROGRESS, ...
    pub status: String,
    pub replication: Replication,
    /// The database is the deployment's green (its target), not its blue.
    pub is_green: bool,
}

/// What RDS says about a database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RdsTopology {
    /// The writer's instance and, on Aurora, its cluster: what Blue/Green deployments name.
    pub arns: Vec<String>,
    /// Every other instance that serves logins: an Aurora cluster's readers, an instance's read
    /// replicas (and theirs), by the endpoint RDS gives each.
    pub readers: Vec<Endpoint>,
    /// Replicas RDS names but cannot describe from the database's region (other regions'
    /// instances, read-replica clusters): for a warning.
    pub not_covered: Vec<String>,
    /// The Blue/Green deployments that name it, whatever their status.
    pub deployments: Vec<BlueGreen>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RdsError {
    #[error("RDS did not answer: {0}")]
    Unavailable(String),
    #[error("RDS refused rds:{action}: {reason}")]
    Denied {
        action: &'static str,
        reason: String,
    },
    #[error("RDS refused the request: {0}")]
    Refused(String),
    /// An RDS endpoint's name that RDS does not know (another account, a deleted database).
    #[error("{0}")]
    NotFound(String),
}

/// The RDS API, read only. Its answers about a database change rarely (a reader added, a
/// deployment begun), so an adapter may keep them for a few minutes.
#[async_trait]
pub trait RdsDirectory: Send + Sync {
    /// `None` when `db` is a host name that is not an RDS instance's or cluster's endpoint (an
    /// address, a CNAME, a proxy endpoint); `RdsError::NotFound` when RDS knows no such
    /// database in this account.
    async fn topology(&self, db: &RdsDb) -> Result<Option<RdsTopology>, RdsError>;
}

/// No RDS API (`--rds-discovery off`): nothing is discovered.
pub struct NoRds;

#[async_trait]
impl RdsDirectory for NoRds {
    async fn topology(&self, _db: &RdsDb) -> Result<Option<RdsTopology>, RdsError> {
        Ok(None)
    }
}

/// Where reports go: metrics on stdout, events on a bus. A reporter never fails a rotation.
#[async_trait]
pub trait Reporter: Send + Sync {
    async fn report(&self, report: &RotationReport);
}

/// Reports to nobody.
pub struct NoReports;

#[async_trait]
impl Reporter for NoReports {
    async fn report(&self, _report: &RotationReport) {}
}

/// Reports to each of several reporters, in order.
pub struct Reporters(pub Vec<std::sync::Arc<dyn Reporter>>);

#[async_trait]
impl Reporter for Reporters {
    async fn report(&self, report: &RotationReport) {
        for r in &self.0 {
            r.report(report).await;
        }
    }
}
