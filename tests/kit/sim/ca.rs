//! The simulator's issuing CA (ECDSA P-256, subject [`ISSUING_CA_DN`]) and what it
//! issues: X.509 v3 certificates whose subject and SAN come from the order and whose key
//! comes from the CSR (PKCS10) or from a fresh RSA key pair returned in a PKCS#12
//! keystore (PKCS12).
//!
//! The certificate is encoded by hand (with `yasna`) rather than through rcgen, because
//! an order's subject may repeat OU and its RDN order and string types should be
//! exactly D-Trust-like: `C`, `ST`, `L`, `O`, `OU`..., `organizationIdentifier`,
//! `serialNumber`, `SN`, `GN`, `CN`, `E`; `C` and `serialNumber` as PrintableString
//! (UTF8String when not printable), `E` as IA5String, the rest UTF8String.
//!
//! [`ISSUING_CA_DN`]: super::config::ISSUING_CA_DN

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
use yasna::models::{GeneralizedTime, ObjectIdentifier, UTCTime};
use yasna::{DERWriter, Tag};

use super::wire::San;

const OID_EMAIL: &[u64] = &[1, 2, 840, 113549, 1, 9, 1];
const OID_ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
const OID_UPN: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 20, 2, 3];

/// The attribute OID of an RDN name.
fn rdn_oid(name: &str) -> Option<&'static [u64]> {
    Some(match name {
        "CN" => &[2, 5, 4, 3],
        "SN" => &[2, 5, 4, 4],
        "serialNumber" => &[2, 5, 4, 5],
        "C" => &[2, 5, 4, 6],
        "L" => &[2, 5, 4, 7],
        "ST" => &[2, 5, 4, 8],
        "O" => &[2, 5, 4, 10],
        "OU" => &[2, 5, 4, 11],
        "GN" => &[2, 5, 4, 42],
        "organizationIdentifier" => &[2, 5, 4, 97],
        "E" => OID_EMAIL,
        _ => return None,
    })
}

/// The order RDNs are encoded in (most general first).
const ENCODING_ORDER: [&str; 11] = [
    "C",
    "ST",
    "L",
    "O",
    "OU",
    "organizationIdentifier",
    "serialNumber",
    "SN",
    "GN",
    "CN",
    "E",
];

/// What the issued certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    /// TLS server and client (serverAuth, clientAuth).
    Tls,
    /// A person's certificate (clientAuth, emailProtection).
    Personal,
}

