//! Test harness for the real local stack (PostgreSQL and moto, started by `scripts/local-stack`).
//! Each test gets fresh resources: its own database, users, secrets and DynamoDB table.
#![allow(dead_code)]

pub mod lambda;
pub mod mariadb;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::Client as Sm;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

pub const BIN: &str = env!("CARGO_BIN_EXE_rds-rotator");

const HOW_TO_START: &str =
    "the local stack is not running: run the tests with `make test`, or start \
     it with `eval \"$(scripts/local-stack start)\"` and run `cargo test` in that shell";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; {HOW_TO_START}"))
}

/// Where the local stack runs, from the environment `scripts/local-stack start` prints.
#[derive(Debug, Clone)]
pub struct Stack {
    pub pg_host: String,
    pub pg_port: u16,
    pub admin_user: String,
    pub admin_password: String,
    pub pg_log: String,
    pub aws_endpoint: String,
}

pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| Stack {
        pg_host: env("ROTATOR_TEST_PG_HOST"),
        pg_port: env("ROTATOR_TEST_PG_PORT")
            .parse()
            .expect("ROTATOR_TEST_PG_PORT is a port"),
        admin_user: env("ROTATOR_TEST_PG_ADMIN_USER"),
        admin_password: env("ROTATOR_TEST_PG_ADMIN_PASSWORD"),
        pg_log: env("ROTATOR_TEST_PG_LOG"),
        aws_endpoint: env("AWS_ENDPOINT_URL"),
    })
}

pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// A password with the characters that break naive quoting.
pub fn awkward_password() -> String {
    format!("q'uo\"te\\{}$", suffix())
}

/// The server's own message, not tokio-postgres's bare "db error".
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

pub async fn pg_connect(
    dbname: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let s = stack();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&s.pg_host)
        .port(s.pg_port)
        .dbname(dbname)
        .user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

pub async fn admin(dbname: &str) -> tokio_postgres::Client {
    let s = stack();
    pg_connect(dbname, &s.admin_user, &s.admin_password)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot log in to PostgreSQL at {}:{} as admin ({e}); {HOW_TO_START}",
                s.pg_host, s.pg_port
            )
        })
}

