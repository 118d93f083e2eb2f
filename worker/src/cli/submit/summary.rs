//! What a run did, counted, and the closing report: submitted, skipped, malformed,
//! finished per status and per error code, what is missing; and the exit code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

/// At most this many line numbers or job ids are listed in one line of the report.
const LIST_AT_MOST: usize = 20;

/// Results counted by status and error code.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// `status: succeeded`.
    pub succeeded: u64,
    /// `status: failed`.
    pub failed: u64,
    /// Any other status (not in the contract; counted so nothing is lost).
    pub other: u64,
    /// Failed results per `error.code`.
    pub codes: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts one result.
    pub fn add(&mut self, result: &Value) {
        match result.get("status").and_then(Value::as_str) {
            Some("succeeded") => self.succeeded += 1,
            Some("failed") => {
                self.failed += 1;
                let code = result
                    .get("error")
                    .and_then(|e| e.get("code"))
                    .and_then(Value::as_str)
                    .unwrap_or("(no code)");
                *self.codes.entry(code.to_owned()).or_default() += 1;
            }
            _ => self.other += 1,
        }
    }

    /// Results counted.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.other
    }
}

/// Everything the closing report says.
#[derive(Debug, Default)]
pub struct Report {
    /// Jobs the broker confirmed.
    pub submitted: usize,
    /// Jobs skipped because the results file has their result.
    pub skipped_done: usize,
    /// Lines skipped as malformed.
    pub malformed: Vec<usize>,
    /// Jobs not submitted, by why (lines).
    pub not_submitted: BTreeMap<String, Vec<usize>>,
    /// Jobs whose publish was neither confirmed nor refused when the run stopped.
    pub unconfirmed: Vec<usize>,
    /// Whether results were waited for.
    pub waited: bool,
    /// The results received.
    pub tally: Tally,
    /// Confirmed jobs without a result: (line, job id).
    pub missing: Vec<(usize, String)>,
    /// How long the run waited for results after the last publish.
    pub timeout_secs: u64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// The results file.
    pub out: Option<PathBuf>,
}

impl Report {
    /// 0 when every submitted job has its outcome and nothing was skipped as malformed
    /// or left out; else 1.
    pub fn exit_code(&self) -> ExitCode {
        let clean = self.malformed.is_empty()
            && self.not_submitted.is_empty()
            && self.unconfirmed.is_empty()
            && self.missing.is_empty()
            && self.stopped.is_none();
        if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// Writes the report.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let malformed = match self.malformed.len() {
            0 => "0 malformed lines".to_owned(),
            1 => format!("1 malformed line: {}", list(&self.malformed)),
            n => format!("{n} malformed lines: {}", list(&self.malformed)),
        };
        writeln!(
            out,
            "submitted {} (skipped {} already done, {malformed})",
            self.submitted, self.skipped_done
        )?;
        for (reason, lines) in &self.not_submitted {
            writeln!(
                out,
                "not submitted {}: {reason}; lines {}",
                lines.len(),
                list(lines)
            )?;
        }
        if !self.unconfirmed.is_empty() {
            writeln!(
                out,
                "not confirmed {}: the broker may or may not have them; lines {}",
                self.unconfirmed.len(),
                list(&self.unconfirmed)
            )?;
        }
        if self.waited {
            let t = &self.tally;
            write!(
                out,
                "finished {}: succeeded {}, failed {}",
                t.finished(),
                t.succeeded,
                t.failed
            )?;
            if t.other > 0 {
                write!(out, ", other status {}", t.other)?;
            }
            writeln!(out)?;
            let mut codes: Vec<(&String, &u64)> = t.codes.iter().collect();
            codes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let width = codes.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
            for (code, count) in codes {
                writeln!(out, "  {code:<width$}  {count}")?;
            }
        } else {
            writeln!(
                out,
                "not waiting for results (--no-wait): they are published to the results exchange; run the same command with --out FILE and without --no-wait to collect them (a job is never ordered twice)"
            )?;
        }
        if !self.missing.is_empty() {
            let shown: Vec<String> = self
                .missing
                .iter()
                .take(LIST_AT_MOST)
                .map(|(line, id)| format!("{id} (line {line})"))
                .collect();
            let more = self.missing.len().saturating_sub(LIST_AT_MOST);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            let when = if self.stopped.is_some() {
                "when the run stopped".to_owned()
            } else {
                format!("within {} s", self.timeout_secs)
            };
            writeln!(
                out,
                "missing {} results {when}: {}{more}",
                self.missing.len(),
                shown.join(", ")
            )?;
        }
        if let Some(reason) = &self.stopped {
            writeln!(out, "stopped early: {reason}")?;
        }
        if let Some(path) = &self.out {
            writeln!(out, "results in {}", path.display())?;
        }
        let unfinished = !self.missing.is_empty()
            || !self.not_submitted.is_empty()
            || !self.unconfirmed.is_empty();
        if unfinished {
            let how = if self.out.is_some() {
                "re-run the same command: it skips the jobs whose results are in the results file and submits the rest again"
            } else {
                "re-run with --out FILE to keep the results and skip finished jobs next time"
            };
            writeln!(
                out,
                "{how}; the same job_id never yields a second D-Trust order"
            )?;
        }
        Ok(())
    }
}

/// `1, 2, 3` with at most [`LIST_AT_MOST`] items, then how many more.
fn list(items: &[usize]) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(LIST_AT_MOST)
        .map(usize::to_string)
        .collect();
    let more = items.len().saturating_sub(LIST_AT_MOST);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_report_counts_per_status_and_code() {
        let mut tally = Tally::default();
        for r in [
            json!({"status": "succeeded"}),
            json!({"status": "failed", "error": {"code": "EMAILDOMAIN_DOES_NOT_FIT"}}),
            json!({"status": "failed", "error": {"code": "GENERIC_RDN_REGEXERROR"}}),
            json!({"status": "failed", "error": {"code": "GENERIC_RDN_REGEXERROR"}}),
        ] {
            tally.add(&r);
        }
        let report = Report {
            submitted: 4,
            malformed: vec![4, 17],
            waited: true,
            tally,
            out: Some(PathBuf::from("results.ndjson")),
            ..Report::default()
        };
        let mut text = Vec::new();
        report.print(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "submitted 4 (skipped 0 already done, 2 malformed lines: 4, 17)\n\
             finished 4: succeeded 1, failed 3\n\
             \x20 GENERIC_RDN_REGEXERROR    2\n\
             \x20 EMAILDOMAIN_DOES_NOT_FIT  1\n\
             results in results.ndjson\n"
        );
        assert_eq!(report.exit_code(), ExitCode::FAILURE);
    }

    #[test]
    fn missing_results_are_named_and_fail_the_run() {
        let report = Report {
            submitted: 2,
            waited: true,
            missing: vec![(3, "b".into())],
            timeout_secs: 5,
            ..Report::default()
        };
        let mut text = Vec::new();
        report.print(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("missing 1 results within 5 s: b (line 3)"),
            "{text}"
        );
        assert_eq!(report.exit_code(), ExitCode::FAILURE);
        let clean = Report {
            submitted: 2,
            waited: true,
            ..Report::default()
        };
        assert_eq!(clean.exit_code(), ExitCode::SUCCESS);
        assert_eq!(
            list(&(1..=25).collect::<Vec<_>>()).matches(", ").count(),
            19
        );
    }
}
