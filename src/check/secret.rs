//! The secret's own checks: reading a user's secret, Secrets Manager's rotation on it, and
//! what the step record says of the last rotation.

use super::{CheckReport, Status};
use crate::rotation::ports::{At, SecretMeta, SecretStoreError, Stage};
use crate::rotation::record::StepRecord;
use crate::rotation::{left_by_us, RotationError, Rotator};
use crate::secret::UserSecret;

/// The secret's ARN and its credentials.
pub(super) async fn read_user_secret(
    rotator: &Rotator,
    id: &str,
) -> Result<(String, UserSecret), String> {
    match rotator.secrets.get(id, At::Stage(Stage::Current)).await {
        Ok(Some(v)) => UserSecret::parse(&v.value)
            .map(|s| (v.arn, s))
            .map_err(|e| e.to_string()),
        Ok(None) => Err("it has no AWSCURRENT version".into()),
        Err(SecretStoreError::NotFound(_)) => Err("it does not exist".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Secrets Manager's own rotation attached to the secret: `rotate` refuses it, unless its
/// function is this tool (`own`). `say_ok`: a line also when it is not.
pub(super) fn check_managed_rotation(
    meta: &SecretMeta,
    report: &mut CheckReport,
    say_ok: bool,
    own: bool,
) {
    if own {
        report.push(
            "managed rotation",
            Status::Ok,
            format!(
                "Secrets Manager rotates it with this tool's function {}",
                meta.rotation_lambda.as_deref().unwrap_or_default()
            ),
        );
    } else if meta.rotation_enabled {
        let e = RotationError::ManagedRotation {
            secret: meta.arn.clone(),
            lambda: meta.rotation_lambda.clone(),
        };
        report.push("managed rotation", Status::Fail, e.to_string());
    } else if say_ok {
        report.push(
            "managed rotation",
            Status::Ok,
            "Secrets Manager's own rotation is not enabled",
        );
    }
}

/// The step record's findings; returns the record for the checks that follow.
pub(super) async fn check_record(
    rotator: &Rotator,
    arn: &str,
    meta: &SecretMeta,
    report: &mut CheckReport,
) -> Option<StepRecord> {
    let record = match rotator.records.load(arn).await {
        Ok(r) => r,
        Err(e) => {
            report.push("state table", Status::Fail, e.to_string());
            return None;
        }
    };
    // AWSPENDING where no rotation of ours put it: `rotate` refuses to begin.
    let pending = meta
        .version_with(Stage::Pending)
        .filter(|v| meta.version_with(Stage::Current) != Some(*v));
    if let Some(v) = pending {
        let in_progress = record
            .as_ref()
            .is_some_and(|r| r.is_in_progress() && r.rotation_id.as_deref() == Some(v));
        // Secrets Manager labels a version for the function it calls: when that is this tool's,
        // the rotation it starts is ours (`rotate` and the function begin it with that id).
        if rotator.settings.rotated_by_own_function(meta)
            && !in_progress
            && !left_by_us(v, record.as_ref())
        {
            report.push(
                "pending version",
                Status::Ok,
                format!("AWSPENDING is on version {v}, which Secrets Manager made for this tool's function: its rotation begins with that id"),
            );
        } else if !in_progress && !left_by_us(v, record.as_ref()) {
            let e = RotationError::ForeignPending {
                secret: arn.to_owned(),
                version: v.to_owned(),
            };
            report.push("pending version", Status::Fail, e.to_string());
        } else if !in_progress && record.as_ref().and_then(StepRecord::left_pending) == Some(v) {
            // Left by a finished rotation (on what was AWSCURRENT), then an edit moved AWSCURRENT.
            report.push(
                "pending version",
                Status::Warn,
                format!("AWSPENDING is on version {v}, where a rotation of this tool left it before AWSCURRENT moved on: `rds-rotator rotate` takes it over, but Secrets Manager's RotateSecret does not start past it (a call of this tool's function removes it, and fails once)"),
            );
        }
    }
    match &record {
        Some(r) if r.is_in_progress() => report.push(
            "rotation",
            Status::Warn,
            format!(
                "rotation {} is in progress at step {} (attempt {}); the next run resumes it{}",
                r.rotation_id.as_deref().unwrap_or("-"),
                r.step,
                r.attempts,
                r.last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            ),
        ),
        Some(r) if r.is_unfinished() => report.push(
            "rotation",
            Status::Warn,
            format!(
                "the last rotation {}: {}; the next one knows the password it may have set",
                r.state.as_str(),
                r.last_error.as_deref().unwrap_or_default()
            ),
        ),
        _ => {}
    }
    record
}
