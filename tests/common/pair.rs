//! A pair of PostgreSQL users taking turns, behind the RDS Proxy stand-in: setup, logins,
//! and the invariants a rotation must keep.

use std::time::Duration;

use aws_sdk_secretsmanager::Client as Sm;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

use super::{admin, awkward_password, aws, pg_connect, pg_error, stack, suffix, Harness};

/// How a test pair is set up.
pub struct Options {
    /// Give the secret `direct_host`/`direct_port` (the database, bypassing the proxy).
    pub direct: bool,
    /// How often the proxy stand-in re-reads its secrets.
    pub proxy_refresh: Duration,
    /// The proxy stand-in keeps backend connections and hands them to the next client of the
    /// same user, as RDS Proxy does.
    pub proxy_pool: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            direct: true,
            proxy_refresh: Duration::from_millis(250),
            proxy_pool: false,
        }
    }
}

/// A database with two users taking turns, their proxy secrets, and the application secret in the
/// seed tool's format, all with names of their own.
pub struct Pair {
    pub id: String,
    /// The RDS Proxy stand-in in front of this pair's database: the application's path.
    pub proxy: rds_proxy_standin::StandIn,
    pub dbname: String,
    pub users: [String; 2],
    pub initial_passwords: [String; 2],
    pub table: String,
    pub app_secret: String,
    pub proxy_secrets: [String; 2],
    pub sm: Sm,
}

impl Pair {
    pub async fn new() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Self {
        let id = suffix();
        let dbname = format!("rt_{id}");
        let users = [format!("app_{id}"), format!("app_{id}_clone")];
        let initial_passwords = [awkward_password(), awkward_password()];
        let admin_db = admin("postgres").await;
        admin_db
            .batch_execute(&format!("CREATE DATABASE {dbname}"))
            .await
            .unwrap();
        for (user, pw) in users.iter().zip(&initial_passwords) {
            let verifier = postgres_protocol::password::scram_sha_256(pw.as_bytes());
            admin_db
                .batch_execute(&format!("CREATE ROLE {user} LOGIN PASSWORD '{verifier}'; GRANT ALL ON DATABASE {dbname} TO {user}"))
                .await
                .unwrap();
        }
        let sm = Sm::new(&aws().await);
        let table = format!("rt-{id}");
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
        let s = stack();
        let proxy = rds_proxy_standin::StandIn::spawn_in_thread(
            rds_proxy_standin::Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                backend_host: s.pg_host.clone(),
                backend_port: s.pg_port,
                secret_ids: proxy_arns.clone(),
                refresh: options.proxy_refresh,
                pool: options.proxy_pool,
            },
            sm.clone(),
        )
        .expect("the RDS Proxy stand-in starts");
        let mut app = json!({
            "rotation_type": "AWS RDS",
            "rotation_usernames": [users[0], users[1]],
            "proxy_secret_ids": proxy_arns,
            "database_host": "127.0.0.1",
            "database_port": proxy.addr.port().to_string(),
            "database_name": dbname,
            "username": users[0],
            "password": initial_passwords[0],
            "owner_team": "payments"
        });
        if options.direct {
            app["direct_host"] = json!(s.pg_host);
            app["direct_port"] = json!(s.pg_port);
        }
        let app_secret = format!("rt-{id}/app");
        sm.create_secret()
            .name(&app_secret)
            .secret_string(app.to_string())
            .send()
            .await
            .unwrap();
        let pair = Self {
            id,
            proxy,
            dbname,
            users,
            initial_passwords,
            table,
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
        let client = pg_connect(&self.dbname, user, password)
            .await
            .map_err(|e| pg_error(&e))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(())
    }

    pub async fn login_with(&self, secret: &Value) -> Result<(), String> {
        self.login(
            secret["username"].as_str().unwrap(),
            secret["password"].as_str().unwrap(),
        )
        .await
    }

    /// Logs in through the RDS Proxy stand-in, as the application does.
    pub async fn login_via_proxy(&self, secret: &Value) -> Result<(), String> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.proxy.addr.port())
            .dbname(&self.dbname)
            .user(secret["username"].as_str().unwrap())
            .password(secret["password"].as_str().unwrap())
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = cfg.connect(NoTls).await.map_err(|e| pg_error(&e))?;
        tokio::spawn(conn);
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(())
    }

    /// Everything the brief promises after a rotation to `user`.
    pub async fn assert_rotated_to(&self, user: &str) {
        let i = self.users.iter().position(|u| u == user).unwrap();
        let current = self
            .assert_secrets_rotated_to(user, &self.proxy_secrets[i])
            .await;
        self.login_with(&current).await.expect("AWSCURRENT logs in");
        self.login_via_proxy(&current)
            .await
            .expect("AWSCURRENT logs in through the proxy");
        if let Some(previous) = self.secret_at(&self.app_secret, "AWSPREVIOUS").await {
            self.login_with(&previous)
                .await
                .expect("AWSPREVIOUS still logs in");
        }
    }
}

impl Harness for Pair {
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

impl Pair {
    /// The rotation engine in this process over the real adapters.
    pub async fn rotator(
        &self,
        settings: rds_rotator::rotation::Settings,
    ) -> rds_rotator::rotation::Rotator {
        use rds_rotator::aws::{dynamo::DynamoRecords, secrets::SecretsManager};
        use rds_rotator::db::{
            tls::{DbTls, TlsMode},
            Databases,
        };
        use rds_rotator::rotation::{Rotator, Shutdown};
        use std::sync::Arc;
        let aws = aws().await;
        Rotator {
            secrets: Arc::new(SecretsManager::new(&aws)),
            records: Arc::new(DynamoRecords::new(&aws, &self.table)),
            db: Arc::new(Databases::new(
                DbTls::new(TlsMode::Disable, None).unwrap(),
                std::time::Duration::from_secs(10),
            )),
            rds: Arc::new(rds_rotator::aws::rds::RdsInstances::new(&aws)),
            reporter: Arc::new(rds_rotator::rotation::ports::NoReports),
            settings,
            owner: format!("in-process-{}", suffix()),
            shutdown: Shutdown::default(),
            clock: rds_rotator::rotation::SystemClock::shared(),
        }
    }
}

impl Pair {
    /// The ARN of secret `id`.
    pub async fn arn_of(&self, id: &str) -> String {
        let out = self
            .sm
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .unwrap();
        out.arn.unwrap()
    }

