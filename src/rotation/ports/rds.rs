//! The RDS API, read only: a database's readers and Blue/Green deployments.

use async_trait::async_trait;

use crate::secret::Endpoint;

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
