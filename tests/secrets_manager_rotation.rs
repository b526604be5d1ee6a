//! `rds-rotator lambda` as Secrets Manager's rotation function: the real binary on a local Lambda
//! Runtime API (tests/common/lambda.rs), driven as Secrets Manager drives it, against moto (behind
//! the shim) and the local PostgreSQL, with the RDS Proxy stand-in on the application's path.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::lambda::{Function, SecretsManager, STEPS};
use common::*;
use serde_json::Value;

fn function_arn(pair: &Pair) -> String {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    format!(
        "arn:aws:lambda:{region}:123456789012:function:rds-rotator-{}",
        pair.id
    )
}

async fn secrets_manager(pair: &Pair) -> SecretsManager {
    let arn = pair
        .sm
        .describe_secret()
        .secret_id(&pair.app_secret)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    SecretsManager {
        sm: pair.sm.clone(),
        secret_arn: arn,
        function_arn: function_arn(pair),
    }
}

/// The function's environment: the pair's settings, as the Terraform module sets them.
fn lambda_command(pair: &Pair) -> Command {
    let mut cmd = pair.command(&["lambda"]);
    cmd.env("ROTATOR_LEASE_WAIT", "30s")
        .env("ROTATOR_METRICS", "emf");
    cmd
}

async fn version_ids(pair: &Pair) -> Vec<String> {
    let mut v: Vec<String> = pair
        .versions(&pair.app_secret)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn secrets_manager_rotates_with_the_lambda_function_and_no_application_login_fails() {
    let pair = Arc::new(Pair::new().await);
    let driver = secrets_manager(&pair).await;
    let mut function = Function::start(lambda_command(&pair), &driver.function_arn).await;
    let app = App::start({
        let pair = pair.clone();
        move || {
            let pair = pair.clone();
            async move {
                let current = pair.current().await;
                pair.login_via_proxy(&current)
                    .await
                    .map_err(|e| format!("{}: {e}", current["username"]))
            }
        }
    });

    // RotateImmediately=false: only testSecret, Secrets Manager's test of the configuration. It
    // passes and changes nothing.
    let before = version_ids(&pair).await;
    let tested = driver.test_configuration(&mut function).await;
    assert!(
        tested.is_ok(),
        "testSecret failed: {tested:?}\n{}",
        function.log()
    );
    assert!(pair.try_status().is_none(), "the test began a rotation");
    assert_eq!(pair.current().await["username"], pair.users[0].as_str());
    let meta = pair
        .sm
        .describe_secret()
        .secret_id(&pair.app_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(meta.rotation_enabled(), Some(true));
    assert_eq!(
        meta.rotation_lambda_arn(),
        Some(driver.function_arn.as_str())
    );

    // Two rotations, each one RotateSecret and the four steps.
    // (The test's version stays, without a label.)
    assert_eq!(version_ids(&pair).await.len(), before.len() + 1);
    let mut expected = before.len() + 1;
    for round in 0..2 {
        let token = driver.start_rotation(true).await;
        let mut live = Some(function);
        let done = driver
            .run_steps(&token, 1, &|| lambda_command(&pair), &mut live)
            .await;
        function = live.unwrap();
        let done = done
            .unwrap_or_else(|d| panic!("rotation failed: {:?}\n{}", d.failures, function.log()));
        assert_eq!(done.attempts, 1);
        let to = &pair.users[(round + 1) % 2];
        pair.assert_rotated_to(to).await;
        assert_eq!(
            pair.version_with(&pair.app_secret, "AWSCURRENT")
                .await
                .as_deref(),
            Some(token.as_str()),
            "Secrets Manager's token is the rotation's version"
        );
        assert_eq!(
            pair.version_with(&pair.app_secret, "AWSPENDING").await,
            None
        );
        let status = pair.status();
        assert_eq!(status["rotation_id"], token.as_str());
        assert_eq!(status["state"], "finished");
        expected += 1;
        assert_eq!(version_ids(&pair).await.len(), expected);

        // Secrets Manager retrying a step of a rotation that is done: each one succeeds and
        // changes nothing.
        let versions = pair.versions(&pair.app_secret).await;
        for step in STEPS {
            let again = function.invoke(driver.event(step, &token)).await;
            assert!(again.is_ok(), "{step} again: {again:?}");
        }
        assert_eq!(pair.versions(&pair.app_secret).await, versions);
    }
    // Its metrics: one line per call, the finishing one a succeeded rotation.
    let log = function.log();
    let succeeded = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["RotationsSucceeded"] == 1)
        .count();
    assert_eq!(succeeded, 2, "{log}");

    // The queue's worker and the CLI share the engine: the secret's rotation being attached to
    // this function is refused unless they know it as this tool's.
    let refused = pair.rotate();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("ROTATOR_ROTATION_FUNCTION_ARNS"),
        "{}",
        text(&refused)
    );
    let rotated = pair
        .command(&["rotate", &pair.app_secret])
        .env("ROTATOR_ROTATION_FUNCTION_ARNS", &driver.function_arn)
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", text(&rotated));
    pair.assert_rotated_to(&pair.users[1]).await;

    // Inside the minimum interval, createSecret refuses and changes nothing: no rotation
    // begins, no record is written, and Secrets Manager tries again later.
    let status = pair.status();
    let current = pair.current().await;
    let token = driver.start_rotation(true).await;
    let mut strict = Function::start(
        {
            let mut cmd = lambda_command(&pair);
            cmd.env("ROTATOR_MIN_INTERVAL", "1h");
            cmd
        },
        &driver.function_arn,
    )
    .await;
    let refused = strict.invoke(driver.event("createSecret", &token)).await;
    let failure = refused.expect_err("createSecret inside the minimum interval");
    assert_eq!(failure.error_type, "RotationFailed");
    assert!(failure.message.contains("minimum interval"), "{failure:?}");
    assert_eq!(pair.status(), status, "the record changed");
    assert_eq!(pair.current().await, current);

    let (ok, failures) = app.stop().await;
    assert!(failures.is_empty(), "failed logins: {failures:?}");
    assert!(ok > 10, "the application logged in only {ok} times");
    report(
        "secrets_manager",
        &format!(
            "secrets manager rotation function: 2 rotations, application logins ok={ok} failed=0"
        ),
    );
}

