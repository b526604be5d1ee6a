//! The server's identity, and the claims and marks other secrets hold on this secret's users.

use super::{CheckReport, Status};
use crate::rotation::lease::{identify, user_key, uses, Uses};
use crate::rotation::Rotator;
use crate::secret::{AppSecret, Credentials};

/// The server's own identity, and what the claims and marks on this secret's users, keyed by
/// it, mean for the next rotation: a secret scheduled for deletion (or gone) uses nobody, one
/// that cannot be read refuses the rotation, one that has the next user in AWSCURRENT too.
#[allow(clippy::too_many_arguments)]
pub(super) async fn check_marks(
    rotator: &Rotator,
    app: &AppSecret,
    arn: &str,
    users: &[String],
    next_user: &str,
    logins: &[(String, Credentials)],
    master: Option<&str>,
    report: &mut CheckReport,
) {
    let server = match identify(rotator, app.engine, app.admin_endpoint(), logins, master).await {
        Ok(s) => s,
        Err(e) => {
            report.push("server identity", Status::Fail, e.to_string());
            return;
        }
    };
    report.push(
        "server identity",
        Status::Ok,
        format!(
            "{} (claims and marks on its users are keyed by it, whatever name reaches it)",
            server.detail
        ),
    );
    let mut found = false;
    for user in users {
        let (claim, marks) = match rotator
            .records
            .user_marks(&user_key(app.engine, &server, user))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                report.push("user marks", Status::Warn, format!("user {user}: {e}"));
                continue;
            }
        };
        let mut others: Vec<String> = marks.into_iter().filter(|s| s != arn).collect();
        if let Some(c) = claim.filter(|c| c.secret != arn && !others.contains(&c.secret)) {
            others.push(c.secret);
        }
        for other in others {
            found = true;
            match uses(rotator, &other, user).await {
                Ok(Uses::Gone) => report.push(
                    "user marks",
                    Status::Warn,
                    format!("user {user}: secret {other} is scheduled for deletion or deleted, so it uses nobody; its mark is cleared when a rotation meets it"),
                ),
                Ok(Uses::Yes) if user == next_user => report.push(
                    "user marks",
                    Status::Fail,
                    format!("user {user}, the next rotation's, is AWSCURRENT of secret {other}: the rotation will refuse to change it"),
                ),
                Ok(Uses::Yes | Uses::No) => report.push(
                    "user marks",
                    Status::Ok,
                    format!("user {user} is also named by secret {other}"),
                ),
                Err(e) => report.push("user marks", Status::Fail, format!("user {user}: {e}")),
            }
        }
    }
    if !found {
        report.push(
            "user marks",
            Status::Ok,
            format!("no other secret claims or marks users {}", users.join(", ")),
        );
    }
}
