//! RabbitMQ brokers of the tests' own, in Docker containers started with the
//! `testcontainers` crate: what the shared broker cannot show (restarts, kills, a
//! frozen node, resource alarms, a cluster losing a node).
//!
//! | item | gives |
//! |---|---|
//! | [`Broker`] | a fresh node: its AMQP URL; stop, start, restart, SIGKILL, pause, unpause, `rabbitmqctl` |
//! | [`Cluster`] | three nodes joined in one cluster |
//! | [`DurableBus`] | the topology, jobs published with confirms, results kept in a quorum queue and collected across broker failures |
//! | [`run`] | one runtime for every container test of a process |
//!
//! The image is `DTRUST_TEST_RABBITMQ_IMAGE` (`name:tag`), by default the official
//! `rabbitmq` image for a Docker that reaches an image registry. `make test-containers`
//! (`scripts/ensure-docker.sh`) sets it to a local image built from Debian's
//! `rabbitmq-server` package (`scripts/rabbitmq-image.sh`), brings Docker up where no
//! engine runs, and removes every container labelled [`LABEL`] at the end, also after
//! a failed test; each container is also removed when its handle is dropped.

pub mod bus;
pub mod engine;
pub mod rabbitmq;

use std::future::Future;
use std::sync::LazyLock;

pub use bus::DurableBus;
pub use rabbitmq::{free_port, Broker, Cluster};

/// The label every test container carries (its value: the test's name).
pub const LABEL: &str = "dtrust-test";

/// The official image, for a Docker that reaches an image registry.
const DEFAULT_IMAGE: &str = "rabbitmq:4";

/// `DTRUST_TEST_RABBITMQ_IMAGE` as name and tag.
pub fn image() -> (String, String) {
    let image = std::env::var("DTRUST_TEST_RABBITMQ_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    // The tag follows the last ':' unless that is part of a registry's host:port.
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (image, "latest".to_string()),
    }
}

/// Runs a container test on the runtime all container tests of this process share:
/// testcontainers keeps one Docker client per process, and its connections must not
/// belong to a test's runtime that ends before another test is done with them.
pub fn run<F: Future>(test: F) -> F::Output {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("the container tests' runtime")
    });
    RUNTIME.block_on(test)
}
