//! Several workers on one prefix (contract, "Several workers"): three real
//! `dtrust-worker run` processes, each with its own store, consume the same lanes of
//! the shared RabbitMQ; every job is published three times back to back, so that its
//! copies reach different workers at the same moment (the broker hands consecutive
//! messages to consumers in turn). The per-job lease, the lookup before every order
//! and the derived revocation passwords must keep "one job, one D-Trust order, the
//! same result for every copy". A run without the lease (a test-only switch) shows the
//! duplicate orders, so the test is known to catch the race.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dtrust_testkit::broker::{amqp_url, unique_prefix, JobBus, Received};
use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::cm::{CmBehaviour, CmSim};
use dtrust_testkit::pki::{csr, KeyKind};
use dtrust_testkit::process::WorkerProcess;
use dtrust_testkit::sim::{Faults, Sim, SimConfig};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);
const JOBS: usize = 300;
const COPIES: usize = 3;

struct Fleet {
    sim: Sim,
    bus: JobBus,
    workers: Vec<WorkerProcess>,
    _dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_LOGS").is_some() {
            let keep = std::path::PathBuf::from("/tmp/kept-logs").join(&self.bus.names.prefix);
            let keep = keep.as_path();
            let _ = std::fs::create_dir_all(keep);
            for (i, w) in self.workers.iter().enumerate() {
                let _ = std::fs::write(keep.join(format!("worker-{i}.log")), w.output());
            }
        }
    }
}

impl Fleet {
    /// The simulator (300 ms per request), and `count` workers on one prefix.
    async fn start(test: &str, count: usize, extra: &[&str]) -> Fleet {
        let mut config = SimConfig::default_catalogue();
        config.faults = Faults {
            latency_ms: 300,
            ..Faults::default()
        };
        Fleet::start_with(&unique_prefix(test), count, extra, config, |b| b).await
    }