#[tokio::test]
async fn a_function_killed_in_a_step_is_finished_by_secrets_managers_retry() {
    let pair = Arc::new(Pair::new().await);
    let driver = secrets_manager(&pair).await;
    // The engine's steps and the calls of Secrets Manager's they belong to.
    let points = [
        ("after:create_pending", "createSecret"),
        ("inside:set_password", "setSecret"),
        ("after:update_proxy", "setSecret"),
        ("after:test", "testSecret"),
        ("after:finish", "finishSecret"),
    ];
    for (round, (point, step)) in points.into_iter().enumerate() {
        let token = driver.start_rotation(true).await;
        let started = AtomicUsize::new(0);
        // The first environment dies at `point`; Lambda starts a new one for the retry.
        let environment = || {
            let mut cmd = lambda_command(&pair);
            // The dead environment's lease expires before the retry takes it over: 2 s, not the
            // default 30 s, which would only add waiting to every round.
            cmd.env("ROTATOR_LEASE_DURATION", "2s");
            if started.fetch_add(1, Ordering::SeqCst) == 0 {
                cmd.env("ROTATOR_TEST_FAILPOINTS", format!("{point}=exit"));
            }
            cmd
        };
        let mut function = None;
        let done = driver
            .run_steps(&token, 3, &environment, &mut function)
            .await
            .unwrap_or_else(|d| panic!("{point}: not finished: {:?}", d.failures));
        assert_eq!(done.attempts, 2, "{point}: {:?}", done.failures);
        let (_, failed_step, failure) = &done.failures[0];
        assert_eq!(failed_step, step, "{point}");
        assert_eq!(failure.error_type, "Runtime.ExitError", "{point}");
        assert_eq!(
            pair.version_with(&pair.app_secret, "AWSCURRENT")
                .await
                .as_deref(),
            Some(token.as_str()),
            "{point}"
        );
        pair.assert_rotated_to(&pair.users[(round + 1) % 2]).await;
        let violations = pair.violations(true).await;
        assert!(violations.is_empty(), "{point}: {violations:?}");
    }

    // A crash between two calls (the environment dies while idle): the next call starts a new
    // one and the rotation goes on without a retry.
    let token = driver.start_rotation(true).await;
    let mut function = Function::start(lambda_command(&pair), &driver.function_arn).await;
    for step in ["createSecret", "setSecret"] {
        function.invoke(driver.event(step, &token)).await.unwrap();
    }
    drop(function);
    let mut function = Function::start(lambda_command(&pair), &driver.function_arn).await;
    for step in ["testSecret", "finishSecret"] {
        function.invoke(driver.event(step, &token)).await.unwrap();
    }
    let violations = pair.violations(true).await;
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSCURRENT")
            .await
            .as_deref(),
        Some(token.as_str())
    );
    report(
        "secrets_manager_kills",
        &format!(
            "secrets manager rotation function: killed at {} points, each finished by Secrets Manager's retry",
            points.len()
        ),
    );
}

