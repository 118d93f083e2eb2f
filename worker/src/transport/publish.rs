//! The confirming publisher: every message is persistent, `mandatory`, and confirmed by
//! the broker before [`Publisher::publish`] returns.
//!
//! - [`Published::Routed`]: the broker took the message and at least one queue has it.
//! - [`Published::Returned`]: the broker confirmed it but no queue was bound for its
//!   routing key (`mandatory`): nothing was stored, the caller decides.
//! - [`PublishError`]: not confirmed. [`PublishError::may_have_been_published`] says
//!   whether the broker may still have it (a retry may then duplicate it, with the same
//!   content); a publish is never silently lost.
//!
//! **Concurrency.** The handle is cheap to clone and is used from many tasks at once.
//! Publishes are pipelined on one channel: one task writes them in order, another
//! awaits their confirms in that order, so many are in flight together and no caller
//! waits for another's confirm round trip. Matching returned messages to publishes is
//! done here, not by the client library (which hands a returned message to whichever
//! confirm completes next): a returned message is matched by exchange, routing key,
//! ids and body, so a mix-up can only happen between identical messages, where it
//! makes no difference.
//!
//! **Across reconnects.** The handle always refers to the channel the supervisor
//! installed last. While the broker is disconnected, `publish` fails at once with
//! [`PublishError::NotConnected`] (nothing was sent): the caller keeps its result and
//! retries later (see [`super::BrokerStatus`] to wait for the connection). A publish
//! never waits longer than the configured publish timeout
//! ([`super::TransportConfig::publish_timeout`]), e.g. while the broker blocks
//! publishers during a memory alarm.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consume::Delivery;
use super::topology::Names;

/// Content type of every message of the contract.
pub const JSON: &str = "application/json";
/// Header that carries why a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-dtrust-error";

/// Publishes queued on one channel and not yet written; callers wait beyond that.
const REQUEST_QUEUE: usize = 1024;
/// Returned messages kept while waiting for their publish's confirm.
const MAX_UNMATCHED_RETURNS: usize = 4096;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Exchange; empty for the default exchange (routing key = queue name).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Body.
    pub body: Vec<u8>,
    /// Content type, `application/json` unless set otherwise.
    pub content_type: String,
    /// AMQP `message_id` (the contract: the `job_id`).
    pub message_id: Option<String>,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// Headers, with string values (e.g. `x-dtrust-error`).
    pub headers: BTreeMap<String, String>,
    /// AMQP `timestamp`, seconds since the Unix epoch (the worker measures queue lag
    /// from it).
    pub timestamp: Option<u64>,
}

impl Outgoing {
    /// A JSON message to `exchange` with `routing_key`.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>, body: Vec<u8>) -> Self {
        Outgoing {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body,
            content_type: JSON.to_owned(),
            message_id: None,
            correlation_id: None,
            headers: BTreeMap::new(),
            timestamp: None,
        }
    }

    /// A JSON message straight to `queue` through the default exchange (for
    /// `reply_to`).
    pub fn to_queue(queue: impl Into<String>, body: Vec<u8>) -> Self {
        Outgoing::new("", queue, body)
    }

    /// A copy of `delivery` for `{p}.dead`, with `reason` in `x-dtrust-error`: body,
    /// ids, content type and string headers kept (but the broker's `x-delivery-count`
    /// and `x-death`), and the original routing key. Publish it, then ack the delivery.
    pub fn dead_letter(names: &Names, delivery: &Delivery, reason: &str) -> Self {
        let mut headers: BTreeMap<String, String> = delivery
            .headers
            .iter()
            .filter(|(k, _)| k.as_str() != "x-delivery-count" && k.as_str() != "x-death")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.insert(ERROR_HEADER.to_owned(), reason.to_owned());
        Outgoing {
            exchange: names.dead_exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            body: delivery.body.clone(),
            content_type: delivery
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            message_id: delivery.message_id.clone(),
            correlation_id: delivery.correlation_id.clone(),
            headers,
            timestamp: delivery.timestamp,
        }
    }

    /// Sets `message_id`.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets `correlation_id`.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Adds a header with a string value.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets `timestamp` to now.
    pub fn with_timestamp_now(mut self) -> Self {
        self.timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    fn prepare(self) -> Result<Prepared, PublishError> {
        let exchange = short("exchange", &self.exchange)?;
        let routing_key = short("routing key", &self.routing_key)?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(short("content type", &self.content_type)?);
        if let Some(id) = &self.message_id {
            properties = properties.with_message_id(short("message_id", id)?);
        }
        if let Some(id) = &self.correlation_id {
            properties = properties.with_correlation_id(short("correlation_id", id)?);
        }
        if let Some(at) = self.timestamp {
            properties = properties.with_timestamp(at);
        }
        if !self.headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in &self.headers {
                table.insert(
                    short("header name", name)?,
                    AMQPValue::LongString(LongString::from(value.as_bytes())),
                );
            }
            properties = properties.with_headers(table);
        }
        Ok(Prepared {
            exchange,
            routing_key,
            properties,
            key: ReturnKey {
                exchange: self.exchange,
                routing_key: self.routing_key,
                message_id: self.message_id,
                correlation_id: self.correlation_id,
            },
            body: self.body,
        })
    }
}

