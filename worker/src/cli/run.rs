//! `dtrust-worker run --bundle FILE`: the worker. Consumes issuance and revocation jobs
//! from RabbitMQ, orders and revokes at D-Trust, publishes one result per job; runs
//! until SIGTERM or SIGINT, then stops consuming, lets in-flight jobs finish or park
//! (within `--shutdown-timeout-secs`), flushes its store and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::bundle::Bundle;
use crate::dtrust::{Client, RateLimiter};
use crate::engine::{Broker, Disposition, Engine, EngineConfig, Incoming};
use crate::job::schema::Schemas;
use crate::ops::http;
use crate::ops::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::store::{SledStore, Store};
use crate::transport::{Delivery, Lane, Leases, Supervisor, TransportConfig};

/// The settings of `run`; each also as an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The connector bundle.
    #[arg(long, env = "DTRUST_BUNDLE")]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub amqp: super::AmqpArgs,
    /// The local job store (default: the bundle's `store.path`, `dtrust-data`).
    #[arg(long, env = "DTRUST_STORE_PATH")]
    pub store: Option<PathBuf>,
    /// Issuance jobs worked on at once (and the issue lane's prefetch).
    #[arg(long, env = "DTRUST_ISSUE_CONCURRENCY", default_value_t = 16)]
    pub issue_concurrency: u16,
    /// Revocation jobs worked on at once (and the revoke lane's prefetch).
    #[arg(long, env = "DTRUST_REVOKE_CONCURRENCY", default_value_t = 4)]
    pub revoke_concurrency: u16,
    /// Deliveries of one message before the broker dead-letters it (`x-delivery-limit`).
    #[arg(long, env = "DTRUST_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Days a delivered job's record is kept.
    #[arg(long, env = "DTRUST_RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u64,
    /// Seconds between polls of a pending order (a longer `Retry-After` wins).
    #[arg(long, env = "DTRUST_POLL_INTERVAL_SECS", default_value_t = 30)]
    pub poll_interval_secs: u64,
    /// First retry delay, milliseconds.
    #[arg(long, env = "DTRUST_RETRY_INITIAL_MS", default_value_t = 1000)]
    pub retry_initial_ms: u64,
    /// Growth of the retry delay per retry.
    #[arg(long, env = "DTRUST_RETRY_MULTIPLIER", default_value_t = 2.0)]
    pub retry_multiplier: f64,
    /// Longest retry delay, milliseconds.
    #[arg(long, env = "DTRUST_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,
    /// Retries of a retryable failure before the job fails with RETRIES_EXHAUSTED.
    #[arg(long, env = "DTRUST_MAX_RETRIES", default_value_t = 10)]
    pub max_retries: u32,
    /// Seconds a delivered job keeps its secrets in the store, so that a late copy of
    /// the job gets the identical result; then they are removed (0: at once).
    #[arg(long, env = "DTRUST_SECRETS_GRACE_SECS", default_value_t = 600)]
    pub secrets_grace_secs: u64,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (e.g. 0.0.0.0:9464).
    #[arg(long, env = "DTRUST_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds in-flight jobs get to finish at shutdown; the rest resume at the next start.
    #[arg(long, env = "DTRUST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// This is the only worker on its prefix: no per-job leases, orders are placed
    /// without looking the job up at D-Trust first, and a redelivered job is taken over
    /// at once (see "Several workers" in the README before setting it).
    #[arg(long, env = "DTRUST_SINGLE_WORKER")]
    pub single_worker: bool,
    /// Seconds a redelivered job unknown to this worker waits before its lookup, in case
    /// the worker that had it died with its order request in flight (default: the
    /// bundle's requestTimeoutMs; 0 with --single-worker).
    #[arg(long, env = "DTRUST_TAKEOVER_WAIT_SECS")]
    pub takeover_wait_secs: Option<u64>,
    /// Test only: take no per-job leases (shows the duplicate orders they prevent).
    #[arg(long, env = "DTRUST_TEST_NO_LEASE", hide = true)]
    pub no_lease: bool,
}

impl RunArgs {
    /// The takeover wait: as set, else 0 for a single worker, else the request timeout.
    fn takeover_wait(&self, request_timeout: Duration) -> Duration {
        match (self.takeover_wait_secs, self.single_worker) {
            (Some(secs), _) => Duration::from_secs(secs),
            (None, true) => Duration::ZERO,
            (None, false) => request_timeout,
        }
    }
}

