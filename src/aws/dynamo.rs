//! `RecordStore` over DynamoDB: one item per secret holds the lease and the step record, so one
//! conditional write does both. Every write under a lease is conditional on its fence.
//!
//! Item layout (key `secret_arn`, a string; the table's only key, owned by `setup`):
//! `lease_owner` S (absent: the lease is free), `fence` N, `lease_beat` N (renewals),
//! `lease_ms` N (the holder's lease period), `lease_expires_at` N (ms, by the holder's clock: a
//! hint, never compared with another clock), `last_success_at` N (ms; it outlives rotations),
//! and `record` M: the current (or last) rotation's step record. One map, written whole: a save
//! is one small update expression however many fields changed.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use tracing::info;

use super::failure;
use crate::rotation::clock::{Clock, SystemClock};
use crate::rotation::ports::{
    Acquired, Claimed, Lease, LeaseSeen, RecordStore, RecordStoreError, UserClaim,
};
use crate::rotation::record::{BeginIf, State, Step, StepRecord};

/// The table's partition key. Changing it is a breaking change (see RELEASING.md).
pub const KEY: &str = "secret_arn";

type Item = HashMap<String, AttributeValue>;

#[derive(Clone)]
pub struct DynamoRecords {
    client: Client,
    table: String,
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

/// A conditional write whose refusal means there was nothing to do (the condition names what
/// it would change): refused is done.
fn refused_is_done<T>(
    result: Result<
        T,
        aws_sdk_dynamodb::error::SdkError<
            UpdateItemError,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    >,
) -> Result<(), RecordStoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_condition_failure(&e) => Ok(()),
        Err(e) => Err(map_err(e)),
    }
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

