//! The in-use line: whether the next rotation would change a password an application uses.

use std::time::Duration;

use super::{CheckReport, Status};
use crate::rotation::clock::{Clock, SystemClock};
use crate::rotation::guard::{verdict, InUsePolicy, Verdict};
use crate::rotation::ports::{DbError, SessionGroup};
use crate::rotation::record::{rfc3339, StepRecord};
use crate::rotation::Rotator;

/// The in-use guard's verdict on what the look found (`None`: no known login of the next user
/// worked). Right after a rotation, sessions of the user it left are expected: clients keep the
/// old credentials until their caches refresh, and the next rotation waits for the minimum
/// interval anyway.
pub(super) fn check_in_use(
    rotator: &Rotator,
    user: &str,
    looked: Option<Result<Vec<SessionGroup>, DbError>>,
    unchecked: &[String],
    record: Option<&StepRecord>,
    min_interval: Duration,
    report: &mut CheckReport,
) {
    let guard = &rotator.settings.in_use;
    let window = humantime::format_duration(guard.window);
    if guard.policy == InUsePolicy::Off {
        report.push(
            "in use",
            Status::Warn,
            format!("not looked at (ROTATOR_IN_USE=off): the next rotation changes the password of user {user} even if an application still uses it"),
        );
        return;
    }
    let Some(looked) = looked else {
        report.push(
            "in use",
            Status::Warn,
            format!("not looked at: no known credentials of user {user} log in"),
        );
        return;
    };
    if !unchecked.is_empty() {
        report.push(
            "in use",
            if guard.policy == InUsePolicy::Refuse {
                Status::Fail
            } else {
                Status::Warn
            },
            format!(
                "could not look at the sessions of user {user} on {}: the next rotation {} (ROTATOR_IN_USE={})",
                unchecked.join("; "),
                if guard.policy == InUsePolicy::Refuse {
                    "waits until it can"
                } else {
                    "changes the password anyway"
                },
                guard.policy.as_str()
            ),
        );
    }
    let next_allowed = record
        .and_then(|r| r.last_success_at)
        .map(|last| last + min_interval.as_millis() as u64)
        .filter(|at| *at > SystemClock.now_ms());
    match looked.map(|groups| verdict(guard.policy, user, guard.window, groups)) {
        Ok(Verdict::Clear) => report.push(
            "in use",
            Status::Ok,
            format!("no session of user {user} ran a statement within {window}"),
        ),
        Ok(Verdict::Wait(f) | Verdict::GoOn(f)) if next_allowed.is_some() => report.push(
            "in use",
            Status::Ok,
            format!(
                "{f}: expected so soon after a rotation, while clients' caches refresh; the next rotation is not before {} (the minimum interval) and looks again then",
                rfc3339(next_allowed.unwrap_or_default())
            ),
        ),
        Ok(Verdict::Wait(f)) => report.push(
            "in use",
            Status::Fail,
            format!("{f}: the next rotation waits for them (ROTATOR_IN_USE=refuse)"),
        ),
        Ok(Verdict::GoOn(f)) => report.push(
            "in use",
            Status::Warn,
            format!(
                "{f}: the next rotation changes the password anyway (ROTATOR_IN_USE={}), and their next login fails",
                guard.policy.as_str()
            ),
        ),
        Err(e) => report.push(
            "in use",
            Status::Warn,
            format!("could not look at the sessions of user {user}: {e}"),
        ),
    }
}
