//! The worker's hot path during a figure-2 drain (simulator latency 0, rate limit off,
//! the same N and prefetch), twice, each with a fresh worker under a profiler:
//!
//! 1. `perf record -e cpu-clock -F 499 --call-graph dwarf` (software clock: no hardware
//!    counters are needed, so it works in VMs): where the worker spends its CPU time,
//!    by symbol (self time), by crate, and by symbol including what it calls (children).
//! 2. `perf trace -s`: every system call with its count and the time spent in it
//!    (off-CPU time too, e.g. `fsync`), per job.
//!
//! Both slow the worker down; the rates they ran at are reported, never used as
//! figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::harness::{round1, round3, Ctx};
use super::worker_overhead::{drain, Spec};

/// One line of a perf report.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub percent: f64,
    pub dso: String,
    pub symbol: String,
    /// A kernel symbol (`[k]`).
    pub kernel: bool,
}

/// A system call's totals over the drain.
#[derive(Debug, Clone, Serialize)]
pub struct Syscall {
    pub name: String,
    pub calls: u64,
    pub total_ms: f64,
    pub calls_per_job: f64,
}

/// The worker's threads of one name, from `perf trace -s`.
#[derive(Debug, Clone, Serialize)]
pub struct Threads {
    pub name: String,
    pub count: u64,
    pub events: u64,
}

/// What the profile found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Profile {
    pub jobs: usize,
    pub samples: String,
    pub jobs_per_s_under_record: f64,
    pub jobs_per_s_under_trace: f64,
    /// By self time.
    pub top: Vec<Entry>,
    /// Including callees.
    pub top_children: Vec<Entry>,
    /// Self time by library (`[kernel.kallsyms]`, `dtrust-worker`, `libc.so.6`).
    pub dsos: Vec<(f64, String)>,
    /// Self time summed by crate (first path segment of the symbol), the kernel, or
    /// the library when the symbol is unknown.
    pub crates: Vec<(f64, String)>,
    pub syscalls: Vec<Syscall>,
    /// Threads by name (trailing numbers dropped): how many, and their syscalls.
    pub threads: Vec<Threads>,
    pub commands: Vec<String>,
    pub notes: Vec<String>,
}

/// Whether `perf` can sample here.
pub fn perf_available() -> bool {
    Command::new("perf")
        .args(["stat", "-e", "cpu-clock", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn strip_hash(symbol: &str) -> String {
    // Legacy Rust mangling leaves `::h0123456789abcdef` at the end.
    match symbol.rfind("::h") {
        Some(i)
            if symbol.len() - i == 19 && symbol[i + 3..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            symbol[..i].to_string()
        }
        _ => symbol.to_string(),
    }
}

/// The crate (or library) a symbol belongs to.
fn crate_of(entry: &Entry) -> String {
    let s = entry.symbol.trim_start_matches(['<', '&', '*', ' ']);
    let s = s.strip_prefix("mut ").unwrap_or(s);
    let s = s.strip_prefix("dyn ").unwrap_or(s);
    if entry.kernel {
        return "[kernel]".into();
    }
    if entry.symbol.starts_with("0x") || s.is_empty() {
        return format!("[{}]", entry.dso);
    }
    match s.find("::") {
        Some(i) if !s[..i].contains(' ') => s[..i].to_string(),
        _ => format!("[{}]", entry.dso),
    }
}

/// Parses `perf report --stdio -q --sort dso,sym` lines: `12.34%  dso  [.] symbol`.
fn parse_report(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((pct, rest)) = line.split_once('%') else {
            continue;
        };
        let Ok(percent) = pct.trim().parse::<f64>() else {
            continue;
        };
        // With --children, a second percentage (self) follows the first.
        let rest = rest.trim_start();
        let rest = match rest.split_once('%') {
            Some((p, r)) if p.trim().parse::<f64>().is_ok() => r.trim_start(),
            _ => rest,
        };
        let Some((dso, sym)) = rest.split_once(" [") else {
            continue;
        };
        let kernel = sym.starts_with("k]");
        let symbol = sym.get(3..).unwrap_or("").trim();
        entries.push(Entry {
            percent,
            dso: dso.trim().to_string(),
            symbol: strip_hash(symbol),
            kernel,
        });
    }
    entries
}

/// Parses the summary of `perf trace -s` (per thread), summed by system call.
fn parse_trace(text: &str, jobs: usize) -> Vec<Syscall> {
    let mut by_name: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut errors_column = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("syscall") {
            errors_column = t.contains("errors");
            continue;
        }
        let cols: Vec<&str> = t.split_whitespace().collect();
        if cols.len() < 4
            || !cols[0]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            continue;
        }
        let Ok(calls) = cols[1].parse::<u64>() else {
            continue;
        };
        let total_at = if errors_column { 3 } else { 2 };
        let Some(total) = cols.get(total_at).and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let e = by_name.entry(cols[0].to_string()).or_default();
        e.0 += calls;
        e.1 += total;
    }
    let mut out: Vec<Syscall> = by_name
        .into_iter()
        .map(|(name, (calls, total_ms))| Syscall {
            name,
            calls,
            total_ms: round1(total_ms),
            calls_per_job: round3(calls as f64 / jobs.max(1) as f64),
        })
        .collect();
    out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    out
}

