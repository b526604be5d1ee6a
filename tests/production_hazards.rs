//! What production has and the lab did not: denied writes, Secrets Manager's own rotation left
//! attached, other writers on the same secrets, expiring credentials, and rotations an operator
//! has to end. Each test sets that up against the real stack (refusals through the AWS fault
//! proxy, in AWS's own error shapes) and checks that no password is ever left unknown.

mod common;

use std::process::{Child, Output};
use std::time::Duration;

use common::*;
use serde_json::json;

/// What an operator runs to clear another rotator's AWSPENDING, as the refusal says.
async fn remove_pending(pair: &Pair, version: &str) {
    pair.sm
        .update_secret_version_stage()
        .secret_id(&pair.app_secret)
        .version_stage("AWSPENDING")
        .remove_from_version_id(version)
        .send()
        .await
        .unwrap();
}

/// `rotate` through the fault proxy.
fn rotate_via(pair: &Pair, proxy: &aws_fault_proxy::FaultProxy) -> Output {
    tokio::task::block_in_place(|| {
        pair.command(&["rotate", &pair.app_secret])
            .env("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr))
            .output()
            .unwrap()
    })
}

/// Starts `rotate` with `failpoint=sleep(ms)` and returns once it is there, still running.
fn rotate_pausing_at(
    pair: &Pair,
    failpoint: &str,
    ms: u64,
) -> (Child, std::thread::JoinHandle<String>) {
    common::pausing_at(pair.command(&["rotate", &pair.app_secret]), failpoint, ms)
}

async fn a_refused_proxy_secret_write_is_recovered_by_the_next_rotation(code: &str) {
    let pair = Pair::new().await;
    let faults = refusing_proxy().await;
    let idle_proxy = pair.proxy_secrets[1].clone();
    let (version, value) = (
        pair.version_with(&pair.app_secret, "AWSCURRENT").await,
        pair.current().await,
    );
    // The request naming that secret (the application secret's value names it too).
    faults.refusals.refuse(
        "secretsmanager.PutSecretValue",
        &format!("\"SecretId\":\"{idle_proxy}\""),
        code,
        "User is not authorized to perform secretsmanager:PutSecretValue (injected)",
    );
    let out = rotate_via(&pair, &faults);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        faults
            .refusals
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let status = pair.status();
    assert_eq!(
        (&status["state"], &status["step"]),
        (&json!("failed"), &json!("update_proxy")),
        "{status}"
    );
    pair.assert_current_unchanged(&version, &value).await;
    // The idle user's password changed, and a version of the secret still knows it.
    assert_eq!(pair.violations(false).await, Vec::<String>::new());
    let check = pair.run(&["check", &pair.app_secret]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.lines().any(|l| l.contains("ok")
            && l.contains("idle user")
            && l.contains("unfinished rotation")),
        "check knows the idle user's password: {report}"
    );

    faults.refusals.lift();
    let out = rotate_via(&pair, &faults);
    assert!(out.status.success(), "the next rotation: {}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;
    let proxy = pair.secret_at(&idle_proxy, "AWSCURRENT").await.unwrap();
    pair.login_with(&proxy)
        .await
        .expect("the idle user's proxy secret holds its new password");
    assert_eq!(pair.violations(true).await, Vec::<String>::new());
    // And the rotations go on as usual.
    let out = rotate_via(&pair, &faults);
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_proxy_secret_write_fails_and_the_next_rotation_succeeds_without_a_master_secret()
{
    a_refused_proxy_secret_write_is_recovered_by_the_next_rotation("AccessDeniedException").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_refusal_of_the_proxy_secret_write_is_recovered_the_same_way() {
    a_refused_proxy_secret_write_is_recovered_by_the_next_rotation("EncryptionFailure").await;
}

/// Secrets Manager's own rotation, as the tool this replaces or AWS's rotation functions leave
/// it: `check` fails, `rotate` refuses and changes nothing, and says what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_rotation_left_enabled_is_refused_by_check_and_rotate() {
    let pair = Pair::new().await;
    let value = pair.current().await;
    // Attached, with a schedule; moto runs no function, but it labels a new AWSPENDING.
    attach_managed_rotation(&pair.sm, &pair.app_secret).await;
    let described = pair
        .sm
        .describe_secret()
        .secret_id(&pair.app_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.rotation_enabled(),
        Some(true),
        "the stack reports RotationEnabled"
    );
    let versions = pair.versions(&pair.app_secret).await;

    let check = pair.run(&["check", &pair.app_secret]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        report.lines().any(|l| l.contains("FAIL")
            && l.contains("managed rotation")
            && l.contains("cancel-rotate-secret")),
        "{report}"
    );

    let out = pair.rotate();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cancel-rotate-secret"), "{err}");
    assert_eq!(
        pair.versions(&pair.app_secret).await,
        versions,
        "labels moved"
    );
    assert_eq!(pair.current().await, value);
    for (user, pw) in pair.users.iter().zip(&pair.initial_passwords) {
        pair.login(user, pw)
            .await
            .unwrap_or_else(|e| panic!("{user}'s password changed: {e}"));
    }
}

/// With the rotation cancelled but another rotator's AWSPENDING left behind, a rotation still does
/// not begin; once the label is removed, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awspending_that_no_rotation_of_ours_made_is_refused_until_removed() {
    let pair = Pair::new().await;
    let mut other = pair.current().await;
    other["password"] = json!("set-by-another-rotator");
    let foreign = pair
        .sm
        .put_secret_value()
        .secret_id(&pair.app_secret)
        .secret_string(other.to_string())
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    let check = pair.run(&["check", &pair.app_secret]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains(&foreign));
    let out = pair.rotate();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&foreign),
        "{}",
        text(&out)
    );
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        Some(foreign.clone())
    );
    remove_pending(&pair, &foreign).await;
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;
}

