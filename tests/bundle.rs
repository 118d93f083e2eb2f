//! The connector bundle, checked the way the worker checks it at start-up: real
//! keystores (every encryption operators bring), real certificates, and every mistake
//! an operator can make, each asserted by the words of its message.

use std::collections::BTreeMap;

use dtrust_testkit::bundle::{zip_of, BundleBuilder, CER_NAME, P12_NAME, P12_PASSWORD};
use dtrust_testkit::pki::{self, P12Encryption};
use dtrust_worker::bundle::{Archive, Bundle, Report, ServerTrust, Warning};
use time::{Duration, OffsetDateTime};

const URL: &str = "https://dtrust.test:8443/rest/";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn load_with(builder: &BundleBuilder, env: &[(&str, &str)]) -> Result<Bundle, Report> {
    let archive = Archive::from_bytes(&builder.build()).expect("a readable zip");
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Bundle::from_archive(&archive, &env, now())
}

fn load(builder: &BundleBuilder) -> Result<Bundle, Report> {
    load_with(builder, &[])
}

/// The problems of a bundle that must fail, one per line.
fn problems(builder: &BundleBuilder) -> String {
    match load(builder) {
        Ok(_) => panic!("the bundle was accepted:\n{}", builder.properties_text()),
        Err(report) => {
            assert!(!report.problems.is_empty());
            report.problems.iter().map(|p| format!("{p}\n")).collect()
        }
    }
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "expected {part:?} in:\n{text}");
    }
}

#[test]
fn a_valid_bundle_loads_with_everything_the_worker_needs() {
    let builder = BundleBuilder::new(URL);
    let bundle = load(&builder).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(bundle.settings.url.as_str(), URL);
    assert_eq!(
        bundle.settings.certificate_templates,
        ["SSL-Basic", "SSL-OV", "Personal-Sig"]
    );
    assert_eq!(bundle.identity.entry, P12_NAME);
    assert_eq!(bundle.identity.leaf().der, builder.client.cert_der);
    assert_eq!(
        bundle.identity.key.expose(),
        builder.client.key_der.as_slice()
    );
    assert_eq!(bundle.identity.chain.len(), 2, "leaf and CA");
    assert!(
        matches!(&bundle.server, ServerTrust::Anchors { certs, .. } if certs[0].der == builder.ca.cert.cert_der)
    );
    assert!(bundle.warnings.is_empty(), "{:?}", bundle.warnings);

    let summary = bundle.summary().to_string();
    assert_contains(
        &summary,
        &[
            URL,
            "CN=CSM447922870184925",
            "trust anchor",
            "SSL-Basic; SSL-OV; Personal-Sig",
        ],
    );
    assert!(
        !summary.contains(P12_PASSWORD),
        "the summary shows the keystore password"
    );
    assert!(
        !format!("{bundle:?}").contains(P12_PASSWORD),
        "Debug shows the keystore password"
    );
    let secret = dtrust_testkit::bundle::REVOCATION_SECRET;
    assert_eq!(
        bundle
            .settings
            .revocation_password_secret
            .as_ref()
            .map(|s| s.expose()),
        Some(secret)
    );
    assert!(summary.contains("revocation secret"), "{summary}");
    assert!(
        !summary.contains(secret),
        "the summary shows the revocation secret"
    );
    assert!(
        !format!("{bundle:?}").contains(secret),
        "Debug shows the revocation secret"
    );
}

#[test]
fn keystores_load_in_every_encryption() {
    let builder = BundleBuilder::new(URL);
    for encryption in [
        P12Encryption::Aes256,
        P12Encryption::TripleDes,
        P12Encryption::Rc2_40,
    ] {
        let client = builder.client_valid(now() - Duration::days(1), now() + Duration::days(200));
        let b = BundleBuilder::new(URL).keystore(&client, P12_PASSWORD, encryption);
        let bundle = load(&b).unwrap_or_else(|r| panic!("{encryption:?}: {r}"));
        assert_eq!(
            bundle.identity.key.expose(),
            client.key_der.as_slice(),
            "{encryption:?}"
        );
    }
}

#[test]
fn keystores_made_by_openssl_load_legacy_and_current() {
    let builder = BundleBuilder::new(URL);
    let chain = builder.ca.cert.cert_pem.clone();
    for (legacy, password) in [(true, "123456"), (false, "Pässwörd-€-ünïcode")] {
        let p12 = pki::pkcs12_openssl(&builder.client, &chain, password, legacy);
        let b = BundleBuilder::new(URL)
            .set("p12Password", password)
            .entry(P12_NAME, p12);
        let b = BundleBuilder {
            client: pki_clone(&builder.client),
            ..b
        };
        let bundle = load(&b).unwrap_or_else(|r| panic!("legacy={legacy}: {r}"));
        assert_eq!(
            bundle.identity.leaf().der,
            builder.client.cert_der,
            "legacy={legacy}"
        );
        assert_eq!(bundle.identity.chain.len(), 2);
    }
}

