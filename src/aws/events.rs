//! Result events on an EventBridge bus (`ROTATOR_EVENT_BUS`): `RotationSucceeded`,
//! `RotationFailed` for failures that need a person, and `RotationAborted` for an operator's
//! `abort`. Transient failures are not events: the
//! rotation resumes by itself, and the `RotationsIncomplete` metric counts them.
//!
//! The detail names users, versions and the reason; never a password.

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;
use serde_json::json;
use tracing::warn;

use super::failure;
use crate::rotation::ports::{ReportOutcome, Reporter, RotationReport};

/// The `source` of every event: rules match on it.
pub const SOURCE: &str = "rds-rotator";

pub struct EventBus {
    client: Client,
    bus: String,
}

impl EventBus {
    pub fn new(config: &aws_config::SdkConfig, bus: impl Into<String>) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
            bus: bus.into(),
        }
    }
}

/// The event for a report, if it warrants one: (detail-type, detail).
pub fn event(r: &RotationReport) -> Option<(&'static str, serde_json::Value)> {
    let mut detail = json!({
        "secret_arn": r.secret,
        "rotation_id": r.rotation_id,
        "from_user": r.from_user,
        "to_user": r.to_user,
        "resumed": r.resumed,
        "duration_ms": r.duration.as_millis() as u64,
    });
    // The idle user's sessions, as the in-use guard found them: on a rotation that waits for
    // them (a RotationFailed that is retryable) or went on (`warn`).
    if let Some(f) = &r.in_use {
        detail["in_use"] = json!({
            "user": f.user,
            "sessions": f.sessions(),
            "window_s": f.window.as_secs(),
            "from": f.groups,
        });
    }
    match &r.outcome {
        ReportOutcome::Succeeded => Some(("RotationSucceeded", detail)),
        ReportOutcome::Failed { reason, retryable } if !retryable || r.waits_for_sessions => {
            detail["reason"] = json!(reason);
            detail["retryable"] = json!(retryable);
            detail["step"] = json!(r.last_step.map(|s| s.as_str()));
            Some(("RotationFailed", detail))
        }
        ReportOutcome::Aborted { reason } => {
            detail["reason"] = json!(reason);
            detail["step"] = json!(r.last_step.map(|s| s.as_str()));
            Some(("RotationAborted", detail))
        }
        ReportOutcome::Failed { .. }
        | ReportOutcome::Skipped { .. }
        | ReportOutcome::Advanced { .. } => None,
    }
}

#[async_trait]
impl Reporter for EventBus {
    async fn report(&self, report: &RotationReport) {
        let Some((detail_type, detail)) = event(report) else {
            return;
        };
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(detail_type)
            .resources(&report.secret)
            .detail(detail.to_string())
            .build();
        match self.client.put_events().entries(entry).send().await {
            Ok(out) if out.failed_entry_count() == 0 => {}
            Ok(out) => {
                let why = out
                    .entries()
                    .iter()
                    .filter_map(|e| e.error_message())
                    .collect::<Vec<_>>()
                    .join("; ");
                warn!(bus = %self.bus, event = detail_type, error = %why, "the event bus refused the event");
            }
            Err(e) => {
                warn!(bus = %self.bus, event = detail_type, error = %failure(&e).message, "could not publish the event")
            }
        }
    }
}
