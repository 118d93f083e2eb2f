//! The simulator's memory: orders, certificates, revocations, statistics; and what the
//! endpoints do with it, apart from HTTP. Everything lives in memory behind short-held
//! locks; revocation passwords are kept as they are (it is a simulator) but never logged,
//! printed or answered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::ca::{self, IssuingCa, Usage};
use super::config::{RequestType, SimConfig, ISSUING_CA_DN};
use super::error::{codes, ApiError};
use super::faults::{Endpoint, FaultKind, FaultState, Faults};
use super::validate::{self, CompiledProduct, KeySource, Rules, ValidOrder};
use super::wire::{ErrorItem, OrderOut, RevokeOut, RevokeRequest, REVOCATION_REASONS};

/// The status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OrderStatus {
    /// Waiting for the manual approval.
    Pending,
    /// The certificate is there.
    Issued,
    /// Refused at the approval.
    Rejected,
}

impl OrderStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Issued => "ISSUED",
            OrderStatus::Rejected => "REJECTED",
        }
    }
}

/// A stored order, as [`super::Sim::orders`] and `GET /_sim/orders` give it (no keys, no
/// passwords).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: String,
    pub client_reference: String,
    pub product: String,
    pub request_type: RequestType,
    pub status: OrderStatus,
    /// The certificate's serial (hex, upper case), once issued.
    pub serial: Option<String>,
    /// The subject's CN, if any.
    pub subject_cn: Option<String>,
    /// When the order was taken, RFC 3339.
    pub created_at: String,
    /// Whether its certificate has been revoked.
    pub revoked: bool,
    /// Why it was rejected.
    pub error: Option<ErrorItem>,
}

/// A revoked certificate, with how many revoke calls its serial got (successful or not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub serial: String,
    /// The order that issued it; `None` for a seeded certificate.
    pub order_id: Option<String>,
    pub reason: String,
    /// RFC 3339.
    pub revoked_at: String,
    /// Revoke calls for this serial so far, including refused ones and repeats.
    pub attempts: u64,
}

/// Requests per endpoint and outcome, injected faults per kind, and totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// [`Endpoint::label`] → outcome (the status, `"dropped"` or `"hung"`) → count.
    /// Requests to unknown `/v1` paths count under `"other"`; control endpoints do not
    /// count.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// [`FaultKind::label`] → count.
    pub faults: BTreeMap<String, u64>,
    /// Total latency injected, ms.
    pub latency_ms_injected: u64,
    /// Order requests read (counted before the order is taken).
    pub orders_received: u64,
    /// Orders stored.
    pub orders: u64,
    /// Certificates issued.
    pub certificates_issued: u64,
    /// Certificates revoked.
    pub revocations: u64,
    /// TLS connections established (fewer than requests when clients keep connections
    /// alive).
    pub connections: u64,
    /// TLS handshakes that failed (e.g. a client certificate from another CA).
    pub tls_handshake_failures: u64,
}

impl Stats {
    /// Requests to `endpoint`, whatever their outcome.
    pub fn requests_to(&self, endpoint: Endpoint) -> u64 {
        self.requests
            .get(endpoint.label())
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }

    /// Requests to `endpoint` with `outcome` (`"201"`, `"dropped"`, ...).
    pub fn outcome(&self, endpoint: Endpoint, outcome: &str) -> u64 {
        self.requests
            .get(endpoint.label())
            .and_then(|m| m.get(outcome))
            .copied()
            .unwrap_or(0)
    }

    /// Faults of `kind` injected.
    pub fn faults_of(&self, kind: FaultKind) -> u64 {
        self.faults.get(kind.label()).copied().unwrap_or(0)
    }
}

/// A password that never prints.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    /// Approved, certificate being made: answered as PENDING.
    Issuing,
    Issued,
    Rejected,
}

struct IssuedCert {
    serial: String,
    cert_der: Vec<u8>,
    pkcs12: Option<(Vec<u8>, Secret)>,
}

