//! Figure 7, rate limit accuracy: the worker runs with `maxRequestsPerSecond` 50
//! (`DTRUST_MAXREQUESTSPERSECOND=50`) and more queued jobs than it can order in the
//! window; the harness samples the simulator's request counters (`Sim::stats`, every
//! `/v1` request) every 100 ms. After a warm-up (the limiter's initial burst) it takes
//! the requests the simulator saw over the window (30 s, in quick mode too).

use std::time::{Duration, Instant};

use super::harness::{round1, round3, Ctx, World};
use super::report::{Figure, Target};
use crate::sim::{SimConfig, Stats};

fn total(stats: &Stats) -> u64 {
    stats.requests.values().flat_map(|m| m.values()).sum()
}

/// The first sample at or after `at`.
fn sample_at(samples: &[(Instant, u64)], at: Instant) -> Option<(Instant, u64)> {
    samples.iter().find(|(t, _)| *t >= at).copied()
}

/// Measures figure 7.
pub async fn run(ctx: &Ctx) -> Result<Figure, String> {
    let p = &ctx.params;
    let mut world = World::new(ctx, "ratelimit", SimConfig::default_catalogue()).await?;
    ctx.progress(&format!("figure 7: queueing {} jobs", p.rate_jobs));
    world.prefill(ctx, "rate", p.rate_jobs).await?;
    let limit = format!("{}", p.rate_limit);
    ctx.progress(&format!(
        "figure 7: worker at {limit} requests/s, {} s warm-up + {} s window",
        p.rate_warmup_s, p.rate_window_s
    ));
    world.start_worker(ctx, p.issue_concurrency, &[], &limit)?;
    let base = total(&world.sim.stats());
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let first_deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let n = total(&world.sim.stats());
        if n > base {
            break Instant::now();
        }
        if Instant::now() > first_deadline {
            return Err(
                world.with_log("the worker sent no request to the simulator within 60 s".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let t0 = first + Duration::from_secs(p.rate_warmup_s);
    let t1 = t0 + Duration::from_secs(p.rate_window_s);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while samples.last().is_none_or(|(t, _)| *t < t1) {
        tick.tick().await;
        samples.push((Instant::now(), total(&world.sim.stats())));
        world.bus.drain();
    }
    world.bus.drain();
    let done = world.bus.distinct();
    world.bus.failures()?;
    if let Some(w) = world.worker.as_mut() {
        w.kill();
    }
    let (a_t, a_n) = sample_at(&samples, t0).ok_or("no sample at the window's start")?;
    let (b_t, b_n) = sample_at(&samples, t1).ok_or("no sample at the window's end")?;
    let seconds = b_t.duration_since(a_t).as_secs_f64();
    let rate = (b_n - a_n) as f64 / seconds;
    let ratio = rate / p.rate_limit;
    // Requests per whole second of the window, and in the first second (the burst).
    let mut per_second = Vec::new();
    let mut s = a_t;
    while s + Duration::from_secs(1) <= b_t {
        if let (Some((_, x)), Some((_, y))) = (
            sample_at(&samples, s),
            sample_at(&samples, s + Duration::from_secs(1)),
        ) {
            per_second.push(y - x);
        }
        s += Duration::from_secs(1);
    }
    let burst = sample_at(&samples, first + Duration::from_secs(1))
        .map(|(_, n)| n - base)
        .unwrap_or(0);
    let (min, max) = (
        per_second.iter().min().copied().unwrap_or(0),
        per_second.iter().max().copied().unwrap_or(0),
    );
    let mut f = Figure::new(7, "rate limit accuracy");
    f.line = format!(
        "{rate:.2} requests/s at the simulator with maxRequestsPerSecond {limit}, ratio {ratio:.3} (window {seconds:.1} s after {} s warm-up; per second {min}-{max}; {burst} requests in the first second)",
        p.rate_warmup_s
    );
    f.parameters = format!(
        "{} queued PKCS#10 jobs, `DTRUST_MAXREQUESTSPERSECOND={limit}`, issue concurrency {}, sim latency 0; the simulator's request counters (every `/v1` request) sampled every 100 ms; the window starts {} s after the first request.",
        p.rate_jobs, p.issue_concurrency, p.rate_warmup_s
    );
    if done >= p.rate_jobs {
        f.notes
            .push("The queue ran empty before the window ended: the rate is too low.".into());
    }
    f.set("requests_per_s", round3(rate));
    f.set("limit", p.rate_limit);
    f.set("ratio", round3(ratio));
    f.set("window_s", round1(seconds));
    f.set("per_second_min", min);
    f.set("per_second_max", max);
    f.set("first_second", burst);
    f.target = Some(Target {
        text: "0.95 ≤ ratio ≤ 1.02 (our reading: the issue names no bound)".into(),
        met: (0.95..=1.02).contains(&ratio),
    });
    Ok(f)
}