fn pki_clone(i: &pki::Issued) -> pki::Issued {
    pki::Issued {
        cert_der: i.cert_der.clone(),
        cert_pem: i.cert_pem.clone(),
        key_der: i.key_der.clone(),
        key_pem: i.key_pem.clone(),
    }
}

#[test]
fn a_wrong_keystore_password_names_the_entry_and_the_setting() {
    let b = BundleBuilder::new(URL).set("p12Password", "not-the-password");
    assert_contains(
        &problems(&b),
        &[
            &format!("keystore `{P12_NAME}`: wrong password"),
            "p12Password",
            "DTRUST_P12PASSWORD",
        ],
    );
    for encryption in [P12Encryption::TripleDes, P12Encryption::Rc2_40] {
        let b = BundleBuilder::new(URL);
        let client = pki_clone(&b.client);
        let b = b.keystore(&client, "other", encryption);
        assert_contains(&problems(&b), &["wrong password"]);
    }
}

#[test]
fn the_default_password_is_123456_and_is_reported() {
    let b = BundleBuilder::new(URL).remove("p12Password");
    let client = pki_clone(&b.client);
    let b = b.keystore(&client, "123456", P12Encryption::Aes256);
    let bundle = load(&b).unwrap_or_else(|r| panic!("{r}"));
    assert!(bundle.settings.entries.p12_password_is_default);
    assert!(bundle.warnings.contains(&Warning::DefaultPassword {
        entry: P12_NAME.into()
    }));
}

#[test]
fn environment_variables_override_the_properties() {
    let b = BundleBuilder::new(URL).set("p12Password", "wrong-in-the-file");
    let bundle = load_with(
        &b,
        &[
            ("DTRUST_P12PASSWORD", P12_PASSWORD),
            ("DTRUST_CERTIFICATETEMPLATES", "Personal-Sig"),
            ("DTRUST_URL", "https://other.test/"),
        ],
    )
    .unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(bundle.settings.certificate_templates, ["Personal-Sig"]);
    assert_eq!(bundle.settings.url.as_str(), "https://other.test/");
    assert_eq!(
        bundle.settings.env_overrides,
        [
            "DTRUST_CERTIFICATETEMPLATES",
            "DTRUST_P12PASSWORD",
            "DTRUST_URL"
        ]
    );
}

#[test]
fn a_keystore_without_a_private_key_is_refused() {
    let b = BundleBuilder::new(URL);
    let p12 = pki::pkcs12_without_key(&b.client.cert_der, P12_PASSWORD);
    let b = b.entry(P12_NAME, p12);
    assert_contains(
        &problems(&b),
        &[&format!("keystore `{P12_NAME}` holds no private key")],
    );
}

#[test]
fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
    let b = BundleBuilder::new(URL);
    let other = b.client_valid(now() - Duration::days(1), now() + Duration::days(90));
    let mixed = pki::Issued {
        key_der: other.key_der.clone(),
        key_pem: other.key_pem.clone(),
        ..pki_clone(&b.client)
    };
    let b = b.keystore(&mixed, P12_PASSWORD, P12Encryption::Aes256);
    assert_contains(
        &problems(&b),
        &[
            "the private key does not belong to the certificate",
            "CN=CSM447922870184925",
        ],
    );
}

#[test]
fn client_certificate_validity_is_checked_and_near_expiry_warned() {
    let b = BundleBuilder::new(URL);
    let expired = b.client_valid(now() - Duration::days(400), now() - Duration::days(2));
    let b = b.keystore(&expired, P12_PASSWORD, P12Encryption::Aes256);
    assert_contains(
        &problems(&b),
        &[
            "the client certificate",
            "expired on",
            "request a new account certificate",
        ],
    );

    let b = BundleBuilder::new(URL);
    let future = b.client_valid(now() + Duration::days(3), now() + Duration::days(300));
    let b = b.keystore(&future, P12_PASSWORD, P12Encryption::Aes256);
    assert_contains(&problems(&b), &["is not valid before", "clock"]);

    let b = BundleBuilder::new(URL);
    let soon = b.client_valid(
        now() - Duration::days(300),
        now() + Duration::days(10) + Duration::hours(1),
    );
    let b = b.keystore(&soon, P12_PASSWORD, P12Encryption::Aes256);
    let bundle = load(&b).unwrap_or_else(|r| panic!("{r}"));
    let warnings: Vec<String> = bundle.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("expires on") && w.contains("in 10 days")),
        "{warnings:?}"
    );
}

