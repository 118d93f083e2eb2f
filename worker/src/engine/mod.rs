//! The engine: what the worker does with each job, between the transport (deliveries
//! in, confirmed publishes out), the store (the source of truth) and D-Trust.
//!
//! The data path runs one way. A delivery is validated, its record stored, then the
//! job *advances* step by step (`issue`, `revoke`): every step that the world can see
//! (a D-Trust POST, a published result) is preceded by a flushed record, so a crash
//! anywhere resumes from the record. A job that has to wait (a retry backoff, a
//! pending order) is scheduled in the store and its delivery acked: waits hold no
//! delivery and no task; the scheduler picks the job up when it is due. The result is
//! published with confirms, then the delivery is acked, then the record's secrets are
//! removed.
//!
//! **Several workers.** Before each step a job's lease is taken (or found held) on the
//! broker connection ([`Leases`]); a job leased by another worker is put off in the
//! store and tried again later, and the lease is given up once the job's outcome is
//! stored. Unless the worker runs alone (`single_worker`), every order is preceded by
//! a lookup of the job's `client_reference`, so that a job another worker finished is
//! answered with that worker's order instead of a second one.
//!
//! | module | owns |
//! |---|---|
//! | [`issue`] | the steps of an issuance |
//! | `archive` | the Certificate Manager steps of a key-archive issuance |
//! | [`revoke`] | the steps of a revocation |
//! | [`outcome`] | results from D-Trust's answers |
//! | [`locks`] | one lock per job id |

mod archive;
mod issue;
mod locks;
pub mod outcome;
mod priority;
mod revoke;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::dtrust::{Client, DTrustError, ProductRules, RateLimiter};
use crate::job::model::{Job, JobResult, Kind};
use crate::job::password;
use crate::job::record::{Record, Route, State};
use crate::job::schema::Schemas;
use crate::ops::audit;
use crate::ops::metrics::{KindLabel, Metrics, OutcomeLabels};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::store::{GroupFlush, Store, StoreError, Swap};
use crate::transport::{
    LeaseError, Leases, Names, Outgoing, PublishError, Published, Publisher, ERROR_HEADER,
};

pub use locks::JobLocks;
use outcome::now_ms;

/// The publishing side of the transport, as the engine needs it (the transport's
/// [`Publisher`]; tests may put another in its place).
pub trait Outbox: Send + Sync + 'static {
    /// Publishes and waits for the broker's confirm; an error means "not confirmed".
    fn publish(&self, message: Outgoing) -> BoxFuture<'_, Result<Published, PublishError>>;
}

impl Outbox for Publisher {
    fn publish(&self, message: Outgoing) -> BoxFuture<'_, Result<Published, PublishError>> {
        Box::pin(Publisher::publish(self, message))
    }
}

/// What the engine uses of the broker besides deliveries: publishing, and the per-job
/// leases on the worker's connection.
pub struct Broker {
    pub outbox: Arc<dyn Outbox>,
    pub leases: Arc<Leases>,
}

/// A delivery from a job lane, as the engine needs it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub redelivered: bool,
    /// The queue it came from, for dead-letter headers.
    pub queue: String,
    /// When the producer published it (AMQP `timestamp`, seconds), if it said.
    pub published_at: Option<u64>,
}

/// What to do with a delivery once the engine is done with it.
#[derive(Debug)]
pub enum Disposition {
    /// Its outcome is stored (scheduled, or finished earlier): acknowledge it.
    Ack,
    /// Its result is confirmed: acknowledge it, and if that worked, hand the token to
    /// [`Engine::settle`], which marks the job delivered and removes its secrets. Until
    /// then a redelivery gets the very same result again.
    Settle(Box<SettleToken>),
    /// Nothing durable happened (e.g. the store or the broker failed): leave it for
    /// redelivery.
    Retry,
}

/// A job whose result is confirmed and whose delivery is being acked; holds the job's
/// lock so that nothing else publishes its result meanwhile.
pub struct SettleToken {
    record: Record,
    _guard: locks::JobGuard,
}

