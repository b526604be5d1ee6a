//! `Rotator::rotate`: read the labels, plan, take the lease, decide what to do (`begin`), and
//! run it (`run`, `retry`). Plumbing only: every decision is `begin`'s, every step `protocol`'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::begin::{self, Decision};
use super::clock::Clock;
use super::early_login::{EarlyLogin, ProxyLogin};
use super::errors::RotationError;
use super::lease;
use super::ports::{
    At, Database, Lease, RdsDirectory, RecordStore, Reporter, SecretMeta, SecretStore,
    SecretStoreError, SecretVersion, Stage,
};
use super::record::{BeginIf, Plan, Step, StepRecord};
use super::report::Trace;
use super::request::{Outcome, Request};
use super::run::{Begun, Earlier, Run};
use super::settings::{LeaseWait, Settings};
use super::shutdown::Shutdown;
use super::versions::parse_app_secret;
use crate::calls::Tally;
use crate::secret::{AppSecret, UserSecret};

/// Everything a rotation talks to, plus who we are.
#[derive(Clone)]
pub struct Rotator {
    pub secrets: Arc<dyn SecretStore>,
    pub records: Arc<dyn RecordStore>,
    pub db: Arc<dyn Database>,
    /// The RDS API: a database's readers (`ports::NoRds` when turned off).
    pub rds: Arc<dyn RdsDirectory>,
    /// Metrics and events: told how every `rotate` call ended.
    pub reporter: Arc<dyn Reporter>,
    pub settings: Settings,
    /// This process's identity in leases.
    pub owner: String,
    pub shutdown: Shutdown,
    /// This process's time (`clock::SystemClock` in production).
    pub clock: Arc<dyn Clock>,
}

/// What planning decided, with what it read: AWSCURRENT parsed, and the idle user's proxy secret.
type Planned = Result<(Plan, AppSecret, Option<UserSecret>), RotationError>;

/// A new rotation as planned before the lease: its record, when the store may write it with
/// the lease, and what planning read.
struct NewRotation {
    record: StepRecord,
    cond: BeginIf,
    current: AppSecret,
    proxy: Option<UserSecret>,
}

/// How a run under the lease starts.
enum Start {
    /// A new rotation whose record was stored with the lease.
    Begun {
        record: StepRecord,
        current: AppSecret,
        proxy: Option<UserSecret>,
    },
    /// The record as the lease found it, and the plan made before (`None` when the labels it was
    /// made from may be stale): `begin::decide` says what to do.
    Found {
        existing: Option<StepRecord>,
        plan: Option<Planned>,
    },
}

/// What `open` made of a start: an answer, or a rotation to run.
// One per `rotate` call, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Answer(Outcome),
    Run {
        record: StepRecord,
        /// Continues a rotation that an earlier process started.
        resumed: bool,
        earlier: Earlier,
        /// What planning read, when this run begins the rotation.
        planned: Option<(AppSecret, Option<UserSecret>)>,
    },
}

/// How long a report may take when the caller set a hard stop: inside the margin the hard stop
/// keeps before Lambda's deadline.
const REPORT_AFTER_HARD_STOP: Duration = Duration::from_secs(3);

impl Rotator {
    /// Rotates `secret_id` (a name or an ARN) once, or finishes the rotation already in progress.
    pub async fn rotate(
        &self,
        secret_id: &str,
        request: &Request,
        wait: LeaseWait,
    ) -> Result<Outcome, RotationError> {
        let started = self.clock.now();
        let (tally, trace) = (Tally::default(), Trace::default());
        // Boxed: the whole rotation is one large future, kept off the caller's stack.
        let work = Box::pin(self.rotate_traced(secret_id, request, wait, &trace));
        let result = match request.hard_stop {
            None => tally.scope(work).await,
            Some(limit) => match self.clock.timeout(limit, tally.scope(work)).await {
                Ok(result) => result,
                Err(_) => {
                    warn!(secret = %secret_id, "stopped at the caller's hard deadline: a lease it held is left to expire");
                    Err(RotationError::Interrupted(secret_id.to_owned()))
                }
            },
        };
        let took = self.clock.now() - started;
        let report = trace.report(secret_id, &result, took, &tally);
        match request.hard_stop {
            None => self.reporter.report(&report).await,
            // Under a hard deadline (Lambda's), the report may not outlast it either.
            Some(_) => {
                let sent = self.reporter.report(&report);
                if self
                    .clock
                    .timeout(REPORT_AFTER_HARD_STOP, sent)
                    .await
                    .is_err()
                {
                    warn!(secret = %secret_id, "the rotation's report got no answer before the deadline");
                }
            }
        }
        result
    }