/// The issuing CA.
pub(crate) struct IssuingCa {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    subject_der: Vec<u8>,
    key_id: Option<Vec<u8>>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl IssuingCa {
    /// A fresh CA, valid from a day ago for ten years.
    pub fn new(dn: &[(&str, &str)]) -> Result<IssuingCa, String> {
        let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (name, value) in dn {
            let ty = match *name {
                "C" => DnType::CountryName,
                "O" => DnType::OrganizationName,
                "CN" => DnType::CommonName,
                other => DnType::CustomDnType(
                    rdn_oid(other)
                        .ok_or_else(|| format!("unknown RDN {other}"))?
                        .to_vec(),
                ),
            };
            let value = if *name == "C" {
                rcgen::DnValue::PrintableString((*value).try_into().map_err(|e| format!("C: {e}"))?)
            } else {
                rcgen::DnValue::Utf8String((*value).into())
            };
            params.distinguished_name.push(ty, value);
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("self-sign CA: {e}"))?;
        let cert_der = cert.der().to_vec();
        let (_, parsed) =
            X509Certificate::from_der(&cert_der).map_err(|e| format!("parse CA: {e}"))?;
        let subject_der = parsed.subject().as_raw().to_vec();
        let key_id = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            });
        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der())
                .map_err(|e| format!("CA key: {e}"))?;
        Ok(IssuingCa {
            cert_pem: cert.pem(),
            cert_der,
            subject_der,
            key_id,
            key: signing,
            rng: SystemRandom::new(),
        })
    }

    /// Issues a certificate for `spki_der` (a SubjectPublicKeyInfo, copied as it is),
    /// valid from a minute ago for a year.
    pub fn issue(
        &self,
        serial: &[u8],
        subject: &[(&'static str, String)],
        san: &San,
        spki_der: &[u8],
        usage: Usage,
    ) -> Result<Vec<u8>, String> {
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        let not_before = now - Duration::minutes(1);
        let not_after = now + Duration::days(365);
        let subject_der = name_der(subject)?;
        let sig_alg = |w: DERWriter| {
            w.write_sequence(|w| {
                w.next()
                    .write_oid(&ObjectIdentifier::from_slice(OID_ECDSA_SHA256))
            })
        };
        let tbs = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_tagged(Tag::context(0), |w| w.write_u8(2));
                w.next().write_bigint_bytes(serial, true);
                sig_alg(w.next());
                w.next().write_der(&self.subject_der);
                w.next().write_sequence(|w| {
                    write_time(w.next(), not_before);
                    write_time(w.next(), not_after);
                });
                w.next().write_der(&subject_der);
                w.next().write_der(spki_der);
                w.next().write_tagged(Tag::context(3), |w| {
                    w.write_sequence(|w| self.write_extensions(w, san, spki_der, usage))
                });
            })
        });
        let signature = self
            .key
            .sign(&self.rng, &tbs)
            .map_err(|_| "signing failed".to_string())?;
        Ok(yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_der(&tbs);
                sig_alg(w.next());
                let sig = signature.as_ref();
                w.next().write_bitvec_bytes(sig, sig.len() * 8);
            })
        }))
    }

    fn write_extensions(
        &self,
        w: &mut yasna::DERWriterSeq<'_>,
        san: &San,
        spki_der: &[u8],
        usage: Usage,
    ) {
        // basicConstraints, critical: not a CA
        extension(w.next(), &[2, 5, 29, 19], true, |w| {
            w.write_sequence(|_| {})
        });
        // keyUsage, critical: digitalSignature, keyEncipherment
        extension(w.next(), &[2, 5, 29, 15], true, |w| {
            w.write_bitvec_bytes(&[0b1010_0000], 3)
        });
        // extKeyUsage
        let ekus: &[&[u64]] = match usage {
            Usage::Tls => &[&[1, 3, 6, 1, 5, 5, 7, 3, 1], &[1, 3, 6, 1, 5, 5, 7, 3, 2]],
            Usage::Personal => &[&[1, 3, 6, 1, 5, 5, 7, 3, 2], &[1, 3, 6, 1, 5, 5, 7, 3, 4]],
        };
        extension(w.next(), &[2, 5, 29, 37], false, |w| {
            w.write_sequence(|w| {
                for oid in ekus {
                    w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                }
            })
        });
        // subjectAltName
        if !(san.dns.is_empty() && san.email.is_empty() && san.upn.is_empty()) {
            extension(w.next(), &[2, 5, 29, 17], false, |w| {
                w.write_sequence(|w| {
                    for dns in &san.dns {
                        w.next()
                            .write_tagged_implicit(Tag::context(2), |w| w.write_ia5_string(dns));
                    }
                    for email in &san.email {
                        w.next()
                            .write_tagged_implicit(Tag::context(1), |w| w.write_ia5_string(email));
                    }
                    for upn in &san.upn {
                        w.next().write_tagged_implicit(Tag::context(0), |w| {
                            w.write_sequence(|w| {
                                w.next().write_oid(&ObjectIdentifier::from_slice(OID_UPN));
                                w.next()
                                    .write_tagged(Tag::context(0), |w| w.write_utf8_string(upn));
                            })
                        });
                    }
                })
            });
        }
        // subjectKeyIdentifier: SHA-256 of the SubjectPublicKeyInfo, first 20 bytes
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
        extension(w.next(), &[2, 5, 29, 14], false, |w| {
            w.write_bytes(&digest.as_ref()[..20])
        });
        // authorityKeyIdentifier
        if let Some(id) = &self.key_id {
            extension(w.next(), &[2, 5, 29, 35], false, |w| {
                w.write_sequence(|w| {
                    w.next()
                        .write_tagged_implicit(Tag::context(0), |w| w.write_bytes(id))
                })
            });
        }
    }
}

