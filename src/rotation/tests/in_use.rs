//! The in-use guard, readers, RDS and Blue/Green deployments.

use super::*;

#[tokio::test]
async fn an_idle_user_still_in_use_keeps_its_password_until_its_sessions_stop() {
    let w = world();
    sessions_of(&w, "bob", 2);
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::UserInUse { .. }), "{err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("10.0.1.5 (orders-api)") && text.contains("2 session(s)"),
        "{text}"
    );
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        (record.state, record.step),
        (State::InProgress, Step::SetPassword)
    );
    assert!(record.last_error.as_deref().unwrap().contains("orders-api"));
    assert!(record
        .in_use
        .as_deref()
        .unwrap()
        .contains("user bob has 2 session(s)"));
    let report = w.state().reports.last().cloned().unwrap();
    assert_eq!(report.in_use.map(|f| f.sessions()), Some(2));

    w.state().sessions.clear();
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        record.in_use, None,
        "the finding is cleared once nobody uses the user"
    );
}

/// The secret lists two readers; the writer shows no session of bob.
fn world_with_readers() -> World {
    let w = world();
    let mut app = w.labelled(APP, Stage::Current).unwrap();
    app["reader_hosts"] = json!(["reader-1", "reader-2:5433"]);
    w.add_secret(APP, app);
    w
}

