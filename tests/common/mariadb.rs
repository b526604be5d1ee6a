//! The MariaDB side of the harness: a pair of users in a database of their own on the local
//! stack's MariaDB, their proxy secrets, and an application secret with `"engine": "mariadb"`.
//!
//! There is no MySQL-protocol RDS Proxy stand-in: the application's path is the database itself.
//! The proxy secrets are still rotated and checked in Secrets Manager.

use std::sync::OnceLock;

use aws_sdk_secretsmanager::Client as Sm;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use super::{aws, suffix, Harness};

const HOW_TO_START: &str =
    "the local stack's MariaDB is not running: run the tests with `make test`, or start it with \
     `eval \"$(scripts/local-stack start)\"` and run `cargo test` in that shell";

pub struct MyStack {
    pub host: String,
    pub port: u16,
    /// The master, shaped like RDS for MariaDB's (no SUPER).
    pub admin_user: String,
    pub admin_password: String,
    /// AWS's own administrator on RDS: server settings only.
    pub super_user: String,
    pub super_password: String,
    /// The general log: every statement the server received.
    pub log: String,
}

pub fn my_stack() -> &'static MyStack {
    static STACK: OnceLock<MyStack> = OnceLock::new();
    STACK.get_or_init(|| {
        let env =
            |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set; {HOW_TO_START}"));
        MyStack {
            host: env("ROTATOR_TEST_MYSQL_HOST"),
            port: env("ROTATOR_TEST_MYSQL_PORT").parse().unwrap(),
            admin_user: env("ROTATOR_TEST_MYSQL_ADMIN_USER"),
            admin_password: env("ROTATOR_TEST_MYSQL_ADMIN_PASSWORD"),
            super_user: env("ROTATOR_TEST_MYSQL_SUPER_USER"),
            super_password: env("ROTATOR_TEST_MYSQL_SUPER_PASSWORD"),
            log: env("ROTATOR_TEST_MYSQL_LOG"),
        }
    })
}

pub fn opts(user: &str, password: &str, db: Option<&str>) -> mysql_async::Opts {
    let s = my_stack();
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(s.host.clone())
        .tcp_port(s.port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false)
        .into()
}

pub async fn my_admin() -> mysql_async::Conn {
    let s = my_stack();
    mysql_async::Conn::new(opts(&s.admin_user, &s.admin_password, None))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot log in to MariaDB at {}:{} as admin ({e}); {HOW_TO_START}",
                s.host, s.port
            )
        })
}

/// What an application user gets on its database: every database-level privilege RDS for
/// MariaDB's master may grant (`ALL` includes DELETE HISTORY, which that master lacks).
pub const APP_GRANTS: &str = "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, REFERENCES, INDEX, \
    ALTER, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, \
    ALTER ROUTINE, EVENT, TRIGGER";

/// AWS's own administrator (`rdsadmin`): for server settings (SET GLOBAL, plugins), which RDS's
/// master may not change (a parameter group does).
pub async fn my_super() -> mysql_async::Conn {
    let s = my_stack();
    mysql_async::Conn::new(opts(&s.super_user, &s.super_password, None))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot log in to MariaDB at {}:{} as rdsadmin ({e}); {HOW_TO_START}",
                s.host, s.port
            )
        })
}

/// A string literal for the server's default SQL mode (backslash escapes on).
pub fn my_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

pub struct MariaPair {
    pub id: String,
    pub dbname: String,
    pub users: [String; 2],
    pub initial_passwords: [String; 2],
    pub table: String,
    pub app_secret: String,
    pub proxy_secrets: [String; 2],
    pub sm: Sm,
}

impl Harness for MariaPair {
    fn sm(&self) -> &Sm {
        &self.sm
    }

    fn app_secret_id(&self) -> &str {
        &self.app_secret
    }

    fn table_name(&self) -> &str {
        &self.table
    }
}

