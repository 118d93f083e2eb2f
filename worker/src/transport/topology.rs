//! The AMQP topology of `shared/contract/messages.md`: every exchange and queue name
//! derived from the prefix ([`Names`], the only place names are formatted), the
//! routing keys ([`keys`]), and their idempotent declaration ([`Topology::declare`]).
//!
//! | name | what |
//! |---|---|
//! | `{p}.jobs` | direct exchange, durable |
//! | `{p}.issue`, `{p}.revoke` | quorum queues bound to `{p}.jobs` with `issue` / `revoke`; `x-delivery-limit`, dead-letter to `{p}.dead` |
//! | `{p}.results` | topic exchange, durable (`result.<kind>.<status>`) |
//! | `{p}.keyarchive` | direct exchange, durable |
//! | `{p}.keyarchive.requests` | quorum queue, keys `generate`, `import` |
//! | `{p}.keyarchive.replies` | quorum queue, keys `generated`, `imported` |
//! | `{p}.dead` | fanout exchange, durable, and the quorum queue of the same name bound to it |
//!
//! A queue or exchange that already exists with other arguments makes the broker
//! refuse the declaration (`PRECONDITION_FAILED`); that is reported as
//! [`TopologyError::Conflict`], naming the object and what differs, since no retry
//! can fix it.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use super::config::DEFAULT_DELIVERY_LIMIT;

/// Routing keys of the contract.
pub mod keys {
    /// Issue jobs on `{p}.jobs`.
    pub const ISSUE: &str = "issue";
    /// Revoke jobs on `{p}.jobs`.
    pub const REVOKE: &str = "revoke";
    /// Worker → Certificate Manager on `{p}.keyarchive`: create a key pair.
    pub const GENERATE: &str = "generate";
    /// Worker → Certificate Manager: import the issued certificate.
    pub const IMPORT: &str = "import";
    /// Certificate Manager → worker: the CSR over the archived key.
    pub const GENERATED: &str = "generated";
    /// Certificate Manager → worker: the certificate was imported (or an error).
    pub const IMPORTED: &str = "imported";

    /// The key of a result on `{p}.results`: `result.<kind>.<status>`, e.g.
    /// `result.issue.succeeded`.
    pub fn result(kind: &str, status: &str) -> String {
        format!("result.{kind}.{status}")
    }
}

/// Every exchange and queue name for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The prefix itself.
    pub prefix: String,
    /// `{p}.jobs`: direct exchange producers publish jobs to.
    pub jobs: String,
    /// `{p}.issue`: quorum queue of issuance jobs.
    pub issue: String,
    /// `{p}.revoke`: quorum queue of revocation jobs.
    pub revoke: String,
    /// `{p}.results`: topic exchange of results.
    pub results: String,
    /// `{p}.keyarchive`: direct exchange to and from the Certificate Manager.
    pub keyarchive: String,
    /// `{p}.keyarchive.requests`: quorum queue the Certificate Manager consumes.
    pub keyarchive_requests: String,
    /// `{p}.keyarchive.replies`: quorum queue of the Certificate Manager's answers.
    pub keyarchive_replies: String,
    /// `{p}.dead`: the fanout exchange of dead letters.
    pub dead_exchange: String,
    /// `{p}.dead`: the quorum queue that keeps dead letters (same name as the exchange).
    pub dead_queue: String,
}

impl Names {
    /// The names for `prefix`.
    pub fn new(prefix: &str) -> Names {
        let name = |suffix: &str| format!("{prefix}.{suffix}");
        Names {
            prefix: prefix.to_owned(),
            jobs: name("jobs"),
            issue: name("issue"),
            revoke: name("revoke"),
            results: name("results"),
            keyarchive: name("keyarchive"),
            keyarchive_requests: name("keyarchive.requests"),
            keyarchive_replies: name("keyarchive.replies"),
            dead_exchange: name("dead"),
            dead_queue: name("dead"),
        }
    }

    /// `{p}.lease.<job_id>`: the exclusive queue that leases a job to one worker
    /// (contract, "Several workers").
    pub fn lease(&self, job_id: &str) -> String {
        format!("{}.lease.{job_id}", self.prefix)
    }

