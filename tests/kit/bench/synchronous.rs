//! Figure 4, against the synchronous way: the load of figure 3 (simulator latency
//! 200 ms, rate limit off) with issue concurrency 1, one order at a time as a
//! synchronous connector call makes them. The figure is its rate, and how many times
//! faster figure 3 is.

use super::harness::{round3, Ctx};
use super::latency_hiding::ideal;
use super::report::Figure;
use super::worker_overhead::{drain, Spec};

/// Measures figure 4; `hiding` is figure 3 (for the ratio).
pub async fn run(ctx: &Ctx, hiding: Option<&Figure>) -> Result<Figure, String> {
    let p = &ctx.params;
    let d = drain(
        ctx,
        Spec {
            name: "sync",
            n: p.sync_jobs,
            concurrency: 1,
            latency_ms: p.latency_ms,
            wrapper: Vec::new(),
        },
    )
    .await?;
    let mut f = Figure::new(4, "synchronous (concurrency 1)");
    d.fill(&mut f);
    let ideal1 = ideal(1, p.latency_ms);
    let speedup = hiding
        .and_then(|h| h.number_of("jobs_per_s"))
        .map(|h| h / d.rate.steady.max(f64::MIN_POSITIVE));
    let speedup_text = match speedup {
        Some(s) => format!("figure 3 is {s:.1} times faster"),
        None => "ratio: n/a (figure 3 not measured)".into(),
    };
    f.line = format!(
        "{:.2} jobs/s ({:.2} of the {ideal1:.0}/s one request at a time allows), {speedup_text} (N={}, sim latency {} ms, concurrency 1)",
        d.rate.steady,
        d.rate.steady / ideal1,
        d.n,
        p.latency_ms
    );
    f.parameters = format!(
        "as figure 3 with `--issue-concurrency 1` and {} jobs; rate over the 10-90 % results.",
        d.n
    );
    f.set("ratio_to_one_at_a_time", round3(d.rate.steady / ideal1));
    if let Some(s) = speedup {
        f.set("figure3_over_figure4", round3(s));
    }
    Ok(f)
}
