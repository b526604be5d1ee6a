//! The SQS worker: one testable step, `process`, and a trivial loop around it.
//!
//! Delivery is at least once; rotations must happen at most once per request. That is settled
//! under the secret's lease by the engine (`Request::request_id`, `min_interval`), so copies and
//! redeliveries of a message are acknowledged without rotating again. Here we only decide what
//! happens to the message:
//!
//! | outcome                          | message                                              |
//! |----------------------------------|------------------------------------------------------|
//! | rotated, or skipped              | deleted                                              |
//! | transient error                  | made visible again after a growing delay             |
//! | a wait (`RotationError::is_wait`: the in-use guard, an unreachable reader, a Blue/Green deployment, a lease or a user another rotation holds) | sent again as a new message after a growing delay, same request id; the original deleted |
//! | fatal error, malformed message   | sent to the dead-letter queue with its reason, deleted |
//! | transient error on the queue's last receive, or a wait past `max_deferrals` | the same: a person must act |
//! | shutdown before it finished      | made visible again at once, for another worker       |
//!
//! A wait is not a failure: were it made visible again, its receives would reach the redrive
//! policy's maxReceiveCount, and SQS would move it to the dead-letter queue by itself, with no
//! reason, leaving the rotation in progress (holding AWSPENDING and its user claim) until some
//! later request. A new message starts its receive count again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::message::{self, Job, RotateMessage, TagSelector};
use crate::rotation::clock::{Clock, SystemClock};
use crate::rotation::ports::SecretStoreError;
use crate::rotation::{LeaseWait, Outcome, Request, RotationError, Rotator};

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub receipt: String,
    pub body: String,
    /// ApproximateReceiveCount: 1 on first delivery.
    pub receive_count: u32,
    /// How many times the worker sent this request again because its rotation waited (the
    /// message attribute `rotator_deferrals`, which workers that predate it ignore; the body
    /// stays the request as it was asked for).
    pub deferrals: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
    #[error("the queue refused the request: {0}")]
    Refused(String),
    #[error("{0}")]
    Misconfigured(String),
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Long-polls for up to `max` messages, hiding them for `visibility`.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError>;
    async fn delete(&self, m: &Message) -> Result<(), QueueError>;
    /// Makes the message visible again after `delay` (also the visibility heartbeat).
    async fn hide_for(&self, m: &Message, delay: Duration) -> Result<(), QueueError>;
    /// Sends a new message, delivered after `delay` (at most 15 min), with its count of
    /// `deferrals`; returns its id.
    async fn send(&self, body: &str, delay: Duration, deferrals: u32)
        -> Result<String, QueueError>;
    /// The receive after which the queue moves a message to the dead-letter queue by itself
    /// (the redrive policy's maxReceiveCount), when known.
    fn max_receives(&self) -> Option<u32> {
        None
    }
    /// Moves the message to the dead-letter queue with `reason` attached, then deletes it.
    async fn dead_letter(&self, m: &Message, reason: &str) -> Result<(), QueueError>;
}

/// Finds the secrets a fan-out request names.
#[async_trait]
pub trait SecretDirectory: Send + Sync {
    /// ARNs of the secrets carrying the tag `key` = `value`.
    async fn with_tag(&self, key: &str, value: &str) -> Result<Vec<String>, SecretStoreError>;
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Rotations at once.
    pub concurrency: usize,
    /// A secret rotated less than this long ago is skipped unless the request forces it.
    pub min_interval: Duration,
    /// How long a received message stays hidden; renewed every third of it while it runs.
    pub visibility: Duration,
    /// Long-poll wait.
    pub receive_wait: Duration,
    /// First redelivery delay after a transient failure; doubles with each receive.
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
    /// How long running rotations get to reach their next persisted step on shutdown.
    pub shutdown_grace: Duration,
    /// Touched by the loop; `rds-rotator health` checks its age.
    pub health_file: Option<PathBuf>,
    /// How many times a request whose rotation waits is sent again before it goes to the
    /// dead-letter queue (with `retry_max_delay` of 15 min, 192 is about two days).
    pub max_deferrals: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            min_interval: crate::rotation::DEFAULT_MIN_INTERVAL,
            visibility: Duration::from_secs(60),
            receive_wait: Duration::from_secs(20),
            retry_delay: Duration::from_secs(10),
            retry_max_delay: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(20),
            health_file: None,
            max_deferrals: 192,
        }
    }
}

