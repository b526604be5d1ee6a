//! `rds-rotator adopt`, tried as a new user would: a plain single-user secret and a master
//! secret, then adopt, check and rotations that alternate the users, while an application logs
//! in with AWSCURRENT the whole time. Against the local PostgreSQL, MariaDB and moto (RDS Proxy's
//! Auth list comes from moto's DescribeDBProxies; the proxy itself is the stand-in).

mod common;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::Client as Sm;
use common::mariadb::{my_admin, my_literal, my_stack, opts, APP_GRANTS};
use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

/// A database with one application user, as it is before adoption: a single-user secret in
/// the AWS-standard format, a master secret, and the proxy secret RDS Proxy used so far.
struct Single {
    id: String,
    engine: &'static str,
    dbname: String,
    user: String,
    password: String,
    app_secret: String,
    master_secret: String,
    /// The proxy's own secret for the user before adoption (PostgreSQL only).
    legacy_proxy_secret: Option<String>,
    proxy: Option<rds_proxy_standin::StandIn>,
    table: String,
    sm: Sm,
}

impl Harness for Single {
    fn sm(&self) -> &Sm {
        &self.sm
    }
    fn app_secret_id(&self) -> &str {
        &self.app_secret
    }
    fn table_name(&self) -> &str {
        &self.table
    }
}

async fn create_secret(sm: &Sm, name: &str, value: &Value) -> String {
    sm.create_secret()
        .name(name)
        .secret_string(value.to_string())
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("team")
                .value("payments")
                .build(),
        )
        .send()
        .await
        .expect("moto answers CreateSecret")
        .arn
        .unwrap()
}

