//! The D-Trust simulator: D-Trust's REST interface as `shared/contract/dtrust-rest.md`
//! models it, served over real mutual TLS, with D-Trust's validation rules, real
//! certificates issued from real CSRs, and faults injected on demand. The worker's
//! integration tests, the demo and the benchmarks run against it; the `dtrust-sim`
//! binary serves it to other processes.
//!
//! It is an independent implementation of the contract: its JSON types
//! (module `wire`) are its own, never the worker's, so a mapping bug on either side
//! shows.
//!
//! ```no_run
//! # async fn example() {
//! use dtrust_testkit::bundle::BundleBuilder;
//! use dtrust_testkit::sim::{Sim, SimConfig};
//! let pki = BundleBuilder::new("https://placeholder/");
//! let sim = Sim::start(SimConfig::default_catalogue(), &pki).await;
//! let bundle = pki.set("url", &sim.url()); // a connector bundle pointing at the sim
//! # }
//! ```
//!
//! # TLS
//! The server presents the [`BundleBuilder`]'s `server` certificate (chain: it, then the
//! bundle's CA) and requires a client certificate issued by the bundle's CA: any other
//! client certificate, or none, fails the handshake. A client certificate trusted at the
//! TLS layer but listed in [`SimConfig::rejected_client_certs`] (SHA-256 fingerprints,
//! see [`fingerprint`]) is answered 401 `CLIENT_CERT_REJECTED` on every `/v1` request.
//!
//! # Endpoints
//! Exactly the contract's: `GET /v1/ping`, `GET /v1/products`, `POST /v1/orders` (201),
//! `GET /v1/orders/{order_id}` (a `PENDING` order with `Retry-After`: the seconds until
//! its approval, at least 1), `GET /v1/orders?client_reference=R`,
//! `POST /v1/certificates/{serial}/revoke`. Errors are
//! `{"errors": [{"code", "message", "field"}]}` with the contract's statuses. Paths are
//! matched exactly (no trailing slash, no `//`). HTTP/1.1 with keep-alive: a connection
//! stays open until the client closes it (the simulator closes one only when a fault says
//! so), and [`Stats::connections`] counts them.
//!
//! # Validation of `POST /v1/orders`
//! In a fixed order, see the `validate` module for the full list: body shape and required
//! fields (`INVALID_REQUEST`), product (`PRODUCT_NOT_ALLOWED`), request type
//! (`INVALID_REQUEST_TYPE`), CSR (`INVALID_CSR`), RDNs (`GENERIC_RDN_REGEXERROR`),
//! e-mail domains (`EMAILDOMAIN_DOES_NOT_FIT`), revocation password
//! (`GENERIC_PASSWORD_REGEXERROR`). D-Trust does not deduplicate on `client_reference`:
//! a second POST with the same reference makes a second order.
//!
//! # Where the contract is silent, the simulator decides
//! - `client_reference` is required (the worker finds orders by it); missing, empty or
//!   over 128 characters: 400 `INVALID_REQUEST`, `field` `client_reference`. So is a
//!   malformed body, a missing `product` or `subject`, an unknown field anywhere, OU
//!   given as a string instead of an array, and a revocation without a known `reason`.
//! - The revocation password is required on orders (missing: 400
//!   `GENERIC_PASSWORD_REGEXERROR`).
//! - Key sizes are RSA sizes: a CSR with an EC key is `INVALID_CSR`. A PKCS12 order gets
//!   a fresh RSA key of the product's smallest size, in a PKCS#12 (AES-256, PBKDF2,
//!   HMAC-SHA-256) holding key, certificate and issuing CA, with a random 20-character
//!   password.
//! - The CSR's own subject is ignored: the certificate's subject comes from `subject`,
//!   its SAN from `san` (DNS, e-mail, UPN as otherName), its key from the CSR.
//! - E-mail domains match exactly (case-insensitive); a subdomain of a verified domain
//!   is not verified.
//! - Revocation checks, in order: body (400 `INVALID_REQUEST`), serial (404
//!   `NOT_FOUND`; serials compare case-insensitively, leading zeros ignored), the
//!   password's pattern for certificates the simulator issued (400
//!   `GENERIC_PASSWORD_REGEXERROR`), the password (403 `REVOCATION_PASSWORD_WRONG`),
//!   then the state (409 `ALREADY_REVOKED`, only after a right password).
//! - An order rejected through the control API carries `error.code` `ORDER_REJECTED`
//!   unless another is given. A wrong method on a known path: 405 `METHOD_NOT_ALLOWED`.
//! - Serials are 16 bytes, upper-case hex; order ids `ord-<6 hex>-<counter>`; certificates
//!   are valid for a year and signed by the issuing CA (ECDSA P-256,
//!   [`ISSUING_CA_DN`], the `issuer_dn` of every product).
//!
//! # Control endpoints
//! On the same TLS server, with the same client certificate requirement (the rejected
//! list does not apply; faults never do; they are not counted in [`Stats`]):
//!
//! | method, path | does |
//! |---|---|
//! | `GET /_sim/stats` | [`Stats`] |
//! | `GET /_sim/orders` | every [`OrderRecord`] (no keys, no passwords) |
//! | `GET /_sim/revocations` | every [`RevocationRecord`] |
//! | `GET /_sim/faults`, `PUT /_sim/faults` | the [`Faults`] in force; replace them (JSON, missing fields default) |
//! | `POST /_sim/orders/{id}/approve` | issue a pending order now; 409 `NOT_PENDING` if it is not |
//! | `POST /_sim/orders/{id}/reject` | reject a pending order; optional body `{"code", "message"}` |
//! | `POST /_sim/certificates` | `{"serial", "revocation_password"}`: a certificate the sim did not issue, to revoke |
//! | `POST /_sim/rejected-client-certs` | `{"fingerprint"}`: from now on answer that client certificate 401 |
//! | `GET /_sim/issuing-ca` | the issuing CA certificate, PEM |
//!
//! # Faults
//! See the `faults` module (and [`Faults`]): latency, 5xx, 429, connection dropped before handling or after
//! the order was stored, hung after storing, 504 after storing; seeded, per endpoint,
//! with an optional budget.
//!
//! [`BundleBuilder`]: crate::bundle::BundleBuilder

