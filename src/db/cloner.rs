//! adopt's `Cloner` port over the engines' adapters: the same `Postgres` and `MySql` instances
//! the rotation's `Databases` uses, built once by the composition root (`app`), with the same
//! wall-clock bound on every login and statement.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::{bounded, mysql::MySql, postgres::Postgres, Adapters};
use super::{mysql_clone, postgres_clone};
use crate::adopt::ports::{ClonePlan, CloneSession, Cloner};
use crate::rotation::ports::DbError;
use crate::secret::{Credentials, Endpoint, Engine};

/// The real databases.
pub struct DbCloner {
    pg: Arc<Postgres>,
    my: Arc<MySql>,
    /// As `Databases`: a login or one statement that takes longer is `Unreachable`.
    timeout: Duration,
}

impl DbCloner {
    pub fn new(adapters: &Adapters) -> Self {
        Self {
            pg: adapters.postgres.clone(),
            my: adapters.mysql.clone(),
            timeout: adapters.timeout,
        }
    }
}

#[async_trait]
impl Cloner for DbCloner {
    async fn open(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn CloneSession>, DbError> {
        let work = async {
            Ok(match engine {
                Engine::Postgres => {
                    Box::new(postgres_clone::PgCloneSession::open(&self.pg, at, login).await?)
                        as Box<dyn CloneSession>
                }
                Engine::Mysql | Engine::Mariadb => {
                    Box::new(mysql_clone::MyCloneSession::open(&self.my, at, login).await?)
                }
            })
        };
        // A login and the session's set-up statements.
        let inner = bounded(&at.to_string(), self.timeout * 3, work).await?;
        Ok(Box::new(BoundedClone {
            inner,
            at: at.to_string(),
            timeout: self.timeout,
        }))
    }
}

/// A clone session whose every call is bounded by the number of statements it may send: a
/// server that accepts and never answers ends adopt as `Unreachable` (retryable), and the
/// server's own bounds, set when the session opens, keep a statement from landing later.
struct BoundedClone {
    inner: Box<dyn CloneSession>,
    at: String,
    timeout: Duration,
}

impl BoundedClone {
    fn limit(&self, statements: usize) -> Duration {
        self.timeout * u32::try_from(statements).unwrap_or(u32::MAX).max(1)
    }
}

#[async_trait]
impl CloneSession for BoundedClone {
    async fn plan(&mut self, user: &str, clone: &str) -> Result<ClonePlan, DbError> {
        // Reading two users: on MySQL three statements for each account of each (one per host),
        // so room for a few hosts; on PostgreSQL a handful of catalogue reads.
        let limit = self.limit(32);
        bounded(&self.at, limit, self.inner.plan(user, clone)).await
    }

    async fn rehearse(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError> {
        // The statements, and around them a transaction, or a throwaway account on each host
        // and their drops (leftovers of an earlier run's included).
        let limit = self.limit(2 * plan.statements.len() + 8);
        bounded(&self.at, limit, self.inner.rehearse(plan, password)).await
    }

    async fn apply(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError> {
        // The statements, and around them a setting read, BEGIN and COMMIT (PostgreSQL).
        let limit = self.limit(plan.statements.len() + 4);
        bounded(&self.at, limit, self.inner.apply(plan, password)).await
    }
}
