//! `rds-rotator lambda`: the rotation as a Secrets Manager rotation function, on the same engine.
//!
//! Secrets Manager calls the function once per step, with the secret's ARN and the version it
//! labelled AWSPENDING for the rotation (ClientRequestToken). That version id is the rotation id,
//! so the rotation runs under the same lease and step record as a queue request, and either one
//! resumes what the other began. Each call runs the engine's steps up to its own
//! (`rotation::Invocation`), and succeeds when it finds them done:
//!
//! | Secrets Manager's step | the engine's steps                     |
//! |------------------------|----------------------------------------|
//! | createSecret           | create_pending: begins rotation `token` |
//! | setSecret              | set_password, update_proxy             |
//! | testSecret             | test; with no rotation `token` begun, the configuration test: `check` (RotateImmediately=false calls only this step) |
//! | finishSecret           | finish                                 |
//!
//! The function's own ARN (from the invocation, or ROTATOR_LAMBDA_ARN) is added to the rotation
//! functions that are this tool, so the secret's rotation being attached to it is not refused.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::adopt::ports::ProxyDirectory;
use crate::db::tls::TlsMode;
use crate::rotation::clock::{Clock, SystemClock};
use crate::rotation::record::Step;
use crate::rotation::{Invocation, LeaseWait, Outcome, Request, Rotator, Shutdown};

/// Time kept before Lambda's deadline to write down where the rotation stopped.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// What Secrets Manager sends to a rotation function.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationEvent {
    pub step: String,
    /// The secret's ARN.
    pub secret_id: String,
    /// The version Secrets Manager made AWSPENDING for this rotation.
    pub client_request_token: String,
    /// Only needed for a function in another account than the secret (PutSecretValue's
    /// RotationToken), which this tool does not support.
    #[serde(default)]
    pub rotation_token: Option<String>,
}

/// Secrets Manager's four steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmStep {
    CreateSecret,
    SetSecret,
    TestSecret,
    FinishSecret,
}

impl SmStep {
    pub fn parse(s: &str) -> Option<Self> {
        // The events say createSecret; some of AWS's documentation spells it create_secret.
        Some(match s {
            "createSecret" | "create_secret" => Self::CreateSecret,
            "setSecret" | "set_secret" => Self::SetSecret,
            "testSecret" | "test_secret" => Self::TestSecret,
            "finishSecret" | "finish_secret" => Self::FinishSecret,
            _ => return None,
        })
    }

    /// The engine's last step for this call.
    pub fn through(self) -> Step {
        match self {
            Self::CreateSecret => Step::CreatePending,
            Self::SetSecret => Step::UpdateProxy,
            Self::TestSecret => Step::Test,
            Self::FinishSecret => Step::Finish,
        }
    }
}

/// A step that did not complete. Secrets Manager marks the rotation failed and tries it again
/// later with the same token; `retryable` only says whether a person is needed first.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepFailed {
    pub message: String,
    pub retryable: bool,
}

