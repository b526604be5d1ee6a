//! The AWS behaviours this project relies on, asserted against the local stack's moto. Stock moto
//! gets most of them wrong; `scripts/moto-shim.py` (on by default in `scripts/local-stack`) makes
//! moto answer like AWS. All but two of these tests fail when the stack runs stock moto
//! (`ROTATOR_MOTO_SHIM=0`); those two pin down what stock moto already does like AWS (the same
//! token with the same value, and `RemoveFromVersionId` naming a version without the label).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_smithy_types::error::display::DisplayErrorContext;
use tokio::sync::Barrier;

// --- DynamoDB: a conditional write is atomic for its item ---------------------------------------

/// Writers racing for one item in each round.
const WRITERS: usize = 24;
/// Rounds, each on a new item. Stock moto let more than one writer win in 17 % to 65 % of the
/// rounds in trial runs, so it passes all of them only rarely.
const ROUNDS: usize = 16;
/// Extra `attribute_not_exists` terms in the condition (see [`not_exists`]).
const EXTRA_TERMS: usize = 100;

async fn dynamo() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&common::aws().await)
}

/// A fresh table keyed by the string `pk`.
async fn table(db: &aws_sdk_dynamodb::Client) -> String {
    let name = format!("emu-{}", common::suffix());
    db.create_table()
        .table_name(&name)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("CreateTable on the local stack");
    name
}

/// "The item does not exist yet": `attribute_not_exists(pk)` and the same for attributes no item
/// here has, which DynamoDB evaluates like the first term alone. moto parses the condition again
/// between reading the item and writing it; the extra terms (the expression stays below
/// DynamoDB's 4 KB) make that gap long enough for stock moto's race to show in a few rounds. With
/// the bare term it showed in about one round in forty.
fn not_exists() -> (String, HashMap<String, String>) {
    let mut terms = vec!["attribute_not_exists(pk)".to_owned()];
    let mut names = HashMap::new();
    for i in 0..EXTRA_TERMS {
        terms.push(format!("attribute_not_exists(#a{i})"));
        names.insert(format!("#a{i}"), format!("absent{i}"));
    }
    let expression = terms.join(" AND ");
    assert!(expression.len() < 4096, "DynamoDB's expression limit");
    (expression, names)
}

#[derive(Clone, Copy)]
enum Write {
    Put,
    Update,
}

/// Runs [`ROUNDS`] rounds of [`WRITERS`] concurrent conditional writes that create one item, and
/// returns how many writers succeeded in each round. Any refusal other than the condition's fails.
async fn race(write: Write) -> Vec<usize> {
    let db = dynamo().await;
    let table = table(&db).await;
    let (condition, names) = not_exists();
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("item-{round}");
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let (db, table, key) = (db.clone(), table.clone(), key.clone());
            let (condition, names, barrier) = (condition.clone(), names.clone(), barrier.clone());
            tasks.spawn(async move {
                let who = AttributeValue::N(writer.to_string());
                barrier.wait().await;
                let result = match write {
                    Write::Put => db
                        .put_item()
                        .table_name(&table)
                        .item("pk", AttributeValue::S(key))
                        .item("who", who)
                        .condition_expression(condition)
                        .set_expression_attribute_names(Some(names))
                        .send()
                        .await
                        .map(drop)
                        .map_err(|e| {
                            (
                                e.code().map(str::to_owned),
                                DisplayErrorContext(&e).to_string(),
                            )
                        }),
                    Write::Update => db
                        .update_item()
                        .table_name(&table)
                        .key("pk", AttributeValue::S(key))
                        .update_expression("SET who = :who")
                        .expression_attribute_values(":who", who)
                        .condition_expression(condition)
                        .set_expression_attribute_names(Some(names))
                        .send()
                        .await
                        .map(drop)
                        .map_err(|e| {
                            (
                                e.code().map(str::to_owned),
                                DisplayErrorContext(&e).to_string(),
                            )
                        }),
                };
                match result {
                    Ok(()) => true,
                    Err((Some(code), _)) if code == "ConditionalCheckFailedException" => false,
                    Err((_, e)) => panic!("writer {writer}: {e}"),
                }
            });
        }
        let mut won = 0;
        while let Some(done) = tasks.join_next().await {
            won += usize::from(done.expect("writer task"));
        }
        winners.push(won);
    }
    let _ = db.delete_table().table_name(&table).send().await;
    winners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_puts_on_one_item_have_exactly_one_winner() {
    let winners = race(Write::Put).await;
    assert!(
        winners.iter().all(|&w| w == 1),
        "winners per round of {WRITERS} PutItems with attribute_not_exists(pk): {winners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_updates_on_one_item_have_exactly_one_winner() {
    let winners = race(Write::Update).await;
    assert!(
        winners.iter().all(|&w| w == 1),
        "winners per round of {WRITERS} UpdateItems with attribute_not_exists(pk): {winners:?}"
    );
}

// --- Secrets Manager ----------------------------------------------------------------------------

async fn secrets() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&common::aws().await)
}

