//! One consumer per lane, each on its own channel with a prefetch equal to the lane's
//! concurrency and manual acknowledgements.
//!
//! | lane | queue | concurrency |
//! |---|---|---|
//! | [`Lane::Issue`] | `{p}.issue` | `issue_concurrency` |
//! | [`Lane::Revoke`] | `{p}.revoke` | `revoke_concurrency` |
//! | [`Lane::KeyArchiveReplies`] | `{p}.keyarchive.replies` | `replies_concurrency` |
//!
//! Every delivery is handed to the application's [`Handler`] as a [`Delivery`], in a
//! task of its own; at most the lane's concurrency run at once (the prefetch bounds
//! what the broker sends; a semaphore per lane also holds across reconnects, when
//! handlers of a lost session may still be running). Since the lanes have separate
//! channels, prefetch windows and semaphores, a backlog on one never delays another.
//!
//! While the broker blocks the connection (`connection.blocked`, a memory or disk
//! alarm), no lane starts a new delivery: what is prefetched waits, so the worker does
//! not pile up results it cannot publish. Handlers already running go on.
//!
//! The application settles each delivery with [`Delivery::ack`],
//! [`Delivery::nack`] or [`Delivery::reject_to_dead`]; those never panic: after the
//! channel died they return [`AckError::ChannelClosed`] (the broker redelivers the
//! message). A handler that panics has its delivery requeued.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel, Connection, Consumer};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::TransportConfig;
use super::topology::Names;

/// A stream of jobs (or replies), consumed on its own channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Issuance jobs, `{p}.issue`.
    Issue,
    /// Revocation jobs, `{p}.revoke`.
    Revoke,
    /// The Certificate Manager's answers, `{p}.keyarchive.replies`.
    KeyArchiveReplies,
}

impl Lane {
    /// Every lane.
    pub const ALL: [Lane; 3] = [Lane::Issue, Lane::Revoke, Lane::KeyArchiveReplies];