#[tokio::test]
async fn a_queue_request_and_secrets_managers_rotation_of_one_secret_never_run_at_once() {
    let pair = Arc::new(Pair::new().await);
    let driver = secrets_manager(&pair).await;
    let own = driver.function_arn.clone();
    let cli = |extra: &[(&str, &str)]| {
        let mut cmd = pair.command(&["rotate", &pair.app_secret, "--lease-wait", "60s"]);
        cmd.env("ROTATOR_ROTATION_FUNCTION_ARNS", &own)
            // A request after a finished rotation is skipped, not a second rotation.
            .env("ROTATOR_MIN_INTERVAL", "1h");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    };

    // 1. Secrets Manager's rotation holds the lease in setSecret while the queue's request for
    // the same secret arrives: the request waits, then finishes Secrets Manager's rotation or
    // finds it done; Secrets Manager's remaining calls find their work done.
    let before = version_ids(&pair).await.len();
    let token = driver.start_rotation(true).await;
    let mut function = Function::start(
        {
            let mut cmd = lambda_command(&pair);
            cmd.env("ROTATOR_TEST_FAILPOINTS", "inside:set_password=sleep(3000)");
            cmd
        },
        &driver.function_arn,
    )
    .await;
    function
        .invoke(driver.event("createSecret", &token))
        .await
        .unwrap();
    let set = function.invoke(driver.event("setSecret", &token));
    let queue = tokio::task::spawn_blocking({
        let mut cmd = cli(&[]);
        move || {
            std::thread::sleep(Duration::from_millis(500));
            cmd.output().unwrap()
        }
    });
    let set = set.await;
    assert!(set.is_ok(), "setSecret: {set:?}\n{}", function.log());
    let queued = queue.await.unwrap();
    for step in ["testSecret", "finishSecret"] {
        let r = function.invoke(driver.event(step, &token)).await;
        assert!(r.is_ok(), "{step}: {r:?}\n{}", function.log());
    }
    assert!(queued.status.success(), "{}", text(&queued));
    let said = String::from_utf8_lossy(&queued.stdout).into_owned();
    // It waited for the lease (setSecret held it) and then finished rotation `token`, which
    // Secrets Manager's later calls found done.
    assert!(
        said.contains(&format!("rotation {token}, resumed")),
        "the queue's request did not finish Secrets Manager's rotation: {said}"
    );
    assert_eq!(
        version_ids(&pair).await.len(),
        before + 1,
        "one rotation, not two"
    );
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSCURRENT")
            .await
            .as_deref(),
        Some(token.as_str())
    );
    pair.assert_rotated_to(&pair.users[1]).await;
    assert!(pair.violations(true).await.is_empty());

    // 2. The queue's rotation dies after setting the password; Secrets Manager's next
    // RotateSecret finds it unfinished and reattempts it with its version: the function resumes
    // the queue's rotation, it does not begin another.
    // Its lease is short: the function takes a dead holder's lease over a whole lease period
    // after it first sees it.
    let killed = pair
        .command(&["rotate", &pair.app_secret, "--force"])
        .env("ROTATOR_ROTATION_FUNCTION_ARNS", &own)
        .env("ROTATOR_LEASE_DURATION", "2s")
        .env("ROTATOR_TEST_FAILPOINTS", "after:set_password=exit")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "{}", text(&killed));
    let queue_rotation = pair.status()["rotation_id"].as_str().unwrap().to_owned();
    assert_eq!(pair.status()["state"], "in_progress");
    let token = driver.start_rotation(true).await;
    assert_eq!(
        token, queue_rotation,
        "Secrets Manager reattempts the unfinished rotation"
    );
    let mut live = Some(function);
    let done = driver
        .run_steps(&token, 1, &|| lambda_command(&pair), &mut live)
        .await
        .unwrap_or_else(|d| panic!("not finished: {:?}", d.failures));
    assert_eq!(done.attempts, 1);
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSCURRENT")
            .await
            .as_deref(),
        Some(queue_rotation.as_str())
    );
    pair.assert_rotated_to(&pair.users[0]).await;
    assert!(pair.violations(true).await.is_empty());

    // 3. Both at once, from the start: whichever takes the lease first, one rotation happens,
    // and the other waits for it and finds it in progress (and finishes it) or done.
    for round in 0..3 {
        let before = version_ids(&pair).await.len();
        let token = driver.start_rotation(true).await;
        let queue = tokio::task::spawn_blocking({
            let mut cmd = cli(&[]);
            move || cmd.output().unwrap()
        });
        let done = driver
            .run_steps(&token, 2, &|| lambda_command(&pair), &mut live)
            .await
            .unwrap_or_else(|d| panic!("round {round}: {:?}", d.failures));
        let queued = queue.await.unwrap();
        assert!(queued.status.success(), "round {round}: {}", text(&queued));
        assert_eq!(version_ids(&pair).await.len(), before + 1, "round {round}");
        assert_eq!(
            pair.version_with(&pair.app_secret, "AWSCURRENT")
                .await
                .as_deref(),
            Some(done.token.as_str()),
            "round {round}"
        );
        let violations = pair.violations(true).await;
        assert!(violations.is_empty(), "round {round}: {violations:?}");
    }

    // 4. The queue's request comes first, after RotateSecret and before createSecret: it
    // begins the rotation Secrets Manager labelled AWSPENDING for this tool's function (its
    // version, its id), and Secrets Manager's calls then find it done.
    let before = version_ids(&pair).await.len();
    let token = driver.start_rotation(true).await;
    let queued = cli(&[("ROTATOR_MIN_INTERVAL", "0s")]).output().unwrap();
    assert!(queued.status.success(), "{}", text(&queued));
    assert!(
        String::from_utf8_lossy(&queued.stdout).contains(&format!("(rotation {token}")),
        "{}",
        text(&queued)
    );
    let done = driver
        .run_steps(&token, 1, &|| lambda_command(&pair), &mut live)
        .await
        .unwrap_or_else(|d| panic!("{:?}", d.failures));
    assert_eq!(done.attempts, 1);
    assert_eq!(version_ids(&pair).await.len(), before + 1);
    assert!(pair.violations(true).await.is_empty());
    report(
        "secrets_manager_races",
        "secrets manager rotation function and queue requests on one secret: 6 rotations, each run once",
    );
}

