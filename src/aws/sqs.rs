//! `Queue` over Amazon SQS. Fatal messages are sent to the dead-letter queue named by the queue's
//! redrive policy (or `--dlq-url`), with the reason as a message attribute, and then deleted.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use serde_json::json;

use super::failure;
use crate::worker::{Message, Queue, QueueError};

/// SQS caps visibility timeouts at 12 hours.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// The message attribute that counts a request's deferrals (see `worker::Message::deferrals`).
const DEFERRALS: &str = "rotator_deferrals";

/// SQS's longest DelaySeconds.
const MAX_DELAY: Duration = Duration::from_secs(900);

/// How long past its wait a long poll may take to answer before it counts as silent.
const LONG_POLL_SLACK: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    dlq_url: Option<String>,
    /// The redrive policy's maxReceiveCount: the receive after which SQS moves a message to the
    /// dead-letter queue by itself.
    max_receives: Option<u32>,
}

fn map_err<E>(
    err: aws_sdk_sqs::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = failure(&err);
    if f.transient {
        QueueError::Unavailable(f.message)
    } else {
        QueueError::Refused(f.message)
    }
}

fn text(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

impl SqsQueue {
    /// A queue for sending only (`enqueue`).
    pub fn sender(config: &aws_config::SdkConfig, url: &str) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_sqs::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
            url: url.to_owned(),
            dlq_url: None,
            max_receives: None,
        }
    }

    /// A queue for the worker: finds its dead-letter queue from the redrive policy unless one is
    /// given. A worker without a dead-letter queue would have to drop or endlessly retry bad
    /// messages, so that is an error.
    pub async fn connect(
        config: &aws_config::SdkConfig,
        url: &str,
        dlq_url: Option<&str>,
    ) -> Result<Self, QueueError> {
        let client = Client::from_conf(
            aws_sdk_sqs::config::Builder::from(config)
                .interceptor(super::CountCalls)
                .build(),
        );
        let attrs = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(map_err);
        let attrs = match (attrs, dlq_url) {
            (Ok(a), _) => Some(a),
            // Given the dead-letter queue, the worker runs without the policy's limit: a
            // transient failure then reaches it without a reason.
            (Err(e), Some(_)) => {
                tracing::warn!(queue = %url, error = %e, "cannot read the queue's redrive policy; its maxReceiveCount is unknown");
                None
            }
            (Err(e), None) => return Err(e),
        };
        let policy = attrs
            .as_ref()
            .and_then(|a| a.attributes())
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok());
        // A number in AWS's answers, a string in what Terraform and moto write.
        let max_receives = policy.as_ref().and_then(|p| match &p["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        });
        let dlq_url = match dlq_url {
            Some(u) => u.to_owned(),
            None => {
                let policy = policy.ok_or_else(|| {
                    QueueError::Misconfigured(format!(
                        "queue {url} has no readable redrive policy: give it a dead-letter queue, or pass --dlq-url"
                    ))
                })?;
                let arn = policy["deadLetterTargetArn"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        QueueError::Misconfigured(format!(
                            "queue {url} has an unreadable redrive policy"
                        ))
                    })?;
                // arn:aws:sqs:REGION:ACCOUNT:NAME
                let mut parts = arn.rsplit(':');
                let (name, account) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                client
                    .get_queue_url()
                    .queue_name(name)
                    .queue_owner_aws_account_id(account)
                    .send()
                    .await
                    .map_err(map_err)?
                    .queue_url
                    .ok_or_else(|| {
                        QueueError::Misconfigured(format!("dead-letter queue {arn} has no URL"))
                    })?
            }
        };
        Ok(Self {
            client,
            url: url.to_owned(),
            dlq_url: Some(dlq_url),
            max_receives,
        })
    }

    /// Creates `name` and `name-dlq` with a redrive policy (local stack and tests; production
    /// uses the Terraform module). Returns (queue URL, DLQ URL).
    pub async fn create_with_dlq(
        config: &aws_config::SdkConfig,
        name: &str,
        max_receive_count: u32,
    ) -> Result<(String, String), QueueError> {
        let client = Client::from_conf(
            aws_sdk_sqs::config::Builder::from(config)
                .interceptor(super::CountCalls)
                .build(),
        );
        let dlq_url = client
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .attributes(QueueAttributeName::SqsManagedSseEnabled, "true")
            .send()
            .await
            .map_err(map_err)?
            .queue_url
            .unwrap_or_default();
        let dlq_arn = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(map_err)?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_default();
        let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count.to_string()});
        let url = client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(QueueAttributeName::VisibilityTimeout, "60")
            .attributes(QueueAttributeName::SqsManagedSseEnabled, "true")
            .send()
            .await
            .map_err(map_err)?
            .queue_url
            .unwrap_or_default();
        Ok((url, dlq_url))
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(visibility.min(MAX_VISIBILITY).as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(DEFERRALS)
            // A long poll waits up to 20 s for its answer: longer than the usual per-call bound.
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_attempt_timeout(
                            wait.min(Duration::from_secs(20)) + LONG_POLL_SLACK,
                        )
                        .operation_timeout(
                            (wait.min(Duration::from_secs(20)) + LONG_POLL_SLACK) * 3,
                        )
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(map_err)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Message {
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                deferrals: m
                    .message_attributes()
                    .and_then(|a| a.get(DEFERRALS))
                    .and_then(|v| v.string_value())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                id: m.message_id.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
            })
            .collect())
    }

    async fn delete(&self, m: &Message) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&m.receipt)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn hide_for(&self, m: &Message, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&m.receipt)
            .visibility_timeout(delay.min(MAX_VISIBILITY).as_secs() as i32)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn send(
        &self,
        body: &str,
        delay: Duration,
        deferrals: u32,
    ) -> Result<String, QueueError> {
        let mut send = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay.min(MAX_DELAY).as_secs() as i32);
        if deferrals > 0 {
            let count = MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(deferrals.to_string())
                .build()
                .map_err(|e| QueueError::Refused(e.to_string()))?;
            send = send.message_attributes(DEFERRALS, count);
        }
        let out = send.send().await.map_err(map_err)?;
        Ok(out.message_id.unwrap_or_default())
    }

    fn max_receives(&self) -> Option<u32> {
        self.max_receives
    }

    async fn dead_letter(&self, m: &Message, reason: &str) -> Result<(), QueueError> {
        let dlq = self.dlq_url.as_deref().ok_or_else(|| {
            QueueError::Misconfigured("no dead-letter queue is configured".into())
        })?;
        let reason: String = reason.chars().take(1000).collect();
        self.client
            .send_message()
            .queue_url(dlq)
            .message_body(&m.body)
            .message_attributes("rotator_reason", text(&reason))
            .message_attributes("rotator_source_message_id", text(&m.id))
            .message_attributes("rotator_receive_count", text(&m.receive_count.to_string()))
            .send()
            .await
            .map_err(map_err)?;
        self.delete(m).await
    }
}
