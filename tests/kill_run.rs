//! Crash torture against the real binary: `rds-rotator rotate` is SIGKILLed at every failpoint and
//! at random instants, restarted, and the invariants are checked after every kill and every
//! completion. Prints `kill run: kills=N resumes=N completed=N violations=N`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const POINTS: [&str; 12] = [
    "before:create_pending",
    "after:create_pending",
    "before:set_password",
    "inside:set_password",
    "after:set_password",
    "before:update_proxy",
    "inside:update_proxy",
    "after:update_proxy",
    "before:test",
    "after:test",
    "before:finish",
    "after:finish",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_rotate_at_any_instant_never_loses_a_password() {
    let pair = Pair::new().await;
    // Every failpoint twice, then random instants, for at least 50 kills.
    let mut plan: Vec<Option<&str>> = POINTS
        .iter()
        .chain(POINTS.iter())
        .map(|p| Some(*p))
        .collect();
    // Random rounds until there have been enough kills: a fast rotation outruns some delays.
    plan.extend(std::iter::repeat_n(None, 120));
    let (mut kills, mut resumes, mut completed) = (0, 0, 0);
    let mut violations: Vec<String> = Vec::new();

    for (round, target) in plan.into_iter().enumerate() {
        if target.is_none() && round >= 2 * POINTS.len() + 30 && kills >= 56 {
            break;
        }
        match target {
            Some(point) => {
                kill(pair.rotate_until(point, "1s"));
                kills += 1;
            }
            None => {
                let mut child = pair
                    .command(&["rotate", &pair.app_secret])
                    .env("ROTATOR_LEASE_DURATION", "1s")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let delay = rand::random_range(10..300);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if child.try_wait().unwrap().is_none() {
                    kill(child);
                    kills += 1;
                } else {
                    child.wait().unwrap();
                }
            }
        }
        let before = pair.status();
        for v in pair.violations(false).await {
            violations.push(format!("round {round} ({target:?}), after the kill: {v}"));
        }
        if before["state"] == "in_progress" {
            let out = tokio::task::block_in_place(|| pair.rotate());
            resumes += 1;
            if !out.status.success() {
                violations.push(format!(
                    "round {round}: the resume failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
            let after = pair.status();
            if after["rotation_id"] != before["rotation_id"] {
                violations.push(format!("round {round}: resumed with another rotation id"));
            }
        }
        if pair.status()["state"] == "finished" {
            completed += 1;
        }
        for v in pair.violations(true).await {
            violations.push(format!("round {round} ({target:?}), settled: {v}"));
        }
    }
    report(
        "kill-run",
        &format!(
            "kill run: kills={kills} resumes={resumes} completed={completed} violations={}",
            violations.len()
        ),
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(kills >= 50, "only {kills} kills");
    assert!(resumes >= 24, "only {resumes} resumes");
}