/// A worker that was not told the function is this tool refuses to touch Secrets Manager's
/// rotation, and leaves its record to the function: Secrets Manager's next calls finish it.
#[tokio::test]
async fn a_worker_that_does_not_know_the_function_leaves_its_rotation_to_it() {
    let pair = Arc::new(Pair::new().await);
    let driver = secrets_manager(&pair).await;
    let token = driver.start_rotation(true).await;
    let mut function = Function::start(lambda_command(&pair), &driver.function_arn).await;
    let created = function.invoke(driver.event("createSecret", &token)).await;
    assert!(
        created.is_ok(),
        "createSecret: {created:?}\n{}",
        function.log()
    );
    // Twice: the first finds the rotation in progress, the second one no longer in progress.
    for _ in 0..2 {
        let refused = pair.rotate();
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        assert!(
            text(&refused).contains("ROTATOR_ROTATION_FUNCTION_ARNS"),
            "{}",
            text(&refused)
        );
    }
    assert_eq!(pair.status()["rotation_id"], token.as_str());
    for step in ["setSecret", "testSecret", "finishSecret"] {
        let r = function.invoke(driver.event(step, &token)).await;
        assert!(r.is_ok(), "{step}: {r:?}\n{}", function.log());
    }
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSCURRENT")
            .await
            .as_deref(),
        Some(token.as_str())
    );
    pair.assert_rotated_to(&pair.users[1]).await;
    let violations = pair.violations(true).await;
    assert!(violations.is_empty(), "{violations:?}");
}

