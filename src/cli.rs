//! Commands and settings: flags with environment fallbacks.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::tls::TlsMode;
use crate::rotation::guard::InUsePolicy;

#[derive(Debug, Parser)]
#[command(name = "rds-rotator", version = crate::VERSION, about = "Zero-downtime password rotation for RDS behind RDS Proxy")]
pub struct Cli {
    #[command(flatten)]
    pub settings: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where metrics go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Metrics {
    /// CloudWatch embedded metric format, one JSON line per rotation and step, on stdout.
    Emf,
    Off,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// DynamoDB table holding leases and step records (created by `setup`).
    #[arg(
        long,
        env = "ROTATOR_TABLE",
        default_value = "rds-rotator",
        global = true
    )]
    pub table: String,
    /// TLS to the database. `disable` must be asked for explicitly.
    #[arg(
        long,
        env = "ROTATOR_DB_TLS",
        value_enum,
        default_value = "verify-full",
        global = true
    )]
    pub db_tls: TlsMode,
    /// PEM file of extra CA certificates for `verify-full` (the RDS global bundle).
    #[arg(long, env = "ROTATOR_DB_CA_BUNDLE", global = true)]
    pub db_ca_bundle: Option<PathBuf>,
    /// Ask RDS (DescribeDBInstances, DescribeDBClusters) for the readers and replicas of a
    /// database named by its RDS endpoint, so that the in-use guard looks at them too. `off`
    /// for accounts where the rotator may not call the RDS API: list readers in `reader_hosts`.
    #[arg(
        long,
        env = "ROTATOR_RDS_DISCOVERY",
        value_enum,
        default_value = "on",
        global = true
    )]
    pub rds_discovery: Switch,
    /// How long the test step retries the new credentials along the application's path.
    #[arg(long, env = "ROTATOR_TEST_DEADLINE", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub test_deadline: Duration,
    /// First delay after a retryable failure of a rotation step, and between the test step's
    /// first login probes; delays double from it (the book's "Retry policy").
    #[arg(long, env = "ROTATOR_RETRY_MIN_DELAY", default_value = "200ms", value_parser = parse_retry_delay, global = true)]
    pub retry_min_delay: Duration,
    /// The AWS SDK's initial backoff before it retries a throttled, failed or timed-out call
    /// (exponential with jitter, SDK standard mode).
    #[arg(long, env = "ROTATOR_AWS_RETRY_BACKOFF", default_value = "1s", value_parser = parse_retry_delay, global = true)]
    pub aws_retry_backoff: Duration,
    /// The wall-clock bound on each database call: a login (connect, TLS, authentication) or one
    /// statement.
    #[arg(long, env = "ROTATOR_DB_TIMEOUT", default_value = "10s", value_parser = parse_bound, global = true)]
    pub db_timeout: Duration,
    /// The wall-clock bound on each AWS call, the SDK's retries included.
    #[arg(long, env = "ROTATOR_AWS_TIMEOUT", default_value = "30s", value_parser = parse_bound, global = true)]
    pub aws_timeout: Duration,
    /// Lease duration; a heartbeat renews it every third of this while work runs.
    #[arg(long, env = "ROTATOR_LEASE_DURATION", default_value = "30s", value_parser = parse_lease, global = true)]
    pub lease_duration: Duration,
    /// Log format on stderr. The level comes from RUST_LOG.
    #[arg(
        long,
        env = "ROTATOR_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Length of generated passwords.
    #[arg(
        long,
        env = "ROTATOR_PASSWORD_LENGTH",
        default_value_t = 32,
        global = true
    )]
    pub password_length: usize,
    /// Secrets Manager write calls (PutSecretValue, UpdateSecretVersionStage) per second, for all
    /// rotations of this process together. The account-region quota is about 50: with N workers,
    /// give each 40/N.
    #[arg(long, env = "ROTATOR_SM_WRITE_TPS", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub sm_write_tps: u32,
    /// Metrics on stdout. Default: `emf` for `worker`, `off` for the other commands (their stdout
    /// is their answer).
    #[arg(long, env = "ROTATOR_METRICS", value_enum, global = true)]
    pub metrics: Option<Metrics>,
    /// CloudWatch namespace of the metrics.
    #[arg(long, env = "ROTATOR_METRICS_NAMESPACE", default_value = crate::metrics::DEFAULT_NAMESPACE, global = true)]
    pub metrics_namespace: String,
    /// EventBridge bus (name or ARN) for RotationSucceeded / RotationFailed events; none if unset.
    #[arg(long, env = "ROTATOR_EVENT_BUS", global = true)]
    pub event_bus: Option<String>,
    /// No rotation starts sooner than this after the last one finished, for `rotate` and the
    /// worker alike (`--force` overrides it). It must exceed the longest time any client keeps
    /// credentials: the default is twice the AWS caching libraries' hour.
    #[arg(long, env = "ROTATOR_MIN_INTERVAL", default_value = "2h", value_parser = humantime::parse_duration, global = true)]
    pub min_interval: Duration,
    /// What to do when the idle user still has sessions that ran a statement recently (an
    /// application holding credentials from two rotations ago): `refuse` waits and retries later.
    #[arg(
        long,
        env = "ROTATOR_IN_USE",
        value_enum,
        default_value = "refuse",
        global = true
    )]
    pub in_use: InUsePolicy,
    /// A session of the idle user counts as in use when it ran a statement this recently: longer
    /// than RDS Proxy's idle client timeout (30 min), see rotation/guard.rs.
    #[arg(long, env = "ROTATOR_IN_USE_WINDOW", default_value = "35m", value_parser = humantime::parse_duration, global = true)]
    pub in_use_window: Duration,
    /// Characters never used in generated passwords (default: the engine's, as AWS's
    /// rotation functions: `:/@"'\` for PostgreSQL).
    #[arg(long, env = "ROTATOR_EXCLUDE_CHARACTERS", global = true)]
    pub exclude_characters: Option<String>,
    /// ARNs of Lambda functions that run this tool (`rds-rotator lambda`), comma-separated: a
    /// secret whose Secrets Manager rotation is attached to one of them is rotated, not refused
    /// as another rotator's. `lambda` adds its own ARN.
    #[arg(
        long = "rotation-function-arn",
        env = "ROTATOR_ROTATION_FUNCTION_ARNS",
        value_delimiter = ',',
        global = true
    )]
    pub rotation_functions: Vec<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE".into()),
    }
}

