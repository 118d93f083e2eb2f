//! Real keys and certificates made at test time: a CA, D-Trust's server certificate,
//! the account's client certificate, and PKCS#12 keystores in every encryption an
//! operator may bring (pure Rust via `p12-keystore`, or the `openssl` command).

use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A certificate with its private key.
pub struct Issued {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A certificate authority that issues test certificates.
pub struct Ca {
    pub cert: Issued,
    issuer: Issuer<'static, KeyPair>,
}

fn params(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "dtrust-worker tests");
    params.distinguished_name.push(DnType::CountryName, "DE");
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn issued(cert: rcgen::Certificate, key: &KeyPair) -> Issued {
    Issued {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

/// Validity from a day ago until `days` from now.
pub fn valid_for(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(1), now + Duration::days(days))
}

impl Ca {
    /// A new self-signed CA, valid for ten years.
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("generate CA key");
        let (nb, na) = valid_for(3650);
        let mut p = params(cn, nb, na);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("self-sign CA");
        Ca {
            cert: issued(cert, &key),
            issuer: Issuer::new(p, key),
        }
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("generate server key");
        let (nb, na) = valid_for(365);
        let mut p = params(names.first().copied().unwrap_or("localhost"), nb, na);
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*n).try_into().expect("DNS name")),
            })
            .collect();
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).expect("sign server cert");
        issued(cert, &key)
    }

    /// A TLS client certificate (the D-Trust account's) valid from `not_before` to
    /// `not_after`.
    pub fn client(
        &self,
        cn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Issued {
        let key = KeyPair::generate().expect("generate client key");
        let mut p = params(cn, not_before, not_after);
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.issuer).expect("sign client cert");
        issued(cert, &key)
    }
}

/// How a keystore is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P12Encryption {
    /// Current: AES-256-CBC with PBKDF2, HMAC-SHA-256 MAC.
    Aes256,
    /// Old: 3DES with a SHA-1 MAC.
    TripleDes,
    /// Oldest: RC2-40 certificates, 3DES key, SHA-1 MAC (`openssl -legacy`).
    Rc2_40,
}

/// A PKCS#12 keystore with `leaf`'s key and certificate, and `chain` after it.
pub fn pkcs12(
    leaf: &Issued,
    chain: &[&[u8]],
    password: &str,
    encryption: P12Encryption,
) -> Vec<u8> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
        PrivateKeyChain,
    };
    let mut certs = vec![Certificate::from_der(&leaf.cert_der).expect("leaf cert")];
    certs.extend(
        chain
            .iter()
            .map(|c| Certificate::from_der(c).expect("chain cert")),
    );
    let key = PrivateKey::from_der(&leaf.key_der).expect("pkcs8 key");
    let mut store = KeyStore::new();
    store.add_entry(
        "client",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
            b"client-key-1".as_slice(),
            key,
            certs,
        )),
    );
    let (enc, mac) = match encryption {
        P12Encryption::Aes256 => (
            EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
            MacAlgorithm::HmacSha256,
        ),
        P12Encryption::TripleDes => (
            EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
            MacAlgorithm::HmacSha1,
        ),
        P12Encryption::Rc2_40 => (
            EncryptionAlgorithm::PbeWithShaAnd40BitRc4Cbc,
            MacAlgorithm::HmacSha1,
        ),
    };
    store
        .writer(password)
        .encryption_algorithm(enc)
        .mac_algorithm(mac)
        .write()
        .expect("write pkcs12")
}

/// A keystore with certificates only (no private key), as a wrong export gives.
pub fn pkcs12_without_key(cert_der: &[u8], password: &str) -> Vec<u8> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry};
    let mut store = KeyStore::new();
    store.add_entry(
        "cert",
        KeyStoreEntry::Certificate(Certificate::from_der(cert_der).expect("cert")),
    );
    store.writer(password).write().expect("write pkcs12")
}

/// A keystore made by the `openssl` command, as operators make them: `legacy` gives
/// RC2-40/3DES with a SHA-1 MAC (`-legacy`), otherwise OpenSSL 3's AES-256/PBKDF2.
pub fn pkcs12_openssl(leaf: &Issued, chain_pem: &str, password: &str, legacy: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let chain = dir.path().join("chain.pem");
    let out = dir.path().join("out.p12");
    std::fs::write(&key, &leaf.key_pem).expect("write key");
    std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
    std::fs::write(&chain, chain_pem).expect("write chain");
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs12", "-export", "-name", "client"])
        .arg("-inkey")
        .arg(&key)
        .arg("-in")
        .arg(&cert)
        .arg("-certfile")
        .arg(&chain)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg("env:DTRUST_TEST_P12_PASS")
        .env("DTRUST_TEST_P12_PASS", password);
    if legacy {
        cmd.arg("-legacy");
    }
    let status = cmd
        .status()
        .expect("run openssl (install it: apt-get install openssl)");
    assert!(status.success(), "openssl pkcs12 -export failed");
    std::fs::read(out).expect("read keystore")
}

/// The key of a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcP256,
}

/// A PKCS#10 request over a fresh key: `(CSR DER, CSR PEM, key)`.
pub fn csr(cn: &str, kind: KeyKind) -> (Vec<u8>, String, KeyPair) {
    let key = match kind {
        KeyKind::EcP256 => KeyPair::generate().expect("EC key"),
        KeyKind::Rsa2048 | KeyKind::Rsa3072 | KeyKind::Rsa4096 => {
            let size = match kind {
                KeyKind::Rsa2048 => rcgen::RsaKeySize::_2048,
                KeyKind::Rsa3072 => rcgen::RsaKeySize::_3072,
                _ => rcgen::RsaKeySize::_4096,
            };
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size).expect("RSA key")
        }
    };
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    let request = params.serialize_request(&key).expect("CSR");
    let der = request.der().to_vec();
    let pem = request.pem().expect("CSR PEM");
    (der, pem, key)
}
