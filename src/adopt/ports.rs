//! What adoption needs beyond the rotation's ports: new secrets,
//! RDS Proxy's list of secrets, and a database session that can clone a user.

use async_trait::async_trait;
use secrecy::SecretString;

use crate::rotation::ports::{DbError, SecretStoreError};
use crate::secret::{Credentials, Endpoint, Engine};

/// A secret to create.
#[derive(Debug)]
pub struct NewSecret<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub value: &'a SecretString,
    pub kms_key_id: Option<&'a str>,
    pub tags: &'a [(String, String)],
}

#[async_trait]
pub trait SecretCatalog: Send + Sync {
    /// CreateSecret; returns the ARN. `VersionExists` when a secret of that name exists.
    async fn create(&self, secret: &NewSecret<'_>) -> Result<String, SecretStoreError>;
}

/// One entry of an RDS Proxy's `Auth` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    pub secret_arn: String,
    pub iam_auth: Option<String>,
    pub client_password_auth_type: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("RDS Proxy {0} does not exist in this region")]
    NotFound(String),
    #[error("access denied by RDS: {0}")]
    Denied(String),
    #[error("RDS is unavailable: {0}")]
    Unavailable(String),
    #[error("RDS refused the request: {0}")]
    Refused(String),
}

#[async_trait]
pub trait ProxyDirectory: Send + Sync {
    /// The proxy's `Auth` list (DescribeDBProxies).
    async fn auth(&self, proxy: &str) -> Result<Vec<ProxyAuth>, ProxyError>;
}

/// Whether a user that should be a clone is there, and how it differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneState {
    Absent,
    /// It has exactly the rights the clone must have.
    Same,
    /// It has some of them and nothing else: a crashed adoption's (MySQL's statements are not
    /// transactional), to be completed only when that adoption's secret says it is ours.
    Partial {
        missing: Vec<String>,
    },
    /// It has rights or settings the original user does not: someone else's user.
    Different {
        differences: Vec<String>,
    },
}

/// How to make `clone` a twin of `user`, as one database says.
#[derive(Debug, Clone)]
pub struct ClonePlan {
    pub user: String,
    pub clone: String,
    pub state: CloneState,
    /// The statements that create (or complete) the clone, in order; the password appears as
    /// [`PASSWORD_SLOT`], replaced by a verifier (or hash) when they run.
    pub statements: Vec<String>,
    /// Worth saying before anything changes: settings not copied, and why.
    pub notes: Vec<String>,
}

/// Where a clone statement's password goes; printed as is by `--dry-run`.
pub const PASSWORD_SLOT: &str = "<verifier of the new password>";

/// A login with the right to create users (the master secret's).
#[async_trait]
pub trait CloneSession: Send {
    /// Reads `user`, and `clone` if it exists, and plans the clone. `Refused` when `user` does
    /// not exist. (The rotation's preflight, run first, refuses a replica.)
    async fn plan(&mut self, user: &str, clone: &str) -> Result<ClonePlan, DbError>;
    /// Shows that `apply` would be allowed, leaving nothing behind (PostgreSQL runs the
    /// statements in a transaction it rolls back; MySQL for a throwaway account, with
    /// `password`, one the server's rules accept). `NotPermitted` says which right is missing.
    async fn rehearse(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError>;
    /// Runs the plan's statements with `password`.
    async fn apply(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError>;
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