#[tokio::test]
async fn a_session_of_the_idle_user_on_a_reader_keeps_its_password_until_it_stops() {
    let w = world_with_readers();
    w.state().reader_sessions.insert(
        "reader-2".into(),
        vec![crate::rotation::ports::SessionGroup {
            client: "10.0.2.9".into(),
            application: "reports".into(),
            sessions: 1,
        }],
    );
    let err = rotate(&w).await.unwrap_err();
    assert!(matches!(err, RotationError::UserInUse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("10.0.2.9 on reader reader-2:5433 (reports)"),
        "{err}"
    );
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    w.state().reader_sessions.clear();
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn a_reader_the_guard_cannot_reach_defers_the_rotation_unless_the_guard_only_warns() {
    let w = world_with_readers();
    w.state().unreachable_hosts.insert("reader-1".into());
    let err = rotate(&w).await.unwrap_err();
    assert!(
        matches!(err, RotationError::ReaderUnchecked { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.is_wait());
    assert!(err.to_string().contains("reader-1:5432"), "{err}");
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        (record.state, record.step),
        (State::InProgress, Step::SetPassword)
    );
    // Asked to go on whatever the guard finds: it warns, and goes on.
    let ignored = request(
        &w,
        Request {
            ignore_in_use: true,
            ..Request::default()
        },
    )
    .await;
    assert!(matches!(ignored, Outcome::Rotated(_)), "{ignored:?}");
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn the_readers_rds_lists_are_looked_at_beside_the_ones_the_secret_names() {
    use crate::rotation::ports::RdsTopology;
    let w = world_with_readers();
    let reader = |host: &str, port| crate::secret::Endpoint {
        host: host.into(),
        port,
        dbname: String::new(),
    };
    // One reader the secret names as well, and one only RDS knows, where bob is in use.
    w.state().rds = Some(Ok(RdsTopology {
        arns: vec!["arn:aws:rds:eu-west-1:1:cluster:orders".into()],
        readers: vec![reader("reader-1", 5432), reader("reader-3", 5432)],
        ..Default::default()
    }));
    w.state().reader_sessions.insert(
        "reader-3".into(),
        vec![crate::rotation::ports::SessionGroup {
            client: "10.0.2.9".into(),
            application: "reports".into(),
            sessions: 1,
        }],
    );
    let err = rotate(&w).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("10.0.2.9 on reader reader-3:5432 (reports)"),
        "{err}"
    );
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    w.state().reader_sessions.clear();
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn an_rds_api_that_refuses_stops_the_rotation_naming_the_action_and_the_setting() {
    use crate::rotation::ports::RdsError;
    let w = world();
    w.state().rds = Some(Err(RdsError::Denied {
        action: "DescribeDBInstances",
        reason: "AccessDenied: not authorized".into(),
    }));
    let err = rotate(&w).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    for part in [
        "rds:DescribeDBInstances",
        "ROTATOR_RDS_DISCOVERY=off",
        "reader_hosts",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert_eq!(w.state().db["bob"], "bob-0", "bob's password is unchanged");
    // RDS that does not answer: the rotation waits, as for a reader it cannot reach.
    let w = world();
    w.state().rds = Some(Err(RdsError::Unavailable("503".into())));
    let err = rotate(&w).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(w.state().db["bob"], "bob-0");
}

/// RDS says the database is in one Blue/Green deployment.
fn in_deployment(w: &World, status: &str, replication: crate::rotation::ports::Replication) {
    w.state().rds = Some(Ok(crate::rotation::ports::RdsTopology {
        arns: vec!["arn:aws:rds:eu-west-1:1:db:orders".into()],
        deployments: vec![crate::rotation::ports::BlueGreen {
            id: "bgd-abc".into(),
            name: "upgrade-16".into(),
            status: status.into(),
            replication,
            is_green: false,
        }],
        ..Default::default()
    }));
}

#[tokio::test]
async fn a_blue_green_deployment_by_logical_replication_or_in_switchover_defers_before_awspending()
{
    use crate::rotation::ports::Replication::*;
    for (status, replication) in [("AVAILABLE", Logical), ("SWITCHOVER_IN_PROGRESS", Physical)] {
        let w = world();
        in_deployment(&w, status, replication);
        let err = rotate(&w).await.unwrap_err();
        assert!(
            matches!(err, RotationError::BlueGreen { .. }) && err.is_wait(),
            "{status}: {err:?}"
        );
        assert!(err.to_string().contains("upgrade-16 (bgd-abc)"), "{err}");
        assert!(
            w.labelled(APP, Stage::Pending).is_none(),
            "{status}: nothing written"
        );
        assert!(w.state().password_changes.is_empty());
        // Once it is switched over, the rotation goes on.
        in_deployment(&w, "SWITCHOVER_COMPLETED", replication);
        rotate(&w).await.unwrap();
        assert_rotated(&w, "alice", "bob", "alice-0");
    }
    // Physical replication carries the change to green: no wait.
    let w = world();
    in_deployment(&w, "AVAILABLE", Physical);
    rotate(&w).await.unwrap();
    // An RDS that refuses DescribeBlueGreenDeployments names it and the setting.
    let w = world();
    w.state().rds = Some(Err(crate::rotation::ports::RdsError::Denied {
        action: "DescribeBlueGreenDeployments",
        reason: "AccessDenied".into(),
    }));
    let err = rotate(&w).await.unwrap_err().to_string();
    assert!(
        err.contains("rds:DescribeBlueGreenDeployments")
            && err.contains("ROTATOR_RDS_DISCOVERY=off"),
        "{err}"
    );
    assert!(w.labelled(APP, Stage::Pending).is_none(), "nothing written");
}

#[tokio::test]
async fn rds_is_asked_once_per_run_however_often_its_answer_is_used() {
    let w = world();
    rotate(&w).await.unwrap();
    assert_eq!(
        w.state().rds_calls,
        1,
        "asked once, beside the run's first calls, for Blue/Green and the readers"
    );
}

#[tokio::test]
async fn forcing_a_rotation_does_not_bypass_the_guard_but_ignoring_it_does() {
    let w = world();
    sessions_of(&w, "bob", 1);
    let forced = rotator(&w)
        .rotate(
            APP,
            &Request {
                force: true,
                ..Request::default()
            },
            LeaseWait::No,
        )
        .await;
    assert!(
        matches!(forced, Err(RotationError::UserInUse { .. })),
        "{forced:?}"
    );
    let ignored = request(
        &w,
        Request {
            ignore_in_use: true,
            ..Request::default()
        },
    )
    .await;
    assert!(matches!(ignored, Outcome::Rotated(_)), "{ignored:?}");
    assert_rotated(&w, "alice", "bob", "alice-0");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert!(
        record.in_use.as_deref().unwrap().contains("orders-api"),
        "what the guard saw stays in the record"
    );
}

#[tokio::test]
async fn under_warn_or_off_the_rotation_goes_on() {
    for policy in [guard::InUsePolicy::Warn, guard::InUsePolicy::Off] {
        let w = world();
        sessions_of(&w, "bob", 1);
        let mut r = rotator(&w);
        r.settings.in_use.policy = policy;
        let done = r.rotate(APP, &Request::default(), LeaseWait::No).await;
        assert!(
            matches!(done, Ok(Outcome::Rotated(_))),
            "{policy:?}: {done:?}"
        );
        assert_rotated(&w, "alice", "bob", "alice-0");
        let seen = w.state().reports.last().unwrap().in_use.is_some();
        assert_eq!(seen, policy == guard::InUsePolicy::Warn, "{policy:?}");
    }
}

#[tokio::test]
async fn a_single_user_rotation_is_not_held_back_by_its_own_applications() {
    let w = world();
    w.add_secret(
        "solo",
        json!({"engine": "postgres", "host": "db", "username": "alice", "password": "alice-0"}),
    );
    sessions_of(&w, "alice", 3);
    let done = rotator(&w)
        .rotate("solo", &Request::default(), LeaseWait::No)
        .await;
    assert!(matches!(done, Ok(Outcome::Rotated(_))), "{done:?}");
    assert!(w.state().reports.last().unwrap().in_use.is_none());
}
