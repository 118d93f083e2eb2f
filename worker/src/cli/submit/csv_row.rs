//! CSV rows as jobs. The header names the columns; an empty cell means "not given" (the
//! contract refuses empty strings), cells are trimmed, and list columns are split at `;`.
//!
//! | column | job field |
//! |---|---|
//! | `job_id`, `kind` | the same (both columns are required) |
//! | `product`, `request_type` | issue: the same (`request_type` also in upper case) |
//! | `csr_pem` | issue: the PEM request itself |
//! | `csr_file` | issue: a file holding the PEM request (relative to the CSV file), read into `csr_pem` |
//! | `cn`, `o`, `c`, `l`, `st`, `email`, `serial_number`, `organization_identifier`, `given_name`, `surname` | issue: `subject.*`; revoke: only `cn`, the top-level `cn` |
//! | `ou` | issue: `subject.ou`, `;`-separated |
//! | `san_dns`, `san_email`, `san_upn` | issue: `san.dns`, `san.email`, `san.upn`, `;`-separated |
//! | `revocation_password` | both: the same (a secret; never printed) |
//! | `key_archive` | issue: `true` / `false` |
//! | `serial`, `order_id`, `reason` | revoke: the same |
//! | `metadata.<name>` | both: `metadata.<name>`, a string |
//!
//! An unknown or repeated column makes the whole file a usage error (a typo such as
//! `common_name` would otherwise issue certificates without that attribute). A cell in
//! a column that does not apply to the row's kind makes the row malformed.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

/// Largest CSR file read (the contract allows 65,536 characters of PEM).
const MAX_CSR_FILE: u64 = 65_536;

