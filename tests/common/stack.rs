//! The local stack: where it runs, and connections to its PostgreSQL and AWS endpoint.

use std::sync::OnceLock;
use std::time::Duration;

use tokio_postgres::NoTls;

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
    /// The master, shaped like RDS's: CREATEROLE and CREATEDB, a member of rds_superuser, not a
    /// superuser. Every test that needs a master uses it.
    pub admin_user: String,
    pub admin_password: String,
    /// The bootstrap superuser (`rdsadmin`, as on RDS), for what AWS does there, not a customer:
    /// ALTER SYSTEM, pg_authid, the stack's pg_hba roles, and "another administrator".
    pub superuser: String,
    pub superuser_password: String,
    /// The server's `server_version`, e.g. "16.14".
    pub pg_version: String,
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
        superuser: env("ROTATOR_TEST_PG_SUPERUSER"),
        superuser_password: env("ROTATOR_TEST_PG_SUPERUSER_PASSWORD"),
        pg_version: env("ROTATOR_TEST_PG_VERSION"),
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

/// A connection as the superuser, for what only AWS may do on RDS.
pub async fn superuser(dbname: &str) -> tokio_postgres::Client {
    let s = stack();
    pg_connect(dbname, &s.superuser, &s.superuser_password)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot log in to PostgreSQL at {}:{} as the superuser ({e}); {HOW_TO_START}",
                s.pg_host, s.pg_port
            )
        })
}

/// The server's major version (15, 16, 17, ...).
pub fn pg_major() -> u32 {
    let v = &stack().pg_version;
    v.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("ROTATOR_TEST_PG_VERSION={v:?} has no major version"))
}

pub async fn aws() -> aws_config::SdkConfig {
    stack();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}
