//! What the figures share: the parameters of a run (quick or full), the job messages,
//! the bus (pipelined confirmed publishing, results collected with their arrival time),
//! the worker process (with its pid, for `/proc`), the simulator world, and the
//! readings (throughput windows, percentiles, CPU time per component, RSS, sizes on
//! disk).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtrust_worker::transport::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use dtrust_worker::transport::lapin::types::FieldTable;
use dtrust_worker::transport::lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    PublisherConfirm,
};
use dtrust_worker::transport::{Names, Topology};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::broker::{amqp_url, unique_prefix, Cleanup};
use crate::bundle::BundleBuilder;
use crate::pki::{csr, KeyKind};
use crate::sim::{Sim, SimConfig};

/// `x-delivery-limit` the job queues are declared with (the worker's default, so that
/// the worker's own declaration matches).
pub const DELIVERY_LIMIT: u32 = 5;
/// `maxRequestsPerSecond` that means "rate limit off" for the figures that do not
/// measure it.
pub const RATE_LIMIT_OFF: &str = "10000";
/// How long a figure waits for results before it gives up (per phase).
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a figure waits without any new result before it gives up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The sizes of a run. Quick mode (the default) fits in about four minutes on two
/// cores; `BENCH_FULL=1` runs the sizes the issue names.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// `BENCH_FULL=1`.
    pub full: bool,
    /// Issue concurrency (= the issue lane's prefetch) of figures 1, 2, 5, 6 and 7: the
    /// worker's default.
    pub issue_concurrency: u16,
    /// Revoke concurrency (the worker's default).
    pub revoke_concurrency: u16,
    /// Jobs drained in figures 1 and 2 (same N for both).
    pub drain_jobs: usize,
    /// Size of the result message of figure 1's minimal consumer, bytes (about what
    /// the worker publishes for a PKCS#10 issuance; figure 2 reports the real size).
    pub result_bytes: usize,
    /// Simulator latency of figures 3 and 4, ms.
    pub latency_ms: u64,
    /// Issue concurrency of figure 3.
    pub hiding_concurrency: u16,
    /// Jobs of figure 3.
    pub hiding_jobs: usize,
    /// Jobs of figure 4 (concurrency 1, so 5 jobs/s at best).
    pub sync_jobs: usize,
    /// Issuance jobs queued in figure 5.
    pub backlog_jobs: usize,
    /// Revocations of figure 5 (idle and under backlog).
    pub revocations: usize,
    /// Spacing of figure 5's revocation publishes, ms.
    pub revocation_spacing_ms: u64,
    /// Backlogs drained in figure 6 (each with a fresh worker and store).
    pub memory_jobs: Vec<usize>,
    /// `maxRequestsPerSecond` of figure 7.
    pub rate_limit: f64,
    /// Measuring window of figure 7, s.
    pub rate_window_s: u64,
    /// Time skipped before figure 7's window (the limiter's initial burst), s.
    pub rate_warmup_s: u64,
    /// Jobs queued in figure 7 (enough to keep the limiter busy past the window).
    pub rate_jobs: usize,
    /// Jobs drained by 1, 2 and 3 workers in figure 8.
    pub several_jobs: usize,
    /// Issue concurrency of each worker in figure 8.
    pub several_concurrency: u16,
    /// Jobs drained with and without the lease in figure 8.
    pub lease_jobs: usize,
}

impl Params {
    /// Quick mode.
    pub fn quick() -> Params {
        Params {
            full: false,
            issue_concurrency: 16,
            revoke_concurrency: 4,
            drain_jobs: 20_000,
            result_bytes: 2_600,
            latency_ms: 200,
            hiding_concurrency: 64,
            hiding_jobs: 3_200,
            sync_jobs: 30,
            backlog_jobs: 10_000,
            revocations: 100,
            revocation_spacing_ms: 20,
            memory_jobs: vec![10_000],
            rate_limit: 50.0,
            rate_window_s: 30,
            rate_warmup_s: 2,
            rate_jobs: 2_500,
            several_jobs: 1_500,
            several_concurrency: 16,
            lease_jobs: 5_000,
        }
    }