impl Single {
    /// PostgreSQL: the user owns a table, belongs to a group role, has per-role settings. The
    /// master secret holds the stack's master, shaped like RDS's (CREATEROLE and CREATEDB, not
    /// SUPERUSER), which made the user and its group role, so on 16+ it holds ADMIN OPTION on
    /// them as an RDS master does on the roles it made.
    async fn postgres(user_len: Option<usize>) -> Self {
        let id = suffix();
        let dbname = format!("ad_{id}");
        let mut user = format!("ad_{id}");
        if let Some(n) = user_len {
            while user.len() < n {
                user.push('x');
            }
        }
        let password = awkward_password();
        let admin_db = admin("postgres").await;
        let v = |pw: &str| postgres_protocol::password::scram_sha_256(pw.as_bytes());
        admin_db
            .batch_execute(&format!("CREATE DATABASE {dbname}"))
            .await
            .unwrap();
        admin_db
            .batch_execute(&format!(
                "CREATE ROLE {user} LOGIN PASSWORD '{}' CONNECTION LIMIT 40;
                 CREATE ROLE readers_{id} NOLOGIN;
                 GRANT readers_{id} TO {user};
                 GRANT ALL ON DATABASE {dbname} TO {user};
                 ALTER ROLE {user} SET statement_timeout = '30s';
                 ALTER ROLE {user} IN DATABASE {dbname} SET search_path = \"$user\", public;",
                v(&password),
            ))
            .await
            .unwrap();
        let db = admin(&dbname).await;
        db.batch_execute(&format!(
            "GRANT ALL ON SCHEMA public TO {user};
             CREATE TABLE reference (code text); INSERT INTO reference VALUES ('EUR');
             GRANT SELECT ON reference TO readers_{id};"
        ))
        .await
        .unwrap();
        let own = pg_connect(&dbname, &user, &password).await.unwrap();
        own.batch_execute("CREATE TABLE orders (id int, note text); INSERT INTO orders VALUES (1, 'before adoption')")
            .await
            .unwrap();

        let sm = Sm::new(&aws().await);
        let legacy = create_secret(
            &sm,
            &format!("ad-{id}/rds-proxy-{user}"),
            &json!({"username": user, "password": password}),
        )
        .await;
        let s = stack();
        let (master, master_password) = (&s.admin_user, &s.admin_password);
        let proxy = rds_proxy_standin::StandIn::spawn_in_thread(
            rds_proxy_standin::Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                backend_host: s.pg_host.clone(),
                backend_port: s.pg_port,
                secret_ids: vec![legacy.clone()],
                refresh: Duration::from_millis(250),
                pool: false,
            },
            sm.clone(),
        )
        .expect("the RDS Proxy stand-in starts");
        let app_secret = format!("ad-{id}/app");
        create_secret(
            &sm,
            &app_secret,
            &json!({"engine": "postgres", "host": "127.0.0.1", "port": proxy.addr.port(),
                "dbname": dbname, "username": user, "password": password,
                "direct_host": s.pg_host, "direct_port": s.pg_port, "owner_team": "payments"}),
        )
        .await;
        let master_secret = format!("ad-{id}/master");
        create_secret(
            &sm,
            &master_secret,
            &json!({"username": master, "password": master_password}),
        )
        .await;
        let single = Self {
            table: format!("ad-{id}"),
            id,
            engine: "postgres",
            dbname,
            user,
            password,
            app_secret,
            master_secret,
            legacy_proxy_secret: Some(legacy),
            proxy: Some(proxy),
            sm,
        };
        let out = single.run(&["setup"]);
        assert!(out.status.success(), "setup: {}", text(&out));
        single
    }

    /// MariaDB: the user has accounts on two hosts, with different grants and options; the
    /// application connects to the database itself.
    async fn mariadb() -> Self {
        let id = suffix();
        let dbname = format!("adb_{id}");
        let user = format!("ad_{id}");
        let password = format!("q'uo\"te\\{}", suffix());
        let mut admin = my_admin().await;
        for sql in [
            format!("CREATE DATABASE `{dbname}`"),
            format!(
                "CREATE USER '{user}'@'%' IDENTIFIED BY {} WITH MAX_USER_CONNECTIONS 30",
                my_literal(&password)
            ),
            format!(
                "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY {}",
                my_literal(&password)
            ),
            format!("GRANT {APP_GRANTS} ON `{dbname}`.* TO '{user}'@'%'"),
            format!("GRANT {APP_GRANTS} ON `{dbname}`.* TO '{user}'@'127.0.0.1'"),
        ] {
            admin.query_drop(sql).await.unwrap();
        }
        let mut own = mysql_async::Conn::new(opts(&user, &password, Some(&dbname)))
            .await
            .unwrap();
        own.query_drop("CREATE TABLE orders (id int, note text)")
            .await
            .unwrap();
        own.query_drop("INSERT INTO orders VALUES (1, 'before adoption')")
            .await
            .unwrap();
        let sm = Sm::new(&aws().await);
        let s = my_stack();
        let app_secret = format!("ad-{id}/app");
        create_secret(
            &sm,
            &app_secret,
            &json!({"engine": "mariadb", "host": s.host, "port": s.port, "dbname": dbname,
                "username": user, "password": password, "owner_team": "payments"}),
        )
        .await;
        let master_secret = format!("ad-{id}/master");
        create_secret(
            &sm,
            &master_secret,
            &json!({"username": s.admin_user, "password": s.admin_password}),
        )
        .await;
        let single = Self {
            table: format!("ad-{id}"),
            id,
            engine: "mariadb",
            dbname,
            user,
            password,
            app_secret,
            master_secret,
            legacy_proxy_secret: None,
            proxy: None,
            sm,
        };
        let out = single.run(&["setup"]);
        assert!(out.status.success(), "setup: {}", text(&out));
        single
    }

    /// Logs in at the database itself with a `{"username","password"}` value.
    async fn login_as(&self, creds: &Value) -> Result<(), String> {
        let (user, pw) = (
            creds["username"].as_str().unwrap(),
            creds["password"].as_str().unwrap(),
        );
        pg_connect(&self.dbname, user, pw)
            .await
            .map(|_| ())
            .map_err(|e| pg_error(&e))
    }

    /// Makes ROLE (as the superuser, so the stack's master holds nothing on it) with OPTIONS,
    /// and puts it in the master secret (PostgreSQL).
    async fn use_master(&self, role: &str, options: &str) {
        let password = suffix() + &suffix();
        superuser("postgres")
            .await
            .batch_execute(&format!(
                "CREATE ROLE {role} {options} PASSWORD '{password}';
                 GRANT ALL ON DATABASE {} TO {role};",
                self.dbname
            ))
            .await
            .unwrap();
        self.sm
            .put_secret_value()
            .secret_id(&self.master_secret)
            .secret_string(json!({"username": role, "password": password}).to_string())
            .send()
            .await
            .unwrap();
    }

    fn clone_name(&self) -> String {
        format!("{}_clone", self.user)
    }

    fn adopt(&self, extra: &[&str]) -> Output {
        self.adopt_command(extra).output().unwrap()
    }

    /// `adopt` of this secret with its master secret, under a short lease.
    fn adopt_command(&self, extra: &[&str]) -> std::process::Command {
        let mut args = vec![
            "adopt",
            self.app_secret.as_str(),
            "--master-secret",
            self.master_secret.as_str(),
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.command(&args);
        cmd.env("ROTATOR_LEASE_DURATION", "3s");
        cmd
    }

    /// Logs in as `creds` and runs `sql`, on the application's path (the proxy for PostgreSQL).
    async fn exec(&self, creds: &Value, sql: &str) -> Result<(), String> {
        let (user, pw) = (
            creds["username"].as_str().unwrap(),
            creds["password"].as_str().unwrap(),
        );
        if self.engine == "postgres" {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1")
                .port(self.proxy.as_ref().unwrap().addr.port())
                .dbname(&self.dbname)
                .user(user)
                .password(pw)
                .connect_timeout(Duration::from_secs(5));
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| pg_error(&e))?;
            tokio::spawn(conn);
            client.batch_execute(sql).await.map_err(|e| pg_error(&e))
        } else {
            let mut conn = mysql_async::Conn::new(opts(user, pw, Some(&self.dbname)))
                .await
                .map_err(|e| e.to_string())?;
            for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                conn.query_drop(stmt).await.map_err(|e| e.to_string())?;
            }
            let _ = conn.disconnect().await;
            Ok(())
        }
    }

    /// Everything adoption may change: the application secret's versions, the secrets named
    /// after it, and the clone in the database.
    async fn snapshot(&self) -> (Vec<(String, Vec<String>)>, Vec<String>, Vec<String>) {
        let versions = self.versions(&self.app_secret).await;
        let listed = self
            .sm
            .list_secrets()
            .filters(
                aws_sdk_secretsmanager::types::Filter::builder()
                    .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                    .values(format!("ad-{}/app/", self.id))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut names: Vec<String> = listed
            .secret_list()
            .iter()
            .filter_map(|s| s.name().map(str::to_owned))
            .collect();
        names.sort();
        let clone = self.clone_name();
        let users = if self.engine == "postgres" {
            admin("postgres")
                .await
                .query(
                    "SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1",
                    &[&format!("{}%", self.user)],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            let mut a = my_admin().await;
            a.exec(
                "SELECT CONCAT(User, '@', Host) FROM mysql.user WHERE User = ? ORDER BY 1",
                (clone,),
            )
            .await
            .unwrap()
        };
        (versions, names, users)
    }
}

async fn blocking(
    single: &Arc<Single>,
    f: impl FnOnce(&Single) -> Output + Send + 'static,
) -> Output {
    let s = single.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.unwrap()
}

/// An RDS Proxy in moto (for its Auth list), made with boto3: moto needs a real subnet.
fn moto_proxy(name: &str, family: &str, secret_arns: &[String], recreate: bool) {
    let python = std::env::var("ROTATOR_TEST_PYTHON")
        .expect("ROTATOR_TEST_PYTHON is set by scripts/local-stack start");
    let script = r#"
import boto3, json, sys
name, family, recreate = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
arns = json.loads(sys.argv[4])
rds = boto3.client("rds")
if recreate:
    rds.delete_db_proxy(DBProxyName=name)
subnets = [s["SubnetId"] for s in boto3.client("ec2").describe_subnets()["Subnets"]][:2]
rds.create_db_proxy(DBProxyName=name, EngineFamily=family, RoleArn="arn:aws:iam::123456789012:role/proxy",
    VpcSubnetIds=subnets, Auth=[{"AuthScheme": "SECRETS", "SecretArn": a, "IAMAuth": "DISABLED",
    "ClientPasswordAuthType": "POSTGRES_SCRAM_SHA_256"} for a in arns])
"#;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            script,
            name,
            family,
            if recreate { "1" } else { "0" },
            &serde_json::to_string(secret_arns).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "boto3 CreateDBProxy: {}", text(&out));
}