/// SQS delays a new message by at most 15 minutes.
const MAX_DEFER_DELAY: Duration = Duration::from_secs(900);

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Rotated {
        rotation_id: String,
    },
    Skipped {
        why: String,
    },
    FannedOut {
        count: usize,
    },
    Retried {
        delay: Duration,
        error: String,
    },
    /// The rotation waits: the request was sent again, to arrive after `delay`.
    Deferred {
        delay: Duration,
        error: String,
    },
    DeadLettered {
        reason: String,
    },
    /// Shutdown came first; the message is visible again for another worker.
    Interrupted,
}

/// What becomes of a message whose request did not end (see the table above): a value, so the
/// rules are tested without a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Visible again after a delay; each receive counts towards the redrive limit.
    Retry,
    /// Sent again as a new message, after a delay, with the same request id; the original is
    /// deleted.
    Defer,
    /// To the dead-letter queue, with the reason: a person must act.
    DeadLetter,
}

/// `receive_count` is this delivery's; `max_receives` the queue's redrive limit, when known;
/// `deferrals` how often the request was sent again already.
pub fn disposition(
    e: &RotationError,
    receive_count: u32,
    max_receives: Option<u32>,
    deferrals: u32,
    max_deferrals: u32,
) -> Disposition {
    if !e.is_retryable() {
        return Disposition::DeadLetter;
    }
    if e.is_wait() {
        return if deferrals < max_deferrals {
            Disposition::Defer
        } else {
            Disposition::DeadLetter
        };
    }
    // The queue would move it at its next receive, with no reason: now, with one.
    if max_receives.is_some_and(|max| receive_count >= max) {
        Disposition::DeadLetter
    } else {
        Disposition::Retry
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionOutcome {
    Processed(Handled),
    EmptyQueue,
}

#[derive(Clone)]
pub struct Worker {
    pub queue: Arc<dyn Queue>,
    pub directory: Arc<dyn SecretDirectory>,
    pub rotator: Rotator,
    pub settings: WorkerSettings,
}

impl Worker {
    /// Receives one message, if any arrives within the poll wait, and processes it.
    pub async fn try_execute_task(&self) -> Result<ExecutionOutcome, QueueError> {
        let mut batch = self
            .queue
            .receive(1, self.settings.receive_wait, self.settings.visibility)
            .await?;
        match batch.pop() {
            Some(m) => Ok(ExecutionOutcome::Processed(self.process(&m).await)),
            None => Ok(ExecutionOutcome::EmptyQueue),
        }
    }

    /// Handles one message from start to end, including what becomes of it on the queue.
    pub async fn process(&self, m: &Message) -> Handled {
        let job = match message::parse(&m.body) {
            Ok(job) => job,
            Err(e) => {
                error!(message_id = %m.id, error = %e, "malformed message; sending it to the dead-letter queue");
                return self.dead_letter(m, e.to_string()).await;
            }
        };
        let (handled, asked) = match job {
            Job::FanOut { select, request_id } => {
                let request_id = request_id.unwrap_or_else(|| m.id.clone());
                (self.fan_out(m, &select, &request_id).await, None)
            }
            Job::Rotate(msg) => {
                let visibility = self.settings.visibility;
                let queue = &self.queue;
                // The visibility heartbeat runs beside the rotation, in the same task.
                let heartbeat = async {
                    let mut tick = tokio::time::interval(visibility / 3);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        if let Err(e) = queue.hide_for(m, visibility).await {
                            warn!(message_id = %m.id, error = %e, "could not extend the message's visibility");
                        }
                    }
                };
                let handled = tokio::select! {
                    h = self.rotate(m, msg.clone()) => h,
                    never = heartbeat => never,
                };
                (handled, Some(msg))
            }
        };
        self.settle(m, handled, asked.as_ref()).await
    }

    async fn rotate(&self, m: &Message, msg: RotateMessage) -> Result<Handled, RotationError> {
        let request = Request {
            force: msg.force,
            ignore_in_use: msg.ignore_in_use,
            min_interval: Some(self.settings.min_interval),
            request_id: Some(msg.request_id.clone().unwrap_or_else(|| m.id.clone())),
            reason: msg.reason.clone(),
            invocation: None,
            hard_stop: None,
        };
        match self
            .rotator
            .rotate(&msg.secret_id, &request, LeaseWait::No)
            .await
        {
            Ok(Outcome::Rotated(done)) => {
                info!(message_id = %m.id, secret = %done.secret_arn, rotation_id = %done.rotation_id,
                      from = %done.previous_user, to = %done.current_user, resumed = done.resumed, "rotated");
                Ok(Handled::Rotated {
                    rotation_id: done.rotation_id,
                })
            }
            Ok(Outcome::Skipped { secret_arn, why }) => {
                info!(message_id = %m.id, secret = %secret_arn, %why, "request acknowledged without rotating");
                Ok(Handled::Skipped { why })
            }
            Ok(Outcome::Advanced { .. } | Outcome::NotBegun { .. }) => {
                unreachable!("only Secrets Manager's calls stop before the end")
            }
            Err(e) => Err(e),
        }
    }

    async fn fan_out(
        &self,
        m: &Message,
        select: &TagSelector,
        request_id: &str,
    ) -> Result<Handled, RotationError> {
        let arns = self
            .directory
            .with_tag(&select.tag_key, &select.tag_value)
            .await?;
        for arn in &arns {
            let body = serde_json::to_string(&RotateMessage {
                secret_id: arn.clone(),
                force: false,
                ignore_in_use: false,
                reason: Some(format!("tag {}={}", select.tag_key, select.tag_value)),
                // Derived from the fan-out request: a redelivered fan-out does not rotate twice.
                request_id: Some(format!("{request_id}/{arn}")),
            })
            .expect("messages serialise");
            if let Err(e) = self.queue.send(&body, Duration::ZERO, 0).await {
                // Retry the whole fan-out: the copies already sent are skipped by request id.
                return Err(RotationError::Secrets(SecretStoreError::Unavailable(
                    e.to_string(),
                )));
            }
        }
        info!(message_id = %m.id, tag = %select.tag_key, value = %select.tag_value, count = arns.len(), "fan-out enqueued");
        Ok(Handled::FannedOut { count: arns.len() })
    }

    /// Acknowledges, delays, defers or dead-letters the message according to the outcome.
    /// `asked` is the rotation request it carried.
    async fn settle(
        &self,
        m: &Message,
        outcome: Result<Handled, RotationError>,
        asked: Option<&RotateMessage>,
    ) -> Handled {
        match outcome {
            Ok(handled) => {
                if let Err(e) = self.queue.delete(m).await {
                    // It will be redelivered and then skipped: harmless.
                    warn!(message_id = %m.id, error = %e, "could not delete the message");
                }
                handled
            }
            Err(RotationError::Interrupted(_)) => {
                // On its last receive, a message made visible would go to the dead-letter queue
                // at the next: it goes in again as a new message instead (a deferral of none).
                let again = self.last_receive(m)
                    && self
                        .queue
                        .send(&m.body, Duration::ZERO, m.deferrals)
                        .await
                        .is_ok();
                if again {
                    let _ = self.queue.delete(m).await;
                } else {
                    let _ = self.queue.hide_for(m, Duration::ZERO).await;
                }
                Handled::Interrupted
            }
            Err(e) => {
                let deferrals = m.deferrals;
                let disposition = disposition(
                    &e,
                    m.receive_count,
                    self.queue.max_receives(),
                    deferrals,
                    self.settings.max_deferrals,
                );
                match (disposition, asked) {
                    (Disposition::Defer, Some(asked)) => self.defer(m, asked, e).await,
                    (Disposition::Retry | Disposition::Defer, _) => {
                        let delay = self.retry_delay(m.receive_count);
                        warn!(message_id = %m.id, error = %e, retry_in = %humantime::format_duration(delay),
                              receive_count = m.receive_count, "transient failure; the message will come back");
                        if let Err(q) = self.queue.hide_for(m, delay).await {
                            warn!(message_id = %m.id, error = %q, "could not delay the message");
                        }
                        Handled::Retried {
                            delay,
                            error: e.to_string(),
                        }
                    }
                    (Disposition::DeadLetter, _) => {
                        let reason = if !e.is_retryable() {
                            e.to_string()
                        } else if e.is_wait() {
                            format!("still waiting after {deferrals} deferrals: {e}")
                        } else {
                            format!(
                                "still failing at receive {} (the queue's limit): {e}",
                                m.receive_count
                            )
                        };
                        error!(message_id = %m.id, error = %reason, "rotation failed; sending the message to the dead-letter queue");
                        self.dead_letter(m, reason).await
                    }
                }
            }
        }
    }

    /// The rotation waits: the same request goes in again as a new message, after a growing
    /// delay, and the original is deleted. Sent first: a failed delete only leaves a copy,
    /// which the request id makes harmless.
    async fn defer(&self, m: &Message, asked: &RotateMessage, e: RotationError) -> Handled {
        let deferrals = m.deferrals.saturating_add(1);
        let again = RotateMessage {
            request_id: Some(asked.request_id.clone().unwrap_or_else(|| m.id.clone())),
            ..asked.clone()
        };
        let body = serde_json::to_string(&again).expect("messages serialise");
        let delay = self.retry_delay(deferrals).min(MAX_DEFER_DELAY);
        match self.queue.send(&body, delay, deferrals).await {
            Ok(id) => {
                info!(message_id = %m.id, new_message_id = %id, error = %e, deferrals,
                      retry_in = %humantime::format_duration(delay), "the rotation waits; the request was sent again");
                if let Err(q) = self.queue.delete(m).await {
                    warn!(message_id = %m.id, error = %q, "could not delete the deferred message; its copy is harmless");
                }
            }
            Err(q) if self.last_receive(m) => {
                // SQS would move it to the dead-letter queue at its next receive, with no
                // reason: now, with one.
                let reason = format!("could not send the waiting request again ({q}): {e}");
                error!(message_id = %m.id, error = %reason, "sending the message to the dead-letter queue");
                return self.dead_letter(m, reason).await;
            }
            Err(q) => {
                // Not sent: the original comes back instead, counting one receive.
                warn!(message_id = %m.id, error = %q, "could not send the deferred request again; the message will come back");
                let _ = self.queue.hide_for(m, delay).await;
            }
        }
        Handled::Deferred {
            delay,
            error: e.to_string(),
        }
    }

    /// This delivery is the last before the redrive policy moves the message.
    fn last_receive(&self, m: &Message) -> bool {
        self.queue
            .max_receives()
            .is_some_and(|max| m.receive_count >= max)
    }

    async fn dead_letter(&self, m: &Message, reason: String) -> Handled {
        if let Err(e) = self.queue.dead_letter(m, &reason).await {
            // Left in the queue: the redrive policy moves it after maxReceiveCount.
            error!(message_id = %m.id, error = %e, "could not dead-letter the message");
        }
        Handled::DeadLettered { reason }
    }

    /// retry_delay × 2^(receives − 1), capped, ±20 % jitter so that copies do not return together.
    pub fn retry_delay(&self, receive_count: u32) -> Duration {
        let exp = receive_count.saturating_sub(1).min(20);
        let base = self
            .settings
            .retry_delay
            .saturating_mul(1 << exp)
            .min(self.settings.retry_max_delay);
        base.mul_f64(rand::random_range(0.8..1.2))
    }

    fn touch_health(&self) {
        if let Some(path) = &self.settings.health_file {
            let tmp = path.with_extension("tmp");
            let ok = std::fs::write(&tmp, SystemClock.now_ms().to_string())
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = ok {
                warn!(path = %path.display(), error = %e, "could not write the health file");
            }
        }
    }

    /// The loop: receive as many messages as there are free slots, process each in its own
    /// task, until shutdown; then give running rotations the grace period.
    pub async fn run(self) {
        let shutdown = self.rotator.shutdown.clone();
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let in_flight: Arc<Mutex<HashMap<String, Message>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let mut receive_errors = 0u32;
        // Receive in batches once half a batch of slots is free, not one message per freed slot:
        // SQS bills every receive (and moto scans the whole queue for each one).
        let refill_at = self.settings.concurrency.clamp(1, 10).div_ceil(2);
        info!(concurrency = self.settings.concurrency, "worker started");
        while !shutdown.is_triggered() {
            self.touch_health();
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits().min(10);
            if free == 0 || (free < refill_at && !tasks.is_empty()) {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    _ = shutdown.wait() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            let batch = tokio::select! {
                r = self.queue.receive(free, self.settings.receive_wait, self.settings.visibility) => r,
                _ = shutdown.wait() => break,
            };
            let batch = match batch {
                Ok(b) => {
                    receive_errors = 0;
                    b
                }
                Err(e) => {
                    receive_errors += 1;
                    let pause = Duration::from_secs(u64::from(receive_errors.min(5)) * 2);
                    warn!(error = %e, retry_in = ?pause, "receive failed");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.wait() => {}
                    }
                    continue;
                }
            };
            for m in batch {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                in_flight.lock().unwrap().insert(m.id.clone(), m.clone());
                let (worker, in_flight) = (self.clone(), in_flight.clone());
                tasks.spawn(async move {
                    let handled = worker.process(&m).await;
                    in_flight.lock().unwrap().remove(&m.id);
                    drop(permit);
                    handled
                });
            }
        }
        let running = tasks.len();
        info!(running, grace = ?self.settings.shutdown_grace, "shutting down: no new messages; waiting for running rotations");
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let left: Vec<Message> = in_flight.lock().unwrap().values().cloned().collect();
            warn!(
                count = left.len(),
                "grace period over; leaving unfinished messages for redelivery"
            );
            for m in left {
                let _ = self.queue.hide_for(&m, Duration::ZERO).await;
            }
            tasks.abort_all();
        }
        info!("worker stopped");
    }
}

