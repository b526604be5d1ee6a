//! The rotation protocol, in domain terms only.
//!
//! A secret names a pair (or ring) of database users. Applications use the user in AWSCURRENT;
//! the rotation changes the password of the *next* user, the idle one, so no application ever
//! holds credentials that stop working. Each rotation runs these steps under a fenced lease, and
//! persists the step record where it matters (see `Run::drive`):
//!
//! | step           | effect                                              | already done when                         |
//! |----------------|-----------------------------------------------------|-------------------------------------------|
//! | (begin)        | record: rotation id, current version, users (with the lease) | a record in progress exists: resume it |
//! | create_pending | AWSPENDING version, ClientRequestToken = rotation id; beside it, the claim on the idle user | version `rotation id` exists |
//! | set_password   | the idle user's password in the database, unless it is still in use (`guard`) | the pending credentials log in |
//! | update_proxy   | the idle user's RDS Proxy secret = new password (staged, then CAS on the planned version) | version `proxy_token(rotation id)` is AWSCURRENT |
//! | test           | pending credentials log in along the app's path      | (read-only: always re-run)                |
//! | finish         | AWSPENDING still ours? AWSCURRENT -> pending (CAS on the old version), drop AWSPENDING | AWSCURRENT is the rotation id |
//!
//! The rotation id is persisted before AWSPENDING is written, so a crash at any instant resumes
//! with the same id, and the resumed run reads the password back from that version instead of
//! generating a new one. A rotation that fails or is aborted after set_password leaves its id in
//! the record, and the next one logs in with that version's password (`KnownSource`).
//!
//! Planning refuses, before anything is written, a secret that another rotator also works on:
//! Secrets Manager's own rotation attached to a function that is not this tool, or an AWSPENDING
//! that no rotation of ours made (nor Secrets Manager, for this tool's function).
//!
//! Secrets Manager's rotation function (`crate::lambda`) runs these same steps: each of its calls
//! names the rotation by its ClientRequestToken and runs the steps up to its own
//! (`invocation`), so a rotation may be begun by one process and finished by another.

pub mod abort;
pub mod bluegreen;
pub mod guard;
pub mod invocation;
pub mod lease;
pub mod ports;
pub mod record;

#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::calls::Tally;
use crate::failpoint;
use crate::password::{PasswordPolicy, PolicyError};
use crate::secret::{AppSecret, Credentials, Endpoint, Engine, SecretError, UserSecret};
pub use invocation::Invocation;
use invocation::{invoked, Invoked};
use ports::{
    Accounts, At, Database, DbError, DbSession, InUse, Lease, PasswordRules, RdsDirectory,
    RdsError, RecordStore, RecordStoreError, ReportOutcome, Reporter, RotationReport, SecretMeta,
    SecretStore, SecretStoreError, SecretVersion, Stage, UserClaim,
};
use record::{now_ms, BeginIf, Plan, Step, StepRecord};

/// Backoff for retryable errors. One value, documented defaults, used everywhere a step retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wall-clock bound on each database call: a login (connect, TLS, authentication) or
    /// one statement. A server that accepts and never answers fails with `Unreachable`.
    pub db_timeout: Duration,
    /// The wall-clock bound on each AWS call, the SDK's retries included (each attempt gets a
    /// third of it).
    pub aws_timeout: Duration,
    /// First delay after a retryable failure.
    pub min_delay: Duration,
    /// Delays double up to this.
    pub max_delay: Duration,
    /// How many times one process runs a rotation before reporting a retryable failure
    /// (the record stays in progress, so the next run resumes it).
    pub max_attempts: usize,
    /// The longest pause between two login probes of the test step: a probe is cheap, and the
    /// sooner the proxy's refresh is seen, the sooner AWSCURRENT moves.
    pub probe_max_delay: Duration,
    /// Attempts per AWS call, including the first, in the SDK's standard retry mode (exponential
    /// backoff with jitter on throttling, 5xx and transport errors).
    pub aws_max_attempts: u32,
    /// The SDK's initial backoff in that mode (its own default is 1 s).
    pub aws_initial_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            db_timeout: Duration::from_secs(10),
            aws_timeout: Duration::from_secs(30),
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_attempts: 3,
            probe_max_delay: Duration::from_secs(1),
            aws_max_attempts: 5,
            aws_initial_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long the test step retries the new credentials along the application's path.
    pub test_deadline: Duration,
    pub lease_duration: Duration,
    pub password: PasswordPolicy,
    pub retry: RetryPolicy,
    /// The look at the idle user's sessions before its password changes.
    pub in_use: guard::InUseGuard,
    /// Lambda functions that are this tool (`rds-rotator lambda`): Secrets Manager rotation
    /// attached to one of them is not another rotator.
    pub rotation_functions: Vec<String>,
    /// The RDS API is asked for a database's readers (`rds` is `ports::NoRds` otherwise):
    /// `check` says when it is not.
    pub rds_discovery: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            test_deadline: Duration::from_secs(60),
            lease_duration: Duration::from_secs(30),
            password: PasswordPolicy::default(),
            retry: RetryPolicy::default(),
            in_use: guard::InUseGuard::default(),
            rotation_functions: Vec::new(),
            rds_discovery: true,
        }
    }
}

impl Settings {
    /// Secrets Manager rotation attached to `meta` is refused unless its function is this tool.
    fn refuse_managed_rotation(&self, meta: &SecretMeta) -> Result<(), RotationError> {
        if !meta.rotation_enabled || self.rotated_by_own_function(meta) {
            return Ok(());
        }
        Err(RotationError::ManagedRotation {
            secret: meta.arn.clone(),
            lambda: meta.rotation_lambda.clone(),
        })
    }

    /// Secrets Manager's rotation of `meta` is on, with a function that is this tool.
    pub fn rotated_by_own_function(&self, meta: &SecretMeta) -> bool {
        meta.rotation_enabled && self.is_own_function(meta.rotation_lambda.as_deref())
    }

    /// `arn` names one of `rotation_functions`. A version or alias qualifier does not matter:
    /// it is the same code.
    pub fn is_own_function(&self, arn: Option<&str>) -> bool {
        arn.is_some_and(|arn| {
            self.rotation_functions
                .iter()
                .any(|own| unqualified(own) == unqualified(arn))
        })
    }
}

/// A Lambda function ARN without its `:version` or `:alias`
/// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`).
fn unqualified(arn: &str) -> &str {
    match arn.match_indices(':').nth(6) {
        Some((i, _)) => &arn[..i],
        None => arn,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("secret {secret} is invalid: {source}")]
    BadSecret {
        secret: String,
        #[source]
        source: SecretError,
    },
    #[error("password policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("none of the {count} proxy secrets in proxy_secret_ids is for user {user}")]
    NoProxySecret { user: String, count: usize },
    #[error("no known credentials could change the password of user {user} (tried: {tried})")]
    NoKnownCredentials { user: String, tried: String },
    #[error("AWSCURRENT of {secret} moved from version {expected} to {found} during the rotation; refusing to overwrite it")]
    CurrentMoved {
        secret: String,
        expected: String,
        found: String,
    },
    #[error("{secret} is inconsistent: {reason}")]
    Inconsistent { secret: String, reason: String },
    #[error("Secrets Manager's own rotation is enabled on {secret}{}: its function would change passwords behind this tool's back. Turn it off with `aws secretsmanager cancel-rotate-secret --secret-id {secret}`, then rotate again (if the function is this tool's `rds-rotator lambda`, name it in ROTATOR_ROTATION_FUNCTION_ARNS instead)", lambda.as_deref().map(|l| format!(" (function {l})")).unwrap_or_default())]
    ManagedRotation {
        secret: String,
        lambda: Option<String>,
    },
    #[error("AWSPENDING of {secret} is on version {version}, which no rotation of this tool made: another rotation (Secrets Manager's own, or another tool's) is under way or was left behind. Stop it (`aws secretsmanager cancel-rotate-secret --secret-id {secret}`), remove the label (`aws secretsmanager update-secret-version-stage --secret-id {secret} --version-stage AWSPENDING --remove-from-version-id {version}`), then rotate again")]
    ForeignPending { secret: String, version: String },
    #[error("AWSPENDING of {secret} moved from this rotation's version {expected} to {found}: another rotation is at work on this secret; refusing to move AWSCURRENT")]
    PendingMoved {
        secret: String,
        expected: String,
        found: String,
    },
    #[error("database user {user} is being rotated by secret {secret} (rotation {rotation_id}); this rotation waits for it to end (`rds-rotator abort {secret}` ends it)")]
    UserBusy {
        user: String,
        secret: String,
        rotation_id: String,
    },
    #[error("database user {user} is AWSCURRENT of secret {secret}, which rotates it too: changing its password would break that secret's applications. Give each secret users of its own")]
    UserShared { user: String, secret: String },
    #[error("secret {secret} marks database user {user} as its own, but cannot be read ({reason}), so its applications may still use that user; the rotation is refused and nothing was changed. Let this tool read it, or, if it no longer uses user {user}, clear its marks with `rds-rotator forget {secret}`")]
    MarkUnreadable {
        secret: String,
        user: String,
        reason: String,
    },
    #[error("refusing to change a password that other accounts may keep: {why}. The password was not changed. Either set master_secret_id to a login that may read mysql.user (it changes every account of the user), or, if {account} is the user's only account, add \"account_host\": \"{}\" to the secret", account.rsplit_once('@').map_or(account.as_str(), |(_, h)| h))]
    AccountsUnlisted { account: String, why: String },
    #[error("{source}. The rotation asks RDS for the database's readers and Blue/Green deployments: grant that action to the rotator's role, or turn the look off with --rds-discovery off (ROTATOR_RDS_DISCOVERY=off) and list the readers in the secret's reader_hosts")]
    Rds { source: RdsError },
    #[error("the database of {secret} is in Blue/Green deployment {deployment}: {why}. The rotation waits before changing the password and looks again; it goes on once the deployment is switched over or deleted (--rds-discovery off stops looking)")]
    BlueGreen {
        secret: String,
        deployment: String,
        why: String,
    },
    #[error("cannot ask the database at {at} who it is (claims on its users are keyed by the server's own identity, never by a name): {tried}")]
    NoServerIdentity { at: String, tried: String },
    #[error("{found}, so an application still logs in with credentials from two rotations ago; the rotation of {secret} waits before changing the password, and resumes once those sessions stop (`rotate --ignore-in-use` goes on anyway)")]
    UserInUse { secret: String, found: InUse },
    #[error("the in-use guard could not look at the sessions of user {user} on {unchecked}, so an application may still log in there with it; the rotation of {secret} waits before changing the password, and looks again (`rotate --ignore-in-use` goes on anyway)")]
    ReaderUnchecked {
        secret: String,
        user: String,
        unchecked: String,
    },
    #[error("the rotation {asked} of {secret} that Secrets Manager asks for cannot run: rotation {running} is in progress and finishes first (its own next attempt, or the queue's, resumes it)")]
    OtherRotation {
        secret: String,
        asked: String,
        running: String,
    },
    #[error("rotation {rotation_id} of {secret} was aborted (`rds-rotator abort`); Secrets Manager's next rotation starts a new one")]
    WasAborted { secret: String, rotation_id: String },
    #[error("Secrets Manager asks for rotation {token} of {secret}, but {why}: only a rotation that Secrets Manager started (RotateSecret, or its schedule) is begun by the rotation function")]
    NotStartedBySecretsManager {
        secret: String,
        token: String,
        why: String,
    },
    #[error("rotation of {secret} refused: {why}")]
    TooSoon { secret: String, why: String },
    #[error("cannot abort the rotation of {secret}: {why}")]
    NotAbortable { secret: String, why: String },
    #[error("Secrets Manager refused to move AWSCURRENT of {secret} although it is still on the expected version: {reason}")]
    StageMoveRefused { secret: String, reason: String },
    #[error(
        "the new credentials of user {user} did not log in through {at} within {deadline}: {last}"
    )]
    TestTimedOut {
        user: String,
        at: String,
        deadline: String,
        last: String,
    },
    #[error("the lease on {secret} is held by {owner}")]
    Busy { secret: String, owner: String },
    #[error("the lease on {0} was lost to another worker; stepping back")]
    LeaseLost(String),
    #[error(
        "shutting down: the rotation of {0} stopped after its last persisted step and will resume"
    )]
    Interrupted(String),
    #[error(transparent)]
    Secrets(#[from] SecretStoreError),
    #[error(transparent)]
    Records(#[from] RecordStoreError),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl RotationError {
    /// Retryable because something else must end first (the idle user's sessions, another
    /// rotation of the secret or of the user): waiting, not failing. The worker sends these
    /// requests again rather than counting them towards its queue's redrive limit.
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Self::UserInUse { .. }
                | Self::ReaderUnchecked { .. }
                | Self::BlueGreen { .. }
                | Self::UserBusy { .. }
                | Self::Busy { .. }
                | Self::OtherRotation { .. }
        )
    }

    /// Decided where the error is seen: transient infrastructure trouble is retryable,
    /// everything that needs a person is fatal.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::TestTimedOut { .. }
            | Self::StageMoveRefused { .. }
            | Self::UserBusy { .. }
            | Self::UserInUse { .. }
            | Self::ReaderUnchecked { .. }
            | Self::BlueGreen { .. }
            | Self::Busy { .. }
            | Self::OtherRotation { .. }
            | Self::LeaseLost(_)
            | Self::Interrupted(_) => true,
            Self::Secrets(e) => e.is_retryable(),
            Self::Rds { source } => matches!(source, RdsError::Unavailable(_)),
            Self::Records(e) => e.is_retryable(),
            Self::Database(e) => e.is_retryable(),
            Self::BadSecret { .. }
            | Self::Policy(_)
            | Self::NoProxySecret { .. }
            | Self::NoKnownCredentials { .. }
            | Self::CurrentMoved { .. }
            | Self::ManagedRotation { .. }
            | Self::ForeignPending { .. }
            | Self::PendingMoved { .. }
            | Self::NotAbortable { .. }
            | Self::WasAborted { .. }
            | Self::NotStartedBySecretsManager { .. }
            | Self::TooSoon { .. }
            | Self::UserShared { .. }
            | Self::MarkUnreadable { .. }
            | Self::NoServerIdentity { .. }
            | Self::AccountsUnlisted { .. }
            | Self::Inconsistent { .. } => false,
        }
    }
}

