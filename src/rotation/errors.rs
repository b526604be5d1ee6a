//! Everything a rotation may refuse or fail with, and whether it is worth trying again: decided
//! here, where the error is named, not where it is caught.

use super::ports::{DbError, InUse, RdsError, RecordStoreError, SecretStoreError};
use crate::password::PolicyError;
use crate::secret::SecretError;

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
    #[error("AWSPENDING of {secret} was on version {version}, where a finished rotation of this tool left it, and an edit moved AWSCURRENT on since: Secrets Manager's RotateSecret would not start past it, and called this function with that version. Nothing is in progress on it, so the label was removed, and this call fails: Secrets Manager's next rotation (its schedule, or `aws secretsmanager rotate-secret --secret-id {secret}`) begins a new one")]
    StrandedPending { secret: String, version: String },
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
            | Self::StrandedPending { .. }
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
