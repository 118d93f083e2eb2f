//! The worker against RabbitMQ brokers of the tests' own, in Docker containers
//! (testcontainers, `dtrust_testkit::container`): what the shared broker cannot show.
//!
//! - the broker restarted mid-batch (500 jobs),
//! - the broker SIGKILLed while results are being published,
//! - the broker frozen (paused) for longer than the heartbeat,
//! - a memory alarm (`connection.blocked`) and its end,
//! - a three-node cluster, two workers, one node stopped mid-batch and started again,
//! - the AMQP contract suites (topology, lanes, confirms, issue, revoke, dead letters)
//!   once against a fresh broker.
//!
//! Each checks what the worker promises: every job ends with one terminal result (a
//! repeat carries the identical content), and no D-Trust order is placed twice (the
//! simulator's books).
//!
//! They need Docker and are ignored by a plain `cargo test` (shown as skipped): `make
//! test-containers` runs them alone, `make test` with the others where Docker is or can
//! be brought up, and CI always (`scripts/ensure-docker.sh`). By hand, with an engine
//! running: `cargo test -p dtrust-testkit --test containers -- --ignored`.

mod containers {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use dtrust_testkit::broker::unique_prefix;
    use dtrust_testkit::bundle::BundleBuilder;
    use dtrust_testkit::container::{free_port, run, Broker, Cluster, DurableBus};
    use dtrust_testkit::process::{workspace_root, WorkerProcess};
    use dtrust_testkit::sim::{Faults, Sim, SimConfig};
    use dtrust_worker::job::record::State;
    use dtrust_worker::store::{SledStore, Store};
    use serde_json::{json, Value};

    /// The D-Trust simulator, a bundle for it and a folder for stores and logs.
    struct Setup {
        sim: Sim,
        dir: tempfile::TempDir,
        bundle: PathBuf,
        prefix: String,
    }

    impl Setup {
        async fn new(test: &str, faults: Faults) -> Setup {
            let mut config = SimConfig::default_catalogue();
            config.reuse_pkcs12_keys = true;
            config.faults = faults;
            let pki = BundleBuilder::new("https://placeholder/");
            let sim = Sim::start(config, &pki).await;
            let dir = tempfile::tempdir().expect("temp dir");
            let bundle = dir.path().join("bundle.zip");
            pki.set("url", &sim.url())
                .set("maxRequestsPerSecond", "1000")
                .write(&bundle);
            Setup {
                sim,
                dir,
                bundle,
                prefix: unique_prefix(test),
            }
        }

        /// A `dtrust-worker run` on `url` with a store and log named `name`.
        fn worker(&self, name: &str, url: &str, extra: &[&str]) -> WorkerProcess {
            let store = self.store(name);
            let mut args: Vec<String> = [
                "--bundle",
                &self.bundle.display().to_string(),
                "--prefix",
                &self.prefix,
                "--store",
                &store.display().to_string(),
                "--amqp-url",
                url,
                "--retry-initial-ms",
                "100",
                "--retry-max-ms",
                "1000",
                "--max-retries",
                "30",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let log = self.dir.path().join(format!("{name}.log"));
            WorkerProcess::start(&args, &[("RUST_LOG", "info")], &log)
        }

        fn store(&self, name: &str) -> PathBuf {
            self.dir.path().join(format!("{name}-store"))
        }
    }

    /// `count` PKCS#12 issuance jobs.
    fn issue_jobs(tag: &str, count: usize) -> Vec<Value> {
        (0..count)
            .map(|i| {
                json!({"job_id": format!("{tag}-{i:05}"), "kind": "issue", "product": "SSL-Basic",
                       "request_type": "pkcs12", "subject": {"cn": "www.example.com", "c": "DE"}})
            })
            .collect()
    }

    /// What a batch came to.
    struct Outcome {
        results: usize,
        repeats: usize,
        orders: usize,
    }