/// A new secret with one version (AWSCURRENT) holding `value`; returns (name, version id).
async fn secret(sm: &aws_sdk_secretsmanager::Client, value: &str) -> (String, String) {
    let name = format!("emu-{}", common::suffix());
    let out = sm
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .expect("CreateSecret on the local stack");
    (name, out.version_id().expect("a first version").to_owned())
}

fn token() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Puts `value` as a new version with `token` and the one label `stage`.
async fn put(
    sm: &aws_sdk_secretsmanager::Client,
    name: &str,
    token: &str,
    value: &str,
    stage: &str,
) -> Result<String, String> {
    sm.put_secret_value()
        .secret_id(name)
        .client_request_token(token)
        .secret_string(value)
        .version_stages(stage)
        .send()
        .await
        .map(|out| out.version_id().unwrap_or_default().to_owned())
        .map_err(|e| format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or("")))
}

/// Labels by version id, from DescribeSecret (versions without a label left out).
async fn labels(sm: &aws_sdk_secretsmanager::Client, name: &str) -> HashMap<String, Vec<String>> {
    let out = sm.describe_secret().secret_id(name).send().await.unwrap();
    let mut map: HashMap<String, Vec<String>> =
        out.version_ids_to_stages().cloned().unwrap_or_default();
    map.retain(|_, l| !l.is_empty());
    for l in map.values_mut() {
        l.sort();
    }
    map
}

/// The version that holds `label`, if any (and that no other version holds it).
async fn holder(sm: &aws_sdk_secretsmanager::Client, name: &str, label: &str) -> Option<String> {
    let holders: Vec<String> = labels(sm, name)
        .await
        .into_iter()
        .filter(|(_, l)| l.iter().any(|l| l == label))
        .map(|(v, _)| v)
        .collect();
    assert!(holders.len() <= 1, "{label} is on {holders:?}");
    holders.into_iter().next()
}

async fn value_of(sm: &aws_sdk_secretsmanager::Client, name: &str, version: &str) -> String {
    sm.get_secret_value()
        .secret_id(name)
        .version_id(version)
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap()
        .to_owned()
}

/// UpdateSecretVersionStage; the error's code and message on refusal.
async fn move_label(
    sm: &aws_sdk_secretsmanager::Client,
    name: &str,
    label: &str,
    to: Option<&str>,
    from: Option<&str>,
) -> Result<(), String> {
    sm.update_secret_version_stage()
        .secret_id(name)
        .version_stage(label)
        .set_move_to_version_id(to.map(str::to_owned))
        .set_remove_from_version_id(from.map(str::to_owned))
        .send()
        .await
        .map(drop)
        .map_err(|e| format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or("")))
}

#[tokio::test]
async fn a_reused_client_request_token_with_another_value_is_refused() {
    let sm = secrets().await;
    let (name, _) = secret(&sm, "v1").await;
    let pending = token();
    put(&sm, &name, &pending, "p1", "AWSPENDING").await.unwrap();

    let err = put(&sm, &name, &pending, "p2", "AWSPENDING")
        .await
        .expect_err("a version is never modified");
    assert!(err.starts_with("ResourceExistsException:"), "{err}");
    assert!(
        err.contains("You can't modify an existing version, you can only create a new version."),
        "{err}"
    );
    assert_eq!(value_of(&sm, &name, &pending).await, "p1");
}

