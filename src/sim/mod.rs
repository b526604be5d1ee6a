//! A deterministic simulator of the rotation protocol. It runs the real engine (`Rotator`, the
//! lease, the steps, Secrets Manager's call path, `abort`) in several processes against models
//! of Secrets Manager, DynamoDB, the database, RDS Proxy and applications (`world`), with the
//! faults and clocks a seed chooses (`process`), and checks the invariants after every event.
//!
//! One seed is one run: a single-threaded runtime with paused time, and every random choice
//! (the schedule, the faults, the engine's rotation ids, passwords and backoff jitter) drawn from
//! the seed. A failing seed prints its trace and the command that replays it.
//!
//! Not modelled: real network stacks, TLS, and the real services' undocumented behaviour, which
//! the integration tests against PostgreSQL, MariaDB and the emulator keep covering; readers and
//! replicas; MySQL's accounts per host.

mod actors;
mod process;
mod world;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::mutants::{self, Mutant};
use crate::rotation::ports::Stage;
use crate::rotation::record::State;
use actors::{app, process, process_loop, Action, Outcomes};
use process::{Chaos, Proc, Service, Shared};
use world::{app_secret, Deletion, Proxy, Secret, Server, Stats, Version, World};

/// This tool's rotation function, as Secrets Manager names it.
const LAMBDA: &str = "arn:aws:lambda:us-east-1:1:function:rds-rotator";
const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
/// The minimum interval every request asks for (`DEFAULT_MIN_INTERVAL`).
const INTERVAL: u64 = 2 * HOUR;
/// Faults stop here, and only requests go on, so every rotation can end.
const QUIET_AT: u64 = 7 * HOUR;
/// Long enough after `QUIET_AT` for a request past the minimum interval.
const END_AT: u64 = QUIET_AT + INTERVAL + HOUR;

/// What one run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub stats: Stats,
    pub processes: usize,
}

impl Report {
    /// The run's story, for a failing seed: the command that replays it, the violations, and
    /// the last events.
    pub fn explain(&self, mutant: Option<Mutant>) -> String {
        let mutant_env = mutant
            .map(|m| format!("SIM_MUTANT={m:?} "))
            .unwrap_or_default();
        let tail = self.trace.len().saturating_sub(150);
        format!(
            "seed {seed}: {v}\nreplay: {mutant_env}SIM_SEED={seed} cargo test --lib sim::tests::replay -- --nocapture\n{trace}",
            seed = self.seed,
            v = self.violations.join("; "),
            trace = self.trace[tail..].join("\n"),
        )
    }
}

/// Runs seed `seed`, with `mutant` switched on.
pub fn run(seed: u64, mutant: Option<Mutant>) -> Report {
    run_with(seed, mutant, true)
}

/// `run`, keeping the trace or not (formatting it is a good part of a run's cost).
fn run_with(seed: u64, mutant: Option<Mutant>, tracing: bool) -> Report {
    crate::entropy::seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    fastrand::seed(seed);
    mutants::set(mutant);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let report = runtime.block_on(scenario(seed, mutant, tracing));
    drop(runtime);
    mutants::set(None);
    crate::entropy::unseed();
    report
}

