//! D-Trust: the REST client the worker orders and revokes with, and everything about
//! talking to it.
//!
//! | module | owns |
//! |---|---|
//! | [`wire`] | the interface's bodies and field names (the one place to adapt to D-Trust's real specification) |
//! | [`client`] | the HTTP client: mutual TLS, proxy, timeouts, one attempt per call |
//! | [`tls`] | the rustls configuration: client identity, trust anchor or pinned leaf |
//! | [`error`] | failures split into not sent, rejected and unknown outcome |
//! | [`codes`] | D-Trust's error codes, their hints and retryability |
//! | [`ratelimit`] | the token bucket toward D-Trust, shared by all tasks |
//! | [`rules`] | pre-validation of an order against its product's rules |

pub mod client;
pub mod codes;
pub mod error;
pub mod ratelimit;
pub mod rules;
pub mod tls;
pub mod wire;

pub use client::{Client, ClientBuildError};
pub use codes::ErrorCode;
pub use error::{DTrustError, Outcome};
pub use ratelimit::RateLimiter;
pub use rules::ProductRules;
