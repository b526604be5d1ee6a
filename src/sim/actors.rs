//! The simulated processes and applications: what each one does with its inbox, Secrets
//! Manager's rotation, and how each outcome is judged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::process::{until_dead, Proc, Shared, EPOCH_MS};
use super::world::Deletion;
use super::{INTERVAL, LAMBDA, MIN};
use crate::rotation::guard::InUseGuard;
use crate::rotation::OffsetClock;
use crate::rotation::{
    Invocation, LeaseWait, Outcome, Request, RetryPolicy, RotationError, Rotator, Settings,
    Shutdown,
};

/// What a process is asked to do.
#[derive(Debug, Clone)]
pub(super) enum Action {
    /// A queue message: a request id, redelivered after a retryable failure.
    Request {
        secret: String,
        id: String,
        deliveries: u32,
    },
    /// An operator's `rotate`.
    Rotate { secret: String },
    /// Secrets Manager's rotation: RotateSecret, then its four calls.
    Managed { secret: String },
    /// An operator's `abort`.
    Abort { secret: String },
}

pub(super) struct Process {
    pub(super) proc: Proc,
    rotator: Rotator,
    inbox: mpsc::UnboundedReceiver<Action>,
    /// Its own inbox, for what it asks of itself later.
    me: mpsc::UnboundedSender<Action>,
}

/// The outcome of the last request of each secret, for liveness.
pub(super) type Outcomes = Arc<Mutex<BTreeMap<String, (String, bool)>>>;

pub(super) fn process(
    id: usize,
    shared: &Arc<Shared>,
    offset: i64,
    inbox: mpsc::UnboundedReceiver<Action>,
    me: mpsc::UnboundedSender<Action>,
) -> Process {
    let clock = Arc::new(OffsetClock::starting_at(EPOCH_MS, offset));
    let proc = Proc {
        id,
        shared: shared.clone(),
        clock: clock.clone(),
        dead: Arc::new(tokio::sync::watch::channel(false).0),
    };
    let rotator = Rotator {
        secrets: Arc::new(proc.clone()),
        records: Arc::new(proc.clone()),
        db: Arc::new(proc.clone()),
        rds: Arc::new(proc.clone()),
        reporter: Arc::new(proc.clone()),
        settings: Settings {
            test_deadline: Duration::from_secs(6 * 60),
            lease_duration: Duration::from_secs(30),
            password: Default::default(),
            retry: RetryPolicy {
                probe_max_delay: Duration::from_secs(5),
                ..RetryPolicy::default()
            },
            in_use: InUseGuard::default(),
            rotation_functions: vec![LAMBDA.into()],
            rds_discovery: false,
        },
        owner: format!("p{id}"),
        shutdown: Shutdown::default(),
        clock,
    };
    Process {
        proc,
        rotator,
        inbox,
        me,
    }
}

/// What a process does with its inbox: one action at a time, restarting after a crash. A
/// queue message whose handling failed or died comes back after its visibility timeout.
pub(super) async fn process_loop(
    mut p: Process,
    inboxes: Vec<mpsc::UnboundedSender<Action>>,
    outcomes: Outcomes,
) {
    while let Some(action) = p.inbox.recv().await {
        p.proc.dead.send_replace(false);
        let dead = p.proc.dead.subscribe();
        let redeliver = match until_dead(dead, act(&p, &action, &outcomes)).await {
            Some(again) => again,
            None => {
                let mut w = p.proc.shared.world();
                // Its leases end with it (the lease expires; `check_holder` must not see them).
                w.holding.remove(&p.proc.id);
                w.stats.crashes += 1;
                w.note(format!("p{} died", p.proc.id));
                Some(VISIBILITY)
            }
        };
        if let (
            Some(after),
            Action::Request {
                secret,
                id,
                deliveries,
            },
        ) = (redeliver, &action)
        {
            if *deliveries < 16 {
                let to = inboxes[(p.proc.id + *deliveries as usize) % inboxes.len()].clone();
                let again = Action::Request {
                    secret: secret.clone(),
                    id: id.clone(),
                    deliveries: deliveries + 1,
                };
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    let _ = to.send(again);
                });
            }
        }
    }
}