    /// `BENCH_FULL=1`.
    pub fn full() -> Params {
        Params {
            full: true,
            drain_jobs: 50_000,
            hiding_jobs: 12_800,
            sync_jobs: 150,
            memory_jobs: vec![10_000, 100_000],
            several_jobs: 6_000,
            lease_jobs: 20_000,
            ..Params::quick()
        }
    }

    /// What quick mode scales down, for the output.
    pub fn scaled_down(&self) -> Vec<String> {
        if self.full {
            return Vec::new();
        }
        let full = Params::full();
        vec![
            format!(
                "figures 1-2: {} jobs drained (full: {})",
                self.drain_jobs, full.drain_jobs
            ),
            format!(
                "figure 3: {} jobs (full: {}); figure 4: {} jobs (full: {})",
                self.hiding_jobs, full.hiding_jobs, self.sync_jobs, full.sync_jobs
            ),
            "figure 6: a backlog of 10,000 jobs only (full: 10,000 and 100,000)".to_string(),
            format!(
                "figure 8: {} jobs per run, {} for the lease's cost (full: {}, {})",
                self.several_jobs, self.lease_jobs, full.several_jobs, full.lease_jobs
            ),
        ]
    }
}

/// What every figure needs.
pub struct Ctx {
    pub params: Params,
    /// The `dtrust-worker` binary (the release build next to `dtrust-bench`).
    pub worker_bin: PathBuf,
    /// Where stores, bundles, logs and profiles go (`target/bench/`).
    pub work_dir: PathBuf,
    pub jobs: JobFactory,
    /// Print progress on standard error.
    pub verbose: bool,
}

impl Ctx {
    /// Progress on standard error (never on standard output, which has the figures).
    pub fn progress(&self, message: &str) {
        if self.verbose {
            eprintln!("  .. {message}");
        }
    }
}

// ------------------------------------------------------------------------ jobs

/// Job messages of realistic size: PKCS#10 issuances over one pre-made RSA-2048 CSR (so
/// that neither the harness nor the simulator spends its time on key generation), and
/// revocations by serial and password.
pub struct JobFactory {
    csr_pem: String,
}

impl Default for JobFactory {
    fn default() -> Self {
        JobFactory::new()
    }
}

impl JobFactory {
    pub fn new() -> JobFactory {
        let (_, csr_pem, _) = csr("www.example.com", KeyKind::Rsa2048);
        JobFactory { csr_pem }
    }

    /// A PKCS#10 issuance of `SSL-Basic` (about 1.5 KB).
    pub fn issue(&self, job_id: &str) -> Vec<u8> {
        let job = json!({
            "job_id": job_id,
            "kind": "issue",
            "product": "SSL-Basic",
            "request_type": "pkcs10",
            "csr_pem": self.csr_pem,
            "subject": {"cn": "www.example.com", "o": "Example Industries GmbH", "c": "DE"},
            "san": {"dns": ["www.example.com", "example.com"]},
            "metadata": {
                "idm_request": format!("REQ-{job_id}"),
                "requested_by": "bench.harness",
                "requester_email": "pki-operations@example.com",
                "cost_center": "CC-4711-IT-OPS",
                "comment": "Bulk issuance for the web front ends of the benchmark tenant; renew 30 days before expiry, deploy through the usual pipeline.",
                "tags": ["bulk-benchmark", "ssl", "frontend"],
                "priority": 2
            }
        });
        serde_json::to_vec(&job).unwrap_or_default()
    }

    /// A revocation by serial with the certificate's revocation password.
    pub fn revoke(&self, job_id: &str, serial: &str, password: &str) -> Vec<u8> {
        let job = json!({
            "job_id": job_id, "kind": "revoke", "serial": serial,
            "revocation_password": password, "reason": "superseded"
        });
        serde_json::to_vec(&job).unwrap_or_default()
    }
}

// ------------------------------------------------------------------------ bus