    /// Every queue this worker declares.
    pub fn queues(&self) -> [&str; 5] {
        [
            &self.issue,
            &self.revoke,
            &self.keyarchive_requests,
            &self.keyarchive_replies,
            &self.dead_queue,
        ]
    }

    /// Every exchange this worker declares.
    pub fn exchanges(&self) -> [&str; 4] {
        [
            &self.jobs,
            &self.results,
            &self.keyarchive,
            &self.dead_exchange,
        ]
    }
}

/// What kind of object a declaration was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// An exchange.
    Exchange,
    /// A queue.
    Queue,
    /// A binding of a queue to an exchange.
    Binding,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Exchange => "exchange",
            ObjectKind::Queue => "queue",
            ObjectKind::Binding => "binding",
        })
    }
}

/// Declaring the topology failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TopologyError {
    /// The object exists with other arguments or another type; only an operator can
    /// fix that.
    #[error(
        "{kind} {name} exists with other arguments ({detail}): delete it or use another prefix"
    )]
    Conflict {
        /// Exchange or queue.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// The broker's words on what differs.
        detail: String,
    },
    /// A name does not fit AMQP (more than 255 bytes).
    #[error("{kind} name `{name}` is longer than AMQP's 255 bytes: use a shorter prefix")]
    InvalidName {
        /// Exchange or queue.
        kind: ObjectKind,
        /// The name.
        name: String,
    },
    /// The broker refused for another reason (e.g. access refused), or the connection
    /// failed meanwhile.
    #[error("declaring {kind} {name} failed: {detail}")]
    Broker {
        /// Exchange, queue or binding.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// What the broker or client library said.
        detail: String,
    },
}

impl TopologyError {
    /// Whether no reconnect can fix it (a conflict or an impossible name), as opposed to
    /// a lost connection or a refusal an operator may lift meanwhile (permissions).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            TopologyError::Conflict { .. } | TopologyError::InvalidName { .. }
        )
    }
}

/// The topology for one prefix, with the arguments of its job queues.
#[derive(Debug, Clone)]
pub struct Topology {
    names: Names,
    delivery_limit: u32,
}

impl Topology {
    /// The topology of `names` with `x-delivery-limit` = `delivery_limit` on the job
    /// queues.
    pub fn new(names: Names, delivery_limit: u32) -> Topology {
        Topology {
            names,
            delivery_limit,
        }
    }

    /// The topology of `prefix` with the default delivery limit (5).
    pub fn with_prefix(prefix: &str) -> Topology {
        Topology::new(Names::new(prefix), DEFAULT_DELIVERY_LIMIT)
    }

    /// Its names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The arguments a queue of this topology is declared with (`x-queue-type`, and for
    /// the job queues `x-delivery-limit` and `x-dead-letter-exchange`).
    pub fn queue_arguments(&self, queue: &str) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if queue == self.names.issue || queue == self.names.revoke {
            let limit = i32::try_from(self.delivery_limit).unwrap_or(i32::MAX);
            args.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.names.dead_exchange.clone().into()),
            );
        }
        args
    }

    /// Declares every exchange, queue and binding on a channel of its own (a refused
    /// declaration closes the channel it was made on), then closes that channel.
    /// Declaring again with the same arguments changes nothing.
    pub async fn declare(&self, connection: &Connection) -> Result<(), TopologyError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| broker_error(ObjectKind::Exchange, &self.names.jobs, &e))?;
        let result = self.declare_on(&channel).await;
        if channel.status().connected() {
            let _ = channel.close(200, "topology declared".into()).await;
        }
        result
    }

    async fn declare_on(&self, channel: &Channel) -> Result<(), TopologyError> {
        let n = &self.names;
        for (name, kind) in [
            (&n.jobs, ExchangeKind::Direct),
            (&n.results, ExchangeKind::Topic),
            (&n.keyarchive, ExchangeKind::Direct),
            (&n.dead_exchange, ExchangeKind::Fanout),
        ] {
            let options = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    short(ObjectKind::Exchange, name)?,
                    kind,
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| classify(ObjectKind::Exchange, name, &e))?;
        }
        for queue in n.queues() {
            channel
                .queue_declare(
                    short(ObjectKind::Queue, queue)?,
                    QueueDeclareOptions::durable(),
                    self.queue_arguments(queue),
                )
                .await
                .map_err(|e| classify(ObjectKind::Queue, queue, &e))?;
        }
        for (queue, exchange, key) in [
            (&n.issue, &n.jobs, keys::ISSUE),
            (&n.revoke, &n.jobs, keys::REVOKE),
            (&n.keyarchive_requests, &n.keyarchive, keys::GENERATE),
            (&n.keyarchive_requests, &n.keyarchive, keys::IMPORT),
            (&n.keyarchive_replies, &n.keyarchive, keys::GENERATED),
            (&n.keyarchive_replies, &n.keyarchive, keys::IMPORTED),
            (&n.dead_queue, &n.dead_exchange, ""),
        ] {
            channel
                .queue_bind(
                    short(ObjectKind::Queue, queue)?,
                    short(ObjectKind::Exchange, exchange)?,
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    broker_error(
                        ObjectKind::Binding,
                        &format!("{queue} ← {exchange} ({key:?})"),
                        &e,
                    )
                })?;
        }
        tracing::debug!(prefix = %n.prefix, "AMQP topology declared");
        Ok(())
    }
}

