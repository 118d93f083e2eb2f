//! The `dtrust-worker` binary: parses the command line and hands it to [`cli::run`].

use std::process::ExitCode;

use clap::Parser;
use dtrust_worker::cli;

/// jemalloc instead of glibc's malloc: a job allocates and frees many short-lived
/// buffers (JSON, PEM, TLS records) on several threads, and glibc's allocator took a
/// quarter of the worker's CPU in the profile of `make bench`. With jemalloc the
/// worker needs about a fifth less CPU per job (figure 2 of BENCHMARKS.md) for some
/// 20 MiB more RSS; mimalloc saved as much CPU but doubled the RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
