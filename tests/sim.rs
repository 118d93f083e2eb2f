//! The D-Trust simulator (`dtrust_testkit::sim`) against a plain HTTPS client, over real
//! mutual TLS with real keys: endpoints, issuance, validation codes, pending orders,
//! revocation, client certificate checks, every fault kind, the control endpoints and the
//! `dtrust-sim` binary. Each test starts its own simulator on a free port.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use dtrust_testkit::bundle::{BundleBuilder, P12_PASSWORD};
use dtrust_testkit::pki::{self, Ca, Issued};
use dtrust_testkit::process::{run_worker, text};
use dtrust_testkit::sim::{
    fingerprint, Endpoint, FaultKind, Faults, OrderStatus, Sim, SimConfig, ISSUING_CA_DN,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, RsaKeySize};
use reqwest::StatusCode;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

const PASSWORD: &str = "Rv-0123456789abcdef!9";

// ---------------------------------------------------------------- helpers

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// An HTTPS client with `client`'s certificate, trusting `ca` only.
fn client_with(ca: &Issued, client: &Issued, timeout: Duration) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der.clone()))
        .expect("root");
    let chain = vec![
        CertificateDer::from(client.cert_der.clone()),
        CertificateDer::from(ca.cert_der.clone()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client.key_der.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("client")
}

struct Fixture {
    pki: BundleBuilder,
    sim: Sim,
    http: reqwest::Client,
}

impl Fixture {
    async fn new(config: SimConfig) -> Fixture {
        let pki = BundleBuilder::new("https://placeholder/");
        let sim = Sim::start(config, &pki).await;
        let http = client_with(&pki.ca.cert, &pki.client, Duration::from_secs(30));
        Fixture { pki, sim, http }
    }

    async fn default() -> Fixture {
        Fixture::new(SimConfig::default_catalogue()).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.url())
    }

    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        answer(r).await
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        answer(r).await
    }

    async fn order(&self, body: &Value) -> (StatusCode, Value) {
        let (s, _, v) = self.post("v1/orders", body).await;
        (s, v)
    }
}

async fn answer(r: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, value)
}

fn error_of(v: &Value) -> (String, Option<String>) {
    let e = &v["errors"][0];
    (
        e["code"].as_str().unwrap_or("").to_string(),
        e["field"].as_str().map(str::to_string),
    )
}

fn rsa(bits: u32) -> &'static KeyPair {
    static K2048: OnceLock<KeyPair> = OnceLock::new();
    static K3072: OnceLock<KeyPair> = OnceLock::new();
    let (cell, size) = match bits {
        2048 => (&K2048, RsaKeySize::_2048),
        3072 => (&K3072, RsaKeySize::_3072),
        _ => panic!("no {bits}-bit test key"),
    };
    cell.get_or_init(|| KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size).expect("RSA key"))
}

/// A CSR (DER) for `key`, with a CN of its own (the simulator ignores it).
fn csr_der(key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "csr subject is ignored");
    params.serialize_request(key).expect("CSR").der().to_vec()
}

fn ssl_basic_pkcs10(reference: &str) -> Value {
    json!({
        "product": "SSL-Basic",
        "request_type": "PKCS10",
        "pkcs10": b64(&csr_der(rsa(2048))),
        "subject": { "CN": "www.example.com", "O": "Example GmbH", "OU": ["IT", "Web"], "C": "DE", "L": "Berlin" },
        "san": { "dns": ["www.example.com", "example.com"] },
        "revocation_password": PASSWORD,
        "client_reference": reference,
    })
}

fn personal_pkcs12(reference: &str) -> Value {
    json!({
        "product": "Personal-Sig",
        "request_type": "PKCS12",
        "subject": { "CN": "Erika Mustermann", "GN": "Erika", "SN": "Mustermann", "E": "erika@example.com", "C": "DE" },
        "san": { "email": ["erika@example.com"], "upn": ["erika@corp.example.com"] },
        "revocation_password": PASSWORD,
        "client_reference": reference,
    })
}

fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate");
    assert!(rest.is_empty());
    cert
}

