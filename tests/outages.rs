//! Outages a reading of the engine beside AWS's documented behaviour found, each reproduced
//! against the real binary: one server under two names, a secret scheduled for deletion, a path
//! that accepts and never answers, and clocks that disagree.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Runs `cmd` to its end, or fails the test if it is still running after `bound`.
fn run_within(mut cmd: Command, bound: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the pipes on threads, so a chatty child never blocks on a full pipe.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).unwrap();
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).unwrap();
        b
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let took = started.elapsed();
            let output = Output {
                status,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
            };
            return (output, took);
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("still running after {bound:?}; it never ends:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A second application secret with the same users as the pair's, created from its AWSCURRENT
/// with `change` applied.
async fn copy_of(pair: &Pair, name: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut value = pair.current().await;
    change(&mut value);
    pair.sm
        .create_secret()
        .name(format!("rt-{}/{name}", pair.id))
        .secret_string(value.to_string())
        .send()
        .await
        .unwrap()
        .arn
        .unwrap()
}

/// The other name of the test server: `localhost` for `127.0.0.1`, and the reverse.
fn other_name(host: &str) -> &'static str {
    if host == "127.0.0.1" {
        "localhost"
    } else {
        "127.0.0.1"
    }
}

/// Secret A reaches the server as `127.0.0.1`, secret B as `localhost` (on AWS: a cluster and an
/// instance endpoint, the proxy's and the writer's, a CNAME). After A rotates, B's idle user is
/// A's AWSCURRENT: B must not change its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_under_two_names_is_one_server_and_the_user_in_use_keeps_its_password() {
    let pair = Pair::new().await;
    let host = stack().pg_host.clone();
    let b = copy_of(&pair, "app-b", |v| {
        v["direct_host"] = json!(other_name(&host));
    })
    .await;
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;
    let a_current = pair.current().await;

    let out = pair.run(&["rotate", &b]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "is AWSCURRENT of secret {}",
            pair.arn_of(&pair.app_secret).await
        )),
        "{}",
        text(&out)
    );
    pair.login_with(&a_current)
        .await
        .expect("A's AWSCURRENT still logs in");
    pair.login_via_proxy(&a_current)
        .await
        .expect("A's AWSCURRENT still logs in through the proxy");

    // `check` names the server by what it says it is, the same under both names.
    let identity = |out: &Output| {
        let report: Value = serde_json::from_slice(&out.stdout).expect("check --json");
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "server identity")
            .unwrap_or_else(|| panic!("no server identity in {report}"))["detail"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let a = pair.run(&["check", &pair.app_secret, "--json"]);
    let b = pair.run(&["check", &b, "--json"]);
    let (a, b) = (identity(&a), identity(&b));
    assert!(a.contains("postgresql system identifier"), "{a}");
    assert_eq!(a, b, "one server, one identity");
}

/// S_old is replaced by S_new with the same users (a secret cannot be renamed), then scheduled
/// for deletion. S_old's marks and claim must not block S_new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_scheduled_for_deletion_uses_nobody_and_its_marks_are_cleared() {
    let pair = Pair::new().await;
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    let s_new = copy_of(&pair, "app-new", |_| {}).await;
    pair.sm
        .delete_secret()
        .secret_id(&pair.app_secret)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();

    let check = pair.run(&["check", &s_new]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("scheduled for deletion"),
        "{}",
        text(&check)
    );
    // Once to the user S_old marked as in use, once to the one S_old's rotation claimed.
    for user in [&pair.users[0], &pair.users[1]] {
        let out = pair.run(&["rotate", &s_new]);
        assert!(out.status.success(), "{}", text(&out));
        let current = pair.secret_at(&s_new, "AWSCURRENT").await.unwrap();
        assert_eq!(&current["username"], user);
        pair.login_with(&current)
            .await
            .expect("S_new's AWSCURRENT logs in");
    }
    let check = pair.run(&["check", &s_new]);
    assert!(
        !String::from_utf8_lossy(&check.stdout).contains("scheduled for deletion"),
        "the marks were cleared as they were met: {}",
        text(&check)
    );
}