    /// `count` workers on `prefix`, with the simulator as `config` says and the bundle
    /// adjusted.
    async fn start_with(
        prefix: &str,
        count: usize,
        extra: &[&str],
        config: SimConfig,
        adjust: impl FnOnce(BundleBuilder) -> BundleBuilder,
    ) -> Fleet {
        let prefix = prefix.to_string();
        let pki = BundleBuilder::new("https://placeholder/");
        let sim = Sim::start(config, &pki).await;
        let dir = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("KEEP_LOGS").is_some() {
            eprintln!("logs in {}", dir.path().display());
        }
        let bundle = dir.path().join("bundle.zip");
        // A worker that dies with a request in flight is taken over after 10 s (the
        // simulator, on this test's busy cores, takes seconds for some orders: a
        // shorter timeout gives up on orders that it still takes).
        adjust(pki.set("url", &sim.url()).set("requestTimeoutMs", "10000")).write(&bundle);
        let bus = JobBus::start(&prefix).await;
        let workers = (0..count)
            .map(|i| {
                let store = dir.path().join(format!("store-{i}"));
                let mut args: Vec<String> = [
                    "--bundle",
                    &bundle.display().to_string(),
                    "--prefix",
                    &prefix,
                    "--store",
                    &store.display().to_string(),
                    "--amqp-url",
                    &amqp_url(),
                    "--issue-concurrency",
                    "16",
                    "--retry-initial-ms",
                    "50",
                    "--retry-max-ms",
                    "400",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(extra.iter().map(|s| s.to_string()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let log: PathBuf = dir.path().join(format!("worker-{i}.log"));
                let level = std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into());
                WorkerProcess::start(&args, &[("RUST_LOG", level.as_str())], &log)
            })
            .collect();
        let fleet = Fleet {
            sim,
            bus,
            workers,
            _dir: dir,
        };
        fleet.wait_until_consuming(count).await;
        fleet
    }

    /// Waits until every worker says it consumes, so that the copies are spread.
    async fn wait_until_consuming(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let consuming = self
                .workers
                .iter()
                .filter(|w| w.output().contains("topology declared, consuming"))
                .count();
            if consuming == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{consuming} of {count} workers consume"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes every job `COPIES` times back to back.
    async fn publish(&self, jobs: &[Value]) {
        for job in jobs {
            for _ in 0..COPIES {
                self.bus.publish_job(job).await;
            }
        }
    }

    /// Waits until every result of `expected` deliveries has come, or `WAIT` passed.
    async fn collect(&mut self, ids: &BTreeSet<String>, expected: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.bus.drain();
            let done = self.results_by_job();
            let all_in = ids.iter().all(|id| done.contains_key(id));
            if all_in && self.bus.all.len() >= expected {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!(
                    "gave up waiting: {} of {} jobs answered, {} of {expected} results",
                    done.len(),
                    ids.len(),
                    self.bus.all.len()
                );
                return;
            }
        }
    }

    /// Every result message, by job id, in arrival order.
    fn results_by_job(&self) -> BTreeMap<String, Vec<&Received>> {
        let mut by_job: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
        for r in &self.bus.all {
            if let Some(id) = r.body["job_id"].as_str() {
                by_job.entry(id.to_string()).or_default().push(r);
            }
        }
        by_job
    }

    /// Orders per client reference at the simulator.
    fn orders_per_reference(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for order in self.sim.orders() {
            *counts.entry(order.client_reference).or_insert(0) += 1;
        }
        counts
    }

    fn logs(&self) -> String {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| format!("--- worker {i} ---\n{}", tail(&w.output())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How many times the workers' logs say a job was put off for its lease.
    fn put_off(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.output().matches("job put off").count())
            .sum()
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// One third PKCS#12 (D-Trust makes the key and its keystore password), two thirds
/// PKCS#10; none brings a revocation password, so the workers generate them.
fn jobs(tag: &str) -> Vec<Value> {
    (0..JOBS)
        .map(|i| {
            let id = format!("{tag}-{i:03}");
            let cn = format!("host{i}.example.com");
            if i % 3 != 0 {
                let (_, pem, _) = csr(&cn, KeyKind::Rsa2048);
                json!({
                    "job_id": id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10",
                    "csr_pem": pem, "subject": {"cn": cn, "c": "DE"}, "metadata": {"n": i}
                })
            } else {
                json!({
                    "job_id": id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
                    "subject": {"cn": cn, "c": "DE"}, "metadata": {"n": i}
                })
            }
        })
        .collect()
}

/// The job ids of `jobs`.
fn ids_of(jobs: &[Value]) -> BTreeSet<String> {
    jobs.iter()
        .filter_map(|j| j["job_id"].as_str().map(str::to_string))
        .collect()
}

/// A result without what describes the answering worker's own work (`attempts`: its
/// D-Trust calls; `finished_at`: when it finished): what every copy must agree on.
fn outcome(result: &Value) -> Value {
    let mut outcome = result.clone();
    if let Some(map) = outcome.as_object_mut() {
        map.remove("attempts");
        map.remove("finished_at");
    }
    outcome
}

/// Checks the promise for `ids`; returns (result messages, repeats whose bytes differ
/// only in attempts/finished_at).
fn check_every_job_once(fleet: &Fleet, ids: &BTreeSet<String>) -> (usize, usize) {
    let by_job = fleet.results_by_job();
    let logs = fleet.logs();
    let mut messages = 0;
    let mut differing_bookkeeping = 0;
    for id in ids {
        let results = by_job
            .get(id)
            .unwrap_or_else(|| panic!("no result for {id}\n{logs}"));
        messages += results.len();
        let first = &results[0].body;
        assert_eq!(first["status"], "succeeded", "{id}: {first:#}");
        assert!(
            first["revocation_password"].as_str().is_some(),
            "{id}: a generated revocation password is returned: {first:#}"
        );
        for other in &results[1..] {
            let (a, b) = (outcome(&other.body), outcome(first));
            assert!(
                a == b,
                "{id}: every copy's result carries the same outcome: order {} serial {} vs order {} serial {}",
                a["order_id"], a["serial"], b["order_id"], b["serial"]
            );
            if other.body != *first {
                differing_bookkeeping += 1;
            }
        }
    }
    let orders = fleet.orders_per_reference();
    let doubled: Vec<(&String, &usize)> = orders.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "ordered more than once: {doubled:?}");
    assert_eq!(orders.len(), ids.len(), "one order per job");
    (messages, differing_bookkeeping)
}

/// Revokes a few of the issued certificates with the passwords the results returned.
async fn revoke_some(fleet: &mut Fleet, ids: &BTreeSet<String>) {
    let by_job: BTreeMap<String, Value> = fleet.bus.by_job_id();
    let chosen: Vec<&String> = ids.iter().step_by(30).collect();
    for id in &chosen {
        let issued = &by_job[id.as_str()];
        fleet
            .bus
            .publish_job(&json!({
                "job_id": format!("rv-{id}"), "kind": "revoke",
                "serial": issued["serial"], "revocation_password": issued["revocation_password"],
                "reason": "superseded"
            }))
            .await;
    }
    let want = fleet.bus.by_job_id().len() + chosen.len();
    let results = fleet.bus.results_for(want, WAIT).await;
    for id in &chosen {
        let revoked = &results[&format!("rv-{id}")];
        assert_eq!(
            revoked["status"], "succeeded",
            "the returned password revokes {id}: {revoked:#}"
        );
        assert!(
            revoked["warnings"].is_null(),
            "revoked by this job, not before: {revoked:#}"
        );
    }
    let revoked = fleet.sim.revocations();
    assert!(revoked.len() >= chosen.len(), "{revoked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_three_copies_of_every_job_one_order_each() {
    let mut fleet = Fleet::start("three", 3, &[]).await;
    let jobs = jobs("w3");
    let ids = ids_of(&jobs);
    let started = Instant::now();
    fleet.publish(&jobs).await;
    fleet.collect(&ids, JOBS * COPIES).await;
    let took = started.elapsed();
    let (messages, differing) = check_every_job_once(&fleet, &ids);
    let short: Vec<(String, usize)> = fleet
        .results_by_job()
        .into_iter()
        .filter(|(_, r)| r.len() != COPIES)
        .map(|(id, r)| (id, r.len()))
        .collect();
    assert_eq!(short, [], "jobs without a result for every copy");
    assert_eq!(
        messages,
        JOBS * COPIES,
        "every copy answered\n{}",
        fleet.logs()
    );
    let put_off = fleet.put_off();
    assert!(
        put_off > 0,
        "copies met a lease held by another worker at least once\n{}",
        fleet.logs()
    );
    revoke_some(&mut fleet, &ids).await;
    eprintln!(
        "three workers: {JOBS} jobs x {COPIES} copies, {messages} results ({differing} differing only in attempts/finished_at), {} orders, {put_off} steps put off for a lease, {:.1}s",
        fleet.sim.orders().len(),
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_mid_batch_and_restarted_still_one_order_each() {
    let mut fleet = Fleet::start("three-kill", 3, &[]).await;
    let jobs = jobs("wk");
    let ids = ids_of(&jobs);
    let started = Instant::now();
    fleet.publish(&jobs).await;
    fleet.bus.results_for(JOBS / 3, WAIT).await;
    let done_at_kill = fleet.bus.by_job_id().len();
    fleet.workers[1].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.workers[1].restart();
    fleet.collect(&ids, JOBS * COPIES).await;
    let took = started.elapsed();
    let (messages, _) = check_every_job_once(&fleet, &ids);
    // Every copy that was acked before the kill, or delivered after, has its result; a
    // copy in the killed worker's hands came back to the queue and was answered too.
    assert!(
        messages >= JOBS * COPIES,
        "{messages} results for {} copies\n{}",
        JOBS * COPIES,
        fleet.logs()
    );
    revoke_some(&mut fleet, &ids).await;
    eprintln!(
        "three workers, one killed after {done_at_kill} jobs: {messages} results, {} orders, {:.1}s",
        fleet.sim.orders().len(),
        took.as_secs_f64()
    );
}

/// The same race without the lease: copies that reach two workers at once are both
/// ordered (each worker's lookup finds nothing yet), so the check above would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lease_the_same_copies_are_ordered_twice() {
    let mut fleet = Fleet::start("no-lease", 3, &["--no-lease"]).await;
    let jobs: Vec<Value> = jobs("nl").into_iter().take(60).collect();
    let ids = ids_of(&jobs);
    fleet.publish(&jobs).await;
    fleet.collect(&ids, jobs.len() * COPIES).await;
    let orders = fleet.orders_per_reference();
    let doubled = orders.values().filter(|n| **n > 1).count();
    let extra: usize = orders.values().map(|n| n - 1).sum();
    eprintln!(
        "without the lease: {} jobs, {} orders, {doubled} jobs ordered more than once",
        jobs.len(),
        orders.values().sum::<usize>()
    );
    assert!(
        doubled > 0 && extra > 0,
        "without the lease, copies at two workers at once are ordered twice: {orders:?}"
    );
}

/// Key archival with three workers: the Certificate Manager's replies come on the
/// shared replies queue, to whichever worker; those that reach a worker without the job
/// are forwarded into the job's lease, where its worker takes them. Every job: one key
/// pair, one order, one import, the same result for every copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_key_archival_every_reply_reaches_the_job_s_worker() {
    let prefix = unique_prefix("three-archive");
    let mut config = SimConfig::default_catalogue();
    if let Some(p) = config.product_mut("SSL-Basic") {
        p.key_sizes = vec![2048];
    }
    let cm = CmSim::start(&prefix, CmBehaviour::default()).await;
    let mut fleet = Fleet::start_with(&prefix, 3, &[], config, |b| {
        b.set("keyArchive", "Key archive")
            .set("caTokenProcedureImportCert", "TP import cert")
            .set("tokenProcedure.SSL-Basic", "TP SSL PKCS10")
            .set("tokenProcedure.SSL-OV", "TP OV PKCS10")
            .set("tokenProcedure.Personal-Sig", "TP Sig PKCS10")
    })
    .await;
    let jobs: Vec<Value> = (0..30)
        .map(|i| {
            json!({"job_id": format!("ka-{i:02}"), "kind": "issue", "product": "SSL-Basic",
                   "request_type": "pkcs10", "key_archive": true,
                   "subject": {"cn": format!("vpn{i}.example.com"), "o": "Example GmbH", "c": "DE"}})
        })
        .collect();
    let ids = ids_of(&jobs);
    fleet.publish(&jobs).await;
    fleet.collect(&ids, jobs.len() * COPIES).await;
    let (messages, _) = check_every_job_once(&fleet, &ids);
    assert_eq!(messages, jobs.len() * COPIES, "{}", fleet.logs());
    for id in &ids {
        assert_eq!(cm.keys_generated(id), 1, "{id}: one key pair");
        assert_eq!(cm.imports(id), 1, "{id}: one import");
        assert!(cm.archived(id).is_some(), "{id} archived");
    }
    let forwarded: usize = fleet
        .workers
        .iter()
        .map(|w| w.output().matches("forwarded to its lease").count())
        .sum();
    eprintln!(
        "key archival, three workers: {} jobs x {COPIES} copies, {messages} results, {} orders, {forwarded} replies forwarded to the job's worker",
        jobs.len(),
        fleet.sim.orders().len()
    );
    assert!(forwarded > 0, "some replies reached another worker first");
    cm.shutdown().await;
}