/// The default minimum interval between two rotations of a secret: twice the longest refresh of
/// AWS's own caching clients (an hour). Credentials read just before one rotation stay valid
/// until the next, so the interval must exceed the time any client keeps them.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(2 * 3600);

/// Why a rotation was asked for, and what may be skipped.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Rotate even if the last rotation finished less than `min_interval` ago.
    pub force: bool,
    /// Skip the request when the last successful rotation is younger than this.
    pub min_interval: Option<Duration>,
    /// The same request delivered twice (SQS redelivery, duplicate event) carries the same id;
    /// it never starts a second rotation.
    pub request_id: Option<String>,
    /// Free text kept in the record, e.g. "scheduled" or an operator's note.
    pub reason: Option<String>,
    /// Change the idle user's password even if it is in use (the guard only warns). Not implied
    /// by `force`: the interval protects caches, the guard applications that outlived them.
    pub ignore_in_use: bool,
    /// A call of the Secrets Manager rotation function (`rds-rotator lambda`), for one step.
    pub invocation: Option<Invocation>,
}

/// What `rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Rotated(Completed),
    /// Nothing to do: a rotation for this request already happened, or one happened recently.
    Skipped {
        secret_arn: String,
        why: String,
    },
    /// An invocation's steps are done; the rotation goes on with `next` (a later invocation).
    Advanced {
        secret_arn: String,
        rotation_id: String,
        next: Step,
    },
    /// An invocation after createSecret, for a rotation that never began: Secrets Manager's
    /// test of the configuration (RotateImmediately=false calls only testSecret).
    NotBegun {
        secret_arn: String,
        rotation_id: String,
    },
}

/// Asks running rotations to stop: at their next persisted step (`trigger`, SIGTERM), or
/// inside the step they are in (`stop_now`, Lambda's deadline). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<tokio::sync::watch::Sender<u8>>);

/// `Shutdown`'s levels.
const STOP_AFTER_STEP: u8 = 1;
const STOP_NOW: u8 = 2;

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.0.send_if_modified(|level| {
            let raise = *level < STOP_AFTER_STEP;
            if raise {
                *level = STOP_AFTER_STEP;
            }
            raise
        });
    }

    /// Stops the step in progress where it is: every step is idempotent, and the next run
    /// resumes it. For a deadline that kills the process (Lambda's).
    pub fn stop_now(&self) {
        self.0.send_replace(STOP_NOW);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() >= STOP_AFTER_STEP
    }

    /// Resolves once `trigger` (or `stop_now`) has been called.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|level| *level >= STOP_AFTER_STEP).await;
    }

    /// Resolves once `stop_now` has been called.
    pub async fn wait_now(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|level| *level >= STOP_NOW).await;
    }
}

/// A rotation that ran to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub secret_arn: String,
    pub rotation_id: String,
    pub previous_user: String,
    pub current_user: String,
    /// True when this run continued a rotation that an earlier process had started.
    pub resumed: bool,
}

/// How long to wait for a lease that another process holds.
#[derive(Debug, Clone, Copy)]
pub enum LeaseWait {
    /// Give up at once (a worker: the message comes back later).
    No,
    /// Wait for the holder's lease to expire, at most this long (the CLI).
    UpTo(Duration),
}

/// The deterministic ClientRequestToken of the proxy secret's new version: a retry reuses it, so
/// the write happens once.
pub fn proxy_token(rotation_id: &str) -> String {
    match Uuid::parse_str(rotation_id) {
        Ok(namespace) => Uuid::new_v5(&namespace, b"rds-proxy-secret"),
        // Secrets Manager's token is whatever RotateSecret was given (32 to 64 characters).
        Err(_) => Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("rds-proxy-secret:{rotation_id}").as_bytes(),
        ),
    }
    .to_string()
}

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
}

/// What a run learns along the way, for its report.
#[derive(Debug, Default)]
struct Trace(Mutex<TraceData>);

#[derive(Debug, Default)]
struct TraceData {
    secret: Option<String>,
    rotation_id: Option<String>,
    from_user: Option<String>,
    to_user: Option<String>,
    resumed: bool,
    steps: Vec<(Step, Duration)>,
    last_step: Option<Step>,
    retries: u32,
    in_use: Option<InUse>,
    /// A rotation split over Secrets Manager's calls: from its beginning to its end.
    whole: Option<Duration>,
}

impl Trace {
    fn with(&self, f: impl FnOnce(&mut TraceData)) {
        f(&mut self.0.lock().expect("trace lock"));
    }

    fn record(&self, r: &StepRecord, resumed: bool) {
        self.with(|t| {
            t.rotation_id.clone_from(&r.rotation_id);
            t.from_user.clone_from(&r.current_user);
            t.to_user.clone_from(&r.target_user);
            t.resumed = resumed;
        });
    }

    fn report(
        self,
        secret_id: &str,
        result: &Result<Outcome, RotationError>,
        duration: Duration,
        tally: &Tally,
    ) -> RotationReport {
        let t = self.0.into_inner().expect("trace lock");
        RotationReport {
            secret: t.secret.unwrap_or_else(|| secret_id.to_owned()),
            outcome: match result {
                Ok(Outcome::Rotated(_)) => ReportOutcome::Succeeded,
                Ok(Outcome::Skipped { why, .. }) => ReportOutcome::Skipped { why: why.clone() },
                Ok(Outcome::Advanced { next, .. }) => ReportOutcome::Advanced { next: *next },
                Ok(Outcome::NotBegun { rotation_id, .. }) => ReportOutcome::Skipped {
                    why: format!("no rotation {rotation_id} began"),
                },
                Err(e) => ReportOutcome::Failed {
                    reason: e.to_string(),
                    retryable: e.is_retryable(),
                },
            },
            rotation_id: t.rotation_id,
            from_user: t.from_user,
            to_user: t.to_user,
            resumed: t.resumed,
            duration: t.whole.unwrap_or(duration),
            steps: t.steps,
            last_step: t.last_step,
            retries: t.retries,
            calls: tally.snapshot(),
            in_use: t.in_use,
            waits_for_sessions: matches!(
                result,
                Err(RotationError::UserInUse { .. } | RotationError::ReaderUnchecked { .. })
            ),
        }
    }
}

