//! How the worker trusts D-Trust's server, from the bundle's `.cer`.
//!
//! A CA certificate becomes the only trust anchor: the server's chain must lead to it.
//! A server (leaf) certificate is pinned: the server must present exactly it, byte for
//! byte. The file may be DER or PEM; a PEM file may hold several CA certificates.

use time::OffsetDateTime;
use x509_parser::pem::Pem;

use super::archive::Entry;
use super::cert::{format_time, CertInfo};
use super::report::{Problem, Report, Warning};

/// How the D-Trust server is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// CA certificates: the server's chain must end at one of them.
    Anchors { entry: String, certs: Vec<CertInfo> },
    /// The one certificate the server must present.
    Pinned { entry: String, cert: CertInfo },
}

impl ServerTrust {
    /// The zip entry it came from.
    pub fn entry(&self) -> &str {
        match self {
            ServerTrust::Anchors { entry, .. } | ServerTrust::Pinned { entry, .. } => entry,
        }
    }

    /// Every certificate in the file.
    pub fn certs(&self) -> &[CertInfo] {
        match self {
            ServerTrust::Anchors { certs, .. } => certs,
            ServerTrust::Pinned { cert, .. } => std::slice::from_ref(cert),
        }
    }
}

/// Reads the server certificate entry; problems and warnings go to `report`.
pub fn load(entry: &Entry, now: OffsetDateTime, report: &mut Report) -> Option<ServerTrust> {
    let unreadable = |detail: String| Problem::ServerCertUnreadable {
        entry: entry.name.clone(),
        detail,
    };
    let certs = match parse(&entry.data) {
        Ok(certs) => certs,
        Err(detail) => {
            report.problem(unreadable(detail));
            return None;
        }
    };
    for cert in &certs {
        if cert.not_after < now {
            report.warn(Warning::ServerCertExpired {
                entry: entry.name.clone(),
                subject: cert.subject.clone(),
                not_after: format_time(cert.not_after),
            });
        }
    }
    match certs.as_slice() {
        [cert] if !cert.is_ca => Some(ServerTrust::Pinned {
            entry: entry.name.clone(),
            cert: cert.clone(),
        }),
        _ => {
            if let Some(leaf) = certs.iter().find(|c| !c.is_ca) {
                report.problem(Problem::ServerCertMixed {
                    entry: entry.name.clone(),
                    count: certs.len(),
                    leaf: leaf.subject.clone(),
                });
                return None;
            }
            Some(ServerTrust::Anchors {
                entry: entry.name.clone(),
                certs,
            })
        }
    }
}

/// DER (one certificate) or PEM (one or more `CERTIFICATE` blocks).
fn parse(data: &[u8]) -> Result<Vec<CertInfo>, String> {
    if data.is_empty() {
        return Err("the file is empty".into());
    }
    let text_start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if !data[text_start..].starts_with(b"-----BEGIN") {
        return CertInfo::from_der(data)
            .map(|c| vec![c])
            .map_err(|e| format!("not a DER certificate: {e}"));
    }
    let mut certs = Vec::new();
    for pem in Pem::iter_from_buffer(data) {
        let pem = pem.map_err(|e| format!("bad PEM: {e}"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!("PEM block `{}` is not a CERTIFICATE", pem.label));
        }
        certs.push(
            CertInfo::from_der(&pem.contents)
                .map_err(|e| format!("bad certificate in PEM: {e}"))?,
        );
    }
    if certs.is_empty() {
        return Err("no certificate in the PEM file".into());
    }
    Ok(certs)
}
