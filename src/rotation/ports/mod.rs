//! The narrow interfaces the protocol needs, in its own words. Adapters live in `crate::aws` and
//! `crate::db`; hand-written fakes in `super::fakes` serve the unit tests.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::record::{BeginIf, StepRecord};

mod database;
mod rds;

pub use database::*;
pub use rds::*;

/// Secrets Manager staging labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Current,
    Pending,
    Previous,
    /// This tool's own label on a proxy secret's new version, written before AWSCURRENT moves
    /// to it by compare-and-swap. Not AWSPENDING: on a proxy secret that label may belong to
    /// another tool's rotation, and PutSecretValue would take it away.
    Staged,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Current => "AWSCURRENT",
            Stage::Pending => "AWSPENDING",
            Stage::Previous => "AWSPREVIOUS",
            Stage::Staged => "RDSROTATOR_STAGED",
        }
    }
}

/// Every read names its version: a label or an id. Never "whatever is latest".
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    Stage(Stage),
    Version(&'a str),
}

#[derive(Debug, Clone)]
pub struct SecretVersion {
    /// The secret's ARN, whatever name or ARN the read used.
    pub arn: String,
    pub version_id: String,
    pub stages: Vec<String>,
    pub value: SecretString,
}

impl SecretVersion {
    pub fn has(&self, stage: Stage) -> bool {
        self.stages.iter().any(|s| s == stage.as_str())
    }
}

/// A secret's identity, where its labels are, and whether Secrets Manager rotates it itself.
#[derive(Debug, Clone)]
pub struct SecretMeta {
    pub arn: String,
    /// (version id, labels) of every labelled version.
    pub versions: Vec<(String, Vec<String>)>,
    /// Secrets Manager's own rotation is attached (`RotationEnabled`): its function may change a
    /// password behind this tool's back.
    pub rotation_enabled: bool,
    /// The function of that rotation, if it names one.
    pub rotation_lambda: Option<String>,
    /// What a new secret made beside this one copies (adopt): its name, KMS key (`None`: the
    /// account's default key) and tags.
    pub name: String,
    pub kms_key_id: Option<String>,
    pub tags: Vec<(String, String)>,
    /// Scheduled for deletion (DescribeSecret's DeletedDate): reads of its values are refused
    /// (InvalidRequestException) until it is restored or purged.
    pub deleted: bool,
}

impl SecretMeta {
    pub fn version_with(&self, stage: Stage) -> Option<&str> {
        self.versions
            .iter()
            .find(|(_, labels)| labels.iter().any(|l| l == stage.as_str()))
            .map(|(id, _)| id.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    #[error("secret {0} does not exist")]
    NotFound(String),
    #[error("secret {0} holds binary data, not a JSON string")]
    Binary(String),
    /// The request was refused as invalid: for a stage move this is the compare-and-swap failing.
    #[error("Secrets Manager refused the request: {0}")]
    Refused(String),
    /// The secret's state forbids the request (InvalidRequestException: scheduled for deletion,
    /// say). No retry changes that.
    #[error("Secrets Manager refused the request in the secret's state: {0}")]
    InvalidRequest(String),
    #[error("access denied by Secrets Manager: {0}")]
    Denied(String),
    /// PutSecretValue: a version with this ClientRequestToken exists with another value (AWS's
    /// ResourceExistsException; the same value is an idempotent success).
    #[error("a version with token {0} already exists with another value")]
    VersionExists(String),
    #[error("Secrets Manager is unavailable: {0}")]
    Unavailable(String),
}

impl SecretStoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Resolves a name or ARN to the secret's identity and label map.
    async fn describe(&self, secret_id: &str) -> Result<SecretMeta, SecretStoreError>;
    /// `Ok(None)` when that version or label does not exist (or the secret does not: `describe`
    /// tells the two apart).
    async fn get(
        &self,
        secret_id: &str,
        at: At<'_>,
    ) -> Result<Option<SecretVersion>, SecretStoreError>;
    /// PutSecretValue with `token` as ClientRequestToken: a retry with the same value is a no-op.
    async fn put(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        stage: Stage,
    ) -> Result<(), SecretStoreError>;
    /// Moves `stage` to `to`, only if it is still on `from` (RemoveFromVersionId: a CAS).
    async fn move_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        to: &str,
        from: &str,
    ) -> Result<(), SecretStoreError>;
    /// Removes `stage` from version `from`.
    async fn remove_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        from: &str,
    ) -> Result<(), SecretStoreError>;
}