    /// Its name in logs and consumer tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Issue => "issue",
            Lane::Revoke => "revoke",
            Lane::KeyArchiveReplies => "keyarchive-replies",
        }
    }

    /// The queue it consumes.
    pub fn queue(self, names: &Names) -> &str {
        match self {
            Lane::Issue => &names.issue,
            Lane::Revoke => &names.revoke,
            Lane::KeyArchiveReplies => &names.keyarchive_replies,
        }
    }

    /// Its concurrency (and prefetch) in `config`.
    pub fn concurrency(self, config: &TransportConfig) -> u16 {
        match self {
            Lane::Issue => config.issue_concurrency,
            Lane::Revoke => config.revoke_concurrency,
            Lane::KeyArchiveReplies => config.replies_concurrency,
        }
        .max(1)
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message from a lane, to be settled by the application.
pub struct Delivery {
    /// The lane it came from.
    pub lane: Lane,
    /// The body, as sent.
    pub body: Vec<u8>,
    /// AMQP `message_id`.
    pub message_id: Option<String>,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// AMQP `reply_to`: a queue to send the result to through the default exchange.
    pub reply_to: Option<String>,
    /// AMQP `content_type`.
    pub content_type: Option<String>,
    /// AMQP `timestamp` (seconds since the Unix epoch), when the publisher set one.
    pub timestamp: Option<u64>,
    /// The broker delivered it before (to this or another consumer).
    pub redelivered: bool,
    /// `x-delivery-count` of a quorum queue: earlier failed deliveries (absent on the
    /// first).
    pub delivery_count: Option<u64>,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Headers with scalar values, as text (tables and arrays, e.g. `x-death`, are
    /// left out).
    pub headers: BTreeMap<String, String>,
    acker: Option<Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("lane", &self.lane)
            .field("bytes", &self.body.len())
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id)
            .field("reply_to", &self.reply_to)
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

/// Settling a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Its channel is closed: the broker requeues the message and delivers it again.
    #[error("the delivery's channel is closed; the broker will deliver it again")]
    ChannelClosed,
    /// It was acked, nacked or rejected before.
    #[error("the delivery was settled already")]
    AlreadySettled,
    /// The client library failed to send it.
    #[error("settling the delivery failed: {0}")]
    Broker(String),
}

impl Delivery {
    /// A delivery bound to no broker, for unit tests of handlers: settling it succeeds
    /// and does nothing.
    pub fn detached(lane: Lane, body: Vec<u8>) -> Delivery {
        Delivery {
            lane,
            body,
            message_id: None,
            correlation_id: None,
            reply_to: None,
            content_type: None,
            timestamp: None,
            redelivered: false,
            delivery_count: None,
            exchange: String::new(),
            routing_key: String::new(),
            headers: BTreeMap::new(),
            acker: None,
        }
    }

    fn from_lapin(lane: Lane, delivery: lapin::message::Delivery) -> Delivery {
        let lapin::message::Delivery {
            exchange,
            routing_key,
            redelivered,
            properties,
            data,
            acker,
            ..
        } = delivery;
        let text = |s: &Option<lapin::types::ShortString>| s.as_ref().map(|s| s.to_string());
        let mut headers = BTreeMap::new();
        let mut delivery_count = None;
        if let Some(table) = properties.headers() {
            for (name, value) in table {
                if name.as_str() == "x-delivery-count" {
                    delivery_count = as_u64(value);
                }
                if let Some(value) = scalar_text(value) {
                    headers.insert(name.to_string(), value);
                }
            }
        }
        Delivery {
            lane,
            body: data,
            message_id: text(properties.message_id()),
            correlation_id: text(properties.correlation_id()),
            reply_to: text(properties.reply_to()),
            content_type: text(properties.content_type()),
            timestamp: *properties.timestamp(),
            redelivered,
            delivery_count,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            headers,
            acker: Some(acker),
        }
    }

    /// Whether it can still be settled (its channel is open and it was not settled).
    pub fn is_settleable(&self) -> bool {
        self.acker.as_ref().is_none_or(|a| a.usable())
    }

    /// Acknowledges it: the broker forgets the message.
    pub async fn ack(&self) -> Result<(), AckError> {
        let Some(acker) = &self.acker else {
            return Ok(());
        };
        settle(acker, acker.ack(BasicAckOptions::default())).await
    }

    /// Negatively acknowledges it: back to the queue with `requeue` (counted against
    /// `x-delivery-limit`), else to the queue's dead-letter exchange.
    pub async fn nack(&self, requeue: bool) -> Result<(), AckError> {
        let Some(acker) = &self.acker else {
            return Ok(());
        };
        settle(
            acker,
            acker.nack(BasicNackOptions {
                multiple: false,
                requeue,
            }),
        )
        .await
    }

    /// Rejects it without requeueing: the broker moves it to the queue's dead-letter
    /// exchange (`{p}.dead` for the job lanes; the key-archive replies queue has none,
    /// so there it is dropped). This path cannot add the reason: to keep it in
    /// `x-dtrust-error`, publish [`super::Outgoing::dead_letter`] and then ack.
    pub async fn reject_to_dead(&self) -> Result<(), AckError> {
        let Some(acker) = &self.acker else {
            return Ok(());
        };
        settle(acker, acker.reject(BasicRejectOptions { requeue: false })).await
    }
}

async fn settle(
    acker: &Acker,
    operation: impl Future<Output = lapin::Result<bool>>,
) -> Result<(), AckError> {
    if acker.poisoned() {
        return Err(AckError::ChannelClosed);
    }
    match operation.await {
        Ok(true) => Ok(()),
        Ok(false) if acker.poisoned() => Err(AckError::ChannelClosed),
        Ok(false) => Err(AckError::AlreadySettled),
        Err(_) if acker.poisoned() => Err(AckError::ChannelClosed),
        Err(error) => Err(AckError::Broker(error.to_string())),
    }
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

fn scalar_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::Boolean(v) => v.to_string(),
        AMQPValue::ShortString(v) => v.to_string(),
        AMQPValue::LongString(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        other => as_u64(other)
            .map(|v| v.to_string())
            .or_else(|| match other {
                AMQPValue::ShortShortInt(v) => Some(v.to_string()),
                AMQPValue::ShortInt(v) => Some(v.to_string()),
                AMQPValue::LongInt(v) => Some(v.to_string()),
                AMQPValue::LongLongInt(v) => Some(v.to_string()),
                _ => None,
            })?,
    })
}

/// What the application does with each delivery. Called concurrently, up to the
/// lane's concurrency; the handler settles the delivery itself (ack last, after the
/// outcome is stored or the result confirmed).
///
/// Any `Fn(Delivery) -> impl Future<Output = ()>` closure is a handler:
///
/// ```ignore
/// let handler = Arc::new(move |delivery: Delivery| {
///     let jobs = jobs.clone();
///     async move { jobs.on_delivery(delivery).await }
/// });
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery; the future runs in a task of its own.
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, ()>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, ()> {
        Box::pin(self(delivery))
    }
}

/// How a lane's consumer ended other than by being stopped.
#[derive(Debug, Clone)]
pub(crate) enum LaneEnd {
    /// The broker cancelled the consumer (e.g. its queue was deleted).
    Cancelled,
    /// The channel or connection failed.
    Failed(String),
}

/// What lanes share across sessions.
#[derive(Clone)]
pub(crate) struct LaneShared {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
}

/// What the consumers of one session share with it.
pub(crate) struct SessionSignals {
    /// The session's number, in consumer tags.
    pub(crate) id: u64,
    /// Whether the broker blocks the connection.
    pub(crate) blocked: watch::Receiver<bool>,
    /// Where a consumer reports its end.
    pub(crate) ended: mpsc::UnboundedSender<(Lane, LaneEnd)>,
}

