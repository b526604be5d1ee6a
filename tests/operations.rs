//! What an operator sees: the `check` preflight, EMF metrics on stdout and result events on an
//! EventBridge bus (delivered by a rule to an SQS queue, as a user would wire it).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn check(pair: &Pair, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec!["check", pair.app_secret.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = pair.run(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = pair.run(&["check", pair.app_secret.as_str()]);
    assert_eq!(text.status.code(), out.status.code());
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&text.stdout).into_owned(),
    )
}

fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no finding {check:?} in {report:#}"))
}

#[tokio::test]
async fn check_of_a_healthy_pair_is_ready_and_changes_nothing() {
    let pair = Pair::new().await;
    let before = (
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[0]).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    );
    let (ok, report, text) = check(&pair, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(report["ready"], true);
    assert_eq!(report["problems"], 0);
    for name in [
        "schema",
        "proxy secrets",
        &format!("login {}", pair.users[0]),
        &format!("idle user {}", pair.users[1]),
        "grants",
    ] {
        assert_eq!(finding(&report, name)["status"], "ok", "{name}: {report:#}");
    }
    // The tests run without TLS, which check calls out.
    assert_eq!(finding(&report, "tls")["status"], "warn");
    assert!(text.contains("ready to rotate"), "{text}");
    assert!(
        text.contains(&format!("idle user {}", pair.users[1])),
        "{text}"
    );
    let after = (
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[0]).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    );
    assert_eq!(before, after, "check wrote to Secrets Manager");
    for (user, pw) in pair.users.iter().zip(&pair.initial_passwords) {
        pair.login(user, pw).await.unwrap();
    }
    assert!(pair.try_status().is_none(), "check wrote a step record");
}

#[tokio::test]
async fn check_warns_of_grant_drift_and_fails_on_what_would_break_a_rotation() {
    let pair = Pair::new().await;
    let db = admin(&pair.dbname).await;
    db.batch_execute(&format!(
        "CREATE TABLE orders (id int); GRANT SELECT ON orders TO {}",
        pair.users[0]
    ))
    .await
    .unwrap();
    let (ok, report, _) = check(&pair, &[]);
    assert!(ok, "drift is a warning: {report:#}");
    let grants = finding(&report, "grants");
    assert_eq!(grants["status"], "warn");
    let detail = grants["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("only {}", pair.users[0])) && detail.contains("orders: SELECT"),
        "{detail}"
    );

    // The idle user's password changed behind our back: nothing we know logs it in.
    db.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD 'changed-by-hand'",
        pair.users[1]
    ))
    .await
    .unwrap();
    let (ok, report, text) = check(&pair, &[]);
    assert!(!ok, "{report:#}");
    assert_eq!(
        finding(&report, &format!("idle user {}", pair.users[1]))["status"],
        "fail"
    );
    assert!(text.contains("NOT ready to rotate"), "{text}");

    // A proxy secret for a user outside the rotation.
    pair.sm
        .put_secret_value()
        .secret_id(&pair.proxy_secrets[1])
        .secret_string(json!({"username": "someone_else", "password": "x"}).to_string())
        .send()
        .await
        .unwrap();
    let (ok, report, _) = check(&pair, &[]);
    assert!(!ok);
    let proxy = finding(&report, "proxy secrets");
    assert_eq!(proxy["status"], "fail");
    assert!(
        proxy["detail"].as_str().unwrap().contains("someone_else"),
        "{proxy}"
    );
}