/// createSecret stored its value under Secrets Manager's token, and the function died before its
/// record was written. A worker that knows the function then takes the token over: it reads the
/// stored value instead of making another (AWS refuses the same token with another value), and
/// Secrets Manager's retry finds the rotation done. On the old binary the worker took the token
/// over as a rotation of its own, made a second password and failed on ResourceExistsException.
#[tokio::test]
async fn a_worker_taking_over_the_functions_rotation_uses_the_value_its_first_call_stored() {
    let pair = Arc::new(Pair::new().await);
    let driver = secrets_manager(&pair).await;
    let token = driver.start_rotation(true).await;
    let mut function = Function::start(
        {
            let mut cmd = lambda_command(&pair);
            cmd.env("ROTATOR_LEASE_DURATION", "2s")
                .env("ROTATOR_TEST_FAILPOINTS", "after:create_pending=exit");
            cmd
        },
        &driver.function_arn,
    )
    .await;
    let died = function.invoke(driver.event("createSecret", &token)).await;
    assert!(died.is_err(), "createSecret: {died:?}");
    let stored = pair
        .sm
        .get_secret_value()
        .secret_id(&pair.app_secret)
        .version_id(&token)
        .send()
        .await
        .expect("createSecret stored its value under the token");
    let stored: Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();

    let queued = pair
        .command(&["rotate", &pair.app_secret, "--lease-wait", "60s"])
        .env("ROTATOR_ROTATION_FUNCTION_ARNS", &driver.function_arn)
        .output()
        .unwrap();
    assert!(queued.status.success(), "{}", text(&queued));
    assert!(
        String::from_utf8_lossy(&queued.stdout).contains(&format!("(rotation {token}")),
        "{}",
        text(&queued)
    );
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSCURRENT")
            .await
            .as_deref(),
        Some(token.as_str())
    );
    assert_eq!(
        pair.current().await["password"],
        stored["password"],
        "AWSCURRENT is the value createSecret stored"
    );
    pair.assert_rotated_to(&pair.users[1]).await;
    let mut live = None;
    let done = driver
        .run_steps(&token, 1, &|| lambda_command(&pair), &mut live)
        .await
        .unwrap_or_else(|d| panic!("Secrets Manager's retry: {:?}", d.failures));
    assert_eq!(done.attempts, 1);
    let violations = pair.violations(true).await;
    assert!(violations.is_empty(), "{violations:?}");
}

/// A rotation of the queue or the CLI leaves AWSPENDING on the new AWSCURRENT, and an edit
/// strands it. RotateSecret then refuses to start and Secrets Manager calls the function with
/// that version: the call takes the label off and fails, once, and the next RotateSecret rotates.
#[tokio::test]
async fn awspending_stranded_by_an_edit_is_cleared_by_secrets_managers_call_and_the_next_rotation_runs(
) {
    let pair = Pair::new().await;
    assert_ok(&pair.rotate());
    let left = pair
        .version_with(&pair.app_secret, "AWSCURRENT")
        .await
        .unwrap();
    let value = pair.current().await;
    pair.sm
        .put_secret_value()
        .secret_id(&pair.app_secret)
        .secret_string(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        Some(left.clone())
    );
    let check = pair.run(&["check", &pair.app_secret]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("RotateSecret does not start past it"),
        "{}",
        text(&check)
    );

    let driver = secrets_manager(&pair).await;
    let mut live = Some(Function::start(lambda_command(&pair), &driver.function_arn).await);
    let token = driver.start_rotation(true).await;
    assert_eq!(token, left, "RotateSecret reattempts the stranded version");
    let refused = driver
        .run_steps(&token, 1, &|| lambda_command(&pair), &mut live)
        .await
        .expect_err("the stranded version's call fails");
    assert!(
        format!("{:?}", refused.failures).contains("an edit moved AWSCURRENT on"),
        "{:?}",
        refused.failures
    );
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        None
    );

    let token = driver.start_rotation(true).await;
    assert_ne!(token, left);
    let done = driver
        .run_steps(&token, 1, &|| lambda_command(&pair), &mut live)
        .await;
    if let Err(d) = done {
        panic!(
            "rotation failed: {:?}\n{}",
            d.failures,
            live.map(|f| f.log()).unwrap_or_default()
        );
    }
    pair.assert_rotated_to(&pair.users[0]).await;
    assert_eq!(
        pair.version_with(&pair.app_secret, "AWSPENDING").await,
        None
    );
}

