//! The X.509 side of the Certificate Manager simulator: distinguished names from their
//! RFC 4514 strings, the PKCS#10 request over an archived key, the dummy certificate,
//! and reading the certificate the worker imports.
//!
//! Names, requests and the dummy certificate are DER-encoded by hand (with `yasna`),
//! not through rcgen's `DistinguishedName`, because that one keeps at most one value
//! per attribute type (a subject may have several `OU`, an issuer DN several `OU` or
//! `DC`) and does not choose the string types. Here they are chosen as the D-Trust
//! simulator encodes its issuing CA (`kit/sim/ca.rs`): `C` and `serialNumber` as
//! PrintableString (UTF8String when not printable), `E` and `DC` as IA5String, the rest
//! UTF8String. So the dummy certificate's issuer is byte for byte the issuer D-Trust
//! will put into the real certificate. rcgen is used for the keys and signatures.

use rcgen::{KeyPair, PublicKeyData, RsaKeySize, SigningKey, PKCS_RSA_SHA256};
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use yasna::models::{GeneralizedTime, ObjectIdentifier, UTCTime};
use yasna::DERWriter;

const OID_EMAIL: &[u64] = &[1, 2, 840, 113549, 1, 9, 1];
const OID_DC: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 25];
const OID_UID: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 1];
/// sha256WithRSAEncryption.
const OID_SHA256_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
/// ecdsa-with-SHA256.
const OID_ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];

/// Attribute type names accepted in a DN string (upper-cased), with their OIDs.
const ATTRIBUTE_TYPES: [(&str, &[u64]); 20] = [
    ("CN", &[2, 5, 4, 3]),
    ("SN", &[2, 5, 4, 4]),
    ("SURNAME", &[2, 5, 4, 4]),
    ("SERIALNUMBER", &[2, 5, 4, 5]),
    ("C", &[2, 5, 4, 6]),
    ("L", &[2, 5, 4, 7]),
    ("ST", &[2, 5, 4, 8]),
    ("S", &[2, 5, 4, 8]),
    ("STREET", &[2, 5, 4, 9]),
    ("O", &[2, 5, 4, 10]),
    ("OU", &[2, 5, 4, 11]),
    ("T", &[2, 5, 4, 12]),
    ("TITLE", &[2, 5, 4, 12]),
    ("GN", &[2, 5, 4, 42]),
    ("GIVENNAME", &[2, 5, 4, 42]),
    ("ORGANIZATIONIDENTIFIER", &[2, 5, 4, 97]),
    ("E", OID_EMAIL),
    ("EMAILADDRESS", OID_EMAIL),
    ("DC", OID_DC),
    ("UID", OID_UID),
];

/// The subject keys of a job (and of `generate`), their OIDs, in the order the
/// D-Trust simulator encodes them (most general first).
const SUBJECT_KEYS: [(&str, &[u64]); 11] = [
    ("c", &[2, 5, 4, 6]),
    ("st", &[2, 5, 4, 8]),
    ("l", &[2, 5, 4, 7]),
    ("o", &[2, 5, 4, 10]),
    ("ou", &[2, 5, 4, 11]),
    ("organization_identifier", &[2, 5, 4, 97]),
    ("serial_number", &[2, 5, 4, 5]),
    ("surname", &[2, 5, 4, 4]),
    ("given_name", &[2, 5, 4, 42]),
    ("cn", &[2, 5, 4, 3]),
    ("email", OID_EMAIL),
];

/// One attribute of a name: its type and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute type's OID components.
    pub oid: Vec<u64>,
    /// The value, unescaped.
    pub value: String,
}

/// A distinguished name in encoding order (most general RDN first, as in DER); each
/// RDN holds one attribute, or several for a multi-valued RDN (`+`).
pub type Rdns = Vec<Vec<Attribute>>;

