//! Fault injection: latency, server errors, rate limiting, broken connections and hung
//! requests, drawn from a seeded random generator so that a test sees the same faults on
//! every run (for requests made one after another).
//!
//! For each `/v1` request the simulator makes one uniform draw and reads it against the
//! rates laid end to end in this order: `drop_before_rate`, `error_rate`,
//! `rate_limit_rate`, `drop_after_store_rate`, `hang_after_store_rate`,
//! `timeout_after_store_rate` (so each kind happens with exactly its rate; the rates may
//! add up to at most 1). The last three apply to `POST /v1/orders` only, and only when the
//! order was stored; for any other request their share of the draw means "no fault".
//! Latency (`latency_ms` plus a draw of 0 to `jitter_ms`) comes on top, before the
//! request is handled. Control endpoints (`/_sim/...`) never see faults.

use serde::{Deserialize, Serialize};

/// The `/v1` endpoints, for fault filters and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /v1/ping`
    Ping,
    /// `GET /v1/products`
    Products,
    /// `POST /v1/orders`
    CreateOrder,
    /// `GET /v1/orders/{order_id}`
    GetOrder,
    /// `GET /v1/orders?client_reference=R`
    FindOrders,
    /// `POST /v1/certificates/{serial}/revoke`
    Revoke,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Ping,
        Endpoint::Products,
        Endpoint::CreateOrder,
        Endpoint::GetOrder,
        Endpoint::FindOrders,
        Endpoint::Revoke,
    ];

    /// Method and path, the key of [`super::Stats::requests`].
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Ping => "GET /v1/ping",
            Endpoint::Products => "GET /v1/products",
            Endpoint::CreateOrder => "POST /v1/orders",
            Endpoint::GetOrder => "GET /v1/orders/{order_id}",
            Endpoint::FindOrders => "GET /v1/orders?client_reference",
            Endpoint::Revoke => "POST /v1/certificates/{serial}/revoke",
        }
    }
}

/// A kind of injected fault, the key of [`super::Stats::faults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay before handling (counted once per delayed request).
    Latency,
    /// Connection closed before the request was handled (nothing processed).
    DropBefore,
    /// 500 `INTERNAL_ERROR`, request not processed.
    Error500,
    /// 502 `UNAVAILABLE`, request not processed.
    Error502,
    /// 503 `UNAVAILABLE` with `Retry-After`, request not processed.
    Error503,
    /// 504 `UNAVAILABLE`, request not processed.
    Error504,
    /// 429 `RATE_LIMITED` with `Retry-After`, request not processed.
    RateLimited,
    /// Order stored, then the connection closed without an answer.
    DropAfterStore,
    /// Order stored, then no answer at all (the client must time out).
    HangAfterStore,
    /// Order stored, then 504 `UNAVAILABLE` (a gateway that gave up waiting).
    TimeoutAfterStore,
}

impl FaultKind {
    /// The snake_case name.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::DropBefore => "drop_before",
            FaultKind::Error500 => "error_500",
            FaultKind::Error502 => "error_502",
            FaultKind::Error503 => "error_503",
            FaultKind::Error504 => "error_504",
            FaultKind::RateLimited => "rate_limited",
            FaultKind::DropAfterStore => "drop_after_store",
            FaultKind::HangAfterStore => "hang_after_store",
            FaultKind::TimeoutAfterStore => "timeout_after_store",
        }
    }

    fn error(status: u16) -> FaultKind {
        match status {
            502 => FaultKind::Error502,
            503 => FaultKind::Error503,
            504 => FaultKind::Error504,
            _ => FaultKind::Error500,
        }
    }
}