fn short(what: &str, value: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value).map_err(|_| {
        PublishError::Invalid(format!(
            "{what} is {} bytes long; AMQP allows at most 255",
            value.len()
        ))
    })
}

/// What the broker did with a confirmed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// At least one queue has it.
    Routed,
    /// No queue is bound for its routing key: the broker returned it (`mandatory`).
    Returned {
        /// The broker's reply code (312 `NO_ROUTE`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
}

/// A publish the broker did not confirm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No broker connection right now; nothing was sent.
    #[error("not connected to the broker; nothing was published")]
    NotConnected,
    /// The message cannot be expressed in AMQP (a name or id over 255 bytes); nothing
    /// was sent, and retrying will not help.
    #[error("the message cannot be published: {0}")]
    Invalid(String),
    /// The broker refused the message (`basic.nack`): it was not stored.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// The channel or connection closed after the message was written and before its
    /// confirm: the broker may or may not have it.
    #[error("the broker connection was lost before the publish was confirmed: {0}")]
    ConnectionLost(String),
    /// No confirm within the publish timeout (e.g. the broker blocks publishers): the
    /// broker may or may not have it.
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// Whether the broker may have the message despite the error, so that a retry may
    /// produce a duplicate (with the same content).
    pub fn may_have_been_published(&self) -> bool {
        matches!(
            self,
            PublishError::ConnectionLost(_) | PublishError::Timeout(_)
        )
    }
}

/// The publishing handle; clone it freely.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.is_connected())
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}

struct Shared {
    link: RwLock<Option<mpsc::Sender<Request>>>,
    timeout: Duration,
}

struct Prepared {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
    key: ReturnKey,
    body: Vec<u8>,
}

/// What identifies a returned message.
#[derive(Debug)]
struct ReturnKey {
    exchange: String,
    routing_key: String,
    message_id: Option<String>,
    correlation_id: Option<String>,
}

type Reply = oneshot::Sender<Result<Published, PublishError>>;

struct Request {
    prepared: Prepared,
    reply: Reply,
}

struct Pending {
    confirm: PublisherConfirm,
    key: ReturnKey,
    body: Vec<u8>,
    reply: Reply,
}

/// The tasks of one installed publisher channel.
pub(crate) struct PublisherSession {
    pub(crate) channel: Channel,
    sender: JoinHandle<()>,
    confirmer: JoinHandle<()>,
}

impl PublisherSession {
    /// Waits (at most `timeout`) until everything written has its confirm; call after
    /// [`Publisher::uninstall`] and the session's cancellation.
    pub(crate) async fn finish(self, timeout: Duration) -> Channel {
        let PublisherSession {
            channel,
            sender,
            confirmer,
        } = self;
        let _ = tokio::time::timeout(timeout, async {
            let _ = sender.await;
            let _ = confirmer.await;
        })
        .await;
        channel
    }
}

