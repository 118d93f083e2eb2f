//! A Certificate Manager (CM) simulator, reached as the worker reaches a real one: through
//! the key-archive messages of `shared/contract/messages.md` ("Key archive").
//!
//! [`CmSim::start`] connects to the test broker ([`amqp_url`]), declares the worker's
//! topology for the prefix (idempotently, so it may start before or after the worker; a
//! worker with another delivery limit only needs to have started first), and consumes `{p}.keyarchive.requests` with manual acks (prefetch 8). Replies go to
//! the `{p}.keyarchive` exchange with routing keys `generated` / `imported`:
//! persistent, `application/json`, `correlation_id` = `job_id`, `mandatory`, each
//! awaited for its publisher confirm (an unroutable or unconfirmed reply is recorded in
//! [`CmState::errors`] and its request requeued).
//!
//! | request | what the simulator does |
//! |---|---|
//! | `generate` `{job_id, archive, token_procedure, subject, key_size, issuer_dn}` | really generates an RSA key pair of `key_size` bits (2048, 3072 or 4096), archives it with a dummy certificate whose issuer is `issuer_dn` (signed by a throw-away key), and answers `generated` `{job_id, csr_pem}` with a PKCS#10 request over the key (subject from `subject`). A second `generate` for the same job makes a second key pair, as a real CM would (counted in [`CmState::keys_generated`]). An unsupported key size or an unusable `issuer_dn` is a CM error: `generated` has no error form, so it stays silent and records it. |
//! | `import` `{job_id, archive, token_procedure_import, order_id, certificate_pem, chain_pem?}` | checks the certificate's public key against the archived key of `job_id`; replaces the dummy and answers `imported` `{job_id}`, or answers `{job_id, error: {code, message}}` with `UNKNOWN_JOB`, `ARCHIVE_MISMATCH`, `INVALID_CERTIFICATE` or `KEY_MISMATCH` |
//!
//! Every request is recorded in arrival order ([`CmState::requests`]) and checked against
//! the worker's own schemas (`keyarchive-generate`, `keyarchive-import`) and the
//! contract's properties (persistent, `application/json`, `correlation_id` = `job_id`).
//! A message that is too large, not JSON, schema-invalid or on an unknown routing key is
//! recorded in [`CmState::errors`], acked and not answered; a property that deviates is
//! recorded but the message is still answered. So a test can assert that the worker sent
//! exactly the contract: `assert!(cm.errors().is_empty())`. Answered CM errors
//! (`KEY_MISMATCH`, ...) are not in `errors()`: they are in [`CmState::replies`].
//!
//! [`CmBehaviour`] makes it fail or stay silent, also while it runs
//! ([`CmSim::set_behaviour`]). Private keys are never kept after the request is signed,
//! so they cannot be logged. The simulator does not reconnect: a lost connection ends
//! it (recorded in `errors()`). It stops on [`CmSim::shutdown`] or drop; its archive
//! ([`CmState`]) can outlive it and be handed to a restarted simulator
//! ([`CmSim::start_with_state`]).
//!
//! ```ignore
//! let cm = CmSim::start(&prefix, CmBehaviour::Normal).await;
//! // ... run the worker on `prefix` with a key-archive job ...
//! assert_eq!(cm.keys_generated("job-1"), 1);
//! assert!(cm.archived("job-1").unwrap().imported_cert_der.is_some());
//! cm.set_behaviour(CmBehaviour::fail_import("STORE_FULL", "the archive is full"));
//! ```

pub mod pkix;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dtrust_worker::job::schema::{Schemas, MAX_MESSAGE_BYTES};
use dtrust_worker::transport::lapin::message::Delivery;
use dtrust_worker::transport::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use dtrust_worker::transport::lapin::types::FieldTable;
use dtrust_worker::transport::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use dtrust_worker::transport::{keys, CancellationToken, Names, Topology, TopologyError};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::task::{JoinHandle, JoinSet};

use crate::broker::amqp_url;

