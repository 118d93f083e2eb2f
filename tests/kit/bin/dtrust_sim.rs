//! `dtrust-sim`: the D-Trust simulator as a server for other processes (the demo, the
//! benchmarks, trying the worker by hand). See `dtrust_testkit::sim` for what it serves.
//!
//! ```text
//! dtrust-sim --listen 127.0.0.1:8443 --write-bundle bundle.zip [--error-rate 0.1 --seed 7 ...]
//! ```
//!
//! With `--write-bundle FILE` it makes a fresh PKI (CA, server and client certificates),
//! serves with it, and writes a connector bundle pointing at itself (`url` = its URL,
//! `certificateTemplates` = its enabled products), so `dtrust-worker --bundle FILE` talks
//! to it. Without it the PKI is fresh and unknown to anyone: use `--write-bundle`. It
//! prints its URL and the bundle's path, then serves until SIGINT or SIGTERM. Each request
//! is logged at debug level (`--log-level debug` or `RUST_LOG`), never a body, a password
//! or a key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dtrust_testkit::bundle::BundleBuilder;
use dtrust_testkit::sim::{Endpoint, Faults, Product, Sim, SimConfig, DEFAULT_ACCOUNT};

#[derive(Parser)]
#[command(
    name = "dtrust-sim",
    about = "D-Trust REST interface simulator (mutual TLS, validation rules, real issuance, faults)"
)]
struct Cli {
    /// Address to listen on (port 0: a free port).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Write a connector bundle pointing at the simulator to this file.
    #[arg(long, value_name = "FILE")]
    write_bundle: Option<PathBuf>,
    /// Product catalogue, a JSON array of products (default: the built-in catalogue).
    #[arg(long, value_name = "FILE")]
    products: Option<PathBuf>,
    /// Account id answered by /v1/ping.
    #[arg(long, default_value = DEFAULT_ACCOUNT)]
    account: String,
    /// Verified e-mail domain (repeatable; default example.com and example.org).
    #[arg(long = "verified-domain", value_name = "DOMAIN")]
    verified_domains: Vec<String>,
    /// The account does not have organizationIdentifier enabled.
    #[arg(long)]
    no_organization_identifier: bool,
    /// SHA-256 fingerprint of a client certificate to answer 401 CLIENT_CERT_REJECTED
    /// (repeatable).
    #[arg(long = "reject-client-cert", value_name = "SHA256")]
    rejected_client_certs: Vec<String>,
    /// Milliseconds orders of products that need an approval stay PENDING.
    #[arg(long, value_name = "MS")]
    approval_ms: Option<u64>,
    /// Reuse one RSA key per size for PKCS12 orders (fast, for benchmarks).
    #[arg(long)]
    reuse_pkcs12_keys: bool,
    /// Seed of the fault generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fixed latency per request, ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Random extra latency per request, 0 to this many ms.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability of a 5xx answer (request not processed).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// The 5xx statuses to draw from.
    #[arg(long, value_delimiter = ',', default_value = "500,502,503,504")]
    error_statuses: Vec<u16>,
    /// Probability of a 429 answer.
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Retry-After seconds of 429 and 503 answers.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Probability of closing the connection before handling a request.
    #[arg(long, default_value_t = 0.0)]
    drop_before_rate: f64,
    /// POST /v1/orders: probability of closing the connection after storing the order.
    #[arg(long, default_value_t = 0.0)]
    drop_after_store_rate: f64,
    /// POST /v1/orders: probability of never answering after storing the order.
    #[arg(long, default_value_t = 0.0)]
    hang_after_store_rate: f64,
    /// POST /v1/orders: probability of a 504 after storing the order.
    #[arg(long, default_value_t = 0.0)]
    timeout_after_store_rate: f64,
    /// POST /v1/orders: ms taking an order takes; the order is taken even if the
    /// client has gone meanwhile.
    #[arg(long, default_value_t = 0)]
    order_processing_ms: u64,
    /// Endpoints faults apply to (default all): ping, products, create_order, get_order,
    /// find_orders, revoke.
    #[arg(long, value_delimiter = ',', value_parser = parse_endpoint)]
    fault_endpoints: Vec<Endpoint>,
    /// At most this many faults (latency not counted).
    #[arg(long)]
    max_faults: Option<u64>,
    /// Log level (RUST_LOG wins when set).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown endpoint `{s}`"))
}

fn config(cli: &Cli) -> Result<SimConfig, String> {
    let mut config = SimConfig::default_catalogue();
    config.listen = cli.listen;
    config.account = cli.account.clone();
    if let Some(path) = &cli.products {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        config.products = serde_json::from_str::<Vec<Product>>(&text)
            .map_err(|e| format!("{}: not a product catalogue: {e}", path.display()))?;
    }
    if !cli.verified_domains.is_empty() {
        config.verified_email_domains = cli.verified_domains.clone();
    }
    config.organization_identifier_enabled = !cli.no_organization_identifier;
    config.rejected_client_certs = cli.rejected_client_certs.clone();
    config.reuse_pkcs12_keys = cli.reuse_pkcs12_keys;
    if let Some(ms) = cli.approval_ms {
        for p in config
            .products
            .iter_mut()
            .filter(|p| p.approval_ms.is_some())
        {
            p.approval_ms = Some(ms);
        }
    }
    config.faults = Faults {
        seed: cli.seed,
        latency_ms: cli.latency_ms,
        jitter_ms: cli.jitter_ms,
        error_rate: cli.error_rate,
        error_statuses: cli.error_statuses.clone(),
        rate_limit_rate: cli.rate_limit_rate,
        retry_after_secs: cli.retry_after_secs,
        drop_before_rate: cli.drop_before_rate,
        drop_after_store_rate: cli.drop_after_store_rate,
        hang_after_store_rate: cli.hang_after_store_rate,
        timeout_after_store_rate: cli.timeout_after_store_rate,
        order_processing_ms: cli.order_processing_ms,
        endpoints: cli.fault_endpoints.clone(),
        max_faults: cli.max_faults,
    };
    config.validate()?;
    Ok(config)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let config = match config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let templates: Vec<String> = config
        .products
        .iter()
        .filter(|p| p.enabled)
        .map(|p| p.id.clone())
        .collect();
    // The sim only takes the PKI from the builder; the URL is known once it listens.
    let pki = BundleBuilder::new("https://127.0.0.1/");
    let sim = match Sim::try_start(config, &pki) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = sim.url();
    println!("dtrust-sim listening at {url} (account {})", sim.account());
    if let Some(path) = &cli.write_bundle {
        let bundle = pki
            .set("url", &url)
            .set("certificateTemplates", &templates.join(";"));
        if let Err(e) = std::fs::write(path, bundle.build()) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("connector bundle written to {}", path.display());
    } else {
        println!("no --write-bundle: the PKI is fresh and no client holds its certificate");
    }
    wait_for_signal().await;
    println!("dtrust-sim stopping");
    sim.shutdown();
    ExitCode::SUCCESS
}