/// The item's step record: its `record` map, and the secret's `last_success_at`.
fn record_from(item: &Item) -> Result<Option<StepRecord>, RecordStoreError> {
    let Some(map) = item.get(RECORD) else {
        return Ok(None); // only a lease so far
    };
    let corrupt = RecordStoreError::Corrupt;
    let m = map
        .as_m()
        .map_err(|_| corrupt(format!("`{RECORD}` is not a map")))?;
    Ok(Some(StepRecord {
        secret_id: get_s(item, KEY).ok_or_else(|| corrupt("no key".into()))?,
        rotation_id: get_s(m, "rotation_id"),
        state: get_s(m, "state")
            .unwrap_or_default()
            .parse::<State>()
            .map_err(corrupt)?,
        step: get_s(m, "step")
            .unwrap_or_default()
            .parse::<Step>()
            .map_err(corrupt)?,
        current_version: get_s(m, "current_version"),
        current_user: get_s(m, "current_user"),
        target_user: get_s(m, "target_user"),
        proxy_secret_id: get_s(m, "proxy_secret_id"),
        proxy_version: get_s(m, "proxy_version"),
        unfinished_versions: m
            .get("unfinished_versions")
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
            .unwrap_or_default(),
        pending_left: get_s(m, "pending_left"),
        request_id: get_s(m, "request_id"),
        reason: get_s(m, "reason"),
        attempts: get_n(m, "attempts").unwrap_or(0) as u32,
        last_error: get_s(m, "last_error"),
        in_use: get_s(m, "in_use"),
        database_login_seen: m
            .get("database_login_seen")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        started_at: get_n(m, "started_at"),
        updated_at: get_n(m, "updated_at"),
        finished_at: get_n(m, "finished_at"),
        last_success_at: get_n(item, LAST_SUCCESS),
        marked: item
            .get(MARKED)
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
        calls: m
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

/// The `record` map (without `last_success_at`, which lives beside it). Absent fields are left
/// out.
fn record_map(r: &StepRecord) -> AttributeValue {
    let opt_s = |v: &Option<String>| v.as_deref().map(s);
    let fields = [
        ("rotation_id", opt_s(&r.rotation_id)),
        ("state", Some(s(r.state.as_str()))),
        ("step", Some(s(r.step.as_str()))),
        ("current_version", opt_s(&r.current_version)),
        ("current_user", opt_s(&r.current_user)),
        ("target_user", opt_s(&r.target_user)),
        ("proxy_secret_id", opt_s(&r.proxy_secret_id)),
        ("proxy_version", opt_s(&r.proxy_version)),
        (
            "unfinished_versions",
            (!r.unfinished_versions.is_empty())
                .then(|| AttributeValue::L(r.unfinished_versions.iter().map(|v| s(v)).collect())),
        ),
        ("pending_left", opt_s(&r.pending_left)),
        ("request_id", opt_s(&r.request_id)),
        ("reason", opt_s(&r.reason)),
        ("attempts", Some(n(u64::from(r.attempts)))),
        ("last_error", opt_s(&r.last_error)),
        ("in_use", opt_s(&r.in_use)),
        (
            "database_login_seen",
            r.database_login_seen.then_some(AttributeValue::Bool(true)),
        ),
        ("started_at", r.started_at.map(n)),
        ("updated_at", r.updated_at.map(n)),
        ("finished_at", r.finished_at.map(n)),
        (
            "calls",
            (!r.calls.is_empty()).then(|| {
                AttributeValue::M(r.calls.iter().map(|(k, v)| (k.clone(), n(*v))).collect())
            }),
        ),
    ];
    AttributeValue::M(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
    )
}

/// The attribute holding the step record, and the one holding the last success.
const RECORD: &str = "record";
const LAST_SUCCESS: &str = "last_success_at";

/// The lease is free: never taken, released, or ours already (a retry of our own acquisition
/// whose answer was lost). An expiry is never compared with this machine's clock: see
/// `TAKE_OVER`.
const LEASE_FREE: &str = "attribute_not_exists(lease_owner) OR lease_owner = :owner";

/// The lease is still exactly as the taker watched it for a whole period (`LeaseSeen`): its
/// holder neither renewed nor released it.
const TAKE_OVER: &str = "(lease_owner = :seen_owner AND fence = :seen_fence \
     AND lease_expires_at = :seen_exp \
     AND (attribute_not_exists(lease_beat) OR lease_beat = :seen_beat))";

/// [`LEASE_FREE`], read from an item.
fn lease_free(item: &Item, owner: &str) -> bool {
    get_s(item, "lease_owner").is_none_or(|o| o == owner)
}

fn held(item: &Item, ttl: Duration) -> Acquired {
    Acquired::Held {
        seen: LeaseSeen {
            owner: get_s(item, "lease_owner").unwrap_or_else(|| "unknown".into()),
            fence: get_n(item, "fence").unwrap_or(0),
            expires_hint_ms: get_n(item, "lease_expires_at").unwrap_or(0),
            beat: get_n(item, "lease_beat").unwrap_or(0),
            // Written by a binary before `lease_ms`: assume ours.
            ttl: get_n(item, "lease_ms").map_or(ttl, Duration::from_millis),
        },
        // Only a hint for skipping copies: one this binary cannot read (written by a newer one,
        // say) is no reason to fail.
        record: record_from(item).ok().flatten().map(Box::new),
    }
}

impl DynamoRecords {
    /// The lease just granted, and the record in the item as it now stands.
    /// Takes `value` out of the string set `attr` of item `key`. No such item: nothing to do
    /// (a DELETE would create an empty one).
    async fn delete_from_set(
        &self,
        key: &str,
        attr: &str,
        value: &str,
    ) -> Result<(), RecordStoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .update_expression(format!("DELETE {attr} :v"))
            .condition_expression("attribute_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .expression_attribute_values(":v", AttributeValue::Ss(vec![value.to_owned()]))
            .send()
            .await;
        refused_is_done(result)
    }

    fn granted(
        key: &str,
        owner: &str,
        sent_at: tokio::time::Instant,
        item: &Item,
    ) -> Result<(Lease, Option<StepRecord>), RecordStoreError> {
        let fence =
            get_n(item, "fence").ok_or_else(|| RecordStoreError::Corrupt("no fence".into()))?;
        let lease = Lease {
            key: key.to_owned(),
            owner: owner.to_owned(),
            fence,
            sent_at,
        };
        Ok((lease, record_from(item)?))
    }

    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
            table: table.into(),
        }
    }

    /// One conditional write of the whole record, and the release when asked.
    async fn write(
        &self,
        lease: &Lease,
        record: &StepRecord,
        release: bool,
    ) -> Result<(), RecordStoreError> {
        let mut sets = vec!["#r = :r".to_owned()];
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&lease.key))
            .condition_expression("fence = :fence")
            .expression_attribute_names("#r", RECORD)
            .expression_attribute_values(":r", record_map(record))
            .expression_attribute_values(":fence", n(lease.fence));
        if let Some(at) = record.last_success_at {
            sets.push(format!("{LAST_SUCCESS} = :ls"));
            req = req.expression_attribute_values(":ls", n(at));
        }
        let mut update = String::new();
        if release {
            sets.push("lease_expires_at = :zero".to_owned());
            req = req.expression_attribute_values(":zero", n(0));
            update = " REMOVE lease_owner".to_owned();
        }
        // Added to, never replaced: a write of an older copy of the record keeps every mark.
        if !record.marked.is_empty() {
            update.push_str(&format!(" ADD {MARKED} :mk"));
            req = req.expression_attribute_values(":mk", AttributeValue::Ss(record.marked.clone()));
        }
        update.insert_str(0, &format!("SET {}", sets.join(", ")));
        req.update_expression(update).send().await.map_err(|e| {
            if is_condition_failure(&e) {
                RecordStoreError::Fenced(lease.fence)
            } else {
                map_err(e)
            }
        })?;
        Ok(())
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

    /// The item as a refused conditional write found it: the refusal carries it
    /// (ReturnValuesOnConditionCheckFailure), or it is read when it does not.
    async fn refused_item(
        &self,
        key: &str,
        err: aws_sdk_dynamodb::error::SdkError<
            UpdateItemError,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    ) -> Result<Item, RecordStoreError> {
        let returned = match err.into_service_error() {
            UpdateItemError::ConditionalCheckFailedException(e) => e.item,
            _ => None,
        };
        match returned {
            Some(item) => Ok(item),
            None => Ok(self.item(key).await?.unwrap_or_default()),
        }
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
        take_over: Option<&LeaseSeen>,
    ) -> Result<Acquired, RecordStoreError> {
        let sent = tokio::time::Instant::now();
        let expires = SystemClock.now_ms() + ttl.as_millis() as u64;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .update_expression(
                "SET lease_owner = :owner, lease_expires_at = :exp, lease_ms = :ttl, lease_beat = :zero ADD fence :one",
            )
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":ttl", n(ttl.as_millis() as u64))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1));
        let cond = match take_over {
            None => LEASE_FREE.to_owned(),
            Some(seen) => {
                req = req
                    .expression_attribute_values(":seen_owner", s(&seen.owner))
                    .expression_attribute_values(":seen_fence", n(seen.fence))
                    .expression_attribute_values(":seen_exp", n(seen.expires_hint_ms))
                    .expression_attribute_values(":seen_beat", n(seen.beat));
                format!("{LEASE_FREE} OR {TAKE_OVER}")
            }
        };
        let result = req
            .condition_expression(cond)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                let (lease, record) = Self::granted(key, owner, sent, &item)?;
                Ok(Acquired::Granted {
                    lease,
                    record: record.map(Box::new),
                })
            }
            Err(e) if is_condition_failure(&e) => Ok(held(&self.refused_item(key, e).await?, ttl)),
            Err(e) => Err(map_err(e)),
        }
    }

    /// One UpdateItem: the lease, and the record if `cond` holds (see `BeginIf` for the rules,
    /// written here as a condition expression). Refused, the item comes back with the refusal:
    /// `Held` or `NotBegun`, with no other call.
    async fn begin(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        record: &StepRecord,
        cond: &BeginIf,
    ) -> Result<Acquired, RecordStoreError> {
        let sent = tokio::time::Instant::now();
        let expires = SystemClock.now_ms() + ttl.as_millis() as u64;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .update_expression(
                "SET lease_owner = :owner, lease_expires_at = :exp, lease_ms = :ttl, lease_beat = :zero, #r = :r ADD fence :one",
            )
            .expression_attribute_values(":ttl", n(ttl.as_millis() as u64))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_names("#r", RECORD)
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#rid", "rotation_id")
            .expression_attribute_names("#unf", "unfinished_versions")
            .expression_attribute_values(":r", record_map(record))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":in_progress", s(State::InProgress.as_str()))
            .expression_attribute_values(":cv", s(&cond.current_version));
        // The lease free (a retry of our own begin is refused here, and let in by `acquire`
        // below), and no record yet, or one that is not in progress, of the AWSCURRENT read (or
        // of no rotation), of another request, and old enough. (A comparison with a missing
        // attribute is false, so each optional one is tested for existence first.)
        let mut allowed = "attribute_not_exists(#r) OR (#r.#st <> :in_progress \
                           AND (attribute_not_exists(#r.#rid) OR #r.#rid = :cv) \
                           AND attribute_not_exists(#r.#unf)"
            .to_owned();
        if let Some(id) = &cond.request_id {
            allowed.push_str(" AND (attribute_not_exists(#r.#req) OR #r.#req <> :req)");
            req = req
                .expression_attribute_names("#req", "request_id")
                .expression_attribute_values(":req", s(id));
        }
        if let Some(by) = cond.last_success_by {
            allowed.push_str(&format!(
                " AND (attribute_not_exists({LAST_SUCCESS}) OR {LAST_SUCCESS} <= :by)"
            ));
            req = req.expression_attribute_values(":by", n(by));
        }
        allowed.push(')');
        let result = req
            .condition_expression(format!("attribute_not_exists(lease_owner) AND ({allowed})"))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                let (lease, stored) = Self::granted(key, owner, sent, &item)?;
                let stored = stored
                    .ok_or_else(|| RecordStoreError::Corrupt("the record was not stored".into()))?;
                Ok(Acquired::Begun {
                    lease,
                    record: Box::new(stored),
                })
            }
            Err(e) if is_condition_failure(&e) => {
                let item = self.refused_item(key, e).await?;
                if lease_free(&item, owner) {
                    Ok(Acquired::NotBegun {
                        record: record_from(&item).ok().flatten().map(Box::new),
                    })
                } else {
                    Ok(held(&item, ttl))
                }
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), RecordStoreError> {
        let expires = SystemClock.now_ms() + ttl.as_millis() as u64;
        self.client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(&lease.key))
            // A new beat, whatever this machine's clock did: a taker sees the change.
            .update_expression("SET lease_expires_at = :exp, lease_ms = :ttl ADD lease_beat :one")
            .condition_expression("fence = :fence AND lease_owner = :owner")
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":ttl", n(ttl.as_millis() as u64))
            .expression_attribute_values(":one", n(1))
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
        Ok(())
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
        // Refused: someone else holds it now, nothing of ours to release.
        refused_is_done(result)
    }

    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError> {
        match self.item(key).await? {
            Some(item) => record_from(&item),
            None => Ok(None),
        }
    }

    /// The claim is an item of its own in the same table, keyed by the user (secret ARNs and
    /// user keys never collide: see `user_key`). Refused, the holder comes back with the
    /// refusal.
    async fn claim_user(
        &self,
        user_key: &str,
        claim: &UserClaim,
        replacing: Option<&UserClaim>,
    ) -> Result<Claimed, RecordStoreError> {
        let mut cond = "attribute_not_exists(claim_secret) OR claim_secret = :secret".to_owned();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(user_key))
            .update_expression("SET claim_secret = :secret, claim_rotation = :rotation")
            .expression_attribute_values(":secret", s(&claim.secret))
            .expression_attribute_values(":rotation", s(&claim.rotation_id));
        if let Some(old) = replacing {
            cond.push_str(" OR (claim_secret = :old_secret AND claim_rotation = :old_rotation)");
            req = req
                .expression_attribute_values(":old_secret", s(&old.secret))
                .expression_attribute_values(":old_rotation", s(&old.rotation_id));
        }
        let result = req
            .condition_expression(cond)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Claimed::Ours {
                in_use_by: out
                    .attributes
                    .as_ref()
                    .and_then(|item| item.get(IN_USE_BY))
                    .and_then(|v| v.as_ss().ok())
                    .cloned()
                    .unwrap_or_default(),
            }),
            Err(e) if is_condition_failure(&e) => {
                let item = self.refused_item(user_key, e).await?;
                match (get_s(&item, "claim_secret"), get_s(&item, "claim_rotation")) {
                    (Some(secret), Some(rotation_id)) => Ok(Claimed::HeldBy(UserClaim {
                        secret,
                        rotation_id,
                    })),
                    _ => Err(RecordStoreError::Corrupt(format!(
                        "the claim on {user_key} was refused but names no holder"
                    ))),
                }
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn mark_in_use(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(user_key))
            .update_expression(format!("ADD {IN_USE_BY} :s"))
            .expression_attribute_values(":s", AttributeValue::Ss(vec![secret.to_owned()]))
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn unmark(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        self.delete_from_set(user_key, IN_USE_BY, secret).await?;
        // And from the secret's memory of its marks, so that it marks the user again should it
        // come back (a secret restored from deletion).
        self.delete_from_set(secret, MARKED, user_key).await
    }

    async fn user_marks(
        &self,
        user_key: &str,
    ) -> Result<(Option<UserClaim>, Vec<String>), RecordStoreError> {
        let Some(item) = self.item(user_key).await? else {
            return Ok((None, Vec::new()));
        };
        let claim = match (get_s(&item, "claim_secret"), get_s(&item, "claim_rotation")) {
            (Some(secret), Some(rotation_id)) => Some(UserClaim {
                secret,
                rotation_id,
            }),
            _ => None,
        };
        let marks = item
            .get(IN_USE_BY)
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        Ok((claim, marks))
    }

    /// A scan of the table for the user items that name `secret` (an operator's command, not a
    /// rotation's: it reads the whole table once), then one conditional write per item.
    async fn forget(&self, secret: &str) -> Result<Vec<String>, RecordStoreError> {
        let mut keys = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression(format!(
                    "begins_with(#k, :dbuser) AND (claim_secret = :s OR contains({IN_USE_BY}, :s))"
                ))
                .expression_attribute_names("#k", KEY)
                .expression_attribute_values(":dbuser", s("dbuser:"))
                .expression_attribute_values(":s", s(secret))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(map_err)?;
            keys.extend(out.items().iter().filter_map(|i| get_s(i, KEY)));
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        for key in &keys {
            // Not `unmark`: the secret's memory of its marks goes once, below.
            self.delete_from_set(key, IN_USE_BY, secret).await?;
            let cleared = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(KEY, s(key))
                .update_expression("REMOVE claim_secret, claim_rotation")
                .condition_expression("claim_secret = :s")
                .expression_attribute_values(":s", s(secret))
                .send()
                .await;
            // Refused: the claim is another secret's.
            refused_is_done(cleared)?;
        }
        // Its rotations mark their users again.
        let remembered = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(secret))
            .update_expression(format!("REMOVE {MARKED}"))
            .condition_expression("attribute_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .send()
            .await;
        refused_is_done(remembered)?;
        Ok(keys)
    }
}

/// On a database user's claim item: the secrets that have that user in AWSCURRENT.
const IN_USE_BY: &str = "in_use_by";
/// On a secret's item, beside its record: the user items whose `in_use_by` names it
/// (`StepRecord::marked`).
const MARKED: &str = "users_marked";