/// How many requests the simulator works on at once (its prefetch).
pub const PREFETCH: u16 = 8;
/// How long a reply's publisher confirm may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How the simulated Certificate Manager behaves; settable at start and at run time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CmBehaviour {
    /// Like a working CM.
    #[default]
    Normal,
    /// Answers every `import` with `{job_id, error: {code, message}}` and imports
    /// nothing; `generate` works.
    FailImport {
        /// The CM's error code.
        code: String,
        /// The CM's error message.
        message: String,
    },
    /// Consumes, acks and carries out `generate` (the key pair is generated and
    /// archived) but never answers: a reply that is lost.
    SilentGenerate,
    /// Consumes, acks and carries out `import` (the certificate is imported when it
    /// matches) but never answers.
    SilentImport,
    /// Like `Normal`, but sends every reply twice (the worker must ignore a repeated
    /// `generated` / `imported`).
    DuplicateReplies,
    /// Behaves as `then`, waiting `delay_ms` before each reply.
    Delayed {
        /// Milliseconds to wait before replying.
        delay_ms: u64,
        /// The behaviour otherwise.
        then: Box<CmBehaviour>,
    },
}

impl CmBehaviour {
    /// [`CmBehaviour::FailImport`] with this code and message.
    pub fn fail_import(code: &str, message: &str) -> CmBehaviour {
        CmBehaviour::FailImport {
            code: code.to_string(),
            message: message.to_string(),
        }
    }

    /// This behaviour, waiting `delay_ms` before each reply.
    pub fn delayed(self, delay_ms: u64) -> CmBehaviour {
        CmBehaviour::Delayed {
            delay_ms,
            then: Box::new(self),
        }
    }

    /// The delay before replying (the sum of nested [`CmBehaviour::Delayed`]).
    pub fn delay(&self) -> Duration {
        match self {
            CmBehaviour::Delayed { delay_ms, then } => {
                Duration::from_millis(*delay_ms) + then.delay()
            }
            _ => Duration::ZERO,
        }
    }

    /// The behaviour without its delays.
    pub fn base(&self) -> &CmBehaviour {
        match self {
            CmBehaviour::Delayed { then, .. } => then.base(),
            other => other,
        }
    }
}

/// What the CM keeps for one job: the archived key (its public part) and certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// SubjectPublicKeyInfo DER of the archived key (the latest one, when `generate`
    /// came more than once).
    pub key_public_spki_der: Vec<u8>,
    /// The dummy certificate made with the key (issuer = the request's `issuer_dn`).
    pub dummy_cert_der: Vec<u8>,
    /// The real certificate, once imported.
    pub imported_cert_der: Option<Vec<u8>>,
    /// `archive` of the `generate` request.
    pub archive: String,
    /// `token_procedure` of the `generate` request.
    pub token_procedure: String,
    /// `token_procedure_import` of the successful `import`.
    pub token_procedure_import: Option<String>,
    /// `order_id` of the successful `import`.
    pub order_id: Option<String>,
    /// `chain_pem` of the successful `import`, when it had one.
    pub chain_pem: Option<String>,
    /// The key size in bits.
    pub key_size: u32,
    /// The `issuer_dn` of the `generate` request, as sent.
    pub issuer_dn: String,
}

/// Something the simulator could not answer, or a message that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmSimError {
    /// The routing key of the message it concerns (empty for the connection itself).
    pub routing_key: String,
    /// Its `job_id`, when it had a string one.
    pub job_id: Option<String>,
    /// What is wrong, without quoting secrets (there are none in these messages).
    pub message: String,
}

impl std::fmt::Display for CmSimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{} {}] {}",
            self.routing_key,
            self.job_id.as_deref().unwrap_or("-"),
            self.message
        )
    }
}

#[derive(Default)]
struct Inner {
    archive: HashMap<String, Archived>,
    keys_generated: HashMap<String, usize>,
    imports: HashMap<String, usize>,
    requests: Vec<(String, String)>,
    replies: Vec<(String, Value)>,
    errors: Vec<CmSimError>,
}

/// The simulator's records and archive. Cloning shares them; they outlive the
/// simulator that made them, so a restarted one can continue with the same archive.
#[derive(Clone, Default)]
pub struct CmState {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for CmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("CmState")
            .field("archived_jobs", &inner.archive.len())
            .field("requests", &inner.requests.len())
            .field("errors", &inner.errors)
            .finish()
    }
}

