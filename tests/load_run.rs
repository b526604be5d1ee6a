//! The claim itself: applications see no failed login while passwords rotate. Client tasks keep
//! opening connections, half through the RDS Proxy stand-in and half directly, each with the
//! AWSCURRENT it reads right before connecting, while the secret rotates again and again.
//!
//! `ROTATOR_LOAD_ROTATIONS` sets the number of rotations (default 20; `make load-run` runs 100).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rds_rotator::rotation::{LeaseWait, Outcome, Request, RotationError, Settings};
use serde_json::Value;
use tokio_postgres::NoTls;

const CLIENTS: usize = 8;

#[derive(Default)]
struct Tally {
    attempted: AtomicU64,
    failed: AtomicU64,
    via_proxy: AtomicU64,
    samples: Mutex<Vec<String>>,
}

/// Client tasks, as applications: read AWSCURRENT, connect, `SELECT 1`, disconnect, again.
struct Clients {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(pair: &Pair) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let (stop, tally, sm, secret) = (
                stop.clone(),
                tally.clone(),
                pair.sm.clone(),
                pair.app_secret.clone(),
            );
            let (dbname, proxy_port) = (pair.dbname.clone(), pair.proxy.addr.port());
            let via_proxy = i % 2 == 0;
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let current = match sm
                        .get_secret_value()
                        .secret_id(&secret)
                        .version_stage("AWSCURRENT")
                        .send()
                        .await
                    {
                        Ok(out) => {
                            serde_json::from_str::<Value>(out.secret_string().unwrap()).unwrap()
                        }
                        Err(e) => {
                            panic!("reading AWSCURRENT failed (the emulator, not a login): {e:?}")
                        }
                    };
                    let s = stack();
                    let (host, port) = if via_proxy {
                        ("127.0.0.1".to_owned(), proxy_port)
                    } else {
                        (s.pg_host.clone(), s.pg_port)
                    };
                    let mut cfg = tokio_postgres::Config::new();
                    cfg.host(&host)
                        .port(port)
                        .dbname(&dbname)
                        .user(current["username"].as_str().unwrap())
                        .password(current["password"].as_str().unwrap())
                        .connect_timeout(Duration::from_secs(10));
                    tally.attempted.fetch_add(1, Ordering::SeqCst);
                    if via_proxy {
                        tally.via_proxy.fetch_add(1, Ordering::SeqCst);
                    }
                    let outcome = async {
                        let (client, conn) = cfg.connect(NoTls).await?;
                        tokio::spawn(conn);
                        client.simple_query("SELECT 1").await
                    }
                    .await;
                    if let Err(e) = outcome {
                        tally.failed.fetch_add(1, Ordering::SeqCst);
                        let mut samples = tally.samples.lock().unwrap();
                        if samples.len() < 5 {
                            samples.push(format!(
                                "{} via {}: {}",
                                current["username"],
                                if via_proxy { "proxy" } else { "direct" },
                                pg_error(&e)
                            ));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        Self { stop, tally, tasks }
    }

    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a client task panicked");
        }
        self.tally
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_see_no_failed_login_while_passwords_rotate() {
    let rotations: usize = std::env::var("ROTATOR_LOAD_ROTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let lag = Duration::from_secs(2);
    let pair = Pair::with(Options {
        direct: true,
        proxy_refresh: lag,
        ..Options::default()
    })
    .await;
    let rotator = pair
        .rotator(Settings {
            test_deadline: Duration::from_secs(30),
            ..Settings::default()
        })
        .await;
    let clients = Clients::start(&pair);
    let started = Instant::now();
    let mut completed = 0;
    for i in 0..rotations {
        match rotator
            .rotate(
                &pair.app_secret,
                &Request::default(),
                LeaseWait::UpTo(Duration::from_secs(60)),
            )
            .await
        {
            Ok(Outcome::Rotated(_)) => completed += 1,
            other => panic!("rotation {} did not complete: {other:?}", i + 1),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let tally = clients.stop().await;
    let (attempted, failed) = (
        tally.attempted.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
    );
    report(
        "load-run",
        &format!(
            "load run: rotations={completed} connections={attempted} failed={failed} (proxy refresh lag {}, {} clients, half through the proxy: {} connections; {:.0}s)",
            humantime::format_duration(lag),
            CLIENTS,
            tally.via_proxy.load(Ordering::SeqCst),
            started.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(
        failed,
        0,
        "failed logins: {:?}",
        tally.samples.lock().unwrap()
    );
    assert_eq!(completed, rotations);
    assert!(
        attempted >= 10 * rotations as u64,
        "too few connections ({attempted}) to mean anything"
    );
    pair.assert_rotated_to(&pair.users[rotations % 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_slower_than_the_deadline_never_gets_awscurrent_moved_to_it() {
    // The stand-in re-reads its secrets only when told: longer than any deadline.
    let pair = Pair::with(Options {
        direct: true,
        proxy_refresh: Duration::from_secs(3600),
        ..Options::default()
    })
    .await;
    let clients = Clients::start(&pair);
    let rotator = pair
        .rotator(Settings {
            test_deadline: Duration::from_secs(3),
            ..Settings::default()
        })
        .await;

    let err = rotator
        .rotate(&pair.app_secret, &Request::default(), LeaseWait::No)
        .await
        .expect_err("the test step cannot pass while the proxy holds the old secret");
    assert!(matches!(err, RotationError::TestTimedOut { .. }), "{err}");
    assert!(err.is_retryable(), "a slow proxy is worth another try");
    assert_eq!(
        pair.current().await["username"],
        pair.users[0].as_str(),
        "AWSCURRENT moved to untested credentials"
    );
    let status = pair.status();
    assert_eq!(
        (status["state"].as_str(), status["step"].as_str()),
        (Some("in_progress"), Some("test"))
    );
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("did not log in through"),
        "{status}"
    );

    pair.proxy.refresh_now().await;
    let done = match rotator
        .rotate(&pair.app_secret, &Request::default(), LeaseWait::No)
        .await
    {
        Ok(Outcome::Rotated(done)) => done,
        other => panic!("the retry after the proxy caught up did not rotate: {other:?}"),
    };
    assert!(done.resumed);
    assert_eq!(
        Some(done.rotation_id.as_str()),
        status["rotation_id"].as_str()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = clients.stop().await;
    let (attempted, failed) = (
        tally.attempted.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
    );
    report("lagging-proxy", &format!("lagging proxy: connections={attempted} failed={failed}, AWSCURRENT kept until the proxy caught up"));
    assert_eq!(
        failed,
        0,
        "failed logins: {:?}",
        tally.samples.lock().unwrap()
    );
    assert!(attempted > 20, "too few connections ({attempted})");
    pair.assert_rotated_to(&pair.users[1]).await;
}
