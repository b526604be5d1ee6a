//! The commands: build the adapters from settings, run, print, choose the exit status.

use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use crate::aws::{self, dynamo::DynamoRecords, secrets::SecretsManager};
use crate::cli::{Cli, Command, GlobalArgs};
use crate::db::{tls::DbTls, Databases};
use crate::password::PasswordPolicy;
use crate::rotation::ports::{RecordStore, SecretStore};
use crate::rotation::{LeaseWait, RetryPolicy, RotationError, Rotator, Settings};

/// Exit statuses, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    /// The rotation failed and needs a person (bad secret, unknown user, AWSCURRENT moved, ...).
    pub const FAILED: u8 = 1;
    /// Usage errors (clap's own).
    pub const USAGE: u8 = 2;
    /// A transient failure; the rotation is still in progress and the next run resumes it.
    pub const TEMPORARY: u8 = 75;
}

/// One-shot commands keep stderr to warnings and the final error line; RUST_LOG overrides.
pub fn default_log_level(_command: &Command) -> &'static str {
    "warn"
}

/// A process-unique lease owner: host, pid and a random suffix.
pub fn owner_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &suffix[..8])
}

pub fn settings(args: &GlobalArgs) -> Settings {
    Settings {
        test_deadline: args.test_deadline,
        lease_duration: args.lease_duration,
        password: PasswordPolicy {
            length: args.password_length,
            exclude: args.exclude_characters.clone(),
        },
        retry: RetryPolicy::default(),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string(value).expect("JSON values serialise")
    );
}

pub async fn run(cli: Cli) -> ExitCode {
    let args = &cli.settings;
    let aws = aws::load_config().await;
    let records = DynamoRecords::new(&aws, &args.table);
    match cli.command {
        Command::Setup => match records.setup().await {
            Ok(created) => {
                println!(
                    "table {} {}",
                    args.table,
                    if created { "created" } else { "already exists" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit::FAILED, e),
        },
        Command::Status { secret_id, json } => {
            let secrets = SecretsManager::new(&aws);
            let meta = match secrets.describe(&secret_id).await {
                Ok(m) => m,
                Err(e) => return fail(exit::FAILED, e),
            };
            match records.load(&meta.arn).await {
                Ok(Some(r)) if json => {
                    print_json(&serde_json::to_value(&r).expect("records serialise"));
                    ExitCode::SUCCESS
                }
                Ok(Some(r)) => {
                    println!("secret:      {}", r.secret_id);
                    println!("rotation id: {}", r.rotation_id.as_deref().unwrap_or("-"));
                    println!(
                        "state:       {}  (step {}, attempt {})",
                        r.state.as_str(),
                        r.step,
                        r.attempts
                    );
                    println!(
                        "users:       {} -> {}",
                        r.current_user.as_deref().unwrap_or("-"),
                        r.target_user.as_deref().unwrap_or("-")
                    );
                    if let Some(e) = &r.last_error {
                        println!("last error:  {e}");
                    }
                    ExitCode::SUCCESS
                }
                Ok(None) => fail(
                    exit::FAILED,
                    format!("no rotation has been recorded for {}", meta.arn),
                ),
                Err(e) => fail(exit::FAILED, e),
            }
        }
        Command::Rotate {
            secret_id,
            json,
            lease_wait,
        } => {
            let tls = match DbTls::new(args.db_tls, args.db_ca_bundle.as_deref()) {
                Ok(t) => t,
                Err(e) => return fail(exit::FAILED, e),
            };
            let rotator = Rotator {
                secrets: Arc::new(SecretsManager::new(&aws)),
                records: Arc::new(records),
                db: Arc::new(Databases::new(tls)),
                settings: settings(args),
                owner: owner_id(),
            };
            let started = std::time::Instant::now();
            match rotator
                .rotate(&secret_id, LeaseWait::UpTo(lease_wait))
                .await
            {
                Ok(done) => {
                    if json {
                        print_json(&json!({
                            "secret_id": done.secret_arn,
                            "rotation_id": done.rotation_id,
                            "previous_user": done.previous_user,
                            "current_user": done.current_user,
                            "resumed": done.resumed,
                            "duration_ms": started.elapsed().as_millis() as u64,
                        }));
                    } else {
                        println!(
                            "rotated {}: {} -> {} (rotation {}{})",
                            secret_id,
                            done.previous_user,
                            done.current_user,
                            done.rotation_id,
                            if done.resumed { ", resumed" } else { "" }
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => rotation_failed(&secret_id, &e),
            }
        }
    }
}

fn rotation_failed(secret_id: &str, e: &RotationError) -> ExitCode {
    if e.is_retryable() {
        fail(
            exit::TEMPORARY,
            format!("rotation of {secret_id} did not complete ({e}); run again to resume it"),
        )
    } else {
        fail(exit::FAILED, format!("rotation of {secret_id} failed: {e}"))
    }
}
