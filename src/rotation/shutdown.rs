//! How a process asks its rotations to stop.

use std::sync::Arc;

/// Asks running rotations to stop: at their next persisted step (`trigger`, SIGTERM), or
/// inside the step they are in (`stop_now`, Lambda's deadline). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<tokio::sync::watch::Sender<u8>>);

/// `Shutdown`'s levels.
const STOP_AFTER_STEP: u8 = 1;
const STOP_NOW: u8 = 2;

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.0.send_if_modified(|level| {
            let raise = *level < STOP_AFTER_STEP;
            if raise {
                *level = STOP_AFTER_STEP;
            }
            raise
        });
    }

    /// Stops the step in progress where it is: every step is idempotent, and the next run
    /// resumes it. For a deadline that kills the process (Lambda's).
    pub fn stop_now(&self) {
        self.0.send_replace(STOP_NOW);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() >= STOP_AFTER_STEP
    }

    /// Resolves once `trigger` (or `stop_now`) has been called.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|level| *level >= STOP_AFTER_STEP).await;
    }

    /// Resolves once `stop_now` has been called.
    pub async fn wait_now(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|level| *level >= STOP_NOW).await;
    }
}
