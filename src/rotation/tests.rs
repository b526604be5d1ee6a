//! The step machine over fakes: crashes before and after every effect, then a resume, always
//! reach the same end state, and the user in use never has its password changed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::fakes::{When, World};
use super::ports::Stage;
use super::record::{State, Step};
use super::*;

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
    assert!(
        w.version_id_with(APP, Stage::Pending).is_none(),
        "AWSPENDING left behind"
    );
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(record.state, State::Finished);
    assert_eq!(record.rotation_id, w.version_id_with(APP, Stage::Current));
}

#[tokio::test]
async fn a_rotation_changes_only_the_idle_user_and_moves_awscurrent_to_it() {
    let w = world();
    let done = rotate(&w).await.unwrap();
    assert_eq!(
        (done.previous_user.as_str(), done.current_user.as_str()),
        ("alice", "bob")
    );
    assert!(!done.resumed);
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn consecutive_rotations_alternate_users() {
    let w = world();
    let mut from_password = "alice-0".to_owned();
    for (from, to) in [
        ("alice", "bob"),
        ("bob", "alice"),
        ("alice", "bob"),
        ("bob", "alice"),
    ] {
        w.state().password_changes.clear();
        rotate(&w).await.unwrap();
        assert_rotated(&w, from, to, &from_password);
        from_password = w.labelled(APP, Stage::Current).unwrap()["password"]
            .as_str()
            .unwrap()
            .to_owned();
    }
}

/// How many effects (writes) a clean rotation makes.
async fn effects_of_a_clean_rotation() -> usize {
    let w = world();
    w.crash_at(usize::MAX, When::Before);
    rotate(&w).await.unwrap();
    let n = w.state().effects;
    n
}

#[tokio::test]
async fn a_crash_before_or_after_any_effect_resumes_to_the_same_end_state_with_the_same_id() {
    let effects = effects_of_a_clean_rotation().await;
    // The record with the lease, AWSPENDING, the password, the record beside it, the proxy
    // secret, the stage move, AWSPENDING dropped, the record with the release.
    assert!(
        effects >= 8,
        "a rotation makes at least 8 writes, saw {effects}"
    );
    for n in 1..=effects {
        for when in [When::Before, When::After] {
            let w = world();
            w.crash_at(n, when);
            let first = rotate(&w).await;
            // The last write (the record, with the release) failing does not undo a complete
            // rotation: the run reports it done, and the next run writes the record.
            assert!(
                first.is_err() || n == effects,
                "crash at effect {n} {when:?} did not stop the run"
            );
            let record = w.record(&format!("arn:fake:{APP}"));
            w.restart();
            if record.as_ref().is_some_and(|r| r.state == State::Finished) {
                // The process died after its last write: the rotation is complete already.
                assert_rotated(&w, "alice", "bob", "alice-0");
                continue;
            }
            let started = record.and_then(|r| r.rotation_id);
            let done = rotate(&w)
                .await
                .unwrap_or_else(|e| panic!("resume after crash at effect {n} {when:?}: {e}"));
            if let Some(id) = started {
                assert_eq!(
                    done.rotation_id, id,
                    "crash at effect {n} {when:?} changed the rotation id"
                );
                assert!(done.resumed);
            }
            assert_rotated(&w, "alice", "bob", "alice-0");
            let s = w.state();
            let pending_puts = s.puts.iter().filter(|(name, _)| name == APP).count();
            assert!(pending_puts <= 2, "AWSPENDING written {pending_puts} times");
        }
    }
}

#[tokio::test]
async fn a_resumed_rotation_reuses_the_stored_pending_password() {
    // Die right after the write of AWSPENDING, whichever effect that is (the record and the
    // claims on the users come before it or beside it).
    let (w, pending) = 'found: {
        for n in 1..10 {
            let w = world();
            w.crash_at(n, When::After);
            rotate(&w).await.unwrap_err();
            if let Some(pending) = w.labelled(APP, Stage::Pending) {
                break 'found (w, pending);
            }
        }
        panic!("no crash left an AWSPENDING behind");
    };
    w.restart();
    rotate(&w).await.unwrap();
    let current = w.labelled(APP, Stage::Current).unwrap();
    assert_eq!(current["password"], pending["password"]);
}

#[tokio::test]
async fn a_user_missing_from_rotation_usernames_fails_and_changes_nothing() {
    let w = world();
    w.add_secret(APP, json!({"rotation_usernames": ["alice", "bob"], "host": "proxy", "username": "mallory", "password": "x"}));
    let err = rotate(&w).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("not in rotation_usernames"),
        "{err}"
    );
    assert_eq!(w.state().secrets[APP].len(), 1, "a version was written");
    assert!(w.state().password_changes.is_empty());
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(record.state, State::Failed);
    assert!(record.last_error.unwrap().contains("mallory"));
}

#[tokio::test]
async fn without_a_proxy_secret_for_the_idle_user_nothing_is_written() {
    let w = world();
    w.add_secret(
        "proxy-bob",
        json!({"username": "someone-else", "password": "bob-0"}),
    );
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::NoProxySecret { .. }), "{err}");
    assert_eq!(w.state().secrets[APP].len(), 1);
}

#[tokio::test]
async fn when_no_known_credentials_work_the_error_names_the_sources_and_no_password() {
    let w = world();
    w.state()
        .db
        .insert("bob".into(), "changed-by-someone".into());
    let err = rotate(&w).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RotationError::NoKnownCredentials { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("proxy secret proxy-bob: login rejected")
            && msg.contains("AWSPREVIOUS: absent")
            && msg.contains("master secret: not configured"),
        "{msg}"
    );
    assert!(
        !msg.contains("bob-0") && !msg.contains("changed-by-someone"),
        "{msg}"
    );
    assert!(w.state().password_changes.is_empty());
    assert_eq!(
        w.labelled(APP, Stage::Current).unwrap()["username"],
        "alice"
    );
}