async fn scenario(seed: u64, mutant: Option<Mutant>, tracing: bool) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut world = build_world(&mut rng, mutant);
    world.tracing = tracing;
    let secrets: Vec<String> = world
        .secrets
        .keys()
        .filter(|n| n.starts_with("app-"))
        .cloned()
        .collect();
    let managed: Vec<String> = world
        .secrets
        .values()
        .filter(|s| s.rotation_lambda.is_some())
        .map(|s| s.name.clone())
        .collect();
    let faulty = rng.random_bool(0.8);
    let chaos = Chaos {
        rng: StdRng::seed_from_u64(rng.random()),
        on: faulty,
        p_refused: rng.random_range(0.0..0.03),
        p_lost: rng.random_range(0.0..0.03),
        p_slow: rng.random_range(0.0..0.02),
        p_crash_after: rng.random_range(0.0..0.002),
        fragile: None,
        partitions: Vec::new(),
    };
    let shared = Arc::new(Shared {
        world: Mutex::new(world),
        chaos: Mutex::new(chaos),
        start,
        aws_timeout: Duration::from_secs(30),
        db_timeout: Duration::from_secs(10),
    });
    let outcomes: Outcomes = Arc::default();

    // Processes: queue workers, an operator's CLI, and Secrets Manager's function.
    let count = rng.random_range(2..=4) + usize::from(!managed.is_empty());
    if !managed.is_empty() {
        shared.chaos.lock().expect("chaos").fragile = Some(count - 1);
    }
    let (mut processes, mut inboxes) = (Vec::new(), Vec::new());
    for id in 0..count {
        let offset = rng.random_range(-45_000..=45_000);
        let (tx, rx) = mpsc::unbounded_channel();
        processes.push(process(id, &shared, offset, rx, tx.clone()));
        inboxes.push(tx);
    }
    if faulty {
        let mut c = shared.chaos.lock().expect("chaos");
        for _ in 0..rng.random_range(0..3) {
            let p = rng.random_range(0..count);
            let service =
                [Service::Secrets, Service::Records, Service::Database][rng.random_range(0..3)];
            let from = rng.random_range(0..QUIET_AT - 10 * MIN);
            let len = rng.random_range(10_000..10 * MIN);
            c.partitions.push((p, service, from, from + len));
        }
    }

    // The schedule, in true time.
    let mut plan: Vec<(u64, Event)> = Vec::new();
    for secret in &secrets {
        let mut at = rng.random_range(0..20 * MIN);
        let mut n = 0;
        while at < END_AT - 10 * MIN {
            n += 1;
            let id = format!("{secret}-request-{n}");
            // A message delivered more than once, to different workers.
            for copy in 0..rng.random_range(1..=3) {
                let p = rng.random_range(0..count);
                let lag = if copy == 0 {
                    0
                } else {
                    rng.random_range(0..20_000)
                };
                plan.push((
                    at + lag,
                    Event::Send(
                        p,
                        Action::Request {
                            secret: secret.clone(),
                            id: id.clone(),
                            deliveries: 1,
                        },
                    ),
                ));
            }
            at += if at < QUIET_AT {
                INTERVAL + rng.random_range(0..15 * MIN)
            } else {
                30 * MIN
            };
        }
        for _ in 0..rng.random_range(0..3) {
            let p = rng.random_range(0..count);
            let at = rng.random_range(0..QUIET_AT);
            plan.push((
                at,
                Event::Send(
                    p,
                    Action::Rotate {
                        secret: secret.clone(),
                    },
                ),
            ));
        }
        if faulty && rng.random_bool(0.3) {
            let p = rng.random_range(0..count);
            let at = rng.random_range(0..QUIET_AT);
            plan.push((
                at,
                Event::Send(
                    p,
                    Action::Abort {
                        secret: secret.clone(),
                    },
                ),
            ));
        }
    }
    for secret in &managed {
        let p = count - 1;
        let mut at = rng.random_range(0..HOUR);
        while at < QUIET_AT {
            plan.push((
                at,
                Event::Send(
                    p,
                    Action::Managed {
                        secret: secret.clone(),
                    },
                ),
            ));
            at += INTERVAL + rng.random_range(0..HOUR);
        }
    }
    if faulty {
        for _ in 0..rng.random_range(0..6) {
            let at = rng.random_range(0..QUIET_AT);
            plan.push((at, Event::Crash(rng.random_range(0..count))));
        }
        if rng.random_bool(0.2) {
            let at = rng.random_range(0..QUIET_AT);
            let p = rng.random_range(0..count);
            plan.push((at, Event::ClockJump(p, rng.random_range(-60_000..=60_000))));
        }
        if rng.random_bool(0.2) {
            let at = rng.random_range(0..QUIET_AT - HOUR);
            plan.push((at, Event::Proxy(true)));
            plan.push((at + rng.random_range(MIN..HOUR), Event::Proxy(false)));
        }
        if rng.random_bool(0.15) {
            let secret = format!("proxy-{}", ["a1", "a2"][rng.random_range(0..2)]);
            let at = rng.random_range(0..QUIET_AT - HOUR);
            plan.push((at, Event::Deny(secret.clone(), true)));
            plan.push((at + rng.random_range(MIN..HOUR), Event::Deny(secret, false)));
        }
    }
    let shares_users = shared
        .world()
        .secrets
        .get("app-b")
        .is_some_and(|b| b.users.iter().any(|u| u == "a1"));
    if shares_users && rng.random_bool(0.5) {
        // Migrated away from: scheduled for deletion, its marks on the shared users stay behind.
        let at = rng.random_range(HOUR..QUIET_AT);
        plan.push((at, Event::Delete("app-b".into(), Deletion::Scheduled)));
        if rng.random_bool(0.5) {
            let purged = at + rng.random_range(MIN..HOUR);
            plan.push((purged, Event::Delete("app-b".into(), Deletion::Gone)));
        }
    }
    plan.push((QUIET_AT, Event::Quiet));
    plan.sort_by_key(|(at, _)| *at);

    // Applications.
    let mut tasks = Vec::new();
    for secret in &secrets {
        for n in 0..rng.random_range(1..=3) {
            let ttl = [Some(5 * MIN), Some(870_000), Some(HOUR), None][rng.random_range(0..4)];
            let every = rng.random_range(MIN..15 * MIN);
            let name = format!("{secret}-app{n}");
            tasks.push(tokio::spawn(app(
                shared.clone(),
                name,
                secret.clone(),
                ttl,
                every,
            )));
        }
    }
    let procs: Vec<Proc> = processes.iter().map(|p| p.proc.clone()).collect();
    for p in processes {
        tasks.push(tokio::spawn(process_loop(
            p,
            inboxes.clone(),
            outcomes.clone(),
        )));
    }
    for (at, event) in plan {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        happen(&shared, &procs, &inboxes, event);
    }
    tokio::time::sleep_until(start + Duration::from_millis(END_AT)).await;
    for t in &tasks {
        t.abort();
    }
    let mut w = shared.world();
    liveness(&mut w, &outcomes.lock().expect("outcomes"));
    Report {
        seed,
        violations: w.violations.clone(),
        trace: std::mem::take(&mut w.trace),
        stats: w.stats,
        processes: count,
    }
}