/// A result as it arrived at the harness.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub job_id: String,
    /// From the routing key `result.<kind>.<status>`.
    pub kind: String,
    pub status: String,
    pub bytes: usize,
    /// The body, kept for results that did not succeed.
    pub body: Option<Vec<u8>>,
}

/// The harness's side of the broker: the worker's topology declared for a prefix, jobs
/// published with confirms (pipelined), every result collected from `{p}.results`
/// (through a queue of its own) with the time it arrived.
pub struct Bus {
    pub names: Names,
    connection: Connection,
    channel: Channel,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    /// Every result so far, by arrival.
    pub all: Vec<Arrival>,
    seen: HashSet<String>,
    /// Deletes the prefix's queues and exchanges when dropped.
    pub cleanup: Cleanup,
}

fn err(what: &str) -> impl Fn(dtrust_worker::transport::lapin::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Forwards every result of one capture queue, stamped with its arrival time.
async fn collect(_channel: Channel, mut consumer: Consumer, tx: mpsc::UnboundedSender<Arrival>) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let at = Instant::now();
        let key = delivery.routing_key.to_string();
        let mut parts = key.splitn(3, '.').skip(1);
        let kind = parts.next().unwrap_or("").to_string();
        let status = parts.next().unwrap_or("").to_string();
        let job_id = match delivery.properties.message_id() {
            Some(id) => id.to_string(),
            None => serde_json::from_slice::<Value>(&delivery.data)
                .ok()
                .and_then(|v| v.get("job_id")?.as_str().map(str::to_string))
                .unwrap_or_default(),
        };
        let body = (status != "succeeded").then(|| delivery.data.clone());
        let arrival = Arrival {
            at,
            job_id,
            kind,
            status,
            bytes: delivery.data.len(),
            body,
        };
        if tx.send(arrival).is_err() {
            break;
        }
    }
}

impl Bus {
    /// Connects, declares the worker's topology for `prefix` and starts collecting
    /// results.
    pub async fn start(prefix: &str) -> Result<Bus, String> {
        let names = Names::new(prefix);
        let cleanup = Cleanup::new(prefix);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .map_err(|e| {
                format!("cannot connect to RabbitMQ at AMQP_URL (default the local broker): {e}")
            })?;
        Topology::new(names.clone(), DELIVERY_LIMIT)
            .declare(&connection)
            .await
            .map_err(|e| format!("declaring the topology: {e}"))?;
        let channel = connection.create_channel().await.map_err(err("channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err("confirm.select"))?;
        // One capture queue per kind, as a result handler that cares about
        // revocations binds `result.revoke.#` on a queue of its own: a revocation's
        // result then never waits behind thousands of issuance results in one queue.
        let (tx, arrivals) = mpsc::unbounded_channel();
        for kind in ["issue", "revoke"] {
            let capture = format!("{prefix}.bench-results.{kind}");
            cleanup.queue(&capture);
            let consumer_channel = connection.create_channel().await.map_err(err("channel"))?;
            consumer_channel
                .queue_declare(
                    capture.as_str().into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err("declare the results queue"))?;
            consumer_channel
                .queue_bind(
                    capture.as_str().into(),
                    names.results.as_str().into(),
                    format!("result.{kind}.#").as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err("bind the results queue"))?;
            let consumer = consumer_channel
                .basic_consume(
                    capture.as_str().into(),
                    "bench-results".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(err("consume the results queue"))?;
            tokio::spawn(collect(consumer_channel, consumer, tx.clone()));
        }
        Ok(Bus {
            names,
            connection,
            channel,
            arrivals,
            all: Vec::new(),
            seen: HashSet::new(),
            cleanup,
        })
    }

    /// The connection (for a figure's own consumer).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    fn properties(job_id: &str) -> BasicProperties {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(job_id.into())
            .with_timestamp(now)
    }

    async fn send(&self, key: &str, job_id: &str, body: &[u8]) -> Result<PublisherConfirm, String> {
        self.channel
            .basic_publish(
                self.names.jobs.as_str().into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                Bus::properties(job_id),
            )
            .await
            .map_err(err("publish"))
    }

    /// Publishes `count` jobs made by `make(i)` = `(job_id, body)` with routing key
    /// `key`, keeping up to 256 confirms outstanding; returns once all are confirmed.
    pub async fn publish_many(
        &self,
        key: &str,
        count: usize,
        make: impl Fn(usize) -> (String, Vec<u8>),
    ) -> Result<(), String> {
        let mut pending: VecDeque<PublisherConfirm> = VecDeque::new();
        for i in 0..count {
            let (id, body) = make(i);
            pending.push_back(self.send(key, &id, &body).await?);
            if pending.len() >= 256 {
                if let Some(confirm) = pending.pop_front() {
                    check(confirm.await)?;
                }
            }
        }
        while let Some(confirm) = pending.pop_front() {
            check(confirm.await)?;
        }
        Ok(())
    }

    /// Publishes one job and returns the instant just before it was sent, with its
    /// confirm (to be checked later, so that paced publishes keep their pace).
    pub async fn publish_timed(
        &self,
        key: &str,
        job_id: &str,
        body: &[u8],
    ) -> Result<(Instant, PublisherConfirm), String> {
        let at = Instant::now();
        let confirm = self.send(key, job_id, body).await?;
        Ok((at, confirm))
    }

    /// Ready messages and consumers of `queue` (a passive declare on a channel of its
    /// own).
    pub async fn queue_state(&self, queue: &str) -> Result<(u32, u32), String> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(err("channel"))?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err("passive declare"))?;
        let _ = channel.close(200, "probe".into()).await;
        Ok((q.message_count(), q.consumer_count()))
    }