/// Threads by name from the per-thread headers of `perf trace -s`:
/// ` NAME (TID), N events, P%`.
fn parse_threads(text: &str) -> Vec<Threads> {
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let t = line.trim();
        let Some((name, rest)) = t.rsplit_once(" (") else {
            continue;
        };
        let Some((tid, rest)) = rest.split_once("), ") else {
            continue;
        };
        if !tid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Some(events) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let group = match name.rsplit_once('-') {
            Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                head.to_string()
            }
            _ => name.to_string(),
        };
        let e = by_name.entry(group).or_default();
        e.0 += 1;
        e.1 += events;
    }
    let mut out: Vec<Threads> = by_name
        .into_iter()
        .map(|(name, (count, events))| Threads {
            name,
            count,
            events,
        })
        .collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.events));
    out
}

/// Frames every thread has (thread start, closures of the runtime): no information.
fn scaffolding(symbol: &str) -> bool {
    [
        "thread_start",
        "start_thread",
        "clone3",
        "{{vtable.shim}}",
        "__rust_begin_short_backtrace",
        "0xffffffffffffffff",
        "tokio::runtime::",
        "std::panicking",
        "std::panic::",
        "__libc_start",
        "core::ops::function::",
        "std::rt::",
        "std::thread::",
    ]
    .iter()
    .any(|s| symbol.contains(s))
        || symbol == "main"
        || symbol == "_start"
}

