//! The account's client keystore (PKCS#12): the certificate and private key that
//! authenticate the worker to D-Trust in mutual TLS.
//!
//! Both the old encryption (RC2-40 or 3DES with a SHA-1 MAC, `openssl -legacy`, older
//! Windows and Java exports) and the current one (AES-256 with PBKDF2) load. The key
//! is checked against the certificate and against the TLS stack that will use it.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::archive::Entry;
use super::cert::{format_time, CertInfo};
use super::report::{Problem, Report, Warning};
use crate::secret::{Secret, SecretBytes};

/// Warn when the client certificate expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// The client certificate chain (leaf first) and its private key.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The zip entry it came from.
    pub entry: String,
    /// The leaf certificate, then its issuers as far as the keystore has them.
    pub chain: Vec<CertInfo>,
    /// The private key, PKCS#8 DER.
    pub key: SecretBytes,
}

impl ClientIdentity {
    /// The client certificate itself.
    pub fn leaf(&self) -> &CertInfo {
        // `load` never builds an identity with an empty chain.
        &self.chain[0]
    }
}

/// Opens the keystore entry and checks its key and certificate; problems and warnings
/// go to `report`.
pub fn load(
    entry: &Entry,
    password: &Secret,
    now: OffsetDateTime,
    report: &mut Report,
) -> Option<ClientIdentity> {
    let name = entry.name.clone();
    let store = match p12_keystore::KeyStore::from_pkcs12(
        &entry.data,
        password.expose(),
        p12_keystore::Pkcs12ImportPolicy::Strict,
    ) {
        Ok(store) => store,
        Err(p12_keystore::error::Error::MacError(_) | p12_keystore::error::Error::UnpadError) => {
            report.problem(Problem::KeystorePassword { entry: name });
            return None;
        }
        Err(e) => {
            report.problem(Problem::KeystoreUnreadable {
                entry: name,
                detail: e.to_string(),
            });
            return None;
        }
    };
    let mut chains: Vec<(String, Vec<CertInfo>, SecretBytes)> = Vec::new();
    for (alias, item) in store.entries() {
        let p12_keystore::KeyStoreEntry::PrivateKeyChain(chain) = item else {
            continue;
        };
        let certs: Result<Vec<CertInfo>, String> = chain
            .certs()
            .iter()
            .map(|c| CertInfo::from_der(c.as_der()))
            .collect();
        match certs {
            Ok(certs) if !certs.is_empty() => {
                chains.push((
                    alias.clone(),
                    certs,
                    SecretBytes::new(chain.key().as_der().to_vec()),
                ));
            }
            Ok(_) => {}
            Err(detail) => {
                report.problem(Problem::KeystoreUnreadable {
                    entry: name,
                    detail: format!("its certificate cannot be parsed: {detail}"),
                });
                return None;
            }
        }
    }
    if chains.is_empty() {
        report.problem(Problem::KeystoreNoPrivateKey { entry: name });
        return None;
    }
    // Prefer a certificate that is valid now; keytool and openssl keep one key anyway.
    let index = chains
        .iter()
        .position(|(_, certs, _)| certs[0].not_before <= now && now <= certs[0].not_after)
        .unwrap_or(0);
    let count = chains.len();
    let (alias, chain, key) = chains.swap_remove(index);
    if count > 1 {
        report.warn(Warning::SeveralKeys {
            entry: name.clone(),
            count,
            used: alias,
        });
    }
    let identity = ClientIdentity {
        entry: name,
        chain,
        key,
    };
    let usable = check_key(&identity, report);
    let valid = check_validity(identity.leaf(), &identity.entry, now, report);
    (usable && valid).then_some(identity)
}

/// The key must load into the TLS stack and belong to the leaf certificate.
fn check_key(identity: &ClientIdentity, report: &mut Report) -> bool {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.expose().to_vec()));
    let signing_key = match provider.key_provider.load_private_key(der) {
        Ok(key) => key,
        Err(e) => {
            report.problem(Problem::KeystoreKeyUnusable {
                entry: identity.entry.clone(),
                detail: e.to_string(),
            });
            return false;
        }
    };
    match signing_key.public_key() {
        Some(spki) if spki.as_ref() != identity.leaf().spki.as_slice() => {
            report.problem(Problem::KeystoreKeyMismatch {
                entry: identity.entry.clone(),
                subject: identity.leaf().subject.clone(),
            });
            false
        }
        _ => true,
    }
}

fn check_validity(leaf: &CertInfo, entry: &str, now: OffsetDateTime, report: &mut Report) -> bool {
    if now < leaf.not_before {
        report.problem(Problem::ClientCertNotYetValid {
            entry: entry.to_string(),
            subject: leaf.subject.clone(),
            not_before: format_time(leaf.not_before),
        });
        return false;
    }
    if now > leaf.not_after {
        report.problem(Problem::ClientCertExpired {
            entry: entry.to_string(),
            subject: leaf.subject.clone(),
            not_after: format_time(leaf.not_after),
        });
        return false;
    }
    let days = (leaf.not_after - now).whole_days();
    if days < EXPIRY_WARNING_DAYS {
        report.warn(Warning::ClientCertExpiresSoon {
            entry: entry.to_string(),
            subject: leaf.subject.clone(),
            not_after: format_time(leaf.not_after),
            days,
        });
    }
    true
}
