//! What the summary and the checks need to know of an X.509 certificate.

use ::time::OffsetDateTime;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A parsed certificate: its DER and the fields operators look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Whether it may act as a trust anchor: basicConstraints cA, or an old
    /// self-signed certificate without that extension.
    pub is_ca: bool,
    /// The DER of its SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

impl CertInfo {
    /// Parses one DER certificate (trailing bytes are refused).
    pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!(
                "{} unexpected bytes after the certificate",
                rest.len()
            ));
        }
        let self_signed = cert.subject() == cert.issuer();
        let is_ca = match cert.basic_constraints() {
            Ok(Some(bc)) => bc.value.ca,
            Ok(None) => self_signed,
            Err(e) => return Err(format!("bad basicConstraints: {e}")),
        };
        Ok(CertInfo {
            der: der.to_vec(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca,
            spki: cert.public_key().raw.to_vec(),
        })
    }

    /// SHA-256 of the DER, as colon-separated uppercase hex (as browsers show it).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.der);
        let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }
}

/// A timestamp as operators read it: `2027-11-25 17:03 UTC`.
pub fn format_time(t: OffsetDateTime) -> String {
    let format = ::time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.to_offset(::time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| t.to_string())
}
