//! The worker end to end, as operators run it: the real `dtrust-worker run` process,
//! the shared RabbitMQ (a prefix of its own per test) and the D-Trust simulator. Jobs go
//! in through `{p}.jobs`, results come out of `{p}.results`, and the simulator's books
//! show what D-Trust was asked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use dtrust_testkit::broker::{amqp_url, broker_addr, unique_prefix, JobBus};
use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::pki::{csr, KeyKind};
use dtrust_testkit::process::WorkerProcess;
use dtrust_testkit::sim::{Endpoint, Faults, Sim, SimConfig};
use dtrust_worker::job::schema::Schemas;
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, X509Certificate};

const WAIT: Duration = Duration::from_secs(90);

struct World {
    sim: Sim,
    bus: JobBus,
    worker: WorkerProcess,
    dir: tempfile::TempDir,
    /// The account's client certificate (DER).
    client_cert: Vec<u8>,
}

impl World {
    async fn start(test: &str, config: SimConfig, extra: &[&str]) -> World {
        World::start_with(test, config, extra, |b| b).await
    }

    async fn start_with(
        test: &str,
        config: SimConfig,
        extra: &[&str],
        adjust: impl FnOnce(BundleBuilder) -> BundleBuilder,
    ) -> World {
        let prefix = unique_prefix(test);
        let pki = BundleBuilder::new("https://placeholder/");
        let sim = Sim::start(config, &pki).await;
        let builder = adjust(pki.set("url", &sim.url()));
        let client_cert = builder.client.cert_der.clone();
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = dir.path().join("bundle.zip");
        builder.write(&bundle);
        let bus = JobBus::start(&prefix).await;
        let store = dir.path().join("store");
        let mut args: Vec<String> = vec![
            "--bundle".into(),
            bundle.display().to_string(),
            "--prefix".into(),
            prefix.clone(),
            "--store".into(),
            store.display().to_string(),
            "--retry-initial-ms".into(),
            "50".into(),
            "--retry-max-ms".into(),
            "400".into(),
            "--poll-interval-secs".into(),
            "1".into(),
        ];
        if !extra.contains(&"--amqp-url") {
            args.extend(["--amqp-url".to_string(), amqp_url()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = dir.path().join("worker.log");
        let worker = WorkerProcess::start(&args, &[("RUST_LOG", "info")], &log);
        World {
            sim,
            bus,
            worker,
            dir,
            client_cert,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    async fn results(&mut self, count: usize) -> BTreeMap<String, Value> {
        let results = self.bus.results_for(count, WAIT).await;
        assert!(
            results.len() >= count,
            "{} of {count} results arrived; worker log:\n{}",
            results.len(),
            tail(&self.worker.output())
        );
        results
    }

    /// No client reference was ordered twice at the simulator.
    fn assert_no_double_orders(&self) {
        let mut seen = BTreeSet::new();
        for order in self.sim.orders() {
            assert!(
                seen.insert(order.client_reference.clone()),
                "reference {} ordered twice",
                order.client_reference
            );
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn pkcs10_job(job_id: &str, cn: &str) -> (Value, rcgen::KeyPair) {
    let (_, pem, key) = csr(cn, KeyKind::Rsa2048);
    let job = json!({
        "job_id": job_id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10",
        "csr_pem": pem, "subject": {"cn": cn, "c": "DE"}, "san": {"dns": [cn]},
        "metadata": {"ticket": format!("T-{job_id}")}
    });
    (job, key)
}

fn pkcs12_job(job_id: &str, cn: &str) -> Value {
    json!({
        "job_id": job_id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
        "subject": {"cn": cn, "c": "DE"}
    })
}

fn revoke_job(job_id: &str, serial: &str, password: &str) -> Value {
    json!({"job_id": job_id, "kind": "revoke", "serial": serial, "revocation_password": password, "reason": "superseded"})
}

fn schemas() -> Schemas {
    Schemas::load().expect("schemas")
}

fn assert_valid_result(result: &Value) {
    if let Err(errors) = schemas().check("result", result) {
        panic!("result does not fit schemas/result.schema.json: {errors:?}\n{result:#}");
    }
}

fn cert_der(result: &Value) -> Vec<u8> {
    let pem = result["certificate_pem"].as_str().expect("certificate_pem");
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    block.contents
}

fn error_code(result: &Value) -> &str {
    result["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_pkcs10_and_pkcs12_and_revokes_end_to_end() {
    let mut w = World::start("e2e", SimConfig::default_catalogue(), &[]).await;
    let (job, key) = pkcs10_job("e2e-p10", "www.example.com");
    w.bus.publish_job(&job).await;
    w.bus
        .publish_job(&pkcs12_job("e2e-p12", "shop.example.com"))
        .await;
    let results = w.results(2).await;

    let p10 = &results["e2e-p10"];
    assert_valid_result(p10);
    assert_eq!(p10["status"], "succeeded", "{p10:#}");
    assert_eq!(p10["metadata"], json!({"ticket": "T-e2e-p10"}));
    let der = cert_der(p10);
    let (_, cert) = X509Certificate::from_der(&der).expect("certificate");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the certificate certifies the CSR's key"
    );
    assert_eq!(
        p10["serial"].as_str().unwrap(),
        cert.raw_serial_as_string()
            .replace(':', "")
            .to_ascii_lowercase()
    );
    assert!(p10["chain_pem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let password = p10["revocation_password"]
        .as_str()
        .expect("a generated revocation password");
    assert!(regex::Regex::new("^[A-Za-z0-9!#%+,.:=?@_-]{12,64}$")
        .unwrap()
        .is_match(password));

    let p12 = &results["e2e-p12"];
    assert_valid_result(p12);
    assert_eq!(p12["status"], "succeeded", "{p12:#}");
    let keystore = base64::engine::general_purpose::STANDARD
        .decode(p12["pkcs12_base64"].as_str().unwrap())
        .unwrap();
    let store = p12_keystore::KeyStore::from_pkcs12(
        &keystore,
        p12["pkcs12_password"].as_str().unwrap(),
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .expect("the PKCS#12 opens with its password");
    let (_, chain) = store.private_key_chain().expect("a key in the PKCS#12");
    assert_eq!(chain.certs()[0].as_der(), cert_der(p12).as_slice());

    // Revoke the first with the password the worker generated.
    let serial = p10["serial"].as_str().unwrap();
    w.bus
        .publish_job(&revoke_job("e2e-rev", serial, password))
        .await;
    let results = w.results(3).await;
    let revoked = &results["e2e-rev"];
    assert_valid_result(revoked);
    assert_eq!(revoked["status"], "succeeded", "{revoked:#}");
    assert!(revoked["revoked_at"].as_str().is_some());
    assert!(w
        .sim
        .revocations()
        .iter()
        .any(|r| r.serial.eq_ignore_ascii_case(serial)));

    // The worker's log holds no secret.
    let log = w.worker.output();
    assert!(
        !log.contains(password),
        "the revocation password was logged"
    );
    assert!(!log.contains(p12["pkcs12_password"].as_str().unwrap()));
    assert!(
        w.worker.terminate(),
        "clean exit on SIGTERM:\n{}",
        tail(&w.worker.output())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_trust_errors_reach_the_results_with_their_hints() {
    let mut w = World::start_with(
        "errors",
        SimConfig::default_catalogue(),
        &["--max-retries", "2"],
        |b| {
            b.set(
                "certificateTemplates",
                "SSL-Basic;SSL-OV;Personal-Sig;Code-Signing",
            )
        },
    )
    .await;
    let (mut cn_in_cn, _) = pkcs10_job("err-rdn", "www.example.com");
    cn_in_cn["subject"]["cn"] = json!("CN=www.example.com");
    let mut unverified = pkcs12_job("err-mail", "www.example.com");
    unverified["san"] = json!({"email": ["someone@unverified.test"]});
    let mut short_password = pkcs12_job("err-pw", "www.example.com");
    short_password["revocation_password"] = json!("short");
    let (mut wrong_type, _) = pkcs10_job("err-type", "Erika Mustermann");
    wrong_type["product"] = json!("Personal-Sig");
    wrong_type.as_object_mut().unwrap().remove("san");
    let (mut small_key, _) = pkcs10_job("err-csr", "www.example.com");
    small_key["product"] = json!("SSL-OV");
    small_key["subject"] = json!({"cn": "www.example.com", "o": "Example GmbH", "c": "DE", "organization_identifier": "VATDE-123456789"});
    let mut not_allowed = pkcs12_job("err-product", "www.example.com");
    not_allowed["product"] = json!("Code-Signing");
    let mut unknown = pkcs12_job("err-unknown", "www.example.com");
    unknown["product"] = json!("No-Such-Product");
    let jobs = vec![
        (cn_in_cn, "GENERIC_RDN_REGEXERROR", "'CN=' inside the CN"),
        (
            unverified,
            "EMAILDOMAIN_DOES_NOT_FIT",
            "not (fully) verified",
        ),
        (
            short_password,
            "GENERIC_PASSWORD_REGEXERROR",
            "Generate Random Password",
        ),
        (wrong_type, "INVALID_REQUEST_TYPE", "request type"),
        (small_key, "INVALID_CSR", "key size"),
        (
            not_allowed,
            "PRODUCT_NOT_ALLOWED",
            "not enabled for your D-Trust account",
        ),
        (unknown, "UNKNOWN_PRODUCT", "certificateTemplates"),
        (
            json!({"job_id": "err-nosecret", "kind": "revoke", "serial": "0a1b"}),
            "MISSING_REVOCATION_SECRET",
            "cn",
        ),
        (
            revoke_job("err-404", "deadbeef", "Some-password-123"),
            "NOT_FOUND",
            "serial",
        ),
    ];
    w.sim.seed_certificate("c0ffee", "Right-password-123");
    let mut all = jobs;
    all.push((
        revoke_job("err-wrongpw", "c0ffee", "Wrong-password-123"),
        "REVOCATION_PASSWORD_WRONG",
        "password returned at issuance",
    ));
    for (job, _, _) in &all {
        w.bus.publish_job(job).await;
    }
    let results = w.results(all.len()).await;
    for (job, code, hint) in &all {
        let id = job["job_id"].as_str().unwrap();
        let result = &results[id];
        assert_valid_result(result);
        assert_eq!(result["status"], "failed", "{id}: {result:#}");
        assert_eq!(error_code(result), *code, "{id}: {result:#}");
        assert!(
            result["error"]["hint"].as_str().unwrap().contains(hint),
            "{id}: hint {:?} lacks {hint:?}",
            result["error"]["hint"]
        );
        assert_eq!(result["error"]["retryable"], false);
    }
    // Pre-validation caught the first ones: D-Trust saw no order for them.
    for id in ["err-rdn", "err-pw", "err-type", "err-csr", "err-unknown"] {
        assert_eq!(
            w.sim.orders_for(&format!("{}:{id}", w.bus.names.prefix)),
            0,
            "{id} reached D-Trust"
        );
    }

    // Retryable failures are retried, then given up with the last error.
    w.sim.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::default()
    });
    w.bus
        .publish_job(&pkcs12_job("err-503", "www.example.com"))
        .await;
    let results = w.results(all.len() + 1).await;
    let exhausted = &results["err-503"];
    assert_eq!(error_code(exhausted), "RETRIES_EXHAUSTED", "{exhausted:#}");
    assert!(exhausted["error"]["message"]
        .as_str()
        .unwrap()
        .contains("UNAVAILABLE"));
    // Three orders, each after a lookup: before the first because another worker may
    // have placed it, before each retry because after a 5xx D-Trust may have taken it.
    assert_eq!(exhausted["attempts"], 6);
    assert_eq!(
        w.sim.orders_for(&format!("{}:err-503", w.bus.names.prefix)),
        0
    );

    // 429 is retried after its Retry-After, then given up the same way.
    w.sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        retry_after_secs: 1,
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::default()
    });
    w.bus
        .publish_job(&pkcs12_job("err-429", "www.example.com"))
        .await;
    let results = w.results(all.len() + 2).await;
    assert_eq!(error_code(&results["err-429"]), "RETRIES_EXHAUSTED");
    assert!(results["err-429"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("RATE_LIMITED"));

    // ALREADY_REVOKED is the revocation's goal: success, with a note.
    w.sim.set_faults(Faults::default());
    w.bus
        .publish_job(&revoke_job("rev-1", "c0ffee", "Right-password-123"))
        .await;
    w.results(all.len() + 3).await;
    w.bus
        .publish_job(&revoke_job("rev-2", "c0ffee", "Right-password-123"))
        .await;
    let results = w.results(all.len() + 4).await;
    assert_eq!(results["rev-2"]["status"], "succeeded");
    assert!(results["rev-2"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("already revoked"));

    // D-Trust no longer accepts the account's certificate: not retried.
    w.sim
        .reject_client_cert(&dtrust_testkit::sim::fingerprint(&w.client_cert));
    w.bus
        .publish_job(&pkcs12_job("err-401", "www.example.com"))
        .await;
    let results = w.results(all.len() + 5).await;
    assert_eq!(
        error_code(&results["err-401"]),
        "CLIENT_CERT_REJECTED",
        "{:#}",
        results["err-401"]
    );
    assert!(results["err-401"]["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("account certificate"));
    assert_eq!(results["err-401"]["error"]["retryable"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_answered_and_dead_lettered_never_dropped() {
    let mut w = World::start("invalid", SimConfig::default_catalogue(), &[]).await;
    let dead = w.bus.names.dead_queue.clone();
    w.bus.watch(&dead).await;
    let reply = format!("{}.test-reply", w.bus.names.prefix);
    w.bus.watch(&reply).await;
    let bad = json!({"job_id": "inv-1", "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "subject": {"cn": "x"},
        "revocation_password": "Secret-in-bad-job-1"});
    w.bus
        .publish_raw(
            "issue",
            serde_json::to_vec(&bad).unwrap(),
            Some("inv-1"),
            Some(&reply),
        )
        .await;
    w.bus
        .publish_raw("issue", b"\x00\x01 not json at all".to_vec(), None, None)
        .await;
    w.bus
        .publish_raw("revoke", vec![b'['; 5000], None, None)
        .await;

    let results = w.results(1).await;
    let failed = &results["inv-1"];
    assert_valid_result(failed);
    assert_eq!(error_code(failed), "INVALID_JOB");
    assert!(!failed.to_string().contains("Secret-in-bad-job-1"));
    let replied = w
        .bus
        .next_from(&reply, WAIT)
        .await
        .expect("result to reply_to");
    assert_eq!(replied.body["job_id"], "inv-1");
    assert_eq!(replied.correlation_id.as_deref(), Some("corr-"));

    let mut reasons = Vec::new();
    for _ in 0..3 {
        let letter = w.bus.next_from(&dead, WAIT).await.expect("a dead letter");
        reasons.push(
            letter
                .headers
                .get("x-dtrust-error")
                .cloned()
                .expect("x-dtrust-error"),
        );
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("does not fit the contract")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().filter(|r| r.contains("not JSON")).count() == 2,
        "{reasons:?}"
    );
    assert!(w.worker.running(), "the worker survives bad input");
    assert_eq!(w.sim.orders().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_twice_and_again_after_it_finished_makes_one_order() {
    let mut w = World::start("dupes", SimConfig::default_catalogue(), &[]).await;
    let mut job = pkcs12_job("dup-1", "www.example.com");
    job["revocation_password"] = json!("Callers-own-password-1");
    w.bus.publish_job(&job).await;
    w.bus.publish_job(&job).await;
    w.bus.results_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.bus.publish_job(&job).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while w.bus.all.len() < 3 && tokio::time::Instant::now() < deadline {
        w.bus.results_for(2, Duration::from_millis(200)).await;
        w.bus.drain();
    }
    assert_eq!(w.bus.all.len(), 3, "one result per delivered copy");
    let first = &w.bus.all[0].body;
    assert!(first["pkcs12_password"].is_string());
    for other in &w.bus.all[1..] {
        // The same content, secrets included (within the secrets' grace period).
        assert_eq!(&other.body, first);
    }
    assert_eq!(w.sim.orders().len(), 1, "one D-Trust order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_dropped_after_the_order_was_stored_still_gives_one_order() {
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        drop_after_store_rate: 1.0,
        max_faults: Some(1),
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::default()
    };
    let mut w = World::start("dropped", config, &[]).await;
    w.bus
        .publish_job(&pkcs12_job("drop-1", "www.example.com"))
        .await;
    let results = w.results(1).await;
    assert_eq!(
        results["drop-1"]["status"], "succeeded",
        "{:#}",
        results["drop-1"]
    );
    assert_eq!(w.sim.orders().len(), 1);
    w.assert_no_double_orders();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_orders_are_polled_until_issued() {
    let mut w = World::start_with("pending", SimConfig::default_catalogue(), &[], |b| {
        b.set("certificateTemplates", "SSL-EV")
    })
    .await;
    let mut job = pkcs12_job("ev-1", "www.example.com");
    job["product"] = json!("SSL-EV");
    job["subject"] = json!({"cn": "www.example.com", "o": "Example GmbH", "c": "DE", "serial_number": "HRB 4711"});
    w.bus.publish_job(&job).await;
    let results = w.results(1).await;
    assert_eq!(
        results["ev-1"]["status"], "succeeded",
        "{:#}",
        results["ev-1"]
    );
    assert!(
        results["ev-1"]["attempts"].as_u64().unwrap() >= 2,
        "the order was polled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_and_restarted_every_job_ends_once() {
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        latency_ms: 20,
        jitter_ms: 20,
        ..Faults::default()
    };
    // Jobs in flight at a kill wait out the request timeout (plus 10 s) before their
    // lookup; a short timeout keeps the test short.
    let mut w = World::start_with("kill", config, &["--issue-concurrency", "8"], |b| {
        b.set("requestTimeoutMs", "3000")
    })
    .await;
    for i in 0..200 {
        w.bus
            .publish_job(&pkcs12_job(&format!("kill-{i:03}"), "www.example.com"))
            .await;
    }
    for _ in 0..2 {
        w.bus.results_for(40 + w.bus.by_job_id().len(), WAIT).await;
        w.worker.kill();
        w.worker.restart();
    }
    let results = w.results(200).await;
    assert!(
        results.values().all(|r| r["status"] == "succeeded"),
        "all succeed"
    );
    let ids: BTreeSet<&str> = w
        .bus
        .all
        .iter()
        .filter_map(|r| r.body["job_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 200);
    // Repeated results (a kill between publish and ack) carry the same order.
    let mut orders: BTreeMap<&str, &Value> = BTreeMap::new();
    for r in &w.bus.all {
        let id = r.body["job_id"].as_str().unwrap();
        if let Some(previous) = orders.insert(id, &r.body["order_id"]) {
            assert_eq!(previous, &r.body["order_id"], "{id}");
        }
    }
    w.assert_no_double_orders();
    assert_eq!(w.sim.orders().len(), 200);
}

/// D-Trust still takes an order after the worker that sent it died: the restarted
/// worker must find that order, not place a second one. It finds the job in flight in
/// its store and looks the order up only once the request has timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_d_trust_still_takes_the_order_the_restart_finds_it() {
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        order_processing_ms: 2_000,
        ..Faults::default()
    };
    let mut w = World::start_with("slowtake", config, &[], |b| {
        b.set("requestTimeoutMs", "3000")
    })
    .await;
    w.bus
        .publish_job(&pkcs12_job("slow-1", "www.example.com"))
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while w.sim.stats().orders_received == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the order request never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The request is at D-Trust, its order not yet taken.
    assert_eq!(w.sim.orders().len(), 0);
    w.worker.kill();
    let killed = std::time::Instant::now();
    w.worker.restart();
    let results = w.results(1).await;
    assert_eq!(
        results["slow-1"]["status"], "succeeded",
        "{}",
        results["slow-1"]
    );
    w.assert_no_double_orders();
    assert_eq!(w.sim.orders().len(), 1);
    assert_eq!(
        w.sim.stats().orders_received,
        1,
        "the restarted worker did not send a second order"
    );
    assert_eq!(
        results["slow-1"]["order_id"],
        json!(w.sim.orders()[0].order_id),
        "the result is that of the first request's order"
    );
    // It waited for the first request's timeout (3 s) before the lookup.
    assert!(killed.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_jobs_read_the_store() {
    let mut w = World::start(
        "status",
        SimConfig::default_catalogue(),
        &["--log-format", "json", "--secrets-grace-secs", "0"],
    )
    .await;
    w.bus
        .publish_job(&pkcs12_job("st-1", "www.example.com"))
        .await;
    w.results(1).await;
    let started = std::time::Instant::now();
    assert!(w.worker.terminate(), "clean exit on SIGTERM");
    eprintln!("terminate took {:?}", started.elapsed());
    // JSON log lines, each with the job's id where it is about a job.
    let log = w.worker.output();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["event"] == "issued" && l["fields"]["job_id"] == "st-1"),
        "{log}"
    );
    assert!(lines.iter().any(|l| l["span"]["job_id"] == "st-1"), "{log}");
    let store = w.store().display().to_string();
    let out = dtrust_testkit::process::run_worker(&["status", "st-1", "--store", &store], &[]);
    let text = dtrust_testkit::process::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("state        delivered") && text.contains("secrets held no"),
        "{text}"
    );
    let out = dtrust_testkit::process::run_worker(&["jobs", "--store", &store], &[]);
    assert!(dtrust_testkit::process::text(&out).contains("delivered  1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_connection_is_cut_and_restored_and_the_batch_finishes() {
    let proxy = dtrust_testkit::tcp_proxy::TcpProxy::start(broker_addr().await).await;
    let through = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        latency_ms: 30,
        ..Faults::default()
    };
    let mut w = World::start(
        "cut",
        config,
        &["--amqp-url", &through, "--issue-concurrency", "4"],
    )
    .await;
    for i in 0..100 {
        w.bus
            .publish_job(&pkcs12_job(&format!("cut-{i:03}"), "www.example.com"))
            .await;
    }
    w.bus.results_for(20, WAIT).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let results = w.results(100).await;
    assert!(results.values().all(|r| r["status"] == "succeeded"));
    assert!(proxy.connections() >= 2, "the worker reconnected");
    w.assert_no_double_orders();
    assert_eq!(w.sim.orders().len(), 100);
    assert!(w.worker.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_finish_while_a_thousand_issuances_wait() {
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        latency_ms: 30,
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::default()
    };
    let mut w = World::start(
        "backlog",
        config,
        &["--issue-concurrency", "4", "--revoke-concurrency", "2"],
    )
    .await;
    let (template, _) = pkcs10_job("x", "www.example.com");
    for i in 0..1000 {
        let mut job = template.clone();
        job["job_id"] = json!(format!("bl-{i:04}"));
        w.bus.publish_job(&job).await;
    }
    for i in 0..10 {
        let serial = format!("abc{i:03}");
        w.sim.seed_certificate(&serial, "Revocation-password-1");
        w.bus
            .publish_job(&revoke_job(
                &format!("bl-rev-{i}"),
                &serial,
                "Revocation-password-1",
            ))
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        w.bus
            .results_for(w.bus.by_job_id().len() + 1, Duration::from_millis(100))
            .await;
        let revoked = w
            .bus
            .by_job_id()
            .keys()
            .filter(|k| k.starts_with("bl-rev-"))
            .count();
        if revoked == 10 || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    let done = w.bus.by_job_id();
    let revoked = done.keys().filter(|k| k.starts_with("bl-rev-")).count();
    let issued = done.len() - revoked;
    assert_eq!(revoked, 10, "every revocation finished");
    assert!(issued < 500, "the revocations did not wait for the backlog: {issued} issuances were done when the last revocation was");
    assert!(done
        .values()
        .filter(|r| r["kind"] == "revoke")
        .all(|r| r["status"] == "succeeded"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// The value of one sample line of a Prometheus exposition, 0 when absent.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_batch_and_readiness_follows_the_broker() {
    let proxy = dtrust_testkit::tcp_proxy::TcpProxy::start(broker_addr().await).await;
    let through = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut w = World::start(
        "metrics",
        SimConfig::default_catalogue(),
        &["--amqp-url", &through, "--metrics-addr", &addr],
    )
    .await;
    for i in 0..3 {
        w.bus
            .publish_job(&pkcs12_job(&format!("m-{i}"), "www.example.com"))
            .await;
    }
    let (mut bad, _) = pkcs10_job("m-bad", "www.example.com");
    bad["subject"]["cn"] = json!("CN=www.example.com");
    w.bus.publish_job(&bad).await;
    w.bus
        .publish_raw("issue", b"garbage".to_vec(), None, None)
        .await;
    w.results(4).await;

    let base = format!("http://{addr}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);
    let (status, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, r#"dtrust_jobs_received_total{kind="issue"}"#),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"dtrust_jobs_finished_total{kind="issue",status="succeeded",code=""}"#
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"dtrust_jobs_finished_total{kind="issue",status="failed",code="GENERIC_RDN_REGEXERROR"}"#
        ),
        1.0
    );
    assert_eq!(sample(&metrics, "dtrust_invalid_messages_total"), 1.0);
    assert_eq!(
        sample(
            &metrics,
            r#"dtrust_dtrust_request_duration_seconds_count{endpoint="create_order",outcome="ok"}"#
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "dtrust_broker_connected"), 1.0);
    assert!(metrics.contains("dtrust_rate_limiter_wait_seconds_count"));

    // The broker goes away: not ready; it comes back: ready again.
    proxy.cut();
    let mut flipped = false;
    for _ in 0..100 {
        if get(&format!("{base}/readyz")).await.0 == 503 {
            flipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flipped, "/readyz stays 200 without a broker");
    assert_eq!(
        get(&format!("{base}/healthz")).await.0,
        200,
        "the process is still up"
    );
    proxy.restore();
    let mut back = false;
    for _ in 0..200 {
        if get(&format!("{base}/readyz")).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "/readyz does not come back");
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert!(
        sample(&metrics, "dtrust_broker_reconnects") >= 1.0,
        "{metrics}"
    );

    // The audit trail: one event per state change, no secret.
    let log = w.worker.output();
    for event in [
        "job received",
        "job ordering",
        "job issued",
        "job failed",
        "job delivered",
    ] {
        assert!(log.contains(event), "no `{event}` audit event");
    }
}
