//! The shared RabbitMQ as tests use it: `AMQP_URL` (default the local broker), a prefix
//! of their own per test, the topology declared as the worker declares it, a bus to
//! publish jobs and collect results, and a guard that deletes everything of the prefix
//! when dropped (also when the test fails).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dtrust_worker::transport::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use dtrust_worker::transport::lapin::types::{AMQPValue, FieldTable, ShortString};
use dtrust_worker::transport::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use dtrust_worker::transport::{Names, Topology};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker's address on 127.0.0.1 (for tests that put a TCP proxy in front of it).
pub async fn broker_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&amqp_url()).expect("AMQP_URL parses");
    let port = url.port().unwrap_or(5672);
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve the broker");
    let local = addrs.find(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST);
    local.expect("this test needs the broker on 127.0.0.1 (AMQP_URL)")
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t-{test}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Deletes every queue and exchange of a prefix (and the lease queues are exclusive,
/// so they go with their connections) when dropped, over a fresh connection.
pub struct Cleanup {
    names: Names,
    extra_queues: std::sync::Mutex<Vec<String>>,
}

impl Cleanup {
    pub fn new(prefix: &str) -> Cleanup {
        Cleanup {
            names: Names::new(prefix),
            extra_queues: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Deletes this queue too.
    pub fn queue(&self, name: &str) {
        self.extra_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut queues: Vec<String> = self.names.queues().iter().map(|s| s.to_string()).collect();
        queues.append(&mut self.extra_queues.lock().unwrap_or_else(|e| e.into_inner()));
        let exchanges: Vec<String> = self
            .names
            .exchanges()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let url = amqp_url();
        let done = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(connection) =
                    Connection::connect(&url, ConnectionProperties::default()).await
                else {
                    eprintln!("cleanup: no connection to the broker");
                    return;
                };
                let mut channel = connection.create_channel().await.ok();
                for queue in &queues {
                    if !channel.as_ref().is_some_and(|c| c.status().connected()) {
                        channel = connection.create_channel().await.ok();
                    }
                    if let Some(channel) = &channel {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for exchange in &exchanges {
                    if !channel.as_ref().is_some_and(|c| c.status().connected()) {
                        channel = connection.create_channel().await.ok();
                    }
                    if let Some(channel) = &channel {
                        let _ = channel
                            .exchange_delete(exchange.as_str().into(), Default::default())
                            .await;
                    }
                }
                let _ = connection.close(200, "cleanup".into()).await;
            });
        });
        let _ = done.join();
    }
}

/// A message the bus received: its body as JSON and its properties.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub routing_key: String,
    pub correlation_id: Option<String>,
    pub headers: BTreeMap<String, String>,
}

/// The test's side of the broker: publishes jobs, and collects every result from
/// `{p}.results` (and any other queue it is told to watch).
pub struct JobBus {
    pub names: Names,
    connection: Connection,
    channel: Channel,
    results: mpsc::UnboundedReceiver<Received>,
    watched: BTreeMap<String, mpsc::UnboundedReceiver<Received>>,
    /// Every result received so far, by arrival.
    pub all: Vec<Received>,
    pub cleanup: Cleanup,
}

impl JobBus {
    /// Connects, declares the worker's topology for `prefix`, and starts collecting
    /// results.
    pub async fn start(prefix: &str) -> JobBus {
        let names = Names::new(prefix);
        let cleanup = Cleanup::new(prefix);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("the test connects to the broker (is RabbitMQ running? see AMQP_URL)");
        Topology::new(names.clone(), 5)
            .declare(&connection)
            .await
            .expect("declare topology");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let capture = format!("{prefix}.test-results");
        cleanup.queue(&capture);
        let results = watch_queue(&connection, &capture, Some((&names.results, "result.#"))).await;
        JobBus {
            names,
            connection,
            channel,
            results,
            watched: BTreeMap::new(),
            all: Vec::new(),
            cleanup,
        }
    }

    /// Also collects what arrives in queue `name` (declared here, deleted at the end),
    /// e.g. a `reply_to` queue or `{p}.dead`.
    pub async fn watch(&mut self, name: &str) {
        if name != self.names.dead_queue {
            self.cleanup.queue(name);
        }
        let rx = watch_queue(&self.connection, name, None).await;
        self.watched.insert(name.to_string(), rx);
    }

    /// Publishes a job to `{p}.jobs` with its kind as routing key (or `key`), confirmed.
    pub async fn publish_job(&self, job: &Value) {
        let key = job
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("issue")
            .to_string();
        self.publish_raw(
            &key,
            serde_json::to_vec(job).expect("json"),
            job.get("job_id").and_then(Value::as_str),
            None,
        )
        .await;
    }

    /// Publishes raw bytes to `{p}.jobs` with routing key `key`, confirmed.
    pub async fn publish_raw(
        &self,
        key: &str,
        body: Vec<u8>,
        message_id: Option<&str>,
        reply_to: Option<&str>,
    ) {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(reply_to) = reply_to {
            properties = properties
                .with_reply_to(reply_to.into())
                .with_correlation_id("corr-".to_string().into());
        }
        let confirm = self
            .channel
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
            .expect("publish");
        let confirmation = confirm.await.expect("confirm");
        assert!(confirmation.is_ack(), "job not confirmed");
    }

    /// Waits until results for `count` distinct job ids have arrived (or `timeout`);
    /// returns the latest result per job id.
    pub async fn results_for(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> BTreeMap<String, Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let by_id = self.by_job_id();
            if by_id.len() >= count {
                return by_id;
            }
            match tokio::time::timeout_at(deadline, self.results.recv()).await {
                Ok(Some(received)) => self.all.push(received),
                _ => return self.by_job_id(),
            }
        }
    }

    /// Results collected so far, the latest per job id.
    pub fn by_job_id(&self) -> BTreeMap<String, Value> {
        self.all
            .iter()
            .filter_map(|r| Some((r.body.get("job_id")?.as_str()?.to_string(), r.body.clone())))
            .collect()
    }

    /// Takes what arrived so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(received) = self.results.try_recv() {
            self.all.push(received);
        }
    }

    /// The next message of a watched queue, within `timeout`.
    pub async fn next_from(&mut self, queue: &str, timeout: Duration) -> Option<Received> {
        let rx = self.watched.get_mut(queue)?;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn watch_queue(
    connection: &Connection,
    queue: &str,
    bind: Option<(&str, &str)>,
) -> mpsc::UnboundedReceiver<Received> {
    let channel = connection.create_channel().await.expect("channel");
    let dead_letters = queue.ends_with(".dead");
    if !dead_letters {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare watched queue");
    }
    if let Some((exchange, key)) = bind {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind watched queue");
    }
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "test-bus".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume watched queue");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .inner()
                        .iter()
                        .filter_map(|(k, v)| match v {
                            AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
                            AMQPValue::ShortString(s) => Some((k.to_string(), s.to_string())),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let received = Received {
                body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                routing_key: delivery.routing_key.to_string(),
                correlation_id: delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(ShortString::to_string),
                headers,
            };
            if tx.send(received).is_err() {
                break;
            }
        }
    });
    rx
}

/// A result without its secret fields and warnings, for comparing repeats of one job
/// that may differ only in what the secrets' grace period removed.
pub fn without_secrets(result: &Value) -> Value {
    let mut result = result.clone();
    if let Some(fields) = result.as_object_mut() {
        for key in [
            "revocation_password",
            "pkcs12_base64",
            "pkcs12_password",
            "warnings",
        ] {
            fields.remove(key);
        }
    }
    result
}
