//! The simulator's TLS: it presents the bundle's server certificate (with its CA in the
//! chain) and requires a client certificate issued by the bundle's CA, like D-Trust's
//! interface. A certificate from any other CA, or none, fails the handshake. Always the
//! aws-lc-rs provider, never a process default.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::pki::Issued;

/// The SHA-256 fingerprint of a certificate's DER, lower-case hex without separators:
/// the form [`super::SimConfig::rejected_client_certs`] compares.
pub fn fingerprint(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The server configuration: `server`'s certificate and key, `ca` as the only trust
/// anchor for client certificates (required), TLS 1.2 and 1.3, ALPN `http/1.1`.
pub(crate) fn server_config(server: &Issued, ca: &Issued) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der.clone()))
        .map_err(|e| format!("client CA: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let chain = vec![
        CertificateDer::from(server.cert_der.clone()),
        CertificateDer::from(ca.cert_der.clone()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