/// Parses an RFC 4514 DN string (`CN=...,O=...,C=DE`, most specific RDN first) into
/// RDNs in encoding order (reversed). Accepts, in any case, the attribute names `CN`,
/// `SN`/`surname`, `serialNumber`, `C`, `L`, `ST`/`S`, `street`, `O`, `OU`, `T`/`title`,
/// `GN`/`givenName`, `organizationIdentifier`, `E`/`emailAddress`, `DC`, `UID`; dotted OIDs (`2.5.4.3=...`, `OID.2.5.4.3=...`),
/// `\`-escapes (a special character or two hex digits of UTF-8), `"quoted"` values, `;`
/// as separator, and spaces around separators. Refuses hex (`#...`) values, empty
/// values, unknown attribute names and an empty DN.
pub fn parse_dn(dn: &str) -> Result<Rdns, String> {
    let chars: Vec<char> = dn.chars().collect();
    let mut pos = 0;
    let mut rdns: Rdns = Vec::new();
    let mut rdn: Vec<Attribute> = Vec::new();
    if dn.trim().is_empty() {
        return Err("the DN is empty".into());
    }
    loop {
        // attribute type
        while pos < chars.len() && chars[pos] == ' ' {
            pos += 1;
        }
        let start = pos;
        while pos < chars.len() && chars[pos] != '=' {
            if matches!(chars[pos], ',' | ';' | '+') {
                return Err(format!(
                    "attribute {} has no `=`",
                    rdns.len() + rdn.len() + 1
                ));
            }
            pos += 1;
        }
        if pos >= chars.len() {
            return Err(format!(
                "attribute {} has no `=`",
                rdns.len() + rdn.len() + 1
            ));
        }
        let name: String = chars[start..pos].iter().collect();
        let oid = attribute_oid(name.trim())?;
        pos += 1; // '='
        let (value, next) = parse_value(&chars, pos)?;
        if value.is_empty() {
            return Err(format!("attribute `{}` has an empty value", name.trim()));
        }
        rdn.push(Attribute { oid, value });
        pos = next;
        match chars.get(pos) {
            None => {
                rdns.push(std::mem::take(&mut rdn));
                break;
            }
            Some('+') => pos += 1,
            Some(',' | ';') => {
                rdns.push(std::mem::take(&mut rdn));
                pos += 1;
            }
            Some(c) => return Err(format!("unexpected `{c}` after a value")),
        }
    }
    rdns.reverse();
    Ok(rdns)
}

fn attribute_oid(name: &str) -> Result<Vec<u64>, String> {
    if name.is_empty() {
        return Err("an attribute has no type".into());
    }
    let upper = name.to_ascii_uppercase();
    if let Some((_, oid)) = ATTRIBUTE_TYPES.iter().find(|(n, _)| *n == upper) {
        return Ok(oid.to_vec());
    }
    let dotted = upper.strip_prefix("OID.").unwrap_or(&upper);
    if dotted.starts_with(|c: char| c.is_ascii_digit()) {
        let oid: Vec<u64> = dotted
            .split('.')
            .map(|part| {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                part.parse::<u64>().map_err(|_| ())
            })
            .collect::<Result<_, _>>()
            .map_err(|()| format!("attribute type `{name}` is not a valid OID"))?;
        let valid = oid.len() >= 2 && oid[0] <= 2 && (oid[0] == 2 || oid[1] < 40);
        if !valid {
            return Err(format!("attribute type `{name}` is not a valid OID"));
        }
        return Ok(oid);
    }
    Err(format!("unknown attribute type `{name}`"))
}

/// Parses a value from `pos` up to an unescaped `,`, `;`, `+` or the end; returns it
/// and the position of that separator.
fn parse_value(chars: &[char], mut pos: usize) -> Result<(String, usize), String> {
    while pos < chars.len() && chars[pos] == ' ' {
        pos += 1;
    }
    if chars.get(pos) == Some(&'#') {
        return Err("hex-encoded (`#...`) values are not supported".into());
    }
    if chars.get(pos) == Some(&'"') {
        pos += 1;
        let mut bytes = Vec::new();
        loop {
            match chars.get(pos) {
                None => return Err("a quoted value is not closed".into()),
                Some('"') => {
                    pos += 1;
                    break;
                }
                Some('\\') => pos = unescape(chars, pos, &mut bytes)?,
                Some(c) => {
                    push_char(&mut bytes, *c);
                    pos += 1;
                }
            }
        }
        while pos < chars.len() && chars[pos] == ' ' {
            pos += 1;
        }
        let value = String::from_utf8(bytes).map_err(|_| "a value is not UTF-8")?;
        return Ok((value, pos));
    }
    let mut bytes = Vec::new();
    // length of `bytes` up to the last character that is not an unescaped space
    let mut significant = 0;
    while let Some(&c) = chars.get(pos) {
        match c {
            ',' | ';' | '+' => break,
            '\\' => {
                pos = unescape(chars, pos, &mut bytes)?;
                significant = bytes.len();
            }
            '"' | '<' | '>' => return Err(format!("`{c}` must be escaped in a value")),
            c => {
                push_char(&mut bytes, c);
                pos += 1;
                if c != ' ' {
                    significant = bytes.len();
                }
            }
        }
    }
    bytes.truncate(significant);
    let value = String::from_utf8(bytes).map_err(|_| "a value is not UTF-8")?;
    Ok((value, pos))
}

