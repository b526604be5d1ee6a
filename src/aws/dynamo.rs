//! `RecordStore` over DynamoDB: one item per secret holds the lease and the step record, so one
//! conditional write does both. Every write under a lease is conditional on its fence.
//!
//! Item layout (key `secret_arn`, a string; the table's only key, owned by `setup`):
//! `lease_owner` S, `lease_expires_at` N (ms), `fence` N, and the record's fields as attributes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use tracing::info;

use super::failure;
use crate::rotation::ports::{Acquired, Lease, RecordStore, RecordStoreError};
use crate::rotation::record::{now_ms, State, Step, StepRecord};

/// The table's partition key. Changing it is a breaking change (see the README).
pub const KEY: &str = "secret_arn";

type Item = HashMap<String, AttributeValue>;
type Attrs = Vec<(&'static str, Option<AttributeValue>)>;

#[derive(Clone)]
pub struct DynamoRecords {
    client: Client,
    table: String,
    /// Per held lease (key, fence): the record attributes as the item holds them, known from the
    /// acquisition and from our own writes since. A save then writes only what changed, since
    /// nobody else may write the item while we hold the lease. Gone at release, on any error, and
    /// while a write is in flight.
    stored: Arc<Mutex<HashMap<String, (u64, Attrs)>>>,
}

fn map_err<E>(
    err: aws_sdk_dynamodb::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> RecordStoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = failure(&err);
    if f.transient {
        RecordStoreError::Unavailable(f.message)
    } else {
        RecordStoreError::Misconfigured(f.message)
    }
}

fn is_condition_failure<E>(
    err: &aws_sdk_dynamodb::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    failure(err).code.as_deref() == Some("ConditionalCheckFailedException")
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &Item, k: &str) -> Option<u64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn record_from(item: &Item) -> Result<Option<StepRecord>, RecordStoreError> {
    let Some(state) = get_s(item, "state") else {
        return Ok(None); // only a lease so far
    };
    let corrupt = RecordStoreError::Corrupt;
    Ok(Some(StepRecord {
        secret_id: get_s(item, KEY).ok_or_else(|| corrupt("no key".into()))?,
        rotation_id: get_s(item, "rotation_id"),
        state: state.parse::<State>().map_err(corrupt)?,
        step: get_s(item, "step")
            .unwrap_or_default()
            .parse::<Step>()
            .map_err(corrupt)?,
        current_version: get_s(item, "current_version"),
        current_user: get_s(item, "current_user"),
        target_user: get_s(item, "target_user"),
        proxy_secret_id: get_s(item, "proxy_secret_id"),
        request_id: get_s(item, "request_id"),
        reason: get_s(item, "reason"),
        attempts: get_n(item, "attempts").unwrap_or(0) as u32,
        last_error: get_s(item, "last_error"),
        started_at: get_n(item, "started_at"),
        updated_at: get_n(item, "updated_at"),
        finished_at: get_n(item, "finished_at"),
        last_success_at: get_n(item, "last_success_at"),
        calls: item
            .get("calls")
            .and_then(|v| v.as_m().ok())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_n().ok()?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default(),
    }))
}

/// The record's attributes: (name, Some(value)) to set, (name, None) to remove.
fn record_attrs(r: &StepRecord) -> Attrs {
    let opt_s = |v: &Option<String>| v.as_deref().map(s);
    let opt_n = |v: Option<u64>| v.map(n);
    vec![
        ("rotation_id", opt_s(&r.rotation_id)),
        ("state", Some(s(r.state.as_str()))),
        ("step", Some(s(r.step.as_str()))),
        ("current_version", opt_s(&r.current_version)),
        ("current_user", opt_s(&r.current_user)),
        ("target_user", opt_s(&r.target_user)),
        ("proxy_secret_id", opt_s(&r.proxy_secret_id)),
        ("request_id", opt_s(&r.request_id)),
        ("reason", opt_s(&r.reason)),
        ("attempts", Some(n(u64::from(r.attempts)))),
        ("last_error", opt_s(&r.last_error)),
        ("started_at", opt_n(r.started_at)),
        ("updated_at", opt_n(r.updated_at)),
        ("finished_at", opt_n(r.finished_at)),
        ("last_success_at", opt_n(r.last_success_at)),
        (
            "calls",
            (!r.calls.is_empty()).then(|| {
                AttributeValue::M(r.calls.iter().map(|(k, v)| (k.clone(), n(*v))).collect())
            }),
        ),
    ]
}

impl DynamoRecords {
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
            table: table.into(),
            stored: Arc::default(),
        }
    }

    fn forget(&self, lease: &Lease) {
        self.stored.lock().expect("stored lock").remove(&lease.key);
    }

    /// One conditional write of the record's changed attributes, and the release when asked.
    async fn write(
        &self,
        lease: &Lease,
        record: &StepRecord,
        release: bool,
    ) -> Result<(), RecordStoreError> {
        let attrs = record_attrs(record);
        // Taken out while the write is in flight: if it is cancelled half-way (it may still
        // land), the next write must send everything.
        let changed: Attrs = {
            let mut stored = self.stored.lock().expect("stored lock");
            match stored.remove(&lease.key).as_ref() {
                Some((fence, old)) if *fence == lease.fence => attrs
                    .iter()
                    .zip(old)
                    .filter(|(new, old)| new.1 != old.1)
                    .map(|(new, _)| new.clone())
                    .collect(),
                _ => attrs.clone(),
            }
        };
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&lease.key))
            .condition_expression("fence = :fence")
            .expression_attribute_values(":fence", n(lease.fence));
        for (i, (name, value)) in changed.into_iter().enumerate() {
            // Attribute names go through placeholders: `state` and `step` are reserved words.
            req = req.expression_attribute_names(format!("#a{i}"), name);
            match value {
                Some(v) => {
                    sets.push(format!("#a{i} = :v{i}"));
                    req = req.expression_attribute_values(format!(":v{i}"), v);
                }
                None => removes.push(format!("#a{i}")),
            }
        }
        if release {
            sets.push("lease_expires_at = :zero".to_owned());
            removes.push("lease_owner".to_owned());
            req = req.expression_attribute_values(":zero", n(0));
        }
        // Nothing changed (and no release): the fence check alone still says whether we hold it.
        if sets.is_empty() {
            sets.push("fence = :fence".to_owned());
        }
        let mut expr = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expr.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let result = req.update_expression(expr).send().await;
        let mut stored = self.stored.lock().expect("stored lock");
        match result {
            Ok(_) if !release => {
                stored.insert(lease.key.clone(), (lease.fence, attrs));
                Ok(())
            }
            Ok(_) => Ok(()),
            // It may or may not have been applied: everything is written next time.
            Err(e) => Err(if is_condition_failure(&e) {
                RecordStoreError::Fenced(lease.fence)
            } else {
                map_err(e)
            }),
        }
    }

    /// Creates the table if it does not exist and waits until it is active. Idempotent.
    pub async fn setup(&self) -> Result<bool, RecordStoreError> {
        let created = match self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("complete"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("complete"),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) if failure(&e).code.as_deref() == Some("ResourceInUseException") => false,
            Err(e) => return Err(map_err(e)),
        };
        for _ in 0..120 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(map_err)?;
            let table = out.table();
            let key_ok = table.map(|t| t.key_schema()).is_some_and(|ks| {
                ks.len() == 1 && ks[0].attribute_name() == KEY && ks[0].key_type() == &KeyType::Hash
            });
            if !key_ok {
                return Err(RecordStoreError::Misconfigured(format!(
                    "table {} exists but its key is not `{KEY}` (string, hash)",
                    self.table
                )));
            }
            if table.and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                info!(table = %self.table, created, "state table ready");
                return Ok(created);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(RecordStoreError::Unavailable(format!(
            "table {} did not become active",
            self.table
        )))
    }

    async fn item(&self, key: &str) -> Result<Option<Item>, RecordStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(map_err)?;
        Ok(out.item)
    }
}

