//! `dtrust-worker submit` end to end, as operators run it: the real binary publishes a
//! batch file to the shared RabbitMQ (a prefix of its own per test), the real
//! `dtrust-worker run` process works the jobs against the D-Trust simulator, and the
//! results come back into the `--out` file. The simulator's books show that no job was
//! ordered twice, also across a resumed run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use dtrust_testkit::broker::{amqp_url, unique_prefix, JobBus};
use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::pki::{csr, KeyKind};
use dtrust_testkit::process::{run_worker, text, WorkerProcess};
use dtrust_testkit::sim::{Endpoint, Faults, Sim, SimConfig};
use dtrust_worker::job::schema::Schemas;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

struct World {
    sim: Sim,
    bus: JobBus,
    worker: WorkerProcess,
    dir: tempfile::TempDir,
    prefix: String,
}

impl World {
    async fn start(test: &str, config: SimConfig, extra: &[&str]) -> World {
        let prefix = unique_prefix(test);
        let pki = BundleBuilder::new("https://placeholder/");
        let sim = Sim::start(config, &pki).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = dir.path().join("bundle.zip");
        // A worker killed with an order in flight looks it up only once that request
        // has timed out (plus 10 s) after a restart: keep that short for the tests.
        pki.set("url", &sim.url())
            .set("requestTimeoutMs", "3000")
            .write(&bundle);
        // Declares the topology (as the worker does) and collects every result too.
        let bus = JobBus::start(&prefix).await;
        let store = dir.path().join("store");
        let mut args: Vec<String> = [
            "--bundle",
            &bundle.display().to_string(),
            "--prefix",
            &prefix,
            "--store",
            &store.display().to_string(),
            "--amqp-url",
            &amqp_url(),
            "--retry-initial-ms",
            "50",
            "--retry-max-ms",
            "400",
            "--poll-interval-secs",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let worker = WorkerProcess::start(
            &args,
            &[("RUST_LOG", "info")],
            &dir.path().join("worker.log"),
        );
        World {
            sim,
            bus,
            worker,
            dir,
            prefix,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `dtrust-worker submit ARGS --prefix P --amqp-url URL`, off the async threads.
    fn start_submit(&self, args: &[&str]) -> tokio::task::JoinHandle<Output> {
        let mut all: Vec<String> = vec!["submit".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend([
            "--prefix".into(),
            self.prefix.clone(),
            "--amqp-url".into(),
            amqp_url(),
        ]);
        tokio::task::spawn_blocking(move || {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run_worker(&all, &[])
        })
    }

    async fn submit(&self, args: &[&str]) -> Output {
        self.start_submit(args).await.expect("submit ran")
    }

    /// No job was ordered twice at the simulator; how many were ordered.
    fn orders_once_each(&self) -> usize {
        let orders = self.sim.orders();
        let mut seen = BTreeSet::new();
        for order in &orders {
            assert!(
                seen.insert(order.client_reference.clone()),
                "reference {} ordered twice",
                order.client_reference
            );
        }
        orders.len()
    }
}

fn pkcs10(job_id: &str, cn: &str) -> Value {
    let (_, pem, _) = csr(cn, KeyKind::Rsa2048);
    json!({"job_id": job_id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs10",
           "csr_pem": pem, "subject": {"cn": cn, "c": "DE"}, "san": {"dns": [cn]},
           "metadata": {"ticket": format!("T-{job_id}")}})
}

fn pkcs12(job_id: &str, cn: &str) -> Value {
    json!({"job_id": job_id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
           "subject": {"cn": cn, "c": "DE"}})
}

fn write_ndjson(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write batch");
}

/// The results file: one JSON result per line, by job id (every line must parse, and
/// no job id may appear twice).
fn results_file(path: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_id = BTreeMap::new();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).expect("every line is JSON");
        let id = value["job_id"].as_str().expect("job_id").to_string();
        assert!(
            by_id.insert(id.clone(), value).is_none(),
            "{id} twice in the results file"
        );
    }
    by_id
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_batch_with_malformed_lines_is_submitted_and_counted() {
    let w = World::start("submit-ndjson", SimConfig::default_catalogue(), &[]).await;
    let mut lines: Vec<String> = Vec::new();
    let mut valid = BTreeSet::new();
    for i in 0..20 {
        let id = format!("nd-{i:02}");
        let job = match i {
            0..=7 => pkcs10(&id, &format!("www{i}.example.com")),
            8 => {
                let mut job = pkcs12(&id, "pw.example.com");
                job["revocation_password"] = json!("Given-Secret-pw-8");
                job
            }
            // D-Trust's rules refuse a CN holding `CN=`.
            9 => pkcs12(&id, "CN=www.example.com"),
            _ => pkcs12(&id, &format!("app{i}.example.com")),
        };
        valid.insert(id);
        lines.push(job.to_string());
        if i == 2 {
            lines.push("{\"job_id\": \"broken\", \"kind\": ".into()); // line 4
        }
        if i == 12 {
            // line 15: a PKCS#12 job must not carry a CSR; its password must not be shown.
            let mut bad = pkcs12("nd-bad", "bad.example.com");
            bad["csr_pem"] = json!(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            );
            bad["revocation_password"] = json!("Malformed-Secret-77");
            lines.push(bad.to_string());
        }
    }
    let batch = w.path("jobs.ndjson");
    write_ndjson(&batch, &lines);
    let out = w.path("results.ndjson");
    let run = w
        .submit(&[
            "--file",
            &batch.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--timeout-secs",
            "60",
        ])
        .await;
    let shown = text(&run);
    let context = format!("{shown}\nworker log:\n{}", tail(&w.worker.output()));
    assert_eq!(
        run.status.code(),
        Some(1),
        "malformed lines: exit 1\n{context}"
    );
    assert!(shown.contains("line 4: skipped: "), "{context}");
    assert!(
        shown.contains("line 15: skipped: ") && shown.contains("does not fit the contract"),
        "{context}"
    );
    assert!(
        shown.contains("submitted 20 (skipped 0 already done, 2 malformed lines: 4, 15)"),
        "{context}"
    );
    assert!(
        shown.contains("finished 20: succeeded 19, failed 1"),
        "{context}"
    );
    assert!(shown.contains("  GENERIC_RDN_REGEXERROR  1"), "{context}");
    assert!(
        shown.contains(&format!("results in {}", out.display())),
        "{context}"
    );

    let results = results_file(&out);
    assert_eq!(
        results.keys().cloned().collect::<BTreeSet<_>>(),
        valid,
        "one result per valid job"
    );
    let schemas = Schemas::load().expect("schemas");
    for (id, result) in &results {
        if let Err(errors) = schemas.check("result", result) {
            panic!("{id}: result does not fit the contract: {errors:?}");
        }
    }
    assert_eq!(results["nd-09"]["status"], "failed");
    assert_eq!(results["nd-09"]["error"]["code"], "GENERIC_RDN_REGEXERROR");
    assert_eq!(results["nd-00"]["metadata"], json!({"ticket": "T-nd-00"}));
    assert!(results["nd-00"]["certificate_pem"]
        .as_str()
        .is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
    assert!(results["nd-10"]["pkcs12_base64"].as_str().is_some());

    // No secret reaches the terminal: neither a malformed line's, nor a given one, nor
    // what came back.
    assert!(!shown.contains("Malformed-Secret-77"), "{shown}");
    assert!(!shown.contains("Given-Secret-pw-8"), "{shown}");
    for result in results.values() {
        for field in ["revocation_password", "pkcs12_password"] {
            if let Some(secret) = result[field].as_str() {
                assert!(!shown.contains(secret), "{field} printed");
            }
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "results file readable by its owner only");
    }
    assert_eq!(w.orders_once_each(), 19, "the refused job costs no order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_batch_with_csr_files_and_metadata_succeeds() {
    let w = World::start("submit-csv", SimConfig::default_catalogue(), &[]).await;
    let csrs = w.path("csrs");
    std::fs::create_dir(&csrs).unwrap();
    let mut rows = vec![
        "job_id,kind,product,request_type,csr_file,cn,c,san_dns,metadata.ticket,metadata.batch"
            .to_string(),
    ];
    for i in 1..=4 {
        let cn = format!("web{i}.example.com");
        let (_, pem, _) = csr(&cn, KeyKind::Rsa2048);
        std::fs::write(csrs.join(format!("web{i}.csr")), pem).unwrap();
        rows.push(format!(
            "csv-p10-{i},issue,SSL-Basic,PKCS10,csrs/web{i}.csr,{cn},DE,{cn};alt{i}.example.com,T-{i},csv"
        ));
    }
    rows.push(String::new()); // an empty line is ignored
    for i in 1..=2 {
        rows.push(format!(
            "csv-p12-{i},issue,SSL-Basic,pkcs12,,\"app{i}.example.com\",DE,,T-p12-{i},csv"
        ));
    }
    let batch = w.path("batch.csv");
    std::fs::write(&batch, rows.join("\r\n") + "\r\n").unwrap();
    let out = w.path("csv-results.ndjson");
    let run = w
        .submit(&[
            "--file",
            &batch.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--timeout-secs",
            "60",
        ])
        .await;
    let shown = text(&run);
    let context = format!("{shown}\nworker log:\n{}", tail(&w.worker.output()));
    assert_eq!(run.status.code(), Some(0), "{context}");
    assert!(
        shown.contains("submitted 6 (skipped 0 already done, 0 malformed lines)"),
        "{context}"
    );
    assert!(
        shown.contains("finished 6: succeeded 6, failed 0"),
        "{context}"
    );
    let results = results_file(&out);
    assert_eq!(results.len(), 6, "{results:#?}");
    for i in 1..=4 {
        let r = &results[&format!("csv-p10-{i}")];
        assert_eq!(r["status"], "succeeded", "{r:#}");
        assert_eq!(
            r["metadata"],
            json!({"ticket": format!("T-{i}"), "batch": "csv"})
        );
    }
    for i in 1..=2 {
        let r = &results[&format!("csv-p12-{i}")];
        assert_eq!(r["status"], "succeeded", "{r:#}");
        assert!(r["pkcs12_base64"].as_str().is_some());
    }
    // The simulator got the CSRs from the files and the SANs from the `;` lists.
    let orders = w.sim.orders();
    assert_eq!(orders.len(), 6);
    assert!(orders
        .iter()
        .any(|o| o.subject_cn.as_deref() == Some("web3.example.com")));
    assert_eq!(w.orders_once_each(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_skips_what_is_done_and_orders_nothing_twice() {
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        latency_ms: 400,
        endpoints: vec![Endpoint::CreateOrder],
        ..Faults::default()
    };
    let mut w = World::start("submit-resume", config, &["--issue-concurrency", "1"]).await;
    let lines: Vec<String> = (0..10)
        .map(|i| pkcs12(&format!("re-{i:02}"), &format!("r{i}.example.com")).to_string())
        .collect();
    let batch = w.path("resume.ndjson");
    write_ndjson(&batch, &lines);
    let out = w.path("resume-results.ndjson");
    let args = [
        "--file".to_string(),
        batch.display().to_string(),
        "--out".to_string(),
        out.display().to_string(),
    ];

    // First run: the worker dies after a few results; the run gives up after 4 s.
    let first = {
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(["--timeout-secs", "4"]);
        let mut run = w.start_submit(&a);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            tokio::select! {
                output = &mut run => break output.expect("submit ran"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if lines_in(&out) >= 3 && w.worker.running() {
                        w.worker.kill();
                    }
                    assert!(tokio::time::Instant::now() < deadline, "first run hangs");
                }
            }
        }
    };
    let first_text = text(&first);
    let done_first = results_file(&out).len();
    eprintln!("FIRST RUN:\n{first_text}");
    assert!(done_first >= 3, "{first_text}");
    if done_first < 10 {
        assert_eq!(first.status.code(), Some(1), "{first_text}");
        assert!(first_text.contains("missing "), "{first_text}");
        assert!(
            first_text.contains("re-run the same command"),
            "{first_text}"
        );
    }

    // Second run, worker back: only the rest is published, all end once.
    w.worker.restart();
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--timeout-secs", "60"]);
    let second = w.submit(&a).await;
    let shown = text(&second);
    eprintln!("SECOND RUN:\n{shown}");
    let context = format!("{shown}\nworker log:\n{}", tail(&w.worker.output()));
    assert_eq!(second.status.code(), Some(0), "{context}");
    assert!(
        shown.contains(&format!(
            "submitted {} (skipped {done_first} already done, 0 malformed lines)",
            10 - done_first
        )),
        "{context}"
    );
    let results = results_file(&out);
    assert_eq!(results.len(), 10, "every job once in the results file");
    assert!(results.values().all(|r| r["status"] == "succeeded"));
    assert_eq!(w.orders_once_each(), 10, "one D-Trust order per job");

    // A third run has nothing left to do and does not touch the broker.
    let third = w.submit(&a).await;
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    assert!(text(&third).contains("submitted 0 (skipped 10 already done"));
    assert_eq!(w.orders_once_each(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_publishes_and_returns() {
    let mut w = World::start("submit-nowait", SimConfig::default_catalogue(), &[]).await;
    let lines: Vec<String> = (0..3)
        .map(|i| pkcs12(&format!("nw-{i}"), &format!("nw{i}.example.com")).to_string())
        .collect();
    let batch = w.path("nowait.jsonl");
    write_ndjson(&batch, &lines);
    let run = w
        .submit(&["--file", &batch.display().to_string(), "--no-wait"])
        .await;
    let shown = text(&run);
    assert_eq!(run.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("submitted 3 (skipped 0 already done, 0 malformed lines)"),
        "{shown}"
    );
    assert!(shown.contains("not waiting for results"), "{shown}");
    assert!(!shown.contains("finished"), "{shown}");
    // They were published: the worker answers all three.
    let results = w.bus.results_for(3, WAIT).await;
    for i in 0..3 {
        assert_eq!(results[&format!("nw-{i}")]["status"], "succeeded");
    }
}

#[test]
fn usage_errors_exit_2_and_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("jobs.txt");
    std::fs::write(&unknown, "{}\n").unwrap();
    let csv = dir.path().join("jobs.csv");
    std::fs::write(&csv, "job_id,kind,common_name\na,issue,x\n").unwrap();
    let array = dir.path().join("jobs.json");
    std::fs::write(&array, "[{\"job_id\": \"a\"}]\n").unwrap();
    // An unused broker address: none of these gets that far.
    let broker = ["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"];
    for (file, expected) in [
        (&unknown, "cannot tell the format"),
        (&csv, "unknown column `common_name`"),
        (&array, "JSON array"),
        (&dir.path().join("missing.ndjson"), "cannot open"),
    ] {
        let file = file.display().to_string();
        let mut args = vec!["submit", "--file", &file];
        args.extend(broker);
        let run = run_worker(&args, &[]);
        let shown = text(&run);
        assert_eq!(run.status.code(), Some(2), "{file}: {shown}");
        assert!(shown.contains(expected), "{file}: {shown}");
    }
    let run = run_worker(&["submit"], &[]);
    assert_eq!(run.status.code(), Some(2), "clap: --file is required");
}