impl CmState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the records from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many key pairs were generated for `job_id` (a correct worker: at most 1).
    pub fn keys_generated(&self, job_id: &str) -> usize {
        self.lock().keys_generated.get(job_id).copied().unwrap_or(0)
    }

    /// How many valid `import` requests came for `job_id`, whatever their outcome.
    pub fn imports(&self, job_id: &str) -> usize {
        self.lock().imports.get(job_id).copied().unwrap_or(0)
    }

    /// What is archived for `job_id`.
    pub fn archived(&self, job_id: &str) -> Option<Archived> {
        self.lock().archive.get(job_id).cloned()
    }

    /// Every job id with an archived key.
    pub fn archived_jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = self.lock().archive.keys().cloned().collect();
        jobs.sort();
        jobs
    }

    /// Every request received, as (routing key, job_id) in arrival order; the job_id is
    /// empty when the message had no string `job_id`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    /// Every reply sent and confirmed, as (routing key, body), in order.
    pub fn replies(&self) -> Vec<(String, Value)> {
        self.lock().replies.clone()
    }

    /// Everything that could not be answered or broke the contract.
    pub fn errors(&self) -> Vec<CmSimError> {
        self.lock().errors.clone()
    }

    fn record_error(&self, routing_key: &str, job_id: Option<&str>, message: impl Into<String>) {
        self.lock().errors.push(CmSimError {
            routing_key: routing_key.to_string(),
            job_id: job_id.map(str::to_string),
            message: message.into(),
        });
    }
}