impl Publisher {
    /// A publisher not connected yet: every publish fails with
    /// [`PublishError::NotConnected`] until a supervisor installs a channel. Useful
    /// as is in unit tests of code that publishes.
    pub fn disconnected(publish_timeout: Duration) -> Publisher {
        Publisher {
            shared: Arc::new(Shared {
                link: RwLock::new(None),
                timeout: publish_timeout,
            }),
        }
    }

    /// Whether a channel is installed (the broker is connected).
    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|link| !link.is_closed())
    }

    /// Publishes `message` (persistent, `mandatory`) and waits for the broker's
    /// confirm, at most the publish timeout.
    pub async fn publish(&self, message: Outgoing) -> Result<Published, PublishError> {
        let prepared = message.prepare()?;
        let link = self.current().ok_or(PublishError::NotConnected)?;
        let timeout = self.shared.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout_at(deadline, link.send(Request { prepared, reply })).await {
            // Never queued: nothing was sent.
            Err(_) => return Err(PublishError::Timeout(timeout)),
            Ok(Err(_)) => return Err(PublishError::NotConnected),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(PublishError::Timeout(timeout)),
            Ok(Err(_)) => Err(PublishError::ConnectionLost(
                "the publisher channel closed before the broker confirmed".to_owned(),
            )),
            Ok(Ok(result)) => result,
        }
    }

    fn current(&self) -> Option<mpsc::Sender<Request>> {
        self.shared
            .link
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Opens a channel on `connection`, turns on confirms, starts its tasks and makes
    /// it the one `publish` uses. A failure on it cancels `lost`.
    pub(crate) async fn install(
        &self,
        connection: &Connection,
        lost: CancellationToken,
    ) -> Result<PublisherSession, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let sender = tokio::spawn(send_loop(
            channel.clone(),
            requests_rx,
            pending_tx,
            lost.clone(),
        ));
        let confirmer = tokio::spawn(confirm_loop(pending_rx, lost));
        *self.shared.link.write().unwrap_or_else(|e| e.into_inner()) = Some(requests_tx);
        Ok(PublisherSession {
            channel,
            sender,
            confirmer,
        })
    }

    /// From now on `publish` fails with [`PublishError::NotConnected`].
    pub(crate) fn uninstall(&self) {
        *self.shared.link.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Writes the publishes in order, hands each confirm to the confirm loop.
async fn send_loop(
    channel: Channel,
    mut requests: mpsc::Receiver<Request>,
    pending: mpsc::UnboundedSender<Pending>,
    lost: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            biased;
            _ = lost.cancelled() => break,
            request = requests.recv() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let Request { prepared, reply } = request;
        if reply.is_closed() {
            // The caller gave up (timeout) before it was written: do not write it.
            continue;
        }
        let Prepared {
            exchange,
            routing_key,
            properties,
            key,
            body,
        } = prepared;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        if !channel.status().connected() {
            // Nothing written: say so, and let the supervisor replace the channel.
            let _ = reply.send(Err(PublishError::NotConnected));
            lost.cancel();
            break;
        }
        match channel
            .basic_publish(exchange, routing_key, options, &body, properties)
            .await
        {
            Ok(confirm) => {
                if let Err(mpsc::error::SendError(pending)) = pending.send(Pending {
                    confirm,
                    key,
                    body,
                    reply,
                }) {
                    let _ = pending.reply.send(Err(PublishError::ConnectionLost(
                        "the publisher stopped before the broker confirmed".to_owned(),
                    )));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "publishing failed: the publisher channel is unusable");
                // A channel found closed before writing sent nothing; any other failure
                // may have come after (part of) the message was written.
                let outcome = if matches!(error.kind(), lapin::ErrorKind::InvalidChannelState(..)) {
                    PublishError::NotConnected
                } else {
                    PublishError::ConnectionLost(error.to_string())
                };
                let _ = reply.send(Err(outcome));
                lost.cancel();
                break;
            }
        }
    }
    // What is still queued was never written.
    requests.close();
    while let Ok(request) = requests.try_recv() {
        let _ = request.reply.send(Err(PublishError::NotConnected));
    }
}

