//! AWS faults: throttling, 500s, slow and lost answers injected between the binary and moto.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_thirty_percent_faults_twenty_rotations_all_complete() {
    let pair = Pair::new().await;
    let faults = fault_proxy(aws_fault_proxy::Faults {
        rate: 0.3,
        slow_delay: Duration::from_millis(300),
        fixed_delay: Duration::ZERO,
    })
    .await;
    let endpoint = format!("http://{}", faults.addr);
    let (mut completed, mut reruns) = (0, 0);
    for i in 0..20 {
        let mut tries = 0;
        loop {
            tries += 1;
            let out = tokio::task::block_in_place(|| {
                pair.command(&["rotate", &pair.app_secret])
                    .env("AWS_ENDPOINT_URL", &endpoint)
                    // The SDK's backoff is a second at first: every fault here would wait for it.
                    // What is tested is that every retry is safe, not how long it waits.
                    .env("ROTATOR_AWS_RETRY_BACKOFF", "50ms")
                    .output()
                    .unwrap()
            });
            match out.status.code() {
                Some(0) => break,
                // A transient failure left the rotation in progress: run again, as a worker would.
                Some(75) if tries < 10 => reruns += 1,
                _ => panic!(
                    "rotation {} failed on try {tries}: {}",
                    i + 1,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        completed += 1;
        assert_eq!(
            pair.violations(true).await,
            Vec::<String>::new(),
            "after rotation {}",
            i + 1
        );
    }
    let c = &faults.counts;
    report(
        "aws-faults",
        &format!(
            "aws faults: rotations={completed} reruns={reruns} injected={} (throttled={} 500s={} slow={} lost-answers={}) forwarded={}",
            c.injected(),
            c.throttled.load(Ordering::Relaxed),
            c.server_errors.load(Ordering::Relaxed),
            c.slowed.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
            c.forwarded.load(Ordering::Relaxed)
        ),
    );
    assert_eq!(completed, 20);
    assert!(
        c.injected() > 50,
        "too few faults injected to mean anything"
    );
    pair.assert_rotated_to(&pair.users[0]).await;
}
