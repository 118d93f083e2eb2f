//! The `dtrust-worker` command line: one file per verb. Every flag can also be given
//! as an environment variable (`DTRUST_...`), shown in `--help`.

mod check_config;
mod dead;
mod migrate_config;
mod products;
mod run;
mod status;
mod submit;
mod test_connection;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::ops::logging::{self, LogFormat};

/// The broker and the names on it, for every verb that talks to RabbitMQ.
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// The RabbitMQ broker.
    #[arg(
        long,
        env = "DTRUST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Prefix of every exchange and queue (default: the bundle's `amqp.prefix`, else
    /// `dtrust`).
    #[arg(long, env = "DTRUST_AMQP_PREFIX")]
    pub prefix: Option<String>,
}

/// [`AmqpArgs`] for the verbs that need no bundle but may take one for its prefix.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// A connector bundle whose `amqp.prefix` to use.
    #[arg(long, env = "DTRUST_BUNDLE")]
    pub bundle: Option<PathBuf>,
}

impl BrokerArgs {
    /// `--prefix`, else the bundle's `amqp.prefix`, else `dtrust`; a bundle that cannot
    /// be loaded is the error, with its path.
    pub fn prefix(&self) -> Result<String, (PathBuf, crate::bundle::Report)> {
        if let Some(prefix) = &self.amqp.prefix {
            return Ok(prefix.clone());
        }
        let Some(path) = &self.bundle else {
            return Ok(crate::bundle::settings::DEFAULT_AMQP_PREFIX.to_owned());
        };
        crate::bundle::Bundle::load(path)
            .map(|bundle| bundle.settings.amqp_prefix)
            .map_err(|report| (path.clone(), report))
    }
}

/// Issues and revokes certificates at D-Trust from RabbitMQ jobs.
#[derive(Debug, Parser)]
#[command(name = "dtrust-worker", version, about, long_about = None)]
pub struct Cli {
    /// Shape of log lines on standard error.
    #[arg(
        long,
        global = true,
        env = "DTRUST_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `dtrust_worker=debug`); RUST_LOG wins if set.
    #[arg(long, global = true, env = "DTRUST_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a connector bundle and print what it configures (no secrets); exits 1 when
    /// it has problems, listing each.
    CheckConfig {
        /// The connector bundle (zip with dtrust.properties, the .p12 and the .cer).
        #[arg(long, env = "DTRUST_BUNDLE")]
        bundle: PathBuf,
    },
    /// Write a REST bundle from one for D-Trust's legacy SOAP interface: drops
    /// `namespaceURI` and `localPart`, sets `url`, keeps everything else.
    MigrateConfig {
        /// The SOAP bundle.
        old: PathBuf,
        /// Where to write the REST bundle.
        new: PathBuf,
        /// Base URL of the D-Trust REST interface (https).
        #[arg(long, env = "DTRUST_MIGRATE_URL")]
        url: String,
        /// Overwrite NEW if it exists.
        #[arg(long, env = "DTRUST_MIGRATE_FORCE")]
        force: bool,
    },
    /// List the account's D-Trust products and their rules (Identity Manager's
    /// "Search"), marking those in `certificateTemplates`.
    Products {
        #[arg(long, env = "DTRUST_BUNDLE")]
        bundle: PathBuf,
    },
    /// Check every connection, one line each, green or red (Identity Manager's
    /// "Testing"); exits 1 when any is red.
    TestConnection {
        #[arg(long, env = "DTRUST_BUNDLE")]
        bundle: PathBuf,
        /// Also check this RabbitMQ broker.
        #[arg(long, env = "DTRUST_AMQP_URL", hide_env_values = true)]
        amqp_url: Option<String>,
    },
    /// Run the worker: consume jobs, order and revoke at D-Trust, publish results.
    Run(run::RunArgs),
    /// Publish a batch of jobs (NDJSON or CSV) with publisher confirms, show progress,
    /// collect the results into an NDJSON file; re-running skips jobs already done.
    Submit(submit::SubmitArgs),
    /// Show what the local job store knows of one job.
    Status {
        job_id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List the jobs of the local store in a state (ready, in_flight, pending,
    /// finished, delivered), or count them per state.
    Jobs {
        /// Only jobs in this state.
        #[arg(long, env = "DTRUST_JOBS_STATE")]
        state: Option<String>,
        /// At most this many.
        #[arg(long, env = "DTRUST_JOBS_LIMIT", default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The dead-letter queue `{p}.dead`: list what sits there, replay chosen messages
    /// to the job exchange (removed only after the broker confirmed the copy).
    Dead {
        #[command(subcommand)]
        command: dead::DeadCommand,
    },
}

/// Where the job store is: `--store`, else the bundle's `store.path`, else `dtrust-data`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArg {
    /// The job store folder.
    #[arg(long, env = "DTRUST_STORE_PATH")]
    store: Option<PathBuf>,
    /// A bundle whose `store.path` to use.
    #[arg(long, env = "DTRUST_BUNDLE")]
    bundle: Option<PathBuf>,
}

impl StoreArg {
    fn path(&self) -> PathBuf {
        if let Some(path) = &self.store {
            return path.clone();
        }
        self.bundle
            .as_ref()
            .and_then(|b| crate::bundle::Bundle::load(b).ok())
            .map(|b| b.settings.store_path)
            .unwrap_or_else(|| PathBuf::from(crate::bundle::settings::DEFAULT_STORE_PATH))
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Loads the bundle (printing its problems and failing when it has any), then runs an
/// async command with it.
fn with_bundle<'o, F, Fut>(
    path: &std::path::Path,
    out: &'o mut dyn std::io::Write,
    command: F,
) -> std::io::Result<ExitCode>
where
    F: FnOnce(crate::bundle::Bundle, &'o mut dyn std::io::Write) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<ExitCode>>,
{
    let bundle = match crate::bundle::Bundle::load(path) {
        Ok(bundle) => bundle,
        Err(report) => {
            check_config::print_report(&report, out)?;
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in &bundle.warnings {
        tracing::warn!(%warning, "bundle");
    }
    runtime()?.block_on(command(bundle, out))
}

/// Runs the parsed command line; the exit code tells success (0) or problems (1).
pub fn run(cli: Cli) -> ExitCode {
    logging::init(cli.log_format, &cli.log_level);
    let mut out = std::io::stdout().lock();
    let result = match cli.command {
        Command::CheckConfig { bundle } => check_config::run(&bundle, &mut out),
        Command::MigrateConfig {
            old,
            new,
            url,
            force,
        } => migrate_config::run(&old, &new, &url, force, &mut out),
        Command::Products { bundle } => with_bundle(&bundle, &mut out, |bundle, out| async move {
            products::run(&bundle, out).await
        }),
        Command::TestConnection { bundle, amqp_url } => runtime().and_then(|rt| {
            rt.block_on(test_connection::run(&bundle, amqp_url.as_deref(), &mut out))
        }),
        Command::Run(args) => Ok(run::run(args)),
        Command::Submit(args) => submit::run(args, &mut out),
        Command::Status { job_id, store } => status::status(&store.path(), &job_id, &mut out),
        Command::Jobs {
            state,
            limit,
            store,
        } => status::jobs(&store.path(), state.as_deref(), limit, &mut out),
        Command::Dead { command } => dead::run(command, &mut out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: cannot write output: {e}");
            ExitCode::FAILURE
        }
    }
}