impl std::fmt::Debug for SettleToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettleToken")
            .field("job_id", &self.record.job_id)
            .finish()
    }
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The products jobs may order (`certificateTemplates`).
    pub templates: Vec<String>,
    /// Every AMQP name; its prefix also prefixes `client_reference`, so that
    /// deployments sharing a D-Trust account do not see each other's orders.
    pub names: Names,
    pub retry: RetryPolicy,
    /// How often a pending order is polled (a longer `Retry-After` wins).
    pub poll_interval: Duration,
    /// D-Trust's request timeout: how long an in-flight request may take.
    pub request_timeout: Duration,
    pub issue_concurrency: usize,
    pub revoke_concurrency: usize,
    /// How long delivered records are kept.
    pub retention: Duration,
    /// How long a delivered job keeps its secrets, so that a late copy of the job (a
    /// redelivery after a lost ack) gets the identical result; 0 removes them at once.
    pub secrets_grace: Duration,
    /// Key backup through a Certificate Manager, when the bundle configures it.
    pub key_archive: Option<crate::bundle::settings::KeyArchive>,
    /// Exactly one worker consumes this prefix: orders are placed without looking the
    /// job's reference up first (the local store knows every job this worker saw).
    pub single_worker: bool,
    /// How long a redelivered job that the store does not know waits before its
    /// lookup: the worker that had it may have died with its order request in flight.
    pub takeover_wait: Duration,
    /// `revocationPasswordSecret`: generated revocation passwords are derived from it
    /// and the job id, so that every worker returns the same one.
    pub revocation_secret: Option<Secret>,
}

/// The engine; shared by every task of the worker.
pub struct Engine {
    config: EngineConfig,
    store: Arc<dyn Store>,
    flusher: GroupFlush,
    dtrust: Client,
    limiter: RateLimiter,
    outbox: Arc<dyn Outbox>,
    leases: Arc<Leases>,
    schemas: Schemas,
    locks: Arc<JobLocks>,
    products: RwLock<Products>,
    issue_lane: Arc<Semaphore>,
    revoke_lane: Arc<Semaphore>,
    priority: Arc<priority::Priority>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Products {
    rules: HashMap<String, Arc<ProductRules>>,
    fetched_at: Option<i64>,
}

/// How long a product list is trusted before a missing product triggers a refetch.
const PRODUCTS_REFRESH_MS: i64 = 60_000;

impl Engine {
    pub fn new(
        config: EngineConfig,
        store: Arc<dyn Store>,
        dtrust: Client,
        limiter: RateLimiter,
        broker: Broker,
        schemas: Schemas,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let Broker { outbox, leases } = broker;
        Engine {
            metrics,
            issue_lane: Arc::new(Semaphore::new(config.issue_concurrency.max(1))),
            revoke_lane: Arc::new(Semaphore::new(config.revoke_concurrency.max(1))),
            priority: Arc::default(),
            config,
            flusher: GroupFlush::new(store.clone()),
            store,
            dtrust,
            limiter,
            outbox,
            leases,
            schemas,
            locks: Arc::new(JobLocks::default()),
            products: RwLock::new(Products::default()),
        }
    }

