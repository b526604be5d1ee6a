//! One simulated process: its clock, and the engine's ports over the modelled services, with
//! the faults the seed chose between the process and each service.

use std::future::Future;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::world::{Rng, World};
use crate::rotation::clock::Clock;
use crate::rotation::ports::*;
use crate::rotation::record::{BeginIf, StepRecord};
use crate::rotation::OffsetClock;
use crate::secret::{Credentials, Endpoint, Engine};

/// Wall-clock milliseconds at the start of every run (a date in 2027).
pub const EPOCH_MS: u64 = 1_800_000_000_000;

/// The services a process talks to, for partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Secrets,
    Records,
    Database,
}

/// Chances per call, and the windows the seed chose; shared by every process of a run.
#[derive(Debug)]
pub struct Chaos {
    pub rng: Rng,
    pub on: bool,
    /// Throttling or a 5xx: refused before any effect.
    pub p_refused: f64,
    /// The effect applies, the answer is lost.
    pub p_lost: f64,
    /// Slower than the lease.
    pub p_slow: f64,
    /// The process dies right after the effect, before it sees the answer.
    pub p_crash_after: f64,
    /// A process that dies after an effect far more often: Secrets Manager's function, which
    /// Lambda stops at its deadline.
    pub fragile: Option<usize>,
    /// (process, service, from, to) in ms of true time: calls get no answer.
    pub partitions: Vec<(usize, Service, u64, u64)>,
}

/// What one call meets.
enum Fate {
    Answer,
    Refused,
    Lost,
    Slow(Duration),
    NoAnswer,
    CrashAfter,
}

/// Shared by every process of a run.
pub struct Shared {
    pub world: Mutex<World>,
    pub chaos: Mutex<Chaos>,
    pub start: Instant,
    pub aws_timeout: Duration,
    pub db_timeout: Duration,
}

impl Shared {
    pub fn world(&self) -> MutexGuard<'_, World> {
        let mut w = self.world.lock().expect("world");
        w.now_ms = self.start.elapsed().as_millis() as u64;
        w
    }
}

#[derive(Clone)]
pub struct Proc {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// Its clocks: the wall clock off the true time (and may jump), the monotonic one tokio's,
    /// which the run pauses and advances.
    pub clock: Arc<OffsetClock>,
    /// Set when the process dies (a fault, or the run's crash schedule): its task stops at
    /// once (`until_dead`).
    pub dead: Arc<tokio::sync::watch::Sender<bool>>,
}

fn unavailable(what: &str) -> String {
    format!("simulated: {what}")
}

impl Proc {
    fn fate(&self, service: Service) -> Fate {
        let now = self.shared.start.elapsed().as_millis() as u64;
        let mut c = self.shared.chaos.lock().expect("chaos");
        if !c.on {
            return Fate::Answer;
        }
        let cut = c
            .partitions
            .iter()
            .any(|&(p, s, from, to)| p == self.id && s == service && (from..to).contains(&now));
        if cut {
            return Fate::NoAnswer;
        }
        let roll: f64 = c.rng.random();
        let (a, b, d) = (
            c.p_refused,
            c.p_refused + c.p_lost,
            c.p_refused + c.p_lost + c.p_slow,
        );
        if roll < a {
            Fate::Refused
        } else if roll < b {
            Fate::Lost
        } else if roll < d {
            Fate::Slow(Duration::from_millis(c.rng.random_range(1_000..60_000)))
        } else if roll
            < d + c.p_crash_after.max(if c.fragile == Some(self.id) {
                0.03
            } else {
                0.0
            })
        {
            Fate::CrashAfter
        } else {
            Fate::Answer
        }
    }

    fn timeout(&self, service: Service) -> Duration {
        match service {
            Service::Database => self.shared.db_timeout,
            _ => self.shared.aws_timeout,
        }
    }

