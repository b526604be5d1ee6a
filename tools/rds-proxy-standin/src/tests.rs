//! Pooling against the real local stack (PostgreSQL and moto from `scripts/local-stack`). The
//! client side is the stand-in's own backend login ([`connect_backend`]), so these tests need no
//! PostgreSQL driver.

use std::time::{Duration, Instant};

use rand::RngCore;

use super::*;

const HOW_TO_START: &str = "the local stack is not running: start it with \
     `eval \"$(scripts/local-stack start)\"` in the workspace root and run \
     `cargo test -p rds-proxy-standin` in that shell";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; {HOW_TO_START}"))
}

struct Stack {
    pg: (String, u16),
    admin_user: String,
    admin_password: String,
}

fn stack() -> Stack {
    env("AWS_ENDPOINT_URL"); // moto, for the proxy's secret
    Stack {
        pg: (
            env("ROTATOR_TEST_PG_HOST"),
            env("ROTATOR_TEST_PG_PORT")
                .parse()
                .expect("ROTATOR_TEST_PG_PORT is a port"),
        ),
        admin_user: env("ROTATOR_TEST_PG_ADMIN_USER"),
        admin_password: env("ROTATOR_TEST_PG_ADMIN_PASSWORD"),
    }
}

fn token() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A logged-in session, after ReadyForQuery; a refusal as the SQLSTATE of the server's (or the
/// stand-in's) ErrorResponse.
async fn login(
    at: &(String, u16),
    user: &str,
    password: &str,
    database: &str,
) -> Result<TcpStream, String> {
    let params = [
        ("user".to_owned(), user.to_owned()),
        ("database".to_owned(), database.to_owned()),
    ];
    let mut s = match connect_backend(at, &params, user, password).await {
        Ok(s) => s,
        Err(Backend::Refused(body)) => return Err(field(&body, b'C')),
        Err(Backend::Io(e)) => panic!("no session with {at:?}: {e:#}"),
    };
    let (startup, ready) = backend_startup(&mut s).await;
    ready.unwrap_or_else(|e| panic!("session startup failed ({e:#}): {startup:?}"));
    Ok(s)
}

/// A field of an ErrorResponse body.
fn field(body: &[u8], code: u8) -> String {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if kind == code {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = &tail[(end + 1).min(tail.len())..];
    }
    String::new()
}

/// Runs a simple query: the first column of each row, or the server's error message.
async fn query(s: &mut TcpStream, sql: &str) -> Result<Vec<String>, String> {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    let (mut rows, mut error) = (Vec::new(), None);
    loop {
        let (kind, body) = read_message(s).await.expect("the session answers");
        match kind {
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                rows.push(if len < 0 {
                    "NULL".to_owned()
                } else {
                    String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                });
            }
            b'E' => error = Some(field(&body, b'M')),
            b'Z' => return error.map_or(Ok(rows), Err),
            _ => {}
        }
    }
}