#[test]
fn the_server_certificate_is_an_anchor_or_a_pin() {
    // A leaf (the server's own certificate), PEM: pinned.
    let b = BundleBuilder::new(URL);
    let leaf_pem = b.server.cert_pem.clone().into_bytes();
    let leaf_der = b.server.cert_der.clone();
    let bundle = load(&b.entry(CER_NAME, leaf_pem)).unwrap_or_else(|r| panic!("{r}"));
    assert!(matches!(&bundle.server, ServerTrust::Pinned { cert, .. } if cert.der == leaf_der));
    assert!(bundle
        .summary()
        .to_string()
        .contains("pinned: the server must present exactly this certificate"));

    // The CA in PEM: anchor.
    let b = BundleBuilder::new(URL);
    let ca_pem = b.ca.cert.cert_pem.clone().into_bytes();
    let bundle = load(&b.entry(CER_NAME, ca_pem)).unwrap_or_else(|r| panic!("{r}"));
    assert!(matches!(&bundle.server, ServerTrust::Anchors { certs, .. } if certs.len() == 1));
}

#[test]
fn an_unreadable_server_certificate_is_refused() {
    for (data, detail) in [
        (
            b"garbage, not a certificate".to_vec(),
            "not a DER certificate",
        ),
        (Vec::new(), "the file is empty"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            "bad certificate in PEM",
        ),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
            "is not a CERTIFICATE",
        ),
    ] {
        let b = BundleBuilder::new(URL).entry(CER_NAME, data);
        assert_contains(
            &problems(&b),
            &[
                &format!("server certificate `{CER_NAME}` cannot be read"),
                detail,
            ],
        );
    }
    let b = BundleBuilder::new(URL);
    let mixed = format!("{}{}", b.ca.cert.cert_pem, b.server.cert_pem).into_bytes();
    assert_contains(
        &problems(&b.entry(CER_NAME, mixed)),
        &["holds 2 certificates", "is not a CA"],
    );
}

#[test]
fn missing_or_empty_certificate_templates_refuse_to_start() {
    for b in [
        BundleBuilder::new(URL).remove("certificateTemplates"),
        BundleBuilder::new(URL).set("certificateTemplates", ""),
        BundleBuilder::new(URL).set("certificateTemplates", " ; ;"),
    ] {
        assert_contains(
            &problems(&b),
            &[
                "`certificateTemplates` is missing or empty",
                "refuses to start",
            ],
        );
    }
}

#[test]
fn the_url_must_be_there_and_https() {
    assert_contains(
        &problems(&BundleBuilder::new(URL).remove("url")),
        &["`url` is missing"],
    );
    assert_contains(
        &problems(&BundleBuilder::new("http://dtrust.test/rest/")),
        &["`url` = `http://dtrust.test/rest/` does not use https"],
    );
}

#[test]
fn legacy_soap_keys_are_refused_with_the_way_out() {
    let b = BundleBuilder::new(URL).set("namespaceURI", "http://www.d-trust.net/cmc/ws");
    assert_contains(
        &problems(&b),
        &["`namespaceURI`", "legacy SOAP interface", "migrate-config"],
    );
    let b = b.set("localPart", "CMCService");
    assert_contains(&problems(&b), &["`namespaceURI` and `localPart`"]);
}

#[test]
fn key_backup_needs_its_import_and_token_procedures() {
    let b = BundleBuilder::new(URL)
        .set("keyArchive", "Key archive")
        .set("tokenProcedure.SSL-Basic", "TP SSL");
    assert_contains(
        &problems(&b),
        &["key backup is incomplete", "`caTokenProcedureImportCert`, `tokenProcedure.SSL-OV` and `tokenProcedure.Personal-Sig`"],
    );
    let b = b
        .set("caTokenProcedureImportCert", "TP import")
        .set("tokenProcedure.SSL-OV", "TP OV")
        .set("tokenProcedure.Personal-Sig", "TP sig");
    let bundle = load(&b).unwrap_or_else(|r| panic!("{r}"));
    let archive = bundle.settings.key_archive.expect("key backup on");
    assert_eq!(archive.import_procedure, "TP import");
    assert_eq!(archive.token_procedures.len(), 3);
}