    /// One call: `effect` runs on the world when (and if) the call lands. `Err` is the
    /// transport's failure, for the caller to turn into its port's error.
    async fn call<T: Send + 'static>(
        &self,
        service: Service,
        what: String,
        effect: impl FnOnce(&mut World) -> T + Send + 'static,
    ) -> Result<T, String> {
        let fate = self.fate(service);
        let limit = self.timeout(service);
        let id = self.id;
        let faulted = !matches!(fate, Fate::Answer);
        if faulted {
            self.shared.world().stats.faults += 1;
        }
        let apply = |shared: &Shared, effect: Effect<T>| land(shared, id, &what, effect);
        let effect: Effect<T> = Box::new(effect);
        match fate {
            Fate::Answer => Ok(apply(&self.shared, effect)),
            Fate::Refused => {
                self.shared.world().note(format!("p{id} {what}: throttled"));
                Err(unavailable("ThrottlingException"))
            }
            Fate::Lost => {
                apply(&self.shared, effect);
                self.shared.world().note(format!("p{id}   (answer lost)"));
                Err(unavailable("the answer was lost"))
            }
            Fate::NoAnswer => {
                tokio::time::sleep(limit).await;
                self.shared
                    .world()
                    .note(format!("p{id} {what}: no answer (partition)"));
                Err(unavailable("no answer"))
            }
            Fate::CrashAfter => {
                apply(&self.shared, effect);
                self.die("after its effect").await
            }
            // A database statement lands within the server's own bound (`db_timeout`); an AWS
            // request may land after the client gave up.
            // Once sent, the request lands whatever becomes of the sender (it may die while it
            // waits for the answer).
            Fate::Slow(d) if service == Service::Database || d <= limit => {
                let d = d.min(limit);
                let (shared, (tx, rx)) = (self.shared.clone(), tokio::sync::oneshot::channel());
                let what = what.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.send(land(&shared, id, &what, effect));
                });
                rx.await.map_err(|_| unavailable("the runtime ended"))
            }
            Fate::Slow(d) => {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let mut w = shared.world();
                    let _ = effect(&mut w);
                    w.note(format!("p{id} {what} (landed late)"));
                    w.check();
                });
                tokio::time::sleep(limit).await;
                Err(unavailable("timed out"))
            }
        }
    }

    /// The process dies here: nothing after this runs (the run aborts its task).
    pub async fn die<T>(&self, why: &str) -> T {
        {
            let mut w = self.shared.world();
            w.stats.crashes += 1;
            w.note(format!("p{} CRASH {why}", self.id));
        }
        self.dead.send_replace(true);
        std::future::pending().await
    }

    /// Whether an operator aborts after a failure (a quarter of the time, while faults last).
    pub fn operator_aborts(&self) -> bool {
        let mut c = self.shared.chaos.lock().expect("chaos");
        c.on && c.rng.random_bool(0.25)
    }

    fn hint(&self, ttl: Duration) -> u64 {
        self.clock.now_ms() + ttl.as_millis() as u64
    }
}

/// What a call does to the world when it lands.
type Effect<T> = Box<dyn FnOnce(&mut World) -> T + Send>;

/// A call lands: its effect, a line of the trace, the invariants.
fn land<T>(shared: &Shared, id: usize, what: &str, effect: Effect<T>) -> T {
    let mut w = shared.world();
    let out = effect(&mut w);
    w.note(format!("p{id} {what}"));
    w.check();
    out
}

fn sm_err(e: String) -> SecretStoreError {
    SecretStoreError::Unavailable(e)
}

fn rs_err(e: String) -> RecordStoreError {
    RecordStoreError::Unavailable(e)
}

#[async_trait]
impl SecretStore for Proc {
    async fn describe(&self, secret_id: &str) -> Result<SecretMeta, SecretStoreError> {
        let id = secret_id.to_owned();
        self.call(Service::Secrets, format!("sm.describe {id}"), move |w| {
            w.describe(&id)
        })
        .await
        .map_err(sm_err)?
    }

