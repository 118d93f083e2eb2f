//! Key archival end to end: the real worker process, the shared RabbitMQ, the D-Trust
//! simulator and the Certificate Manager simulator. The CM makes the key pair, D-Trust
//! certifies it, the CM imports the certificate over its dummy; every step once, also
//! when the worker is killed between steps.

use std::collections::BTreeSet;
use std::time::Duration;

use dtrust_testkit::broker::{amqp_url, unique_prefix, JobBus};
use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::cm::{CmBehaviour, CmSim};
use dtrust_testkit::process::WorkerProcess;
use dtrust_testkit::sim::{Sim, SimConfig};
use dtrust_worker::job::schema::Schemas;
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, X509Certificate};

const WAIT: Duration = Duration::from_secs(90);

struct World {
    sim: Sim,
    cm: CmSim,
    bus: JobBus,
    worker: WorkerProcess,
    _dir: tempfile::TempDir,
}

/// Key backup on for every product; the CM gets 2048-bit keys (faster in tests).
fn key_backup(b: BundleBuilder) -> BundleBuilder {
    b.set("keyArchive", "Key archive")
        .set("caTokenProcedureImportCert", "TP import cert")
        .set("tokenProcedure.SSL-Basic", "TP SSL PKCS10")
        .set("tokenProcedure.SSL-OV", "TP OV PKCS10")
        .set("tokenProcedure.Personal-Sig", "TP Sig PKCS10")
}

