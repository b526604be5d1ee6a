//! Lease races with real processes: two rotations at once, and a worker paused past its lease.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_for_one_secret_never_rotate_it_at_once() {
    let pair = Pair::new().await;
    let mut user = 1;
    for round in 0..5 {
        // Both hold still for a moment once they have the lease, so the race is real.
        let spawn = || {
            pair.command(&["rotate", &pair.app_secret, "--lease-wait", "0s"])
                .env("ROTATOR_TEST_FAILPOINTS", "before:test=sleep(400)")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let mut codes = [a.status.code(), b.status.code()];
        codes.sort();
        assert_eq!(
            codes,
            [Some(0), Some(75)],
            "round {round}: {}\n{}",
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
        let loser = if a.status.success() { &b } else { &a };
        assert!(String::from_utf8_lossy(&loser.stderr).contains("held by"));
        assert_eq!(
            pair.violations(true).await,
            Vec::<String>::new(),
            "round {round}"
        );
        pair.assert_rotated_to(&pair.users[user]).await;
        user = 1 - user;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_is_fenced_off_when_it_wakes() {
    let pair = Pair::new().await;
    // A changes the password, then sleeps before the proxy step.
    let mut cmd = pair.command(&["rotate", &pair.app_secret]);
    cmd.env("ROTATOR_LEASE_DURATION", "2s");
    let (mut a, lines) = common::pausing_at(cmd, "before:update_proxy", 1500);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = std::process::Command::new("kill")
        .args(["-STOP", &a.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let started = pair.status();

    // A is frozen past its lease: B takes over and finishes the same rotation.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = tokio::task::block_in_place(|| pair.rotate());
    assert!(
        out.status.success(),
        "B: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let finished = pair.status();
    assert_eq!(finished["rotation_id"], started["rotation_id"]);
    assert_eq!(finished["state"], "finished");

    // A wakes up: its writes are refused, it says so and steps back.
    let ok = std::process::Command::new("kill")
        .args(["-CONT", &a.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = wait_exit(&mut a, Duration::from_secs(30));
    let log = lines.join().unwrap();
    assert_eq!(status.code(), Some(75), "{log}");
    // By its own clock its lease ran out while it was frozen (or a renewal found it taken):
    // it stops where it is.
    assert!(
        log.contains("taken over by another worker") || log.contains("lost to another worker"),
        "A did not say it lost the lease:\n{log}"
    );
    assert_eq!(
        pair.status(),
        finished,
        "the stale worker changed the record"
    );
    assert_eq!(pair.violations(true).await, Vec::<String>::new());
    pair.assert_rotated_to(&pair.users[1]).await;
}

/// Many copies of one request at once, round after round, in one process over the real
/// adapters: every round gives exactly one rotation. (On an emulator whose conditional writes are
/// not atomic, two copies can both begin; see scripts/moto-shim.py.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_request_racing_round_after_round_rotate_once_each_round() {
    use rds_rotator::rotation::{LeaseWait, Outcome, Request, Settings};
    const ROUNDS: usize = 8;
    const COPIES: usize = 12;
    let pair = Pair::new().await;
    let rotator = std::sync::Arc::new(
        pair.rotator(Settings {
            test_deadline: Duration::from_secs(20),
            ..Settings::default()
        })
        .await,
    );
    let mut user = 1;
    for round in 0..ROUNDS {
        let request = Request {
            request_id: Some(format!("round-{round}")),
            ..Request::default()
        };
        let tasks: Vec<_> = (0..COPIES)
            .map(|_| {
                let (rotator, request, id) =
                    (rotator.clone(), request.clone(), pair.app_secret.clone());
                tokio::spawn(async move { rotator.rotate(&id, &request, LeaseWait::No).await })
            })
            .collect();
        let mut rotated = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(Outcome::Rotated(_)) => rotated += 1,
                Ok(Outcome::Skipped { .. }) => {}
                Ok(other) => panic!("round {round}: {other:?}"),
                Err(e) if e.is_retryable() => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(rotated, 1, "round {round}: {rotated} copies rotated");
        assert_eq!(
            pair.violations(true).await,
            Vec::<String>::new(),
            "round {round}"
        );
        pair.assert_rotated_to(&pair.users[user]).await;
        user = 1 - user;
    }
    report(
        "copies-race",
        &format!(
            "copies race: {ROUNDS} rounds of {COPIES} copies of one request, one rotation each"
        ),
    );
}
