//! `dtrust-worker check-config` and `migrate-config`, run as the real binary the way an
//! operator runs them, on real bundle files.

use dtrust_testkit::bundle::{BundleBuilder, P12_PASSWORD};
use dtrust_testkit::process::{run_worker, text};

const URL: &str = "https://dtrust.test:8443/rest/";

fn write(dir: &tempfile::TempDir, name: &str, builder: &BundleBuilder) -> String {
    let path = dir.path().join(name);
    builder.write(&path);
    path.display().to_string()
}

#[test]
fn check_config_prints_a_summary_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write(
        &dir,
        "good.zip",
        &BundleBuilder::new(URL)
            .set("proxyHost", "proxy.corp")
            .set("proxyPort", "3128")
            .set("proxyUser", "svc")
            .set("proxyPassword", "proxy-pw-7731"),
    );
    let out = run_worker(
        &["check-config", "--bundle", &bundle, "--log-level", "trace"],
        &[],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for part in [
        URL,
        "client certificate    CN=CSM447922870184925",
        "trust anchor",
        "SSL-Basic; SSL-OV; Personal-Sig (3)",
        "proxy.corp:3128, basic authentication as `svc`",
        "key backup            off",
        "OK: the bundle is valid",
    ] {
        assert!(all.contains(part), "expected {part:?} in:\n{all}");
    }
    for secret in [P12_PASSWORD, "proxy-pw-7731", "PRIVATE KEY"] {
        assert!(!all.contains(secret), "secret {secret:?} printed:\n{all}");
    }
}

#[test]
fn check_config_takes_the_bundle_and_secrets_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write(
        &dir,
        "env.zip",
        &BundleBuilder::new(URL).remove("p12Password"),
    );
    let out = run_worker(
        &["check-config"],
        &[
            ("DTRUST_BUNDLE", bundle.as_str()),
            ("DTRUST_P12PASSWORD", P12_PASSWORD),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("from environment      DTRUST_P12PASSWORD"),
        "{all}"
    );
    assert!(!all.contains(P12_PASSWORD));
}

#[test]
fn check_config_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write(
        &dir,
        "bad.zip",
        &BundleBuilder::new("http://dtrust.test/")
            .remove("certificateTemplates")
            .set("p12Password", "wrong-pw-4411"),
    );
    let out = run_worker(&["check-config", "--bundle", &bundle], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for part in [
        "the bundle has 3 problems",
        "does not use https",
        "`certificateTemplates` is missing or empty",
        "wrong password",
        "FAILED",
    ] {
        assert!(all.contains(part), "expected {part:?} in:\n{all}");
    }
    assert!(
        !all.contains("wrong-pw-4411"),
        "the wrong password is printed:\n{all}"
    );
}

#[test]
fn check_config_on_a_missing_file_says_so() {
    let out = run_worker(
        &["check-config", "--bundle", "/nonexistent/bundle.zip"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("cannot read the bundle file `/nonexistent/bundle.zip`"),
        "{}",
        text(&out)
    );
}

#[test]
fn migrate_config_turns_a_soap_bundle_into_a_rest_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut soap = BundleBuilder::new("https://soap.d-trust.example/services/CertService")
        .set("namespaceURI", "http://www.d-trust.net/cmc/ws")
        .set("localPart", "CMCService");
    soap.properties
        .insert(0, "# Operator's note: account 4711".into());
    let old = write(&dir, "soap.zip", &soap);
    let new = dir.path().join("rest.zip").display().to_string();

    let refused = run_worker(&["check-config", "--bundle", &old], &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("legacy SOAP interface"));

    let out = run_worker(&["migrate-config", &old, &new, "--url", URL], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for part in [
        "removed `namespaceURI`",
        "removed `localPart`",
        "url: https://soap.d-trust.example/services/CertService -> https://dtrust.test:8443/rest/",
        "OK: the new bundle is valid",
    ] {
        assert!(all.contains(part), "expected {part:?} in:\n{all}");
    }
    let checked = run_worker(&["check-config", "--bundle", &new], &[]);
    assert!(checked.status.success(), "{}", text(&checked));

    // Comments and the other settings are kept; the keystore is the same file.
    let migrated = dtrust_worker::bundle::Archive::read_file(std::path::Path::new(&new)).unwrap();
    let props = String::from_utf8(migrated.get("dtrust.properties").unwrap().data.clone()).unwrap();
    assert!(
        props.starts_with("# Operator's note: account 4711\n"),
        "{props}"
    );
    assert!(props.contains("certificateTemplates=SSL-Basic;SSL-OV;Personal-Sig"));
    assert!(!props.contains("namespaceURI") && !props.contains("localPart"));
    assert_eq!(migrated.entries().len(), soap.entries.len() + 1);
    for (name, data) in &soap.entries {
        assert_eq!(&migrated.get(name).unwrap().data, data, "{name} changed");
    }

    // It does not overwrite, nor accept a plain-http URL.
    let again = run_worker(&["migrate-config", &old, &new, "--url", URL], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("exists already"), "{}", text(&again));
    let other = dir.path().join("other.zip").display().to_string();
    let http = run_worker(
        &["migrate-config", &old, &other, "--url", "http://x.test/"],
        &[],
    );
    assert_eq!(http.status.code(), Some(1));
    assert!(text(&http).contains("is not an https URL"));
    assert!(!std::path::Path::new(&other).exists());
}