    /// AWSCURRENT's version and value, which a failed rotation must not change.
    pub async fn current_state(&self) -> (Option<String>, Value) {
        (
            self.version_with(&self.app_secret, "AWSCURRENT").await,
            self.current().await,
        )
    }

    /// AWSCURRENT is still `version` with `value`, and it logs in, directly and through the
    /// proxy.
    pub async fn assert_current_unchanged(&self, version: &Option<String>, value: &Value) {
        assert_eq!(
            &self.version_with(&self.app_secret, "AWSCURRENT").await,
            version,
            "AWSCURRENT moved"
        );
        let now = self.current().await;
        assert_eq!(&now, value, "AWSCURRENT's value changed");
        self.login_with(&now).await.expect("AWSCURRENT logs in");
        self.login_via_proxy(&now)
            .await
            .expect("AWSCURRENT logs in through the proxy");
    }
}

impl Pair {
    /// Every version of the app secret and of the proxy secrets, as (secret, version id), the
    /// labelled ones first (the passwords a rotation leaves in use are there), then the newest.
    async fn versions_to_try(&self) -> Vec<(String, String)> {
        let ids = [
            self.app_secret.clone(),
            self.proxy_secrets[0].clone(),
            self.proxy_secrets[1].clone(),
        ];
        let list = |id: &str| {
            self.sm
                .list_secret_version_ids()
                .secret_id(id)
                .include_deprecated(true)
                .max_results(100)
                .send()
        };
        let (a, b, c) = tokio::join!(list(&ids[0]), list(&ids[1]), list(&ids[2]));
        let mut versions = Vec::new();
        for (id, listed) in ids.iter().zip([a, b, c]) {
            for v in listed.unwrap().versions() {
                let created = v
                    .created_date()
                    .copied()
                    .unwrap_or(aws_smithy_types::DateTime::from_secs(0));
                let labelled = !v.version_stages().is_empty();
                versions.push((
                    labelled,
                    created,
                    id.clone(),
                    v.version_id().unwrap().to_owned(),
                ));
            }
        }
        versions.sort_by_key(|v| std::cmp::Reverse((v.0, v.1)));
        versions.into_iter().map(|(_, _, id, v)| (id, v)).collect()
    }

    /// Whether `user` logs in with a password that some version of the app secret or of a proxy
    /// secret holds. `versions` come from `versions_to_try`, so this usually stops at the first
    /// or second.
    async fn password_is_known(&self, user: &str, versions: &[(String, String)]) -> bool {
        let mut tried = Vec::new();
        for (id, version) in versions {
            // A version without a value: Secrets Manager's, before createSecret fills it in.
            let Ok(value) = self
                .sm
                .get_secret_value()
                .secret_id(id)
                .version_id(version)
                .send()
                .await
            else {
                continue;
            };
            let json: Value = serde_json::from_str(value.secret_string().unwrap()).unwrap();
            let pw = json["password"].as_str().unwrap().to_owned();
            if json["username"] != user || tried.contains(&pw) {
                continue;
            }
            if self.login(user, &pw).await.is_ok() {
                return true;
            }
            tried.push(pw);
        }
        false
    }

    /// Every password any version of the app secret or the proxy secrets ever held, plus the
    /// initial ones.
    pub async fn all_passwords(&self) -> Vec<String> {
        let mut out: Vec<String> = self.initial_passwords.to_vec();
        let ids = [
            self.app_secret.clone(),
            self.proxy_secrets[0].clone(),
            self.proxy_secrets[1].clone(),
        ];
        for pw in self.passwords_in(&ids).await {
            if !out.contains(&pw) {
                out.push(pw);
            }
        }
        out
    }

    /// The invariants that must hold whatever was killed when. `settled`: no rotation is in
    /// progress any more.
    pub async fn violations(&self, settled: bool) -> Vec<String> {
        let mut v = Vec::new();
        let current = self.current().await;
        if let Err(e) = self.login_with(&current).await {
            v.push(format!(
                "AWSCURRENT ({}) does not log in directly: {e}",
                current["username"]
            ));
        }
        // The proxy may lag behind a just-finished rotation by its refresh interval.
        let mut via_proxy = self.login_via_proxy(&current).await;
        for _ in 0..20 {
            if via_proxy.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            via_proxy = self.login_via_proxy(&current).await;
        }
        if let Err(e) = via_proxy {
            v.push(format!(
                "AWSCURRENT ({}) does not log in through the proxy: {e}",
                current["username"]
            ));
        }
        let versions = self.versions_to_try().await;
        for user in &self.users {
            if !self.password_is_known(user, &versions).await {
                v.push(format!(
                    "{user}'s password in the database matches no version anyone knows"
                ));
            }
        }
        if settled {
            let current_version = self.version_with(&self.app_secret, "AWSCURRENT").await;
            let pending = self.version_with(&self.app_secret, "AWSPENDING").await;
            if pending.is_some() && pending != current_version {
                v.push(format!("AWSPENDING left on {pending:?}"));
            }
            let status = self.status();
            if status["state"] != "finished" {
                v.push(format!("the rotation did not finish: {status}"));
            }
        }
        v
    }
}
