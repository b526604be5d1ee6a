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