/// For `rds-rotator health`: is the loop's heartbeat younger than `max_age`?
pub fn check_health(path: &std::path::Path, max_age: Duration) -> Result<Duration, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("no worker heartbeat at {}: {e}", path.display()))?;
    let at: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("the heartbeat file {} is unreadable", path.display()))?;
    let age = Duration::from_millis(SystemClock.now_ms().saturating_sub(at));
    if age > max_age {
        return Err(format!(
            "the worker loop last ran {} ago (limit {})",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age)
        ));
    }
    Ok(age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::fakes::World;
    use crate::rotation::{RetryPolicy, Settings, Shutdown};
    use serde_json::json;
    use std::collections::VecDeque;

    #[derive(Default)]
    struct FakeQueue {
        max_receives: Option<u32>,
        waiting: Mutex<VecDeque<Message>>,
        deleted: Mutex<Vec<String>>,
        hidden: Mutex<Vec<(String, Duration)>>,
        dead: Mutex<Vec<(String, String)>>,
        sent: Mutex<Vec<String>>,
        sent_deferrals: Mutex<Vec<u32>>,
    }

    #[async_trait]
    impl Queue for FakeQueue {
        async fn receive(
            &self,
            max: usize,
            wait: Duration,
            _: Duration,
        ) -> Result<Vec<Message>, QueueError> {
            let batch: Vec<Message> = {
                let mut q = self.waiting.lock().unwrap();
                let n = max.min(q.len());
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::time::sleep(wait).await; // a long poll that found nothing
            }
            Ok(batch)
        }
        async fn delete(&self, m: &Message) -> Result<(), QueueError> {
            self.deleted.lock().unwrap().push(m.id.clone());
            Ok(())
        }
        async fn hide_for(&self, m: &Message, delay: Duration) -> Result<(), QueueError> {
            self.hidden.lock().unwrap().push((m.id.clone(), delay));
            // Redelivered (at once: the fake has no clock), as SQS would after the delay.
            let again = Message {
                receive_count: m.receive_count + 1,
                ..m.clone()
            };
            self.waiting.lock().unwrap().push_back(again);
            Ok(())
        }
        async fn send(
            &self,
            body: &str,
            _delay: Duration,
            deferrals: u32,
        ) -> Result<String, QueueError> {
            self.sent_deferrals.lock().unwrap().push(deferrals);
            let mut sent = self.sent.lock().unwrap();
            sent.push(body.to_owned());
            Ok(format!("sent-{}", sent.len()))
        }
        fn max_receives(&self) -> Option<u32> {
            self.max_receives
        }
        async fn dead_letter(&self, m: &Message, reason: &str) -> Result<(), QueueError> {
            self.dead
                .lock()
                .unwrap()
                .push((m.id.clone(), reason.to_owned()));
            Ok(())
        }
    }

    #[async_trait]
    impl SecretDirectory for World {
        async fn with_tag(&self, key: &str, value: &str) -> Result<Vec<String>, SecretStoreError> {
            Ok(if (key, value) == ("team", "payments") {
                vec!["arn:fake:app".into(), "arn:fake:other".into()]
            } else {
                vec![]
            })
        }
    }

    fn worker(w: &World, q: &Arc<FakeQueue>) -> Worker {
        Worker {
            queue: q.clone(),
            directory: Arc::new(w.clone()),
            rotator: Rotator {
                secrets: Arc::new(w.clone()),
                records: Arc::new(w.clone()),
                db: Arc::new(w.clone()),
                rds: Arc::new(crate::rotation::ports::NoRds),
                reporter: Arc::new(w.clone()),
                settings: Settings {
                    test_deadline: Duration::from_millis(200),
                    retry: RetryPolicy {
                        min_delay: Duration::from_millis(1),
                        max_delay: Duration::from_millis(5),
                        max_attempts: 1,
                        probe_max_delay: Duration::from_millis(20),
                        aws_max_attempts: 1,
                        aws_initial_backoff: Duration::from_millis(1),
                        ..RetryPolicy::default()
                    },
                    ..Settings::default()
                },
                owner: "w".into(),
                shutdown: Shutdown::default(),
                clock: crate::rotation::SystemClock::shared(),
            },
            settings: WorkerSettings::default(),
        }
    }

    fn msg(id: &str, body: serde_json::Value, receive_count: u32) -> Message {
        Message {
            id: id.into(),
            receipt: format!("r-{id}"),
            body: body.to_string(),
            receive_count,
            deferrals: 0,
        }
    }

    fn world() -> World {
        let w = World::default();
        w.add_secret(
            "app",
            json!({"host": "db", "username": "solo", "password": "solo-0"}),
        );
        w.state().db.insert("solo".into(), "solo-0".into());
        w
    }

    #[tokio::test]
    async fn a_successful_rotation_deletes_the_message_and_a_copy_is_skipped() {
        let (w, q) = (world(), Arc::new(FakeQueue::default()));
        let wk = worker(&w, &q);
        assert!(matches!(
            wk.process(&msg("m1", json!({"secret_id": "app"}), 1)).await,
            Handled::Rotated { .. }
        ));
        let copy = wk.process(&msg("m2", json!({"secret_id": "app"}), 1)).await;
        assert!(
            matches!(copy, Handled::Skipped { ref why } if why.contains("minimum interval")),
            "{copy:?}"
        );
        assert_eq!(*q.deleted.lock().unwrap(), ["m1", "m2"]);
        assert!(q.dead.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_malformed_message_goes_to_the_dead_letter_queue_with_its_reason() {
        let (w, q) = (world(), Arc::new(FakeQueue::default()));
        let handled = worker(&w, &q)
            .process(&msg("bad", json!({"secretId": "app"}), 1))
            .await;
        assert!(matches!(handled, Handled::DeadLettered { .. }));
        let dead = q.dead.lock().unwrap();
        assert_eq!(dead[0].0, "bad");
        assert!(
            dead[0].1.contains("unknown field `secretId`"),
            "{}",
            dead[0].1
        );
    }

    #[tokio::test]
    async fn an_unknown_secret_is_fatal_at_once() {
        let (w, q) = (world(), Arc::new(FakeQueue::default()));
        let handled = worker(&w, &q)
            .process(&msg("m", json!({"secret_id": "nope"}), 1))
            .await;
        assert!(
            matches!(handled, Handled::DeadLettered { ref reason } if reason.contains("does not exist")),
            "{handled:?}"
        );
    }

    #[tokio::test]
    async fn a_transient_failure_brings_the_message_back_later_each_time() {
        let (w, q) = (world(), Arc::new(FakeQueue::default()));
        let wk = worker(&w, &q);
        w.state().dead = true; // every call fails as unavailable
        let first = wk.process(&msg("m", json!({"secret_id": "app"}), 1)).await;
        let third = wk.process(&msg("m", json!({"secret_id": "app"}), 3)).await;
        let within = |d: Duration, secs: f64| (secs * 0.8..=secs * 1.2).contains(&d.as_secs_f64());
        assert!(
            matches!(first, Handled::Retried { delay, .. } if within(delay, 10.0)),
            "{first:?}"
        );
        assert!(
            matches!(third, Handled::Retried { delay, .. } if within(delay, 40.0)),
            "{third:?}"
        );
        assert!(within(wk.retry_delay(30), 900.0));
        assert!(q.deleted.lock().unwrap().is_empty() && q.dead.lock().unwrap().is_empty());
    }

    #[test]
    fn waits_are_sent_again_failures_retried_until_the_queues_last_receive_and_fatal_errors_dead_lettered(
    ) {
        use Disposition::*;
        let wait = RotationError::Busy {
            secret: "s".into(),
            owner: "o".into(),
        };
        let transient = RotationError::LeaseLost("s".into());
        let fatal = RotationError::TooSoon {
            secret: "s".into(),
            why: "w".into(),
        };
        let cases = [
            // (error, receive count, queue's limit, deferrals so far, limit of deferrals)
            (&wait, 1, Some(3), 0, 5, Defer),
            (&wait, 3, Some(3), 4, 5, Defer),
            (&wait, 1, Some(3), 5, 5, DeadLetter),
            (&transient, 1, Some(3), 0, 5, Retry),
            (&transient, 2, None, 0, 5, Retry),
            (&transient, 99, None, 0, 5, Retry),
            (&transient, 3, Some(3), 0, 5, DeadLetter),
            (&fatal, 1, Some(3), 0, 5, DeadLetter),
        ];
        for (e, receives, max, deferrals, limit, want) in cases {
            assert_eq!(
                disposition(e, receives, max, deferrals, limit),
                want,
                "{e} at receive {receives}/{max:?}, deferral {deferrals}/{limit}"
            );
        }
    }

    /// Two users; the idle one (bob) has a session that ran a statement just now.
    fn world_in_use() -> World {
        let w = World::default();
        w.add_secret(
            "app",
            json!({"host": "db", "username": "alice", "password": "alice-0",
                   "rotation_usernames": ["alice", "bob"],
                   "proxy_secret_ids": ["proxy-alice", "proxy-bob"]}),
        );
        w.add_secret(
            "proxy-alice",
            json!({"username": "alice", "password": "alice-0"}),
        );
        w.add_secret("proxy-bob", json!({"username": "bob", "password": "bob-0"}));
        let mut s = w.state();
        s.db.insert("alice".into(), "alice-0".into());
        s.db.insert("bob".into(), "bob-0".into());
        s.sessions.insert(
            "bob".into(),
            vec![crate::rotation::ports::SessionGroup {
                client: "10.0.1.5".into(),
                application: "orders-api".into(),
                sessions: 1,
            }],
        );
        drop(s);
        w
    }

    #[tokio::test]
    async fn a_rotation_that_waits_for_the_in_use_guard_is_sent_again_with_its_request_id_never_dead_lettered(
    ) {
        let w = world_in_use();
        let q = Arc::new(FakeQueue {
            max_receives: Some(2),
            ..FakeQueue::default()
        });
        let wk = worker(&w, &q);
        // Delivered for the queue's last time: a wait still does not go to the DLQ.
        let handled = wk
            .process(&msg(
                "m",
                json!({"secret_id": "app", "reason": "monthly"}),
                2,
            ))
            .await;
        assert!(
            matches!(handled, Handled::Deferred { ref error, .. } if error.contains("bob")),
            "{handled:?}"
        );
        assert!(q.dead.lock().unwrap().is_empty());
        assert_eq!(*q.deleted.lock().unwrap(), ["m"], "the original is deleted");
        let again: RotateMessage = serde_json::from_str(&q.sent.lock().unwrap()[0]).unwrap();
        assert_eq!(
            again,
            RotateMessage {
                secret_id: "app".into(),
                force: false,
                ignore_in_use: false,
                reason: Some("monthly".into()),
                request_id: Some("m".into()),
            }
        );
        assert_eq!(*q.sent_deferrals.lock().unwrap(), [1]);
        // Once the session has ended, the request sent again resumes the rotation it began.
        w.state().sessions.clear();
        let body = q.sent.lock().unwrap()[0].clone();
        let handled = wk
            .process(&Message {
                id: "m-again".into(),
                receipt: "r".into(),
                body,
                receive_count: 1,
                deferrals: 1,
            })
            .await;
        assert!(matches!(handled, Handled::Rotated { .. }), "{handled:?}");
        assert_eq!(w.state().password_changes, ["bob"]);
        // A wait that outlasts the limit of deferrals goes to the DLQ, with the reason.
        let w = world_in_use();
        let q = Arc::new(FakeQueue::default());
        let mut wk = worker(&w, &q);
        wk.settings.max_deferrals = 3;
        let handled = wk
            .process(&Message {
                deferrals: 3,
                ..msg("late", json!({"secret_id": "app"}), 1)
            })
            .await;
        assert!(
            matches!(handled, Handled::DeadLettered { .. }),
            "{handled:?}"
        );
        let dead = q.dead.lock().unwrap();
        assert!(
            dead[0].1.contains("still waiting after 3 deferrals") && dead[0].1.contains("bob"),
            "{}",
            dead[0].1
        );
    }

    #[tokio::test]
    async fn a_tag_fan_out_enqueues_one_request_per_secret_with_derived_ids() {
        let (w, q) = (world(), Arc::new(FakeQueue::default()));
        let handled = worker(&w, &q)
            .process(&msg(
                "fan",
                json!({"select": {"tag_key": "team", "tag_value": "payments"}}),
                1,
            ))
            .await;
        assert_eq!(handled, Handled::FannedOut { count: 2 });
        let sent: Vec<RotateMessage> = q
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(sent[0].secret_id, "arn:fake:app");
        assert_eq!(sent[1].request_id.as_deref(), Some("fan/arn:fake:other"));
        assert_eq!(*q.deleted.lock().unwrap(), ["fan"]);
    }

    #[tokio::test]
    async fn the_loop_drains_the_queue_and_stops_on_shutdown() {
        let (w, q) = (world(), Arc::new(FakeQueue::default()));
        q.waiting
            .lock()
            .unwrap()
            .extend((0..5).map(|i| msg(&format!("m{i}"), json!({"secret_id": "app"}), 1)));
        let mut wk = worker(&w, &q);
        wk.settings.receive_wait = Duration::from_millis(10);
        let shutdown = wk.rotator.shutdown.clone();
        let run = tokio::spawn(wk.run());
        for _ in 0..200 {
            if q.deleted.lock().unwrap().len() == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the loop stops")
            .unwrap();
        assert_eq!(q.deleted.lock().unwrap().len(), 5);
        assert_eq!(
            w.state().password_changes.len(),
            1,
            "five copies rotate once"
        );
    }

    #[test]
    fn health_is_judged_by_the_age_of_the_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("health");
        assert!(check_health(&path, Duration::from_secs(60))
            .unwrap_err()
            .contains("no worker heartbeat"));
        std::fs::write(&path, SystemClock.now_ms().to_string()).unwrap();
        assert!(check_health(&path, Duration::from_secs(60)).is_ok());
        std::fs::write(&path, (SystemClock.now_ms() - 120_000).to_string()).unwrap();
        assert!(check_health(&path, Duration::from_secs(60))
            .unwrap_err()
            .contains("last ran"));
    }
}
