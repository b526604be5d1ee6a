//! PostgreSQL as production configures it: shared owner roles, pg_hba rules, connection limits,
//! VALID UNTIL, password_encryption, read replicas, a pooling proxy, and catalog differences that
//! `check` must see. Each test sets up the local stack's server the way a DBA would.

mod common;

use std::time::Duration;

use common::{admin, assert_ok, eventually, stack, superuser, text, Harness, Options, Pair};
use serde_json::{json, Value};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, or `eval \"$(scripts/local-stack start)\"` first")
    })
}

/// A master secret holding the stack's master (shaped like RDS's), named by the application secret.
async fn add_master(pair: &Pair) {
    let s = stack();
    pair.add_master(&s.admin_user, &s.admin_password).await;
}

async fn sql(pair: &Pair, statements: &str) {
    admin(&pair.dbname)
        .await
        .batch_execute(statements)
        .await
        .unwrap_or_else(|e| panic!("{statements}: {}", common::pg_error(&e)));
}

/// What the stack's pg_hba roles stand for is the server's own configuration: the superuser
/// grants them (on 16+ the master could only by being their member, which pg_hba matches).
async fn as_superuser(pair: &Pair, statements: &str) {
    superuser(&pair.dbname)
        .await
        .batch_execute(statements)
        .await
        .unwrap_or_else(|e| panic!("{statements}: {}", common::pg_error(&e)));
}

#[tokio::test]
async fn users_that_act_as_a_shared_owner_role_by_a_role_setting_rotate_both_ways() {
    let pair = Pair::new().await;
    let owner = format!("owner_{}", pair.id);
    let [a, b] = &pair.users;
    // The usual fix for "objects the clone creates are not accessible to the original user".
    sql(
        &pair,
        &format!(
            "CREATE ROLE {owner} NOLOGIN; GRANT CREATE ON SCHEMA public TO {owner};
             GRANT {owner} TO {a}, {b};
             ALTER ROLE {a} SET role = '{owner}'; ALTER ROLE {b} SET role = '{owner}'"
        ),
    )
    .await;
    // An application's connection of the idle user, idle for longer than the guard's window: in a
    // session acting as the owner role, pg_stat_activity would hide its state, and the guard
    // (as production runs it) would count it.
    let held = common::pg_connect(&pair.dbname, b, &pair.initial_passwords[1])
        .await
        .unwrap();
    held.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let guarded = |pair: &Pair| {
        pair.command(&["rotate", &pair.app_secret])
            .env("ROTATOR_IN_USE", "refuse")
            .env("ROTATOR_IN_USE_WINDOW", "1s")
            .output()
            .unwrap()
    };
    assert_ok(&guarded(&pair));
    pair.assert_rotated_to(b).await;
    drop(held);
    // The logins of assert_rotated_to (AWSPREVIOUS is the next user now) must be over, or idle
    // for longer than the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ok(&guarded(&pair));
    pair.assert_rotated_to(a).await;
    // What the setting is for: a table one user creates is the other's too.
    let current = pair.current().await;
    let c = common::pg_connect(
        &pair.dbname,
        current["username"].as_str().unwrap(),
        current["password"].as_str().unwrap(),
    )
    .await
    .unwrap();
    c.batch_execute("CREATE TABLE shared_t (x int); INSERT INTO shared_t VALUES (1)")
        .await
        .unwrap();
    let owner_of: String = c
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'shared_t'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner_of, owner);
}