impl MariaPair {
    pub async fn new() -> Self {
        let id = suffix();
        let dbname = format!("rt_{id}");
        let users = [format!("ma_{id}"), format!("ma_{id}_c")];
        // Quotes and a backslash: they travel in the protocol, never in SQL we build.
        let initial_passwords = [
            format!("q'uo\"te\\{}", suffix()),
            format!("q'uo\"te\\{}", suffix()),
        ];
        let mut admin = my_admin().await;
        admin
            .query_drop(format!("CREATE DATABASE `{dbname}`"))
            .await
            .unwrap();
        for (user, pw) in users.iter().zip(&initial_passwords) {
            admin
                .query_drop(format!(
                    "CREATE USER '{user}'@'%' IDENTIFIED BY {}",
                    my_literal(pw)
                ))
                .await
                .unwrap();
            admin
                .query_drop(format!(
                    "GRANT {APP_GRANTS} ON `{dbname}`.* TO '{user}'@'%'"
                ))
                .await
                .unwrap();
        }
        let sm = Sm::new(&aws().await);
        let mut proxy_arns = Vec::new();
        for (user, pw) in users.iter().zip(&initial_passwords) {
            let out = sm
                .create_secret()
                .name(format!("rt-{id}/proxy/{user}"))
                .secret_string(json!({"username": user, "password": pw}).to_string())
                .send()
                .await
                .expect("moto answers CreateSecret");
            proxy_arns.push(out.arn.unwrap());
        }
        let s = my_stack();
        let app = json!({
            "engine": "mariadb",
            "host": s.host,
            "port": s.port,
            "dbname": dbname,
            "username": users[0],
            "password": initial_passwords[0],
            "rotation_usernames": [users[0], users[1]],
            "proxy_secret_ids": proxy_arns,
            "owner_team": "payments"
        });
        let app_secret = format!("rt-{id}/app");
        sm.create_secret()
            .name(&app_secret)
            .secret_string(app.to_string())
            .send()
            .await
            .unwrap();
        let pair = Self {
            table: format!("rt-{id}"),
            id,
            dbname,
            users,
            initial_passwords,
            app_secret,
            proxy_secrets: [proxy_arns[0].clone(), proxy_arns[1].clone()],
            sm,
        };
        let out = pair.run(&["setup"]);
        assert!(
            out.status.success(),
            "setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pair
    }

    pub async fn login(&self, user: &str, password: &str) -> Result<(), String> {
        let mut conn = mysql_async::Conn::new(opts(user, password, Some(&self.dbname)))
            .await
            .map_err(|e| e.to_string())?;
        conn.query_drop("DO 1").await.map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        Ok(())
    }

    pub async fn login_with(&self, secret: &Value) -> Result<(), String> {
        self.login(
            secret["username"].as_str().unwrap(),
            secret["password"].as_str().unwrap(),
        )
        .await
    }

    /// Everything a rotation to `user` promises.
    pub async fn assert_rotated_to(&self, user: &str) {
        let i = self.users.iter().position(|u| u == user).unwrap();
        let current = self
            .assert_secrets_rotated_to(user, &self.proxy_secrets[i])
            .await;
        assert_eq!(current["engine"], "mariadb");
        self.login_with(&current).await.expect("AWSCURRENT logs in");
        if let Some(previous) = self.secret_at(&self.app_secret, "AWSPREVIOUS").await {
            self.login_with(&previous)
                .await
                .expect("AWSPREVIOUS still logs in");
        }
    }

    /// Every password any version of the app secret or the proxy secrets held, and the initial ones.
    pub async fn passwords_ever(&self) -> Vec<String> {
        let mut ids = vec![self.app_secret.clone()];
        ids.extend(self.proxy_secrets.iter().cloned());
        let mut out = self.initial_passwords.to_vec();
        for pw in self.passwords_in(&ids).await {
            if !out.contains(&pw) {
                out.push(pw);
            }
        }
        out
    }

    pub async fn snapshot(&self) -> Vec<Vec<(String, Vec<String>)>> {
        vec![
            self.versions(&self.app_secret).await,
            self.versions(&self.proxy_secrets[0]).await,
            self.versions(&self.proxy_secrets[1]).await,
        ]
    }
}