pub async fn aws() -> aws_config::SdkConfig {
    stack();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

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

/// What every test pair offers, whatever its engine: the binary configured for it, and its
/// secrets as Secrets Manager holds them.
pub trait Harness {
    fn sm(&self) -> &Sm;
    fn app_secret_id(&self) -> &str;
    fn table_name(&self) -> &str;

    /// The binary, configured for this pair's table and the local stack.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("ROTATOR_TABLE", self.table_name())
            .env("ROTATOR_DB_TLS", "disable")
            .env("ROTATOR_TEST_DEADLINE", "20s")
            // The protocol tests rotate back to back, with their own clients logging in as both
            // users: the minimum interval would skip them, and the in-use guard would (rightly)
            // wait. tests/client_caches.rs runs both as production has them.
            .env("ROTATOR_MIN_INTERVAL", "0s")
            // The local databases answer in milliseconds. The bound is also what a killed
            // process's lease asks a taker to wait beyond the lease (`takeover_period`).
            .env("ROTATOR_DB_TIMEOUT", "2s")
            .env("ROTATOR_IN_USE", "warn")
            .env_remove("ROTATOR_TEST_FAILPOINTS")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the binary runs")
    }

    fn rotate(&self) -> Output {
        self.run(&["rotate", self.app_secret_id()])
    }

    fn status(&self) -> Value {
        let out = self.run(&["status", self.app_secret_id(), "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object")
    }

    /// The step record, or `None` before the first rotation.
    fn try_status(&self) -> Option<Value> {
        let out = self.run(&["status", self.app_secret_id(), "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("status --json prints JSON"))
    }

    /// Starts `rds-rotator rotate` with a failpoint that pauses it, waits until it gets there and
    /// returns the paused process, ready to be killed. A run that stepped back because its lease
    /// may have run out (on a loaded machine a renewal can take longer than a short test lease)
    /// did what it must, changed nothing it cannot resume, and is started again: at most twice.
    fn rotate_until(&self, failpoint: &str, lease: &str) -> Child {
        let mut seen = String::new();
        for _ in 0..3 {
            let mut child = self
                .command(&["rotate", self.app_secret_id()])
                .env("ROTATOR_TEST_FAILPOINTS", format!("{failpoint}=pause"))
                .env("ROTATOR_LEASE_DURATION", lease)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the binary starts");
            let stderr = child.stderr.take().unwrap();
            seen.clear();
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(&format!("failpoint {failpoint} reached")) {
                    return child;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            if !seen.contains("lease lost; leaving the record") {
                break;
            }
            eprintln!("rotate stepped back (lease) before failpoint {failpoint}; again");
        }
        panic!("rotate exited before failpoint {failpoint}:\n{seen}");
    }

    async fn secret_at(&self, id: &str, stage: &str) -> Option<Value> {
        match self
            .sm()
            .get_secret_value()
            .secret_id(id)
            .version_stage(stage)
            .send()
            .await
        {
            Ok(out) => Some(serde_json::from_str(out.secret_string().unwrap()).unwrap()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                None
            }
            Err(e) => panic!("GetSecretValue {id} {stage}: {e:?}"),
        }
    }

    /// Writes a new AWSCURRENT of the application secret with `change` applied.
    async fn edit_app_secret(&self, change: impl FnOnce(&mut Value) + Send) {
        let mut app = self.current().await;
        change(&mut app);
        self.sm()
            .put_secret_value()
            .secret_id(self.app_secret_id())
            .secret_string(app.to_string())
            .send()
            .await
            .unwrap();
    }

    /// A master secret with these credentials, named by the application secret.
    async fn add_master(&self, username: &str, password: &str) {
        let arn = self
            .sm()
            .create_secret()
            .name(format!("{}/master", self.app_secret_id()))
            .secret_string(json!({"username": username, "password": password}).to_string())
            .send()
            .await
            .unwrap()
            .arn
            .unwrap();
        self.edit_app_secret(|app| app["master_secret_id"] = json!(arn))
            .await;
    }

    async fn current(&self) -> Value {
        self.secret_at(self.app_secret_id(), "AWSCURRENT")
            .await
            .expect("AWSCURRENT exists")
    }

    /// version id -> labels
    async fn versions(&self, id: &str) -> Vec<(String, Vec<String>)> {
        let out = self
            .sm()
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .unwrap();
        let mut v: Vec<_> = out
            .version_ids_to_stages()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn version_with(&self, id: &str, stage: &str) -> Option<String> {
        self.versions(id)
            .await
            .into_iter()
            .find(|(_, l)| l.iter().any(|l| l == stage))
            .map(|(v, _)| v)
    }

    /// What a rotation to `user` promises in Secrets Manager: AWSCURRENT holds `user`, AWSPREVIOUS
    /// the other user, its proxy secret the same password, the extra key is kept, and no
    /// AWSPENDING is left. Returns AWSCURRENT, for the engine's own login checks.
    async fn assert_secrets_rotated_to(&self, user: &str, proxy_secret: &str) -> Value {
        let current = self.current().await;
        assert_eq!(current["username"], user, "AWSCURRENT holds the wrong user");
        if let Some(previous) = self.secret_at(self.app_secret_id(), "AWSPREVIOUS").await {
            assert_ne!(previous["username"], user);
        }
        let proxy = self.secret_at(proxy_secret, "AWSCURRENT").await.unwrap();
        assert_eq!(proxy["username"], user);
        assert_eq!(
            proxy["password"], current["password"],
            "the proxy secret holds AWSCURRENT's password"
        );
        assert_eq!(current["owner_team"], "payments", "the extra key is kept");
        let current_version = self.version_with(self.app_secret_id(), "AWSCURRENT").await;
        let pending = self.version_with(self.app_secret_id(), "AWSPENDING").await;
        assert!(
            pending.is_none() || pending == current_version,
            "AWSPENDING left on {pending:?}"
        );
        current
    }

    /// The distinct passwords of every version (deprecated ones included) of these secrets.
    async fn passwords_in(&self, ids: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in ids {
            let listed = self
                .sm()
                .list_secret_version_ids()
                .secret_id(id)
                .include_deprecated(true)
                .max_results(100)
                .send()
                .await
                .unwrap();
            for v in listed.versions() {
                // A version without a value: Secrets Manager's, before createSecret fills it in.
                let Ok(value) = self
                    .sm()
                    .get_secret_value()
                    .secret_id(id)
                    .version_id(v.version_id().unwrap())
                    .send()
                    .await
                else {
                    continue;
                };
                let json: Value = serde_json::from_str(value.secret_string().unwrap()).unwrap();
                let pw = json["password"].as_str().unwrap().to_owned();
                if !out.contains(&pw) {
                    out.push(pw);
                }
            }
        }
        out
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

pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn kill(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A queue and its dead-letter queue, made by `rds-rotator setup --queue-name`.
pub struct Queues {
    pub url: String,
    pub dlq_url: String,
    pub sqs: aws_sdk_sqs::Client,
}

impl Queues {
    pub async fn depth(&self, url: &str) -> usize {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().unwrap();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
            A::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .map(|a| {
            attrs
                .get(a)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum()
    }

    pub async fn send(&self, body: &str) -> String {
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .unwrap()
            .message_id
            .unwrap()
    }

    pub async fn arn(&self) -> String {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(A::QueueArn)
            .send()
            .await
            .unwrap();
        out.attributes().unwrap()[&A::QueueArn].clone()
    }

    /// (body, rotator_reason) of every message in the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        out.messages()
            .iter()
            .map(|m| {
                let reason = m
                    .message_attributes()
                    .and_then(|a| a.get("rotator_reason"))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned();
                (m.body().unwrap_or_default().to_owned(), reason)
            })
            .collect()
    }
}

impl Pair {
    pub async fn queues(&self) -> Queues {
        self.queues_with_max_receives(20).await
    }

    /// A queue whose redrive policy moves a message to the DLQ after `max` receives.
    pub async fn queues_with_max_receives(&self, max: u32) -> Queues {
        let out = self.run(&[
            "setup",
            "--queue-name",
            &format!("rt-{}-q", self.id),
            "--max-receive-count",
            &max.to_string(),
        ]);
        assert!(
            out.status.success(),
            "setup --queue-name failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("setup --queue-name prints JSON");
        assert_eq!(v["table"], self.table.as_str());
        Queues {
            url: v["queue_url"].as_str().unwrap().to_owned(),
            dlq_url: v["dlq_url"].as_str().unwrap().to_owned(),
            sqs: aws_sdk_sqs::Client::new(&aws().await),
        }
    }

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

    /// A worker in this process over the real adapters, drained by calling its step.
    pub async fn worker(&self, queues: &Queues) -> rds_rotator::worker::Worker {
        use rds_rotator::aws::{secrets::SecretsManager, sqs::SqsQueue};
        use rds_rotator::rotation::Settings;
        use rds_rotator::worker::{Worker, WorkerSettings};
        use std::sync::Arc;
        let aws = aws().await;
        Worker {
            queue: Arc::new(
                SqsQueue::connect(&aws, &queues.url, None)
                    .await
                    .expect("the DLQ is found"),
            ),
            directory: Arc::new(SecretsManager::new(&aws)),
            rotator: self
                .rotator(Settings {
                    test_deadline: Duration::from_secs(20),
                    ..Settings::default()
                })
                .await,
            settings: WorkerSettings {
                receive_wait: Duration::from_secs(5),
                retry_delay: Duration::from_secs(1),
                ..WorkerSettings::default()
            },
        }
    }

    /// `rds-rotator worker` as a separate process, its stderr drained into the returned buffer.
    pub fn spawn_worker(
        &self,
        queues: &Queues,
        env: &[(&str, &str)],
    ) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
        let health = std::env::temp_dir().join(format!("rt-health-{}", suffix()));
        let mut cmd = self.command(&["worker"]);
        cmd.env("ROTATOR_QUEUE_URL", &queues.url)
            .env("ROTATOR_RECEIVE_WAIT", "1s")
            .env("ROTATOR_RETRY_DELAY", "1s")
            .env("ROTATOR_HEALTH_FILE", &health)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the worker starts");
        // stderr (logs) and stdout (metrics) in one buffer, line by line.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        (child, log)
    }
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits for a child to exit, at most `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP relay to PostgreSQL on a port of its own, started later: a database that is "down"
/// until `start` is called.
pub struct Relay {
    pub port: u16,
}

impl Relay {
    pub fn reserve() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self {
            port: l.local_addr().unwrap().port(),
        }
    }

    pub async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the relay port is still free");
        let target = (stack().pg_host.clone(), stack().pg_port);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }
}

/// A fault proxy in front of moto: `faults` at random, and the refusals a test sets.
pub async fn fault_proxy(faults: aws_fault_proxy::Faults) -> aws_fault_proxy::FaultProxy {
    let upstream: std::net::SocketAddr = stack()
        .aws_endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("AWS_ENDPOINT_URL is http://host:port");
    aws_fault_proxy::start("127.0.0.1:0".parse().unwrap(), upstream, faults)
        .await
        .unwrap()
}

/// A fault proxy in front of moto with no random faults: only the refusals a test sets.
pub async fn refusing_proxy() -> aws_fault_proxy::FaultProxy {
    fault_proxy(aws_fault_proxy::Faults {
        rate: 0.0,
        slow_delay: Duration::ZERO,
    })
    .await
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

/// A finished command's exit status and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts `cmd` (a `rotate`) with `failpoint=sleep(ms)` and returns once it is there, still
/// running, with a thread that collects its stderr.
pub fn pausing_at(
    mut cmd: Command,
    failpoint: &str,
    ms: u64,
) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = cmd
        .env(
            "ROTATOR_TEST_FAILPOINTS",
            format!("{failpoint}=sleep({ms})"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("reached") {
                let _ = tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("rotate never reached {failpoint}"));
    (child, lines)
}

/// Writes a report line for `make test` to print after the run (cargo test hides the output of
/// passing tests), and prints it for `--nocapture` runs.
pub fn report(name: &str, line: &str) {
    eprintln!("{line}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reports");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.txt")), format!("{line}\n")).unwrap();
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

/// Attaches Secrets Manager's own rotation to `id`, every 30 days, as the tool this replaces or
/// AWS's rotation functions leave it. Returns the version RotateSecret labelled AWSPENDING.
pub async fn attach_managed_rotation(sm: &Sm, id: &str) -> String {
    sm.rotate_secret()
        .secret_id(id)
        .rotation_rules(
            aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(30)
                .build(),
        )
        .rotate_immediately(false)
        .send()
        .await
        .expect("the stack answers RotateSecret with RotationRules")
        .version_id()
        .expect("RotateSecret names its version")
        .to_owned()
}

/// An application that logs in on its path over and over (every 20 ms) until stopped, counting
/// logins and keeping every failure. `login` reads its credentials each time (AWSCURRENT before
/// every connection) and says who failed and why.
pub struct App {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub fn start<F, Fut>(login: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send,
    {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                match login().await {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            ok,
            failures,
            task,
        }
    }

    /// Stops it: the logins that worked, and the failures.
    pub async fn stop(self) -> (u64, Vec<String>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}
