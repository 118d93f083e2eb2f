//! Figure 2, the worker's overhead: the real worker process (release build) drains the
//! same N PKCS#10 jobs as figure 1 with the same prefetch, against the simulator with
//! latency 0 and the rate limit off (`maxRequestsPerSecond` 10000). Its rate over the
//! broker limit of figure 1 is what the worker's own work costs. The PKCS#10 jobs carry
//! one pre-made CSR, so the simulator only signs (ECDSA) and never generates RSA keys.
//!
//! [`drain`] is the measurement figures 3, 4 and the profile reuse.

use std::time::{Duration, Instant};

use super::harness::{round1, round3, Cpu, Ctx, Rate, World, RATE_LIMIT_OFF};
use super::report::{Figure, Target};
use crate::sim::{Faults, SimConfig, Stats};

/// One drain of queued jobs through the worker.
pub struct Drain {
    pub n: usize,
    pub rate: Rate,
    pub cpu: Cpu,
    /// Mean size of the results, bytes.
    pub result_bytes: f64,
    /// D-Trust requests the simulator saw per job.
    pub requests_per_job: f64,
    /// TLS connections the simulator accepted.
    pub connections: u64,
    pub job_bytes: usize,
}

/// What to drain.
pub struct Spec<'a> {
    pub name: &'a str,
    pub n: usize,
    pub concurrency: u16,
    pub latency_ms: u64,
    /// Runs the worker under this command (a profiler); the worker is then stopped
    /// with SIGTERM after the last result and the wrapper waited for.
    pub wrapper: Vec<String>,
}

fn total_requests(stats: &Stats) -> u64 {
    stats.requests.values().flat_map(|m| m.values()).sum()
}

/// Queues `spec.n` jobs, starts the worker, waits for every result.
pub async fn drain(ctx: &Ctx, spec: Spec<'_>) -> Result<Drain, String> {
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        latency_ms: spec.latency_ms,
        ..Faults::default()
    };
    let mut world = World::new(ctx, spec.name, config).await?;
    ctx.progress(&format!("{}: queueing {} jobs", spec.name, spec.n));
    world.prefill(ctx, "job", spec.n).await?;
    ctx.progress(&format!(
        "{}: draining with the worker (issue concurrency {}, simulator latency {} ms)",
        spec.name, spec.concurrency, spec.latency_ms
    ));
    let cpu0 = Cpu::now(None);
    let start = Instant::now();
    world.start_worker_wrapped(ctx, &spec.wrapper, spec.concurrency, &[], RATE_LIMIT_OFF)?;
    let waited = world.wait_results(spec.n).await;
    let cpu = Cpu::now(world.worker.as_ref()).since(&cpu0);
    if let Some(w) = world.worker.as_mut() {
        if spec.wrapper.is_empty() {
            w.kill();
        } else {
            w.terminate_wrapped(Duration::from_secs(120));
        }
    }
    waited?;
    world.bus.failures()?;
    let stats = world.sim.stats();
    let times: Vec<Instant> = world.bus.all.iter().map(|a| a.at).collect();
    let result_bytes = world.bus.all.iter().map(|a| a.bytes as f64).sum::<f64>()
        / world.bus.all.len().max(1) as f64;
    Ok(Drain {
        n: spec.n,
        rate: Rate::of(&times, start),
        cpu,
        result_bytes,
        requests_per_job: total_requests(&stats) as f64 / spec.n.max(1) as f64,
        connections: stats.connections,
        job_bytes: ctx.jobs.issue("job-000000").len(),
    })
}

impl Drain {
    /// Readings common to figures 2 to 4.
    pub fn fill(&self, f: &mut Figure) {
        let (_, cpu_json) = self.cpu.per_job(self.n);
        f.set("jobs_per_s", round1(self.rate.steady));
        f.set("overall_jobs_per_s", round1(self.rate.overall));
        f.set("seconds", round1(self.rate.seconds));
        f.set("n", self.n);
        f.set("result_bytes", round1(self.result_bytes));
        f.set("dtrust_requests_per_job", round3(self.requests_per_job));
        f.set("sim_tls_connections", self.connections);
        f.set("cpu_ms_per_job", cpu_json);
    }
}

/// Measures figure 2; `broker` is figure 1 (for the ratio).
pub async fn run(ctx: &Ctx, broker: Option<&Figure>) -> Result<Figure, String> {
    let p = &ctx.params;
    let d = drain(
        ctx,
        Spec {
            name: "overhead",
            n: p.drain_jobs,
            concurrency: p.issue_concurrency,
            latency_ms: 0,
            wrapper: Vec::new(),
        },
    )
    .await?;
    let mut f = Figure::new(2, "worker overhead");
    d.fill(&mut f);
    let (cpu_text, _) = d.cpu.per_job(d.n);
    let limit = broker.and_then(|b| b.number_of("jobs_per_s"));
    let ratio = limit.map(|l| d.rate.steady / l);
    let ratio_text = match ratio {
        Some(r) => format!("ratio to figure 1: {r:.2}"),
        None => "ratio to figure 1: n/a (figure 1 not measured)".into(),
    };
    f.line = format!(
        "{:.0} jobs/s, {ratio_text} (worker end to end, N={}, prefetch {}, sim latency 0, rate limit off; results {:.0} B; {:.2} D-Trust requests/job; whole drain {:.0}/s in {:.1} s; {cpu_text})",
        d.rate.steady, d.n, p.issue_concurrency, d.result_bytes, d.requests_per_job, d.rate.overall, d.rate.seconds
    );
    f.parameters = format!(
        "the release worker (`--issue-concurrency {}`, default logging at info to a file, store in `target/bench/`) drains {} queued PKCS#10 jobs ({} B, one pre-made RSA-2048 CSR) against the in-process simulator with latency 0 and `DTRUST_MAXREQUESTSPERSECOND={RATE_LIMIT_OFF}`; rate over the 10-90 % results, as in figure 1. CPU per job: the worker process, RabbitMQ's `beam.smp`, the simulator's threads and the rest of the harness.",
        p.issue_concurrency, d.n, d.job_bytes
    );
    if let Some(r) = ratio {
        f.set("ratio_to_broker_limit", round3(r));
        f.target = Some(Target {
            text: "ratio ≥ 0.5".into(),
            met: r >= 0.5,
        });
    }
    Ok(f)
}
