//! `dtrust-worker status JOB_ID` and `dtrust-worker jobs --state S`: what the local job
//! store knows. The store is opened directly, so this works while the worker is
//! stopped; a running worker holds the store's lock, and the command says so.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::job::record::{Record, State};
use crate::store::{SledStore, Store};

fn open(path: &Path, out: &mut dyn Write) -> std::io::Result<Option<SledStore>> {
    match SledStore::open(path) {
        Ok(store) => Ok(Some(store)),
        Err(e) => {
            writeln!(out, "error: {e}")?;
            writeln!(
                out,
                "hint: a running worker holds the store's lock; run this where the worker is stopped, or point --store at a copy"
            )?;
            Ok(None)
        }
    }
}

fn time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(crate::engine::outcome::rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

/// Prints one job's record.
pub(super) fn status(
    store_path: &Path,
    job_id: &str,
    out: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    let Some(store) = open(store_path, out)? else {
        return Ok(ExitCode::FAILURE);
    };
    let record = match store.get(job_id) {
        Ok(Some(record)) => record,
        Ok(None) => {
            writeln!(
                out,
                "job `{job_id}` is not in the store at `{}`",
                store_path.display()
            )?;
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    print_record(&record, out)?;
    Ok(ExitCode::SUCCESS)
}

fn print_record(r: &Record, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "job          {}", r.job_id)?;
    writeln!(out, "kind         {}", r.kind.as_str())?;
    writeln!(out, "state        {}", r.state.as_str())?;
    writeln!(out, "attempts     {} (retries {})", r.attempts, r.retries)?;
    writeln!(out, "reference    {}", r.client_reference)?;
    if let Some(order) = &r.order_id {
        writeln!(out, "order        {order}")?;
    }
    if let Some(at) = r.next_at {
        writeln!(out, "next step    {}", time(at))?;
    }
    if let Some(e) = &r.last_error {
        writeln!(out, "last error   {e}")?;
    }
    writeln!(out, "received     {}", time(r.created_at))?;
    writeln!(out, "updated      {}", time(r.updated_at))?;
    if let Some(result) = &r.result {
        writeln!(out, "result       {}", result.status.as_str())?;
        if let Some(serial) = &result.serial {
            writeln!(out, "serial       {serial}")?;
        }
        if let Some(e) = &result.error {
            writeln!(out, "error        {}: {}", e.code, e.message)?;
            writeln!(out, "hint         {}", e.hint)?;
        }
    }
    let held = match (r.holds_secrets(), r.state, r.next_at) {
        (false, _, _) => "no".to_owned(),
        // The grace period after delivery: a late copy of the job gets the identical
        // result until then (`--secrets-grace-secs`).
        (true, State::Delivered, Some(at)) => {
            format!("yes, until {} (the grace period after delivery)", time(at))
        }
        (true, _, _) => "yes (until the result is delivered)".to_owned(),
    };
    writeln!(out, "secrets held {held}")
}

/// Lists jobs in a state, or counts per state.
pub(super) fn jobs(
    store_path: &Path,
    state: Option<&str>,
    limit: usize,
    out: &mut dyn Write,
) -> std::io::Result<ExitCode> {
    let Some(store) = open(store_path, out)? else {
        return Ok(ExitCode::FAILURE);
    };
    let Some(state) = state else {
        match store.counts() {
            Ok(counts) => {
                for (state, n) in counts {
                    writeln!(out, "{:<10} {n}", state.as_str())?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => {
                writeln!(out, "error: {e}")?;
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    let Some(state) = State::parse(state) else {
        let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        writeln!(
            out,
            "error: unknown state `{state}`; one of {}",
            names.join(", ")
        )?;
        return Ok(ExitCode::FAILURE);
    };
    match store.by_state(state, limit) {
        Ok(records) => {
            for r in &records {
                let code = r
                    .result
                    .as_ref()
                    .and_then(|x| x.error.as_ref())
                    .map(|e| e.code.as_str())
                    .unwrap_or("");
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    r.job_id,
                    r.kind.as_str(),
                    r.order_id.as_deref().unwrap_or("-"),
                    time(r.updated_at),
                    code
                )?;
            }
            writeln!(out, "{} job(s) {}", records.len(), state.as_str())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "error: {e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::record::sample_revocation;

    fn printed(record: &Record) -> String {
        let mut out = Vec::new();
        print_record(record, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn secrets_are_said_to_be_held_until_delivery_then_until_the_grace_period_ends() {
        let ready = sample_revocation("r-1", 0);
        assert!(printed(&ready).contains("secrets held yes (until the result is delivered)"));

        let grace_ends = 1_796_000_000_000;
        let delivered = Record {
            state: State::Delivered,
            next_at: Some(grace_ends),
            ..ready.clone()
        };
        let text = printed(&delivered);
        assert!(
            text.contains(&format!(
                "secrets held yes, until {} (the grace period after delivery)",
                time(grace_ends)
            )),
            "{text}"
        );
        assert!(!text.contains("pw-123456789012"), "{text}");

        let scrubbed = Record {
            next_at: None,
            ..delivered.scrubbed()
        };
        assert!(printed(&scrubbed).contains("secrets held no"));
    }
}
