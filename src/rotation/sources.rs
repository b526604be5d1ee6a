//! Where the idle user's current password may be known, and the logins that look at the server
//! before a password is made.

use tracing::{info, warn};

use super::accounts::look;
use super::early_login::ProxyLogin;
use super::errors::RotationError;
use super::ports::{At, PasswordRules, Stage};
use super::record::parse_elsewhere;
use super::run::Run;
use crate::secret::{AppSecret, Credentials};

/// Where the idle user's current password may be known, best first.
///
/// A rotation that stops after set_password (a denied or KMS-refused proxy-secret write, a test
/// that timed out, an abort) leaves a password that only its pending version knows. That version
/// is a source here, rather than writing the proxy secret before the password changes: it covers
/// every failure after set_password, not only a refused write, and costs no call on the way of a
/// rotation that succeeds.
#[derive(Debug, Clone, Copy)]
pub(super) enum KnownSource {
    /// Its RDS Proxy secret: RDS Proxy logs in with it, so it is right unless someone changed it.
    ProxySecret,
    /// The pending versions of earlier rotations of this user that failed or were aborted.
    Unfinished,
    /// The previous version of the app secret, when it was for this user.
    Previous,
    /// AWSCURRENT itself, in single-user rotation.
    Current,
    /// The master secret, when the secret names one.
    Master,
}

impl KnownSource {
    pub(super) const ALL: [KnownSource; 5] = [
        KnownSource::ProxySecret,
        KnownSource::Unfinished,
        KnownSource::Previous,
        KnownSource::Current,
        KnownSource::Master,
    ];
}

