//! The AMQP transport (`dtrust_worker::transport`) against the real RabbitMQ at
//! `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`): topology, lanes,
//! acknowledgements, the confirming publisher, prefetch, lane isolation, reconnects
//! through a TCP proxy that cuts the connection, consumer cancellation, shutdown.
//!
//! Each test uses a prefix of its own (`t-<test>-<pid>-<n>`) and deletes every queue and
//! exchange of it at the end, also when it fails (a guard that deletes on drop over a
//! fresh connection). No assertion is on wall-clock time: waits poll with generous
//! deadlines and the assertions are on states and counts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtrust_testkit::tcp_proxy::TcpProxy;
use dtrust_worker::transport::lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use dtrust_worker::transport::lapin::types::{AMQPValue, FieldTable};
use dtrust_worker::transport::lapin::uri::AMQPUri;
use dtrust_worker::transport::lapin::{
    self, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
};
use dtrust_worker::transport::{
    check_broker, keys, BrokerState, BrokerStatus, CancellationToken, Delivery, Handler, Lane,
    Names, ObjectKind, Outgoing, PublishError, Published, Publisher, ReconnectPolicy, Stopped,
    Supervisor, SupervisorError, Topology, TopologyError, TransportConfig, ERROR_HEADER,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Bound of every wait for something that should happen soon.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

use dtrust_testkit::broker::{amqp_url, broker_addr, unique_prefix, Cleanup};

fn config(prefix: &str) -> TransportConfig {
    config_for(&amqp_url(), prefix)
}

fn config_for(url: &str, prefix: &str) -> TransportConfig {
    let mut config = TransportConfig::new(url, prefix);
    config.connect_timeout = Duration::from_secs(5);
    config.publish_timeout = Duration::from_secs(20);
    config.drain_timeout = Duration::from_secs(20);
    config.reconnect = ReconnectPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        randomization: 0.3,
        stable_after: Duration::from_secs(5),
    };
    config
}

/// The test's own connection to the broker, to publish jobs, inspect and change queues.
struct Direct {
    connection: Connection,
    channel: Channel,
}

impl Direct {
    async fn connect() -> Direct {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("the test connects to the broker (is RabbitMQ running? see AMQP_URL)");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        Direct {
            connection,
            channel,
        }
    }

    /// Connects and declares the worker's topology for `prefix` (delivery limit 5).
    async fn with_topology(prefix: &str) -> (Direct, Names) {
        let direct = Direct::connect().await;
        let names = Names::new(prefix);
        Topology::new(names.clone(), 5)
            .declare(&direct.connection)
            .await
            .expect("topology");
        (direct, names)
    }

    /// Publishes persistent JSON with `message_id` and waits for the confirm; panics
    /// if it was not routed.
    async fn publish(&self, exchange: &str, key: &str, message_id: &str) {
        let confirm = self.publish_nowait(exchange, key, message_id).await;
        let confirmation = confirm.await.expect("confirm");
        assert_routed(confirmation, key);
    }

    async fn publish_nowait(
        &self,
        exchange: &str,
        key: &str,
        message_id: &str,
    ) -> lapin::PublisherConfirm {
        let body = format!(r#"{{"job_id":"{message_id}"}}"#);
        self.channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body.as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(message_id.into()),
            )
            .await
            .expect("publish")
    }

    /// Publishes `count` jobs pipelined, then waits for all confirms.
    async fn publish_many(&self, exchange: &str, key: &str, ids: impl Iterator<Item = String>) {
        let mut confirms = Vec::new();
        for id in ids {
            confirms.push(self.publish_nowait(exchange, key, &id).await);
        }
        for confirm in confirms {
            assert_routed(confirm.await.expect("confirm"), key);
        }
    }