/// Something the schedule makes happen, at its time.
enum Event {
    Send(usize, Action),
    Crash(usize),
    ClockJump(usize, i64),
    Proxy(bool),
    Deny(String, bool),
    Delete(String, Deletion),
    Quiet,
}

fn happen(
    shared: &Shared,
    procs: &[Proc],
    inboxes: &[mpsc::UnboundedSender<Action>],
    event: Event,
) {
    let mut w = shared.world();
    match event {
        Event::Send(p, action) => {
            let _ = inboxes[p].send(action);
        }
        // An idle process dies and restarts unseen; a busy one drops what it was doing.
        Event::Crash(p) => {
            procs[p].dead.send_replace(true);
        }
        Event::ClockJump(p, by) => {
            procs[p].clock.jump(by);
            w.note(format!("p{p}: wall clock jumps {by} ms"));
        }
        Event::Proxy(frozen) => {
            w.proxy.frozen = frozen;
            let what = if frozen {
                "stops re-reading"
            } else {
                "re-reads"
            };
            w.note(format!("proxy {what} its secrets"));
        }
        Event::Deny(secret, on) => {
            if let Some(s) = w.secrets.get_mut(&secret) {
                s.denied = on;
            }
            w.note(format!("{secret}: access denied {on}"));
        }
        Event::Delete(secret, how) => {
            // An operator retires a secret whose last rotation finished. (One deleted while its
            // rotation holds the only copy of a password loses that password: not modelled.)
            let arn = format!("arn:sim:{secret}");
            let finished = w
                .items
                .get(&arn)
                .and_then(|i| i.record.as_ref())
                .is_none_or(|r| r.state == State::Finished);
            let already = w
                .secrets
                .get(&secret)
                .is_some_and(|s| s.deletion != Deletion::No);
            if finished || already {
                if let Some(s) = w.secrets.get_mut(&secret) {
                    s.deletion = how;
                }
                w.note(format!("{secret}: {how:?}"));
            }
        }
        Event::Quiet => {
            let mut c = shared.chaos.lock().expect("chaos");
            c.on = false;
            c.partitions.clear();
            w.proxy.frozen = false;
            for s in w.secrets.values_mut() {
                s.denied = false;
            }
            w.note("faults stop".into());
        }
    }
}

