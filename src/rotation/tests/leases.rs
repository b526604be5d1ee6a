//! The lease: held, lost, run out by the holder's own clock; shutdown at a persisted step.

use super::*;

#[tokio::test]
async fn a_held_lease_makes_a_second_worker_step_back() {
    let w = world();
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
    let err = rotate(&w).await.unwrap_err();
    assert!(
        matches!(err, RotationError::Busy { ref owner, .. } if owner == "other"),
        "{err}"
    );
    assert_eq!(w.state().secrets[APP].len(), 1);
}

#[tokio::test]
async fn a_finished_rotation_leaves_the_lease_free_for_the_next() {
    let w = world();
    rotate(&w).await.unwrap();
    use crate::rotation::ports::RecordStore;
    let next = w
        .acquire(
            &format!("arn:fake:{APP}"),
            "next",
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(next, crate::rotation::ports::Acquired::Granted { .. }),
        "{next:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_at_the_next_persisted_step_and_the_next_run_resumes() {
    let w = world();
    let r = rotator(&w);
    r.shutdown.trigger();
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::Interrupted(_)), "{err}");
    let record = w.record(&format!("arn:fake:{APP}")).unwrap();
    assert_eq!(
        (record.state, record.step, record.last_error),
        (State::InProgress, Step::CreatePending, None)
    );
    assert_eq!(w.state().secrets[APP].len(), 1, "nothing but the record");
    let done = rotate(&w).await.unwrap();
    assert_eq!(Some(done.rotation_id), record.rotation_id);
}

/// A call to a `Tapped` record store, as its hook sees it.
enum Call<'a> {
    Save(&'a StepRecord),
    Renew,
    /// After `acquire` granted the lease.
    Granted,
    Other,
}

/// What a `Tapped` store runs: its error is the call's.
type Hook = Box<dyn Fn(Call<'_>) -> Result<(), RecordStoreError> + Send + Sync>;

/// The world's record store with a hook: called before each call (its error is the call's: a
/// table out of reach, a partition) and after each grant.
struct Tapped {
    world: World,
    hook: Hook,
}

impl Tapped {
    fn new(
        w: &World,
        hook: impl Fn(Call<'_>) -> Result<(), RecordStoreError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            world: w.clone(),
            hook: Box::new(hook),
        })
    }
}

#[async_trait::async_trait]
impl crate::rotation::ports::RecordStore for Tapped {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        take_over: Option<&crate::rotation::ports::LeaseSeen>,
    ) -> Result<crate::rotation::ports::Acquired, RecordStoreError> {
        (self.hook)(Call::Other)?;
        let got = self.world.acquire(key, owner, ttl, take_over).await?;
        if matches!(got, crate::rotation::ports::Acquired::Granted { .. }) {
            (self.hook)(Call::Granted)?;
        }
        Ok(got)
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Renew)?;
        self.world.renew(lease, ttl).await
    }
    async fn save(&self, lease: &Lease, record: &StepRecord) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Save(record))?;
        self.world.save(lease, record).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.release(lease).await
    }
    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.load(key).await
    }
    async fn claim_user(
        &self,
        user_key: &str,
        claim: &crate::rotation::ports::UserClaim,
        replacing: Option<&crate::rotation::ports::UserClaim>,
    ) -> Result<crate::rotation::ports::Claimed, RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.claim_user(user_key, claim, replacing).await
    }
    async fn mark_in_use(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        (self.hook)(Call::Other)?;
        self.world.mark_in_use(user_key, secret).await
    }
}

/// No record is written at set_password: the password changes while the stored record says
/// create_pending. Here every write after the first is refused (DynamoDB throttling, say), so it
/// still says so when the proxy secret's write fails; an operator then aborts. The next rotation,
/// with no master secret, must still know the idle user's password: it is in the aborted
/// rotation's pending version, which the next rotation tries whatever step the record names.
#[tokio::test]
async fn a_password_change_whose_record_says_create_pending_is_still_known_after_an_abort() {
    let w = world();
    let mut r = rotator(&w);
    r.records = Tapped::new(&w, |call| match call {
        Call::Save(r) if r.step >= Step::SetPassword || r.last_error.is_some() => Err(
            RecordStoreError::Unavailable("ProvisionedThroughputExceededException".into()),
        ),
        _ => Ok(()),
    });
    w.state().deny_puts.insert("proxy-bob".into());
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("proxy-bob"), "{err}");
    w.state().deny_puts.clear();
    let key = format!("arn:fake:{APP}");
    let stored = w.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.step),
        (State::InProgress, Step::CreatePending)
    );
    let pending = w.labelled(APP, Stage::Pending).unwrap();
    assert_eq!(
        w.state().db["bob"],
        pending["password"].as_str().unwrap(),
        "the password changed although its record did not land"
    );
    rotator(&w)
        .abort(APP, "stuck", LeaseWait::No)
        .await
        .unwrap();
    // bob's proxy secret still holds bob-0, and there is no master secret.
    rotate(&w).await.unwrap();
    assert_rotated(&w, "alice", "bob", "alice-0");
}

