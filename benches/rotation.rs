//! `make bench`: what a rotation costs on the local stack, as one table.
//!
//! P1 time per rotation (in a running process, and as `rds-rotator rotate` with process start),
//! P2 calls per rotation, P3 a thousand secrets for 1 and 4 worker processes against the stack's
//! ceiling, P4 worker memory, P5 sizes and start-up, P6 the Secrets Manager write limit as the
//! emulator sees it, P7 serial round trips to AWS (a fixed delay on every AWS call). Run by `scripts/bench`, which starts the stack and builds the release binary
//! and the image first; every figure is measured here, none is assumed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use aws_sdk_secretsmanager::Client as Sm;
use rds_rotator::aws::{dynamo::DynamoRecords, secrets::SecretsManager};
use rds_rotator::db::{tls::DbTls, tls::TlsMode, Databases};
use rds_rotator::ratelimit::RateLimit;
use rds_rotator::rotation::ports::{Reporter, RotationReport};
use rds_rotator::rotation::{LeaseWait, Outcome, Request, Rotator, Settings, Shutdown};
use serde_json::{json, Value};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_rds-rotator");

fn env(k: &str) -> Result<String> {
    std::env::var(k).with_context(|| {
        format!(
            "{k} is not set: run `make bench`, or `eval \"$(scripts/local-stack start)\"` first"
        )
    })
}

fn id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

struct Stack {
    pg_host: String,
    pg_port: u16,
    admin_user: String,
    admin_password: String,
    aws: aws_config::SdkConfig,
    sm: Sm,
    sqs: aws_sdk_sqs::Client,
    run: String,
}

async fn pg_admin(s: &Stack, db: &str) -> Result<tokio_postgres::Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&s.pg_host)
        .port(s.pg_port)
        .user(&s.admin_user)
        .password(&s.admin_password)
        .dbname(db);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// One secret to rotate: its users in a shared database, two proxy secrets, the app secret.
/// The application's path is the database itself: no proxy refresh lag is measured.
#[derive(Clone)]
struct Pair {
    arn: String,
}

async fn make_pairs(s: &Stack, n: usize) -> Result<Vec<Pair>> {
    let db = format!("bench_{}", s.run);
    let admin = pg_admin(s, "postgres").await?;
    if admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await?
        .is_none()
    {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
    }
    let tag = id();
    let names: Vec<(String, String, String, String)> = (0..n)
        .map(|i| {
            (
                format!("b{tag}_{i}"),
                format!("b{tag}_{i}_c"),
                format!("pw-{}", id()),
                format!("pw-{}", id()),
            )
        })
        .collect();
    for chunk in names.chunks(200) {
        let mut sql = String::new();
        for (a, b, pa, pb) in chunk {
            sql.push_str(&format!(
                "CREATE ROLE {a} LOGIN PASSWORD '{pa}'; CREATE ROLE {b} LOGIN PASSWORD '{pb}'; GRANT CONNECT ON DATABASE {db} TO {a}, {b};\n"
            ));
        }
        admin.batch_execute(&sql).await?;
    }
    let mut tasks = JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for (i, (a, b, pa, pb)) in names.into_iter().enumerate() {
        let (sm, limit, db) = (s.sm.clone(), limit.clone(), db.clone());
        let (host, port, run, tag) = (s.pg_host.clone(), s.pg_port, s.run.clone(), tag.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire().await?;
            let mut proxies = Vec::new();
            for (u, p) in [(&a, &pa), (&b, &pb)] {
                let out = sm
                    .create_secret()
                    .name(format!("bench-{run}/proxy/{u}"))
                    .secret_string(json!({"username": u, "password": p}).to_string())
                    .send()
                    .await?;
                proxies.push(out.arn.unwrap_or_default());
            }
            let app = json!({
                "engine": "postgres", "host": host, "port": port, "dbname": db,
                "username": a, "password": pa, "rotation_usernames": [a, b],
                "proxy_secret_ids": proxies,
            });
            let out = sm
                .create_secret()
                .name(format!("bench-{run}/app/{tag}-{i}"))
                .secret_string(app.to_string())
                .send()
                .await?;
            anyhow::Ok(Pair {
                arn: out.arn.unwrap_or_default(),
            })
        });
    }
    let mut pairs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        pairs.push(r??);
    }
    Ok(pairs)
}

