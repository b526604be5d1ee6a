//! The SQS worker against moto and the real PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use rds_rotator::worker::{ExecutionOutcome, Handled};
use serde_json::json;

async fn step(worker: &rds_rotator::worker::Worker) -> Handled {
    match worker.try_execute_task().await.expect("the queue answers") {
        ExecutionOutcome::Processed(h) => h,
        ExecutionOutcome::EmptyQueue => panic!("the queue was empty"),
    }
}

#[tokio::test]
async fn enqueue_then_the_worker_rotates_and_a_second_request_is_skipped() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let out = pair
        .command(&["enqueue", &pair.app_secret, "--reason", "test"])
        .env("ROTATOR_QUEUE_URL", &queues.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "enqueue prints the message id"
    );
    let worker = pair.worker(&queues).await;
    let handled = step(&worker).await;
    assert!(matches!(handled, Handled::Rotated { .. }), "{handled:?}");
    pair.assert_rotated_to(&pair.users[1]).await;
    assert_eq!(pair.status()["reason"], "test");

    queues
        .send(&json!({"secret_id": pair.app_secret}).to_string())
        .await;
    let again = step(&worker).await;
    assert!(
        matches!(again, Handled::Skipped { ref why } if why.contains("minimum interval")),
        "{again:?}"
    );
    queues
        .send(&json!({"secret_id": pair.app_secret, "force": true}).to_string())
        .await;
    assert!(matches!(step(&worker).await, Handled::Rotated { .. }));
    pair.assert_rotated_to(&pair.users[0]).await;
    assert_eq!(queues.depth(&queues.url).await, 0);
}

#[tokio::test]
async fn thirty_copies_of_a_request_for_three_workers_give_exactly_one_rotation() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let body = json!({"secret_id": pair.app_secret, "reason": "copies"}).to_string();
    for _ in 0..30 {
        queues.send(&body).await;
    }
    let mut workers: Vec<_> = (0..3)
        // The copies have no request id of their own (each message's id stands in): the
        // minimum interval is what makes the later ones skip.
        .map(|_| {
            pair.spawn_worker(
                &queues,
                &[("ROTATOR_CONCURRENCY", "4"), ("ROTATOR_MIN_INTERVAL", "2h")],
            )
        })
        .collect();
    let start = std::time::Instant::now();
    while queues.depth(&queues.url).await > 0 {
        if start.elapsed() > Duration::from_secs(90) {
            let logs: Vec<String> = workers
                .iter()
                .map(|(_, l)| l.lock().unwrap().clone())
                .collect();
            panic!(
                "the queue did not drain; {} left. Worker logs:\n{}",
                queues.depth(&queues.url).await,
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (child, _) in &workers {
        sigterm(child);
    }
    for (child, log) in &mut workers {
        let status = wait_exit(child, Duration::from_secs(30));
        assert!(
            status.success(),
            "worker exited with {status}:\n{}",
            log.lock().unwrap()
        );
    }
    let versions = pair.versions(&pair.app_secret).await;
    assert_eq!(
        versions.len(),
        2,
        "expected exactly one new version: {versions:?}"
    );
    let logs: String = workers
        .iter()
        .map(|(_, l)| l.lock().unwrap().clone())
        .collect();
    let status = pair.status();
    let resumes: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("resuming rotation") || l.contains("retryable failure"))
        .collect();
    assert_eq!(
        (status["state"].as_str(), status["attempts"].as_u64()),
        (Some("finished"), Some(1)),
        "{resumes:#?}"
    );
    pair.assert_rotated_to(&pair.users[1]).await;
    assert!(
        queues.dead_letters().await.is_empty(),
        "copies ended in the DLQ"
    );
    assert_eq!(logs.matches("starting rotation").count(), 1, "{logs}");
}

#[tokio::test]
async fn an_eventbridge_rule_with_an_sqs_target_gives_a_rotation() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let events = aws_sdk_eventbridge::Client::new(&aws().await);
    let source = format!("rt.{}", pair.id);
    events
        .put_rule()
        .name(format!("rt-{}", pair.id))
        .event_pattern(json!({"source": [source]}).to_string())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule(format!("rt-{}", pair.id))
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(queues.arn().await)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let out = events
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source(&source)
                .detail_type("RotateSecret")
                .detail(json!({"secret_id": pair.app_secret, "reason": "event"}).to_string())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_entry_count(), 0);
    let worker = pair.worker(&queues).await;
    let handled = step(&worker).await;
    assert!(matches!(handled, Handled::Rotated { .. }), "{handled:?}");
    pair.assert_rotated_to(&pair.users[1]).await;
    let status = pair.status();
    assert_eq!(status["reason"], "event");
    assert!(
        status["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "the event id is the request id"
    );
}