/// A finished rotation leaves AWSPENDING on the version it made AWSCURRENT (one Secrets Manager
/// write less). Edits strand it on an older version, and a rotation refused in between (the
/// first edit was bad) writes a record of its own: the next rotation still takes the label over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awspending_left_by_a_finished_rotation_and_stranded_by_edits_is_taken_over() {
    let pair = Pair::new().await;
    assert_ok(&pair.rotate());
    let finished = pair.version_with(&pair.app_secret, "AWSCURRENT").await;
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        finished,
        "AWSPENDING stays on the new AWSCURRENT"
    );
    let good = pair.current().await;
    let edit = |value: String| {
        pair.sm
            .put_secret_value()
            .secret_id(&pair.app_secret)
            .secret_string(value)
            .send()
    };
    edit("not json".to_owned()).await.unwrap();
    let out = pair.rotate();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(pair.status()["state"], "failed");
    edit(good.to_string()).await.unwrap();
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        finished,
        "stranded on the finished rotation's version"
    );
    let check = pair.run(&["check", &pair.app_secret]);
    assert!(check.status.success(), "{}", text(&check));
    assert_ok(&pair.rotate());
    pair.assert_rotated_to(&pair.users[0]).await;
}

/// Another rotator takes AWSPENDING while ours tests its credentials: finish must not move
/// AWSCURRENT to a version whose user may be getting another password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awspending_taken_by_another_rotator_before_finish_stops_the_rotation() {
    let pair = Pair::new().await;
    let version = pair.version_with(&pair.app_secret, "AWSCURRENT").await;
    let value = pair.current().await;
    let (mut child, lines) = rotate_pausing_at(&pair, "before:finish", 4000);
    let mut other = value.clone();
    other["username"] = json!(pair.users[1]);
    other["password"] = json!("another-rotators-password");
    pair.sm
        .put_secret_value()
        .secret_id(&pair.app_secret)
        .secret_string(other.to_string())
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = lines.join().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("AWSPENDING"), "{err}");
    pair.assert_current_unchanged(&version, &value).await;
    assert_eq!(pair.status()["state"], "failed");
}

/// Someone else writes the idle user's proxy secret after the rotation planned: the proxy write
/// is a compare-and-swap on the version planned against, so theirs is not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_secret_changed_since_planning_is_not_overwritten() {
    let pair = Pair::new().await;
    let version = pair.version_with(&pair.app_secret, "AWSCURRENT").await;
    let value = pair.current().await;
    let idle_proxy = pair.proxy_secrets[1].clone();
    let (mut child, lines) = rotate_pausing_at(&pair, "before:update_proxy", 4000);
    let theirs = json!({"username": pair.users[1], "password": "written-by-someone-else"});
    let their_version = pair
        .sm
        .put_secret_value()
        .secret_id(&idle_proxy)
        .secret_string(theirs.to_string())
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = lines.join().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not overwriting"), "{err}");
    assert_eq!(
        pair.version_with(&idle_proxy, "AWSCURRENT").await,
        Some(their_version)
    );
    pair.assert_current_unchanged(&version, &value).await;
    // The idle user's new password is still known: the failed rotation's pending version.
    assert_eq!(pair.violations(false).await, Vec::<String>::new());
}