/// A first retry delay: not zero (retries would spin), at most 5 s (the longest delay a step's
/// retries reach).
fn parse_retry_delay(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(5) {
        return Err("a retry delay must be between 1ms and 5s".into());
    }
    Ok(d)
}

/// A wall-clock bound: long enough for a login over TLS, short enough to notice a silent peer.
fn parse_bound(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err("a timeout must be between 100ms and 10m".into());
    }
    Ok(d)
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("the lease duration must be at least 1s".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The SQS queue of rotation requests.
    #[arg(long, env = "ROTATOR_QUEUE_URL")]
    pub queue_url: String,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Dead-letter queue for fatal failures; default: the queue's redrive policy target.
    #[arg(long, env = "ROTATOR_DLQ_URL")]
    pub dlq_url: Option<String>,
    /// Rotations at once.
    #[arg(long, env = "ROTATOR_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub concurrency: u16,
    /// How long a received message stays hidden; renewed every third of it while it runs.
    #[arg(long, env = "ROTATOR_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub visibility_timeout: Duration,
    /// First redelivery delay after a transient failure; doubles with each receive.
    #[arg(long, env = "ROTATOR_RETRY_DELAY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_delay: Duration,
    /// Upper bound of the redelivery delay.
    #[arg(long, env = "ROTATOR_RETRY_MAX_DELAY", default_value = "15m", value_parser = humantime::parse_duration)]
    pub retry_max_delay: Duration,
    /// How many times a request whose rotation waits (the in-use guard, another rotation of
    /// the user) is sent again, each after up to --retry-max-delay, before it goes to the
    /// dead-letter queue with the reason (192 at 15m: about two days).
    #[arg(long, env = "ROTATOR_MAX_DEFERRALS", default_value_t = 192)]
    pub max_deferrals: u32,
    /// Long-poll wait (at most 20s).
    #[arg(long, env = "ROTATOR_RECEIVE_WAIT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub receive_wait: Duration,
    /// On SIGTERM/SIGINT, how long running rotations get to reach their next persisted step.
    #[arg(long, env = "ROTATOR_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// File the worker loop touches on every pass; `rds-rotator health` checks it.
    #[arg(long, env = "ROTATOR_HEALTH_FILE", default_value = DEFAULT_HEALTH_FILE)]
    pub health_file: PathBuf,
}

/// What a rotation request asks for, from `rotate` and `enqueue` alike.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Rotate even if the last rotation finished less than the minimum interval ago (clients
    /// whose caches are older than that then fail their next login).
    #[arg(long)]
    pub force: bool,
    /// Change the idle user's password even if it is in use (the guard only warns).
    /// `--force` does not imply it.
    #[arg(long)]
    pub ignore_in_use: bool,
    /// Free text kept in the step record.
    #[arg(long)]
    pub reason: Option<String>,
}

