//! A client-side limit on Secrets Manager writes, shared by every rotation of one process.
//!
//! An account and region allows about 50 write calls (PutSecretValue, UpdateSecretVersionStage)
//! per second. A fleet of secrets on one schedule would otherwise be throttled into SDK retries;
//! waiting here instead keeps every call useful. A sliding window: at most `per_second` permits in
//! any window of a second (plus a margin for the time a request takes to reach AWS).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Longer than a second, so that network jitter cannot squeeze two windows' worth of requests
/// into one second as AWS sees them.
const WINDOW: Duration = Duration::from_millis(1_050);

#[derive(Debug)]
pub struct RateLimit {
    per_second: usize,
    granted: Mutex<VecDeque<Instant>>,
}

impl RateLimit {
    /// `per_second` of at least 1.
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1) as usize;
        Self {
            per_second,
            granted: Mutex::new(VecDeque::with_capacity(per_second)),
        }
    }

    pub fn per_second(&self) -> usize {
        self.per_second
    }

    /// Waits until a permit is free, then takes it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut granted = self.granted.lock().expect("rate limit lock");
                let now = Instant::now();
                while granted
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= WINDOW)
                {
                    granted.pop_front();
                }
                if granted.len() < self.per_second {
                    granted.push_back(now);
                    return;
                }
                WINDOW - now.duration_since(*granted.front().expect("the window is full"))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Virtual time: the assertion counts permits, it does not time anything.
    #[tokio::test(start_paused = true)]
    async fn no_window_of_a_second_holds_more_than_the_limit() {
        let limit = std::sync::Arc::new(RateLimit::new(10));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..45 {
            let limit = limit.clone();
            tasks.push(tokio::spawn(async move {
                limit.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count();
            assert!(in_window <= 10, "{in_window} permits within a second");
        }
        // 45 permits at 10 per window take four full windows.
        assert!(times[44].duration_since(start) >= WINDOW * 4);
        assert!(times[44].duration_since(start) < WINDOW * 5);
    }
}
