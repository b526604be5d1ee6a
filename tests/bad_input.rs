//! The bad-input corpus (`tests/corpus/`): every malformed secret and message gets one clear,
//! fatal error that is recorded (step record, or the dead-letter queue's reason), and nothing
//! changes in the database or in Secrets Manager. See `tests/corpus/README.md` for the format.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rds_rotator::rotation::{LeaseWait, Request, RetryPolicy, Settings};
use serde_json::Value;

struct Case {
    name: String,
    about: String,
    expect: String,
    spec: Value,
}

fn cases(kind: &str) -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            assert_eq!(
                path.extension().and_then(|e| e.to_str()),
                Some("json"),
                "{} is not a case file",
                path.display()
            );
            let spec: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let text = |k: &str| {
                spec[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: `{k}` must be a string", path.display()))
                    .to_owned()
            };
            Case {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                about: text("about"),
                expect: text("expect"),
                spec,
            }
        })
        .collect()
}

/// Replaces `${NAME}` in every string of a JSON value (keys included).
fn fill(value: &Value, vars: &BTreeMap<&str, String>) -> Value {
    let sub = |s: &str| {
        vars.iter()
            .fold(s.to_owned(), |s, (k, v)| s.replace(&format!("${{{k}}}"), v))
    };
    match value {
        Value::String(s) => Value::String(sub(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, vars)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (sub(k), fill(v, vars))).collect())
        }
        other => other.clone(),
    }
}

/// `${NAME}` in raw text that may be JSON: values go in JSON-escaped.
fn fill_text(text: &str, vars: &BTreeMap<&str, String>) -> String {
    vars.iter().fold(text.to_owned(), |s, (k, v)| {
        let escaped = serde_json::to_string(v).unwrap();
        s.replace(&format!("${{{k}}}"), &escaped[1..escaped.len() - 1])
    })
}

/// The error must be one line, say what is wrong, and show no password.
fn assert_clear(case: &Case, error: &str, passwords: &[String]) {
    assert!(
        error.contains(&case.expect),
        "{} ({}): expected an error containing {:?}, got {error:?}",
        case.name,
        case.about,
        case.expect
    );
    assert!(
        !error.contains('\n') && error.chars().count() <= 600,
        "{}: the error is not one short line: {error:?}",
        case.name
    );
    for pw in passwords {
        assert!(
            !error.contains(pw.as_str()),
            "{}: the error shows a password",
            case.name
        );
    }
}

async fn assert_nothing_changed(pair: &Pair, before: &[Vec<(String, Vec<String>)>]) {
    let now = [
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[0]).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    ];
    assert_eq!(before, now, "the pair's secrets changed");
    for (user, pw) in pair.users.iter().zip(&pair.initial_passwords) {
        pair.login(user, pw)
            .await
            .unwrap_or_else(|e| panic!("{user}'s password changed in the database: {e}"));
    }
}