impl Rotator {
    /// Rotates `secret_id` (a name or an ARN) once, or finishes the rotation already in progress.
    pub async fn rotate(
        &self,
        secret_id: &str,
        request: &Request,
        wait: LeaseWait,
    ) -> Result<Outcome, RotationError> {
        let started = Instant::now();
        let (tally, trace) = (Tally::default(), Trace::default());
        let result = tally
            .scope(self.rotate_traced(secret_id, request, wait, &trace))
            .await;
        let report = trace.report(secret_id, &result, started.elapsed(), &tally);
        self.reporter.report(&report).await;
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
        let now = now_ms();
        // Planning only reads, so it runs before the lease. The write that takes the lease also
        // stores the new rotation's record when the item allows it (`BeginIf`); otherwise `run`
        // decides from the record as it stands.
        let planned = self.plan(&meta, current).await;
        // Not with AWSPENDING elsewhere: whether that is a rotation of ours that stopped, or
        // someone else's, only the record tells (`run`). Nor for Secrets Manager's calls, which
        // name their rotation: the record tells whether it began.
        let new = planned
            .as_ref()
            .ok()
            .filter(|(plan, _, _)| plan.pending_version.is_none() && request.invocation.is_none())
            .map(|(plan, current, proxy)| NewRotation {
                record: new_record(&meta.arn, new_id(), plan.clone(), request, None, now),
                cond: begin_if(plan, request, now),
                current: current.clone(),
                proxy: proxy.clone(),
            });
        let taken = lease::acquire(
            self,
            &meta.arn,
            wait,
            |r| skip_reason(r, request, now),
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
                        .is_some_and(|r| labels_stale(r, meta.version_with(Stage::Current)));
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
        let flags = lease::Flags::new(&lease, self.settings.lease_duration);
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
        if let Err(e) = self.records.release(&lease).await {
            warn!(secret = %meta.arn, error = %e, "could not release the lease; it will expire");
        }
        result
    }

    async fn run(
        &self,
        lease: &Lease,
        flags: &lease::Flags,
        meta: &SecretMeta,
        start: Start,
        request: &Request,
        trace: &Trace,
    ) -> Result<Outcome, RotationError> {
        let now = now_ms();
        // `planned`: what planning a new rotation read, reused by its steps instead of read again.
        let begun = matches!(start, Start::Begun { .. });
        // `made_here`: the rotation id was made by this run, moments ago, so no version has it.
        let (record, resumed, planned, made_here) = match start {
            Start::Begun {
                record,
                current,
                proxy,
            } => {
                announce(&record, &current);
                (record, false, Some((current, proxy)), true)
            }
            Start::Found { existing, plan } => match invoked(meta, existing, request)? {
                Invoked::Answer(outcome) => return Ok(outcome),
                Invoked::Retry(mut r) => {
                    r.retried(now);
                    info!(secret = %meta.arn, rotation_id = r.rotation_id.as_deref().unwrap_or(""),
                          step = %r.step, "Secrets Manager retries this failed rotation");
                    // In progress again, for everyone: a call with nothing to do saves nothing
                    // else, and a queue request in between must resume it, not begin another.
                    self.records.save(lease, &r).await?;
                    (r, true, None, false)
                }
                Invoked::Record(existing) => match existing {
                    // A rotation in progress is always finished first, whatever was asked.
                    Some(mut r) if r.is_in_progress() => {
                        r.resumed(now);
                        info!(secret = %meta.arn, rotation_id = r.rotation_id.as_deref().unwrap_or(""),
                          step = %r.step, attempts = r.attempts, "resuming rotation");
                        (r, true, None, false)
                    }
                    Some(previous) if skip_reason(&previous, request, now).is_some() => {
                        let why = skip_reason(&previous, request, now).unwrap_or_default();
                        info!(secret = %meta.arn, %why, "rotation skipped");
                        return Ok(Outcome::Skipped {
                            secret_arn: meta.arn.clone(),
                            why,
                        });
                    }
                    previous => {
                        let planned = match plan {
                            Some(p) => p,
                            None => self.plan(meta, None).await,
                        };
                        let planned = planned.and_then(|(plan, current, proxy)| {
                            let id = rotation_id_for(
                                meta,
                                &plan,
                                previous.as_ref(),
                                request,
                                &self.settings,
                            )?;
                            Ok((id, plan, current, proxy))
                        });
                        match planned {
                            Ok((id, plan, current, proxy)) => {
                                // AWSPENDING's version taken over (Secrets Manager's token): an
                                // earlier attempt may have written its value already.
                                let made_here = plan.pending_version.as_deref() != Some(&id);
                                let record = new_record(
                                    &meta.arn,
                                    id,
                                    plan,
                                    request,
                                    previous.as_ref(),
                                    now,
                                );
                                announce(&record, &current);
                                (record, false, Some((current, proxy)), made_here)
                            }
                            Err(e) => {
                                // Refusing a call of Secrets Manager's is not a failed rotation of
                                // this secret, nor is a rotator attached that this process does
                                // not know as this tool (its rotation's record stays).
                                let refused_call = matches!(
                                    e,
                                    RotationError::TooSoon { .. }
                                        | RotationError::NotStartedBySecretsManager { .. }
                                        | RotationError::ManagedRotation { .. }
                                );
                                if !e.is_retryable() && !refused_call {
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
                                return Err(e);
                            }
                        }
                    }
                },
            },
        };
        trace.record(&record, resumed);
        // Only a rotation whose id this run made skips the steps' "already written?" reads. One
        // that Secrets Manager names (its call, or its token taken over by a worker) may have a
        // value under that id already, from an attempt whose record was lost: AWS refuses the
        // same token with another value, so its steps look before they write.
        let begins = planned.is_some() && request.invocation.is_none();
        let fresh = begins && made_here;
        if begins && request.force {
            if let Some(why) = too_soon(&record, request, now) {
                warn!(secret = %meta.arn, %why, "forced: rotating inside the minimum interval");
            }
        }
        // set_password tries the idle user's proxy secret first, and planning read it: a new
        // rotation logs in with it now, while AWSPENDING is written. Only now, under the lease,
        // once this run begins a rotation: a copy of a request never logs in (a failed login
        // may count towards locking the user out).
        let early = planned.as_ref().and_then(|(current, proxy)| {
            let login = proxy.as_ref()?.credentials.clone();
            Some(EarlyLogin::start(
                self.db.clone(),
                current.engine,
                current.admin_endpoint().clone(),
                login,
            ))
        });
        if begins && !begun {
            // Persisted before AWSPENDING is written: from here on, any process resumes this id.
            self.records.save(lease, &record).await?;
        }
        let (current, proxy) = planned.unzip();
        let mut run = Run {
            rotator: self,
            lease,
            flags,
            trace,
            record,
            meta: Some(meta.clone()),
            fresh,
            current,
            proxy: proxy.flatten(),
            pending: None,
            unsaved: false,
            early,
            opened: None,
            guard_passed: false,
            discovery: guard::Discovery::default(),
            resets: 0,
            unlisted_self: None,
            in_use: self
                .settings
                .in_use
                .policy
                .for_request(request.ignore_in_use),
            through: request.invocation.as_ref().map(|c| c.through),
        };
        let mut attempt = 1;
        let mut delays = self.settings.retry.backoff().build();
        loop {
            match run.drive().await {
                Ok(()) if run.record.step != Step::Done => {
                    let r = &run.record;
                    return Ok(Outcome::Advanced {
                        secret_arn: r.secret_id.clone(),
                        rotation_id: r.rotation_id.clone().unwrap_or_default(),
                        next: r.step,
                    });
                }
                Ok(()) => {
                    let r = &run.record;
                    if request.invocation.is_some() {
                        // Secrets Manager's calls split one rotation: it took this long.
                        let began = r.started_at.unwrap_or_else(now_ms);
                        let took = Duration::from_millis(now_ms().saturating_sub(began));
                        trace.with(|t| t.whole = Some(took));
                    }
                    return Ok(Outcome::Rotated(Completed {
                        secret_arn: r.secret_id.clone(),
                        rotation_id: r.rotation_id.clone().unwrap_or_default(),
                        previous_user: r.current_user.clone().unwrap_or_default(),
                        current_user: r.target_user.clone().unwrap_or_default(),
                        resumed,
                    }));
                }
                Err(e)
                    if e.is_retryable()
                        && attempt < self.settings.retry.max_attempts
                        && !self.shutdown.is_triggered()
                        && !matches!(
                            e,
                            RotationError::LeaseLost(_)
                                | RotationError::Interrupted(_)
                                | RotationError::Records(RecordStoreError::Fenced(_))
                                // Sessions do not end in seconds, nor do unreachable readers
                                // come back: a later run looks again.
                                | RotationError::UserInUse { .. }
                                | RotationError::ReaderUnchecked { .. }
                                | RotationError::BlueGreen { .. }
                        )
                        // The test waited its whole deadline already, unless it sent the
                        // rotation back to set the password again.
                        && (!matches!(e, RotationError::TestTimedOut { .. })
                            || run.record.step == Step::SetPassword) =>
                {
                    let delay = delays.next().unwrap_or(self.settings.retry.max_delay);
                    warn!(secret = %run.record.secret_id, step = %run.record.step, error = %e,
                          retry_in = ?delay, "retryable failure");
                    attempt += 1;
                    // The failed attempt may have done part of its step: check from now on.
                    run.fresh = false;
                    run.meta = None;
                    run.early = None;
                    run.opened = None;
                    trace.with(|t| t.retries += 1);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    run.record_failure(&e).await;
                    return Err(e);
                }
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
        let pending_version = meta
            .version_with(Stage::Pending)
            .filter(|v| *v != current_version)
            .map(str::to_owned);
        let plan = Plan {
            current_version: current_version.to_owned(),
            current_user: current.credentials.username.clone(),
            target_user: target,
            proxy_secret_id: proxy.as_ref().map(|p| p.id.clone()),
            proxy_version: proxy.as_ref().map(|p| p.version_id.clone()),
            pending_version,
        };
        Ok((plan, current, proxy.map(|p| p.secret)))
    }

    /// Moves AWSCURRENT of `secret` from version `from` to `to` by compare-and-swap. A refusal
    /// is looked into: AWSCURRENT already on `to` is our own earlier move whose answer was lost
    /// (the SDK retried and found the label gone); still on `from`, nobody raced us and the
    /// refusal says nothing about the protocol (retryable); elsewhere, someone moved it.
    async fn swap_current(
        &self,
        secret: &str,
        to: &str,
        from: &str,
    ) -> Result<Swap, RotationError> {
        let Err(e) = self
            .secrets
            .move_stage(secret, Stage::Current, to, from)
            .await
        else {
            return Ok(Swap::Done);
        };
        let SecretStoreError::Refused(reason) = e else {
            return Err(e.into());
        };
        let now = self.secrets.describe(secret).await?;
        match now.version_with(Stage::Current) {
            Some(v) if v == to => Ok(Swap::Done),
            Some(v) if v == from => Err(RotationError::StageMoveRefused {
                secret: secret.to_owned(),
                reason,
            }),
            found => Ok(Swap::Moved(found.map(str::to_owned))),
        }
    }

    /// PutSecretValue under `token`. AWS refuses a token reused with another value
    /// (ResourceExistsException): then the version is read back, and if it holds what we meant
    /// to write, it is ours (an earlier attempt whose answer was lost); if not, someone else
    /// wrote under this rotation's token, and we stop rather than guess.
    async fn put_once(
        &self,
        secret_id: &str,
        token: &str,
        value: &secrecy::SecretString,
        stage: Stage,
    ) -> Result<(), RotationError> {
        match self.secrets.put(secret_id, token, value, stage).await {
            Err(SecretStoreError::VersionExists(_)) => {}
            other => return Ok(other?),
        }
        let stored = self.secrets.get(secret_id, At::Version(token)).await?;
        let same = stored.is_some_and(|v| same_json(&v.value, value));
        if same {
            return Ok(());
        }
        Err(RotationError::Inconsistent {
            secret: secret_id.to_owned(),
            reason: format!(
                "version {token} already exists with another value: something other than this rotation wrote under its token"
            ),
        })
    }

    async fn read_app_secret(&self, arn: &str, version: &str) -> Result<AppSecret, RotationError> {
        let v = self
            .secrets
            .get(arn, At::Version(version))
            .await?
            .ok_or_else(|| RotationError::Inconsistent {
                secret: arn.to_owned(),
                reason: format!("version {version} is gone"),
            })?;
        parse_app_secret(arn, &v)
    }

    async fn read_user_secret(
        &self,
        id: &str,
        at: At<'_>,
    ) -> Result<Option<UserSecret>, RotationError> {
        Ok(self.read_user_version(id, at).await?.map(|(s, _)| s))
    }

    /// A user secret, and the id of the version read.
    async fn read_user_version(
        &self,
        id: &str,
        at: At<'_>,
    ) -> Result<Option<(UserSecret, String)>, RotationError> {
        match self.secrets.get(id, at).await? {
            None => Ok(None),
            Some(v) => UserSecret::parse(&v.value)
                .map(|s| Some((s, v.version_id)))
                .map_err(|source| RotationError::BadSecret {
                    secret: id.to_owned(),
                    source,
                }),
        }
    }

    /// The proxy secret whose `username` is `user`. With proxy secrets configured, one must match.
    /// The one listed at the user's position in `rotation_usernames` is read first: that is the
    /// usual layout, and it saves reading the others.
    async fn find_proxy_secret(
        &self,
        app: &AppSecret,
        user: &str,
    ) -> Result<Option<ProxySecret>, RotationError> {
        let ids = &app.proxy_secret_ids;
        if ids.is_empty() {
            return Ok(None);
        }
        let mut order: Vec<&String> = ids.iter().collect();
        if let Some(i) = app.rotation_usernames.iter().position(|u| u == user) {
            if i < order.len() {
                let first = order.remove(i);
                order.insert(0, first);
            }
        }
        for id in order {
            // Beside the read: a rotation function attached to the proxy secret would change
            // this user's password on its own schedule.
            let (read, meta) = tokio::join!(
                self.read_user_version(id, At::Stage(Stage::Current)),
                self.secrets.describe(id)
            );
            let (secret, version_id) = read?.ok_or_else(|| RotationError::Inconsistent {
                secret: id.clone(),
                reason: "the proxy secret does not exist or has no AWSCURRENT version".into(),
            })?;
            if secret.username() == user {
                let meta = meta?;
                if meta.rotation_enabled {
                    return Err(RotationError::ManagedRotation {
                        secret: meta.arn,
                        lambda: meta.rotation_lambda,
                    });
                }
                return Ok(Some(ProxySecret {
                    id: id.clone(),
                    version_id,
                    secret,
                }));
            }
        }
        Err(RotationError::NoProxySecret {
            user: user.to_owned(),
            count: ids.len(),
        })
    }
}

/// Two secret values mean the same JSON (key order and spacing aside).
fn same_json(a: &secrecy::SecretString, b: &secrecy::SecretString) -> bool {
    use secrecy::ExposeSecret;
    let parse = |s: &secrecy::SecretString| {
        serde_json::from_str::<serde_json::Value>(s.expose_secret()).ok()
    };
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.expose_secret() == b.expose_secret(),
    }
}

/// How `only_account` says that it could not see the accounts (not that there are several).
const UNLISTED: &str = "may not list its accounts";

/// A login of the test step that failed, and where.
struct Probe {
    at: Endpoint,
    error: DbError,
}

/// What the test step keeps of its last refused login.
struct Refused {
    at: Endpoint,
    /// The password was refused (not an unreachable server).
    rejected: bool,
    error: String,
}

/// A user that changes its own password changes one account, the one it logged in as; MySQL
/// keeps one per host, each with its own password, and RDS Proxy may match another. With more
/// than one (or when they cannot be listed and a master secret could do it), the next source
/// (the master secret) changes them all.
async fn only_account(
    session: &mut dyn DbSession,
    user: &str,
    master_later: bool,
    account_host: Option<&str>,
) -> Result<(), RotationError> {
    match session.accounts(user).await? {
        Accounts::Listed(accounts) if accounts.len() > 1 => Err(DbError::NotPermitted(format!(
            "user {user} has {} accounts ({}), each with its own password, and a user changes only the one it logged in as; the master secret changes them all",
            accounts.len(),
            accounts.join(", ")
        ))
        .into()),
        Accounts::Unlisted { .. } if master_later => Err(DbError::NotPermitted(format!(
            "user {user} {UNLISTED}, so accounts on other hosts could keep the old password; the master secret changes every one"
        ))
        .into()),
        Accounts::Unlisted { logged_in_as } => {
            unlisted_account(user, &logged_in_as, account_host).map_err(|why| {
                RotationError::AccountsUnlisted {
                    account: logged_in_as.clone(),
                    why,
                }
            })?;
            warn!(%user, account = %logged_in_as, "cannot list the user's accounts (no master secret); changing the one it logs in as");
            Ok(())
        }
        Accounts::Listed(_) => Ok(()),
    }
}

/// Before a password is made, in a session of one of the sources: the server's rules (a replica
/// refuses here), and, when the idle user would change its own password (MySQL without a master
/// secret), whether that reaches every account it has.
async fn look(
    session: &mut dyn DbSession,
    current: &AppSecret,
    target: &str,
) -> Result<PasswordRules, RotationError> {
    let rules = session.preflight().await?;
    if current.engine != Engine::Postgres && current.master_secret_id.is_none() {
        // Several listed accounts are set_password's to refuse: it tries every source first.
        if let Accounts::Unlisted { logged_in_as } = session.accounts(target).await? {
            let host = current.account_host.as_deref();
            unlisted_account(target, &logged_in_as, host).map_err(|why| {
                RotationError::AccountsUnlisted {
                    account: logged_in_as,
                    why,
                }
            })?;
        }
    }
    Ok(rules)
}

/// May a user that cannot list its accounts change its own password? It changes one account,
/// the one the server matched for this login, and MySQL matches the most specific host first.
/// So when that is `user@%`, no other account serves this address, and (for the rotator's
/// subnet) `%` is the catch-all every other address falls back to. An account on a narrower
/// host (`user@10.0.1.%`) means a catch-all may exist beside it, which would keep the old
/// password: refused, unless the secret says this host is the only one (`account_host`). A
/// secret that names a host the server did not match is wrong about the accounts: refused too.
pub(crate) fn unlisted_account(
    user: &str,
    logged_in_as: &str,
    account_host: Option<&str>,
) -> Result<(), String> {
    let (name, host) = logged_in_as.rsplit_once('@').unwrap_or(("", logged_in_as));
    if name != user {
        // An anonymous account (''@'%'), say: its password is not the user's.
        return Err(format!(
            "logging in as {user}, the rotator is matched to the account {logged_in_as}, which is not {user}'s"
        ));
    }
    match account_host {
        None if host == "%" => Ok(()),
        Some(declared) if declared == host => Ok(()),
        Some(declared) => Err(format!(
            "the secret says {user}'s only account is on host {declared}, but the rotator logs in as {logged_in_as}"
        )),
        None => Err(format!(
            "{user} logs in from here as {logged_in_as}, not as {user}@%, and may not list its accounts: another account of {user} (such as {user}@%, which serves other addresses and RDS Proxy) would keep its old password"
        )),
    }
}

/// How a compare-and-swap of AWSCURRENT ended.
enum Swap {
    Done,
    /// Someone else moved it, to this version (or removed it).
    Moved(Option<String>),
}

/// A proxy secret as planning found it.
struct ProxySecret {
    id: String,
    version_id: String,
    secret: UserSecret,
}

/// The id of a new rotation, once AWSPENDING is known to be free for it:
/// - Secrets Manager's call begins the rotation it made AWSPENDING for (its token), when the
///   minimum interval has passed;
/// - a version AWSPENDING that a rotation of ours left unfinished is taken over by a new id;
/// - otherwise AWSPENDING elsewhere is another rotator's, unless Secrets Manager made it for
///   this tool's own rotation function: then the queue's worker begins that rotation, and the
///   function's calls find it done or in progress.
fn rotation_id_for(
    meta: &SecretMeta,
    plan: &Plan,
    previous: Option<&StepRecord>,
    request: &Request,
    settings: &Settings,
) -> Result<String, RotationError> {
    let pending = plan.pending_version.as_deref();
    if let Some(call) = &request.invocation {
        if pending != Some(call.token.as_str()) {
            return Err(RotationError::NotStartedBySecretsManager {
                secret: meta.arn.clone(),
                token: call.token.clone(),
                why: match pending {
                    None => "that version is not AWSPENDING".to_owned(),
                    Some(v) => format!("AWSPENDING is on version {v}"),
                },
            });
        }
        if let Some(why) = previous.and_then(|p| too_soon(p, request, now_ms())) {
            return Err(RotationError::TooSoon {
                secret: meta.arn.clone(),
                why,
            });
        }
        return Ok(call.token.clone());
    }
    match pending {
        None => Ok(new_id()),
        Some(v) if left_by_us(v, previous) => Ok(new_id()),
        Some(v) if settings.rotated_by_own_function(meta) => Ok(v.to_owned()),
        Some(v) => Err(RotationError::ForeignPending {
            secret: meta.arn.clone(),
            version: v.to_owned(),
        }),
    }
}

/// `version` is the pending version of a rotation of ours that failed or was aborted, as the
/// record (the last one written for the secret) says.
pub(crate) fn left_by_us(version: &str, record: Option<&StepRecord>) -> bool {
    record.is_some_and(|p| {
        (p.is_unfinished() && p.rotation_id.as_deref() == Some(version))
            || p.unfinished_versions.iter().any(|v| v == version)
    })
}

fn parse_app_secret(arn: &str, v: &SecretVersion) -> Result<AppSecret, RotationError> {
    AppSecret::parse(&v.value).map_err(|source| RotationError::BadSecret {
        secret: arn.to_owned(),
        source,
    })
}

/// Why a request needs no new rotation, if it does not. Checked under the lease, so two workers
/// holding copies of one request cannot both decide to rotate.
fn skip_reason(previous: &StepRecord, request: &Request, now: u64) -> Option<String> {
    // Secrets Manager's calls name their rotation; `run` decides (`invoked`).
    if request.invocation.is_some() {
        return None;
    }
    if let (Some(asked), Some(done)) = (&request.request_id, &previous.request_id) {
        if asked == done {
            return Some(format!(
                "request {asked} was already handled ({})",
                previous.state.as_str()
            ));
        }
    }
    if request.force {
        return None;
    }
    too_soon(previous, request, now)
}

/// Why the minimum interval has not passed since the last success `record` knows of, if not.
fn too_soon(record: &StepRecord, request: &Request, now: u64) -> Option<String> {
    let (min, last) = (request.min_interval?, record.last_success_at?);
    let age = Duration::from_millis(now.saturating_sub(last));
    (age < min).then(|| {
        format!(
            "the last rotation finished {} ago, less than the minimum interval of {}: credentials that clients read before it must keep working until their caches refresh",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(min)
        )
    })
}

/// Where the idle user's current password may be known, best first.
///
/// A rotation that stops after set_password (a denied or KMS-refused proxy-secret write, a test
/// that timed out, an abort) leaves a password that only its pending version knows. That version
/// is a source here, rather than writing the proxy secret before the password changes: it covers
/// every failure after set_password, not only a refused write, and costs no call on the way of a
/// rotation that succeeds.
#[derive(Debug, Clone, Copy)]
enum KnownSource {
    /// Its RDS Proxy secret: RDS Proxy logs in with it, so it is right unless someone changed it.
    ProxySecret,
    /// The pending versions of earlier rotations of this user that failed or were aborted.
    Unfinished,
    /// The previous version of the app secret, when it was for this user.
    Previous,
    /// AWSCURRENT itself, in single-user rotation.
    Current,
    /// The master secret, when the secret names one.
    Master,
}

impl KnownSource {
    const ALL: [KnownSource; 5] = [
        KnownSource::ProxySecret,
        KnownSource::Unfinished,
        KnownSource::Previous,
        KnownSource::Current,
        KnownSource::Master,
    ];
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
    /// made from may be stale): `run` resumes, skips or begins.
    Found {
        existing: Option<StepRecord>,
        plan: Option<Planned>,
    },
}

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// A new rotation's record.
fn new_record(
    arn: &str,
    rotation_id: String,
    plan: Plan,
    request: &Request,
    previous: Option<&StepRecord>,
    now: u64,
) -> StepRecord {
    let mut record = StepRecord::begin(arn, rotation_id, plan, previous, now);
    record.request_id = request.request_id.clone();
    record.reason = request.reason.clone();
    record
}

/// `run`'s rules for beginning a new rotation, as conditions the store can check in the write that
/// takes the lease: no rotation in progress, no reason to skip (`skip_reason`), labels not stale
/// (`labels_stale`).
fn begin_if(plan: &Plan, request: &Request, now: u64) -> BeginIf {
    BeginIf {
        current_version: plan.current_version.clone(),
        request_id: request.request_id.clone(),
        last_success_by: request
            .min_interval
            .filter(|min| !request.force && !min.is_zero())
            .map(|min| now.saturating_sub(min.as_millis() as u64)),
    }
}

/// A record that is not in progress and names a rotation id other than AWSCURRENT as read:
/// another holder finished (or failed after its compare-and-swap) since, so the labels read
/// before the lease may be stale.
fn labels_stale(r: &StepRecord, current_version: Option<&str>) -> bool {
    !r.is_in_progress() && r.rotation_id.is_some() && r.rotation_id.as_deref() != current_version
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

/// One rotation in progress under a lease.
struct Run<'a> {
    rotator: &'a Rotator,
    lease: &'a Lease,
    flags: &'a lease::Flags,
    trace: &'a Trace,
    record: StepRecord,
    /// The labels as the run began (DescribeSecret); `None` once stale.
    meta: Option<SecretMeta>,
    /// This rotation began in this process and no attempt has failed yet, so no step can be
    /// half done: the steps skip their "already done?" reads. Resumed or retried runs check.
    fresh: bool,
    /// The AWSCURRENT version the rotation began from, parsed.
    current: Option<AppSecret>,
    /// The target user's proxy secret as planning read it (fresh runs only).
    proxy: Option<UserSecret>,
    /// The target user's new credentials, read back from the pending version.
    pending: Option<Credentials>,
    /// The record is ahead of what the store holds (see `drive` for when it is written).
    unsaved: bool,
    /// A login with the idle user's proxy secret, opened before the first step (fresh runs).
    early: Option<EarlyLogin>,
    /// That login once create_pending waited for it (to read the server's password rules):
    /// set_password uses it.
    opened: Option<Result<Box<dyn DbSession>, DbError>>,
    /// The in-use guard let this run change the password: setting it again (the test step found
    /// the database refusing it) does not wait for the test's own pooled connection.
    guard_passed: bool,
    /// RDS's readers of the database, asked when the run starts (see `guard::Discovery`).
    discovery: guard::Discovery,
    /// Times this run went back from the test step to set the password again.
    resets: u32,
    /// The idle user's own login, handed over to the master secret because its accounts could not
    /// be listed: the last resort if the master secret does not work.
    unlisted_self: Option<(String, Credentials)>,
    /// The in-use guard's policy for this request.
    in_use: guard::InUsePolicy,
    /// The last step to run (a call of Secrets Manager's runs up to its own step).
    through: Option<Step>,
}

/// A database login opened ahead of its use, on its own task so that it makes progress while
/// the rotation waits on other calls. Dropped unused (a step failed first), it is cancelled.
/// It asks the server who it is first: the claims beside create_pending are keyed by that, so
/// the check costs no connection of its own.
struct EarlyLogin(
    tokio::task::JoinHandle<Result<Box<dyn DbSession>, DbError>>,
    Option<lease::Identity>,
);

impl EarlyLogin {
    fn start(db: Arc<dyn Database>, engine: Engine, at: Endpoint, login: Credentials) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work = async move {
            let mut session = db.login(engine, &at, &login).await?;
            let _ = tx.send(session.identity().await);
            Ok(session)
        };
        Self(
            tokio::spawn(crate::calls::carry(work).instrument(tracing::Span::current())),
            Some(rx),
        )
    }

    async fn session(mut self) -> Result<Box<dyn DbSession>, DbError> {
        match (&mut self.0).await {
            Ok(session) => session,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: the runtime is shutting down.
                Err(_) => Err(DbError::Unreachable {
                    at: "the database".into(),
                    reason: "the login was cancelled".into(),
                }),
            },
        }
    }
}

impl Drop for EarlyLogin {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Run<'_> {
    fn arn(&self) -> &str {
        &self.record.secret_id
    }