    async fn get(
        &self,
        secret_id: &str,
        at: At<'_>,
    ) -> Result<Option<SecretVersion>, SecretStoreError> {
        let id = secret_id.to_owned();
        let (stage, version) = match at {
            At::Stage(s) => (Some(s), None),
            At::Version(v) => (None, Some(v.to_owned())),
        };
        let what = format!("sm.get {id} {stage:?} {version:?}");
        self.call(Service::Secrets, what, move |w| {
            w.get(&id, stage, version.as_deref())
        })
        .await
        .map_err(sm_err)?
    }

    async fn put(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        stage: Stage,
    ) -> Result<(), SecretStoreError> {
        let (id, token, value) = (
            secret_id.to_owned(),
            token.to_owned(),
            value.expose_secret().to_owned(),
        );
        let what = format!("sm.put {id} {token} {}", stage.as_str());
        self.call(Service::Secrets, what, move |w| {
            w.put(&id, &token, &value, stage)
        })
        .await
        .map_err(sm_err)?
    }

    async fn move_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        to: &str,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        let (id, to, from) = (secret_id.to_owned(), to.to_owned(), from.to_owned());
        let what = format!("sm.move {id} {} {from} -> {to}", stage.as_str());
        self.call(Service::Secrets, what, move |w| {
            w.move_stage(&id, stage, &to, &from)
        })
        .await
        .map_err(sm_err)?
    }

    async fn remove_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        let (id, from) = (secret_id.to_owned(), from.to_owned());
        let what = format!("sm.remove {id} {} {from}", stage.as_str());
        self.call(Service::Secrets, what, move |w| {
            w.remove_stage(&id, stage, &from)
        })
        .await
        .map_err(sm_err)?
    }
}

