//! `dtrust-worker dead list` and `dtrust-worker dead replay`: what sits in the
//! dead-letter queue `{p}.dead`, and putting chosen messages back on the job exchange
//! once the operator fixed the cause.
//!
//! **Reading without removing.** Both verbs take messages with `basic.get` (manual
//! acknowledgement) on one channel and hold them unacknowledged, so that no message is
//! seen twice; at most as many as the queue held when the command started (a bound,
//! so that dead letters arriving meanwhile cannot keep it going). Everything not
//! removed is returned at the end with one `basic.nack` (`multiple`, `requeue`); if the
//! command dies instead, the broker returns them itself when the connection drops. So
//! the queue holds the same messages afterwards. Each return may count as a delivery
//! attempt: RabbitMQ before 4.3 increments a quorum queue's `x-delivery-count` on
//! every return, 4.3 and later not for `basic.nack`. The worker declares `{p}.dead`
//! without `x-delivery-limit`, which on RabbitMQ 3.x means no limit, so this is
//! harmless there; RabbitMQ 4.0 to 4.2 give quorum queues a default limit of 20 and
//! would drop a message returned that often (the dead queue has no dead-letter
//! exchange of its own), so `list` warns when it sees a message near that count. On a
//! quorum queue without a delivery limit a returned message may go to the back of the
//! queue: listing part of the queue (`--limit`) can change the order, never the content.
//!
//! **Where a message goes back to.** The queue it died in: the worker's header
//! `x-dtrust-queue`, else RabbitMQ's `x-first-death-queue` (or the oldest `x-death`
//! entry): `{p}.issue` is routing key `issue`, `{p}.revoke` is `revoke`. A message
//! from another queue (e.g. an unusable Certificate Manager reply) is not a job and is
//! left where it is. Without any of those headers, the body's `kind` decides, unless
//! the body is a result (it has a `status`) or not JSON.
//!
//! **Losing none.** `replay` publishes each chosen message to `{p}.jobs` (persistent,
//! `mandatory`, same body, `message_id`, `correlation_id`, `reply_to` and application
//! headers; the dead-letter headers are dropped) on a channel with publisher confirms,
//! and acknowledges (removes) the dead letter only after the broker confirmed that a
//! queue took the copy. A message the broker returns (no queue bound for its key) or
//! refuses stays in `{p}.dead` and is reported. A crash between the confirm and the
//! acknowledgement leaves both copies: the job may then run twice, which the worker
//! absorbs (one outcome per `job_id`); a message is never lost.
//!
//! **No secrets in the output.** Bodies are shown as a short preview: JSON with every
//! field whose name says password, secret or private key replaced by `[redacted]`;
//! anything else as its length and an escaped prefix of at most 60 bytes, cut before
//! any word that announces a secret. Header values and ids are shown with control
//! characters escaped, so that no message can write to the operator's terminal.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use serde_json::{json, Value};

use super::BrokerArgs;

use crate::transport::connection::{close_quietly, default_connection_name, open};
use crate::transport::{keys, ConfigError, ConnectError, Names, TransportConfig, ERROR_HEADER};

/// Header in which the worker names the queue a dead letter came from.
pub const QUEUE_HEADER: &str = "x-dtrust-queue";
/// Headers that describe a message's death, not the message: never replayed.
const DEATH_HEADERS: [&str; 5] = [
    ERROR_HEADER,
    QUEUE_HEADER,
    "x-death",
    "x-delivery-count",
    "x-acquired-count",
];
/// Header name prefixes of RabbitMQ's death summary (`x-first-death-queue`, ...).
const DEATH_HEADER_PREFIXES: [&str; 2] = ["x-first-death-", "x-last-death-"];
/// Longest JSON preview, in characters.
const PREVIEW_CHARS: usize = 200;
/// Longest string value in a JSON preview, in characters.
const STRING_CHARS: usize = 24;
/// Longest prefix shown of a body that is not JSON, in bytes.
const RAW_PREVIEW_BYTES: usize = 60;
/// Longest reason shown, in characters.
const REASON_CHARS: usize = 300;
/// Longest id or queue name shown, in characters.
const NAME_CHARS: usize = 140;
/// Field names (lower case) whose values are secret in any JSON body.
const SECRET_WORDS: [&str; 5] = [
    "password",
    "secret",
    "passphrase",
    "private_key",
    "pkcs12_base64",
];
/// Words after which a body that is not JSON is not shown.
const SECRET_MARKERS: [&str; 6] = [
    "password",
    "passwort",
    "secret",
    "private",
    "pkcs12",
    "passphrase",
];
/// `x-delivery-count` from which `list` warns (RabbitMQ 4.0 to 4.2 drop at 20).
const DELIVERY_COUNT_WARNING: i64 = 15;
/// Bound on every broker operation.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// `dtrust-worker dead ...`
#[derive(Debug, clap::Subcommand)]
pub enum DeadCommand {
    /// Show what sits in `{p}.dead`: position, job id, the queue it came from, the
    /// reason, size and a preview without secrets. Nothing is removed.
    List(ListArgs),
    /// Republish chosen dead letters to `{p}.jobs` with the routing key they had; each is
    /// removed from `{p}.dead` only after the broker confirmed the copy.
    Replay(ReplayArgs),
}

