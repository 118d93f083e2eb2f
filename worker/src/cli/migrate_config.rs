//! `dtrust-worker migrate-config OLD.zip NEW.zip --url URL`: a REST bundle from a SOAP
//! one, then the check of the result.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::bundle::migrate::migrate;
use crate::bundle::Bundle;

pub(super) fn run(
    old: &Path,
    new: &Path,
    url: &str,
    force: bool,
    out: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    let migration = match migrate(old, new, url, force) {
        Ok(m) => m,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    writeln!(out, "wrote `{}` from `{}`", new.display(), old.display())?;
    if migration.removed.is_empty() {
        writeln!(out, "  no SOAP keys (namespaceURI, localPart) were set")?;
    }
    for (key, line) in &migration.removed {
        writeln!(out, "  removed `{key}` (line {line})")?;
    }
    match &migration.old_url {
        Some(old_url) => writeln!(out, "  url: {old_url} -> {url}")?,
        None => writeln!(out, "  url: set to {url}")?,
    }
    writeln!(out, "checking the new bundle:")?;
    match Bundle::load(new) {
        Ok(bundle) => {
            write!(out, "{}", bundle.summary())?;
            for warning in &bundle.warnings {
                writeln!(out, "warning: {warning}")?;
            }
            writeln!(out, "OK: the new bundle is valid")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(report) => {
            super::check_config::print_report(&report, out)?;
            Ok(ExitCode::FAILURE)
        }
    }
}
