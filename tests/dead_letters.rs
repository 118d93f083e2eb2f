//! `dtrust-worker dead list` and `dtrust-worker dead replay` against the real RabbitMQ
//! at `AMQP_URL`, run as operators run them (the real binary).
//!
//! Each test declares the worker's topology for a prefix of its own (deleted at the end,
//! also when it fails) and puts dead letters into `{p}.dead` the two ways they get
//! there: as the worker parks invalid messages (published to the `{p}.dead` exchange
//! with `x-dtrust-error` and `x-dtrust-queue`), and by RabbitMQ itself when a job is
//! returned to `{p}.issue` more often than its `x-delivery-limit` (5). The assertions
//! are on what the queues hold afterwards, read back message by message.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use dtrust_testkit::broker::{amqp_url, unique_prefix, JobBus};
use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::process::{run_worker, text, WorkerProcess};
use dtrust_testkit::sim::{Sim, SimConfig};
use dtrust_worker::transport::lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use dtrust_worker::transport::lapin::types::{AMQPValue, FieldTable, LongString};
use dtrust_worker::transport::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use dtrust_worker::transport::{Names, ERROR_HEADER};
use serde_json::{json, Value};

/// Bound of every wait for something that should happen soon.
const WAIT: Duration = Duration::from_secs(30);
/// The revocation password of a dead job: it must never be printed.
const SECRET: &str = "Do-not-show-7731";
/// The body that is not JSON.
const GARBAGE: &[u8] = b"\x00\x01 not json at all";

/// A test's broker: the topology (via the job bus, which also cleans up) and a
/// confirming channel of the test's own.
struct Broker {
    bus: JobBus,
    connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn start(test: &str) -> Broker {
        Broker::on(JobBus::start(&unique_prefix(test)).await).await
    }

    /// The test's channel beside `bus` (which declared the topology).
    async fn on(bus: JobBus) -> Broker {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        Broker {
            bus,
            connection,
            channel,
        }
    }

    fn names(&self) -> &Names {
        &self.bus.names
    }

    /// Publishes confirmed and routed to `exchange`.
    async fn publish(&self, exchange: &str, key: &str, body: &[u8], properties: BasicProperties) {
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirmation.is_ack(), "not confirmed");
        assert!(
            confirmation.take_message().is_none(),
            "returned: nothing bound"
        );
    }

    /// Parks a message in `{p}.dead` as the worker does (`reject_invalid`).
    async fn park_like_the_worker(
        &self,
        body: &[u8],
        reason: &str,
        queue: Option<&str>,
        message_id: Option<&str>,
        correlation_id: Option<&str>,
    ) {
        let mut headers = FieldTable::default();
        headers.insert(ERROR_HEADER.into(), long(reason));
        if let Some(queue) = queue {
            headers.insert("x-dtrust-queue".into(), long(queue));
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.into());
        }
        let dead = self.names().dead_exchange.clone();
        self.publish(&dead, "", body, properties).await;
    }

    /// Publishes a job to `{p}.jobs` and returns it to `{p}.issue` (reject with
    /// requeue) until RabbitMQ dead-letters it for its delivery limit.
    async fn dead_by_delivery_limit(&self, job: &Value, properties: BasicProperties) {
        self.dead_by_rejects(job, properties, true).await;
    }

    /// Publishes a job to `{p}.jobs` and rejects it from `{p}.issue`: with `requeue`
    /// until the delivery limit is reached, else once without requeue (which a quorum
    /// queue with `x-dead-letter-exchange` dead-letters as `rejected`).
    async fn dead_by_rejects(&self, job: &Value, properties: BasicProperties, requeue: bool) {
        let before = self.count(&self.names().dead_queue).await;
        let jobs = self.names().jobs.clone();
        self.publish(
            &jobs,
            "issue",
            &serde_json::to_vec(job).unwrap(),
            properties,
        )
        .await;
        let issue = self.names().issue.clone();
        let mut returns = 0;
        while let Some(got) = self
            .channel
            .basic_get(issue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic_get")
        {
            got.delivery
                .acker
                .reject(BasicRejectOptions { requeue })
                .await
                .expect("reject");
            returns += 1;
            assert!(returns < 50, "RabbitMQ never dead-lettered the job");
        }
        let dead = self.names().dead_queue.clone();
        self.wait_for_count(&dead, before + 1).await;
    }

    /// Ready messages in `queue` (passive declaration, on a channel of its own).
    /// The queue's ready messages once they reach `want` (or after 10 s, whatever they
    /// are then): messages a reader took and gave back are unacked, not ready, until
    /// the broker has requeued them.
    async fn count_settled(&self, queue: &str, want: u32) -> u32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let count = self.count(queue).await;
            if count == want || std::time::Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn count(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        let _ = channel.close(200, "done".into()).await;
        declared.message_count()
    }

    async fn wait_for_count(&self, queue: &str, expected: u32) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let count = self.count(queue).await;
            if count == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {count}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes (and removes) everything in `queue`.
    async fn drain(&self, queue: &str) -> Vec<Taken> {
        let mut taken = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            let d = got.delivery;
            taken.push(Taken {
                body: d.data,
                routing_key: d.routing_key.to_string(),
                properties: d.properties,
            });
        }
        taken
    }

    /// Runs `dtrust-worker dead ARGS --amqp-url URL --prefix P`.
    async fn dead(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = ["dead"].iter().chain(args).map(|s| s.to_string()).collect();
        all.extend([
            "--amqp-url".into(),
            amqp_url(),
            "--prefix".into(),
            self.names().prefix.clone(),
        ]);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            run_worker(&args, &[])
        })
        .await
        .expect("run the binary")
    }
}