/// (attribute OID, value) of a name, in encoding order.
fn attributes(name: &x509_parser::x509::X509Name<'_>) -> Vec<(String, String)> {
    name.iter()
        .flat_map(|rdn| rdn.iter())
        .map(|a| {
            (
                a.attr_type().to_id_string(),
                a.as_str().expect("string value").to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- endpoints

#[tokio::test]
async fn ping_answers_the_account() {
    let f = Fixture::default().await;
    let (s, h, v) = f.get("v1/ping").await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({ "account": f.sim.account() }));
    assert_eq!(
        h["content-type"].to_str().unwrap(),
        "application/json; charset=utf-8"
    );
    // Keep-alive: one connection for requests made one after another.
    for _ in 0..4 {
        assert_eq!(f.get("v1/ping").await.0, 200);
    }
    let stats = f.sim.stats();
    assert_eq!(stats.outcome(Endpoint::Ping, "200"), 5);
    assert_eq!(stats.connections, 1);
}

#[tokio::test]
async fn products_lists_the_enabled_products_with_rust_regex_rules() {
    let f = Fixture::default().await;
    let (s, _, v) = f.get("v1/products").await;
    assert_eq!(s, 200);
    let products = v.as_array().expect("array");
    let ids: Vec<&str> = products.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["SSL-Basic", "SSL-OV", "Personal-Sig", "SSL-EV"]);
    for p in products {
        for key in [
            "name",
            "request_types",
            "key_sizes",
            "required_rdns",
            "rdn_patterns",
            "revocation_password_pattern",
        ] {
            assert!(!p[key].is_null(), "{key} missing in {p}");
        }
        assert_eq!(p["issuer_dn"], ISSUING_CA_DN);
        for (_, pattern) in p["rdn_patterns"].as_object().unwrap() {
            regex::Regex::new(pattern.as_str().unwrap()).expect("a Rust regex");
        }
        regex::Regex::new(p["revocation_password_pattern"].as_str().unwrap()).expect("regex");
    }
    let basic = &products[0];
    assert_eq!(basic["request_types"], json!(["PKCS10", "PKCS12"]));
    assert_eq!(basic["key_sizes"], json!([2048, 3072, 4096]));
    let cn = regex::Regex::new(basic["rdn_patterns"]["CN"].as_str().unwrap()).unwrap();
    assert!(cn.is_match("www.example.com"));
    assert!(!cn.is_match("CN=www.example.com"));
    // The issuing CA's subject is exactly issuer_dn (RFC 4514: most specific first).
    let ca_der = f.sim.issuing_ca_der();
    let ca = parse_cert(&ca_der);
    let mut attrs = attributes(ca.subject());
    attrs.reverse();
    let dn: Vec<String> = attrs
        .iter()
        .map(|(oid, v)| {
            let short = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.10" => "O",
                "2.5.4.6" => "C",
                other => other,
            };
            format!("{short}={v}")
        })
        .collect();
    assert_eq!(dn.join(","), ISSUING_CA_DN);
}

#[tokio::test]
async fn pkcs10_order_is_issued_with_the_csr_key_and_the_order_subject() {
    let f = Fixture::default().await;
    let csr = csr_der(rsa(2048));
    let mut body = ssl_basic_pkcs10("job-pkcs10");
    body["pkcs10"] = json!(b64(&csr));
    let (s, v) = f.order(&body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "ISSUED");
    assert_eq!(v["client_reference"], "job-pkcs10");
    assert_eq!(v["product"], "SSL-Basic");
    assert!(v.get("pkcs12").is_none() && v.get("pkcs12_password").is_none());
    let order_id = v["order_id"].as_str().unwrap();
    let serial = v["serial"].as_str().unwrap();
    assert!(serial.chars().all(|c| c.is_ascii_hexdigit()));

    let der = unb64(v["certificate"].as_str().unwrap());
    let cert = parse_cert(&der);
    let (_, csr) = x509_parser::prelude::X509CertificationRequest::from_der(&csr).expect("csr");
    assert_eq!(
        cert.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the certificate certifies the CSR's key"
    );
    assert_eq!(
        attributes(cert.subject()),
        [
            ("2.5.4.6", "DE"),
            ("2.5.4.7", "Berlin"),
            ("2.5.4.10", "Example GmbH"),
            ("2.5.4.11", "IT"),
            ("2.5.4.11", "Web"),
            ("2.5.4.3", "www.example.com"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(
        hex_upper(cert.raw_serial()).trim_start_matches('0'),
        serial.trim_start_matches('0')
    );
    let san: Vec<String> = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(s) => Some(
                s.general_names
                    .iter()
                    .map(|g| match g {
                        GeneralName::DNSName(d) => d.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect(),
            ),
            _ => None,
        })
        .expect("SAN");
    assert_eq!(san, ["www.example.com", "example.com"]);

    // The chain is the issuing CA, and it verifies the certificate.
    let chain = v["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 1);
    let ca_der = unb64(chain[0].as_str().unwrap());
    assert_eq!(ca_der, f.sim.issuing_ca_der());
    assert!(f
        .sim
        .issuing_ca_pem()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let ca = parse_cert(&ca_der);
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the issuing CA");
    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
    assert!(cert.validity().is_valid());

    // The same order, read back.
    let (s, h, again) = f.get(&format!("v1/orders/{order_id}")).await;
    assert_eq!(s, 200);
    assert!(h.get("retry-after").is_none());
    assert_eq!(again, v);
    let records = f.sim.orders();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, OrderStatus::Issued);
    assert_eq!(records[0].subject_cn.as_deref(), Some("www.example.com"));
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[tokio::test]
async fn pkcs12_order_returns_a_keystore_holding_the_key_of_the_certificate() {
    let f = Fixture::default().await;
    let (s, v) = f.order(&personal_pkcs12("job-p12")).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "ISSUED");
    let password = v["pkcs12_password"].as_str().expect("password");
    assert!(password.len() >= 16);
    let p12 = unb64(v["pkcs12"].as_str().expect("pkcs12"));
    let store = p12_keystore::KeyStore::from_pkcs12(
        &p12,
        password,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .expect("the keystore opens with the returned password");
    assert!(p12_keystore::KeyStore::from_pkcs12(
        &p12,
        "wrong",
        p12_keystore::Pkcs12ImportPolicy::Strict
    )
    .is_err());
    let (_, chain) = store.private_key_chain().expect("a key with its chain");
    let cert_der = unb64(v["certificate"].as_str().unwrap());
    assert_eq!(chain.certs()[0].as_der(), &cert_der[..]);
    assert_eq!(chain.certs()[1].as_der(), &f.sim.issuing_ca_der()[..]);
    // The key is the certificate's: same RSA public key.
    let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(chain.key().as_der()).expect("RSA PKCS#8");
    let cert = parse_cert(&cert_der);
    use aws_lc_rs::signature::KeyPair as _;
    assert_eq!(
        key.public_key().as_ref(),
        &cert.public_key().subject_public_key.data[..]
    );
    assert_eq!(
        key.public_modulus_len() * 8,
        2048,
        "the product's smallest size"
    );
    let emails: Vec<String> = attributes(cert.subject())
        .into_iter()
        .filter(|(oid, _)| oid == "1.2.840.113549.1.9.1")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(emails, ["erika@example.com"]);
}

// ---------------------------------------------------------------- validation

#[tokio::test]
async fn each_validation_rule_answers_its_code_and_status() {
    let f = Fixture::default().await;
    let ec_key = KeyPair::generate().unwrap();
    let mut tampered = csr_der(rsa(2048));
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let ov_csr = b64(&csr_der(rsa(3072)));
    let ov = json!({
        "product": "SSL-OV", "request_type": "PKCS10", "pkcs10": ov_csr,
        "subject": { "CN": "shop.example.com", "O": "Example GmbH", "C": "DE", "organizationIdentifier": "VATDE-123456789" },
        "revocation_password": PASSWORD, "client_reference": "job-ov",
    });
    // The valid SSL-OV order passes (and is the base of the OV cases).
    let (s, v) = f.order(&ov).await;
    assert_eq!(s, 201, "{v}");
    let stored = f.sim.orders().len();

    type Edit = Box<dyn Fn(&mut Value)>;
    /// (name, base body, edit, status, code, field)
    type Case = (
        &'static str,
        Value,
        Edit,
        u16,
        &'static str,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown product",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["product"] = json!("Nope")),
            403,
            "PRODUCT_NOT_ALLOWED",
            Some("product"),
        ),
        (
            "product not enabled",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["product"] = json!("Code-Signing")),
            403,
            "PRODUCT_NOT_ALLOWED",
            Some("product"),
        ),
        (
            "type not allowed",
            personal_pkcs12("r"),
            Box::new(|b| {
                b["request_type"] = json!("PKCS10");
                b["pkcs10"] = json!(b64(&csr_der(rsa(2048))));
            }),
            400,
            "INVALID_REQUEST_TYPE",
            Some("request_type"),
        ),
        (
            "unknown type",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["request_type"] = json!("PKCS7")),
            400,
            "INVALID_REQUEST_TYPE",
            Some("request_type"),
        ),
        (
            "PKCS10 without CSR",
            ssl_basic_pkcs10("r"),
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("pkcs10");
            }),
            400,
            "INVALID_REQUEST_TYPE",
            Some("pkcs10"),
        ),
        (
            "PKCS12 with CSR",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["request_type"] = json!("PKCS12")),
            400,
            "INVALID_REQUEST_TYPE",
            Some("pkcs10"),
        ),
        (
            "CSR not base64",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["pkcs10"] = json!("not base64!")),
            400,
            "INVALID_CSR",
            Some("pkcs10"),
        ),
        (
            "CSR PEM",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["pkcs10"] = json!("-----BEGIN CERTIFICATE REQUEST-----")),
            400,
            "INVALID_CSR",
            Some("pkcs10"),
        ),
        (
            "CSR not DER",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["pkcs10"] = json!("AAAAAAAA")),
            400,
            "INVALID_CSR",
            Some("pkcs10"),
        ),
        (
            "CSR bad signature",
            ssl_basic_pkcs10("r"),
            Box::new(move |b| b["pkcs10"] = json!(b64(&tampered))),
            400,
            "INVALID_CSR",
            Some("pkcs10"),
        ),
        (
            "CSR EC key",
            ssl_basic_pkcs10("r"),
            Box::new(move |b| b["pkcs10"] = json!(b64(&csr_der(&ec_key)))),
            400,
            "INVALID_CSR",
            Some("pkcs10"),
        ),
        (
            "CSR key size",
            ov.clone(),
            Box::new(|b| b["pkcs10"] = json!(b64(&csr_der(rsa(2048))))),
            400,
            "INVALID_CSR",
            Some("pkcs10"),
        ),
        (
            "CN with CN=",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["subject"]["CN"] = json!("CN=www.example.com")),
            400,
            "GENERIC_RDN_REGEXERROR",
            Some("subject.CN"),
        ),
        (
            "required C missing",
            ssl_basic_pkcs10("r"),
            Box::new(|b| {
                b["subject"].as_object_mut().unwrap().remove("C");
            }),
            400,
            "GENERIC_RDN_REGEXERROR",
            Some("subject.C"),
        ),
        (
            "required CN empty",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["subject"]["CN"] = json!("")),
            400,
            "GENERIC_RDN_REGEXERROR",
            Some("subject.CN"),
        ),
        (
            "OU pattern",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["subject"]["OU"] = json!(["IT", "OU=Web"])),
            400,
            "GENERIC_RDN_REGEXERROR",
            Some("subject.OU[1]"),
        ),
        (
            "C pattern",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["subject"]["C"] = json!("Germany")),
            400,
            "GENERIC_RDN_REGEXERROR",
            Some("subject.C"),
        ),
        (
            "organizationIdentifier missing",
            ov.clone(),
            Box::new(|b| {
                b["subject"]
                    .as_object_mut()
                    .unwrap()
                    .remove("organizationIdentifier");
            }),
            400,
            "GENERIC_RDN_REGEXERROR",
            Some("subject.organizationIdentifier"),
        ),
        (
            "organizationIdentifier pattern",
            ov.clone(),
            Box::new(|b| b["subject"]["organizationIdentifier"] = json!("DE123456789")),
            400,
            "GENERIC_RDN_REGEXERROR",
            Some("subject.organizationIdentifier"),
        ),
        (
            "E domain",
            personal_pkcs12("r"),
            Box::new(|b| b["subject"]["E"] = json!("erika@unverified.test")),
            400,
            "EMAILDOMAIN_DOES_NOT_FIT",
            Some("subject.E"),
        ),
        (
            "SAN e-mail domain",
            personal_pkcs12("r"),
            Box::new(|b| b["san"]["email"] = json!(["erika@example.com", "erika@sub.example.com"])),
            400,
            "EMAILDOMAIN_DOES_NOT_FIT",
            Some("san.email[1]"),
        ),
        (
            "password pattern",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["revocation_password"] = json!("short")),
            400,
            "GENERIC_PASSWORD_REGEXERROR",
            Some("revocation_password"),
        ),
        (
            "password charset",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["revocation_password"] = json!("with spaces in it here")),
            400,
            "GENERIC_PASSWORD_REGEXERROR",
            Some("revocation_password"),
        ),
        (
            "password missing",
            ssl_basic_pkcs10("r"),
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("revocation_password");
            }),
            400,
            "GENERIC_PASSWORD_REGEXERROR",
            Some("revocation_password"),
        ),
        (
            "client_reference missing",
            ssl_basic_pkcs10("r"),
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("client_reference");
            }),
            400,
            "INVALID_REQUEST",
            Some("client_reference"),
        ),
        (
            "client_reference empty",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["client_reference"] = json!("")),
            400,
            "INVALID_REQUEST",
            Some("client_reference"),
        ),
        (
            "client_reference too long",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["client_reference"] = json!("x".repeat(129))),
            400,
            "INVALID_REQUEST",
            Some("client_reference"),
        ),
        (
            "unknown field",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["clientReference"] = json!("r")),
            400,
            "INVALID_REQUEST",
            None,
        ),
        (
            "OU as a string",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["subject"]["OU"] = json!("IT")),
            400,
            "INVALID_REQUEST",
            None,
        ),
        (
            "subject missing",
            ssl_basic_pkcs10("r"),
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("subject");
            }),
            400,
            "INVALID_REQUEST",
            Some("subject"),
        ),
        (
            "SAN DNS not ASCII",
            ssl_basic_pkcs10("r"),
            Box::new(|b| b["san"]["dns"] = json!(["bücher.example.com"])),
            400,
            "INVALID_REQUEST",
            Some("san.dns[0]"),
        ),
    ];
    for (name, mut body, edit, status, code, field) in cases {
        edit(&mut body);
        let (s, v) = f.order(&body).await;
        assert_eq!(s.as_u16(), status, "{name}: {v}");
        let (c, fld) = error_of(&v);
        assert_eq!(c, code, "{name}: {v}");
        assert_eq!(fld.as_deref(), field, "{name}: {v}");
        assert!(!v["errors"][0]["message"].as_str().unwrap_or("").is_empty());
        assert!(
            !v.to_string().contains(PASSWORD),
            "{name}: the password is echoed: {v}"
        );
    }
    // A body that is not JSON.
    let r = f
        .http
        .post(f.url("v1/orders"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, _, v) = answer(r).await;
    assert_eq!(
        (s.as_u16(), error_of(&v).0.as_str()),
        (400, "INVALID_REQUEST")
    );
    assert_eq!(f.sim.orders().len(), stored, "no refused order is stored");
}