/// PostgreSQL 16: a CREATEROLE master alters only roles it holds ADMIN OPTION on. A master secret
/// naming an administrator that did not make the idle user gets the server's own rule in a
/// clear error, AWSCURRENT and the password stay, and once an administrator grants it, the same
/// rotation goes through without a person's help. On 15 CREATEROLE alone suffices.
#[tokio::test]
async fn a_master_without_admin_option_on_the_idle_user_is_refused_on_16_and_the_rotation_resumes_once_granted(
) {
    let pair = Pair::new().await;
    let idle = &pair.users[1];
    let dba = format!("dba_{}", pair.dbname);
    let password = format!("pw-{}", common::suffix());
    superuser("postgres")
        .await
        .batch_execute(&format!(
            "CREATE ROLE {dba} LOGIN CREATEROLE PASSWORD '{password}'"
        ))
        .await
        .unwrap();
    pair.add_master(&dba, &password).await;
    // Its own login fails, so only the master can set the idle user's password.
    sql(
        &pair,
        &format!("ALTER ROLE {idle} VALID UNTIL '2001-01-01'"),
    )
    .await;
    let verifier = || async {
        superuser("postgres")
            .await
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[idle],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = verifier().await;
    let current = pair
        .secret_at(&pair.app_secret, "AWSCURRENT")
        .await
        .unwrap();
    let rotate = || {
        pair.command(&["rotate", &pair.app_secret])
            .env("ROTATOR_TEST_DEADLINE", "5s")
            .output()
            .unwrap()
    };
    if common::pg_major() >= 16 {
        let out = rotate();
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains(&format!("ADMIN option on role \"{idle}\"")),
            "the server's rule is not named: {said}"
        );
        assert_eq!(verifier().await, before, "the password changed");
        assert_eq!(
            pair.secret_at(&pair.app_secret, "AWSCURRENT")
                .await
                .unwrap(),
            current
        );
        superuser("postgres")
            .await
            .batch_execute(&format!("GRANT {idle} TO {dba} WITH ADMIN OPTION"))
            .await
            .unwrap();
    }
    assert_ok(&rotate());
    pair.assert_rotated_to(idle).await;
    assert_ne!(verifier().await, before);
}

#[tokio::test]
async fn an_expired_valid_until_fails_check_and_the_master_path_clears_it() {
    let pair = Pair::new().await;
    add_master(&pair).await;
    let idle = &pair.users[1];
    sql(
        &pair,
        &format!("ALTER ROLE {idle} VALID UNTIL '2001-01-01'"),
    )
    .await;
    let checked = pair.run(&["check", &pair.app_secret]);
    // The idle user's own login fails (PostgreSQL says "password authentication failed"); the
    // master secret sets the password and lifts the date.
    let out = pair
        .command(&["rotate", &pair.app_secret])
        .env("ROTATOR_TEST_DEADLINE", "5s")
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(
        text(&out).contains("clearing the role's VALID UNTIL"),
        "{}",
        text(&out)
    );
    pair.assert_rotated_to(idle).await;
    let until: Option<String> = admin("postgres")
        .await
        .query_one(
            "SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1",
            &[idle],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(until.as_deref(), Some("infinity"));
    // Before the rotation, check said why the idle user could not log in.
    let said = text(&checked);
    assert!(!checked.status.success(), "{said}");
    assert!(
        said.contains("valid until") && said.contains(&format!("{idle} expired at 2001-01-01")),
        "{said}"
    );
}

#[tokio::test]
async fn a_role_refused_by_pg_hba_is_reported_as_such_not_as_a_wrong_password() {
    let pair = Pair::new().await;
    let idle = &pair.users[1];
    let reject = env("ROTATOR_TEST_PG_HBA_REJECT_ROLE");
    as_superuser(&pair, &format!("GRANT {reject} TO {idle}")).await;
    // No source may change it: a clear, fatal error that names the rule, before any change.
    let before = pair.versions(&pair.proxy_secrets[1]).await;
    let out = pair.rotate();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("pg_hba.conf rejects connection"), "{said}");
    assert_eq!(pair.versions(&pair.proxy_secrets[1]).await, before);
    let out = pair.run(&["check", &pair.app_secret]);
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "user {idle} may not log in: pg_hba.conf rejects connection"
        )),
        "{said}"
    );
    assert!(
        !said.contains(&format!("login rejected for user {idle}")),
        "{said}"
    );
    as_superuser(&pair, &format!("REVOKE {reject} FROM {idle}")).await;
    pair.login(idle, &pair.initial_passwords[1])
        .await
        .expect("the idle user's password did not change");
}