/// `dead list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Show at most this many (from the head of the queue).
    #[arg(long, env = "DTRUST_DEAD_LIMIT", default_value_t = 100)]
    pub limit: usize,
    /// One JSON document instead of text.
    #[arg(long, env = "DTRUST_DEAD_JSON")]
    pub json: bool,
}

/// `dead replay`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("choice").required(true).args(["job_id", "all"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Replay the dead letters of this job (its body's `job_id`, or its `message_id`);
    /// repeat for more.
    #[arg(
        long = "job-id",
        value_name = "ID",
        env = "DTRUST_DEAD_JOB_IDS",
        value_delimiter = ','
    )]
    pub job_id: Vec<String>,
    /// Replay every dead letter whose route is known.
    #[arg(long, env = "DTRUST_DEAD_ALL", conflicts_with = "job_id")]
    pub all: bool,
    /// Say what would be replayed; change nothing.
    #[arg(long, env = "DTRUST_DEAD_DRY_RUN")]
    pub dry_run: bool,
}

/// Why a `dead` command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// The bundle named for the prefix cannot be read.
    #[error(
        "the bundle `{path}` cannot be used to find the prefix; pass --prefix instead. {report}"
    )]
    Bundle {
        /// The bundle's path.
        path: String,
        /// Its problems.
        report: String,
    },
    /// The prefix is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No connection to the broker.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The queue `{p}.dead` does not exist.
    #[error("the queue `{0}` does not exist: check --prefix (the worker declares it at start-up)")]
    NoQueue(String),
    /// The exchange `{p}.jobs` does not exist.
    #[error(
        "the exchange `{0}` does not exist: check --prefix (the worker declares it at start-up)"
    )]
    NoExchange(String),
    /// The broker refused an operation or the connection failed.
    #[error("{what} failed: {detail}")]
    Broker {
        /// What was being done.
        what: String,
        /// What the client library said.
        detail: String,
    },
    /// The output could not be written.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