    async fn rotate_traced(
        &self,
        secret_id: &str,
        request: &Request,
        wait: LeaseWait,
        trace: &Trace,
    ) -> Result<Outcome, RotationError> {
        // AWSCURRENT's value, and beside it DescribeSecret: where every label is and whether
        // Secrets Manager's own rotation is attached, which planning refuses (two rotators on
        // one secret). Both at once, so the check costs no round trip.
        let (read, meta) = tokio::join!(
            self.secrets.get(secret_id, At::Stage(Stage::Current)),
            self.secrets.describe(secret_id)
        );
        let meta = meta?;
        let current = match read {
            Ok(v) => v,
            Err(e) if e.is_retryable() => return Err(e.into()),
            // Planning reads it again and records why it cannot (binary, denied, ...).
            Err(_) => None,
        };
        trace.with(|t| t.secret = Some(meta.arn.clone()));
        let now = self.clock.now_ms();
        // Planning only reads, so it runs before the lease. The write that takes the lease also
        // stores the new rotation's record when the item allows it (`BeginIf`); otherwise
        // `begin::decide` decides from the record as it stands.
        let planned = self.plan(&meta, current).await;
        // Not with AWSPENDING elsewhere: whether that is a rotation of ours that stopped, or
        // someone else's, only the record tells. Nor for Secrets Manager's calls, which name
        // their rotation: the record tells whether it began.
        let new = planned
            .as_ref()
            .ok()
            .filter(|(plan, _, _)| plan.pending_version.is_none() && request.invocation.is_none())
            .map(|(plan, current, proxy)| NewRotation {
                record: begin::new_record(
                    &meta.arn,
                    begin::new_id(),
                    plan.clone(),
                    request,
                    None,
                    now,
                ),
                cond: begin::begin_if(plan, request, now),
                current: current.clone(),
                proxy: proxy.clone(),
            });
        let taken = lease::acquire(
            self,
            &meta.arn,
            wait,
            |r| begin::skip_reason(r, request, now),
            new.as_ref().map(|n| (&n.record, &n.cond)),
        )
        .await?;
        let (lease, meta, start) = match taken {
            lease::Taken::Answered(why) => {
                info!(secret = %meta.arn, %why, "rotation skipped");
                return Ok(Outcome::Skipped {
                    secret_arn: meta.arn,
                    why,
                });
            }
            lease::Taken::Begun(lease, record) => {
                let Some(new) = new else {
                    unreachable!("only a new rotation's record is stored with the lease")
                };
                let start = Start::Begun {
                    record: *record,
                    current: new.current,
                    proxy: new.proxy,
                };
                (lease, meta, start)
            }
            lease::Taken::Lease(lease, existing, waited) => {
                // If another holder may have moved AWSCURRENT since the labels were read (we
                // waited for it, or its record names a rotation that is not AWSCURRENT in what we
                // read), read them again: a plan from stale labels would pick the user now in use.
                let stale = waited
                    || existing
                        .as_ref()
                        .is_some_and(|r| begin::labels_stale(r, meta.version_with(Stage::Current)));
                let (meta, plan) = if stale {
                    match self.secrets.describe(secret_id).await {
                        Ok(m) => (m, None),
                        Err(e) => {
                            let _ = self.records.release(&lease).await;
                            return Err(e.into());
                        }
                    }
                } else {
                    (meta, Some(planned))
                };
                let start = Start::Found {
                    existing: existing.map(|r| *r),
                    plan,
                };
                (lease, meta, start)
            }
        };
        let flags = lease::Flags::new(self.clock.clone(), &lease, self.settings.lease_duration);
        let result = lease::heartbeat(
            self,
            &lease,
            &flags,
            self.run(&lease, &flags, &meta, start, request, trace),
        )
        .await;
        if flags.released.load(Ordering::SeqCst) {
            return result;
        }
        if flags.cut.load(Ordering::SeqCst) {
            warn!(secret = %meta.arn, "stopped inside a step: the lease is left to expire, so that nothing it sent lands after another process takes over");
            return result;
        }
        if let Err(e) = self.records.release(&lease).await {
            warn!(secret = %meta.arn, error = %e, "could not release the lease; it will expire");
        }
        result
    }

