//! The reconnect supervisor: connects, declares the topology, installs the
//! publisher's channel, starts one consumer per lane, and watches all of it. On any
//! loss (the connection, any channel, a consumer cancelled by the broker, e.g. because
//! its queue was deleted) it tears the session down and starts a new one after an
//! exponential backoff with jitter ([`super::ReconnectPolicy`]); a broker outage never
//! makes it return. It returns on shutdown, or at once when the topology conflicts
//! with what the broker has (no retry can fix that).
//!
//! **Shutdown** ([`Supervisor::run`]'s token cancelled): the consumers are cancelled
//! first (`basic.cancel`), so no new delivery starts; in-flight handlers may finish
//! within [`super::TransportConfig::drain_timeout`] with the publisher and
//! acknowledgements still working; then the channels and the connection are closed
//! cleanly. Whatever was not acknowledged goes back to its queue.
//!
//! **Status.** [`BrokerStatus`] on a `watch` channel ([`Supervisor::status`]): the
//! state, how many times the connection was re-established, the broker's
//! `connection.blocked` reason (memory or disk alarm) while it lasts, and the last
//! error. Readiness is [`BrokerStatus::is_ready`].

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::{Channel, Connection, Event};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{ConfigError, TransportConfig};
use super::connection::{self, close_quietly};
use super::consume::{Handler, Lane, LaneConsumer, LaneEnd, LaneShared, SessionSignals};
use super::publish::{Publisher, PublisherSession};
use super::reconnect::ReconnectBackoff;
use super::topology::{Names, Topology, TopologyError};

/// How often the session's channels and connection are checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Bound on each closing step (cancel, close) of a session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the broker connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Before the first connection.
    Connecting,
    /// Connected, topology declared, consuming.
    Connected,
    /// Lost; reconnecting.
    Disconnected,
    /// Shutting down: consumers cancelled, in-flight handlers finishing.
    Stopping,
    /// Stopped.
    Stopped,
}

/// What readiness and `/readyz` look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The connection's state.
    pub state: BrokerState,
    /// How many times the connection was re-established after a loss.
    pub reconnects: u64,
    /// While the broker blocks the connection (`connection.blocked`): its reason.
    pub blocked: Option<String>,
    /// The last connection or session error, kept until the next connection.
    pub last_error: Option<String>,
}

impl Default for BrokerStatus {
    fn default() -> Self {
        BrokerStatus {
            state: BrokerState::Connecting,
            reconnects: 0,
            blocked: None,
            last_error: None,
        }
    }
}

impl BrokerStatus {
    /// Connected (maybe blocked).
    pub fn is_connected(&self) -> bool {
        self.state == BrokerState::Connected
    }

    /// Connected and not blocked: jobs can be taken and results published.
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.blocked.is_none()
    }
}

/// Why [`Supervisor::run`] returned with an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker has a conflicting queue or exchange.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// How [`Supervisor::run`] ended on shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Handlers still running when the drain timeout expired (0: all finished).
    pub unfinished_handlers: usize,
}

/// The handlers running now, across lanes and sessions.
#[derive(Debug, Clone)]
pub struct InFlight {
    tracker: TaskTracker,
}

impl InFlight {
    /// How many handlers are running.
    pub fn count(&self) -> usize {
        self.tracker.len()
    }
}

/// A way to open channels on the current connection, for what must live on it (the
/// per-job leases of several workers: exclusive queues the broker frees when the
/// connection dies).
#[derive(Debug, Clone, Default)]
pub struct SessionHandle {
    current: Arc<RwLock<Option<Current>>>,
}

/// The session's number and connection.
type Current = (u64, Arc<Connection>);

/// No broker connection right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not connected to the broker")]
pub struct NotConnected;

impl SessionHandle {
    /// The current session's number (a new one after every reconnect), if connected.
    pub fn session_id(&self) -> Option<u64> {
        self.read().as_ref().map(|(id, _)| *id)
    }

