//! Database adapters, one module per engine, behind the `Database` port.

pub mod mysql;
pub mod postgres;
pub mod tls;

use crate::rotation::ports::{Database, DbError, DbSession};
use crate::secret::{Credentials, Endpoint, Engine};
use async_trait::async_trait;

/// Picks the adapter for the secret's engine.
pub struct Databases {
    postgres: postgres::Postgres,
    mysql: mysql::MySql,
}

impl Databases {
    pub fn new(tls: tls::DbTls) -> Self {
        Self {
            postgres: postgres::Postgres::new(tls.clone()),
            mysql: mysql::MySql::new(tls),
        }
    }

    fn engine(&self, engine: Engine) -> Result<&dyn Database, DbError> {
        match engine {
            Engine::Postgres => Ok(&self.postgres),
            Engine::Mysql | Engine::Mariadb => Ok(&self.mysql),
        }
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
        self.engine(engine)?.check_login(engine, at, creds).await
    }

    async fn login(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        self.engine(engine)?.login(engine, at, login).await
    }

    async fn privileges(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Vec<String>, DbError> {
        self.engine(engine)?
            .privileges(engine, at, login, user)
            .await
    }
}