impl StepFailed {
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<StepFailed> for Diagnostic {
    fn from(e: StepFailed) -> Self {
        Diagnostic {
            error_type: if e.retryable {
                "RotationIncomplete".into()
            } else {
                "RotationFailed".into()
            },
            error_message: e.message,
        }
    }
}

/// The rotation function: the engine, and what the configuration test needs.
pub struct Function {
    pub rotator: Rotator,
    pub proxies: Arc<dyn ProxyDirectory>,
    pub tls: TlsMode,
    pub min_interval: Duration,
    /// ROTATOR_LAMBDA_ARN, when set; otherwise the ARN each invocation names.
    pub own_arn: Option<String>,
    pub lease_wait: Duration,
}

impl Function {
    /// One call of Secrets Manager's. `deadline_ms`: when Lambda ends it (ms since the epoch).
    pub async fn handle(
        &self,
        event: &RotationEvent,
        invoked_arn: &str,
        deadline_ms: u64,
    ) -> Result<Value, StepFailed> {
        let Some(step) = SmStep::parse(&event.step) else {
            return Err(StepFailed::fatal(format!(
                "unknown rotation step {:?} (expected createSecret, setSecret, testSecret or finishSecret)",
                event.step
            )));
        };
        let (secret, token) = (&event.secret_id, &event.client_request_token);
        let mut rotator = self.rotator.clone();
        // Both: the ARN Secrets Manager invoked is this function whatever the setting says.
        for own in [self.own_arn.as_deref(), Some(invoked_arn)]
            .into_iter()
            .flatten()
        {
            if !own.is_empty() {
                rotator.settings.rotation_functions.push(own.to_owned());
            }
        }
        // Lambda kills the process at its deadline: stop at the next persisted step before it,
        // so the record says where, the lease is released, and Secrets Manager's retry resumes.
        rotator.shutdown = Shutdown::default();
        let stop = rotator.shutdown.clone();
        let left = Duration::from_millis(deadline_ms.saturating_sub(SystemClock.now_ms()));
        let deadline = tokio::spawn(async move {
            tokio::time::sleep(left.saturating_sub(DEADLINE_MARGIN)).await;
            stop.stop_now();
        });
        let request = Request {
            min_interval: Some(self.min_interval),
            reason: Some("Secrets Manager rotation".into()),
            invocation: Some(Invocation {
                token: token.clone(),
                through: step.through(),
            }),
            hard_stop: Some(left.saturating_sub(DEADLINE_MARGIN / 2)),
            ..Request::default()
        };
        // The wait for the lease ends when the steps must; and whatever still runs half a margin
        // before Lambda's deadline (outside a step) is dropped there, so the function always
        // answers (retryable). Its lease is left to expire then, as for any stop inside a step.
        let wait = LeaseWait::UpTo(self.lease_wait.min(left.saturating_sub(DEADLINE_MARGIN)));
        let result = rotator.rotate(secret, &request, wait).await;
        deadline.abort();
        let answer = |done: &str| json!({"step": event.step, "secret_id": secret, "rotation_id": token, "done": done});
        match result {
            Ok(Outcome::Rotated(done)) => {
                info!(%secret, rotation_id = %token, step = %event.step, from = %done.previous_user, to = %done.current_user, "rotated");
                Ok(answer("rotated"))
            }
            Ok(Outcome::Advanced { next, .. }) => {
                info!(%secret, rotation_id = %token, step = %event.step, %next, "step complete");
                Ok(answer("step"))
            }
            Ok(Outcome::Skipped { why, .. }) => {
                info!(%secret, rotation_id = %token, step = %event.step, %why, "nothing to do");
                Ok(answer("already"))
            }
            Ok(Outcome::NotBegun { .. }) if step == SmStep::TestSecret => {
                // Logins and AWS calls one after another: bounded by the deadline too.
                let remaining =
                    Duration::from_millis(deadline_ms.saturating_sub(SystemClock.now_ms()))
                        .saturating_sub(DEADLINE_MARGIN / 2);
                let tested = self.test_configuration(&rotator, secret, token);
                match tokio::time::timeout(remaining, tested).await {
                    Ok(tested) => tested?,
                    Err(_) => {
                        return Err(StepFailed {
                            message: format!(
                                "{}: the configuration test did not end before Lambda's deadline",
                                event.step
                            ),
                            retryable: true,
                        })
                    }
                }
                Ok(answer("configuration tested"))
            }
            Ok(Outcome::NotBegun { .. }) => Err(StepFailed::fatal(format!(
                "{}: no rotation {token} of {secret} has begun; createSecret begins it",
                event.step
            ))),
            Err(e) => {
                warn!(%secret, rotation_id = %token, step = %event.step, error = %e, retryable = e.is_retryable(), "step failed");
                Err(StepFailed {
                    message: format!("{}: {e}", event.step),
                    retryable: e.is_retryable(),
                })
            }
        }
    }