/// Unescapes the `\` at `pos` into `bytes`; returns the position after the escape.
fn unescape(chars: &[char], pos: usize, bytes: &mut Vec<u8>) -> Result<usize, String> {
    let hex = |c: Option<&char>| c.and_then(|c| c.to_digit(16));
    match (hex(chars.get(pos + 1)), hex(chars.get(pos + 2))) {
        (Some(high), Some(low)) => {
            bytes.push(u8::try_from(high * 16 + low).map_err(|_| "bad hex escape")?);
            Ok(pos + 3)
        }
        _ => match chars.get(pos + 1) {
            Some(c) if " \"#+,;<=>\\".contains(*c) => {
                push_char(bytes, *c);
                Ok(pos + 2)
            }
            Some(c) => Err(format!("`\\{c}` is not a valid escape")),
            None => Err("a value ends with `\\`".into()),
        },
    }
}

fn push_char(bytes: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// The DER of a DN string (see [`parse_dn`]).
pub fn dn_der(dn: &str) -> Result<Vec<u8>, String> {
    Ok(name_der(&parse_dn(dn)?))
}

/// The RDNs of a `subject` object (`cn`, `o`, `ou` [array], `c`, `l`, `st`, `email`,
/// `serial_number`, `organization_identifier`, `given_name`, `surname`), one attribute
/// per RDN, in the D-Trust simulator's encoding order. Unknown keys and values of the
/// wrong type are left out (the schema has checked them already).
pub fn subject_rdns(subject: &Map<String, Value>) -> Rdns {
    let mut rdns = Vec::new();
    for (key, oid) in SUBJECT_KEYS {
        let values: Vec<&str> = match subject.get(key) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            rdns.push(vec![Attribute {
                oid: oid.to_vec(),
                value: value.to_string(),
            }]);
        }
    }
    rdns
}

/// PrintableString's characters, less `?` (which yasna refuses).
fn is_printable(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=".contains(&b))
}

fn write_value(w: DERWriter, oid: &[u64], value: &str) {
    let printable = oid == [2, 5, 4, 6] || oid == [2, 5, 4, 5];
    let ia5 = oid == OID_EMAIL || oid == OID_DC;
    if printable && is_printable(value) {
        w.write_printable_string(value);
    } else if ia5 && value.is_ascii() {
        w.write_ia5_string(value);
    } else {
        w.write_utf8_string(value);
    }
}

/// The DER of a Name (RDNs in encoding order).
pub fn name_der(rdns: &Rdns) -> Vec<u8> {
    yasna::construct_der(|w| write_name(w, rdns))
}

fn write_name(w: DERWriter, rdns: &Rdns) {
    w.write_sequence_of(|w| {
        for rdn in rdns.iter().filter(|rdn| !rdn.is_empty()) {
            w.next().write_set_of(|w| {
                for attribute in rdn {
                    w.next().write_sequence(|w| {
                        w.next()
                            .write_oid(&ObjectIdentifier::from_slice(&attribute.oid));
                        write_value(w.next(), &attribute.oid, &attribute.value);
                    });
                }
            });
        }
    });
}

fn write_algorithm(w: DERWriter, oid: &[u64], null_parameters: bool) {
    w.write_sequence(|w| {
        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
        if null_parameters {
            w.next().write_null();
        }
    });
}

/// UTCTime until 2049, GeneralizedTime after (RFC 5280 4.1.2.5); `t` in whole seconds.
fn write_time(w: DERWriter, t: OffsetDateTime) {
    match UTCTime::from_datetime_opt(t) {
        Some(u) => w.write_utctime(&u),
        None => w.write_generalized_time(&GeneralizedTime::from_datetime(t)),
    }
}

/// The RSA key sizes the simulator generates, as rcgen names them.
pub fn rsa_key_size(bits: i64) -> Option<RsaKeySize> {
    match bits {
        2048 => Some(RsaKeySize::_2048),
        3072 => Some(RsaKeySize::_3072),
        4096 => Some(RsaKeySize::_4096),
        _ => None,
    }
}