    impl std::fmt::Debug for Outcome {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{} results ({} repeats), {} orders",
                self.results, self.repeats, self.orders
            )
        }
    }

    /// Every job has a succeeded result, repeats are identical, every job was ordered
    /// exactly once at D-Trust.
    fn check(jobs: &[Value], bus: &DurableBus, sim: &Sim, logs: &str) -> Outcome {
        let by_job = bus.by_job();
        let lost: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j["job_id"].as_str())
            .filter(|id| !by_job.contains_key(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "{} jobs without a result, e.g. {:?}; worker logs:\n{}",
            lost.len(),
            &lost[..lost.len().min(10)],
            tail(logs)
        );
        let mut repeats = 0;
        for (id, results) in &by_job {
            assert_eq!(results[0]["status"], "succeeded", "{id}: {:#}", results[0]);
            for other in &results[1..] {
                repeats += 1;
                assert_eq!(
                    dtrust_testkit::broker::without_secrets(other),
                    dtrust_testkit::broker::without_secrets(&results[0]),
                    "{id}: a repeated result differs"
                );
            }
        }
        let orders = sim.orders();
        let references: BTreeSet<&str> =
            orders.iter().map(|o| o.client_reference.as_str()).collect();
        assert_eq!(
            orders.len(),
            references.len(),
            "a client reference was ordered twice"
        );
        assert_eq!(orders.len(), jobs.len(), "one D-Trust order per job");
        assert_eq!(
            logs.matches("panicked").count(),
            0,
            "a panic in a worker log"
        );
        Outcome {
            results: bus.all().len(),
            repeats,
            orders: orders.len(),
        }
    }

    fn tail(log: &str) -> String {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until `log()` contains `text`, or `timeout`.
    async fn log_shows(log: impl Fn() -> String, text: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if log().contains(text) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        log().contains(text)
    }

    async fn progress(
        bus: &DurableBus,
        count: usize,
        timeout: Duration,
        logs: impl Fn() -> String,
    ) {
        let done = bus.wait_for(count, timeout).await;
        assert!(
            done >= count,
            "{done} of {count} results within {timeout:?}; worker log:\n{}",
            tail(&logs())
        );
    }

    const SESSION_LOST: &str = "broker session lost; reconnecting";
    const CONNECTED: &str = "connected to the broker: topology declared, consuming";

    #[test]
    #[ignore = "needs Docker: make test-containers"]
    fn broker_restart_mid_batch_every_job_once_nothing_ordered_twice() {
        run(async {
            let started = Instant::now();
            let broker = Broker::start("restart").await;
            let setup = Setup::new("restart", Faults::default()).await;
            let bus = DurableBus::start(&broker.url(), &broker.url(), &setup.prefix).await;
            let jobs = issue_jobs("rs", 500);
            bus.publish_jobs(&jobs).await;
            let mut worker = setup.worker("worker", &broker.url(), &["--issue-concurrency", "16"]);

            progress(&bus, 100, Duration::from_secs(180), || worker.output()).await;
            let before = bus.done();
            broker.restart().await;
            assert!(before < jobs.len(), "the restart came mid-batch");
            progress(&bus, jobs.len(), Duration::from_secs(300), || {
                worker.output()
            })
            .await;

            let log = worker.output();
            assert!(
                log.contains(SESSION_LOST),
                "the worker saw the broker go:\n{}",
                tail(&log)
            );
            assert!(
                log.matches(CONNECTED).count() >= 2,
                "the worker reconnected and declared again:\n{}",
                tail(&log)
            );
            let outcome = check(&jobs, &bus, &setup.sim, &log);
            assert!(worker.terminate(), "clean exit at the end");
            println!(
                "restart: {} jobs, {before} done before the restart, {outcome:?}, {:.0?}",
                jobs.len(),
                started.elapsed()
            );
        });
    }

    #[test]
    #[ignore = "needs Docker: make test-containers"]
    fn broker_killed_while_results_are_unconfirmed_loses_none() {
        run(async {
            let started = Instant::now();
            let broker = Broker::start("kill").await;
            let setup = Setup::new("kill", Faults::default()).await;
            let bus = DurableBus::start(&broker.url(), &broker.url(), &setup.prefix).await;
            let jobs = issue_jobs("kl", 300);
            bus.publish_jobs(&jobs).await;
            let mut worker = setup.worker("worker", &broker.url(), &["--issue-concurrency", "32"]);

            // Mid-stream: results are being published (and confirmed) at full speed.
            progress(&bus, 60, Duration::from_secs(180), || worker.output()).await;
            broker.kill().await;
            let at_kill = bus.done();
            assert!(at_kill < jobs.len(), "the kill came mid-batch");
            assert!(
                log_shows(|| worker.output(), SESSION_LOST, Duration::from_secs(30)).await,
                "the worker saw the connection die:\n{}",
                tail(&worker.output())
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker.start_again().await;
            progress(&bus, jobs.len(), Duration::from_secs(300), || {
                worker.output()
            })
            .await;

            let log = worker.output();
            let outcome = check(&jobs, &bus, &setup.sim, &log);
            assert!(worker.terminate(), "clean exit at the end");
            println!(
                "kill: {} jobs, {at_kill} done at the kill, {outcome:?}, {:.0?}",
                jobs.len(),
                started.elapsed()
            );
        });
    }

    #[test]
    #[ignore = "needs Docker: make test-containers"]
    fn broker_paused_longer_than_the_heartbeat_is_detected_and_nothing_is_lost() {
        run(async {
            let started = Instant::now();
            let broker = Broker::start("pause").await;
            let setup = Setup::new("pause", Faults::default()).await;
            let bus = DurableBus::start(&broker.url(), &broker.url(), &setup.prefix).await;
            let jobs = issue_jobs("ps", 200);
            bus.publish_jobs(&jobs).await;
            let heartbeat = 2;
            let url = format!("{}?heartbeat={heartbeat}", broker.url());
            let mut worker = setup.worker("worker", &url, &["--issue-concurrency", "8"]);

            progress(&bus, 40, Duration::from_secs(180), || worker.output()).await;
            broker.pause().await;
            let paused = Instant::now();
            // The connection is open but silent: the worker must tell it is dead from
            // the missing heartbeats, while the broker is still frozen.
            let detected =
                log_shows(|| worker.output(), SESSION_LOST, Duration::from_secs(15)).await;
            let detected_after = paused.elapsed();
            tokio::time::sleep(
                Duration::from_secs((4 * heartbeat) as u64).saturating_sub(detected_after),
            )
            .await;
            let at_unpause = bus.done();
            broker.unpause().await;
            assert!(
                detected,
                "the worker did not notice a broker frozen for {:?} (heartbeat {heartbeat} s):\n{}",
                paused.elapsed(),
                tail(&worker.output())
            );
            progress(&bus, jobs.len(), Duration::from_secs(300), || {
                worker.output()
            })
            .await;

            let log = worker.output();
            assert!(
                log.matches(CONNECTED).count() >= 2,
                "the worker reconnected:\n{}",
                tail(&log)
            );
            let outcome = check(&jobs, &bus, &setup.sim, &log);
            assert!(worker.terminate(), "clean exit at the end");
            println!(
                "pause: {} jobs, detected after {detected_after:.1?}, {at_unpause} done at the unpause, {outcome:?}, {:.0?}",
                jobs.len(),
                started.elapsed()
            );
        });
    }

    async fn readyz(addr: &str) -> u16 {
        match reqwest::get(format!("http://{addr}/readyz")).await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    #[test]
    #[ignore = "needs Docker: make test-containers"]
    fn memory_alarm_blocks_the_worker_which_takes_no_new_jobs_then_resumes() {
        run(async {
            let started = Instant::now();
            let broker = Broker::start("alarm").await;
            // Some D-Trust latency, so that the batch is still running when the alarm
            // goes off.
            let faults = Faults {
                latency_ms: 50,
                ..Faults::default()
            };
            let setup = Setup::new("alarm", faults).await;
            let bus = DurableBus::start(&broker.url(), &broker.url(), &setup.prefix).await;
            let jobs = issue_jobs("al", 200);
            bus.publish_jobs(&jobs).await;
            let metrics = format!("127.0.0.1:{}", free_port());
            let concurrency = 8;
            let mut worker = setup.worker(
                "worker",
                &broker.url(),
                &[
                    "--issue-concurrency",
                    &concurrency.to_string(),
                    "--metrics-addr",
                    &metrics,
                ],
            );
            progress(&bus, 30, Duration::from_secs(180), || worker.output()).await;
            assert_eq!(readyz(&metrics).await, 200, "ready before the alarm");

            // A watermark of 0 sets the memory alarm off at once: publishers are blocked.
            broker.ctl(&["set_vm_memory_high_watermark", "0"]).await;
            assert!(
                log_shows(
                    || worker.output(),
                    "the broker blocks this connection",
                    Duration::from_secs(30)
                )
                .await,
                "the worker did not notice connection.blocked:\n{}",
                tail(&worker.output())
            );
            assert_eq!(readyz(&metrics).await, 503, "not ready while blocked");
            // What was running when the block came finishes at D-Trust; then nothing
            // new starts, and no result gets out.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (orders_then, done_then) = (setup.sim.orders().len(), bus.done());
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (orders_later, done_later) = (setup.sim.orders().len(), bus.done());
            assert_eq!(
                orders_later, orders_then,
                "the worker placed orders while the broker blocked it"
            );
            assert_eq!(
                done_later, done_then,
                "results got out through a blocked connection"
            );
            assert!(done_then < jobs.len(), "the alarm came mid-batch");
            assert!(
                orders_then <= done_then + concurrency,
                "at most the jobs in flight wait with unpublished results: {orders_then} orders, {done_then} results"
            );
            let blocked_for = Duration::from_secs(8);

            broker.ctl(&["set_vm_memory_high_watermark", "0.4"]).await;
            assert!(
                log_shows(
                    || worker.output(),
                    "the broker unblocked this connection",
                    Duration::from_secs(30)
                )
                .await,
                "the worker did not notice connection.unblocked:\n{}",
                tail(&worker.output())
            );
            progress(&bus, jobs.len(), Duration::from_secs(300), || {
                worker.output()
            })
            .await;
            assert_eq!(readyz(&metrics).await, 200, "ready again");

            let log = worker.output();
            assert!(
                !log.contains(SESSION_LOST),
                "the block is not a lost connection:\n{}",
                tail(&log)
            );
            let outcome = check(&jobs, &bus, &setup.sim, &log);
            assert!(worker.terminate(), "clean exit at the end");
            println!(
                "alarm: {} jobs, blocked at {done_then} results / {orders_then} orders for {blocked_for:?}, {outcome:?}, {:.0?}",
                jobs.len(),
                started.elapsed()
            );
        });
    }

    /// The members and leader of quorum queue `queue`, as `node` reports them.
    async fn quorum_members(node: &Broker, queue: &str) -> (Vec<String>, Vec<String>, String) {
        let text = node
            .ctl(&[
                "list_queues",
                "name",
                "members",
                "online",
                "leader",
                "--formatter",
                "json",
            ])
            .await;
        let start = text.find('[').unwrap_or(0);
        let rows: Vec<Value> = serde_json::from_str(&text[start..])
            .unwrap_or_else(|e| panic!("list_queues as JSON: {e}: {text}"));
        let row = rows
            .iter()
            .find(|r| r["name"] == queue)
            .unwrap_or_else(|| panic!("{queue} in {text}"));
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        (
            names(&row["members"]),
            names(&row["online"]),
            row["leader"].as_str().unwrap_or("").to_string(),
        )
    }

    fn delivered_jobs(store: &Path) -> BTreeSet<String> {
        let store = SledStore::open(store).expect("the store opens after the worker stopped");
        store
            .by_state(State::Delivered, usize::MAX)
            .expect("delivered records")
            .iter()
            .map(|r| r.job_id.clone())
            .collect()
    }

    #[test]
    #[ignore = "needs Docker: make test-containers"]
    fn cluster_of_three_two_workers_one_node_stopped_every_job_once() {
        run(async {
            let started = Instant::now();
            let cluster = Cluster::start("cluster").await;
            let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
            let setup = Setup::new("cluster", Faults::default()).await;
            // The topology is declared through the third node, so the quorum queues'
            // leaders are there (client-local); the test and the workers use the others.
            let bus = DurableBus::start(&a.url(), &c.url(), &setup.prefix).await;
            let issue = bus.names.issue.clone();
            let (members, _, leader) = quorum_members(a, &issue).await;
            assert_eq!(
                members.len(),
                3,
                "{issue} has a replica on every node: {members:?}"
            );
            assert_eq!(
                leader, c.node,
                "{issue}'s leader is on the node to be stopped"
            );

            let jobs = issue_jobs("cl", 400);
            bus.publish_jobs(&jobs).await;
            let one = ["--issue-concurrency", "8"];
            let mut first = setup.worker("first", &a.url(), &one);
            let mut second = setup.worker("second", &b.url(), &one);
            let logs = || format!("{}\n{}", first.output(), second.output());

            progress(&bus, 40, Duration::from_secs(180), logs).await;
            let before_stop = bus.done();
            // A clean stop of the leaders' node takes some seconds; work goes on.
            c.stop().await;
            let at_stop = bus.done();
            assert!(at_stop < jobs.len(), "the node stopped mid-batch");
            // Work goes on with two of three nodes: a new leader takes over.
            progress(
                &bus,
                (at_stop + 60).min(jobs.len()),
                Duration::from_secs(120),
                logs,
            )
            .await;
            let while_down = bus.done() - at_stop;
            c.start_again().await;
            progress(&bus, jobs.len(), Duration::from_secs(300), logs).await;

            // The node is back in the cluster and its replica online again.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let running = cluster.running_nodes(a).await;
                let (_, online, _) = quorum_members(a, &issue).await;
                if running.len() == 3 && online.len() == 3 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the stopped node did not come back: running {running:?}, online {online:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }

            let log = logs();
            let outcome = check(&jobs, &bus, &setup.sim, &log);
            assert!(first.terminate(), "clean exit of the first worker");
            assert!(second.terminate(), "clean exit of the second worker");
            let (by_first, by_second) = (
                delivered_jobs(&setup.store("first")),
                delivered_jobs(&setup.store("second")),
            );
            assert!(
                !by_first.is_empty() && !by_second.is_empty(),
                "both workers took jobs: {} and {}",
                by_first.len(),
                by_second.len()
            );
            let both: Vec<&String> = by_first.intersection(&by_second).collect();
            assert!(both.is_empty(), "jobs delivered by both workers: {both:?}");
            assert_eq!(by_first.len() + by_second.len(), jobs.len());
            println!(
                "cluster: {} jobs, {before_stop} done when a node began to stop, {at_stop} when it was down, {while_down} more while it was down, \
                 {} by the first worker and {} by the second, {outcome:?}, {:.0?}",
                jobs.len(),
                by_first.len(),
                by_second.len(),
                started.elapsed()
            );
        });
    }

    /// Runs `cargo test ARGS` with `AMQP_URL` set; returns whether it passed, the
    /// tests it ran, and its output.
    fn cargo_test(url: &str, args: &[&str]) -> (bool, usize, String) {
        let output =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .arg("test")
                .args(args)
                .env("AMQP_URL", url)
                .current_dir(workspace_root())
                .output()
                .expect("run cargo test");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let passed: usize = text
            .lines()
            .filter(|l| l.starts_with("test result: "))
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words
                    .windows(2)
                    .find(|w| w[1].starts_with("passed"))
                    .and_then(|w| w[0].parse::<usize>().ok())
            })
            .sum();
        (output.status.success(), passed, text)
    }

    #[test]
    #[ignore = "needs Docker: make test-containers"]
    fn amqp_contract_suites_pass_against_a_fresh_broker() {
        run(async {
            let started = Instant::now();
            let broker = Broker::start("contract").await;
            let url = broker.url();
            // The transport's contract (topology, lanes, confirms, reconnects) and the
            // dead letters' in full; issue and revoke end to end from the worker suite.
            // `--workspace` keeps the feature set of `make test`, so nothing rebuilds.
            let runs: [(&str, Vec<&str>); 2] = [
                (
                    "transport and dead letters",
                    vec![
                        "--workspace",
                        "--test",
                        "transport",
                        "--test",
                        "dead_letters",
                    ],
                ),
                (
                    "issue and revoke",
                    vec![
                        "--workspace",
                        "--test",
                        "worker",
                        "--",
                        "--exact",
                        "issues_pkcs10_and_pkcs12_and_revokes_end_to_end",
                    ],
                ),
            ];
            let mut summary = BTreeMap::new();
            for (what, args) in runs {
                let url = url.clone();
                let (ok, passed, text) =
                    tokio::task::spawn_blocking(move || cargo_test(&url, &args))
                        .await
                        .expect("cargo test ran");
                assert!(
                    ok,
                    "the {what} suite failed against a fresh broker:\n{text}"
                );
                assert!(passed > 0, "the {what} suite ran no test:\n{text}");
                summary.insert(what, passed);
            }
            // And they really ran against this broker, not the shared one.
            let log = broker.logs().await;
            let accepted = log.matches("accepting AMQP connection").count();
            assert!(
                accepted >= 10,
                "{accepted} AMQP connections reached the fresh broker"
            );
            println!(
                "contract: {summary:?} tests passed, {accepted} connections to the fresh broker, {:.0?}",
                started.elapsed()
            );
        });
    }
}