/// `UpdateSecretVersionStage` on the application secret answers `code` until lifted: the
/// rotation exits 75 with its record in progress, then resumes and finishes.
async fn a_refused_awscurrent_move_is_retried(code: &str, message: &str) {
    let pair = Pair::new().await;
    let faults = refusing_proxy().await;
    faults.refusals.refuse(
        "secretsmanager.UpdateSecretVersionStage",
        &format!("\"SecretId\":\"{}\"", pair.arn_of(&pair.app_secret).await),
        code,
        message,
    );
    let out = rotate_via(&pair, &faults);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("moved from"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.status()["state"], "in_progress");
    faults.refusals.lift();
    let out = rotate_via(&pair, &faults);
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;
}

/// The credentials of the worker's role expire while it works (ECS renews them): not a reason to
/// give up on the rotation, or to send it to the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_aws_credentials_are_retryable_and_the_rotation_resumes() {
    a_refused_awscurrent_move_is_retried(
        "ExpiredTokenException",
        "The security token included in the request is expired",
    )
    .await;
}

/// A compare-and-swap refused while AWSCURRENT is still where we expected it is no race: it is
/// retried, not reported as "AWSCURRENT moved from X to X".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cas_on_an_unmoved_awscurrent_is_retryable() {
    a_refused_awscurrent_move_is_retried(
        "InvalidParameterException",
        "The request was refused (injected)",
    )
    .await;
}

/// A version under this rotation's own proxy token that holds another value was written by
/// someone else: the rotation stops instead of taking it for its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_under_our_token_with_another_value_stops_the_rotation() {
    let pair = Pair::new().await;
    let idle_proxy = pair.proxy_secrets[1].clone();
    // Paused before the step that writes under that token: set_password stages the proxy
    // secret's version beside the database's change.
    let (mut child, lines) = rotate_pausing_at(&pair, "before:set_password", 4000);
    let rotation_id = pair.status()["rotation_id"].as_str().unwrap().to_owned();
    put_under_proxy_token(&pair, &idle_proxy, &rotation_id).await;
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = lines.join().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("already exists with another value"), "{err}");
    assert_eq!(
        pair.secret_at(&idle_proxy, "AWSCURRENT").await.unwrap()["password"],
        json!(pair.initial_passwords[1])
    );
    assert_eq!(pair.violations(false).await, Vec::<String>::new());
}

/// The same on a resumed run: the first process dies before set_password, someone writes under
/// the rotation's proxy token meanwhile, and the rerun (which looks before it writes) finds that
/// version. It stops instead of moving the proxy secret's AWSCURRENT there. (Before, a resumed
/// update_proxy trusted any version under its token and moved AWSCURRENT to it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_rotation_never_moves_the_proxy_secret_to_a_foreign_version_under_its_token() {
    let pair = Pair::new().await;
    let idle_proxy = pair.proxy_secrets[1].clone();
    let mut child = pair.rotate_until("before:set_password", "2s");
    let rotation_id = pair.status()["rotation_id"].as_str().unwrap().to_owned();
    child.kill().unwrap();
    child.wait().unwrap();
    put_under_proxy_token(&pair, &idle_proxy, &rotation_id).await;
    // The killed holder's lease runs out (the harness's lease is short), then the rerun resumes.
    let out = eventually_rotate(&pair).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("already exists with another value"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.status()["rotation_id"], json!(rotation_id));
    assert_ne!(
        pair.secret_at(&idle_proxy, "AWSCURRENT").await.unwrap()["password"],
        json!("not-ours"),
        "the foreign version became the proxy secret's AWSCURRENT"
    );
    assert_eq!(pair.violations(false).await, Vec::<String>::new());
}

/// Someone else's version of the idle user's proxy secret, under the rotation's own proxy token.
async fn put_under_proxy_token(pair: &Pair, idle_proxy: &str, rotation_id: &str) {
    pair.sm
        .put_secret_value()
        .secret_id(idle_proxy)
        .client_request_token(rds_rotator::rotation::proxy_token(rotation_id))
        .secret_string(json!({"username": pair.users[1], "password": "not-ours"}).to_string())
        .version_stages("SOMEONE_ELSE")
        .send()
        .await
        .unwrap();
}