/// One running consumer.
pub(crate) struct LaneConsumer {
    pub(crate) lane: Lane,
    pub(crate) channel: Channel,
    tag: lapin::types::ShortString,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LaneConsumer {
    /// Opens the lane's channel with its prefetch and starts consuming. The end of
    /// the consumer (other than [`LaneConsumer::stop`]) is reported on `ended`.
    pub(crate) async fn start(
        connection: &Connection,
        lane: Lane,
        names: &Names,
        prefetch: u16,
        signals: &SessionSignals,
        shared: LaneShared,
    ) -> Result<LaneConsumer, String> {
        let queue = lapin::types::ShortString::try_new(lane.queue(names))
            .map_err(|e| format!("queue name of lane {lane}: {e}"))?;
        let failed = |what: &str, e: lapin::Error| format!("{what} for lane {lane}: {e}");
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| failed("opening the channel", e))?;
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| failed("basic.qos", e))?;
        let tag = format!("dtrust-worker.{}.{}", lane.as_str(), signals.id);
        let consumer = channel
            .basic_consume(
                queue,
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed("basic.consume", e))?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            lane,
            consumer,
            shared,
            signals.blocked.clone(),
            stop.clone(),
            signals.ended.clone(),
        ));
        tracing::debug!(%lane, prefetch, "consuming");
        Ok(LaneConsumer {
            lane,
            channel,
            tag: tag.as_str().into(),
            stop,
            task,
        })
    }

    /// Stops taking deliveries and cancels the consumer at the broker (at most
    /// `timeout`); what was prefetched and not handed out is redelivered once the
    /// channel closes.
    pub(crate) async fn stop(&mut self, timeout: std::time::Duration) {
        self.stop.cancel();
        if self.channel.status().connected() {
            let cancel = self
                .channel
                .basic_cancel(self.tag.clone(), BasicCancelOptions::default());
            match tokio::time::timeout(timeout, cancel).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(lane = %self.lane, %error, "basic.cancel failed"),
                Err(_) => tracing::debug!(lane = %self.lane, "basic.cancel timed out"),
            }
        }
        let _ = tokio::time::timeout(timeout, &mut self.task).await;
    }

    /// Stops taking deliveries, without telling the broker (its connection is gone or
    /// about to be closed).
    pub(crate) fn halt(&self) {
        self.stop.cancel();
    }

    /// Whether its channel is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

impl Drop for LaneConsumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(
    lane: Lane,
    mut consumer: Consumer,
    shared: LaneShared,
    mut blocked: watch::Receiver<bool>,
    stop: CancellationToken,
    ended: mpsc::UnboundedSender<(Lane, LaneEnd)>,
) {
    let end = loop {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            permit = shared.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        if *blocked.borrow() {
            tracing::info!(%lane, "the broker blocks the connection: not starting new deliveries");
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                unblocked = blocked.wait_for(|b| !*b) => if unblocked.is_err() { return },
            }
            tracing::info!(%lane, "the broker unblocked the connection: resuming");
        }
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            item = consumer.next() => item,
        };
        match item {
            Some(Ok(delivery)) => {
                let fallback = delivery.acker.clone();
                let delivery = Delivery::from_lapin(lane, delivery);
                let future = shared.handler.handle(delivery);
                shared.tracker.spawn(async move {
                    let _permit = permit;
                    if AssertUnwindSafe(future).catch_unwind().await.is_err() {
                        tracing::error!(%lane, "the delivery handler panicked; the delivery is requeued");
                        let _ = fallback
                            .nack(BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            })
                            .await;
                    }
                });
            }
            Some(Err(error)) => break LaneEnd::Failed(error.to_string()),
            None => break LaneEnd::Cancelled,
        }
    };
    if !stop.is_cancelled() {
        let _ = ended.send((lane, end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_detached_delivery_settles_quietly() {
        let delivery = Delivery::detached(Lane::Revoke, b"{}".to_vec());
        assert!(delivery.is_settleable());
        assert_eq!(delivery.ack().await, Ok(()));
        assert_eq!(delivery.nack(true).await, Ok(()));
        assert_eq!(delivery.reject_to_dead().await, Ok(()));
    }

    #[test]
    fn headers_become_text_and_delivery_count_a_number() {
        let mut table = FieldTable::default();
        table.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        table.insert("x-dtrust-error".into(), AMQPValue::LongString("bad".into()));
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
        );
        let mut raw = lapin::message::Delivery::mock(1, "ex".into(), "issue".into(), true, vec![1]);
        raw.properties = lapin::BasicProperties::default()
            .with_headers(table)
            .with_message_id("m".into())
            .with_reply_to("r".into());
        let delivery = Delivery::from_lapin(Lane::Issue, raw);
        assert_eq!(delivery.delivery_count, Some(2));
        assert_eq!(
            delivery.headers.get("x-delivery-count").map(String::as_str),
            Some("2")
        );
        assert_eq!(
            delivery.headers.get("x-dtrust-error").map(String::as_str),
            Some("bad")
        );
        assert!(!delivery.headers.contains_key("x-death"));
        assert_eq!(delivery.message_id.as_deref(), Some("m"));
        assert_eq!(delivery.reply_to.as_deref(), Some("r"));
        assert!(delivery.redelivered);
        assert_eq!(delivery.routing_key, "issue");
    }
}
