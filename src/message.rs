//! The queue's message formats.
//!
//! - `{"secret_id": "...", "force": false, "ignore_in_use": false, "reason": "...", "request_id": "..."}`: rotate one
//!   secret (only `secret_id` is required). This is also what an EventBridge Scheduler schedule
//!   sends as its raw input.
//! - `{"select": {"tag_key": "...", "tag_value": "..."}}`: fan-out, rotate every secret with that tag.
//! - Either of the above as the `detail` of an EventBridge event: a rule with an SQS target
//!   delivers the whole envelope, and its `id` becomes the request id.
//!
//! Unknown keys are refused, so a typo (`secretId`) is an error rather than a silent no-op.

use serde::{Deserialize, Serialize};
use serde_json::Value;

const MAX_BODY_BYTES: usize = 256 * 1024;
const MAX_ID_CHARS: usize = 2048;
const MAX_TEXT_CHARS: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("message is not JSON")]
    NotJson,
    #[error("message is not a JSON object")]
    NotObject,
    #[error("message is larger than 256 KiB")]
    TooLarge,
    #[error("message does not match any accepted format: {0}")]
    Shape(String),
    #[error("message field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Rotate one secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateMessage {
    pub secret_id: String,
    #[serde(default)]
    pub force: bool,
    /// Change the idle user's password even if it is in use (the in-use guard only warns).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_in_use: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Copies of one request share it, so they rotate once. `enqueue` sets a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagSelector {
    pub tag_key: String,
    pub tag_value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectMessage {
    pub select: TagSelector,
}

/// What a message asks for. `request_id` is the message's own, or its envelope's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Rotate(RotateMessage),
    FanOut {
        select: TagSelector,
        request_id: Option<String>,
    },
}

fn shape(e: serde_json::Error) -> MessageError {
    let mut s = e.to_string();
    s.truncate(300);
    MessageError::Shape(s)
}

fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), MessageError> {
    let invalid = |reason: &str| MessageError::Invalid {
        field,
        reason: reason.into(),
    };
    if required && value.trim().is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.chars().count() > max {
        return Err(invalid(&format!("is longer than {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    Ok(())
}

/// Parses a message body into a job.
pub fn parse(body: &str) -> Result<Job, MessageError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(MessageError::TooLarge);
    }
    let value: Value = serde_json::from_str(body).map_err(|_| MessageError::NotJson)?;
    let Value::Object(mut map) = value else {
        return Err(MessageError::NotObject);
    };
    // An EventBridge envelope: the request is its detail, the event id is the request id.
    let mut envelope_id = None;
    if map.contains_key("detail-type") && map.contains_key("detail") {
        envelope_id = map.get("id").and_then(Value::as_str).map(str::to_owned);
        match map.remove("detail") {
            Some(Value::Object(detail)) => map = detail,
            _ => {
                return Err(MessageError::Shape(
                    "the event's detail is not an object".into(),
                ))
            }
        }
    }
    let inner = Value::Object(map);
    if inner.get("select").is_some() {
        let m: SelectMessage = serde_json::from_value(inner).map_err(shape)?;
        check_text("select.tag_key", &m.select.tag_key, 128, true)?;
        check_text("select.tag_value", &m.select.tag_value, 256, false)?;
        return Ok(Job::FanOut {
            select: m.select,
            request_id: envelope_id,
        });
    }
    let mut m: RotateMessage = serde_json::from_value(inner).map_err(shape)?;
    check_text("secret_id", &m.secret_id, MAX_ID_CHARS, true)?;
    if let Some(reason) = &m.reason {
        check_text("reason", reason, MAX_TEXT_CHARS, false)?;
    }
    if let Some(id) = &m.request_id {
        check_text("request_id", id, 256, true)?;
    }
    if m.request_id.is_none() {
        m.request_id = envelope_id;
    }
    Ok(Job::Rotate(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rotate(secret: &str) -> RotateMessage {
        RotateMessage {
            secret_id: secret.into(),
            force: false,
            ignore_in_use: false,
            reason: None,
            request_id: None,
        }
    }

    #[test]
    fn a_plain_request_parses_with_defaults() {
        assert_eq!(
            parse(r#"{"secret_id":"app"}"#),
            Ok(Job::Rotate(rotate("app")))
        );
        let full =
            parse(r#"{"secret_id":"app","force":true,"ignore_in_use":true,"reason":"leak","request_id":"r1"}"#).unwrap();
        assert_eq!(
            full,
            Job::Rotate(RotateMessage {
                secret_id: "app".into(),
                force: true,
                ignore_in_use: true,
                reason: Some("leak".into()),
                request_id: Some("r1".into()),
            })
        );
    }

    #[test]
    fn an_eventbridge_envelope_is_unwrapped_and_its_id_becomes_the_request_id() {
        let event = json!({"version": "0", "id": "ev-1", "detail-type": "Rotate", "source": "ops",
            "account": "1", "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [],
            "detail": {"secret_id": "app", "reason": "scheduled"}});
        let Job::Rotate(m) = parse(&event.to_string()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.secret_id.as_str(), m.request_id.as_deref()),
            ("app", Some("ev-1"))
        );
        let fan = json!({"id": "ev-2", "detail-type": "x", "detail": {"select": {"tag_key": "rotate", "tag_value": "yes"}}});
        assert_eq!(
            parse(&fan.to_string()),
            Ok(Job::FanOut {
                select: TagSelector {
                    tag_key: "rotate".into(),
                    tag_value: "yes".into()
                },
                request_id: Some("ev-2".into())
            })
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let cases = [
            ("", MessageError::NotJson),
            ("[1]", MessageError::NotObject),
            ("{\"secretId\":\"x\"}", MessageError::Shape(String::new())),
            ("{\"secret_id\":7}", MessageError::Shape(String::new())),
            (
                "{\"secret_id\":\"\"}",
                MessageError::Invalid {
                    field: "secret_id",
                    reason: String::new(),
                },
            ),
            (
                "{\"secret_id\":\"a\\u0000b\"}",
                MessageError::Invalid {
                    field: "secret_id",
                    reason: String::new(),
                },
            ),
            (
                "{\"select\":{\"tag_key\":\"k\"}}",
                MessageError::Shape(String::new()),
            ),
            (
                "{\"detail-type\":\"x\",\"detail\":\"app\"}",
                MessageError::Shape(String::new()),
            ),
        ];
        for (body, expected) in cases {
            let got = parse(body).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&expected),
                "{body}: {got}"
            );
        }
        assert_eq!(parse(&"x".repeat(300 * 1024)), Err(MessageError::TooLarge));
    }

    #[test]
    fn the_written_form_parses_back() {
        let m = RotateMessage {
            request_id: Some("r".into()),
            ..rotate("arn:aws:secretsmanager:x")
        };
        assert_eq!(
            parse(&serde_json::to_string(&m).unwrap()),
            Ok(Job::Rotate(m))
        );
    }
}