#[test]
fn proxy_settings_are_checked() {
    let b = BundleBuilder::new(URL)
        .set("proxyHost", "proxy.corp")
        .set("proxyPort", "eighty");
    assert_contains(
        &problems(&b),
        &["`proxyPort` = `eighty` is not a port number"],
    );
    let b = BundleBuilder::new(URL).set("proxyHost", "proxy.corp");
    assert_contains(
        &problems(&b),
        &["`proxyHost` is set but `proxyPort` is not"],
    );
    let b = BundleBuilder::new(URL)
        .set("proxyHost", "proxy.corp")
        .set("proxyPort", "3128")
        .set("proxyUser", "svc")
        .set("proxyPassword", "proxy-secret-pw");
    let bundle = load(&b).unwrap_or_else(|r| panic!("{r}"));
    let summary = bundle.summary().to_string();
    assert_contains(
        &summary,
        &["proxy.corp:3128, basic authentication as `svc`"],
    );
    assert!(!summary.contains("proxy-secret-pw"));
}

#[test]
fn entries_are_found_by_name_or_by_their_only_extension() {
    // Named, but absent.
    let b = BundleBuilder::new(URL).set("p12File", "account.p12");
    assert_contains(
        &problems(&b),
        &["`p12File` names the entry `account.p12`, which is not in the bundle"],
    );

    // Unnamed: found by extension, in any case.
    let b = BundleBuilder::new(URL)
        .remove("p12File")
        .remove("serverCertificate");
    let p12 = b.entries[0].1.clone();
    let b = b.without_entry(P12_NAME).entry("ACCOUNT.PFX", p12);
    let bundle = load(&b).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(bundle.identity.entry, "ACCOUNT.PFX");
    assert_eq!(bundle.server.entry(), CER_NAME);

    // Unnamed and ambiguous, or absent.
    let b = BundleBuilder::new(URL).remove("p12File");
    let p12 = b.entries[0].1.clone();
    let b = b.entry("second.p12", p12);
    assert_contains(
        &problems(&b),
        &["several client keystore files", "`p12File`"],
    );
    let b = BundleBuilder::new(URL)
        .remove("serverCertificate")
        .without_entry(CER_NAME);
    assert_contains(
        &problems(&b),
        &["has no server certificate (a file ending in .cer, .crt or .pem)"],
    );
}

#[test]
fn a_bundle_without_properties_says_what_it_holds() {
    let zip = zip_of(&[("client.p12".into(), vec![1, 2, 3])]);
    let err = Bundle::from_archive(&Archive::from_bytes(&zip).unwrap(), &BTreeMap::new(), now())
        .unwrap_err();
    assert_contains(
        &err.to_string(),
        &["has no `dtrust.properties`", "`client.p12`"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let b = BundleBuilder::new("http://plain.test/")
        .remove("certificateTemplates")
        .set("p12Password", "wrong")
        .set("proxyHost", "p")
        .set("proxyPort", "x")
        .set("localPart", "CMCService")
        .entry(CER_NAME, b"junk".to_vec());
    let text = problems(&b);
    assert_contains(
        &text,
        &[
            "localPart",
            "does not use https",
            "certificateTemplates",
            "proxyPort",
            "wrong password",
            "cannot be read",
        ],
    );
    assert_eq!(text.lines().count(), 6, "{text}");
}

#[test]
fn unknown_keys_and_unused_entries_are_warned_about() {
    let b = BundleBuilder::new(URL)
        .set("requestTimeoutMS", "1000")
        .entry("README.txt", b"notes".to_vec());
    let bundle = load(&b).unwrap_or_else(|r| panic!("{r}"));
    let warnings: Vec<String> = bundle.warnings.iter().map(ToString::to_string).collect();
    assert_contains(
        &warnings.join("\n"),
        &[
            "unknown key `requestTimeoutMS` (did you mean `requestTimeoutMs`?)",
            "entry `README.txt` is not used",
        ],
    );
}

#[test]
fn properties_in_iso_8859_1_are_read() {
    let b = BundleBuilder::new(URL);
    let client = pki_clone(&b.client);
    let password = "Geheimnis-äöü";
    let mut b = b
        .remove("p12Password")
        .keystore(&client, password, P12Encryption::Aes256);
    // Write the properties in ISO-8859-1, as Java tools do.
    let mut latin1: Vec<u8> = b.properties_text().into_bytes();
    latin1.extend(b"p12Password=Geheimnis-\xe4\xf6\xfc\n");
    b.properties.clear();
    let mut files = vec![("dtrust.properties".to_string(), latin1)];
    files.extend(b.entries.iter().cloned());
    let archive = Archive::from_bytes(&zip_of(&files)).unwrap();
    let bundle =
        Bundle::from_archive(&archive, &BTreeMap::new(), now()).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(bundle.settings.entries.p12_password.expose(), password);
}
