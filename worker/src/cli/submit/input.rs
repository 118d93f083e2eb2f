//! Reading a batch: NDJSON (one job object per line) or CSV (see [`super::csv_row`]).
//! Every line becomes the exact bytes that would be published, and is checked with
//! [`Schemas::parse_job`] and for a `job_id` already used earlier in the file, before
//! anything is published. A line that fails is a [`Malformed`] with its number and what
//! is wrong (never a value: it could be a password); it is skipped as a whole.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::job::model::Kind;
use crate::job::schema::{Schemas, MAX_MESSAGE_BYTES};

use super::csv_row::{self, Columns};

/// How the batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON job object per line (`.ndjson`, `.jsonl`, `.json`).
    Ndjson,
    /// A header row and one job per row (`.csv`).
    Csv,
}

impl Format {
    /// The format named by the file's extension, if it names one.
    pub fn by_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// A job ready to publish.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Its line in the file (1-based; for CSV the line its row starts on).
    pub line: usize,
    /// Its `job_id`.
    pub job_id: String,
    /// Its kind, the routing key.
    pub kind: Kind,
    /// The message body, exactly as validated.
    pub body: Vec<u8>,
}

/// A line that is skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Its line in the file (1-based).
    pub line: usize,
    /// What is wrong, without quoting values.
    pub reason: String,
}

/// What a file holds.
#[derive(Debug, Default)]
pub struct Batch {
    /// The valid jobs, in file order.
    pub jobs: Vec<Prepared>,
    /// The skipped lines, in file order.
    pub malformed: Vec<Malformed>,
    /// Where each accepted `job_id` is, to name duplicates.
    seen: HashMap<String, usize>,
}

/// A file that cannot be read as a batch at all; nothing is published.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file cannot be opened.
    #[error("cannot open `{path}`: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading failed midway.
    #[error("cannot read `{path}`: {detail}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The file is not a batch of this format (a JSON array, a CSV header that names
    /// unknown columns, ...).
    #[error("`{path}`: {detail}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl InputError {
    /// Whether the operator gave a wrong file or format (exit code 2), as opposed to
    /// a read failure.
    pub fn is_usage(&self) -> bool {
        !matches!(self, InputError::Read { .. })
    }
}

impl Batch {
    /// Validates `body` (line `line`) and keeps it, or records why not.
    pub(super) fn accept(&mut self, schemas: &Schemas, line: usize, body: Vec<u8>) {
        let job = match schemas.parse_job(&body) {
            Ok(job) => job,
            Err(invalid) => {
                self.reject(line, invalid.reason);
                return;
            }
        };
        let job_id = job.job_id().to_owned();
        if let Some(first) = self.seen.get(&job_id) {
            self.reject(
                line,
                format!("job_id `{job_id}` is already used on line {first}; every job of a batch needs its own job_id"),
            );
            return;
        }
        self.seen.insert(job_id.clone(), line);
        self.jobs.push(Prepared {
            line,
            job_id,
            kind: job.kind(),
            body,
        });
    }

    /// Records that line `line` is skipped because of `reason`.
    pub(super) fn reject(&mut self, line: usize, reason: String) {
        self.malformed.push(Malformed { line, reason });
    }
}

/// Reads `path` as `format`, validating every line.
pub fn read(path: &Path, format: Format, schemas: &Schemas) -> Result<Batch, InputError> {
    let file = std::fs::File::open(path).map_err(|source| InputError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(InputError::Shape {
            path: path.to_path_buf(),
            detail: "is a folder, not a file".into(),
        });
    }
    match format {
        Format::Ndjson => read_ndjson(path, file, schemas),
        Format::Csv => {
            let base = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            read_csv(path, file, &base, schemas)
        }
    }
}

