//! A local AWS Lambda for `rds-rotator lambda`, and Secrets Manager's side of a rotation.
//!
//! The stack runs no Lambda (moto would run functions in Docker). Here, as in Lambda:
//! - each `Function` is one execution environment: the real binary, started with the variables
//!   Lambda sets, polling a Runtime API of its own (`AWS_LAMBDA_RUNTIME_API`) that this file
//!   serves over HTTP: `GET /2018-06-01/runtime/invocation/next` hands it one event with the
//!   `Lambda-Runtime-*` headers, `POST .../{id}/response` or `.../{id}/error` ends it;
//! - an invocation whose process exits fails (`Runtime.ExitError`), and the next invocation
//!   gets a new environment (`SecretsManager::rotate` starts one);
//! - `SecretsManager` plays the service: `RotateSecret` on the stack (the shim does what AWS does
//!   before it calls the function: attach it, label a version without a value AWSPENDING), then
//!   the four steps, one synchronous invocation each, with the secret's ARN and that version's
//!   id; when a step fails, the whole rotation again with the same token, as Secrets Manager
//!   retries it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_secretsmanager::Client as Sm;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

pub const STEPS: [&str; 4] = ["createSecret", "setSecret", "testSecret", "finishSecret"];

/// How an invocation ended, as Lambda reports it to the caller.
pub type Answer = Result<Value, Failure>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error_type: String,
    pub message: String,
}