/// The services, the users, and the secrets a seed chose: one server (under the names `db`,
/// `db-alias` and the proxy's), secret `app-a`, and perhaps `app-b`, with users of its own or
/// the same users under the other name.
fn build_world(rng: &mut StdRng, mutant: Option<Mutant>) -> World {
    let mut w = World {
        no_fence: mutant == Some(Mutant::NoFence),
        ..World::default()
    };
    w.servers.push(Server {
        id: "pg:7001".into(),
        ..Server::default()
    });
    for host in ["db", "db-alias", "proxy"] {
        w.names.insert(host.into(), 0);
    }
    w.proxy = Proxy {
        host: "proxy".into(),
        refresh_ms: rng.random_range(0..=3 * MIN),
        ..Proxy::default()
    };
    let managed = rng.random_bool(0.35);
    add_secret(&mut w, "app-a", ["a1", "a2"], "proxy", "db", managed);
    match rng.random_range(0..3) {
        1 => add_secret(&mut w, "app-b", ["b1", "b2"], "proxy", "db", false),
        2 => add_secret(&mut w, "app-b", ["a1", "a2"], "db-alias", "db-alias", false),
        _ => {}
    }
    w
}

fn add_secret(
    w: &mut World,
    name: &str,
    users: [&str; 2],
    host: &str,
    direct: &str,
    managed: bool,
) {
    let first = format!("{}-0", users[0]);
    let value = app_secret(users, &first, host, direct);
    let mut s = secret(name, value.to_string(), managed);
    s.users = users.map(str::to_owned).to_vec();
    s.direct = direct.into();
    w.secrets.insert(name.into(), s);
    for user in users {
        let pw = format!("{user}-0");
        w.servers[0]
            .passwords
            .entry(user.into())
            .or_insert(pw.clone());
        let proxy = format!("proxy-{user}");
        // The proxy read its secrets when it was set up.
        w.proxy.cache.entry(user.into()).or_insert((pw.clone(), 0));
        if !w.secrets.contains_key(&proxy) {
            let value = json!({"username": user, "password": pw}).to_string();
            w.secrets
                .insert(proxy.clone(), secret(&proxy, value, false));
        }
    }
}

fn secret(name: &str, value: String, managed: bool) -> Secret {
    Secret {
        name: name.into(),
        versions: vec![Version::new(
            &format!("{name}-v0"),
            Some(value),
            vec!["AWSCURRENT".into()],
        )],
        deletion: Deletion::No,
        denied: false,
        rotation_lambda: managed.then(|| LAMBDA.to_owned()),
        users: Vec::new(),
        direct: String::new(),
    }
}

/// After the quiet phase: every secret's last request ended, or waits for a reason that is not
/// a fault, and a finished record agrees with the labels.
fn liveness(w: &mut World, outcomes: &BTreeMap<String, (String, bool)>) {
    let mut found = Vec::new();
    for s in w.secrets.values() {
        if !s.name.starts_with("app-") || s.deletion != Deletion::No {
            continue;
        }
        if let Some((said, false)) = outcomes.get(&s.name) {
            found.push(format!(
                "{}: once faults stopped, its last request ended with {said}",
                s.name
            ));
        }
        let record = w.items.get(&s.arn()).and_then(|i| i.record.clone());
        let current = s.labelled(Stage::Current.as_str()).map(|v| v.id.clone());
        // A value-less AWSPENDING is Secrets Manager's, from a call the function refused (too
        // soon): it holds no password, and the next rotation takes it over.
        let pending = s
            .labelled(Stage::Pending.as_str())
            .filter(|v| v.value.is_some())
            .map(|v| v.id.clone());
        if let Some(r) = record.filter(|r| r.state == State::Finished) {
            if r.rotation_id != current {
                found.push(format!(
                    "{}: the record says rotation {:?} finished, AWSCURRENT is on {current:?}",
                    s.name, r.rotation_id
                ));
            }
            if pending.is_some() && pending != current {
                found.push(format!(
                    "{}: AWSPENDING left on {pending:?} after rotation {:?} finished",
                    s.name, r.rotation_id
                ));
            }
        }
    }
    for v in found {
        w.violation(v);
    }
}

/// What a sweep of seeds found: totals, and the lowest failing seed's report.
#[derive(Debug, Default)]
pub struct Sweep {
    pub seeds: u64,
    pub stats: Stats,
    pub processes: usize,
    pub failed: Option<Report>,
}