    fn rotation_id(&self) -> &str {
        self.record
            .rotation_id
            .as_deref()
            .expect("a running rotation has an id")
    }

    fn target_user(&self) -> &str {
        self.record
            .target_user
            .as_deref()
            .expect("a running rotation has a target user")
    }

    /// Runs the steps in order. Every step checks what an earlier attempt did, so the record
    /// need not be written after each one; it is written where that buys something:
    /// - a new rotation's record before its first step (with the lease, or in `run`), so that
    ///   the rotation id is stored before AWSPENDING is written;
    /// - beside set_password: the write's fence check stops a worker that lost its lease before
    ///   the proxy secret changes. Setting the password again is harmless: it is the same
    ///   password, read from the pending version. (Before every step, a run also stops if its
    ///   lease may be lost: a renewal said so, or by its own clock the lease has run out.);
    /// - in the test, once its first login is refused: it may wait minutes for the proxy, so
    ///   status shows that, and a crash while waiting does not redo the proxy step;
    /// - with the release, after finish;
    /// - at shutdown, wherever the run stopped.
    ///
    /// "Beside" is at the same time: the step and the write run together, and the step's result
    /// counts only if the write succeeds.
    async fn drive(&mut self) -> Result<(), RotationError> {
        // A failure before the first step is not the last attempt's step's.
        self.trace.with(|t| t.last_step = None);
        // What RDS says about the database (its readers for the guard, its Blue/Green
        // deployments): asked now, beside the calls before AWSPENDING is written and the password
        // set, so that neither waits for RDS.
        if self.record.step <= Step::SetPassword {
            let db = self.current().await?.rds_db();
            self.discovery = guard::Discovery::start(self.rotator.rds.clone(), db);
        }
        self.check_current_label().await?;
        // The claims on the database users (see `lease::claim_users`) are taken beside the
        // first step of a new rotation (writing AWSPENDING changes no password), before any other.
        let mut claims = if self.record.step == Step::Done {
            None
        } else {
            let (target, in_use) = (
                self.target_user().to_owned(),
                self.record.current_user.clone().unwrap_or_default(),
            );
            let current = self.current().await?.clone();
            // Who may ask the server who it is: the user in use (its applications log in with
            // it), then the idle user's proxy secret as planning read it, then the master secret.
            let mut logins = vec![("AWSCURRENT".to_owned(), current.credentials.clone())];
            logins.extend(self.proxy.as_ref().map(|p| {
                (
                    "the idle user's proxy secret".to_owned(),
                    p.credentials.clone(),
                )
            }));
            let asked = self.early.as_mut().and_then(|e| e.1.take());
            Some(lease::UserClaims {
                asked,
                target,
                in_use,
                claim: UserClaim {
                    secret: self.record.secret_id.clone(),
                    rotation_id: self.record.rotation_id.clone().unwrap_or_default(),
                },
                engine: current.engine,
                server: current.admin_endpoint().clone(),
                logins,
                master: current.master_secret_id.clone(),
            })
        };
        if self.record.step != Step::CreatePending {
            if let Some(claims) = claims.take() {
                lease::claim_users(self.rotator, claims).await?;
            }
        }
        while self.record.step != Step::Done && self.through.is_none_or(|t| self.record.step <= t) {
            if self.flags.may_be_lost() {
                return Err(RotationError::LeaseLost(self.arn().to_owned()));
            }
            if self.rotator.shutdown.is_triggered() {
                if self.unsaved {
                    self.rotator.records.save(self.lease, &self.record).await?;
                    self.unsaved = false;
                }
                return Err(RotationError::Interrupted(self.arn().to_owned()));
            }
            let step = self.record.step;
            failpoint::hit(&format!("before:{step}")).await;
            let began = Instant::now();
            self.trace.with(|t| t.last_step = Some(step));
            // Stopped inside the step when the lease may be lost (by our own clock) or the
            // process must stop now: every step is idempotent, and the next run resumes it.
            let (flags, shutdown) = (self.flags, self.rotator.shutdown.clone());
            let next = tokio::select! {
                // Checked first: a step ready at the same moment does not send another request.
                biased;
                _ = flags.until_lost() => return Err(RotationError::LeaseLost(self.arn().to_owned())),
                _ = shutdown.wait_now() => {
                    if self.unsaved {
                        // Lambda's margin is short: a save that gets no answer is left behind.
                        let save = self.rotator.records.save(self.lease, &self.record);
                        if let Ok(saved) = tokio::time::timeout(Duration::from_secs(3), save).await {
                            saved?;
                            self.unsaved = false;
                        }
                    }
                    return Err(RotationError::Interrupted(self.arn().to_owned()));
                }
                next = self.step_with_claims(step, claims.take()) => next?,
            };
            self.trace.with(|t| t.steps.push((step, began.elapsed())));
            failpoint::hit(&format!("after:{step}")).await;
            self.record.advance(next, now_ms());
            self.unsaved = true;
            if next == Step::Done {
                self.record.calls = crate::calls::snapshot();
                let records = &self.rotator.records;
                match records.save_and_release(self.lease, &self.record).await {
                    Ok(()) => self.flags.released.store(true, Ordering::SeqCst),
                    // The rotation is complete whatever the record says: the next run for this
                    // secret finds AWSCURRENT on the rotation id and only writes the record. Not
                    // an error to retry here (the lease may already be free).
                    Err(e) => warn!(secret = %self.arn(), error = %e,
                                    "rotation complete, but its last record write failed; the next run records it"),
                }
                self.unsaved = false;
            }
            info!(secret = %self.arn(), rotation_id = %self.rotation_id(), done = %step, next = %next, "step complete");
        }
        // Stopped at the call's step: the next call may run in another process.
        if self.unsaved && self.record.step != Step::Done {
            self.rotator.records.save(self.lease, &self.record).await?;
            self.unsaved = false;
        }
        Ok(())
    }

