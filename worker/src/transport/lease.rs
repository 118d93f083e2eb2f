//! Per-job leases, so that several workers on one prefix never work on the same job at
//! once (contract, "Several workers").
//!
//! A lease is the exclusive, auto-delete queue `{p}.lease.<job_id>`, declared on the
//! worker's connection: the broker lets one connection hold it, answers any other with
//! `RESOURCE_LOCKED` (which closes the asking channel), and deletes it when its holder's
//! connection dies. [`Leases::ensure`] takes a lease (or finds it held already in the
//! current session), [`Leases::holds`] says without a round trip whether it is held now,
//! [`Leases::release`] deletes it once the job's outcome is stored.
//!
//! Every declaration runs on a channel of its own, taken from a small pool of open
//! channels: a refusal closes only that channel, never one that another job's
//! declaration is using. A lease taken in one session is not held in the next (its
//! queue died with the old connection): `ensure` declares it again.
//!
//! **Mailbox.** The Certificate Manager answers on the shared `{p}.keyarchive.replies`,
//! so its answer for a job may reach a worker that does not have the job. That worker
//! forwards it into the job's lease queue (the holder's, through the default
//! exchange); the holder of a key-archive job consumes its lease queue
//! ([`Leases::ensure`] with `mailbox`), and what arrives there comes out of the
//! receiver [`Leases::new`] returns, as [`Mail`], with the original routing key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Acker;
use lapin::{Channel, ErrorKind};
use tokio::sync::mpsc;

use super::supervisor::SessionHandle;
use super::topology::Names;

/// Open channels kept for lease declarations, at most.
const POOL_MAX: usize = 64;

/// The header that carries a forwarded message's original routing key.
pub const ROUTING_KEY_HEADER: &str = "x-dtrust-routing-key";

/// A message forwarded into one of this worker's lease queues (a Certificate Manager
/// reply that reached another worker). Settle it with [`Mail::ack`] or [`Mail::nack`].
pub struct Mail {
    /// The routing key it was first published with (`generated`, `imported`).
    pub routing_key: String,
    /// Its body, as the Certificate Manager sent it.
    pub body: Vec<u8>,
    acker: Acker,
}

impl std::fmt::Debug for Mail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mail")
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

impl Mail {
    /// Done with it.
    pub async fn ack(self) {
        let _ = self.acker.ack(BasicAckOptions::default()).await;
    }

    /// Not done: back into the lease queue.
    pub async fn nack(self) {
        let _ = self
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
    }
}

/// Why a lease could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Another worker's connection holds it.
    #[error("job `{job_id}` is leased by another worker")]
    HeldElsewhere {
        /// The job.
        job_id: String,
    },
    /// No broker connection right now.
    #[error("no broker connection to take the lease of job `{job_id}` on")]
    NotConnected {
        /// The job.
        job_id: String,
    },
    /// The broker failed otherwise.
    #[error("taking the lease of job `{job_id}` failed: {detail}")]
    Broker {
        /// The job.
        job_id: String,
        /// What the client library said.
        detail: String,
    },
}

/// The leases of one worker.
#[derive(Debug)]
pub struct Leases {
    names: Names,
    session: SessionHandle,
    /// Off only in tests that show what the lease prevents.
    enabled: bool,
    /// Job id → the session in which its lease was taken.
    held: Mutex<HashMap<String, u64>>,
    pool: Arc<Pool>,
    /// The channel the mailbox consumers run on, per session.
    mailbox: tokio::sync::Mutex<Option<(u64, Channel)>>,
    mail: mpsc::UnboundedSender<Mail>,
}

impl Leases {
    /// Leases on the supervisor's connection ([`super::Supervisor::session`]), and the
    /// mail forwarded into them.
    pub fn new(names: Names, session: SessionHandle) -> (Leases, mpsc::UnboundedReceiver<Mail>) {
        let (mail, inbox) = mpsc::unbounded_channel();
        let leases = Leases {
            names,
            enabled: true,
            held: Mutex::default(),
            pool: Arc::new(Pool {
                session: session.clone(),
                channels: Mutex::default(),
            }),
            session,
            mailbox: tokio::sync::Mutex::default(),
            mail,
        };
        (leases, inbox)
    }

    /// Leases that are never taken: every job counts as leased to this worker. Only
    /// for tests that show the duplicate orders the lease prevents.
    pub fn disabled(
        names: Names,
        session: SessionHandle,
    ) -> (Leases, mpsc::UnboundedReceiver<Mail>) {
        let (leases, inbox) = Leases::new(names, session);
        (
            Leases {
                enabled: false,
                ..leases
            },
            inbox,
        )
    }

    /// Whether leases are taken at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether this worker holds the job's lease in the current session.
    pub fn holds(&self, job_id: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let Some(session) = self.session.session_id() else {
            return false;
        };
        self.held_map().get(job_id) == Some(&session)
    }