fn check_json(single: &Single) -> Value {
    let out = single.run(&["check", &single.app_secret, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("check --json: {}", text(&out)))
}

fn finding<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == name)
}

/// After each rotation the user now in AWSCURRENT creates a table; the other user (AWSPREVIOUS)
/// reads, writes and alters every table either made.
async fn share_objects(single: &Single, round: usize) {
    let current = single.current().await;
    let previous = single
        .secret_at(&single.app_secret, "AWSPREVIOUS")
        .await
        .unwrap();
    single
        .exec(
            &current,
            &format!("CREATE TABLE t{round} (id int); INSERT INTO t{round} VALUES ({round})"),
        )
        .await
        .unwrap_or_else(|e| panic!("{} creates t{round}: {e}", current["username"]));
    let mut tables = vec!["orders".to_owned()];
    tables.extend((1..=round).map(|i| format!("t{i}")));
    for (who, creds) in [("previous", &previous), ("current", &current)] {
        for t in &tables {
            let col = format!("c{round}_{who}");
            let sql = if t == "orders" {
                format!("SELECT count(*) FROM orders; INSERT INTO orders (id) VALUES ({round}); ALTER TABLE orders ADD COLUMN {col} int")
            } else {
                format!("SELECT count(*) FROM {t}; INSERT INTO {t} (id) VALUES ({round}); ALTER TABLE {t} ADD COLUMN {col} int")
            };
            single.exec(creds, &sql).await.unwrap_or_else(|e| {
                panic!(
                    "round {round}: {} ({who}) cannot read, write and alter {t}: {e}",
                    creds["username"]
                )
            });
        }
    }
}

