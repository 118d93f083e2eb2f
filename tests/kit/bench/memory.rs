//! Figure 6, memory and growth: the worker drains a queued backlog (10,000 jobs; with
//! `BENCH_FULL=1` also 100,000) while the harness samples its RSS (`VmRSS` every
//! 50 ms) and reads its peak (`VmHWM`) at the end. RSS when 25 %, 50 % and 100 % of
//! the results had arrived shows whether memory grows with the jobs processed. Then
//! the store: its size on disk after the drain (worker stopped with SIGTERM, so
//! flushed), and after the retention purge (the worker started again with
//! `--retention-days 0`, which purges every delivered record at start-up).

use std::time::{Duration, Instant};

use serde_json::json;

use super::harness::{
    dir_size, mib, round1, round3, rss_at, Ctx, RssSampler, World, RATE_LIMIT_OFF,
};
use super::report::{Figure, Target};
use crate::sim::SimConfig;

/// One drain's readings.
struct Reading {
    n: usize,
    rss_start_kib: u64,
    rss_kib: [u64; 3],
    hwm_kib: u64,
    store_after: (u64, u64),
    store_purged: Option<(u64, u64)>,
    purged: Option<u64>,
    jobs_per_s: f64,
}

async fn measure(ctx: &Ctx, n: usize) -> Result<Reading, String> {
    let p = &ctx.params;
    let mut world = World::new(ctx, &format!("memory{n}"), SimConfig::default_catalogue()).await?;
    ctx.progress(&format!("figure 6: queueing {n} jobs"));
    world.prefill(ctx, "mem", n).await?;
    ctx.progress(&format!("figure 6: draining {n} jobs"));
    let start = Instant::now();
    world.start_worker(ctx, p.issue_concurrency, &[], RATE_LIMIT_OFF)?;
    let pid = world.pid().ok_or("no worker")?;
    let sampler = RssSampler::start(pid);
    let waited = world.wait_results(n).await;
    let hwm_kib = world
        .worker
        .as_ref()
        .and_then(|w| w.memory_kib())
        .map(|(_, hwm)| hwm)
        .unwrap_or(0);
    let samples = sampler.finish();
    waited?;
    world.bus.failures()?;
    let mut times: Vec<Instant> = world.bus.all.iter().map(|a| a.at).collect();
    times.sort();
    let at = |q: usize| times[(n * q / 100).clamp(1, n) - 1];
    let rss_kib = [
        rss_at(&samples, at(25)),
        rss_at(&samples, at(50)),
        rss_at(&samples, at(100)),
    ];
    let rss_start_kib = samples.first().map(|(_, v)| *v).unwrap_or(0);
    let elapsed = times
        .last()
        .map(|t| t.duration_since(start).as_secs_f64())
        .unwrap_or(0.0);

    let store = world.store();
    let clean = world
        .worker
        .as_mut()
        .map(|w| w.terminate(Duration::from_secs(60)))
        .unwrap_or(false);
    if !clean {
        return Err(world.with_log("the worker did not stop cleanly on SIGTERM".into()));
    }
    let store_after = dir_size(&store);

    ctx.progress("figure 6: restarting with --retention-days 0 to purge");
    let log = world.dir.path().join("worker.log");
    let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
    world.start_worker(
        ctx,
        p.issue_concurrency,
        &["--retention-days", "0"],
        RATE_LIMIT_OFF,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30 + n as u64 / 200);
    let mut purged = None;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let new = text.get(before..).unwrap_or("");
        if let Some(line) = new.lines().find(|l| l.contains("purged")) {
            purged = line
                .split("purged=")
                .nth(1)
                .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|v| v.parse().ok())
                .or(Some(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let clean = world
        .worker
        .as_mut()
        .map(|w| w.terminate(Duration::from_secs(60)))
        .unwrap_or(false);
    let store_purged = (purged.is_some() && clean).then(|| dir_size(&store));
    Ok(Reading {
        n,
        rss_start_kib,
        rss_kib,
        hwm_kib,
        store_after,
        store_purged,
        purged,
        jobs_per_s: n as f64 / elapsed.max(f64::MIN_POSITIVE),
    })
}

/// Measures figure 6.
pub async fn run(ctx: &Ctx) -> Result<Figure, String> {
    let mut readings = Vec::new();
    for &n in &ctx.params.memory_jobs {
        readings.push(measure(ctx, n).await?);
    }
    let mut f = Figure::new(6, "memory and growth");
    let mut parts = Vec::new();
    let mut met = true;
    let mut json_runs = Vec::new();
    for r in &readings {
        let [r25, r50, r100] = r.rss_kib;
        let growth = r100 as f64 / r25.max(1) as f64;
        let second_half = r100 as f64 / r50.max(1) as f64;
        met &= second_half <= 1.2;
        let purge = match (r.store_purged, r.purged) {
            (Some(s), Some(k)) => format!(
                "{} MiB on disk ({} MiB of files) after purging {k} records",
                mib(s.1, true),
                mib(s.0, true)
            ),
            _ => "purge not observed".into(),
        };
        parts.push(format!(
            "{} jobs: peak RSS {} MiB; RSS at 25/50/100 % {}/{}/{} MiB (x{growth:.2} from 25 % to 100 %, x{second_half:.2} from 50 %); store {} MiB on disk ({} MiB of files) after the drain, {purge}",
            r.n,
            mib(r.hwm_kib, false),
            mib(r25, false),
            mib(r50, false),
            mib(r100, false),
            mib(r.store_after.1, true),
            mib(r.store_after.0, true),
        ));
        json_runs.push(json!({
            "jobs": r.n,
            "peak_rss_mib": mib(r.hwm_kib, false),
            "rss_start_mib": mib(r.rss_start_kib, false),
            "rss_25_mib": mib(r25, false),
            "rss_50_mib": mib(r50, false),
            "rss_100_mib": mib(r100, false),
            "growth_25_to_100": round3(growth),
            "growth_50_to_100": round3(second_half),
            "store_after_drain_bytes_allocated": r.store_after.1,
            "store_after_drain_bytes_apparent": r.store_after.0,
            "store_after_purge_bytes_allocated": r.store_purged.map(|s| s.1),
            "store_after_purge_bytes_apparent": r.store_purged.map(|s| s.0),
            "records_purged": r.purged,
            "jobs_per_s": round1(r.jobs_per_s),
        }));
    }
    if readings.len() > 1 {
        let (a, b) = (&readings[0], &readings[readings.len() - 1]);
        let ratio = b.hwm_kib as f64 / a.hwm_kib.max(1) as f64;
        met &= ratio <= 1.2;
        parts.push(format!(
            "peak RSS at {} jobs over {} jobs: x{ratio:.2}",
            b.n, a.n
        ));
        f.set("peak_ratio_largest_to_smallest", round3(ratio));
    }
    f.line = parts.join("; ");
    f.set("runs", json_runs);
    f.parameters = format!(
        "for each backlog ({}), a fresh worker (issue concurrency {}, sim latency 0, rate limit off, default retention) drains the queued PKCS#10 jobs; VmRSS sampled every 50 ms, VmHWM read at the end; the store's files summed (allocated blocks and apparent size) after SIGTERM, then again after a start with `--retention-days 0` (the purge runs at start-up; the figure waits for its log line).",
        ctx.params
            .memory_jobs
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        ctx.params.issue_concurrency
    );
    if !ctx.params.full {
        f.notes
            .push("Quick mode: 10,000 jobs only; `BENCH_FULL=1` adds 100,000.".into());
    }
    f.target = Some(Target {
        text: "memory does not grow with jobs processed: RSS at 100 % ≤ 1.2 × RSS at 50 % of each drain (the first quarter is start-up and the store's cache filling); full mode also peak at 100,000 ≤ 1.2 × peak at 10,000".into(),
        met,
    });
    Ok(f)
}