#[tokio::test]
async fn a_malformed_message_ends_in_the_dlq_and_the_worker_keeps_serving() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    queues.send("this is not json").await;
    queues
        .send(&json!({"secret_id": pair.app_secret}).to_string())
        .await;
    queues
        .send(&json!({"secretId": pair.app_secret}).to_string())
        .await;
    let worker = pair.worker(&queues).await;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(step(&worker).await);
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|h| matches!(h, Handled::DeadLettered { .. }))
            .count(),
        2,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|h| matches!(h, Handled::Rotated { .. }))
            .count(),
        1,
        "{outcomes:?}"
    );
    pair.assert_rotated_to(&pair.users[1]).await;
    let dead = queues.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reason_of = |body: &str| {
        dead.iter()
            .find(|(b, _)| b.as_str() == body)
            .map(|(_, r)| r.clone())
    };
    let not_json = reason_of("this is not json").expect("the non-JSON message is in the DLQ");
    assert!(
        not_json.contains("not JSON"),
        "reason recorded: {not_json:?}"
    );
    let typo = reason_of(&json!({"secretId": pair.app_secret}).to_string())
        .expect("the misspelt message is in the DLQ");
    assert!(typo.contains("unknown field"), "reason recorded: {typo:?}");
    assert_eq!(queues.depth(&queues.url).await, 0);
}

#[tokio::test]
async fn an_invalid_secret_goes_to_the_dlq_at_once_with_the_reason_in_the_record() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let mut bad = pair.current().await;
    bad["username"] = json!("mallory");
    pair.sm
        .put_secret_value()
        .secret_id(&pair.app_secret)
        .secret_string(bad.to_string())
        .send()
        .await
        .unwrap();
    queues
        .send(&json!({"secret_id": pair.app_secret}).to_string())
        .await;
    let handled = step(&pair.worker(&queues).await).await;
    assert!(
        matches!(handled, Handled::DeadLettered { ref reason } if reason.contains("rotation_usernames")),
        "{handled:?}"
    );
    assert_eq!(pair.status()["state"], "failed");
    assert!(pair.status()["last_error"]
        .as_str()
        .unwrap()
        .contains("mallory"));
    assert_eq!(queues.dead_letters().await.len(), 1);
}

#[tokio::test]
async fn sigterm_mid_rotation_lets_another_worker_finish_it_with_the_same_rotation_id() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let (mut a, log) = pair.spawn_worker(
        &queues,
        &[
            ("ROTATOR_TEST_FAILPOINTS", "before:test=sleep(3000)"),
            ("ROTATOR_LEASE_DURATION", "10s"),
        ],
    );
    queues
        .send(&json!({"secret_id": pair.app_secret}).to_string())
        .await;
    eventually(
        "the worker to reach the test step",
        Duration::from_secs(30),
        || {
            let log = log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .contains("failpoint before:test reached")
            }
        },
    )
    .await;
    let before = pair.status();
    assert_eq!(before["state"], "in_progress");
    sigterm(&a);
    let status = wait_exit(&mut a, Duration::from_secs(30));
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "SIGTERM exit: {status}\n{log}");
    assert!(
        log.contains("SIGTERM received") && log.contains("worker stopped"),
        "{log}"
    );
    let after_a = pair.status();
    assert_eq!(
        after_a["state"], "in_progress",
        "A stopped before finishing"
    );
    assert_eq!(
        after_a["step"], "finish",
        "A reached its next persisted step"
    );

    let handled = step(&pair.worker(&queues).await).await;
    assert_eq!(
        handled,
        Handled::Rotated {
            rotation_id: before["rotation_id"].as_str().unwrap().to_owned()
        }
    );
    let done = pair.status();
    assert_eq!(done["rotation_id"], before["rotation_id"]);
    assert_eq!(done["attempts"], 2);
    pair.assert_rotated_to(&pair.users[1]).await;
}