/// Awaits the confirms in publishing order and answers each caller.
async fn confirm_loop(mut pending: mpsc::UnboundedReceiver<Pending>, lost: CancellationToken) {
    let mut returned: VecDeque<BasicReturnMessage> = VecDeque::new();
    while let Some(Pending {
        confirm,
        key,
        body,
        reply,
    }) = pending.recv().await
    {
        let outcome = match confirm.await {
            Ok(Confirmation::Ack(message)) => {
                keep_returned(&mut returned, message);
                match take_match(&mut returned, &key, &body) {
                    Some(message) => Ok(Published::Returned {
                        reply_code: message.reply_code,
                        reply_text: message.reply_text.to_string(),
                    }),
                    None => Ok(Published::Routed),
                }
            }
            Ok(Confirmation::Nack(message)) => {
                keep_returned(&mut returned, message);
                let _ = take_match(&mut returned, &key, &body);
                Err(PublishError::Nacked)
            }
            Ok(Confirmation::NotRequested) => Err(PublishError::ConnectionLost(
                "the channel is not in confirm mode".to_owned(),
            )),
            Err(error) => {
                lost.cancel();
                Err(PublishError::ConnectionLost(error.to_string()))
            }
        };
        if let Ok(Published::Returned { reply_text, .. }) = &outcome {
            tracing::debug!(exchange = %key.exchange, routing_key = %key.routing_key, %reply_text, "message returned by the broker: no queue bound");
        }
        let _ = reply.send(outcome);
    }
}

fn keep_returned(returned: &mut VecDeque<BasicReturnMessage>, message: Option<BasicReturnMessage>) {
    if let Some(message) = message {
        if returned.len() >= MAX_UNMATCHED_RETURNS {
            tracing::warn!(
                "too many returned messages without a matching publish; dropping the oldest"
            );
            returned.pop_front();
        }
        returned.push_back(message);
    }
}

fn take_match(
    returned: &mut VecDeque<BasicReturnMessage>,
    key: &ReturnKey,
    body: &[u8],
) -> Option<BasicReturnMessage> {
    let position = returned.iter().position(|m| {
        let d = &m.delivery;
        d.exchange.as_str() == key.exchange
            && d.routing_key.as_str() == key.routing_key
            && d.properties.message_id().as_ref().map(|s| s.as_str()) == key.message_id.as_deref()
            && d.properties.correlation_id().as_ref().map(|s| s.as_str())
                == key.correlation_id.as_deref()
            && d.data == body
    })?;
    returned.remove(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_disconnected_publisher_fails_fast() {
        let publisher = Publisher::disconnected(Duration::from_secs(60));
        assert!(!publisher.is_connected());
        let error = publisher
            .publish(Outgoing::new("x", "y", b"{}".to_vec()))
            .await
            .unwrap_err();
        assert_eq!(error, PublishError::NotConnected);
        assert!(!error.may_have_been_published());
    }

    #[tokio::test]
    async fn an_over_long_name_is_refused_not_a_panic() {
        let publisher = Publisher::disconnected(Duration::from_secs(1));
        let error = publisher
            .publish(Outgoing::to_queue("q".repeat(300), b"{}".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(error, PublishError::Invalid(_)), "{error:?}");
        let error = publisher
            .publish(Outgoing::new("x", "y", vec![]).with_correlation_id("c".repeat(256)))
            .await
            .unwrap_err();
        assert!(matches!(error, PublishError::Invalid(_)), "{error:?}");
    }

    #[test]
    fn properties_are_persistent_json_with_ids_and_headers() {
        let prepared = Outgoing::new("ex", "rk", b"{}".to_vec())
            .with_message_id("m")
            .with_correlation_id("c")
            .with_header(ERROR_HEADER, "why")
            .prepare()
            .unwrap();
        let p = &prepared.properties;
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some(JSON));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m"));
        assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c"));
        let headers = p.headers().as_ref().unwrap();
        assert_eq!(
            headers.inner().get(ERROR_HEADER),
            Some(&AMQPValue::LongString("why".into()))
        );
    }
}