#[tokio::test]
async fn a_master_secret_is_used_when_the_idle_users_own_credentials_fail() {
    let w = world();
    let mut app = w.labelled(APP, Stage::Current).unwrap();
    app["master_secret_id"] = json!("master");
    w.add_secret(APP, app);
    w.add_secret("master", json!({"username": "master", "password": "m"}));
    w.state().db.insert("master".into(), "m".into());
    w.state().db.insert("bob".into(), "lost".into());
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

fn with_master(w: &World) {
    let mut app = w.labelled(APP, Stage::Current).unwrap();
    app["master_secret_id"] = json!("master");
    w.add_secret(APP, app);
    w.add_secret("master", json!({"username": "master", "password": "m"}));
    w.state().db.insert("master".into(), "m".into());
}

#[tokio::test]
async fn a_user_with_accounts_on_several_hosts_is_changed_by_the_master_secret_or_not_at_all() {
    let w = world();
    let hosts = vec!["%".to_owned(), "10.0.%".to_owned()];
    w.state().accounts.insert("bob".into(), hosts);
    let err = rotate(&w).await.unwrap_err();
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains("has 2 accounts (%, 10.0.%)"), "{msg}");
    assert!(w.state().password_changes.is_empty(), "no password changed");

    let w = world();
    let hosts = vec!["%".to_owned(), "10.0.%".to_owned()];
    w.state().accounts.insert("bob".into(), hosts);
    with_master(&w);
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn a_read_replica_is_refused_before_awspending_is_written() {
    let w = world();
    w.state().read_only = true;
    let err = rotate(&w).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("is a read replica (it streams from writer:5432)"),
        "{err}"
    );
    assert!(w.labelled(APP, Stage::Pending).is_none());
    assert!(w.state().password_changes.is_empty());
}

#[tokio::test]
async fn accounts_the_idle_user_may_not_list_are_left_to_the_master_secret_unless_it_fails() {
    let w = world();
    w.state().accounts_hidden = true;
    with_master(&w);
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
    // A master secret that no longer logs in: bob's own login goes ahead (with a warning).
    let w = world();
    w.state().accounts_hidden = true;
    with_master(&w);
    w.state().db.insert("master".into(), "changed".into());
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

/// MySQL without a master secret: the users may not list their accounts, and the server matches
/// this process's logins to `user@<logged_in_host>`.
fn unlisted_world(logged_in_host: &str, account_host: Option<&str>) -> World {
    let w = world();
    let mut app = w.labelled(APP, Stage::Current).unwrap();
    app["engine"] = json!("mysql");
    if let Some(h) = account_host {
        app["account_host"] = json!(h);
    }
    w.add_secret(APP, app);
    let mut s = w.state();
    s.accounts_hidden = true;
    s.logged_in_host = Some(logged_in_host.to_owned());
    drop(s);
    w
}

#[tokio::test]
async fn a_user_that_may_not_list_its_accounts_and_logs_in_as_a_narrower_host_is_refused_before_awspending(
) {
    let w = unlisted_world("10.0.1.%", None);
    let err = rotate(&w).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    for part in [
        "bob@10.0.1.%",
        "master_secret_id",
        "\"account_host\": \"10.0.1.%\"",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    assert!(w.labelled(APP, Stage::Pending).is_none(), "nothing written");
    assert!(w.state().password_changes.is_empty());
}

#[tokio::test]
async fn a_user_that_may_not_list_its_accounts_rotates_as_its_catch_all_account_or_the_one_the_secret_names(
) {
    let w = unlisted_world("%", None);
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
    let w = unlisted_world("10.0.1.%", Some("10.0.1.%"));
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
    // A secret that names another host than the one the server matched is refused.
    let w = unlisted_world("10.0.1.%", Some("10.0.2.%"));
    let err = rotate(&w).await.unwrap_err().to_string();
    assert!(err.contains("only account is on host 10.0.2.%"), "{err}");
}

#[test]
fn only_the_catch_all_account_or_the_named_one_may_change_unlisted() {
    let cases = [
        ("u@%", None, true),
        ("u@10.0.1.%", None, false),
        ("u@127.0.0.1", None, false),
        ("u@10.0.1.%", Some("10.0.1.%"), true),
        ("u@10.0.1.%", Some("%"), false),
        ("u@%", Some("10.0.1.%"), false),
        ("@%", None, false),
        ("other@%", None, false),
        ("u@localhost", Some("localhost"), true),
    ];
    for (account, declared, ok) in cases {
        assert_eq!(
            unlisted_account("u", account, declared).is_ok(),
            ok,
            "{account} {declared:?}"
        );
    }
}

#[tokio::test]
async fn a_read_replica_is_refused_before_awspending_even_when_the_proxy_secret_is_stale() {
    let w = world();
    w.state().read_only = true;
    w.state().db.insert("bob".into(), "lost".into());
    with_master(&w);
    let err = rotate(&w).await.unwrap_err();
    assert!(err.to_string().contains("is a read replica"), "{err}");
    assert!(w.labelled(APP, Stage::Pending).is_none());
}

#[tokio::test]
async fn new_passwords_meet_the_servers_password_rules() {
    let w = world();
    w.state().rules = crate::rotation::ports::PasswordRules {
        min_length: 48,
        min_digits: 10,
        ..Default::default()
    };
    rotate(&w).await.unwrap();
    let current = w.labelled(APP, Stage::Current).unwrap();
    let password = current["password"].as_str().unwrap();
    assert_eq!(password.len(), 48);
    assert!(password.chars().filter(char::is_ascii_digit).count() >= 10);
}

#[tokio::test]
async fn if_awscurrent_moves_during_the_rotation_it_is_never_overwritten() {
    let w = world();
    // Stop before the compare-and-swap (effects before it: the record with the lease, AWSPENDING,
    // the password and the record beside it, the proxy secret), then move AWSCURRENT by hand.
    w.crash_at(6, When::Before);
    rotate(&w).await.unwrap_err();
    w.restart();
    {
        let mut s = w.state();
        let versions = s.secrets.get_mut(APP).unwrap();
        for v in versions.iter_mut() {
            v.stages.retain(|l| l != "AWSCURRENT");
        }
        versions.push(fakes::Version {
            id: "manual".into(),
            value: json!({"username": "alice", "password": "alice-0", "host": "proxy"}).to_string(),
            stages: vec!["AWSCURRENT".into()],
        });
    }
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::CurrentMoved { .. }), "{err}");
    assert_eq!(
        w.version_id_with(APP, Stage::Current).as_deref(),
        Some("manual")
    );
    assert_eq!(
        w.record(&format!("arn:fake:{APP}")).unwrap().state,
        State::Failed
    );
}

