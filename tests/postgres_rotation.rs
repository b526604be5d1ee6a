//! The rotation engine end to end: the built binary against real PostgreSQL and moto.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn four_rotations_alternate_users_and_keep_both_generations_working() {
    let pair = Pair::new().await;
    let expected = [
        &pair.users[1],
        &pair.users[0],
        &pair.users[1],
        &pair.users[0],
    ];
    let mut ids = Vec::new();
    for (i, user) in expected.into_iter().enumerate() {
        let out = pair.rotate();
        assert!(
            out.status.success(),
            "rotation {} failed: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        pair.assert_rotated_to(user).await;
        let status = pair.status();
        assert_eq!(status["state"], "finished");
        assert_eq!(status["step"], "done");
        assert_eq!(status["target_user"], user.as_str());
        assert_eq!(
            status["rotation_id"].as_str(),
            pair.version_with(&pair.app_secret, "AWSCURRENT")
                .await
                .as_deref()
        );
        ids.push(status["rotation_id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 4, "each rotation has its own id");
}

#[tokio::test]
async fn the_user_in_use_keeps_its_password_while_the_idle_user_changes() {
    let pair = Pair::new().await;
    let out = pair.rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The old Python tool changed the current user's password; ours must not.
    pair.login(&pair.users[0], &pair.initial_passwords[0])
        .await
        .expect("the user that was current still logs in with its old password");
    assert!(
        pair.login(&pair.users[1], &pair.initial_passwords[1])
            .await
            .is_err(),
        "the idle user's old password still works: its password was not changed"
    );
}

#[tokio::test]
async fn a_rotate_killed_part_way_resumes_with_the_same_rotation_id() {
    let pair = Pair::new().await;
    let points = [
        "after:create_pending",
        "inside:set_password",
        "inside:update_proxy",
        "after:test",
        "after:finish",
    ];
    let mut user = 1;
    for point in points {
        let child = pair.rotate_until(point, "2s");
        let before = pair.status();
        assert_eq!(before["state"], "in_progress", "at {point}");
        kill(child);
        let out = pair
            .command(&["rotate", &pair.app_secret, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resume after a kill at {point} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["resumed"], true, "at {point}");
        assert_eq!(result["rotation_id"], before["rotation_id"], "at {point}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("holds the lease"),
            "rotate did not say it waited for the dead holder's lease"
        );
        let after = pair.status();
        assert_eq!(after["rotation_id"], before["rotation_id"]);
        assert_eq!(after["state"], "finished");
        assert!(after["attempts"].as_u64().unwrap() >= 2);
        pair.assert_rotated_to(&pair.users[user]).await;
        user = 1 - user;
    }
}

#[tokio::test]
async fn the_generated_password_never_reaches_the_server_log() {
    let pair = Pair::new().await;
    let out = pair.rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = pair.current().await["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = std::fs::read_to_string(&stack().pg_log).expect("the server log is readable");
    // The log does record the statement (log_statement=all), so the check below can fail.
    let alter = format!(
        "ALTER ROLE \"{}\" WITH PASSWORD 'SCRAM-SHA-256$",
        pair.users[1]
    );
    assert!(
        log.contains(&alter),
        "the server log has no ALTER ROLE for {}: is log_statement=all set?",
        pair.users[1]
    );
    assert!(
        !log.contains(&password),
        "the plaintext password is in the server log"
    );
}

#[tokio::test]
async fn bad_input_gets_one_clear_error_and_changes_nothing() {
    let pair = Pair::new().await;
    let good = pair.current().await;
    let s = stack();
    let mut cases = vec![];
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("database_host");
    cases.push(("a missing key", missing, "database_host"));
    let mut wrong_type = good.clone();
    wrong_type["database_port"] = json!(true);
    cases.push(("a wrong type", wrong_type, "database_port"));
    let mut stranger = good.clone();
    stranger["username"] = json!("mallory");
    cases.push((
        "a user not in rotation_usernames",
        stranger,
        "not in rotation_usernames",
    ));
    let mut sql = good.clone();
    sql["rotation_usernames"] = json!([pair.users[0], "x\"; DROP ROLE postgres; --"]);
    cases.push(("a user name that looks like SQL", sql, "is invalid"));
    let _ = s;

    for (what, value, expect) in cases {
        let name = format!("rt-{}/bad-{}", pair.id, suffix());
        pair.sm
            .create_secret()
            .name(&name)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap();
        let versions = pair.versions(&name).await;
        let out = pair.run(&["rotate", &name]);
        assert_eq!(out.status.code(), Some(1), "{what}: exit status");
        let lines = stderr_lines(&out);
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected one line on stderr, got {lines:?}"
        );
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expect),
            "{what}: {}",
            lines[0]
        );
        assert_eq!(
            pair.versions(&name).await,
            versions,
            "{what}: a secret version was written"
        );
        let status = pair.run(&["status", &name, "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(status["state"], "failed", "{what}: the failure is recorded");
    }

    let out = pair.run(&["rotate", &format!("rt-{}/no-such-secret", pair.id)]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("does not exist"), "{}", lines[0]);

    // Nothing changed in the database: both users still log in with their first passwords.
    for (user, pw) in pair.users.iter().zip(&pair.initial_passwords) {
        pair.login(user, pw)
            .await
            .expect("a password was changed by bad input");
    }
    assert_eq!(pair.versions(&pair.app_secret).await.len(), 1);
}

#[tokio::test]
async fn awscurrent_moved_by_someone_else_is_never_overwritten() {
    let pair = Pair::new().await;
    let child = pair.rotate_until("after:test", "2s");
    kill(child);
    // Someone puts a new AWSCURRENT while the rotation is stopped.
    let mut manual = pair.current().await;
    manual["note"] = json!("changed by hand");
    pair.sm
        .put_secret_value()
        .secret_id(&pair.app_secret)
        .secret_string(manual.to_string())
        .send()
        .await
        .unwrap();
    let manual_version = pair.version_with(&pair.app_secret, "AWSCURRENT").await;
    let out = pair.rotate();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AWSCURRENT") && stderr.contains("refusing to overwrite"),
        "{stderr}"
    );
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSCURRENT").await,
        manual_version
    );
    assert_eq!(pair.status()["state"], "failed");
    // The next run starts a fresh rotation from the new AWSCURRENT and succeeds.
    let out = pair.rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.assert_rotated_to(&pair.users[1]).await;
}

#[tokio::test]
async fn setup_is_idempotent_and_status_of_an_unrotated_secret_says_so() {
    let pair = Pair::new().await;
    let again = pair.run(&["setup"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists"));
    let status = pair.run(&["status", &pair.app_secret, "--json"]);
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stderr).contains("no rotation has been recorded"));
}

#[tokio::test]
async fn a_second_rotate_waits_for_the_running_one_and_then_rotates_again() {
    let pair = Pair::new().await;
    let child = pair.rotate_until("before:test", "2s");
    // While it holds the lease, a rotate with no patience gives up with a temporary failure.
    let out = pair.run(&["rotate", &pair.app_secret, "--lease-wait", "0s"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("held by"));
    kill(child);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = pair.rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.assert_rotated_to(&pair.users[1]).await;
}

#[tokio::test]
async fn without_direct_host_the_password_is_changed_through_the_proxy() {
    let pair = Pair::with(Options {
        direct: false,
        ..Options::default()
    })
    .await;
    assert!(pair.current().await.get("direct_host").is_none());
    for user in [&pair.users[1], &pair.users[0]] {
        let out = pair.rotate();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        pair.assert_rotated_to(user).await;
    }
}

#[tokio::test]
async fn the_proxy_stand_in_answers_like_rds_proxy() {
    let pair = Pair::new().await;
    let current = pair.current().await;
    pair.login_via_proxy(&current)
        .await
        .expect("the current credentials log in through the proxy");
    let mut wrong = current.clone();
    wrong["password"] = json!("not-the-password");
    let err = pair.login_via_proxy(&wrong).await.unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    let stranger = json!({"username": "nobody_here", "password": "x"});
    let err = pair.login_via_proxy(&stranger).await.unwrap_err();
    assert!(
        err.contains("This RDS proxy has no credentials for the role nobody_here"),
        "{err}"
    );
}

/// The call budget of a rotation that nothing interrupts, read from `status --json`: the calls of
/// the process that wrote the record, up to its last write. The third rotation of a secret: the
/// first two also mark the user they find in use (one DynamoDB write each), which the record
/// then remembers.
#[tokio::test]
async fn an_uninterrupted_rotation_stays_within_its_call_budget() {
    let pair = Pair::new().await;
    // The application's path straight to the database, so that no proxy refresh lag adds probes.
    let mut app = pair.current().await;
    app["database_host"] = json!(stack().pg_host);
    app["database_port"] = json!(stack().pg_port.to_string());
    pair.sm
        .put_secret_value()
        .secret_id(&pair.app_secret)
        .secret_string(app.to_string())
        .send()
        .await
        .unwrap();
    let mut writes_before = Vec::new();
    for round in 0..3 {
        let out = pair.rotate();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        writes_before.push(dynamo_writes(&pair.status()["calls"]));
        // The rotation did not go through the stand-in, so it may not have re-read its secrets.
        pair.proxy.refresh_now().await;
        pair.assert_rotated_to(&pair.users[(round + 1) % 2]).await;
    }
    let calls = pair.status()["calls"].clone();
    let count = |prefix: &str| count_calls(&calls, prefix);
    let sm = count("SecretsManager.");
    // The last record write, which also releases the lease, comes after the counts were saved.
    let writes = dynamo_writes(&calls) + 1;
    let sm_writes =
        count("SecretsManager.PutSecretValue") + count("SecretsManager.UpdateSecretVersionStage");
    let pg = count("postgres.connect");
    report(
        "call-budget",
        &format!(
            "call budget: {sm} Secrets Manager calls, {writes} DynamoDB writes, {pg} PostgreSQL connections per rotation ({} AWS calls, {sm_writes} of them Secrets Manager writes: {calls})",
            sm + writes
        ),
    );
    // Reads: AWSCURRENT and the idle user's proxy secret, each with DescribeSecret beside it
    // (Secrets Manager's own rotation, where AWSPENDING is), and DescribeSecret beside the proxy
    // secret's CAS (AWSPENDING still ours, for finish's CAS). Writes: the pending version, the
    // proxy secret's staged version and its CAS, and AWSCURRENT's CAS. AWSPENDING stays on the
    // new AWSCURRENT (Secrets Manager's rotation is off).
    assert_eq!(count("SecretsManager.GetSecretValue"), 2, "{calls}");
    assert_eq!(count("SecretsManager.DescribeSecret"), 3, "{calls}");
    assert_eq!(count("SecretsManager.PutSecretValue"), 2, "{calls}");
    assert_eq!(
        count("SecretsManager.UpdateSecretVersionStage"),
        2,
        "{calls}"
    );
    assert!(
        sm_writes <= 4,
        "{sm_writes} Secrets Manager writes: {calls}"
    );
    // The lease with the new record; the claim on the idle user (beside the pending version);
    // the last, with the release. The mark on the user in use was made by the first rotation
    // that found it in use: the first two wrote one more each. No reads.
    assert_eq!(writes, 3, "{writes} DynamoDB writes: {calls}");
    assert_eq!(
        writes_before[..2].iter().map(|w| w + 1).collect::<Vec<_>>(),
        [4, 4],
        "the first two rotations mark the user in use"
    );
    assert_eq!(count("DynamoDB.GetItem"), 0, "{calls}");
    assert!(sm + writes <= 12, "{} AWS calls: {calls}", sm + writes);
    assert!(pg <= 2, "{pg} PostgreSQL connections: {calls}");
}

/// The calls in `status --json`'s `calls` whose names start with `prefix`.
fn count_calls(calls: &serde_json::Value, prefix: &str) -> u64 {
    calls
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

/// DynamoDB writes in `status --json`'s `calls` (the last one, saving them, not counted).
fn dynamo_writes(calls: &serde_json::Value) -> u64 {
    count_calls(calls, "DynamoDB.UpdateItem") + count_calls(calls, "DynamoDB.PutItem")
}

/// Two `rotate` commands at once: the second waits for the first's lease, then rotates again from
/// what the first left (it must not plan from the labels it read before waiting).
#[tokio::test]
async fn a_rotate_that_waited_for_another_rotates_again_from_its_result() {
    let pair = Pair::new().await;
    let mut first = pair
        .command(&["rotate", &pair.app_secret])
        .env("ROTATOR_TEST_FAILPOINTS", "before:test=sleep(1500)")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        "the first rotation to begin",
        Duration::from_secs(20),
        || async {
            pair.try_status()
                .is_some_and(|s| s["state"] == "in_progress")
        },
    )
    .await;
    let second = pair.rotate();
    let first_status = first.wait().unwrap();
    assert!(first_status.success(), "the first rotate failed");
    assert!(
        second.status.success(),
        "the second rotate failed: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("another process holds the lease"));
    pair.assert_rotated_to(&pair.users[0]).await;
}
