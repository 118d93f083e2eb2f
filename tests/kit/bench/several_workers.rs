//! Figure 8, several workers on one prefix (issue 11): the same queued issuances
//! drained by 1, 2 and 3 worker processes at simulator latency 200 ms, each with the
//! same issue concurrency, in the default mode for several workers (a lease per job,
//! and a lookup before every order): jobs/s and the ratio to one worker. Then the
//! lease's cost at latency 0, where the broker's share shows: one worker in the same
//! mode drains the same jobs with and without the lease (`--no-lease`, a test-only
//! switch), and the difference in CPU per job (worker and RabbitMQ) and in jobs/s is
//! what the lease costs; its broker round trips are a `queue.declare` and a
//! `queue.delete` per job.

use std::time::Instant;

use super::harness::{round1, round3, Cpu, Ctx, Rate, Worker, World, RATE_LIMIT_OFF};
use super::report::Figure;
use crate::broker::amqp_url;
use crate::sim::{Faults, SimConfig};

/// One drain by `workers` processes.
struct Drained {
    workers: usize,
    rate: Rate,
    cpu: Cpu,
    orders: usize,
}

/// Queues `n` jobs, starts `workers` workers (each `extra`), waits for every result.
async fn drain(
    ctx: &Ctx,
    name: &str,
    n: usize,
    workers: usize,
    latency_ms: u64,
    extra: &[&str],
) -> Result<Drained, String> {
    let mut config = SimConfig::default_catalogue();
    config.faults = Faults {
        latency_ms,
        ..Faults::default()
    };
    let mut world = World::new(ctx, name, config).await?;
    ctx.progress(&format!("{name}: queueing {n} jobs"));
    world.prefill(ctx, "job", n).await?;
    ctx.progress(&format!(
        "{name}: draining with {workers} worker(s) (issue concurrency {} each, simulator latency {latency_ms} ms)",
        ctx.params.several_concurrency
    ));
    let cpu0 = Cpu::now(None);
    let start = Instant::now();
    let mut started: Vec<Worker> = Vec::new();
    for i in 0..workers {
        let store = world.dir.path().join(format!("store-{i}"));
        let mut args: Vec<String> = vec![
            "--bundle".into(),
            world.bundle.display().to_string(),
            "--prefix".into(),
            world.prefix.clone(),
            "--store".into(),
            store.display().to_string(),
            "--amqp-url".into(),
            amqp_url(),
            "--issue-concurrency".into(),
            ctx.params.several_concurrency.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = world.dir.path().join(format!("worker-{i}.log"));
        started.push(Worker::start(
            &ctx.worker_bin,
            &args,
            &[("DTRUST_MAXREQUESTSPERSECOND", RATE_LIMIT_OFF)],
            &log,
        )?);
    }
    let waited = world.wait_results(n).await;
    let mut cpu = Cpu::now(None).since(&cpu0);
    cpu.worker = started.iter().map(Worker::cpu_seconds).sum();
    for w in &mut started {
        w.kill();
    }
    waited?;
    world.bus.failures()?;
    let times: Vec<Instant> = world.bus.all.iter().map(|a| a.at).collect();
    Ok(Drained {
        workers,
        rate: Rate::of(&times, start),
        cpu,
        orders: world.sim.orders().len(),
    })
}

/// Measures figure 8.
pub async fn run(ctx: &Ctx) -> Result<Figure, String> {
    let p = &ctx.params;
    let mut runs = Vec::new();
    for workers in 1..=3 {
        runs.push(
            drain(
                ctx,
                &format!("several-{workers}"),
                p.several_jobs,
                workers,
                p.latency_ms,
                &[],
            )
            .await?,
        );
    }
    let one = runs[0].rate.steady;
    let scaling: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} worker(s) {:.0} jobs/s (x{:.2})",
                r.workers,
                r.rate.steady,
                r.rate.steady / one
            )
        })
        .collect();
    let with_lease = drain(ctx, "lease-on", p.lease_jobs, 1, 0, &[]).await?;
    let without = drain(ctx, "lease-off", p.lease_jobs, 1, 0, &["--no-lease"]).await?;
    let ms = |cpu: f64, n: usize| cpu * 1000.0 / n.max(1) as f64;
    let broker_ms = ms(with_lease.cpu.broker, p.lease_jobs) - ms(without.cpu.broker, p.lease_jobs);
    let worker_ms = ms(with_lease.cpu.worker, p.lease_jobs) - ms(without.cpu.worker, p.lease_jobs);
    let rate_ratio = with_lease.rate.steady / without.rate.steady;

    let mut f = Figure::new(8, "several workers");
    f.line = format!(
        "{}; the lease costs 2 broker round trips per job (queue.declare, queue.delete), broker CPU {broker_ms:+.2} ms/job, worker CPU {worker_ms:+.2} ms/job, jobs/s at latency 0 x{rate_ratio:.2} ({:.0} with, {:.0} without; N={})",
        scaling.join(", "),
        with_lease.rate.steady,
        without.rate.steady,
        p.lease_jobs
    );
    f.parameters = format!(
        "{} queued PKCS#10 jobs per run, simulator latency {} ms on every `/v1` request, `--issue-concurrency {}` per worker, rate limit off, each worker its own store, the default mode for several workers (lease and a lookup before every order, so two D-Trust requests per job: one worker can reach {:.0} jobs/s at best); the lease's cost: {} jobs at latency 0 through one worker in the same mode, with and without `--no-lease` (a test-only switch).",
        p.several_jobs,
        p.latency_ms,
        p.several_concurrency,
        f64::from(p.several_concurrency) / (2.0 * p.latency_ms as f64 / 1000.0),
        p.lease_jobs
    );
    for r in &runs {
        f.set(
            &format!("jobs_per_s_{}_workers", r.workers),
            round1(r.rate.steady),
        );
        f.set(
            &format!("ratio_{}_workers_to_one", r.workers),
            round3(r.rate.steady / one),
        );
        f.set(&format!("orders_{}_workers", r.workers), r.orders);
    }
    f.set("lease_broker_cpu_ms_per_job", round3(broker_ms));
    f.set("lease_worker_cpu_ms_per_job", round3(worker_ms));
    f.set("lease_round_trips_per_job", 2);
    f.set("lease_rate_ratio", round3(rate_ratio));
    for r in &runs {
        if r.orders != p.several_jobs {
            f.notes.push(format!(
                "{} worker(s) placed {} orders for {} jobs",
                r.workers, r.orders, p.several_jobs
            ));
        }
    }
    Ok(f)
}