    /// (ready messages, consumers) of `queue`, or `None` if it does not exist.
    async fn queue_state(&self, queue: &str) -> Option<(u32, u32)> {
        let channel = self.connection.create_channel().await.expect("channel");
        let result = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()));
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    /// Waits until `queue` has `expected` (ready messages, consumers): quorum queues
    /// take a moment to return the unacked messages of a closed channel.
    async fn settles_to(&self, queue: &str, expected: (u32, u32)) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = self.queue_state(queue).await;
            if state == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue}: (ready, consumers) stayed {state:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (ready messages, consumers) of `queue` once no consumer is left.
    async fn without_consumers(&self, queue: &str) -> (u32, u32) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = self.queue_state(queue).await.expect("the queue exists");
            if state.1 == 0 {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} kept a consumer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }

    /// Declares `queue` (classic, durable) with `arguments` on a fresh channel; the
    /// broker's refusal as text.
    async fn declare_queue(&self, queue: &str, arguments: FieldTable) -> Result<(), String> {
        let channel = self.connection.create_channel().await.expect("channel");
        let result = channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    async fn delete_queue(&self, queue: &str) {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
        let _ = channel.close(200, "done".into()).await;
    }

    /// A plain classic queue bound to `exchange` with `key`.
    async fn bind_test_queue(&self, queue: &str, exchange: &str, key: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the test queue");
        if !exchange.is_empty() {
            self.channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the test queue");
        }
    }
}

fn assert_routed(confirmation: Confirmation, key: &str) {
    assert!(confirmation.is_ack(), "the broker nacked a test publish");
    assert!(
        confirmation.take_message().is_none(),
        "a test publish with key `{key}` was not routed"
    );
}

/// A handler that hands every delivery to the test.
fn forward() -> (Arc<dyn Handler>, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = Arc::new(move |delivery: Delivery| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(delivery);
        }
    });
    (handler, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery within the wait")
        .expect("the handler is alive")
}

/// A supervisor running in a task.
struct Running {
    names: Names,
    publisher: Publisher,
    status: watch::Receiver<BrokerStatus>,
    in_flight: dtrust_worker::transport::InFlight,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<Stopped, SupervisorError>>>,
}

impl Running {
    fn start(config: TransportConfig, handler: Arc<dyn Handler>) -> Running {
        let supervisor = Supervisor::new(config);
        let shutdown = CancellationToken::new();
        let names = supervisor.names().clone();
        let publisher = supervisor.publisher();
        let status = supervisor.status();
        let in_flight = supervisor.in_flight();
        let task = tokio::spawn(supervisor.run(handler, shutdown.clone()));
        Running {
            names,
            publisher,
            status,
            in_flight,
            shutdown,
            task: Some(task),
        }
    }

    async fn wait_for(
        &mut self,
        what: &str,
        condition: impl FnMut(&BrokerStatus) -> bool,
    ) -> BrokerStatus {
        let waited = tokio::time::timeout(WAIT, self.status.wait_for(condition))
            .await
            .map(|r| r.map(|status| status.clone()));
        match waited {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => panic!("the supervisor ended while waiting for: {what}"),
            Err(_) => panic!(
                "waited in vain for: {what}; status {:?}",
                *self.status.borrow()
            ),
        }
    }

    async fn connected(&mut self) -> BrokerStatus {
        self.wait_for("connected", |s| s.state == BrokerState::Connected)
            .await
    }

