//! Commands and settings: flags with environment fallbacks.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::tls::TlsMode;

#[derive(Debug, Parser)]
#[command(name = "rds-rotator", version = crate::VERSION, about = "Zero-downtime password rotation for RDS behind RDS Proxy")]
pub struct Cli {
    #[command(flatten)]
    pub settings: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    /// How long the test step retries the new credentials along the application's path.
    #[arg(long, env = "ROTATOR_TEST_DEADLINE", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub test_deadline: Duration,
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
    /// Characters never used in generated passwords (default: the engine's, as AWS's
    /// rotation functions: `:/@"'\` for PostgreSQL).
    #[arg(long, env = "ROTATOR_EXCLUDE_CHARACTERS", global = true)]
    pub exclude_characters: Option<String>,
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("the lease duration must be at least 1s".into());
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the DynamoDB table for leases and step records (idempotent).
    Setup,
    /// Rotate a secret now, or finish the rotation in progress.
    Rotate {
        /// Secret name or ARN.
        secret_id: String,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
        /// How long to wait for another process's lease before giving up.
        #[arg(long, env = "ROTATOR_LEASE_WAIT", default_value = "5m", value_parser = humantime::parse_duration)]
        lease_wait: Duration,
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