struct StoredOrder {
    id: String,
    client_reference: String,
    product: String,
    request_type: RequestType,
    created_at: OffsetDateTime,
    subject_cn: Option<String>,
    status: Status,
    /// The validated order, kept while PENDING.
    work: Option<ValidOrder>,
    approve_at: Option<Instant>,
    approve: Option<Arc<Notify>>,
    issued: Option<IssuedCert>,
    error: Option<ErrorItem>,
}

struct CertEntry {
    serial: String,
    password: Secret,
    product: Option<String>,
    order_id: Option<String>,
    revoked: Option<(String, String)>,
    attempts: u64,
}

#[derive(Default)]
struct Store {
    orders: Vec<StoredOrder>,
    by_id: HashMap<String, usize>,
    by_reference: HashMap<String, Vec<usize>>,
    /// Normalized serial → certificate.
    certs: HashMap<String, CertEntry>,
    /// Normalized serials in the order they were revoked.
    revoked: Vec<String>,
    stats: Stats,
}

/// A key pair: (PKCS#8 DER, SubjectPublicKeyInfo DER).
type KeyPairDer = (Vec<u8>, Vec<u8>);

/// A pending order's approval timer, for the server to run.
pub(crate) struct PendingTimer {
    pub order_id: String,
    pub delay: Duration,
    pub approve: Arc<Notify>,
}

/// Everything the simulator knows, shared by its connections.
pub(crate) struct Shared {
    pub account: String,
    products: Vec<CompiledProduct>,
    verified_email_domains: Vec<String>,
    organization_identifier_enabled: bool,
    pub ca: IssuingCa,
    ca_b64: String,
    reuse_pkcs12_keys: bool,
    key_cache: Mutex<HashMap<u32, KeyPairDer>>,
    rejected_client_certs: Mutex<HashSet<String>>,
    faults: Mutex<FaultState>,
    store: Mutex<Store>,
    /// Random per instance, in order ids and serials.
    tag: String,
    serial_prefix: Vec<u8>,
    counter: AtomicU64,
}