/// A queue message whose handling failed comes back after this long (ms)...
const VISIBILITY: u64 = 5 * MIN;
/// ...and one that waits (for sessions, a lease, a deployment) is sent again this much later,
/// as the worker does (SQS's longest delay).
const DEFERRAL: u64 = 15 * MIN;

/// Runs one action; `Some(ms)` when a queue message should come back that much later.
async fn act(p: &Process, action: &Action, outcomes: &Outcomes) -> Option<u64> {
    let r = &p.rotator;
    let asked = |id: Option<String>| Request {
        request_id: id,
        min_interval: Some(Duration::from_millis(INTERVAL)),
        ..Request::default()
    };
    match action {
        Action::Request { secret, id, .. } => {
            let out = r
                .rotate(secret, &asked(Some(id.clone())), LeaseWait::No)
                .await;
            let again = match &out {
                Err(e) if e.is_wait() => Some(DEFERRAL),
                Err(e) if e.is_retryable() => Some(VISIBILITY),
                _ => None,
            };
            record(p, secret, "request", &out, outcomes);
            // An operator answers some failures' alarms with `abort`.
            let failed = out.as_ref().is_err_and(|e| !e.is_wait());
            if failed && p.proc.operator_aborts() {
                let abort = Action::Abort {
                    secret: secret.clone(),
                };
                let me = p.me.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(2 * MIN)).await;
                    let _ = me.send(abort);
                });
            }
            again
        }
        Action::Rotate { secret } => {
            let wait = LeaseWait::UpTo(Duration::from_secs(60));
            let out = r.rotate(secret, &asked(None), wait).await;
            record(p, secret, "rotate", &out, outcomes);
            None
        }
        Action::Abort { secret } => {
            let out = r
                .abort(
                    secret,
                    "the simulated operator",
                    LeaseWait::UpTo(Duration::from_secs(60)),
                )
                .await;
            let mut w = p.proc.shared.world();
            w.note(format!(
                "p{} abort {secret}: {:?}",
                p.proc.id,
                out.map(|a| a.now)
            ));
            None
        }
        Action::Managed { secret } => {
            managed(p, secret, outcomes).await;
            None
        }
    }
}

/// Secrets Manager's rotation: RotateSecret labels AWSPENDING on a value-less version named by
/// its token (or, when a rotation is unfinished, asks again for that one), then the function's
/// four calls. A failed call fails the rotation; the next schedule asks again.
async fn managed(p: &Process, secret: &str, outcomes: &Outcomes) {
    let token = {
        let mut w = p.proc.shared.world();
        let s = &w.secrets[secret];
        // Its own unfinished rotation only: AWSPENDING of another rotator is refused.
        let unfinished = s
            .labelled("AWSPENDING")
            .filter(|v| !v.labels.iter().any(|l| l == "AWSCURRENT"))
            .map(|v| v.id.clone())
            .filter(|id| w.sm_tokens.contains(id));
        let token = unfinished.unwrap_or_else(|| crate::entropy::uuid_v4().to_string());
        let started = w.rotate_secret(secret, &token);
        w.note(format!(
            "secrets manager: RotateSecret {secret} {token}: {started:?}"
        ));
        if started.is_err() {
            return;
        }
        token
    };
    use crate::rotation::record::Step;
    for through in [
        Step::CreatePending,
        Step::UpdateProxy,
        Step::Test,
        Step::Finish,
    ] {
        let request = Request {
            invocation: Some(Invocation {
                token: token.clone(),
                through,
            }),
            min_interval: Some(Duration::from_millis(INTERVAL)),
            ..Request::default()
        };
        let wait = LeaseWait::UpTo(Duration::from_secs(30));
        let out = p.rotator.rotate(secret, &request, wait).await;
        record(p, secret, "function", &out, outcomes);
        if out.is_err() {
            return;
        }
    }
}