#[tokio::test]
async fn a_nologin_idle_user_is_named_as_such_and_the_master_path_does_not_touch_it() {
    let pair = Pair::new().await;
    add_master(&pair).await;
    let idle = &pair.users[1];
    sql(&pair, &format!("ALTER ROLE {idle} NOLOGIN")).await;
    let stored = || async {
        let row = superuser("postgres")
            .await
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[idle],
            )
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    let before = stored().await;
    let out = pair.rotate();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("role {idle} has NOLOGIN")), "{said}");
    assert_eq!(stored().await, before, "the password did not change");
    let out = pair.run(&["check", &pair.app_secret]);
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "user {idle} may not log in: role \"{idle}\" is not permitted to log in"
        )),
        "{said}"
    );
}

#[tokio::test]
async fn an_idle_user_at_its_connection_limit_is_changed_by_the_master_and_the_limit_is_named() {
    let pair = Pair::new().await;
    add_master(&pair).await;
    let idle = &pair.users[1];
    sql(&pair, &format!("ALTER ROLE {idle} CONNECTION LIMIT 1")).await;
    let held = common::pg_connect(&pair.dbname, idle, &pair.initial_passwords[1])
        .await
        .unwrap();
    let out = pair
        .command(&["rotate", &pair.app_secret])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let said = text(&out);
    // The proxy secret's login hit the limit, so the master secret set the password; the test
    // step's login hits it too, and says so at once rather than retrying to its deadline.
    assert!(
        said.lines()
            .any(|l| l.contains("password set") && l.contains("master secret")),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "user {idle} is at its connection limit: too many connections for role"
        )),
        "{said}"
    );
    assert!(!out.status.success(), "{said}");
    assert_eq!(pair.current().await["username"], pair.users[0].as_str());
    drop(held);
    let mut out = pair.rotate();
    for _ in 0..20 {
        if out.status.success() {
            break;
        }
        // The server frees the slot a moment after the client leaves.
        tokio::time::sleep(Duration::from_millis(250)).await;
        out = pair.rotate();
    }
    assert_ok(&out);
    // The limit has done its part. The checks below log in twice in a row, and the second
    // would race the server's freeing of the first one's slot (seen on PostgreSQL 16 in CI).
    sql(&pair, &format!("ALTER ROLE {idle} CONNECTION LIMIT -1")).await;
    pair.assert_rotated_to(idle).await;
}

#[tokio::test]
async fn with_password_encryption_md5_the_verifier_is_md5_and_md5_logins_work() {
    let pair = Pair::new().await;
    let md5 = env("ROTATOR_TEST_PG_HBA_MD5_ROLE");
    let [a, b] = &pair.users;
    // A server that still serves MD5-only clients: md5 in pg_hba.conf, md5 verifiers.
    as_superuser(&pair, &format!("GRANT {md5} TO {a}, {b}")).await;
    sql(
        &pair,
        &format!(
            "ALTER DATABASE {} SET password_encryption = 'md5'",
            pair.dbname
        ),
    )
    .await;
    assert_ok(&pair.rotate());
    pair.assert_rotated_to(b).await;
    let stored: String = superuser("postgres")
        .await
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[b])
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.starts_with("md5"),
        "the verifier is not MD5 (it starts with {:?})",
        stored.split('$').next()
    );
}

#[tokio::test]
async fn check_compares_valid_until_connection_limits_policies_and_default_privileges() {
    let pair = Pair::new().await;
    let [a, b] = &pair.users;
    let s = stack();
    sql(
        &pair,
        &format!(
            "ALTER ROLE {b} CONNECTION LIMIT 5; ALTER ROLE {b} VALID UNTIL '2999-01-01';
             CREATE TABLE orders (id int); ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_rows ON orders TO {a} USING (true);
             ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT SELECT ON TABLES TO {a}",
            s.admin_user
        ),
    )
    .await;
    let out = pair.run(&["check", &pair.app_secret, "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
    let finding = |name: &str| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} finding: {report}"))
    };
    let grants = finding("grants");
    assert_eq!(grants["status"], "warn", "{grants}");
    let detail = grants["detail"].as_str().unwrap();
    for expected in [
        "connection limit 5",
        "valid until 2999-01-01",
        "policy own_rows on public.orders",
        &format!(
            "default privilege on new tables of {}: SELECT",
            s.admin_user
        ),
    ] {
        assert!(detail.contains(expected), "{expected:?} not in {detail}");
    }
    let until = finding("valid until");
    assert_eq!(until["status"], "warn", "{until}");
}