    /// Waits until `queue` has a consumer.
    pub async fn wait_consumer(&self, queue: &str, timeout: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.queue_state(queue).await?.1 > 0 {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!("no consumer on {queue} after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Distinct job ids with a result so far.
    pub fn distinct(&self) -> usize {
        self.seen.len()
    }

    /// Whether `job_id` has a result.
    pub fn has(&self, job_id: &str) -> bool {
        self.seen.contains(job_id)
    }

    fn take(&mut self, arrival: Arrival) {
        self.seen.insert(arrival.job_id.clone());
        self.all.push(arrival);
    }

    /// Takes what arrived without waiting.
    pub fn drain(&mut self) {
        while let Ok(a) = self.arrivals.try_recv() {
            self.take(a);
        }
    }

    /// Waits until `done(self)` holds (checked after each arrival and every 100 ms),
    /// or `timeout`; returns whether it holds.
    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Bus) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drain();
            if done(self) {
                return true;
            }
            let tick = tokio::time::Instant::now() + Duration::from_millis(100);
            match tokio::time::timeout_at(tick.min(deadline), self.arrivals.recv()).await {
                Ok(Some(a)) => self.take(a),
                Ok(None) => return done(self),
                Err(_) if tokio::time::Instant::now() >= deadline => return done(self),
                Err(_) => {}
            }
        }
    }

    /// Waits for results of `count` distinct jobs.
    pub async fn wait_results(&mut self, count: usize, timeout: Duration) -> Result<(), String> {
        if self.wait_until(timeout, |b| b.distinct() >= count).await {
            Ok(())
        } else {
            Err(format!(
                "{} of {count} results arrived within {timeout:?}",
                self.distinct()
            ))
        }
    }

