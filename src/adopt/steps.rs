//! The steps of adoption (the table at the top of `adopt`), carried out in order after the
//! inspection decided them, and what they share: the check between steps, the attach call,
//! the idempotent tokens.

use secrecy::SecretString;

use super::ports::CloneState;
use super::report::{self, Adoption};
use super::{AdoptError, Adopter, Found, Inspection, Start, UserSecretPlan};
use crate::failpoint;
use crate::rotation::lease::Flags;
use crate::rotation::ports::{DbError, PasswordRules, SecretStoreError, Stage};
use crate::secret::{Credentials, Engine};

/// Tokens of the application secret's new version: the same inputs give the same token, so a
/// rerun's PutSecretValue is idempotent.
const TOKEN_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b1f_0c2e_8a4d_4e0b_9c51_2d7a_0f3e_11a4);

impl Adopter {
    /// The steps of the table at the top, in order. Each is done, or finds itself done.
    pub(super) async fn run(
        &self,
        s: &Start<'_>,
        mut i: Inspection,
        lease: &Flags,
        out: &mut Adoption,
    ) -> Result<(), AdoptError> {
        keep(lease)?;
        let (clone_arn, clone_creds) = self.clone_secret(s, &i, out).await?;
        failpoint::hit("after:adopt.clone_secret").await;
        keep(lease)?;
        self.clone_user(s, &mut i, &clone_creds, out).await?;
        failpoint::hit("after:adopt.clone_user").await;
        keep(lease)?;
        let user_arn = self.user_secret(s, &i, out).await?;
        failpoint::hit("after:adopt.user_secret").await;
        keep(lease)?;
        self.app_secret(s, &user_arn, &clone_arn, out).await?;
        failpoint::hit("after:adopt.app_secret").await;
        out.attach = attach(s, &i, out, user_arn, clone_arn);
        Ok(())
    }

    /// Step 1: the clone's proxy secret holds its password before the database does, so the
    /// password is never only in the database. Its ARN and the credentials it holds.
    async fn clone_secret(
        &self,
        s: &Start<'_>,
        i: &Inspection,
        out: &mut Adoption,
    ) -> Result<(String, Credentials), AdoptError> {
        if let Some(found) = &i.clone_secret {
            return Ok((found.arn.clone(), found.secret.credentials.clone()));
        }
        let password = self.new_password(s.app.engine, &i.rules)?;
        let creds = Credentials::new(&s.clone, password);
        let created = self
            .create_proxy_secret(&i.clone_secret_name, &creds, &s.meta)
            .await?;
        out.changed = true;
        if let Some(arn) = created {
            return Ok((arn, creds));
        }
        // Another run created it a moment before: its password is the one.
        let stored = self
            .find_for(&i.clone_secret_name, &s.clone)
            .await?
            .ok_or_else(|| {
                AdoptError::Invalid(format!(
                    "{} vanished after it was created",
                    i.clone_secret_name
                ))
            })?;
        Ok((stored.arn, stored.secret.credentials))
    }

