//! AWS adapters. `SdkError` never leaves this module: each adapter maps it to its port's error.
//! The endpoint is configuration (`AWS_ENDPOINT_URL`, read by the SDK), never code.

pub mod dynamo;
pub mod events;
pub mod rds;
pub mod secrets;
pub mod sqs;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::rotation::RetryPolicy;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// The standard chain: `AWS_REGION`, `AWS_ENDPOINT_URL`, credentials from env, profile, SSO,
/// ECS task role or IMDS; SDK retries as the retry policy says; and a wall-clock bound on every
/// call. The SDK's own defaults bound only the TCP connect: an endpoint that accepts and never
/// answers would hold a call, and a rotation, forever.
pub async fn load_config(retry: &RetryPolicy) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(retry.aws_max_attempts)
                .with_initial_backoff(retry.aws_initial_backoff),
        )
        .timeout_config(timeouts(retry))
        .load()
        .await
}

/// `aws_timeout` for a whole call, a third of it for each attempt (so the SDK retries a silent
/// one), and the connect bound within that.
pub fn timeouts(retry: &RetryPolicy) -> TimeoutConfig {
    let call = retry.aws_timeout;
    let attempt = call / 3;
    TimeoutConfig::builder()
        .connect_timeout(attempt.min(std::time::Duration::from_millis(3100)))
        .operation_attempt_timeout(attempt)
        .operation_timeout(call)
        .build()
}

/// Counts each operation once (not each SDK retry) in the running rotation's call tally, as
/// `Service.Operation`.
#[derive(Debug)]
pub(crate) struct CountCalls;

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }

    // Not `read_before_execution`: a client-level interceptor runs that before the operation's
    // configuration (which holds its name) is applied. This one also runs once per operation.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            crate::calls::record(&format!("{}.{}", m.service().replace(' ', ""), m.name()));
        }
        Ok(())
    }
}

/// What an adapter needs to know about a failed call.
pub(crate) struct Failure {
    pub code: Option<String>,
    /// AWS's message (never contains secret values), or the transport error's chain.
    pub message: String,
    /// Throttling, 5xx, timeouts and connection failures: worth another try.
    pub transient: bool,
}

const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "InternalServiceError",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    // The caller's temporary credentials ran out (an ECS task role or SSO session renewing
    // under the worker): the SDK's provider fetches new ones for the next call.
    "ExpiredTokenException",
    "ExpiredToken",
];

pub(crate) fn failure<E>(err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().map(str::to_owned);
            let transient = se.raw().status().is_server_error()
                || code
                    .as_deref()
                    .is_some_and(|c| TRANSIENT_CODES.contains(&c));
            Failure {
                message: format!(
                    "{}: {}",
                    code.as_deref().unwrap_or("error"),
                    se.err().message().unwrap_or("no message")
                ),
                code,
                transient,
            }
        }
        SdkError::ConstructionFailure(_) => Failure {
            code: None,
            message: DisplayErrorContext(err).to_string(),
            transient: false,
        },
        _ => Failure {
            code: None,
            message: DisplayErrorContext(err).to_string(),
            transient: true,
        },
    }
}