async fn one(s: &mut TcpStream, sql: &str) -> String {
    let rows = query(s, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows.into_iter().next().unwrap()
}

/// The client's goodbye: Terminate, then close.
async fn terminate(mut s: TcpStream) {
    s.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
    let _ = s.shutdown().await;
}

/// Polls until `done`, for up to 10 s (a `tokio::spawn`ed future cannot hold an async closure
/// here: its `Send` is not general enough).
struct Poll(Instant);

impl Poll {
    fn new() -> Self {
        Self(Instant::now() + Duration::from_secs(10))
    }

    async fn again(&self, done: bool, what: &str) -> bool {
        if done {
            return false;
        }
        assert!(Instant::now() < self.0, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        true
    }
}

async fn wait_pooled(standin: &StandIn, n: usize) {
    let poll = Poll::new();
    while poll
        .again(
            standin.pooled() == n,
            &format!("{n} connection(s) are pooled"),
        )
        .await
    {}
}

/// Waits until the server has ended the sessions `condition` selects from pg_stat_activity.
async fn wait_gone(admin: &mut TcpStream, condition: &str) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {condition}");
    let poll = Poll::new();
    loop {
        let gone = one(admin, &sql).await == "0";
        if !poll
            .again(gone, &format!("no session has {condition}"))
            .await
        {
            return;
        }
    }
}

struct Fixture {
    pg: (String, u16),
    admin: TcpStream,
    role: String,
    p1: String,
    pooled: StandIn,
    plain: StandIn,
}

async fn scenario(mut f: Fixture) {
    let (pg, role, p1) = (f.pg.clone(), f.role.clone(), f.p1.clone());
    let pooled_at = ("127.0.0.1".to_owned(), f.pooled.addr.port());
    let plain_at = ("127.0.0.1".to_owned(), f.plain.addr.port());
    let p2 = token();

    // A first session opens a backend connection (a backend login with p1), which goes to the
    // pool on Terminate, session state and all.
    let mut c = login(&pooled_at, &role, &p1, "postgres").await.unwrap();
    let pid = one(&mut c, "SELECT pg_backend_pid()").await;
    query(&mut c, "SET application_name = 'first-client'")
        .await
        .unwrap();
    assert_eq!(f.pooled.pooled(), 0);
    terminate(c).await;
    wait_pooled(&f.pooled, 1).await;

    // The database stops accepting p1; the proxy's secret still holds it.
    query(&mut f.admin, &format!("ALTER ROLE {role} PASSWORD '{p2}'"))
        .await
        .unwrap();
    assert_eq!(
        login(&pg, &role, &p1, "postgres").await.err().as_deref(),
        Some("28P01"),
        "a direct login with p1 fails"
    );
    assert_eq!(
        login(&plain_at, &role, &p1, "postgres")
            .await
            .err()
            .as_deref(),
        Some("28P01"),
        "without pooling, the stand-in's backend login with p1 fails"
    );
    assert_eq!(
        login(&pooled_at, &role, &p2, "postgres")
            .await
            .err()
            .as_deref(),
        Some("28P01"),
        "the client is still checked against the secret"
    );

    // With pooling, a login with p1 succeeds: it gets the pooled backend connection.
    let mut c = login(&pooled_at, &role, &p1, "postgres").await.unwrap();
    assert_eq!(f.pooled.pooled(), 0);
    assert_eq!(one(&mut c, "SELECT pg_backend_pid()").await, pid);
    assert_eq!(one(&mut c, "SHOW application_name").await, "first-client");
    assert_eq!(one(&mut c, "SELECT current_user").await, role);
    // Another client meanwhile needs a backend login of its own, which fails.
    assert_eq!(
        login(&pooled_at, &role, &p1, "postgres")
            .await
            .err()
            .as_deref(),
        Some("28P01"),
        "a second client gets no pooled connection while the first uses it"
    );
    // Goodbye with a query still unanswered: the stand-in drains the answer, then pools.
    let mut buf = BytesMut::new();
    frontend::query("SELECT pg_sleep(0.3)", &mut buf).unwrap();
    c.write_all(&buf).await.unwrap();
    terminate(c).await;
    wait_pooled(&f.pooled, 1).await;
    let mut c = login(&pooled_at, &role, &p1, "postgres").await.unwrap();
    assert_eq!(one(&mut c, "SELECT 41 + 1").await, "42", "no stale answer");
    terminate(c).await;
    wait_pooled(&f.pooled, 1).await;

    // The server ends the pooled session: the next client does not get the dead connection but a
    // fresh backend login (refused: p1 is still wrong).
    one(&mut f.admin, &format!("SELECT pg_terminate_backend({pid})")).await;
    wait_gone(&mut f.admin, &format!("pid = {pid}")).await;
    assert_eq!(
        login(&pooled_at, &role, &p1, "postgres")
            .await
            .err()
            .as_deref(),
        Some("28P01")
    );
    assert_eq!(f.pooled.pooled(), 0);

    // With p1 accepted again: sessions that are not idle at the end are not pooled.
    query(&mut f.admin, &format!("ALTER ROLE {role} PASSWORD '{p1}'"))
        .await
        .unwrap();
    let mut c = login(&pooled_at, &role, &p1, "postgres").await.unwrap();
    let pid = one(&mut c, "SELECT pg_backend_pid()").await;
    query(&mut c, "BEGIN").await.unwrap();
    terminate(c).await;
    wait_gone(&mut f.admin, &format!("pid = {pid}")).await;
    assert_eq!(f.pooled.pooled(), 0, "a transaction left open");

    let mut c = login(&pooled_at, &role, &p1, "postgres").await.unwrap();
    let pid = one(&mut c, "SELECT pg_backend_pid()").await;
    drop(c); // no Terminate
    wait_gone(&mut f.admin, &format!("pid = {pid}")).await;
    assert_eq!(f.pooled.pooled(), 0, "a client gone without Terminate");

    // Pooled by (user, database): another database gets a connection of its own.
    let mut c = login(&pooled_at, &role, &p1, "postgres").await.unwrap();
    let pid = one(&mut c, "SELECT pg_backend_pid()").await;
    terminate(c).await;
    wait_pooled(&f.pooled, 1).await;
    let mut c = login(&pooled_at, &role, &p1, "template1").await.unwrap();
    assert_ne!(one(&mut c, "SELECT pg_backend_pid()").await, pid);
    terminate(c).await;
    wait_pooled(&f.pooled, 2).await;

    assert_eq!(f.plain.pooled(), 0, "nothing is pooled without `pool`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_backend_connection_outlives_its_password() {
    let stack = stack();
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let sm = aws_sdk_secretsmanager::Client::new(&aws);
    let id = token();
    let role = format!("standin_pool_{id}");
    let p1 = token();
    let mut admin = login(
        &stack.pg,
        &stack.admin_user,
        &stack.admin_password,
        "postgres",
    )
    .await
    .unwrap_or_else(|e| panic!("admin login to PostgreSQL refused ({e}); {HOW_TO_START}"));
    query(
        &mut admin,
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{p1}'"),
    )
    .await
    .unwrap();
    let secret = sm
        .create_secret()
        .name(format!("standin-pool-test/{id}"))
        .secret_string(serde_json::json!({"username": role, "password": p1}).to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto refuses CreateSecret ({e:?}); {HOW_TO_START}"))
        .arn
        .unwrap();
    let config = |pool| Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        backend_host: stack.pg.0.clone(),
        backend_port: stack.pg.1,
        secret_ids: vec![secret.clone()],
        refresh: Duration::from_secs(3600),
        pool,
    };
    let pooled = start(config(true), sm.clone()).await.unwrap();
    let plain = start(config(false), sm.clone()).await.unwrap();

    let mut cleanup = login(
        &stack.pg,
        &stack.admin_user,
        &stack.admin_password,
        "postgres",
    )
    .await
    .unwrap();
    let outcome = tokio::spawn(scenario(Fixture {
        pg: stack.pg.clone(),
        admin,
        role: role.clone(),
        p1,
        pooled,
        plain,
    }))
    .await;

    // Pooled sessions first: a role with sessions can be dropped, but not cleanly.
    query(
        &mut cleanup,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
    )
    .await
    .unwrap();
    wait_gone(&mut cleanup, &format!("usename = '{role}'")).await;
    query(&mut cleanup, &format!("DROP ROLE {role}"))
        .await
        .unwrap();
    sm.delete_secret()
        .secret_id(&secret)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