/// The right to work on one secret. Every write under it is conditional on `fence`.
///
/// Time is never compared across machines: a taker waits until it has seen the same lease
/// (`LeaseSeen`) unchanged for a whole lease period on its own monotonic clock, and a holder
/// counts its lease from when it *sent* the write that took or renewed it, on its own monotonic
/// clock (`lease::Flags`). What remains assumed is a bound on how fast two clocks drift apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: String,
    /// Increases with every acquisition: a stale holder's writes no longer match.
    pub fence: u64,
    /// When the write that took it was sent, on this process's monotonic clock.
    pub sent_at: tokio::time::Instant,
}

/// A lease as another process holds it: what a taker watches for change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSeen {
    pub owner: String,
    pub fence: u64,
    /// The holder's own idea of its expiry (its wall clock, ms since the epoch): every renewal
    /// changes it. Never compared with the taker's clock for safety, only shown, and used as a
    /// hint of whether waiting is worth it.
    pub expires_hint_ms: u64,
    /// Renewals so far.
    pub beat: u64,
    /// How long a taker must see it unchanged, as the holder wrote it (`lease::takeover_period`:
    /// another process may run with other settings).
    pub ttl: Duration,
}

#[derive(Debug)]
pub enum Acquired {
    Granted {
        lease: Lease,
        record: Option<Box<StepRecord>>,
    },
    /// From `begin` only: the lease, and the new rotation's record as stored.
    Begun {
        lease: Lease,
        record: Box<StepRecord>,
    },
    /// From `begin` only: the lease is free, but the record (as it stands) did not allow a new
    /// rotation, and nothing was written.
    NotBegun { record: Option<Box<StepRecord>> },
    Held {
        seen: LeaseSeen,
        /// The record as the item holds it (perhaps the last rotation's, if the holder has not
        /// written yet): it may already answer the request.
        record: Option<Box<StepRecord>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordStoreError {
    #[error("the lease was taken over by another worker (fence {0} is stale)")]
    Fenced(u64),
    #[error("the state table is missing or misconfigured: {0}")]
    Misconfigured(String),
    #[error("the state table is unavailable: {0}")]
    Unavailable(String),
    #[error("the stored step record is unreadable: {0}")]
    Corrupt(String),
}

impl RecordStoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Fenced(_))
    }
}

/// Who is changing, or last changed, one database user's password: a secret and its rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaim {
    pub secret: String,
    pub rotation_id: String,
}

/// What [`RecordStore::claim_user`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The claim is ours now; the secrets that marked the user as their AWSCURRENT
    /// (`mark_in_use`) come with it.
    Ours { in_use_by: Vec<String> },
    /// Another secret's rotation holds it (perhaps one that ended: the caller decides).
    HeldBy(UserClaim),
}