/// Runs seeds `0..seeds` with `mutant`, on as many threads as the machine has (each seed on
/// one thread, so each replays exactly), and stops past the lowest seed that breaks an
/// invariant: every seed below it ran.
pub fn sweep(seeds: u64, mutant: Option<Mutant>) -> Sweep {
    use std::sync::atomic::{AtomicU64, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let lowest = AtomicU64::new(u64::MAX);
    let results: Vec<Sweep> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lowest = &lowest;
                scope.spawn(move || {
                    let mut mine = Sweep::default();
                    let mut seed = t;
                    while seed < seeds && seed < lowest.load(Ordering::SeqCst) {
                        let r = run_with(seed, mutant, false);
                        mine.seeds += 1;
                        mine.stats.rotations += r.stats.rotations;
                        mine.stats.crashes += r.stats.crashes;
                        mine.stats.faults += r.stats.faults;
                        mine.processes += r.processes;
                        if !r.violations.is_empty() {
                            lowest.fetch_min(seed, Ordering::SeqCst);
                            // Again, with its trace: the same run.
                            mine.failed = Some(run(seed, mutant));
                            break;
                        }
                        seed += threads;
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread"))
            .collect()
    });
    let mut total = Sweep::default();
    for r in results {
        total.seeds += r.seeds;
        total.stats.rotations += r.stats.rotations;
        total.stats.crashes += r.stats.crashes;
        total.stats.faults += r.stats.faults;
        total.processes += r.processes;
        if let Some(f) = r.failed {
            if total.failed.as_ref().is_none_or(|t| f.seed < t.seed) {
                total.failed = Some(f);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    #[test]
    fn a_seed_replays_exactly() {
        for seed in [1, 2, 3] {
            let (a, b) = (run(seed, None), run(seed, None));
            assert_eq!(a.trace, b.trace, "seed {seed} ran differently twice");
            assert!(!a.trace.is_empty());
        }
    }

    /// `SIM_SEEDS` schedules (200 by default; CI's simulate stage runs 20,000 in release).
    #[test]
    fn every_schedule_keeps_every_invariant() {
        let started = std::time::Instant::now();
        let s = sweep(env("SIM_SEEDS", 200), None);
        if let Some(r) = &s.failed {
            panic!("{}", r.explain(None));
        }
        println!(
            "simulation: seeds={} rotations={} processes={} crashes={} faults={} violations=0",
            s.seeds, s.stats.rotations, s.processes, s.stats.crashes, s.stats.faults
        );
        let secs = started.elapsed().as_secs_f64();
        println!(
            "simulation speed: {:.0} schedules/s, {:.0} simulated rotations/s",
            s.seeds as f64 / secs,
            s.stats.rotations as f64 / secs
        );
    }

    /// Every known defect (`crate::mutants`) breaks an invariant within `SIM_MUTANT_SEEDS`.
    /// Thousands of runs: built in release only (`make simulate`, CI's simulate stage).
    #[cfg(not(debug_assertions))]
    #[test]
    fn the_simulator_finds_every_mutant() {
        let budget = env("SIM_MUTANT_SEEDS", 300);
        let only = std::env::var("SIM_MUTANT").ok();
        let mut missed = Vec::new();
        let chosen = Mutant::ALL
            .into_iter()
            .filter(|m| only.as_ref().is_none_or(|o| *o == format!("{m:?}")));
        for mutant in chosen {
            match sweep(budget, Some(mutant)).failed {
                Some(r) => println!("mutant {mutant:?}: seed {}: {}", r.seed, r.violations[0]),
                None => missed.push(mutant),
            }
        }
        let all = Mutant::ALL
            .iter()
            .filter(|m| only.as_ref().is_none_or(|o| *o == format!("{m:?}")))
            .count();
        println!("simulation mutants: {} of {all} found", all - missed.len());
        assert!(
            missed.is_empty(),
            "not found within {budget} seeds: {missed:?}"
        );
    }

    /// `SIM_SEED=N` (and `SIM_MUTANT=Name`) replays one run and prints its trace; seed 0
    /// without them.
    #[test]
    fn replay() {
        let seed = env("SIM_SEED", 0);
        let mutant = std::env::var("SIM_MUTANT")
            .ok()
            .and_then(|m| Mutant::ALL.into_iter().find(|x| format!("{x:?}") == m));
        let r = run(seed, mutant);
        println!("{}", r.trace.join("\n"));
        println!("violations: {:?}", r.violations);
        assert!(!r.trace.is_empty(), "seed {seed} did nothing");
    }
}