#[tokio::test]
async fn organization_identifier_not_enabled_for_the_account_is_an_rdn_error() {
    let mut config = SimConfig::default_catalogue();
    config.organization_identifier_enabled = false;
    let f = Fixture::new(config).await;
    let mut body = ssl_basic_pkcs10("job-oi");
    body["subject"]["organizationIdentifier"] = json!("VATDE-123456789");
    let (s, v) = f.order(&body).await;
    assert_eq!(s, 400);
    assert_eq!(
        error_of(&v),
        (
            "GENERIC_RDN_REGEXERROR".into(),
            Some("subject.organizationIdentifier".into())
        )
    );
    assert!(v.to_string().contains("not enabled"), "{v}");
}

#[tokio::test]
async fn patterns_match_whole_values_and_catalogues_load_from_json() {
    let catalogue = json!([{
        "id": "Custom",
        "name": "Custom product",
        "request_types": ["PKCS12"],
        "key_sizes": [2048],
        "required_rdns": ["CN", "C"],
        "rdn_patterns": { "C": "[A-Z]{2}" },
        "revocation_password_pattern": ".{8,}"
    }]);
    let mut config = SimConfig::default_catalogue();
    config.products = serde_json::from_value(catalogue).expect("a catalogue");
    let f = Fixture::new(config).await;
    let body = |c: &str| {
        json!({
            "product": "Custom", "request_type": "PKCS12",
            "subject": { "CN": "anything", "C": c },
            "revocation_password": "long enough", "client_reference": "job-custom",
        })
    };
    let (s, v) = f.order(&body("DEU")).await;
    assert_eq!(s, 400, "`[A-Z]{{2}}` must match all of DEU: {v}");
    assert_eq!(error_of(&v).1.as_deref(), Some("subject.C"));
    let (s, v) = f.order(&body("DE")).await;
    assert_eq!(s, 201, "{v}");
    let (_, _, products) = f.get("v1/products").await;
    assert_eq!(
        products[0]["rdn_patterns"]["C"], "[A-Z]{2}",
        "served as configured"
    );
    // Values without a pattern are taken as they are, whatever their characters.
    let odd = json!({
        "product": "Custom", "request_type": "PKCS12",
        "subject": {
            "CN": "Zoë \u{0} <x>", "C": "DE", "serialNumber": "a?b", "L": "Zürich",
            "E": "zoë@example.com", "OU": ["a", "b", "c"], "organizationIdentifier": "?",
        },
        "san": { "upn": ["zoë@corp"] },
        "revocation_password": "long enough", "client_reference": "job-odd",
    });
    let (s, v) = f.order(&odd).await;
    assert_eq!(s, 201, "{v}");
    let der = unb64(v["certificate"].as_str().unwrap());
    let ous = attributes(parse_cert(&der).subject())
        .into_iter()
        .filter(|(oid, _)| oid == "2.5.4.11")
        .count();
    assert_eq!(ous, 3);

    // Patterns the `regex` crate cannot compile (lookarounds) are refused at start.
    let mut bad = SimConfig::default_catalogue();
    bad.product_mut("SSL-Basic")
        .unwrap()
        .revocation_password_pattern = "^(?=.*[0-9]).{10,32}$".into();
    let err = Sim::try_start(bad, &f.pki).err().expect("refused");
    assert!(err.contains("lookaround"), "{err}");
}

