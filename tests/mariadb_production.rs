//! MariaDB as production configures it: accounts on several hosts, a password validation
//! plugin, a read-only replica, per-account connection limits.
//!
//! Some of these change the server's global settings, so the tests of this file take turns
//! (`SERVER`), and each puts the setting back even when it fails. No other test binary runs
//! at the same time (`cargo test` runs them one after another; a runner that runs binaries in
//! parallel, such as nextest, would need this file run on its own).

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::mariadb::{my_literal, my_stack, my_super, MariaPair, APP_GRANTS};
use common::{text, Harness};
use mysql_async::prelude::Queryable;
use serde_json::Value;
use tokio::sync::Mutex;

fn server() -> &'static Mutex<()> {
    static SERVER: OnceLock<Mutex<()>> = OnceLock::new();
    SERVER.get_or_init(|| Mutex::new(()))
}

async fn admin_sql(statements: &[String]) {
    let mut admin = my_super().await;
    for s in statements {
        admin
            .query_drop(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// Runs `statements` as the admin when dropped: a test that changed a global setting puts it
/// back, pass or fail.
struct Restore(Vec<String>);

impl Drop for Restore {
    fn drop(&mut self) {
        let statements = std::mem::take(&mut self.0);
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(admin_sql(&statements))
        })
        .join()
        .expect("the server's settings are restored");
    }
}

/// The stack's admin account as the secret's master secret.
async fn add_master(pair: &MariaPair) {
    let s = my_stack();
    pair.add_master(&s.admin_user, &s.admin_password).await;
}

/// A relay on 127.0.0.1 whose connections reach MariaDB from `source` (another loopback
/// address), so that the server matches the account of that host.
async fn from_address(source: &str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let source: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    let s = my_stack();
    let server: std::net::SocketAddr = format!("{}:{}", s.host, s.port).parse().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(source).unwrap();
                if let Ok(mut upstream) = socket.connect(server).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    port
}

/// Logs in through `port` (a relay of `from_address`) and says which account the server matched.
async fn account_via(port: u16, secret: &Value) -> Result<String, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(secret["username"].as_str())
        .pass(secret["password"].as_str())
        .prefer_socket(false);
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
    let account: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.disconnect().await;
    Ok(account.unwrap_or_default())
}

#[tokio::test]
async fn a_user_with_accounts_on_two_hosts_gets_the_new_password_on_both() {
    let _turn = server().lock().await;
    let pair = MariaPair::new().await;
    // The same users on 127.0.0.1 as well as on %: two accounts each, two passwords each.
    add_local_accounts(&pair).await;
    // Without a master secret, nobody can list them (checked at the end).
    let unlisted = pair.run(&["check", &pair.app_secret]);
    add_master(&pair).await;
    let listed = pair.run(&["check", &pair.app_secret]);
    let [a, b] = &pair.users;
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(b).await;
    let current = pair.current().await;
    let here = from_address("127.0.0.1").await;
    let there = from_address("127.0.0.2").await;
    assert_eq!(
        account_via(here, &current).await,
        Ok(format!("{b}@127.0.0.1"))
    );
    assert_eq!(
        account_via(there, &current).await,
        Ok(format!("{b}@%")),
        "AWSCURRENT logs in from another host"
    );
    assert!(
        text(&listed).contains(&format!("{a}@%, {a}@127.0.0.1; {b}@%, {b}@127.0.0.1")),
        "{}",
        text(&listed)
    );
    assert!(
        text(&unlisted).contains("not listed")
            && text(&unlisted).contains("may not read mysql.user"),
        "{}",
        text(&unlisted)
    );
}

/// Each user of `pair` gets a second account, on 127.0.0.1 (this process's address), beside `%`.
async fn add_local_accounts(pair: &MariaPair) {
    let mut more = Vec::new();
    for (user, pw) in pair.users.iter().zip(&pair.initial_passwords) {
        more.push(format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY {}",
            my_literal(pw)
        ));
        more.push(format!(
            "GRANT {APP_GRANTS} ON `{}`.* TO '{user}'@'127.0.0.1'",
            pair.dbname
        ));
    }
    admin_sql(&more).await;
}

