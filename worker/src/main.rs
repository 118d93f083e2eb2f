//! The `dtrust-worker` binary: parses the command line and hands it to [`cli::run`].

use std::process::ExitCode;

use clap::Parser;
use dtrust_worker::cli;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
