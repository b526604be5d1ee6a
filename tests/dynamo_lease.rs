//! The lease and step record over the real DynamoDB API (moto): fencing refuses a stale holder.

mod common;

use std::time::Duration;

use rds_rotator::aws::dynamo::DynamoRecords;
use rds_rotator::calls::Tally;
use rds_rotator::rotation::ports::{Acquired, Lease, RecordStore, RecordStoreError};
use rds_rotator::rotation::record::{BeginIf, Plan, State, Step, StepRecord};
use rds_rotator::rotation::{Clock, SystemClock};

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

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
    match records.acquire(key, owner, ttl, None).await.unwrap() {
        Acquired::Granted { lease, record } => (lease, record.map(|r| *r)),
        Acquired::Held { seen, .. } => panic!("lease unexpectedly held by {}", seen.owner),
        Acquired::Begun { .. } | Acquired::NotBegun { .. } => {
            panic!("acquire never begins a rotation")
        }
    }
}

fn record(key: &str, rotation_id: &str) -> StepRecord {
    let plan = Plan {
        current_version: "v0".into(),
        current_user: "a".into(),
        target_user: "b".into(),
        proxy_secret_id: Some("arn:proxy".into()),
        proxy_version: Some("pv0".into()),
        pending_version: None,
        pending_left: None,
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

    // worker-1 stalls; worker-2 watches its lease unchanged for a whole period, takes it over
    // and moves the rotation on.
    let Acquired::Held { seen: watched, .. } = records
        .acquire(key, "worker-2", Duration::from_secs(30), None)
        .await
        .unwrap()
    else {
        panic!("worker-1 holds the lease");
    };
    assert_eq!(
        watched.ttl,
        Duration::from_millis(300),
        "the holder's period"
    );
    let (fresh, seen) = match records
        .acquire(key, "worker-2", Duration::from_secs(30), Some(&watched))
        .await
        .unwrap()
    {
        Acquired::Granted { lease, record } => (lease, record.map(|r| *r)),
        other => panic!("the unchanged lease is taken over: {other:?}"),
    };
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
        records.acquire(key, "worker-3", Duration::from_secs(30), None).await.unwrap(),
        Acquired::Held { ref seen, .. } if seen.owner == "worker-2"
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
        records.acquire(key, "host:1#bbbb", Duration::from_secs(30), None).await.unwrap(),
        Acquired::Held { ref seen, .. } if seen.owner == "host:1#aaaa"
    ));
    // The same acquisition retried (its first answer lost) gets back in, with a new fence, which
    // fences off nothing of anyone else's.
    let (again, _) = granted(&records, key, "host:1#aaaa", Duration::from_secs(30)).await;
    assert!(again.fence > first.fence);
}

fn cond(current_version: &str) -> BeginIf {
    BeginIf {
        current_version: current_version.into(),
        request_id: None,
        last_success_by: None,
    }
}

#[tokio::test]
async fn a_new_rotation_is_stored_by_the_write_that_takes_the_lease() {
    let records = table().await;
    let key = "arn:begun";
    // The last rotation finished at `done`; AWSCURRENT is its version, "r-1".
    let (lease, _) = granted(&records, key, "w1", Duration::from_secs(30)).await;
    let mut last = record(key, "r-1");
    last.request_id = Some("req-1".into());
    last.calls = [("SecretsManager.PutSecretValue".to_owned(), 2)].into();
    last.advance(Step::Done, now_ms());
    records.save_and_release(&lease, &last).await.unwrap();

    let tally = Tally::default();
    let mut new = record(key, "r-2");
    new.current_version = Some("r-1".into());
    let begun = tally
        .scope(records.begin(key, "w2", Duration::from_secs(30), &new, &cond("r-1")))
        .await
        .unwrap();
    let Acquired::Begun {
        lease,
        record: stored,
    } = begun
    else {
        panic!("expected the rotation to begin, got {begun:?}");
    };
    assert_eq!(
        tally.snapshot(),
        [("DynamoDB.UpdateItem".to_owned(), 1)].into(),
        "one write"
    );
    assert_eq!(lease.fence, 2);
    // What was asked for, plus the last success the item keeps; nothing of the last rotation's.
    let mut expected = new.clone();
    expected.last_success_at = last.last_success_at;
    assert_eq!(*stored, expected);
    assert_eq!(records.load(key).await.unwrap().unwrap(), expected);
    // The lease is held, and the next save writes against what begin stored.
    assert!(matches!(
        records.acquire(key, "w3", Duration::from_secs(30), None).await.unwrap(),
        Acquired::Held { ref seen, .. } if seen.owner == "w2"
    ));
    let mut next = expected.clone();
    next.advance(Step::SetPassword, now_ms());
    records.save(&lease, &next).await.unwrap();
    assert_eq!(records.load(key).await.unwrap().unwrap(), next);
}