#[async_trait]
impl RecordStore for Proc {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        take_over: Option<&LeaseSeen>,
    ) -> Result<Acquired, RecordStoreError> {
        let sent = Instant::now();
        let (k, o, seen, hint, p) = (
            key.to_owned(),
            owner.to_owned(),
            take_over.cloned(),
            self.hint(ttl),
            self.id,
        );
        let what = format!("ddb.acquire {key} as {owner}");
        let mut got = self
            .call(Service::Records, what, move |w| {
                let (got, fence) = w.acquire(&k, &o, ttl, hint, seen.as_ref());
                if let Some(fence) = fence {
                    w.holding.insert(p, (k, fence));
                }
                got
            })
            .await
            .map_err(rs_err)?;
        if let Acquired::Granted { lease, .. } = &mut got {
            lease.sent_at = sent;
        }
        Ok(got)
    }

    async fn begin(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        record: &StepRecord,
        cond: &BeginIf,
    ) -> Result<Acquired, RecordStoreError> {
        let sent = Instant::now();
        let (k, o, r, c, hint, p) = (
            key.to_owned(),
            owner.to_owned(),
            record.clone(),
            cond.clone(),
            self.hint(ttl),
            self.id,
        );
        let what = format!("ddb.begin {key} as {owner}");
        let mut got = self
            .call(Service::Records, what, move |w| {
                let (got, fence) = w.begin(&k, &o, ttl, hint, &r, &c);
                if let Some(fence) = fence {
                    w.holding.insert(p, (k, fence));
                }
                got
            })
            .await
            .map_err(rs_err)?;
        if let Acquired::Granted { lease, .. } | Acquired::Begun { lease, .. } = &mut got {
            lease.sent_at = sent;
        }
        Ok(got)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), RecordStoreError> {
        let (k, o, f, hint) = (
            lease.key.clone(),
            lease.owner.clone(),
            lease.fence,
            self.hint(ttl),
        );
        self.call(
            Service::Records,
            format!("ddb.renew {k} fence {f}"),
            move |w| w.renew(&k, &o, f, ttl, hint),
        )
        .await
        .map_err(rs_err)?
    }

    async fn save(&self, lease: &Lease, record: &StepRecord) -> Result<(), RecordStoreError> {
        let (k, f, r) = (lease.key.clone(), lease.fence, record.clone());
        let what = format!("ddb.save {k} fence {f} {} {}", r.state.as_str(), r.step);
        self.call(Service::Records, what, move |w| w.save(&k, f, &r, false))
            .await
            .map_err(rs_err)?
    }

    async fn save_and_release(
        &self,
        lease: &Lease,
        record: &StepRecord,
    ) -> Result<(), RecordStoreError> {
        let (k, f, r, p) = (lease.key.clone(), lease.fence, record.clone(), self.id);
        let what = format!(
            "ddb.save+release {k} fence {f} {} {}",
            r.state.as_str(),
            r.step
        );
        self.call(Service::Records, what, move |w| {
            let saved = w.save(&k, f, &r, true);
            if saved.is_ok() {
                w.let_go(p, &k, f);
            }
            saved
        })
        .await
        .map_err(rs_err)?
    }

    async fn release(&self, lease: &Lease) -> Result<(), RecordStoreError> {
        let (k, f, p) = (lease.key.clone(), lease.fence, self.id);
        self.call(
            Service::Records,
            format!("ddb.release {k} fence {f}"),
            move |w| {
                w.release(&k, f);
                w.let_go(p, &k, f);
            },
        )
        .await
        .map_err(rs_err)
    }

    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError> {
        let k = key.to_owned();
        self.call(Service::Records, format!("ddb.load {k}"), move |w| {
            w.items.get(&k).and_then(|i| i.record.clone())
        })
        .await
        .map_err(rs_err)
    }

    async fn claim_user(
        &self,
        user_key: &str,
        claim: &UserClaim,
        replacing: Option<&UserClaim>,
    ) -> Result<Claimed, RecordStoreError> {
        let (k, c, r) = (user_key.to_owned(), claim.clone(), replacing.cloned());
        let what = format!("ddb.claim {k} for {}", c.secret);
        self.call(Service::Records, what, move |w| {
            w.claim_user(&k, &c, r.as_ref())
        })
        .await
        .map_err(rs_err)
    }

    async fn mark_in_use(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        let (k, s) = (user_key.to_owned(), secret.to_owned());
        self.call(Service::Records, format!("ddb.mark {k} by {s}"), move |w| {
            w.marks.entry(k).or_default().insert(s);
        })
        .await
        .map_err(rs_err)
    }

    async fn unmark(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        let (k, s) = (user_key.to_owned(), secret.to_owned());
        self.call(
            Service::Records,
            format!("ddb.unmark {k} by {s}"),
            move |w| {
                if let Some(set) = w.marks.get_mut(&k) {
                    set.remove(&s);
                }
                if let Some(r) = w.items.get_mut(&s).and_then(|i| i.record.as_mut()) {
                    r.marked.retain(|m| *m != k);
                }
            },
        )
        .await
        .map_err(rs_err)
    }

    async fn user_marks(
        &self,
        user_key: &str,
    ) -> Result<(Option<UserClaim>, Vec<String>), RecordStoreError> {
        let k = user_key.to_owned();
        self.call(Service::Records, format!("ddb.marks {k}"), move |w| {
            let marks = w
                .marks
                .get(&k)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            (w.claims.get(&k).cloned(), marks)
        })
        .await
        .map_err(rs_err)
    }
}

fn db_err(at: &Endpoint) -> impl FnOnce(String) -> DbError + '_ {
    move |reason| DbError::Unreachable {
        at: at.to_string(),
        reason,
    }
}

