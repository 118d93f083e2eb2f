//! `dtrust-bench`: the benchmarks of issue 7 against the real RabbitMQ (`AMQP_URL`,
//! default the local broker) and an in-process D-Trust simulator, with the release
//! `dtrust-worker` next to this binary. `make bench` builds both and runs it.
//!
//! ```text
//! dtrust-bench [--only N] [--json] [--profile | --profile-only] [--full] [--out FILE] [--no-write]
//! ```
//!
//! Quick mode by default (about four minutes on two cores; smaller N, said in the
//! output); `BENCH_FULL=1` (or `--full`) for the full sizes. One line per figure on
//! standard output as it is measured (`--json`: one JSON object per figure, then one
//! for the whole run), progress on standard error. Writes `BENCHMARKS.md` at the
//! workspace root when every figure ran (or with `--out`). Exits 0 when every figure
//! was measured, whatever the figures are; 1 when one could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use dtrust_testkit::bench::harness::{Ctx, JobFactory, Params};
use dtrust_testkit::bench::machine::Machine;
use dtrust_testkit::bench::report::{write_markdown, Failure, Figure, Run};
use dtrust_testkit::bench::{
    broker_limit, latency_hiding, memory, profile, rate_limit, revocation_backlog, several_workers,
    synchronous, worker_overhead,
};
use dtrust_testkit::process::workspace_root;

#[derive(Parser)]
#[command(
    name = "dtrust-bench",
    about = "Benchmarks of dtrust-worker against RabbitMQ and the D-Trust simulator (issue 7)"
)]
struct Cli {
    /// Run only figure N (1-8), plus the figure its ratio needs (2 needs 1, 4 needs 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=8))]
    only: Option<u8>,
    /// JSON output: one object per figure as measured, then one for the run.
    #[arg(long)]
    json: bool,
    /// Full sizes (as BENCH_FULL=1).
    #[arg(long)]
    full: bool,
    /// Also profile the worker during a figure-2 drain (perf record, perf trace).
    #[arg(long, env = "BENCH_PROFILE")]
    profile: bool,
    /// Only the profile, no figures; rewrites only the profile section of the report.
    #[arg(long, conflicts_with = "only")]
    profile_only: bool,
    /// Write the report here (default BENCHMARKS.md at the workspace root when every
    /// figure ran; with --only, only when this is given).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Do not write the report.
    #[arg(long)]
    no_write: bool,
    /// No progress on standard error.
    #[arg(long, short)]
    quiet: bool,
}

const TITLES: [&str; 8] = [
    "broker limit",
    "worker overhead",
    "latency hiding",
    "synchronous (concurrency 1)",
    "revocation under backlog",
    "memory and growth",
    "rate limit accuracy",
    "several workers",
];

fn env_full() -> bool {
    std::env::var("BENCH_FULL").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let worker_bin = match std::env::var_os("DTRUST_WORKER_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("dtrust-worker")))
            .unwrap_or_else(|| root.join("target/release/dtrust-worker")),
    };
    if !worker_bin.is_file() {
        eprintln!(
            "error: no worker binary at {}: build it with `cargo build --release --workspace --bins` (`make bench` does), or set DTRUST_WORKER_BIN",
            worker_bin.display()
        );
        return ExitCode::FAILURE;
    }
    let full = cli.full || env_full();
    let params = if full {
        Params::full()
    } else {
        Params::quick()
    };
    let machine = Machine::describe(&root, &worker_bin);
    let command = if std::env::var_os("MAKELEVEL").is_some() && cli.only.is_none() {
        format!("{}make bench", if full { "BENCH_FULL=1 " } else { "" })
    } else {
        let args: Vec<String> = std::env::args().skip(1).collect();
        format!(
            "{}target/release/dtrust-bench{}{}",
            if full && !cli.full {
                "BENCH_FULL=1 "
            } else {
                ""
            },
            if args.is_empty() { "" } else { " " },
            args.join(" ")
        )
    };
    if !cli.json {
        println!(
            "dtrust-bench, {} mode: {} CPUs ({}), {}, kernel {}, {}, {}, commit {}",
            if full { "full" } else { "quick" },
            machine.nproc,
            machine.cpu,
            machine.memory,
            machine.kernel,
            machine.rustc,
            machine.rabbitmq,
            machine.commit
        );
        for line in params.scaled_down() {
            println!("  quick mode: {line}");
        }
    }
    let wanted: Vec<u8> = match cli.only {
        None if cli.profile_only => Vec::new(),
        None => (1..=8).collect(),
        Some(2) => vec![1, 2],
        Some(4) => vec![3, 4],
        Some(n) => vec![n],
    };
    let ctx = Ctx {
        params: params.clone(),
        worker_bin,
        work_dir: root.join("target").join("bench"),
        jobs: JobFactory::new(),
        verbose: !cli.quiet,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut figures: Vec<Figure> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut profile_result = None;
    runtime.block_on(async {
        for &n in &wanted {
            let t = Instant::now();
            let find = |k: u8| figures.iter().find(|f| f.number == k).cloned();
            let outcome = match n {
                1 => broker_limit::run(&ctx).await,
                2 => worker_overhead::run(&ctx, find(1).as_ref()).await,
                3 => latency_hiding::run(&ctx).await,
                4 => synchronous::run(&ctx, find(3).as_ref()).await,
                5 => revocation_backlog::run(&ctx).await,
                6 => memory::run(&ctx).await,
                7 => rate_limit::run(&ctx).await,
                _ => several_workers::run(&ctx).await,
            };
            match outcome {
                Ok(mut f) => {
                    f.seconds = t.elapsed().as_secs_f64().round();
                    if cli.json {
                        println!("{}", serde_json::to_string(&f).unwrap_or_default());
                    } else {
                        println!("{}", f.printed());
                    }
                    figures.push(f);
                }
                Err(error) => {
                    let failure = Failure {
                        number: n,
                        title: TITLES[usize::from(n) - 1].to_string(),
                        error,
                    };
                    if cli.json {
                        println!("{}", serde_json::to_string(&failure).unwrap_or_default());
                    } else {
                        println!(
                            "figure {n} {}: NOT MEASURED: {}",
                            failure.title, failure.error
                        );
                    }
                    failures.push(failure);
                }
            }
        }
        if cli.profile || cli.profile_only {
            match profile::run(&ctx).await {
                Ok(p) => {
                    if !cli.json {
                        println!("{}", p.summary());
                    }
                    profile_result = Some(p);
                }
                Err(e) => println!("profile: not taken: {e}"),
            }
        }
    });
    let run = Run {
        machine: &machine,
        params: &params,
        figures: &figures,
        failures: &failures,
        command,
        seconds: started.elapsed().as_secs_f64(),
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string(&run.json(profile_result.as_ref())).unwrap_or_default()
        );
    } else {
        println!("done in {:.0} s", run.seconds);
    }
    let out = match (&cli.out, cli.only) {
        _ if cli.no_write => None,
        (Some(path), _) => Some(path.clone()),
        (None, None) => Some(root.join("BENCHMARKS.md")),
        (None, Some(_)) => None,
    };
    if let Some(path) = out {
        match write_markdown(&path, &run, profile_result.as_ref()) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
