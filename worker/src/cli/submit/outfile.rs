//! The results file: one JSON result per line, appended and flushed as each arrives,
//! so that an interrupted run loses nothing it wrote and a re-run knows which jobs are
//! done. Results hold secrets (generated revocation passwords, PKCS#12 keystores and
//! their passwords): the file is created readable by its owner only.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What an earlier run left in the results file.
#[derive(Debug, Default)]
pub struct Done {
    /// Job ids that have a result.
    pub ids: HashSet<String>,
    /// Lines that are not a result (e.g. cut short by a crash); they are ignored.
    pub unreadable: usize,
}

/// Reads the job ids of the results in `path`; a missing file means none.
pub fn read_done(path: &Path) -> std::io::Result<Done> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Done::default()),
        Err(e) => return Err(e),
    };
    read_done_from(file)
}

fn read_done_from(input: impl Read) -> std::io::Result<Done> {
    let mut done = Done::default();
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match result_id(&line) {
            Some(id) => {
                done.ids.insert(id);
            }
            None => done.unreadable += 1,
        }
    }
    Ok(done)
}

/// The `job_id` of a result line (an object with `job_id` and a `status`).
fn result_id(line: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(line).ok()?;
    value.get("status")?.as_str()?;
    Some(value.get("job_id")?.as_str()?.to_owned())
}

/// The results file, open for appending.
#[derive(Debug)]
pub struct ResultsFile {
    file: std::fs::File,
    path: PathBuf,
}

impl ResultsFile {
    /// Opens (or creates, owner-only) `path` for appending; a last line cut short by an
    /// earlier crash is ended first, so that the next result starts on a line of its own.
    pub fn open(path: &Path) -> std::io::Result<ResultsFile> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        if file.metadata()?.len() > 0 {
            file.seek(SeekFrom::End(-1))?;
            let mut last = [0u8; 1];
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(ResultsFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `result` as one line and flushes it to the file.
    pub fn append(&mut self, result: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(result).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_ids_and_a_cut_line() {
        let text = b"{\"job_id\":\"a\",\"status\":\"succeeded\"}\n\n{\"job_id\":\"b\",\"status\":\"failed\",\"error\":{}}\n{\"job_id\":\"c\",\"sta";
        let done = read_done_from(&text[..]).unwrap();
        assert_eq!(done.ids, HashSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(done.unreadable, 1);
    }

    #[test]
    fn appending_after_a_cut_line_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        assert!(read_done(&path).unwrap().ids.is_empty());
        std::fs::write(
            &path,
            b"{\"job_id\":\"a\",\"status\":\"succeeded\"}\n{\"job_id\":\"c\"",
        )
        .unwrap();
        let mut out = ResultsFile::open(&path).unwrap();
        out.append(&serde_json::json!({"job_id": "b", "status": "failed"}))
            .unwrap();
        let done = read_done(&path).unwrap();
        assert_eq!(done.ids, HashSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(done.unreadable, 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let fresh = dir.path().join("fresh.ndjson");
            ResultsFile::open(&fresh).unwrap();
            let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner only: {mode:o}");
        }
    }
}