#[tokio::test]
async fn a_proxy_that_never_accepts_the_new_password_leaves_the_rotation_to_resume() {
    let w = world();
    w.state().proxy_frozen = true;
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::TestTimedOut { .. }), "{err}");
    assert!(err.is_retryable());
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!((record.state, record.step), (State::InProgress, Step::Test));
    assert_eq!(
        w.labelled(APP, Stage::Current).unwrap()["username"],
        "alice",
        "AWSCURRENT moved untested"
    );
    w.state().proxy_frozen = false;
    let done = rotate(&w).await.unwrap();
    assert_eq!(Some(done.rotation_id), record.rotation_id);
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn a_single_user_secret_rotates_in_place_with_its_current_credentials() {
    let w = World::default();
    w.add_secret(
        APP,
        json!({"engine": "postgres", "host": "db", "username": "solo", "password": "solo-0"}),
    );
    w.state().db.insert("solo".into(), "solo-0".into());
    let done = rotate(&w).await.unwrap();
    assert_eq!(done.current_user, "solo");
    let current = w.labelled(APP, Stage::Current).unwrap();
    assert_ne!(current["password"], "solo-0");
    assert_eq!(w.state().db["solo"], current["password"].as_str().unwrap());
}

#[tokio::test]
async fn a_held_lease_makes_a_second_worker_step_back() {
    let w = world();
    use super::ports::RecordStore;
    let held = w
        .acquire(
            &format!("arn:fake:{APP}"),
            "other",
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(held, super::ports::Acquired::Granted { .. }));
    let err = rotate(&w).await.unwrap_err();
    assert!(
        matches!(err, RotationError::Busy { ref owner, .. } if owner == "other"),
        "{err}"
    );
    assert_eq!(w.state().secrets[APP].len(), 1);
}

#[tokio::test]
async fn a_recent_rotation_is_skipped_unless_forced() {
    let w = world();
    let hour = Some(Duration::from_secs(3600));
    let first = request(
        &w,
        Request {
            min_interval: hour,
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(first, Outcome::Rotated(_)));
    let second = request(
        &w,
        Request {
            min_interval: hour,
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(second, Outcome::Skipped { ref why, .. } if why.contains("minimum interval")),
        "{second:?}"
    );
    let bob_password = w.labelled(APP, Stage::Current).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    w.state().password_changes.clear();
    let forced = request(
        &w,
        Request {
            min_interval: hour,
            force: true,
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(forced, Outcome::Rotated(_)));
    assert_rotated(&w, "bob", "alice", &bob_password);
}

#[tokio::test]
async fn the_same_request_delivered_twice_rotates_once_even_when_forced() {
    let w = world();
    let req = Request {
        force: true,
        request_id: Some("msg-1".into()),
        ..Default::default()
    };
    assert!(matches!(
        request(&w, req.clone()).await,
        Outcome::Rotated(_)
    ));
    let again = request(&w, req).await;
    assert!(
        matches!(again, Outcome::Skipped { ref why, .. } if why.contains("msg-1")),
        "{again:?}"
    );
    assert_eq!(w.labelled(APP, Stage::Current).unwrap()["username"], "bob");
}

#[tokio::test]
async fn a_copy_that_finds_the_lease_held_is_answered_from_the_record_without_waiting() {
    let w = world();
    let req = Request {
        request_id: Some("msg-1".into()),
        ..Default::default()
    };
    assert!(matches!(
        request(&w, req.clone()).await,
        Outcome::Rotated(_)
    ));
    // Another copy of the same request holds the lease, deciding to skip.
    use super::ports::RecordStore;
    let held = w
        .acquire(
            &format!("arn:fake:{APP}"),
            "other",
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(held, super::ports::Acquired::Granted { .. }));
    let copy = request(&w, req).await;
    assert!(
        matches!(copy, Outcome::Skipped { ref why, .. } if why.contains("msg-1")),
        "{copy:?}"
    );
    // A different request still finds the lease busy.
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::Busy { .. }), "{err}");
}

#[tokio::test]
async fn a_finished_rotation_leaves_the_lease_free_for_the_next() {
    let w = world();
    rotate(&w).await.unwrap();
    use super::ports::RecordStore;
    let next = w
        .acquire(
            &format!("arn:fake:{APP}"),
            "next",
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(next, super::ports::Acquired::Granted { .. }),
        "{next:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_at_the_next_persisted_step_and_the_next_run_resumes() {
    let w = world();
    let r = rotator(&w);
    r.shutdown.trigger();
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::Interrupted(_)), "{err}");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        (record.state, record.step, record.last_error),
        (State::InProgress, Step::CreatePending, None)
    );
    assert_eq!(w.state().secrets[APP].len(), 1, "nothing but the record");
    let done = rotate(&w).await.unwrap();
    assert_eq!(Some(done.rotation_id), record.rotation_id);
}

