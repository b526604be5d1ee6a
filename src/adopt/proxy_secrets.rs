//! The proxy secrets: reading them, choosing the original user's, and creating new ones.

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::ports::{NewSecret, ProxyAuth};
use super::report::Adoption;
use super::{copied_tags, AdoptError, Adopter, Found, UserSecretPlan};
use crate::rotation::ports::{At, SecretMeta, SecretStoreError, Stage};
use crate::secret::{AppSecret, Credentials, Endpoint, UserSecret};

impl Adopter {
    pub(super) async fn read_user_secret(&self, id: &str) -> Result<Option<Found>, AdoptError> {
        match self
            .rotator
            .secrets
            .get(id, At::Stage(Stage::Current))
            .await
        {
            Ok(Some(v)) => Ok(Some(Found {
                arn: v.arn,
                secret: UserSecret::parse(&v.value).map_err(|e| {
                    AdoptError::Invalid(format!(
                        "secret {id} is not a {{\"username\",\"password\"}} secret: {e}"
                    ))
                })?,
            })),
            Ok(None) | Err(SecretStoreError::NotFound(_)) => Ok(None),
            // Scheduled for deletion: its name is taken until then.
            Err(SecretStoreError::InvalidRequest(why)) => Err(AdoptError::Invalid(format!(
                "secret {id} cannot be read ({why}); if it is scheduled for deletion, restore it (aws secretsmanager restore-secret --secret-id {id}) or delete it for good, or choose another --clone-suffix"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The secret named `name`, which must be for `user`.
    pub(super) async fn find_for(
        &self,
        name: &str,
        user: &str,
    ) -> Result<Option<Found>, AdoptError> {
        match self.read_user_secret(name).await? {
            Some(f) if f.secret.username() != user => Err(AdoptError::Invalid(format!(
                "secret {name} exists for user {}, not {user}; rename or delete it",
                f.secret.username()
            ))),
            found => Ok(found),
        }
    }

    pub(super) async fn plan_user_secret(
        &self,
        app: &AppSecret,
        at: &Endpoint,
        name: &str,
        auth: Option<&[ProxyAuth]>,
        out: &mut Adoption,
    ) -> Result<UserSecretPlan, AdoptError> {
        let user = &app.credentials.username;
        // The proxy's own secret for the user first (it is attached already), then one the
        // secret names.
        let mut candidates: Vec<&str> = Vec::new();
        for entry in auth.unwrap_or_default() {
            if entry.secret_arn == out.secret {
                out.notes.push(format!("RDS Proxy authenticates {user} with the application secret itself: after the first rotation it holds {}; the attach call below leaves that entry out", out.clone));
            } else {
                candidates.push(&entry.secret_arn);
            }
        }
        candidates.extend(app.proxy_secret_ids.iter().map(String::as_str));
        for id in candidates {
            match self.read_user_secret(id).await {
                Ok(Some(f)) if f.secret.username() == user => {
                    if self
                        .rotator
                        .db
                        .check_login(app.engine, at, &f.secret.credentials)
                        .await
                        .is_ok()
                    {
                        return Ok(UserSecretPlan::Reuse(f.arn));
                    }
                }
                Ok(_) => {}
                Err(e) => out.notes.push(format!("proxy secret {id} not read: {e}")),
            }
        }
        match self.find_for(name, user).await? {
            Some(f) => {
                let same = f.secret.credentials.password.expose_secret()
                    == app.credentials.password.expose_secret();
                // Holding the application's password, it logs in as the application does.
                let usable = same
                    || self
                        .rotator
                        .db
                        .check_login(app.engine, at, &f.secret.credentials)
                        .await
                        .is_ok();
                Ok(if usable {
                    UserSecretPlan::Reuse(f.arn)
                } else {
                    UserSecretPlan::Update(f)
                })
            }
            None => Ok(UserSecretPlan::Create),
        }
    }

    /// Its ARN, or `None` when a secret of that name exists already (made a moment ago by a run
    /// whose answer was lost): the caller reads that one.
    pub(super) async fn create_proxy_secret(
        &self,
        name: &str,
        creds: &Credentials,
        origin: &SecretMeta,
    ) -> Result<Option<String>, AdoptError> {
        let value = SecretString::from(
            json!({"username": creds.username, "password": creds.password.expose_secret()})
                .to_string(),
        );
        let tags = copied_tags(origin)?;
        let description = format!(
            "RDS Proxy credentials of {}, kept in step with {} by rds-rotator",
            creds.username, origin.name
        );
        match self
            .catalog
            .create(&NewSecret {
                name,
                description: &description,
                value: &value,
                kms_key_id: origin.kms_key_id.as_deref(),
                tags: &tags,
            })
            .await
        {
            Ok(arn) => Ok(Some(arn)),
            Err(SecretStoreError::VersionExists(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