struct Queued {
    event: Value,
    /// Lambda's deadline for the invocation, from when the function takes it.
    timeout: Duration,
    reply: oneshot::Sender<Answer>,
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>;

/// The Runtime API of one execution environment.
struct RuntimeApi {
    addr: SocketAddr,
    queue: mpsc::UnboundedSender<Queued>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    async fn start(function_arn: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (queue, rx) = mpsc::unbounded_channel::<Queued>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let waiting: Waiting = Arc::default();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rx, waiting, arn) = (rx.clone(), waiting.clone(), function_arn.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        serve(req, rx.clone(), waiting.clone(), arn.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            queue,
            server,
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn serve(
    req: Request<Incoming>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>>,
    waiting: Waiting,
    function_arn: String,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let prefix = "/2018-06-01/runtime/";
    let Some(rest) = path.strip_prefix(prefix) else {
        return Ok(respond(StatusCode::NOT_FOUND, "not a Runtime API path"));
    };
    if rest == "invocation/next" {
        let Some(next) = rx.lock().await.recv().await else {
            return Ok(respond(StatusCode::INTERNAL_SERVER_ERROR, "shut down"));
        };
        let id = uuid::Uuid::new_v4().to_string();
        waiting.lock().unwrap().insert(id.clone(), next.reply);
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + next.timeout.as_millis();
        let mut r = respond(StatusCode::OK, next.event.to_string());
        let h = r.headers_mut();
        h.insert("Lambda-Runtime-Aws-Request-Id", id.parse().unwrap());
        h.insert(
            "Lambda-Runtime-Deadline-Ms",
            deadline.to_string().parse().unwrap(),
        );
        h.insert(
            "Lambda-Runtime-Invoked-Function-Arn",
            function_arn.parse().unwrap(),
        );
        h.insert(
            "Lambda-Runtime-Trace-Id",
            "Root=1-00000000-000000000000000000000000;Sampled=0"
                .parse()
                .unwrap(),
        );
        return Ok(r);
    }
    if rest == "init/error" {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        eprintln!(
            "local lambda: init error: {}",
            String::from_utf8_lossy(&body)
        );
        return Ok(respond(StatusCode::ACCEPTED, "{}"));
    }
    let Some((id, what)) = rest
        .strip_prefix("invocation/")
        .and_then(|r| r.split_once('/'))
    else {
        return Ok(respond(StatusCode::NOT_FOUND, "unknown path"));
    };
    let (id, what) = (id.to_owned(), what.to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let Some(reply) = waiting.lock().unwrap().remove(&id) else {
        return Ok(respond(StatusCode::BAD_REQUEST, "unknown request id"));
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = match what.as_str() {
        "response" => Ok(parsed),
        "error" => Err(Failure {
            error_type: parsed["errorType"].as_str().unwrap_or("").to_owned(),
            message: parsed["errorMessage"].as_str().unwrap_or("").to_owned(),
        }),
        _ => return Ok(respond(StatusCode::NOT_FOUND, "unknown path")),
    };
    let _ = reply.send(answer);
    Ok(respond(StatusCode::ACCEPTED, "{}"))
}

/// One execution environment of the function: the binary and its Runtime API.
pub struct Function {
    api: RuntimeApi,
    child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Function {
    /// `rds-rotator lambda` as Lambda starts it, with `cmd`'s settings (the pair's table, the
    /// stack) and the variables Lambda sets.
    pub async fn start(mut cmd: Command, function_arn: &str) -> Self {
        let api = RuntimeApi::start(function_arn.to_owned()).await;
        let name = function_arn.rsplit(':').next().unwrap();
        cmd.env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("rds-rotator lambda starts");
        let log = Arc::new(Mutex::new(String::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let sink = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        Self { api, child, log }
    }

    /// A synchronous invocation (RequestResponse) with a 300 s timeout. The process exiting
    /// fails it.
    pub async fn invoke(&mut self, event: Value) -> Answer {
        self.invoke_within(event, Duration::from_secs(300)).await
    }

    /// An invocation whose deadline (`Lambda-Runtime-Deadline-Ms`) is `timeout` away.
    pub async fn invoke_within(&mut self, event: Value, timeout: Duration) -> Answer {
        let (reply, mut answer) = oneshot::channel();
        self.api
            .queue
            .send(Queued {
                event,
                timeout,
                reply,
            })
            .expect("the Runtime API runs");
        let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            tokio::select! {
                got = &mut answer => return got.expect("the Runtime API answers"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(Failure {
                    error_type: "Runtime.ExitError".into(),
                    message: format!("the function's process exited ({status})"),
                });
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "the invocation did not end within 120 s; log:\n{}",
                self.log()
            );
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Secrets Manager's side of a rotation with a rotation function.
pub struct SecretsManager {
    pub sm: Sm,
    pub secret_arn: String,
    pub function_arn: String,
}

/// What one rotation took.
#[derive(Debug, Default)]
pub struct Rotated {
    pub token: String,
    /// Attempts of the whole rotation (1: no step failed).
    pub attempts: u32,
    /// Every failed step: (attempt, step, failure).
    pub failures: Vec<(u32, String, Failure)>,
}

impl SecretsManager {
    pub fn event(&self, step: &str, token: &str) -> Value {
        json!({"Step": step, "SecretId": self.secret_arn, "ClientRequestToken": token})
    }

    /// RotateSecret with the function: returns the version AWSPENDING is on for the rotation.
    /// While a rotation is unfinished AWS refuses ("That rotation will be reattempted") and
    /// reattempts it: then the token is the version AWSPENDING is on.
    pub async fn start_rotation(&self, immediately: bool) -> String {
        let asked = self
            .sm
            .rotate_secret()
            .secret_id(&self.secret_arn)
            .rotation_lambda_arn(&self.function_arn)
            .rotation_rules(
                aws_sdk_secretsmanager::types::RotationRulesType::builder()
                    .automatically_after_days(30)
                    .build(),
            )
            .rotate_immediately(immediately)
            .send()
            .await;
        match asked {
            Ok(out) => out.version_id().unwrap().to_owned(),
            Err(e) if format!("{e:?}").contains("previous rotation isn't complete") => {
                let meta = self
                    .sm
                    .describe_secret()
                    .secret_id(&self.secret_arn)
                    .send()
                    .await
                    .unwrap();
                meta.version_ids_to_stages()
                    .unwrap()
                    .iter()
                    .find(|(_, stages)| stages.iter().any(|s| s == "AWSPENDING"))
                    .map(|(v, _)| v.clone())
                    .expect("an unfinished rotation has AWSPENDING")
            }
            Err(e) => panic!("RotateSecret failed: {e:?}"),
        }
    }

    /// The four steps with `token`, each in the live environment (a new one after a crash);
    /// when one fails, the whole rotation again, up to `attempts` times.
    pub async fn run_steps(
        &self,
        token: &str,
        attempts: u32,
        environment: &(dyn Fn() -> Command + Sync),
        function: &mut Option<Function>,
    ) -> Result<Rotated, Rotated> {
        let mut done = Rotated {
            token: token.to_owned(),
            ..Rotated::default()
        };
        for attempt in 1..=attempts {
            done.attempts = attempt;
            let mut failed = false;
            for step in STEPS {
                if !function.as_mut().is_some_and(Function::alive) {
                    *function = Some(Function::start(environment(), &self.function_arn).await);
                }
                let answer = function
                    .as_mut()
                    .unwrap()
                    .invoke(self.event(step, token))
                    .await;
                if let Err(f) = answer {
                    done.failures.push((attempt, step.to_owned(), f));
                    failed = true;
                    break;
                }
            }
            if !failed {
                return Ok(done);
            }
        }
        Err(done)
    }

    /// RotateImmediately=false: Secrets Manager only calls testSecret, then removes the
    /// AWSPENDING version it made for the test.
    pub async fn test_configuration(&self, function: &mut Function) -> Answer {
        let token = self.start_rotation(false).await;
        let answer = function.invoke(self.event("testSecret", &token)).await;
        self.sm
            .update_secret_version_stage()
            .secret_id(&self.secret_arn)
            .version_stage("AWSPENDING")
            .remove_from_version_id(&token)
            .send()
            .await
            .expect("the test's AWSPENDING is removed");
        answer
    }
}