#[tokio::test]
async fn shutdown_after_a_step_stops_at_its_record_and_the_next_run_resumes_it() {
    use crate::rotation::ports::RecordStore;
    let w = world();
    let mut r = rotator(&w);
    // Shutdown is asked for while the test step logs in: the run finishes that step, saves the
    // record, then stops.
    r.db = Arc::new(AtTestLogin {
        world: w.clone(),
        proxy_delay: Duration::ZERO,
        shutdown: Some(r.shutdown.clone()),
    });
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::Interrupted(_)), "{err}");
    let key = format!("arn:fake:{APP}");
    let record = w.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.step, record.last_error),
        (State::InProgress, Step::Finish, None)
    );
    // The password and the proxy secret are set, AWSCURRENT not yet.
    assert_ne!(
        w.labelled("proxy-bob", Stage::Current).unwrap()["password"],
        "bob-0"
    );
    assert_eq!(
        w.labelled(APP, Stage::Current).unwrap()["username"],
        "alice"
    );
    let done = rotate(&w).await.unwrap();
    assert_eq!(Some(done.rotation_id), record.rotation_id);
    assert!(done.resumed);
    assert_rotated(&w, "alice", "bob", "alice-0");
}

/// The world's database, where each login the test step makes first asks for `shutdown` (when
/// set), and one through the proxy takes `proxy_delay`.
struct AtTestLogin {
    world: World,
    proxy_delay: Duration,
    shutdown: Option<crate::rotation::shutdown::Shutdown>,
}

impl AtTestLogin {
    fn slow_proxy(w: &World, proxy_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            world: w.clone(),
            proxy_delay,
            shutdown: None,
        })
    }
}

#[async_trait::async_trait]
impl Database for AtTestLogin {
    async fn check_login(
        &self,
        engine: crate::secret::Engine,
        at: &crate::secret::Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError> {
        if let Some(shutdown) = &self.shutdown {
            shutdown.trigger();
        }
        if at.host == "proxy" {
            tokio::time::sleep(self.proxy_delay).await;
        }
        self.world.check_login(engine, at, creds).await
    }
    async fn login(
        &self,
        engine: crate::secret::Engine,
        at: &crate::secret::Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        self.world.login(engine, at, login).await
    }
    async fn privileges(
        &self,
        engine: crate::secret::Engine,
        at: &crate::secret::Endpoint,
        login: &Credentials,
        user: &str,
    ) -> Result<Vec<String>, DbError> {
        self.world.privileges(engine, at, login, user).await
    }
}

/// A rotator whose lease renewals are refused, with a 200 ms lease and logins through the
/// proxy that take 400 ms: it stops inside the test step, by its own clock.
fn renewals_refused(w: &World) -> Rotator {
    let mut r = rotator(w);
    r.records = Tapped::new(w, |call| match call {
        Call::Renew => Err(RecordStoreError::Unavailable(
            "the table is unreachable".into(),
        )),
        _ => Ok(()),
    });
    r.db = AtTestLogin::slow_proxy(w, Duration::from_millis(400));
    r.settings.lease_duration = Duration::from_millis(200);
    r.settings.test_deadline = Duration::from_secs(5);
    r
}

#[tokio::test]
async fn a_run_whose_lease_ran_out_by_its_own_clock_stops_before_its_next_step() {
    let w = world();
    let before = w.version_id_with(APP, Stage::Current);
    let r = renewals_refused(&w);
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::LeaseLost(_)), "{err}");
    // The test passed, but finish never ran: another worker may hold the lease by now.
    assert_eq!(w.version_id_with(APP, Stage::Current), before);
    let record = w.load(&format!("arn:fake:{APP}")).await.unwrap().unwrap();
    // Nothing after the lease's own record: the next run resumes from create_pending, and finds
    // each step done.
    assert_eq!(
        (record.state, record.step),
        (State::InProgress, Step::CreatePending)
    );
}

