//! Time as a port. The engine, the lease and the records read time only through a `Clock`:
//! production gives them the system's, and a test (or a simulator) gives each process its own,
//! with an offset, and advances it.
//!
//! Two readings are kept apart on purpose:
//! - the wall clock (`now_ms`) stamps records and messages for people; no safety decision
//!   compares it with another machine's;
//! - the monotonic clock (`now`, `sleep_until`) measures leases, deadlines and pauses, each on
//!   the process's own clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A sleep, boxed so that the trait stays object-safe.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One process's time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch, by this process's wall clock.
    fn now_ms(&self) -> u64;

    /// This process's monotonic clock.
    fn now(&self) -> Instant;

    /// Resolves once `now()` has reached `at`.
    fn sleep_until(&self, at: Instant) -> Sleep;
}

/// A future that did not end by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl dyn Clock {
    pub fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(self.now() + d)
    }

    /// `work`, unless `at` comes first. `work` is polled first, as `tokio::time::timeout` does:
    /// an answer ready at the deadline counts.
    pub fn timeout_at<F: Future>(&self, at: Instant, work: F) -> Timeout<F> {
        Timeout {
            work: Box::pin(work),
            sleep: self.sleep_until(at),
        }
    }

    pub fn timeout<F: Future>(&self, limit: Duration, work: F) -> Timeout<F> {
        self.timeout_at(self.now() + limit, work)
    }
}

/// `Clock::timeout_at`'s future. A plain type rather than an `async fn`, so that the compiler
/// sees at once that it is `Send` when the work is.
pub struct Timeout<F> {
    work: Pin<Box<F>>,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = self.work.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        self.sleep.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

/// Backon's pauses, on a `Clock`.
pub struct ClockSleeper(pub Arc<dyn Clock>);

impl backon::Sleeper for ClockSleeper {
    type Sleep = Sleep;

    fn sleep(&self, d: Duration) -> Sleep {
        self.0.sleep(d)
    }
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, at: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(at))
    }
}

/// A process's clock in a test: its wall clock is `offset_ms` away from the system's (a skewed
/// machine), and may jump; both of its clocks move with tokio's, so a test that pauses time
/// (`start_paused`, `tokio::time::advance`) moves every process's clock at once.
#[derive(Debug)]
pub struct OffsetClock {
    wall_at_start: u64,
    start: Instant,
    offset_ms: std::sync::atomic::AtomicI64,
}

impl OffsetClock {
    pub fn new(offset_ms: i64) -> Self {
        Self::starting_at(SystemClock.now_ms(), offset_ms)
    }

    /// The true wall clock reads `wall_ms` now (a simulator's runs all start at one date, so
    /// that a seed replays exactly).
    pub fn starting_at(wall_ms: u64, offset_ms: i64) -> Self {
        Self {
            wall_at_start: wall_ms,
            start: Instant::now(),
            offset_ms: offset_ms.into(),
        }
    }

    /// The wall clock jumps by `by_ms` (an NTP step, a VM restored).
    pub fn jump(&self, by_ms: i64) {
        self.offset_ms
            .fetch_add(by_ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> u64 {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        (self.wall_at_start + self.start.elapsed().as_millis() as u64).saturating_add_signed(offset)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, at: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_process_keeps_its_offset_while_time_advances() {
        let (early, late): (Arc<dyn Clock>, Arc<dyn Clock>) = (
            Arc::new(OffsetClock::new(0)),
            Arc::new(OffsetClock::new(3_600_000)),
        );
        let (e0, l0, m0) = (early.now_ms(), late.now_ms(), early.now());
        assert!(l0.abs_diff(e0 + 3_600_000) < 1_000, "{e0} {l0}");
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(early.now_ms() - e0, 90_000);
        assert_eq!(late.now_ms() - l0, 90_000);
        assert_eq!(early.now() - m0, Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_ends_work_that_outlives_it_and_keeps_work_that_does_not() {
        let clock = SystemClock::shared();
        let slow = clock.timeout(Duration::from_secs(1), clock.sleep(Duration::from_secs(2)));
        assert_eq!(slow.await, Err(Elapsed));
        let quick = clock.timeout(Duration::from_secs(2), async { 7 });
        assert_eq!(quick.await, Ok(7));
    }
}