/// `rotate` until it gets past a lease a killed process left (exit 75 while it waits).
async fn eventually_rotate(pair: &Pair) -> std::process::Output {
    for _ in 0..40 {
        let out = pair.rotate();
        if out.status.code() != Some(75) {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the killed process's lease never ran out");
}

/// An operator ends a rotation that stopped right after the password changed: AWSPENDING goes,
/// the record says aborted with the reason, and the next rotation (no master secret) succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_ends_a_stuck_rotation_and_the_next_one_succeeds_without_a_master_secret() {
    let pair = Pair::new().await;
    let version = pair.version_with(&pair.app_secret, "AWSCURRENT").await;
    let value = pair.current().await;
    let out = pair
        .command(&["rotate", &pair.app_secret])
        .env("ROTATOR_TEST_FAILPOINTS", "after:set_password=exit")
        .env("ROTATOR_LEASE_DURATION", "2s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(86), "{}", text(&out));
    let before = pair.status();
    assert_eq!(before["state"], "in_progress");
    let rotation_id = before["rotation_id"].as_str().unwrap().to_owned();
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        Some(rotation_id.clone())
    );

    let out = pair
        .command(&[
            "abort",
            &pair.app_secret,
            "--reason",
            "proxy never picks up the secret",
            "--lease-wait",
            "40s",
        ])
        .env("ROTATOR_METRICS", "emf")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.contains("\"RotationsAborted\":1")),
        "the abort metric: {stdout}"
    );
    let after = pair.status();
    assert_eq!(after["state"], "aborted");
    assert_eq!(after["rotation_id"], json!(rotation_id));
    assert!(after["last_error"]
        .as_str()
        .unwrap()
        .contains("proxy never picks up the secret"));
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        None
    );
    pair.assert_current_unchanged(&version, &value).await;
    assert_eq!(pair.violations(false).await, Vec::<String>::new());

    // Idempotent.
    let again = pair.run(&["abort", &pair.app_secret, "--reason", "again"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already aborted"));
    assert_eq!(pair.status()["last_error"], after["last_error"]);

    // Rotations that fail before they begin (Secrets Manager's rotation switched on, then off
    // with its AWSPENDING left behind) keep the aborted version known.
    attach_managed_rotation(&pair.sm, &pair.app_secret).await;
    let out = pair.rotate();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("own rotation is enabled"),
        "{}",
        text(&out)
    );
    pair.sm
        .cancel_rotate_secret()
        .secret_id(&pair.app_secret)
        .send()
        .await
        .unwrap();
    let left = pair
        .version_with(&pair.app_secret, "AWSPENDING")
        .await
        .unwrap();
    let out = pair.rotate();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&left),
        "{}",
        text(&out)
    );
    remove_pending(&pair, &left).await;

    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;
    assert_eq!(pair.violations(true).await, Vec::<String>::new());

    // Nothing to abort in a finished rotation.
    let refused = pair.run(&["abort", &pair.app_secret, "--reason", "late"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("finished"));
    assert_eq!(pair.status()["state"], "finished");
}

/// Two application secrets that name the same database users (two deployments of one service,
/// say): their rotations never change one user's password at once, and neither changes the user
/// the other's applications use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_secrets_naming_one_user_never_change_its_password_at_once() {
    let pair = Pair::new().await;
    let other = format!("rt-{}/app-copy", pair.id);
    pair.sm
        .create_secret()
        .name(&other)
        .secret_string(pair.current().await.to_string())
        .send()
        .await
        .unwrap();
    // The first holds still after changing the idle user's password.
    let (mut first, lines) = rotate_pausing_at(&pair, "before:update_proxy", 5000);
    let second = pair.run(&["rotate", &other, "--lease-wait", "0s"]);
    assert_eq!(second.status.code(), Some(75), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("is being rotated by secret"),
        "{}",
        text(&second)
    );
    let status = wait_exit(&mut first, Duration::from_secs(60));
    assert!(status.success(), "{}", lines.join().unwrap());
    pair.assert_rotated_to(&pair.users[1]).await;

    // Now that user is the first secret's AWSCURRENT: the copy must not change it.
    let second = pair.run(&["rotate", &other]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("is AWSCURRENT of secret"),
        "{}",
        text(&second)
    );
    pair.assert_rotated_to(&pair.users[1]).await;

    // And the first may not change the user the copy has in AWSCURRENT, which the copy marked
    // as its own when it tried.
    let first = pair.rotate();
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    assert!(
        String::from_utf8_lossy(&first.stderr).contains(&format!(
            "is AWSCURRENT of secret {}",
            pair.arn_of(&other).await
        )),
        "{}",
        text(&first)
    );
    pair.assert_rotated_to(&pair.users[1]).await;
    let copy = pair.secret_at(&other, "AWSCURRENT").await.unwrap();
    pair.login_with(&copy)
        .await
        .expect("the copy's AWSCURRENT still logs in");
    assert_eq!(pair.violations(false).await, Vec::<String>::new());
}