/// What generating a key pair yields; the private key is not kept (nothing here needs
/// it after the request is signed, and it can then never be logged).
pub struct Generated {
    /// SubjectPublicKeyInfo DER of the new key.
    pub spki_der: Vec<u8>,
    /// The PKCS#10 request over it, PEM.
    pub csr_pem: String,
    /// The dummy certificate over it, DER.
    pub dummy_cert_der: Vec<u8>,
}

/// Generates an RSA key pair of `size`, a PKCS#10 request over it with `subject`, and a
/// dummy certificate for it (subject `subject`, issuer `issuer`), signed by
/// `issuer_key`. Slow (RSA key generation): run it off the async threads.
pub fn generate(
    size: RsaKeySize,
    subject: &Rdns,
    issuer: &Rdns,
    issuer_key: &KeyPair,
) -> Result<Generated, String> {
    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, size)
        .map_err(|e| format!("RSA key generation failed: {e}"))?;
    let spki_der = key.subject_public_key_info();
    let csr_der = csr_der(&key, subject)?;
    let csr_pem = pem("CERTIFICATE REQUEST", &csr_der);
    let dummy_cert_der = dummy_cert_der(&spki_der, subject, issuer, issuer_key)?;
    Ok(Generated {
        spki_der,
        csr_pem,
        dummy_cert_der,
    })
}

/// A PKCS#10 request (RFC 2986) over `key` with `subject` and no attributes, signed
/// with `key` (sha256WithRSAEncryption).
fn csr_der(key: &KeyPair, subject: &Rdns) -> Result<Vec<u8>, String> {
    let spki = key.subject_public_key_info();
    let info = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            write_name(w.next(), subject);
            w.next().write_der(&spki);
            w.next()
                .write_tagged_implicit(yasna::Tag::context(0), |w| w.write_set(|_| {}));
        })
    });
    let signature = key
        .sign(&info)
        .map_err(|e| format!("signing the request failed: {e}"))?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&info);
            write_algorithm(w.next(), OID_SHA256_RSA, true);
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    }))
}

/// A v1 certificate for `spki_der` (subject `subject`, issuer `issuer`, valid from a
/// minute ago for a year, random serial), signed by `issuer_key` (ECDSA P-256).
fn dummy_cert_der(
    spki_der: &[u8],
    subject: &Rdns,
    issuer: &Rdns,
    issuer_key: &KeyPair,
) -> Result<Vec<u8>, String> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| "no random serial")?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    // whole seconds: X.509 times carry no fraction
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let tbs = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_bigint_bytes(&serial, true);
            write_algorithm(w.next(), OID_ECDSA_SHA256, false);
            write_name(w.next(), issuer);
            w.next().write_sequence(|w| {
                write_time(w.next(), now - Duration::minutes(1));
                write_time(w.next(), now + Duration::days(365));
            });
            write_name(w.next(), subject);
            w.next().write_der(spki_der);
        })
    });
    let signature = issuer_key
        .sign(&tbs)
        .map_err(|e| format!("signing the dummy certificate failed: {e}"))?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&tbs);
            write_algorithm(w.next(), OID_ECDSA_SHA256, false);
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    }))
}

/// PEM armour around `der`, 64 characters a line.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The first `CERTIFICATE` of a PEM text, DER.
pub fn first_certificate(pem_text: &str) -> Result<Vec<u8>, String> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()) {
        let block = block.map_err(|e| format!("the PEM does not decode: {e}"))?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
    }
    Err("the PEM holds no CERTIFICATE".into())
}

/// The public key of an SPKI, as (algorithm OID, key bits): what two encodings of the
/// same key have in common.
pub fn spki_key(spki_der: &[u8]) -> Result<(String, Vec<u8>), String> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| format!("the public key does not parse: {e}"))?;
    Ok((
        spki.algorithm.algorithm.to_id_string(),
        spki.subject_public_key.data.to_vec(),
    ))
}

/// The public key of a certificate (DER), as [`spki_key`] gives it.
pub fn certificate_key(cert_der: &[u8]) -> Result<(String, Vec<u8>), String> {
    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    if !rest.is_empty() {
        return Err("the certificate has trailing bytes".into());
    }
    spki_key(cert.public_key().raw)
}