    /// Under the lease: decide, then run the rotation to its end or the call's step.
    async fn run(
        &self,
        lease: &Lease,
        flags: &lease::Flags,
        meta: &SecretMeta,
        start: Start,
        request: &Request,
        trace: &Trace,
    ) -> Result<Outcome, RotationError> {
        let now = self.clock.now_ms();
        let begun_with_lease = matches!(start, Start::Begun { .. });
        let (record, resumed, earlier, planned) =
            match self.open(lease, meta, start, request, now).await? {
                Opened::Answer(outcome) => return Ok(outcome),
                Opened::Run {
                    record,
                    resumed,
                    earlier,
                    planned,
                } => (record, resumed, earlier, planned),
            };
        trace.record(&record, resumed);
        let begins = planned.is_some() && request.invocation.is_none();
        if begins && request.force {
            if let Some(why) = begin::too_soon(&record, request, now) {
                warn!(secret = %meta.arn, %why, "forced: rotating inside the minimum interval");
            }
        }
        // set_password tries the idle user's proxy secret first, and planning read it: a new
        // rotation logs in with it now, while AWSPENDING is written. Only now, under the lease,
        // once this run begins a rotation: a copy of a request never logs in (a failed login
        // may count towards locking the user out).
        let login = planned
            .as_ref()
            .and_then(|(current, proxy)| {
                let login = proxy.as_ref()?.credentials.clone();
                Some(ProxyLogin::Opening(EarlyLogin::start(
                    self.db.clone(),
                    current.engine,
                    current.admin_endpoint().clone(),
                    login,
                )))
            })
            .unwrap_or(ProxyLogin::NotOpened);
        if begins && !begun_with_lease {
            // Persisted before AWSPENDING is written: from here on, any process resumes this id.
            self.records.save(lease, &record).await?;
        }
        let (current, proxy) = planned.unzip();
        let run = Run::new(
            self,
            Begun {
                lease,
                flags,
                trace,
                record,
                labels: meta.clone(),
                earlier,
                current,
                proxy: proxy.flatten(),
                login,
                in_use: self
                    .settings
                    .in_use
                    .policy
                    .for_request(request.ignore_in_use),
                through: request
                    .invocation
                    .as_ref()
                    .map_or(Step::Done, |c| c.through),
            },
        );
        self.drive_with_retries(run, request, resumed).await
    }

