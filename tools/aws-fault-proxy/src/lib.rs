//! An HTTP/1.1 proxy for tests that sits between an AWS SDK and an emulator (moto) and, at a
//! configurable rate, answers in AWS's own error shapes instead of forwarding:
//! - throttling: HTTP 400 `ThrottlingException` (the SDK retries it with backoff);
//! - server errors: HTTP 500 `InternalServiceError`;
//! - slowness: the request is forwarded after a delay;
//! - a fixed delay on every request it forwards (`fixed_delay`), as a faraway region adds to each
//!   round trip: the benchmark counts a rotation's serial round trips with it;
//! - lost answers: the request is forwarded and takes effect, but the client gets a 500, as when
//!   a response is lost on the way back. The SDK retries, so every write must be idempotent.
//!
//! Besides the random faults, [`Refusals`] answer chosen requests (an operation, and a string
//! its body must contain, such as one secret's ARN) with a chosen error, until lifted: a deny in
//! a resource or key policy, say. They apply whatever the rate.
//!
//! One request per connection (`Connection: close` both ways): simple, and what the SDK copes
//! with. Loopback only; never point it at real AWS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Faults {
    /// Share of requests answered with a fault instead of the emulator's answer (0.0 to 1.0).
    pub rate: f64,
    /// How long a slow response waits before it is forwarded.
    pub slow_delay: Duration,
    /// How long every request waits before it is forwarded, whatever the rate says.
    pub fixed_delay: Duration,
}

/// What was done, for the test's report.
#[derive(Debug, Default)]
pub struct Counts {
    /// When each request was forwarded, with its `X-Amz-Target` (e.g.
    /// `secretsmanager.PutSecretValue`): what the emulator saw, and when.
    pub log: std::sync::Mutex<Vec<(std::time::Instant, String)>>,
    pub forwarded: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub slowed: AtomicU64,
    pub lost: AtomicU64,
}

impl Counts {
    pub fn injected(&self) -> u64 {
        [
            &self.throttled,
            &self.server_errors,
            &self.slowed,
            &self.lost,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    pub refusals: Arc<Refusals>,
}

/// One standing refusal.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The `X-Amz-Target`, e.g. `secretsmanager.PutSecretValue`.
    pub target: String,
    /// A string the request body must contain (a secret's ARN or name); empty: any body.
    pub body_contains: String,
    /// The AWS error code, e.g. `AccessDeniedException` or `EncryptionFailure`.
    pub code: String,
    pub message: String,
}

/// Refusals in force, changed while the proxy runs.
#[derive(Debug, Default)]
pub struct Refusals {
    rules: std::sync::Mutex<Vec<Refusal>>,
    /// How many requests were refused so.
    pub refused: AtomicU64,
}

impl Refusals {
    /// From now on, answers `code` (HTTP 400) to `target` requests whose body contains
    /// `body_contains`.
    pub fn refuse(&self, target: &str, body_contains: &str, code: &str, message: &str) {
        self.rules.lock().expect("rules lock").push(Refusal {
            target: target.to_owned(),
            body_contains: body_contains.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
        });
    }

    /// Lifts every refusal.
    pub fn lift(&self) {
        self.rules.lock().expect("rules lock").clear();
    }

    fn matching(&self, target: &str, body: &[u8]) -> Option<Refusal> {
        let body = String::from_utf8_lossy(body);
        self.rules
            .lock()
            .expect("rules lock")
            .iter()
            .find(|r| r.target == target && body.contains(&r.body_contains))
            .cloned()
    }
}

enum Fault {
    Throttle,
    ServerError,
    Slow,
    LostResponse,
}

fn pick(rate: f64) -> Option<Fault> {
    if rand::random::<f64>() >= rate {
        return None;
    }
    Some(match rand::random_range(0..4) {
        0 => Fault::Throttle,
        1 => Fault::ServerError,
        2 => Fault::Slow,
        _ => Fault::LostResponse,
    })
}

/// Starts the proxy on the current runtime.
pub async fn start(listen: SocketAddr, upstream: SocketAddr, faults: Faults) -> Result<FaultProxy> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(Counts::default());
    let refusals = Arc::new(Refusals::default());
    let (c, r) = (counts.clone(), refusals.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (faults, counts, refusals) = (faults.clone(), c.clone(), r.clone());
            tokio::spawn(async move {
                let _ = handle(client, upstream, &faults, &counts, &refusals).await;
            });
        }
    });
    Ok(FaultProxy {
        addr,
        counts,
        refusals,
    })
}