#[tokio::test]
async fn pkcs12_keys_are_fresh_unless_reuse_is_asked_for() {
    async fn two_keys(reuse: bool) -> (Vec<u8>, Vec<u8>) {
        let mut config = SimConfig::default_catalogue();
        config.reuse_pkcs12_keys = reuse;
        let f = Fixture::new(config).await;
        let mut keys = Vec::new();
        for i in 0..2 {
            let started = std::time::Instant::now();
            let (s, v) = f.order(&personal_pkcs12(&format!("job-{i}"))).await;
            assert_eq!(s, 201, "{v}");
            eprintln!("PKCS12 order (reuse {reuse}) in {:?}", started.elapsed());
            let der = unb64(v["certificate"].as_str().unwrap());
            keys.push(parse_cert(&der).public_key().raw.to_vec());
        }
        (keys[0].clone(), keys[1].clone())
    }
    let (a, b) = two_keys(false).await;
    assert_ne!(a, b);
    let (a, b) = two_keys(true).await;
    assert_eq!(a, b);
}

// ---------------------------------------------------------------- lookup by reference

#[tokio::test]
async fn the_same_client_reference_twice_makes_two_orders_both_found() {
    let f = Fixture::default().await;
    let (s1, a) = f.order(&ssl_basic_pkcs10("job 42/ä")).await;
    let (s2, b) = f.order(&ssl_basic_pkcs10("job 42/ä")).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (201, 201));
    assert_ne!(a["order_id"], b["order_id"]);
    assert_ne!(a["serial"], b["serial"]);
    assert_eq!(f.sim.orders_for("job 42/ä"), 2);

    let r = f
        .http
        .get(
            url::Url::parse_with_params(&f.url("v1/orders"), [("client_reference", "job 42/ä")])
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let (s, _, v) = answer(r).await;
    assert_eq!(s, 200);
    let found: HashSet<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        found,
        HashSet::from([
            a["order_id"].as_str().unwrap(),
            b["order_id"].as_str().unwrap()
        ])
    );

    let (s, _, v) = f.get("v1/orders?client_reference=nobody").await;
    assert_eq!((s.as_u16(), v), (200, json!([])));
    let (s, _, v) = f.get("v1/orders").await;
    assert_eq!(s, 400);
    assert_eq!(
        error_of(&v),
        ("INVALID_REQUEST".into(), Some("client_reference".into()))
    );
    let (s, _, v) = f.get("v1/orders/ord-unknown").await;
    assert_eq!((s.as_u16(), error_of(&v).0.as_str()), (404, "NOT_FOUND"));
}