/// Keeps every report, for the call counts.
#[derive(Default)]
struct Reports(Mutex<Vec<RotationReport>>);

#[async_trait]
impl Reporter for Reports {
    async fn report(&self, r: &RotationReport) {
        self.0.lock().unwrap().push(r.clone());
    }
}

fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if xs.len() % 2 == 1 {
        xs[xs.len() / 2]
    } else {
        (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
    };
    (median, xs[0], xs[xs.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn command(table: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("ROTATOR_TABLE", table)
        .env("ROTATOR_DB_TLS", "disable")
        .env("ROTATOR_TEST_DEADLINE", "20s")
        .env_remove("RUST_LOG")
        .env_remove("ROTATOR_TEST_FAILPOINTS");
    cmd
}

fn setup_table(table: &str) -> Result<()> {
    let out = command(table, &["setup"]).output()?;
    if !out.status.success() {
        bail!("setup: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn queue(table: &str, name: &str) -> Result<(String, String)> {
    let out = command(
        table,
        &["setup", "--queue-name", name, "--max-receive-count", "50"],
    )
    .output()?;
    if !out.status.success() {
        bail!(
            "setup --queue-name: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["queue_url"].as_str().unwrap_or_default().to_owned(),
        v["dlq_url"].as_str().unwrap_or_default().to_owned(),
    ))
}

async fn depth(s: &Stack, url: &str) -> Result<u64> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = s
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await?;
    Ok(out
        .attributes()
        .map(|a| {
            a.values()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>()
        })
        .unwrap_or(0))
}

async fn enqueue(s: &Stack, url: &str, pairs: &[Pair], force: bool) -> Result<()> {
    let mut tasks = JoinSet::new();
    for chunk in pairs.chunks(10) {
        let (sqs, url) = (s.sqs.clone(), url.to_owned());
        let entries: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(
                        json!({"secret_id": p.arn, "force": force, "request_id": uuid::Uuid::new_v4().to_string()})
                            .to_string(),
                    )
                    .build()
                    .unwrap()
            })
            .collect();
        tasks.spawn(async move {
            let out = sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await?;
            if !out.failed().is_empty() {
                bail!(
                    "SendMessageBatch failed for {} messages",
                    out.failed().len()
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `rds-rotator worker` on `url`, with the bench's settings and `extra` on top.
fn worker_command(table: &str, url: &str, health: &PathBuf, extra: &[(&str, String)]) -> Command {
    let mut cmd = command(table, &["worker"]);
    cmd.env("ROTATOR_QUEUE_URL", url)
        .env("ROTATOR_RECEIVE_WAIT", "1s")
        .env("ROTATOR_MIN_INTERVAL", "0s")
        .env("ROTATOR_RETRY_DELAY", "1s")
        .env("ROTATOR_HEALTH_FILE", health)
        .env("ROTATOR_METRICS", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

fn spawn_worker(
    table: &str,
    url: &str,
    health: &PathBuf,
    extra: &[(&str, String)],
) -> Result<Child> {
    Ok(worker_command(table, url, health, extra).spawn()?)
}

/// What one worker's metrics lines (EMF on stdout) said so far.
#[derive(Default)]
struct Outcomes {
    succeeded: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicUsize,
}

/// A worker whose per-rotation metrics lines are counted as they come: the round knows when it is
/// done without polling the emulator (moto scans the whole queue for every GetQueueAttributes).
fn spawn_counted_worker(
    table: &str,
    url: &str,
    health: &PathBuf,
    extra: &[(&str, String)],
) -> Result<(Child, Arc<Outcomes>)> {
    let mut cmd = worker_command(table, url, health, extra);
    cmd.env("ROTATOR_METRICS", "emf").stdout(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let outcomes = Arc::new(Outcomes::default());
    let counts = outcomes.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        use std::sync::atomic::Ordering::Relaxed;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("\"RotationsSucceeded\":1") {
                counts.succeeded.fetch_add(1, Relaxed);
            } else if line.contains("\"RotationsFailed\":1") {
                counts.failed.fetch_add(1, Relaxed);
            }
        }
    });
    Ok((child, outcomes))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every pair's record says: finished, and rotated exactly once from `before` (its version then).
async fn check_once(
    s: &Stack,
    table: &str,
    pairs: &[Pair],
    before: &BTreeMap<String, String>,
) -> Result<(usize, BTreeMap<String, String>)> {
    let records = Arc::new(DynamoRecords::new(&s.aws, table));
    let mut tasks = JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for p in pairs {
        let (records, limit, arn) = (records.clone(), limit.clone(), p.arn.clone());
        let expected = before.get(&p.arn).cloned();
        tasks.spawn(async move {
            let _permit = limit.acquire().await?;
            use rds_rotator::rotation::ports::RecordStore;
            let r = records.load(&arn).await?;
            let ok = r
                .as_ref()
                .is_some_and(|r| r.state.as_str() == "finished" && r.current_version == expected);
            anyhow::Ok((arn, ok, r.and_then(|r| r.rotation_id)))
        });
    }
    let (mut bad, mut now) = (0, BTreeMap::new());
    while let Some(r) = tasks.join_next().await {
        let (arn, ok, id) = r??;
        if !ok {
            bad += 1;
        }
        if let Some(id) = id {
            now.insert(arn, id);
        }
    }
    Ok((bad, now))
}

async fn current_versions(s: &Stack, pairs: &[Pair]) -> Result<BTreeMap<String, String>> {
    let mut tasks = JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for p in pairs {
        let (sm, limit, arn) = (s.sm.clone(), limit.clone(), p.arn.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire().await?;
            let out = sm.describe_secret().secret_id(&arn).send().await?;
            let v = out
                .version_ids_to_stages()
                .and_then(|m| {
                    m.iter()
                        .find(|(_, l)| l.iter().any(|l| l == "AWSCURRENT"))
                        .map(|(k, _)| k.clone())
                })
                .unwrap_or_default();
            anyhow::Ok((arn, v))
        });
    }
    let mut out = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (k, v) = r??;
        out.insert(k, v);
    }
    Ok(out)
}

/// The most requests matching `is_write` in any one-second window of `log`.
fn max_per_second(log: &[(Instant, String)], is_write: impl Fn(&str) -> bool) -> usize {
    let mut times: Vec<Instant> = log
        .iter()
        .filter(|(_, t)| is_write(t))
        .map(|(i, _)| *i)
        .collect();
    times.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

fn is_sm_write(target: &str) -> bool {
    target == "secretsmanager.PutSecretValue" || target == "secretsmanager.UpdateSecretVersionStage"
}

struct Round {
    workers: usize,
    secs: f64,
    rate: f64,
    errors: usize,
    /// Every AWS call the workers made (all services), per rotation.
    calls_per_rotation: f64,
    /// Secrets Manager writes per rotation.
    writes_per_rotation: f64,
    /// Of `calls_per_rotation`, the SQS ones (receive and delete).
    sqs_per_rotation: f64,
    /// The most Secrets Manager writes one worker made in any second, and all workers together.
    max_write_one: usize,
    max_write_all: usize,
}

/// Rotates every pair once with `workers` worker processes, each `tps` writes per second, all
/// their AWS traffic through a pass-through proxy that logs it.
async fn round(
    s: &Stack,
    table: &str,
    pairs: &[Pair],
    workers: usize,
    tps: u32,
    concurrency: usize,
) -> Result<Round> {
    let (url, dlq) = queue(table, &format!("bench-{}-{}", s.run, id()))?;
    let before = current_versions(s, pairs).await?;
    enqueue(s, &url, pairs, true).await?;
    let endpoint: std::net::SocketAddr = env("AWS_ENDPOINT_URL")?
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()?;
    let mut proxies = Vec::new();
    let mut children = Vec::new();
    let mut outcomes = Vec::new();
    let started = Instant::now();
    for w in 0..workers {
        let proxy = aws_fault_proxy::start(
            "127.0.0.1:0".parse()?,
            endpoint,
            aws_fault_proxy::Faults {
                rate: 0.0,
                slow_delay: Duration::ZERO,
                fixed_delay: Duration::ZERO,
            },
        )
        .await?;
        let health = std::env::temp_dir().join(format!("bench-health-{}-{w}", id()));
        let (child, counted) = spawn_counted_worker(
            table,
            &url,
            &health,
            &[
                ("ROTATOR_CONCURRENCY", concurrency.to_string()),
                ("ROTATOR_SM_WRITE_TPS", tps.to_string()),
                ("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr)),
            ],
        )?;
        children.push(child);
        outcomes.push(counted);
        proxies.push(proxy);
    }
    let done = || -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        outcomes
            .iter()
            .map(|o| o.succeeded.load(Relaxed) + o.failed.load(Relaxed))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    while done() < pairs.len() {
        if Instant::now() > deadline {
            bail!("{} of {} rotations in 30 minutes", done(), pairs.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    for c in children {
        stop(c);
    }
    let (bad, _) = check_once(s, table, pairs, &before).await?;
    let dead = depth(s, &dlq).await? as usize;
    let logs: Vec<Vec<(Instant, String)>> = proxies
        .iter()
        .map(|p| p.counts.log.lock().unwrap().clone())
        .collect();
    let max_write_one = logs
        .iter()
        .map(|l| max_per_second(l, is_sm_write))
        .max()
        .unwrap_or(0);
    let all: Vec<(Instant, String)> = logs.into_iter().flatten().collect();
    Ok(Round {
        workers,
        secs,
        rate: pairs.len() as f64 / secs,
        errors: bad + dead,
        calls_per_rotation: all.len() as f64 / pairs.len() as f64,
        writes_per_rotation: all.iter().filter(|(_, t)| is_sm_write(t)).count() as f64
            / pairs.len() as f64,
        sqs_per_rotation: all
            .iter()
            .filter(|(_, t)| t.starts_with("AmazonSQS."))
            .count() as f64
            / pairs.len() as f64,
        max_write_one,
        max_write_all: max_per_second(&all, is_sm_write),
    })
}

/// What moto spends on SQS per rotation: `n` messages enqueued at once and drained the way workers
/// do (receive up to 10, delete each), 8 receivers at a time. moto checks each received message's
/// retention by computing every queue attribute, a scan of the whole queue: a receive costs more
/// the deeper the queue, which no trivial call shows. Returns messages per second.
async fn sqs_drain_rate(s: &Stack, table: &str, n: usize) -> Result<f64> {
    let (url, _) = queue(table, &format!("bench-{}-drain", s.run))?;
    let mut sends = JoinSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let (sqs, url) = (s.sqs.clone(), url.clone());
        let entries: Vec<_> = chunk
            .iter()
            .map(|i| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(json!({"secret_id": format!("drain-{i}")}).to_string())
                    .build()
                    .unwrap()
            })
            .collect();
        sends.spawn(async move {
            sqs.send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = sends.join_next().await {
        r??;
    }
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (sqs, url, left) = (s.sqs.clone(), url.clone(), left.clone());
        tasks.spawn(async move {
            while left.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                let out = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .visibility_timeout(300)
                    .wait_time_seconds(0)
                    .send()
                    .await?;
                for m in out.messages() {
                    sqs.delete_message()
                        .queue_url(&url)
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .send()
                        .await?;
                    left.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The stack's ceiling: trivial calls per second against the emulator (DescribeSecret, many at
/// once), from one process.
async fn trivial_call_rate(s: &Stack, arn: &str) -> Result<f64> {
    let stop_at = Instant::now() + Duration::from_secs(5);
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        let (sm, arn, count) = (s.sm.clone(), arn.to_owned(), count.clone());
        tasks.spawn(async move {
            while Instant::now() < stop_at {
                sm.describe_secret().secret_id(&arn).send().await?;
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(count.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| format!("{} GiB", kib / 1024 / 1024))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = Command::new("uname")
        .arg("-sr")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}, {kernel}")
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes --bench. `cargo test --all-targets` runs this binary too, without it:
    // then there is nothing to do (the benchmark needs minutes and the release build).
    // nextest lists a binary's tests with `--list` first: this one has none to list.
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/rotation.rs: run with `make bench` (cargo bench)");
        return Ok(());
    }
    // BENCH_ONLY=p3 (say) runs P1 and P2, which every part needs, and then only the parts named.
    let only = std::env::var("BENCH_ONLY")
        .unwrap_or_default()
        .to_lowercase();
    let part = |p: &str| only.is_empty() || only.split(',').any(|o| o.trim() == p);
    let thousand: usize = std::env::var("BENCH_SECRETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let s = Stack {
        pg_host: env("ROTATOR_TEST_PG_HOST")?,
        pg_port: env("ROTATOR_TEST_PG_PORT")?.parse()?,
        admin_user: env("ROTATOR_TEST_PG_ADMIN_USER")?,
        admin_password: env("ROTATOR_TEST_PG_ADMIN_PASSWORD")?,
        sm: Sm::new(&aws),
        sqs: aws_sdk_sqs::Client::new(&aws),
        aws,
        run: id(),
    };
    env("AWS_ENDPOINT_URL")?;
    let table = format!("bench-{}", s.run);
    setup_table(&table)?;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        eprintln!("bench: {k}: {v}");
        rows.push((k.to_owned(), v));
    };

    // P1 and P2, in a running process: the engine with the real adapters.
    let one = make_pairs(&s, 1).await?.remove(0);
    let reports = Arc::new(Reports::default());
    let rotator = Rotator {
        secrets: Arc::new(
            SecretsManager::new(&s.aws).with_write_limit(Arc::new(RateLimit::new(40))),
        ),
        records: Arc::new(DynamoRecords::new(&s.aws, &table)),
        db: Arc::new(Databases::new(
            DbTls::new(TlsMode::Disable, None)?,
            std::time::Duration::from_secs(10),
        )),
        rds: Arc::new(rds_rotator::aws::rds::RdsInstances::new(&s.aws)),
        reporter: reports.clone(),
        settings: Settings::default(),
        owner: format!("bench-{}", id()),
        shutdown: Shutdown::default(),
        clock: rds_rotator::rotation::SystemClock::shared(),
    };
    let mut warm = Vec::new();
    for i in 0..28 {
        let t = Instant::now();
        match rotator
            .rotate(&one.arn, &Request::default(), LeaseWait::No)
            .await?
        {
            Outcome::Rotated(_) => {}
            other => bail!("rotation {i}: {other:?}"),
        }
        if i >= 3 {
            warm.push(ms(t.elapsed()));
        }
        // One at a time, as a latency: spaced so that the write limit (40/s) never holds one back.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (med, min, max) = stats(warm.clone());
    row(
        "P1 rotation, in a running process",
        format!(
            "median {med:.1} ms, min {min:.1}, max {max:.1} (n={})",
            warm.len()
        ),
    );
    let mut cli = Vec::new();
    for i in 0..25 {
        let t = Instant::now();
        let out = command(&table, &["rotate", &one.arn]).output()?;
        if !out.status.success() {
            bail!("rotate {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        cli.push(ms(t.elapsed()));
    }
    let (med, min, max) = stats(cli.clone());
    row(
        "P1 `rds-rotator rotate`, process start included",
        format!(
            "median {med:.1} ms, min {min:.1}, max {max:.1} (n={})",
            cli.len()
        ),
    );
    let last = reports
        .0
        .lock()
        .unwrap()
        .last()
        .cloned()
        .context("no report")?;
    let by_op: Vec<String> = last.calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let sum = |p: &str| -> u64 {
        last.calls
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .map(|(_, v)| v)
            .sum()
    };
    row(
        "P2 calls per rotation",
        format!(
            "Secrets Manager {}, DynamoDB {} ({} writes), PostgreSQL connections {}; {}",
            sum("SecretsManager."),
            sum("DynamoDB."),
            sum("DynamoDB.UpdateItem") + sum("DynamoDB.PutItem"),
            sum("postgres.connect"),
            by_op.join(", ")
        ),
    );

    // P7: serial round trips to AWS. Every AWS call goes through a fault proxy that holds each
    // request for a fixed delay, once with none and once with `delay`: each serial round trip
    // adds the delay once, calls made at once add it once between them. Counted twice: the
    // waves of calls in the proxy's log, and the difference of the medians over the delay.
    // (The database is not delayed.)
    if part("p7") {
        let delay = Duration::from_millis(40);
        let mut medians = Vec::new();
        let mut waves = String::new();
        for fixed_delay in [Duration::ZERO, delay] {
            let proxy = aws_fault_proxy::start(
                "127.0.0.1:0".parse()?,
                env("AWS_ENDPOINT_URL")?
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()?,
                aws_fault_proxy::Faults {
                    rate: 0.0,
                    slow_delay: Duration::ZERO,
                    fixed_delay,
                },
            )
            .await?;
            let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(format!("http://{}", proxy.addr))
                .load()
                .await;
            let delayed = Rotator {
                secrets: Arc::new(SecretsManager::new(&aws)),
                records: Arc::new(DynamoRecords::new(&aws, &table)),
                db: rotator.db.clone(),
                rds: Arc::new(rds_rotator::aws::rds::RdsInstances::new(&aws)),
                reporter: reports.clone(),
                settings: Settings::default(),
                owner: format!("bench-{}", id()),
                shutdown: Shutdown::default(),
                clock: rds_rotator::rotation::SystemClock::shared(),
            };
            let mut times = Vec::new();
            for i in 0..12 {
                let logged = proxy.counts.log.lock().unwrap().len();
                let t = Instant::now();
                match delayed
                    .rotate(&one.arn, &Request::default(), LeaseWait::No)
                    .await?
                {
                    Outcome::Rotated(_) => {}
                    other => bail!("P7 rotation {i}: {other:?}"),
                }
                if i >= 2 {
                    times.push(ms(t.elapsed()));
                }
                // The last delayed rotation's calls, in waves: a call that starts within half a
                // delay of the wave's first went out beside it.
                if i == 11 && !fixed_delay.is_zero() {
                    let log = proxy.counts.log.lock().unwrap();
                    let mut first: Option<Instant> = None;
                    for (at, target) in &log[logged..] {
                        let op = target.rsplit('.').next().unwrap_or(target);
                        match first {
                            Some(f) if at.duration_since(f) < delay / 2 => waves.push_str(" + "),
                            _ => {
                                first = Some(*at);
                                waves.push_str(if waves.is_empty() { "" } else { " | " });
                            }
                        }
                        waves.push_str(op);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            medians.push(stats(times).0);
        }
        // Two measures that must agree: the waves of the last rotation's calls, and the time the
        // delay added to the median rotation, in delays.
        let serial = (medians[1] - medians[0]) / ms(delay);
        let counted = waves.split(" | ").count();
        row(
            "P7 serial round trips",
            format!(
                "{counted} (delay {} ms, rotation {:.0} ms; {:.0} ms without it: {serial:.1} delays)",
                delay.as_millis(),
                medians[1],
                medians[0]
            ),
        );
        row("P7 calls, in serial waves", waves);
    }

    // P5: start-up to the first SQS receive (the loop's first pass writes its health file).
    let mut idle_rss = 0;
    if part("p5") {
        let (url, _) = queue(&table, &format!("bench-{}-idle", s.run))?;
        let mut starts = Vec::new();
        for i in 0..10 {
            let health = std::env::temp_dir().join(format!("bench-health-{}", id()));
            let t = Instant::now();
            let child = spawn_worker(
                &table,
                &url,
                &health,
                &[("ROTATOR_CONCURRENCY", "64".into())],
            )?;
            while !health.exists() {
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("the worker did not start");
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            starts.push(ms(t.elapsed()));
            if i == 0 {
                std::thread::sleep(Duration::from_secs(2));
                idle_rss = rss_kib(child.id(), "VmRSS:");
            }
            stop(child);
            let _ = std::fs::remove_file(&health);
        }
        let (med, min, max) = stats(starts);
        let binary = std::fs::metadata(BIN)?.len();
        row(
            "P5 binary (release, glibc) / image",
            format!(
                "{:.1} MB / {}",
                binary as f64 / 1e6,
                std::env::var("BENCH_IMAGE_SIZE")
                    .unwrap_or_else(|_| "not built (BENCH_IMAGE=0)".into())
            ),
        );
        row(
            "P5 process start to first SQS receive",
            format!("median {med:.1} ms, min {min:.1}, max {max:.1} (n=10)"),
        );
    }

    // P4: memory, idle and with 64 rotations in flight (each held 3 s before its test step).
    if part("p4") {
        let sixty_four = make_pairs(&s, 64).await?;
        let (url64, _) = queue(&table, &format!("bench-{}-64", s.run))?;
        enqueue(&s, &url64, &sixty_four, true).await?;
        let health = std::env::temp_dir().join(format!("bench-health-{}", id()));
        let child = spawn_worker(
            &table,
            &url64,
            &health,
            &[
                ("ROTATOR_CONCURRENCY", "64".into()),
                ("ROTATOR_SM_WRITE_TPS", "1000".into()),
                ("ROTATOR_TEST_FAILPOINTS", "before:test=sleep(3000)".into()),
            ],
        )?;
        let mut peak = 0;
        let t = Instant::now();
        while depth(&s, &url64).await? > 0 && t.elapsed() < Duration::from_secs(120) {
            peak = peak.max(rss_kib(child.id(), "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let hwm = rss_kib(child.id(), "VmHWM:");
        stop(child);
        row(
            "P4 worker RSS",
            format!(
                "idle {:.1} MB; 64 rotations in flight {:.1} MB (peak RSS {:.1} MB)",
                idle_rss as f64 / 1024.0,
                peak as f64 / 1024.0,
                hwm as f64 / 1024.0
            ),
        );
    }

    // P3 and P6: a thousand secrets, 1 then 4 workers.
    if part("p3") {
        let many = make_pairs(&s, thousand).await?;
        let trivial = trivial_call_rate(&s, &one.arn).await?;
        let drain = sqs_drain_rate(&s, &table, many.len()).await?;
        let mut one_call = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            s.sm.describe_secret().secret_id(&one.arn).send().await?;
            one_call.push(ms(t.elapsed()));
        }
        let (med, min, _) = stats(one_call);
        row(
            "moto: one DescribeSecret, one at a time",
            format!("median {med:.1} ms, min {min:.1} (n=50)"),
        );
        // The limit's split (40 writes/s in all), then the limit lifted, to see the engine itself.
        // BENCH_ROUNDS=workers:tps:concurrency,... replaces them (scale-up compares pairs of rounds).
        let plan: Vec<(usize, u32, usize)> = match std::env::var("BENCH_ROUNDS") {
            Ok(v) => v
                .split(',')
                .map(|r| {
                    let f: Vec<&str> = r.trim().split(':').collect();
                    anyhow::Ok((f[0].parse()?, f[1].parse()?, f[2].parse()?))
                })
                .collect::<Result<_>>()
                .context("BENCH_ROUNDS is workers:tps:concurrency,...")?,
            Err(_) => vec![(1, 40, 32), (4, 10, 8), (1, 1000, 32), (4, 1000, 8)],
        };
        let mut rounds: Vec<(u32, Round)> = Vec::new();
        for (workers, tps, concurrency) in plan {
            let r = round(&s, &table, &many, workers, tps, concurrency).await?;
            // What the stack allows this round: the emulator's trivial-call rate spent on the
            // calls a rotation made here, or the write limit, whichever is lower. And the same
            // with SQS at what draining a queue this deep costs moto instead.
            let emulator = trivial / r.calls_per_rotation;
            let with_sqs =
                1.0 / ((r.calls_per_rotation - r.sqs_per_rotation) / trivial + 1.0 / drain);
            let limit = (workers as f64 * f64::from(tps)) / r.writes_per_rotation;
            let (ceiling, by) = if limit < emulator {
                (limit, "the write limit")
            } else {
                (emulator, "moto")
            };
            let sqs_aware = if limit < with_sqs {
                String::new()
            } else {
                format!(
                    "; {:.0}% of {with_sqs:.1}/s, moto's ceiling with SQS at its drain rate",
                    100.0 * r.rate / with_sqs
                )
            };
            row(
                &format!(
                    "P3 {} secrets, {} worker(s) ({tps} writes/s each)",
                    many.len(),
                    r.workers
                ),
                format!(
                    "{:.1} s, {:.1} rotations/s, {:.1} AWS calls each; {:.0}% of the ceiling {ceiling:.1}/s ({by}){sqs_aware}; errors {}",
                    r.secs,
                    r.rate,
                    r.calls_per_rotation,
                    100.0 * r.rate / ceiling,
                    r.errors
                ),
            );
            rounds.push((tps, r));
        }
        row(
            "moto: SQS drain, messages enqueued at once",
            format!(
                "{drain:.0} messages/s received and deleted from a queue of {} (8 receivers, up to 10 per receive)",
                many.len()
            ),
        );
        if let Some((tps, first)) = rounds.first() {
            let per = first.calls_per_rotation;
            row(
                "P3 stack ceiling",
                format!(
                    "{trivial:.0} trivial calls/s against moto (DescribeSecret, 32 at a time) ÷ {per:.1} calls per rotation = {:.1} rotations/s; the write limit allows {:.0} writes/s ÷ {:.1} writes per rotation",
                    trivial / per,
                    first.workers as f64 * f64::from(*tps),
                    first.writes_per_rotation
                ),
            );
        }
        // The binding ceiling, measured: the write limit's, or what this stack reached with the
        // limit lifted (its trivial-call estimate above does not price writes and SQS), whichever
        // is lower; and how close the limited rounds came to it.
        let lifted = rounds
            .iter()
            .filter(|(tps, r)| {
                (r.workers as f64 * f64::from(*tps)) / r.writes_per_rotation
                    > trivial / r.calls_per_rotation
            })
            .map(|(_, r)| r.rate)
            .fold(0.0_f64, f64::max);
        let limited: Vec<&(u32, Round)> = rounds
            .iter()
            .filter(|(tps, r)| {
                (r.workers as f64 * f64::from(*tps)) / r.writes_per_rotation
                    <= trivial / r.calls_per_rotation
            })
            .collect();
        if lifted > 0.0 && !limited.is_empty() {
            let (tps, first) = limited[0];
            let limit = (first.workers as f64 * f64::from(*tps)) / first.writes_per_rotation;
            let (binding, by) = if limit <= lifted {
                (limit, "the write limit")
            } else {
                (lifted, "this stack")
            };
            let shares: Vec<String> = limited
                .iter()
                .map(|(_, r)| format!("{:.0}%", 100.0 * r.rate / binding))
                .collect();
            row(
                "P3 binding ceiling",
                format!(
                    "{binding:.1} rotations/s ({by}): the write limit allows {limit:.1}/s, this stack reached {lifted:.1}/s with the limit lifted; the limited rounds reach {} of it",
                    shares.join(" and ")
                ),
            );
        }
        for pair in rounds.chunks(2) {
            if let [(ta, a), (tb, b)] = pair {
                row(
                    &format!(
                        "P3 scale-up, {} workers / {} ({ta} and {tb} writes/s each)",
                        b.workers, a.workers
                    ),
                    format!("{:.2}", b.rate / a.rate),
                );
            }
        }
        for (tps, r) in &rounds {
            row(
                &format!(
                    "P6 Secrets Manager writes in any second, {} worker(s) at {tps}",
                    r.workers
                ),
                format!(
                    "one worker at most {}; all together {}",
                    r.max_write_one, r.max_write_all
                ),
            );
        }
        // P6 proper: one worker limited to 10 writes per second.
        let hundred = &many[..many.len().min(100)];
        let r = round(&s, &table, hundred, 1, 10, 32).await?;
        row(
            "P6 limit 10 writes/s, 1 worker",
            format!(
            "at most {} Secrets Manager writes in any second ({} rotations, {:.1} s, errors {})",
            r.max_write_one,
            hundred.len(),
            r.secs,
            r.errors
        ),
        );
    }

    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!();
    println!("rds-rotator benchmark, {date}");
    println!("machine: {}", machine());
    println!("stack: local PostgreSQL, moto (AWS), debug=off (release build)");
    println!();
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("| {:width$} | result |", "measure");
    println!("|{}|--------|", "-".repeat(width + 2));
    for (k, v) in &rows {
        println!("| {k:width$} | {v} |");
    }
    Ok(())
}
