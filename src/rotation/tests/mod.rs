//! The step machine over fakes: crashes before and after every effect, then a resume, always
//! reach the same end state, and the user in use never has its password changed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use uuid::Uuid;

use super::begin::{begin_if, labels_stale, skip_reason};
use super::fakes::{When, World};
use super::record::{State, Step, StepRecord};
use super::*;
use crate::rotation::ports::{
    Database, DbError, DbSession, Lease, RecordStore, RecordStoreError, SecretStoreError, Stage,
};
use crate::secret::Credentials;

mod beginning;
mod claims;
mod in_use;
mod known_sources;
mod leases;
mod reports;
mod steps;

const APP: &str = "app";

fn world() -> World {
    let w = World::default();
    w.add_secret(
        APP,
        json!({
            "rotation_type": "AWS RDS",
            "rotation_usernames": ["alice", "bob"],
            "proxy_secret_ids": ["proxy-alice", "proxy-bob"],
            "database_host": "proxy",
            "database_port": 5432,
            "database_name": "shop",
            "direct_host": "db",
            "username": "alice",
            "password": "alice-0",
            "team": "payments"
        }),
    );
    w.add_secret(
        "proxy-alice",
        json!({"username": "alice", "password": "alice-0"}),
    );
    w.add_secret("proxy-bob", json!({"username": "bob", "password": "bob-0"}));
    {
        let mut s = w.state();
        s.db.insert("alice".into(), "alice-0".into());
        s.db.insert("bob".into(), "bob-0".into());
    }
    w
}

fn rotator(w: &World) -> Rotator {
    Rotator {
        secrets: Arc::new(w.clone()),
        records: Arc::new(w.clone()),
        db: Arc::new(w.clone()),
        rds: Arc::new(w.clone()),
        reporter: Arc::new(w.clone()),
        settings: Settings {
            test_deadline: Duration::from_millis(300),
            lease_duration: Duration::from_secs(30),
            password: Default::default(),
            // One attempt per process: a crash must be survived by the next process, not hidden
            // by an in-process retry.
            retry: RetryPolicy {
                db_timeout: Duration::from_secs(10),
                aws_timeout: Duration::from_secs(30),
                min_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(20),
                max_attempts: 1,
                probe_max_delay: Duration::from_millis(20),
                aws_max_attempts: 1,
                aws_initial_backoff: Duration::from_millis(1),
            },
            in_use: Default::default(),
            rotation_functions: Vec::new(),
            rds_discovery: true,
        },
        owner: "test".into(),
        shutdown: Shutdown::default(),
        clock: SystemClock::shared(),
    }
}

async fn rotate(w: &World) -> Result<Completed, RotationError> {
    match rotator(w)
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await?
    {
        Outcome::Rotated(done) => Ok(done),
        other => panic!("did not rotate: {other:?}"),
    }
}

async fn request(w: &World, request: Request) -> Outcome {
    rotator(w)
        .rotate(APP, &request, LeaseWait::No)
        .await
        .unwrap()
}

/// The end state every rotation must reach, whatever happened on the way.
fn assert_rotated(w: &World, from: &str, to: &str, from_password: &str) {
    let current = w.labelled(APP, Stage::Current).unwrap();
    let previous = w.labelled(APP, Stage::Previous).unwrap();
    assert_eq!(current["username"], to);
    assert_eq!(previous["username"], from);
    assert_eq!(previous["password"], from_password);
    assert_eq!(current["team"], "payments", "unknown keys are kept");
    let s = w.state();
    assert_eq!(
        s.db[to],
        current["password"].as_str().unwrap(),
        "AWSCURRENT logs in"
    );
    assert_eq!(
        s.db[from], from_password,
        "the user in use kept its password"
    );
    assert!(
        !s.password_changes.iter().any(|u| u == from),
        "{from}'s password was changed"
    );
    drop(s);
    let proxy: Value = w.labelled(&format!("proxy-{to}"), Stage::Current).unwrap();
    assert_eq!(
        proxy["password"], current["password"],
        "the proxy secret holds the new password"
    );
    // AWSPENDING may stay only on the version that became AWSCURRENT (as AWS's functions leave it).
    let pending = w.version_id_with(APP, Stage::Pending);
    assert!(
        pending.is_none() || pending == w.version_id_with(APP, Stage::Current),
        "AWSPENDING left behind on {pending:?}"
    );
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(record.state, State::Finished);
    assert_eq!(record.rotation_id, w.version_id_with(APP, Stage::Current));
}

fn with_master(w: &World) {
    let mut app = w.labelled(APP, Stage::Current).unwrap();
    app["master_secret_id"] = json!("master");
    w.add_secret(APP, app);
    w.add_secret("master", json!({"username": "master", "password": "m"}));
    w.state().db.insert("master".into(), "m".into());
}

/// `n` sessions of `user` that ran a statement recently: what the in-use guard sees.
fn sessions_of(w: &World, user: &str, n: u32) {
    w.state().sessions.insert(
        user.into(),
        vec![crate::rotation::ports::SessionGroup {
            client: "10.0.1.5".into(),
            application: "orders-api".into(),
            sessions: n,
        }],
    );
}