pub(super) fn run(args: RunArgs) -> ExitCode {
    let bundle = match Bundle::load(&args.bundle) {
        Ok(bundle) => bundle,
        Err(report) => {
            for problem in &report.problems {
                error!(%problem, "bundle");
            }
            eprintln!("error: {report}the worker does not start; `dtrust-worker check-config --bundle {}` shows the same", args.bundle.display());
            return ExitCode::FAILURE;
        }
    };
    for warning in &bundle.warnings {
        warn!(%warning, "bundle");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, bundle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!(%message, "the worker stops");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: RunArgs, bundle: Bundle) -> Result<(), String> {
    let settings = &bundle.settings;
    let prefix = args
        .amqp
        .prefix
        .clone()
        .unwrap_or_else(|| settings.amqp_prefix.clone());
    let store_path = args
        .store
        .clone()
        .unwrap_or_else(|| settings.store_path.clone());
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&store_path).map_err(|e| e.to_string())?);
    let schemas = Schemas::load().map_err(|e| e.to_string())?;
    let client = Client::new(&bundle).map_err(|e| e.to_string())?;
    let limiter = RateLimiter::new(settings.max_requests_per_second);

    let mut transport = TransportConfig::new(args.amqp.amqp_url.clone(), prefix.clone());
    transport.issue_concurrency = args.issue_concurrency.max(1);
    transport.revoke_concurrency = args.revoke_concurrency.max(1);
    transport.delivery_limit = args.delivery_limit;
    transport.drain_timeout = Duration::from_secs(args.shutdown_timeout_secs);
    transport.validate().map_err(|e| e.to_string())?;
    let redacted = transport.redacted_url();
    let supervisor = Supervisor::new(transport);
    let names = supervisor.names().clone();
    let publisher = supervisor.publisher();
    let (leases, mail) = if args.no_lease {
        warn!("--no-lease: no per-job leases are taken; several workers may order the same job twice (for tests only)");
        Leases::disabled(names.clone(), supervisor.session())
    } else if args.single_worker {
        // The only worker on its prefix has nobody to share a job with: no leases
        // (each costs the broker a queue declared and deleted).
        Leases::disabled(names.clone(), supervisor.session())
    } else {
        Leases::new(names.clone(), supervisor.session())
    };
    let takeover_wait = args.takeover_wait(settings.request_timeout);

    let metrics = Arc::new(Metrics::default());
    let engine = Arc::new(Engine::new(
        EngineConfig {
            templates: settings.certificate_templates.clone(),
            names: names.clone(),
            retry: RetryPolicy {
                initial: Duration::from_millis(args.retry_initial_ms),
                multiplier: args.retry_multiplier,
                max_interval: Duration::from_millis(args.retry_max_ms),
                max_retries: args.max_retries,
                jitter: 0.3,
            },
            poll_interval: Duration::from_secs(args.poll_interval_secs.max(1)),
            request_timeout: settings.request_timeout,
            issue_concurrency: usize::from(args.issue_concurrency.max(1)),
            revoke_concurrency: usize::from(args.revoke_concurrency.max(1)),
            retention: Duration::from_secs(args.retention_days * 86_400),
            key_archive: settings.key_archive.clone(),
            secrets_grace: Duration::from_secs(args.secrets_grace_secs),
            single_worker: args.single_worker,
            takeover_wait,
            revocation_secret: settings.revocation_password_secret.clone(),
        },
        store.clone(),
        client,
        limiter,
        Broker {
            outbox: Arc::new(publisher.clone()),
            leases: Arc::new(leases),
        },
        schemas,
        metrics.clone(),
    ));

    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    tokio::spawn(watch_broker(
        supervisor.status(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(deliver_mail(engine.clone(), mail));
    tokio::spawn(retake_leases(
        engine.clone(),
        supervisor.session(),
        supervisor.status(),
        shutdown.clone(),
    ));
    if let Some(addr) = args.metrics_addr {
        http::serve(addr, metrics.clone(), supervisor.status(), shutdown.clone())
            .await
            .map_err(|e| format!("cannot serve metrics at {addr}: {e}"))?;
    }
    let tasks = TaskTracker::new();
    let scheduler = tokio::spawn(
        engine
            .clone()
            .run_scheduler(shutdown.clone(), tasks.clone()),
    );
    info!(
        broker = %redacted,
        %prefix,
        store = %store_path.display(),
        dtrust = %settings.url,
        issue_concurrency = args.issue_concurrency,
        revoke_concurrency = args.revoke_concurrency,
        single_worker = args.single_worker,
        takeover_wait_secs = takeover_wait.as_secs_f64(),
        "dtrust-worker started"
    );
    if !args.single_worker && settings.revocation_password_secret.is_none() {
        warn!("revocationPasswordSecret is not set: a job that another worker ordered is answered without its generated revocation password (see check-config)");
    }

    let handler = {
        let engine = engine.clone();
        let names = names.clone();
        move |delivery: Delivery| {
            let engine = engine.clone();
            let names = names.clone();
            async move { handle(&engine, &names, delivery).await }
        }
    };
    let stopped = supervisor.run(Arc::new(handler), shutdown.clone()).await;
    shutdown.cancel();
    let _ = scheduler.await;
    tasks.close();
    let deadline = Duration::from_secs(args.shutdown_timeout_secs);
    if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
        warn!("scheduled jobs still running at the shutdown deadline; they resume from their records at the next start");
    }
    store.flush().map_err(|e| e.to_string())?;
    match stopped {
        Ok(stopped) => {
            info!(
                unfinished = stopped.unfinished_handlers,
                "dtrust-worker stopped"
            );
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// One delivery: a job, or a Certificate Manager reply, goes to the engine.
async fn handle(engine: &Engine, names: &crate::transport::Names, mut delivery: Delivery) {
    if delivery.lane == Lane::KeyArchiveReplies {
        match engine.on_reply(&delivery.routing_key, &delivery.body).await {
            Disposition::Retry => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = delivery.nack(true).await;
            }
            _ => {
                let _ = delivery.ack().await;
            }
        }
        return;
    }
    let incoming = Incoming {
        body: std::mem::take(&mut delivery.body),
        reply_to: delivery.reply_to.clone(),
        correlation_id: delivery.correlation_id.clone(),
        redelivered: delivery.redelivered,
        queue: delivery.lane.queue(names).to_string(),
        published_at: delivery.timestamp,
    };
    match engine.on_delivery(incoming).await {
        Disposition::Ack => {
            if let Err(e) = delivery.ack().await {
                warn!(error = %e, "ack failed; the job's record answers the redelivery");
            }
        }
        Disposition::Settle(token) => match delivery.ack().await {
            Ok(()) => engine.settle(token),
            Err(e) => warn!(error = %e, "ack failed; the redelivery gets the same result again"),
        },
        Disposition::Retry => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.nack(true).await;
        }
    }
}

/// Certificate Manager replies other workers forwarded into this worker's leases go to
/// the engine like those of the replies lane.
async fn deliver_mail(
    engine: Arc<Engine>,
    mut mail: tokio::sync::mpsc::UnboundedReceiver<crate::transport::lease::Mail>,
) {
    while let Some(message) = mail.recv().await {
        let engine = engine.clone();
        tokio::spawn(async move {
            match engine
                .on_forwarded_reply(&message.routing_key, &message.body)
                .await
            {
                Disposition::Retry => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    message.nack().await;
                }
                _ => message.ack().await,
            }
        });
    }
}

/// After every (re)connection, takes the leases of the unfinished jobs in the store
/// again: those of the old connection died with it.
async fn retake_leases(
    engine: Arc<Engine>,
    session: crate::transport::SessionHandle,
    mut status: tokio::sync::watch::Receiver<crate::transport::BrokerStatus>,
    shutdown: CancellationToken,
) {
    let mut done_for = None;
    loop {
        let connected = status.borrow_and_update().is_connected();
        let current = session.session_id();
        if connected && current.is_some() && current != done_for {
            done_for = current;
            let (held, refused) = engine.retake_leases().await;
            if held + refused > 0 {
                info!(
                    held,
                    refused, "took the leases of the unfinished jobs in the store"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Keeps the broker gauges current and logs connection changes.
async fn watch_broker(
    mut status: tokio::sync::watch::Receiver<crate::transport::BrokerStatus>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        {
            let now = status.borrow_and_update();
            metrics.broker_connected.set(i64::from(now.is_connected()));
            metrics
                .reconnects
                .set(i64::try_from(now.reconnects).unwrap_or(i64::MAX));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

async fn on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot listen for signals");
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