/// The faults to inject. All rates are probabilities from 0 to 1 per request; the default
/// injects nothing. JSON (for `PUT /_sim/faults` and the binary) uses these field names;
/// missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Seed of the random generator; setting faults restarts it.
    pub seed: u64,
    /// Fixed delay before each request is handled, in ms.
    pub latency_ms: u64,
    /// Random extra delay, 0 to this many ms.
    pub jitter_ms: u64,
    /// Probability of a server error, its status drawn from `error_statuses`.
    pub error_rate: f64,
    /// The statuses of server errors: 500, 502, 503, 504 (default all four).
    pub error_statuses: Vec<u16>,
    /// Probability of 429 `RATE_LIMITED`.
    pub rate_limit_rate: f64,
    /// The `Retry-After` seconds of 429 and 503 answers (default 1).
    pub retry_after_secs: u64,
    /// Probability of closing the connection before handling the request.
    pub drop_before_rate: f64,
    /// `POST /v1/orders`: probability of closing the connection after storing the order.
    pub drop_after_store_rate: f64,
    /// `POST /v1/orders`: probability of never answering after storing the order.
    pub hang_after_store_rate: f64,
    /// `POST /v1/orders`: probability of answering 504 after storing the order.
    pub timeout_after_store_rate: f64,
    /// `POST /v1/orders`: how long taking an order takes once its request is read, in
    /// ms. As at a real server, the order is taken even if the client has gone in the
    /// meantime (a worker killed mid-request): the case a lookup must not miss.
    pub order_processing_ms: u64,
    /// The endpoints faults (and latency) apply to; empty: every `/v1` endpoint.
    pub endpoints: Vec<Endpoint>,
    /// At most this many faults (latency not counted) from when these faults were set;
    /// `None`: no limit. `Some(1)` with a rate of 1 gives exactly one fault.
    pub max_faults: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            seed: 0,
            latency_ms: 0,
            jitter_ms: 0,
            error_rate: 0.0,
            error_statuses: vec![500, 502, 503, 504],
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            drop_before_rate: 0.0,
            drop_after_store_rate: 0.0,
            hang_after_store_rate: 0.0,
            timeout_after_store_rate: 0.0,
            order_processing_ms: 0,
            endpoints: Vec::new(),
            max_faults: None,
        }
    }
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Faults {
        Faults::default()
    }

    fn rates(&self) -> [(&'static str, f64); 6] {
        [
            ("drop_before_rate", self.drop_before_rate),
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("drop_after_store_rate", self.drop_after_store_rate),
            ("hang_after_store_rate", self.hang_after_store_rate),
            ("timeout_after_store_rate", self.timeout_after_store_rate),
        ]
    }

    /// Checks rates (0 to 1, adding up to at most 1) and error statuses.
    pub fn validate(&self) -> Result<(), String> {
        let mut sum = 0.0;
        for (name, rate) in self.rates() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("faults: {name} = {rate} is not between 0 and 1"));
            }
            sum += rate;
        }
        if sum > 1.0 + 1e-9 {
            return Err(format!("faults: the rates add up to {sum}, more than 1"));
        }
        if self.error_rate > 0.0 && self.error_statuses.is_empty() {
            return Err("faults: error_rate without error_statuses".into());
        }
        if let Some(s) = self
            .error_statuses
            .iter()
            .find(|s| ![500, 502, 503, 504].contains(*s))
        {
            return Err(format!(
                "faults: error status {s} is not one of 500, 502, 503, 504"
            ));
        }
        Ok(())
    }
}

/// What to do with a request before handling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Before {
    Proceed,
    Drop,
    Error(u16),
    RateLimited,
}

/// What to do after `POST /v1/orders` stored an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Answer,
    Drop,
    Hang,
    Timeout,
}

impl After {
    pub(crate) fn kind(self) -> Option<FaultKind> {
        match self {
            After::Answer => None,
            After::Drop => Some(FaultKind::DropAfterStore),
            After::Hang => Some(FaultKind::HangAfterStore),
            After::Timeout => Some(FaultKind::TimeoutAfterStore),
        }
    }
}

/// The faults drawn for one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub delay_ms: u64,
    pub before: Before,
    pub after: After,
    pub retry_after_secs: u64,
}

impl Before {
    pub(crate) fn kind(self) -> Option<FaultKind> {
        match self {
            Before::Proceed => None,
            Before::Drop => Some(FaultKind::DropBefore),
            Before::Error(s) => Some(FaultKind::error(s)),
            Before::RateLimited => Some(FaultKind::RateLimited),
        }
    }
}

/// The faults in force with their random generator and budget.
pub(crate) struct FaultState {
    faults: Faults,
    rng: SplitMix64,
    injected: u64,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> FaultState {
        FaultState {
            rng: SplitMix64(faults.seed),
            faults,
            injected: 0,
        }
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    fn budget_left(&self) -> bool {
        self.faults.max_faults.is_none_or(|m| self.injected < m)
    }

    /// Draws the faults of one request to `endpoint`. Before-faults take from the budget
    /// here; after-faults take from it when applied ([`FaultState::take_after`]).
    pub(crate) fn plan(&mut self, endpoint: Endpoint) -> Plan {
        let f = &self.faults;
        let mut plan = Plan {
            delay_ms: 0,
            before: Before::Proceed,
            after: After::Answer,
            retry_after_secs: f.retry_after_secs,
        };
        if !f.endpoints.is_empty() && !f.endpoints.contains(&endpoint) {
            return plan;
        }
        let jitter = if f.jitter_ms > 0 {
            self.rng.below(f.jitter_ms + 1)
        } else {
            0
        };
        let f = &self.faults;
        plan.delay_ms = f.latency_ms + jitter;
        let u = self.rng.unit();
        let mut edge = 0.0;
        let mut band = None;
        for (i, (_, rate)) in f.rates().iter().enumerate() {
            edge += rate;
            if u < edge {
                band = Some(i);
                break;
            }
        }
        let statuses = f.error_statuses.clone();
        match band {
            Some(0) => plan.before = Before::Drop,
            Some(1) => {
                let i = self.rng.below(statuses.len().max(1) as u64) as usize;
                plan.before = Before::Error(statuses.get(i).copied().unwrap_or(500));
            }
            Some(2) => plan.before = Before::RateLimited,
            Some(3) if endpoint == Endpoint::CreateOrder => plan.after = After::Drop,
            Some(4) if endpoint == Endpoint::CreateOrder => plan.after = After::Hang,
            Some(5) if endpoint == Endpoint::CreateOrder => plan.after = After::Timeout,
            _ => {}
        }
        if plan.before != Before::Proceed {
            if self.budget_left() {
                self.injected += 1;
            } else {
                plan.before = Before::Proceed;
            }
        }
        plan
    }

    /// Whether an after-fault may still be injected; takes it from the budget if so.
    pub(crate) fn take_after(&mut self) -> bool {
        if self.budget_left() {
            self.injected += 1;
            true
        } else {
            false
        }
    }
}

/// SplitMix64: tiny, seedable, good enough to draw faults.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
