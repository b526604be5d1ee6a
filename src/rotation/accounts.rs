//! MySQL keeps one account per host, each with its own password: what a user that changes its
//! own password reaches, and the server's rules looked at before a password is made.

use tracing::warn;

use super::errors::RotationError;
use super::ports::{Accounts, DbError, DbSession, PasswordRules};
use crate::secret::{AppSecret, Engine};

/// How `only_account` says that it could not see the accounts (not that there are several).
pub(super) const UNLISTED: &str = "may not list its accounts";

/// A user that changes its own password changes one account, the one it logged in as; MySQL
/// keeps one per host, each with its own password, and RDS Proxy may match another. With more
/// than one (or when they cannot be listed and a master secret could do it), the next source
/// (the master secret) changes them all.
pub(super) async fn only_account(
    session: &mut dyn DbSession,
    user: &str,
    master_later: bool,
    account_host: Option<&str>,
) -> Result<(), RotationError> {
    match session.accounts(user).await? {
        Accounts::Listed(accounts) if accounts.len() > 1 => Err(DbError::NotPermitted(format!(
            "user {user} has {} accounts ({}), each with its own password, and a user changes only the one it logged in as; the master secret changes them all",
            accounts.len(),
            accounts.join(", ")
        ))
        .into()),
        Accounts::Unlisted { .. } if master_later => Err(DbError::NotPermitted(format!(
            "user {user} {UNLISTED}, so accounts on other hosts could keep the old password; the master secret changes every one"
        ))
        .into()),
        Accounts::Unlisted { logged_in_as } => {
            unlisted_account(user, &logged_in_as, account_host).map_err(|why| {
                RotationError::AccountsUnlisted {
                    account: logged_in_as.clone(),
                    why,
                }
            })?;
            warn!(%user, account = %logged_in_as, "cannot list the user's accounts (no master secret); changing the one it logs in as");
            Ok(())
        }
        Accounts::Listed(_) => Ok(()),
    }
}

/// Before a password is made, in a session of one of the sources: the server's rules (a replica
/// refuses here), and, when the idle user would change its own password (MySQL without a master
/// secret), whether that reaches every account it has.
pub(super) async fn look(
    session: &mut dyn DbSession,
    current: &AppSecret,
    target: &str,
) -> Result<PasswordRules, RotationError> {
    let rules = session.preflight().await?;
    if current.engine != Engine::Postgres && current.master_secret_id.is_none() {
        // Several listed accounts are set_password's to refuse: it tries every source first.
        if let Accounts::Unlisted { logged_in_as } = session.accounts(target).await? {
            let host = current.account_host.as_deref();
            unlisted_account(target, &logged_in_as, host).map_err(|why| {
                RotationError::AccountsUnlisted {
                    account: logged_in_as,
                    why,
                }
            })?;
        }
    }
    Ok(rules)
}

/// May a user that cannot list its accounts change its own password? It changes one account,
/// the one the server matched for this login, and MySQL matches the most specific host first.
/// So when that is `user@%`, no other account serves this address, and (for the rotator's
/// subnet) `%` is the catch-all every other address falls back to. An account on a narrower
/// host (`user@10.0.1.%`) means a catch-all may exist beside it, which would keep the old
/// password: refused, unless the secret says this host is the only one (`account_host`). A
/// secret that names a host the server did not match is wrong about the accounts: refused too.
pub(crate) fn unlisted_account(
    user: &str,
    logged_in_as: &str,
    account_host: Option<&str>,
) -> Result<(), String> {
    let (name, host) = logged_in_as.rsplit_once('@').unwrap_or(("", logged_in_as));
    if name != user {
        // An anonymous account (''@'%'), say: its password is not the user's.
        return Err(format!(
            "logging in as {user}, the rotator is matched to the account {logged_in_as}, which is not {user}'s"
        ));
    }
    match account_host {
        None if host == "%" => Ok(()),
        Some(declared) if declared == host => Ok(()),
        Some(declared) => Err(format!(
            "the secret says {user}'s only account is on host {declared}, but the rotator logs in as {logged_in_as}"
        )),
        None => Err(format!(
            "{user} logs in from here as {logged_in_as}, not as {user}@%, and may not list its accounts: another account of {user} (such as {user}@%, which serves other addresses and RDS Proxy) would keep its old password"
        )),
    }
}
