//! D-Trust's validation of `POST /v1/orders`, in a fixed order; the first rule broken
//! gives the answer:
//!
//! 1. the body is JSON of the order's shape (unknown fields refused) → 400 `INVALID_REQUEST`
//! 2. `client_reference` present, 1 to 128 characters; `product` and `subject` present;
//!    SAN entries non-empty ASCII (DNS, e-mail) → 400 `INVALID_REQUEST`
//! 3. the product exists and is enabled for the account → 403 `PRODUCT_NOT_ALLOWED`
//! 4. `request_type` present, known and allowed for the product; PKCS10 with a `pkcs10`,
//!    PKCS12 without → 400 `INVALID_REQUEST_TYPE`
//! 5. PKCS10: the CSR is base64 (standard alphabet, padded, no PEM armour) of DER with
//!    nothing after it, its signature verifies, its key is RSA of a size the product
//!    allows → 400 `INVALID_CSR`
//! 6. every required RDN present and non-empty (in the product's order); then
//!    `organizationIdentifier` required by the product or present in the order while not
//!    enabled for the account; then every value matches its RDN's pattern (RDNs in
//!    [`super::config::RDN_NAMES`] order, each OU value) → 400 `GENERIC_RDN_REGEXERROR`,
//!    `field` = `subject.<RDN>` (`subject.OU[i]`)
//! 7. every e-mail (subject `E`, then `san.email[i]`) has a verified domain → 400
//!    `EMAILDOMAIN_DOES_NOT_FIT`
//! 8. `revocation_password` present and matching the product's pattern → 400
//!    `GENERIC_PASSWORD_REGEXERROR` (the password is required: D-Trust needs one to
//!    authorise a revocation, and Identity Manager always sends one, derived from the CN
//!    when the process has none)

use std::collections::BTreeMap;

use base64::Engine;
use regex::Regex;
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use super::config::{Product, RequestType};
use super::error::{codes, ApiError};
use super::wire::{OrderRequest, San};

/// A product with its patterns compiled.
pub(crate) struct CompiledProduct {
    pub product: Product,
    pub patterns: BTreeMap<String, Regex>,
    pub password: Regex,
}

impl CompiledProduct {
    /// Compiles the patterns (checked by `SimConfig::validate` before).
    pub fn new(product: Product) -> Result<CompiledProduct, String> {
        // A pattern must match the whole value, as Java's `String.matches` does.
        let compile =
            |p: &str| Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("{}: {e}", product.id));
        let patterns = product
            .rdn_patterns
            .iter()
            .map(|(k, v)| Ok((k.clone(), compile(v)?)))
            .collect::<Result<_, String>>()?;
        let password = compile(&product.revocation_password_pattern)?;
        Ok(CompiledProduct {
            product,
            patterns,
            password,
        })
    }
}

/// Where the certified key comes from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// The CSR's SubjectPublicKeyInfo, DER, copied into the certificate as it is.
    Csr(Vec<u8>),
    /// A fresh RSA key of this many bits, returned in a PKCS#12 keystore.
    Generate(u32),
}

/// An order that passed every rule.
#[derive(Debug, Clone)]
pub(crate) struct ValidOrder {
    pub product: String,
    pub request_type: RequestType,
    pub subject: Vec<(&'static str, String)>,
    pub san: San,
    pub key: KeySource,
    pub revocation_password: String,
    pub client_reference: String,
    pub approval_ms: Option<u64>,
}

/// What the rules depend on besides the order.
pub(crate) struct Rules<'a> {
    pub products: &'a [CompiledProduct],
    pub verified_email_domains: &'a [String],
    pub organization_identifier_enabled: bool,
}