fn short(kind: ObjectKind, name: &str) -> Result<ShortString, TopologyError> {
    ShortString::try_new(name).map_err(|_| TopologyError::InvalidName {
        kind,
        name: name.to_owned(),
    })
}

/// `PRECONDITION_FAILED` is a conflict; anything else a broker error.
fn classify(kind: ObjectKind, name: &str, error: &lapin::Error) -> TopologyError {
    if let lapin::ErrorKind::ProtocolError(amqp) = error.kind() {
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
            let text = amqp.get_message().as_str();
            let detail = text
                .strip_prefix("PRECONDITION_FAILED - ")
                .unwrap_or(text)
                .to_owned();
            return TopologyError::Conflict {
                kind,
                name: name.to_owned(),
                detail,
            };
        }
    }
    broker_error(kind, name, error)
}

fn broker_error(kind: ObjectKind, name: &str, error: &lapin::Error) -> TopologyError {
    TopologyError::Broker {
        kind,
        name: name.to_owned(),
        detail: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let n = Names::new("dtrust");
        assert_eq!(n.jobs, "dtrust.jobs");
        assert_eq!(n.issue, "dtrust.issue");
        assert_eq!(n.revoke, "dtrust.revoke");
        assert_eq!(n.results, "dtrust.results");
        assert_eq!(n.keyarchive, "dtrust.keyarchive");
        assert_eq!(n.keyarchive_requests, "dtrust.keyarchive.requests");
        assert_eq!(n.keyarchive_replies, "dtrust.keyarchive.replies");
        assert_eq!(n.dead_exchange, "dtrust.dead");
        assert_eq!(n.dead_queue, "dtrust.dead");
        assert_eq!(n.lease("job-1"), "dtrust.lease.job-1");
        assert_eq!(keys::result("issue", "succeeded"), "result.issue.succeeded");
    }

    #[test]
    fn only_job_queues_have_a_delivery_limit_and_dead_letters() {
        let topology = Topology::new(Names::new("p"), 7);
        let args = topology.queue_arguments("p.issue");
        assert_eq!(
            args.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongInt(7))
        );
        assert_eq!(
            args.inner().get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("p.dead".into()))
        );
        for queue in ["p.keyarchive.requests", "p.keyarchive.replies", "p.dead"] {
            let args = topology.queue_arguments(queue);
            assert_eq!(
                args.inner().get("x-queue-type"),
                Some(&AMQPValue::LongString("quorum".into()))
            );
            assert!(!args.contains_key("x-delivery-limit"), "{queue}");
        }
    }

    #[test]
    fn conflict_message_names_queue_and_difference() {
        let error = TopologyError::Conflict {
            kind: ObjectKind::Queue,
            name: "dtrust.issue".into(),
            detail: "inequivalent arg 'x-delivery-limit'".into(),
        };
        assert_eq!(
            error.to_string(),
            "queue dtrust.issue exists with other arguments (inequivalent arg 'x-delivery-limit'): delete it or use another prefix"
        );
    }
}
