//! What the transport needs to know: the broker URL, the name prefix, each lane's
//! concurrency, and the timeouts of connecting, publishing, reconnecting and draining.
//!
//! [`TransportConfig::new`] gives the defaults; the application overrides fields from
//! its settings and command line (`--issue-concurrency`, `--revoke-concurrency`).

use std::fmt;
use std::time::Duration;

/// Default `x-delivery-limit` of the job queues.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;
/// Default heartbeat asked of the broker, in seconds.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Configuration of the AMQP transport.
#[derive(Clone)]
pub struct TransportConfig {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`. It may hold a password:
    /// it is never logged or printed (`Debug` redacts it).
    pub url: String,
    /// Prefix of every exchange and queue (setting `amqp.prefix`, default `dtrust`).
    pub prefix: String,
    /// Issuance jobs handled at once; also the issue consumer's prefetch.
    pub issue_concurrency: u16,
    /// Revocation jobs handled at once; also the revoke consumer's prefetch.
    pub revoke_concurrency: u16,
    /// Key-archive replies handled at once; also that consumer's prefetch.
    pub replies_concurrency: u16,
    /// `x-delivery-limit` of the job queues `{p}.issue` and `{p}.revoke`.
    pub delivery_limit: u32,
    /// Heartbeat asked of the broker, in seconds, unless the URL sets `heartbeat=`.
    pub heartbeat_secs: u16,
    /// Bound on opening the connection (TCP and AMQP handshake).
    pub connect_timeout: Duration,
    /// Bound on one publish, from the call until the broker's confirm.
    pub publish_timeout: Duration,
    /// On shutdown: how long in-flight handlers may still run (with the publisher and
    /// acknowledgements working) before channels and the connection are closed.
    pub drain_timeout: Duration,
    /// Waits between reconnection attempts.
    pub reconnect: ReconnectPolicy,
    /// Connection name shown by the broker; default `dtrust-worker <hostname>`.
    pub connection_name: Option<String>,
}

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// First wait after a loss.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Factor from one wait to the next.
    pub multiplier: f64,
    /// Jitter: each wait is drawn from `wait * (1 ± randomization)`.
    pub randomization: f64,
    /// A session that stayed up this long starts the next backoff from `initial` again.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            randomization: 0.5,
            stable_after: Duration::from_secs(30),
        }
    }
}

impl TransportConfig {
    /// The defaults for `url` and `prefix`: concurrency 8 (issue), 4 (revoke), 4
    /// (key-archive replies), delivery limit 5, heartbeat 10 s, connect timeout 10 s,
    /// publish timeout 30 s, drain timeout 30 s.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        TransportConfig {
            url: url.into(),
            prefix: prefix.into(),
            issue_concurrency: 8,
            revoke_concurrency: 4,
            replies_concurrency: 4,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            reconnect: ReconnectPolicy::default(),
            connection_name: None,
        }
    }

    /// Checks what no broker can fix: an empty or over-long prefix, a zero concurrency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let prefix = self.prefix.as_str();
        if prefix.is_empty() {
            return Err(ConfigError(
                "`amqp.prefix` is empty: set a prefix such as `dtrust`".into(),
            ));
        }
        // The longest derived name is `{p}.keyarchive.requests` (20 more bytes); leases
        // add a job id of up to 128 characters to `{p}.lease.`.
        if prefix.len() > 100 {
            return Err(ConfigError(format!(
                "`amqp.prefix` is {} bytes long: at most 100 fit AMQP's 255-byte names",
                prefix.len()
            )));
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError(format!(
                "`amqp.prefix` `{}` contains whitespace or control characters",
                prefix.escape_debug()
            )));
        }
        for (name, value) in [
            ("issue concurrency", self.issue_concurrency),
            ("revoke concurrency", self.revoke_concurrency),
            ("key-archive replies concurrency", self.replies_concurrency),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{name} is 0: it must be at least 1")));
            }
        }
        if self.delivery_limit == 0 || self.delivery_limit > i32::MAX as u32 {
            return Err(ConfigError(format!(
                "delivery limit {} is out of range (1 to {})",
                self.delivery_limit,
                i32::MAX
            )));
        }
        Ok(())
    }

    /// The URL without its password, for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("issue_concurrency", &self.issue_concurrency)
            .field("revoke_concurrency", &self.revoke_concurrency)
            .field("replies_concurrency", &self.replies_concurrency)
            .field("delivery_limit", &self.delivery_limit)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("reconnect", &self.reconnect)
            .field("connection_name", &self.connection_name)
            .finish()
    }
}

/// A configuration no broker can make work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid AMQP configuration: {0}")]
pub struct ConfigError(pub String);

/// `amqp://user:secret@host/vhost` → `amqp://user:[redacted]@host/vhost`; anything
/// without a password is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:[redacted]{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:[redacted]@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("amqps://u:p@ss@host?heartbeat=5"),
            "amqps://u:[redacted]@host?heartbeat=5"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config = TransportConfig::new("amqp://u:topsecret@h/", "dtrust");
        assert!(!format!("{config:?}").contains("topsecret"));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut config = TransportConfig::new("amqp://h/", "");
        assert!(config.validate().unwrap_err().0.contains("empty"));
        config.prefix = "dtrust".into();
        config.revoke_concurrency = 0;
        assert!(config.validate().unwrap_err().0.contains("revoke"));
        config.revoke_concurrency = 1;
        assert!(config.validate().is_ok());
    }
}
