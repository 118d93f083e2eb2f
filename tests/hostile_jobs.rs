//! Hostile input on the job queues and secrets in the logs.
//!
//! A bounded fuzz round publishes random bytes, JSON of the wrong types, huge strings,
//! deeply nested JSON, invalid and oversized CSRs, unknown products and a 10 MB message
//! to the real worker: every message ends in a failed result or the dead-letter queue
//! with a reason, the worker stays up and its memory stays flat. A full run at `trace`
//! level, through a proxy with credentials, shows no secret in any log line.

use std::collections::BTreeMap;
use std::time::Duration;

use dtrust_testkit::broker::{amqp_url, unique_prefix, JobBus};
use dtrust_testkit::bundle::{BundleBuilder, P12_PASSWORD};
use dtrust_testkit::pki::{csr, KeyKind};
use dtrust_testkit::process::WorkerProcess;
use dtrust_testkit::proxy::ConnectProxy;
use dtrust_testkit::rng::Rng;
use dtrust_testkit::sim::{Sim, SimConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The hostile messages: (routing key, body, job_id when it has a usable one).
fn hostile(rng: &mut Rng) -> Vec<(String, Vec<u8>, Option<String>)> {
    let mut out = Vec::new();
    let (_, small_csr, _) = csr("x.example.com", KeyKind::EcP256);
    for i in 0..160 {
        let id = format!("h-{i:04}");
        let key = if i % 2 == 0 { "issue" } else { "revoke" };
        let body: (Vec<u8>, bool) = match i % 16 {
            0 => {
                let n = 1 + rng.below(300) as usize;
                (rng.bytes(n), false)
            }
            1 => (json!({"job_id": id, "kind": "issue", "product": 42, "request_type": ["x"], "subject": "cn"}).to_string().into_bytes(), true),
            2 => (json!({"job_id": id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12", "subject": {"cn": "a".repeat(200_000)}}).to_string().into_bytes(), true),
            3 => ("[".repeat(100_000).into_bytes(), false),
            4 => (format!("{}{}", "{\"a\":".repeat(5000), "1").into_bytes(), false),
            5 => (json!({"job_id": id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10", "subject": {"cn": "x.example.com", "c": "DE"},
                         "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nnot-base64!!\n-----END CERTIFICATE REQUEST-----\n"}).to_string().into_bytes(), true),
            6 => (json!({"job_id": id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10", "subject": {"cn": "x.example.com", "c": "DE"},
                         "csr_pem": format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", "QUFB".repeat(40_000))}).to_string().into_bytes(), true),
            7 => (json!({"job_id": id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10", "subject": {"cn": "x.example.com", "c": "DE"},
                         "csr_pem": small_csr}).to_string().into_bytes(), true),
            8 => (json!({"job_id": id, "kind": "issue", "product": "No-Such-Product", "request_type": "pkcs12", "subject": {"cn": "x.example.com", "c": "DE"}}).to_string().into_bytes(), true),
            9 => (json!({"job_id": id, "kind": "revoke", "serial": "zz-not-hex"}).to_string().into_bytes(), true),
            10 => (json!({"job_id": id, "kind": "revoke", "serial": "0badc0de"}).to_string().into_bytes(), true),
            11 => (json!({"job_id": "bad id with spaces", "kind": "issue"}).to_string().into_bytes(), false),
            12 => (json!({"job_id": id, "kind": "teleport"}).to_string().into_bytes(), false),
            13 => (json!({"job_id": id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12", "subject": {"cn": "x\u{0000}\u{202e}y", "c": "DE"}, "metadata": {"deep": [[[[[[[[1]]]]]]]]}}).to_string().into_bytes(), true),
            14 => (Vec::new(), false),
            _ => (json!(null).to_string().into_bytes(), false),
        };
        out.push((key.to_string(), body.0, body.1.then_some(id)));
    }
    // One message of 10 MB.
    out.push(("issue".into(), vec![b'7'; 10 << 20], None));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_end_answered_or_dead_lettered_and_the_worker_stays_up() {
    let prefix = unique_prefix("hostile");
    let pki = BundleBuilder::new("https://placeholder/");
    let sim = Sim::start(SimConfig::default_catalogue(), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.zip");
    pki.set("url", &sim.url()).write(&bundle);
    let mut bus = JobBus::start(&prefix).await;
    let dead = bus.names.dead_queue.clone();
    bus.watch(&dead).await;
    let args = [
        "--bundle",
        &bundle.display().to_string(),
        "--prefix",
        &prefix,
        "--store",
        &dir.path().join("store").display().to_string(),
        "--amqp-url",
        &amqp_url(),
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut worker = WorkerProcess::start(
        &args,
        &[("RUST_LOG", "info")],
        &dir.path().join("worker.log"),
    );

    // Warm up with one real job, then measure memory before and after the onslaught.
    bus.publish_job(&json!({"job_id": "warm", "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12", "subject": {"cn": "www.example.com", "c": "DE"}})).await;
    bus.results_for(1, WAIT).await;
    let pid = worker_pid(&worker);
    let before = rss_kib(pid);

    let mut rng = Rng(0xbad_1dea);
    let messages = hostile(&mut rng);
    let mut expected_results = BTreeMap::new();
    for (key, body, id) in &messages {
        bus.publish_raw(key, body.clone(), id.as_deref(), None)
            .await;
        if let Some(id) = id {
            expected_results.insert(id.clone(), ());
        }
    }
    let results = bus.results_for(expected_results.len() + 1, WAIT).await;
    let mut dead_letters = Vec::new();
    while let Some(letter) = bus.next_from(&dead, Duration::from_secs(5)).await {
        dead_letters.push(letter);
    }
    let after = rss_kib(pid);

    // Each message with a usable job id got a failed result; each invalid one is a dead
    // letter with a reason; together they account for every message.
    for id in expected_results.keys() {
        let r = results
            .get(id)
            .unwrap_or_else(|| panic!("no result for {id}; log:\n{}", worker.output()));
        assert_eq!(r["status"], "failed", "{id}: {r}");
        assert!(r["error"]["code"].is_string() && r["error"]["hint"].is_string());
    }
    assert!(dead_letters.iter().all(|d| d
        .headers
        .get("x-dtrust-error")
        .is_some_and(|r| !r.is_empty())));
    let failed_by_dtrust_rules: usize = results
        .values()
        .filter(|r| r["error"]["code"] != "INVALID_JOB" && r["job_id"] != "warm")
        .count();
    assert_eq!(
        dead_letters.len() + failed_by_dtrust_rules,
        messages.len(),
        "every message is a dead letter or a job failed by the rules ({} dead letters, {} failed jobs)",
        dead_letters.len(),
        failed_by_dtrust_rules
    );
    assert!(worker.running(), "the worker stays up");
    assert!(!worker.output().contains("panicked"));
    println!("hostile figures: messages {}, results {}, dead letters {}, RSS before {before} KiB, after {after} KiB", messages.len(), results.len() - 1, dead_letters.len());
    assert!(
        after < before + 64 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    assert_eq!(
        sim.orders().len(),
        1,
        "no hostile message reached D-Trust as an order"
    );
}

fn worker_pid(worker: &WorkerProcess) -> u32 {
    worker.pid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_line_even_at_trace() {
    let proxy = ConnectProxy::start(Some(("svc-proxy", "Proxy-Pw-Secret-77"))).await;
    let prefix = unique_prefix("secrets");
    let pki = BundleBuilder::new("https://placeholder/");
    let sim = Sim::start(SimConfig::default_catalogue(), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.zip");
    let builder = pki
        .set("url", &sim.url())
        .set("proxyHost", "127.0.0.1")
        .set("proxyPort", &proxy.addr().port().to_string())
        .set("proxyUser", "svc-proxy")
        .set("proxyPassword", "Proxy-Pw-Secret-77");
    builder.write(&bundle);
    let mut bus = JobBus::start(&prefix).await;
    let args = [
        "--bundle",
        &bundle.display().to_string(),
        "--prefix",
        &prefix,
        "--store",
        &dir.path().join("store").display().to_string(),
        "--amqp-url",
        &amqp_url(),
        "--log-level",
        "trace",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut worker = WorkerProcess::start(
        &args,
        &[("RUST_LOG", "trace")],
        &dir.path().join("worker.log"),
    );

    let (_, pem, _) = csr("www.example.com", KeyKind::Rsa2048);
    bus.publish_job(&json!({"job_id": "s-p10", "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10", "csr_pem": pem,
                            "subject": {"cn": "www.example.com", "c": "DE"}, "revocation_password": "Job-Revocation-Secret-1"})).await;
    bus.publish_job(&json!({"job_id": "s-p12", "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
                            "subject": {"cn": "www.example.com", "c": "DE"}})).await;
    let results = bus.results_for(2, WAIT).await;
    let serial = results["s-p10"]["serial"]
        .as_str()
        .expect("issued")
        .to_string();
    bus.publish_job(&json!({"job_id": "s-rev", "kind": "revoke", "serial": serial, "revocation_password": "Job-Revocation-Secret-1"})).await;
    // An invalid job with a password, which is dead-lettered.
    bus.publish_job(&json!({"job_id": "s-bad", "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12", "csr_pem": "x",
                            "subject": {"cn": "x"}, "revocation_password": "Invalid-Job-Secret-2"})).await;
    let results = bus.results_for(4, WAIT).await;
    assert!(worker.terminate());

    let generated = results["s-p12"]["revocation_password"]
        .as_str()
        .expect("a generated password")
        .to_string();
    let p12_password = results["s-p12"]["pkcs12_password"]
        .as_str()
        .expect("a PKCS#12 password")
        .to_string();
    let p12 = results["s-p12"]["pkcs12_base64"]
        .as_str()
        .expect("a PKCS#12")
        .to_string();
    let log = worker.output();
    assert!(
        log.lines().count() > 200,
        "a trace log of the run ({} lines)",
        log.lines().count()
    );
    let secrets = [
        ("keystore password", P12_PASSWORD.to_string()),
        ("proxy password", "Proxy-Pw-Secret-77".to_string()),
        (
            "proxy credentials (Basic)",
            "c3ZjLXByb3h5OlByb3h5LVB3LVNlY3JldC03Nw".to_string(),
        ),
        (
            "job revocation password",
            "Job-Revocation-Secret-1".to_string(),
        ),
        ("invalid job's password", "Invalid-Job-Secret-2".to_string()),
        (
            "revocation password secret",
            dtrust_testkit::bundle::REVOCATION_SECRET.to_string(),
        ),
        ("generated revocation password", generated),
        ("PKCS#12 password", p12_password),
        ("PKCS#12", p12[..40].to_string()),
        ("private key", "PRIVATE KEY".to_string()),
        ("client key", base64_prefix(&builder.client.key_der)),
    ];
    for (what, secret) in &secrets {
        let hit = log.lines().find(|l| l.contains(secret.as_str()));
        assert!(
            hit.is_none(),
            "the {what} appears in a log line: {}",
            hit.unwrap_or_default()
        );
    }
    assert!(proxy.tunnels() >= 1, "the run went through the proxy");
}

fn base64_prefix(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    b64[20..60].to_string()
}
