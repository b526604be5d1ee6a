//! Database adapters, one module per engine, behind the `Database` port; adopt's `Cloner` over
//! the same adapters (`cloner`).

pub mod cloner;
pub mod mysql;
pub mod mysql_clone;
pub mod postgres;
pub mod postgres_clone;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::rotation::ports::{
    Accounts, Database, DbError, DbSession, OwnSession, PasswordRules, ServerIdentity, SessionGroup,
};
use crate::secret::{Credentials, Endpoint, Engine};
use async_trait::async_trait;
use secrecy::SecretString;

/// Picks the adapter for the secret's engine, and bounds every call in wall time: a server (or
/// a proxy, or a half-open connection) that accepts and never answers ends as `Unreachable`,
/// never as a rotation that waits forever. The drivers' own timeouts do not cover it:
/// tokio-postgres bounds only the TCP connect, mysql_async nothing.
pub struct Databases {
    postgres: Arc<postgres::Postgres>,
    mysql: Arc<mysql::MySql>,
    /// The bound on each call: a login (connect, TLS, authentication) or one statement.
    timeout: Duration,
}

/// The engines' adapters, built once by the composition root (`app`) and shared: the rotation's
/// `Databases` and adopt's `cloner::DbCloner` use the same instances.
#[derive(Clone)]
pub struct Adapters {
    pub postgres: Arc<postgres::Postgres>,
    pub mysql: Arc<mysql::MySql>,
    /// The bound on each call: a login (connect, TLS, authentication) or one statement.
    pub timeout: Duration,
}

impl Adapters {
    pub fn new(tls: tls::DbTls, timeout: Duration) -> Self {
        // The server's own bound on a statement, beside the client's (see the adapters).
        let mut postgres = postgres::Postgres::new(tls.clone());
        postgres.statement_timeout = Some(timeout);
        let mut mysql = mysql::MySql::new(tls);
        mysql.statement_timeout = Some(timeout);
        Self {
            postgres: Arc::new(postgres),
            mysql: Arc::new(mysql),
            timeout,
        }
    }
}

impl Databases {
    pub fn new(tls: tls::DbTls, timeout: Duration) -> Self {
        Self::over(&Adapters::new(tls, timeout))
    }

    /// Over adapters the caller shares with others (adopt's cloner).
    pub fn over(adapters: &Adapters) -> Self {
        Self {
            postgres: adapters.postgres.clone(),
            mysql: adapters.mysql.clone(),
            timeout: adapters.timeout,
        }
    }

    fn engine(&self, engine: Engine) -> Result<&dyn Database, DbError> {
        match engine {
            Engine::Postgres => Ok(self.postgres.as_ref()),
            Engine::Mysql | Engine::Mariadb => Ok(self.mysql.as_ref()),
        }
    }
}

/// `work`, or `Unreachable` once `limit` has passed.
async fn bounded<T>(
    at: &str,
    limit: Duration,
    work: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(DbError::Unreachable {
            at: at.to_owned(),
            reason: format!("no answer within {}", humantime::format_duration(limit)),
        }),
    }
}

#[async_trait]
impl Database for Databases {
    async fn check_login(
        &self,
        engine: Engine,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError> {
        let work = self.engine(engine)?.check_login(engine, at, creds);
        // A login and one statement.
        bounded(&at.to_string(), self.timeout * 2, work).await
    }

    async fn login(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        let work = self.engine(engine)?.login(engine, at, login);
        let inner = bounded(&at.to_string(), self.timeout, work).await?;
        Ok(Box::new(Bounded {
            inner,
            at: at.to_string(),
            timeout: self.timeout,
        }))
    }

    async fn privileges(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Vec<String>, DbError> {
        let work = self.engine(engine)?.privileges(engine, at, login, user);
        bounded(&at.to_string(), self.timeout * 2, work).await
    }
}

/// A session whose every statement is bounded (see `Databases`).
struct Bounded {
    inner: Box<dyn DbSession>,
    at: String,
    timeout: Duration,
}

#[async_trait]
impl DbSession for Bounded {
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<(), DbError> {
        bounded(
            &self.at,
            self.timeout,
            self.inner.set_password(user, password),
        )
        .await
    }

    async fn recent_sessions(
        &mut self,
        user: &str,
        within: Duration,
        mine: &[u64],
    ) -> Result<Vec<SessionGroup>, DbError> {
        bounded(
            &self.at,
            self.timeout,
            self.inner.recent_sessions(user, within, mine),
        )
        .await
    }

    async fn own_session(&mut self) -> Result<Option<OwnSession>, DbError> {
        bounded(&self.at, self.timeout, self.inner.own_session()).await
    }

    async fn preflight(&mut self) -> Result<PasswordRules, DbError> {
        bounded(&self.at, self.timeout, self.inner.preflight()).await
    }

    async fn accounts(&mut self, user: &str) -> Result<Accounts, DbError> {
        bounded(&self.at, self.timeout, self.inner.accounts(user)).await
    }

    async fn identity(&mut self) -> Result<ServerIdentity, DbError> {
        bounded(&self.at, self.timeout, self.inner.identity()).await
    }
}