/// A call to a `Tapped` record store, as its hook sees it.
enum Call<'a> {
    Save(&'a StepRecord),
    Renew,
    /// After `acquire` granted the lease.
    Granted,
    Other,
}

/// What a `Tapped` store runs: its error is the call's.
type Hook = Box<dyn Fn(Call<'_>) -> Result<(), RecordStoreError> + Send + Sync>;

/// The world's record store with a hook: called before each call (its error is the call's: a
/// table out of reach, a partition) and after each grant.
struct Tapped {
    world: World,
    hook: Hook,
}

impl Tapped {
    fn new(
        w: &World,
        hook: impl Fn(Call<'_>) -> Result<(), RecordStoreError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            world: w.clone(),
            hook: Box::new(hook),
        })
    }
}

#[async_trait::async_trait]
impl super::ports::RecordStore for Tapped {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        take_over: Option<&super::ports::LeaseSeen>,
    ) -> Result<super::ports::Acquired, RecordStoreError> {
        (self.hook)(Call::Other)?;
        let got = self.world.acquire(key, owner, ttl, take_over).await?;
        if matches!(got, super::ports::Acquired::Granted { .. }) {
            (self.hook)(Call::Granted)?;
        }
        Ok(got)
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Renew)?;
        self.world.renew(lease, ttl).await
    }
    async fn save(&self, lease: &Lease, record: &StepRecord) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Save(record))?;
        self.world.save(lease, record).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.release(lease).await
    }
    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.load(key).await
    }
    async fn claim_user(
        &self,
        user_key: &str,
        claim: &super::ports::UserClaim,
        replacing: Option<&super::ports::UserClaim>,
    ) -> Result<super::ports::Claimed, RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.claim_user(user_key, claim, replacing).await
    }
    async fn mark_in_use(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.mark_in_use(user_key, secret).await
    }
}

/// The record of set_password is written beside the password change, not before it. Here the
/// change lands and every write of that record is refused (DynamoDB throttling, say), so the
/// stored record still says create_pending; an operator then aborts. The next rotation, with no
/// master secret, must still know the idle user's password: it is in the aborted rotation's
/// pending version, which the next rotation tries whatever step the record names.
#[tokio::test]
async fn a_password_change_whose_record_write_was_refused_is_still_known_after_an_abort() {
    let w = world();
    let mut r = rotator(&w);
    r.records = Tapped::new(&w, |call| match call {
        Call::Save(r) if r.step >= Step::SetPassword => Err(RecordStoreError::Unavailable(
            "ProvisionedThroughputExceededException".into(),
        )),
        _ => Ok(()),
    });
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let key = format!("arn:fake:{APP}");
    let stored = w.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.step),
        (State::InProgress, Step::CreatePending)
    );
    let pending = w.labelled(APP, Stage::Pending).unwrap();
    assert_eq!(
        w.state().db["bob"],
        pending["password"].as_str().unwrap(),
        "the password changed although its record did not land"
    );
    rotator(&w)
        .abort(APP, "stuck", LeaseWait::No)
        .await
        .unwrap();
    // bob's proxy secret still holds bob-0, and there is no master secret.
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn shutdown_after_a_step_stops_at_its_record_and_the_next_run_resumes_it() {
    use super::ports::RecordStore;
    let w = world();
    let mut r = rotator(&w);
    // Shutdown is asked for with the record saved beside set_password: the run finishes that
    // step, then stops.
    let shutdown = r.shutdown.clone();
    r.records = Tapped::new(&w, move |call| {
        if matches!(call, Call::Save(r) if r.step == Step::SetPassword) {
            shutdown.trigger();
        }
        Ok(())
    });
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::Interrupted(_)), "{err}");
    let key = format!("arn:fake:{APP}");
    let record = w.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.step, record.last_error),
        (State::InProgress, Step::UpdateProxy, None)
    );
    // The password is set, the proxy secret not yet.
    assert_eq!(
        w.labelled("proxy-bob", Stage::Current).unwrap()["password"],
        "bob-0"
    );
    let done = rotate(&w).await.unwrap();
    assert_eq!(Some(done.rotation_id), record.rotation_id);
    assert!(done.resumed);
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn every_rotation_is_reported_with_its_steps_and_without_secret_material() {
    let w = world();
    rotate(&w).await.unwrap();
    let bad = world();
    bad.add_secret(APP, json!({"username": "alice", "password": 7}));
    let err = rotate(&bad).await.unwrap_err();
    assert!(!err.is_retryable());

    let reports = w.state().reports.clone();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.outcome, ports::ReportOutcome::Succeeded);
    assert_eq!(r.from_user.as_deref(), Some("alice"));
    assert_eq!(r.to_user.as_deref(), Some("bob"));
    let steps: Vec<Step> = r.steps.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        steps,
        [
            Step::CreatePending,
            Step::SetPassword,
            Step::UpdateProxy,
            Step::Test,
            Step::Finish
        ]
    );
    let printed = format!("{r:?}");
    let current = w.labelled(APP, Stage::Current).unwrap();
    assert!(!printed.contains(current["password"].as_str().unwrap()));
    assert!(!printed.contains("alice-0"));

    let failed = bad.state().reports.clone();
    assert_eq!(failed.len(), 1);
    assert!(
        matches!(&failed[0].outcome, ports::ReportOutcome::Failed { retryable: false, reason } if reason.contains("password")),
        "{:?}",
        failed[0].outcome
    );
    assert_eq!(failed[0].last_step, None, "it failed before the first step");
}

