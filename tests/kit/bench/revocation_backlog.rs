//! Figure 5, revocation under backlog: the time from publish to result of 100
//! revocations, first on an idle worker, then while an issuance backlog of 10,000 jobs
//! (in quick mode too) is queued and being worked off, on the same worker. Publish time
//! and result arrival are both taken at the harness. The revocations are of
//! certificates seeded in the simulator, published one every 20 ms (so that each
//! measures the path through the worker, not a queue of revocations), with the worker's
//! default concurrencies (issue 16, revoke 4), simulator latency 0 and the rate limit
//! off: the issuance lane keeps the CPUs, the store and the result publisher as busy as
//! it can.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::harness::{check, percentile, round1, round3, Ctx, World, RATE_LIMIT_OFF};
use super::report::{Figure, Target};
use crate::sim::SimConfig;

const PASSWORD: &str = "Revocation-password-1";

/// Latencies (ms, sorted) of `count` paced revocations `{tag}-NNN`.
async fn revocations(
    ctx: &Ctx,
    world: &mut World,
    tag: &str,
    count: usize,
) -> Result<Vec<f64>, String> {
    let spacing = Duration::from_millis(ctx.params.revocation_spacing_ms);
    let mut interval = tokio::time::interval(spacing);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(count);
    let mut confirms = Vec::with_capacity(count);
    let tag_code = tag
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    for i in 0..count {
        let serial = format!("5E{tag_code:08X}{i:06X}");
        world.sim.seed_certificate(&serial, PASSWORD);
        let id = format!("{tag}-{i:03}");
        let body = ctx.jobs.revoke(&id, &serial, PASSWORD);
        interval.tick().await;
        let (at, confirm) = world.bus.publish_timed("revoke", &id, &body).await?;
        sent.push((id, at));
        confirms.push(confirm);
    }
    for c in confirms {
        check(c.await)?;
    }
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let done = world
        .bus
        .wait_until(Duration::from_secs(120), |b| ids.iter().all(|id| b.has(id)))
        .await;
    if !done {
        let missing = ids.iter().filter(|id| !world.bus.has(id)).count();
        return Err(world.with_log(format!("{missing} of {count} revocations got no result")));
    }
    let arrived: HashMap<&str, Instant> = world
        .bus
        .all
        .iter()
        .rev()
        .map(|a| (a.job_id.as_str(), a.at))
        .collect();
    let mut ms: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| {
            arrived
                .get(id.as_str())
                .map(|r| r.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// Measures figure 5.
pub async fn run(ctx: &Ctx) -> Result<Figure, String> {
    let p = &ctx.params;
    let mut world = World::new(ctx, "revoke", SimConfig::default_catalogue()).await?;
    world.start_worker(ctx, p.issue_concurrency, &[], RATE_LIMIT_OFF)?;
    world
        .bus
        .wait_consumer(&world.bus.names.revoke.clone(), Duration::from_secs(60))
        .await
        .map_err(|e| world.with_log(e))?;
    ctx.progress("figure 5: warm-up and 100 revocations on the idle worker");
    revocations(ctx, &mut world, "warm", 5).await?;
    let idle = revocations(ctx, &mut world, "idle", p.revocations).await?;

    ctx.progress(&format!(
        "figure 5: queueing {} issuance jobs, then 100 revocations",
        p.backlog_jobs
    ));
    world.prefill(ctx, "backlog", p.backlog_jobs).await?;
    let issue_queue = world.bus.names.issue.clone();
    let (queued_before, _) = world.bus.queue_state(&issue_queue).await?;
    let busy = revocations(ctx, &mut world, "busy", p.revocations).await?;
    let (queued_after, _) = world.bus.queue_state(&issue_queue).await?;
    world.bus.drain();
    let issued = world.bus.all.iter().filter(|a| a.kind == "issue").count();
    world.bus.failures()?;
    if let Some(w) = world.worker.as_mut() {
        w.kill();
    }

    let (i50, i99) = (percentile(&idle, 50.0), percentile(&idle, 99.0));
    let (b50, b99) = (percentile(&busy, 50.0), percentile(&busy, 99.0));
    let r50 = b50 / i50.max(f64::MIN_POSITIVE);
    let r99 = b99 / i99.max(f64::MIN_POSITIVE);
    let mut f = Figure::new(5, "revocation under backlog");
    f.line = format!(
        "idle p50 {i50:.1} ms / p99 {i99:.1} ms; behind the backlog p50 {b50:.1} ms / p99 {b99:.1} ms; ratio p50 {r50:.2}, p99 {r99:.2} ({} revocations; {} issuance jobs queued, {queued_before} still ready when the revocations started, {queued_after} when the last revocation finished)",
        p.revocations, p.backlog_jobs
    );
    f.parameters = format!(
        "one worker (issue concurrency {}, revoke concurrency {}, sim latency 0, rate limit off); {} revocations of seeded certificates published one every {} ms on the idle worker (after 5 warm-up revocations), then {} PKCS#10 issuance jobs queued and the same number of revocations published the same way; publish-to-result time taken at the harness, nearest-rank percentiles.",
        p.issue_concurrency, p.revoke_concurrency, p.revocations, p.revocation_spacing_ms, p.backlog_jobs
    );
    if queued_after == 0 {
        f.notes.push("The backlog was worked off before the last revocation finished, so the last revocations ran without it.".into());
    }
    f.set("idle_p50_ms", round1(i50));
    f.set("idle_p99_ms", round1(i99));
    f.set("backlog_p50_ms", round1(b50));
    f.set("backlog_p99_ms", round1(b99));
    f.set("ratio_p50", round3(r50));
    f.set("ratio_p99", round3(r99));
    f.set("backlog_jobs", p.backlog_jobs);
    f.set("backlog_ready_at_start", queued_before);
    f.set("backlog_ready_at_end", queued_after);
    f.set("issuance_results_during", issued);
    f.target = Some(Target {
        text: "ratio ≤ 2 (p50 and p99)".into(),
        met: r50 <= 2.0 && r99 <= 2.0,
    });
    Ok(f)
}
