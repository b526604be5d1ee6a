//! Users that two secrets share.

use super::*;

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

/// A secret replaced by a copy, then deleted while its rotation was still in progress (stopped
/// after the password changed, or its process killed after any effect from then on): the copy
/// takes the claim over instead of waiting for a rotation that can never finish, and logs in
/// with the password that rotation set (its proxy secret knows it).
#[tokio::test]
async fn a_user_claimed_by_a_deleted_secrets_unfinished_rotation_is_taken_over() {
    let mut cases = 0;
    for crash in std::iter::once(None).chain((1..=12).map(Some)) {
        let w = world();
        add_copy(&w, "copy");
        w.state().proxy_frozen = true;
        if let Some(n) = crash {
            w.crash_at(n, When::After);
            let _ = rotate(&w).await;
            // A new process frees the dead one's lease (`restart`).
            w.restart();
        } else {
            let e = rotate(&w).await.unwrap_err();
            assert!(matches!(e, RotationError::TestTimedOut { .. }), "{e}");
        }
        let in_progress = w.state().leases["arn:fake:app"]
            .3
            .as_ref()
            .is_some_and(|r| r.is_in_progress());
        if w.state().password_changes != ["bob"] || !in_progress {
            continue; // killed before the password changed, or after the rotation ended
        }
        cases += 1;
        w.state().proxy_frozen = false;
        w.state().secrets.remove(APP);
        let mut result = rotate_secret(&w, "copy").await;
        if let Err(RotationError::NoKnownCredentials { user, .. }) = &result {
            // Killed between the password change and the proxy secret's: only the deleted
            // secret's AWSPENDING knew the password (a documented limit). A master secret
            // sets it; nothing else was changed meanwhile.
            assert_eq!(user, "bob", "crash {crash:?}");
            let mut copy = w.labelled("copy", Stage::Current).unwrap();
            copy["master_secret_id"] = json!("master");
            w.add_secret("copy", copy);
            w.add_secret("master", json!({"username": "master", "password": "m"}));
            w.state().db.insert("master".into(), "m".into());
            result = rotate_secret(&w, "copy").await;
        }
        let Ok(Outcome::Rotated(done)) = result else {
            panic!("crash {crash:?}: the copy did not rotate: {result:?}");
        };
        assert_eq!(done.current_user, "bob", "crash {crash:?}");
        let current = w.labelled("copy", Stage::Current).unwrap();
        assert_eq!(
            w.state().db["bob"],
            current["password"].as_str().unwrap(),
            "crash {crash:?}: the copy's AWSCURRENT logs in"
        );
    }
    assert!(cases >= 3, "only {cases} cases left a rotation in progress");
}

/// Found by the simulator (seed 651): two secrets name the same users; one's rotation sets the
/// idle user's password and stops before its proxy secret changes (a refused write, an abort).
/// Then the other secret rotates that user: only the first one's pending version knows its
/// password, and the claim it left says where that is.
#[tokio::test]
async fn a_password_that_another_secrets_unfinished_rotation_set_is_found_through_its_claim() {
    let w = world();
    add_copy(&w, "copy");
    w.state().deny_puts.insert("proxy-bob".into());
    let e = rotate(&w).await.unwrap_err();
    assert!(matches!(e, RotationError::Secrets(_)), "{e}");
    assert_eq!(w.state().password_changes, vec!["bob".to_owned()]);
    w.state().deny_puts.clear();
    // The copy uses alice too, and rotates bob, whose password only app's pending version knows.
    let Outcome::Rotated(done) = rotate_secret(&w, "copy").await.unwrap() else {
        panic!("the copy did not rotate");
    };
    assert_eq!(done.current_user, "bob");
    let current = w.labelled("copy", Stage::Current).unwrap();
    assert_eq!(
        w.state().db["bob"],
        current["password"].as_str().unwrap(),
        "the copy's AWSCURRENT logs in"
    );
}

