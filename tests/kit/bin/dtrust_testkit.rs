//! `dtrust-testkit`: test kit helpers as a command, for the demo and for trying things.
//!
//! `dtrust-testkit write-bundle --out FILE [--url URL] [--legacy-soap]` writes a valid
//! connector bundle (fresh CA, client keystore, server certificate), or with
//! `--legacy-soap` one configured for D-Trust's old SOAP interface.
//!
//! `dtrust-testkit demo-batch --prefix P` publishes the demo's mixed batch of jobs to a
//! running worker and prints a table of the results.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dtrust_testkit::bundle::BundleBuilder;

#[derive(Parser)]
#[command(
    name = "dtrust-testkit",
    about = "dtrust-worker's test kit as a command"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a connector bundle made of fresh keys and certificates.
    WriteBundle {
        /// Where to write the zip.
        #[arg(long)]
        out: PathBuf,
        /// The D-Trust REST base URL it points at.
        #[arg(long, default_value = "https://127.0.0.1:8443/")]
        url: String,
        /// Make it a legacy SOAP bundle (namespaceURI, localPart), for migrate-config.
        #[arg(long)]
        legacy_soap: bool,
    },
    /// Publish a mixed batch of jobs to a running worker and print the results.
    DemoBatch {
        /// The worker's AMQP prefix.
        #[arg(long)]
        prefix: String,
        /// Seconds to wait for the results.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::DemoBatch { prefix, timeout } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(dtrust_testkit::demo::batch(
                &prefix,
                std::time::Duration::from_secs(timeout),
            )),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::WriteBundle {
            out,
            url,
            legacy_soap,
        } => {
            let mut bundle = BundleBuilder::new(&url);
            if legacy_soap {
                bundle = bundle
                    .set("url", "https://soap.d-trust.example/services/CertService")
                    .set("namespaceURI", "http://www.d-trust.net/cmc/ws")
                    .set("localPart", "CMCService");
            }
            if let Err(e) = std::fs::write(&out, bundle.build()) {
                eprintln!("error: cannot write {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
    }
}