/// The conditions the store checks when it begins a rotation with the lease say exactly what
/// `run` would decide from the same record: resume, skip and re-plan never begin.
#[test]
fn a_rotation_begins_with_the_lease_exactly_when_run_would_begin_it() {
    let now = 1_000_000_000;
    let plan = record::Plan {
        current_version: "v1".into(),
        current_user: "alice".into(),
        target_user: "bob".into(),
        proxy_secret_id: None,
        proxy_version: None,
        pending_version: None,
    };
    let finished = |id: &str, request: Option<&str>, at: u64| {
        let mut r = StepRecord::begin(APP, id.into(), plan.clone(), None, at);
        r.request_id = request.map(Into::into);
        r.advance(Step::Done, at);
        r
    };
    let mut failed = StepRecord::begin(APP, "r-5".into(), plan.clone(), None, now);
    failed.note_error("finish: boom".into(), true, now);
    let records = [
        None,
        Some(StepRecord::begin(
            APP,
            "r-1".into(),
            plan.clone(),
            None,
            now,
        )),
        Some(finished("v1", Some("req-1"), now - 60_000)),
        Some(finished("v0", None, now - 60_000)),
        Some(finished("v1", None, now - 1_000)),
        Some(finished("v1", None, now + 60_000)),
        Some(failed),
        Some(StepRecord::failed_to_begin(APP, "bad".into(), None, now)),
    ];
    let requests = [
        Request::default(),
        Request {
            request_id: Some("req-1".into()),
            ..Request::default()
        },
        Request {
            request_id: Some("req-2".into()),
            ..Request::default()
        },
        Request {
            min_interval: Some(Duration::from_secs(10)),
            ..Request::default()
        },
        Request {
            min_interval: Some(Duration::from_secs(10)),
            force: true,
            ..Request::default()
        },
        Request {
            min_interval: Some(Duration::ZERO),
            ..Request::default()
        },
    ];
    let mut begins = 0;
    for r in &records {
        for request in &requests {
            let run_begins = r.as_ref().is_none_or(|r| {
                !r.is_in_progress()
                    && skip_reason(r, request, now).is_none()
                    && !labels_stale(r, Some("v1"))
            });
            let cond = begin_if(&plan, request, now);
            assert_eq!(cond.allows(r.as_ref()), run_begins, "{r:?} / {request:?}");
            begins += usize::from(run_begins);
        }
    }
    assert!(begins > 0 && begins < records.len() * requests.len());
}

/// The world's database, where a login through the proxy takes `delay`.
struct SlowProxy(World, Duration);

#[async_trait::async_trait]
impl Database for SlowProxy {
    async fn check_login(
        &self,
        engine: crate::secret::Engine,
        at: &crate::secret::Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError> {
        if at.host == "proxy" {
            tokio::time::sleep(self.1).await;
        }
        self.0.check_login(engine, at, creds).await
    }
    async fn login(
        &self,
        engine: crate::secret::Engine,
        at: &crate::secret::Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        self.0.login(engine, at, login).await
    }
    async fn privileges(
        &self,
        engine: crate::secret::Engine,
        at: &crate::secret::Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Vec<String>, DbError> {
        self.0.privileges(engine, at, login, user).await
    }
}

#[tokio::test]
async fn a_run_whose_lease_ran_out_by_its_own_clock_stops_before_its_next_step() {
    let w = world();
    let before = w.version_id_with(APP, Stage::Current);
    let mut r = rotator(&w);
    r.records = Tapped::new(&w, |call| match call {
        Call::Renew => Err(RecordStoreError::Unavailable(
            "the table is unreachable".into(),
        )),
        _ => Ok(()),
    });
    r.db = Arc::new(SlowProxy(w.clone(), Duration::from_millis(400)));
    r.settings.lease_duration = Duration::from_millis(200);
    r.settings.test_deadline = Duration::from_secs(5);
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::LeaseLost(_)), "{err}");
    // The test passed, but finish never ran: another worker may hold the lease by now.
    assert_eq!(w.version_id_with(APP, Stage::Current), before);
    let record = w.load(&format!("arn:fake:{APP}")).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.step),
        (State::InProgress, Step::SetPassword)
    );
}

/// A second application secret naming the same users.
fn add_copy(w: &World, name: &str) {
    let value = w.labelled(APP, Stage::Current).unwrap();
    w.add_secret(name, value);
}

async fn rotate_secret(w: &World, id: &str) -> Result<Outcome, RotationError> {
    rotator(w)
        .rotate(id, &Request::default(), LeaseWait::No)
        .await
}

#[tokio::test]
async fn a_user_that_another_secret_has_in_awscurrent_keeps_its_password() {
    let w = world();
    add_copy(&w, "copy");
    rotate(&w).await.unwrap(); // app: alice -> bob
    let passwords = w.state().db.clone();
    // The copy still uses alice and would change bob, app's user now.
    let e = rotate_secret(&w, "copy").await.unwrap_err();
    assert!(
        matches!(&e, RotationError::UserShared { user, secret } if user == "bob" && secret.ends_with(APP)),
        "{e}"
    );
    assert!(!e.is_retryable());
    // And app may not change alice, which the copy marked as its own when it tried.
    let e = rotate(&w).await.unwrap_err();
    assert!(
        matches!(&e, RotationError::UserShared { user, secret } if user == "alice" && secret.ends_with("copy")),
        "{e}"
    );
    assert_eq!(w.state().db, passwords, "no password changed");
}

