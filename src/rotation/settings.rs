//! What an operator tunes: the rotation's settings and its retry policy, as values.

use std::time::Duration;

use backon::ExponentialBuilder;

use super::errors::RotationError;
use super::guard;
use super::ports::SecretMeta;
use crate::password::PasswordPolicy;

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
    pub(super) fn backoff(&self) -> ExponentialBuilder {
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
    pub(super) fn refuse_managed_rotation(&self, meta: &SecretMeta) -> Result<(), RotationError> {
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

/// The default minimum interval between two rotations of a secret: twice the longest refresh of
/// AWS's own caching clients (an hour). Credentials read just before one rotation stay valid
/// until the next, so the interval must exceed the time any client keeps them.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(2 * 3600);

/// How long to wait for a lease that another process holds.
#[derive(Debug, Clone, Copy)]
pub enum LeaseWait {
    /// Give up at once (a worker: the message comes back later).
    No,
    /// Wait for the holder's lease to expire, at most this long (the CLI).
    UpTo(Duration),
}