    /// An error naming the first result that did not succeed, if any.
    pub fn failures(&self) -> Result<(), String> {
        let failed: Vec<&Arrival> = self
            .all
            .iter()
            .filter(|a| a.status != "succeeded")
            .collect();
        match failed.first() {
            None => Ok(()),
            Some(first) => {
                let body = first
                    .body
                    .as_ref()
                    .map(|b| {
                        String::from_utf8_lossy(b)
                            .chars()
                            .take(400)
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                Err(format!(
                    "{} job(s) did not succeed; the first ({}): {body}",
                    failed.len(),
                    first.job_id
                ))
            }
        }
    }
}

/// Checks a publisher confirm: acked and routed.
pub fn check(
    confirmation: Result<Confirmation, dtrust_worker::transport::lapin::Error>,
) -> Result<(), String> {
    match confirmation {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err("a job was returned unroutable".into()),
        Ok(Confirmation::Nack(_)) => Err("the broker nacked a job".into()),
        Ok(Confirmation::NotRequested) => Err("publisher confirms are off".into()),
        Err(e) => Err(format!("publish not confirmed: {e}")),
    }
}

// ------------------------------------------------------------------------ worker

/// A `dtrust-worker run` process with its pid, output appended to a log file.
pub struct Worker {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Worker {
    /// Starts `BIN run ARGS` with a clean `DTRUST_*`/`RUST_LOG` environment plus `env`.
    pub fn start(
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Worker, String> {
        Worker::start_wrapped(&[], bin, args, env, log)
    }

    /// [`Worker::start`] under `wrapper` (e.g. `perf record -o FILE`): runs
    /// `WRAPPER... -- BIN run ARGS`; `pid` is then the wrapper's (stop it with
    /// [`Worker::terminate_wrapped`]).
    pub fn start_wrapped(
        wrapper: &[String],
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Worker, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("worker log {}: {e}", log.display()))?;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg("--").arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("run").args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("DTRUST_") || name == "RUST_LOG" {
                cmd.env_remove(name);
            }
        }
        let out = file.try_clone().map_err(|e| format!("worker log: {e}"))?;
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Worker {
            pid: child.id(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `timeout` for the exit (SIGKILL after); whether it
    /// exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// For a wrapped worker: SIGTERM to the wrapper's children (the worker), then
    /// waits up to `timeout` for the wrapper to exit (SIGINT to it after half of it).
    pub fn terminate_wrapped(&mut self, timeout: Duration) -> bool {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children", pid = self.pid))
                .unwrap_or_default();
        for child in children.split_whitespace() {
            let _ = Command::new("kill").arg("-TERM").arg(child).status();
        }
        let start = Instant::now();
        let mut interrupted = false;
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if !interrupted && start.elapsed() > timeout / 2 {
                interrupted = true;
                let _ = Command::new("kill")
                    .arg("-INT")
                    .arg(self.pid.to_string())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `VmRSS` and `VmHWM` in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        proc_memory_kib(self.pid)
    }

    /// CPU seconds (user + system) so far.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(0.0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmRSS` and `VmHWM` of a process, KiB.
pub fn proc_memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a `/proc/.../stat` file, seconds.
pub fn proc_cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds used so far by each part of the system under test.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub worker: f64,
    /// The simulator's threads (named `dtrust-sim`) in this process.
    pub sim: f64,
    /// RabbitMQ (`beam.smp` processes), when it runs on this machine.
    pub broker: f64,
    /// The rest of this process: publishing jobs, collecting results.
    pub harness: f64,
}

impl Cpu {
    /// A reading now; `worker` is the worker's pid, if one runs.
    pub fn now(worker: Option<&Worker>) -> Cpu {
        let mut sim = 0.0;
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let path = task.path();
                let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                if comm.starts_with("dtrust-sim") {
                    sim += proc_cpu_seconds(&path.join("stat").to_string_lossy()).unwrap_or(0.0);
                }
            }
        }
        let total = proc_cpu_seconds("/proc/self/stat").unwrap_or(0.0);
        Cpu {
            worker: worker.map(Worker::cpu_seconds).unwrap_or(0.0),
            sim,
            broker: broker_cpu_seconds(),
            harness: (total - sim).max(0.0),
        }
    }

    /// Used between `earlier` and `self`.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            worker: self.worker - earlier.worker,
            sim: self.sim - earlier.sim,
            broker: self.broker - earlier.broker,
            harness: self.harness - earlier.harness,
        }
    }

    /// CPU milliseconds per job of each part, as text and JSON.
    pub fn per_job(&self, jobs: usize) -> (String, Value) {
        let ms = |s: f64| s * 1000.0 / jobs.max(1) as f64;
        let text = format!(
            "CPU ms/job: worker {:.2}, broker {:.2}, sim {:.2}, harness {:.2}",
            ms(self.worker),
            ms(self.broker),
            ms(self.sim),
            ms(self.harness)
        );
        let json = json!({
            "worker": round3(ms(self.worker)),
            "broker": round3(ms(self.broker)),
            "sim": round3(ms(self.sim)),
            "harness": round3(ms(self.harness)),
        });
        (text, json)
    }
}

fn broker_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "beam.smp" {
            total += proc_cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0);
        }
    }
    total
}

