//! The lease and step record over the real DynamoDB API (moto): fencing refuses a stale holder.

mod common;

use std::time::Duration;

use rds_rotator::aws::dynamo::DynamoRecords;
use rds_rotator::rotation::ports::{Acquired, Lease, RecordStore, RecordStoreError};
use rds_rotator::rotation::record::{now_ms, Plan, State, Step, StepRecord};

async fn table() -> DynamoRecords {
    let records = DynamoRecords::new(&common::aws().await, format!("rt-{}", common::suffix()));
    assert!(
        records.setup().await.expect("CreateTable on moto"),
        "a new table is created"
    );
    assert!(!records.setup().await.unwrap(), "setup again finds it");
    records
}

async fn granted(
    records: &DynamoRecords,
    key: &str,
    owner: &str,
    ttl: Duration,
) -> (Lease, Option<StepRecord>) {
    match records.acquire(key, owner, ttl).await.unwrap() {
        Acquired::Granted { lease, record } => (lease, record.map(|r| *r)),
        Acquired::Held { owner, .. } => panic!("lease unexpectedly held by {owner}"),
    }
}

fn record(key: &str, rotation_id: &str) -> StepRecord {
    let plan = Plan {
        current_version: "v0".into(),
        current_user: "a".into(),
        target_user: "b".into(),
        proxy_secret_id: Some("arn:proxy".into()),
    };
    StepRecord::begin(key, rotation_id.into(), plan, None, now_ms())
}

#[tokio::test]
async fn a_stale_worker_is_refused_once_another_has_taken_over() {
    let records = table().await;
    let key = "arn:aws:secretsmanager:us-east-1:123456789012:secret:fenced";
    let (stale, none) = granted(&records, key, "worker-1", Duration::from_millis(300)).await;
    assert!(none.is_none());
    records
        .save(&stale, &record(key, "r-1"))
        .await
        .expect("the holder can write");

    // worker-1 stalls past its lease; worker-2 takes over and moves the rotation on.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (fresh, seen) = granted(&records, key, "worker-2", Duration::from_secs(30)).await;
    assert!(fresh.fence > stale.fence, "the fence only increases");
    let mut mine = seen.expect("the new holder reads the record");
    assert_eq!(mine.rotation_id.as_deref(), Some("r-1"));
    mine.advance(Step::SetPassword, now_ms());
    records.save(&fresh, &mine).await.unwrap();

    // worker-1 wakes up: every write it tries is refused by the fence.
    let mut old = record(key, "r-1");
    old.advance(Step::Done, now_ms());
    assert!(matches!(
        records.save(&stale, &old).await,
        Err(RecordStoreError::Fenced(_))
    ));
    assert!(matches!(
        records.renew(&stale, Duration::from_secs(30)).await,
        Err(RecordStoreError::Fenced(_))
    ));
    records
        .release(&stale)
        .await
        .expect("releasing a lost lease is a no-op");

    // The record is worker-2's, intact, and worker-2 still holds the lease.
    let stored = records.load(key).await.unwrap().unwrap();
    assert_eq!(stored, mine);
    assert!(matches!(
        records.acquire(key, "worker-3", Duration::from_secs(30)).await.unwrap(),
        Acquired::Held { ref owner, .. } if owner == "worker-2"
    ));
}

#[tokio::test]
async fn a_released_lease_can_be_taken_at_once_and_the_record_survives() {
    let records = table().await;
    let key = "arn:released";
    let (lease, _) = granted(&records, key, "w1", Duration::from_secs(30)).await;
    let mut r = record(key, "r-9");
    r.note_error("set_password: database unreachable".into(), false, now_ms());
    records.save(&lease, &r).await.unwrap();
    records.release(&lease).await.unwrap();
    let (next, seen) = granted(&records, key, "w2", Duration::from_secs(30)).await;
    assert_eq!(next.fence, lease.fence + 1);
    let seen = seen.unwrap();
    assert_eq!(seen, r);
    assert_eq!(seen.state, State::InProgress);
}

#[tokio::test]
async fn a_lease_is_held_per_acquisition_and_only_the_same_owner_gets_back_in() {
    let records = table().await;
    let key = "arn:owners";
    let (first, _) = granted(&records, key, "host:1#aaaa", Duration::from_secs(30)).await;
    // Another task of the same process is another holder.
    assert!(matches!(
        records.acquire(key, "host:1#bbbb", Duration::from_secs(30)).await.unwrap(),
        Acquired::Held { ref owner, .. } if owner == "host:1#aaaa"
    ));
    // The same acquisition retried (its first answer lost) gets back in, with a new fence, which
    // fences off nothing of anyone else's.
    let (again, _) = granted(&records, key, "host:1#aaaa", Duration::from_secs(30)).await;
    assert!(again.fence > first.fence);
}