#[tokio::test]
async fn a_read_replica_is_refused_before_anything_changes() {
    let pair = Pair::new().await;
    let replica_port: u16 = env("ROTATOR_TEST_PG_REPLICA_PORT").parse().unwrap();
    pair.edit_app_secret(|app| {
        app["direct_host"] = json!(env("ROTATOR_TEST_PG_REPLICA_HOST"));
        app["direct_port"] = json!(replica_port);
    })
    .await;
    // The standby has the pair's roles once it has replayed them.
    let idle = pair.users[1].clone();
    let password = pair.initial_passwords[1].clone();
    let dbname = pair.dbname.clone();
    eventually(
        "the replica has the pair's users",
        Duration::from_secs(20),
        || {
            let (idle, password, dbname) = (idle.clone(), password.clone(), dbname.clone());
            async move {
                let mut cfg = tokio_postgres::Config::new();
                cfg.host(env("ROTATOR_TEST_PG_REPLICA_HOST"))
                    .port(replica_port)
                    .dbname(&dbname)
                    .user(&idle)
                    .password(&password);
                cfg.connect(tokio_postgres::NoTls).await.is_ok()
            }
        },
    )
    .await;
    let before = (
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    );
    let out = pair.rotate();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "127.0.0.1:{replica_port} is a read replica: passwords change only on the writer"
        )),
        "{said}"
    );
    let after = (
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    );
    assert_eq!(after, before, "no AWSPENDING, no proxy secret change");
    pair.login(&pair.users[1], &pair.initial_passwords[1])
        .await
        .expect("the idle user's password did not change");
    let out = pair.run(&["check", &pair.app_secret]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("is a read replica"), "{said}");
}

/// RDS Proxy checks a login against its copy of the secret and may serve it on a pooled backend
/// connection: a login through it passes even when the database does not take the password.
#[tokio::test]
async fn the_test_step_does_not_take_a_pooled_proxy_login_as_proof_that_the_database_took_the_password(
) {
    let pair = Pair::with(Options {
        proxy_pool: true,
        ..Options::default()
    })
    .await;
    let idle = pair.users[1].clone();
    add_master(&pair).await;
    // Something leaves a backend connection of the idle user in the proxy's pool.
    let idle_secret = pair
        .secret_at(&pair.proxy_secrets[1], "AWSCURRENT")
        .await
        .unwrap();
    pair.login_via_proxy(&idle_secret).await.unwrap();
    eventually(
        "the proxy pools the connection",
        Duration::from_secs(5),
        || async { pair.proxy.pooled() > 0 },
    )
    .await;
    // Between the password change and the test, someone else (the tool this one replaces, a
    // DBA's script) sets the idle user's password to something else.
    let mut rotate = pair.command(&["rotate", &pair.app_secret]);
    rotate
        .env("ROTATOR_TEST_DEADLINE", "4s")
        .env("RUST_LOG", "info");
    let (mut child, reader) = common::pausing_at(rotate, "before:test", 5000);
    let verifier = postgres_protocol::password::scram_sha_256(b"set-by-someone-else");
    sql(&pair, &format!("ALTER ROLE {idle} PASSWORD '{verifier}'")).await;
    pair.proxy.refresh_now().await;
    let status = child.wait().unwrap();
    let said = reader.join().unwrap();
    assert!(status.success(), "{said}");
    // The proxy took the new credentials (on its pooled connection), the database did not: the
    // rotation set the password again (the master secret knows how) before moving AWSCURRENT.
    assert!(
        said.contains("(the proxy took them)")
            && said.contains(&format!("login rejected for user {idle}")),
        "{said}"
    );
    let set = said.lines().filter(|l| l.contains("password set")).count();
    assert_eq!(set, 2, "{said}");
    pair.assert_rotated_to(&idle).await;
}

