//! Figure 3, latency hiding: every D-Trust request takes 200 ms at the simulator (the
//! `latency_ms` fault on every `/v1` endpoint), the worker runs with issue concurrency
//! 64 and the rate limit off. With one request per job, 64 jobs in flight can at best
//! finish 64 / 0.2 s = 320 jobs/s; the figure is the measured rate over that.

use super::harness::{round3, Ctx};
use super::report::{Figure, Target};
use super::worker_overhead::{drain, Spec};

/// The best rate `concurrency` jobs in flight allow at `latency_ms` per job.
pub fn ideal(concurrency: u16, latency_ms: u64) -> f64 {
    f64::from(concurrency) / (latency_ms as f64 / 1000.0)
}

/// Measures figure 3.
pub async fn run(ctx: &Ctx) -> Result<Figure, String> {
    let p = &ctx.params;
    let d = drain(
        ctx,
        Spec {
            name: "hiding",
            n: p.hiding_jobs,
            concurrency: p.hiding_concurrency,
            latency_ms: p.latency_ms,
            wrapper: Vec::new(),
        },
    )
    .await?;
    let ideal = ideal(p.hiding_concurrency, p.latency_ms);
    let ratio = d.rate.steady / ideal;
    let (cpu_text, _) = d.cpu.per_job(d.n);
    let mut f = Figure::new(3, "latency hiding");
    d.fill(&mut f);
    f.line = format!(
        "{:.0} jobs/s, ratio to {} / {:.1} s = {ideal:.0}/s: {ratio:.2} (N={}, sim latency {} ms, rate limit off; {:.2} D-Trust requests/job, {} TLS connections; whole drain {:.0}/s in {:.1} s; {cpu_text})",
        d.rate.steady, p.hiding_concurrency, p.latency_ms as f64 / 1000.0, d.n, p.latency_ms,
        d.requests_per_job, d.connections, d.rate.overall, d.rate.seconds
    );
    f.parameters = format!(
        "{} queued PKCS#10 jobs, simulator latency {} ms on every `/v1` request, `--issue-concurrency {}`, `DTRUST_MAXREQUESTSPERSECOND=10000`; rate over the 10-90 % results.",
        d.n, p.latency_ms, p.hiding_concurrency
    );
    f.set("ideal_jobs_per_s", ideal);
    f.set("ratio_to_ideal", round3(ratio));
    f.set("concurrency", p.hiding_concurrency);
    f.set("latency_ms", p.latency_ms);
    f.target = Some(Target {
        text: "ratio ≥ 0.9".into(),
        met: ratio >= 0.9,
    });
    if d.requests_per_job > 1.05 {
        f.notes.push(format!(
            "The worker made {:.2} D-Trust requests per job, so each job waits more than one latency; the ideal assumes one.",
            d.requests_per_job
        ));
    }
    Ok(f)
}
