//! Passwords never reach logs, metrics or command output: rotations run with debug logging (ours,
//! the AWS SDK's and the PostgreSQL driver's), everything printed is captured, and every password
//! the test and the rotations produced is searched for in it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// The forms a password could take in output: as is, JSON-escaped, Rust-Debug-escaped.
fn forms(pw: &str) -> Vec<String> {
    let json = serde_json::to_string(pw).unwrap();
    let debug = format!("{pw:?}");
    vec![
        pw.to_owned(),
        json[1..json.len() - 1].to_owned(),
        debug[1..debug.len() - 1].to_owned(),
    ]
}

#[tokio::test]
async fn debug_logs_metrics_and_output_of_rotations_contain_no_password() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let mut captured = String::new();
    let debug = [("RUST_LOG", "debug"), ("ROTATOR_METRICS", "emf")];

    // Two rotations by a worker with debug logs, text format.
    let (mut worker, log) = pair.spawn_worker(&queues, &debug);
    queues
        .send(&json!({"secret_id": pair.app_secret}).to_string())
        .await;
    eventually("the first rotation", Duration::from_secs(60), || async {
        pair.try_status().is_some_and(|s| s["state"] == "finished")
    })
    .await;
    let first = pair.status()["rotation_id"].clone();
    queues
        .send(&json!({"secret_id": pair.app_secret, "force": true}).to_string())
        .await;
    eventually("the second rotation", Duration::from_secs(60), || async {
        let s = pair.status();
        s["state"] == "finished" && s["rotation_id"] != first
    })
    .await;
    sigterm(&worker);
    wait_exit(&mut worker, Duration::from_secs(30));
    captured.push_str(&log.lock().unwrap());

    // A third by the CLI, JSON logs, then check, status, and a rotation that fails.
    for args in [
        vec!["rotate", pair.app_secret.as_str(), "--json"],
        vec!["check", pair.app_secret.as_str()],
        vec!["check", pair.app_secret.as_str(), "--json"],
        vec!["status", pair.app_secret.as_str(), "--json"],
    ] {
        let out = pair
            .command(&args)
            .env("RUST_LOG", "debug")
            .env("ROTATOR_LOG_FORMAT", "json")
            .env("ROTATOR_METRICS", "emf")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        captured.push_str(&String::from_utf8_lossy(&out.stdout));
        captured.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let hand_set = format!("by-hand-{}", suffix());
    let idle = pair.current().await["username"] == pair.users[0];
    let idle_user = &pair.users[usize::from(idle)];
    admin(&pair.dbname)
        .await
        .batch_execute(&format!("ALTER ROLE {idle_user} PASSWORD '{hand_set}'"))
        .await
        .unwrap();
    let out = pair
        .command(&["rotate", &pair.app_secret])
        .env("RUST_LOG", "debug")
        .env("ROTATOR_METRICS", "emf")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the rotation should fail for good"
    );
    captured.push_str(&String::from_utf8_lossy(&out.stdout));
    captured.push_str(&String::from_utf8_lossy(&out.stderr));

    // The capture really is debug output of real rotations.
    assert!(captured.contains("starting rotation"), "{captured:.2000}");
    assert!(captured.contains("DEBUG") || captured.contains("\"level\":\"DEBUG\""));
    assert!(captured.contains("connected to PostgreSQL"));
    assert!(captured.contains("RotationsSucceeded"));
    assert!(captured.contains("no known credentials"));

    let mut passwords = pair.all_passwords().await;
    passwords.push(hand_set);
    assert!(passwords.len() >= 5, "{} passwords", passwords.len());
    let found: usize = passwords
        .iter()
        .flat_map(|pw| forms(pw))
        .map(|form| captured.matches(form.as_str()).count())
        .sum();
    report(
        "redaction",
        &format!(
            "redaction: {} passwords searched in {} bytes of debug logs, metrics and output: {found} found",
            passwords.len(),
            captured.len()
        ),
    );
    assert_eq!(found, 0, "a password appeared in the output");
}