#[tokio::test]
async fn a_reused_client_request_token_with_the_same_value_is_an_idempotent_success() {
    let sm = secrets().await;
    let (name, _) = secret(&sm, "v1").await;
    let pending = token();
    put(&sm, &name, &pending, "p1", "AWSPENDING").await.unwrap();
    let before = labels(&sm, &name).await;

    let again = put(&sm, &name, &pending, "p1", "AWSPENDING").await;
    assert_eq!(
        again.as_deref(),
        Ok(pending.as_str()),
        "the existing version"
    );
    assert_eq!(labels(&sm, &name).await, before, "nothing changes");
    assert_eq!(value_of(&sm, &name, &pending).await, "p1");
}

#[tokio::test]
async fn get_secret_value_without_a_version_or_a_stage_returns_awscurrent() {
    let sm = secrets().await;
    let (name, first) = secret(&sm, "v1").await;
    let next = token();
    put(&sm, &name, &next, "v2", "AWSPENDING").await.unwrap();
    move_label(&sm, &name, "AWSCURRENT", Some(&next), Some(&first))
        .await
        .unwrap();

    let out = sm.get_secret_value().secret_id(&name).send().await.unwrap();
    assert_eq!(out.version_id(), Some(next.as_str()));
    assert_eq!(out.secret_string(), Some("v2"));
    assert!(out.version_stages().iter().any(|s| s == "AWSCURRENT"));
}

#[tokio::test]
async fn a_new_awscurrent_after_a_label_move_leaves_one_awscurrent_and_the_other_labels() {
    let sm = secrets().await;
    let (name, first) = secret(&sm, "v1").await;
    let second = token();
    put(&sm, &name, &second, "v2", "AWSPENDING").await.unwrap();
    move_label(&sm, &name, "AWSCURRENT", Some(&second), Some(&first))
        .await
        .unwrap();

    // PutSecretValue without VersionStages: the new version becomes AWSCURRENT.
    let third = token();
    sm.put_secret_value()
        .secret_id(&name)
        .client_request_token(&third)
        .secret_string("v3")
        .send()
        .await
        .unwrap();
    let labels = labels(&sm, &name).await;
    assert_eq!(
        labels.get(&third),
        Some(&vec!["AWSCURRENT".to_owned()]),
        "{labels:?}"
    );
    assert_eq!(
        labels.get(&second),
        Some(&vec!["AWSPENDING".to_owned(), "AWSPREVIOUS".to_owned()]),
        "AWSCURRENT moved off the version that held it, AWSPREVIOUS moved to it: {labels:?}"
    );
    assert_eq!(labels.get(&first), None, "{labels:?}");
}

#[tokio::test]
async fn moving_a_label_that_another_version_holds_needs_remove_from_version_id() {
    let sm = secrets().await;
    let (name, _) = secret(&sm, "v1").await;
    let (a, b) = (token(), token());
    put(&sm, &name, &a, "a", "AWSPENDING").await.unwrap();
    put(&sm, &name, &b, "b", "OTHER").await.unwrap();
    let before = labels(&sm, &name).await;

    let err = move_label(&sm, &name, "AWSPENDING", Some(&b), None)
        .await
        .expect_err("AWSPENDING is on another version");
    assert!(err.starts_with("InvalidParameterException:"), "{err}");
    assert_eq!(labels(&sm, &name).await, before, "no label moved");

    // Moving a label to the version that holds it is a no-op, without RemoveFromVersionId too.
    move_label(&sm, &name, "AWSPENDING", Some(&a), None)
        .await
        .unwrap();
    assert_eq!(labels(&sm, &name).await, before, "nothing changes");
}

#[tokio::test]
async fn remove_from_version_id_must_name_the_version_that_holds_the_label() {
    let sm = secrets().await;
    let (name, first) = secret(&sm, "v1").await;
    let (a, b) = (token(), token());
    put(&sm, &name, &a, "a", "AWSPENDING").await.unwrap();
    put(&sm, &name, &b, "b", "OTHER").await.unwrap();
    let before = labels(&sm, &name).await;

    let err = move_label(&sm, &name, "AWSCURRENT", Some(&a), Some(&b))
        .await
        .expect_err("AWSCURRENT is not on b");
    assert!(err.starts_with("InvalidParameterException:"), "{err}");
    let err = move_label(&sm, &name, "AWSPENDING", None, Some(&first))
        .await
        .expect_err("AWSPENDING is not on the first version");
    assert!(err.starts_with("InvalidParameterException:"), "{err}");
    assert_eq!(labels(&sm, &name).await, before, "no label moved");
}

