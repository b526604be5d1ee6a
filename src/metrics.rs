//! Metrics as CloudWatch embedded metric format (EMF): JSON lines on stdout, which CloudWatch Logs
//! (the ECS awslogs driver) turns into metrics without any API call from the worker.
//!
//! One line per `rotate` call, with no dimensions, so that the Terraform alarm on
//! `RotationsFailed` matches it; plus one line per step run, with the dimension `Step`.

use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::calls;
use crate::rotation::clock::{Clock, SystemClock};
use crate::rotation::ports::{ReportOutcome, Reporter, RotationReport};

pub const DEFAULT_NAMESPACE: &str = "RdsRotator";

/// The metrics of the line per `rotate` call, with their units. infra/worker-metrics.json lists
/// them for the Terraform dashboard (a test keeps the two equal).
pub const METRICS: [(&str, &str); 11] = [
    ("RotationsSucceeded", "Count"),
    ("RotationsFailed", "Count"),
    ("RotationsIncomplete", "Count"),
    ("RotationsSkipped", "Count"),
    ("RotationsAborted", "Count"),
    ("RotationsDeferred", "Count"),
    ("RotationDuration", "Milliseconds"),
    ("Retries", "Count"),
    ("AwsCalls", "Count"),
    ("DbConnections", "Count"),
    ("IdleUserSessions", "Count"),
];

/// The metric of the line per step run, and its dimension.
pub const STEP_METRIC: &str = "StepLatency";
pub const STEP_DIMENSION: &str = "Step";

/// Writes EMF lines to stdout (or any writer, for tests).
pub struct Emf {
    namespace: String,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Emf {
    pub fn stdout(namespace: impl Into<String>) -> Self {
        Self::new(namespace, Box::new(std::io::stdout()))
    }