// ---------------------------------------------------------------- pending orders

#[tokio::test]
async fn a_pending_order_becomes_issued_after_its_approval_time() {
    let mut config = SimConfig::default_catalogue();
    config.product_mut("SSL-EV").unwrap().approval_ms = Some(700);
    let f = Fixture::new(config).await;
    let mut body = ssl_basic_pkcs10("job-ev");
    body["product"] = json!("SSL-EV");
    body["subject"]["serialNumber"] = json!("HRB 12345");
    let (s, v) = f.order(&body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "PENDING");
    for absent in ["certificate", "serial", "chain", "pkcs12"] {
        assert!(v.get(absent).is_none(), "{absent} in a pending order: {v}");
    }
    let path = format!("v1/orders/{}", v["order_id"].as_str().unwrap());
    let (s, h, v) = f.get(&path).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "PENDING");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Poll (bounded) until it is issued.
    let mut issued = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, h, v) = f.get(&path).await;
        if v["status"] == "ISSUED" {
            assert!(h.get("retry-after").is_none());
            issued = Some(v);
            break;
        }
        assert_eq!(v["status"], "PENDING");
    }
    let v = issued.expect("issued after the approval time");
    let der = unb64(v["certificate"].as_str().unwrap());
    let cert = parse_cert(&der);
    assert_eq!(
        attributes(cert.subject())
            .iter()
            .find(|(oid, _)| oid == "2.5.4.5")
            .map(|(_, v)| v.as_str()),
        Some("HRB 12345")
    );
    assert!(v["serial"].is_string());
    assert_eq!(f.sim.orders()[0].status, OrderStatus::Issued);
}