/// A holder cut off from the state table cannot renew: by its own monotonic clock it stops
/// inside its step before its lease could have run out, and the taker, which watched the lease
/// unchanged for a whole period on its own clock, takes over only after that. One rotation,
/// never two writers.
#[tokio::test(start_paused = true)]
async fn a_holder_cut_off_from_the_state_table_stops_before_a_taker_takes_its_lease() {
    cut_off_holder(0, 0).await;
}

/// The same with the two processes' wall clocks two hours apart: nothing about the lease
/// compares them, so nothing changes.
#[tokio::test(start_paused = true)]
async fn a_lease_hand_over_is_the_same_whatever_the_two_wall_clocks_say() {
    cut_off_holder(3_600_000, -3_600_000).await;
}

/// The holder and the taker, each with its wall clock `offset` ms off.
async fn cut_off_holder(holder_offset: i64, taker_offset: i64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = world();
    let before = w.version_id_with(APP, Stage::Current);
    let cut = Arc::new(AtomicBool::new(false));
    let mut holder = rotator(&w);
    holder.clock = Arc::new(OffsetClock::new(holder_offset));
    let partition = cut.clone();
    holder.records = Tapped::new(&w, move |_| {
        if partition.load(Ordering::SeqCst) {
            return Err(RecordStoreError::Unavailable("partitioned".into()));
        }
        Ok(())
    });
    // The holder waits in the test step: its logins through the proxy take 10 s each.
    holder.db = AtTestLogin::slow_proxy(&w, Duration::from_secs(10));
    holder.settings.lease_duration = Duration::from_secs(3);
    holder.settings.test_deadline = Duration::from_secs(60);
    let holding = tokio::spawn(async move {
        let out = holder.rotate(APP, &Request::default(), LeaseWait::No).await;
        (out, tokio::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Past update_proxy: the holder waits in the test step.
    assert_ne!(
        w.labelled("proxy-bob", Stage::Current).unwrap()["password"],
        "bob-0",
        "the holder waits in the test step"
    );
    cut.store(true, Ordering::SeqCst);

    let granted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut taker = rotator(&w);
    taker.clock = Arc::new(OffsetClock::new(taker_offset));
    let grants = granted.clone();
    taker.records = Tapped::new(&w, move |call| {
        if matches!(call, Call::Granted) {
            grants.lock().unwrap().push(tokio::time::Instant::now());
        }
        Ok(())
    });
    taker.settings.lease_duration = Duration::from_secs(3);
    let took = taker
        .rotate(
            APP,
            &Request::default(),
            LeaseWait::UpTo(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let (held, stopped_at) = holding.await.unwrap();
    assert!(matches!(held, Err(RotationError::LeaseLost(_))), "{held:?}");
    let taken_at = granted.lock().unwrap()[0];
    assert!(
        stopped_at <= taken_at,
        "the holder stopped at {stopped_at:?}, after the taker took the lease at {taken_at:?}"
    );
    let Outcome::Rotated(done) = took else {
        panic!("the taker resumes and finishes the rotation: {took:?}");
    };
    assert!(done.resumed);
    assert_ne!(w.version_id_with(APP, Stage::Current), before);
    assert_rotated(&w, "alice", "bob", "alice-0");
    assert_eq!(w.state().password_changes, vec!["bob".to_owned()]);
}

/// Found by the simulator (seed 934): a run stopped inside a step (its lease ran out by its own
/// clock, or Lambda's deadline) may have a statement in flight, which the database applies up
/// to `--db-timeout` later. Released, the lease would be free at once, and a later rotation's
/// password could be overwritten by that late statement; left to expire, a taker waits out the
/// takeover period, which covers it.
#[tokio::test]
async fn a_run_stopped_inside_a_step_leaves_its_lease_to_expire() {
    let w = world();
    let r = renewals_refused(&w);
    let err = r
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::LeaseLost(_)), "{err}");
    let next = rotator(&w)
        .rotate(APP, &Request::default(), LeaseWait::No)
        .await
        .unwrap_err();
    assert!(matches!(next, RotationError::Busy { .. }), "{next}");
}