    /// One step, with the writes that go beside it (see `drive`).
    async fn step_with_claims(
        &mut self,
        step: Step,
        claims: Option<lease::UserClaims>,
    ) -> Result<Step, RotationError> {
        Ok(if let Some(claims) = claims {
            let rotator = self.rotator;
            let (next, claimed) =
                tokio::join!(self.run_step(step), lease::claim_users(rotator, claims));
            if let Err(e) = claimed {
                // Refused for good: this rotation will not run, so its AWSPENDING goes too
                // (no password changed). A wait keeps it, to resume.
                if next.is_ok() && !e.is_retryable() {
                    let (arn, id) = (self.arn().to_owned(), self.rotation_id().to_owned());
                    if let Err(undo) = rotator
                        .secrets
                        .remove_stage(&arn, Stage::Pending, &id)
                        .await
                    {
                        warn!(secret = %arn, error = %undo, "could not remove AWSPENDING of a refused rotation");
                    }
                }
                return Err(e);
            }
            next?
        } else if step == Step::SetPassword {
            let (rotator, lease, record) = (self.rotator, self.lease, self.record.clone());
            let write = async move {
                rotator
                    .records
                    .save(lease, &record)
                    .await
                    .map_err(RotationError::from)
            };
            // Both run to the end: a write cancelled half-way could land after a later one. (Only
            // a run that stops for good cancels them: see `drive`.)
            let (next, written) = tokio::join!(self.run_step(step), write);
            let next = next?;
            written?;
            self.unsaved = false;
            next
        } else {
            self.run_step(step).await?
        })
    }

