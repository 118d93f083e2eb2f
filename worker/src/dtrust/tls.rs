//! The TLS configuration toward D-Trust, built from the bundle: the account's client
//! certificate and key, and D-Trust's server certificate as the only trust anchor or
//! as an exactly pinned leaf. TLS 1.2 and 1.3 only, with an explicit crypto provider
//! (aws-lc-rs), so no process-wide default is consulted.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::bundle::{Bundle, ServerTrust};

/// Why no TLS configuration could be built from a bundle.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the TLS configuration toward D-Trust: {0}")]
pub struct TlsConfigError(String);

/// The crypto provider of every TLS connection the worker makes.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client configuration for D-Trust from a checked bundle.
pub fn client_config(bundle: &Bundle) -> Result<ClientConfig, TlsConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsConfigError(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &bundle.server {
        ServerTrust::Anchors { certs, .. } => {
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(CertificateDer::from(cert.der.clone()))
                    .map_err(|e| TlsConfigError(format!("trust anchor `{}`: {e}", cert.subject)))?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsConfigError(e.to_string()))?
        }
        ServerTrust::Pinned { cert, .. } => Arc::new(PinnedLeaf {
            pinned: CertificateDer::from(cert.der.clone()),
            provider: provider.clone(),
        }),
    };
    let chain: Vec<CertificateDer<'static>> = bundle
        .identity
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.der.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        bundle.identity.key.expose().to_vec(),
    ));
    builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsConfigError(format!("client certificate: {e}")))
}

/// Accepts exactly one server certificate, byte for byte; the handshake signature is
/// still verified, so only the holder of the pinned certificate's key passes. The host
/// name is not checked: the pin is stricter than any name.
#[derive(Debug)]
struct PinnedLeaf {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