/// Errors that say the protocol lost track of something, which only a person could mend: a
/// violation whenever they happen. (`PendingMoved` is not one: a resumed rotation that finds
/// Secrets Manager's newer AWSPENDING steps aside, and the next rotation takes that over.)
/// Nor is a proxy secret that moved since the rotation planned: another secret naming the
/// same user rotated it meanwhile, and the next rotation plans again.
fn broken(e: &RotationError) -> bool {
    match e {
        RotationError::NoKnownCredentials { .. }
        | RotationError::CurrentMoved { .. }
        | RotationError::ForeignPending { .. } => true,
        // Someone wrote under this rotation's token, or its pending version names another
        // user: only a bug of ours does that here.
        RotationError::Inconsistent { reason, .. } => {
            reason.contains("already exists with another value")
                || reason.contains("pending version")
        }
        _ => false,
    }
}

/// Ends that leave nothing to do, or wait for something that is not a fault.
fn settled(e: &RotationError) -> bool {
    e.is_wait()
        || matches!(
            e,
            RotationError::UserShared { .. }
                | RotationError::TooSoon { .. }
                | RotationError::WasAborted { .. }
                | RotationError::NotStartedBySecretsManager { .. }
        )
}

fn record(
    p: &Process,
    secret: &str,
    what: &str,
    out: &Result<Outcome, RotationError>,
    outcomes: &Outcomes,
) {
    let mut w = p.proc.shared.world();
    let said = match out {
        Ok(Outcome::Rotated(_)) => {
            w.stats.rotations += 1;
            "rotated".to_owned()
        }
        Ok(Outcome::Skipped { why, .. }) => format!("skipped: {why}"),
        Ok(Outcome::Advanced { next, .. }) => format!("advanced to {next}"),
        Ok(Outcome::NotBegun { .. }) => "not begun".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    w.note(format!("p{} {what} {secret}: {said}", p.proc.id));
    if let Err(e) = out {
        if broken(e) {
            w.violation(format!("{secret}: {e}"));
        }
    }
    let settled = out.as_ref().err().is_none_or(settled);
    outcomes
        .lock()
        .expect("outcomes")
        .insert(secret.to_owned(), (said, settled));
}

/// An application: reads AWSCURRENT of its secret through a cache (`ttl`; `None`: once, as an
/// ECS task's `secrets`), and logs in along its path every `every` ms. A refused login is a
/// violation. It stops when its secret is scheduled for deletion (it moved on).
pub(super) async fn app(
    shared: Arc<Shared>,
    name: String,
    secret: String,
    ttl: Option<u64>,
    every: u64,
) {
    let mut cached: Option<(String, String, String, u64)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(every)).await;
        let mut w = shared.world();
        let now = w.now_ms;
        let Some(s) = w.secrets.get(&secret) else {
            return;
        };
        if s.deletion != Deletion::No {
            return;
        }
        let expired = cached
            .as_ref()
            .is_none_or(|c| ttl.is_some_and(|ttl| now - c.3 >= ttl));
        if expired && !s.denied {
            if let Some(v) = s.value_at("AWSCURRENT") {
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                cached = Some((field("username"), field("password"), field("host"), now));
            }
        }
        let Some((user, password, host, read_at)) = cached.clone() else {
            continue;
        };
        let ok = if host == w.proxy.host {
            w.proxy_login(&user, &password, &name)
        } else {
            w.db_login(&host, &user, &password, &name)
        };
        w.stats.app_logins += 1;
        if !ok {
            let age = (now - read_at) / 1000;
            w.violation(format!(
                "{name}: {user}'s credentials, read {age} s ago, refused through {host}"
            ));
        }
        w.check();
    }
}