    async fn run_step(&mut self, step: Step) -> Result<Step, RotationError> {
        match step {
            Step::CreatePending => self.create_pending().await,
            Step::SetPassword => self.set_password().await,
            Step::UpdateProxy => self.update_proxy().await,
            Step::Test => self.test().await,
            Step::Finish => self.finish().await,
            Step::Done => Ok(Step::Done),
        }
    }

    /// AWSCURRENT must still be where the rotation began, unless this rotation already moved it.
    async fn check_current_label(&mut self) -> Result<(), RotationError> {
        // The labels read just before the lease will do: if AWSCURRENT moves after that, the
        // finish step's compare-and-swap refuses.
        let meta = match self.meta.take() {
            Some(m) => m,
            None => self.rotator.secrets.describe(self.arn()).await?,
        };
        // Attached since the rotation began: two rotators must not take turns on one user.
        self.rotator.settings.refuse_managed_rotation(&meta)?;
        let expected = self.record.current_version.clone().unwrap_or_default();
        match meta.version_with(Stage::Current) {
            Some(v) if v == expected => Ok(()),
            // Crashed after the stage move but before the record said so: only cleanup remains.
            Some(v) if v == self.rotation_id() => {
                self.record.step = Step::Finish;
                Ok(())
            }
            found => Err(RotationError::CurrentMoved {
                secret: self.arn().to_owned(),
                expected,
                found: found.unwrap_or("nothing").to_owned(),
            }),
        }
    }

    async fn current(&mut self) -> Result<&AppSecret, RotationError> {
        if self.current.is_none() {
            let version = self.record.current_version.clone().unwrap_or_default();
            self.current = Some(self.rotator.read_app_secret(self.arn(), &version).await?);
        }
        Ok(self.current.as_ref().expect("just loaded"))
    }

    /// The pending credentials, always as stored in the version `rotation id`.
    async fn pending(&mut self) -> Result<Credentials, RotationError> {
        if let Some(p) = &self.pending {
            return Ok(p.clone());
        }
        let arn = self.arn().to_owned();
        let id = self.rotation_id().to_owned();
        let app = self.rotator.read_app_secret(&arn, &id).await?;
        if app.credentials.username != self.target_user() {
            return Err(RotationError::Inconsistent {
                secret: arn,
                reason: format!(
                    "pending version {id} is for user {}, the rotation targets {}",
                    app.credentials.username,
                    self.target_user()
                ),
            });
        }
        self.pending = Some(app.credentials.clone());
        Ok(app.credentials)
    }

    async fn create_pending(&mut self) -> Result<Step, RotationError> {
        let (arn, id) = (self.arn().to_owned(), self.rotation_id().to_owned());
        // A fresh rotation's version cannot exist yet (its id was made moments ago).
        let exists = !self.fresh
            && self
                .rotator
                .secrets
                .get(&arn, At::Version(&id))
                .await?
                .is_some();
        if !exists {
            // Only ever generated here, for a version that does not exist yet: a resumed run reads
            // the stored one, since AWS refuses a different value under the same token.
            let current = self.current().await?.clone();
            let rules = self.server_rules().await?;
            // Not even AWSPENDING while the password could not reach green. (RDS was asked
            // when the run started: its answer came beside the server's.)
            self.blue_green().await?;
            let password = self
                .rotator
                .settings
                .password
                .generate_for(current.engine, &rules)?;
            let creds = Credentials::new(self.target_user(), password);
            let value = current.render_with(&creds);
            self.rotator
                .put_once(&arn, &id, &value, Stage::Pending)
                .await?;
            // What we just stored; a resumed run reads it back instead.
            self.pending = Some(creds);
        }
        self.pending().await?;
        Ok(Step::SetPassword)
    }

