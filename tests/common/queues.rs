//! A queue and its dead-letter queue, and the worker that drains them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{aws, suffix, Harness, Pair};

/// A queue and its dead-letter queue, made by `rds-rotator setup --queue-name`.
pub struct Queues {
    pub url: String,
    pub dlq_url: String,
    pub sqs: aws_sdk_sqs::Client,
}

impl Queues {
    pub async fn depth(&self, url: &str) -> usize {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().unwrap();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
            A::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .map(|a| {
            attrs
                .get(a)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum()
    }

    pub async fn send(&self, body: &str) -> String {
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .unwrap()
            .message_id
            .unwrap()
    }

    pub async fn arn(&self) -> String {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(A::QueueArn)
            .send()
            .await
            .unwrap();
        out.attributes().unwrap()[&A::QueueArn].clone()
    }

    /// (body, rotator_reason) of every message in the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        out.messages()
            .iter()
            .map(|m| {
                let reason = m
                    .message_attributes()
                    .and_then(|a| a.get("rotator_reason"))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned();
                (m.body().unwrap_or_default().to_owned(), reason)
            })
            .collect()
    }
}

impl Pair {
    pub async fn queues(&self) -> Queues {
        self.queues_with_max_receives(20).await
    }

    /// A queue whose redrive policy moves a message to the DLQ after `max` receives.
    pub async fn queues_with_max_receives(&self, max: u32) -> Queues {
        let out = self.run(&[
            "setup",
            "--queue-name",
            &format!("rt-{}-q", self.id),
            "--max-receive-count",
            &max.to_string(),
        ]);
        assert!(
            out.status.success(),
            "setup --queue-name failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("setup --queue-name prints JSON");
        assert_eq!(v["table"], self.table.as_str());
        Queues {
            url: v["queue_url"].as_str().unwrap().to_owned(),
            dlq_url: v["dlq_url"].as_str().unwrap().to_owned(),
            sqs: aws_sdk_sqs::Client::new(&aws().await),
        }
    }

    /// A worker in this process over the real adapters, drained by calling its step.
    pub async fn worker(&self, queues: &Queues) -> rds_rotator::worker::Worker {
        use rds_rotator::aws::{secrets::SecretsManager, sqs::SqsQueue};
        use rds_rotator::rotation::Settings;
        use rds_rotator::worker::{Worker, WorkerSettings};
        use std::sync::Arc;
        let aws = aws().await;
        Worker {
            queue: Arc::new(
                SqsQueue::connect(&aws, &queues.url, None)
                    .await
                    .expect("the DLQ is found"),
            ),
            directory: Arc::new(SecretsManager::new(&aws)),
            rotator: self
                .rotator(Settings {
                    test_deadline: Duration::from_secs(20),
                    ..Settings::default()
                })
                .await,
            settings: WorkerSettings {
                receive_wait: Duration::from_secs(5),
                retry_delay: Duration::from_secs(1),
                ..WorkerSettings::default()
            },
        }
    }

    /// `rds-rotator worker` as a separate process, its stderr drained into the returned buffer.
    pub fn spawn_worker(
        &self,
        queues: &Queues,
        env: &[(&str, &str)],
    ) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
        let health = std::env::temp_dir().join(format!("rt-health-{}", suffix()));
        let mut cmd = self.command(&["worker"]);
        cmd.env("ROTATOR_QUEUE_URL", &queues.url)
            .env("ROTATOR_RECEIVE_WAIT", "1s")
            .env("ROTATOR_RETRY_DELAY", "1s")
            .env("ROTATOR_HEALTH_FILE", &health)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the worker starts");
        // stderr (logs) and stdout (metrics) in one buffer, line by line.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        (child, log)
    }
}
