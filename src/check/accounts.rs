//! The accounts line (MySQL and MariaDB): every host's account of each user.

use std::collections::BTreeMap;

use super::{CheckReport, Status};
use crate::rotation::ports::Accounts;
use crate::rotation::{unlisted_account, Rotator};
use crate::secret::{AppSecret, Credentials, Endpoint};

/// MySQL and MariaDB keep one account per host, each with its own password. A user changing its
/// own password changes one; the master secret changes them all.
pub(super) async fn check_accounts(
    rotator: &Rotator,
    app: &AppSecret,
    at: &Endpoint,
    master: Option<&Credentials>,
    own: &BTreeMap<String, Credentials>,
    users: &[String],
    report: &mut CheckReport,
) {
    let mut listed = Vec::new();
    let mut problems = Vec::new();
    for u in users {
        let Some(reader) = master.or_else(|| own.get(u)) else {
            listed.push(format!("{u}: not listed (no login)"));
            continue;
        };
        match rotator.db.accounts(app.engine, at, reader, u).await {
            Ok(Accounts::Listed(hosts)) => {
                if hosts.len() > 1 && master.is_none() {
                    problems.push(format!(
                        "{u} has {} accounts, and without a master secret only the one it logs in as would change",
                        hosts.len()
                    ));
                }
                let hosts: Vec<String> = hosts.iter().map(|h| format!("{u}@{h}")).collect();
                listed.push(hosts.join(", "));
            }
            Ok(Accounts::Unlisted { logged_in_as }) => {
                listed.push(format!(
                    "{u}: not listed ({} may not read mysql.user)",
                    reader.username
                ));
                // Without a master secret the user changes its own account: the rotation's rule.
                if master.is_none() {
                    if let Err(why) =
                        unlisted_account(u, &logged_in_as, app.account_host.as_deref())
                    {
                        problems.push(why);
                    }
                }
            }
            Err(e) => listed.push(format!("{u}: not listed ({e})")),
        }
    }
    if problems.is_empty() {
        let unlisted = listed.iter().any(|l| l.contains("not listed"));
        report.push(
            "accounts",
            if unlisted { Status::Warn } else { Status::Ok },
            if unlisted {
                format!("{}: an account on another host would keep its old password; a master secret lists and changes them all", listed.join("; "))
            } else {
                listed.join("; ")
            },
        );
    } else {
        report.push(
            "accounts",
            Status::Fail,
            format!(
                "{}; {}: the rotation refuses (set master_secret_id to a login that may read mysql.user; or drop the extra accounts; or, if the account it logs in as is its only one, add \"account_host\" with that account's host to the secret)",
                listed.join("; "),
                problems.join("; ")
            ),
        );
    }
}