async fn world(
    test: &str,
    behaviour: CmBehaviour,
    timeout_secs: u64,
    adjust: impl FnOnce(BundleBuilder) -> BundleBuilder,
) -> World {
    let prefix = unique_prefix(test);
    let mut config = SimConfig::default_catalogue();
    if let Some(p) = config.product_mut("SSL-Basic") {
        p.key_sizes = vec![2048];
    }
    let pki = BundleBuilder::new("https://placeholder/");
    let sim = Sim::start(config, &pki).await;
    let builder = adjust(
        pki.set("url", &sim.url())
            .set("keyArchive.timeout", &timeout_secs.to_string()),
    );
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.zip");
    builder.write(&bundle);
    let bus = JobBus::start(&prefix).await;
    let cm = CmSim::start(&prefix, behaviour).await;
    let args = [
        "--bundle",
        &bundle.display().to_string(),
        "--prefix",
        &prefix,
        "--store",
        &dir.path().join("store").display().to_string(),
        "--amqp-url",
        &amqp_url(),
        "--retry-initial-ms",
        "50",
        "--retry-max-ms",
        "400",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = WorkerProcess::start(
        &args,
        &[("RUST_LOG", "info")],
        &dir.path().join("worker.log"),
    );
    World {
        sim,
        cm,
        bus,
        worker,
        _dir: dir,
    }
}

fn archive_job(job_id: &str) -> Value {
    json!({"job_id": job_id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10", "key_archive": true,
           "subject": {"cn": "vpn.example.com", "o": "Example GmbH", "c": "DE"}})
}

fn cert_spki(result: &Value) -> Vec<u8> {
    let pem = result["certificate_pem"].as_str().expect("certificate_pem");
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let (_, cert) = X509Certificate::from_der(&block.contents).expect("certificate");
    cert.public_key().raw.to_vec()
}

fn tail(w: &World) -> String {
    let log = w.worker.output();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn result_of(w: &mut World, job_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(r) = w.bus.by_job_id().get(job_id) {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result for {job_id}; worker log:\n{}",
            tail(w)
        );
        w.bus
            .results_for(w.bus.by_job_id().len() + 1, Duration::from_millis(200))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_flow_archives_the_key_and_imports_the_certificate() {
    let mut w = world("ka-full", CmBehaviour::Normal, 60, key_backup).await;
    w.bus.publish_job(&archive_job("ka-1")).await;
    let result = result_of(&mut w, "ka-1").await;
    Schemas::load().unwrap().check("result", &result).unwrap();
    assert_eq!(result["status"], "succeeded", "{result:#}");

    let archived = w.cm.archived("ka-1").expect("the CM archived a key");
    assert_eq!(
        cert_spki(&result),
        archived.key_public_spki_der,
        "D-Trust certified the archived key"
    );
    let imported = archived
        .imported_cert_der
        .expect("the CM imported the certificate");
    let (_, block) =
        x509_parser::pem::parse_x509_pem(result["certificate_pem"].as_str().unwrap().as_bytes())
            .unwrap();
    assert_eq!(imported, block.contents);
    assert_eq!(archived.archive, "Key archive");
    assert_eq!(archived.token_procedure, "TP SSL PKCS10");
    assert_eq!(
        archived.token_procedure_import.as_deref(),
        Some("TP import cert")
    );
    assert_eq!(
        archived.issuer_dn,
        w.sim.issuer_dn(),
        "the dummy's issuer is D-Trust's"
    );
    assert_eq!(archived.key_size, 2048);
    assert_eq!(archived.order_id.as_deref(), result["order_id"].as_str());
    assert_eq!((w.cm.keys_generated("ka-1"), w.cm.imports("ka-1")), (1, 1));
    assert_eq!(w.sim.orders().len(), 1);
    assert!(
        w.cm.errors().is_empty(),
        "the worker kept to the contract: {:?}",
        w.cm.errors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cm_error_fails_the_job_and_names_the_issued_certificate() {
    let mut w = world(
        "ka-error",
        CmBehaviour::fail_import("TOKEN_PROCEDURE_FAILED", "import procedure disabled"),
        60,
        key_backup,
    )
    .await;
    w.bus.publish_job(&archive_job("ka-err")).await;
    let result = result_of(&mut w, "ka-err").await;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["code"], "KEY_ARCHIVE_FAILED");
    assert_eq!(result["error"]["retryable"], false);
    let message = result["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("TOKEN_PROCEDURE_FAILED") && message.contains("import procedure disabled"),
        "{message}"
    );
    assert!(
        result["order_id"].is_string()
            && result["serial"].is_string()
            && result["certificate_pem"].is_string(),
        "{result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cm_times_out_at_either_step() {
    let mut w = world("ka-silent", CmBehaviour::SilentGenerate, 2, key_backup).await;
    w.bus.publish_job(&archive_job("ka-quiet-gen")).await;
    let result = result_of(&mut w, "ka-quiet-gen").await;
    assert_eq!(result["error"]["code"], "KEY_ARCHIVE_TIMEOUT", "{result:#}");
    assert!(result["error"]["message"]
        .as_str()
        .unwrap()
        .contains("generated"));
    assert_eq!(
        w.sim.orders().len(),
        0,
        "nothing was ordered without the CM's key"
    );

    w.cm.set_behaviour(CmBehaviour::SilentImport);
    w.bus.publish_job(&archive_job("ka-quiet-imp")).await;
    let result = result_of(&mut w, "ka-quiet-imp").await;
    assert_eq!(result["error"]["code"], "KEY_ARCHIVE_TIMEOUT", "{result:#}");
    assert!(
        result["certificate_pem"].is_string(),
        "the issued certificate is named: {result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_archive_jobs_are_checked_before_anything_is_sent() {
    // No key backup settings in the bundle.
    let mut w = world("ka-off", CmBehaviour::Normal, 60, |b| b).await;
    w.bus.publish_job(&archive_job("ka-off-1")).await;
    let result = result_of(&mut w, "ka-off-1").await;
    assert_eq!(
        result["error"]["code"], "KEY_ARCHIVE_NOT_CONFIGURED",
        "{result:#}"
    );
    assert!(result["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("keyArchive"));

    // With a CSR: invalid by the contract.
    let mut with_csr = archive_job("ka-csr");
    with_csr["csr_pem"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    w.bus.publish_job(&with_csr).await;
    let result = result_of(&mut w, "ka-csr").await;
    assert_eq!(result["error"]["code"], "INVALID_JOB", "{result:#}");
    assert!(w.cm.requests().is_empty(), "nothing went to the CM");
    assert_eq!(w.sim.orders().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_each_pair_of_steps_every_step_happens_once() {
    let mut w = world("ka-kill", CmBehaviour::Normal.delayed(1500), 60, key_backup).await;
    w.bus.publish_job(&archive_job("ka-k")).await;
    // Killed while waiting for `generated`; the CM answers while the worker is down.
    assert!(
        w.cm.wait_until(WAIT, |s| s.keys_generated("ka-k") == 1)
            .await
    );
    w.worker.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    w.worker.restart();
    // Killed while waiting for `imported`.
    assert!(
        w.cm.wait_until(WAIT, |s| s.imports("ka-k") == 1).await,
        "{}",
        tail(&w)
    );
    w.worker.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    w.worker.restart();
    let result = result_of(&mut w, "ka-k").await;
    assert_eq!(result["status"], "succeeded", "{result:#}");
    assert_eq!(w.cm.keys_generated("ka-k"), 1, "one key pair");
    assert_eq!(w.cm.imports("ka-k"), 1, "one import");
    assert_eq!(w.sim.orders().len(), 1, "one order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_archived_and_plain_issuances() {
    let mut w = world("ka-batch", CmBehaviour::Normal, 60, key_backup).await;
    for i in 0..100 {
        let job = if i % 2 == 0 {
            archive_job(&format!("kb-{i:03}"))
        } else {
            json!({"job_id": format!("kb-{i:03}"), "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
                   "subject": {"cn": "www.example.com", "c": "DE"}})
        };
        w.bus.publish_job(&job).await;
    }
    let results = w.bus.results_for(100, Duration::from_secs(180)).await;
    assert_eq!(results.len(), 100, "worker log:\n{}", tail(&w));
    assert!(results.values().all(|r| r["status"] == "succeeded"));
    for i in (0..100).step_by(2) {
        let id = format!("kb-{i:03}");
        assert_eq!(
            (w.cm.keys_generated(&id), w.cm.imports(&id)),
            (1, 1),
            "{id}"
        );
        assert_eq!(
            cert_spki(&results[&id]),
            w.cm.archived(&id).unwrap().key_public_spki_der,
            "{id}"
        );
    }
    let references: BTreeSet<String> = w
        .sim
        .orders()
        .into_iter()
        .map(|o| o.client_reference)
        .collect();
    assert_eq!(references.len(), 100);
    assert_eq!(w.sim.orders().len(), 100);
}
