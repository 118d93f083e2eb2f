//! Opening a connection to the broker: the URL with a heartbeat, the connection name
//! `dtrust-worker <hostname>`, a bound on the handshake; and the one-shot
//! [`check_broker`] of `test-connection`.

use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use super::config::{redact_url, TransportConfig, DEFAULT_HEARTBEAT_SECS};

/// Opening a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be parsed.
    #[error("the AMQP URL `{url}` is not valid: {detail}")]
    InvalidUrl {
        /// The URL without its password.
        url: String,
        /// What the parser said.
        detail: String,
    },
    /// No connection within the timeout (broker down, unreachable, or stalled).
    #[error("no connection to the broker at {url} within {timeout:?}")]
    Timeout {
        /// The URL without its password.
        url: String,
        /// The bound that expired.
        timeout: Duration,
    },
    /// The broker refused or dropped the connection, or a channel could not be opened.
    #[error("the broker at {url} could not be used: {detail}")]
    Broker {
        /// The URL without its password.
        url: String,
        /// What the client library said.
        detail: String,
    },
}

/// The connection name the broker shows: `dtrust-worker <hostname>`.
pub fn default_connection_name() -> String {
    format!("dtrust-worker {}", hostname())
}

/// The machine's host name, without a dependency: the kernel's, else `$HOSTNAME`, else
/// `unknown-host`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// Parses `url` and adds the heartbeat unless the URL sets one.
fn prepare_uri(url: &str, heartbeat_secs: u16) -> Result<AMQPUri, ConnectError> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|detail: String| ConnectError::InvalidUrl {
            url: redact_url(url),
            detail,
        })?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(heartbeat_secs);
    }
    Ok(uri)
}

/// Opens a connection as `config` says (heartbeat, name, timeout).
pub(crate) async fn open(config: &TransportConfig) -> Result<Connection, ConnectError> {
    let name = config
        .connection_name
        .clone()
        .unwrap_or_else(default_connection_name);
    open_url(
        &config.url,
        config.heartbeat_secs,
        &name,
        config.connect_timeout,
    )
    .await
}

async fn open_url(
    url: &str,
    heartbeat_secs: u16,
    name: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let uri = prepare_uri(url, heartbeat_secs)?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(timeout, Connection::connect_uri(uri, properties)).await {
        Err(_) => Err(ConnectError::Timeout {
            url: redact_url(url),
            timeout,
        }),
        Ok(Err(error)) => Err(ConnectError::Broker {
            url: redact_url(url),
            detail: error.to_string(),
        }),
        Ok(Ok(connection)) => Ok(connection),
    }
}

/// Closes `connection` cleanly if it is still open, waiting at most `timeout`.
pub(crate) async fn close_quietly(connection: &Connection, timeout: Duration) {
    if connection.status().connected() {
        match tokio::time::timeout(
            timeout,
            connection.close(200, "dtrust-worker closing".into()),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "closing the AMQP connection failed"),
            Err(_) => tracing::debug!("closing the AMQP connection timed out"),
        }
    }
}

/// The check of `test-connection`: connects to `url` (within `timeout`), opens a
/// channel, closes both. Nothing is declared or published.
pub async fn check_broker(url: &str, timeout: Duration) -> Result<(), ConnectError> {
    check_exchanges(url, &[], timeout).await
}

/// Like [`check_broker`], and also that each of `exchanges` exists (a passive declare),
/// e.g. the key-archive exchange the Certificate Manager talks through.
pub async fn check_exchanges(
    url: &str,
    exchanges: &[&str],
    timeout: Duration,
) -> Result<(), ConnectError> {
    let connection = open_url(
        url,
        DEFAULT_HEARTBEAT_SECS,
        &format!("{} (test-connection)", default_connection_name()),
        timeout,
    )
    .await?;
    let result = async {
        let channel = tokio::time::timeout(timeout, connection.create_channel())
            .await
            .map_err(|_| ConnectError::Timeout {
                url: redact_url(url),
                timeout,
            })?
            .map_err(|error| ConnectError::Broker {
                url: redact_url(url),
                detail: format!("no channel could be opened: {error}"),
            })?;
        for exchange in exchanges {
            let passive = lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declared = tokio::time::timeout(
                timeout,
                channel.exchange_declare((*exchange).into(), lapin::ExchangeKind::Direct, passive, Default::default()),
            )
            .await;
            if !matches!(declared, Ok(Ok(()))) {
                return Err(ConnectError::Broker {
                    url: redact_url(url),
                    detail: format!("the exchange `{exchange}` does not exist: start the worker once (it declares it) or check the prefix"),
                });
            }
        }
        let _ = tokio::time::timeout(timeout, channel.close(200, "check done".into())).await;
        Ok(())
    }
    .await;
    close_quietly(&connection, timeout).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_unless_the_url_sets_one() {
        let uri = prepare_uri("amqp://guest:guest@127.0.0.1:5672/%2f", 10).unwrap();
        assert_eq!(uri.query.heartbeat, Some(10));
        let uri = prepare_uri("amqp://127.0.0.1:5672/%2f?heartbeat=3", 10).unwrap();
        assert_eq!(uri.query.heartbeat, Some(3));
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let error = prepare_uri("http://u:secret@host:notaport/", 10).unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("not valid"), "{text}");
    }

    #[test]
    fn connection_name_names_the_host() {
        assert!(default_connection_name().starts_with("dtrust-worker "));
    }
}