/// The same, with the second secret's process dying before or after any of its writes: the
/// claim it replaced pointed to the only known password, so that pointer is stored with the
/// record before the claim is replaced (found by the simulator: seeds 4118 and 9560).
#[tokio::test]
async fn a_crash_anywhere_in_the_second_secrets_rotation_does_not_lose_the_first_ones_password() {
    for n in 1..=12 {
        for when in [When::Before, When::After] {
            let w = world();
            add_copy(&w, "copy");
            w.state().deny_puts.insert("proxy-bob".into());
            rotate(&w).await.unwrap_err();
            w.state().deny_puts.clear();
            w.crash_at(n, when);
            let first = rotate_secret(&w, "copy").await;
            w.restart();
            if !matches!(first, Ok(Outcome::Rotated(_))) {
                rotate_secret(&w, "copy")
                    .await
                    .unwrap_or_else(|e| panic!("after a crash at write {n} {when:?}: {e}"));
            }
            let current = w.labelled("copy", Stage::Current).unwrap();
            assert_eq!(current["username"], "bob", "crash at write {n} {when:?}");
            assert_eq!(
                w.state().db["bob"],
                current["password"].as_str().unwrap(),
                "crash at write {n} {when:?}: the copy's AWSCURRENT logs in"
            );
        }
    }
}

/// The other secret's later rotation of the user stopped before it changed the password (the
/// guard waited, then an operator aborted it): the password is the one an earlier rotation of
/// that secret set, which its record carries on, and so does the claim's new holder.
#[tokio::test]
async fn the_other_secrets_earlier_unfinished_rotations_are_known_too() {
    let w = world();
    add_copy(&w, "copy");
    w.state().deny_puts.insert("proxy-bob".into());
    rotate(&w).await.unwrap_err();
    w.state().deny_puts.clear();
    sessions_of(&w, "bob", 1);
    let e = rotate(&w).await.unwrap_err();
    assert!(matches!(e, RotationError::UserInUse { .. }), "{e}");
    rotator(&w)
        .abort(APP, "the operator", LeaseWait::No)
        .await
        .unwrap();
    w.state().sessions.clear();
    assert_eq!(w.state().password_changes, vec!["bob".to_owned()]);
    let Outcome::Rotated(done) = rotate_secret(&w, "copy").await.unwrap() else {
        panic!("the copy did not rotate");
    };
    assert_eq!(done.current_user, "bob");
    let current = w.labelled("copy", Stage::Current).unwrap();
    assert_eq!(w.state().db["bob"], current["password"].as_str().unwrap());
}

/// A secret marks the user it has in AWSCURRENT once: the record remembers the mark, so its
/// later rotations skip that write. (After its first rotation every user it uses is also one
/// its rotations claimed, which keeps other secrets off it as the mark does.) `forget` clears
/// the marks and the memory together, and the next rotation marks again.
#[tokio::test]
async fn a_user_in_use_is_marked_once_and_the_record_remembers_it_until_forgotten() {
    use crate::rotation::ports::RecordStore;
    let w = world();
    let key = format!("arn:fake:{APP}");
    let marks_of = |user: &str| {
        let s = w.state();
        let found: Vec<_> = s
            .in_use
            .iter()
            .filter(|(k, set)| k.ends_with(&format!("/{user}")) && set.contains(&key))
            .map(|(k, _)| k.clone())
            .collect();
        found
    };
    rotate(&w).await.unwrap(); // alice -> bob: alice marked
    rotate(&w).await.unwrap(); // bob -> alice: bob marked
    let alice = marks_of("alice");
    assert_eq!(alice.len(), 1, "{alice:?}");
    let remembered = w.record(&key).unwrap().marked;
    assert_eq!(remembered.len(), 2, "{remembered:?}");
    assert!(remembered.contains(&alice[0]), "{remembered:?}");
    // Taken off behind the record's back: a rotation that wrote the mark again would show it.
    w.state().in_use.remove(&alice[0]);
    rotate(&w).await.unwrap(); // alice -> bob: alice not marked again
    assert_eq!(marks_of("alice"), Vec::<String>::new(), "marked again");

    w.forget(&key).await.unwrap();
    assert_eq!(w.record(&key).unwrap().marked, Vec::<String>::new());
    rotate(&w).await.unwrap(); // bob -> alice: bob marked again
    assert_eq!(marks_of("bob").len(), 1);
}
