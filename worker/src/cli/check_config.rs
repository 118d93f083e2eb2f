//! `dtrust-worker check-config --bundle FILE`: the bundle's summary, or its problems.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::bundle::{Bundle, Report};

pub(super) fn run(path: &Path, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    writeln!(out, "D-Trust connector bundle `{}`", path.display())?;
    match Bundle::load(path) {
        Ok(bundle) => {
            write!(out, "{}", bundle.summary())?;
            print_warnings(&bundle.warnings, out)?;
            writeln!(out, "OK: the bundle is valid")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(report) => {
            print_report(&report, out)?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints a failed check: every problem, then the warnings.
pub(super) fn print_report(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    write!(out, "error: {report}")?;
    print_warnings(&report.warnings, out)?;
    writeln!(
        out,
        "FAILED: fix the problems above; the worker does not start with this bundle"
    )
}

fn print_warnings(warnings: &[crate::bundle::Warning], out: &mut dyn Write) -> std::io::Result<()> {
    for warning in warnings {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}