/// Rounds to 3 decimals, for JSON.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Rounds to 1 decimal, for JSON.
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

// ------------------------------------------------------------------------ world

/// A simulator, a bundle pointing at it, the bus for a fresh prefix, and a folder for
/// the worker's store and log.
pub struct World {
    pub sim: Sim,
    pub bus: Bus,
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub bundle: PathBuf,
    pub worker: Option<Worker>,
}

impl World {
    /// Sets everything up for figure `name`.
    pub async fn new(ctx: &Ctx, name: &str, config: SimConfig) -> Result<World, String> {
        let prefix = unique_prefix(&format!("bench-{name}"));
        let pki = BundleBuilder::new("https://placeholder/");
        let sim = Sim::try_start(config, &pki)?;
        let builder = pki.set("url", &sim.url());
        std::fs::create_dir_all(&ctx.work_dir)
            .map_err(|e| format!("{}: {e}", ctx.work_dir.display()))?;
        // BENCH_KEEP_WORK=1 keeps each figure's folder (store, bundle, worker log).
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .disable_cleanup(std::env::var_os("BENCH_KEEP_WORK").is_some_and(|v| v == "1"))
            .tempdir_in(&ctx.work_dir)
            .map_err(|e| format!("temp dir in {}: {e}", ctx.work_dir.display()))?;
        let bundle = dir.path().join("bundle.zip");
        std::fs::write(&bundle, builder.build()).map_err(|e| format!("bundle: {e}"))?;
        let bus = Bus::start(&prefix).await?;
        Ok(World {
            sim,
            bus,
            prefix,
            dir,
            bundle,
            worker: None,
        })
    }

    /// The worker's store folder.
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Starts the worker with the issue/revoke concurrency given, `extra` flags and
    /// `maxRequestsPerSecond` = `rate`.
    pub fn start_worker(
        &mut self,
        ctx: &Ctx,
        issue_concurrency: u16,
        extra: &[&str],
        rate: &str,
    ) -> Result<(), String> {
        self.start_worker_wrapped(ctx, &[], issue_concurrency, extra, rate)
    }