#[tokio::test]
async fn a_user_claimed_by_a_rotation_in_progress_waits_for_it() {
    let w = world();
    add_copy(&w, "copy");
    // app's rotation stops after its password step and stays in progress.
    w.state().proxy_frozen = true;
    let e = rotate(&w).await.unwrap_err();
    assert!(matches!(e, RotationError::TestTimedOut { .. }), "{e}");
    let e = rotate_secret(&w, "copy").await.unwrap_err();
    assert!(
        matches!(&e, RotationError::UserBusy { user, .. } if user == "bob"),
        "{e}"
    );
    assert!(e.is_retryable());
    w.state().proxy_frozen = false;
    rotate(&w).await.unwrap();
}

#[tokio::test]
async fn a_rotation_that_failed_after_the_password_changed_leaves_it_known_to_the_next() {
    let w = world();
    w.state().deny_puts.insert("proxy-bob".into());
    let e = rotate(&w).await.unwrap_err();
    assert!(
        matches!(e, RotationError::Secrets(SecretStoreError::Denied(_))),
        "{e}"
    );
    let failed = w.record("arn:fake:app").unwrap();
    assert_eq!(
        (failed.state, failed.step),
        (State::Failed, Step::UpdateProxy)
    );
    assert_eq!(
        w.labelled(APP, Stage::Current).unwrap()["username"],
        "alice"
    );
    // bob's password is the failed rotation's; no master secret is configured.
    w.state().deny_puts.clear();
    let done = rotate(&w).await.unwrap();
    assert_eq!(done.current_user, "bob");
    let current = w.labelled(APP, Stage::Current).unwrap();
    assert_eq!(w.state().db["bob"], current["password"].as_str().unwrap());
    assert!(w
        .record("arn:fake:app")
        .unwrap()
        .unfinished_versions
        .is_empty());
}

#[tokio::test]
async fn secrets_manager_rotation_attached_is_refused_before_anything_changes() {
    let w = world();
    w.state().rotation_enabled.insert(APP.into());
    let e = rotate(&w).await.unwrap_err();
    assert!(matches!(e, RotationError::ManagedRotation { .. }), "{e}");
    assert!(e.to_string().contains("cancel-rotate-secret"));
    assert!(w.state().password_changes.is_empty());
    assert!(w.state().puts.is_empty());
    // On the idle user's proxy secret too.
    let w = world();
    w.state().rotation_enabled.insert("proxy-bob".into());
    let e = rotate(&w).await.unwrap_err();
    assert!(
        matches!(e, RotationError::ManagedRotation { ref secret, .. } if secret.ends_with("proxy-bob")),
        "{e}"
    );
    assert!(w.state().puts.is_empty());
}

#[tokio::test]
async fn resource_exists_for_a_version_that_holds_our_value_is_taken_as_written() {
    let w = world();
    w.state().puts_answer_exists = true;
    let done = rotate(&w).await.unwrap();
    assert_eq!(done.current_user, "bob");
    let current = w.labelled(APP, Stage::Current).unwrap();
    assert_eq!(w.state().db["bob"], current["password"].as_str().unwrap());
    assert_eq!(
        w.labelled("proxy-bob", Stage::Current).unwrap()["password"],
        current["password"]
    );
}

fn sessions_of(w: &World, user: &str, n: u32) {
    w.state().sessions.insert(
        user.into(),
        vec![super::ports::SessionGroup {
            client: "10.0.1.5".into(),
            application: "orders-api".into(),
            sessions: n,
        }],
    );
}

#[tokio::test]
async fn an_idle_user_still_in_use_keeps_its_password_until_its_sessions_stop() {
    let w = world();
    sessions_of(&w, "bob", 2);
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::UserInUse { .. }), "{err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("10.0.1.5 (orders-api)") && text.contains("2 session(s)"),
        "{text}"
    );
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        (record.state, record.step),
        (State::InProgress, Step::SetPassword)
    );
    assert!(record.last_error.as_deref().unwrap().contains("orders-api"));
    assert!(record
        .in_use
        .as_deref()
        .unwrap()
        .contains("user bob has 2 session(s)"));
    let report = w.state().reports.last().cloned().unwrap();
    assert_eq!(report.in_use.map(|f| f.sessions()), Some(2));

    w.state().sessions.clear();
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        record.in_use, None,
        "the finding is cleared once nobody uses the user"
    );
}

/// The secret lists two readers; the writer shows no session of bob.
fn world_with_readers() -> World {
    let w = world();
    let mut app = w.labelled(APP, Stage::Current).unwrap();
    app["reader_hosts"] = json!(["reader-1", "reader-2:5433"]);
    w.add_secret(APP, app);
    w
}

