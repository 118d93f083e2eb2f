//! Pre-validation: an order checked against its product's rules from
//! `GET /v1/products` before it is sent, so the common mistakes come back at once, with
//! D-Trust's own codes and hints, and cost no request (and no bill).
//!
//! D-Trust applies the same rules itself; what cannot be known here (e.g. which e-mail
//! domains the account has verified) is left to D-Trust. A product pattern this worker
//! cannot compile is skipped with a warning rather than blocking orders D-Trust may
//! accept.

use base64::Engine as _;
use regex::{Regex, RegexBuilder};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use super::codes::ErrorCode;
use super::error::DTrustError;
use super::wire::{OrderRequest, Product, RequestType};

/// A product with its patterns compiled once.
#[derive(Debug, Clone)]
pub struct ProductRules {
    pub product: Product,
    rdn_patterns: Vec<(String, Regex)>,
    password: Option<Regex>,
    /// Patterns that could not be compiled: `(what, why)`.
    pub unusable: Vec<(String, String)>,
}

/// A D-Trust pattern must match a whole value, as Java's `String.matches` does.
fn whole(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

impl ProductRules {
    pub fn new(product: Product) -> ProductRules {
        let mut unusable = Vec::new();
        let mut rdn_patterns = Vec::new();
        for (rdn, pattern) in &product.rdn_patterns {
            match whole(pattern) {
                Ok(re) => rdn_patterns.push((rdn.clone(), re)),
                Err(e) => unusable.push((format!("rdn_patterns.{rdn}"), e.to_string())),
            }
        }
        let password = product
            .revocation_password_pattern
            .as_deref()
            .and_then(|p| match whole(p) {
                Ok(re) => Some(re),
                Err(e) => {
                    unusable.push(("revocation_password_pattern".into(), e.to_string()));
                    None
                }
            });
        ProductRules {
            product,
            rdn_patterns,
            password,
            unusable,
        }
    }

    /// Whether a revocation password fits the product's rule (true without a rule).
    pub fn password_fits(&self, password: &str) -> bool {
        self.password
            .as_ref()
            .is_none_or(|re| re.is_match(password))
    }

    /// The product's compiled revocation password rule, if any.
    pub fn password_rule(&self) -> Option<&Regex> {
        self.password.as_ref()
    }

    /// Checks an order against the rules, in the order D-Trust does.
    pub fn check(&self, order: &OrderRequest) -> Result<(), DTrustError> {
        let invalid =
            |code: ErrorCode, message: String, field: Option<&str>| DTrustError::Invalid {
                product: self.product.id.clone(),
                code,
                message,
                field: field.map(str::to_string),
            };
        if !self.product.request_types.contains(&order.request_type) {
            let allowed: Vec<&str> = self
                .product
                .request_types
                .iter()
                .map(|t| t.as_str())
                .collect();
            return Err(invalid(
                ErrorCode::InvalidRequestType,
                format!(
                    "request type {} is not offered for this product (it offers {})",
                    order.request_type.as_str(),
                    allowed.join(", ")
                ),
                Some("request_type"),
            ));
        }
        match (order.request_type, &order.pkcs10) {
            (RequestType::Pkcs10, None) => {
                return Err(invalid(
                    ErrorCode::InvalidRequestType,
                    "a PKCS10 order needs a CSR".into(),
                    Some("pkcs10"),
                ))
            }
            (RequestType::Pkcs12, Some(_)) => {
                return Err(invalid(
                    ErrorCode::InvalidRequestType,
                    "a PKCS12 order must not carry a CSR: D-Trust generates the key".into(),
                    Some("pkcs10"),
                ))
            }
            (_, Some(csr)) => {
                if let Err(message) = self.check_csr(csr) {
                    return Err(invalid(ErrorCode::InvalidCsr, message, Some("pkcs10")));
                }
            }
            _ => {}
        }
        for rdn in &self.product.required_rdns {
            if order
                .subject
                .values(rdn)
                .iter()
                .all(|v| v.trim().is_empty())
            {
                return Err(invalid(
                    ErrorCode::GenericRdnRegexError,
                    format!("the product requires the subject attribute {rdn}, which is missing"),
                    Some(rdn),
                ));
            }
        }
        for (rdn, re) in &self.rdn_patterns {
            for value in order.subject.values(rdn) {
                if !re.is_match(value) {
                    let extra = if rdn == "CN" && value.contains("CN=") {
                        " (the value contains 'CN=': remove it from the certificate template)"
                    } else {
                        ""
                    };
                    return Err(invalid(
                        ErrorCode::GenericRdnRegexError,
                        format!(
                            "{rdn} `{value}` does not match the product's pattern `{}`{extra}",
                            re.as_str()
                        ),
                        Some(rdn),
                    ));
                }
            }
        }
        if let Some(password) = &order.revocation_password {
            if !self.password_fits(password.expose()) {
                return Err(invalid(
                    ErrorCode::GenericPasswordRegexError,
                    format!(
                        "the revocation password does not match the product's pattern `{}`",
                        self.product
                            .revocation_password_pattern
                            .as_deref()
                            .unwrap_or_default()
                    ),
                    Some("revocation_password"),
                ));
            }
        }
        Ok(())
    }

    /// Parses the base64 DER CSR, verifies its signature and its key size.
    fn check_csr(&self, base64_der: &str) -> Result<(), String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64_der.trim())
            .map_err(|e| format!("the CSR is not base64: {e}"))?;
        let (rest, csr) = X509CertificationRequest::from_der(&der)
            .map_err(|e| format!("the CSR cannot be parsed: {e}"))?;
        if !rest.is_empty() {
            return Err("the CSR has trailing bytes".into());
        }
        csr.verify_signature()
            .map_err(|e| format!("the CSR's signature does not verify ({e})"))?;
        let bits = csr
            .certification_request_info
            .subject_pki
            .parsed()
            .map(|k| k.key_size())
            .map_err(|e| format!("the CSR's public key cannot be read: {e}"))?;
        let allowed = &self.product.key_sizes;
        if !allowed.is_empty() && !allowed.iter().any(|&size| size as usize == bits) {
            let list: Vec<String> = allowed.iter().map(u32::to_string).collect();
            return Err(format!(
                "the CSR's key has {bits} bits; the product allows {}",
                list.join(", ")
            ));
        }
        Ok(())
    }
}
