//! The RDS Proxy line: whether the proxy has a secret for every user of the rotation.

use std::collections::BTreeMap;

use super::{CheckReport, Status};
use crate::adopt::ports::{ProxyDirectory, ProxyError};

/// RDS Proxy turns away a user it has no secret for ("no credentials for the role"): after a
/// rotation to that user, every application login.
pub(super) async fn check_proxy_auth(
    proxies: &dyn ProxyDirectory,
    name: &str,
    users: &[String],
    proxy_arns: &BTreeMap<String, String>,
    app_arn: &str,
    report: &mut CheckReport,
) {
    let auth = match proxies.auth(name).await {
        Ok(a) => a,
        Err(e @ ProxyError::NotFound(_)) => {
            report.push("rds proxy", Status::Fail, e.to_string());
            return;
        }
        Err(e) => {
            report.push(
                "rds proxy",
                Status::Warn,
                format!("{name} not checked: {e}"),
            );
            return;
        }
    };
    let listed = |arn: &str| auth.iter().any(|a| a.secret_arn == arn);
    // Single-user, before adoption: the proxy commonly authenticates with the application
    // secret itself, whose user does not change.
    let single = users.len() < 2 && listed(app_arn);
    let missing: Vec<String> = users
        .iter()
        .filter(|u| !single && !proxy_arns.get(*u).is_some_and(|arn| listed(arn)))
        .map(|u| match proxy_arns.get(u) {
            Some(arn) => format!("{u} ({arn})"),
            None => u.clone(),
        })
        .collect();
    if !missing.is_empty() {
        report.push(
            "rds proxy",
            Status::Fail,
            format!(
                "{name} has no secret for {} in its Auth list: after a rotation to that user, RDS Proxy refuses every application login; attach the proxy secrets (`rds-rotator adopt --dry-run` prints the call)",
                missing.join(", ")
            ),
        );
    } else if listed(app_arn) && users.len() > 1 {
        report.push(
            "rds proxy",
            Status::Warn,
            format!("{name} also authenticates with the application secret itself, whose user changes with every rotation; detach it"),
        );
    } else {
        report.push(
            "rds proxy",
            Status::Ok,
            format!(
                "{name} has a secret for each user ({} in its Auth list)",
                auth.len()
            ),
        );
    }
}
