//! Chaos: a batch of issuances and revocations while the worker is SIGKILLed and
//! restarted at random moments, its broker connection is cut and restored, and the
//! D-Trust simulator answers 10 % 503, 5 % 429, drops 5 % of order responses after
//! storing the order, and adds random latency. Afterwards every promise is checked and
//! the figures are printed (and written to `target/chaos-figures.json`).
//!
//! Short in `make test` (300 jobs); `CHAOS_FULL=1` runs 2,000.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dtrust_testkit::broker::without_secrets;
use dtrust_testkit::broker::{broker_addr, unique_prefix, JobBus};
use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::process::WorkerProcess;
use dtrust_testkit::rng::Rng;
use dtrust_testkit::sim::{FaultKind, Faults, Sim, SimConfig};
use dtrust_testkit::tcp_proxy::TcpProxy;
use dtrust_worker::job::record::State;
use dtrust_worker::store::{SledStore, Store};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_once_under_kills_cuts_and_faults() {
    let full = std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1");
    let (issues, revokes) = if full { (1600, 400) } else { (240, 60) };
    let seed = 0x00c4_a05e;
    let mut rng = Rng(seed);

    let mut config = SimConfig::default_catalogue();
    config.reuse_pkcs12_keys = true;
    config.faults = Faults {
        seed,
        jitter_ms: 40,
        error_rate: 0.10,
        error_statuses: vec![503],
        rate_limit_rate: 0.05,
        drop_after_store_rate: 0.05,
        ..Faults::default()
    };
    let prefix = unique_prefix("chaos");
    let pki = BundleBuilder::new("https://placeholder/");
    let sim = Sim::start(config, &pki).await;
    let builder = pki
        .set("url", &sim.url())
        .set("requestTimeoutMs", "5000")
        .set("maxRequestsPerSecond", "1000");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.zip");
    builder.write(&bundle);
    let store = dir.path().join("store");
    let mut bus = JobBus::start(&prefix).await;
    let proxy = TcpProxy::start(broker_addr().await).await;
    let through = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let args = [
        "--bundle",
        &bundle.display().to_string(),
        "--prefix",
        &prefix,
        "--store",
        &store.display().to_string(),
        "--amqp-url",
        &through,
        "--issue-concurrency",
        "16",
        "--retry-initial-ms",
        "100",
        "--retry-max-ms",
        "1000",
        "--max-retries",
        "30",
        "--secrets-grace-secs",
        "15",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Certificates to revoke, known to D-Trust with their passwords.
    let mut jobs = Vec::new();
    for i in 0..revokes {
        let serial = format!("c4a05{i:05x}");
        sim.seed_certificate(&serial, "Chaos-revocation-pw-1");
        jobs.push(json!({"job_id": format!("ch-rev-{i:05}"), "kind": "revoke", "serial": serial, "revocation_password": "Chaos-revocation-pw-1"}));
    }
    for i in 0..issues {
        jobs.push(json!({"job_id": format!("ch-iss-{i:05}"), "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
                         "subject": {"cn": "www.example.com", "c": "DE"}}));
    }
    // Interleave the kinds.
    jobs.sort_by_key(|j| {
        j["job_id"]
            .as_str()
            .map(|s| s.chars().rev().collect::<String>())
            .unwrap_or_default()
    });
    let total = jobs.len();
    for job in &jobs {
        bus.publish_job(job).await;
    }

    // The backlog is queued before the worker starts, so the chaos spans its work.
    let log = dir.path().join("worker.log");
    let mut worker = WorkerProcess::start(&args, &[("RUST_LOG", "info")], &log);
    let (mut kills, mut cuts) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(if full { 900 } else { 240 });
    let mut round = 0u64;
    loop {
        let done = bus
            .results_for(total, Duration::from_millis(200 + rng.below(600)))
            .await
            .len();
        if done >= total || tokio::time::Instant::now() > deadline {
            break;
        }
        // Kill first, cut second, then at random.
        let action = if round < 2 { round } else { rng.below(3) };
        round += 1;
        match action {
            0 => {
                worker.kill();
                kills += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
                worker.restart();
            }
            1 => {
                proxy.cut();
                cuts += 1;
                tokio::time::sleep(Duration::from_millis(200 + rng.below(1200))).await;
                proxy.restore();
            }
            _ => {}
        }
    }
    // The chaos ends: no more faults, and every job gets its result (some may still be
    // waiting out a backoff or a takeover wait). Then results have to stop coming, so
    // that repeated ones are counted too.
    sim.set_faults(Faults::default());
    bus.results_for(total, Duration::from_secs(180)).await;
    loop {
        let before = bus.all.len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        bus.drain();
        if bus.all.len() == before {
            break;
        }
    }
    assert!(worker.terminate(), "clean exit at the end");
    // Every job has exactly one terminal outcome; repeats carry the same content.
    let mut by_job: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in &bus.all {
        if let Some(id) = r.body["job_id"].as_str() {
            by_job
                .entry(id.to_string())
                .or_default()
                .push(r.body.clone());
        }
    }
    let lost: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .filter(|id| !by_job.contains_key(*id))
        .collect();
    let mut repeats = 0;
    let mut identical_repeats = 0;
    for (id, results) in &by_job {
        for other in &results[1..] {
            repeats += 1;
            if other == &results[0] {
                identical_repeats += 1;
            } else {
                assert_eq!(
                    without_secrets(other),
                    without_secrets(&results[0]),
                    "{id}: repeated results differ"
                );
            }
        }
    }
    let failed: Vec<(&String, &Value)> = by_job
        .iter()
        .filter(|(_, r)| r[0]["status"] != "succeeded")
        .map(|(id, r)| (id, &r[0]))
        .collect();

    // No client reference ordered twice; every revocation reached D-Trust once.
    let orders = sim.orders();
    let references: BTreeSet<&str> = orders.iter().map(|o| o.client_reference.as_str()).collect();
    let double_orders = orders.len() - references.len();
    let revocations = sim.revocations();
    let revoked: BTreeSet<String> = revocations
        .iter()
        .map(|r| r.serial.to_ascii_lowercase())
        .collect();

    // No secret left in the store for a delivered job. A delivered record keeps its
    // secrets for the grace period (15 s here), which starts when its delivery is acked
    // and ends at the record's `next_at`; the worker removes them then. So the store is
    // read with the worker stopped, and while some record is still within its grace
    // period, the worker runs again until every grace period is over.
    let store_path = store;
    let mut grace_rounds = 0;
    let (delivered, unfinished) = loop {
        let store = SledStore::open(&store_path).expect("the store opens after the worker stopped");
        let delivered = store.by_state(State::Delivered, usize::MAX).unwrap();
        let unfinished = total - delivered.len();
        let grace_ends = delivered
            .iter()
            .filter(|r| r.holds_secrets())
            .filter_map(|r| r.next_at)
            .max();
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
        let waiting = grace_ends.filter(|at| *at > now);
        if grace_rounds == 3 || (waiting.is_none() && unfinished == 0) {
            break (delivered, unfinished);
        }
        drop(store);
        grace_rounds += 1;
        let wait_ms = waiting.map_or(5_000, |at| at - now + 3_000);
        worker.restart();
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
        assert!(worker.terminate(), "clean exit after the grace period");
    };
    let with_secrets = delivered.iter().filter(|r| r.holds_secrets()).count();
    for r in delivered.iter().filter(|r| r.holds_secrets()) {
        eprintln!(
            "delivered with secrets: {} updated_at {} next_at {:?} finished_at {:?}",
            r.job_id, r.updated_at, r.next_at, r.finished_at,
        );
    }
    // No panic in any log.
    let output = worker.output();
    let panics = output.matches("panicked").count();

    let stats = sim.stats();
    let figures = json!({
        "jobs": total, "issuances": issues, "revocations": revokes,
        "kills": kills, "connection_cuts": cuts,
        "faults": {
            "503": stats.faults_of(FaultKind::Error503),
            "429": stats.faults_of(FaultKind::RateLimited),
            "dropped_after_store": stats.faults_of(FaultKind::DropAfterStore),
            "latency": stats.faults_of(FaultKind::Latency),
        },
        "lost": lost.len(), "failed": failed.len(),
        "duplicate_orders": double_orders, "orders": orders.len(),
        "repeated_results": repeats, "identical_repeats": identical_repeats,
        "revoked_certificates": revoked.len(),
        "panics": panics, "delivered_records_with_secrets": with_secrets,
        "restarts_to_end_grace_periods": grace_rounds,
    });
    println!("chaos figures: {figures}");
    let target = dtrust_testkit::process::workspace_root().join("target");
    let _ = std::fs::create_dir_all(&target);
    let _ = std::fs::write(
        target.join("chaos-figures.json"),
        serde_json::to_string_pretty(&figures).unwrap_or_default(),
    );

    assert!(
        lost.is_empty(),
        "{} jobs without a result: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        failed.is_empty(),
        "failed jobs: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(double_orders, 0, "a client reference was ordered twice");
    assert_eq!(orders.len(), issues);
    assert_eq!(revoked.len(), revokes, "every revocation reached D-Trust");
    assert!(revocations.iter().all(|r| !r.revoked_at.is_empty()));
    assert_eq!(panics, 0, "a panic in the worker's log");
    assert_eq!(with_secrets, 0, "delivered records still hold secrets");
    assert_eq!(unfinished, 0, "every job's record is delivered");
}
