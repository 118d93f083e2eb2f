//! Results built from D-Trust's answers: an issued order becomes the certificate, its
//! chain and dates in PEM and RFC 3339; failures become the result's `error` with code,
//! message, hint and retryability.

use base64::Engine as _;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::dtrust::wire::Order;
use crate::dtrust::DTrustError;
use crate::job::model::{JobResult, ResultError, Status};
use crate::job::record::Record;

/// The current time as the contract writes it.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn finished_at() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// DER as PEM with the given label.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A failed result for the record.
pub fn failed(
    record: &Record,
    code: &str,
    message: String,
    hint: &str,
    retryable: bool,
) -> JobResult {
    let mut result = JobResult::failed(
        &record.job_id,
        record.kind,
        record.job.metadata().cloned(),
        record.attempts,
        finished_at(),
        ResultError {
            code: code.to_string(),
            message,
            hint: hint.to_string(),
            retryable,
        },
    );
    result.order_id = record.order_id.clone();
    result
}

/// A failed result from a D-Trust error.
pub fn failed_with(record: &Record, error: &DTrustError) -> JobResult {
    failed(
        record,
        error.code(),
        error.to_string(),
        error.hint(),
        error.retryable(),
    )
}

/// A succeeded result for the record, with only the common fields set.
pub fn succeeded(record: &Record) -> JobResult {
    JobResult::new(
        &record.job_id,
        record.kind,
        record.job.metadata().cloned(),
        Status::Succeeded,
        record.attempts,
        finished_at(),
    )
}

/// The result of an issued order; an answer without a readable certificate is a
/// protocol error.
pub fn issued(record: &Record, order: &Order) -> Result<JobResult, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let der = order
        .certificate
        .as_deref()
        .ok_or("the order is ISSUED but carries no certificate")
        .and_then(|c| {
            b64.decode(c.trim())
                .map_err(|_| "the certificate is not base64")
        })?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let mut chain = String::new();
    for (i, c) in order.chain.iter().enumerate() {
        let der = b64
            .decode(c.trim())
            .map_err(|_| format!("chain certificate {i} is not base64"))?;
        chain.push_str(&pem("CERTIFICATE", &der));
    }
    let serial = order
        .serial
        .clone()
        .unwrap_or_else(|| cert.raw_serial_as_string().replace(':', ""))
        .to_ascii_lowercase();
    let mut result = succeeded(record);
    result.order_id = Some(order.order_id.clone());
    result.certificate_pem = Some(pem("CERTIFICATE", &der));
    result.chain_pem = (!chain.is_empty()).then_some(chain);
    result.serial = Some(serial);
    result.not_before = Some(rfc3339(cert.validity().not_before.to_datetime()));
    result.not_after = Some(rfc3339(cert.validity().not_after.to_datetime()));
    result.pkcs12_base64 = order.pkcs12.clone();
    result.pkcs12_password = order.pkcs12_password.clone();
    result.revocation_password = record.generated_password.clone();
    Ok(result)
}
