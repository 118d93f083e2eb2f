//! The broker side of `submit`: one connection with the worker's confirming
//! [`Publisher`] (persistent, `mandatory`, pipelined, every publish confirmed) and, when
//! waiting for results, an exclusive auto-delete queue of its own bound to
//! `{p}.results` with `result.#`, declared and consumed before the first publish, so
//! that no result can slip by.
//!
//! Why the results exchange and not `reply_to`: the worker always publishes a job's
//! result to `{p}.results`, but sends it to `reply_to` only as that job's first message
//! asked, and it keeps the first `reply_to` in its store. A job published by an earlier,
//! interrupted run (whose queue died with it) would then be answered to a queue that no
//! longer exists, and a resumed run would wait for it in vain. The price of the binding
//! is that this queue also sees every other producer's results during the run; they
//! are told apart by the job ids of the batch and dropped.
//!
//! Nothing is declared but that queue: the topology is the worker's to declare (its
//! job queues carry arguments such as `x-delivery-limit` that only it knows), so the
//! job and result exchanges are only checked to exist.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::transport::connection::{self, default_connection_name, ConnectError};
use crate::transport::publish::PublisherSession;
use crate::transport::{ConfigError, Names, Publisher, TransportConfig};

/// How long closing may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the broker cannot be used for the batch; nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The prefix cannot name AMQP objects (a usage error).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The worker's topology is not there.
    #[error("the exchange `{0}` does not exist: start the worker once with this prefix (it declares the topology), or check --prefix")]
    Missing(String),
    /// The broker refused something else.
    #[error("{what}: {detail}")]
    Broker {
        /// What was being done.
        what: String,
        /// What the client library said.
        detail: String,
    },
}

/// The connection of one `submit` run.
pub struct Session {
    connection: Connection,
    /// The confirming publisher.
    pub publisher: Publisher,
    publisher_session: Option<PublisherSession>,
    /// Every result on `{p}.results`, when waiting for them.
    pub results: Option<Consumer>,
    /// The channel of `results`, closed at the end.
    results_channel: Option<Channel>,
}

impl Session {
    /// Connects, checks the exchanges, sets up the results queue when `wait`, and
    /// installs the publisher.
    pub async fn open(
        url: &str,
        names: &Names,
        wait: bool,
        publish_timeout: Duration,
    ) -> Result<Session, BrokerError> {
        let mut config = TransportConfig::new(url, names.prefix.clone());
        config.connection_name = Some(format!("{} (submit)", default_connection_name()));
        config.publish_timeout = publish_timeout;
        config.validate()?;
        let connection = connection::open(&config).await?;
        match Session::prepare(&connection, names, wait, publish_timeout).await {
            Ok((publisher, publisher_session, results)) => {
                let (channel, consumer) = results.unzip();
                Ok(Session {
                    connection,
                    publisher,
                    publisher_session: Some(publisher_session),
                    results: consumer,
                    results_channel: channel,
                })
            }
            Err(e) => {
                connection::close_quietly(&connection, CLOSE_TIMEOUT).await;
                Err(e)
            }
        }
    }

    async fn prepare(
        connection: &Connection,
        names: &Names,
        wait: bool,
        publish_timeout: Duration,
    ) -> Result<(Publisher, PublisherSession, Option<(Channel, Consumer)>), BrokerError> {
        exists(connection, &names.jobs, ExchangeKind::Direct).await?;
        let results = if wait {
            exists(connection, &names.results, ExchangeKind::Topic).await?;
            Some(results_queue(connection, names).await?)
        } else {
            None
        };
        let publisher = Publisher::disconnected(publish_timeout);
        let session = publisher
            .install(connection, CancellationToken::new())
            .await
            .map_err(|e| broker("opening the publishing channel", &e))?;
        Ok((publisher, session, results))
    }

    /// Waits for outstanding confirms (briefly), then closes the channels and the
    /// connection.
    pub async fn close(mut self) {
        self.publisher.uninstall();
        let mut channels = Vec::new();
        if let Some(session) = self.publisher_session.take() {
            channels.push(session.finish(CLOSE_TIMEOUT).await);
        }
        drop(self.results.take());
        channels.extend(self.results_channel.take());
        for channel in channels {
            if channel.status().connected() {
                let _ =
                    tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "done".into())).await;
            }
        }
        connection::close_quietly(&self.connection, CLOSE_TIMEOUT).await;
    }
}

/// A passive declare: does `exchange` exist?
async fn exists(
    connection: &Connection,
    exchange: &str,
    kind: ExchangeKind,
) -> Result<(), BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| broker("opening a channel", &e))?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let declared = channel
        .exchange_declare(exchange.into(), kind, passive, FieldTable::default())
        .await;
    match declared {
        Ok(()) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(())
        }
        Err(e) => {
            if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
                if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) {
                    return Err(BrokerError::Missing(exchange.to_owned()));
                }
            }
            Err(broker(&format!("checking the exchange `{exchange}`"), &e))
        }
    }
}

/// The exclusive, auto-delete, server-named queue bound to every result.
async fn results_queue(
    connection: &Connection,
    names: &Names,
) -> Result<(Channel, Consumer), BrokerError> {
    let what = "setting up the results queue";
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| broker(what, &e))?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker(what, &e))?;
    channel
        .queue_bind(
            queue.name().clone(),
            names.results.as_str().into(),
            "result.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker(what, &e))?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "dtrust-worker-submit".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker(what, &e))?;
    Ok((channel, consumer))
}

fn broker(what: &str, error: &lapin::Error) -> BrokerError {
    BrokerError::Broker {
        what: what.to_owned(),
        detail: error.to_string(),
    }
}