/// Receives what arrives on `url` within `wait`, as JSON bodies.
async fn drain(queues: &Queues, url: &str, want: usize, wait: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < want && std::time::Instant::now() < deadline {
        let out = queues
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            got.push(serde_json::from_str(m.body().unwrap()).unwrap());
            queues
                .sqs
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    got
}

#[tokio::test]
async fn a_worker_emits_metrics_and_publishes_result_events_without_secrets() {
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    // The events' destination: a bus, a rule on our source, an SQS queue as its target.
    let events = aws_sdk_eventbridge::Client::new(&aws().await);
    let bus = format!("rt-{}-bus", pair.id);
    events.create_event_bus().name(&bus).send().await.unwrap();
    let sink = queues
        .sqs
        .create_queue()
        .queue_name(format!("rt-{}-events", pair.id))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let sink_arn = queues
        .sqs
        .get_queue_attributes()
        .queue_url(&sink)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let rule = format!("rt-{}-results", pair.id);
    events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(json!({"source": ["rds-rotator"]}).to_string())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("sink")
                .arn(sink_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // A second secret that is broken: its rotation fails for good.
    let broken = format!("rt-{}/broken", pair.id);
    let mut value = pair.current().await;
    value["rotation_usernames"] = json!([pair.users[0], pair.users[0]]);
    pair.sm
        .create_secret()
        .name(&broken)
        .secret_string(value.to_string())
        .send()
        .await
        .unwrap();

    let (mut worker, log) = pair.spawn_worker(&queues, &[("ROTATOR_EVENT_BUS", &bus)]);
    queues
        .send(&json!({"secret_id": pair.app_secret}).to_string())
        .await;
    queues.send(&json!({"secret_id": broken}).to_string()).await;
    let got = drain(&queues, &sink, 2, Duration::from_secs(60)).await;
    sigterm(&worker);
    wait_exit(&mut worker, Duration::from_secs(30));
    let log = log.lock().unwrap().clone();

    let of = |kind: &str| {
        got.iter()
            .find(|e| e["detail-type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event among {got:#?}\nworker log:\n{log}"))
            .clone()
    };
    let ok = of("RotationSucceeded");
    assert_eq!(ok["source"], "rds-rotator");
    assert!(ok["detail"]["secret_arn"]
        .as_str()
        .unwrap()
        .contains(&pair.app_secret));
    assert_eq!(ok["detail"]["from_user"], pair.users[0].as_str());
    assert_eq!(ok["detail"]["to_user"], pair.users[1].as_str());
    assert_eq!(
        ok["detail"]["rotation_id"],
        pair.status()["rotation_id"],
        "the event names the rotation"
    );
    let failed = of("RotationFailed");
    let reason = failed["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("listed twice"), "{reason}");

    // Metrics: one EMF line per rotation, one per step.
    let emf: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with("{\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let main: Vec<&Value> = emf
        .iter()
        .filter(|l| l.get("RotationsSucceeded").is_some())
        .collect();
    let success = main
        .iter()
        .find(|l| l["RotationsSucceeded"] == 1)
        .unwrap_or_else(|| panic!("no success metric in\n{log}"));
    assert_eq!(
        success["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "RdsRotator"
    );
    assert!(success["AwsCalls"].as_u64().unwrap() > 0, "{success}");
    assert!(success["DbConnections"].as_u64().unwrap() > 0, "{success}");
    assert!(success["RotationDuration"].as_f64().unwrap() > 0.0);
    assert!(
        success["aws_calls"]["SecretsManager.PutSecretValue"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert!(main.iter().any(|l| l["RotationsFailed"] == 1), "{log}");
    let steps: Vec<&str> = emf
        .iter()
        .filter(|l| l["rotation_id"] == success["rotation_id"])
        .filter_map(|l| l["Step"].as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "create_pending",
            "set_password",
            "update_proxy",
            "test",
            "finish"
        ]
    );

    // No password in any event or metric line.
    let published = format!("{got:?}\n{log}");
    for pw in pair.all_passwords().await {
        assert!(!published.contains(&pw), "a password was published");
        let escaped = serde_json::to_string(&pw).unwrap();
        assert!(!published.contains(escaped.trim_matches('"')));
    }
}

/// The readers the in-use guard asks RDS for, against the emulator's RDS API: an instance's read
/// replicas, and an Aurora cluster's readers whichever of its endpoints the secret names.
#[tokio::test]
async fn rds_lists_an_instances_read_replicas_and_a_clusters_readers() {
    use rds_rotator::aws::rds::RdsInstances;
    use rds_rotator::rotation::ports::{RdsDb, RdsDirectory};
    let aws = aws().await;
    let rds = aws_sdk_rds::Client::new(&aws);
    let id = format!("rt{}", suffix());
    let instance = |name: String| {
        rds.create_db_instance()
            .db_instance_identifier(name)
            .engine("postgres")
            .db_instance_class("db.t4g.micro")
            .master_username("postgres")
            .master_user_password("not-used-here-1")
            .allocated_storage(20)
            .send()
    };
    instance(format!("{id}-w")).await.unwrap();
    rds.create_db_instance_read_replica()
        .db_instance_identifier(format!("{id}-r"))
        .source_db_instance_identifier(format!("{id}-w"))
        .send()
        .await
        .unwrap();
    let directory = RdsInstances::new(&aws);
    let host = |name: &str| format!("{name}.aaaaaaaaaa.us-east-1.rds.amazonaws.com");
    let found = directory
        .topology(&RdsDb::Host(host(&format!("{id}-w"))))
        .await
        .unwrap()
        .expect("RDS knows the instance");
    let readers: Vec<String> = found.readers.iter().map(|r| r.host.clone()).collect();
    assert_eq!(readers, [host(&format!("{id}-r"))]);
    assert!(
        found.arns[0].ends_with(&format!(":db:{id}-w")),
        "{:?}",
        found.arns
    );

    // An Aurora cluster: a writer and two readers.
    let cluster = rds
        .create_db_cluster()
        .db_cluster_identifier(format!("{id}-c"))
        .engine("aurora-postgresql")
        .master_username("postgres")
        .master_user_password("not-used-here-1")
        .send()
        .await
        .unwrap();
    let cluster = cluster.db_cluster().unwrap();
    for n in 1..=3 {
        rds.create_db_instance()
            .db_instance_identifier(format!("{id}-c{n}"))
            .db_cluster_identifier(format!("{id}-c"))
            .engine("aurora-postgresql")
            .db_instance_class("db.r6g.large")
            .send()
            .await
            .unwrap();
    }
    let want: Vec<String> = [2, 3].map(|n| host(&format!("{id}-c{n}"))).into();
    for named in [
        cluster.endpoint().unwrap().to_owned(),
        cluster.reader_endpoint().unwrap().to_owned(),
        host(&format!("{id}-c1")),
    ] {
        let found = directory
            .topology(&RdsDb::Host(named.clone()))
            .await
            .unwrap()
            .expect("RDS knows it");
        let mut readers: Vec<String> = found.readers.iter().map(|r| r.host.clone()).collect();
        readers.sort();
        assert_eq!(readers, want, "{named}");
        assert_eq!(
            found.arns.len(),
            2,
            "the cluster's and its writer's: {:?}",
            found.arns
        );
    }
    // Names that are not an RDS endpoint's ask nothing; one RDS does not know is said so.
    assert_eq!(
        directory
            .topology(&RdsDb::Host("127.0.0.1".into()))
            .await
            .unwrap(),
        None
    );
    let gone = directory
        .topology(&RdsDb::Instance(format!("{id}-gone"), "127.0.0.1".into()))
        .await;
    assert!(
        matches!(
            gone,
            Err(rds_rotator::rotation::ports::RdsError::NotFound(_))
        ),
        "{gone:?}"
    );
}

/// A PostgreSQL instance in the emulator's RDS API, named `id`, at `version`: its ARN.
async fn rds_instance(rds: &aws_sdk_rds::Client, id: &str, version: &str) -> String {
    rds.create_db_instance()
        .db_instance_identifier(id)
        .engine("postgres")
        .engine_version(version)
        .db_instance_class("db.t4g.micro")
        .master_username("postgres")
        .master_user_password("not-used-here-1")
        .allocated_storage(20)
        .send()
        .await
        .unwrap()
        .db_instance()
        .unwrap()
        .db_instance_arn()
        .unwrap()
        .to_owned()
}

/// Blue/Green deployments, against the emulator's RDS API; the secret names its database as
/// AWS's own RDS secrets do (`dbInstanceIdentifier`). A deployment that upgrades the major
/// version keeps green in sync by logical replication, which does not carry ALTER ROLE: the
/// rotation waits, with nothing changed, and `check` says why. One within a major version
/// (physical replication) does not stop it; `--rds-discovery off` does not look, and `check`
/// says so. On the old binary the rotation went ahead under a logical deployment.
#[tokio::test]
async fn a_blue_green_deployment_green_would_not_follow_defers_the_rotation_and_check_says_why() {
    let pair = Pair::new().await;
    let rds = aws_sdk_rds::Client::new(&aws().await);
    let id = format!("rt{}", suffix());
    let blue = rds_instance(&rds, &id, "15.4").await;
    let upgrade = rds
        .create_blue_green_deployment()
        .blue_green_deployment_name(format!("{id}-to-16"))
        .source(&blue)
        .target_engine_version("16.3")
        .send()
        .await
        .unwrap();
    let upgrade = upgrade
        .blue_green_deployment()
        .unwrap()
        .blue_green_deployment_identifier()
        .unwrap()
        .to_owned();
    pair.edit_app_secret(|app| app["dbInstanceIdentifier"] = json!(id))
        .await;
    let before = (
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    );

    let out = pair.rotate();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.contains(&format!("Blue/Green deployment {id}-to-16 ({upgrade})"))
            && said.contains("logical replication"),
        "{said}"
    );
    let after = (
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    );
    assert_eq!(after, before, "nothing was written");
    let (ok, report, shown) = check(&pair, &[]);
    assert!(!ok, "{shown}");
    let line = finding(&report, "blue/green");
    assert_eq!(line["status"], "fail", "{line}");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("logical replication"),
        "{line}"
    );
    // What an operator sees.
    println!("{shown}");

    // Not looked for: the rotation goes on, and check says the look is off.
    let off = pair
        .command(&["check", &pair.app_secret, "--json"])
        .env("ROTATOR_RDS_DISCOVERY", "off")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&off.stdout).unwrap();
    let line = finding(&report, "blue/green");
    assert_eq!(line["status"], "warn", "{line}");
    assert!(
        line["detail"].as_str().unwrap().starts_with("off"),
        "{line}"
    );
    let out = pair
        .command(&["rotate", &pair.app_secret])
        .env("ROTATOR_RDS_DISCOVERY", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[1]).await;

    // Within one major version (physical replication), the change reaches green: no wait.
    let id2 = format!("{id}-b");
    let blue2 = rds_instance(&rds, &id2, "15.4").await;
    let minor = rds
        .create_blue_green_deployment()
        .blue_green_deployment_name(format!("{id2}-minor"))
        .source(&blue2)
        .target_engine_version("15.7")
        .send()
        .await
        .unwrap();
    pair.edit_app_secret(|app| app["dbInstanceIdentifier"] = json!(id2))
        .await;
    let out = pair.run(&["rotate", &pair.app_secret, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    pair.assert_rotated_to(&pair.users[0]).await;
    let (_, report, _) = check(&pair, &[]);
    let line = finding(&report, "blue/green");
    assert_eq!(line["status"], "ok", "{line}");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("physical replication"),
        "{line}"
    );

    // Its switchover begins: while it runs, the names move to green, and the rotation waits
    // whatever the replication. (The emulator keeps it in progress for SwitchoverTimeout.)
    let minor = minor
        .blue_green_deployment()
        .unwrap()
        .blue_green_deployment_identifier()
        .unwrap()
        .to_owned();
    rds.switchover_blue_green_deployment()
        .blue_green_deployment_identifier(&minor)
        .switchover_timeout(300)
        .send()
        .await
        .unwrap();
    let out = pair.run(&["rotate", &pair.app_secret, "--force"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        text(&out).contains("switchover is in progress"),
        "{}",
        text(&out)
    );
}

/// An account where the rotator may not call RDS (here the emulator, behind a proxy that answers
/// DescribeBlueGreenDeployments as IAM does when the role lacks it): the rotation stops before
/// anything is written, with a message that names the action and the setting that turns the look
/// off; `check` says the same. On the old binary the rotation went ahead without looking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rds_api_the_rotator_may_not_call_stops_the_rotation_naming_the_action_and_the_setting()
{
    let pair = Pair::new().await;
    let rds = aws_sdk_rds::Client::new(&aws().await);
    let id = format!("rt{}", suffix());
    rds_instance(&rds, &id, "15.4").await;
    pair.edit_app_secret(|app| app["dbInstanceIdentifier"] = json!(id))
        .await;
    let proxy = refusing_proxy().await;
    proxy.refusals.refuse(
        "rds.DescribeBlueGreenDeployments",
        "",
        "AccessDenied",
        "User: arn:aws:sts::123456789012:assumed-role/rotator/task is not authorized to perform: rds:DescribeBlueGreenDeployments",
    );
    // The proxy runs in this test's runtime: the binary is waited for off it.
    let via_proxy = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            pair.command(args)
                .env("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr))
                .output()
                .unwrap()
        })
    };
    let before = pair.versions(&pair.app_secret).await;
    let out = via_proxy(&["rotate", &pair.app_secret]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    for part in [
        "rds:DescribeBlueGreenDeployments",
        "ROTATOR_RDS_DISCOVERY=off",
    ] {
        assert!(said.contains(part), "{part}: {said}");
    }
    assert_eq!(
        pair.versions(&pair.app_secret).await,
        before,
        "nothing was written"
    );
    let out = via_proxy(&["check", &pair.app_secret]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out)
            .lines()
            .any(|l| l.contains("blue/green") && l.contains("rds:DescribeBlueGreenDeployments")),
        "{}",
        text(&out)
    );
}