/// A session on the local stack's hot standby, as `user`.
async fn on_standby(
    dbname: &str,
    user: &str,
    password: &str,
    application: &str,
) -> Result<tokio_postgres::Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(env("ROTATOR_TEST_PG_REPLICA_HOST"))
        .port(env("ROTATOR_TEST_PG_REPLICA_PORT").parse().unwrap())
        .dbname(dbname)
        .user(user)
        .password(password)
        .application_name(application);
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| common::pg_error(&e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// An application reads from the hot standby as the idle user: the writer's pg_stat_activity
/// does not show that session. With the standby in `reader_hosts` the guard looks there too,
/// and the rotation waits. On the old binary the guard looked at the writer only: the password
/// changed, replicated to the standby, and the application's next login there failed.
#[tokio::test]
async fn a_session_of_the_idle_user_on_the_hot_standby_defers_the_rotation_until_it_ends() {
    let pair = Pair::new().await;
    let standby = format!(
        "{}:{}",
        env("ROTATOR_TEST_PG_REPLICA_HOST"),
        env("ROTATOR_TEST_PG_REPLICA_PORT")
    );
    pair.edit_app_secret(|app| app["reader_hosts"] = json!([standby]))
        .await;
    let (idle, password) = (pair.users[1].clone(), pair.initial_passwords[1].clone());
    eventually(
        "the standby has the pair's users",
        Duration::from_secs(20),
        || {
            let (dbname, idle, password) = (pair.dbname.clone(), idle.clone(), password.clone());
            async move { on_standby(&dbname, &idle, &password, "probe").await.is_ok() }
        },
    )
    .await;
    let reports = on_standby(&pair.dbname, &idle, &password, "reports")
        .await
        .unwrap();
    reports.simple_query("SELECT 1").await.unwrap();
    let guarded = |pair: &Pair| {
        pair.command(&["rotate", &pair.app_secret])
            .env("ROTATOR_IN_USE", "refuse")
            .output()
            .unwrap()
    };
    let waited = guarded(&pair);
    assert_eq!(waited.status.code(), Some(75), "{}", text(&waited));
    assert!(
        text(&waited).contains(&format!("on reader {standby} (reports)")),
        "{}",
        text(&waited)
    );
    // The password did not change: a new login on the standby still works.
    on_standby(&pair.dbname, &idle, &password, "again")
        .await
        .expect("the idle user still logs in on the standby");
    // The application leaves: the rotation goes ahead.
    drop(reports);
    let standby_admin = {
        let s = common::stack();
        on_standby(&pair.dbname, &s.admin_user, &s.admin_password, "watch")
            .await
            .unwrap()
    };
    eventually(
        "the standby's session ends",
        Duration::from_secs(10),
        || {
            let (db, idle) = (&standby_admin, idle.clone());
            async move {
                let n: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1::text::name",
                        &[&idle],
                    )
                    .await
                    .unwrap()
                    .get(0);
                n == 0
            }
        },
    )
    .await;
    let done = guarded(&pair);
    assert_ok(&done);
    pair.assert_rotated_to(&idle).await;

    // A reader that cannot be reached: its sessions are unknown, so the rotation waits.
    pair.edit_app_secret(|app| app["reader_hosts"] = json!(["127.0.0.1:1"]))
        .await;
    let before = pair.versions(&pair.proxy_secrets[0]).await;
    let waited = pair
        .command(&["rotate", &pair.app_secret, "--force"])
        .env("ROTATOR_IN_USE", "refuse")
        .output()
        .unwrap();
    assert_eq!(waited.status.code(), Some(75), "{}", text(&waited));
    assert!(
        text(&waited).contains("could not look at the sessions")
            && text(&waited).contains("127.0.0.1:1"),
        "{}",
        text(&waited)
    );
    assert_eq!(
        pair.versions(&pair.proxy_secrets[0]).await,
        before,
        "the proxy secret did not change"
    );
}