/// Upper-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A fingerprint as configured (any case, colons allowed) → lower-case hex.
pub(crate) fn normalize_fingerprint(f: &str) -> String {
    f.chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A serial as the key of the certificate map: upper case, no leading zeros. `None`
/// when it is not 1 to 64 hex digits.
fn normalize_serial(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = s.trim_start_matches('0').to_ascii_uppercase();
    Some(if t.is_empty() { "0".into() } else { t })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Shared {
    pub fn new(config: &SimConfig) -> Result<Shared, String> {
        config.validate()?;
        let products = config
            .products
            .iter()
            .cloned()
            .map(CompiledProduct::new)
            .collect::<Result<Vec<_>, _>>()?;
        let ca = IssuingCa::new(&ca_dn_parts(ISSUING_CA_DN))?;
        let ca_b64 = b64(&ca.cert_der);
        let mut serial_prefix = ca::random_bytes(8);
        serial_prefix[0] = 0x40 | (serial_prefix[0] & 0x3f);
        Ok(Shared {
            account: config.account.clone(),
            products,
            verified_email_domains: config.verified_email_domains.clone(),
            organization_identifier_enabled: config.organization_identifier_enabled,
            ca,
            ca_b64,
            reuse_pkcs12_keys: config.reuse_pkcs12_keys,
            key_cache: Mutex::new(HashMap::new()),
            rejected_client_certs: Mutex::new(
                config
                    .rejected_client_certs
                    .iter()
                    .map(|f| normalize_fingerprint(f))
                    .collect(),
            ),
            faults: Mutex::new(FaultState::new(config.faults.clone())),
            store: Mutex::new(Store::default()),
            tag: hex(&ca::random_bytes(3)).to_ascii_lowercase(),
            serial_prefix,
            counter: AtomicU64::new(0),
        })
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, FaultState> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        *self.faults() = FaultState::new(faults);
        Ok(())
    }

    pub fn is_rejected(&self, fingerprint: Option<&str>) -> bool {
        match fingerprint {
            Some(f) => self
                .rejected_client_certs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(f),
            None => true,
        }
    }

    pub fn reject_client_cert(&self, fingerprint: &str) {
        self.rejected_client_certs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(normalize_fingerprint(fingerprint));
    }

    // ---- statistics

    pub fn record_order_received(&self) {
        self.store().stats.orders_received += 1;
    }

    pub fn record_request(&self, label: &str, outcome: &str) {
        let mut s = self.store();
        *s.stats
            .requests
            .entry(label.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    pub fn record_fault(&self, kind: FaultKind) {
        *self
            .store()
            .stats
            .faults
            .entry(kind.label().into())
            .or_default() += 1;
    }

    pub fn record_latency(&self, ms: u64) {
        let mut s = self.store();
        s.stats.latency_ms_injected += ms;
        *s.stats
            .faults
            .entry(FaultKind::Latency.label().into())
            .or_default() += 1;
    }

    pub fn record_connection(&self, established: bool) {
        let mut s = self.store();
        if established {
            s.stats.connections += 1;
        } else {
            s.stats.tls_handshake_failures += 1;
        }
    }

    pub fn stats(&self) -> Stats {
        self.store().stats.clone()
    }

    // ---- products

    pub fn enabled_products(&self) -> impl Iterator<Item = &CompiledProduct> {
        self.products.iter().filter(|p| p.product.enabled)
    }

    // ---- orders

    /// Validates, stores and (unless the product needs an approval) issues. Blocking:
    /// verifies a signature and may generate an RSA key.
    pub fn create_order(&self, body: &[u8]) -> Result<(OrderOut, Option<PendingTimer>), ApiError> {
        let rules = Rules {
            products: &self.products,
            verified_email_domains: &self.verified_email_domains,
            organization_identifier_enabled: self.organization_identifier_enabled,
        };
        let valid = validate::validate_order(body, &rules)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("ord-{}-{n:06}", self.tag);
        let subject_cn = valid
            .subject
            .iter()
            .find(|(k, _)| *k == "CN")
            .map(|(_, v)| v.clone());
        let mut order = StoredOrder {
            id: id.clone(),
            client_reference: valid.client_reference.clone(),
            product: valid.product.clone(),
            request_type: valid.request_type,
            created_at: OffsetDateTime::now_utc(),
            subject_cn,
            status: Status::Pending,
            work: None,
            approve_at: None,
            approve: None,
            issued: None,
            error: None,
        };
        let mut cert = None;
        let timer = match valid.approval_ms {
            Some(ms) => {
                let delay = Duration::from_millis(ms);
                let approve = Arc::new(Notify::new());
                order.approve_at = Some(Instant::now() + delay);
                order.approve = Some(approve.clone());
                order.work = Some(valid);
                Some(PendingTimer {
                    order_id: id.clone(),
                    delay,
                    approve,
                })
            }
            None => {
                let issued = self.issue(&valid).map_err(ApiError::internal)?;
                cert = cert_entry(&issued, &valid, &id);
                order.status = Status::Issued;
                order.issued = Some(issued);
                None
            }
        };
        let mut s = self.store();
        if let Some((key, entry)) = cert {
            s.certs.insert(key, entry);
        }
        let out = self.out(&order);
        let index = s.orders.len();
        s.by_id.insert(id, index);
        s.by_reference
            .entry(order.client_reference.clone())
            .or_default()
            .push(index);
        s.stats.orders += 1;
        if order.issued.is_some() {
            s.stats.certificates_issued += 1;
        }
        s.orders.push(order);
        Ok((out, timer))
    }

    /// Makes the certificate (and keystore) of a valid order.
    fn issue(&self, valid: &ValidOrder) -> Result<IssuedCert, String> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mut serial = self.serial_prefix.clone();
        serial.extend_from_slice(&n.to_be_bytes());
        let (spki, key) = match &valid.key {
            KeySource::Csr(spki) => (spki.clone(), None),
            KeySource::Generate(bits) => {
                let (pkcs8, spki) = self.rsa_key(*bits)?;
                (spki, Some(pkcs8))
            }
        };
        let usage = if valid.subject.iter().any(|(k, _)| *k == "GN" || *k == "SN") {
            Usage::Personal
        } else {
            Usage::Tls
        };
        let cert_der = self
            .ca
            .issue(&serial, &valid.subject, &valid.san, &spki, usage)?;
        let pkcs12 = match key {
            Some(pkcs8) => {
                let password = ca::random_password(20);
                let p12 = ca::pkcs12(&pkcs8, &cert_der, &self.ca.cert_der, &password)?;
                Some((p12, Secret(password)))
            }
            None => None,
        };
        Ok(IssuedCert {
            serial: hex(&serial),
            cert_der,
            pkcs12,
        })
    }

    fn rsa_key(&self, bits: u32) -> Result<KeyPairDer, String> {
        if !self.reuse_pkcs12_keys {
            return ca::generate_rsa(bits);
        }
        let mut cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.get(&bits) {
            return Ok(k.clone());
        }
        let k = ca::generate_rsa(bits)?;
        cache.insert(bits, k.clone());
        Ok(k)
    }

    fn out(&self, o: &StoredOrder) -> OrderOut {
        let status = match o.status {
            Status::Pending | Status::Issuing => OrderStatus::Pending,
            Status::Issued => OrderStatus::Issued,
            Status::Rejected => OrderStatus::Rejected,
        };
        let issued = o.issued.as_ref().filter(|_| status == OrderStatus::Issued);
        OrderOut {
            order_id: o.id.clone(),
            client_reference: o.client_reference.clone(),
            product: o.product.clone(),
            status: status.as_str(),
            certificate: issued.map(|i| b64(&i.cert_der)),
            chain: issued.map(|_| vec![self.ca_b64.clone()]),
            pkcs12: issued.and_then(|i| i.pkcs12.as_ref()).map(|(p, _)| b64(p)),
            pkcs12_password: issued
                .and_then(|i| i.pkcs12.as_ref())
                .map(|(_, pw)| pw.0.clone()),
            serial: issued.map(|i| i.serial.clone()),
            error: o.error.clone().filter(|_| status == OrderStatus::Rejected),
        }
    }

    /// One order, with the seconds to wait when it is pending.
    pub fn get_order(&self, id: &str) -> Result<(OrderOut, Option<u64>), ApiError> {
        let s = self.store();
        let o = s
            .by_id
            .get(id)
            .map(|i| &s.orders[*i])
            .ok_or_else(|| ApiError::not_found(format!("no order `{id}`")).field("order_id"))?;
        let retry = match o.status {
            Status::Pending => Some(
                o.approve_at
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
                    .unwrap_or(1)
                    .max(1),
            ),
            Status::Issuing => Some(1),
            _ => None,
        };
        Ok((self.out(o), retry))
    }

    pub fn find_orders(&self, client_reference: &str) -> Vec<OrderOut> {
        let s = self.store();
        s.by_reference
            .get(client_reference)
            .map(|ix| ix.iter().map(|i| self.out(&s.orders[*i])).collect())
            .unwrap_or_default()
    }

    pub fn orders_for(&self, client_reference: &str) -> usize {
        self.store()
            .by_reference
            .get(client_reference)
            .map(Vec::len)
            .unwrap_or(0)
    }

    pub fn order_records(&self) -> Vec<OrderRecord> {
        let s = self.store();
        s.orders.iter().map(|o| record(o, &s.certs)).collect()
    }

    fn order_record(&self, id: &str) -> Option<OrderRecord> {
        let s = self.store();
        s.by_id.get(id).map(|i| record(&s.orders[*i], &s.certs))
    }

    /// Takes a pending order's work to issue it; `None` when it is not pending (any
    /// more).
    pub fn take_pending(&self, id: &str) -> Option<ValidOrder> {
        let mut s = self.store();
        let i = *s.by_id.get(id)?;
        let o = &mut s.orders[i];
        if o.status != Status::Pending {
            return None;
        }
        o.status = Status::Issuing;
        o.work.take()
    }

    /// Issues a taken pending order and stores the outcome. Blocking.
    pub fn finish_pending(&self, id: &str, valid: ValidOrder) {
        let result = self.issue(&valid);
        let mut s = self.store();
        let Some(i) = s.by_id.get(id).copied() else {
            return;
        };
        match result {
            Ok(issued) => {
                let entry = cert_entry(&issued, &valid, id);
                let o = &mut s.orders[i];
                o.status = Status::Issued;
                o.issued = Some(issued);
                s.stats.certificates_issued += 1;
                if let Some((key, entry)) = entry {
                    s.certs.insert(key, entry);
                }
            }
            Err(e) => {
                let o = &mut s.orders[i];
                o.status = Status::Rejected;
                o.error = Some(ErrorItem {
                    code: codes::INTERNAL_ERROR.into(),
                    message: format!("issuance failed: {e}"),
                    field: None,
                });
            }
        }
    }

    /// Approves a pending order now (issues it). Blocking.
    pub fn approve(&self, id: &str) -> Result<OrderRecord, ApiError> {
        let notify = {
            let s = self.store();
            let i = *s
                .by_id
                .get(id)
                .ok_or_else(|| ApiError::not_found(format!("no order `{id}`")))?;
            s.orders[i].approve.clone()
        };
        let valid = self.take_pending(id).ok_or_else(|| {
            ApiError::new(409, "NOT_PENDING", format!("order `{id}` is not pending"))
        })?;
        self.finish_pending(id, valid);
        if let Some(n) = notify {
            n.notify_one();
        }
        self.order_record(id)
            .ok_or_else(|| ApiError::not_found(format!("no order `{id}`")))
    }

    /// Rejects a pending order.
    pub fn reject(&self, id: &str, error: ErrorItem) -> Result<OrderRecord, ApiError> {
        let notify = {
            let mut s = self.store();
            let i = *s
                .by_id
                .get(id)
                .ok_or_else(|| ApiError::not_found(format!("no order `{id}`")))?;
            let o = &mut s.orders[i];
            if o.status != Status::Pending {
                return Err(ApiError::new(
                    409,
                    "NOT_PENDING",
                    format!("order `{id}` is not pending"),
                ));
            }
            o.status = Status::Rejected;
            o.work = None;
            o.error = Some(error);
            o.approve.clone()
        };
        if let Some(n) = notify {
            n.notify_one();
        }
        self.order_record(id)
            .ok_or_else(|| ApiError::not_found(format!("no order `{id}`")))
    }

    // ---- certificates

    pub fn seed_certificate(&self, serial: &str, revocation_password: &str) -> Result<(), String> {
        let key = normalize_serial(serial)
            .ok_or_else(|| format!("serial `{serial}` is not 1 to 64 hex digits"))?;
        self.store().certs.insert(
            key,
            CertEntry {
                serial: serial.to_ascii_uppercase(),
                password: Secret(revocation_password.into()),
                product: None,
                order_id: None,
                revoked: None,
                attempts: 0,
            },
        );
        Ok(())
    }

    /// `POST /v1/certificates/{serial}/revoke`. Checks, in order: the body (400
    /// `INVALID_REQUEST`), the serial (404), the password's pattern for certificates the
    /// simulator issued (400 `GENERIC_PASSWORD_REGEXERROR`), the password (403), the state
    /// (409).
    pub fn revoke(&self, serial: &str, body: &[u8]) -> Result<RevokeOut, ApiError> {
        let req: RevokeRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("the body is not a valid revocation: {e}")))?;
        let reason = match req.reason.as_deref() {
            Some(r) if REVOCATION_REASONS.contains(&r) => r.to_string(),
            Some(r) => {
                return Err(ApiError::invalid(format!(
                    "unknown revocation reason `{r}` (one of {})",
                    REVOCATION_REASONS.join(", ")
                ))
                .field("reason"))
            }
            None => return Err(ApiError::invalid("`reason` is missing").field("reason")),
        };
        let not_found = || {
            ApiError::not_found(format!("no certificate with serial `{serial}`")).field("serial")
        };
        let key = normalize_serial(serial).ok_or_else(not_found)?;
        let mut s = self.store();
        let entry = s.certs.get_mut(&key).ok_or_else(not_found)?;
        entry.attempts += 1;
        let password = req.revocation_password.unwrap_or_default();
        if let Some(product) = &entry.product {
            if let Some(p) = self.products.iter().find(|p| &p.product.id == product) {
                if !p.password.is_match(&password) {
                    return Err(ApiError::bad(
                        codes::GENERIC_PASSWORD_REGEXERROR,
                        format!(
                            "the revocation password does not match the pattern `{}` of product `{}`",
                            p.product.revocation_password_pattern, p.product.id
                        ),
                    )
                    .field("revocation_password"));
                }
            }
        }
        if password != entry.password.0 {
            return Err(ApiError::new(
                403,
                codes::REVOCATION_PASSWORD_WRONG,
                "The revocation password is wrong.",
            )
            .field("revocation_password"));
        }
        if let Some((at, _)) = &entry.revoked {
            return Err(ApiError::new(
                409,
                codes::ALREADY_REVOKED,
                format!("Certificate {} is already revoked (at {at}).", entry.serial),
            ));
        }
        let revoked_at = rfc3339(
            OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        );
        entry.revoked = Some((revoked_at.clone(), reason));
        let out = RevokeOut {
            serial: entry.serial.clone(),
            revoked_at,
        };
        s.revoked.push(key);
        s.stats.revocations += 1;
        Ok(out)
    }

    pub fn revocation_records(&self) -> Vec<RevocationRecord> {
        let s = self.store();
        s.revoked
            .iter()
            .filter_map(|k| s.certs.get(k))
            .filter_map(|c| {
                c.revoked.as_ref().map(|(at, reason)| RevocationRecord {
                    serial: c.serial.clone(),
                    order_id: c.order_id.clone(),
                    reason: reason.clone(),
                    revoked_at: at.clone(),
                    attempts: c.attempts,
                })
            })
            .collect()
    }
}

/// The certificate map entry of a freshly issued certificate.
fn cert_entry(
    issued: &IssuedCert,
    valid: &ValidOrder,
    order_id: &str,
) -> Option<(String, CertEntry)> {
    let key = normalize_serial(&issued.serial)?;
    Some((
        key,
        CertEntry {
            serial: issued.serial.clone(),
            password: Secret(valid.revocation_password.clone()),
            product: Some(valid.product.clone()),
            order_id: Some(order_id.to_string()),
            revoked: None,
            attempts: 0,
        },
    ))
}

fn record(o: &StoredOrder, certs: &HashMap<String, CertEntry>) -> OrderRecord {
    let status = match o.status {
        Status::Pending | Status::Issuing => OrderStatus::Pending,
        Status::Issued => OrderStatus::Issued,
        Status::Rejected => OrderStatus::Rejected,
    };
    let serial = o.issued.as_ref().map(|i| i.serial.clone());
    let revoked = serial
        .as_deref()
        .and_then(normalize_serial)
        .and_then(|k| certs.get(&k))
        .is_some_and(|c| c.revoked.is_some());
    OrderRecord {
        order_id: o.id.clone(),
        client_reference: o.client_reference.clone(),
        product: o.product.clone(),
        request_type: o.request_type,
        status,
        serial,
        subject_cn: o.subject_cn.clone(),
        created_at: rfc3339(o.created_at),
        revoked,
        error: o.error.clone(),
    }
}

/// `CN=a,O=b,C=DE` → `[("C","DE"),("O","b"),("CN","a")]` (encoding order). The
/// simulator's DN has no escaped commas.
fn ca_dn_parts(dn: &str) -> Vec<(&str, &str)> {
    dn.split(',')
        .filter_map(|part| part.split_once('='))
        .rev()
        .collect()
}
