//! Where the idle user's password is known, and MySQL's accounts per host.

use super::*;

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