/// A secret that marks a user and cannot be read (a key policy, a KMS key): the rotation is
/// refused, naming it and the command that clears its mark, with nothing changed; once cleared,
/// the rotation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_secret_that_marks_a_user_refuses_the_rotation_with_the_command_that_clears_it(
) {
    let pair = Pair::new().await;
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    let old = pair.arn_of(&pair.app_secret).await;
    let s_new = copy_of(&pair, "app-new", |_| {}).await;
    let proxy = refusing_proxy().await;
    proxy.refusals.refuse(
        "secretsmanager.GetSecretValue",
        &old,
        "AccessDeniedException",
        "User is not authorized to perform: secretsmanager:GetSecretValue",
    );
    let via = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            pair.command(args)
                .env("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr))
                .output()
                .unwrap()
        })
    };
    // Labelled versions: a refused rotation's AWSPENDING is removed again, and a version without
    // a label is inert (Secrets Manager deletes it in time).
    let labelled = |v: Vec<(String, Vec<String>)>| -> Vec<(String, Vec<String>)> {
        v.into_iter().filter(|(_, l)| !l.is_empty()).collect()
    };
    let before = labelled(pair.versions(&s_new).await);
    let out = via(&["rotate", &s_new]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&old) && err.contains(&format!("rds-rotator forget {old}")),
        "{}",
        text(&out)
    );
    assert_eq!(
        labelled(pair.versions(&s_new).await),
        before,
        "nothing changed"
    );
    let check = via(&["check", &s_new]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(&format!("rds-rotator forget {old}")),
        "{}",
        text(&check)
    );

    let out = via(&["forget", &old]);
    assert!(out.status.success(), "{}", text(&out));
    let out = via(&["rotate", &s_new]);
    assert!(out.status.success(), "{}", text(&out));
}

/// The proxy endpoint accepts TCP and never answers: the test step's deadline bounds the wall
/// time, the rotation says it will be resumed, and AWSCURRENT stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_path_that_accepts_and_never_answers_ends_the_rotation_at_its_deadline() {
    let pair = Pair::new().await;
    let silent = silent_port();
    pair.edit_app_secret(|app| app["database_port"] = json!(silent.to_string()))
        .await;
    let (version, value) = pair.current_state().await;
    let mut cmd = pair.command(&["rotate", &pair.app_secret]);
    cmd.env("ROTATOR_TEST_DEADLINE", "5s");
    let (out, took) = run_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        took < Duration::from_secs(5 + 10),
        "took {took:?}, more than the 5 s deadline and its 10 s margin"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resume"),
        "{}",
        text(&out)
    );
    pair.assert_current_unchanged(&version, &value).await;
    assert_eq!(pair.status()["state"], "in_progress");
}

/// The database's own endpoint (direct_host) accepts and never answers: every login is bounded,
/// and the rotation ends, to be resumed, with AWSCURRENT where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_path_that_accepts_and_never_answers_ends_the_rotation() {
    let pair = Pair::new().await;
    let silent = silent_port();
    pair.edit_app_secret(|app| app["direct_port"] = json!(silent))
        .await;
    let (version, value) = pair.current_state().await;
    let mut cmd = pair.command(&["rotate", &pair.app_secret]);
    cmd.env("ROTATOR_DB_TIMEOUT", "2s");
    let (out, took) = run_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer within 2s"),
        "{}",
        text(&out)
    );
    pair.assert_current_unchanged(&version, &value).await;
}

/// The AWS endpoint accepts and never answers: every call is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_endpoint_that_accepts_and_never_answers_ends_the_rotation() {
    let pair = Pair::new().await;
    let silent = silent_port();
    let (version, value) = pair.current_state().await;
    let mut cmd = pair.command(&["rotate", &pair.app_secret]);
    cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{silent}"))
        .env("ROTATOR_AWS_TIMEOUT", "2s");
    let (out, took) = run_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("timed out")
            && err.contains("after 2s")
            && err.contains("run again to resume"),
        "{}",
        text(&out)
    );
    pair.assert_current_unchanged(&version, &value).await;
}

/// `cmd` with its wall clock shifted by `offset` (libfaketime), its monotonic clock left alone.
fn skewed(cmd: Command, offset: &str) -> Command {
    let faketime = "/usr/bin/faketime";
    assert!(
        std::path::Path::new(faketime).exists(),
        "Debian's faketime is not installed: scripts/local-stack installs it"
    );
    let mut out = Command::new(faketime);
    out.arg("-f")
        .arg(offset)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    out.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    // libfaketime works by LD_PRELOAD: make sure it shifts a program's clock on this machine,
    // or every skewed test below would pass on agreeing clocks.
    let shifted = Command::new(faketime)
        .args(["-f", offset, "date", "+%s"])
        .output()
        .unwrap();
    let shifted: i64 = String::from_utf8_lossy(&shifted.stdout)
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let want: i64 = offset.trim_end_matches('s').parse().unwrap();
    assert!(
        (shifted - now - want).abs() <= 2,
        "faketime {offset} gave {} s",
        shifted - now
    );
    out
}