fn broker(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> DeadError {
    let what = what.into();
    move |e| DeadError::Broker {
        what,
        detail: e.to_string(),
    }
}

async fn bounded<T>(
    what: &str,
    future: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, DeadError> {
    match tokio::time::timeout(BROKER_TIMEOUT, future).await {
        Ok(result) => result.map_err(broker(what)),
        Err(_) => Err(DeadError::Broker {
            what: what.to_owned(),
            detail: format!("no answer from the broker within {BROKER_TIMEOUT:?}"),
        }),
    }
}

/// Runs `dead list` or `dead replay`; errors go to standard error.
pub(super) fn run(command: DeadCommand, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let runtime = super::runtime()?;
    let result = runtime.block_on(async {
        match command {
            DeadCommand::List(args) => list(&args, out).await,
            DeadCommand::Replay(args) => replay(&args, out).await,
        }
    });
    match result {
        Ok(code) => Ok(code),
        Err(DeadError::Output(e)) => Err(e),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

impl BrokerArgs {
    /// `--prefix`, else the bundle's `amqp.prefix`, else `dtrust`.
    fn names(&self) -> Result<Names, DeadError> {
        let prefix = self.prefix().map_err(|(path, report)| DeadError::Bundle {
            path: path.display().to_string(),
            report: report.to_string(),
        })?;
        let config = TransportConfig::new(self.amqp.amqp_url.clone(), prefix.clone());
        config.validate()?;
        Ok(Names::new(&prefix))
    }

    async fn connect(&self, names: &Names, verb: &str) -> Result<Connection, DeadError> {
        let mut config = TransportConfig::new(self.amqp.amqp_url.clone(), names.prefix.clone());
        config.connection_name = Some(format!("{} (dead {verb})", default_connection_name()));
        Ok(open(&config).await?)
    }
}

fn short(value: &str) -> Result<ShortString, DeadError> {
    ShortString::try_new(value).map_err(|_| DeadError::Broker {
        what: format!("using the name `{}`", clean(value, NAME_CHARS)),
        detail: "longer than AMQP's 255 bytes".to_owned(),
    })
}

/// The number of ready messages in `{p}.dead`, by a passive declaration on a channel
/// of its own (a missing queue closes the channel).
async fn dead_count(connection: &Connection, names: &Names) -> Result<u32, DeadError> {
    let channel = bounded("opening a channel", connection.create_channel()).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = tokio::time::timeout(
        BROKER_TIMEOUT,
        channel.queue_declare(short(&names.dead_queue)?, passive, FieldTable::default()),
    )
    .await;
    let count = match declared {
        Ok(Ok(queue)) => queue.message_count(),
        Ok(Err(e)) if is_not_found(&e) => return Err(DeadError::NoQueue(names.dead_queue.clone())),
        Ok(Err(e)) => return Err(broker(format!("looking up `{}`", names.dead_queue))(e)),
        Err(_) => {
            return Err(DeadError::Broker {
                what: format!("looking up `{}`", names.dead_queue),
                detail: format!("no answer from the broker within {BROKER_TIMEOUT:?}"),
            })
        }
    };
    close_channel(&channel).await;
    Ok(count)
}

/// Waits (at most 5 s: another reader may be taking messages meanwhile) until `{p}.dead` shows at least `want` ready
/// messages again. Messages given back with `basic.nack` are unacknowledged, not
/// ready, until the broker has requeued them (on quorum queues a moment later), so a
/// command run right after this one would otherwise see fewer, or none.
async fn await_requeued(connection: &Connection, names: &Names, want: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match dead_count(connection, names).await {
            Ok(count) if count < want => tokio::time::sleep(Duration::from_millis(20)).await,
            // Back (or more: new dead letters), or the count cannot be read: done.
            _ => return,
        }
    }
}

/// Whether `{p}.jobs` exists (a passive declaration on a channel of its own).
async fn check_jobs_exchange(connection: &Connection, names: &Names) -> Result<(), DeadError> {
    let channel = bounded("opening a channel", connection.create_channel()).await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let declared = tokio::time::timeout(
        BROKER_TIMEOUT,
        channel.exchange_declare(
            short(&names.jobs)?,
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    match declared {
        Ok(Ok(())) => {
            close_channel(&channel).await;
            Ok(())
        }
        Ok(Err(e)) if is_not_found(&e) => Err(DeadError::NoExchange(names.jobs.clone())),
        Ok(Err(e)) => Err(broker(format!("looking up `{}`", names.jobs))(e)),
        Err(_) => Err(DeadError::Broker {
            what: format!("looking up `{}`", names.jobs),
            detail: format!("no answer from the broker within {BROKER_TIMEOUT:?}"),
        }),
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

async fn close_channel(channel: &Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(BROKER_TIMEOUT, channel.close(200, "done".into())).await;
    }
}

/// A channel that takes dead letters one by one and holds them until they are
/// acknowledged or, at the end, all returned.
struct Reader {
    channel: Channel,
    queue: ShortString,
    /// The delivery tags taken and not acknowledged.
    held: BTreeSet<u64>,
    /// Messages removed (acknowledged) so far.
    removed: u32,
}

impl Reader {
    async fn open(connection: &Connection, names: &Names) -> Result<Reader, DeadError> {
        Ok(Reader {
            channel: bounded("opening a channel", connection.create_channel()).await?,
            queue: short(&names.dead_queue)?,
            held: BTreeSet::new(),
            removed: 0,
        })
    }

    async fn next(&mut self) -> Result<Option<BasicGetMessage>, DeadError> {
        let got = bounded(
            "taking a message from the dead-letter queue",
            self.channel
                .basic_get(self.queue.clone(), BasicGetOptions { no_ack: false }),
        )
        .await?;
        if let Some(message) = &got {
            self.held.insert(message.delivery.delivery_tag);
        }
        Ok(got)
    }

    /// Removes one message (after its copy was confirmed).
    async fn remove(&mut self, tag: u64) -> Result<(), DeadError> {
        bounded(
            "removing the replayed message from the dead-letter queue",
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: false }),
        )
        .await?;
        self.held.remove(&tag);
        self.removed += 1;
        Ok(())
    }

    /// Returns every message still held, in their order, and closes the channel. One
    /// `basic.nack` with `multiple` up to the highest tag still held covers exactly the
    /// held ones (a tag already acknowledged would make the broker refuse it).
    async fn return_all(self) -> Result<(), DeadError> {
        let result = match self.held.last() {
            Some(&tag) if self.channel.status().connected() => {
                bounded(
                    "returning the messages to the dead-letter queue",
                    self.channel.basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    ),
                )
                .await
            }
            // A closed channel: the broker has returned them already.
            _ => Ok(()),
        };
        let closed = if self.channel.status().connected() {
            tokio::time::timeout(BROKER_TIMEOUT, self.channel.close(200, "done".into()))
                .await
                .is_ok_and(|r| r.is_ok())
        } else {
            self.held.is_empty()
        };
        if !closed {
            eprintln!(
                "warning: the channel that held the dead letters did not close cleanly; the \
                 broker returns every message not removed to {} itself",
                self.queue
            );
        }
        result
    }
}

/// What one dead letter is, as shown and as replayed.
#[derive(Debug, Clone, PartialEq)]
struct Letter {
    position: usize,
    job_id: Option<String>,
    message_id: Option<String>,
    /// The queue it was dead-lettered from, when recorded.
    origin: Option<String>,
    reason: String,
    size: usize,
    delivery_count: Option<i64>,
    preview: String,
    /// The routing key on `{p}.jobs`, or why there is none.
    route: Result<&'static str, String>,
}

impl Letter {
    fn inspect(
        names: &Names,
        position: usize,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Letter {
        let headers = properties.headers().as_ref();
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let origin = origin(headers);
        Letter {
            position,
            job_id: json
                .as_ref()
                .and_then(|v| v.get("job_id"))
                .and_then(Value::as_str)
                .map(|s| clean(s, NAME_CHARS)),
            message_id: properties
                .message_id()
                .as_ref()
                .map(|s| clean(s.as_str(), NAME_CHARS)),
            reason: reason(headers),
            size: body.len(),
            delivery_count: header(headers, "x-delivery-count").and_then(as_i64),
            preview: preview(body, json.as_ref()),
            route: route(names, origin.as_deref(), json.as_ref()),
            origin: origin.map(|q| clean(&q, NAME_CHARS)),
        }
    }

    /// Whether `--job-id` chose it: by the body's `job_id`, else its `message_id`.
    fn matches(&self, ids: &BTreeSet<String>) -> Option<String> {
        [&self.job_id, &self.message_id]
            .into_iter()
            .flatten()
            .find(|id| ids.contains(id.as_str()))
            .cloned()
    }

    fn id(&self) -> String {
        match (&self.job_id, &self.message_id) {
            (Some(job), _) => format!("job_id {job}"),
            (None, Some(message)) => format!("message_id {message}"),
            (None, None) => "no job_id".to_owned(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "position": self.position,
            "job_id": self.job_id,
            "message_id": self.message_id,
            "queue": self.origin,
            "reason": self.reason,
            "size": self.size,
            "delivery_count": self.delivery_count,
            "replay_routing_key": self.route.as_ref().ok(),
            "not_replayable": self.route.as_ref().err(),
            "preview": self.preview,
        })
    }
}

fn header<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers?.inner().get(name)
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

fn as_i64(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        _ => None,
    }
}

fn text_header(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    header(headers, name)
        .and_then(as_text)
        .filter(|s| !s.is_empty())
}

/// The oldest entry of RabbitMQ's `x-death` (it lists the most recent first).
fn first_death(headers: Option<&FieldTable>) -> Option<&FieldTable> {
    match header(headers, "x-death")? {
        AMQPValue::FieldArray(entries) => entries.as_slice().iter().rev().find_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// The queue a dead letter came from: the worker's header, else RabbitMQ's.
fn origin(headers: Option<&FieldTable>) -> Option<String> {
    text_header(headers, QUEUE_HEADER)
        .or_else(|| text_header(headers, "x-first-death-queue"))
        .or_else(|| first_death(headers).and_then(|t| text_header(Some(t), "queue")))
}

/// Why it is dead: the worker's `x-dtrust-error`, else RabbitMQ's first death.
fn reason(headers: Option<&FieldTable>) -> String {
    if let Some(error) = text_header(headers, ERROR_HEADER) {
        return clean(&error, REASON_CHARS);
    }
    let death = first_death(headers);
    let why = text_header(headers, "x-first-death-reason")
        .or_else(|| death.and_then(|t| text_header(Some(t), "reason")));
    let queue = text_header(headers, "x-first-death-queue")
        .or_else(|| death.and_then(|t| text_header(Some(t), "queue")));
    let Some(why) = why else {
        return "unknown (no x-dtrust-error and no x-death header)".to_owned();
    };
    let what = match why.as_str() {
        "delivery_limit" => "delivery limit reached".to_owned(),
        "rejected" => "rejected by a consumer without requeue".to_owned(),
        "expired" => "message TTL expired".to_owned(),
        "maxlen" => "queue length limit exceeded".to_owned(),
        other => format!("dead-lettered by the broker ({other})"),
    };
    let text = match queue {
        Some(queue) => format!("{what} in {queue}"),
        None => what,
    };
    clean(&text, REASON_CHARS)
}

/// The routing key on `{p}.jobs` that brings the message back to where it died.
fn route(
    names: &Names,
    origin: Option<&str>,
    body: Option<&Value>,
) -> Result<&'static str, String> {
    if let Some(queue) = origin {
        return if queue == names.issue {
            Ok(keys::ISSUE)
        } else if queue == names.revoke {
            Ok(keys::REVOKE)
        } else {
            Err(format!(
                "it came from `{}`, not from a job queue of prefix `{}`",
                clean(queue, NAME_CHARS),
                names.prefix
            ))
        };
    }
    let Some(body) = body else {
        return Err("the queue it came from is not recorded and the body is not JSON".to_owned());
    };
    if body.get("status").is_some() {
        return Err("it is a result message, not a job".to_owned());
    }
    match body.get("kind").and_then(Value::as_str) {
        Some("issue") => Ok(keys::ISSUE),
        Some("revoke") => Ok(keys::REVOKE),
        _ => Err(
            "the queue it came from is not recorded and the body has no `kind` of issue or revoke"
                .to_owned(),
        ),
    }
}

/// Replaces the value of every field whose name says it is secret, at any depth.
fn mask(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| key.contains(w)) {
                    *field = Value::String("[redacted]".to_owned());
                } else {
                    mask(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

/// Cuts every long string value (a CSR, a certificate) to its start, so that a
/// preview shows the fields rather than one of them.
fn shorten(value: &mut Value) {
    match value {
        Value::String(text) if text.chars().count() > STRING_CHARS => {
            let total = text.chars().count();
            let start: String = text.chars().take(STRING_CHARS).collect();
            *text = format!("{start}…({total} chars)");
        }
        Value::Object(map) => map.values_mut().for_each(shorten),
        Value::Array(items) => items.iter_mut().for_each(shorten),
        _ => {}
    }
}

/// A short preview without secrets.
fn preview(body: &[u8], json: Option<&Value>) -> String {
    if let Some(value) = json {
        let mut masked = value.clone();
        mask(&mut masked);
        shorten(&mut masked);
        return clean(&masked.to_string(), PREVIEW_CHARS);
    }
    let shown = &body[..body.len().min(RAW_PREVIEW_BYTES)];
    let lower = shown.to_ascii_lowercase();
    let cut = SECRET_MARKERS
        .iter()
        .filter_map(|m| {
            lower
                .windows(m.len())
                .position(|w| w == m.as_bytes())
                .map(|at| at + m.len())
        })
        .min();
    let (shown, tail) = match cut {
        Some(cut) => (&shown[..cut], "…[rest hidden: it may hold a secret]"),
        None if body.len() > shown.len() => (shown, "…"),
        None => (shown, ""),
    };
    let escaped: String = shown
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    format!("{} bytes, not JSON: \"{escaped}\"{tail}", body.len())
}

/// `text` with control characters escaped, at most `max` characters.
fn clean(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The properties of the replayed copy: persistent, the original's content type,
/// ids, `reply_to`, timestamp, type, app id, priority and application headers; not its
/// death headers, expiration or user id.
fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(
            original
                .content_type()
                .clone()
                .unwrap_or_else(|| crate::transport::publish::JSON.into()),
        );
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        properties = properties.with_reply_to(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        properties = properties.with_app_id(v.clone());
    }
    if let Some(v) = original.priority() {
        properties = properties.with_priority(*v);
    }
    if let Some(headers) = original.headers() {
        let mut kept = FieldTable::default();
        for (name, value) in headers.inner() {
            let n = name.as_str();
            let death = DEATH_HEADERS.contains(&n)
                || DEATH_HEADER_PREFIXES.iter().any(|p| n.starts_with(p));
            if !death {
                kept.insert(name.clone(), value.clone());
            }
        }
        if !kept.inner().is_empty() {
            properties = properties.with_headers(kept);
        }
    }
    properties
}

async fn list(args: &ListArgs, out: &mut dyn Write) -> Result<ExitCode, DeadError> {
    let names = args.broker.names()?;
    let connection = args.broker.connect(&names, "list").await?;
    let result = list_on(&connection, &names, args, out).await;
    close_quietly(&connection, BROKER_TIMEOUT).await;
    result
}

async fn list_on(
    connection: &Connection,
    names: &Names,
    args: &ListArgs,
    out: &mut dyn Write,
) -> Result<ExitCode, DeadError> {
    let total = dead_count(connection, names).await?;
    let bound = args.limit.min(usize::try_from(total).unwrap_or(usize::MAX));
    let mut reader = Reader::open(connection, names).await?;
    let mut letters = Vec::new();
    let taken = async {
        while letters.len() < bound {
            let Some(message) = reader.next().await? else {
                break;
            };
            let d = &message.delivery;
            letters.push(Letter::inspect(
                names,
                letters.len() + 1,
                &d.data,
                &d.properties,
            ));
        }
        Ok::<(), DeadError>(())
    }
    .await;
    // Return everything whatever happened, then report.
    let returned = reader.return_all().await;
    await_requeued(connection, names, total).await;
    taken?;
    returned?;

    if args.json {
        let document = json!({
            "queue": names.dead_queue,
            "total": total,
            "shown": letters.len(),
            "messages": letters.iter().map(Letter::to_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{document}")?;
    } else {
        print_list(names, total, &letters, out)?;
    }
    if let Some(highest) = letters.iter().filter_map(|l| l.delivery_count).max() {
        if highest >= DELIVERY_COUNT_WARNING {
            eprintln!(
                "warning: a message in {} has been returned {highest} times \
                 (x-delivery-count); RabbitMQ 4.0 to 4.2 drop quorum-queue messages returned 20 \
                 times unless a policy sets `delivery-limit` for this queue: set one \
                 (-1 = unlimited) before listing it again",
                names.dead_queue
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(
    names: &Names,
    total: u32,
    letters: &[Letter],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if total == 0 {
        writeln!(out, "{} is empty", names.dead_queue)?;
        return Ok(());
    }
    write!(out, "{} holds {total} message(s)", names.dead_queue)?;
    if letters.len() < usize::try_from(total).unwrap_or(usize::MAX) {
        write!(out, "; the first {} (--limit shows more)", letters.len())?;
    }
    writeln!(out, "; nothing was removed")?;
    for l in letters {
        let id = match (&l.job_id, &l.message_id) {
            (Some(job), Some(message)) if job != message => {
                format!("job_id {job}, message_id {message}")
            }
            _ => l.id(),
        };
        writeln!(
            out,
            "#{:<4} {id}  from {}  {} bytes",
            l.position,
            l.origin.as_deref().unwrap_or("(queue not recorded)"),
            l.size
        )?;
        writeln!(out, "      reason: {}", l.reason)?;
        match &l.route {
            Ok(key) => writeln!(out, "      replay: to {} with key `{key}`", names.jobs)?,
            Err(why) => writeln!(out, "      replay: not possible: {why}")?,
        }
        writeln!(out, "      body: {}", l.preview)?;
    }
    Ok(())
}

/// Counts of one `replay` run.
#[derive(Debug, Default)]
struct Tally {
    replayed: usize,
    would: usize,
    left: usize,
    skipped: usize,
}

/// One `replay` run: what to choose, where to publish, what happened.
struct Replay<'a> {
    names: &'a Names,
    args: &'a ReplayArgs,
    wanted: BTreeSet<String>,
    found: BTreeSet<String>,
    /// The confirming channel; none for `--dry-run`.
    publisher: Option<Channel>,
    exchange: ShortString,
    tally: Tally,
}

impl Replay<'_> {
    /// Whether `--all` or `--job-id` chose it.
    fn chooses(&mut self, letter: &Letter) -> bool {
        if self.args.all {
            return true;
        }
        match letter.matches(&self.wanted) {
            Some(id) => {
                self.found.insert(id);
                true
            }
            None => false,
        }
    }

    /// Handles one message taken from `{p}.dead`: replays it (and removes it once the
    /// copy is confirmed), or leaves it held for the final return. An error stops the
    /// run; what is held is then returned.
    async fn handle(
        &mut self,
        reader: &mut Reader,
        message: BasicGetMessage,
        position: usize,
        out: &mut dyn Write,
    ) -> Result<(), DeadError> {
        let delivery = message.delivery;
        let letter = Letter::inspect(self.names, position, &delivery.data, &delivery.properties);
        if !self.chooses(&letter) {
            self.tally.skipped += 1;
            return Ok(());
        }
        let (id, jobs) = (letter.id(), &self.names.jobs);
        let key = match &letter.route {
            Ok(key) => *key,
            Err(why) => {
                self.tally.left += 1;
                writeln!(
                    out,
                    "left     #{position} {id} ({}): cannot be routed: {why}",
                    letter.reason
                )?;
                return Ok(());
            }
        };
        let Some(channel) = &self.publisher else {
            self.tally.would += 1;
            writeln!(out, "would replay #{position} {id} to {jobs} (key `{key}`)")?;
            return Ok(());
        };
        let properties = &delivery.properties;
        match republish(channel, &self.exchange, key, &delivery.data, properties).await {
            Republished::Confirmed => {}
            Republished::Refused(why) => {
                self.tally.left += 1;
                writeln!(out, "left     #{position} {id}: {why}")?;
                return Ok(());
            }
            Republished::Broken(why) => {
                self.tally.left += 1;
                writeln!(out, "left     #{position} {id}: {why}")?;
                return Err(DeadError::Broker {
                    what: "replaying".to_owned(),
                    detail: format!(
                        "{why}; stopped: every message not replayed stays in {}",
                        self.names.dead_queue
                    ),
                });
            }
        }
        self.tally.replayed += 1;
        if let Err(e) = reader.remove(delivery.delivery_tag).await {
            writeln!(
                out,
                "replayed #{position} {id} to {jobs} (key `{key}`), but it is still in {}: {e}. \
                 Replaying it again runs the job again (the worker answers a repeated job_id \
                 from its store)",
                self.names.dead_queue
            )?;
            return Err(e);
        }
        writeln!(out, "replayed #{position} {id} to {jobs} (key `{key}`)")?;
        Ok(())
    }
}

async fn replay(args: &ReplayArgs, out: &mut dyn Write) -> Result<ExitCode, DeadError> {
    let names = args.broker.names()?;
    let connection = args.broker.connect(&names, "replay").await?;
    let result = replay_on(&connection, &names, args, out).await;
    close_quietly(&connection, BROKER_TIMEOUT).await;
    result
}

async fn replay_on(
    connection: &Connection,
    names: &Names,
    args: &ReplayArgs,
    out: &mut dyn Write,
) -> Result<ExitCode, DeadError> {
    let total = dead_count(connection, names).await?;
    check_jobs_exchange(connection, names).await?;
    let publisher = if args.dry_run {
        None
    } else {
        let channel = bounded("opening a channel", connection.create_channel()).await?;
        bounded(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Some(channel)
    };
    let mut run = Replay {
        names,
        args,
        wanted: args.job_id.iter().cloned().collect(),
        found: BTreeSet::new(),
        publisher,
        exchange: short(&names.jobs)?,
        tally: Tally::default(),
    };
    let mut reader = Reader::open(connection, names).await?;
    let bound = usize::try_from(total).unwrap_or(usize::MAX);
    let scanned = async {
        for position in 1..=bound {
            let Some(message) = reader.next().await? else {
                break;
            };
            run.handle(&mut reader, message, position, out).await?;
        }
        Ok::<(), DeadError>(())
    }
    .await;
    // Return what was not removed whatever happened, then report.
    let removed = reader.removed;
    let returned = reader.return_all().await;
    await_requeued(connection, names, total.saturating_sub(removed)).await;
    if let Some(channel) = &run.publisher {
        close_channel(channel).await;
    }
    let missing: Vec<&String> = run.wanted.difference(&run.found).collect();
    for id in &missing {
        writeln!(
            out,
            "not found: no message in {} has job_id or message_id `{}`",
            names.dead_queue,
            clean(id, NAME_CHARS)
        )?;
    }
    let Tally {
        replayed,
        would,
        left,
        skipped,
    } = run.tally;
    if args.dry_run {
        writeln!(
            out,
            "dry run: {would} would be replayed, {left} cannot be, {skipped} not chosen; \
             nothing was changed"
        )?;
    } else {
        writeln!(
            out,
            "{replayed} replayed, {left} left in {} (not routable), {skipped} not chosen and \
             left in place",
            names.dead_queue
        )?;
    }
    scanned?;
    returned?;
    Ok(if left == 0 && missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the broker did with a republished message.
enum Republished {
    /// A queue took it: the dead letter may go.
    Confirmed,
    /// Returned (no queue bound) or refused: nothing was stored; the dead letter stays.
    Refused(String),
    /// The channel failed or timed out: the copy may or may not be stored.
    Broken(String),
}

async fn republish(
    channel: &Channel,
    exchange: &ShortString,
    key: &str,
    body: &[u8],
    original: &BasicProperties,
) -> Republished {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let published = tokio::time::timeout(BROKER_TIMEOUT, async {
        let confirm = channel
            .basic_publish(
                exchange.clone(),
                key.into(),
                options,
                body,
                replay_properties(original),
            )
            .await?;
        confirm.await
    })
    .await;
    match published {
        Ok(Ok(Confirmation::Ack(None))) => Republished::Confirmed,
        Ok(Ok(Confirmation::Ack(Some(returned)))) => Republished::Refused(format!(
            "the broker returned it: no queue is bound to {exchange} for key `{key}` ({} {})",
            returned.reply_code,
            clean(returned.reply_text.as_str(), NAME_CHARS)
        )),
        Ok(Ok(Confirmation::Nack(_))) => {
            Republished::Refused("the broker refused the copy (nack)".to_owned())
        }
        Ok(Ok(Confirmation::NotRequested)) => {
            Republished::Broken("the channel is not in confirm mode".to_owned())
        }
        Ok(Err(e)) => Republished::Broken(format!(
            "publishing failed ({e}); the copy may or may not have arrived"
        )),
        Err(_) => Republished::Broken(format!(
            "no confirm within {BROKER_TIMEOUT:?}; the copy may or may not have arrived"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text.as_bytes()))
    }

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let body = json!({"job_id": "j", "revocation_password": "Top-Secret-1",
            "nested": [{"pkcs12_password": "p12-pw", "p12Password": 42}], "csr_pem": "-----BEGIN"});
        let shown = preview(body.to_string().as_bytes(), Some(&body));
        assert!(!shown.contains("Top-Secret-1"), "{shown}");
        assert!(!shown.contains("p12-pw"), "{shown}");
        assert!(!shown.contains("42"), "{shown}");
        assert!(shown.contains("\"job_id\":\"j\""), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let long = json!({"csr_pem": "x".repeat(5000), "job_id": "j", "revocation_password": "pw"});
        let shown = preview(long.to_string().as_bytes(), Some(&long));
        assert!(shown.contains("…(5000 chars)"), "{shown}");
        assert!(
            shown.contains(r#""revocation_password":"[redacted]""#),
            "{shown}"
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_escaped_short_and_cut_before_secrets() {
        let shown = preview(b"\x00\x01 not json\n\x1b[31m", None);
        assert!(
            shown.starts_with("17 bytes, not JSON: \"\\x00\\x01 not json\\n\\x1b[31m\""),
            "{shown}"
        );
        assert!(!shown.contains('\x1b'));
        let long = vec![b'['; 5000];
        let shown = preview(&long, None);
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with('…'));
        let broken = br#"{"job_id":"x","revocation_password":"Hidden-pw-1","#;
        let shown = preview(broken, None);
        assert!(!shown.contains("Hidden-pw-1"), "{shown}");
        assert!(shown.contains("rest hidden"), "{shown}");
    }

    #[test]
    fn the_route_comes_from_the_queue_else_the_body() {
        let n = Names::new("p");
        assert_eq!(route(&n, Some("p.issue"), None), Ok("issue"));
        assert_eq!(route(&n, Some("p.revoke"), None), Ok("revoke"));
        assert!(route(&n, Some("p.keyarchive.replies"), None).is_err());
        assert!(route(&n, Some("other.issue"), None).is_err());
        assert_eq!(
            route(&n, None, Some(&json!({"kind": "revoke"}))),
            Ok("revoke")
        );
        assert!(route(
            &n,
            None,
            Some(&json!({"kind": "issue", "status": "failed"}))
        )
        .is_err());
        assert!(route(&n, None, Some(&json!({"kind": "other"}))).is_err());
        assert!(route(&n, None, None).is_err());
    }

    #[test]
    fn reasons_come_from_the_worker_else_from_rabbitmq() {
        let worker = table(&[
            (ERROR_HEADER, s("the message is not JSON")),
            (QUEUE_HEADER, s("p.issue")),
        ]);
        assert_eq!(reason(Some(&worker)), "the message is not JSON");
        assert_eq!(origin(Some(&worker)).as_deref(), Some("p.issue"));
        let rabbit = table(&[
            ("x-first-death-reason", s("delivery_limit")),
            ("x-first-death-queue", s("p.issue")),
        ]);
        assert_eq!(reason(Some(&rabbit)), "delivery limit reached in p.issue");
        assert_eq!(origin(Some(&rabbit)).as_deref(), Some("p.issue"));
        let mut deaths = FieldArray::default();
        deaths.push(AMQPValue::FieldTable(table(&[
            ("reason", s("expired")),
            ("queue", s("p.revoke")),
        ])));
        deaths.push(AMQPValue::FieldTable(table(&[
            ("reason", s("rejected")),
            ("queue", s("p.issue")),
        ])));
        let only_x_death = table(&[("x-death", AMQPValue::FieldArray(deaths))]);
        assert_eq!(
            reason(Some(&only_x_death)),
            "rejected by a consumer without requeue in p.issue"
        );
        assert_eq!(origin(Some(&only_x_death)).as_deref(), Some("p.issue"));
        assert!(reason(None).starts_with("unknown"));
        assert_eq!(origin(None), None);
    }

    #[test]
    fn header_values_cannot_drive_the_terminal() {
        let evil = table(&[(ERROR_HEADER, s("bad\x1b[2J\r\nline"))]);
        let shown = reason(Some(&evil));
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(clean(&"x".repeat(500), 10).chars().count(), 11);
    }

    #[test]
    fn a_replayed_copy_keeps_ids_and_application_headers_but_no_death_headers() {
        let original = BasicProperties::default()
            .with_delivery_mode(1)
            .with_message_id("m".into())
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_expiration("100".into())
            .with_user_id("someone".into())
            .with_headers(table(&[
                (ERROR_HEADER, s("why")),
                (QUEUE_HEADER, s("p.issue")),
                ("x-first-death-queue", s("p.issue")),
                ("x-death", AMQPValue::FieldArray(FieldArray::default())),
                ("x-delivery-count", AMQPValue::LongLongInt(3)),
                ("trace", s("keep-me")),
            ]));
        let copy = replay_properties(&original);
        assert_eq!(*copy.delivery_mode(), Some(2));
        assert_eq!(
            copy.message_id().as_ref().map(ShortString::as_str),
            Some("m")
        );
        assert_eq!(
            copy.correlation_id().as_ref().map(ShortString::as_str),
            Some("c")
        );
        assert_eq!(copy.reply_to().as_ref().map(ShortString::as_str), Some("r"));
        assert_eq!(
            copy.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert!(copy.expiration().is_none());
        assert!(copy.user_id().is_none());
        let headers = copy.headers().as_ref().expect("application headers kept");
        assert_eq!(
            headers
                .inner()
                .keys()
                .map(ShortString::as_str)
                .collect::<Vec<_>>(),
            ["trace"]
        );
    }

    #[test]
    fn job_ids_choose_by_body_then_message_id() {
        let n = Names::new("p");
        let props = BasicProperties::default().with_message_id("mid-1".into());
        let letter = Letter::inspect(&n, 1, br#"{"job_id":"j-1","kind":"issue"}"#, &props);
        let ids: BTreeSet<String> = ["mid-1".to_owned()].into();
        assert_eq!(letter.matches(&ids).as_deref(), Some("mid-1"));
        let ids: BTreeSet<String> = ["j-1".to_owned()].into();
        assert_eq!(letter.matches(&ids).as_deref(), Some("j-1"));
        assert_eq!(letter.route, Ok("issue"));
        let ids: BTreeSet<String> = ["j-2".to_owned()].into();
        assert_eq!(letter.matches(&ids), None);
    }
}
