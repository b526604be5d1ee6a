//! Applications as production has them: they keep credentials (AWS's caching client refreshes
//! hourly by default, an ECS task keeps its `secrets` for life) instead of reading AWSCURRENT
//! before every connection. The minimum interval protects the first kind, the in-use guard the
//! second; these tests run `rds-rotator` with the production defaults for both (the harness
//! turns them down for the protocol tests).

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio_postgres::NoTls;

/// `rds-rotator ARGS` with the production defaults of the interval and the guard, and `env`.
fn production(pair: &Pair, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = pair.command(args);
    cmd.env_remove("ROTATOR_MIN_INTERVAL")
        .env_remove("ROTATOR_IN_USE")
        .env_remove("ROTATOR_IN_USE_WINDOW");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// A session of `user` straight to the database, as an application's pool holds one.
async fn hold_session(
    pair: &Pair,
    user: &str,
    password: &str,
    application: &str,
) -> tokio_postgres::Client {
    let s = stack();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&s.pg_host)
        .port(s.pg_port)
        .dbname(&pair.dbname)
        .user(user)
        .password(password)
        .application_name(application);
    let (client, conn) = cfg.connect(NoTls).await.expect("the user logs in");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    client
}

/// Waits until `user` has no session left (a closed connection's server process ends a moment
/// after the client is gone).
/// Waits until the sessions whose `column` (of pg_stat_activity) is `value` number zero
/// (`none`), or at least one: a process that starts Python and AWS's client can take seconds to
/// connect on a loaded machine.
async fn wait_for_sessions(pair: &Pair, column: &str, value: &str, none: bool) {
    let db = admin(&pair.dbname).await;
    let deadline = Instant::now() + Duration::from_secs(if none { 10 } else { 30 });
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {column} = $1::text::name");
    loop {
        let n: i64 = db.query_one(&sql, &[&value]).await.unwrap().get(0);
        if (n == 0) == none {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{column} {value}: {n} session(s), waiting for {}",
            if none { "none" } else { "one" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_no_session(pair: &Pair, user: &str) {
    wait_for_sessions(pair, "usename", user, true).await;
}

async fn wait_until_connected(pair: &Pair, application: &str) {
    wait_for_sessions(pair, "application_name", application, false).await;
}

#[tokio::test]
async fn rotate_twice_in_a_row_skips_the_second_and_credentials_read_before_the_first_still_log_in()
{
    let pair = Pair::new().await;
    let read_before = pair
        .secret_at(&pair.app_secret, "AWSCURRENT")
        .await
        .unwrap();
    let first = production(&pair, &["rotate", &pair.app_secret], &[]);
    assert!(first.status.success(), "{}", text(&first));
    let second = production(&pair, &["rotate", &pair.app_secret], &[]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(
        said.contains("skipped") && said.contains("less than the minimum interval of 2h"),
        "{}",
        text(&second)
    );
    pair.login_via_proxy(&read_before)
        .await
        .expect("credentials read before the first rotation still log in through the proxy");
    pair.login_with(&read_before).await.unwrap();
    pair.assert_rotated_to(&pair.users[1]).await;

    // `--force` rotates anyway, says so, and that is what breaks a client holding those
    // credentials: the interval is what protects it. (Once this test's own logins with them
    // have ended: the guard would rightly wait for those.)
    wait_until_no_session(&pair, &pair.users[0]).await;
    let forced = production(&pair, &["rotate", &pair.app_secret, "--force"], &[]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(
        String::from_utf8_lossy(&forced.stderr)
            .contains("forced: rotating inside the minimum interval"),
        "{}",
        text(&forced)
    );
    pair.assert_rotated_to(&pair.users[0]).await;
    assert!(
        pair.login_with(&read_before).await.is_err(),
        "a forced rotation inside the interval changed the password those credentials hold"
    );
}

#[tokio::test]
async fn a_held_session_of_the_idle_user_makes_check_report_in_use_and_rotate_wait_until_it_ends() {
    let pair = Pair::new().await;
    let idle = pair.users[1].clone();
    let held = hold_session(&pair, &idle, &pair.initial_passwords[1], "orders-api").await;

    let check = production(&pair, &["check", &pair.app_secret, "--json"], &[]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let report: Value = serde_json::from_slice(&check.stdout).unwrap();
    let line = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "in use")
        .unwrap_or_else(|| panic!("no `in use` line: {report}"));
    assert_eq!(line["status"], "fail", "{line}");
    let detail = line["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("user {idle} has 1 session(s)")) && detail.contains("orders-api"),
        "{detail}"
    );

    let waited = production(&pair, &["rotate", &pair.app_secret], &[]);
    assert_eq!(waited.status.code(), Some(75), "{}", text(&waited));
    let said = String::from_utf8_lossy(&waited.stderr);
    assert!(
        said.contains(&format!("user {idle} has 1 session(s)"))
            && said.contains("from 127.0.0.1 (orders-api)")
            && said.contains("two rotations ago"),
        "{said}"
    );
    let status = pair.status();
    assert_eq!(status["state"], "in_progress", "{status}");
    assert_eq!(status["step"], "set_password", "{status}");
    assert!(
        status["in_use"].as_str().unwrap().contains("orders-api"),
        "{status}"
    );
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("orders-api"),
        "{status}"
    );
    pair.login(&idle, &pair.initial_passwords[1])
        .await
        .expect("the idle user's password did not change");
    held.simple_query("SELECT 1")
        .await
        .expect("the application's session goes on");

    drop(held);
    wait_until_no_session(&pair, &idle).await;
    let done = production(&pair, &["rotate", &pair.app_secret], &[]);
    assert!(done.status.success(), "{}", text(&done));
    pair.assert_rotated_to(&idle).await;
    assert_eq!(pair.status()["in_use"], Value::Null);
}

#[tokio::test]
async fn a_session_idle_for_longer_than_the_window_does_not_count_as_in_use() {
    // What RDS Proxy's pool looks like: backend connections of the idle user, open and unused.
    let pair = Pair::new().await;
    let idle = pair.users[1].clone();
    let window = [("ROTATOR_IN_USE_WINDOW", "3s")];
    let pooled = hold_session(&pair, &idle, &pair.initial_passwords[1], "pooled").await;
    // Its statement a moment ago counts...
    let busy = production(&pair, &["rotate", &pair.app_secret], &window);
    assert_eq!(busy.status.code(), Some(75), "{}", text(&busy));
    // ...and once it has been idle for longer than the window, it does not.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = production(&pair, &["rotate", &pair.app_secret], &window);
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&idle).await;
    pooled
        .simple_query("SELECT 1")
        .await
        .expect("an open session survives its user's password change");
}

/// An application process: tests/clients/cached_client.py, reading the secret through one of
/// AWS's clients: its caching client, or its driver wrapper's Secrets Manager plugin.
struct App(Child);

#[derive(Clone, Copy)]
enum Client {
    Caching,
    Wrapper,
}

impl App {
    fn start(pair: &Pair, mode: &str, refresh_s: u32, name: &str) -> Self {
        Self::start_with(Client::Caching, pair, mode, refresh_s, name)
    }

    fn start_with(client: Client, pair: &Pair, mode: &str, refresh_s: u32, name: &str) -> Self {
        let python = std::env::var("ROTATOR_TEST_PYTHON").unwrap_or_else(|_| {
            panic!("ROTATOR_TEST_PYTHON is not set: run the tests with `make test` (scripts/local-stack start installs AWS's clients into the venv)")
        });
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/cached_client.py"
        );
        let client = match client {
            Client::Caching => "caching",
            Client::Wrapper => "wrapper",
        };
        let child = Command::new(python)
            .args([script, &pair.app_secret, "--mode", mode, "--app", name])
            .args(["--refresh", &refresh_s.to_string(), "--client", client])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python starts");
        Self(child)
    }

    /// Ends it (its stdin closes) and returns what it counted.
    fn stop(mut self) -> Value {
        drop(self.0.stdin.take());
        let mut out = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "the client failed: {status}, {out}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default, Debug)]
struct Tally {
    rotations: u32,
    skipped: u32,
    deferred: u32,
    reasons: Vec<String>,
}

impl Tally {
    /// A scheduler asking every half second: one rotation (of the other user) within 30 s, then
    /// for `secs` only deferrals and skips, at least one deferral: the next would change the
    /// user that `who`.
    async fn one_rotation_then_only_deferrals(
        &mut self,
        pair: &Pair,
        env: &[(&str, &str)],
        secs: u64,
        who: &str,
    ) {
        let mut outcome = "";
        let deadline = Instant::now() + Duration::from_secs(30);
        while outcome != "rotated" {
            assert!(Instant::now() < deadline, "no rotation in 30 s: {self:?}");
            outcome = self.rotate(pair, env);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let deferred_before = self.deferred;
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            assert_ne!(
                self.rotate(pair, env),
                "rotated",
                "the user {who} had its password changed: {self:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(self.deferred > deferred_before, "{self:?}");
    }

    /// One `rotate`, as a scheduler would run it: rotated, skipped, or deferred by the guard.
    fn rotate(&mut self, pair: &Pair, env: &[(&str, &str)]) -> &'static str {
        let out = production(pair, &["rotate", &pair.app_secret], env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(0) if stdout.starts_with("rotated") => {
                self.rotations += 1;
                "rotated"
            }
            Some(0) if stdout.starts_with("skipped") => {
                self.skipped += 1;
                "skipped"
            }
            Some(75) if String::from_utf8_lossy(&out.stderr).contains("session(s)") => {
                self.deferred += 1;
                self.reasons
                    .push(String::from_utf8_lossy(&out.stderr).into_owned());
                "deferred"
            }
            _ => panic!("unexpected rotate result: {}", text(&out)),
        }
    }
}

/// AWS's two clients for applications, one after the other on one pair of users, under the
/// production guard:
/// - the caching client (aws-secretsmanager-caching) re-reads after its refresh interval, so with
///   the minimum interval above it, it follows every rotation; a task that holds a connection
///   defers the rotation that would change its user;
/// - the driver wrapper (aws-advanced-python-wrapper) re-reads only when a login is refused (its
///   expiry is swept every 30 min), so it keeps the user it read: the guard defers every rotation
///   that would change that user while the applications log in. Where the guard cannot see them
///   (ROTATOR_IN_USE=off, as for sessions on a reader it cannot list), the password changes under
///   them and the wrapper's own retry (one refused login, a re-read, the login again) hides it.
///
/// Not one login the applications asked for fails.
#[tokio::test]
async fn applications_reading_through_aws_clients_never_fail_a_login_and_a_user_in_use_defers_its_rotation(
) {
    let pair = Pair::new().await;
    // Refresh after 1-2 s (the library picks a random time in [interval/2, interval]); the
    // interval between rotations is more than twice that, as the book's rule says ("How often
    // to rotate").
    let (refresh_s, interval) = (2, "5s");
    let env = [("ROTATOR_MIN_INTERVAL", interval)];
    let clients: Vec<App> = (0..3)
        .map(|i| App::start(&pair, "connect", refresh_s, &format!("orders-api-{i}")))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Phase 1: a scheduler asks every half second; the interval lets a rotation through every 5 s.
    let mut tally = Tally::default();
    let phase_end = Instant::now() + Duration::from_secs(32);
    while Instant::now() < phase_end {
        tally.rotate(&pair, &env);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(tally.rotations >= 4, "{tally:?}");
    assert!(tally.skipped > 0, "{tally:?}");

    // Phase 2: a task that read the credentials once and keeps its connection (ECS `secrets`).
    let holder = App::start(&pair, "hold", 3600, "batch-holder");
    // Connected, so it holds the credentials it read before the rotations below.
    wait_until_connected(&pair, "batch-holder").await;
    let held_user = pair.current().await["username"]
        .as_str()
        .unwrap()
        .to_owned();
    // The next rotation changes the other user; the one after would change the holder's.
    tally
        .one_rotation_then_only_deferrals(&pair, &env, 12, "a running task holds")
        .await;
    let reason = tally.reasons.last().unwrap();
    assert!(
        reason.contains(&format!("user {held_user} has 1 session(s)"))
            && reason.contains("(batch-holder)"),
        "{reason}"
    );

    // The task ends: the rotation goes through at the next request.
    let held = holder.stop();
    wait_until_no_session(&pair, &held_user).await;
    assert_eq!(tally.rotate(&pair, &env), "rotated", "{tally:?}");
    pair.assert_rotated_to(&held_user).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut connections = held["connections"].as_u64().unwrap();
    let mut failed = held["failed"].as_u64().unwrap();
    assert_eq!(failed, 0, "the held connection failed: {held}");
    assert!(held["queries"].as_u64().unwrap() > 10, "{held}");
    for c in clients {
        let seen = c.stop();
        assert!(seen["queries"].as_u64().unwrap() > 50, "{seen}");
        let users = seen["users"].as_object().unwrap();
        assert_eq!(users.len(), 2, "the client followed the rotations: {seen}");
        connections += seen["connections"].as_u64().unwrap();
        failed += seen["failed"].as_u64().unwrap();
        assert_eq!(
            seen["failed"], 0,
            "a cached client failed to log in: {seen}"
        );
    }

    // Phase 3: the driver wrapper. Its applications read AWSCURRENT once and keep that user.
    let wrapped: Vec<App> = (0..2)
        .map(|i| {
            App::start_with(
                Client::Wrapper,
                &pair,
                "connect",
                2,
                &format!("orders-wrapper-{i}"),
            )
        })
        .chain([App::start_with(
            Client::Wrapper,
            &pair,
            "hold",
            2,
            "batch-wrapper",
        )])
        .collect();
    wait_until_connected(&pair, "orders-wrapper-0").await;
    wait_until_connected(&pair, "batch-wrapper").await;
    let kept = pair.current().await["username"]
        .as_str()
        .unwrap()
        .to_owned();
    // The next rotation changes the other user; every one after it would change theirs.
    tally
        .one_rotation_then_only_deferrals(&pair, &env, 10, "the wrapper's applications keep")
        .await;
    // The guard sees a snapshot: the held connection is always in it, the connect-mode
    // applications' short sessions only now and then.
    let reason = tally.reasons.last().unwrap();
    assert!(
        reason.contains(&format!("user {kept} has")) && reason.contains("(batch-wrapper)"),
        "{reason}"
    );

    // Phase 4: a guard that cannot see them. Each rotation changes a password the wrapper's
    // applications still use; the wrapper's retry after the refused login hides it.
    let unguarded = [
        ("ROTATOR_MIN_INTERVAL", interval),
        ("ROTATOR_IN_USE", "off"),
    ];
    let rotations_before = tally.rotations;
    let mut rereads = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.rotations < rotations_before + 2 {
        assert!(
            Instant::now() < deadline,
            "no 2 rotations in 60 s: {tally:?}"
        );
        tally.rotate(&pair, &unguarded);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for app in wrapped {
        let seen = app.stop();
        connections += seen["connections"].as_u64().unwrap();
        failed += seen["failed"].as_u64().unwrap();
        assert_eq!(
            seen["failed"], 0,
            "a wrapper's application failed to log in: {seen}"
        );
        assert!(seen["queries"].as_u64().unwrap() > 10, "{seen}");
        if seen["mode"] == "connect" {
            // The password it kept changed under it: a login was refused, and the wrapper read
            // the secret again (its expiry sweep is 30 min away) and logged in with it.
            assert!(
                seen["secret_reads"].as_u64().unwrap() >= 2,
                "the wrapper never read the secret again: {seen}"
            );
            rereads += seen["secret_reads"].as_u64().unwrap() - 1;
        }
    }
    report(
        "cached_clients",
        &format!(
            "cached clients: rotations={} connections={connections} failed={failed} deferred={} (caching, wrapper)\ncached clients: the wrapper read the secret again {rereads} times after a refused login",
            tally.rotations, tally.deferred
        ),
    );
}

/// The worker meets the in-use guard: the rotation waits, and the request is sent again (same
/// request id, a new message) instead of coming back until the redrive policy moves it to the
/// dead-letter queue. On the old binary the message reached the DLQ after its second receive,
/// with no reason, and the rotation stayed in progress until some later request.
#[tokio::test]
async fn a_worker_waiting_for_the_in_use_guard_sends_the_request_again_and_never_dead_letters_it() {
    let pair = Pair::new().await;
    let queues = pair.queues_with_max_receives(2).await;
    let idle = pair.users[1].clone();
    let held = hold_session(&pair, &idle, &pair.initial_passwords[1], "orders-api").await;
    let (mut worker, log) = pair.spawn_worker(
        &queues,
        &[
            ("ROTATOR_IN_USE", "refuse"),
            ("ROTATOR_RETRY_DELAY", "1s"),
            ("ROTATOR_RETRY_MAX_DELAY", "1s"),
        ],
    );
    queues
        .send(
            &serde_json::json!({"secret_id": pair.app_secret, "request_id": "monthly"}).to_string(),
        )
        .await;
    // Four waits: twice the queue's limit of receives.
    let deadline = Instant::now() + Duration::from_secs(60);
    let deferrals = || {
        log.lock()
            .unwrap()
            .matches("the request was sent again")
            .count()
    };
    while deferrals() < 4 {
        // Keeps the session in use (a statement within the guard's window).
        held.simple_query("SELECT 1").await.unwrap();
        let dead = queues.dead_letters().await;
        assert!(dead.is_empty(), "dead-lettered while waiting: {dead:?}");
        assert!(
            Instant::now() < deadline,
            "{} deferrals in 60 s; log:\n{}",
            deferrals(),
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = pair.status();
    assert_eq!(status["state"], "in_progress", "{status}");
    pair.login(&idle, &pair.initial_passwords[1])
        .await
        .expect("the idle user's password did not change");
    // The session ends: the request, sent again, finishes the rotation it began.
    drop(held);
    wait_until_no_session(&pair, &idle).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pair.status()["state"] != "finished" {
        assert!(
            Instant::now() < deadline,
            "not finished in 60 s; log:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = pair.status();
    assert_eq!(status["request_id"], "monthly", "{status}");
    pair.assert_rotated_to(&idle).await;
    sigterm(&worker);
    let _ = worker.wait();
    assert!(queues.dead_letters().await.is_empty());
    assert_eq!(
        queues.depth(&queues.url).await,
        0,
        "nothing left in the queue"
    );
}