#[tokio::test]
async fn every_malformed_secret_in_the_corpus_is_refused_recorded_and_changes_nothing() {
    let pair = Pair::new().await;
    let s = stack();
    let before = [
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[0]).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    ];
    let mut vars: BTreeMap<&str, String> = BTreeMap::from([
        ("USER_A", pair.users[0].clone()),
        ("USER_B", pair.users[1].clone()),
        ("PROXY_A", pair.proxy_secrets[0].clone()),
        ("PROXY_B", pair.proxy_secrets[1].clone()),
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", pair.proxy.addr.port().to_string()),
        ("DB", pair.dbname.clone()),
        ("DIRECT_HOST", s.pg_host.clone()),
        ("DIRECT_PORT", s.pg_port.to_string()),
        ("PASSWORD_A", pair.initial_passwords[0].clone()),
    ]);
    let rotator = pair
        .rotator(Settings {
            test_deadline: Duration::from_secs(2),
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..Settings::default()
        })
        .await;
    let cases = cases("secrets");
    let mut refused = 0;
    for case in &cases {
        let name = format!("rt-{}/corpus/{}", pair.id, case.name);
        if let Some(extra) = case.spec.get("extra_proxy_secret") {
            let extra_name = format!("{name}/proxy");
            let body = match extra {
                Value::String(raw) => raw.clone(),
                v => fill(v, &vars).to_string(),
            };
            let arn = pair
                .sm
                .create_secret()
                .name(&extra_name)
                .secret_string(body)
                .send()
                .await
                .unwrap()
                .arn
                .unwrap();
            vars.insert("EXTRA_PROXY", arn);
        }
        let create = pair.sm.create_secret().name(&name);
        let create = if let Some(v) = case.spec.get("secret") {
            create.secret_string(fill(v, &vars).to_string())
        } else if let Some(raw) = case.spec.get("secret_string").and_then(Value::as_str) {
            create.secret_string(fill_text(raw, &vars))
        } else if let Some(b64) = case
            .spec
            .get("secret_binary_base64")
            .and_then(Value::as_str)
        {
            create.secret_binary(aws_smithy_types::Blob::new(base64_decode(b64)))
        } else {
            panic!(
                "{}: no secret, secret_string or secret_binary_base64",
                case.name
            )
        };
        let arn = create
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: moto refused to store the case: {e:?}", case.name))
            .arn
            .unwrap();
        vars.remove("EXTRA_PROXY");
        let versions_before = pair.versions(&arn).await;

        let err = match rotator
            .rotate(&name, &Request::default(), LeaseWait::No)
            .await
        {
            Ok(outcome) => panic!("{} ({}) was accepted: {outcome:?}", case.name, case.about),
            Err(e) => e,
        };
        assert!(
            !err.is_retryable(),
            "{}: bad input must be fatal, not retried: {err}",
            case.name
        );
        let error = err.to_string();
        assert_clear(case, &error, &pair.initial_passwords);
        // Recorded: the step record says it failed, and why.
        let record = rotator
            .records
            .load(&arn)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: the failure was not recorded", case.name));
        assert_eq!(record.state.as_str(), "failed", "{}", case.name);
        assert!(
            record
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(&case.expect)),
            "{}: recorded {:?}",
            case.name,
            record.last_error
        );
        assert_eq!(
            pair.versions(&arn).await,
            versions_before,
            "{}: the secret changed",
            case.name
        );
        refused += 1;
    }
    assert_nothing_changed(&pair, &before).await;
    assert!(cases.len() >= 40, "the corpus lost cases: {}", cases.len());
    assert_eq!(refused, cases.len());

    // The control: the template every case starts from is valid, so each case fails for its own
    // flaw only.
    let template = serde_json::json!({
        "rotation_type": "AWS RDS", "rotation_usernames": ["${USER_A}", "${USER_B}"],
        "proxy_secret_ids": ["${PROXY_A}", "${PROXY_B}"], "database_host": "${HOST}",
        "database_port": "${PORT}", "database_name": "${DB}", "direct_host": "${DIRECT_HOST}",
        "direct_port": "${DIRECT_PORT}", "username": "${USER_A}", "password": "${PASSWORD_A}"
    });
    let control = format!("rt-{}/corpus/control", pair.id);
    pair.sm
        .create_secret()
        .name(&control)
        .secret_string(fill(&template, &vars).to_string())
        .send()
        .await
        .unwrap();
    let proxies = rds_rotator::aws::rds::RdsProxies::new(&aws().await);
    let preflight = rds_rotator::check::check(
        &rotator,
        &proxies,
        None,
        rds_rotator::db::tls::TlsMode::Disable,
        rds_rotator::rotation::DEFAULT_MIN_INTERVAL,
        &control,
    )
    .await;
    assert!(
        preflight.ready(),
        "the corpus template is not valid:\n{}",
        preflight.to_text()
    );
    report(
        "corpus-secrets",
        &format!("bad-input corpus, secrets: {refused}/{} refused with one clear fatal error, recorded; 0 changes", cases.len()),
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("valid base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn every_malformed_message_in_the_corpus_goes_to_the_dlq_with_its_reason_and_changes_nothing()
{
    let pair = Pair::new().await;
    let queues = pair.queues().await;
    let before = [
        pair.versions(&pair.app_secret).await,
        pair.versions(&pair.proxy_secrets[0]).await,
        pair.versions(&pair.proxy_secrets[1]).await,
    ];
    let vars = BTreeMap::from([("SECRET", pair.app_secret.clone())]);
    let cases = cases("messages");
    let mut bodies = BTreeMap::new();
    for case in &cases {
        let body = fill_text(case.spec["body"].as_str().expect("body"), &vars);
        queues.send(&body).await;
        bodies.insert(body, case);
    }
    let worker = pair.worker(&queues).await;
    for _ in 0..cases.len() {
        match worker.try_execute_task().await.unwrap() {
            rds_rotator::worker::ExecutionOutcome::Processed(
                rds_rotator::worker::Handled::DeadLettered { .. },
            ) => {}
            other => panic!("a corpus message was not dead-lettered: {other:?}"),
        }
    }
    // Everything is in the dead-letter queue, each with its reason.
    let mut dead = Vec::new();
    for _ in 0..30 {
        dead.extend(queues.dead_letters().await);
        if dead.len() >= cases.len() {
            break;
        }
    }
    assert_eq!(dead.len(), cases.len(), "dead letters: {dead:?}");
    for (body, reason) in &dead {
        let case = bodies
            .get(body)
            .unwrap_or_else(|| panic!("an unknown body in the DLQ: {body:.200}"));
        assert_clear(case, reason, &pair.initial_passwords);
    }
    assert_eq!(queues.depth(&queues.url).await, 0);
    assert_nothing_changed(&pair, &before).await;
    assert!(pair.try_status().is_none(), "a step record was written");
    report(
        "corpus-messages",
        &format!(
            "bad-input corpus, messages: {}/{} dead-lettered with their reason; 0 changes",
            dead.len(),
            cases.len()
        ),
    );
}
