//! What a simulator serves: the account, its products with their validation rules, the
//! verified e-mail domains, the client certificates D-Trust refuses, and the faults to
//! inject ([`Faults`], in [`super::faults`]).
//!
//! Every pattern is a Rust [`regex`] (no lookarounds, no backreferences), because the
//! worker evaluates the patterns `GET /v1/products` serves with the same crate. A pattern
//! must match the whole value, as Java's `String.matches` does at D-Trust (the default
//! patterns are anchored with `^...$` anyway, so partial-match readers agree).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::faults::Faults;

/// The account id `GET /v1/ping` answers by default (the Identity Manager example's).
pub const DEFAULT_ACCOUNT: &str = "CSMWM447922870184925";

/// The subject DN of the simulator's issuing CA, RFC 4514 style (most specific RDN
/// first), as every product's `issuer_dn` gives it. The CA certificate encodes it as
/// `C`, `O`, `CN`, in that order.
pub const ISSUING_CA_DN: &str = "CN=D-TRUST Sim Issuing CA 1 2026,O=dtrust-worker test kit,C=DE";

/// The RDN names an order's subject may carry, in the order the simulator checks them.
pub const RDN_NAMES: [&str; 11] = [
    "CN",
    "O",
    "OU",
    "C",
    "L",
    "ST",
    "E",
    "serialNumber",
    "organizationIdentifier",
    "GN",
    "SN",
];

/// How the key pair of an order comes about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestType {
    /// The customer sends a CSR (`pkcs10`); the certificate gets its public key.
    #[serde(rename = "PKCS10")]
    Pkcs10,
    /// D-Trust generates the key pair and returns it as a PKCS#12 keystore.
    #[serde(rename = "PKCS12")]
    Pkcs12,
}

impl RequestType {
    /// The wire name, `PKCS10` or `PKCS12`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Pkcs10 => "PKCS10",
            RequestType::Pkcs12 => "PKCS12",
        }
    }
}

/// A product (certificate type) and its validation rules. `GET /v1/products` serves the
/// enabled ones, plus `issuer_dn` (always [`ISSUING_CA_DN`]); `enabled` and `approval_ms`
/// are the simulator's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Product id, as named in `certificateTemplates`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The request types the product accepts.
    pub request_types: Vec<RequestType>,
    /// Allowed RSA key sizes in bits. A PKCS12 order gets a fresh key of the smallest.
    pub key_sizes: Vec<u32>,
    /// RDNs an order must carry (non-empty).
    #[serde(default)]
    pub required_rdns: Vec<String>,
    /// Per RDN name, the pattern every value of it must match (each OU value on its own).
    #[serde(default)]
    pub rdn_patterns: BTreeMap<String, String>,
    /// The pattern a revocation password must match.
    pub revocation_password_pattern: String,
    /// `false`: the product exists but is not enabled for the account: not listed, and
    /// ordering it answers 403 `PRODUCT_NOT_ALLOWED`.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// `Some(ms)`: the product needs a manual approval; its orders stay `PENDING` for
    /// `ms` milliseconds (or until approved or rejected through the control API), then
    /// become `ISSUED`.
    #[serde(default)]
    pub approval_ms: Option<u64>,
}

fn enabled_by_default() -> bool {
    true
}

/// Everything a simulator is started with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The account id of `GET /v1/ping`.
    pub account: String,
    /// The catalogue, enabled products and others.
    pub products: Vec<Product>,
    /// E-mail domains verified for the account (exact match, case-insensitive; a
    /// subdomain is not covered by its parent).
    pub verified_email_domains: Vec<String>,
    /// Whether the account has `organizationIdentifier` enabled. When not, an order that
    /// carries it, or of a product that requires it, fails with `GENERIC_RDN_REGEXERROR`.
    pub organization_identifier_enabled: bool,
    /// Client certificates trusted at the TLS layer but unknown or revoked at D-Trust:
    /// SHA-256 fingerprints of their DER (hex, any case, colons allowed; see
    /// [`super::fingerprint`]). Every `/v1` request with one is answered 401
    /// `CLIENT_CERT_REJECTED`.
    pub rejected_client_certs: Vec<String>,
    /// Reuse one generated key pair per key size for PKCS12 orders instead of generating
    /// an RSA key for each (RSA generation costs tens of milliseconds): for benchmarks.
    pub reuse_pkcs12_keys: bool,
    /// The faults in force from the start.
    pub faults: Faults,
    /// Where to listen. Default `127.0.0.1:0` (a free port).
    pub listen: SocketAddr,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::default_catalogue()
    }
}

