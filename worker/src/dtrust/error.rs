//! What can go wrong talking to D-Trust, split by what it means for a retry:
//!
//! - *not sent*: the request never reached D-Trust (no connection, TLS refused, proxy
//!   refused, or caught by pre-validation): nothing happened there;
//! - *rejected*: D-Trust answered with an error code;
//! - *unknown outcome*: the request was sent and no answer came: D-Trust may have acted
//!   on it, so an order must be looked up by `client_reference` before ordering again.

use std::time::Duration;

use super::codes::ErrorCode;

/// Where a failed request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    NotSent,
    Rejected,
    Unknown,
}

/// A failed call to D-Trust.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DTrustError {
    /// D-Trust answered with an error.
    #[error("D-Trust refused the request: {code} (HTTP {status}){}: {message}", field.as_ref().map(|f| format!(" on `{f}`")).unwrap_or_default())]
    Rejected {
        status: u16,
        code: ErrorCode,
        message: String,
        field: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Pre-validation against the product's rules caught it; nothing was sent.
    #[error("the order does not fit product `{product}`: {code}{}: {message}", field.as_ref().map(|f| format!(" on `{f}`")).unwrap_or_default())]
    Invalid {
        product: String,
        code: ErrorCode,
        message: String,
        field: Option<String>,
    },
    /// The request did not reach D-Trust; a retry is safe.
    #[error("D-Trust could not be reached: {detail}")]
    NotSent { detail: String },
    /// TLS with D-Trust failed (its certificate is not the pinned or anchored one, or it
    /// refused ours); nothing was sent, and retrying will not help.
    #[error("TLS with D-Trust failed: {detail}")]
    Tls { detail: String },
    /// The proxy refused the tunnel (e.g. 407: proxy authentication); nothing was sent.
    #[error("the proxy refused the connection to D-Trust: {detail}")]
    Proxy { detail: String },
    /// The request was sent, but no answer came: D-Trust may have acted on it.
    #[error("no answer from D-Trust after the request was sent ({detail}); it may have been carried out")]
    UnknownOutcome { detail: String },
    /// D-Trust's answer does not fit the interface.
    #[error("unexpected answer from D-Trust (HTTP {status}): {detail}")]
    Protocol { status: u16, detail: String },
}

impl DTrustError {
    /// Where the request stands.
    pub fn outcome(&self) -> Outcome {
        match self {
            DTrustError::Rejected { .. } | DTrustError::Protocol { .. } => Outcome::Rejected,
            DTrustError::UnknownOutcome { .. } => Outcome::Unknown,
            DTrustError::Invalid { .. }
            | DTrustError::NotSent { .. }
            | DTrustError::Tls { .. }
            | DTrustError::Proxy { .. } => Outcome::NotSent,
        }
    }

    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            DTrustError::Rejected { code, .. } => code.retryable(),
            DTrustError::Protocol { status, .. } => *status >= 500,
            DTrustError::NotSent { .. } | DTrustError::UnknownOutcome { .. } => true,
            DTrustError::Invalid { .. } | DTrustError::Tls { .. } | DTrustError::Proxy { .. } => {
                false
            }
        }
    }

    /// The code for results: D-Trust's own, or the worker's for transport failures.
    pub fn code(&self) -> &str {
        match self {
            DTrustError::Rejected { code, .. } | DTrustError::Invalid { code, .. } => code.as_str(),
            DTrustError::NotSent { .. } => "DTRUST_UNREACHABLE",
            DTrustError::Tls { .. } => "DTRUST_TLS_FAILED",
            DTrustError::Proxy { .. } => "PROXY_REFUSED",
            DTrustError::UnknownOutcome { .. } => "DTRUST_NO_ANSWER",
            DTrustError::Protocol { .. } => "DTRUST_PROTOCOL_ERROR",
        }
    }

    /// What to change, in an operator's words.
    pub fn hint(&self) -> &'static str {
        match self {
            DTrustError::Rejected { code, .. } | DTrustError::Invalid { code, .. } => code.hint(),
            DTrustError::NotSent { .. } => {
                "Check the `url` of the bundle, DNS, the network path or proxy to D-Trust (`dtrust-worker test-connection`); the worker retries."
            }
            DTrustError::Tls { .. } => {
                "The server did not present the certificate the bundle trusts (serverCertificate), or refused the client certificate: \
                 check both with `dtrust-worker check-config` and `test-connection`."
            }
            DTrustError::Proxy { .. } => {
                "Check proxyHost/proxyPort and, if the proxy asks for authentication, proxyUser/proxyPassword."
            }
            DTrustError::UnknownOutcome { .. } => {
                "The connection broke or timed out after the request was sent; the worker looks the order up by its reference before ordering again."
            }
            DTrustError::Protocol { .. } => {
                "D-Trust's answer did not fit the interface this worker knows; check `url` points at D-Trust's REST interface."
            }
        }
    }

    /// How long D-Trust asked to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DTrustError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_classified_for_retries() {
        let not_sent = DTrustError::NotSent {
            detail: "refused".into(),
        };
        assert_eq!(
            (not_sent.outcome(), not_sent.retryable()),
            (Outcome::NotSent, true)
        );
        let unknown = DTrustError::UnknownOutcome {
            detail: "timeout".into(),
        };
        assert_eq!(
            (unknown.outcome(), unknown.retryable()),
            (Outcome::Unknown, true)
        );
        let tls = DTrustError::Tls {
            detail: "pin".into(),
        };
        assert_eq!((tls.outcome(), tls.retryable()), (Outcome::NotSent, false));
        let limited = DTrustError::Rejected {
            status: 429,
            code: ErrorCode::RateLimited,
            message: String::new(),
            field: None,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            (limited.outcome(), limited.retryable()),
            (Outcome::Rejected, true)
        );
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(limited.code(), "RATE_LIMITED");
    }
}