    /// A new channel on the current connection, with the session's number.
    pub async fn open_channel(&self) -> Result<(u64, Channel), NotConnected> {
        let (id, connection) = self.read().clone().ok_or(NotConnected)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|_| NotConnected)?;
        Ok((id, channel))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Current>> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, value: Option<Current>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// The transport of one worker. Create it, hand [`Supervisor::publisher`] and
/// [`Supervisor::status`] to the application, then [`Supervisor::run`] it.
pub struct Supervisor {
    config: TransportConfig,
    names: Names,
    publisher: Publisher,
    status: watch::Sender<BrokerStatus>,
    tracker: TaskTracker,
    session: SessionHandle,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// A live session: one connection and everything on it.
struct Session {
    id: u64,
    connection: Arc<Connection>,
    publisher: PublisherSession,
    lanes: Vec<LaneConsumer>,
    lost: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    /// The broker's last channel-level error (a lease refused, or a lane's channel
    /// closed), for the reason of a loss that `health` finds.
    channel_error: Arc<Mutex<Option<String>>>,
    ended: mpsc::UnboundedReceiver<(Lane, LaneEnd)>,
    events: JoinHandle<()>,
}

enum EstablishError {
    Fatal(TopologyError),
    Retry(String),
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Supervisor {
    /// A supervisor for `config`; nothing connects before [`Supervisor::run`].
    pub fn new(config: TransportConfig) -> Supervisor {
        let names = Names::new(&config.prefix);
        let publisher = Publisher::disconnected(config.publish_timeout);
        let (status, _) = watch::channel(BrokerStatus::default());
        Supervisor {
            config,
            names,
            publisher,
            status,
            tracker: TaskTracker::new(),
            session: SessionHandle::default(),
        }
    }

    /// The names of its topology.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The publisher; it works whenever the supervisor is connected.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The broker status, updated on every change.
    pub fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.status.subscribe()
    }

    /// The handlers running now.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            tracker: self.tracker.clone(),
        }
    }

    /// Channels on the current connection.
    pub fn session(&self) -> SessionHandle {
        self.session.clone()
    }