#[tokio::test]
async fn control_endpoints_approve_reject_seed_and_report() {
    let mut config = SimConfig::default_catalogue();
    config.product_mut("SSL-EV").unwrap().approval_ms = Some(3_600_000);
    let f = Fixture::new(config).await;
    let mut body = ssl_basic_pkcs10("job-ev-1");
    body["product"] = json!("SSL-EV");
    body["subject"]["serialNumber"] = json!("HRB 12345");
    let (_, first) = f.order(&body).await;
    body["client_reference"] = json!("job-ev-2");
    let (_, second) = f.order(&body).await;
    let (first, second) = (
        first["order_id"].as_str().unwrap().to_string(),
        second["order_id"].as_str().unwrap().to_string(),
    );

    // approve: issued when the call returns
    let (s, _, v) = f
        .post(&format!("_sim/orders/{first}/approve"), &json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ISSUED");
    let (_, _, v) = f.get(&format!("v1/orders/{first}")).await;
    assert_eq!(v["status"], "ISSUED");
    let (s, _, v) = f
        .post(&format!("_sim/orders/{first}/approve"), &json!({}))
        .await;
    assert_eq!((s.as_u16(), error_of(&v).0.as_str()), (409, "NOT_PENDING"));

    // reject, with a code of our choosing
    let (s, _, v) = f
        .post(
            &format!("_sim/orders/{second}/reject"),
            &json!({ "code": "GENERIC_RDN_REGEXERROR", "message": "O does not match the register" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, h, v) = f.get(&format!("v1/orders/{second}")).await;
    assert_eq!(v["status"], "REJECTED");
    assert_eq!(v["error"]["code"], "GENERIC_RDN_REGEXERROR");
    assert!(v.get("certificate").is_none() && h.get("retry-after").is_none());
    let (s, _, _) = f.post("_sim/orders/ord-nope/reject", &json!({})).await;
    assert_eq!(s, 404);

    // records, stats, faults, issuing CA over HTTPS
    let (_, _, orders) = f.get("_sim/orders").await;
    let statuses: Vec<&str> = orders
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ISSUED", "REJECTED"]);
    assert_eq!(orders[0]["client_reference"], "job-ev-1");
    assert_eq!(orders[0]["product"], "SSL-EV");
    assert!(!orders.to_string().contains(PASSWORD));
    let (_, _, stats) = f.get("_sim/stats").await;
    assert_eq!(stats["orders"], 2);
    assert_eq!(stats["requests"]["POST /v1/orders"]["201"], 2);
    assert!(
        stats["requests"].get("GET /_sim/orders").is_none(),
        "control requests are not counted"
    );
    let r = f.http.get(f.url("_sim/issuing-ca")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), f.sim.issuing_ca_pem());

    let r = f
        .http
        .put(f.url("_sim/faults"))
        .json(&json!({ "rate_limit_rate": 1.0, "retry_after_secs": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(f.sim.faults().rate_limit_rate, 1.0);
    let (s, _, _) = f.get("v1/ping").await;
    assert_eq!(s, 429);
    let (s, _, _) = f.get("_sim/faults").await;
    assert_eq!(s, 200, "control endpoints never see faults");
    let r = f
        .http
        .put(f.url("_sim/faults"))
        .json(&json!({ "error_rate": 2.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = f
        .http
        .put(f.url("_sim/faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _, _) = f.get("v1/ping").await;
    assert_eq!(s, 200);

    // seed a certificate the sim did not issue, then revoke it
    let (s, _, _) = f
        .post(
            "_sim/certificates",
            &json!({ "serial": "0A1B2C", "revocation_password": "legacy-password-1" }),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _, v) = f
        .post(
            "v1/certificates/a1b2c/revoke",
            &json!({ "revocation_password": "legacy-password-1", "reason": "superseded" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, _, revs) = f.get("_sim/revocations").await;
    assert_eq!(revs[0]["serial"], "0A1B2C");
    assert_eq!(revs[0]["reason"], "superseded");

    // wrong method, unknown path
    let (s, h, v) = f.post("v1/ping", &json!({})).await;
    assert_eq!(
        (s.as_u16(), error_of(&v).0.as_str()),
        (405, "METHOD_NOT_ALLOWED")
    );
    assert_eq!(h["allow"], "GET");
    let (s, _, v) = f.get("v1/nothing").await;
    assert_eq!((s.as_u16(), error_of(&v).0.as_str()), (404, "NOT_FOUND"));
}

// ---------------------------------------------------------------- revocation

#[tokio::test]
async fn revocation_checks_serial_password_and_state() {
    let f = Fixture::default().await;
    let (_, order) = f.order(&ssl_basic_pkcs10("job-revoke")).await;
    let serial = order["serial"].as_str().unwrap().to_string();
    let path = format!("v1/certificates/{serial}/revoke");
    let wrong = json!({ "revocation_password": "Wrong-password-123", "reason": "keyCompromise" });
    let right = json!({ "revocation_password": PASSWORD, "reason": "keyCompromise" });

    let (s, _, v) = f.post(&path, &wrong).await;
    assert_eq!(
        (s.as_u16(), error_of(&v)),
        (
            403,
            (
                "REVOCATION_PASSWORD_WRONG".into(),
                Some("revocation_password".into())
            )
        )
    );
    let (s, _, v) = f
        .post(
            &path,
            &json!({ "revocation_password": "x", "reason": "keyCompromise" }),
        )
        .await;
    assert_eq!(
        (s.as_u16(), error_of(&v).0.as_str()),
        (400, "GENERIC_PASSWORD_REGEXERROR")
    );
    let (s, _, v) = f
        .post(
            &path,
            &json!({ "revocation_password": PASSWORD, "reason": "bored" }),
        )
        .await;
    assert_eq!(
        (s.as_u16(), error_of(&v)),
        (400, ("INVALID_REQUEST".into(), Some("reason".into())))
    );
    let (s, _, v) = f.post("v1/certificates/DEADBEEF/revoke", &right).await;
    assert_eq!((s.as_u16(), error_of(&v).0.as_str()), (404, "NOT_FOUND"));
    let (s, _, v) = f.post("v1/certificates/not-hex/revoke", &right).await;
    assert_eq!((s.as_u16(), error_of(&v).0.as_str()), (404, "NOT_FOUND"));
    assert!(f.sim.revocations().is_empty());

    // Serials compare case-insensitively.
    let lower = format!("v1/certificates/{}/revoke", serial.to_lowercase());
    let (s, _, v) = f.post(&lower, &right).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["serial"], serial.as_str());
    time::OffsetDateTime::parse(
        v["revoked_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");

    let (s, _, v) = f.post(&path, &right).await;
    assert_eq!(
        (s.as_u16(), error_of(&v).0.as_str()),
        (409, "ALREADY_REVOKED")
    );

    let revs = f.sim.revocations();
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0].serial, serial);
    assert_eq!(revs[0].reason, "keyCompromise");
    assert_eq!(revs[0].order_id.as_deref(), order["order_id"].as_str());
    assert_eq!(revs[0].attempts, 4, "wrong, pattern, right, again");
    assert!(f.sim.orders()[0].revoked);

    // seeded through the library
    f.sim.seed_certificate("00FF01", "Seeded-password-1");
    let (s, _, _) = f
        .post(
            "v1/certificates/FF01/revoke",
            &json!({ "revocation_password": "Seeded-password-1", "reason": "cessationOfOperation" }),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(f.sim.stats().revocations, 2);
}

// ---------------------------------------------------------------- client certificates

#[tokio::test]
async fn a_client_certificate_from_another_ca_fails_the_handshake() {
    let f = Fixture::default().await;
    let other = Ca::new("Some Other CA");
    let (nb, na) = pki::valid_for(30);
    let stranger = other.client("intruder", nb, na);
    // Trusts the server's CA, presents a certificate of another CA.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(f.pki.ca.cert.cert_der.clone()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(stranger.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(stranger.key_der.clone())),
        )
        .unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let err = http
        .get(f.url("v1/ping"))
        .send()
        .await
        .expect_err("refused");
    assert!(!err.is_status(), "{err:?}");
    assert_eq!(f.sim.stats().tls_handshake_failures, 1);
    assert_eq!(f.sim.stats().requests_to(Endpoint::Ping), 0);
}

#[tokio::test]
async fn a_rejected_client_certificate_gets_401_client_cert_rejected() {
    let pki = BundleBuilder::new("https://placeholder/");
    let mut config = SimConfig::default_catalogue();
    let fp = fingerprint(&pki.client.cert_der);
    config.rejected_client_certs = vec![fp.to_uppercase()];
    let sim = Sim::start(config, &pki).await;
    let http = client_with(&pki.ca.cert, &pki.client, Duration::from_secs(10));
    let r = http
        .get(format!("{}v1/ping", sim.url()))
        .send()
        .await
        .unwrap();
    let (s, _, v) = answer(r).await;
    assert_eq!(
        (s.as_u16(), error_of(&v).0.as_str()),
        (401, "CLIENT_CERT_REJECTED")
    );
    // Another certificate of the same CA is fine until rejected at run time.
    let (nb, na) = pki::valid_for(30);
    let other = pki.client_valid(nb, na);
    let http2 = client_with(&pki.ca.cert, &other, Duration::from_secs(10));
    let r = http2
        .get(format!("{}v1/products", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sim.reject_client_cert(&fingerprint(&other.cert_der));
    let r = http2
        .get(format!("{}v1/products", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Control endpoints still answer it.
    let r = http
        .get(format!("{}_sim/stats", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn an_injected_503_carries_retry_after_and_processes_nothing() {
    let f = Fixture::default().await;
    f.sim.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        retry_after_secs: 2,
        max_faults: Some(1),
        ..Faults::none()
    });
    let (s, h, v) = f.post("v1/orders", &ssl_basic_pkcs10("job-503")).await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "2");
    assert_eq!(error_of(&v).0, "UNAVAILABLE");
    assert_eq!(f.sim.orders_for("job-503"), 0, "not processed");
    let (s, _) = f.order(&ssl_basic_pkcs10("job-503")).await;
    assert_eq!(s, 201, "the budget of one fault is spent");
    let stats = f.sim.stats();
    assert_eq!(stats.faults_of(FaultKind::Error503), 1);
    assert_eq!(stats.outcome(Endpoint::CreateOrder, "503"), 1);
    assert_eq!(stats.outcome(Endpoint::CreateOrder, "201"), 1);

    f.sim.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![500],
        ..Faults::none()
    });
    let (s, h, v) = f.get("v1/ping").await;
    assert_eq!(
        (s.as_u16(), error_of(&v).0.as_str()),
        (500, "INTERNAL_ERROR")
    );
    assert!(h.get("retry-after").is_none());
}

#[tokio::test]
async fn rate_limiting_answers_429_with_retry_after() {
    let f = Fixture::default().await;
    f.sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        retry_after_secs: 7,
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::none()
    });
    let (s, h, v) = f.post("v1/orders", &ssl_basic_pkcs10("job-429")).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "7");
    assert_eq!(error_of(&v).0, "RATE_LIMITED");
    assert_eq!(f.sim.orders_for("job-429"), 0);
    let (s, _, _) = f.get("v1/ping").await;
    assert_eq!(s, 200, "other endpoints are not faulted");
    assert_eq!(f.sim.stats().faults_of(FaultKind::RateLimited), 1);
}

#[tokio::test]
async fn a_connection_dropped_after_store_leaves_an_order_to_find() {
    let f = Fixture::default().await;
    f.sim.set_faults(Faults {
        drop_after_store_rate: 1.0,
        ..Faults::none()
    });
    let err = f
        .http
        .post(f.url("v1/orders"))
        .json(&ssl_basic_pkcs10("job-drop"))
        .send()
        .await
        .expect_err("no answer");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    // The order exists, and the client finds it by its reference.
    let (s, _, v) = f.get("v1/orders?client_reference=job-drop").await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["status"], "ISSUED");
    let stats = f.sim.stats();
    assert_eq!(stats.faults_of(FaultKind::DropAfterStore), 1);
    assert_eq!(stats.outcome(Endpoint::CreateOrder, "dropped"), 1);
}

#[tokio::test]
async fn a_connection_dropped_before_handling_processes_nothing() {
    let f = Fixture::default().await;
    f.sim.set_faults(Faults {
        drop_before_rate: 1.0,
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::none()
    });
    let err = f
        .http
        .post(f.url("v1/orders"))
        .json(&ssl_basic_pkcs10("job-drop-before"))
        .send()
        .await
        .expect_err("no answer");
    assert!(!err.is_status(), "{err:?}");
    assert_eq!(f.sim.orders_for("job-drop-before"), 0);
    assert_eq!(f.sim.stats().faults_of(FaultKind::DropBefore), 1);
}

#[tokio::test]
async fn a_hang_after_store_makes_the_client_time_out_with_the_order_stored() {
    let f = Fixture::default().await;
    f.sim.set_faults(Faults {
        hang_after_store_rate: 1.0,
        ..Faults::none()
    });
    let impatient = client_with(&f.pki.ca.cert, &f.pki.client, Duration::from_millis(1500));
    let err = impatient
        .post(f.url("v1/orders"))
        .json(&ssl_basic_pkcs10("job-hang"))
        .send()
        .await
        .expect_err("no answer");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(f.sim.orders_for("job-hang"), 1);
    assert_eq!(f.sim.stats().faults_of(FaultKind::HangAfterStore), 1);
}

#[tokio::test]
async fn a_gateway_timeout_after_store_answers_504_with_the_order_stored() {
    let f = Fixture::default().await;
    f.sim.set_faults(Faults {
        timeout_after_store_rate: 1.0,
        ..Faults::none()
    });
    let (s, v) = f.order(&ssl_basic_pkcs10("job-504")).await;
    assert_eq!((s.as_u16(), error_of(&v).0.as_str()), (504, "UNAVAILABLE"));
    assert_eq!(f.sim.orders_for("job-504"), 1);
    // After-store faults never touch other endpoints.
    let (s, _, _) = f.get("v1/ping").await;
    assert_eq!(s, 200);
    assert_eq!(f.sim.stats().faults_of(FaultKind::TimeoutAfterStore), 1);
}

#[tokio::test]
async fn latency_is_added_to_each_request_and_counted() {
    let f = Fixture::default().await;
    f.sim.set_faults(Faults {
        latency_ms: 20,
        jitter_ms: 10,
        seed: 3,
        ..Faults::none()
    });
    for _ in 0..3 {
        let (s, _, _) = f.get("v1/ping").await;
        assert_eq!(s, 200);
    }
    let stats = f.sim.stats();
    assert_eq!(stats.faults_of(FaultKind::Latency), 3);
    assert!(
        (60..=90).contains(&stats.latency_ms_injected),
        "{}",
        stats.latency_ms_injected
    );
}

#[tokio::test]
async fn faults_are_reproducible_from_their_seed() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let mut config = SimConfig::default_catalogue();
        config.faults = Faults {
            seed,
            error_rate: 0.3,
            rate_limit_rate: 0.2,
            ..Faults::none()
        };
        let f = Fixture::new(config).await;
        let mut out = Vec::new();
        for _ in 0..30 {
            out.push(f.get("v1/ping").await.0.as_u16());
        }
        out
    }
    let a = statuses(42).await;
    assert_eq!(a, statuses(42).await);
    assert_ne!(a, statuses(43).await);
    assert!(
        a.contains(&200) && a.contains(&429) && a.iter().any(|s| *s >= 500),
        "{a:?}"
    );
}

// ---------------------------------------------------------------- throughput, keep-alive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_orders_over_kept_alive_connections() {
    let f = Arc::new(Fixture::default().await);
    let csr = b64(&csr_der(rsa(2048)));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let f = f.clone();
        let csr = csr.clone();
        tasks.push(tokio::spawn(async move {
            let mut serials = Vec::new();
            for i in 0..25 {
                let mut body = ssl_basic_pkcs10(&format!("bulk-{worker}-{i}"));
                body["pkcs10"] = json!(csr);
                let (s, v) = f.order(&body).await;
                assert_eq!(s, 201, "{v}");
                serials.push(v["serial"].as_str().unwrap().to_string());
            }
            serials
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    assert_eq!(all.len(), 200, "unique serials");
    let stats = f.sim.stats();
    assert_eq!(stats.orders, 200);
    assert!(
        stats.connections < 100,
        "connections are reused: {} for 200 requests",
        stats.connections
    );
    eprintln!(
        "200 orders in {elapsed:?} ({:.0}/s, debug build)",
        200.0 / elapsed.as_secs_f64()
    );
}

// ---------------------------------------------------------------- the binary

#[test]
fn the_binary_writes_a_bundle_the_worker_accepts_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("sim-bundle.zip");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtrust-sim"))
        .args(["--listen", "127.0.0.1:0", "--write-bundle"])
        .arg(&bundle)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dtrust-sim");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("dtrust-sim listening at ") {
            url = rest.split_whitespace().next().map(str::to_string);
        }
        if line.starts_with("connector bundle written to") {
            break;
        }
    }
    let url = url.expect("URL printed");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let out = run_worker(&["check-config", "--bundle", bundle.to_str().unwrap()], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&url), "{all}");
    assert!(
        all.contains("SSL-Basic; SSL-OV; Personal-Sig; SSL-EV"),
        "{all}"
    );

    // The bundle's keystore and CA really reach the simulator.
    let zip_bytes = std::fs::read(&bundle).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut read = |name: &str| {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(name).unwrap(), &mut data).unwrap();
        data
    };
    let p12 = read(dtrust_testkit::bundle::P12_NAME);
    let ca_der = read(dtrust_testkit::bundle::CER_NAME);
    let store = p12_keystore::KeyStore::from_pkcs12(
        &p12,
        P12_PASSWORD,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .unwrap();
    let (_, chain) = store.private_key_chain().unwrap();
    let client = Issued {
        cert_der: chain.certs()[0].as_der().to_vec(),
        cert_pem: String::new(),
        key_der: chain.key().as_der().to_vec(),
        key_pem: String::new(),
    };
    let ca = Issued {
        cert_der: ca_der,
        cert_pem: String::new(),
        key_der: Vec::new(),
        key_pem: String::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let http = client_with(&ca, &client, Duration::from_secs(10));
        http.get(format!("{url}v1/ping"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);

    // SIGTERM stops it cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}
