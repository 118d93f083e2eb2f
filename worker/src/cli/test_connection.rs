//! `dtrust-worker test-connection --bundle FILE`: one line per check, green or red
//! (Identity Manager's "Testing" button): the bundle, the proxy, D-Trust's address,
//! TLS with the pinned or anchored certificate, the client certificate, and the
//! products of `certificateTemplates`. Exits 1 when any check is red.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::bundle::{Bundle, ServerTrust};
use crate::dtrust::{Client, DTrustError};

enum Status {
    Ok,
    Fail,
    Skip,
}

struct Checks<'a> {
    out: &'a mut dyn Write,
    color: bool,
    failed: usize,
}

impl Checks<'_> {
    fn line(&mut self, status: Status, what: &str, detail: &str) -> std::io::Result<()> {
        let (mark, color) = match status {
            Status::Ok => ("[ OK ]", "\x1b[32m"),
            Status::Fail => {
                self.failed += 1;
                ("[FAIL]", "\x1b[31m")
            }
            Status::Skip => ("[SKIP]", "\x1b[33m"),
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        if self.color {
            writeln!(self.out, "{color}{mark}\x1b[0m {what}{detail}")
        } else {
            writeln!(self.out, "{mark} {what}{detail}")
        }
    }
}

pub(super) async fn run(
    path: &Path,
    amqp_url: Option<&str>,
    out: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut checks = Checks {
        out,
        color,
        failed: 0,
    };
    let bundle = match Bundle::load(path) {
        Ok(bundle) => {
            checks.line(Status::Ok, "bundle valid", &path.display().to_string())?;
            bundle
        }
        Err(report) => {
            let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
            checks.line(Status::Fail, "bundle valid", &problems.join("; "))?;
            for what in [
                "D-Trust reachable",
                "TLS",
                "client certificate accepted",
                "certificate templates on the account",
            ] {
                checks.line(Status::Skip, what, "needs a valid bundle")?;
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let settings = &bundle.settings;
    let timeout = settings.connect_timeout;
    if let Some(proxy) = &settings.proxy {
        let target = format!("{}:{}", proxy.host, proxy.port);
        match tcp(&target, timeout).await {
            Ok(()) => checks.line(Status::Ok, "proxy reachable", &target)?,
            Err(e) => checks.line(Status::Fail, "proxy reachable", &format!("{target}: {e}"))?,
        }
    } else {
        let host = settings.url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = settings.url.port_or_known_default().unwrap_or(443);
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        match tcp(&target, timeout).await {
            Ok(()) => checks.line(Status::Ok, "D-Trust reachable", &format!("{target} (TCP)"))?,
            Err(e) => checks.line(Status::Fail, "D-Trust reachable", &format!("{target}: {e}"))?,
        }
    }

    let how = match &bundle.server {
        ServerTrust::Anchors { .. } => "server chains to the trust anchor",
        ServerTrust::Pinned { .. } => "server presents the pinned certificate",
    };
    let client = match Client::new(&bundle) {
        Ok(c) => c,
        Err(e) => {
            checks.line(Status::Fail, "TLS", &e.to_string())?;
            return Ok(ExitCode::FAILURE);
        }
    };
    match client.ping().await {
        Ok(ping) => {
            checks.line(Status::Ok, "TLS", how)?;
            checks.line(
                Status::Ok,
                "client certificate accepted",
                &format!("account {}", ping.account),
            )?;
        }
        Err(DTrustError::Tls { detail }) if detail.contains("alert") => {
            checks.line(Status::Ok, "TLS", how)?;
            checks.line(
                Status::Fail,
                "client certificate accepted",
                &format!("D-Trust refused it in the handshake ({detail})"),
            )?;
        }
        Err(e @ DTrustError::Rejected { .. }) => {
            checks.line(Status::Ok, "TLS", how)?;
            checks.line(
                Status::Fail,
                "client certificate accepted",
                &format!("{e}; {}", e.hint()),
            )?;
        }
        Err(e) => {
            checks.line(Status::Fail, "TLS", &format!("{e}; {}", e.hint()))?;
            checks.line(Status::Skip, "client certificate accepted", "needs TLS")?;
        }
    }
    if checks.failed == 0 {
        match client.products().await {
            Ok(products) => {
                let missing: Vec<&str> = settings
                    .certificate_templates
                    .iter()
                    .filter(|t| !products.iter().any(|p| &p.id == *t))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    checks.line(
                        Status::Ok,
                        "certificate templates on the account",
                        &settings.certificate_templates.join(", "),
                    )?;
                } else {
                    checks.line(
                        Status::Fail,
                        "certificate templates on the account",
                        &format!(
                            "not on the account: {} (see `dtrust-worker products`)",
                            missing.join(", ")
                        ),
                    )?;
                }
            }
            Err(e) => checks.line(
                Status::Fail,
                "certificate templates on the account",
                &e.to_string(),
            )?,
        }
    } else {
        checks.line(
            Status::Skip,
            "certificate templates on the account",
            "needs a connection",
        )?;
    }
    if let Some(url) = amqp_url {
        match crate::transport::check_broker(url, settings.connect_timeout).await {
            Ok(()) => checks.line(Status::Ok, "RabbitMQ reachable", &redact(url))?,
            Err(e) => checks.line(
                Status::Fail,
                "RabbitMQ reachable",
                &format!("{}: {e}", redact(url)),
            )?,
        }
        if settings.key_archive.is_some() {
            let names = crate::transport::Names::new(&settings.amqp_prefix);
            let exchange = names.keyarchive.as_str();
            match crate::transport::check_exchanges(url, &[exchange], settings.connect_timeout)
                .await
            {
                Ok(()) => checks.line(Status::Ok, "key-archive exchange reachable", exchange)?,
                Err(e) => checks.line(
                    Status::Fail,
                    "key-archive exchange reachable",
                    &e.to_string(),
                )?,
            }
        }
    } else if settings.key_archive.is_some() {
        checks.line(
            Status::Skip,
            "key-archive exchange reachable",
            "give --amqp-url to check the broker",
        )?;
    }
    if checks.failed == 0 {
        writeln!(checks.out, "all connections green")?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(checks.out, "{} check(s) red", checks.failed)?;
        Ok(ExitCode::FAILURE)
    }
}

async fn tcp(target: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// An AMQP URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
