//! The MariaDB engine against the local stack's real MariaDB: the same acceptance as PostgreSQL.

mod common;

use common::mariadb::*;
use common::*;
use mysql_async::prelude::Queryable;
use rds_rotator::db::mysql::MySql;
use rds_rotator::db::tls::{DbTls, TlsMode};
use rds_rotator::rotation::ports::{Database, DbError};
use rds_rotator::secret::{Credentials, Endpoint, Engine};
use secrecy::SecretString;
use serde_json::{json, Value};

fn general_log() -> String {
    std::fs::read_to_string(&my_stack().log)
        .unwrap_or_else(|e| panic!("cannot read MariaDB's general log {}: {e}", my_stack().log))
}

#[tokio::test]
async fn four_rotations_alternate_users_and_awsprevious_keeps_logging_in_on_mariadb() {
    let pair = MariaPair::new().await;
    let mut ids = Vec::new();
    for round in 0..4 {
        let out = pair.run(&["rotate", &pair.app_secret, "--json"]);
        assert!(
            out.status.success(),
            "rotation {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(done["rotation_id"].as_str().unwrap().to_owned());
        pair.assert_rotated_to(&pair.users[(round + 1) % 2]).await;
        if round == 1 {
            // users[0] has had its password changed: the initial one is gone.
            assert!(pair
                .login(&pair.users[0], &pair.initial_passwords[0])
                .await
                .is_err());
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 4, "each rotation has its own id");
    // The server received hashes, never a password.
    let log = general_log();
    assert!(
        log.contains("SET PASSWORD = '*"),
        "no hash in the general log"
    );
    let passwords = pair.passwords_ever().await;
    assert!(passwords.len() >= 6);
    for pw in &passwords {
        assert!(
            !log.contains(pw.as_str()),
            "a password is in MariaDB's general log"
        );
    }
    let status = pair.status();
    assert_eq!(status["state"], "finished");
    report(
        "mariadb",
        &format!(
            "mariadb: 4 rotations alternating users, {} passwords, 0 in the general log",
            passwords.len()
        ),
    );
}

#[tokio::test]
async fn a_rotation_killed_at_each_step_resumes_with_the_same_rotation_id_on_mariadb() {
    let pair = MariaPair::new().await;
    let points = [
        "after:create_pending",
        "inside:set_password",
        "after:set_password",
        "inside:update_proxy",
        "after:test",
    ];
    for (round, point) in points.iter().enumerate() {
        let child = pair.rotate_until(point, "2s");
        let before = pair.status();
        assert_eq!(before["state"], "in_progress", "{point}: {before}");
        kill(child);
        let out = pair.rotate();
        assert!(
            out.status.success(),
            "{point}: the resumed rotation failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = pair.status();
        assert_eq!(
            after["rotation_id"], before["rotation_id"],
            "{point}: resumed with another id"
        );
        assert_eq!(after["state"], "finished");
        pair.assert_rotated_to(&pair.users[(round + 1) % 2]).await;
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing_on_mariadb() {
    let pair = MariaPair::new().await;
    let before = pair.snapshot().await;
    let good = pair.current().await;
    let put = |value: Value| {
        let (sm, id) = (pair.sm.clone(), pair.app_secret.clone());
        async move {
            sm.put_secret_value()
                .secret_id(id)
                .secret_string(value.to_string())
                .send()
                .await
                .unwrap();
        }
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a user name with an SQL injection",
            {
                let mut v = good.clone();
                v["rotation_usernames"] = json!([pair.users[0], "x'; DROP USER root; --"]);
                v
            },
            "is invalid",
        ),
        (
            "a user name over MariaDB's 32 characters",
            {
                let mut v = good.clone();
                v["rotation_usernames"] = json!([pair.users[0], "u".repeat(33)]);
                v
            },
            "longer than 32 bytes, the mariadb limit",
        ),
        (
            "the same user twice",
            {
                let mut v = good.clone();
                v["rotation_usernames"] = json!([pair.users[0], pair.users[0]]);
                v
            },
            "listed twice",
        ),
    ];
    for (what, value, expect) in cases {
        put(value).await;
        let out = pair.rotate();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(expect), "{what}: {stderr}");
        assert!(!stderr.contains(&pair.initial_passwords[0]));
    }
    // Back to the good secret: nothing happened in the database; only our own puts are new.
    put(good.clone()).await;
    for (user, pw) in pair.users.iter().zip(&pair.initial_passwords) {
        pair.login(user, pw)
            .await
            .unwrap_or_else(|e| panic!("{user}'s password changed: {e}"));
    }
    assert_eq!(
        pair.snapshot().await[1..],
        before[1..],
        "a proxy secret changed"
    );

    // A password the adapter cannot send safely is refused, not escaped, and changes nothing.
    let s = my_stack();
    let db = MySql::new(DbTls::new(TlsMode::Disable, None).unwrap());
    let at = Endpoint {
        host: s.host.clone(),
        port: s.port,
        dbname: pair.dbname.clone(),
    };
    let idle = Credentials::new(
        pair.users[1].clone(),
        SecretString::from(pair.initial_passwords[1].clone()),
    );
    let err = db
        .set_password(
            Engine::Mariadb,
            &at,
            &idle,
            &pair.users[1],
            &SecretString::from("it's\\bad".to_owned()),
        )
        .await;
    // MariaDB sends a hash, so even this password is safe there; MySQL's plaintext path refuses it.
    assert!(err.is_ok(), "{err:?}");
    pair.login(&pair.users[1], "it's\\bad").await.unwrap();
    let err = db
        .set_password(
            Engine::Mariadb,
            &at,
            &Credentials::new(
                pair.users[1].clone(),
                SecretString::from("it's\\bad".to_owned()),
            ),
            &pair.users[1],
            &SecretString::from(pair.initial_passwords[1].clone()),
        )
        .await;
    assert!(err.is_ok(), "{err:?}");
    // A wrong login is a rejected login, not anything else.
    let wrong = Credentials::new(pair.users[1].clone(), SecretString::from("nope".to_owned()));
    assert!(matches!(
        db.check_login(Engine::Mariadb, &at, &wrong).await,
        Err(DbError::LoginRejected(_))
    ));
    // Then the rotation runs as if nothing had happened.
    let out = pair.rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.assert_rotated_to(&pair.users[1]).await;
}

#[tokio::test]
async fn check_reports_a_ready_mariadb_pair_and_warns_of_grant_drift() {
    let pair = MariaPair::new().await;
    let run = |pair: &MariaPair| {
        let out = pair.run(&["check", &pair.app_secret, "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), report)
    };
    let finding = |report: &Value, name: &str| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report:#}"))
            .clone()
    };
    let (ok, report) = run(&pair);
    assert!(ok, "{report:#}");
    assert_eq!(finding(&report, "grants")["status"], "ok", "{report:#}");
    assert_eq!(
        finding(&report, &format!("idle user {}", pair.users[1]))["status"],
        "ok"
    );
    let mut admin = my_admin().await;
    admin
        .query_drop(format!("GRANT PROCESS ON *.* TO '{}'@'%'", pair.users[1]))
        .await
        .unwrap();
    let (ok, report) = run(&pair);
    assert!(ok, "drift is a warning: {report:#}");
    let grants = finding(&report, "grants");
    assert_eq!(grants["status"], "warn");
    let detail = grants["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("only {}", pair.users[1])) && detail.contains("PROCESS"),
        "{detail}"
    );
    assert!(
        !detail.contains("PASSWORD"),
        "credentials in the report: {detail}"
    );
}

#[tokio::test]
async fn a_held_session_of_the_idle_user_makes_rotate_wait_on_mariadb_until_it_ends() {
    let pair = MariaPair::new().await;
    let idle = pair.users[1].clone();
    let mut held =
        mysql_async::Conn::new(opts(&idle, &pair.initial_passwords[1], Some(&pair.dbname)))
            .await
            .unwrap();
    held.query_drop("DO 1").await.unwrap();
    // Only the held session: earlier logins of the test are gone (a thread ends a moment after
    // its client said goodbye).
    let sessions_of = |n: i64| {
        let idle = idle.clone();
        async move {
            let mut admin = my_admin().await;
            for _ in 0..100 {
                let seen: Option<i64> = admin
                    .exec_first(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?",
                        (&idle,),
                    )
                    .await
                    .unwrap();
                if seen == Some(n) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("{idle} never had exactly {n} session(s)");
        }
    };
    sessions_of(1).await;
    let production = |args: &[&str]| {
        pair.command(args)
            .env("ROTATOR_IN_USE", "refuse")
            .output()
            .unwrap()
    };

    let check = production(&["check", &pair.app_secret]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(
        said.lines().any(|l| l.contains("FAIL")
            && l.contains("in use")
            && l.contains(&format!("user {idle} has 1 session(s)"))),
        "{said}"
    );
    sessions_of(1).await; // check's own logins are gone
    let waited = production(&["rotate", &pair.app_secret]);
    let why = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(75), "{why}");
    assert!(
        why.contains(&format!("user {idle} has 1 session(s)")) && why.contains("from 127.0.0.1"),
        "{why}"
    );
    assert_eq!(pair.status()["state"], "in_progress");
    pair.login(&idle, &pair.initial_passwords[1])
        .await
        .expect("the idle user's password did not change");
    held.query_drop("DO 1").await.expect("the session goes on");

    held.disconnect().await.unwrap();
    sessions_of(0).await;
    let done = production(&["rotate", &pair.app_secret]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    pair.assert_rotated_to(&idle).await;
}

/// A reader the secret lists that is really the writer (an Aurora reader endpoint with no
/// replica behind it, an instance that a failover made the writer; here `localhost` for
/// 127.0.0.1): its process list shows the rotation's own session of the idle user, which must
/// not count as in use. The server's identity tells the reader is the writer.
#[tokio::test]
async fn a_reader_that_is_the_writer_under_another_name_does_not_make_the_rotation_wait() {
    let pair = MariaPair::new().await;
    let port = my_stack().port;
    pair.edit_app_secret(|app| app["reader_hosts"] = json!([format!("localhost:{port}")]))
        .await;
    let out = pair
        .command(&["rotate", &pair.app_secret])
        .env("ROTATOR_IN_USE", "refuse")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;
}