pub const DEFAULT_HEALTH_FILE: &str = "/tmp/rds-rotator.health";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the DynamoDB table for leases and step records (idempotent), and optionally a queue
    /// with its dead-letter queue (local stack and tests; production uses Terraform).
    Setup {
        /// Also create this SQS queue and `<NAME>-dlq` with a redrive policy.
        #[arg(long)]
        queue_name: Option<String>,
        /// Receives before SQS moves a message to the dead-letter queue by itself.
        #[arg(long, default_value_t = 10)]
        max_receive_count: u32,
        /// Print one JSON object (always, with --queue-name).
        #[arg(long)]
        json: bool,
    },
    /// Serve rotation requests from SQS until SIGTERM or SIGINT.
    Worker(WorkerArgs),
    /// Run as a Secrets Manager rotation function: serve the Lambda Runtime API named by
    /// AWS_LAMBDA_RUNTIME_API (the `bootstrap` and the image's Lambda command run this).
    Lambda {
        /// This function's ARN, if not the one the invocation names (an alias, say).
        #[arg(long, env = "ROTATOR_LAMBDA_ARN")]
        function_arn: Option<String>,
        /// How long a step waits for a lease that another process holds (a queue worker
        /// rotating the same secret) before it fails and Secrets Manager retries it.
        #[arg(long, env = "ROTATOR_LEASE_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
        lease_wait: Duration,
    },
    /// Put rotation requests on the queue: one per secret, or one tag fan-out.
    Enqueue {
        #[command(flatten)]
        queue: QueueArgs,
        /// Secret names or ARNs.
        #[arg(required_unless_present = "tag", conflicts_with = "tag")]
        secret_ids: Vec<String>,
        /// Rotate every secret carrying this tag (KEY=VALUE); the worker lists and enqueues them.
        #[arg(long, value_parser = parse_tag)]
        tag: Option<(String, String)>,
        #[command(flatten)]
        ask: RequestArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the worker loop ran recently (for container health checks).
    Health {
        #[arg(long, env = "ROTATOR_HEALTH_FILE", default_value = DEFAULT_HEALTH_FILE)]
        health_file: PathBuf,
        /// The loop passes at least every 25s while healthy.
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        max_age: Duration,
    },
    /// Rotate a secret now, or finish the rotation in progress.
    Rotate {
        /// Secret name or ARN.
        secret_id: String,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ask: RequestArgs,
        /// How long to wait for another process's lease before giving up.
        #[arg(long, env = "ROTATOR_LEASE_WAIT", default_value = "5m", value_parser = humantime::parse_duration)]
        lease_wait: Duration,
    },
    /// Preflight: check a secret, its proxy secrets, logins, TLS and grants; changes nothing.
    /// Exits 1 if a rotation would fail.
    Check {
        /// Secret name or ARN.
        secret_id: String,
        /// The RDS Proxy in front of the database (default: the secret's `proxy_name`): FAIL
        /// when its Auth list lacks a secret for a user of the rotation.
        #[arg(long)]
        proxy: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Make a single-user secret rotation-ready: create the second user with the same rights,
    /// a proxy secret per user, and a new AWSCURRENT listing both users (its username and
    /// password unchanged). Safe to run again; `--dry-run` prints the plan and changes nothing.
    Adopt {
        /// The application's secret (name or ARN), single-user, AWS-standard or seed format.
        secret_id: String,
        /// A secret whose user may create users (the RDS master user's).
        #[arg(long)]
        master_secret: String,
        /// The second user's name is the first's with this suffix.
        #[arg(long, default_value = "_clone")]
        clone_suffix: String,
        /// The RDS Proxy in front of the database: its secrets are reused when they log in, and
        /// the attach command covers its whole Auth list.
        #[arg(long)]
        proxy: Option<String>,
        /// Print the plan (SQL without passwords, the secrets to create or change); change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for the lease if a rotation of the secret is running.
        #[arg(long, env = "ROTATOR_LEASE_WAIT", default_value = "5m", value_parser = humantime::parse_duration)]
        lease_wait: Duration,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// End a rotation that cannot finish (a proxy that never reads its secret, say): AWSPENDING
    /// leaves its version, the record says `aborted`. Every user's password stays known, so the
    /// next rotation needs no master secret. Idempotent; refused on a finished rotation.
    Abort {
        /// Secret name or ARN.
        secret_id: String,
        /// Why, for the record and the event.
        #[arg(long)]
        reason: String,
        /// How long to wait for another process's lease (a worker still running the rotation).
        #[arg(long, env = "ROTATOR_LEASE_WAIT", default_value = "5m", value_parser = humantime::parse_duration)]
        lease_wait: Duration,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Clear every claim and mark a secret holds on database users. For a secret that no longer
    /// uses them but cannot be read (a policy's deny, a disabled KMS key), which otherwise
    /// refuses the rotations of the secrets that share its users. Refused while a rotation of it
    /// is in progress (`abort` ends it). A secret scheduled for deletion needs nothing: its marks
    /// are cleared as rotations meet them.
    Forget {
        /// Secret name or ARN (the ARN, as the refusal names it, when it cannot be described).
        secret_id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show the step record of a secret.
    Status {
        /// Secret name or ARN.
        secret_id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_delay_of_zero_or_over_five_seconds_is_refused() {
        assert!(parse_retry_delay("0s").is_err());
        assert!(parse_retry_delay("6s").is_err());
        assert!(parse_retry_delay("soon").is_err());
        assert_eq!(parse_retry_delay("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_retry_delay("5s"), Ok(Duration::from_secs(5)));
    }
}