/// The application's path (the proxy endpoint) accepts and never answers while Secrets Manager
/// calls testSecret with 25 s left before Lambda's deadline, and the test step's own deadline
/// is a minute away: the function stops inside the step, before Lambda's deadline, answers with
/// a retryable error that says the rotation resumes, and AWSCURRENT stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_stops_inside_a_step_before_lambdas_deadline() {
    let pair = Pair::new().await;
    let silent = silent_port();
    pair.edit_app_secret(|app| app["database_port"] = serde_json::json!(silent.to_string()))
        .await;
    let driver = secrets_manager(&pair).await;
    let (version, value) = pair.current_state().await;
    let token = driver.start_rotation(true).await;
    let mut cmd = lambda_command(&pair);
    cmd.env("ROTATOR_TEST_DEADLINE", "60s");
    let mut function = Function::start(cmd, &driver.function_arn).await;
    for step in ["createSecret", "setSecret"] {
        function.invoke(driver.event(step, &token)).await.unwrap();
    }
    let lambda_timeout = Duration::from_secs(25);
    let started = std::time::Instant::now();
    let answer = function
        .invoke_within(driver.event("testSecret", &token), lambda_timeout)
        .await;
    let took = started.elapsed();
    let failure = answer.expect_err("the test step cannot pass through a silent proxy");
    assert!(
        took < lambda_timeout,
        "answered after {took:?}, past Lambda's deadline ({lambda_timeout:?}); log:\n{}",
        function.log()
    );
    assert!(
        failure.message.contains("will resume"),
        "{failure:?}; log:\n{}",
        function.log()
    );
    assert!(function.alive(), "the process was not killed: it answered");
    pair.assert_current_unchanged(&version, &value).await;
    eprintln!("testSecret with 25 s to Lambda's deadline answered in {took:?}: {failure:?}");
}

/// Secrets Manager calls the function again while an earlier call still holds the secret's
/// lease (its environment busy in the test step), with 25 s left before Lambda's deadline and a
/// lease wait of two minutes: the wait ends with the steps' own deadline, and the call answers,
/// retryable, before Lambda would stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_the_lease_answers_before_lambdas_deadline() {
    let pair = Pair::new().await;
    let driver = secrets_manager(&pair).await;
    let token = driver.start_rotation(true).await;
    let mut busy = lambda_command(&pair);
    busy.env("ROTATOR_TEST_FAILPOINTS", "before:test=sleep(60000)");
    let mut first = Function::start(busy, &driver.function_arn).await;
    for step in ["createSecret", "setSecret"] {
        first.invoke(driver.event(step, &token)).await.unwrap();
    }
    let log = first.log.clone();
    let event = driver.event("testSecret", &token);
    let holding = tokio::spawn(async move { first.invoke(event).await });
    let waited = std::time::Instant::now();
    while !log
        .lock()
        .unwrap()
        .contains("failpoint before:test reached")
    {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the first call never reached the test step"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut retry = lambda_command(&pair);
    retry.env("ROTATOR_LEASE_WAIT", "120s");
    let mut second = Function::start(retry, &driver.function_arn).await;
    let lambda_timeout = Duration::from_secs(25);
    let started = std::time::Instant::now();
    let answer = second
        .invoke_within(driver.event("testSecret", &token), lambda_timeout)
        .await;
    let took = started.elapsed();
    holding.abort();
    let failure = answer.expect_err("the lease is held for another 45 s");
    assert!(
        took < lambda_timeout,
        "answered after {took:?}, past Lambda's deadline ({lambda_timeout:?}): {failure:?}"
    );
    assert_eq!(
        failure.error_type, "RotationIncomplete",
        "retryable: {failure:?}"
    );
    assert!(second.alive(), "the process was not killed: it answered");
    eprintln!("a call waiting for a held lease with 25 s to Lambda's deadline answered in {took:?}: {failure:?}");
}