    /// Step 2: the clone with the original's rights, logging in with its secret's password.
    async fn clone_user(
        &self,
        s: &Start<'_>,
        i: &mut Inspection,
        creds: &Credentials,
        out: &mut Adoption,
    ) -> Result<(), AdoptError> {
        let (db, engine) = (&self.rotator.db, s.app.engine);
        if matches!(
            i.plan.state,
            CloneState::Absent | CloneState::Partial { .. }
        ) {
            i.session.apply(&i.plan, &creds.password).await?;
            out.changed = true;
        }
        match db.check_login(engine, &s.at, creds).await {
            Ok(()) => Ok(()),
            Err(DbError::LoginRejected(_)) => {
                // A clone that existed (made by hand, or a crashed run's MySQL accounts, which
                // `IF NOT EXISTS` left alone): it takes the secret's password, on every account.
                // Claimed again just before: a rotation of another secret may have come since.
                self.claim(s, &s.clone).await?;
                let master = &s.master.secret.credentials;
                db.set_password(engine, &s.at, master, &s.clone, &creds.password)
                    .await?;
                db.check_login(engine, &s.at, creds).await?;
                out.changed = true;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Step 3: the original user's proxy secret, with the application's password. Its ARN.
    async fn user_secret(
        &self,
        s: &Start<'_>,
        i: &Inspection,
        out: &mut Adoption,
    ) -> Result<String, AdoptError> {
        match &i.user_secret {
            UserSecretPlan::Reuse(arn) => Ok(arn.clone()),
            UserSecretPlan::Update(found) => {
                let arn = &found.arn;
                let value = found
                    .secret
                    .render_with_password(&s.app.credentials.password);
                let token = token(&[arn, &s.current_version, "user_secret"]);
                self.rotator
                    .secrets
                    .put(arn, &token, &value, Stage::Current)
                    .await?;
                out.changed = true;
                Ok(arn.clone())
            }
            UserSecretPlan::Create => {
                let created = self
                    .create_proxy_secret(&i.user_secret_name, &s.app.credentials, &s.meta)
                    .await?;
                out.changed = true;
                if let Some(arn) = created {
                    return Ok(arn);
                }
                self.find_for(&i.user_secret_name, s.user())
                    .await?
                    .map(|f| f.arn)
                    .ok_or_else(|| {
                        AdoptError::Invalid(format!(
                            "{} vanished after it was created",
                            i.user_secret_name
                        ))
                    })
            }
        }
    }

    /// Step 4: the application secret lists both users and their proxy secrets. Its token
    /// follows from its inputs, so a rerun's PutSecretValue is the same request.
    async fn app_secret(
        &self,
        s: &Start<'_>,
        user_arn: &str,
        clone_arn: &str,
        out: &mut Adoption,
    ) -> Result<(), AdoptError> {
        let users = [s.user().to_owned(), s.clone.clone()];
        let ids = [user_arn.to_owned(), clone_arn.to_owned()];
        let master_key = s
            .app
            .master_secret_id
            .is_none()
            .then_some(s.master.arn.as_str());
        let proxy_key = out.proxy.as_deref().filter(|_| s.app.proxy_name.is_none());
        let value = s.app.render_adopted(&users, &ids, master_key, proxy_key);
        let token = token(&[
            &out.secret,
            &s.current_version,
            &users.join(","),
            &ids.join(","),
            master_key.unwrap_or(""),
            proxy_key.unwrap_or(""),
        ]);
        self.write_app_secret(&out.secret, &s.current_version, &token, &value)
            .await?;
        out.changed = true;
        Ok(())
    }

    pub(super) fn new_password(
        &self,
        engine: Engine,
        rules: &PasswordRules,
    ) -> Result<SecretString, AdoptError> {
        self.rotator
            .settings
            .password
            .generate_for(engine, rules)
            .map_err(|e| AdoptError::Invalid(e.to_string()))
    }

    /// The new version becomes AWSCURRENT only if AWSCURRENT is still the version adoption
    /// read (RemoveFromVersionId): an edit made meanwhile is not overwritten.
    async fn write_app_secret(
        &self,
        arn: &str,
        from: &str,
        token: &str,
        value: &SecretString,
    ) -> Result<(), AdoptError> {
        let secrets = &self.rotator.secrets;
        secrets.put(arn, token, value, Stage::Staged).await?;
        if let Err(e) = secrets.move_stage(arn, Stage::Current, token, from).await {
            let meta = secrets.describe(arn).await?;
            if meta.version_with(Stage::Current) != Some(token) {
                return Err(match e {
                    SecretStoreError::Refused(_) => AdoptError::Invalid(format!(
                        "AWSCURRENT of {arn} changed during adoption; run adopt again"
                    )),
                    e => e.into(),
                });
            }
        }
        secrets.remove_stage(arn, Stage::Staged, token).await?;
        Ok(())
    }
}

/// Between steps: a lease that may be someone else's now stops the run (a rerun goes on).
fn keep(lease: &Flags) -> Result<(), AdoptError> {
    if lease.may_be_lost() {
        return Err(AdoptError::LeaseLost);
    }
    Ok(())
}

/// A dry run's attach call: the secrets it would create are named, not yet ARNs.
pub(super) fn attach_plan(s: &Start<'_>, i: &Inspection, out: &Adoption) -> report::Attach {
    let user_arn = match &i.user_secret {
        UserSecretPlan::Reuse(a) | UserSecretPlan::Update(Found { arn: a, .. }) => a.clone(),
        UserSecretPlan::Create => format!("<ARN of {}>", i.user_secret_name),
    };
    let clone_arn = i
        .clone_secret
        .as_ref()
        .map(|f| f.arn.clone())
        .unwrap_or_else(|| format!("<ARN of {}>", i.clone_secret_name));
    attach(s, i, out, user_arn, clone_arn)
}

/// How to give RDS Proxy both proxy secrets.
fn attach(
    s: &Start<'_>,
    i: &Inspection,
    out: &Adoption,
    user_arn: String,
    clone_arn: String,
) -> report::Attach {
    report::attach(
        out.proxy.as_deref(),
        i.auth.as_deref(),
        &[
            (s.user().to_owned(), user_arn),
            (s.clone.clone(), clone_arn),
        ],
        s.app.engine,
        &out.secret,
    )
}

fn token(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(&TOKEN_NAMESPACE, parts.join("\n").as_bytes()).to_string()
}
