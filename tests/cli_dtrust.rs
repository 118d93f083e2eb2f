//! `dtrust-worker products` (Identity Manager's "Search") and `test-connection`
//! ("Testing") as operators run them, against the simulator.

use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::process::{run_worker, text};
use dtrust_testkit::proxy::ConnectProxy;
use dtrust_testkit::sim::{fingerprint, Sim, SimConfig};

struct Setup {
    sim: Sim,
    _dir: tempfile::TempDir,
    bundle: String,
    builder: BundleBuilder,
}

fn setup(adjust: impl FnOnce(BundleBuilder) -> BundleBuilder) -> Setup {
    let pki = BundleBuilder::new("https://placeholder/");
    let sim = Sim::start_blocking(SimConfig::default_catalogue(), &pki);
    let builder = adjust(pki.set("url", &sim.url()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.zip");
    builder.write(&path);
    Setup {
        sim,
        bundle: path.display().to_string(),
        _dir: dir,
        builder,
    }
}

fn assert_has(all: &str, parts: &[&str]) {
    for part in parts {
        assert!(all.contains(part), "expected {part:?} in:\n{all}");
    }
}

#[test]
fn products_lists_the_account_and_marks_the_templates() {
    let s = setup(|b| b.set("certificateTemplates", "SSL-Basic;SSL-OV"));
    let out = run_worker(&["products", "--bundle", &s.bundle], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_has(
        &all,
        &[
            "ID",
            "REQUEST TYPES",
            "SSL-Basic",
            "PKCS10, PKCS12",
            "2048, 3072, 4096",
            "Personal-Sig",
            "organizationIdentifier",
            "revocation password",
            s.sim.issuer_dn(),
            "every product of certificateTemplates is on the account",
        ],
    );
    let line = all
        .lines()
        .find(|l| l.trim_start().starts_with("Personal-Sig "))
        .expect("Personal-Sig row");
    assert!(line.trim_end().ends_with("no"), "{line}");
}

#[test]
fn products_warns_about_templates_missing_on_the_account() {
    let s = setup(|b| b.set("certificateTemplates", "SSL-Basic;Code-Signing"));
    let out = run_worker(&["products", "--bundle", &s.bundle], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &[
            "certificateTemplates lists Code-Signing not on the account",
            "PRODUCT_NOT_ALLOWED",
        ],
    );
}

#[test]
fn test_connection_is_all_green_against_the_simulator() {
    let s = setup(|b| b);
    // A proxy in the environment is not used: only the bundle configures one.
    let dead_proxy = [
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ("https_proxy", "http://127.0.0.1:9"),
        ("ALL_PROXY", "http://127.0.0.1:9"),
    ];
    let out = run_worker(&["test-connection", "--bundle", &s.bundle], &dead_proxy);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_has(
        &all,
        &[
            "[ OK ] bundle valid",
            "[ OK ] D-Trust reachable: 127.0.0.1:",
            "[ OK ] TLS: server chains to the trust anchor",
            &format!(
                "[ OK ] client certificate accepted: account {}",
                s.sim.account()
            ),
            "[ OK ] certificate templates on the account: SSL-Basic, SSL-OV, Personal-Sig",
            "all connections green",
        ],
    );
    assert!(!all.contains("[FAIL]"), "{all}");
}

#[test]
fn test_connection_goes_through_the_proxy_and_checks_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let proxy = runtime.block_on(ConnectProxy::start(Some(("svc", "pw-proxy-9"))));
    let port = proxy.addr().port().to_string();
    let s = setup(|b| {
        b.set("proxyHost", "127.0.0.1")
            .set("proxyPort", &port)
            .set("proxyUser", "svc")
            .set("proxyPassword", "pw-proxy-9")
    });
    let out = run_worker(&["test-connection", "--bundle", &s.bundle], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_has(
        &all,
        &[
            &format!("[ OK ] proxy reachable: 127.0.0.1:{port}"),
            "all connections green",
        ],
    );
    assert!(proxy.tunnels() >= 1);
    assert!(!all.contains("pw-proxy-9"));
}

#[test]
fn test_connection_shows_red_where_it_breaks() {
    // D-Trust no longer accepts the account certificate.
    let s = setup(|b| b);
    s.sim
        .reject_client_cert(&fingerprint(&s.builder.client.cert_der));
    let out = run_worker(&["test-connection", "--bundle", &s.bundle], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_has(
        &all,
        &[
            "[ OK ] TLS",
            "[FAIL] client certificate accepted",
            "CLIENT_CERT_REJECTED",
            "[SKIP] certificate templates",
        ],
    );

    // A template the account does not have.
    let s = setup(|b| b.set("certificateTemplates", "SSL-Basic;Code-Signing"));
    let out = run_worker(&["test-connection", "--bundle", &s.bundle], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &["[FAIL] certificate templates on the account: not on the account: Code-Signing"],
    );

    // The server is not the one the bundle trusts.
    let s = setup(|b| {
        let other = dtrust_testkit::pki::Ca::new("Other CA").cert.cert_der;
        b.entry(dtrust_testkit::bundle::CER_NAME, other)
    });
    let out = run_worker(&["test-connection", "--bundle", &s.bundle], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &["[FAIL] TLS", "[SKIP] client certificate accepted"],
    );

    // Nothing listens at the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = setup(|b| b.set("url", &format!("https://127.0.0.1:{port}/")));
    let out = run_worker(&["test-connection", "--bundle", &s.bundle], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_has(&text(&out), &["[FAIL] D-Trust reachable", "[FAIL] TLS"]);
}

#[test]
fn test_connection_checks_the_broker_when_given_one() {
    let s = setup(|b| b);
    let url = dtrust_testkit::broker::amqp_url();
    let out = run_worker(
        &["test-connection", "--bundle", &s.bundle, "--amqp-url", &url],
        &[],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_has(&all, &["[ OK ] RabbitMQ reachable: amqp://guest:***@"]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let out = run_worker(
        &[
            "test-connection",
            "--bundle",
            &s.bundle,
            "--amqp-url",
            &dead,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_has(&text(&out), &["[FAIL] RabbitMQ reachable"]);
}

#[test]
fn test_connection_checks_the_key_archive_exchange_when_key_backup_is_on() {
    let prefix = dtrust_testkit::broker::unique_prefix("tc-archive");
    let s = setup(|b| {
        b.set("amqp.prefix", &prefix)
            .set("keyArchive", "Key archive")
            .set("caTokenProcedureImportCert", "TP import")
            .set("tokenProcedure.SSL-Basic", "TP basic")
            .set("tokenProcedure.SSL-OV", "TP ov")
            .set("tokenProcedure.Personal-Sig", "TP sig")
    });
    let url = dtrust_testkit::broker::amqp_url();
    let out = run_worker(
        &["test-connection", "--bundle", &s.bundle, "--amqp-url", &url],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &["[FAIL] key-archive exchange reachable", "does not exist"],
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bus = runtime.block_on(dtrust_testkit::broker::JobBus::start(&prefix));
    let out = run_worker(
        &["test-connection", "--bundle", &s.bundle, "--amqp-url", &url],
        &[],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_has(
        &all,
        &[&format!(
            "[ OK ] key-archive exchange reachable: {prefix}.keyarchive"
        )],
    );
    drop(bus);
}