#[tokio::test]
async fn a_tag_fan_out_rotates_every_tagged_secret_and_only_those() {
    let (a, b, untagged) = (Pair::new().await, Pair::new().await, Pair::new().await);
    let key = format!("rt-fanout-{}", a.id);
    for p in [&a, &b] {
        let tag = aws_sdk_secretsmanager::types::Tag::builder()
            .key(&key)
            .value("yes")
            .build();
        p.sm.tag_resource()
            .secret_id(&p.app_secret)
            .tags(tag)
            .send()
            .await
            .unwrap();
    }
    let tag = aws_sdk_secretsmanager::types::Tag::builder()
        .key(&key)
        .value("no")
        .build();
    untagged
        .sm
        .tag_resource()
        .secret_id(&untagged.app_secret)
        .tags(tag)
        .send()
        .await
        .unwrap();
    let queues = a.queues().await;
    let out = a
        .command(&["enqueue", "--tag", &format!("{key}=yes")])
        .env("ROTATOR_QUEUE_URL", &queues.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker = a.worker(&queues).await;
    assert_eq!(step(&worker).await, Handled::FannedOut { count: 2 });
    for _ in 0..2 {
        assert!(matches!(step(&worker).await, Handled::Rotated { .. }));
    }
    a.assert_rotated_to(&a.users[1]).await;
    b.assert_rotated_to(&b.users[1]).await;
    assert_eq!(
        untagged.versions(&untagged.app_secret).await.len(),
        1,
        "the untagged secret was rotated"
    );
}

#[tokio::test]
async fn a_database_that_is_down_for_a_while_is_retried_until_it_is_back() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let relay = Relay::reserve();
    let mut secret = pair.current().await;
    secret["direct_port"] = json!(relay.port); // the database itself; the proxy stays up
    pair.sm
        .put_secret_value()
        .secret_id(&pair.app_secret)
        .secret_string(secret.to_string())
        .send()
        .await
        .unwrap();
    queues
        .send(&json!({"secret_id": pair.app_secret}).to_string())
        .await;
    let worker = pair.worker(&queues).await;
    let first = step(&worker).await;
    assert!(
        matches!(first, Handled::Retried { ref error, .. } if error.contains("unreachable")),
        "{first:?}"
    );
    assert_eq!(pair.status()["state"], "in_progress");
    relay.start().await;
    let second = step(&worker).await;
    assert!(matches!(second, Handled::Rotated { .. }), "{second:?}");
    assert_eq!(pair.status()["attempts"], 2);
    pair.assert_rotated_to(&pair.users[1]).await;
}

#[tokio::test]
async fn health_reports_a_live_worker_loop_and_a_stopped_one() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let health = std::env::temp_dir().join(format!("rt-health-{}", suffix()));
    let mut worker = pair
        .command(&["worker"])
        .env("ROTATOR_QUEUE_URL", &queues.url)
        .env("ROTATOR_RECEIVE_WAIT", "1s")
        .env("ROTATOR_HEALTH_FILE", &health)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let check = |max_age: &str| {
        pair.command(&["health", "--max-age", max_age])
            .env("ROTATOR_HEALTH_FILE", &health)
            .output()
            .unwrap()
    };
    eventually("the first heartbeat", Duration::from_secs(20), || async {
        health.exists()
    })
    .await;
    assert!(check("10s").status.success());
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
    std::thread::sleep(Duration::from_millis(1500));
    let stale = check("1s");
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("last ran"));
}

/// A long poll waits longer for its answer than an AWS call may take (`ROTATOR_AWS_TIMEOUT`):
/// it is not cut off as a silent call, so a request that arrives while the worker polls an idle
/// queue is taken at once, not handed to a dropped answer and hidden until its visibility
/// timeout ends.
#[tokio::test]
async fn a_long_poll_longer_than_the_aws_call_bound_is_not_cut_off() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let (mut worker, log) = pair.spawn_worker(
        &queues,
        &[
            ("ROTATOR_RECEIVE_WAIT", "4s"),
            ("ROTATOR_AWS_TIMEOUT", "1s"),
            ("ROTATOR_VISIBILITY_TIMEOUT", "120s"),
        ],
    );
    // The worker sits in polls of the empty queue; the request arrives during one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    queues
        .send(&json!({"secret_id": pair.app_secret, "reason": "long poll"}).to_string())
        .await;
    eventually(
        "the rotation to finish",
        Duration::from_secs(30),
        || async { pair.try_status().is_some_and(|s| s["state"] == "finished") },
    )
    .await;
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "{log}");
    assert!(!log.contains("receive failed"), "{log}");
    pair.assert_rotated_to(&pair.users[1]).await;
}