    /// [`World::start_worker`] under a wrapper command (see [`Worker::start_wrapped`]).
    pub fn start_worker_wrapped(
        &mut self,
        ctx: &Ctx,
        wrapper: &[String],
        issue_concurrency: u16,
        extra: &[&str],
        rate: &str,
    ) -> Result<(), String> {
        let mut args: Vec<String> = vec![
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--prefix".into(),
            self.prefix.clone(),
            "--store".into(),
            self.store().display().to_string(),
            "--amqp-url".into(),
            amqp_url(),
            "--issue-concurrency".into(),
            issue_concurrency.to_string(),
            "--revoke-concurrency".into(),
            ctx.params.revoke_concurrency.to_string(),
            // Figures 1-7 measure one worker: no lookup before each first order (figure
            // 8 measures the mode for several workers).
            "--single-worker".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.path().join("worker.log");
        let worker = Worker::start_wrapped(
            wrapper,
            &ctx.worker_bin,
            &args,
            &[("DTRUST_MAXREQUESTSPERSECOND", rate)],
            &log,
        )?;
        self.worker = Some(worker);
        Ok(())
    }

    /// The worker's pid.
    pub fn pid(&self) -> Option<u32> {
        self.worker.as_ref().map(|w| w.pid)
    }

    /// Queues `count` issuance jobs `{tag}-{i}` (before or while the worker runs).
    pub async fn prefill(&self, ctx: &Ctx, tag: &str, count: usize) -> Result<(), String> {
        self.bus
            .publish_many("issue", count, |i| {
                let id = format!("{tag}-{i:06}");
                let body = ctx.jobs.issue(&id);
                (id, body)
            })
            .await
    }

    /// Waits for `count` distinct results; fails early when the worker exits or no
    /// result arrives for [`STALL_TIMEOUT`]; on failure adds the worker's log tail.
    pub async fn wait_results(&mut self, count: usize) -> Result<(), String> {
        let deadline = Instant::now() + RESULT_TIMEOUT;
        let mut last = (self.bus.distinct(), Instant::now());
        loop {
            if self
                .bus
                .wait_until(Duration::from_secs(1), |b| b.distinct() >= count)
                .await
            {
                return Ok(());
            }
            let now = Instant::now();
            let got = self.bus.distinct();
            if got > last.0 {
                last = (got, now);
            }
            let exited = self.worker.as_mut().is_some_and(|w| !w.running());
            let problem = if exited {
                Some("the worker exited")
            } else if now.duration_since(last.1) > STALL_TIMEOUT {
                Some("no result for a while")
            } else if now > deadline {
                Some("time is up")
            } else {
                None
            };
            if let Some(why) = problem {
                let message = format!("{got} of {count} results arrived; {why}");
                return Err(self.with_log(message));
            }
        }
    }

    /// `message` plus the tail of the worker's log.
    pub fn with_log(&mut self, message: String) -> String {
        match &mut self.worker {
            Some(w) => {
                let state = if w.running() { "running" } else { "exited" };
                format!(
                    "{message}\nworker ({state}), last log lines:\n{}",
                    w.log_tail(15)
                )
            }
            None => message,
        }
    }
}

// ------------------------------------------------------------------------ readings

/// Throughput of a drain from the arrival times of its results.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub n: usize,
    /// Results per second between the 10 % and the 90 % result: the steady state,
    /// without start-up and the tail.
    pub steady: f64,
    /// Results per second from `start` to the last result.
    pub overall: f64,
    /// Seconds from `start` to the last result.
    pub seconds: f64,
}

impl Rate {
    /// From arrival times and the instant the consumer (or worker) started.
    pub fn of(times: &[Instant], start: Instant) -> Rate {
        let mut t: Vec<Instant> = times.to_vec();
        t.sort();
        let n = t.len();
        if n < 2 {
            return Rate {
                n,
                steady: 0.0,
                overall: 0.0,
                seconds: 0.0,
            };
        }
        let lo = n / 10;
        let hi = ((n * 9).div_ceil(10)).saturating_sub(1).max(lo + 1);
        let span = t[hi].duration_since(t[lo]).as_secs_f64();
        let steady = if span > 0.0 {
            (hi - lo) as f64 / span
        } else {
            0.0
        };
        let seconds = t[n - 1].duration_since(start).as_secs_f64();
        Rate {
            n,
            steady,
            overall: if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            },
            seconds,
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Bytes of the files under `dir`: (apparent size, allocated on disk).
pub fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// Samples a process's RSS every 50 ms on a thread of its own until stopped.
pub struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((rss, _)) = proc_memory_kib(pid) {
                    s.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), rss));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the samples.
    pub fn finish(mut self) -> Vec<(Instant, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The last sample at or before `at` (KiB).
pub fn rss_at(samples: &[(Instant, u64)], at: Instant) -> u64 {
    samples
        .iter()
        .take_while(|(t, _)| *t <= at)
        .last()
        .or(samples.first())
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// MiB with one decimal.
pub fn mib(kib_or_bytes: u64, bytes: bool) -> f64 {
    let b = if bytes {
        kib_or_bytes as f64
    } else {
        kib_or_bytes as f64 * 1024.0
    };
    round1(b / (1024.0 * 1024.0))
}