/// NDJSON: every non-blank line is one job; lines over [`MAX_MESSAGE_BYTES`] are skipped
/// without being held in memory.
pub(super) fn read_ndjson(
    path: &Path,
    input: impl Read,
    schemas: &Schemas,
) -> Result<Batch, InputError> {
    let mut reader = BufReader::new(input);
    let mut batch = Batch::default();
    let mut buf = Vec::new();
    let mut number = 0usize;
    let mut first_content = true;
    loop {
        let too_long =
            match next_line(&mut reader, &mut buf, MAX_MESSAGE_BYTES + 1).map_err(|e| {
                InputError::Read {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            })? {
                None => break,
                Some(too_long) => too_long,
            };
        number += 1;
        if too_long {
            batch.reject(
                number,
                format!(
                    "the line is longer than {MAX_MESSAGE_BYTES} bytes, the most a job may have"
                ),
            );
            continue;
        }
        let mut line: &[u8] = &buf;
        if number == 1 {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if first_content {
            first_content = false;
            if line.trim_ascii_start().starts_with(b"[") {
                return Err(InputError::Shape {
                    path: path.to_path_buf(),
                    detail: format!("line {number} starts a JSON array; submit reads one job object per line (NDJSON), e.g. `jq -c '.[]' FILE`"),
                });
            }
        }
        batch.accept(schemas, number, line.to_vec());
    }
    Ok(batch)
}

/// Reads up to the next `\n` (not included) into `buf`; `None` at the end of the input,
/// else whether the line was longer than `cap` (then `buf` is left empty and the rest
/// of the line is skipped).
fn next_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        if !too_long {
            if buf.len() + chunk.len() > cap {
                too_long = true;
                buf.clear();
                buf.shrink_to_fit();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let consumed = newline.map_or(available.len(), |i| i + 1);
        reader.consume(consumed);
        if newline.is_some() {
            return Ok(Some(too_long));
        }
    }
}

/// CSV: a header row, then one job per row (empty lines are ignored). `base` is where
/// relative `csr_file` paths start.
pub(super) fn read_csv(
    path: &Path,
    input: impl Read,
    base: &Path,
    schemas: &Schemas,
) -> Result<Batch, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(BlankLines::new(input));
    let headers = reader
        .byte_headers()
        .map_err(|e| InputError::Shape {
            path: path.to_path_buf(),
            detail: format!("the header row cannot be read: {}", csv_error_text(&e)),
        })?
        .clone();
    let columns = Columns::from_header(&headers).map_err(|detail| InputError::Shape {
        path: path.to_path_buf(),
        detail,
    })?;
    let mut batch = Batch::default();
    let mut record = csv::ByteRecord::new();
    let mut last_byte = None;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = reader.get_ref().first_line_at(record.position());
                match csv_row::to_job(&columns, &record, base) {
                    Ok(job) => match serde_json::to_vec(&job) {
                        Ok(body) => batch.accept(schemas, line, body),
                        Err(e) => batch.reject(line, format!("the row cannot be encoded: {e}")),
                    },
                    Err(reason) => batch.reject(line, reason),
                }
            }
            Err(e) => {
                if let csv::ErrorKind::Io(io) = e.kind() {
                    return Err(InputError::Read {
                        path: path.to_path_buf(),
                        detail: io.to_string(),
                    });
                }
                let position = e.position().cloned();
                let line = reader.get_ref().first_line_at(position.as_ref());
                // The reader moves past a bad row; never loop on one that does not.
                let byte = position.as_ref().map(csv::Position::byte);
                if byte.is_some() && byte == last_byte {
                    return Err(InputError::Read {
                        path: path.to_path_buf(),
                        detail: format!("stuck at line {line}: {}", csv_error_text(&e)),
                    });
                }
                last_byte = byte;
                batch.reject(line, csv_error_text(&e));
            }
        }
    }
    Ok(batch)
}

/// Reads through, noting which lines are empty. The CSV reader gives a row the position
/// where reading it began, which is before the empty lines it skipped on the way; the
/// row's own line is the first non-empty one from there.
struct BlankLines<R> {
    inner: R,
    /// The line being read (1-based, counted by `\n` as the CSV reader counts).
    line: u64,
    /// Whether it has a byte other than `\r` so far.
    filled: bool,
    /// The empty lines so far, ascending.
    blank: Vec<u64>,
}

impl<R> BlankLines<R> {
    fn new(inner: R) -> Self {
        BlankLines {
            inner,
            line: 1,
            filled: false,
            blank: Vec::new(),
        }
    }

    /// The first non-empty line at or after `position`'s line.
    fn first_line_at(&self, position: Option<&csv::Position>) -> usize {
        let Some(position) = position else {
            return 0;
        };
        let mut line = position.line();
        while self.blank.binary_search(&line).is_ok() {
            line += 1;
        }
        usize::try_from(line).unwrap_or(usize::MAX)
    }
}