/// A column the mapping knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    /// A field with one place per kind: (column name, issue target, revoke target).
    Field(Field),
    /// `metadata.<name>`.
    Metadata(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    JobId,
    Kind,
    Product,
    RequestType,
    CsrFile,
    CsrPem,
    Subject(&'static str),
    SubjectList(&'static str),
    San(&'static str),
    RevocationPassword,
    KeyArchive,
    Serial,
    OrderId,
    Reason,
}

/// Column name → field.
const FIELDS: [(&str, Field); 25] = [
    ("job_id", Field::JobId),
    ("kind", Field::Kind),
    ("product", Field::Product),
    ("request_type", Field::RequestType),
    ("csr_file", Field::CsrFile),
    ("csr_pem", Field::CsrPem),
    ("cn", Field::Subject("cn")),
    ("o", Field::Subject("o")),
    ("ou", Field::SubjectList("ou")),
    ("c", Field::Subject("c")),
    ("l", Field::Subject("l")),
    ("st", Field::Subject("st")),
    ("email", Field::Subject("email")),
    ("serial_number", Field::Subject("serial_number")),
    (
        "organization_identifier",
        Field::Subject("organization_identifier"),
    ),
    ("given_name", Field::Subject("given_name")),
    ("surname", Field::Subject("surname")),
    ("san_dns", Field::San("dns")),
    ("san_email", Field::San("email")),
    ("san_upn", Field::San("upn")),
    ("revocation_password", Field::RevocationPassword),
    ("key_archive", Field::KeyArchive),
    ("serial", Field::Serial),
    ("order_id", Field::OrderId),
    ("reason", Field::Reason),
];

/// The header row, understood.
#[derive(Debug)]
pub struct Columns {
    columns: Vec<(String, Column)>,
}

impl Columns {
    /// Reads the header; an error names every unknown, empty or repeated column.
    pub fn from_header(header: &csv::ByteRecord) -> Result<Columns, String> {
        let mut columns: Vec<(String, Column)> = Vec::new();
        let mut problems = Vec::new();
        for (index, raw) in header.iter().enumerate() {
            let Ok(name) = std::str::from_utf8(raw) else {
                problems.push(format!("column {} has a name that is not UTF-8", index + 1));
                continue;
            };
            let name = name.trim();
            let column = if let Some(key) = name.strip_prefix("metadata.") {
                if key.is_empty() {
                    problems.push(format!(
                        "column {} `metadata.` names no metadata member",
                        index + 1
                    ));
                    continue;
                }
                Column::Metadata(key.to_owned())
            } else {
                let lower = name.to_ascii_lowercase();
                match FIELDS.iter().find(|(n, _)| *n == lower) {
                    Some((_, field)) => Column::Field(*field),
                    None if name.is_empty() => {
                        problems.push(format!("column {} has no name", index + 1));
                        continue;
                    }
                    None => {
                        problems.push(format!("unknown column `{}`", name.escape_debug()));
                        continue;
                    }
                }
            };
            if columns.iter().any(|(_, c)| *c == column) {
                problems.push(format!("column `{}` appears twice", name.escape_debug()));
                continue;
            }
            columns.push((name.to_owned(), column));
        }
        for required in [Field::JobId, Field::Kind] {
            if !columns.iter().any(|(_, c)| *c == Column::Field(required)) {
                let name = FIELDS
                    .iter()
                    .find(|(_, f)| *f == required)
                    .map_or("", |(n, _)| *n);
                problems.push(format!("the header has no `{name}` column"));
            }
        }
        if problems.is_empty() {
            Ok(Columns { columns })
        } else {
            let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
            Err(format!(
                "the CSV header cannot be used: {}. Known columns: {}, metadata.<name>",
                problems.join("; "),
                known.join(", ")
            ))
        }
    }
}

/// One row as a job object; `base` is where a relative `csr_file` is looked for. The
/// error says what is wrong without quoting a cell.
pub fn to_job(columns: &Columns, row: &csv::ByteRecord, base: &Path) -> Result<Value, String> {
    let mut cells: Vec<(&str, &Column, &str)> = Vec::new();
    for (index, (name, column)) in columns.columns.iter().enumerate() {
        let raw = row.get(index).unwrap_or_default();
        let text = std::str::from_utf8(raw)
            .map_err(|_| format!("column `{name}` is not UTF-8 text"))?
            .trim();
        if !text.is_empty() {
            cells.push((name, column, text));
        }
    }
    let kind = cells
        .iter()
        .find(|(_, c, _)| **c == Column::Field(Field::Kind))
        .map(|(_, _, v)| v.to_ascii_lowercase());
    let issue = match kind.as_deref() {
        Some("issue") => true,
        Some("revoke") => false,
        Some(_) => return Err("column `kind` must be `issue` or `revoke`".into()),
        None => return Err("column `kind` is empty: it must be `issue` or `revoke`".into()),
    };
    let mut job = Map::new();
    let mut subject = Map::new();
    let mut san = Map::new();
    let mut metadata = Map::new();
    let mut csr_file = None;
    for (name, column, text) in cells {
        let field = match column {
            Column::Metadata(key) => {
                metadata.insert(key.clone(), Value::String(text.to_owned()));
                continue;
            }
            Column::Field(field) => *field,
        };
        let applies = match field {
            Field::JobId | Field::Kind | Field::RevocationPassword => true,
            Field::Subject("cn") => true,
            Field::Product
            | Field::RequestType
            | Field::CsrFile
            | Field::CsrPem
            | Field::Subject(_)
            | Field::SubjectList(_)
            | Field::San(_)
            | Field::KeyArchive => issue,
            Field::Serial | Field::OrderId | Field::Reason => !issue,
        };
        if !applies {
            let (this, other) = if issue {
                ("an issue", "revoke")
            } else {
                ("a revoke", "issue")
            };
            return Err(format!(
                "column `{name}` is set, but it is for {other} jobs and this row is {this} job"
            ));
        }
        let string = || Value::String(text.to_owned());
        match field {
            Field::JobId => {
                job.insert("job_id".into(), string());
            }
            Field::Kind => {
                job.insert(
                    "kind".into(),
                    Value::String(if issue { "issue" } else { "revoke" }.into()),
                );
            }
            Field::Product => {
                job.insert("product".into(), string());
            }
            Field::RequestType => {
                job.insert(
                    "request_type".into(),
                    Value::String(text.to_ascii_lowercase()),
                );
            }
            Field::CsrPem => {
                job.insert("csr_pem".into(), Value::String(unescape_newlines(text)));
            }
            Field::CsrFile => csr_file = Some(text),
            Field::Subject(key) if !issue => {
                job.insert(key.into(), string());
            }
            Field::Subject(key) => {
                subject.insert(key.into(), string());
            }
            Field::SubjectList(key) => {
                subject.insert(key.into(), list(text));
            }
            Field::San(key) => {
                san.insert(key.into(), list(text));
            }
            Field::RevocationPassword => {
                job.insert("revocation_password".into(), string());
            }
            Field::KeyArchive => {
                let value = match text.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err("column `key_archive` must be `true` or `false`".into()),
                };
                job.insert("key_archive".into(), Value::Bool(value));
            }
            Field::Serial => {
                job.insert("serial".into(), string());
            }
            Field::OrderId => {
                job.insert("order_id".into(), string());
            }
            Field::Reason => {
                job.insert("reason".into(), string());
            }
        }
    }
    if let Some(file) = csr_file {
        if job.contains_key("csr_pem") {
            return Err("both `csr_file` and `csr_pem` are set: give one of them".into());
        }
        job.insert("csr_pem".into(), Value::String(read_csr(base, file)?));
    }
    if issue {
        job.insert("subject".into(), Value::Object(subject));
        if !san.is_empty() {
            job.insert("san".into(), Value::Object(san));
        }
    }
    if !metadata.is_empty() {
        job.insert("metadata".into(), Value::Object(metadata));
    }
    Ok(Value::Object(job))
}

/// `a; b;;c` → `["a", "b", "c"]`.
fn list(text: &str) -> Value {
    Value::Array(
        text.split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_owned()))
            .collect(),
    )
}

