//! Crash torture against the real binary: `rds-rotator rotate` is SIGKILLed at every failpoint and
//! at random instants, restarted, and the invariants are checked after every kill and every
//! completion. Two tests, one per kind of kill, each on a pair of its own, so that a parallel
//! runner runs them side by side; together they make the run's 56 kills. Each prints
//! `kill run (...): kills=N resumes=N completed=N violations=N`.

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

/// What a series of kills came to.
#[derive(Default)]
struct Tally {
    kills: usize,
    resumes: usize,
    completed: usize,
    violations: Vec<String>,
}

impl Tally {
    fn report(&self, name: &str, what: &str) {
        report(
            name,
            &format!(
                "kill run ({what}): kills={} resumes={} completed={} violations={}",
                self.kills,
                self.resumes,
                self.completed,
                self.violations.len()
            ),
        );
    }
}

/// Where a round kills `rotate`.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Failpoint(&'a str),
    /// A random instant up to this many milliseconds after it starts.
    RandomWithin(u64),
}

/// One round: `rotate` is killed at `target`; the invariants are checked, the rotation is resumed
/// if it is in progress, and they are checked again once it has settled.
async fn kill_round(pair: &Pair, round: usize, target: Target<'_>, tally: &mut Tally) {
    match target {
        Target::Failpoint(point) => {
            // A 2 s lease: the holder renews every 0.67 s and may wait 1.1 s for an answer, which
            // a loaded machine's emulator gives; with 1 s it stepped back before the failpoint.
            kill(pair.rotate_until(point, "2s"));
            tally.kills += 1;
        }
        Target::RandomWithin(ms) => {
            let mut child = pair
                .command(&["rotate", &pair.app_secret])
                .env("ROTATOR_LEASE_DURATION", "1s")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let delay = rand::random_range(10..ms.max(11));
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if child.try_wait().unwrap().is_none() {
                kill(child);
                tally.kills += 1;
            } else {
                child.wait().unwrap();
            }
        }
    }
    let before = pair.status();
    for v in pair.violations(false).await {
        tally
            .violations
            .push(format!("round {round} ({target:?}), after the kill: {v}"));
    }
    if before["state"] == "in_progress" {
        let out = tokio::task::block_in_place(|| pair.rotate());
        tally.resumes += 1;
        if !out.status.success() {
            tally.violations.push(format!(
                "round {round}: the resume failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return;
        }
        let after = pair.status();
        if after["rotation_id"] != before["rotation_id"] {
            tally
                .violations
                .push(format!("round {round}: resumed with another rotation id"));
        }
    }
    if pair.status()["state"] == "finished" {
        tally.completed += 1;
    }
    for v in pair.violations(true).await {
        tally
            .violations
            .push(format!("round {round} ({target:?}), settled: {v}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_rotate_at_every_failpoint_never_loses_a_password() {
    let pair = Pair::new().await;
    let mut tally = Tally::default();
    // Every failpoint twice: once from each user to the other. The run of reduced size on the
    // extra PostgreSQL majors (scripts/test-majors) passes once.
    let passes: usize = std::env::var("ROTATOR_TEST_KILL_PASSES")
        .map(|p| p.parse().expect("ROTATOR_TEST_KILL_PASSES is a number"))
        .unwrap_or(2);
    let points = std::iter::repeat_n(POINTS.iter(), passes).flatten();
    for (round, point) in points.enumerate() {
        kill_round(&pair, round, Target::Failpoint(point), &mut tally).await;
    }
    tally.report("kill-run-failpoints", "failpoints");
    assert!(tally.violations.is_empty(), "{:#?}", tally.violations);
    assert_eq!(tally.kills, passes * POINTS.len());
    // Every failpoint is inside a rotation, so every kill leaves one to resume.
    assert!(
        tally.resumes >= passes * POINTS.len(),
        "only {} resumes",
        tally.resumes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_rotate_at_random_instants_never_loses_a_password() {
    let pair = Pair::new().await;
    // One whole rotation first, as the failpoints' rounds leave one (a kill before the first
    // record is written would leave no record to check), timed: the kills fall anywhere in a
    // rotation's length as this machine runs it now, so a loaded machine does not push them all
    // before the rotation begins.
    let started = std::time::Instant::now();
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    let within = started.elapsed().as_millis() as u64;
    let mut tally = Tally::default();
    // At least 30 rounds, then until there have been 32 kills (with the failpoints' 24, the 56 of
    // the whole run): a fast rotation outruns some delays. At most 120 rounds.
    for round in 0..120 {
        if round >= 30 && tally.kills >= 32 {
            break;
        }
        kill_round(&pair, round, Target::RandomWithin(within), &mut tally).await;
    }
    tally.report("kill-run-random", "random instants");
    assert!(tally.violations.is_empty(), "{:#?}", tally.violations);
    assert!(tally.kills >= 26, "only {} kills", tally.kills);
    // Kills inside rotations, not only before them: those leave one in progress to resume.
    assert!(
        tally.resumes >= 8,
        "only {} of {} kills left a rotation to resume",
        tally.resumes,
        tally.kills
    );
}