fn perf_report(data: &Path, extra: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("perf");
    cmd.arg("report")
        .arg("-i")
        .arg(data)
        .args(["--stdio", "-g", "none"])
        .args(extra);
    let out = cmd.output().map_err(|e| format!("perf report: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Profiles two figure-2 drains; writes the perf data to `target/bench/`.
pub async fn run(ctx: &Ctx) -> Result<Profile, String> {
    if !perf_available() {
        return Err("perf is not available (`perf stat -e cpu-clock true` fails)".into());
    }
    let p = &ctx.params;
    let n = p.drain_jobs;
    let data: PathBuf = ctx.work_dir.join("perf-worker.data");
    let trace: PathBuf = ctx.work_dir.join("perf-trace.txt");
    let record = vec![
        "perf".to_string(),
        "record".into(),
        "-q".into(),
        "-e".into(),
        "cpu-clock".into(),
        "-F".into(),
        "499".into(),
        "--call-graph".into(),
        "dwarf,8192".into(),
        "-o".into(),
        data.display().to_string(),
    ];
    ctx.progress("profile: perf record during a figure-2 drain");
    let recorded = drain(
        ctx,
        Spec {
            name: "profile",
            n,
            concurrency: p.issue_concurrency,
            latency_ms: 0,
            wrapper: record.clone(),
        },
    )
    .await?;
    ctx.progress("profile: perf report");
    let by_dso = perf_report(&data, &["--no-children", "--sort", "dso"])?;
    let samples = by_dso
        .lines()
        .find(|l| l.starts_with("# Samples"))
        .map(|l| l.trim_start_matches(['#', ' ']).to_string())
        .unwrap_or_default();
    let dsos: Vec<(f64, String)> = by_dso
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (pct, dso) = l.trim().split_once('%')?;
            Some((pct.trim().parse::<f64>().ok()?, dso.trim().to_string()))
        })
        .collect();
    let flat = perf_report(&data, &["-q", "--no-children", "--sort", "dso,sym"])?;
    let top = parse_report(&flat);
    let mut crates: BTreeMap<String, f64> = BTreeMap::new();
    for e in &top {
        *crates.entry(crate_of(e)).or_default() += e.percent;
    }
    let mut crates: Vec<(f64, String)> = crates.into_iter().map(|(k, v)| (round1(v), k)).collect();
    crates.sort_by(|a, b| b.0.total_cmp(&a.0));
    ctx.progress("profile: perf report --children (unwinding the call graphs takes a while)");
    let children = perf_report(
        &data,
        &[
            "-q",
            "--children",
            "--sort",
            "dso,sym",
            "--percent-limit",
            "1",
        ],
    )?;
    let top_children: Vec<Entry> = parse_report(&children)
        .into_iter()
        .filter(|e| !e.kernel && !scaffolding(&e.symbol))
        .take(30)
        .collect();

    let trace_cmd = vec![
        "perf".to_string(),
        "trace".into(),
        "-s".into(),
        "-o".into(),
        trace.display().to_string(),
    ];
    ctx.progress("profile: perf trace -s during a figure-2 drain");
    let traced = drain(
        ctx,
        Spec {
            name: "trace",
            n,
            concurrency: p.issue_concurrency,
            latency_ms: 0,
            wrapper: trace_cmd.clone(),
        },
    )
    .await;
    let mut notes = Vec::new();
    let (syscalls, threads, trace_rate) = match traced {
        Ok(d) => {
            let text = std::fs::read_to_string(&trace).unwrap_or_default();
            (parse_trace(&text, n), parse_threads(&text), d.rate.steady)
        }
        Err(e) => {
            notes.push(format!(
                "perf trace did not run: {}",
                e.lines().next().unwrap_or("")
            ));
            (Vec::new(), Vec::new(), 0.0)
        }
    };
    Ok(Profile {
        jobs: n,
        samples,
        jobs_per_s_under_record: round1(recorded.rate.steady),
        jobs_per_s_under_trace: round1(trace_rate),
        top: top
            .into_iter()
            .filter(|e| e.percent >= 0.5)
            .take(30)
            .collect(),
        top_children,
        dsos,
        crates: crates.into_iter().filter(|c| c.0 >= 0.1).take(20).collect(),
        syscalls: syscalls.into_iter().take(15).collect(),
        threads: threads.into_iter().take(10).collect(),
        commands: vec![
            format!(
                "{} -- target/release/dtrust-worker run ...",
                record.join(" ")
            ),
            "perf report --stdio --no-children --sort dso,sym".into(),
            format!(
                "{} -- target/release/dtrust-worker run ...",
                trace_cmd.join(" ")
            ),
        ],
        notes,
    })
}

impl Profile {
    /// One line for standard output.
    pub fn summary(&self) -> String {
        let dsos: Vec<String> = self
            .dsos
            .iter()
            .take(3)
            .map(|(p, d)| format!("{d} {p:.1}%"))
            .collect();
        let children: Vec<String> = self
            .top_children
            .iter()
            .filter(|e| e.symbol.starts_with("sled::") || e.symbol.contains("dtrust_worker"))
            .take(5)
            .map(|e| format!("{:.1}% {}", e.percent, e.symbol))
            .collect();
        let sys: Vec<String> = self
            .syscalls
            .iter()
            .filter(|s| s.name != "futex")
            .take(4)
            .map(|s| format!("{} {:.2}/job", s.name, s.calls_per_job))
            .collect();
        format!(
            "profile (figure-2 drain of {} jobs): CPU by library: {}; including callees: {}; syscalls: {}",
            self.jobs,
            dsos.join(", "),
            children.join(", "),
            sys.join(", ")
        )
    }

    /// The generated profile section of `BENCHMARKS.md`.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "_Generated by `dtrust-bench --profile` (or `--profile-only`): a figure-2 drain of {} jobs (sim latency 0, rate limit off, issue concurrency as figure 2), the worker under each profiler in turn; {}. The worker ran at {:.0} jobs/s under `perf record` and {:.0} jobs/s under `perf trace`._\n\n",
            self.jobs, self.samples, self.jobs_per_s_under_record, self.jobs_per_s_under_trace
        ));
        s.push_str("Commands:\n\n");
        for c in &self.commands {
            s.push_str(&format!("- `{c}`\n"));
        }
        let sym = |e: &Entry| {
            e.symbol
                .replace('|', "\\|")
                .chars()
                .take(150)
                .collect::<String>()
        };
        s.push_str("\n#### CPU by library (self time)\n\n| % | library |\n|---|---|\n");
        for (p, d) in &self.dsos {
            s.push_str(&format!("| {p:.2} | `{d}` |\n"));
        }
        s.push_str(
            "\n#### CPU by crate (self time; the kernel as one)\n\n| % | crate |\n|---|---|\n",
        );
        for (p, c) in &self.crates {
            s.push_str(&format!("| {p:.1} | `{c}` |\n"));
        }
        s.push_str("\n#### Top symbols, self time\n\n| % | library | symbol |\n|---|---|---|\n");
        for e in &self.top {
            s.push_str(&format!(
                "| {:.2} | {} | `{}` |\n",
                e.percent,
                e.dso,
                sym(e)
            ));
        }
        s.push_str("\n#### Top user-space symbols including their callees (kernel time included; thread and runtime frames left out)\n\n| % | library | symbol |\n|---|---|---|\n");
        for e in &self.top_children {
            s.push_str(&format!(
                "| {:.2} | {} | `{}` |\n",
                e.percent,
                e.dso,
                sym(e)
            ));
        }
        if !self.syscalls.is_empty() {
            s.push_str("\n#### System calls (`perf trace -s`, all threads; the time includes blocking, e.g. idle threads in `futex`)\n\n| syscall | calls | per job | total ms |\n|---|---|---|---|\n");
            for c in &self.syscalls {
                s.push_str(&format!(
                    "| {} | {} | {:.2} | {:.0} |\n",
                    c.name, c.calls, c.calls_per_job, c.total_ms
                ));
            }
        }
        if !self.threads.is_empty() {
            s.push_str("\n#### Threads by name (`perf trace -s`)\n\n| thread name | threads | syscall events |\n|---|---|---|\n");
            for t in &self.threads {
                s.push_str(&format!("| `{}` | {} | {} |\n", t.name, t.count, t.events));
            }
        }
        for n in &self.notes {
            s.push_str(&format!("\n{n}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_report_lines_and_groups_them_by_crate() {
        let text = "    17.71%  [kernel.kallsyms]  [k] finish_task_switch.isra.0\n     0.88%  dtrust-worker      [.] serde_json::ser::format_escaped_str::h0123456789abcdef\n     0.50%  dtrust-worker      [.] <sled::ivec::IVec as sled::serialization::Serialize>::serialize_into\n     0.40%  libc.so.6          [.] _int_malloc\n";
        let entries = parse_report(text);
        assert_eq!(entries.len(), 4);
        assert!(entries[0].kernel);
        assert_eq!(entries[1].symbol, "serde_json::ser::format_escaped_str");
        let crates: Vec<String> = entries.iter().map(crate_of).collect();
        assert_eq!(crates, ["[kernel]", "serde_json", "sled", "[libc.so.6]"]);
        let children = "    46.76%     0.12%  dtrust-worker  [.] sled::threadpool::perform_work\n";
        assert_eq!(parse_report(children)[0].percent, 46.76);
    }

    #[test]
    fn parses_perf_trace_summaries() {
        let text = " Summary of events:\n\n sled-io-205 (768), 754 events, 0.0%\n\n   syscall            calls  errors  total       min       avg       max       stddev\n                                     (msec)    (msec)    (msec)    (msec)        (%)\n   --------------- --------  ------ -------- --------- --------- ---------     ------\n   sync_file_range       47      0    14.814     0.037     0.315     1.244     13.02%\n   pwrite64              47      0     1.231     0.012     0.026     0.322     28.04%\n\n log flusher (515), 1012 events, 0.0%\n\n   syscall            calls  errors  total       min       avg       max       stddev\n   fsync                 51      0    25.580     0.139     0.502     3.246     15.63%\n   pwrite64               3      0     1.000     0.012     0.026     0.322     28.04%\n";
        let calls = parse_trace(text, 10);
        let pwrite = calls.iter().find(|c| c.name == "pwrite64").unwrap();
        assert_eq!(pwrite.calls, 50);
        assert_eq!(pwrite.calls_per_job, 5.0);
        assert_eq!(calls[0].name, "fsync");
        let threads = parse_threads(text);
        assert_eq!(threads.len(), 2);
        assert_eq!(threads[0].name, "log flusher");
        assert_eq!(threads[1].name, "sled-io");
    }
}