#[tokio::test]
async fn without_a_master_secret_a_user_that_logs_in_as_its_local_account_is_refused_before_anything_changes(
) {
    let _turn = server().lock().await;
    let pair = MariaPair::new().await;
    add_local_accounts(&pair).await;
    let [_, b] = &pair.users;
    let before = pair.snapshot().await;
    let check = pair.run(&["check", &pair.app_secret]);
    // The rotator reaches the server from 127.0.0.1, so it logs in as b@127.0.0.1, and may not
    // list b's accounts. On the old binary this rotation changed b@127.0.0.1 only and moved
    // AWSCURRENT: an application arriving from any other address (b@%) failed to log in.
    let out = pair.rotate();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for part in [
        format!("{b}@127.0.0.1"),
        "master_secret_id".to_owned(),
        "\"account_host\": \"127.0.0.1\"".to_owned(),
    ] {
        assert!(text(&out).contains(&part), "{part}: {}", text(&out));
    }
    assert_eq!(pair.snapshot().await, before, "nothing was written");
    let b_then = serde_json::json!({"username": b, "password": pair.initial_passwords[1]});
    let there = from_address("127.0.0.2").await;
    assert_eq!(
        account_via(there, &b_then).await,
        Ok(format!("{b}@%")),
        "b keeps its password for applications on other hosts"
    );
    // check fails the same way, before any rotation is tried.
    assert!(!check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains(&format!("{b}@127.0.0.1")) && text(&check).contains("account_host"),
        "{}",
        text(&check)
    );
    // Without the narrower accounts the rotator logs in as user@%, the account every other
    // address matches too: the rotation goes ahead, and AWSCURRENT logs in from elsewhere.
    admin_sql(
        &pair
            .users
            .iter()
            .map(|u| format!("DROP USER '{u}'@'127.0.0.1'"))
            .collect::<Vec<_>>(),
    )
    .await;
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(b).await;
    assert_eq!(
        account_via(there, &pair.current().await).await,
        Ok(format!("{b}@%"))
    );
}

#[tokio::test]
async fn with_a_validation_plugin_passwords_meet_its_rules_and_hashes_are_not_sent_where_refused() {
    let _turn = server().lock().await;
    // Made before the plugin is loaded: its initial passwords would not pass it.
    let pair = MariaPair::new().await;
    let _restore = Restore(vec![
        "SET GLOBAL strict_password_validation = ON".into(),
        "UNINSTALL SONAME IF EXISTS 'simple_password_check'".into(),
    ]);
    admin_sql(&[
        "UNINSTALL SONAME IF EXISTS 'simple_password_check'".into(),
        "INSTALL SONAME 'simple_password_check'".into(),
        "SET GLOBAL simple_password_check_minimal_length = 40".into(),
        "SET GLOBAL simple_password_check_digits = 6".into(),
        "SET GLOBAL strict_password_validation = ON".into(),
    ])
    .await;
    // Strict: MariaDB refuses a change by hash, and TLS here is not verified, so the plaintext
    // may not go either. The rotation stops before it writes AWSPENDING, and check says why.
    let before = pair.snapshot().await;
    let out = pair.rotate();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refusing to send it"), "{}", text(&out));
    assert_eq!(pair.snapshot().await, before, "nothing was written");
    let out = pair.run(&["check", &pair.app_secret]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("strict_password_validation on"),
        "{}",
        text(&out)
    );
    // Not strict: the hash goes, and the password meets the plugin's rules all the same.
    admin_sql(&["SET GLOBAL strict_password_validation = OFF".into()]).await;
    let out = pair.run(&["check", &pair.app_secret]);
    assert!(
        text(&out).contains("simple_password_check asks for at least 40 characters"),
        "{}",
        text(&out)
    );
    let out = pair.rotate();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;
    let password = pair.current().await["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(password.len() >= 40, "{} characters", password.len());
    assert!(password.chars().filter(char::is_ascii_digit).count() >= 6);
}

#[tokio::test]
async fn a_read_only_server_is_refused_before_anything_changes() {
    let _turn = server().lock().await;
    let pair = MariaPair::new().await;
    let _restore = Restore(vec!["SET GLOBAL read_only = OFF".into()]);
    admin_sql(&["SET GLOBAL read_only = ON".into()]).await;
    let before = pair.snapshot().await;
    let out = pair.rotate();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is a read replica: passwords change only on the writer"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.snapshot().await, before, "nothing was written");
    pair.login(&pair.users[1], &pair.initial_passwords[1])
        .await
        .expect("the idle user's password did not change");
    let out = pair.run(&["check", &pair.app_secret]);
    assert!(text(&out).contains("is a read replica"), "{}", text(&out));
}

#[tokio::test]
async fn an_account_at_its_connection_limit_is_named_and_the_master_secret_changes_it() {
    let _turn = server().lock().await;
    let pair = MariaPair::new().await;
    add_master(&pair).await;
    let idle = pair.users[1].clone();
    admin_sql(&[format!(
        "ALTER USER '{idle}'@'%' WITH MAX_USER_CONNECTIONS 1"
    )])
    .await;
    let held = mysql_async::Conn::new(common::mariadb::opts(
        &idle,
        &pair.initial_passwords[1],
        Some(&pair.dbname),
    ))
    .await
    .unwrap();
    let out = pair
        .command(&["rotate", &pair.app_secret])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.lines()
            .any(|l| l.contains("password set") && l.contains("master secret")),
        "{said}"
    );
    assert!(
        said.contains(&format!("user {idle} is at its connection limit")),
        "{said}"
    );
    drop(held);
    let mut out = pair.rotate();
    for _ in 0..20 {
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        out = pair.rotate();
    }
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&idle).await;
}