    /// The `client_reference` of a job: `<prefix>:<job_id>`, or, when that would be
    /// longer than D-Trust's 128 characters, the prefix and a SHA-256 of the job id.
    pub fn client_reference(&self, job_id: &str) -> String {
        let prefix = &self.config.names.prefix;
        let plain = format!("{prefix}:{job_id}");
        if plain.len() <= 128 {
            return plain;
        }
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(job_id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{prefix}:sha256:{hex}")
    }

    /// Handles one delivery of a job lane.
    pub async fn on_delivery(&self, incoming: Incoming) -> Disposition {
        if let Some(at) = incoming.published_at {
            let lag_ms = now_ms() - (at as i64).saturating_mul(1000);
            self.metrics
                .queue_lag
                .observe(lag_ms.max(0) as f64 / 1000.0);
        }
        let job = match self.schemas.parse_job(&incoming.body) {
            Ok(job) => job,
            Err(invalid) => {
                self.metrics.invalid_messages.inc();
                return self.reject_invalid(&incoming, invalid).await;
            }
        };
        self.metrics
            .jobs_received
            .get_or_create(&KindLabel {
                kind: job.kind().as_str().to_string(),
            })
            .inc();
        let span = tracing::info_span!("job", job_id = %job.job_id(), kind = job.kind().as_str());
        self.accept(job, incoming).instrument(span).await
    }

    async fn accept(&self, job: Job, incoming: Incoming) -> Disposition {
        let route = Route {
            reply_to: incoming.reply_to.clone(),
            correlation_id: incoming.correlation_id.clone(),
        };
        let _urgent = (job.kind() == Kind::Revoke).then(|| self.priority.urgent());
        let permit = self.lane(job.kind()).acquire_owned().await;
        let guard = self.locks.lock(job.job_id()).await;
        let record = match self.store.get(job.job_id()) {
            Ok(Some(existing)) => {
                info!(
                    state = existing.state.as_str(),
                    "job known: continuing from its record"
                );
                existing
            }
            Ok(None) => {
                let mut record = Record::new(job, self.client_reference(""), now_ms());
                record.client_reference = self.client_reference(&record.job_id);
                record.reply_to = incoming.reply_to.clone();
                record.correlation_id = incoming.correlation_id.clone();
                // A redelivered message without a record may have been worked on by a
                // worker that is gone: look the order up before placing one, once the
                // request that worker may still have had in flight has timed out.
                record.lookup_first = incoming.redelivered;
                let wait = self.config.takeover_wait.as_millis() as i64;
                if incoming.redelivered && record.kind == Kind::Issue && wait > 0 {
                    info!(
                        wait_ms = wait,
                        "redelivered, and unknown to this worker: another worker may have its order request in flight; looking the order up once that has timed out"
                    );
                    record.next_at = Some(now_ms() + wait);
                }
                match self.store.swap(None, record) {
                    Ok(Swap::Done(record)) => {
                        audit::record(None, &record);
                        record
                    }
                    Ok(Swap::Conflict(_)) => return Disposition::Retry,
                    Err(e) => {
                        warn!(error = %e, "cannot store the job; it stays on the queue");
                        return Disposition::Retry;
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the job store; the job stays on the queue");
                return Disposition::Retry;
            }
        };
        let record = match record.state {
            State::Delivered | State::Finished => record,
            // Includes an issuance in flight when an earlier process died: its order
            // request may still be running at D-Trust, so the lookup that decides
            // whether to order again waits until that request has timed out (its
            // `next_at`). A revocation in flight is resumed at once: revoking again
            // is harmless (D-Trust answers "already revoked").
            _ if record.next_at.is_some_and(|at| at > now_ms())
                && !(record.state == State::InFlight && record.kind == Kind::Revoke) =>
            {
                info!(
                    state = record.state.as_str(),
                    "job is scheduled; its record will carry it"
                );
                return self.owe(&record, route).await;
            }
            _ => match self.work(record).await {
                Ok(record) => record,
                Err(e) => {
                    warn!(error = %e, "job store failed; the job stays on the queue");
                    return Disposition::Retry;
                }
            },
        };
        drop(permit);
        match record.state {
            State::Finished | State::Delivered => {
                // This delivery's result, and those of copies acknowledged earlier.
                let mut routes = vec![route];
                routes.extend(record.owed.iter().cloned());
                match self.deliver(&record, &routes).await {
                    Delivered::Confirmed if record.state == State::Finished => {
                        Disposition::Settle(Box::new(SettleToken {
                            record,
                            _guard: guard,
                        }))
                    }
                    Delivered::Confirmed | Delivered::Later => Disposition::Ack,
                    Delivered::Failed => Disposition::Retry,
                }
            }
            _ => self.owe(&record, route).await,
        }
    }

    /// Acknowledges a delivery before its job's result exists: the record keeps the
    /// delivery's route (durably, before the ack), and the result goes to it too.
    async fn owe(&self, record: &Record, route: Route) -> Disposition {
        let mut next = record.clone();
        next.owed.push(route);
        match self.save(record, next).await {
            Ok(_) => Disposition::Ack,
            Err(e) => {
                warn!(error = %e, "cannot store the job; it stays on the queue");
                Disposition::Retry
            }
        }
    }

    /// Marks a job delivered and removes its secrets, once its delivery is acked.
    pub fn settle(&self, token: Box<SettleToken>) {
        self.mark_delivered(&token.record);
    }

    fn mark_delivered(&self, record: &Record) {
        // The secrets stay for a short grace period, so that a copy of the job that
        // arrives meanwhile (a redelivery after a lost ack) gets the identical result;
        // the scheduler removes them when it is over.
        let grace = self.config.secrets_grace.as_millis() as i64;
        let delivered = if grace == 0 {
            Record {
                state: State::Delivered,
                next_at: None,
                owed: Vec::new(),
                ..record.scrubbed()
            }
        } else {
            Record {
                state: State::Delivered,
                next_at: Some(now_ms() + grace),
                owed: Vec::new(),
                ..record.clone()
            }
        };
        match self.store_change(record, delivered) {
            Ok(_) => debug!("result delivered"),
            Err(e) => {
                warn!(error = %e, "cannot mark the job delivered; its result may be published again")
            }
        }
    }

    /// Works a job (holding its lane's permit) until it finishes or has to wait,
    /// counted as in flight; an issuance lets revocations at work go first (see
    /// [`priority`]).
    async fn work(&self, record: Record) -> Result<Record, StoreError> {
        if record.kind == Kind::Issue && self.priority.yield_to_urgent().await {
            debug!("waited for revocations to go first");
        }
        self.metrics.in_flight.inc();
        let advanced = self.advance(record).await;
        self.metrics.in_flight.dec();
        advanced
    }

    fn lane(&self, kind: Kind) -> Arc<Semaphore> {
        match kind {
            Kind::Issue => self.issue_lane.clone(),
            Kind::Revoke => self.revoke_lane.clone(),
        }
    }

    /// Runs the job's steps until it finishes or has to wait; returns the stored record.
    /// Each step runs under the job's lease; a job leased elsewhere is put off.
    async fn advance(&self, mut record: Record) -> Result<Record, StoreError> {
        loop {
            if record.state.is_terminal() {
                return Ok(record);
            }
            if let Err(e) = self
                .leases
                .ensure(&record.job_id, has_mailbox(&record))
                .await
            {
                return self.defer(record, &e).await;
            }
            let (current, next) = match record.kind {
                Kind::Issue => issue::step(self, record).await?,
                Kind::Revoke => revoke::step(self, record).await?,
            };
            let waiting = matches!(
                next.state,
                State::Ready | State::Pending | State::AwaitingCm
            );
            let due_later = next.next_at.is_some_and(|at| at > now_ms());
            record = self.save(&current, next).await?;
            if (waiting && due_later) || record.state.is_terminal() {
                return Ok(record);
            }
        }
    }

    /// Stores `next` over `current` and flushes. A job's lease is given up once its
    /// outcome is stored so.
    async fn save(&self, current: &Record, next: Record) -> Result<Record, StoreError> {
        let saved = self.store_change(current, next)?;
        self.flusher.flush().await?;
        if saved.state.is_terminal() {
            self.leases.release(&saved.job_id);
        }
        Ok(saved)
    }

    /// Puts a job off whose lease this worker cannot take now (another worker holds it,
    /// or the broker is away): stored with a growing delay, and looked up before any
    /// order, since the other worker may have placed it.
    async fn defer(&self, record: Record, why: &LeaseError) -> Result<Record, StoreError> {
        let next = self.put_off(&record, &why.to_string());
        self.save(&record, next).await
    }

    /// The record put off (see [`Engine::defer`]).
    fn put_off(&self, record: &Record, why: &str) -> Record {
        self.metrics.lease_deferrals.inc();
        let mut next = record.clone();
        next.deferrals = next.deferrals.saturating_add(1);
        next.lookup_first = next.lookup_first || next.kind == Kind::Issue;
        let delay = defer_delay(next.deferrals);
        next.next_at = Some(now_ms() + delay.as_millis() as i64);
        info!(reason = %why, delay_ms = delay.as_millis() as u64, deferrals = next.deferrals, "job put off");
        next
    }

    /// Takes the leases of the unfinished jobs in the store again (at start-up and
    /// after every reconnect: the old ones died with the old connection), before their
    /// next steps need them; a job whose lease another worker took meanwhile is looked
    /// up before any order. Returns how many leases are held and how many are not.
    pub async fn retake_leases(&self) -> (usize, usize) {
        if !self.leases.enabled() {
            return (0, 0);
        }
        let mut unfinished = Vec::new();
        for state in [
            State::Ready,
            State::InFlight,
            State::Pending,
            State::AwaitingCm,
        ] {
            match self.store.by_state(state, usize::MAX) {
                Ok(records) => {
                    unfinished.extend(records.into_iter().map(|r| (has_mailbox(&r), r.job_id)))
                }
                Err(e) => warn!(error = %e, "cannot list unfinished jobs to take their leases"),
            }
        }
        let (mut held, mut refused) = (0, 0);
        for (mailbox, job_id) in unfinished {
            match self.leases.ensure(&job_id, mailbox).await {
                Ok(()) => held += 1,
                Err(LeaseError::HeldElsewhere { .. }) => {
                    refused += 1;
                    let Some(_guard) = self.locks.try_lock(&job_id) else {
                        continue;
                    };
                    if let Ok(Some(record)) = self.store.get(&job_id) {
                        if !record.state.is_terminal()
                            && !record.lookup_first
                            && record.kind == Kind::Issue
                        {
                            let next = Record {
                                lookup_first: true,
                                ..record.clone()
                            };
                            let _ = self.store_change(&record, next);
                        }
                    }
                }
                // Gone again: the next session takes them.
                Err(_) => break,
            }
        }
        (held, refused)
    }

    /// Stores `next` over `current` without waiting for it to be durable (for changes
    /// whose loss on a crash only repeats a step that is safe to repeat).
    fn store_change(&self, current: &Record, mut next: Record) -> Result<Record, StoreError> {
        next.updated_at = now_ms();
        if next.state.is_terminal() && next.finished_at.is_none() {
            next.finished_at = Some(next.updated_at);
        }
        match self.store.swap(Some(current), next)? {
            Swap::Done(saved) => {
                audit::record(Some(current), &saved);
                if saved.state == State::Finished && current.state != State::Finished {
                    if let Some(result) = &saved.result {
                        self.metrics
                            .jobs_finished
                            .get_or_create(&OutcomeLabels {
                                kind: saved.kind.as_str().to_string(),
                                status: result.status.as_str().to_string(),
                                code: result
                                    .error
                                    .as_ref()
                                    .map(|e| e.code.clone())
                                    .unwrap_or_default(),
                            })
                            .inc();
                    }
                }
                Ok(saved)
            }
            Swap::Conflict(_) => Err(StoreError::Io(format!(
                "record of job `{}` changed under its lock",
                current.job_id
            ))),
        }
    }

    /// Publishes a finished job's result once per route (to `{p}.results`, and to the
    /// route's `reply_to`). When the broker does not confirm it, the record is
    /// scheduled to publish it again, to all of them.
    async fn deliver(&self, record: &Record, routes: &[Route]) -> Delivered {
        let Some(result) = record.result.clone() else {
            warn!("finished job without a result");
            return Delivered::Failed;
        };
        match self.publish_result(record, &result, routes).await {
            Ok(()) => {
                debug!(
                    status = result.status.as_str(),
                    code = result.error.as_ref().map(|e| e.code.as_str()).unwrap_or(""),
                    "result published"
                );
                Delivered::Confirmed
            }
            Err(e) => {
                warn!(error = %e, "result not confirmed; the scheduler publishes it again");
                let retry = Record {
                    next_at: Some(now_ms() + 1_000),
                    owed: routes.to_vec(),
                    ..record.clone()
                };
                match self.save(record, retry).await {
                    Ok(_) => Delivered::Later,
                    Err(_) => Delivered::Failed,
                }
            }
        }
    }

    async fn publish_result(
        &self,
        record: &Record,
        result: &JobResult,
        routes: &[Route],
    ) -> Result<(), String> {
        for route in routes {
            let correlation = route
                .correlation_id
                .clone()
                .unwrap_or_else(|| record.job_id.clone());
            self.send_result(result, route.reply_to.as_deref(), &correlation)
                .await?;
        }
        Ok(())
    }

    /// Publishes a result to `{p}.results` (kept in `{p}.dead` when no queue is bound
    /// for it) and to `reply_to`, each confirmed.
    async fn send_result(
        &self,
        result: &JobResult,
        reply_to: Option<&str>,
        correlation: &str,
    ) -> Result<(), String> {
        let names = &self.config.names;
        let body = serde_json::to_vec(result).map_err(|e| e.to_string())?;
        let message = |exchange: &str, key: &str| {
            Outgoing::new(exchange, key, body.clone())
                .with_message_id(result.job_id.clone())
                .with_correlation_id(correlation)
        };
        let routed = self
            .outbox
            .publish(message(&names.results, &result.routing_key()))
            .await
            .map_err(|e| e.to_string())?;
        if matches!(routed, Published::Returned { .. }) {
            warn!(exchange = %names.results, "no queue is bound for results: keeping the result in the dead-letter queue");
            let reason = format!(
                "result unroutable: no queue is bound to {} for {}",
                names.results,
                result.routing_key()
            );
            self.outbox
                .publish(message(&names.dead_exchange, "").with_header(ERROR_HEADER, reason))
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some(reply_to) = reply_to {
            let routed = self
                .outbox
                .publish(
                    Outgoing::to_queue(reply_to, body.clone())
                        .with_message_id(result.job_id.clone())
                        .with_correlation_id(correlation),
                )
                .await
                .map_err(|e| e.to_string())?;
            if matches!(routed, Published::Returned { .. }) {
                warn!(%reply_to, "the reply_to queue does not exist; the result went to the results exchange only");
            }
        }
        Ok(())
    }

    /// An unparseable or schema-invalid message: a failed result when it has a usable
    /// `job_id` (and no outcome yet), and the message itself to the dead-letter queue.
    async fn reject_invalid(
        &self,
        incoming: &Incoming,
        invalid: crate::job::schema::InvalidMessage,
    ) -> Disposition {
        warn!(job_id = invalid.job_id.as_deref().unwrap_or("-"), reason = %invalid.reason, "invalid job message");
        if let (Some(job_id), Some(kind)) = (&invalid.job_id, invalid.kind) {
            // A job that already has an outcome keeps it; only the message is parked.
            let known = matches!(self.store.get(job_id), Ok(Some(_)));
            if !known {
                let result = JobResult::failed(
                    job_id,
                    kind,
                    None,
                    0,
                    outcome::rfc3339(time::OffsetDateTime::now_utc()),
                    crate::job::model::ResultError {
                        code: "INVALID_JOB".into(),
                        message: invalid.reason.clone(),
                        hint: "Fix the job message so that it fits the contract (schemas/job.schema.json) and submit it again; the original message is kept in the dead-letter queue.".into(),
                        retryable: false,
                    },
                );
                let correlation = incoming
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| job_id.clone());
                if let Err(e) = self
                    .send_result(&result, incoming.reply_to.as_deref(), &correlation)
                    .await
                {
                    warn!(error = %e, "failed result of an invalid job not confirmed; the message stays on the queue");
                    return Disposition::Retry;
                }
            }
        }
        let mut dead = Outgoing::new(&self.config.names.dead_exchange, "", incoming.body.clone())
            .with_header(ERROR_HEADER, invalid.reason.clone())
            .with_header("x-dtrust-queue", incoming.queue.clone());
        if let Some(id) = &invalid.job_id {
            dead = dead.with_message_id(id.clone());
        }
        if let Some(c) = &incoming.correlation_id {
            dead = dead.with_correlation_id(c.clone());
        }
        match self.outbox.publish(dead).await {
            Ok(_) => Disposition::Ack,
            Err(e) => {
                warn!(error = %e, "dead letter not confirmed; the message stays on the queue");
                Disposition::Retry
            }
        }
    }

    /// Runs due jobs (retries, polls, unpublished results) until `shutdown`.
    pub async fn run_scheduler(
        self: Arc<Self>,
        shutdown: CancellationToken,
        tasks: tokio_util::task::TaskTracker,
    ) {
        let mut last_purge = 0i64;
        loop {
            let now = now_ms();
            match self.store.due(now, 256) {
                Ok(ids) => {
                    for id in ids {
                        let Some(guard) = self.locks.try_lock(&id) else {
                            continue;
                        };
                        let engine = self.clone();
                        tasks.spawn(async move {
                            let _guard = guard;
                            engine.run_due(&id).await;
                        });
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the schedule"),
            }
            if now - last_purge > 3_600_000 {
                last_purge = now;
                let cutoff = now - self.config.retention.as_millis() as i64;
                match self.store.purge(cutoff) {
                    Ok(0) => {}
                    Ok(n) => info!(purged = n, "purged delivered jobs past their retention"),
                    Err(e) => warn!(error = %e, "purge failed"),
                }
            }
            let wait = match self.store.next_due() {
                Ok(Some(at)) => (at - now_ms()).clamp(20, 500) as u64,
                _ => 500,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }

    /// One due job, under its lock (held by the caller).
    async fn run_due(&self, job_id: &str) {
        let record = match self.store.get(job_id) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                warn!(%job_id, error = %e, "cannot read a due job");
                return;
            }
        };
        if record.next_at.is_none_or(|at| at > now_ms()) {
            return;
        }
        if record.state == State::Delivered {
            let scrubbed = Record {
                next_at: None,
                ..record.scrubbed()
            };
            if let Err(e) = self.store_change(&record, scrubbed) {
                warn!(%job_id, error = %e, "cannot remove the secrets of a delivered job");
            }
            return;
        }
        let span = tracing::info_span!("job", job_id = %record.job_id, kind = record.kind.as_str());
        async {
            let record = if record.state.is_terminal() {
                record
            } else {
                let _urgent = (record.kind == Kind::Revoke).then(|| self.priority.urgent());
                let _permit = self.lane(record.kind).acquire_owned().await;
                match self.work(record).await {
                    Ok(record) => record,
                    Err(e) => {
                        warn!(error = %e, "job store failed during a scheduled step");
                        return;
                    }
                }
            };
            if record.state == State::Finished
                && self.deliver(&record, &owed_routes(&record)).await == Delivered::Confirmed
            {
                // No delivery to ack: the confirm is the end of it.
                self.mark_delivered(&record);
            }
        }
        .instrument(span)
        .await
    }

    /// A new revocation password for a job that brings none: derived from
    /// `revocationPasswordSecret` and the job id when that is set (the same on every
    /// worker), else random.
    fn new_password(&self, job_id: &str, rules: &ProductRules) -> Option<Secret> {
        match &self.config.revocation_secret {
            Some(secret) => password::derive(secret, job_id, rules.password_rule()),
            None => password::generate(rules.password_rule()),
        }
    }

    /// The password that any worker with `revocationPasswordSecret` generates for this
    /// job; `None` without the secret (or without the product's rules).
    async fn derived_password(&self, job_id: &str, product: &str) -> Option<Secret> {
        let secret = self.config.revocation_secret.as_ref()?;
        let rules = self.rules(product).await.ok().flatten()?;
        password::derive(secret, job_id, rules.password_rule())
    }

    /// The rules of a configured product, fetching the account's products when they
    /// are not known yet (or are old and lack it).
    async fn rules(&self, product: &str) -> Result<Option<Arc<ProductRules>>, DTrustError> {
        let stale = {
            let products = self.products.read().unwrap_or_else(|e| e.into_inner());
            if let Some(rules) = products.rules.get(product) {
                return Ok(Some(rules.clone()));
            }
            products
                .fetched_at
                .is_none_or(|t| now_ms() - t > PRODUCTS_REFRESH_MS)
        };
        if !stale {
            return Ok(None);
        }
        let list = self.dtrust("products", self.dtrust.products()).await?;
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        products.rules = list
            .into_iter()
            .map(|p| (p.id.clone(), Arc::new(ProductRules::new(p))))
            .collect();
        products.fetched_at = Some(now_ms());
        for rules in products.rules.values() {
            for (what, why) in &rules.unusable {
                warn!(product = %rules.product.id, %what, %why, "product rule cannot be checked here; D-Trust checks it");
            }
        }
        Ok(products.rules.get(product).cloned())
    }

    /// A D-Trust call after the rate limiter's go, measured.
    async fn dtrust<T>(
        &self,
        endpoint: &str,
        call: impl std::future::Future<Output = Result<T, DTrustError>>,
    ) -> Result<T, DTrustError> {
        let waited = self.limiter.acquire().await;
        self.metrics.rate_limiter_wait.observe(waited.as_secs_f64());
        let started = std::time::Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.metrics.request(endpoint, outcome, started.elapsed());
        result
    }

    /// The record scheduled for a retry after `error`, or failed when retries are
    /// exhausted (`RETRIES_EXHAUSTED`, with the last error).
    fn retry_or_fail(&self, mut record: Record, error: &DTrustError) -> Record {
        record.retries += 1;
        record.last_error = Some(format!("{}: {error}", error.code()));
        self.metrics
            .retries
            .get_or_create(&KindLabel {
                kind: record.kind.as_str().to_string(),
            })
            .inc();
        match self.config.retry.delay(record.retries, error.retry_after()) {
            Some(delay) => {
                info!(
                    retry = record.retries,
                    delay_ms = delay.as_millis() as u64,
                    code = error.code(),
                    "retrying later"
                );
                if record.state != State::Pending {
                    record.state = State::Ready;
                }
                record.next_at = Some(now_ms() + delay.as_millis() as i64);
                record
            }
            None => {
                let result = outcome::failed(
                    &record,
                    "RETRIES_EXHAUSTED",
                    format!(
                        "gave up after {} retries; last error: {error}",
                        record.retries - 1
                    ),
                    error.hint(),
                    false,
                );
                finish(record, result)
            }
        }
    }
}

/// How publishing a result went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// The broker confirmed it.
    Confirmed,
    /// Not confirmed; the record is scheduled to publish it again.
    Later,
    /// Not confirmed, and the schedule could not be stored either.
    Failed,
}

/// Whether a job's lease queue is consumed: key-archive jobs get Certificate Manager
/// replies forwarded there by workers that do not have them.
fn has_mailbox(record: &Record) -> bool {
    matches!(&record.job, Job::Issue(job) if job.key_archive)
}

/// The routes a finished job's result is owed to, when no delivery is at hand: the
/// acknowledged copies, or (after a crash lost track of them) the first delivery's.
fn owed_routes(record: &Record) -> Vec<Route> {
    if record.owed.is_empty() {
        vec![record.route()]
    } else {
        record.owed.clone()
    }
}

/// The delay before a put-off job is tried again: 0.5 s, doubling, at most 15 s, with
/// up to 25 % jitter so that workers do not ask in step.
fn defer_delay(deferrals: u32) -> Duration {
    use rand::Rng;
    let base = 500u64
        .saturating_mul(1 << deferrals.saturating_sub(1).min(5))
        .min(15_000);
    let jitter = rand::rng().random_range(0..=base / 4);
    Duration::from_millis(base + jitter)
}

/// The record with its terminal result, due for publishing now.
fn finish(mut record: Record, result: JobResult) -> Record {
    debug!(
        status = result.status.as_str(),
        code = result.error.as_ref().map(|e| e.code.as_str()).unwrap_or(""),
        order_id = result.order_id.as_deref().unwrap_or(""),
        "job finished"
    );
    record.state = State::Finished;
    record.next_at = Some(now_ms());
    record.result = Some(result);
    record
}