    /// Runs until `shutdown` is cancelled (then drains and closes, see the module
    /// documentation), reconnecting after every loss. Errors only on what no retry
    /// can fix: an invalid configuration or a conflicting topology.
    pub async fn run(
        self,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<Stopped, SupervisorError> {
        self.config.validate()?;
        let topology = Topology::new(self.names.clone(), self.config.delivery_limit);
        let lanes: Vec<(Lane, LaneShared)> = Lane::ALL
            .iter()
            .map(|&lane| {
                let shared = LaneShared {
                    handler: handler.clone(),
                    permits: Arc::new(Semaphore::new(usize::from(lane.concurrency(&self.config)))),
                    tracker: self.tracker.clone(),
                };
                (lane, shared)
            })
            .collect();
        let mut backoff = ReconnectBackoff::new(&self.config.reconnect);
        let mut session_id = 0u64;
        let mut established = 0u64;
        tracing::info!(url = %self.config.redacted_url(), prefix = %self.names.prefix, "connecting to the broker");
        while !shutdown.is_cancelled() {
            session_id += 1;
            // Bounded (connect timeout, then the same again for the set-up); a shutdown
            // meanwhile is seen right after, and closes the session cleanly.
            match self.establish(session_id, &topology, &lanes).await {
                Ok(mut session) => {
                    established += 1;
                    let reconnects = established - 1;
                    self.status.send_modify(|s| {
                        s.state = BrokerState::Connected;
                        s.reconnects = reconnects;
                        s.last_error = None;
                    });
                    tracing::info!(
                        session = session.id,
                        reconnects,
                        "connected to the broker: topology declared, consuming"
                    );
                    let started = Instant::now();
                    match self.supervise(&mut session, &shutdown).await {
                        SessionEnd::Shutdown => {
                            let unfinished = self.close_session(session).await;
                            return Ok(self.stopped(unfinished));
                        }
                        SessionEnd::Lost(reason) => {
                            tracing::warn!(session = session.id, %reason, "broker session lost; reconnecting");
                            // Publishing fails fast before anyone sees "disconnected".
                            self.detach(&session);
                            self.status.send_modify(|s| {
                                s.state = BrokerState::Disconnected;
                                s.blocked = None;
                                s.last_error = Some(reason);
                            });
                            self.teardown(session).await;
                            if started.elapsed() >= self.config.reconnect.stable_after {
                                backoff.reset();
                            }
                        }
                    }
                }
                Err(EstablishError::Fatal(error)) => {
                    tracing::error!(%error, "the broker's topology conflicts with this worker's");
                    self.status.send_modify(|s| {
                        s.state = BrokerState::Stopped;
                        s.last_error = Some(error.to_string());
                    });
                    return Err(error.into());
                }
                Err(EstablishError::Retry(reason)) => {
                    tracing::warn!(%reason, "connecting to the broker failed; retrying");
                    self.status.send_modify(|s| {
                        if s.state != BrokerState::Connecting {
                            s.state = BrokerState::Disconnected;
                        }
                        s.last_error = Some(reason);
                    });
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(?delay, "waiting before reconnecting");
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // Shut down while disconnected: handlers of a lost session may still run.
        self.status.send_modify(|s| s.state = BrokerState::Stopping);
        let unfinished = self.drain().await;
        Ok(self.stopped(unfinished))
    }

    fn stopped(&self, unfinished_handlers: usize) -> Stopped {
        self.status.send_modify(|s| {
            s.state = BrokerState::Stopped;
            s.blocked = None;
        });
        if unfinished_handlers > 0 {
            tracing::warn!(
                unfinished_handlers,
                "stopped with handlers still running; their deliveries go back to the queues"
            );
        } else {
            tracing::info!("transport stopped");
        }
        Stopped {
            unfinished_handlers,
        }
    }

    /// Connects and sets everything up; on failure, nothing is left open.
    async fn establish(
        &self,
        id: u64,
        topology: &Topology,
        lanes: &[(Lane, LaneShared)],
    ) -> Result<Session, EstablishError> {
        let connection = connection::open(&self.config)
            .await
            .map_err(|e| EstablishError::Retry(e.to_string()))?;
        let connection = Arc::new(connection);
        let lost = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let channel_error = Arc::new(Mutex::new(None));
        let (blocked_tx, blocked_rx) = watch::channel(false);
        let events = tokio::spawn(watch_events(
            connection.events_listener(),
            blocked_tx,
            self.status.clone(),
            lost.clone(),
            [reason.clone(), channel_error.clone()],
        ));
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let signals = SessionSignals {
            id,
            blocked: blocked_rx,
            ended: ended_tx,
        };
        let setup = async {
            topology.declare(&connection).await.map_err(|e| {
                let error = if e.is_fatal() {
                    EstablishError::Fatal(e)
                } else {
                    EstablishError::Retry(e.to_string())
                };
                (error, None)
            })?;
            let publisher = self
                .publisher
                .install(&connection, lost.clone())
                .await
                .map_err(|e| {
                    let reason = format!("opening the publisher channel: {e}");
                    (EstablishError::Retry(reason), None)
                })?;
            let mut consumers = Vec::new();
            for (lane, shared) in lanes {
                let prefetch = lane.concurrency(&self.config);
                let started = LaneConsumer::start(
                    &connection,
                    *lane,
                    &self.names,
                    prefetch,
                    &signals,
                    shared.clone(),
                )
                .await;
                match started {
                    Ok(consumer) => consumers.push(consumer),
                    Err(e) => return Err((EstablishError::Retry(e), Some(publisher))),
                }
            }
            Ok((publisher, consumers))
        };
        let setup: Result<_, (EstablishError, Option<PublisherSession>)> =
            match tokio::time::timeout(self.config.connect_timeout, setup).await {
                Ok(result) => result,
                Err(_) => Err((
                    EstablishError::Retry(format!(
                        "declaring the topology and starting the consumers took over {:?}",
                        self.config.connect_timeout
                    )),
                    None,
                )),
            };
        match setup {
            Ok((publisher, consumers)) => {
                self.session.set(Some((id, connection.clone())));
                Ok(Session {
                    id,
                    connection,
                    publisher,
                    lanes: consumers,
                    lost,
                    reason,
                    channel_error,
                    ended,
                    events,
                })
            }
            Err((error, publisher)) => {
                self.publisher.uninstall();
                lost.cancel();
                events.abort();
                if let Some(publisher) = publisher {
                    let _ = publisher.finish(CLOSE_TIMEOUT).await;
                }
                close_quietly(&connection, CLOSE_TIMEOUT).await;
                Err(error)
            }
        }
    }

    /// Waits for shutdown or a loss.
    async fn supervise(&self, session: &mut Session, shutdown: &CancellationToken) -> SessionEnd {
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = session.lost.cancelled() => {
                    let reason = session.reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    return SessionEnd::Lost(reason.unwrap_or_else(|| "the publisher channel failed".to_owned()));
                }
                Some((lane, end)) = session.ended.recv() => {
                    return SessionEnd::Lost(match end {
                        LaneEnd::Cancelled => format!("the broker cancelled the {lane} consumer (was its queue deleted?)"),
                        LaneEnd::Failed(error) => format!("the {lane} consumer failed: {error}"),
                    });
                }
                _ = watch.tick() => {
                    if let Some(reason) = health(session) {
                        return SessionEnd::Lost(reason);
                    }
                }
            }
        }
    }

    /// Nothing new is published on the session, nor channels opened on it.
    fn detach(&self, session: &Session) {
        self.session.set(None);
        self.publisher.uninstall();
        session.lost.cancel();
    }

    /// After a loss: nothing new is published or consumed on it, and it is closed.
    /// Handlers still running settle against a dead channel (their deliveries come
    /// back).
    async fn teardown(&self, session: Session) {
        self.detach(&session);
        for lane in &session.lanes {
            lane.halt();
        }
        close_quietly(&session.connection, CLOSE_TIMEOUT).await;
        let _ = session.publisher.finish(CLOSE_TIMEOUT).await;
        session.events.abort();
    }

    /// Clean shutdown of a live session.
    async fn close_session(&self, mut session: Session) -> usize {
        self.status.send_modify(|s| s.state = BrokerState::Stopping);
        tracing::info!("shutting down: cancelling the consumers");
        for lane in &mut session.lanes {
            lane.stop(CLOSE_TIMEOUT).await;
        }
        let unfinished = self.drain().await;
        self.detach(&session);
        let publisher_channel = session.publisher.finish(CLOSE_TIMEOUT).await;
        for channel in
            std::iter::once(&publisher_channel).chain(session.lanes.iter().map(|l| &l.channel))
        {
            if channel.status().connected() {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "shutdown".into()))
                    .await;
            }
        }
        close_quietly(&session.connection, CLOSE_TIMEOUT).await;
        session.events.abort();
        unfinished
    }

