//! The worker's Prometheus metrics, in one registry: jobs received and finished (by
//! kind, status and error code), D-Trust request latency (by endpoint and outcome),
//! retries, jobs in flight, the time from publish to pick-up (queue lag), rate-limiter
//! waits, and the broker connection (connected, reconnects).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub kind: String,
    pub status: String,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub outcome: String,
}

/// Every metric of the worker.
pub struct Metrics {
    registry: Registry,
    pub jobs_received: Family<KindLabel, Counter>,
    pub jobs_finished: Family<OutcomeLabels, Counter>,
    pub dtrust_requests: Family<RequestLabels, Histogram>,
    pub retries: Family<KindLabel, Counter>,
    pub in_flight: Gauge,
    pub queue_lag: Histogram,
    pub rate_limiter_wait: Histogram,
    pub broker_connected: Gauge,
    pub reconnects: Gauge,
    pub invalid_messages: Counter,
    pub lease_deferrals: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dtrust");
        let jobs_received = Family::<KindLabel, Counter>::default();
        registry.register(
            "jobs_received",
            "Job messages taken from the job queues",
            jobs_received.clone(),
        );
        let jobs_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that reached their terminal outcome",
            jobs_finished.clone(),
        );
        let dtrust_requests =
            Family::<RequestLabels, Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "dtrust_request_duration_seconds",
            "D-Trust requests by endpoint and outcome",
            dtrust_requests.clone(),
        );
        let retries = Family::<KindLabel, Counter>::default();
        registry.register(
            "retries",
            "Retryable failures scheduled for another attempt",
            retries.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "jobs_in_flight",
            "Jobs being worked on now",
            in_flight.clone(),
        );
        let queue_lag = latency_histogram();
        registry.register(
            "queue_lag_seconds",
            "Time from a job's publish (AMQP timestamp) to its pick-up",
            queue_lag.clone(),
        );
        let rate_limiter_wait = latency_histogram();
        registry.register(
            "rate_limiter_wait_seconds",
            "Waits for the client-side rate limit toward D-Trust",
            rate_limiter_wait.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while connected to RabbitMQ",
            broker_connected.clone(),
        );
        let reconnects = Gauge::default();
        registry.register(
            "broker_reconnects",
            "Reconnections to RabbitMQ since start",
            reconnects.clone(),
        );
        let invalid_messages = Counter::default();
        registry.register(
            "invalid_messages",
            "Messages that failed validation and went to the dead-letter queue",
            invalid_messages.clone(),
        );
        let lease_deferrals = Counter::default();
        registry.register(
            "lease_deferrals",
            "Job steps put off because another worker held the job's lease (or the broker was away)",
            lease_deferrals.clone(),
        );
        Metrics {
            lease_deferrals,
            registry,
            jobs_received,
            jobs_finished,
            dtrust_requests,
            retries,
            in_flight,
            queue_lag,
            rate_limiter_wait,
            broker_connected,
            reconnects,
            invalid_messages,
        }
    }
}

impl Metrics {
    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// A D-Trust request that took `took` and ended in `outcome` (`ok` or an error code).
    pub fn request(&self, endpoint: &str, outcome: &str, took: Duration) {
        self.dtrust_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}