    async fn set_password(&mut self) -> Result<Step, RotationError> {
        let pending = self.pending().await?;
        let current = self.current().await?.clone();
        let at = current.admin_endpoint();
        let db = &self.rotator.db;
        // Already set by an earlier attempt? A fresh run knows it is not. On MySQL an earlier
        // attempt may have changed some of the user's accounts (one per host) and not all: with a
        // master secret, which changes them all, set them again (it is the same password).
        let may_be_partial =
            current.engine != Engine::Postgres && current.master_secret_id.is_some();
        if !self.fresh {
            match db.check_login(current.engine, at, &pending).await {
                Ok(()) => {
                    self.record.database_login_seen = true;
                    // The password changed already: nothing is left for the guard to protect.
                    self.guard_passed = true;
                    if may_be_partial {
                        self.again_with_master(&current, &pending).await?;
                    }
                    self.record.unfinished_versions.clear();
                    return Ok(Step::UpdateProxy);
                }
                Err(e) if e.try_next_source() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.blue_green().await?;
        let mut tried = Vec::new();
        self.unlisted_self = None;
        let master_later = current.master_secret_id.is_some();
        // Read one source at a time: the first usually works, and the others cost calls. A
        // source that logs in but may not make the change (a privilege, a pg_hba rule, a
        // connection limit, an account on another host) hands over to the next one.
        for source in KnownSource::ALL {
            for (label, login) in self.known_credentials(source, &current).await? {
                let Some(login) = login else {
                    tried.push(label);
                    continue;
                };
                // The proxy secret's login may be open already (see `run`).
                let session = match (source, self.opened.take(), self.early.take()) {
                    (KnownSource::ProxySecret, Some(opened), _) => opened,
                    (KnownSource::ProxySecret, None, Some(early)) => early.session().await,
                    _ => db.login(current.engine, at, &login).await,
                };
                let master_later = master_later && !matches!(source, KnownSource::Master);
                let changed = self
                    .change_with(session, &login, &pending, master_later)
                    .await;
                if master_later
                    && matches!(&changed, Err(RotationError::Database(DbError::NotPermitted(m))) if m.contains(UNLISTED))
                {
                    self.unlisted_self = Some((label.clone(), login.clone()));
                }
                match changed {
                    Ok(()) => return Ok(self.password_set(&pending.username, &label).await),
                    Err(RotationError::Database(e)) if e.try_next_source() => {
                        tried.push(format!("{label}: {e}"))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // The master secret did not work either: the user's own login, whose other accounts
        // could not be listed, goes ahead when it is the catch-all account (or the one the
        // secret names): see `unlisted_account`.
        if let Some((label, login)) = self.unlisted_self.take() {
            let session = db.login(current.engine, at, &login).await;
            match self.change_with(session, &login, &pending, false).await {
                Ok(()) => return Ok(self.password_set(&pending.username, &label).await),
                Err(RotationError::Database(e)) if e.try_next_source() => {
                    tried.push(format!("{label}, again: {e}"))
                }
                // Not the catch-all account: the master secret's own failure above is what
                // to fix, and `tried` says it.
                Err(e @ RotationError::AccountsUnlisted { .. }) => {
                    tried.push(format!("{label}, again: {e}"))
                }
                Err(e) => return Err(e),
            }
        }
        Err(RotationError::NoKnownCredentials {
            user: pending.username,
            tried: tried.join("; "),
        })
    }

    /// set_password's end, whichever source did it.
    async fn password_set(&mut self, user: &str, via: &str) -> Step {
        info!(secret = %self.arn(), %user, %via, "password set");
        // The pending version knows the password now; older ones know nothing.
        self.record.unfinished_versions.clear();
        failpoint::hit("inside:set_password").await;
        Step::UpdateProxy
    }

    /// Changes the idle user's password in `session`, logged in as `login`.
    async fn change_with(
        &mut self,
        session: Result<Box<dyn DbSession>, DbError>,
        login: &Credentials,
        pending: &Credentials,
        master_later: bool,
    ) -> Result<(), RotationError> {
        let mut session = session?;
        if login.username == pending.username {
            self.record.database_login_seen = true;
        }
        // Single-user rotation changes the user in use by design (it warned).
        if self.current().await?.is_multi_user() && !self.guard_passed {
            self.guard(session.as_mut(), login, &pending.username)
                .await?;
            self.guard_passed = true;
        }
        if login.username == pending.username {
            let host = self.current().await?.account_host.clone();
            only_account(
                session.as_mut(),
                &pending.username,
                master_later,
                host.as_deref(),
            )
            .await?;
        }
        session
            .set_password(&pending.username, &pending.password)
            .await?;
        Ok(())
    }

    /// The pending password logs in, but an earlier attempt may have changed only some of the
    /// user's accounts (MySQL): the master secret sets it on every one again. If it cannot, the
    /// rotation goes on (the test step shows whether the application's path works).
    async fn again_with_master(
        &mut self,
        current: &AppSecret,
        pending: &Credentials,
    ) -> Result<(), RotationError> {
        let at = current.admin_endpoint();
        for (label, login) in self.known_credentials(KnownSource::Master, current).await? {
            let Some(login) = login else { continue };
            let session = self.rotator.db.login(current.engine, at, &login).await;
            match self.change_with(session, &login, pending, false).await {
                Ok(()) => {
                    info!(secret = %self.arn(), user = %pending.username, via = %label, "password set again on every account");
                    return Ok(());
                }
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    warn!(secret = %self.arn(), user = %pending.username, via = %label, error = %e,
                          "could not set the password again on every account; going on with the accounts that have it");
                }
            }
        }
        Ok(())
    }

    /// The server's rules for a new password, read in the early login's session (which
    /// set_password then uses). A replica, or a server that would refuse every change, stops the
    /// rotation here, before AWSPENDING is written. Without that login (it failed, or this run
    /// resumed) the rules are the defaults, and set_password's own session checks again.
    async fn server_rules(&mut self) -> Result<PasswordRules, RotationError> {
        let current = self.current().await?.clone();
        let target = self.target_user().to_owned();
        if let Some(early) = self.early.take() {
            match early.session().await {
                Ok(mut session) => {
                    let rules = look(session.as_mut(), &current, &target).await;
                    self.opened = Some(Ok(session));
                    match rules {
                        Ok(rules) => return Ok(rules),
                        // This login may not look: another source may.
                        Err(RotationError::Database(e)) if e.try_next_source() => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => self.opened = Some(Err(e)),
            }
        }
        // No early login (no proxy secret, a resumed or retried run), or it failed: the first
        // other source that logs in looks, since a replica is better refused now than after
        // AWSPENDING is written. set_password's session checks again in any case.
        let at = current.admin_endpoint().clone();
        for source in KnownSource::ALL {
            if matches!(source, KnownSource::ProxySecret) && self.opened.is_some() {
                continue;
            }
            for (_, login) in self.known_credentials(source, &current).await? {
                let Some(login) = login else { continue };
                let looked = match self.rotator.db.login(current.engine, &at, &login).await {
                    Ok(mut session) => look(session.as_mut(), &current, &target).await,
                    Err(e) => Err(e.into()),
                };
                match looked {
                    Ok(rules) => return Ok(rules),
                    Err(RotationError::Database(e)) if e.try_next_source() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(PasswordRules::default())
    }

    /// A Blue/Green deployment of the database whose green would not get the new password, or
    /// whose switchover runs, makes the rotation wait (see `bluegreen`). RDS was asked when the
    /// run started.
    async fn blue_green(&mut self) -> Result<(), RotationError> {
        let named_by_secret = {
            let current = self.current().await?;
            current.rds_cluster.is_some() || current.rds_instance.is_some()
        };
        let arn = self.arn().to_owned();
        let deployments = match self.discovery.topology().await {
            Ok(Some(t)) => t.deployments.clone(),
            // Not an RDS name, or RDS not asked (`--rds-discovery off`).
            Ok(None) => return Ok(()),
            // An endpoint's name RDS does not know (another account, a name between owners in a
            // switchover): nothing to look at.
            Err(RdsError::NotFound(what)) if !named_by_secret => {
                warn!(secret = %arn, %what, "RDS knows no such database: no Blue/Green deployment can be looked for");
                return Ok(());
            }
            // The secret names a database RDS does not know, or RDS would not answer.
            Err(e) => return Err(RotationError::Rds { source: e.clone() }),
        };
        match bluegreen::verdict(&deployments) {
            bluegreen::Verdict::Clear => Ok(()),
            bluegreen::Verdict::GoOn(what) => {
                info!(secret = %self.arn(), deployments = %what, "Blue/Green deployment: the password change reaches green");
                Ok(())
            }
            bluegreen::Verdict::Wait { deployment, why } => Err(RotationError::BlueGreen {
                secret: self.arn().to_owned(),
                deployment,
                why,
            }),
        }
    }

    /// The in-use guard (see `guard`), in the session that is about to change the password: an
    /// application that still logs in as this user would fail its next login.
    async fn guard(
        &mut self,
        session: &mut dyn DbSession,
        login: &Credentials,
        user: &str,
    ) -> Result<(), RotationError> {
        if self.in_use == guard::InUsePolicy::Off {
            return Ok(());
        }
        let window = self.rotator.settings.in_use.window;
        let current = self.current().await?.clone();
        // Every server that serves the user's logins: the writer in this session, the readers
        // (the secret's and RDS's) each in a login of its own.
        let found = guard::look_everywhere(
            session,
            &self.rotator.db,
            current.engine,
            current.admin_endpoint(),
            &current.readers,
            &mut self.discovery,
            login,
            user,
            window,
        )
        .await;
        for note in &found.notes {
            warn!(secret = %self.arn(), %note, "readers the in-use guard may not see");
        }
        // RDS's answer failed the Blue/Green look first (`blue_green`): fail-closed here too.
        if let Some(source) = found.rds {
            return Err(RotationError::Rds { source });
        }
        let unchecked = found.unchecked;
        let mut groups = found.writer?;
        groups.extend(found.readers);
        let verdict = guard::verdict(self.in_use, user, window, groups);
        let found = match &verdict {
            guard::Verdict::Clear => None,
            guard::Verdict::GoOn(f) | guard::Verdict::Wait(f) => Some(f.clone()),
        };
        self.record.in_use = found
            .as_ref()
            .map(|f| format!("{}: {f}", record::rfc3339(now_ms())));
        self.trace.with(|t| t.in_use.clone_from(&found));
        match verdict {
            guard::Verdict::Clear => Ok(()),
            guard::Verdict::GoOn(found) => {
                warn!(secret = %self.arn(), in_use = %found, policy = self.in_use.as_str(),
                      "the idle user is in use; changing its password anyway");
                Ok(())
            }
            guard::Verdict::Wait(found) => Err(RotationError::UserInUse {
                secret: self.arn().to_owned(),
                found,
            }),
        }?;
        if unchecked.is_empty() {
            return Ok(());
        }
        let unchecked = unchecked.join("; ");
        if self.in_use == guard::InUsePolicy::Warn {
            warn!(secret = %self.arn(), %user, %unchecked, policy = self.in_use.as_str(),
                  "could not look at the sessions on a reader; changing the password anyway");
            return Ok(());
        }
        Err(RotationError::ReaderUnchecked {
            secret: self.arn().to_owned(),
            user: user.to_owned(),
            unchecked,
        })
    }

    /// The idle user's last known credentials from one source, each with a label for messages:
    /// none when the source does not apply, `(label, None)` when it holds nothing usable.
    async fn known_credentials(
        &mut self,
        source: KnownSource,
        current: &AppSecret,
    ) -> Result<Vec<(String, Option<Credentials>)>, RotationError> {
        let target = self.target_user().to_owned();
        let one = |label: String, creds: Option<Credentials>| vec![(label, creds)];
        Ok(match source {
            KnownSource::ProxySecret => {
                let Some(id) = self.record.proxy_secret_id.clone() else {
                    return Ok(one("proxy secret: none configured".to_owned(), None));
                };
                let secret = match &self.proxy {
                    Some(s) => Some(s.clone()),
                    None => {
                        self.rotator
                            .read_user_secret(&id, At::Stage(Stage::Current))
                            .await?
                    }
                };
                let creds = secret
                    .map(|s| s.credentials)
                    .filter(|c| c.username == target);
                let label = if creds.is_some() {
                    format!("proxy secret {id}")
                } else {
                    format!("proxy secret {id}: not for {target}")
                };
                one(label, creds)
            }
            KnownSource::Unfinished => {
                let mut found = Vec::new();
                for id in self.record.unfinished_versions.clone() {
                    let label = format!("pending version {id} of an unfinished rotation");
                    let read = self
                        .rotator
                        .secrets
                        .get(self.arn(), At::Version(&id))
                        .await?;
                    found.push(match read.map(|v| AppSecret::parse(&v.value)) {
                        None => (format!("{label}: gone"), None),
                        Some(Ok(p)) if p.credentials.username == target => {
                            (label, Some(p.credentials))
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => (format!("{label}: unreadable ({e})"), None),
                    });
                }
                found
            }
            KnownSource::Previous => {
                let previous = self
                    .rotator
                    .secrets
                    .get(self.arn(), At::Stage(Stage::Previous))
                    .await?;
                match previous {
                    None => one("AWSPREVIOUS: absent".to_owned(), None),
                    Some(v) => match AppSecret::parse(&v.value) {
                        Ok(p) if p.credentials.username == target => {
                            one("AWSPREVIOUS".to_owned(), Some(p.credentials))
                        }
                        Ok(p) => one(
                            format!("AWSPREVIOUS: holds user {}", p.credentials.username),
                            None,
                        ),
                        Err(e) => one(format!("AWSPREVIOUS: unreadable ({e})"), None),
                    },
                }
            }
            // Single-user rotation: the user in use is the one that changes.
            KnownSource::Current if current.credentials.username == target => {
                one("AWSCURRENT".to_owned(), Some(current.credentials.clone()))
            }
            KnownSource::Current => Vec::new(),
            KnownSource::Master => match &current.master_secret_id {
                Some(id) => {
                    let s = self
                        .rotator
                        .read_user_secret(id, At::Stage(Stage::Current))
                        .await?;
                    one(format!("master secret {id}"), s.map(|s| s.credentials))
                }
                None => one("master secret: not configured".to_owned(), None),
            },
        })
    }

    /// The proxy secret's new version goes in under this tool's own label, then AWSCURRENT moves
    /// to it by compare-and-swap from the version planning read: a proxy secret that someone
    /// else changed since (another rotation of the same user, a person) is not overwritten.
    async fn update_proxy(&mut self) -> Result<Step, RotationError> {
        let Some(proxy_id) = self.record.proxy_secret_id.clone() else {
            return Ok(Step::Test);
        };
        let pending = self.pending().await?;
        let token = proxy_token(self.rotation_id());
        let secrets = &self.rotator.secrets;
        // A fresh run has not written it yet.
        let written = if self.fresh {
            None
        } else {
            secrets.get(&proxy_id, At::Version(&token)).await?
        };
        if written.as_ref().is_some_and(|v| v.has(Stage::Current)) {
            return Ok(Step::Test);
        }
        if written.is_none() {
            let proxy = match self.proxy.clone() {
                Some(p) => Some(p),
                None => {
                    self.rotator
                        .read_user_secret(&proxy_id, At::Stage(Stage::Current))
                        .await?
                }
            };
            let proxy = proxy.ok_or_else(|| RotationError::Inconsistent {
                secret: proxy_id.clone(),
                reason: "the proxy secret does not exist or has no AWSCURRENT version".into(),
            })?;
            if proxy.username() != pending.username {
                return Err(RotationError::Inconsistent {
                    secret: proxy_id,
                    reason: format!(
                        "it now holds user {}, not {}",
                        proxy.username(),
                        pending.username
                    ),
                });
            }
            let value = proxy.render_with_password(&pending.password);
            self.rotator
                .put_once(&proxy_id, &token, &value, Stage::Staged)
                .await?;
        }
        // Planning stores it with the proxy secret's id.
        let from = self.record.proxy_version.clone().unwrap_or_default();
        if let Swap::Moved(found) = self.rotator.swap_current(&proxy_id, &token, &from).await? {
            return Err(RotationError::Inconsistent {
                secret: proxy_id,
                reason: format!(
                    "its AWSCURRENT moved from version {from} to {} since the rotation began (another rotation of user {}, or a person); not overwriting it",
                    found.as_deref().unwrap_or("nothing"),
                    pending.username
                ),
            });
        }
        failpoint::hit("inside:update_proxy").await;
        Ok(Step::Test)
    }

    /// Logs in with the pending credentials where the application does, until the deadline: the
    /// proxy may take a while to read its changed secret. And, beside it, where passwords are
    /// changed: RDS Proxy checks a client against its own copy of the secret and may hand it a
    /// pooled connection opened with the old password, so only the database itself shows that
    /// it took the new one.
    async fn test(&mut self) -> Result<Step, RotationError> {
        let pending = self.pending().await?;
        let current = self.current().await?.clone();
        let deadline = self.rotator.settings.test_deadline;
        let db = &self.rotator.db;
        let (engine, app_path) = (current.engine, &current.endpoint);
        // Only where this run saw the idle user log in: some setups let it in only from the
        // application's network.
        let database = Some(current.admin_endpoint())
            .filter(|at| *at != app_path && self.record.database_login_seen);
        let creds = &pending;
        let login = |at: &Endpoint| {
            let at = at.clone();
            async move {
                db.check_login(engine, &at, creds)
                    .await
                    .map_err(|error| Probe { at, error })
            }
        };
        let attempt = || async {
            match database {
                None => login(app_path).await,
                Some(database) => {
                    let (proxy, direct) = tokio::join!(login(app_path), login(database));
                    proxy.and(direct)
                }
            }
        };
        let waits = |p: &Probe| {
            matches!(
                p.error,
                DbError::LoginRejected(_) | DbError::LoginForbidden { .. }
            ) || p.error.is_retryable()
        };
        // The deadline bounds wall time, not only the sum of the pauses: a login that gets no
        // answer (a path that accepts and never answers) ends with it.
        let end = tokio::time::Instant::now() + deadline;
        let timed_out = |last: String| RotationError::TestTimedOut {
            user: pending.username.clone(),
            at: app_path.to_string(),
            deadline: humantime::format_duration(deadline).to_string(),
            last,
        };
        let no_answer = || timed_out("a login got no answer by then".to_owned());
        // Usually the first login passes. If not, the proxy may take minutes to read its secret:
        // the record says the rotation waits here (status shows it, and a crash while waiting
        // resumes here rather than before the proxy step).
        let Ok(first) = tokio::time::timeout_at(end, attempt()).await else {
            return Err(no_answer());
        };
        // The last refusal, for the end: the deadline may come in the middle of a probe.
        let last: Mutex<Option<Refused>> = Mutex::new(None);
        let note = |p: &Probe| {
            *last.lock().expect("last probe") = Some(Refused {
                at: p.at.clone(),
                rejected: matches!(p.error, DbError::LoginRejected(_)),
                error: p.error.to_string(),
            });
        };
        match first {
            Ok(()) => return Ok(Step::Finish),
            Err(p) if waits(&p) => {
                note(&p);
                self.trace.with(|t| t.retries += 1);
                info!(user = %pending.username, at = %p.at, error = %p.error, "new credentials not accepted yet");
                if self.unsaved {
                    self.rotator.records.save(self.lease, &self.record).await?;
                    self.unsaved = false;
                }
            }
            Err(p) => return Err(p.error.into()),
        }
        let retried = attempt
            .retry(
                self.rotator
                    .settings
                    .retry
                    .backoff()
                    .with_max_delay(self.rotator.settings.retry.probe_max_delay)
                    .with_max_times(usize::MAX)
                    .with_total_delay(Some(deadline)),
            )
            .when(waits)
            .notify(|p, delay| {
                note(p);
                self.trace.with(|t| t.retries += 1);
                info!(user = %pending.username, at = %p.at, error = %p.error, retry_in = ?delay, "new credentials not accepted yet");
            });
        let refused = match tokio::time::timeout_at(end, retried).await {
            Ok(Ok(())) => return Ok(Step::Finish),
            Ok(Err(p)) if waits(&p) => {
                note(&p);
                last.lock().expect("last probe").take()
            }
            Ok(Err(p)) => return Err(p.error.into()),
            // In the middle of a probe: the one before it says why.
            Err(_) => last.lock().expect("last probe").take(),
        };
        let Some(refused) = refused else {
            return Err(no_answer());
        };
        let database = database.cloned();
        if database.as_ref() == Some(&refused.at) && refused.rejected && self.resets == 0 {
            // The database does not take the password set_password set (someone changed it
            // since): the next attempt sets it again, once, rather than wait here.
            self.resets += 1;
            self.record.step = Step::SetPassword;
            self.unsaved = true;
        }
        Err(RotationError::TestTimedOut {
            user: pending.username,
            at: if database.as_ref() == Some(&refused.at) {
                format!("the database at {} (the proxy took them)", refused.at)
            } else {
                refused.at.to_string()
            },
            deadline: humantime::format_duration(deadline).to_string(),
            last: refused.error,
        })
    }

    async fn finish(&mut self) -> Result<Step, RotationError> {
        let (arn, id) = (self.arn().to_owned(), self.rotation_id().to_owned());
        let secrets = &self.rotator.secrets;
        let expected = self.record.current_version.clone().unwrap_or_default();
        // Right before the compare-and-swap, look where the labels are, fresh run or not: the CAS
        // checks AWSCURRENT, but not that AWSPENDING is still ours. Another rotator that took it
        // (Secrets Manager's own, attached since we began) may be changing this user's password.
        let meta = secrets.describe(&arn).await?;
        let pending_at = meta.version_with(Stage::Pending).map(str::to_owned);
        match meta.version_with(Stage::Current) {
            Some(v) if v == id => {}
            Some(v) if v == expected => {
                if pending_at.as_deref() != Some(id.as_str()) {
                    return Err(RotationError::PendingMoved {
                        secret: arn,
                        expected: id,
                        found: pending_at.unwrap_or_else(|| "nothing".into()),
                    });
                }
                if let Swap::Moved(found) = self.rotator.swap_current(&arn, &id, &expected).await? {
                    return Err(RotationError::CurrentMoved {
                        secret: arn,
                        expected,
                        found: found.unwrap_or_else(|| "nothing".into()),
                    });
                }
            }
            found => {
                return Err(RotationError::CurrentMoved {
                    secret: arn,
                    expected,
                    found: found.unwrap_or("nothing").to_owned(),
                })
            }
        }
        // Drop our AWSPENDING, so nothing pending outlives the rotation. On another version it is
        // not ours (a later rotation's, or another tool's): it stays.
        if pending_at.as_deref() == Some(id.as_str()) {
            match secrets.remove_stage(&arn, Stage::Pending, &id).await {
                Ok(()) => {}
                // Not there: an earlier attempt whose answer was lost removed it, or someone
                // moved it. Either way nothing of ours is left to drop.
                Err(SecretStoreError::Refused(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        info!(secret = %arn, rotation_id = %id, user = %self.target_user(), "AWSCURRENT moved to the new credentials");
        Ok(Step::Done)
    }

    /// Notes the error in the record: fatal ends the rotation, retryable leaves it to resume.
    async fn record_failure(&mut self, e: &RotationError) {
        if matches!(e, RotationError::Interrupted(_)) {
            info!(secret = %self.arn(), step = %self.record.step, "stopped for shutdown; the next run resumes here");
            return;
        }
        if matches!(
            e,
            RotationError::LeaseLost(_) | RotationError::Records(RecordStoreError::Fenced(_))
        ) {
            // Not ours to write any more.
            warn!(secret = %self.arn(), error = %e, "lease lost; leaving the record to its new owner");
            return;
        }
        // The step that failed (the test step may have sent the record back to set_password).
        let mut step = self.record.step;
        self.trace.with(|t| step = t.last_step.unwrap_or(step));
        let reason = format!("{step}: {e}");
        self.record.note_error(reason, !e.is_retryable(), now_ms());
        self.record.calls = crate::calls::snapshot();
        if let Err(save) = self.rotator.records.save(self.lease, &self.record).await {
            warn!(secret = %self.arn(), error = %save, "could not record the failure");
        }
    }
}