#[async_trait]
impl Database for Proc {
    async fn check_login(
        &self,
        _engine: Engine,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError> {
        let (host, user, pw) = (
            at.host.clone(),
            creds.username.clone(),
            creds.password.expose_secret().to_owned(),
        );
        let what = format!("db.login {user} at {host}");
        let ok = self
            .call(Service::Database, what, move |w| {
                if host == w.proxy.host {
                    w.proxy_login(&user, &pw, "rotator")
                } else {
                    w.db_login(&host, &user, &pw, "rotator")
                }
            })
            .await
            .map_err(db_err(at))?;
        if ok {
            Ok(())
        } else {
            Err(DbError::LoginRejected(creds.username.clone()))
        }
    }

    async fn login(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        self.check_login(engine, at, login).await?;
        Ok(Box::new(SimSession {
            proc: self.clone(),
            at: at.clone(),
            login_user: login.username.clone(),
        }))
    }

    async fn privileges(
        &self,
        _engine: Engine,
        _at: &Endpoint,
        _login: &Credentials,
        _user: &str,
    ) -> Result<Vec<String>, DbError> {
        Ok(Vec::new())
    }
}

/// A session on the modelled server: a user changes its own password.
struct SimSession {
    proc: Proc,
    at: Endpoint,
    login_user: String,
}

#[async_trait]
impl DbSession for SimSession {
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<(), DbError> {
        if self.login_user != user {
            return Err(DbError::NotPermitted("permission denied".into()));
        }
        let (host, user, pw, p) = (
            self.at.host.clone(),
            user.to_owned(),
            password.expose_secret().to_owned(),
            self.proc.id,
        );
        let what = format!("db.set_password {user} at {host}");
        // The lease the process holds when it sends the statement: still its own when the
        // statement lands?
        let held = self.proc.shared.world().holding.get(&p).cloned();
        self.proc
            .call(Service::Database, what, move |w| {
                w.check_holder(p, held, &user);
                if let Some(i) = w.server_at(&host) {
                    w.servers[i].passwords.insert(user, pw);
                }
            })
            .await
            .map_err(db_err(&self.at))
    }

    async fn identity(&mut self) -> Result<ServerIdentity, DbError> {
        let host = self.at.host.clone();
        let id = self
            .proc
            .call(
                Service::Database,
                format!("db.identity at {host}"),
                move |w| w.server_at(&host).map(|i| w.servers[i].id.clone()),
            )
            .await
            .map_err(db_err(&self.at))?;
        let key = id.unwrap_or_else(|| format!("unknown:{}", self.at.host));
        Ok(ServerIdentity {
            detail: key.clone(),
            key,
        })
    }

    async fn preflight(&mut self) -> Result<PasswordRules, DbError> {
        Ok(PasswordRules::default())
    }

    async fn accounts(&mut self, _user: &str) -> Result<Accounts, DbError> {
        Ok(Accounts::Listed(vec!["%".into()]))
    }

    async fn recent_sessions(
        &mut self,
        user: &str,
        within: Duration,
        _mine: &[u64],
    ) -> Result<Vec<SessionGroup>, DbError> {
        let (host, user) = (self.at.host.clone(), user.to_owned());
        let what = format!("db.sessions {user} at {host}");
        self.proc
            .call(Service::Database, what, move |w| {
                let since = w.now_ms.saturating_sub(within.as_millis() as u64);
                let Some(i) = w.server_at(&host) else {
                    return Vec::new();
                };
                w.servers[i]
                    .sessions
                    .get(&user)
                    .map(|apps| {
                        apps.iter()
                            .filter(|(_, last)| **last >= since)
                            .map(|(app, _)| SessionGroup {
                                client: app.clone(),
                                application: app.clone(),
                                sessions: 1,
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .await
            .map_err(db_err(&self.at))
    }
}

#[async_trait]
impl RdsDirectory for Proc {
    async fn topology(&self, _db: &RdsDb) -> Result<Option<RdsTopology>, RdsError> {
        Ok(None)
    }
}

#[async_trait]
impl Reporter for Proc {
    async fn report(&self, _report: &RotationReport) {}
}

/// Runs `work` unless the process dies first. Death is looked at first: a dead process's
/// work is dropped without another poll, so it sends nothing more (not even a renewal).
pub async fn until_dead<T>(
    mut dead: tokio::sync::watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = dead.wait_for(|d| *d) => None,
        out = work => Some(out),
    }
}