#[tokio::test]
async fn a_refused_label_move_changes_nothing() {
    let sm = secrets().await;
    let (name, _) = secret(&sm, "v1").await;
    let b = token();
    put(&sm, &name, &b, "b", "OTHER").await.unwrap();
    let before = labels(&sm, &name).await;

    let err = move_label(&sm, &name, "OTHER", Some(&token()), Some(&b))
        .await
        .expect_err("MoveToVersionId is no version of the secret");
    assert!(err.starts_with("InvalidParameterException:"), "{err}");
    assert_eq!(labels(&sm, &name).await, before, "OTHER is still on b");
}

#[tokio::test]
async fn rotate_secret_with_rules_turns_rotation_on_and_leaves_a_pending_version() {
    let sm = secrets().await;
    let (name, first) = secret(&sm, "v1").await;
    let pending = common::attach_managed_rotation(&sm, &name).await;

    let meta = sm.describe_secret().secret_id(&name).send().await.unwrap();
    assert_eq!(meta.rotation_enabled(), Some(true));
    assert_eq!(meta.rotation_lambda_arn(), None, "no rotation function");
    // Its function has not finished: AWSCURRENT is where it was, AWSPENDING on the new version.
    assert_eq!(holder(&sm, &name, "AWSCURRENT").await, Some(first.clone()));
    assert_eq!(holder(&sm, &name, "AWSPENDING").await, Some(pending));
    let current = sm.get_secret_value().secret_id(&name).send().await.unwrap();
    assert_eq!(current.version_id(), Some(first.as_str()));
    assert_eq!(current.secret_string(), Some("v1"));

    let err = sm
        .rotate_secret()
        .secret_id(&name)
        .send()
        .await
        .expect_err("a rotation is still in progress");
    assert_eq!(err.code(), Some("InvalidRequestException"), "{err:?}");
}

#[tokio::test]
async fn rotate_secret_with_a_function_labels_a_version_without_a_value_and_invokes_nothing() {
    let sm = secrets().await;
    let (name, first) = secret(&sm, "v1").await;
    let function = "arn:aws:lambda:us-east-1:123456789012:function:rds-rotator-emulator";
    let started = sm
        .rotate_secret()
        .secret_id(&name)
        .rotation_lambda_arn(function)
        .send()
        .await
        .expect("RotateSecret with a function the stack does not run");
    let pending = started.version_id().unwrap().to_owned();

    let meta = sm.describe_secret().secret_id(&name).send().await.unwrap();
    assert_eq!(meta.rotation_enabled(), Some(true));
    assert_eq!(meta.rotation_lambda_arn(), Some(function));
    assert_eq!(holder(&sm, &name, "AWSCURRENT").await, Some(first));
    assert_eq!(
        holder(&sm, &name, "AWSPENDING").await,
        Some(pending.clone())
    );
    // What createSecret finds: a version without a value, which PutSecretValue fills in.
    let err = sm
        .get_secret_value()
        .secret_id(&name)
        .version_id(&pending)
        .version_stage("AWSPENDING")
        .send()
        .await
        .expect_err("the version has no value yet");
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err:?}");
    put(&sm, &name, &pending, "v2", "AWSPENDING").await.unwrap();
    let filled = sm
        .get_secret_value()
        .secret_id(&name)
        .version_id(&pending)
        .send()
        .await
        .unwrap();
    assert_eq!(filled.secret_string(), Some("v2"));
    // Unfinished: AWS reattempts it rather than start another.
    let err = sm
        .rotate_secret()
        .secret_id(&name)
        .send()
        .await
        .expect_err("a rotation is still in progress");
    assert_eq!(err.code(), Some("InvalidRequestException"), "{err:?}");
}

#[tokio::test]
async fn cancel_rotate_secret_turns_rotation_off_and_leaves_awspending() {
    let sm = secrets().await;
    let (name, first) = secret(&sm, "v1").await;
    let pending = common::attach_managed_rotation(&sm, &name).await;

    sm.cancel_rotate_secret()
        .secret_id(&name)
        .send()
        .await
        .expect("CancelRotateSecret");
    let meta = sm.describe_secret().secret_id(&name).send().await.unwrap();
    assert_eq!(meta.rotation_enabled(), Some(false));
    assert_eq!(holder(&sm, &name, "AWSCURRENT").await, Some(first));
    assert_eq!(holder(&sm, &name, "AWSPENDING").await, Some(pending));
}