    async fn stop(mut self) -> Stopped {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the supervisor stops within the wait")
            .expect("the supervisor task did not panic")
            .expect("the supervisor stops without error")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `condition` until it holds, at most [`WAIT`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn arg_long(value: i32) -> AMQPValue {
    AMQPValue::LongInt(value)
}

fn arg_str(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in entries {
        table.insert((*k).into(), v.clone());
    }
    table
}

// ---------------------------------------------------------------- topology

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_declares_twice_has_the_contract_arguments_and_names_conflicts() {
    let prefix = unique_prefix("topology");
    let _cleanup = Cleanup::new(&prefix);
    let direct = Direct::connect().await;
    let topology = Topology::new(Names::new(&prefix), 5);
    let names = topology.names().clone();

    topology
        .declare(&direct.connection)
        .await
        .expect("first declaration");
    topology
        .declare(&direct.connection)
        .await
        .expect("a second declaration with the same arguments");

    // Every queue exists, and re-declaring it with the expected arguments is accepted:
    // RabbitMQ checks x-queue-type, x-delivery-limit and x-dead-letter-exchange.
    for queue in names.queues() {
        assert!(direct.queue_state(queue).await.is_some(), "{queue} exists");
        direct
            .declare_queue(queue, topology.queue_arguments(queue))
            .await
            .unwrap_or_else(|e| panic!("{queue} has the expected arguments: {e}"));
    }
    // ... and other values are refused, naming the argument: so the queues have these.
    let quorum = ("x-queue-type", arg_str("quorum"));
    let dlx = ("x-dead-letter-exchange", arg_str(&names.dead_exchange));
    let refused = direct
        .declare_queue(
            &names.issue,
            table(&[
                quorum.clone(),
                ("x-delivery-limit", arg_long(6)),
                dlx.clone(),
            ]),
        )
        .await
        .expect_err("another delivery limit is refused");
    assert!(refused.contains("x-delivery-limit"), "{refused}");
    let refused = direct
        .declare_queue(
            &names.revoke,
            table(&[
                quorum.clone(),
                ("x-delivery-limit", arg_long(5)),
                ("x-dead-letter-exchange", arg_str("elsewhere")),
            ]),
        )
        .await
        .expect_err("another dead-letter exchange is refused");
    assert!(refused.contains("x-dead-letter-exchange"), "{refused}");
    let refused = direct
        .declare_queue(
            &names.dead_queue,
            table(&[("x-queue-type", arg_str("classic"))]),
        )
        .await
        .expect_err("the dead-letter queue is not classic");
    assert!(refused.contains("x-queue-type"), "{refused}");
    let refused = direct
        .declare_queue(
            &names.keyarchive_requests,
            table(&[quorum.clone(), ("x-delivery-limit", arg_long(5))]),
        )
        .await
        .expect_err("the key-archive queues have no delivery limit");
    assert!(refused.contains("x-delivery-limit"), "{refused}");

    // The bindings route every key of the contract to its queue.
    for (exchange, key, queue) in [
        (&names.jobs, keys::ISSUE, &names.issue),
        (&names.jobs, keys::REVOKE, &names.revoke),
        (
            &names.keyarchive,
            keys::GENERATE,
            &names.keyarchive_requests,
        ),
        (&names.keyarchive, keys::IMPORT, &names.keyarchive_requests),
        (
            &names.keyarchive,
            keys::GENERATED,
            &names.keyarchive_replies,
        ),
        (&names.keyarchive, keys::IMPORTED, &names.keyarchive_replies),
        (&names.dead_exchange, "any-key", &names.dead_queue),
    ] {
        let id = format!("{key}-probe");
        direct.publish(exchange, key, &id).await;
        let got = direct
            .get(queue)
            .await
            .unwrap_or_else(|| panic!("a message to {exchange} with key `{key}` reaches {queue}"));
        assert_eq!(
            got.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(id.as_str())
        );
    }

    // A pre-existing queue with other arguments: a clear error, at declaration and as
    // the supervisor's startup error.
    let other = unique_prefix("conflict");
    let _cleanup_other = Cleanup::new(&other);
    let other_names = Names::new(&other);
    direct
        .declare_queue(
            &other_names.issue,
            table(&[
                quorum,
                ("x-delivery-limit", arg_long(3)),
                (
                    "x-dead-letter-exchange",
                    arg_str(&other_names.dead_exchange),
                ),
            ]),
        )
        .await
        .expect("the conflicting queue");
    let error = Topology::new(other_names.clone(), 5)
        .declare(&direct.connection)
        .await
        .expect_err("the conflict is reported");
    match &error {
        TopologyError::Conflict { kind, name, detail } => {
            assert_eq!(*kind, ObjectKind::Queue);
            assert_eq!(name, &other_names.issue);
            assert!(detail.contains("x-delivery-limit"), "{detail}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "queue {} exists with other arguments (",
            other_names.issue
        )),
        "{text}"
    );
    assert!(text.ends_with("delete it or use another prefix"), "{text}");
    assert!(error.is_fatal());

    let (handler, _rx) = forward();
    let supervisor = Supervisor::new(config(&other));
    let mut status = supervisor.status();
    let result = tokio::time::timeout(WAIT, supervisor.run(handler, CancellationToken::new()))
        .await
        .expect("the supervisor gives up on a conflict at once");
    match result {
        Err(SupervisorError::Topology(TopologyError::Conflict { name, .. })) => {
            assert_eq!(name, other_names.issue)
        }
        other => panic!("expected the topology conflict, got {other:?}"),
    }
    let status = status.borrow_and_update().clone();
    assert_eq!(status.state, BrokerState::Stopped);
    assert!(status
        .last_error
        .is_some_and(|e| e.contains("delete it or use another prefix")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_broker_connects_or_says_why_not() {
    check_broker(&amqp_url(), Duration::from_secs(10))
        .await
        .expect("the broker answers");
    // A port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let error = check_broker(
        &format!("amqp://guest:secret@127.0.0.1:{port}/%2f"),
        Duration::from_secs(5),
    )
    .await
    .expect_err("nothing listens there");
    let text = error.to_string();
    assert!(text.contains(&port.to_string()), "{text}");
    assert!(
        !text.contains("secret"),
        "the password is not shown: {text}"
    );
}

// ---------------------------------------------------------------- lanes and acks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_reach_their_lane_acks_remove_them_and_unacked_ones_come_back() {
    let prefix = unique_prefix("lanes");
    let _cleanup = Cleanup::new(&prefix);
    let direct = Direct::connect().await;
    let (handler, mut rx) = forward();
    let mut running = Running::start(config(&prefix), handler.clone());
    let status = running.connected().await;
    assert_eq!(status.reconnects, 0);
    assert!(status.is_ready());
    let names = running.names.clone();

    direct
        .publish(&names.jobs, keys::ISSUE, "job-issue-1")
        .await;
    direct
        .publish(&names.jobs, keys::REVOKE, "job-revoke-1")
        .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut rx).await;
        assert!(!delivery.redelivered);
        assert_eq!(delivery.exchange, names.jobs);
        assert_eq!(delivery.content_type.as_deref(), Some("application/json"));
        delivery.ack().await.expect("ack");
        assert_eq!(
            delivery.ack().await,
            Err(dtrust_worker::transport::AckError::AlreadySettled)
        );
        seen.push((
            delivery.lane,
            delivery.routing_key.clone(),
            delivery.message_id.clone().unwrap_or_default(),
            String::from_utf8_lossy(&delivery.body).into_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                Lane::Issue,
                "issue".to_owned(),
                "job-issue-1".to_owned(),
                r#"{"job_id":"job-issue-1"}"#.to_owned()
            ),
            (
                Lane::Revoke,
                "revoke".to_owned(),
                "job-revoke-1".to_owned(),
                r#"{"job_id":"job-revoke-1"}"#.to_owned()
            ),
        ]
    );

    // One not acked: held by the test while the consumer's channel closes.
    direct.publish(&names.jobs, keys::ISSUE, "job-held").await;
    let held = next(&mut rx).await;
    assert_eq!(held.message_id.as_deref(), Some("job-held"));
    assert!(!held.redelivered);
    let stopped = running.stop().await;
    assert_eq!(stopped.unfinished_handlers, 0);
    assert_eq!(
        held.ack().await,
        Err(dtrust_worker::transport::AckError::ChannelClosed),
        "acking after the channel closed is an error, not a panic"
    );

    // The acked ones are gone; the held one is back in its queue, no consumer left.
    direct.settles_to(&names.issue, (1, 0)).await;
    direct.settles_to(&names.revoke, (0, 0)).await;

    // A new consumer gets it again, marked redelivered.
    let mut running = Running::start(config(&prefix), handler);
    running.connected().await;
    let again = next(&mut rx).await;
    assert_eq!(again.message_id.as_deref(), Some("job-held"));
    assert_eq!(again.lane, Lane::Issue);
    assert!(again.redelivered, "a redelivered message says so");
    again.ack().await.expect("ack");
    running.stop().await;
    direct.settles_to(&names.issue, (0, 0)).await;
}

// ---------------------------------------------------------------- publisher

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publisher_confirms_many_at_once_tells_returned_from_routed_and_reaches_queues() {
    let prefix = unique_prefix("publish");
    let cleanup = Cleanup::new(&prefix);
    let direct = Direct::connect().await;
    let (handler, _rx) = forward();
    let mut running = Running::start(config(&prefix), handler);
    running.connected().await;
    let names = running.names.clone();
    let publisher = running.publisher.clone();
    assert!(publisher.is_connected());

    let results_queue = format!("{prefix}.test-results");
    cleanup.queue(&results_queue);
    direct
        .bind_test_queue(&results_queue, &names.results, "result.#")
        .await;

    // 1,000 concurrent publishes: all confirmed as routed, all arrive.
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let publisher = publisher.clone();
        let key = keys::result("issue", "succeeded");
        let exchange = names.results.clone();
        tasks.push(tokio::spawn(async move {
            let message = Outgoing::new(exchange, key, format!(r#"{{"n":{i}}}"#).into_bytes())
                .with_message_id(format!("result-{i}"));
            publisher.publish(message).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), Ok(Published::Routed));
    }
    assert_eq!(
        direct.queue_state(&results_queue).await.map(|s| s.0),
        Some(1000)
    );
    let mut ids = BTreeSet::new();
    while let Some(message) = direct.get(&results_queue).await {
        let properties = &message.delivery.properties;
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        ids.insert(
            properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        );
    }
    assert_eq!(ids.len(), 1000, "every result arrived once");

    // Nothing bound for the key: returned, not lost and not an error.
    let returned = publisher
        .publish(Outgoing::new(
            &names.results,
            "nothing.bound.here",
            b"{}".to_vec(),
        ))
        .await
        .expect("confirmed");
    assert!(
        matches!(
            returned,
            Published::Returned {
                reply_code: 312,
                ..
            }
        ),
        "{returned:?}"
    );

    // Routed and returned publishes interleaved, concurrently: each gets its own answer.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let publisher = publisher.clone();
        let exchange = names.results.clone();
        let routed = i % 3 != 0;
        let key = if routed {
            keys::result("revoke", "failed")
        } else {
            format!("unbound.{i}")
        };
        tasks.push(tokio::spawn(async move {
            let outcome = publisher
                .publish(Outgoing::new(exchange, key, format!("{i}").into_bytes()))
                .await;
            (routed, outcome)
        }));
    }
    let mut routed_count = 0;
    for task in tasks {
        let (routed, outcome) = task.await.expect("task");
        match outcome {
            Ok(Published::Routed) if routed => routed_count += 1,
            Ok(Published::Returned { .. }) if !routed => {}
            other => panic!("routed={routed} but got {other:?}"),
        }
    }
    assert_eq!(
        direct.queue_state(&results_queue).await.map(|s| s.0),
        Some(routed_count)
    );

    // Through the default exchange to a queue (reply_to), with ids and headers.
    let reply_queue = format!("{prefix}.test-reply");
    cleanup.queue(&reply_queue);
    direct.bind_test_queue(&reply_queue, "", "").await;
    let outcome = publisher
        .publish(
            Outgoing::to_queue(&reply_queue, br#"{"status":"succeeded"}"#.to_vec())
                .with_correlation_id("corr-1")
                .with_message_id("job-1")
                .with_header(ERROR_HEADER, "just a header"),
        )
        .await;
    assert_eq!(outcome, Ok(Published::Routed));
    let message = direct.get(&reply_queue).await.expect("the reply arrived");
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-1")
    );
    assert_eq!(
        properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(ERROR_HEADER).cloned()),
        Some(AMQPValue::LongString("just a header".into()))
    );
    assert_eq!(message.delivery.data, br#"{"status":"succeeded"}"#);
    let missing = publisher
        .publish(Outgoing::to_queue(
            format!("{prefix}.no-such-queue"),
            b"{}".to_vec(),
        ))
        .await;
    assert!(
        matches!(missing, Ok(Published::Returned { .. })),
        "{missing:?}"
    );

    running.stop().await;
    // Stopped: publishing fails at once and says nothing was sent.
    let error = publisher
        .publish(Outgoing::new(&names.results, "result.x.y", b"{}".to_vec()))
        .await
        .expect_err("not connected");
    assert_eq!(error, PublishError::NotConnected);
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetch_bounds_the_deliveries_in_the_handler() {
    let prefix = unique_prefix("prefetch");
    let _cleanup = Cleanup::new(&prefix);
    let (direct, names) = Direct::with_topology(&prefix).await;
    direct
        .publish_many(
            &names.jobs,
            keys::ISSUE,
            (0..12).map(|i| format!("job-{i}")),
        )
        .await;

    let current = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let handler: Arc<dyn Handler> = Arc::new({
        let (current, max, done) = (current.clone(), max.clone(), done.clone());
        move |delivery: Delivery| {
            let (current, max, done) = (current.clone(), max.clone(), done.clone());
            async move {
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                current.fetch_sub(1, Ordering::SeqCst);
                delivery.ack().await.expect("ack");
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let mut config = config(&prefix);
    config.issue_concurrency = 3;
    let mut running = Running::start(config, handler);
    running.connected().await;
    eventually("all 12 handled", || done.load(Ordering::SeqCst) == 12).await;
    assert_eq!(
        max.load(Ordering::SeqCst),
        3,
        "at most (and, with a backlog, exactly) 3 in the handler at once"
    );
    running.stop().await;
    direct.settles_to(&names.issue, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_revoke_lane_is_not_delayed_by_an_issue_backlog() {
    let prefix = unique_prefix("lanes-isolated");
    let _cleanup = Cleanup::new(&prefix);
    let (direct, names) = Direct::with_topology(&prefix).await;
    direct
        .publish_many(
            &names.jobs,
            keys::ISSUE,
            (0..500).map(|i| format!("issue-{i}")),
        )
        .await;
    direct
        .publish_many(
            &names.jobs,
            keys::REVOKE,
            (0..10).map(|i| format!("revoke-{i}")),
        )
        .await;

    let issues_done = Arc::new(AtomicUsize::new(0));
    let revokes_done = Arc::new(AtomicUsize::new(0));
    // How many issue jobs were done when each revoke job was.
    let issues_at_revoke = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<dyn Handler> = Arc::new({
        let (issues_done, revokes_done, issues_at_revoke) = (
            issues_done.clone(),
            revokes_done.clone(),
            issues_at_revoke.clone(),
        );
        move |delivery: Delivery| {
            let (issues_done, revokes_done, issues_at_revoke) = (
                issues_done.clone(),
                revokes_done.clone(),
                issues_at_revoke.clone(),
            );
            async move {
                match delivery.lane {
                    Lane::Issue => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if delivery.ack().await.is_ok() {
                            issues_done.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        delivery.ack().await.expect("ack");
                        issues_at_revoke
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(issues_done.load(Ordering::SeqCst));
                        revokes_done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    });
    let mut config = config(&prefix);
    config.issue_concurrency = 2;
    config.revoke_concurrency = 2;
    let mut running = Running::start(config, handler);
    running.connected().await;
    eventually("all 10 revocations handled", || {
        revokes_done.load(Ordering::SeqCst) == 10
    })
    .await;
    let at_revoke = issues_at_revoke
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let most = at_revoke.iter().copied().max().unwrap_or(0);
    assert!(
        most < 100,
        "the 10 revocations finished while at most {most} of 500 issuance jobs were done"
    );
    running.stop().await;
    let (issue_waiting, _) = direct.without_consumers(&names.issue).await;
    assert!(
        issue_waiting >= 300,
        "most issuance jobs still waited ({issue_waiting} of 500)"
    );
    direct.settles_to(&names.revoke, (0, 0)).await;
}

// ---------------------------------------------------------------- reconnects

/// `AMQP_URL` rewritten to go through `proxy`.
fn url_through(proxy: SocketAddr) -> String {
    let uri: AMQPUri = amqp_url().parse().expect("AMQP_URL parses");
    let user = &uri.authority.userinfo;
    let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
    format!("amqp://{}:{}@{proxy}/{vhost}", user.username, user.password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_cut_it_reconnects_redeclares_and_consumes_what_came_meanwhile() {
    let prefix = unique_prefix("reconnect");
    let _cleanup = Cleanup::new(&prefix);
    let direct = Direct::connect().await;
    let proxy = TcpProxy::start(broker_addr().await).await;
    let (handler, mut rx) = forward();
    let mut running = Running::start(config_for(&url_through(proxy.addr()), &prefix), handler);
    running.connected().await;
    let names = running.names.clone();
    assert_eq!(proxy.connections(), 1);

    // A delivery the handler has not acked when the connection is cut.
    direct.publish(&names.jobs, keys::ISSUE, "before-cut").await;
    let held = next(&mut rx).await;
    assert_eq!(held.message_id.as_deref(), Some("before-cut"));

    proxy.cut();
    let status = running
        .wait_for("disconnected", |s| s.state == BrokerState::Disconnected)
        .await;
    assert_eq!(status.reconnects, 0);
    assert!(status.last_error.is_some());
    assert!(!status.is_ready());
    eventually("the held delivery's channel is dead", || {
        !held.is_settleable()
    })
    .await;
    assert_eq!(
        held.ack().await,
        Err(dtrust_worker::transport::AckError::ChannelClosed)
    );
    assert_eq!(
        running
            .publisher
            .publish(Outgoing::new(&names.results, "result.a.b", b"{}".to_vec()))
            .await,
        Err(PublishError::NotConnected),
        "while disconnected, publishing fails at once"
    );

    // Meanwhile, straight to the broker: new jobs, and part of the topology deleted.
    direct
        .publish(&names.jobs, keys::ISSUE, "during-cut-1")
        .await;
    direct
        .publish(&names.jobs, keys::REVOKE, "during-cut-2")
        .await;
    direct.delete_queue(&names.keyarchive_requests).await;
    assert_eq!(direct.queue_state(&names.keyarchive_requests).await, None);

    proxy.restore();
    let status = running
        .wait_for("connected again", |s| {
            s.state == BrokerState::Connected && s.reconnects >= 1
        })
        .await;
    assert!(status.last_error.is_none());
    assert!(proxy.connections() >= 2);
    assert!(
        direct
            .queue_state(&names.keyarchive_requests)
            .await
            .is_some(),
        "the topology was declared again"
    );

    let mut got = Vec::new();
    for _ in 0..3 {
        let delivery = next(&mut rx).await;
        delivery.ack().await.expect("ack after the reconnect");
        got.push((
            delivery.message_id.clone().unwrap_or_default(),
            delivery.lane,
            delivery.redelivered,
        ));
    }
    got.sort();
    // The one held before the cut comes back marked redelivered. (The ones published
    // during the cut may be marked too: the broker may have handed them to the old
    // consumer before it noticed that connection was gone.)
    assert_eq!(got[0], ("before-cut".to_owned(), Lane::Issue, true));
    assert_eq!(
        got.iter()
            .map(|(id, lane, _)| (id.as_str(), *lane))
            .collect::<Vec<_>>(),
        vec![
            ("before-cut", Lane::Issue),
            ("during-cut-1", Lane::Issue),
            ("during-cut-2", Lane::Revoke),
        ]
    );

    // The same publisher handle works on the new channel.
    assert_eq!(
        running
            .publisher
            .publish(Outgoing::to_queue(&names.dead_queue, b"{}".to_vec()))
            .await,
        Ok(Published::Routed)
    );
    running.stop().await;
    direct.settles_to(&names.issue, (0, 0)).await;
    direct.settles_to(&names.revoke, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_cut_off_midway_are_confirmed_or_reported_never_lost() {
    let prefix = unique_prefix("publish-cut");
    let cleanup = Cleanup::new(&prefix);
    let direct = Direct::connect().await;
    let proxy = TcpProxy::start(broker_addr().await).await;
    let (handler, _rx) = forward();
    let mut running = Running::start(config_for(&url_through(proxy.addr()), &prefix), handler);
    running.connected().await;
    let names = running.names.clone();
    let results_queue = format!("{prefix}.test-results");
    cleanup.queue(&results_queue);
    direct
        .bind_test_queue(&results_queue, &names.results, "result.#")
        .await;

    // Many publishes in flight when the connection is cut.
    let (first_done_tx, first_done) = tokio::sync::oneshot::channel::<()>();
    let first_done_tx = Arc::new(Mutex::new(Some(first_done_tx)));
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let publisher = running.publisher.clone();
        let exchange = names.results.clone();
        let first_done_tx = first_done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("r-{i}");
            let outcome = publisher
                .publish(
                    Outgoing::new(exchange, keys::result("issue", "succeeded"), b"{}".to_vec())
                        .with_message_id(&id),
                )
                .await;
            if let Some(tx) = first_done_tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                let _ = tx.send(());
            }
            (id, outcome)
        }));
    }
    tokio::time::timeout(WAIT, first_done)
        .await
        .expect("a first publish finished")
        .expect("sent");
    proxy.cut();
    let mut routed = BTreeSet::new();
    let mut not_sent = BTreeSet::new();
    let mut unknown = 0;
    for task in tasks {
        let (id, outcome) = task.await.expect("task");
        match outcome {
            Ok(Published::Routed) => {
                routed.insert(id);
            }
            Err(PublishError::NotConnected) => {
                not_sent.insert(id);
            }
            Err(error) if error.may_have_been_published() => unknown += 1,
            other => panic!("{id}: unexpected {other:?}"),
        }
    }
    assert_eq!(routed.len() + not_sent.len() + unknown, 2000);
    assert!(
        !routed.is_empty(),
        "some publishes were confirmed before the cut"
    );
    proxy.restore();
    running
        .wait_for("connected again", |s| {
            s.state == BrokerState::Connected && s.reconnects >= 1
        })
        .await;

    // Every confirmed one is there; none reported as not sent is.
    let mut arrived = BTreeSet::new();
    while let Some(message) = direct.get(&results_queue).await {
        if let Some(id) = message.delivery.properties.message_id() {
            arrived.insert(id.to_string());
        }
    }
    let missing: Vec<_> = routed.difference(&arrived).collect();
    assert!(missing.is_empty(), "confirmed but lost: {missing:?}");
    let wrongly: Vec<_> = not_sent.intersection(&arrived).collect();
    assert!(
        wrongly.is_empty(),
        "reported as not sent but published: {wrongly:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_consumer_makes_it_redeclare_and_resume() {
    let prefix = unique_prefix("cancelled");
    let _cleanup = Cleanup::new(&prefix);
    let direct = Direct::connect().await;
    let (handler, mut rx) = forward();
    let mut running = Running::start(config(&prefix), handler);
    running.connected().await;
    let names = running.names.clone();

    direct.delete_queue(&names.revoke).await;
    let status = running
        .wait_for("reconnected after the cancellation", |s| {
            s.state == BrokerState::Connected && s.reconnects >= 1
        })
        .await;
    assert!(status.reconnects >= 1);
    assert!(direct.queue_state(&names.revoke).await.is_some());

    direct
        .publish(&names.jobs, keys::REVOKE, "after-delete")
        .await;
    let delivery = next(&mut rx).await;
    assert_eq!(delivery.lane, Lane::Revoke);
    assert_eq!(delivery.message_id.as_deref(), Some("after-delete"));
    delivery.ack().await.expect("ack");
    running.stop().await;
    direct.settles_to(&names.revoke, (0, 0)).await;
}

// ---------------------------------------------------------------- shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_consuming_lets_handlers_finish_and_loses_no_ack() {
    let prefix = unique_prefix("shutdown");
    let _cleanup = Cleanup::new(&prefix);
    let (direct, names) = Direct::with_topology(&prefix).await;
    direct
        .publish_many(
            &names.jobs,
            keys::ISSUE,
            (0..20).map(|i| format!("job-{i}")),
        )
        .await;

    let started = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let release = CancellationToken::new();
    let handler: Arc<dyn Handler> = Arc::new({
        let (started, acked, release) = (started.clone(), acked.clone(), release.clone());
        move |delivery: Delivery| {
            let (started, acked, release) = (started.clone(), acked.clone(), release.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                release.cancelled().await;
                delivery
                    .ack()
                    .await
                    .expect("acks still work while draining");
                acked.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let mut config = config(&prefix);
    config.issue_concurrency = 4;
    let mut running = Running::start(config, handler);
    running.connected().await;
    eventually("4 handlers running", || started.load(Ordering::SeqCst) == 4).await;
    assert_eq!(running.in_flight.count(), 4);

    // Shut down while 4 handlers wait; let them finish only once consuming stopped.
    running.shutdown.cancel();
    let mut status = running.status.clone();
    let stopping =
        tokio::time::timeout(WAIT, status.wait_for(|s| s.state == BrokerState::Stopping))
            .await
            .expect("stopping")
            .is_ok();
    assert!(stopping);
    // Acks free prefetch slots: had the consumer not been cancelled, the broker would
    // now deliver more (counted in `started`).
    release.cancel();
    let stopped = running.stop().await;
    assert_eq!(stopped.unfinished_handlers, 0);
    assert_eq!(status.borrow().state, BrokerState::Stopped);
    assert_eq!(
        started.load(Ordering::SeqCst),
        4,
        "no delivery started after the shutdown"
    );
    assert_eq!(acked.load(Ordering::SeqCst), 4);
    // What was acked is gone, everything else is back: 16 ready, no consumer.
    direct.settles_to(&names.issue, (16, 0)).await;
}