/// The request's operation, and where its body starts. JSON protocols name it in the
/// `X-Amz-Target` header (`secretsmanager.PutSecretValue`); the query protocol (RDS, SQS's
/// older form) in the body's `Action=`, with the service in the signature's credential scope:
/// that gives `rds.DescribeBlueGreenDeployments`.
fn target_and_body(request: &[u8]) -> (String, usize) {
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(request.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&request[..end]);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    if let Some(target) = header("x-amz-target") {
        return (target, end);
    }
    let body = String::from_utf8_lossy(&request[end..]);
    let action = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .map(str::to_owned);
    // Credential=KEY/DATE/REGION/SERVICE/aws4_request
    let service = header("authorization").and_then(|a| {
        let scope = a.split("Credential=").nth(1)?;
        scope.split('/').nth(3).map(str::to_owned)
    });
    match (service, action) {
        (Some(service), Some(action)) => (format!("{service}.{action}"), end),
        _ => (String::new(), end),
    }
}

/// An error as the query protocol answers it (XML), for requests that have no `X-Amz-Target`.
fn query_error_response(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nx-amzn-RequestId: fault-proxy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one request: head (with `Connection: close` forced) and body.
async fn read_request(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a full request head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            bail!("request head too large");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = vec![0u8; head_end + length - buf.len()];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed in the request body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut out = String::new();
    for line in head.trim_end().lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut request = out.into_bytes();
    request.extend_from_slice(&buf[head_end..]);
    Ok(request)
}

fn error_response(status: &str, code: &str, message: &str) -> Vec<u8> {
    // AWS JSON protocols name the error in both the header and the body's __type.
    let body = format!("{{\"__type\":\"{code}\",\"message\":\"{message}\"}}");
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {code}\r\nx-amzn-RequestId: fault-proxy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    faults: &Faults,
    counts: &Counts,
    refusals: &Refusals,
) -> Result<()> {
    let request = read_request(&mut client).await?;
    let (target, body_at) = target_and_body(&request);
    if let Some(r) = refusals.matching(&target, &request[body_at..]) {
        refusals.refused.fetch_add(1, Ordering::Relaxed);
        let json = String::from_utf8_lossy(&request[..body_at])
            .to_ascii_lowercase()
            .contains("x-amz-target");
        let answer = if json {
            error_response("400 Bad Request", &r.code, &r.message)
        } else {
            query_error_response("400 Bad Request", &r.code, &r.message)
        };
        client.write_all(&answer).await?;
        return Ok(());
    }
    let fault = pick(faults.rate);
    match fault {
        Some(Fault::Throttle) => {
            counts.throttled.fetch_add(1, Ordering::Relaxed);
            client
                .write_all(&error_response(
                    "400 Bad Request",
                    "ThrottlingException",
                    "Rate exceeded (injected)",
                ))
                .await?;
            return Ok(());
        }
        Some(Fault::ServerError) => {
            counts.server_errors.fetch_add(1, Ordering::Relaxed);
            client
                .write_all(&error_response(
                    "500 Internal Server Error",
                    "InternalServiceError",
                    "injected",
                ))
                .await?;
            return Ok(());
        }
        Some(Fault::Slow) => {
            counts.slowed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(faults.slow_delay).await;
        }
        Some(Fault::LostResponse) | None => {}
    }
    if !faults.fixed_delay.is_zero() {
        tokio::time::sleep(faults.fixed_delay).await;
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    counts
        .log
        .lock()
        .expect("log lock")
        .push((std::time::Instant::now(), target));
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&request).await?;
    // Connection: close, so the response ends when the emulator closes.
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    if let Some(Fault::LostResponse) = fault {
        counts.lost.fetch_add(1, Ordering::Relaxed);
        client
            .write_all(&error_response(
                "500 Internal Server Error",
                "InternalServiceError",
                "answer lost (injected)",
            ))
            .await?;
        return Ok(());
    }
    client.write_all(&response).await?;
    Ok(())
}