#[async_trait]
impl RecordStore for DynamoRecords {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Acquired, RecordStoreError> {
        let now = now_ms();
        let expires = now + ttl.as_millis() as u64;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .update_expression("SET lease_owner = :owner, lease_expires_at = :exp ADD fence :one")
            // `lease_owner = :owner`: a retry of our own acquisition whose answer was lost.
            .condition_expression(
                "attribute_not_exists(lease_expires_at) OR lease_expires_at < :now OR lease_owner = :owner",
            )
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                let fence = get_n(&item, "fence")
                    .ok_or_else(|| RecordStoreError::Corrupt("no fence".into()))?;
                let record = record_from(&item)?;
                {
                    let mut stored = self.stored.lock().expect("stored lock");
                    match &record {
                        Some(r) => {
                            stored.insert(key.to_owned(), (fence, record_attrs(r)));
                        }
                        None => {
                            stored.remove(key);
                        }
                    }
                }
                Ok(Acquired::Granted {
                    lease: Lease {
                        key: key.to_owned(),
                        owner: owner.to_owned(),
                        fence,
                        expires_at_ms: expires,
                    },
                    record: record.map(Box::new),
                })
            }
            Err(e) if is_condition_failure(&e) => {
                let item = self.item(key).await?.unwrap_or_default();
                Ok(Acquired::Held {
                    owner: get_s(&item, "lease_owner").unwrap_or_else(|| "unknown".into()),
                    expires_at_ms: get_n(&item, "lease_expires_at").unwrap_or(now),
                    // Only a hint for skipping copies: one this binary cannot read (written by a
                    // newer one, say) is no reason to fail.
                    record: record_from(&item).ok().flatten().map(Box::new),
                })
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<u64, RecordStoreError> {
        let expires = now_ms() + ttl.as_millis() as u64;
        self.client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&lease.key))
            .update_expression("SET lease_expires_at = :exp")
            .condition_expression("fence = :fence AND lease_owner = :owner")
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":fence", n(lease.fence))
            .expression_attribute_values(":owner", s(&lease.owner))
            .send()
            .await
            .map_err(|e| {
                if is_condition_failure(&e) {
                    RecordStoreError::Fenced(lease.fence)
                } else {
                    map_err(e)
                }
            })?;
        Ok(expires)
    }

    async fn save(&self, lease: &Lease, record: &StepRecord) -> Result<(), RecordStoreError> {
        self.write(lease, record, false).await
    }

    async fn save_and_release(
        &self,
        lease: &Lease,
        record: &StepRecord,
    ) -> Result<(), RecordStoreError> {
        self.write(lease, record, true).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), RecordStoreError> {
        self.forget(lease);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&lease.key))
            .update_expression("SET lease_expires_at = :zero REMOVE lease_owner")
            .condition_expression("fence = :fence")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":fence", n(lease.fence))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Someone else holds it now: nothing of ours to release.
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError> {
        match self.item(key).await? {
            Some(item) => record_from(&item),
            None => Ok(None),
        }
    }
}