#[tokio::test]
async fn a_session_of_the_idle_user_on_a_reader_keeps_its_password_until_it_stops() {
    let w = world_with_readers();
    w.state().reader_sessions.insert(
        "reader-2".into(),
        vec![super::ports::SessionGroup {
            client: "10.0.2.9".into(),
            application: "reports".into(),
            sessions: 1,
        }],
    );
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::UserInUse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("10.0.2.9 on reader reader-2:5433 (reports)"),
        "{err}"
    );
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    w.state().reader_sessions.clear();
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn a_reader_the_guard_cannot_reach_defers_the_rotation_unless_the_guard_only_warns() {
    let w = world_with_readers();
    w.state().unreachable_hosts.insert("reader-1".into());
    let err = rotate(&w).await.unwrap_err();
    assert!(
        matches!(err, RotationError::ReaderUnchecked { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.is_wait());
    assert!(err.to_string().contains("reader-1:5432"), "{err}");
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        (record.state, record.step),
        (State::InProgress, Step::SetPassword)
    );
    // Asked to go on whatever the guard finds: it warns, and goes on.
    let ignored = request(
        &w,
        Request {
            ignore_in_use: true,
            ..Request::default()
        },
    )
    .await;
    assert!(matches!(ignored, Outcome::Rotated(_)), "{ignored:?}");
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn the_readers_rds_lists_are_looked_at_beside_the_ones_the_secret_names() {
    use super::ports::RdsTopology;
    let w = world_with_readers();
    let reader = |host: &str, port| crate::secret::Endpoint {
        host: host.into(),
        port,
        dbname: String::new(),
    };
    // One reader the secret names as well, and one only RDS knows, where bob is in use.
    w.state().rds = Some(Ok(RdsTopology {
        arns: vec!["arn:aws:rds:eu-west-1:1:cluster:orders".into()],
        readers: vec![reader("reader-1", 5432), reader("reader-3", 5432)],
        ..Default::default()
    }));
    w.state().reader_sessions.insert(
        "reader-3".into(),
        vec![super::ports::SessionGroup {
            client: "10.0.2.9".into(),
            application: "reports".into(),
            sessions: 1,
        }],
    );
    let err = rotate(&w).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("10.0.2.9 on reader reader-3:5432 (reports)"),
        "{err}"
    );
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    w.state().reader_sessions.clear();
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn an_rds_api_that_refuses_stops_the_rotation_naming_the_action_and_the_setting() {
    use super::ports::RdsError;
    let w = world();
    w.state().rds = Some(Err(RdsError::Denied {
        action: "DescribeDBInstances",
        reason: "AccessDenied: not authorized".into(),
    }));
    let err = rotate(&w).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    for part in [
        "rds:DescribeDBInstances",
        "ROTATOR_RDS_DISCOVERY=off",
        "reader_hosts",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    // RDS that does not answer: the rotation waits, as for a reader it cannot reach.
    let w = world();
    w.state().rds = Some(Err(RdsError::Unavailable("503".into())));
    let err = rotate(&w).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(w.state().db["bob"], "bob-0");
}

/// RDS says the database is in one Blue/Green deployment.
fn in_deployment(w: &World, status: &str, replication: super::ports::Replication) {
    w.state().rds = Some(Ok(super::ports::RdsTopology {
        arns: vec!["arn:aws:rds:eu-west-1:1:db:orders".into()],
        deployments: vec![super::ports::BlueGreen {
            id: "bgd-abc".into(),
            name: "upgrade-16".into(),
            status: status.into(),
            replication,
            is_green: false,
        }],
        ..Default::default()
    }));
}

#[tokio::test]
async fn a_blue_green_deployment_by_logical_replication_or_in_switchover_defers_before_awspending()
{
    use super::ports::Replication::*;
    for (status, replication) in [("AVAILABLE", Logical), ("SWITCHOVER_IN_PROGRESS", Physical)] {
        let w = world();
        in_deployment(&w, status, replication);
        let err = rotate(&w).await.unwrap_err();
        assert!(
            matches!(err, RotationError::BlueGreen { .. }) && err.is_wait(),
            "{status}: {err:?}"
        );
        assert!(err.to_string().contains("upgrade-16 (bgd-abc)"), "{err}");
        assert!(
            w.labelled(APP, Stage::Pending).is_none(),
            "{status}: nothing written"
        );
        assert!(w.state().password_changes.is_empty());
        // Once it is switched over, the rotation goes on.
        in_deployment(&w, "SWITCHOVER_COMPLETED", replication);
        rotate(&w).await.unwrap();
        assert_rotated(&w, "alice", "bob", "alice-0");
    }
    // Physical replication carries the change to green: no wait.
    let w = world();
    in_deployment(&w, "AVAILABLE", Physical);
    rotate(&w).await.unwrap();
    // An RDS that refuses DescribeBlueGreenDeployments names it and the setting.
    let w = world();
    w.state().rds = Some(Err(super::ports::RdsError::Denied {
        action: "DescribeBlueGreenDeployments",
        reason: "AccessDenied".into(),
    }));
    let err = rotate(&w).await.unwrap_err().to_string();
    assert!(
        err.contains("rds:DescribeBlueGreenDeployments")
            && err.contains("ROTATOR_RDS_DISCOVERY=off"),
        "{err}"
    );
    assert!(w.labelled(APP, Stage::Pending).is_none(), "nothing written");
}

#[tokio::test]
async fn rds_is_asked_once_per_run_however_often_its_answer_is_used() {
    let w = world();
    rotate(&w).await.unwrap();
    assert_eq!(
        w.state().rds_calls,
        1,
        "asked once, beside the run's first calls, for Blue/Green and the readers"
    );
}

#[tokio::test]
async fn forcing_a_rotation_does_not_bypass_the_guard_but_ignoring_it_does() {
    let w = world();
    sessions_of(&w, "bob", 1);
    let forced = rotator(&w)
        .rotate(
            APP,
            &Request {
                force: true,
                ..Request::default()
            },
            LeaseWait::No,
        )
        .await;
    assert!(
        matches!(forced, Err(RotationError::UserInUse { .. })),
        "{forced:?}"
    );
    let ignored = request(
        &w,
        Request {
            ignore_in_use: true,
            ..Request::default()
        },
    )
    .await;
    assert!(matches!(ignored, Outcome::Rotated(_)), "{ignored:?}");
    assert_rotated(&w, "alice", "bob", "alice-0");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert!(
        record.in_use.as_deref().unwrap().contains("orders-api"),
        "what the guard saw stays in the record"
    );
}

#[tokio::test]
async fn under_warn_or_off_the_rotation_goes_on() {
    for policy in [guard::InUsePolicy::Warn, guard::InUsePolicy::Off] {
        let w = world();
        sessions_of(&w, "bob", 1);
        let mut r = rotator(&w);
        r.settings.in_use.policy = policy;
        let done = r.rotate(APP, &Request::default(), LeaseWait::No).await;
        assert!(
            matches!(done, Ok(Outcome::Rotated(_))),
            "{policy:?}: {done:?}"
        );
        assert_rotated(&w, "alice", "bob", "alice-0");
        let seen = w.state().reports.last().unwrap().in_use.is_some();
        assert_eq!(seen, policy == guard::InUsePolicy::Warn, "{policy:?}");
    }
}

#[tokio::test]
async fn a_single_user_rotation_is_not_held_back_by_its_own_applications() {
    let w = world();
    w.add_secret(
        "solo",
        json!({"engine": "postgres", "host": "db", "username": "alice", "password": "alice-0"}),
    );
    sessions_of(&w, "alice", 3);
    let done = rotator(&w)
        .rotate("solo", &Request::default(), LeaseWait::No)
        .await;
    assert!(matches!(done, Ok(Outcome::Rotated(_))), "{done:?}");
    assert!(w.state().reports.last().unwrap().in_use.is_none());
}

#[test]
fn a_rotation_function_is_this_tools_whatever_its_qualifier() {
    let settings = Settings {
        rotation_functions: vec![
            "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator".into()
        ],
        ..Settings::default()
    };
    let own = |arn: &str| settings.is_own_function(Some(arn));
    assert!(own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator"
    ));
    assert!(own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator:live"
    ));
    assert!(own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator:$LATEST"
    ));
    assert!(!own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator-other"
    ));
    assert!(!own(
        "arn:aws:lambda:eu-west-1:444455556666:function:rds-rotator"
    ));
    assert!(!settings.is_own_function(None));
    assert!(!Settings::default().is_own_function(Some("arn:aws:lambda:eu-west-1:1:function:f")));
}

