//! What every rotation reports.

use super::*;

#[tokio::test]
async fn every_rotation_is_reported_with_its_steps_and_without_secret_material() {
    let w = world();
    rotate(&w).await.unwrap();
    let bad = world();
    bad.add_secret(APP, json!({"username": "alice", "password": 7}));
    let err = rotate(&bad).await.unwrap_err();
    assert!(!err.is_retryable());

    let reports = w.state().reports.clone();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.outcome, ports::ReportOutcome::Succeeded);
    assert_eq!(r.from_user.as_deref(), Some("alice"));
    assert_eq!(r.to_user.as_deref(), Some("bob"));
    let steps: Vec<Step> = r.steps.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        steps,
        [
            Step::CreatePending,
            Step::SetPassword,
            Step::UpdateProxy,
            Step::Test,
            Step::Finish
        ]
    );
    let printed = format!("{r:?}");
    let current = w.labelled(APP, Stage::Current).unwrap();
    assert!(!printed.contains(current["password"].as_str().unwrap()));
    assert!(!printed.contains("alice-0"));

    let failed = bad.state().reports.clone();
    assert_eq!(failed.len(), 1);
    assert!(
        matches!(&failed[0].outcome, ports::ReportOutcome::Failed { retryable: false, reason } if reason.contains("password")),
        "{:?}",
        failed[0].outcome
    );
    assert_eq!(failed[0].last_step, None, "it failed before the first step");
}

/// A caller's hard stop (the rotation function's, before Lambda's deadline) ends the run where
/// it is, here in a test step whose own deadline is far off, as a retryable interruption that
/// is reported, naming that step.
#[tokio::test]
async fn a_hard_stop_ends_the_run_where_it_is_and_is_reported_as_retryable() {
    let w = world();
    w.state().proxy_frozen = true;
    let mut r = rotator(&w);
    r.settings.test_deadline = Duration::from_secs(60);
    let request = Request {
        hard_stop: Some(Duration::from_millis(300)),
        ..Request::default()
    };
    let started = std::time::Instant::now();
    let e = r.rotate(APP, &request, LeaseWait::No).await.unwrap_err();
    assert!(matches!(e, RotationError::Interrupted(_)), "{e}");
    assert!(e.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let reports = w.state().reports.clone();
    assert_eq!(reports.len(), 1);
    assert!(
        matches!(
            &reports[0].outcome,
            ports::ReportOutcome::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        reports[0].outcome
    );
    assert_eq!(
        reports[0].last_step,
        Some(Step::Test),
        "the step it was stopped in"
    );
    assert_eq!(w.state().password_changes, vec!["bob".to_owned()]);
}