/// A running Certificate Manager simulator on one prefix.
pub struct CmSim {
    names: Names,
    state: CmState,
    behaviour: Arc<Mutex<CmBehaviour>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl CmSim {
    /// Starts a simulator on `prefix` with a fresh archive. Panics when the broker
    /// cannot be reached or the topology not declared (see [`CmSim::try_start`]).
    pub async fn start(prefix: &str, behaviour: CmBehaviour) -> CmSim {
        CmSim::start_with_state(prefix, behaviour, CmState::default()).await
    }

    /// Starts a simulator that continues with `state` (e.g. another simulator's
    /// [`CmSim::state`], to model a CM restart). Panics like [`CmSim::start`].
    pub async fn start_with_state(prefix: &str, behaviour: CmBehaviour, state: CmState) -> CmSim {
        CmSim::try_start(prefix, behaviour, state)
            .await
            .unwrap_or_else(|e| panic!("cannot start the CM simulator: {e}"))
    }

    /// Starts a simulator, or says why it cannot.
    pub async fn try_start(
        prefix: &str,
        behaviour: CmBehaviour,
        state: CmState,
    ) -> Result<CmSim, String> {
        let names = Names::new(prefix);
        let schemas = Schemas::load().map_err(|e| e.to_string())?;
        // The dummy certificates' signer: any key will do, its issuer name is what counts.
        let issuer_key =
            rcgen::KeyPair::generate().map_err(|e| format!("throw-away issuer key: {e}"))?;
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .map_err(|e| format!("no connection to the broker (is RabbitMQ running?): {e}"))?;
        declare_topology(&connection, &names).await?;
        let publish_channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm_select: {e}"))?;
        let consume_channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        consume_channel
            .basic_qos(PREFETCH, BasicQosOptions { global: false })
            .await
            .map_err(|e| format!("basic_qos: {e}"))?;
        let consumer = consume_channel
            .basic_consume(
                names.keyarchive_requests.as_str().into(),
                "cm-sim".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consume {}: {e}", names.keyarchive_requests))?;
        let behaviour = Arc::new(Mutex::new(behaviour));
        let cancel = CancellationToken::new();
        let context = Arc::new(Context {
            state: state.clone(),
            behaviour: behaviour.clone(),
            schemas,
            issuer_key: Arc::new(issuer_key),
            cancel: cancel.clone(),
            publisher: Publisher {
                channel: tokio::sync::Mutex::new(publish_channel),
                exchange: names.keyarchive.clone(),
            },
        });
        let task = tokio::spawn(run(
            connection,
            consume_channel,
            consumer,
            context,
            cancel.clone(),
        ));
        Ok(CmSim {
            names,
            state,
            behaviour,
            cancel,
            task: Some(task),
        })
    }

    /// The names of its prefix.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Changes the behaviour for the requests processed from now on.
    pub fn set_behaviour(&self, behaviour: CmBehaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> CmBehaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Its records and archive (shared, see [`CmState`]).
    pub fn state(&self) -> CmState {
        self.state.clone()
    }

    /// See [`CmState::keys_generated`].
    pub fn keys_generated(&self, job_id: &str) -> usize {
        self.state.keys_generated(job_id)
    }

    /// See [`CmState::imports`].
    pub fn imports(&self, job_id: &str) -> usize {
        self.state.imports(job_id)
    }

    /// See [`CmState::archived`].
    pub fn archived(&self, job_id: &str) -> Option<Archived> {
        self.state.archived(job_id)
    }

    /// See [`CmState::requests`].
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.requests()
    }

    /// See [`CmState::replies`].
    pub fn replies(&self) -> Vec<(String, Value)> {
        self.state.replies()
    }

    /// See [`CmState::errors`].
    pub fn errors(&self) -> Vec<CmSimError> {
        self.state.errors()
    }

    /// Waits until `done` holds for its state (checked every 20 ms), at most `timeout`;
    /// whether it held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&CmState) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.state) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops consuming, abandons the requests in progress (unacked, so the broker
    /// redelivers them to the next consumer, as after a CM crash), closes the
    /// connection, and waits for all of it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CmSim {
    /// Stops it as [`CmSim::shutdown`] does, without waiting.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Declares the worker's topology (delivery limit 5, as the test kit's job bus does).
/// A worker that runs with another delivery limit has declared its job queues with other
/// arguments: that conflict is no concern of the CM's, as long as the queue it consumes
/// exists (the worker declares everything, so it does).
async fn declare_topology(connection: &Connection, names: &Names) -> Result<(), String> {
    let declared = Topology::new(names.clone(), 5).declare(connection).await;
    let Err(error) = declared else {
        return Ok(());
    };
    if !matches!(error, TopologyError::Conflict { .. }) {
        return Err(error.to_string());
    }
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    let exists = channel
        .queue_declare(
            names.keyarchive_requests.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if channel.status().connected() {
        let _ = channel.close(200, "checked".into()).await;
    }
    if exists {
        Ok(())
    } else {
        Err(error.to_string())
    }
}

struct Context {
    state: CmState,
    behaviour: Arc<Mutex<CmBehaviour>>,
    schemas: Schemas,
    issuer_key: Arc<rcgen::KeyPair>,
    cancel: CancellationToken,
    publisher: Publisher,
}

impl Context {
    fn behaviour(&self) -> CmBehaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Publishes one reply at a time, so a returned (unroutable) message belongs to the
/// publish whose confirm carries it.
struct Publisher {
    channel: tokio::sync::Mutex<Channel>,
    exchange: String,
}

impl Publisher {
    async fn publish(&self, routing_key: &str, job_id: &str, body: &Value) -> Result<(), String> {
        let payload = serde_json::to_vec(body).map_err(|e| format!("serialize reply: {e}"))?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_correlation_id(job_id.into());
        let channel = self.channel.lock().await;
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &payload,
                properties,
            )
            .await
            .map_err(|e| format!("publish `{routing_key}`: {e}"))?;
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| format!("no confirm for `{routing_key}` within {CONFIRM_TIMEOUT:?}"))?
            .map_err(|e| format!("confirm of `{routing_key}`: {e}"))?;
        if !confirmation.is_ack() {
            return Err(format!("the broker refused (nack) `{routing_key}`"));
        }
        if confirmation.take_message().is_some() {
            return Err(format!(
                "`{routing_key}` was returned: no queue is bound for it on {}",
                self.exchange
            ));
        }
        Ok(())
    }
}

/// The consumer loop: records each request on arrival, works on it in a task of its
/// own (so a delay or a key generation does not hold up the others), and on
/// cancellation abandons the tasks and closes the connection.
async fn run(
    connection: Connection,
    consume_channel: Channel,
    mut consumer: dtrust_worker::transport::lapin::Consumer,
    context: Arc<Context>,
    cancel: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let routing_key = delivery.routing_key.to_string();
                    let body = parse_body(&delivery.data);
                    let job_id = body
                        .as_ref()
                        .ok()
                        .and_then(|v| v.get("job_id"))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    context
                        .state
                        .lock()
                        .requests
                        .push((routing_key.clone(), job_id.clone().unwrap_or_default()));
                    let context = context.clone();
                    tasks.spawn(async move {
                        handle(&context, delivery, routing_key, job_id, body).await;
                    });
                }
                Some(Err(e)) => {
                    if !cancel.is_cancelled() {
                        context.state.record_error("", None, format!("consumer failed: {e}"));
                    }
                    break;
                }
                None => {
                    if !cancel.is_cancelled() {
                        context.state.record_error("", None, "the consumer ended (connection lost?)");
                    }
                    break;
                }
            }
        }
    }
    tasks.shutdown().await;
    let _ = consume_channel.close(200, "cm-sim stopped".into()).await;
    let _ = connection.close(200, "cm-sim stopped".into()).await;
}

fn parse_body(data: &[u8]) -> Result<Value, String> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "the body has {} bytes, more than {MAX_MESSAGE_BYTES}",
            data.len()
        ));
    }
    serde_json::from_slice(data).map_err(|e| format!("the body is not JSON: {e}"))
}

