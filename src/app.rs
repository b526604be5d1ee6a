//! The commands: build the adapters from settings, run, print, choose the exit status.

use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use crate::adopt::{AdoptError, AdoptRequest, Adopter};
use crate::aws::events::EventBus;
use crate::aws::rds::{RdsInstances, RdsProxies};
use crate::aws::{self, dynamo::DynamoRecords, secrets::SecretsManager, sqs::SqsQueue};
use crate::cli::{Cli, Command, GlobalArgs, Metrics, RequestArgs, Switch};
use crate::db::{cloner::DbCloner, tls::DbTls, Adapters, Databases};
use crate::message::{RotateMessage, SelectMessage, TagSelector};
use crate::metrics::Emf;
use crate::password::PasswordPolicy;
use crate::ratelimit::RateLimit;
use crate::rotation::forget::Forgot;
use crate::rotation::guard::InUseGuard;
use crate::rotation::ports::{NoRds, RecordStore, Reporter, Reporters, SecretStore};
use crate::rotation::{
    LeaseWait, Outcome, Request, RetryPolicy, RotationError, Rotator, Settings, Shutdown,
    SystemClock,
};
use crate::worker::{check_health, Queue, Worker, WorkerSettings};

/// Exit statuses, documented in the book (docs/src/operating/commands.md).
pub mod exit {
    pub const OK: u8 = 0;
    /// The rotation failed and needs a person (bad secret, unknown user, AWSCURRENT moved, ...).
    pub const FAILED: u8 = 1;
    /// Usage errors (clap's own).
    pub const USAGE: u8 = 2;
    /// A transient failure; the rotation is still in progress and the next run resumes it.
    pub const TEMPORARY: u8 = 75;
}

/// One-shot commands keep stderr to warnings and the final error line; the worker logs what it
/// does. RUST_LOG overrides both.
pub fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Worker(_) | Command::Lambda { .. } => "info",
        _ => "warn",
    }
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
        retry: RetryPolicy {
            min_delay: args.retry_min_delay,
            aws_initial_backoff: args.aws_retry_backoff,
            db_timeout: args.db_timeout,
            aws_timeout: args.aws_timeout,
            ..RetryPolicy::default()
        },
        in_use: InUseGuard {
            policy: args.in_use,
            window: args.in_use_window,
        },
        rotation_functions: args.rotation_functions.clone(),
        rds_discovery: args.rds_discovery == Switch::On,
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

/// SIGTERM (ECS) and SIGINT (Ctrl-C) ask running work to stop at its next persisted step.
fn on_signals(shutdown: Shutdown) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.trigger();
    });
}

/// Metrics (stdout) and events (the bus), as configured.
fn reporter(args: &GlobalArgs, aws: &aws_config::SdkConfig, worker: bool) -> Arc<dyn Reporter> {
    let mut to: Vec<Arc<dyn Reporter>> = Vec::new();
    let metrics = args
        .metrics
        .unwrap_or(if worker { Metrics::Emf } else { Metrics::Off });
    if metrics == Metrics::Emf {
        to.push(Arc::new(Emf::stdout(args.metrics_namespace.clone())));
    }
    if let Some(bus) = &args.event_bus {
        to.push(Arc::new(EventBus::new(aws, bus.clone())));
    }
    Arc::new(Reporters(to))
}

fn rotator(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    worker: bool,
) -> Result<Rotator, ExitCode> {
    let db = db_adapters(args)?;
    Ok(rotator_over(args, aws, worker, &db))
}

/// The database adapters, built once: the rotation's `Databases` and adopt's cloner share them.
fn db_adapters(args: &GlobalArgs) -> Result<Adapters, ExitCode> {
    let tls =
        DbTls::new(args.db_tls, args.db_ca_bundle.as_deref()).map_err(|e| fail(exit::FAILED, e))?;
    Ok(Adapters::new(tls, args.db_timeout))
}

