//! Log set-up: human-readable lines by default, JSON lines with `--log-format json`;
//! the level from `--log-level` or `RUST_LOG` (with the libraries that could print
//! secrets held at `info`). Logs go to standard error, so a
//! command's own output on standard output stays clean.

use tracing_subscriber::EnvFilter;

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Libraries whose debug and trace lines can carry message bodies or headers (a
/// revocation password in a job, a PKCS#12 in a result, a proxy's Basic credentials):
/// they are held at `info` whatever the level asked for, and lapin's warning about a
/// returned message, which prints the message, is off. So is lapin's error line for
/// every channel the broker closes: with several workers that is every lease another
/// worker holds (`RESOURCE_LOCKED`), an expected answer; the transport reports the
/// channels it needs itself, with the broker's reason.
const SECRET_SAFE: [&str; 8] = [
    "lapin=info",
    "lapin::returned_messages=off",
    "lapin::channel=off",
    "amq_protocol=info",
    "hyper=info",
    "hyper_util=info",
    "reqwest=info",
    "rustls=info",
];

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: LogFormat, level: &str) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    for directive in SECRET_SAFE {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