/// What to do with a delivery once its request is dealt with.
enum Settle {
    Ack,
    /// The reply could not be published: let the broker deliver the request again.
    Requeue,
}

async fn handle(
    context: &Context,
    delivery: Delivery,
    routing_key: String,
    job_id: Option<String>,
    body: Result<Value, String>,
) {
    let state = &context.state;
    let job = job_id.as_deref();
    let settle = match body {
        Err(e) => {
            state.record_error(&routing_key, job, e);
            Settle::Ack
        }
        Ok(value) => {
            let schema = match routing_key.as_str() {
                keys::GENERATE => Some("keyarchive-generate"),
                keys::IMPORT => Some("keyarchive-import"),
                _ => None,
            };
            match schema.map(|s| context.schemas.check(s, &value)) {
                None => {
                    state.record_error(
                        &routing_key,
                        job,
                        format!(
                            "unknown routing key `{routing_key}` (expected `{}` or `{}`)",
                            keys::GENERATE,
                            keys::IMPORT
                        ),
                    );
                    Settle::Ack
                }
                Some(Err(errors)) => {
                    state.record_error(
                        &routing_key,
                        job,
                        format!("schema-invalid: {}", errors.join("; ")),
                    );
                    Settle::Ack
                }
                Some(Ok(())) => {
                    check_properties(state, &routing_key, job, &delivery.properties);
                    if routing_key == keys::GENERATE {
                        generate(context, value).await
                    } else {
                        import(context, value).await
                    }
                }
            }
        }
    };
    let settled = match settle {
        Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Settle::Requeue => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
    };
    if let Err(e) = settled {
        if !context.cancel.is_cancelled() {
            state.record_error(&routing_key, job, format!("ack failed: {e}"));
        }
    }
}

/// Records every property that deviates from the contract: persistent,
/// `application/json`, `correlation_id` = `job_id`.
fn check_properties(
    state: &CmState,
    routing_key: &str,
    job_id: Option<&str>,
    properties: &BasicProperties,
) {
    if *properties.delivery_mode() != Some(2) {
        state.record_error(routing_key, job_id, "not persistent (delivery mode 2)");
    }
    let content_type = properties.content_type().as_ref().map(|s| s.as_str());
    if content_type != Some("application/json") {
        state.record_error(
            routing_key,
            job_id,
            format!("content type is {content_type:?}, not \"application/json\""),
        );
    }
    let correlation_id = properties.correlation_id().as_ref().map(|s| s.as_str());
    if correlation_id != job_id {
        state.record_error(
            routing_key,
            job_id,
            format!("correlation_id is {correlation_id:?}, not the job_id"),
        );
    }
}

#[derive(Deserialize)]
struct GenerateRequest {
    job_id: String,
    archive: String,
    token_procedure: String,
    subject: Map<String, Value>,
    key_size: i64,
    issuer_dn: String,
}

#[derive(Deserialize)]
struct ImportRequest {
    job_id: String,
    archive: String,
    token_procedure_import: String,
    order_id: String,
    certificate_pem: String,
    chain_pem: Option<String>,
}

async fn generate(context: &Context, value: Value) -> Settle {
    let state = &context.state;
    let request: GenerateRequest = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            state.record_error(keys::GENERATE, None, format!("unreadable request: {e}"));
            return Settle::Ack;
        }
    };
    let job_id = request.job_id.as_str();
    let cm_error = |message: String| {
        state.record_error(
            keys::GENERATE,
            Some(job_id),
            format!("CM error, not answered (`generated` has no error form): {message}"),
        );
        Settle::Ack
    };
    let Some(size) = pkix::rsa_key_size(request.key_size) else {
        return cm_error(format!(
            "unsupported key_size {} (this CM generates RSA 2048, 3072 or 4096)",
            request.key_size
        ));
    };
    let issuer = match pkix::parse_dn(&request.issuer_dn) {
        Ok(issuer) => issuer,
        Err(e) => return cm_error(format!("unusable issuer_dn: {e}")),
    };
    let subject = pkix::subject_rdns(&request.subject);
    let issuer_key = context.issuer_key.clone();
    let generated =
        tokio::task::spawn_blocking(move || pkix::generate(size, &subject, &issuer, &issuer_key))
            .await
            .unwrap_or_else(|e| Err(format!("key generation task failed: {e}")));
    let generated = match generated {
        Ok(g) => g,
        Err(e) => return cm_error(e),
    };
    {
        let mut inner = state.lock();
        *inner.keys_generated.entry(job_id.to_string()).or_default() += 1;
        inner.archive.insert(
            job_id.to_string(),
            Archived {
                key_public_spki_der: generated.spki_der,
                dummy_cert_der: generated.dummy_cert_der,
                imported_cert_der: None,
                archive: request.archive.clone(),
                token_procedure: request.token_procedure.clone(),
                token_procedure_import: None,
                order_id: None,
                chain_pem: None,
                key_size: u32::try_from(request.key_size).unwrap_or_default(),
                issuer_dn: request.issuer_dn.clone(),
            },
        );
    }
    let behaviour = context.behaviour();
    if *behaviour.base() == CmBehaviour::SilentGenerate {
        return Settle::Ack;
    }
    let reply = json!({ "job_id": job_id, "csr_pem": generated.csr_pem });
    reply_with(context, &behaviour, keys::GENERATED, job_id, reply).await
}