/// Leases and step records; one item per secret holds both.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Takes the lease when it is free (never taken, or released), or when it is still exactly
    /// `take_over`: a lease the caller has watched unchanged for a whole period. `ttl` is this
    /// holder's period, which takers read (`LeaseSeen::ttl`).
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        take_over: Option<&LeaseSeen>,
    ) -> Result<Acquired, RecordStoreError>;
    /// Takes the lease and stores `record`, a new rotation's, in one write: when the lease is
    /// free and `cond` allows it. Otherwise it writes no record: `Held`, `NotBegun`, or (this
    /// default, which takes the lease first) `Granted`. The stored record keeps the item's
    /// `last_success_at`.
    async fn begin(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        record: &StepRecord,
        cond: &BeginIf,
    ) -> Result<Acquired, RecordStoreError> {
        match self.acquire(key, owner, ttl, None).await? {
            Acquired::Granted {
                lease,
                record: existing,
            } if cond.allows(existing.as_deref()) => {
                let mut begun = record.clone();
                begun.keep_marks(existing.as_deref());
                begun.last_success_at = existing.and_then(|r| r.last_success_at);
                if let Err(e) = self.save(&lease, &begun).await {
                    let _ = self.release(&lease).await;
                    return Err(e);
                }
                Ok(Acquired::Begun {
                    lease,
                    record: Box::new(begun),
                })
            }
            other => Ok(other),
        }
    }
    /// Renews the lease (a new beat, which takers see); `Fenced` when someone else holds it now.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), RecordStoreError>;
    /// Writes the record, only if `lease.fence` is still the item's fence.
    async fn save(&self, lease: &Lease, record: &StepRecord) -> Result<(), RecordStoreError>;
    async fn release(&self, lease: &Lease) -> Result<(), RecordStoreError>;
    /// The last save and the release together: one write where the store can do that.
    async fn save_and_release(
        &self,
        lease: &Lease,
        record: &StepRecord,
    ) -> Result<(), RecordStoreError> {
        self.save(lease, record).await?;
        self.release(lease).await
    }
    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError>;
    /// Claims database user `user_key` for `claim`, in one conditional write: when nobody has
    /// claimed it, the claim is of `claim.secret` already (that secret's rotations take turns
    /// under its own lease), or it is still `replacing`.
    async fn claim_user(
        &self,
        user_key: &str,
        claim: &UserClaim,
        replacing: Option<&UserClaim>,
    ) -> Result<Claimed, RecordStoreError>;
    /// Notes that `secret` has database user `user_key` in AWSCURRENT (an unconditional add to
    /// a set: a claim of that user by another secret then sees it).
    async fn mark_in_use(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError>;
    /// Takes `secret` off the marks of database user `user_key` (it is deleted: it uses nobody),
    /// and `user_key` off the secret's memory of them (`StepRecord::marked`).
    async fn unmark(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        let _ = (user_key, secret);
        Err(RecordStoreError::Misconfigured(
            "this store cannot clear marks".into(),
        ))
    }
    /// Who claimed database user `user_key`, and which secrets marked it (`check`).
    async fn user_marks(
        &self,
        user_key: &str,
    ) -> Result<(Option<UserClaim>, Vec<String>), RecordStoreError> {
        let _ = user_key;
        Ok((None, Vec::new()))
    }
    /// Removes every claim and mark of `secret` (`rds-rotator forget`); returns the user keys.
    async fn forget(&self, secret: &str) -> Result<Vec<String>, RecordStoreError> {
        let _ = secret;
        Err(RecordStoreError::Misconfigured(
            "this store cannot forget a secret".into(),
        ))
    }
}

/// What one `rotate` call came to. Holds no secret material: it goes to logs, metrics and events.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationReport {
    /// The secret's ARN, or the id as given when it could not be resolved.
    pub secret: String,
    pub outcome: ReportOutcome,
    pub rotation_id: Option<String>,
    pub from_user: Option<String>,
    pub to_user: Option<String>,
    /// This run continued a rotation an earlier process had started.
    pub resumed: bool,
    pub duration: Duration,
    /// Time spent in each step this run, in order.
    pub steps: Vec<(super::record::Step, Duration)>,
    /// The step the run was on when it ended (`None`: it ended before the first step).
    pub last_step: Option<super::record::Step>,
    /// Failures this run retried itself (whole-rotation retries plus login probes of the test step).
    pub retries: u32,
    /// External calls this run made: `Service.Operation` for AWS, `<engine>.connect` for databases.
    pub calls: std::collections::BTreeMap<String, u64>,
    /// What the in-use guard found, when it found sessions of the idle user.
    pub in_use: Option<InUse>,
    /// The run stopped because of them (the guard refused), not for another reason.
    pub waits_for_sessions: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    Succeeded,
    Skipped {
        why: String,
    },
    /// `retryable`: the rotation stays in progress and a later run resumes it; otherwise it needs
    /// a person.
    Failed {
        reason: String,
        retryable: bool,
    },
    /// A call of Secrets Manager's ran its steps; the rotation goes on with `next`.
    Advanced {
        next: super::record::Step,
    },
    /// An operator ended the rotation in progress (`rds-rotator abort`).
    Aborted {
        reason: String,
    },
}

/// Where reports go: metrics on stdout, events on a bus. A reporter never fails a rotation.
#[async_trait]
pub trait Reporter: Send + Sync {
    async fn report(&self, report: &RotationReport);
}

/// Reports to nobody.
pub struct NoReports;

#[async_trait]
impl Reporter for NoReports {
    async fn report(&self, _report: &RotationReport) {}
}

/// Reports to each of several reporters, in order.
pub struct Reporters(pub Vec<std::sync::Arc<dyn Reporter>>);

#[async_trait]
impl Reporter for Reporters {
    async fn report(&self, report: &RotationReport) {
        for r in &self.0 {
            r.report(report).await;
        }
    }
}