#[test]
fn each_rotation_id_has_its_own_proxy_token_uuid_or_not() {
    let a = proxy_token("6f1c0c9e-6d3c-4a8e-9d6a-2f7d2b8c1e01");
    assert_eq!(a, proxy_token("6f1c0c9e-6d3c-4a8e-9d6a-2f7d2b8c1e01"));
    let b = proxy_token("rotation-requested-by-an-operator-0001");
    let c = proxy_token("rotation-requested-by-an-operator-0002");
    assert_ne!(b, c);
    assert_ne!(a, b);
    assert!(Uuid::parse_str(&b).is_ok());
}

/// A holder cut off from the state table cannot renew: by its own monotonic clock it stops
/// inside its step before its lease could have run out, and the taker, which watched the lease
/// unchanged for a whole period on its own clock, takes over only after that. One rotation,
/// never two writers.
#[tokio::test(start_paused = true)]
async fn a_holder_cut_off_from_the_state_table_stops_before_a_taker_takes_its_lease() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = world();
    let before = w.version_id_with(APP, Stage::Current);
    let cut = Arc::new(AtomicBool::new(false));
    let mut holder = rotator(&w);
    let partition = cut.clone();
    holder.records = Tapped::new(&w, move |_| {
        if partition.load(Ordering::SeqCst) {
            return Err(RecordStoreError::Unavailable("partitioned".into()));
        }
        Ok(())
    });
    // The holder waits in the test step: its logins through the proxy take 10 s each.
    holder.db = Arc::new(SlowProxy(w.clone(), Duration::from_secs(10)));
    holder.settings.lease_duration = Duration::from_secs(3);
    holder.settings.test_deadline = Duration::from_secs(60);
    let holding = tokio::spawn(async move {
        let out = holder.rotate(APP, &Request::default(), LeaseWait::No).await;
        (out, tokio::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Past update_proxy: the holder waits in the test step.
    assert_ne!(
        w.labelled("proxy-bob", Stage::Current).unwrap()["password"],
        "bob-0",
        "the holder waits in the test step"
    );
    cut.store(true, Ordering::SeqCst);

    let granted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut taker = rotator(&w);
    let grants = granted.clone();
    taker.records = Tapped::new(&w, move |call| {
        if matches!(call, Call::Granted) {
            grants.lock().unwrap().push(tokio::time::Instant::now());
        }
        Ok(())
    });
    taker.settings.lease_duration = Duration::from_secs(3);
    let took = taker
        .rotate(
            APP,
            &Request::default(),
            LeaseWait::UpTo(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let (held, stopped_at) = holding.await.unwrap();
    assert!(matches!(held, Err(RotationError::LeaseLost(_))), "{held:?}");
    let taken_at = granted.lock().unwrap()[0];
    assert!(
        stopped_at <= taken_at,
        "the holder stopped at {stopped_at:?}, after the taker took the lease at {taken_at:?}"
    );
    let Outcome::Rotated(done) = took else {
        panic!("the taker resumes and finishes the rotation: {took:?}");
    };
    assert!(done.resumed);
    assert_ne!(w.version_id_with(APP, Stage::Current), before);
    assert_rotated(&w, "alice", "bob", "alice-0");
    assert_eq!(w.state().password_changes, vec!["bob".to_owned()]);
}