/// `BeginIf::allows` is the rule (the engine's, and the fakes'); the adapter's condition
/// expression must say the same for every kind of record.
#[tokio::test]
async fn the_begin_condition_in_dynamodb_agrees_with_begin_if() {
    let records = table().await;
    let now = now_ms();
    let finished = |id: &str, request: Option<&str>, success_at: u64| {
        let mut r = record("k", id);
        r.request_id = request.map(Into::into);
        r.advance(Step::Done, success_at);
        r
    };
    let mut failed_after_cas = record("k", "r-5");
    failed_after_cas.note_error("finish: boom".into(), true, now);
    let failed_to_begin = StepRecord::failed_to_begin("k", "bad secret".into(), None, now);
    // A failed-to-begin record that carries an aborted rotation's version: only `run`, which
    // copies the list on, may begin after it.
    let mut carrying = failed_to_begin.clone();
    carrying.unfinished_versions = vec!["older-2".into(), "older-1".into()];
    let existing: Vec<(&str, Option<StepRecord>)> = vec![
        ("no record", None),
        ("in progress", Some(record("k", "r-1"))),
        (
            "finished, AWSCURRENT",
            Some(finished("v1", Some("req-1"), now - 60_000)),
        ),
        (
            "finished, other version",
            Some(finished("v0", None, now - 60_000)),
        ),
        ("finished just now", Some(finished("v1", None, now - 1_000))),
        (
            "finished in the future",
            Some(finished("v1", None, now + 60_000)),
        ),
        ("failed with another id", Some(failed_after_cas)),
        ("failed to begin", Some(failed_to_begin)),
        ("failed to begin, carrying versions", Some(carrying)),
    ];
    let conds = [
        ("plain", cond("v1")),
        (
            "same request",
            BeginIf {
                request_id: Some("req-1".into()),
                ..cond("v1")
            },
        ),
        (
            "other request",
            BeginIf {
                request_id: Some("req-2".into()),
                ..cond("v1")
            },
        ),
        (
            "min interval 10 s",
            BeginIf {
                last_success_by: Some(now - 10_000),
                ..cond("v1")
            },
        ),
    ];
    let (mut checked, mut begun) = (0, 0);
    for (i, (what, record)) in existing.iter().enumerate() {
        for (j, (asked, c)) in conds.iter().enumerate() {
            let key = format!("arn:cond-{i}-{j}");
            if let Some(r) = record {
                let (lease, _) = granted(&records, &key, "setup", Duration::from_secs(30)).await;
                let mut r = r.clone();
                r.secret_id = key.clone();
                records.save_and_release(&lease, &r).await.unwrap();
            }
            let before = records.load(&key).await.unwrap();
            let mut new = StepRecord::begin(&key, "r-new".into(), plan_from("v1"), None, now);
            new.request_id = c.request_id.clone();
            let got = records
                .begin(&key, "w", Duration::from_secs(30), &new, c)
                .await
                .unwrap();
            let want = c.allows(before.as_ref());
            match got {
                Acquired::Begun { .. } => {
                    assert!(want, "{what} / {asked}: begun, but not allowed");
                    begun += 1;
                }
                Acquired::NotBegun { record } => {
                    assert!(!want, "{what} / {asked}: allowed, but not begun");
                    assert_eq!(
                        record.map(|r| *r),
                        before,
                        "{what} / {asked}: the record as found"
                    );
                    assert_eq!(records.load(&key).await.unwrap(), before, "nothing written");
                    let (_, found) = granted(&records, &key, "next", Duration::from_secs(30)).await;
                    assert_eq!(found, before, "{what} / {asked}: the lease left free");
                }
                other => panic!("{what} / {asked}: the lease is free, got {other:?}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, existing.len() * conds.len());
    // Both answers occur: no record and failed-to-begin always begin; in progress, stale labels
    // and carried versions never; the rest depend on the request.
    assert_eq!(begun, 17, "of {checked}");
}

#[tokio::test]
async fn a_held_lease_is_answered_from_the_refused_write_without_another_read() {
    let records = table().await;
    let key = "arn:held";
    let (lease, _) = granted(&records, key, "w1", Duration::from_secs(30)).await;
    records.save(&lease, &record(key, "r-1")).await.unwrap();
    let tally = Tally::default();
    let (by_acquire, by_begin) = tally
        .scope(async {
            (
                records
                    .acquire(key, "w2", Duration::from_secs(30), None)
                    .await
                    .unwrap(),
                records
                    .begin(
                        key,
                        "w3",
                        Duration::from_secs(30),
                        &record(key, "r-2"),
                        &cond("v0"),
                    )
                    .await
                    .unwrap(),
            )
        })
        .await;
    for got in [by_acquire, by_begin] {
        match got {
            Acquired::Held { seen, record } => {
                assert_eq!(seen.owner, "w1");
                assert_eq!(record.unwrap().rotation_id.as_deref(), Some("r-1"));
            }
            other => panic!("expected the lease held, got {other:?}"),
        }
    }
    assert_eq!(
        tally.snapshot(),
        [("DynamoDB.UpdateItem".to_owned(), 2)].into(),
        "no GetItem: the refusal carries the item"
    );
}

fn plan_from(current_version: &str) -> Plan {
    Plan {
        current_version: current_version.into(),
        current_user: "a".into(),
        target_user: "b".into(),
        proxy_secret_id: None,
        proxy_version: None,
        pending_version: None,
        pending_left: None,
    }
}

#[tokio::test]
async fn unfinished_versions_and_the_proxy_version_survive_a_round_trip_in_order() {
    let records = table().await;
    let key = "arn:round-trip";
    let (lease, _) = granted(&records, key, "w", Duration::from_secs(30)).await;
    let mut r = record(key, "r-1");
    r.unfinished_versions = vec!["newer".into(), "older".into()];
    r.note_error("update_proxy: denied".into(), true, now_ms());
    records.save(&lease, &r).await.unwrap();
    assert_eq!(records.load(key).await.unwrap().unwrap(), r);
}

/// A taker's look at a lease is only good while nothing changes: a renewal in between (a new
/// beat) or a release and a new holder refuses the takeover, whatever any clock says.
#[tokio::test]
async fn a_lease_renewed_since_the_taker_looked_is_not_taken_over() {
    let records = table().await;
    let key = "arn:renewed";
    let (holder, _) = granted(&records, key, "w1", Duration::from_secs(30)).await;
    let Acquired::Held { seen, .. } = records
        .acquire(key, "w2", Duration::from_secs(30), None)
        .await
        .unwrap()
    else {
        panic!("w1 holds the lease");
    };
    records
        .renew(&holder, Duration::from_secs(30))
        .await
        .unwrap();
    match records
        .acquire(key, "w2", Duration::from_secs(30), Some(&seen))
        .await
        .unwrap()
    {
        Acquired::Held { seen: now, .. } => {
            assert_eq!(now.owner, "w1");
            assert_ne!(now, seen, "a renewal is a change the taker sees");
        }
        other => panic!("a renewed lease was taken over: {other:?}"),
    }
    // Released: free, taken at once without any wait.
    records.release(&holder).await.unwrap();
    let (next, _) = granted(&records, key, "w2", Duration::from_secs(30)).await;
    assert!(next.fence > holder.fence);
}

/// The users a secret marked live beside its record: every write adds to them, whatever record it
/// carries (an older copy, or a new rotation's stored by the lease's write); `unmark` takes one
/// off and `forget` all. The version AWSPENDING was left on travels in the record.
#[tokio::test]
async fn the_users_a_secret_marked_survive_every_record_write_until_unmarked_or_forgotten() {
    let records = table().await;
    let key = "arn:marks";
    let (a, b) = ("dbuser:postgres:pg:1/a", "dbuser:postgres:pg:1/b");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (lease, _) = granted(&records, key, "w1", Duration::from_secs(30)).await;
    let mut r = record(key, "r-1");
    r.marked = vec![a.into()];
    records.save(&lease, &r).await.unwrap();
    // An older copy of the record, without the mark, finishing the rotation.
    let mut done = record(key, "r-1");
    done.pending_left = Some("v0".into());
    done.advance(Step::Done, now_ms());
    records.save_and_release(&lease, &done).await.unwrap();
    let stored = records.load(key).await.unwrap().unwrap();
    assert_eq!(stored.marked, vec![a.to_owned()]);
    assert_eq!(stored.pending_left.as_deref(), Some("v0"));

    let mut new = record(key, "r-2");
    new.current_version = Some("r-1".into());
    let Acquired::Begun { lease, record } = records
        .begin(key, "w2", Duration::from_secs(30), &new, &cond("r-1"))
        .await
        .unwrap()
    else {
        panic!("expected the rotation to begin");
    };
    assert_eq!(
        record.marked,
        vec![a.to_owned()],
        "the lease's write keeps them"
    );
    let mut next = *record;
    next.marked.push(b.into());
    records.save(&lease, &next).await.unwrap();
    assert_eq!(
        sorted(records.load(key).await.unwrap().unwrap().marked),
        [a, b]
    );

    records.unmark(a, key).await.unwrap();
    assert_eq!(records.load(key).await.unwrap().unwrap().marked, [b]);
    records.forget(key).await.unwrap();
    assert_eq!(
        records.load(key).await.unwrap().unwrap().marked,
        Vec::<String>::new()
    );
}
