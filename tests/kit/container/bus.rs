//! The test's side of a broker that restarts, dies, freezes or loses a node: the
//! worker's topology, jobs published with confirms, and every result kept in a durable
//! quorum queue of the test's own (`{p}.test-results`, bound to `{p}.results` with
//! `result.#`) and collected over a connection that comes back by itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtrust_worker::transport::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use dtrust_worker::transport::lapin::types::{AMQPValue, FieldTable};
use dtrust_worker::transport::lapin::{BasicProperties, Connection, ConnectionProperties};
use dtrust_worker::transport::{Names, Topology};
use serde_json::Value;
use tokio::task::JoinHandle;

/// Jobs in, results out, across broker failures.
pub struct DurableBus {
    /// The prefix's names.
    pub names: Names,
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    collector: JoinHandle<()>,
}

impl DurableBus {
    /// Declares the worker's topology and the capture queue over `declare_url`, then
    /// collects results over `url` (the same broker, or another node of its cluster).
    pub async fn start(url: &str, declare_url: &str, prefix: &str) -> DurableBus {
        let names = Names::new(prefix);
        let capture = format!("{prefix}.test-results");
        let connection = connect(declare_url).await;
        Topology::new(names.clone(), 5)
            .declare(&connection)
            .await
            .expect("declare the worker's topology");
        let channel = connection.create_channel().await.expect("channel");
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(
                capture.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .expect("declare the capture queue");
        channel
            .queue_bind(
                capture.as_str().into(),
                names.results.as_str().into(),
                "result.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the capture queue");
        let _ = connection.close(200, "declared".into()).await;

        let received = Arc::new(Mutex::new(Vec::new()));
        let collector = tokio::spawn(collect(url.to_string(), capture, received.clone()));
        DurableBus {
            names,
            url: url.to_string(),
            received,
            collector,
        }
    }

    /// Publishes `jobs` to `{p}.jobs` (routing key: the job's kind), each confirmed.
    pub async fn publish_jobs(&self, jobs: &[Value]) {
        let connection = connect(&self.url).await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let mut pending = Vec::new();
        for job in jobs {
            let key = job["kind"].as_str().unwrap_or("issue");
            let body = serde_json::to_vec(job).expect("json");
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(job["job_id"].as_str().unwrap_or("").into());
            let confirm = channel
                .basic_publish(
                    self.names.jobs.as_str().into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties,
                )
                .await
                .expect("publish a job");
            pending.push(confirm);
            // A window of confirms at a time, as a bulk producer would.
            if pending.len() >= 100 {
                for confirm in pending.drain(..) {
                    assert!(
                        confirm.await.expect("confirm").is_ack(),
                        "job not confirmed"
                    );
                }
            }
        }
        for confirm in pending {
            assert!(
                confirm.await.expect("confirm").is_ack(),
                "job not confirmed"
            );
        }
        let _ = connection.close(200, "published".into()).await;
    }

    /// Every result received so far, in arrival order (repeats included).
    pub fn all(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Results so far by job id, every copy in arrival order.
    pub fn by_job(&self) -> BTreeMap<String, Vec<Value>> {
        let mut by_job: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for result in self.all() {
            if let Some(id) = result["job_id"].as_str() {
                by_job.entry(id.to_string()).or_default().push(result);
            }
        }
        by_job
    }

    /// How many distinct jobs have a result.
    pub fn done(&self) -> usize {
        self.by_job().len()
    }

    /// Waits until `count` distinct jobs have a result, or `timeout`; returns how many
    /// have one.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = self.done();
            if done >= count || tokio::time::Instant::now() >= deadline {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DurableBus {
    fn drop(&mut self) {
        self.collector.abort();
    }
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("the test connects to {url}: {e}"))
}

/// Takes every message of `queue` (`basic.get`, acknowledged), reconnecting whenever
/// the connection is lost or an operation hangs, until aborted. Polling rather than a
/// consumer: a consumer registered while a restarted node is still recovering its
/// queues may never be served, and a hung one would never be noticed.
async fn collect(url: String, queue: String, received: Arc<Mutex<Vec<Value>>>) {
    // Heartbeats, so that a frozen broker shows as a dead connection.
    let url = format!("{url}?heartbeat=5");
    loop {
        let _ = drain(&url, &queue, &received).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn drain(url: &str, queue: &str, received: &Mutex<Vec<Value>>) -> Result<(), String> {
    const OP: Duration = Duration::from_secs(10);
    let connection = tokio::time::timeout(
        OP,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let channel = tokio::time::timeout(OP, connection.create_channel())
        .await
        .map_err(|_| "channel timed out".to_string())?
        .map_err(|e| e.to_string())?;
    loop {
        let got = tokio::time::timeout(
            OP,
            channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .map_err(|_| "basic.get timed out".to_string())?
        .map_err(|e| e.to_string())?;
        match got {
            Some(message) => {
                let body = serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(body);
                // A lost ack only repeats the result, which the tests accept when
                // identical.
                tokio::time::timeout(OP, message.delivery.acker.ack(BasicAckOptions::default()))
                    .await
                    .map_err(|_| "ack timed out".to_string())?
                    .map_err(|e| e.to_string())?;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