/// The revocation password pattern of the default products: 12 to 64 characters of a
/// charset that fits generated passwords and the worker's CN-derived ones.
pub const PASSWORD_PATTERN: &str = "^[A-Za-z0-9!#%+,.:=?@_-]{12,64}$";
/// A DNS name, optionally a wildcard: no `=`, so a CN like `CN=www.example.com` fails.
pub const DNS_NAME_PATTERN: &str = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";
/// An e-mail address (its domain is checked against the verified domains on its own).
pub const EMAIL_PATTERN: &str = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$";
/// A free-text name (O, OU, L, ST, GN, SN, a personal CN): no `=`, no control characters,
/// 1 to 64 characters.
pub const NAME_PATTERN: &str = r"^[^=\x00-\x1f\x7f]{1,64}$";
/// An ISO 3166 country code.
pub const COUNTRY_PATTERN: &str = "^[A-Z]{2}$";
/// An ETSI EN 319 412-1 organization identifier.
pub const ORGANIZATION_IDENTIFIER_PATTERN: &str = "^(VAT|NTR|PSD)[A-Z]{2}-[A-Za-z0-9-]{2,32}$";

fn patterns(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl SimConfig {
    /// The default account, listening on `127.0.0.1:0`, no faults, domains `example.com`
    /// and `example.org` verified, `organizationIdentifier` enabled, and five products:
    ///
    /// | id | request types | key sizes | required RDNs | notes |
    /// |---|---|---|---|---|
    /// | `SSL-Basic` | PKCS10, PKCS12 | 2048, 3072, 4096 | CN, C | CN a DNS name |
    /// | `SSL-OV` | PKCS10 | 3072, 4096 | CN, O, C, organizationIdentifier | |
    /// | `Personal-Sig` | PKCS12 | 2048, 3072 | CN, GN, SN, E, C | e-mails in verified domains |
    /// | `SSL-EV` | PKCS10, PKCS12 | 2048, 3072, 4096 | CN, O, C, serialNumber | manual approval: `PENDING` for 1.5 s |
    /// | `Code-Signing` | PKCS10 | 3072, 4096 | CN, O, C | exists, not enabled for the account |
    pub fn default_catalogue() -> Self {
        let ssl_patterns = |extra: &[(&str, &str)]| {
            let mut p = patterns(&[
                ("CN", DNS_NAME_PATTERN),
                ("O", NAME_PATTERN),
                ("OU", NAME_PATTERN),
                ("C", COUNTRY_PATTERN),
                ("L", NAME_PATTERN),
                ("ST", NAME_PATTERN),
                ("E", EMAIL_PATTERN),
            ]);
            p.extend(patterns(extra));
            p
        };
        let products = vec![
            Product {
                id: "SSL-Basic".into(),
                name: "SSL Basic (domain validated)".into(),
                request_types: vec![RequestType::Pkcs10, RequestType::Pkcs12],
                key_sizes: vec![2048, 3072, 4096],
                required_rdns: strings(&["CN", "C"]),
                rdn_patterns: ssl_patterns(&[]),
                revocation_password_pattern: PASSWORD_PATTERN.into(),
                enabled: true,
                approval_ms: None,
            },
            Product {
                id: "SSL-OV".into(),
                name: "SSL Organization Validated".into(),
                request_types: vec![RequestType::Pkcs10],
                key_sizes: vec![3072, 4096],
                required_rdns: strings(&["CN", "O", "C", "organizationIdentifier"]),
                rdn_patterns: ssl_patterns(&[(
                    "organizationIdentifier",
                    ORGANIZATION_IDENTIFIER_PATTERN,
                )]),
                revocation_password_pattern: PASSWORD_PATTERN.into(),
                enabled: true,
                approval_ms: None,
            },
            Product {
                id: "Personal-Sig".into(),
                name: "Personal signature and encryption".into(),
                request_types: vec![RequestType::Pkcs12],
                key_sizes: vec![2048, 3072],
                required_rdns: strings(&["CN", "GN", "SN", "E", "C"]),
                rdn_patterns: patterns(&[
                    ("CN", NAME_PATTERN),
                    ("GN", NAME_PATTERN),
                    ("SN", NAME_PATTERN),
                    ("O", NAME_PATTERN),
                    ("OU", NAME_PATTERN),
                    ("E", EMAIL_PATTERN),
                    ("C", COUNTRY_PATTERN),
                ]),
                revocation_password_pattern: PASSWORD_PATTERN.into(),
                enabled: true,
                approval_ms: None,
            },
            Product {
                id: "SSL-EV".into(),
                name: "SSL Extended Validation (manual approval)".into(),
                request_types: vec![RequestType::Pkcs10, RequestType::Pkcs12],
                key_sizes: vec![2048, 3072, 4096],
                required_rdns: strings(&["CN", "O", "C", "serialNumber"]),
                rdn_patterns: ssl_patterns(&[("serialNumber", "^[A-Za-z0-9 -]{1,64}$")]),
                revocation_password_pattern: PASSWORD_PATTERN.into(),
                enabled: true,
                approval_ms: Some(1500),
            },
            Product {
                id: "Code-Signing".into(),
                name: "Code Signing".into(),
                request_types: vec![RequestType::Pkcs10],
                key_sizes: vec![3072, 4096],
                required_rdns: strings(&["CN", "O", "C"]),
                rdn_patterns: ssl_patterns(&[]),
                revocation_password_pattern: PASSWORD_PATTERN.into(),
                enabled: false,
                approval_ms: None,
            },
        ];
        SimConfig {
            account: DEFAULT_ACCOUNT.into(),
            products,
            verified_email_domains: strings(&["example.com", "example.org"]),
            organization_identifier_enabled: true,
            rejected_client_certs: Vec::new(),
            reuse_pkcs12_keys: false,
            faults: Faults::default(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }

    /// The product `id`, to change its rules in a test.
    pub fn product_mut(&mut self, id: &str) -> Option<&mut Product> {
        self.products.iter_mut().find(|p| p.id == id)
    }

    /// Checks the configuration: unique product ids, known RDN names, patterns that
    /// compile with the `regex` crate, key sizes a PKCS12 order can be generated with,
    /// and valid faults.
    pub fn validate(&self) -> Result<(), String> {
        let mut ids = std::collections::HashSet::new();
        for p in &self.products {
            let at = format!("product `{}`", p.id);
            if p.id.is_empty() || p.id.len() > 128 {
                return Err(format!("{at}: the id must be 1 to 128 characters"));
            }
            if !ids.insert(p.id.as_str()) {
                return Err(format!("{at}: defined twice"));
            }
            if p.request_types.is_empty() {
                return Err(format!("{at}: no request_types"));
            }
            if p.key_sizes.is_empty() || p.key_sizes.iter().any(|k| *k < 1024 || *k > 16384) {
                return Err(format!(
                    "{at}: key_sizes must be RSA sizes of 1024 to 16384 bits"
                ));
            }
            if p.request_types.contains(&RequestType::Pkcs12) {
                let smallest = p.key_sizes.iter().min().copied().unwrap_or(0);
                if ![2048, 3072, 4096].contains(&smallest) {
                    return Err(format!(
                        "{at}: PKCS12 keys are generated with the smallest key size, which must be 2048, 3072 or 4096"
                    ));
                }
            }
            for rdn in p.required_rdns.iter().chain(p.rdn_patterns.keys()) {
                if !RDN_NAMES.contains(&rdn.as_str()) {
                    return Err(format!(
                        "{at}: unknown RDN `{rdn}` (known: {})",
                        RDN_NAMES.join(", ")
                    ));
                }
            }
            for (rdn, pattern) in
                p.rdn_patterns
                    .iter()
                    .map(|(k, v)| (k.as_str(), v))
                    .chain(std::iter::once((
                        "revocation_password_pattern",
                        &p.revocation_password_pattern,
                    )))
            {
                regex::Regex::new(pattern).map_err(|e| {
                    format!("{at}: pattern of {rdn} is not a Rust regex (no lookarounds): {e}")
                })?;
            }
        }
        self.faults.validate()
    }
}
