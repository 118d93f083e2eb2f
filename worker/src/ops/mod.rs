//! Running the worker in production: logging, metrics, health and readiness, and the
//! audit trail of every job's state changes.
//!
//! | module | owns |
//! |---|---|
//! | [`logging`] | human or JSON log lines on standard error |
//! | [`metrics`] | the Prometheus registry and every metric |
//! | [`http`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`audit`] | one structured event per state change of a job |

pub mod audit;
pub mod http;
pub mod logging;
pub mod metrics;