    /// testSecret for a rotation that never began: Secrets Manager testing the configuration
    /// (RotateImmediately=false). It changes nothing; it fails where `check` does.
    async fn test_configuration(
        &self,
        rotator: &Rotator,
        secret: &str,
        token: &str,
    ) -> Result<(), StepFailed> {
        let report = crate::check::check(
            rotator,
            self.proxies.as_ref(),
            None,
            self.tls,
            self.min_interval,
            secret,
        )
        .await;
        // The test's own AWSPENDING is Secrets Manager's, whether or not the secret already
        // names this function.
        let failures: Vec<String> = report
            .failures()
            .into_iter()
            .filter(|f| !(f.starts_with("pending version:") && f.contains(token)))
            .collect();
        if failures.is_empty() {
            info!(%secret, "configuration test passed");
            return Ok(());
        }
        Err(StepFailed::fatal(format!(
            "testSecret (configuration test): {secret} is not ready to rotate: {}",
            failures.join("; ")
        )))
    }
}

/// Variables the Lambda runtime sets, without which the runtime client cannot start.
const RUNTIME_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// Outside Lambda the runtime client would panic: say what is missing instead.
pub fn check_runtime_env() -> Result<(), String> {
    let missing: Vec<&str> = RUNTIME_ENV
        .into_iter()
        .filter(|v| std::env::var_os(v).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "`rds-rotator lambda` runs inside AWS Lambda, which sets {}; not set: {}",
        RUNTIME_ENV.join(", "),
        missing.join(", ")
    ))
}

/// Serves invocations until the runtime stops the process.
pub async fn serve(function: Function) -> Result<(), String> {
    check_runtime_env()?;
    let function = Arc::new(function);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<RotationEvent>| {
        let function = function.clone();
        async move {
            let context = &event.context;
            function
                .handle(
                    &event.payload,
                    &context.invoked_function_arn,
                    context.deadline,
                )
                .await
        }
    }))
    .await
    .map_err(|e| format!("the Lambda runtime stopped: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_managers_event_is_read_with_or_without_a_rotation_token() {
        let e: RotationEvent = serde_json::from_str(
            r#"{"Step":"createSecret","SecretId":"arn:aws:secretsmanager:eu-west-1:1:secret:a","ClientRequestToken":"t","RotationToken":"r"}"#,
        )
        .unwrap();
        assert_eq!(e.step, "createSecret");
        assert_eq!(e.client_request_token, "t");
        let e: RotationEvent = serde_json::from_str(
            r#"{"Step":"testSecret","SecretId":"s","ClientRequestToken":"t"}"#,
        )
        .unwrap();
        assert!(e.rotation_token.is_none());
    }

    #[test]
    fn each_step_runs_the_engine_up_to_its_own() {
        assert_eq!(
            SmStep::parse("createSecret").unwrap().through(),
            Step::CreatePending
        );
        assert_eq!(
            SmStep::parse("setSecret").unwrap().through(),
            Step::UpdateProxy
        );
        assert_eq!(SmStep::parse("testSecret").unwrap().through(), Step::Test);
        assert_eq!(
            SmStep::parse("finishSecret").unwrap().through(),
            Step::Finish
        );
        assert_eq!(SmStep::parse("finish_secret"), Some(SmStep::FinishSecret));
        assert_eq!(SmStep::parse("CreateSecret"), None);
    }

    #[test]
    fn a_failed_step_tells_lambda_whether_a_person_is_needed() {
        let d: Diagnostic = StepFailed::fatal("no").into();
        assert_eq!(
            (d.error_type.as_str(), d.error_message.as_str()),
            ("RotationFailed", "no")
        );
        let d: Diagnostic = StepFailed {
            message: "later".into(),
            retryable: true,
        }
        .into();
        assert_eq!(d.error_type, "RotationIncomplete");
    }
}
