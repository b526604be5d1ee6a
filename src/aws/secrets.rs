//! `SecretStore` over AWS Secrets Manager.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use secrecy::{ExposeSecret, SecretString};

use super::failure;
use crate::ratelimit::RateLimit;
use crate::rotation::ports::{At, SecretMeta, SecretStore, SecretStoreError, SecretVersion, Stage};

#[derive(Clone)]
pub struct SecretsManager {
    client: Client,
    /// Paces PutSecretValue and UpdateSecretVersionStage; shared by every clone.
    writes: Option<Arc<RateLimit>>,
}

impl SecretsManager {
    /// Limits this adapter's (and its clones') write calls; see [`RateLimit`].
    pub fn with_write_limit(mut self, limit: Arc<RateLimit>) -> Self {
        self.writes = Some(limit);
        self
    }

    async fn write_permit(&self) {
        if let Some(limit) = &self.writes {
            limit.acquire().await;
        }
    }

    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            writes: None,
            client: Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
        }
    }
}

fn map_err<E>(
    secret_id: &str,
    err: aws_sdk_secretsmanager::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> SecretStoreError
where
    E: aws_sdk_secretsmanager::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = failure(&err);
    match f.code.as_deref() {
        _ if f.transient => SecretStoreError::Unavailable(f.message),
        Some("ResourceNotFoundException") => SecretStoreError::NotFound(secret_id.to_owned()),
        Some("ResourceExistsException") => SecretStoreError::VersionExists(secret_id.to_owned()),
        Some("InvalidRequestException") => SecretStoreError::InvalidRequest(f.message),
        // KMS refusals (EncryptionFailure on a write, DecryptionFailure on a read) are a key
        // policy's deny, as final as IAM's.
        Some(
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "DecryptionFailure"
            | "EncryptionFailure",
        ) => SecretStoreError::Denied(f.message),
        _ => SecretStoreError::Refused(f.message),
    }
}

#[async_trait]
impl SecretStore for SecretsManager {
    async fn describe(&self, secret_id: &str) -> Result<SecretMeta, SecretStoreError> {
        let out = self
            .client
            .describe_secret()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| map_err(secret_id, e))?;
        let mut versions: Vec<(String, Vec<String>)> = out
            .version_ids_to_stages()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        versions.sort();
        Ok(SecretMeta {
            arn: out.arn().unwrap_or(secret_id).to_owned(),
            versions,
            rotation_enabled: out.rotation_enabled().unwrap_or(false),
            deleted: out.deleted_date().is_some(),
            rotation_lambda: out.rotation_lambda_arn().map(str::to_owned),
            name: out.name().unwrap_or(secret_id).to_owned(),
            kms_key_id: out.kms_key_id().map(str::to_owned),
            tags: out
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
                .collect(),
        })
    }

    async fn get(
        &self,
        secret_id: &str,
        at: At<'_>,
    ) -> Result<Option<SecretVersion>, SecretStoreError> {
        let req = self.client.get_secret_value().secret_id(secret_id);
        let req = match at {
            At::Stage(stage) => req.version_stage(stage.as_str()),
            At::Version(id) => req.version_id(id),
        };
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                return match map_err(secret_id, e) {
                    // The version, the label or the secret: `describe` tells which.
                    SecretStoreError::NotFound(_) => Ok(None),
                    e => Err(e),
                };
            }
        };
        let Some(value) = out.secret_string else {
            return Err(SecretStoreError::Binary(secret_id.to_owned()));
        };
        Ok(Some(SecretVersion {
            arn: out.arn.unwrap_or_else(|| secret_id.to_owned()),
            version_id: out.version_id.unwrap_or_default(),
            stages: out.version_stages.unwrap_or_default(),
            value: SecretString::from(value),
        }))
    }

    async fn put(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        stage: Stage,
    ) -> Result<(), SecretStoreError> {
        self.write_permit().await;
        self.client
            .put_secret_value()
            .secret_id(secret_id)
            .client_request_token(token)
            .secret_string(value.expose_secret())
            .version_stages(stage.as_str())
            .send()
            .await
            .map_err(|e| match map_err(secret_id, e) {
                SecretStoreError::VersionExists(_) => SecretStoreError::VersionExists(token.into()),
                e => e,
            })?;
        Ok(())
    }

    async fn move_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        to: &str,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        self.write_permit().await;
        self.client
            .update_secret_version_stage()
            .secret_id(secret_id)
            .version_stage(stage.as_str())
            .move_to_version_id(to)
            .remove_from_version_id(from)
            .send()
            .await
            .map_err(|e| map_err(secret_id, e))?;
        Ok(())
    }

    async fn remove_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        self.write_permit().await;
        self.client
            .update_secret_version_stage()
            .secret_id(secret_id)
            .version_stage(stage.as_str())
            .remove_from_version_id(from)
            .send()
            .await
            .map_err(|e| map_err(secret_id, e))?;
        Ok(())
    }
}

#[async_trait]
impl crate::worker::SecretDirectory for SecretsManager {
    async fn with_tag(&self, key: &str, value: &str) -> Result<Vec<String>, SecretStoreError> {
        use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
        let filter = |name, v: &str| Filter::builder().key(name).values(v).build();
        let mut pages = self
            .client
            .list_secrets()
            .filters(filter(FilterNameStringType::TagKey, key))
            .filters(filter(FilterNameStringType::TagValue, value))
            .into_paginator()
            .send();
        let mut arns = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err("ListSecrets", e))?;
            for s in page.secret_list() {
                // The two filters match independently (key on one tag, value on another), so
                // check the pair itself.
                let tagged = s
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(key) && t.value() == Some(value));
                // A proxy secret made by adopt carries its application secret's tags; it is
                // rotated with that secret, never by itself.
                let proxy_secret = s
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(crate::adopt::PROXY_SECRET_TAG));
                if let (true, false, Some(arn)) = (tagged, proxy_secret, s.arn()) {
                    arns.push(arn.to_owned());
                }
            }
        }
        arns.sort();
        Ok(arns)
    }
}

#[async_trait]
impl crate::adopt::ports::SecretCatalog for SecretsManager {
    async fn create(
        &self,
        secret: &crate::adopt::ports::NewSecret<'_>,
    ) -> Result<String, SecretStoreError> {
        use aws_sdk_secretsmanager::types::Tag;
        self.write_permit().await;
        let mut req = self
            .client
            .create_secret()
            .name(secret.name)
            .description(secret.description)
            .secret_string(secret.value.expose_secret());
        if let Some(key) = secret.kms_key_id {
            req = req.kms_key_id(key);
        }
        for (k, v) in secret.tags {
            req = req.tags(Tag::builder().key(k).value(v).build());
        }
        let out = req.send().await.map_err(|e| map_err(secret.name, e))?;
        Ok(out.arn.unwrap_or_else(|| secret.name.to_owned()))
    }
}