fn extension(w: DERWriter, oid: &[u64], critical: bool, value: impl FnOnce(DERWriter)) {
    let inner = yasna::construct_der(value);
    w.write_sequence(|w| {
        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
        if critical {
            w.next().write_bool(true);
        }
        w.next().write_bytes(&inner);
    });
}

fn write_time(w: DERWriter, t: OffsetDateTime) {
    match UTCTime::from_datetime_opt(t) {
        Some(u) => w.write_utctime(&u),
        None => w.write_generalized_time(&GeneralizedTime::from_datetime(t)),
    }
}

/// PrintableString's characters, less `?` (which yasna refuses).
fn is_printable(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=".contains(&b))
}

/// The DER of a Name with one attribute per RDN, in [`ENCODING_ORDER`].
fn name_der(subject: &[(&'static str, String)]) -> Result<Vec<u8>, String> {
    let mut ordered = Vec::with_capacity(subject.len());
    for name in ENCODING_ORDER {
        for (n, v) in subject.iter().filter(|(n, _)| *n == name) {
            let oid = rdn_oid(n).ok_or_else(|| format!("unknown RDN {n}"))?;
            ordered.push((*n, oid, v.as_str()));
        }
    }
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            for (name, oid, value) in &ordered {
                w.next().write_set(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                        let v = w.next();
                        match *name {
                            "C" | "serialNumber" if is_printable(value) => {
                                v.write_printable_string(value)
                            }
                            "E" if value.is_ascii() => v.write_ia5_string(value),
                            _ => v.write_utf8_string(value),
                        }
                    })
                })
            }
        })
    }))
}

/// A fresh RSA key pair: (PKCS#8 DER, SubjectPublicKeyInfo DER).
pub(crate) fn generate_rsa(bits: u32) -> Result<(Vec<u8>, Vec<u8>), String> {
    use rcgen::{PublicKeyData, RsaKeySize};
    let size = match bits {
        2048 => RsaKeySize::_2048,
        3072 => RsaKeySize::_3072,
        4096 => RsaKeySize::_4096,
        other => return Err(format!("cannot generate an RSA key of {other} bits")),
    };
    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
        .map_err(|e| format!("generate RSA key: {e}"))?;
    Ok((key.serialize_der(), key.subject_public_key_info()))
}

/// A PKCS#12 keystore (AES-256, PBKDF2, HMAC-SHA-256) holding the key, the certificate
/// and the CA.
pub(crate) fn pkcs12(
    key_pkcs8: &[u8],
    cert_der: &[u8],
    ca_der: &[u8],
    password: &str,
) -> Result<Vec<u8>, String> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let cert = |der: &[u8]| Certificate::from_der(der).map_err(|e| format!("pkcs12 cert: {e}"));
    let key = PrivateKey::from_der(key_pkcs8).map_err(|e| format!("pkcs12 key: {e}"))?;
    let mut local_key_id = [0u8; 8];
    local_key_id.copy_from_slice(
        &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der).as_ref()[..8],
    );
    let mut store = KeyStore::new();
    store.add_entry(
        "certificate",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
            local_key_id.as_slice(),
            key,
            [cert(cert_der)?, cert(ca_der)?],
        )),
    );
    store
        .writer(password)
        .write()
        .map_err(|e| format!("write pkcs12: {e}"))
}

/// `n` random bytes.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    if aws_lc_rs::rand::fill(&mut out).is_err() {
        // aws-lc's generator does not fail in practice; fall back to the clock.
        let t = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        for (i, b) in out.iter_mut().enumerate() {
            *b = (t.rotate_left(i as u32 * 7) & 0xff) as u8;
        }
    }
    out
}

/// A random password of `n` letters and digits.
pub(crate) fn random_password(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    random_bytes(n)
        .into_iter()
        .map(|b| CHARS[b as usize % CHARS.len()] as char)
        .collect()
}
