//! What a request begins, skips or refuses.

use super::*;

#[tokio::test]
async fn a_recent_rotation_is_skipped_unless_forced() {
    let w = world();
    let hour = Some(Duration::from_secs(3600));
    let first = request(
        &w,
        Request {
            min_interval: hour,
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(first, Outcome::Rotated(_)));
    let second = request(
        &w,
        Request {
            min_interval: hour,
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(second, Outcome::Skipped { ref why, .. } if why.contains("minimum interval")),
        "{second:?}"
    );
    let bob_password = w.labelled(APP, Stage::Current).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    w.state().password_changes.clear();
    let forced = request(
        &w,
        Request {
            min_interval: hour,
            force: true,
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(forced, Outcome::Rotated(_)));
    assert_rotated(&w, "bob", "alice", &bob_password);
}

#[tokio::test]
async fn the_same_request_delivered_twice_rotates_once_even_when_forced() {
    let w = world();
    let req = Request {
        force: true,
        request_id: Some("msg-1".into()),
        ..Default::default()
    };
    assert!(matches!(
        request(&w, req.clone()).await,
        Outcome::Rotated(_)
    ));
    let again = request(&w, req).await;
    assert!(
        matches!(again, Outcome::Skipped { ref why, .. } if why.contains("msg-1")),
        "{again:?}"
    );
    assert_eq!(w.labelled(APP, Stage::Current).unwrap()["username"], "bob");
}

#[tokio::test]
async fn a_copy_that_finds_the_lease_held_is_answered_from_the_record_without_waiting() {
    let w = world();
    let req = Request {
        request_id: Some("msg-1".into()),
        ..Default::default()
    };
    assert!(matches!(
        request(&w, req.clone()).await,
        Outcome::Rotated(_)
    ));
    // Another copy of the same request holds the lease, deciding to skip.
    use crate::rotation::ports::RecordStore;
    let held = w
        .acquire(
            &format!("arn:fake:{APP}"),
            "other",
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        held,
        crate::rotation::ports::Acquired::Granted { .. }
    ));
    let copy = request(&w, req).await;
    assert!(
        matches!(copy, Outcome::Skipped { ref why, .. } if why.contains("msg-1")),
        "{copy:?}"
    );
    // A different request still finds the lease busy.
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::Busy { .. }), "{err}");
}

/// The conditions the store checks when it begins a rotation with the lease say exactly what
/// `begin::decide` would decide from the same record: resume, skip and re-plan never begin.
#[test]
fn a_rotation_begins_with_the_lease_exactly_when_run_would_begin_it() {
    let now = 1_000_000_000;
    let plan = record::Plan {
        current_version: "v1".into(),
        current_user: "alice".into(),
        target_user: "bob".into(),
        proxy_secret_id: None,
        proxy_version: None,
        pending_version: None,
        pending_left: None,
    };
    let finished = |id: &str, request: Option<&str>, at: u64| {
        let mut r = StepRecord::begin(APP, id.into(), plan.clone(), None, at);
        r.request_id = request.map(Into::into);
        r.advance(Step::Done, at);
        r
    };
    let mut failed = StepRecord::begin(APP, "r-5".into(), plan.clone(), None, now);
    failed.note_error("finish: boom".into(), true, now);
    let records = [
        None,
        Some(StepRecord::begin(
            APP,
            "r-1".into(),
            plan.clone(),
            None,
            now,
        )),
        Some(finished("v1", Some("req-1"), now - 60_000)),
        Some(finished("v0", None, now - 60_000)),
        Some(finished("v1", None, now - 1_000)),
        Some(finished("v1", None, now + 60_000)),
        Some(failed),
        Some(StepRecord::failed_to_begin(APP, "bad".into(), None, now)),
    ];
    let requests = [
        Request::default(),
        Request {
            request_id: Some("req-1".into()),
            ..Request::default()
        },
        Request {
            request_id: Some("req-2".into()),
            ..Request::default()
        },
        Request {
            min_interval: Some(Duration::from_secs(10)),
            ..Request::default()
        },
        Request {
            min_interval: Some(Duration::from_secs(10)),
            force: true,
            ..Request::default()
        },
        Request {
            min_interval: Some(Duration::ZERO),
            ..Request::default()
        },
    ];
    let mut begins = 0;
    for r in &records {
        for request in &requests {
            let run_begins = r.as_ref().is_none_or(|r| {
                !r.is_in_progress()
                    && skip_reason(r, request, now).is_none()
                    && !labels_stale(r, Some("v1"))
            });
            let cond = begin_if(&plan, request, now);
            assert_eq!(cond.allows(r.as_ref()), run_begins, "{r:?} / {request:?}");
            begins += usize::from(run_begins);
        }
    }
    assert!(begins > 0 && begins < records.len() * requests.len());
}

#[tokio::test]
async fn secrets_manager_rotation_attached_is_refused_before_anything_changes() {
    let w = world();
    w.state().rotation_enabled.insert(APP.into());
    let e = rotate(&w).await.unwrap_err();
    assert!(matches!(e, RotationError::ManagedRotation { .. }), "{e}");
    assert!(e.to_string().contains("cancel-rotate-secret"));
    assert!(w.state().password_changes.is_empty());
    assert!(w.state().puts.is_empty());
    // On the idle user's proxy secret too.
    let w = world();
    w.state().rotation_enabled.insert("proxy-bob".into());
    let e = rotate(&w).await.unwrap_err();
    assert!(
        matches!(e, RotationError::ManagedRotation { ref secret, .. } if secret.ends_with("proxy-bob")),
        "{e}"
    );
    assert!(w.state().puts.is_empty());
}

#[test]
fn a_rotation_function_is_this_tools_whatever_its_qualifier() {
    let settings = Settings {
        rotation_functions: vec![
            "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator".into()
        ],
        ..Settings::default()
    };
    let own = |arn: &str| settings.is_own_function(Some(arn));
    assert!(own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator"
    ));
    assert!(own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator:live"
    ));
    assert!(own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator:$LATEST"
    ));
    assert!(!own(
        "arn:aws:lambda:eu-west-1:111122223333:function:rds-rotator-other"
    ));
    assert!(!own(
        "arn:aws:lambda:eu-west-1:444455556666:function:rds-rotator"
    ));
    assert!(!settings.is_own_function(None));
    assert!(!Settings::default().is_own_function(Some("arn:aws:lambda:eu-west-1:1:function:f")));
}
