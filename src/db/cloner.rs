//! adopt's `Cloner` port over the engines' adapters: the same `Postgres` and `MySql` instances
//! the rotation's `Databases` uses, built once by the composition root (`app`).

use std::sync::Arc;

use super::{mysql::MySql, postgres::Postgres};
use super::{mysql_clone, postgres_clone};
use crate::adopt::ports::{CloneSession, Cloner};
use crate::rotation::ports::DbError;
use crate::secret::{Credentials, Endpoint, Engine};

/// The real databases.
pub struct DbCloner {
    pg: Arc<Postgres>,
    my: Arc<MySql>,
}

impl DbCloner {
    pub fn new(pg: Arc<Postgres>, my: Arc<MySql>) -> Self {
        Self { pg, my }
    }
}

#[async_trait::async_trait]
impl Cloner for DbCloner {
    async fn open(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn CloneSession>, DbError> {
        Ok(match engine {
            Engine::Postgres => {
                Box::new(postgres_clone::PgCloneSession::open(&self.pg, at, login).await?)
            }
            Engine::Mysql | Engine::Mariadb => {
                Box::new(mysql_clone::MyCloneSession::open(&self.my, at, login).await?)
            }
        })
    }
}