mod ca;
mod config;
mod error;
mod faults;
mod server;
mod state;
mod tls;
mod validate;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{
    Product, RequestType, SimConfig, COUNTRY_PATTERN, DEFAULT_ACCOUNT, DNS_NAME_PATTERN,
    EMAIL_PATTERN, ISSUING_CA_DN, NAME_PATTERN, ORGANIZATION_IDENTIFIER_PATTERN, PASSWORD_PATTERN,
    RDN_NAMES,
};
pub use error::codes;
pub use faults::{Endpoint, FaultKind, Faults};
pub use state::{OrderRecord, OrderStatus, RevocationRecord, Stats};
pub use tls::fingerprint;
pub use wire::ErrorItem;

use crate::bundle::BundleBuilder;
use state::Shared;

/// A running simulator. It serves on its own Tokio runtime (two worker threads), so it
/// works the same from async and plain tests; dropping it (or [`Sim::shutdown`]) stops it
/// and closes every connection.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Sim {
    /// Starts a simulator whose TLS identity is `pki.server` (chain with `pki.ca`) and
    /// which trusts client certificates issued by `pki.ca` only. Panics when the
    /// configuration is invalid or the address cannot be bound (see [`Sim::try_start`]).
    pub async fn start(config: SimConfig, pki: &BundleBuilder) -> Sim {
        Sim::start_blocking(config, pki)
    }

    /// [`Sim::start`] for code without an async context.
    pub fn start_blocking(config: SimConfig, pki: &BundleBuilder) -> Sim {
        Sim::try_start(config, pki)
            .unwrap_or_else(|e| panic!("cannot start the D-Trust simulator: {e}"))
    }

    /// Starts a simulator, or says why it cannot.
    pub fn try_start(config: SimConfig, pki: &BundleBuilder) -> Result<Sim, String> {
        let shared = Arc::new(Shared::new(&config)?);
        let tls = tls::server_config(&pki.server, &pki.ca.cert)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("listener: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dtrust-sim")
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))?
        };
        runtime.spawn(server::serve(listener, acceptor, shared.clone()));
        tracing::debug!("dtrust-sim: listening on {addr}");
        Ok(Sim {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `https://127.0.0.1:PORT/` (the server certificate names
    /// `localhost` and `127.0.0.1`; an unspecified listen address is given as
    /// 127.0.0.1).
    pub fn url(&self) -> String {
        let ip = self.addr.ip();
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        format!("https://{host}:{}/", self.addr.port())
    }

    /// The account id `GET /v1/ping` answers.
    pub fn account(&self) -> &str {
        &self.shared.account
    }

    /// Replaces the faults in force (and restarts their random generator with their
    /// seed). Panics on invalid faults (rates outside 0..=1 or adding up to more than 1,
    /// error statuses other than 500, 502, 503, 504).
    pub fn set_faults(&self, faults: Faults) {
        if let Err(e) = self.shared.set_faults(faults) {
            panic!("{e}");
        }
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults().faults().clone()
    }

    /// Every stored order, oldest first.
    pub fn orders(&self) -> Vec<OrderRecord> {
        self.shared.order_records()
    }

    /// How many orders carry `client_reference`.
    pub fn orders_for(&self, client_reference: &str) -> usize {
        self.shared.orders_for(client_reference)
    }

    /// Every revoked certificate, in the order revoked, with its revoke attempts.
    pub fn revocations(&self) -> Vec<RevocationRecord> {
        self.shared.revocation_records()
    }

    /// Requests per endpoint and outcome, faults per kind.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The issuing CA certificate, PEM.
    pub fn issuing_ca_pem(&self) -> String {
        self.shared.ca.cert_pem.clone()
    }

    /// The issuing CA certificate, DER.
    pub fn issuing_ca_der(&self) -> Vec<u8> {
        self.shared.ca.cert_der.clone()
    }

    /// The issuing CA's DN as products give it ([`ISSUING_CA_DN`]).
    pub fn issuer_dn(&self) -> &'static str {
        ISSUING_CA_DN
    }

    /// Registers a certificate the simulator did not issue (one that "already exists"),
    /// so that it can be revoked with `revocation_password`. Panics unless `serial` is 1
    /// to 64 hex digits.
    pub fn seed_certificate(&self, serial: &str, revocation_password: &str) {
        if let Err(e) = self.shared.seed_certificate(serial, revocation_password) {
            panic!("{e}");
        }
    }

    /// Approves a pending order now: it is `ISSUED` when this returns.
    pub fn approve(&self, order_id: &str) -> Result<OrderRecord, String> {
        self.shared.approve(order_id).map_err(|e| e.item.message)
    }

    /// Rejects a pending order with `error.code` = `code` (default `ORDER_REJECTED`).
    pub fn reject(
        &self,
        order_id: &str,
        code: Option<&str>,
        message: &str,
    ) -> Result<OrderRecord, String> {
        let item = ErrorItem {
            code: code.unwrap_or(codes::ORDER_REJECTED).into(),
            message: message.into(),
            field: None,
        };
        self.shared
            .reject(order_id, item)
            .map_err(|e| e.item.message)
    }

    /// From now on, answers the client certificate with this SHA-256 fingerprint 401
    /// `CLIENT_CERT_REJECTED`.
    pub fn reject_client_cert(&self, fingerprint: &str) {
        self.shared.reject_client_cert(fingerprint);
    }

    /// Stops the simulator and closes its connections (as dropping it does).
    pub fn shutdown(self) {}
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