    /// Waits for running handlers, at most the drain timeout; returns how many still
    /// run.
    async fn drain(&self) -> usize {
        self.tracker.close();
        let running = self.tracker.len();
        if running > 0 {
            tracing::info!(running, timeout = ?self.config.drain_timeout, "waiting for in-flight handlers");
            let _ = tokio::time::timeout(self.config.drain_timeout, self.tracker.wait()).await;
        }
        self.tracker.len()
    }
}

/// Why the session is unhealthy, if it is.
fn health(session: &Session) -> Option<String> {
    if !session.connection.status().connected() {
        return Some("the connection closed".to_owned());
    }
    let closed = if !session.publisher.channel.status().connected() {
        "publisher".to_owned()
    } else {
        session
            .lanes
            .iter()
            .find(|lane| !lane.is_open())?
            .lane
            .to_string()
    };
    let last = session
        .channel_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Some(match last {
        Some(error) => format!("the {closed} channel closed (last channel error: {error})"),
        None => format!("the {closed} channel closed"),
    })
}

/// Follows the connection's events: blocked / unblocked into the status and the
/// lanes' flag; a connection error ends the session. A channel-level (soft) error
/// closes only its channel, which is not always one the session needs (a lease
/// refused closes the channel it was asked on): it is kept for the reason, and
/// `health` ends the session if a needed channel closed.
async fn watch_events(
    events: impl futures_util::Stream<Item = Event> + Send + 'static,
    blocked: watch::Sender<bool>,
    status: watch::Sender<BrokerStatus>,
    lost: CancellationToken,
    [reason, channel_error]: [Arc<Mutex<Option<String>>>; 2],
) {
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Event::ConnectionBlocked(why) => {
                tracing::warn!(reason = %why, "the broker blocks this connection (resource alarm): no new deliveries are started");
                blocked.send_replace(true);
                status.send_modify(|s| s.blocked = Some(why));
            }
            Event::ConnectionUnblocked => {
                tracing::info!("the broker unblocked this connection");
                blocked.send_replace(false);
                status.send_modify(|s| s.blocked = None);
            }
            Event::Error(error) if error.is_amqp_soft_error() => {
                tracing::debug!(%error, "a channel was closed by the broker");
                *channel_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
            }
            Event::Error(error) => {
                reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| format!("connection error: {error}"));
                lost.cancel();
            }
            _ => {}
        }
    }
}