/// A message read back from a queue.
#[derive(Debug)]
struct Taken {
    body: Vec<u8>,
    routing_key: String,
    properties: BasicProperties,
}

impl Taken {
    fn job_id(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("job_id")?
            .as_str()
            .map(str::to_string)
    }

    fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|s| s.as_str())
    }

    fn correlation_id(&self) -> Option<&str> {
        self.properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str())
    }

    fn reply_to(&self) -> Option<&str> {
        self.properties.reply_to().as_ref().map(|s| s.as_str())
    }

    fn header_names(&self) -> Vec<String> {
        self.properties
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()
    }
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes()))
}

fn issue_job(job_id: &str) -> Value {
    json!({"job_id": job_id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
        "subject": {"cn": "www.example.com", "c": "DE"}})
}

/// The dead letters every test starts from, by job id (`None`: the body is not JSON).
///
/// | job | how it died | route back |
/// |---|---|---|
/// | `dl-secret` | the worker: schema-invalid issue job with a `revocation_password` | `issue` (x-dtrust-queue) |
/// | (not JSON) | the worker: not JSON | `issue` (x-dtrust-queue) |
/// | `dl-revoke` | the worker: schema-invalid revoke job | `revoke` (x-dtrust-queue) |
/// | `dl-limit` | RabbitMQ: over the delivery limit of `{p}.issue` | `issue` (x-first-death-queue) |
/// | `dl-result` | the worker: an unroutable result | none: a result is no job |
async fn seed(broker: &Broker) -> BTreeMap<String, Vec<u8>> {
    let n = broker.names().clone();
    let mut bodies = BTreeMap::new();

    let mut secret = issue_job("dl-secret");
    secret["csr_pem"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    secret["revocation_password"] = json!(SECRET);
    let body = serde_json::to_vec(&secret).unwrap();
    broker
        .park_like_the_worker(
            &body,
            "the job does not fit the contract: /csr_pem: must not be present for pkcs12",
            Some(&n.issue),
            Some("dl-secret"),
            Some("corr-dl-secret"),
        )
        .await;
    bodies.insert("dl-secret".to_string(), body);

    broker
        .park_like_the_worker(
            GARBAGE,
            "the message is not JSON: expected value at line 1 column 1",
            Some(&n.issue),
            None,
            None,
        )
        .await;
    bodies.insert("(not JSON)".to_string(), GARBAGE.to_vec());

    let revoke =
        json!({"job_id": "dl-revoke", "kind": "revoke", "reason": "not-a-reason", "serial": "0A"});
    let body = serde_json::to_vec(&revoke).unwrap();
    broker
        .park_like_the_worker(
            &body,
            "the job does not fit the contract: /reason: not one of the allowed values",
            Some(&n.revoke),
            Some("dl-revoke"),
            None,
        )
        .await;
    bodies.insert("dl-revoke".to_string(), body);

    let limit = issue_job("dl-limit");
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("dl-limit".into())
        .with_correlation_id("corr-dl-limit".into())
        .with_reply_to(format!("{}.replies-here", n.prefix).into());
    broker.dead_by_delivery_limit(&limit, properties).await;
    bodies.insert("dl-limit".to_string(), serde_json::to_vec(&limit).unwrap());

    let result = json!({"job_id": "dl-result", "kind": "issue", "status": "failed", "attempts": 0});
    let body = serde_json::to_vec(&result).unwrap();
    broker
        .park_like_the_worker(
            &body,
            &format!(
                "result unroutable: no queue is bound to {} for result.issue.failed",
                n.results
            ),
            None,
            Some("dl-result"),
            Some("dl-result"),
        )
        .await;
    bodies.insert("dl-result".to_string(), body);

    broker.wait_for_count(&n.dead_queue, 5).await;
    bodies
}

/// The key of a message read back: its job id, or `(not JSON)`.
fn key_of(taken: &Taken) -> String {
    taken.job_id().unwrap_or_else(|| "(not JSON)".to_string())
}

/// Takes everything from `queue` and returns it by key, checking that each body is
/// the one seeded.
async fn read_back(
    broker: &Broker,
    queue: &str,
    seeded: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, Taken> {
    let mut by_key = BTreeMap::new();
    for taken in broker.drain(queue).await {
        let key = key_of(&taken);
        assert_eq!(
            seeded.get(&key),
            Some(&taken.body),
            "{key} in {queue} has another body"
        );
        assert!(
            by_key.insert(key.clone(), taken).is_none(),
            "{key} twice in {queue}"
        );
    }
    by_key
}

fn keys(map: &BTreeMap<String, Taken>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_every_dead_letter_with_reason_and_job_id_masks_secrets_and_removes_nothing() {
    let broker = Broker::start("dead-list").await;
    let seeded = seed(&broker).await;
    let n = broker.names().clone();

    let output = broker.dead(&["list"]).await;
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("{} holds 5 message(s)", n.dead_queue)),
        "{shown}"
    );
    for job in ["dl-secret", "dl-revoke", "dl-limit", "dl-result"] {
        assert!(shown.contains(&format!("job_id {job}")), "{job}: {shown}");
    }
    assert!(
        shown.contains("does not fit the contract: /csr_pem"),
        "{shown}"
    );
    assert!(shown.contains("the message is not JSON"), "{shown}");
    assert!(
        shown.contains(&format!("delivery limit reached in {}", n.issue)),
        "{shown}"
    );
    assert!(shown.contains("result unroutable"), "{shown}");
    assert!(shown.contains(&format!("from {}", n.revoke)), "{shown}");
    assert!(
        shown.contains(r#""revocation_password":"[redacted]""#),
        "{shown}"
    );
    assert!(
        shown.contains(r#"18 bytes, not JSON: "\x00\x01 not json at all""#),
        "{shown}"
    );
    assert!(
        shown.contains("replay: not possible: it is a result message"),
        "{shown}"
    );
    assert!(!shown.contains(SECRET), "the password is printed: {shown}");
    assert_eq!(
        broker.count_settled(&n.dead_queue, 5).await,
        5,
        "list removed something"
    );

    let output = broker.dead(&["list", "--json"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(!text(&output).contains(SECRET));
    let document: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(document["total"], 5);
    assert_eq!(document["queue"], n.dead_queue.as_str());
    let messages = document["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 5);
    let by_job: BTreeMap<&str, &Value> = messages
        .iter()
        .map(|m| (m["job_id"].as_str().unwrap_or("(not JSON)"), m))
        .collect();
    assert_eq!(by_job["dl-limit"]["queue"], n.issue.as_str());
    assert_eq!(by_job["dl-limit"]["replay_routing_key"], "issue");
    assert_eq!(by_job["dl-limit"]["message_id"], "dl-limit");
    assert!(
        by_job["dl-limit"]["delivery_count"].is_null()
            || by_job["dl-limit"]["delivery_count"].is_i64()
    );
    assert_eq!(by_job["dl-revoke"]["replay_routing_key"], "revoke");
    assert_eq!(by_job["(not JSON)"]["replay_routing_key"], "issue");
    assert_eq!(by_job["(not JSON)"]["size"], GARBAGE.len());
    assert!(by_job["dl-result"]["replay_routing_key"].is_null());
    assert!(by_job["dl-result"]["not_replayable"].is_string());
    let positions: Vec<u64> = messages
        .iter()
        .filter_map(|m| m["position"].as_u64())
        .collect();
    assert_eq!(positions, [1, 2, 3, 4, 5]);

    let output = broker.dead(&["list", "--limit", "2"]).await;
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains("the first 2 (--limit shows more)"),
        "{shown}"
    );
    assert_eq!(shown.matches("      reason: ").count(), 2, "{shown}");

    // After three listings the queue holds exactly the messages it was given.
    broker.wait_for_count(&n.dead_queue, 5).await;
    let left = read_back(&broker, &n.dead_queue, &seeded).await;
    assert_eq!(
        keys(&left),
        [
            "(not JSON)",
            "dl-limit",
            "dl-result",
            "dl-revoke",
            "dl-secret"
        ]
    );
    let secret = &left["dl-secret"];
    assert_eq!(secret.message_id(), Some("dl-secret"));
    assert_eq!(secret.correlation_id(), Some("corr-dl-secret"));
    assert!(secret.header_names().contains(&ERROR_HEADER.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_one_job_id_moves_exactly_that_message_with_body_and_properties() {
    let broker = Broker::start("dead-replay-one").await;
    let seeded = seed(&broker).await;
    let n = broker.names().clone();

    let output = broker.dead(&["replay", "--job-id", "dl-limit"]).await;
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains("replayed #") && shown.contains("job_id dl-limit"),
        "{shown}"
    );
    assert!(shown.contains("1 replayed, 0 left"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");

    broker.wait_for_count(&n.issue, 1).await;
    let issued = read_back(&broker, &n.issue, &seeded).await;
    assert_eq!(keys(&issued), ["dl-limit"]);
    let copy = &issued["dl-limit"];
    assert_eq!(copy.routing_key, "issue");
    assert_eq!(copy.message_id(), Some("dl-limit"));
    assert_eq!(copy.correlation_id(), Some("corr-dl-limit"));
    let reply_to = format!("{}.replies-here", n.prefix);
    assert_eq!(copy.reply_to(), Some(reply_to.as_str()));
    assert_eq!(*copy.properties.delivery_mode(), Some(2));
    assert_eq!(
        copy.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    let headers = copy.header_names();
    assert!(
        !headers
            .iter()
            .any(|h| h == "x-death" || h.starts_with("x-first-death") || h == ERROR_HEADER),
        "death headers replayed: {headers:?}"
    );
    assert_eq!(broker.count(&n.revoke).await, 0);

    // The worker's dead letter of an issue job goes back the same way.
    let output = broker.dead(&["replay", "--job-id", "dl-secret"]).await;
    assert!(output.status.success(), "{}", text(&output));
    broker.wait_for_count(&n.issue, 1).await;
    let issued = read_back(&broker, &n.issue, &seeded).await;
    assert_eq!(keys(&issued), ["dl-secret"]);
    assert_eq!(issued["dl-secret"].correlation_id(), Some("corr-dl-secret"));
    // Only what the quorum queue adds itself (`x-delivery-count`, 0 here).
    let headers = issued["dl-secret"].header_names();
    assert!(
        headers.iter().all(|h| h == "x-delivery-count"),
        "{headers:?}"
    );

    broker.wait_for_count(&n.dead_queue, 3).await;
    let left = read_back(&broker, &n.dead_queue, &seeded).await;
    assert_eq!(keys(&left), ["(not JSON)", "dl-result", "dl-revoke"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_moves_every_routable_message_and_leaves_the_rest() {
    let broker = Broker::start("dead-replay-all").await;
    let seeded = seed(&broker).await;
    let n = broker.names().clone();

    let output = broker.dead(&["replay", "--all"]).await;
    let shown = text(&output);
    // A message that cannot be routed was asked for and left: that is a failure to say.
    assert!(!output.status.success(), "{shown}");
    assert!(shown.contains("4 replayed, 1 left"), "{shown}");
    assert!(
        shown.contains("left     #") && shown.contains("job_id dl-result"),
        "{shown}"
    );
    assert!(
        shown.contains("it is a result message, not a job"),
        "{shown}"
    );

    broker.wait_for_count(&n.issue, 3).await;
    let issued = read_back(&broker, &n.issue, &seeded).await;
    assert_eq!(keys(&issued), ["(not JSON)", "dl-limit", "dl-secret"]);
    assert!(issued.values().all(|t| t.routing_key == "issue"));
    let revoked = read_back(&broker, &n.revoke, &seeded).await;
    assert_eq!(keys(&revoked), ["dl-revoke"]);
    assert_eq!(revoked["dl-revoke"].routing_key, "revoke");
    assert_eq!(revoked["dl-revoke"].message_id(), Some("dl-revoke"));
    let left = read_back(&broker, &n.dead_queue, &seeded).await;
    assert_eq!(keys(&left), ["dl-result"]);
    assert!(left["dl-result"]
        .header_names()
        .contains(&ERROR_HEADER.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let broker = Broker::start("dead-dry-run").await;
    let seeded = seed(&broker).await;
    let n = broker.names().clone();

    let output = broker.dead(&["replay", "--all", "--dry-run"]).await;
    let shown = text(&output);
    assert_eq!(shown.matches("would replay #").count(), 4, "{shown}");
    assert!(
        shown.contains(
            "dry run: 4 would be replayed, 1 cannot be, 0 not chosen; nothing was changed"
        ),
        "{shown}"
    );
    let output = broker
        .dead(&["replay", "--job-id", "dl-revoke", "--dry-run"])
        .await;
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("to {} (key `revoke`)", n.jobs)),
        "{shown}"
    );
    assert!(
        shown.contains("1 would be replayed, 0 cannot be, 4 not chosen"),
        "{shown}"
    );

    broker.wait_for_count(&n.dead_queue, 5).await;
    assert_eq!(broker.count(&n.issue).await, 0);
    assert_eq!(broker.count(&n.revoke).await, 0);
    let left = read_back(&broker, &n.dead_queue, &seeded).await;
    assert_eq!(left.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_job_id_is_reported_and_nothing_moves() {
    let broker = Broker::start("dead-unknown").await;
    seed(&broker).await;
    let n = broker.names().clone();

    let output = broker
        .dead(&["replay", "--job-id", "no-such-job", "--job-id", "dl-revoke"])
        .await;
    let shown = text(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains("not found: no message in") && shown.contains("`no-such-job`"),
        "{shown}"
    );
    assert!(shown.contains("1 replayed, 0 left"), "{shown}");
    broker.wait_for_count(&n.revoke, 1).await;
    broker.wait_for_count(&n.dead_queue, 4).await;
    assert_eq!(broker.count(&n.issue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_broker_returns_stays_in_the_dead_queue() {
    let broker = Broker::start("dead-returned").await;
    let seeded = seed(&broker).await;
    let n = broker.names().clone();
    // Nothing is bound for `issue` any more: the broker returns the copy (mandatory).
    broker
        .channel
        .queue_unbind(
            n.issue.as_str().into(),
            n.jobs.as_str().into(),
            "issue".into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind");

    let output = broker
        .dead(&["replay", "--job-id", "dl-secret", "--job-id", "dl-revoke"])
        .await;
    let shown = text(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("no queue is bound to {} for key `issue`", n.jobs)),
        "{shown}"
    );
    assert!(shown.contains("1 replayed, 1 left"), "{shown}");
    // Not even in the logs: lapin logs a returned message with its body as a byte list.
    let as_bytes: Vec<String> = SECRET.bytes().map(|b| b.to_string()).collect();
    assert!(
        !shown.contains(SECRET) && !shown.contains(&as_bytes.join(", ")),
        "the revocation password is in the output (lapin logs the body of a returned \
         message at WARN under `lapin::returned_messages`; the log filter must silence it):\n{shown}"
    );
    broker.wait_for_count(&n.revoke, 1).await;
    broker.wait_for_count(&n.dead_queue, 4).await;
    let left = read_back(&broker, &n.dead_queue, &seeded).await;
    assert_eq!(
        keys(&left),
        ["(not JSON)", "dl-limit", "dl-result", "dl-secret"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_prefix_is_named_not_a_crash() {
    let broker = Broker::start("dead-prefix").await;
    let output = tokio::task::spawn_blocking(|| {
        run_worker(
            &[
                "dead",
                "list",
                "--amqp-url",
                &amqp_url(),
                "--prefix",
                "t-dead-no-such-prefix",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let shown = text(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains("the queue `t-dead-no-such-prefix.dead` does not exist")
            && shown.contains("--prefix"),
        "{shown}"
    );
    assert!(!shown.contains("panicked"), "{shown}");
    // The empty queue of a real prefix is said to be empty.
    let output = broker.dead(&["list"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(&format!("{} is empty", broker.names().dead_queue)));
    let output = broker.dead(&["replay", "--all"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("0 replayed, 0 left"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rejected_without_requeue_is_dead_lettered_by_rabbitmq_and_replayable() {
    let broker = Broker::start("dead-rejected").await;
    let n = broker.names().clone();
    let job = issue_job("dl-rejected");
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("dl-rejected".into());
    // A quorum queue with `x-dead-letter-exchange` dead-letters a message rejected
    // without requeue at once (reason `rejected`), before any delivery limit.
    broker.dead_by_rejects(&job, properties, false).await;

    let output = broker.dead(&["list"]).await;
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "rejected by a consumer without requeue in {}",
            n.issue
        )),
        "{shown}"
    );
    let output = broker.dead(&["replay", "--job-id", "dl-rejected"]).await;
    assert!(output.status.success(), "{}", text(&output));
    broker.wait_for_count(&n.issue, 1).await;
    assert_eq!(broker.count(&n.dead_queue).await, 0);
    let seeded = BTreeMap::from([("dl-rejected".to_string(), serde_json::to_vec(&job).unwrap())]);
    let issued = read_back(&broker, &n.issue, &seeded).await;
    assert_eq!(issued["dl-rejected"].message_id(), Some("dl-rejected"));
}

/// With the real worker and the D-Trust simulator: a job RabbitMQ dead-lettered (its
/// delivery limit used up while, say, the worker kept failing) is replayed once the
/// cause is fixed and gets issued; an invalid job the worker parked is listed with the
/// worker's reason and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_real_worker_a_replayed_job_is_issued_and_a_parked_one_is_listed() {
    let prefix = unique_prefix("dead-worker");
    let mut broker = Broker::on(JobBus::start(&prefix).await).await;
    let n = broker.names().clone();
    let good = issue_job("dl-good");
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("dl-good".into());
    broker.dead_by_delivery_limit(&good, properties).await;

    let pki = BundleBuilder::new("https://placeholder/");
    let sim = Sim::start(SimConfig::default_catalogue(), &pki).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = dir.path().join("bundle.zip");
    pki.set("url", &sim.url()).write(&bundle);
    let store = dir.path().join("store");
    let (bundle, store, url) = (
        bundle.display().to_string(),
        store.display().to_string(),
        amqp_url(),
    );
    let args = [
        "--bundle",
        &bundle,
        "--prefix",
        &prefix,
        "--store",
        &store,
        "--amqp-url",
        &url,
    ];
    let worker = WorkerProcess::start(&args, &[], &dir.path().join("worker.log"));

    let mut bad = issue_job("dl-bad");
    bad["csr_pem"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    bad["revocation_password"] = json!(SECRET);
    broker.bus.publish_job(&bad).await;
    let results = broker.bus.results_for(1, WAIT).await;
    assert_eq!(
        results.get("dl-bad").map(|r| r["error"]["code"].clone()),
        Some(json!("INVALID_JOB")),
        "{results:?}; worker log:\n{}",
        worker.output()
    );
    broker.wait_for_count(&n.dead_queue, 2).await;

    let output = broker.dead(&["list"]).await;
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains("job_id dl-bad") && shown.contains("does not fit the contract"),
        "{shown}"
    );
    assert!(shown.contains(&format!("from {}", n.issue)), "{shown}");
    assert!(
        shown.contains(&format!("delivery limit reached in {}", n.issue)),
        "{shown}"
    );
    assert!(!shown.contains(SECRET), "{shown}");

    let output = broker.dead(&["replay", "--job-id", "dl-good"]).await;
    assert!(output.status.success(), "{}", text(&output));
    let results = broker.bus.results_for(2, WAIT).await;
    assert_eq!(
        results.get("dl-good").map(|r| r["status"].clone()),
        Some(json!("succeeded")),
        "{results:?}; worker log:\n{}",
        worker.output()
    );
    assert_eq!(sim.orders().len(), 1);
    broker.wait_for_count(&n.dead_queue, 1).await;
    let output = broker.dead(&["list", "--json"]).await;
    let document: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(document["messages"][0]["job_id"], "dl-bad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_last_message_returns_the_earlier_ones_cleanly() {
    let broker = Broker::start("dead-last").await;
    let n = broker.names().clone();
    broker
        .park_like_the_worker(GARBAGE, "not JSON", Some(&n.issue), None, None)
        .await;
    let last = issue_job("dl-last");
    let body = serde_json::to_vec(&last).unwrap();
    broker
        .park_like_the_worker(&body, "why", Some(&n.issue), Some("dl-last"), None)
        .await;
    broker.wait_for_count(&n.dead_queue, 2).await;

    // The first is held while the last is replayed and removed; returning the first
    // must not name the removed one (the broker would close the channel).
    let output = broker.dead(&["replay", "--job-id", "dl-last"]).await;
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(!shown.contains("warning"), "{shown}");
    assert!(shown.contains("1 replayed, 0 left"), "{shown}");
    broker.wait_for_count(&n.issue, 1).await;
    let seeded = BTreeMap::from([
        ("dl-last".to_string(), body),
        ("(not JSON)".to_string(), GARBAGE.to_vec()),
    ]);
    let left = read_back(&broker, &n.dead_queue, &seeded).await;
    assert_eq!(keys(&left), ["(not JSON)"]);
}
