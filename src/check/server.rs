//! The server line: whether the server takes the next rotation's password change.

use super::{CheckReport, Status};
use crate::rotation::ports::{DbError, PasswordRules};
use crate::secret::Endpoint;

/// The server as the next rotation finds it before it makes a password.
pub(super) fn check_server(
    at: &Endpoint,
    server: Option<Result<PasswordRules, DbError>>,
    report: &mut CheckReport,
) {
    match server {
        None => report.push(
            "server",
            Status::Warn,
            format!("not looked at: no known credentials of the next user log in at {at}"),
        ),
        Some(Ok(rules)) => report.push(
            "server",
            Status::Ok,
            match &rules.source {
                None => format!("{at} takes password changes"),
                Some(source) => format!(
                    "{at} takes password changes; {source} asks for at least {} characters, {} lower-case, {} upper-case, {} digits and {} others, and new passwords meet that",
                    rules.min_length, rules.min_lower, rules.min_upper, rules.min_digits, rules.min_other
                ),
            },
        ),
        Some(Err(e @ (DbError::ReadOnly { .. } | DbError::PasswordRejected(_)))) => {
            report.push("server", Status::Fail, format!("{e}; the rotation refuses before it writes AWSPENDING"))
        }
        Some(Err(e)) => report.push(
            "server",
            Status::Warn,
            format!("could not read what {at} asks of a password change: {e}"),
        ),
    }
}