fn rotator_over(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    worker: bool,
    db: &Adapters,
) -> Rotator {
    let shutdown = Shutdown::default();
    on_signals(shutdown.clone());
    Rotator {
        secrets: Arc::new(
            SecretsManager::new(aws).with_write_limit(Arc::new(RateLimit::new(args.sm_write_tps))),
        ),
        records: Arc::new(DynamoRecords::new(aws, &args.table)),
        db: Arc::new(Databases::over(db)),
        rds: match args.rds_discovery {
            Switch::On => Arc::new(RdsInstances::new(aws)),
            Switch::Off => Arc::new(NoRds),
        },
        reporter: reporter(args, aws, worker),
        settings: settings(args),
        owner: owner_id(),
        shutdown,
        clock: SystemClock::shared(),
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    let args = &cli.settings;
    if let Command::Health {
        health_file,
        max_age,
    } = &cli.command
    {
        return match check_health(health_file, *max_age) {
            Ok(age) => {
                println!("ok: the worker loop ran {} ms ago", age.as_millis());
                ExitCode::SUCCESS
            }
            Err(e) => fail(exit::FAILED, e),
        };
    }
    if let Command::Lambda { .. } = &cli.command {
        if let Err(e) = crate::lambda::check_runtime_env() {
            return fail(exit::FAILED, e);
        }
    }
    let aws = aws::load_config(&settings(args).retry).await;
    match cli.command {
        Command::Health { .. } => unreachable!("handled above"),
        Command::Setup {
            queue_name,
            max_receive_count,
            json,
        } => setup(args, &aws, queue_name.as_deref(), max_receive_count, json).await,
        Command::Status { secret_id, json } => status(args, &aws, &secret_id, json).await,
        Command::Forget { secret_id, json } => forget(args, &aws, &secret_id, json).await,
        Command::Adopt {
            secret_id,
            master_secret,
            clone_suffix,
            proxy,
            dry_run,
            lease_wait,
            json,
        } => {
            let request = AdoptRequest {
                secret_id,
                master_secret_id: master_secret,
                clone_suffix,
                proxy,
                dry_run,
            };
            adopt(args, &aws, &request, lease_wait, json).await
        }
        Command::Abort {
            secret_id,
            reason,
            lease_wait,
            json,
        } => abort(args, &aws, &secret_id, &reason, lease_wait, json).await,
        Command::Check {
            secret_id,
            proxy,
            json,
        } => {
            let rotator = match rotator(args, &aws, false) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let proxies = RdsProxies::new(&aws);
            let report = crate::check::check(
                &rotator,
                &proxies,
                proxy.as_deref(),
                args.db_tls,
                args.min_interval,
                &secret_id,
            )
            .await;
            if json {
                print_json(&report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if report.ready() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAILED)
            }
        }
        Command::Rotate {
            secret_id,
            json,
            ask,
            lease_wait,
        } => {
            let request = Request {
                force: ask.force,
                ignore_in_use: ask.ignore_in_use,
                min_interval: Some(args.min_interval),
                request_id: None,
                reason: ask.reason,
                invocation: None,
                hard_stop: None,
            };
            rotate(args, &aws, &secret_id, &request, lease_wait, json).await
        }
        Command::Worker(w) => {
            let rotator = match rotator(args, &aws, true) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let queue =
                match SqsQueue::connect(&aws, &w.queue.queue_url, w.dlq_url.as_deref()).await {
                    Ok(q) => q,
                    Err(e) => return fail(exit::FAILED, e),
                };
            let worker = Worker {
                queue: Arc::new(queue),
                directory: Arc::new(SecretsManager::new(&aws)),
                rotator,
                settings: WorkerSettings {
                    concurrency: usize::from(w.concurrency),
                    min_interval: args.min_interval,
                    visibility: w.visibility_timeout,
                    receive_wait: w.receive_wait,
                    retry_delay: w.retry_delay,
                    retry_max_delay: w.retry_max_delay,
                    shutdown_grace: w.shutdown_grace,
                    health_file: Some(w.health_file),
                    max_deferrals: w.max_deferrals,
                },
            };
            worker.run().await;
            ExitCode::SUCCESS
        }
        Command::Lambda {
            function_arn,
            lease_wait,
        } => lambda(args, &aws, function_arn, lease_wait).await,
        Command::Enqueue {
            queue,
            secret_ids,
            tag,
            ask,
            json,
        } => enqueue(&aws, &queue.queue_url, secret_ids, tag, ask, json).await,
    }
}

async fn setup(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    queue_name: Option<&str>,
    max_receive_count: u32,
    json: bool,
) -> ExitCode {
    let created = match DynamoRecords::new(aws, &args.table).setup().await {
        Ok(created) => created,
        Err(e) => return fail(exit::FAILED, e),
    };
    let Some(name) = queue_name else {
        if json {
            print_json(&json!({"table": args.table, "table_created": created}));
        } else {
            println!(
                "table {} {}",
                args.table,
                if created { "created" } else { "already exists" }
            );
        }
        return ExitCode::SUCCESS;
    };
    match SqsQueue::create_with_dlq(aws, name, max_receive_count).await {
        Ok((queue_url, dlq_url)) => {
            print_json(&json!({
                "table": args.table,
                "table_created": created,
                "queue_url": queue_url,
                "dlq_url": dlq_url,
            }));
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::FAILED, e),
    }
}

async fn status(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    secret_id: &str,
    json: bool,
) -> ExitCode {
    let meta = match SecretsManager::new(aws).describe(secret_id).await {
        Ok(m) => m,
        Err(e) => return fail(exit::FAILED, e),
    };
    match DynamoRecords::new(aws, &args.table).load(&meta.arn).await {
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
            if let Some(found) = &r.in_use {
                println!("in use:      {found}");
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

async fn enqueue(
    aws: &aws_config::SdkConfig,
    queue_url: &str,
    secret_ids: Vec<String>,
    tag: Option<(String, String)>,
    ask: RequestArgs,
    json: bool,
) -> ExitCode {
    let queue = SqsQueue::sender(aws, queue_url);
    let bodies: Vec<(String, String)> = match tag {
        Some((tag_key, tag_value)) => vec![(
            format!("tag {tag_key}={tag_value}"),
            serde_json::to_string(&SelectMessage {
                select: TagSelector { tag_key, tag_value },
            })
            .expect("messages serialise"),
        )],
        None => secret_ids
            .into_iter()
            .map(|secret_id| {
                let body = RotateMessage {
                    secret_id: secret_id.clone(),
                    force: ask.force,
                    ignore_in_use: ask.ignore_in_use,
                    reason: ask.reason.clone(),
                    // Copies of this request (SQS may deliver twice) share the id.
                    request_id: Some(uuid::Uuid::new_v4().to_string()),
                };
                (
                    secret_id,
                    serde_json::to_string(&body).expect("messages serialise"),
                )
            })
            .collect(),
    };
    let mut sent = Vec::new();
    for (what, body) in bodies {
        match queue.send(&body, std::time::Duration::ZERO, 0).await {
            Ok(id) => {
                if !json {
                    println!("{id}\t{what}");
                }
                sent.push(json!({"request": what, "message_id": id}));
            }
            Err(e) => return fail(exit::FAILED, format!("could not enqueue {what}: {e}")),
        }
    }
    if json {
        print_json(&json!({"queue_url": queue_url, "messages": sent}));
    }
    ExitCode::SUCCESS
}

/// `rotate`: one rotation now, or the end of the one in progress. A request inside the minimum
/// interval is answered without rotating, and that is not an error (exit 0, and says why).
async fn rotate(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    secret_id: &str,
    request: &Request,
    lease_wait: std::time::Duration,
    json: bool,
) -> ExitCode {
    let rotator = match rotator(args, aws, false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let started = std::time::Instant::now();
    match rotator
        .rotate(secret_id, request, LeaseWait::UpTo(lease_wait))
        .await
    {
        Ok(Outcome::Rotated(done)) => {
            if json {
                print_json(&json!({
                    "secret_id": done.secret_arn,
                    "rotated": true,
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
        Ok(Outcome::Skipped { secret_arn, why }) => {
            if json {
                print_json(&json!({"secret_id": secret_arn, "rotated": false, "skipped": why}));
            } else {
                println!("skipped {secret_id}: {why} (--force rotates anyway)");
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Advanced { .. } | Outcome::NotBegun { .. }) => {
            unreachable!("only Secrets Manager's calls stop before the end")
        }
        Err(e) => rotation_failed(secret_id, &e),
    }
}

/// `rds-rotator forget`: see the command's help.
async fn forget(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    secret_id: &str,
    json: bool,
) -> ExitCode {
    let rotator = match rotator(args, aws, false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // Marks name secrets by ARN: a name is resolved when the secret can still be described;
    // an ARN that cannot be (gone, or denied) is taken as given.
    let arn = match rotator.secrets.describe(secret_id).await {
        Ok(meta) => meta.arn,
        Err(e) if e.is_retryable() => return fail(exit::TEMPORARY, e),
        Err(_) if secret_id.starts_with("arn:") => secret_id.to_owned(),
        Err(e) => {
            return fail(
                exit::FAILED,
                format!("{e}; give the secret's ARN, as the refusal names it; nothing was changed"),
            )
        }
    };
    match rotator.forget(&arn, LeaseWait::No).await {
        Ok(Forgot::InProgress(id)) => fail(
            exit::FAILED,
            format!(
                "rotation {id} of {arn} is in progress, and its claims keep other secrets off its users; end it first (`rds-rotator abort {arn} --reason ...`); nothing was changed"
            ),
        ),
        Ok(Forgot::Cleared(users)) => {
            if json {
                print_json(&json!({"secret_id": arn, "users": users}));
            } else {
                println!(
                    "{arn} no longer claims or marks any database user ({} cleared{})",
                    users.len(),
                    if users.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", users.join(", "))
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_retryable() => fail(exit::TEMPORARY, e),
        Err(e) => fail(exit::FAILED, e),
    }
}

async fn abort(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    secret_id: &str,
    reason: &str,
    lease_wait: std::time::Duration,
    json: bool,
) -> ExitCode {
    let rotator = match rotator(args, aws, false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match rotator
        .abort(secret_id, reason, LeaseWait::UpTo(lease_wait))
        .await
    {
        Ok(done) => {
            if json {
                print_json(&json!({
                    "secret_id": done.secret_arn,
                    "rotation_id": done.rotation_id,
                    "step": done.step,
                    "already_aborted": !done.now,
                }));
            } else if done.now {
                println!(
                    "aborted rotation {} of {} at step {}",
                    done.rotation_id, done.secret_arn, done.step
                );
            } else {
                println!(
                    "rotation {} of {} was already aborted",
                    done.rotation_id, done.secret_arn
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_retryable() => fail(
            exit::TEMPORARY,
            format!("abort of {secret_id} did not complete ({e}); run it again"),
        ),
        Err(e) => fail(exit::FAILED, format!("abort of {secret_id} failed: {e}")),
    }
}

/// `adopt`: waits out a running rotation's lease, then makes the secret rotation-ready.
async fn adopt(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    request: &AdoptRequest,
    lease_wait: std::time::Duration,
    json: bool,
) -> ExitCode {
    let db = match db_adapters(args) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let adopter = Adopter {
        rotator: rotator_over(args, aws, false, &db),
        catalog: Arc::new(SecretsManager::new(aws)),
        proxies: Arc::new(RdsProxies::new(aws)),
        cloner: Arc::new(DbCloner::new(&db)),
        lease_wait,
    };
    let give_up = std::time::Instant::now() + lease_wait;
    let result = loop {
        match adopter.adopt(request).await {
            Err(AdoptError::Busy(..)) if std::time::Instant::now() < give_up => {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await
            }
            other => break other,
        }
    };
    let id = &request.secret_id;
    match result {
        Ok(done) => {
            if json {
                print_json(&done.to_json());
            } else {
                print!("{}", done.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_retryable() => fail(
            exit::TEMPORARY,
            format!("adoption of {id} did not complete ({e}); run it again to finish"),
        ),
        Err(e) => fail(exit::FAILED, format!("adoption of {id} failed: {e}")),
    }
}

/// `lambda`: Secrets Manager's rotation function, until Lambda stops the process.
async fn lambda(
    args: &GlobalArgs,
    aws: &aws_config::SdkConfig,
    own_arn: Option<String>,
    lease_wait: std::time::Duration,
) -> ExitCode {
    let mut rotator = match rotator(args, aws, true) {
        Ok(r) => r,
        Err(code) => return code,
    };
    // One attempt per call: Secrets Manager retries the whole rotation, and a call must end
    // within the function's timeout.
    rotator.settings.retry.max_attempts = 1;
    let function = crate::lambda::Function {
        rotator,
        proxies: Arc::new(RdsProxies::new(aws)),
        tls: args.db_tls,
        min_interval: args.min_interval,
        own_arn,
        lease_wait,
    };
    match crate::lambda::serve(function).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(exit::FAILED, e),
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