async fn import(context: &Context, value: Value) -> Settle {
    let state = &context.state;
    let request: ImportRequest = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            state.record_error(keys::IMPORT, None, format!("unreadable request: {e}"));
            return Settle::Ack;
        }
    };
    let job_id = request.job_id.as_str();
    *state.lock().imports.entry(job_id.to_string()).or_default() += 1;
    let behaviour = context.behaviour();
    let outcome = match behaviour.base() {
        CmBehaviour::FailImport { code, message } => Err((code.clone(), message.clone())),
        _ => import_certificate(state, &request),
    };
    if *behaviour.base() == CmBehaviour::SilentImport {
        return Settle::Ack;
    }
    let reply = match outcome {
        Ok(()) => json!({ "job_id": job_id }),
        Err((code, message)) => {
            json!({ "job_id": job_id, "error": { "code": code, "message": message } })
        }
    };
    reply_with(context, &behaviour, keys::IMPORTED, job_id, reply).await
}

/// Replaces the dummy certificate of the job with the imported one, when its key is
/// the archived key; else the CM's error (code, message).
fn import_certificate(state: &CmState, request: &ImportRequest) -> Result<(), (String, String)> {
    let error = |code: &str, message: String| Err((code.to_string(), message));
    let job_id = request.job_id.as_str();
    let Some(archived) = state.archived(job_id) else {
        return error(
            "UNKNOWN_JOB",
            format!("no key is archived for job {job_id}"),
        );
    };
    if archived.archive != request.archive {
        return error(
            "ARCHIVE_MISMATCH",
            format!(
                "the key of job {job_id} is archived in `{}`, not in `{}`",
                archived.archive, request.archive
            ),
        );
    }
    let cert_der = match pkix::first_certificate(&request.certificate_pem) {
        Ok(der) => der,
        Err(e) => return error("INVALID_CERTIFICATE", e),
    };
    let cert_key = match pkix::certificate_key(&cert_der) {
        Ok(key) => key,
        Err(e) => return error("INVALID_CERTIFICATE", e),
    };
    let archived_key = pkix::spki_key(&archived.key_public_spki_der)
        .map_err(|e| ("INTERNAL_ERROR".to_string(), e))?;
    if cert_key != archived_key {
        return error(
            "KEY_MISMATCH",
            format!("the certificate's public key is not the key archived for job {job_id}"),
        );
    }
    let mut inner = state.lock();
    if let Some(entry) = inner.archive.get_mut(job_id) {
        entry.imported_cert_der = Some(cert_der);
        entry.token_procedure_import = Some(request.token_procedure_import.clone());
        entry.order_id = Some(request.order_id.clone());
        entry.chain_pem = request.chain_pem.clone();
    }
    Ok(())
}

/// Waits the behaviour's delay, publishes the reply (twice for
/// [`CmBehaviour::DuplicateReplies`]) and records it.
async fn reply_with(
    context: &Context,
    behaviour: &CmBehaviour,
    routing_key: &str,
    job_id: &str,
    reply: Value,
) -> Settle {
    let delay = behaviour.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let copies = if *behaviour.base() == CmBehaviour::DuplicateReplies {
        2
    } else {
        1
    };
    for _ in 0..copies {
        if let Err(e) = context.publisher.publish(routing_key, job_id, &reply).await {
            if !context.cancel.is_cancelled() {
                context.state.record_error(
                    routing_key,
                    Some(job_id),
                    format!("reply not delivered, request requeued: {e}"),
                );
            }
            return Settle::Requeue;
        }
        context
            .state
            .lock()
            .replies
            .push((routing_key.to_string(), reply.clone()));
    }
    Settle::Ack
}
