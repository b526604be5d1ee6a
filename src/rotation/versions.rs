//! Reading and writing secret versions so that a step can run twice: writes under a token that
//! a retry reuses, label moves by compare-and-swap, reads that name their version.

use uuid::Uuid;

use super::errors::RotationError;
use super::ports::{At, SecretStoreError, SecretVersion, Stage};
use super::rotator::Rotator;
use crate::secret::{AppSecret, UserSecret};

/// The deterministic ClientRequestToken of the proxy secret's new version: a retry reuses it, so
/// the write happens once.
pub fn proxy_token(rotation_id: &str) -> String {
    match Uuid::parse_str(rotation_id) {
        Ok(namespace) => Uuid::new_v5(&namespace, b"rds-proxy-secret"),
        // Secrets Manager's token is whatever RotateSecret was given (32 to 64 characters).
        Err(_) => Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("rds-proxy-secret:{rotation_id}").as_bytes(),
        ),
    }
    .to_string()
}

/// Two secret values mean the same JSON (key order and spacing aside).
fn same_json(a: &secrecy::SecretString, b: &secrecy::SecretString) -> bool {
    use secrecy::ExposeSecret;
    let parse = |s: &secrecy::SecretString| {
        serde_json::from_str::<serde_json::Value>(s.expose_secret()).ok()
    };
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.expose_secret() == b.expose_secret(),
    }
}

/// How a compare-and-swap of AWSCURRENT ended.
pub(super) enum Swap {
    Done,
    /// Someone else moved it, to this version (or removed it).
    Moved(Option<String>),
}

/// A proxy secret as planning found it.
pub(super) struct ProxySecret {
    pub id: String,
    pub version_id: String,
    pub secret: UserSecret,
}

pub(super) fn parse_app_secret(arn: &str, v: &SecretVersion) -> Result<AppSecret, RotationError> {
    AppSecret::parse(&v.value).map_err(|source| RotationError::BadSecret {
        secret: arn.to_owned(),
        source,
    })
}

impl Rotator {
    /// Moves AWSCURRENT of `secret` from version `from` to `to` by compare-and-swap. A refusal
    /// is looked into: AWSCURRENT already on `to` is our own earlier move whose answer was lost
    /// (the SDK retried and found the label gone); still on `from`, nobody raced us and the
    /// refusal says nothing about the protocol (retryable); elsewhere, someone moved it.
    pub(super) async fn swap_current(
        &self,
        secret: &str,
        to: &str,
        from: &str,
    ) -> Result<Swap, RotationError> {
        let Err(e) = self
            .secrets
            .move_stage(secret, Stage::Current, to, from)
            .await
        else {
            return Ok(Swap::Done);
        };
        let SecretStoreError::Refused(reason) = e else {
            return Err(e.into());
        };
        let now = self.secrets.describe(secret).await?;
        match now.version_with(Stage::Current) {
            Some(v) if v == to => Ok(Swap::Done),
            Some(v) if v == from => Err(RotationError::StageMoveRefused {
                secret: secret.to_owned(),
                reason,
            }),
            found => Ok(Swap::Moved(found.map(str::to_owned))),
        }
    }

    /// PutSecretValue under `token`. AWS refuses a token reused with another value
    /// (ResourceExistsException): then the version is read back, and if it holds what we meant
    /// to write, it is ours (an earlier attempt whose answer was lost); if not, someone else
    /// wrote under this rotation's token, and we stop rather than guess.
    pub(super) async fn put_once(
        &self,
        secret_id: &str,
        token: &str,
        value: &secrecy::SecretString,
        stage: Stage,
    ) -> Result<(), RotationError> {
        match self.secrets.put(secret_id, token, value, stage).await {
            Err(SecretStoreError::VersionExists(_)) => {}
            other => return Ok(other?),
        }
        let stored = self.secrets.get(secret_id, At::Version(token)).await?;
        let same = stored.is_some_and(|v| same_json(&v.value, value));
        if same {
            return Ok(());
        }
        Err(RotationError::Inconsistent {
            secret: secret_id.to_owned(),
            reason: format!(
                "version {token} already exists with another value: something other than this rotation wrote under its token"
            ),
        })
    }

    pub(super) async fn read_app_secret(
        &self,
        arn: &str,
        version: &str,
    ) -> Result<AppSecret, RotationError> {
        let v = self
            .secrets
            .get(arn, At::Version(version))
            .await?
            .ok_or_else(|| RotationError::Inconsistent {
                secret: arn.to_owned(),
                reason: format!("version {version} is gone"),
            })?;
        parse_app_secret(arn, &v)
    }

    pub(super) async fn read_user_secret(
        &self,
        id: &str,
        at: At<'_>,
    ) -> Result<Option<UserSecret>, RotationError> {
        Ok(self.read_user_version(id, at).await?.map(|(s, _)| s))
    }

    /// A user secret, and the id of the version read.
    pub(super) async fn read_user_version(
        &self,
        id: &str,
        at: At<'_>,
    ) -> Result<Option<(UserSecret, String)>, RotationError> {
        match self.secrets.get(id, at).await? {
            None => Ok(None),
            Some(v) => UserSecret::parse(&v.value)
                .map(|s| Some((s, v.version_id)))
                .map_err(|source| RotationError::BadSecret {
                    secret: id.to_owned(),
                    source,
                }),
        }
    }

    /// The proxy secret whose `username` is `user`. With proxy secrets configured, one must match.
    /// The one listed at the user's position in `rotation_usernames` is read first: that is the
    /// usual layout, and it saves reading the others.
    pub(super) async fn find_proxy_secret(
        &self,
        app: &AppSecret,
        user: &str,
    ) -> Result<Option<ProxySecret>, RotationError> {
        let ids = &app.proxy_secret_ids;
        if ids.is_empty() {
            return Ok(None);
        }
        let mut order: Vec<&String> = ids.iter().collect();
        if let Some(i) = app.rotation_usernames.iter().position(|u| u == user) {
            if i < order.len() {
                let first = order.remove(i);
                order.insert(0, first);
            }
        }
        for id in order {
            // Beside the read: a rotation function attached to the proxy secret would change
            // this user's password on its own schedule.
            let (read, meta) = tokio::join!(
                self.read_user_version(id, At::Stage(Stage::Current)),
                self.secrets.describe(id)
            );
            let (secret, version_id) = read?.ok_or_else(|| RotationError::Inconsistent {
                secret: id.clone(),
                reason: "the proxy secret does not exist or has no AWSCURRENT version".into(),
            })?;
            if secret.username() == user {
                let meta = meta?;
                if meta.rotation_enabled {
                    return Err(RotationError::ManagedRotation {
                        secret: meta.arn,
                        lambda: meta.rotation_lambda,
                    });
                }
                return Ok(Some(ProxySecret {
                    id: id.clone(),
                    version_id,
                    secret,
                }));
            }
        }
        Err(RotationError::NoProxySecret {
            user: user.to_owned(),
            count: ids.len(),
        })
    }
}