    /// Acts on `begin::decide`'s answer: the record a run starts from, or the answer.
    async fn open(
        &self,
        lease: &Lease,
        meta: &SecretMeta,
        start: Start,
        request: &Request,
        now: u64,
    ) -> Result<Opened, RotationError> {
        let (existing, plan) = match start {
            Start::Begun {
                record,
                current,
                proxy,
            } => {
                announce(&record, &current);
                return Ok(Opened::Run {
                    record,
                    resumed: false,
                    earlier: Earlier::Nothing,
                    planned: Some((current, proxy)),
                });
            }
            Start::Found { existing, plan } => (existing, plan),
        };
        let previous = match begin::decide(meta, existing, request, now)? {
            Decision::Answer(outcome) => return Ok(Opened::Answer(outcome)),
            Decision::Skip(why) => {
                info!(secret = %meta.arn, %why, "rotation skipped");
                return Ok(Opened::Answer(Outcome::Skipped {
                    secret_arn: meta.arn.clone(),
                    why,
                }));
            }
            Decision::Retry(r) => {
                info!(secret = %meta.arn, rotation_id = r.rotation_id.as_deref().unwrap_or(""),
                      step = %r.step, "Secrets Manager retries this failed rotation");
                // In progress again, for everyone: a call with nothing to do saves nothing
                // else, and a queue request in between must resume it, not begin another.
                self.records.save(lease, &r).await?;
                return Ok(resume(r));
            }
            Decision::Resume(r) => {
                info!(secret = %meta.arn, rotation_id = r.rotation_id.as_deref().unwrap_or(""),
                      step = %r.step, attempts = r.attempts, "resuming rotation");
                return Ok(resume(r));
            }
            Decision::Unstrand(version) => {
                // A CAS: a later rotation's label (on another version) is left alone.
                match self
                    .secrets
                    .remove_stage(&meta.arn, Stage::Pending, &version)
                    .await
                {
                    Ok(()) | Err(SecretStoreError::Refused(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                return Err(RotationError::StrandedPending {
                    secret: meta.arn.clone(),
                    version,
                });
            }
            Decision::Begin(previous) => previous,
        };
        let planned = match plan {
            Some(p) => p,
            None => self.plan(meta, None).await,
        };
        let begun = planned.and_then(|(plan, current, proxy)| {
            let (id, earlier) = begin::new_rotation(
                meta,
                &plan,
                previous.as_ref(),
                request,
                &self.settings,
                self.clock.now_ms(),
                begin::new_id(),
            )?;
            Ok((id, earlier, plan, current, proxy))
        });
        match begun {
            Ok((id, earlier, plan, current, proxy)) => {
                let record =
                    begin::new_record(&meta.arn, id, plan, request, previous.as_ref(), now);
                announce(&record, &current);
                Ok(Opened::Run {
                    record,
                    resumed: false,
                    earlier,
                    planned: Some((current, proxy)),
                })
            }
            Err(e) => {
                if begin::recorded_refusal(&e) {
                    let mut failed = StepRecord::failed_to_begin(
                        &meta.arn,
                        e.to_string(),
                        previous.as_ref(),
                        now,
                    );
                    failed.request_id = request.request_id.clone();
                    failed.reason = request.reason.clone();
                    if let Err(save) = self.records.save(lease, &failed).await {
                        warn!(secret = %meta.arn, error = %save, "could not record the failure");
                    }
                }
                Err(e)
            }
        }
    }

    /// Decides who rotates to whom, before anything is written. Every check that could reject the
    /// secret runs here, so bad input changes nothing. `read` is AWSCURRENT's version when the
    /// caller has it already.
    async fn plan(&self, meta: &SecretMeta, read: Option<SecretVersion>) -> Planned {
        let arn = &meta.arn;
        let current_version =
            meta.version_with(Stage::Current)
                .ok_or_else(|| RotationError::Inconsistent {
                    secret: arn.clone(),
                    reason: "no version is labelled AWSCURRENT".into(),
                })?;
        let current = match read.filter(|v| v.version_id == current_version) {
            Some(v) => parse_app_secret(arn, &v)?,
            None => self.read_app_secret(arn, current_version).await?,
        };
        self.settings.password.validate(current.engine)?;
        self.settings.refuse_managed_rotation(meta)?;
        let target = current.next_username().to_owned();
        let proxy = self.find_proxy_secret(&current, &target).await?;
        let pending = meta.version_with(Stage::Pending);
        let pending_version = pending.filter(|v| *v != current_version).map(str::to_owned);
        let pending_left = pending.filter(|v| *v == current_version).map(str::to_owned);
        let plan = Plan {
            current_version: current_version.to_owned(),
            current_user: current.credentials.username.clone(),
            target_user: target,
            proxy_secret_id: proxy.as_ref().map(|p| p.id.clone()),
            proxy_version: proxy.as_ref().map(|p| p.version_id.clone()),
            pending_version,
            pending_left,
        };
        Ok((plan, current, proxy.map(|p| p.secret)))
    }
}

/// A rotation an earlier process started: its steps look before they write.
fn resume(record: StepRecord) -> Opened {
    Opened::Run {
        record,
        resumed: true,
        earlier: Earlier::Unknown,
        planned: None,
    }
}

fn announce(record: &StepRecord, current: &AppSecret) {
    let target = record.target_user.as_deref().unwrap_or_default();
    if !current.is_multi_user() {
        warn!(secret = %record.secret_id, user = %target,
              "single-user rotation: the password in use changes, so applications may briefly fail to log in");
    }
    info!(secret = %record.secret_id, rotation_id = record.rotation_id.as_deref().unwrap_or_default(),
          from = record.current_user.as_deref().unwrap_or_default(), to = %target, "starting rotation");
}