async fn adopt_check_and_rotate_four_times(single: Arc<Single>) -> (u64, Vec<String>) {
    let app = App::start({
        let single = single.clone();
        move || {
            let single = single.clone();
            async move {
                let current = single.current().await;
                single
                    .exec(&current, "SELECT count(*) FROM orders")
                    .await
                    .map_err(|e| format!("{}: {e}", current["username"]))
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The plan first: it changes nothing.
    let before = single.snapshot().await;
    let out = blocking(&single, |s| s.adopt(&["--dry-run", "--json"])).await;
    assert!(out.status.success(), "adopt --dry-run: {}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["changed"], false);
    let sql: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["sql"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
        })
        .collect();
    assert!(
        sql.iter().any(|s| s.contains(&single.clone_name())) && sql.len() >= 2,
        "the plan shows the SQL: {plan}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&single.password),
        "the plan shows no password"
    );
    assert_eq!(
        single.snapshot().await,
        before,
        "--dry-run changed something"
    );

    let proxy_name = format!("ad-{}", single.id);
    let mut adopt_args: Vec<String> = Vec::new();
    if let Some(legacy) = &single.legacy_proxy_secret {
        moto_proxy(
            &proxy_name,
            "POSTGRESQL",
            std::slice::from_ref(legacy),
            false,
        );
        adopt_args = vec!["--proxy".into(), proxy_name.clone()];
    }
    let args = adopt_args.clone();
    let out = blocking(&single, move |s| {
        s.adopt(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await;
    assert!(out.status.success(), "adopt: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("adopted "), "{said}");
    assert!(
        !said.contains(&single.password),
        "adopt printed the password"
    );

    let current = single.current().await;
    assert_eq!(
        current["username"],
        single.user.as_str(),
        "username unchanged"
    );
    assert_eq!(
        current["password"],
        single.password.as_str(),
        "password unchanged"
    );
    assert_eq!(current["owner_team"], "payments", "other keys kept");
    assert_eq!(
        current["rotation_usernames"],
        json!([single.user, single.clone_name()])
    );
    let ids: Vec<String> = current["proxy_secret_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    let clone_secret = single.secret_at(&ids[1], "AWSCURRENT").await.unwrap();
    assert_eq!(clone_secret["username"], single.clone_name().as_str());
    // The new secret carries the application secret's tags, and the mark that keeps the tag
    // fan-out away from it.
    let described = single
        .sm
        .describe_secret()
        .secret_id(&ids[1])
        .send()
        .await
        .unwrap();
    let tags: Vec<(String, String)> = described
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    assert!(
        tags.contains(&("team".into(), "payments".into())),
        "{tags:?}"
    );
    assert!(
        tags.iter()
            .any(|(k, _)| k == "rds-rotator:proxy-secret-for"),
        "{tags:?}"
    );

    if let Some(legacy) = &single.legacy_proxy_secret {
        assert_eq!(
            &ids[0], legacy,
            "the proxy's own secret for the user is reused"
        );
        assert!(said.contains("aws rds modify-db-proxy"), "{said}");
        assert!(
            said.contains(&ids[1]) && said.contains(legacy),
            "the call lists both: {said}"
        );
        // Not attached yet: check says so.
        let report = check_json(&single);
        let proxy = finding(&report, "rds proxy").expect("an rds proxy line");
        assert_eq!(proxy["status"], "fail", "{report}");
        assert!(proxy["detail"]
            .as_str()
            .unwrap()
            .contains(&single.clone_name()));
        // Attached (moto has no ModifyDBProxy: the proxy is made again with both).
        moto_proxy(&proxy_name, "POSTGRESQL", &ids, true);
        single.proxy.as_ref().unwrap().attach(&ids[1]).await;
    }

    let report = check_json(&single);
    assert_eq!(report["ready"], true, "check after adopt: {report}");
    let fails: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] != "ok" && f["check"] != "tls")
        .collect();
    assert!(fails.is_empty(), "check has findings: {fails:?}");
    assert_eq!(
        finding(&report, "grants").unwrap()["status"],
        "ok",
        "{report}"
    );

    let mut expect = [single.user.clone(), single.clone_name()];
    for round in 1..=4 {
        let out = blocking(&single, |s| s.rotate()).await;
        assert!(out.status.success(), "rotation {round}: {}", text(&out));
        expect.reverse();
        assert_eq!(
            single.current().await["username"],
            expect[0].as_str(),
            "rotation {round} alternates the users"
        );
        share_objects(&single, round).await;
    }

    // Adopted already: nothing to do, nothing written.
    let versions = single.versions(&single.app_secret).await;
    let args = adopt_args.clone();
    let out = blocking(&single, move |s| {
        s.adopt(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await;
    assert!(out.status.success(), "second adopt: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already adopted"),
        "{}",
        text(&out)
    );
    assert_eq!(single.versions(&single.app_secret).await, versions);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_single_user_secret_is_adopted_and_rotates_both_ways_without_a_failed_login() {
    let single = Arc::new(Single::postgres(None).await);
    let (ok, failures) = adopt_check_and_rotate_four_times(single.clone()).await;
    assert!(
        failures.is_empty(),
        "application logins failed: {failures:?}"
    );
    assert!(ok > 20, "the application logged in only {ok} times");
    // The clone has what the original has: the group role, the settings.
    let db = admin(&single.dbname).await;
    let clone = single.clone_name();
    let can: bool = db
        .query_one(
            "SELECT pg_has_role($1::text::name, $2::text::name, 'MEMBER')",
            &[&clone, &format!("readers_{}", single.id)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(can, "the clone is in the original's group role");
    report(
        "adopt-postgres",
        &format!(
            "adopt (postgres): 4 rotations after adoption, application logins ok={ok} failed=0"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_user_on_two_hosts_is_adopted_and_rotates_both_ways_without_a_failed_login() {
    let single = Arc::new(Single::mariadb().await);
    let (ok, failures) = adopt_check_and_rotate_four_times(single.clone()).await;
    assert!(
        failures.is_empty(),
        "application logins failed: {failures:?}"
    );
    assert!(ok > 20, "the application logged in only {ok} times");
    // Both accounts of the clone, with the original's options and grants.
    let mut a = my_admin().await;
    let clone = single.clone_name();
    for host in ["%", "127.0.0.1"] {
        let orig: Vec<String> = a
            .query(format!("SHOW GRANTS FOR '{}'@'{host}'", single.user))
            .await
            .unwrap();
        let twin: Vec<String> = a
            .query(format!("SHOW GRANTS FOR '{clone}'@'{host}'"))
            .await
            .unwrap();
        // The grantee and the hash (each user has its own password) aside, the same lines.
        let norm = |lines: Vec<String>, u: &str| -> Vec<String> {
            const CUT: &str = " IDENTIFIED BY PASSWORD '";
            let mut v: Vec<String> = lines
                .iter()
                .map(|l| {
                    let l = l.replace(&format!("`{u}`"), "<u>");
                    match l.find(CUT) {
                        Some(i) => {
                            let rest = &l[i + CUT.len()..];
                            let end = rest.find('\'').unwrap() + 1;
                            format!("{}{}", &l[..i], &rest[end..])
                        }
                        None => l,
                    }
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            norm(orig, &single.user),
            norm(twin, &clone),
            "grants on {host}"
        );
    }
    report(
        "adopt-mariadb",
        &format!("adopt (mariadb, 2 host accounts): 4 rotations after adoption, application logins ok={ok} failed=0"),
    );
}

/// A run killed at each step, then run again: it finishes, and the secret rotates.
async fn killed_then_rerun(single: Single, failpoint: &str) {
    let out = single
        .command(&[
            "adopt",
            &single.app_secret,
            "--master-secret",
            &single.master_secret,
        ])
        .env("ROTATOR_TEST_FAILPOINTS", format!("{failpoint}=exit"))
        .env("ROTATOR_LEASE_DURATION", "3s")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("failpoint {failpoint} reached")),
        "{failpoint}: {}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(86), "{failpoint}: {}", text(&out));
    if failpoint == "inside:adopt.clone_user" {
        // Killed inside the clone's statements: PostgreSQL's transaction left nothing, MariaDB
        // kept the first account of two.
        let (_, _, users) = single.snapshot().await;
        if single.engine == "postgres" {
            assert!(!users.contains(&single.clone_name()), "left: {users:?}");
        } else {
            assert_eq!(users.len(), 1, "one account of two: {users:?}");
        }
    }
    let current = single.current().await;
    assert_eq!(current["password"], single.password.as_str(), "{failpoint}");
    let out = single.adopt(&[]);
    assert!(
        out.status.success(),
        "rerun after {failpoint}: {}",
        text(&out)
    );
    // Attached as the printed call says (the stand-in reads the last secret of a user last).
    let current = single.current().await;
    if let (Some(proxy), Some(ids)) = (&single.proxy, current["proxy_secret_ids"].as_array()) {
        proxy.attach(ids[1].as_str().unwrap()).await;
        proxy.attach(ids[0].as_str().unwrap()).await;
    }
    let report = check_json(&single);
    assert_eq!(
        report["ready"], true,
        "check after {failpoint} and a rerun: {report}"
    );
    assert_eq!(
        finding(&report, "grants").unwrap()["status"],
        "ok",
        "{failpoint}: {report}"
    );
    for _ in 0..2 {
        let out = single.rotate();
        assert!(
            out.status.success(),
            "rotate after {failpoint}: {}",
            text(&out)
        );
    }
    assert_eq!(single.current().await["username"], single.user.as_str());
}

const STEPS: [&str; 5] = [
    "after:adopt.clone_secret",
    "inside:adopt.clone_user",
    "after:adopt.clone_user",
    "after:adopt.user_secret",
    "after:adopt.app_secret",
];

#[tokio::test]
async fn postgres_adopt_killed_at_each_step_completes_when_run_again() {
    for step in STEPS {
        killed_then_rerun(Single::postgres(None).await, step).await;
    }
    report(
        "adopt-kills-postgres",
        &format!(
            "adopt (postgres): killed at {} steps, each completed by a rerun",
            STEPS.len()
        ),
    );
}

#[tokio::test]
async fn mariadb_adopt_killed_at_each_step_completes_when_run_again() {
    for step in STEPS {
        killed_then_rerun(Single::mariadb().await, step).await;
    }
    report(
        "adopt-kills-mariadb",
        &format!(
            "adopt (mariadb): killed at {} steps, each completed by a rerun",
            STEPS.len()
        ),
    );
}

/// Bad input: one clear error, exit 1, and nothing changed.
async fn refused(single: &Single, extra: &[&str], says: &str) {
    let before = single.snapshot().await;
    let out = single.adopt(extra);
    assert_eq!(out.status.code(), Some(1), "{says}: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "expected {says:?} in: {err}");
    assert_eq!(single.snapshot().await, before, "{says}: something changed");
}

#[tokio::test]
async fn postgres_bad_input_is_refused_with_a_clear_error_and_nothing_changed() {
    // A master secret whose user may not create roles.
    let single = Single::postgres(None).await;
    single
        .use_master(&format!("weak_{}", single.id), "LOGIN")
        .await;
    refused(&single, &[], "neither CREATEROLE nor SUPERUSER").await;

    // A clone that exists with other rights.
    let single = Single::postgres(None).await;
    admin("postgres")
        .await
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN CREATEDB PASSWORD 'x'",
            single.clone_name()
        ))
        .await
        .unwrap();
    refused(&single, &[], "exists with other rights").await;

    // A name that the suffix makes too long for PostgreSQL (63 bytes).
    let single = Single::postgres(Some(60)).await;
    refused(&single, &[], "choose a shorter --clone-suffix").await;

    // A secret that already names two other users.
    let single = Single::postgres(None).await;
    let other = format!("other_{}", single.id);
    let user = single.user.clone();
    single
        .edit_app_secret(|app| app["rotation_usernames"] = json!([user, other]))
        .await;
    refused(&single, &[], "already rotates users").await;
}

/// A master without CREATE USER, and one that may create users but not give the original's
/// grants (the rehearsal account finds it, and is gone again).
#[tokio::test]
async fn mariadb_bad_input_is_refused_with_a_clear_error_and_nothing_changed() {
    let mut clones = Vec::new();
    for (who, grants) in [("weak", &[][..]), ("half", &["CREATE USER ON *.*"][..])] {
        let single = Single::mariadb().await;
        clones.push(single.clone_name());
        let name = format!("{who}_{}", single.id);
        let mut a = my_admin().await;
        a.query_drop(format!("CREATE USER '{name}'@'%' IDENTIFIED BY 'pw-{who}'"))
            .await
            .unwrap();
        let reads = [
            "SELECT ON mysql.*".to_owned(),
            format!("SELECT ON `{}`.*", single.dbname),
        ];
        for grant in grants.iter().map(|g| g.to_string()).chain(reads) {
            a.query_drop(format!("GRANT {grant} TO '{name}'@'%'"))
                .await
                .unwrap();
        }
        single
            .sm
            .put_secret_value()
            .secret_id(&single.master_secret)
            .secret_string(json!({"username": name, "password": format!("pw-{who}")}).to_string())
            .send()
            .await
            .unwrap();
        refused(&single, &[], "may not create the clone").await;
    }
    // Each rehearsal account is named after its clone (other tests rehearse meanwhile).
    let mut a = my_admin().await;
    for clone in clones {
        use sha1::{Digest, Sha1};
        let digest = Sha1::digest(clone.as_bytes());
        let probe: String = "rdsrot_probe_".to_owned()
            + &digest[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
        let left: Vec<String> = a
            .exec("SELECT Host FROM mysql.user WHERE User = ?", (&probe,))
            .await
            .unwrap();
        assert!(
            left.is_empty(),
            "rehearsal account {probe} left on {left:?}"
        );
    }
}

#[tokio::test]
async fn the_tag_fan_out_leaves_out_the_proxy_secrets_adopt_made() {
    use rds_rotator::worker::SecretDirectory;
    let single = Single::postgres(None).await;
    let key = format!("fanout-{}", single.id);
    single
        .sm
        .tag_resource()
        .secret_id(&single.app_secret)
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key(&key)
                .value("yes")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let out = single.adopt(&[]);
    assert!(out.status.success(), "adopt: {}", text(&out));
    let app = single
        .sm
        .describe_secret()
        .secret_id(&single.app_secret)
        .send()
        .await
        .unwrap();
    // The proxy secrets copied the tag; only the application secret is rotated by it.
    let found = rds_rotator::aws::secrets::SecretsManager::new(&aws().await)
        .with_tag(&key, "yes")
        .await
        .unwrap();
    assert_eq!(found, vec![app.arn().unwrap().to_owned()]);
}

/// PostgreSQL 16 changed what CREATEROLE may do: only roles held WITH ADMIN OPTION may be
/// granted or altered, and a role's creator holds it. A master secret naming an administrator
/// that did not make the user (another team's, or one made before an upgrade) is refused on 16+,
/// naming the roles and the GRANT that fixes it, with nothing changed; on 15, CREATEROLE alone
/// suffices and the same adoption goes through.
#[tokio::test]
async fn a_user_another_administrator_created_is_refused_on_16_naming_the_admin_option_it_lacks() {
    let single = Single::postgres(None).await;
    let dba = format!("dba_{}", single.id);
    single.use_master(&dba, "LOGIN CREATEROLE").await;
    if pg_major() >= 16 {
        let (user, readers) = (&single.user, format!("readers_{}", single.id));
        refused(
            &single,
            &[],
            &format!("{dba} lacks ADMIN OPTION on {user}, {readers}, which"),
        )
        .await;
        let err = String::from_utf8_lossy(&single.adopt(&[]).stderr).into_owned();
        assert!(
            err.contains(&format!(
                "GRANT \"{user}\", \"{readers}\" TO \"{dba}\" WITH ADMIN OPTION"
            )),
            "the fix is not named in: {err}"
        );
        // What it names is enough: the same adoption then goes through.
        superuser("postgres")
            .await
            .batch_execute(&format!(
                "GRANT {}, readers_{} TO {dba} WITH ADMIN OPTION",
                single.user, single.id
            ))
            .await
            .unwrap();
    }
    let out = single.adopt(&[]);
    assert!(out.status.success(), "adopt: {}", text(&out));
}

/// Clone users set up by hand: one with the original's rights is taken over (it gets a new
/// password, in its proxy secret), unless something is logged in as it.
#[tokio::test]
async fn a_clone_made_by_hand_is_taken_over_unless_it_is_in_use() {
    let single = Single::postgres(None).await;
    let out = single.adopt(&["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_hand = "made-by-hand-1";
    let verifier = postgres_protocol::password::scram_sha_256(by_hand.as_bytes());
    let admin_db = admin(&single.dbname).await;
    for step in plan["steps"].as_array().unwrap() {
        for sql in step["sql"].as_array().unwrap() {
            let sql = sql
                .as_str()
                .unwrap()
                .replace("<verifier of the new password>", &verifier);
            admin_db.batch_execute(&sql).await.unwrap();
        }
    }
    let clone = single.clone_name();
    let held = pg_connect(&single.dbname, &clone, by_hand).await.unwrap();
    held.simple_query("SELECT 1").await.unwrap();
    refused(&single, &[], "its password is unknown, and it is in use").await;

    drop(held);
    eventually(
        "the held session to end",
        Duration::from_secs(10),
        || async {
            admin("postgres")
                .await
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE usename = $1::text::name",
                    &[&clone],
                )
                .await
                .unwrap()
                .is_empty()
        },
    )
    .await;
    let out = single.adopt(&[]);
    assert!(out.status.success(), "adopt: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no known password"),
        "{}",
        text(&out)
    );
    let ids = single.current().await["proxy_secret_ids"].clone();
    let secret = single
        .secret_at(ids[1].as_str().unwrap(), "AWSCURRENT")
        .await
        .unwrap();
    single
        .login_as(&secret)
        .await
        .expect("the clone's proxy secret logs in");
    assert!(
        pg_connect(&single.dbname, &clone, by_hand).await.is_err(),
        "the password set by hand still works"
    );
}

/// Two adopts of one secret at once (in later rounds the second is slowed down before it takes
/// the lease, so it comes in when the first has finished): one adoption, and both succeed.
#[tokio::test]
async fn two_adopts_at_once_make_one_adoption_and_both_succeed() {
    for round in 0..3 {
        let single = Single::postgres(None).await;
        let spawn = |failpoints: &str| {
            single
                .adopt_command(&[])
                .env("ROTATOR_TEST_FAILPOINTS", failpoints)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let first = spawn("");
        let second = spawn(if round == 0 {
            ""
        } else {
            "before:adopt.lease=sleep(2500)"
        });
        let outs = [
            first.wait_with_output().unwrap(),
            second.wait_with_output().unwrap(),
        ];
        for out in &outs {
            assert!(out.status.success(), "an adopt failed: {}", text(out));
        }
        let adopted = outs
            .iter()
            .filter(|o| String::from_utf8_lossy(&o.stdout).starts_with("adopted "))
            .count();
        assert_eq!(adopted, 1, "{}\n{}", text(&outs[0]), text(&outs[1]));
        let versions = single.versions(&single.app_secret).await;
        assert_eq!(versions.len(), 2, "one new version: {versions:?}");
        assert!(
            versions
                .iter()
                .all(|(_, l)| !l.iter().any(|l| l == "RDSROTATOR_STAGED")),
            "a staged label is left: {versions:?}"
        );
        let ids = single.current().await["proxy_secret_ids"].clone();
        let clone_secret = ids[1].as_str().unwrap().to_owned();
        assert_eq!(single.versions(&clone_secret).await.len(), 1);
        let creds = single.secret_at(&clone_secret, "AWSCURRENT").await.unwrap();
        single
            .login_as(&creds)
            .await
            .expect("the clone's secret logs in");
    }
}

/// Before adoption RDS Proxy often authenticates the one user with the application secret
/// itself: that counts as the user's entry. A proxy without it fails.
#[tokio::test]
async fn check_counts_the_application_secret_as_a_single_users_proxy_entry() {
    let single = Single::postgres(None).await;
    let app_arn = single
        .sm
        .describe_secret()
        .secret_id(&single.app_secret)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let legacy = single.legacy_proxy_secret.clone().unwrap();
    for (name, auth, status) in [
        (format!("ad-{}-app", single.id), app_arn, "ok"),
        (format!("ad-{}-other", single.id), legacy, "fail"),
    ] {
        moto_proxy(&name, "POSTGRESQL", &[auth], false);
        let out = single.run(&["check", &single.app_secret, "--proxy", &name, "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("check --json: {}", text(&out)));
        let line = finding(&report, "rds proxy").expect("an rds proxy line");
        assert_eq!(line["status"], status, "{name}: {report}");
    }
}

/// The database goes silent under adopt's open session (a drop rule, a half-open connection)
/// just before the clone is created: adopt ends within its bounds as a retryable failure,
/// instead of holding the secret's lease for ever, and a rerun once the network is back
/// completes the adoption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_silent_under_adopt_ends_it_within_its_bounds_and_a_rerun_completes_it(
) {
    use std::io::BufRead;
    use std::process::Stdio;
    use std::time::Instant;

    let single = Single::postgres(None).await;
    let s = stack();
    let relay = StallingRelay::start((s.pg_host.clone(), s.pg_port)).await;
    let port = relay.port;
    single
        .edit_app_secret(|app| app["direct_port"] = json!(port))
        .await;
    let started = Instant::now();
    let mut child = single
        .adopt_command(&[])
        .env(
            "ROTATOR_TEST_FAILPOINTS",
            "after:adopt.clone_secret=sleep(500)",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The network goes silent once the clone's secret is made: the clone session is open.
    let stderr = child.stderr.take().unwrap();
    let stalls = relay.clone();
    let lines = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("failpoint after:adopt.clone_secret reached") {
                stalls.stall();
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let bound = Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "adopt still running after {bound:?}; it never ends:\n{}",
                lines.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let err = lines.join().unwrap();
    assert!(
        err.contains("failpoint after:adopt.clone_secret reached"),
        "the network never went silent under adopt: {err}"
    );
    assert_eq!(status.code(), Some(75), "retryable: {err}");
    assert!(err.contains("no answer within"), "{err}");
    eprintln!("adopt under a silent database ended in {took:?} (exit 75)");

    relay.resume();
    let out = single.adopt(&[]);
    assert!(
        out.status.success(),
        "the rerun completes it: {}",
        text(&out)
    );
    let app = single.current().await;
    assert_eq!(
        app["rotation_usernames"],
        json!([single.user, single.clone_name()])
    );
}