/// A PEM written into one cell with literal `\n` (as spreadsheets export it) becomes
/// real line breaks; a cell with real line breaks (quoted) is kept.
fn unescape_newlines(text: &str) -> String {
    if text.contains('\n') {
        text.to_owned()
    } else {
        text.replace("\\n", "\n")
    }
}

/// Reads the CSR file `name` (relative to `base` unless absolute), at most 64 KiB.
fn read_csr(base: &Path, name: &str) -> Result<String, String> {
    let path = base.join(name);
    let shown = path.display();
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("csr_file `{shown}` cannot be read: {e}"))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(format!("csr_file `{shown}` is a folder"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CSR_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("csr_file `{shown}` cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_CSR_FILE {
        return Err(format!(
            "csr_file `{shown}` is larger than {MAX_CSR_FILE} bytes, the most a CSR may have"
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        format!("csr_file `{shown}` is not text: a PEM CERTIFICATE REQUEST is expected")
    })
}

#[cfg(test)]
mod tests {
    use super::super::input::read_csv;
    use super::*;
    use crate::job::schema::Schemas;

    const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u\n-----END CERTIFICATE REQUEST-----\n";

    fn header(names: &[&str]) -> csv::ByteRecord {
        csv::ByteRecord::from(names.to_vec())
    }

    #[test]
    fn unknown_repeated_and_missing_columns_are_named() {
        let err =
            Columns::from_header(&header(&["job_id", "common_name", "cn", "CN"])).unwrap_err();
        assert!(err.contains("unknown column `common_name`"), "{err}");
        assert!(err.contains("`CN` appears twice"), "{err}");
        assert!(err.contains("no `kind` column"), "{err}");
        assert!(Columns::from_header(&header(&["job_id", "kind", "metadata.ticket"])).is_ok());
    }

    #[test]
    fn rows_map_to_jobs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csr"), CSR).unwrap();
        let text = "job_id,kind,product,request_type,csr_file,cn,ou,c,san_dns,metadata.ticket,serial,reason,revocation_password\n\
                    a-1,issue,SSL-Basic,PKCS10,a.csr,www.example.com,\"Ops; IT\",DE,www.example.com;example.com,T-1,,,\n\
                    \n\
                    r-1,revoke,,,,Some Name,,,,T-2,0A1B,superseded,Rv-Secret-pass-1\n";
        let batch = read_csv(
            Path::new("jobs.csv"),
            text.as_bytes(),
            dir.path(),
            &Schemas::load().unwrap(),
        )
        .unwrap();
        assert_eq!(batch.malformed, vec![]);
        assert_eq!(batch.jobs.len(), 2);
        assert_eq!(batch.jobs[0].line, 2);
        assert_eq!(batch.jobs[1].line, 4);
        let issue: Value = serde_json::from_slice(&batch.jobs[0].body).unwrap();
        assert_eq!(issue["request_type"], "pkcs10");
        assert_eq!(issue["csr_pem"], CSR);
        assert_eq!(
            issue["subject"],
            serde_json::json!({"cn": "www.example.com", "ou": ["Ops", "IT"], "c": "DE"})
        );
        assert_eq!(
            issue["san"],
            serde_json::json!({"dns": ["www.example.com", "example.com"]})
        );
        assert_eq!(issue["metadata"], serde_json::json!({"ticket": "T-1"}));
        let revoke: Value = serde_json::from_slice(&batch.jobs[1].body).unwrap();
        assert_eq!(
            revoke,
            serde_json::json!({"job_id": "r-1", "kind": "revoke", "cn": "Some Name", "serial": "0A1B",
                "reason": "superseded", "revocation_password": "Rv-Secret-pass-1", "metadata": {"ticket": "T-2"}})
        );
    }

    #[test]
    fn bad_rows_are_malformed_with_their_lines_and_no_values() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            "job_id,kind,product,request_type,csr_file,cn,serial,key_archive,revocation_password\n\
                    a-1,issue,SSL-Basic,pkcs10,missing.csr,www.example.com,,,\n\
                    a-2,issue,SSL-Basic,pkcs12,,www.example.com,0a,,\n\
                    a-3,renew,SSL-Basic,pkcs12,,www.example.com,,,\n\
                    a-4,issue,SSL-Basic,pkcs12,,www.example.com,,maybe,\n\
                    a-5,issue,SSL-Basic,pkcs12,,www.example.com,,,\n\
                    a-5,issue,SSL-Basic,pkcs12,,www.example.com,,,\n\
                    a-6,issue,SSL-Basic\n\
                    a 7,issue,SSL-Basic,pkcs12,,,,,Secret-Value-9\n";
        let batch = read_csv(
            Path::new("jobs.csv"),
            text.as_bytes(),
            dir.path(),
            &Schemas::load().unwrap(),
        )
        .unwrap();
        let lines: Vec<usize> = batch.malformed.iter().map(|m| m.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 7, 8, 9], "{:?}", batch.malformed);
        let reasons: Vec<&str> = batch.malformed.iter().map(|m| m.reason.as_str()).collect();
        assert!(reasons[0].contains("missing.csr") && reasons[0].contains("cannot be read"));
        assert!(reasons[1].contains("`serial`") && reasons[1].contains("revoke jobs"));
        assert!(reasons[2].contains("`issue` or `revoke`"));
        assert!(reasons[3].contains("key_archive"));
        assert!(reasons[4].contains("already used on line 6"));
        assert!(reasons[5].contains("fields"));
        assert!(reasons[6].contains("does not fit the contract"));
        assert!(reasons.iter().all(|r| !r.contains("Secret-Value-9")));
        assert_eq!(batch.jobs.len(), 1);
    }

    #[test]
    fn escaped_newlines_in_a_pem_cell_become_line_breaks() {
        assert_eq!(unescape_newlines("a\\nb"), "a\nb");
        assert_eq!(unescape_newlines("a\nb\\n"), "a\nb\\n");
    }
}