/// The largest order body read.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// Applies the rules to a `POST /v1/orders` body.
pub(crate) fn validate_order(body: &[u8], rules: &Rules<'_>) -> Result<ValidOrder, ApiError> {
    // 1. shape
    let req: OrderRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid order: {e}")))?;

    // 2. required fields and well-formed SANs
    let client_reference = check_client_reference(req.client_reference.as_deref())?;
    let product_id = match req.product.as_deref() {
        Some(p) if !p.is_empty() => p,
        _ => return Err(ApiError::invalid("`product` is missing").field("product")),
    };
    let Some(subject) = req.subject else {
        return Err(ApiError::invalid("`subject` is missing").field("subject"));
    };
    let san = req.san.unwrap_or_default();
    for (kind, list) in [("dns", &san.dns), ("email", &san.email)] {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() || !v.is_ascii() || v.chars().any(|c| c.is_ascii_whitespace()) {
                return Err(ApiError::invalid(format!(
                    "san.{kind}[{i}] must be a non-empty ASCII name without spaces"
                ))
                .field(format!("san.{kind}[{i}]")));
            }
        }
    }
    if let Some(i) = san.upn.iter().position(|v| v.is_empty()) {
        return Err(
            ApiError::invalid(format!("san.upn[{i}] is empty")).field(format!("san.upn[{i}]"))
        );
    }

    // 3. product
    let product = rules
        .products
        .iter()
        .find(|p| p.product.id == product_id && p.product.enabled)
        .ok_or_else(|| {
            ApiError::new(
                403,
                codes::PRODUCT_NOT_ALLOWED,
                format!("product `{product_id}` is not enabled for this account"),
            )
            .field("product")
        })?;
    let p = &product.product;

    // 4. request type
    let request_type = match req.request_type.as_deref() {
        Some("PKCS10") => RequestType::Pkcs10,
        Some("PKCS12") => RequestType::Pkcs12,
        Some(other) => {
            return Err(ApiError::bad(
                codes::INVALID_REQUEST_TYPE,
                format!("unknown request type `{other}` (PKCS10 or PKCS12)"),
            )
            .field("request_type"))
        }
        None => {
            return Err(
                ApiError::bad(codes::INVALID_REQUEST_TYPE, "`request_type` is missing")
                    .field("request_type"),
            )
        }
    };
    if !p.request_types.contains(&request_type) {
        return Err(ApiError::bad(
            codes::INVALID_REQUEST_TYPE,
            format!(
                "product `{}` does not accept request type {}",
                p.id,
                request_type.as_str()
            ),
        )
        .field("request_type"));
    }
    let pkcs10 = req.pkcs10.filter(|s| !s.is_empty());
    let key = match (request_type, pkcs10) {
        (RequestType::Pkcs10, None) => {
            return Err(ApiError::bad(
                codes::INVALID_REQUEST_TYPE,
                "invalid request (certificate request type does not seem to match its content): PKCS10 without a PKCS#10 request",
            )
            .field("pkcs10"))
        }
        (RequestType::Pkcs12, Some(_)) => {
            return Err(ApiError::bad(
                codes::INVALID_REQUEST_TYPE,
                "invalid request (certificate request type does not seem to match its content): PKCS12 with a PKCS#10 request",
            )
            .field("pkcs10"))
        }
        // 5. CSR
        (RequestType::Pkcs10, Some(csr)) => KeySource::Csr(check_csr(&csr, p)?),
        (RequestType::Pkcs12, None) => {
            KeySource::Generate(p.key_sizes.iter().min().copied().unwrap_or(2048))
        }
    };

    // 6. RDNs
    let entries = subject.entries();
    for rdn in &p.required_rdns {
        if !entries.iter().any(|(n, v)| n == rdn && !v.is_empty()) {
            return Err(ApiError::bad(
                codes::GENERIC_RDN_REGEXERROR,
                format!("RDN {rdn} is required by product `{}` but missing", p.id),
            )
            .field(format!("subject.{rdn}")));
        }
    }
    let oi = "organizationIdentifier";
    if !rules.organization_identifier_enabled
        && (p.required_rdns.iter().any(|r| r == oi) || entries.iter().any(|(n, _)| *n == oi))
    {
        return Err(ApiError::bad(
            codes::GENERIC_RDN_REGEXERROR,
            format!(
                "RDN organizationIdentifier is not enabled for this account (product `{}`)",
                p.id
            ),
        )
        .field(format!("subject.{oi}")));
    }
    let mut ou_index = 0;
    for (name, value) in &entries {
        let field = if *name == "OU" {
            ou_index += 1;
            format!("subject.OU[{}]", ou_index - 1)
        } else {
            format!("subject.{name}")
        };
        if let Some(re) = product.patterns.get(*name) {
            if !re.is_match(value) {
                return Err(ApiError::bad(
                    codes::GENERIC_RDN_REGEXERROR,
                    format!(
                        "RDN {name} `{value}` does not match the pattern `{}` of product `{}`",
                        p.rdn_patterns.get(*name).map(String::as_str).unwrap_or(""),
                        p.id
                    ),
                )
                .field(field));
            }
        }
    }

    // 7. e-mail domains
    let subject_email = entries
        .iter()
        .filter(|(n, _)| *n == "E")
        .map(|(_, v)| ("subject.E".to_string(), v.as_str()));
    let san_emails = san
        .email
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("san.email[{i}]"), v.as_str()));
    for (field, email) in subject_email.chain(san_emails) {
        let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let verified = !domain.is_empty()
            && rules
                .verified_email_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain));
        if !verified {
            return Err(ApiError::bad(
                codes::EMAILDOMAIN_DOES_NOT_FIT,
                format!(
                    "e-mail `{email}`: domain `{domain}` is not (fully) verified for this account"
                ),
            )
            .field(field));
        }
    }

    // 8. revocation password (never echoed)
    let revocation_password = match req.revocation_password {
        Some(pw) if product.password.is_match(&pw) => pw,
        Some(_) => {
            return Err(ApiError::bad(
                codes::GENERIC_PASSWORD_REGEXERROR,
                format!(
                    "the revocation password does not match the pattern `{}` of product `{}`",
                    p.revocation_password_pattern, p.id
                ),
            )
            .field("revocation_password"))
        }
        None => {
            return Err(ApiError::bad(
                codes::GENERIC_PASSWORD_REGEXERROR,
                "the revocation password is missing",
            )
            .field("revocation_password"))
        }
    };

    Ok(ValidOrder {
        product: p.id.clone(),
        request_type,
        subject: entries,
        san,
        key,
        revocation_password,
        client_reference,
        approval_ms: p.approval_ms,
    })
}