    pub fn new(namespace: impl Into<String>, out: Box<dyn Write + Send>) -> Self {
        Self {
            namespace: namespace.into(),
            out: Mutex::new(out),
        }
    }
}

#[async_trait]
impl Reporter for Emf {
    async fn report(&self, report: &RotationReport) {
        let mut out = self.out.lock().expect("metrics writer lock");
        for line in lines(&self.namespace, report, SystemClock.now_ms()) {
            // A full disk or closed stdout must not fail a rotation; the logs say what happened.
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

fn directive(
    namespace: &str,
    timestamp_ms: u64,
    dimensions: Value,
    metrics: &[(&str, &str)],
) -> Value {
    json!({
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [{
            "Namespace": namespace,
            "Dimensions": dimensions,
            "Metrics": metrics.iter().map(|(name, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
        }],
    })
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The EMF lines for one report.
pub fn lines(namespace: &str, r: &RotationReport, timestamp_ms: u64) -> Vec<Value> {
    let flag = |b: bool| u64::from(b);
    let (succeeded, failed, incomplete, skipped) = match &r.outcome {
        ReportOutcome::Succeeded => (true, false, false, false),
        ReportOutcome::Failed { retryable, .. } => (false, !retryable, *retryable, false),
        ReportOutcome::Skipped { .. } => (false, false, false, true),
        ReportOutcome::Aborted { .. } | ReportOutcome::Advanced { .. } => {
            (false, false, false, false)
        }
    };
    // A call of Secrets Manager's that ran some steps is no rotation's duration: the call that
    // finishes reports the whole one.
    let advanced = matches!(r.outcome, ReportOutcome::Advanced { .. });
    let aws: std::collections::BTreeMap<_, _> = r
        .calls
        .iter()
        .filter(|(k, _)| !k.ends_with(".connect"))
        .collect();
    let db_connections: u64 = r
        .calls
        .iter()
        .filter(|(k, _)| k.ends_with(".connect"))
        .map(|(_, v)| v)
        .sum();
    let aws_calls: u64 = aws.values().copied().sum();
    let mut main = Map::new();
    main.insert(
        "_aws".into(),
        directive(
            namespace,
            timestamp_ms,
            json!([[]]),
            &METRICS
                .iter()
                .copied()
                .filter(|(name, _)| !(advanced && *name == "RotationDuration"))
                .collect::<Vec<_>>(),
        ),
    );
    main.insert("RotationsSucceeded".into(), json!(flag(succeeded)));
    main.insert("RotationsFailed".into(), json!(flag(failed)));
    main.insert("RotationsIncomplete".into(), json!(flag(incomplete)));
    main.insert("RotationsSkipped".into(), json!(flag(skipped)));
    main.insert(
        "RotationsAborted".into(),
        json!(flag(matches!(r.outcome, ReportOutcome::Aborted { .. }))),
    );
    if !advanced {
        main.insert("RotationDuration".into(), json!(millis(r.duration)));
    }
    // The in-use guard stopped the rotation: it waits for the idle user's sessions to end.
    main.insert(
        "RotationsDeferred".into(),
        json!(flag(r.waits_for_sessions)),
    );
    main.insert("Retries".into(), json!(r.retries));
    main.insert("AwsCalls".into(), json!(aws_calls));
    main.insert("DbConnections".into(), json!(db_connections));
    // Sessions of the idle user the in-use guard found: above 0, an application holds
    // credentials from two rotations ago (the rotation waited, or went on under `warn`).
    let in_use = r.in_use.as_ref();
    main.insert(
        "IdleUserSessions".into(),
        json!(in_use.map_or(0, |f| f.sessions())),
    );
    if let Some(f) = in_use {
        main.insert("in_use".into(), json!(f.to_string()));
    }
    // Properties, not metrics: searchable in CloudWatch Logs Insights.
    main.insert("secret".into(), json!(r.secret));
    main.insert(
        "outcome".into(),
        json!(match &r.outcome {
            ReportOutcome::Succeeded => "succeeded",
            ReportOutcome::Failed {
                retryable: true, ..
            } => "incomplete",
            ReportOutcome::Failed { .. } => "failed",
            ReportOutcome::Skipped { .. } => "skipped",
            ReportOutcome::Aborted { .. } => "aborted",
            ReportOutcome::Advanced { .. } => "advanced",
        }),
    );
    match &r.outcome {
        ReportOutcome::Failed { reason, .. } => {
            main.insert("reason".into(), json!(reason));
        }
        ReportOutcome::Skipped { why } | ReportOutcome::Aborted { reason: why } => {
            main.insert("reason".into(), json!(why));
        }
        ReportOutcome::Advanced { next } => {
            main.insert("next_step".into(), json!(next.as_str()));
        }
        ReportOutcome::Succeeded => {}
    }
    main.insert("rotation_id".into(), json!(r.rotation_id));
    main.insert("from_user".into(), json!(r.from_user));
    main.insert("to_user".into(), json!(r.to_user));
    main.insert("resumed".into(), json!(r.resumed));
    main.insert("aws_calls".into(), json!(aws));
    main.insert(
        "secretsmanager_calls".into(),
        json!(calls::total(&r.calls, "SecretsManager.")),
    );
    let mut out = vec![Value::Object(main)];
    for (step, took) in &r.steps {
        let mut line = Map::new();
        line.insert(
            "_aws".into(),
            directive(
                namespace,
                timestamp_ms,
                json!([[STEP_DIMENSION]]),
                &[(STEP_METRIC, "Milliseconds")],
            ),
        );
        line.insert(STEP_DIMENSION.into(), json!(step.as_str()));
        line.insert(STEP_METRIC.into(), json!(millis(*took)));
        line.insert("secret".into(), json!(r.secret));
        line.insert("rotation_id".into(), json!(r.rotation_id));
        out.push(Value::Object(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::record::Step;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn report(outcome: ReportOutcome) -> RotationReport {
        RotationReport {
            secret: "arn:s".into(),
            outcome,
            rotation_id: Some("r1".into()),
            from_user: Some("app".into()),
            to_user: Some("app_clone".into()),
            resumed: false,
            duration: Duration::from_millis(250),
            steps: vec![
                (Step::CreatePending, Duration::from_millis(20)),
                (Step::Test, Duration::from_millis(100)),
            ],
            last_step: Some(Step::Test),
            retries: 2,
            calls: BTreeMap::from([
                ("SecretsManager.PutSecretValue".to_owned(), 2),
                ("DynamoDB.UpdateItem".to_owned(), 5),
                ("postgres.connect".to_owned(), 3),
            ]),
            in_use: None,
            waits_for_sessions: false,
        }
    }

    #[test]
    fn a_success_is_one_undimensioned_line_plus_one_line_per_step() {
        let out = lines("NS", &report(ReportOutcome::Succeeded), 1_000);
        assert_eq!(out.len(), 3);
        let main = &out[0];
        let d = &main["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(d["Namespace"], "NS");
        assert_eq!(d["Dimensions"], json!([[]]));
        // Every metric the directive names is present as a number on the line.
        for m in d["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(main[name].is_number(), "{name} missing");
        }
        assert_eq!(main["RotationsSucceeded"], 1);
        assert_eq!(main["RotationsFailed"], 0);
        assert_eq!(main["RotationDuration"], 250.0);
        assert_eq!(main["AwsCalls"], 7);
        assert_eq!(main["DbConnections"], 3);
        assert_eq!(main["Retries"], 2);
        assert_eq!(main["secretsmanager_calls"], 2);
        assert_eq!(out[1]["Step"], "create_pending");
        assert_eq!(out[1]["StepLatency"], 20.0);
        assert_eq!(
            out[2]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Step"]])
        );
    }

    #[test]
    fn only_failures_that_need_a_person_count_as_failed() {
        let fatal = lines(
            "NS",
            &report(ReportOutcome::Failed {
                reason: "bad".into(),
                retryable: false,
            }),
            1,
        );
        assert_eq!(fatal[0]["RotationsFailed"], 1);
        assert_eq!(fatal[0]["RotationsIncomplete"], 0);
        assert_eq!(fatal[0]["reason"], "bad");
        let transient = lines(
            "NS",
            &report(ReportOutcome::Failed {
                reason: "slow".into(),
                retryable: true,
            }),
            1,
        );
        assert_eq!(transient[0]["RotationsFailed"], 0);
        assert_eq!(transient[0]["RotationsIncomplete"], 1);
        assert_eq!(transient[0]["outcome"], "incomplete");
    }

    /// Every metric a directive names has its value in the line (CloudWatch drops a line whose
    /// directive names a missing member), and no other metric is emitted.
    fn assert_complete(line: &Value) {
        for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
        {
            let name = m["Name"].as_str().unwrap();
            assert!(line[name].is_number(), "{name} has no value in {line}");
        }
    }

    #[test]
    fn every_outcome_emits_the_listed_metrics_each_with_a_value() {
        let outcomes = [
            ReportOutcome::Succeeded,
            ReportOutcome::Skipped { why: "w".into() },
            ReportOutcome::Failed {
                reason: "r".into(),
                retryable: true,
            },
            ReportOutcome::Aborted { reason: "a".into() },
            ReportOutcome::Advanced { next: Step::Test },
        ];
        let listed: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
        for outcome in outcomes {
            let out = lines("NS", &report(outcome), 1);
            for line in &out {
                assert_complete(line);
            }
            for m in out[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
            {
                assert!(listed.contains(&m["Name"].as_str().unwrap()));
            }
            assert_eq!(
                out[1]["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
                STEP_METRIC
            );
        }
    }

    #[test]
    fn a_call_that_advanced_a_rotation_reports_no_duration_and_no_outcome() {
        let out = lines(
            "NS",
            &report(ReportOutcome::Advanced { next: Step::Finish }),
            1,
        );
        assert!(out[0].get("RotationDuration").is_none());
        for m in [
            "RotationsSucceeded",
            "RotationsFailed",
            "RotationsIncomplete",
            "RotationsSkipped",
        ] {
            assert_eq!(out[0][m], 0, "{m}");
        }
        assert_eq!(out[0]["outcome"], "advanced");
        assert_eq!(out[0]["next_step"], "finish");
    }

    #[test]
    fn a_rotation_waiting_for_sessions_counts_as_deferred() {
        let mut r = report(ReportOutcome::Failed {
            reason: "in use".into(),
            retryable: true,
        });
        r.waits_for_sessions = true;
        assert_eq!(lines("NS", &r, 1)[0]["RotationsDeferred"], 1);
        assert_eq!(
            lines("NS", &report(ReportOutcome::Succeeded), 1)[0]["RotationsDeferred"],
            0
        );
    }
}
