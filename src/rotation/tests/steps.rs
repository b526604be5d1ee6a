//! The steps over fakes: crashes before and after every effect, then a resume, always reach the
//! same end state, and the user in use never has its password changed.

use super::*;

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
    // The record with the lease, AWSPENDING, the claim and the mark, the password, the proxy
    // secret's version and its stage move, the stage move, the record with the release.
    assert!(
        effects >= 9,
        "a rotation makes at least 9 writes, saw {effects}"
    );
    for n in 1..=effects {
        for when in [When::Before, When::After] {
            let w = world();
            w.crash_at(n, when);
            let first = rotate(&w).await;
            // The last write (the record with the release) failing does not undo a complete
            // rotation: the run reports it done, and the next run writes the record.
            assert!(
                first.is_err() || n >= effects,
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

/// Secrets Manager with one slow write: the first PutSecretValue of AWSPENDING lands, but the
/// client gives up on it first, and the next read by id does not see it yet.
struct LateWrite(World, std::sync::Mutex<(u8, String)>);

#[async_trait::async_trait]
impl crate::rotation::ports::SecretStore for LateWrite {
    async fn describe(
        &self,
        id: &str,
    ) -> Result<crate::rotation::ports::SecretMeta, SecretStoreError> {
        self.0.describe(id).await
    }
    async fn get(
        &self,
        id: &str,
        at: crate::rotation::ports::At<'_>,
    ) -> Result<Option<crate::rotation::ports::SecretVersion>, SecretStoreError> {
        let unseen = {
            let mut seen = self.1.lock().unwrap();
            let unseen =
                seen.0 == 1 && matches!(at, crate::rotation::ports::At::Version(v) if v == seen.1);
            if unseen {
                seen.0 = 2;
            }
            unseen
        };
        if unseen {
            return Ok(None);
        }
        self.0.get(id, at).await
    }
    async fn put(
        &self,
        id: &str,
        token: &str,
        value: &secrecy::SecretString,
        stage: Stage,
    ) -> Result<(), SecretStoreError> {
        let landed = self.0.put(id, token, value, stage).await;
        let first = {
            let mut seen = self.1.lock().unwrap();
            let first = seen.0 == 0 && stage == Stage::Pending;
            if first {
                *seen = (1, token.to_owned());
            }
            first
        };
        if first {
            return Err(SecretStoreError::Unavailable("timed out".into()));
        }
        landed
    }
    async fn move_stage(
        &self,
        id: &str,
        stage: Stage,
        to: &str,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        self.0.move_stage(id, stage, to, from).await
    }
    async fn remove_stage(
        &self,
        id: &str,
        stage: Stage,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        self.0.remove_stage(id, stage, from).await
    }
}

/// Found by the simulator (seed 18852): a write of AWSPENDING that the client gave up on landed
/// after the next attempt looked, and that attempt's own write was refused under the same token.
/// The stored version is this rotation's: it is kept, where the rotation used to fail for good.
#[tokio::test]
async fn a_pending_version_that_landed_after_its_attempt_gave_up_is_kept() {
    let w = world();
    let mut r = rotator(&w);
    r.secrets = Arc::new(LateWrite(
        w.clone(),
        std::sync::Mutex::new((0, String::new())),
    ));
    let first = r.rotate(APP, &Request::default(), LeaseWait::No).await;
    assert!(first.is_err_and(|e| e.is_retryable()));
    let stored = w.state().secrets[APP].last().unwrap().value.clone();
    let Outcome::Rotated(done) = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap()
    else {
        panic!("the rotation did not finish");
    };
    assert!(done.resumed);
    let current = w.labelled(APP, Stage::Current).unwrap();
    assert_eq!(
        current.to_string(),
        serde_json::from_str::<Value>(&stored).unwrap().to_string()
    );
    assert_rotated(&w, "alice", "bob", "alice-0");
}