/// The lease's expiry as its holder wrote it (ms, by the holder's clock), minus now by ours.
async fn lease_expiry_ahead_ms(pair: &Pair) -> i64 {
    let item = aws_sdk_dynamodb::Client::new(&aws().await)
        .get_item()
        .table_name(&pair.table)
        .key(
            rds_rotator::aws::dynamo::KEY,
            aws_sdk_dynamodb::types::AttributeValue::S(pair.arn_of(&pair.app_secret).await),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the holder's item");
    let expires: i64 = item["lease_expires_at"].as_n().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    expires - now
}

/// A rotation that holds its lease (renewing it every 2 s) for about 8 s, in the test step.
fn holder(pair: &Pair, offset: Option<&str>) -> (Child, std::thread::JoinHandle<String>) {
    let mut cmd = pair.command(&["rotate", &pair.app_secret]);
    cmd.env("ROTATOR_LEASE_DURATION", "6s");
    let cmd = match offset {
        Some(o) => skewed(cmd, o),
        None => cmd,
    };
    pausing_at(cmd, "before:test", 8000)
}

fn assert_holder_finished(mut child: Child, lines: std::thread::JoinHandle<String>) {
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let lines = lines.join().unwrap();
    assert!(status.success(), "the holder failed: {lines}");
    assert!(!lines.contains("lease was lost"), "{lines}");
}

async fn a_live_lease_is_never_taken_whatever_the_clocks(
    holder_offset: Option<&str>,
    taker_offset: Option<&str>,
) {
    let pair = Pair::new().await;
    let (child, lines) = holder(&pair, holder_offset);
    if let Some(offset) = holder_offset {
        // The binary itself runs skewed: its lease's expiry (the 6 s lease and the 2 s statement
        // bound ahead, by its clock) is off by the offset on ours.
        let want = offset.trim_end_matches('s').parse::<i64>().unwrap() * 1000 + 8000;
        let ahead = lease_expiry_ahead_ms(&pair).await;
        assert!(
            (ahead - want).abs() < 5000,
            "the holder's lease expires {ahead} ms ahead of our clock, not about {want}"
        );
    }
    let mut taker = pair.command(&["rotate", &pair.app_secret, "--lease-wait", "40s"]);
    taker.env("ROTATOR_LEASE_DURATION", "6s");
    let taker = match taker_offset {
        Some(o) => skewed(taker, o),
        None => taker,
    };
    let (out, _) = tokio::task::block_in_place(|| run_within(taker, Duration::from_secs(90)));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("resuming rotation"),
        "the taker resumed the holder's rotation under it: {}",
        text(&out)
    );
    assert_holder_finished(child, lines);
    pair.assert_rotated_to(&pair.users[0]).await;
    assert_eq!(pair.violations(true).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taker_whose_clock_runs_45s_ahead_waits_for_a_live_lease() {
    a_live_lease_is_never_taken_whatever_the_clocks(None, Some("+45s")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_clock_runs_45s_behind_keeps_its_lease() {
    a_live_lease_is_never_taken_whatever_the_clocks(Some("-45s"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_from_a_laptop_whose_clock_runs_45s_ahead_does_not_take_a_live_lease() {
    let pair = Pair::new().await;
    let (child, lines) = holder(&pair, None);
    let abort = skewed(
        pair.command(&[
            "abort",
            &pair.app_secret,
            "--reason",
            "test",
            "--lease-wait",
            "2s",
        ]),
        "+45s",
    );
    let (out, _) = tokio::task::block_in_place(|| run_within(abort, Duration::from_secs(60)));
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is held by"),
        "{}",
        text(&out)
    );
    assert_holder_finished(child, lines);
    pair.assert_rotated_to(&pair.users[1]).await;
}

/// A password change that waits for a lock (another session altering the same role) and that
/// the rotation gives up on at its bound must not land later, when the lock goes: by then
/// another process may hold the lease and have set another password. The server's own
/// statement bound cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_the_rotation_gave_up_on_never_lands_later() {
    let pair = Pair::new().await;
    let idle = pair.users[1].clone();
    // A session that holds the idle role's row: ALTER ROLE waits for it.
    let blocker = pg_connect(&pair.dbname, &stack().admin_user, &stack().admin_password)
        .await
        .unwrap();
    blocker
        .batch_execute(&format!("BEGIN; ALTER ROLE {idle} CONNECTION LIMIT 50"))
        .await
        .unwrap();
    let mut cmd = pair.command(&["rotate", &pair.app_secret]);
    cmd.env("ROTATOR_DB_TIMEOUT", "2s");
    let (out, _) = tokio::task::block_in_place(|| run_within(cmd, Duration::from_secs(60)));
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let pending = pair
        .secret_at(&pair.app_secret, "AWSPENDING")
        .await
        .expect("the rotation stays in progress with its AWSPENDING");
    // The lock goes; whatever still waited for it would run now.
    blocker.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pair.login(&idle, &pair.initial_passwords[1])
        .await
        .expect("the idle user keeps the password it had");
    assert!(
        pair.login_with(&pending).await.is_err(),
        "a password change the rotation gave up on landed after it"
    );
}