    /// The lease queue of a job, where other workers forward its mail.
    pub fn queue(&self, job_id: &str) -> String {
        self.names.lease(job_id)
    }

    /// Takes the job's lease, unless it is held already in the current session; with
    /// `mailbox`, also consumes what other workers forward into it.
    pub async fn ensure(&self, job_id: &str, mailbox: bool) -> Result<(), LeaseError> {
        if !self.enabled {
            return Ok(());
        }
        let not_connected = || LeaseError::NotConnected {
            job_id: job_id.to_owned(),
        };
        let session = self.session.session_id().ok_or_else(not_connected)?;
        if self.held_map().get(job_id) == Some(&session) {
            return Ok(());
        }
        let (channel_session, channel) = self.pool.channel().await.map_err(|_| not_connected())?;
        let declared = channel
            .queue_declare(
                self.names.lease(job_id).as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    durable: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {
                self.pool.give_back(channel_session, channel);
                self.held_map().insert(job_id.to_owned(), channel_session);
                tracing::debug!(%job_id, session = channel_session, "lease taken");
                if mailbox {
                    self.consume(job_id, channel_session).await;
                }
                Ok(())
            }
            // The refusal closed the channel: it is not given back.
            Err(e) if is_resource_locked(&e) => Err(LeaseError::HeldElsewhere {
                job_id: job_id.to_owned(),
            }),
            Err(e) if !channel.status().connected() || self.session.session_id().is_none() => {
                tracing::debug!(%job_id, error = %e, "lease not taken: the connection is gone");
                Err(not_connected())
            }
            Err(e) => Err(LeaseError::Broker {
                job_id: job_id.to_owned(),
                detail: e.to_string(),
            }),
        }
    }

    /// Gives the job's lease up: its outcome is stored. The queue is deleted in the
    /// background (an error there only keeps the lease until the connection closes).
    pub fn release(&self, job_id: &str) {
        if !self.enabled {
            return;
        }
        let Some(taken_in) = self.held_map().remove(job_id) else {
            return;
        };
        if self.session.session_id() != Some(taken_in) {
            // Its queue died with the session it was taken in.
            return;
        }
        let queue = self.names.lease(job_id);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let Ok((session, channel)) = pool.channel().await else {
                return;
            };
            let deleted = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            match deleted {
                Ok(_) => {
                    tracing::debug!(%queue, "lease released");
                    pool.give_back(session, channel)
                }
                Err(e) => {
                    tracing::debug!(%queue, error = %e, "lease not deleted; the broker frees it with the connection")
                }
            }
        });
    }

    fn held_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Consumes the job's lease queue until it is deleted (the broker then cancels the
    /// consumer) or the session ends. A failure only loses the forwarding: the mail
    /// waits in the queue until the lease is taken again.
    async fn consume(&self, job_id: &str, session: u64) {
        let queue = self.names.lease(job_id);
        let channel = {
            let mut slot = self.mailbox.lock().await;
            match &*slot {
                Some((s, channel)) if *s == session && channel.status().connected() => {
                    channel.clone()
                }
                _ => match self.session.open_channel().await {
                    Ok((s, channel)) if s == session => {
                        *slot = Some((s, channel.clone()));
                        channel
                    }
                    _ => return,
                },
            }
        };
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("mailbox-{job_id}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "cannot consume the lease queue; mail forwarded to it waits there");
                return;
            }
        };
        let mail = self.mail.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let routing_key = delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(ROUTING_KEY_HEADER).cloned())
                    .and_then(|v| match v {
                        AMQPValue::LongString(s) => Some(s.to_string()),
                        AMQPValue::ShortString(s) => Some(s.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let forwarded = Mail {
                    routing_key,
                    body: delivery.data,
                    acker: delivery.acker,
                };
                if mail.send(forwarded).is_err() {
                    return;
                }
            }
        });
    }
}

/// Open channels of the current session for lease declarations, each used by one
/// declaration at a time.
#[derive(Debug)]
struct Pool {
    session: SessionHandle,
    channels: Mutex<Vec<(u64, Channel)>>,
}

impl Pool {
    /// A pooled channel of the current session, or a new one.
    async fn channel(&self) -> Result<(u64, Channel), super::NotConnected> {
        if let Some(current) = self.session.session_id() {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            while let Some((session, channel)) = channels.pop() {
                if session == current && channel.status().connected() {
                    return Ok((session, channel));
                }
            }
        }
        self.session.open_channel().await
    }

    fn give_back(&self, session: u64, channel: Channel) {
        if !channel.status().connected() || self.session.session_id() != Some(session) {
            return;
        }
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if channels.len() < POOL_MAX {
            channels.push((session, channel));
        }
    }
}

/// `RESOURCE_LOCKED` (405): an exclusive queue of another connection.
fn is_resource_locked(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED))
    )
}