impl<R: Read> Read for BlankLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            match b {
                b'\n' => {
                    if !self.filled {
                        self.blank.push(self.line);
                    }
                    self.line += 1;
                    self.filled = false;
                }
                b'\r' => {}
                _ => self.filled = true,
            }
        }
        Ok(n)
    }
}

/// What is wrong with a CSV row, in words that quote no cell.
fn csv_error_text(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the row has {len} fields, the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not UTF-8 text", err.field() + 1)
        }
        csv::ErrorKind::Io(e) => e.to_string(),
        _ => "the row is not valid CSV".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> Schemas {
        Schemas::load().expect("schemas")
    }

    const P12: &str = r#"{"job_id":"a-1","kind":"issue","product":"SSL-Basic","request_type":"pkcs12","subject":{"cn":"www.example.com","c":"DE"}}"#;

    #[test]
    fn format_by_extension() {
        assert_eq!(
            Format::by_extension(Path::new("x/jobs.CSV")),
            Some(Format::Csv)
        );
        for name in ["a.ndjson", "a.jsonl", "a.json"] {
            assert_eq!(Format::by_extension(Path::new(name)), Some(Format::Ndjson));
        }
        assert_eq!(Format::by_extension(Path::new("jobs.txt")), None);
        assert_eq!(Format::by_extension(Path::new("jobs")), None);
    }

    #[test]
    fn ndjson_lines_are_validated_and_numbered_and_secrets_stay_out() {
        let text = format!(
            "{P12}\n\n{{not json\r\n{}\n{}\n{}\n",
            r#"{"job_id":"a-2","kind":"issue","product":"SSL-Basic","request_type":"pkcs12","csr_pem":"x","subject":{},"revocation_password":"Very-Secret-1"}"#,
            P12,
            r#"{"job_id":"r-1","kind":"revoke","serial":"0a","revocation_password":"Very-Secret-2"}"#,
        );
        let batch = read_ndjson(Path::new("t"), text.as_bytes(), &schemas()).unwrap();
        let ids: Vec<(usize, &str)> = batch
            .jobs
            .iter()
            .map(|j| (j.line, j.job_id.as_str()))
            .collect();
        assert_eq!(ids, vec![(1, "a-1"), (6, "r-1")]);
        assert_eq!(batch.jobs[1].kind, Kind::Revoke);
        assert_eq!(batch.jobs[0].body, P12.as_bytes());
        let lines: Vec<usize> = batch.malformed.iter().map(|m| m.line).collect();
        assert_eq!(lines, vec![3, 4, 5]);
        assert!(batch.malformed[0].reason.contains("not JSON"));
        assert!(batch.malformed[1]
            .reason
            .contains("does not fit the contract"));
        assert!(batch.malformed[2].reason.contains("already used on line 1"));
        for m in &batch.malformed {
            assert!(!m.reason.contains("Very-Secret"), "{}", m.reason);
        }
    }

    #[test]
    fn over_long_lines_are_skipped_whole_and_the_next_line_still_counts() {
        let mut text = vec![b' '; MAX_MESSAGE_BYTES + 10];
        text.extend_from_slice(b"x\n");
        text.extend_from_slice(P12.as_bytes());
        let batch = read_ndjson(Path::new("t"), text.as_slice(), &schemas()).unwrap();
        assert_eq!(batch.malformed.len(), 1);
        assert_eq!(batch.malformed[0].line, 1);
        assert!(batch.malformed[0].reason.contains("longer than"));
        assert_eq!(batch.jobs.len(), 1);
        assert_eq!(batch.jobs[0].line, 2);
    }

    #[test]
    fn a_json_array_is_refused_as_a_whole() {
        let text = format!("\n[{P12}]\n");
        let err = read_ndjson(Path::new("t"), text.as_bytes(), &schemas()).unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("line 2 starts a JSON array"));
    }

    #[test]
    fn a_bom_and_garbage_bytes_do_not_panic() {
        let mut text = b"\xEF\xBB\xBF".to_vec();
        text.extend_from_slice(P12.as_bytes());
        text.extend_from_slice(b"\n\xff\xfe\x00\n");
        let batch = read_ndjson(Path::new("t"), text.as_slice(), &schemas()).unwrap();
        assert_eq!(batch.jobs.len(), 1);
        assert_eq!(batch.malformed.len(), 1);
        assert_eq!(batch.malformed[0].line, 2);
    }
}