/// `client_reference`: present, 1 to 128 characters.
pub(crate) fn check_client_reference(r: Option<&str>) -> Result<String, ApiError> {
    match r {
        None => Err(ApiError::invalid("`client_reference` is missing").field("client_reference")),
        Some(r) if r.is_empty() || r.chars().count() > 128 => Err(ApiError::invalid(format!(
            "`client_reference` must be 1 to 128 characters, not {}",
            r.chars().count()
        ))
        .field("client_reference")),
        Some(r) => Ok(r.to_string()),
    }
}

/// Parses and verifies a base64 DER CSR; returns its SubjectPublicKeyInfo DER.
fn check_csr(b64: &str, p: &Product) -> Result<Vec<u8>, ApiError> {
    let bad = |m: String| ApiError::bad(codes::INVALID_CSR, m).field("pkcs10");
    if b64.starts_with("-----BEGIN") {
        return Err(bad("the CSR must be base64 DER, without PEM armour".into()));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| bad(format!("the CSR is not base64: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| bad(format!("the CSR cannot be parsed: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(format!(
            "the CSR has {} bytes after its DER",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|e| bad(format!("the CSR's signature does not verify: {e}")))?;
    let spki = &csr.certification_request_info.subject_pki;
    let allowed = || {
        p.key_sizes
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa_bits(rsa.modulus);
            if !p.key_sizes.iter().any(|k| *k as usize == bits) {
                return Err(bad(format!(
                    "RSA key of {bits} bits: product `{}` allows {} bits",
                    p.id,
                    allowed()
                )));
            }
        }
        Ok(other) => {
            let kind = match other {
                PublicKey::EC(_) => "EC",
                PublicKey::DSA(_) => "DSA",
                PublicKey::GostR3410(_) | PublicKey::GostR3410_2012(_) => "GOST",
                _ => "non-RSA",
            };
            return Err(bad(format!(
                "{kind} key: product `{}` allows RSA keys of {} bits",
                p.id,
                allowed()
            )));
        }
        Err(e) => return Err(bad(format!("the CSR's public key cannot be read: {e}"))),
    }
    Ok(spki.raw.to_vec())
}

/// The bit length of an RSA modulus (big-endian, possibly with leading zeros).
fn rsa_bits(modulus: &[u8]) -> usize {
    match modulus.iter().position(|b| *b != 0) {
        Some(i) => (modulus.len() - i - 1) * 8 + (8 - modulus[i].leading_zeros() as usize),
        None => 0,
    }
}