impl Run<'_> {
    /// The pending password logs in, but an earlier attempt may have changed only some of the
    /// user's accounts (MySQL): the master secret sets it on every one again. If it cannot, the
    /// rotation goes on (the test step shows whether the application's path works).
    pub(super) async fn again_with_master(
        &mut self,
        current: &AppSecret,
        pending: &Credentials,
    ) -> Result<(), RotationError> {
        let at = current.admin_endpoint();
        for (label, login) in self.known_credentials(KnownSource::Master, current).await? {
            let Some(login) = login else { continue };
            let session = self.rotator.db.login(current.engine, at, &login).await;
            match self.change_with(session, &login, pending, false).await {
                Ok(()) => {
                    info!(secret = %self.arn(), user = %pending.username, via = %label, "password set again on every account");
                    return Ok(());
                }
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    warn!(secret = %self.arn(), user = %pending.username, via = %label, error = %e,
                          "could not set the password again on every account; going on with the accounts that have it");
                }
            }
        }
        Ok(())
    }

    /// The server's rules for a new password, read in the early login's session (which
    /// set_password then uses). A replica, or a server that would refuse every change, stops the
    /// rotation here, before AWSPENDING is written. Without that login (it failed, or this run
    /// resumed) the rules are the defaults, and set_password's own session checks again.
    pub(super) async fn server_rules(&mut self) -> Result<PasswordRules, RotationError> {
        let current = self.current().await?.clone();
        let target = self.target_user().to_owned();
        match self.login.take() {
            ProxyLogin::Opening(early) => match early.session().await {
                Ok(mut session) => {
                    let rules = look(session.as_mut(), &current, &target).await;
                    self.login = ProxyLogin::Opened(Ok(session));
                    match rules {
                        Ok(rules) => return Ok(rules),
                        // This login may not look: another source may.
                        Err(RotationError::Database(e)) if e.try_next_source() => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => self.login = ProxyLogin::Opened(Err(e)),
            },
            other => self.login = other,
        }
        // No early login (no proxy secret, a resumed or retried run), or it failed: the first
        // other source that logs in looks, since a replica is better refused now than after
        // AWSPENDING is written. set_password's session checks again in any case.
        let at = current.admin_endpoint().clone();
        for source in KnownSource::ALL {
            if matches!(source, KnownSource::ProxySecret)
                && matches!(self.login, ProxyLogin::Opened(_))
            {
                continue;
            }
            for (_, login) in self.known_credentials(source, &current).await? {
                let Some(login) = login else { continue };
                let looked = match self.rotator.db.login(current.engine, &at, &login).await {
                    Ok(mut session) => look(session.as_mut(), &current, &target).await,
                    Err(e) => Err(e.into()),
                };
                match looked {
                    Ok(rules) => return Ok(rules),
                    Err(RotationError::Database(e)) if e.try_next_source() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(PasswordRules::default())
    }

    /// The idle user's last known credentials from one source, each with a label for messages:
    /// none when the source does not apply, `(label, None)` when it holds nothing usable.
    pub(super) async fn known_credentials(
        &mut self,
        source: KnownSource,
        current: &AppSecret,
    ) -> Result<Vec<(String, Option<Credentials>)>, RotationError> {
        let target = self.target_user().to_owned();
        let one = |label: String, creds: Option<Credentials>| vec![(label, creds)];
        Ok(match source {
            KnownSource::ProxySecret => {
                let Some(id) = self.record.proxy_secret_id.clone() else {
                    return Ok(one("proxy secret: none configured".to_owned(), None));
                };
                let secret = match &self.proxy {
                    Some(s) => Some(s.clone()),
                    None => {
                        self.rotator
                            .read_user_secret(&id, At::Stage(Stage::Current))
                            .await?
                    }
                };
                let creds = secret
                    .map(|s| s.credentials)
                    .filter(|c| c.username == target);
                let label = if creds.is_some() {
                    format!("proxy secret {id}")
                } else {
                    format!("proxy secret {id}: not for {target}")
                };
                one(label, creds)
            }
            KnownSource::Unfinished => {
                let mut found = Vec::new();
                for entry in self.record.unfinished_versions.clone() {
                    // Ours, or (`record::elsewhere`) another secret's that names the same user.
                    let (secret, id) = match parse_elsewhere(&entry) {
                        Some((secret, id)) => (secret.to_owned(), id.to_owned()),
                        None => (self.arn().to_owned(), entry.clone()),
                    };
                    let label = if secret == self.arn() {
                        format!("pending version {id} of an unfinished rotation")
                    } else {
                        format!("pending version {id} of an unfinished rotation of {secret}")
                    };
                    let read = match self.rotator.secrets.get(&secret, At::Version(&id)).await {
                        Ok(read) => read,
                        // Another secret may be denied to us, or deleted: one source less.
                        Err(e) if secret != self.arn() && !e.is_retryable() => {
                            found.push((format!("{label}: unreadable ({e})"), None));
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    found.push(match read.map(|v| AppSecret::parse(&v.value)) {
                        None => (format!("{label}: gone"), None),
                        Some(Ok(p)) if p.credentials.username == target => {
                            (label, Some(p.credentials))
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => (format!("{label}: unreadable ({e})"), None),
                    });
                }
                found
            }
            KnownSource::Previous => {
                let previous = self
                    .rotator
                    .secrets
                    .get(self.arn(), At::Stage(Stage::Previous))
                    .await?;
                match previous {
                    None => one("AWSPREVIOUS: absent".to_owned(), None),
                    Some(v) => match AppSecret::parse(&v.value) {
                        Ok(p) if p.credentials.username == target => {
                            one("AWSPREVIOUS".to_owned(), Some(p.credentials))
                        }
                        Ok(p) => one(
                            format!("AWSPREVIOUS: holds user {}", p.credentials.username),
                            None,
                        ),
                        Err(e) => one(format!("AWSPREVIOUS: unreadable ({e})"), None),
                    },
                }
            }
            // Single-user rotation: the user in use is the one that changes.
            KnownSource::Current if current.credentials.username == target => {
                one("AWSCURRENT".to_owned(), Some(current.credentials.clone()))
            }
            KnownSource::Current => Vec::new(),
            KnownSource::Master => match &current.master_secret_id {
                Some(id) => {
                    let s = self
                        .rotator
                        .read_user_secret(id, At::Stage(Stage::Current))
                        .await?;
                    one(format!("master secret {id}"), s.map(|s| s.credentials))
                }
                None => one("master secret: not configured".to_owned(), None),
            },
        })
    }
}
