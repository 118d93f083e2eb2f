//! The AMQP transport (`lapin` on `tokio`): the topology of
//! `shared/contract/messages.md`, one consumer per lane, the confirming publisher, and
//! the supervisor that keeps them connected.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | [`TransportConfig`]: URL, prefix, concurrency per lane, timeouts, reconnect policy |
//! | [`topology`] | [`Names`] (every exchange and queue name, from the prefix), routing [`keys`], idempotent declaration |
//! | [`publish`] | [`Publisher`]: persistent, `mandatory`, confirmed publishes, pipelined; [`Outgoing`], [`Published`] |
//! | [`consume`] | [`Lane`]s, the [`Delivery`] handed to the application's [`Handler`], acks |
//! | [`lease`] | [`Leases`]: per-job leases (exclusive queues on the worker's connection) for several workers |
//! | [`supervisor`] | [`Supervisor`]: connect, declare, consume, reconnect with backoff, shut down; [`BrokerStatus`] |
//! | [`connection`] | opening a connection (heartbeat, name), [`check_broker`] for `test-connection` |
//! | `reconnect` | the backoff between reconnection attempts (the one place that names the `backoff` crate) |
//!
//! How the application uses it:
//!
//! ```ignore
//! use dtrust_worker::transport::{self, Delivery, Outgoing, Supervisor, TransportConfig};
//!
//! let supervisor = Supervisor::new(TransportConfig::new(url, "dtrust"));
//! let publisher = supervisor.publisher();
//! let names = supervisor.names().clone();
//! let status = supervisor.status(); // readiness: status.borrow().is_ready()
//! let handler = Arc::new(move |delivery: Delivery| {
//!     let (publisher, names) = (publisher.clone(), names.clone());
//!     async move {
//!         // ... parse, store, call D-Trust, store the outcome ...
//!         let result = Outgoing::new(&names.results, transport::keys::result("issue", "succeeded"), body)
//!             .with_message_id(job_id);
//!         match publisher.publish(result).await {
//!             Ok(_) => { let _ = delivery.ack().await; } // ack last
//!             Err(_) => { /* keep the outcome in the store; publish again later */ }
//!         }
//!     }
//! });
//! let shutdown = CancellationToken::new();
//! supervisor.run(handler, shutdown.clone()).await?; // returns after shutdown.cancel()
//! ```
//!
//! `lapin` and `CancellationToken` are re-exported, so that code (and tests) using this
//! module need no dependency of their own on them.

#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod consume;
pub mod lease;
pub mod publish;
mod reconnect;
pub mod supervisor;
pub mod topology;

pub use config::{ConfigError, ReconnectPolicy, TransportConfig};
pub use connection::{check_broker, check_exchanges, ConnectError};
pub use consume::{AckError, Delivery, Handler, Lane};
pub use lease::{LeaseError, Leases};
pub use publish::{Outgoing, PublishError, Published, Publisher, ERROR_HEADER};
pub use supervisor::{
    BrokerState, BrokerStatus, InFlight, NotConnected, SessionHandle, Stopped, Supervisor,
    SupervisorError,
};
pub use topology::{keys, Names, ObjectKind, Topology, TopologyError};

pub use lapin;
pub use tokio_util::sync::CancellationToken;
