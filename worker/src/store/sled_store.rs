//! [`Store`] on `sled`: tree `jobs` holds each record under its `job_id`, tree `due`
//! indexes `next_at` (big-endian time, then the job id) for the scheduler. The store's
//! folder and files are readable by the owner only: records hold secrets until their
//! result is delivered.
//!
//! **No sled transactions on the hot path.** A sled transaction (and `apply_batch`)
//! writes the log buffer out and syncs it twice per commit, whatever the caller's
//! flush policy; at four stored versions per job that was eight log writes per job, the
//! worker's largest cost. Instead:
//! - a record's value starts with a small fixed [`Header`] (version, `next_at`, state,
//!   `finished_at`) before its JSON, so the compare-and-swap, the schedule, the counts
//!   and the purge read it without parsing the JSON;
//! - changes of one job are serialised by a striped lock inside the store; a change
//!   writes the new schedule entry, then the record, then removes the old entry, so a
//!   crash leaves at worst an extra or a missing entry, and
//! - [`SledStore::open`] reconciles the `due` index with the records, so whatever a
//!   crash left, the schedule is exact again before the engine starts.
//!
//! Durability is unchanged: nothing is durable before [`Store::flush`] (which the
//! engine calls through the group flush before every externally visible step), and a
//! flush covers both trees.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::{Store, StoreError, Swap};
use crate::job::record::{Record, State};

/// sled's page cache.
const CACHE_BYTES: u64 = 64 << 20;
/// Stripes of the per-job lock (a job id hashes to one).
const STRIPES: usize = 64;

/// The sled-backed store.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    jobs: sled::Tree,
    due: sled::Tree,
    stripes: std::sync::Arc<[Mutex<()>; STRIPES]>,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn due_key(next_at: i64, job_id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + job_id.len());
    key.extend_from_slice(&(next_at.max(0) as u64).to_be_bytes());
    key.extend_from_slice(job_id);
    key
}

/// What the store needs of a record without parsing its JSON: the fixed-size prefix of
/// every stored value (format byte 1; a value starting with `{` is a record of an
/// earlier release, plain JSON, and still readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    version: u64,
    next_at: Option<i64>,
    state: State,
    finished_at: Option<i64>,
}

const FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8 + 1 + 8;
const NONE: u64 = u64::MAX;

fn opt(v: Option<i64>) -> u64 {
    v.map_or(NONE, |v| v.max(0) as u64)
}

fn unopt(v: u64) -> Option<i64> {
    (v != NONE).then_some(v as i64)
}

fn state_code(state: State) -> u8 {
    State::ALL
        .iter()
        .position(|s| *s == state)
        .map_or(u8::MAX, |i| i as u8)
}

impl Header {
    fn of(record: &Record) -> Header {
        Header {
            version: record.version,
            next_at: record.next_at,
            state: record.state,
            finished_at: record.finished_at,
        }
    }

    fn read(job_id: &[u8], bytes: &[u8]) -> Result<Header, StoreError> {
        match bytes.first() {
            Some(&FORMAT) if bytes.len() >= HEADER_LEN => {
                let u64_at = |at: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&bytes[at..at + 8]);
                    u64::from_be_bytes(b)
                };
                let state = State::ALL
                    .get(bytes[17] as usize)
                    .copied()
                    .ok_or_else(|| corrupt(job_id, "unknown state in the record header"))?;
                Ok(Header {
                    version: u64_at(1),
                    next_at: unopt(u64_at(9)),
                    state,
                    finished_at: unopt(u64_at(18)),
                })
            }
            _ => decode(job_id, bytes).map(|r| Header::of(&r)),
        }
    }
}

fn corrupt(job_id: &[u8], detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        job_id: String::from_utf8_lossy(job_id).into_owned(),
        detail: detail.into(),
    }
}

fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    let mut value = Vec::with_capacity(HEADER_LEN + 2048);
    value.push(FORMAT);
    value.extend_from_slice(&record.version.to_be_bytes());
    value.extend_from_slice(&opt(record.next_at).to_be_bytes());
    value.push(state_code(record.state));
    value.extend_from_slice(&opt(record.finished_at).to_be_bytes());
    serde_json::to_writer(&mut value, record).map_err(io)?;
    Ok(value)
}

fn decode(job_id: &[u8], bytes: &[u8]) -> Result<Record, StoreError> {
    let json = match bytes.first() {
        Some(&FORMAT) if bytes.len() >= HEADER_LEN => &bytes[HEADER_LEN..],
        _ => bytes,
    };
    serde_json::from_slice(json).map_err(|e| corrupt(job_id, e.to_string()))
}

impl SledStore {
    /// Opens (or creates) the store in `path`, owner-only, and makes the schedule
    /// agree with the records.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let open_error = |detail: String| StoreError::Open {
            path: path.display().to_string(),
            detail,
        };
        std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;
        restrict(path).map_err(|e| open_error(format!("cannot restrict permissions: {e}")))?;
        let db = sled::Config::new()
            .path(path)
            // Records are read once or twice each; a small page cache keeps memory
            // from growing with the retained records (sled's default is 1 GiB).
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| open_error(e.to_string()))?;
        restrict_tree(path).map_err(|e| open_error(format!("cannot restrict permissions: {e}")))?;
        let jobs = db
            .open_tree("jobs")
            .map_err(|e| open_error(e.to_string()))?;
        let due = db.open_tree("due").map_err(|e| open_error(e.to_string()))?;
        let store = SledStore {
            db,
            jobs,
            due,
            stripes: std::sync::Arc::new(std::array::from_fn(|_| Mutex::new(()))),
        };
        store
            .reconcile()
            .map_err(|e| open_error(format!("cannot rebuild the schedule: {e}")))?;
        Ok(store)
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(io)
    }

    /// The lock of a job's stripe: held for the whole of a change to that job.
    fn lock(&self, job_id: &[u8]) -> MutexGuard<'_, ()> {
        // FNV-1a: cheap, and stable across runs (not that it matters in memory).
        let hash = job_id.iter().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
        self.stripes[(hash % STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `due` hold exactly one entry per record with a `next_at`: adds the
    /// entries a crash lost, removes those it left behind. Runs before anything else
    /// uses the store; reads only the records' headers.
    fn reconcile(&self) -> Result<(usize, usize), StoreError> {
        let mut added = 0;
        for item in self.jobs.iter() {
            let (key, value) = item.map_err(io)?;
            if let Some(at) = Header::read(&key, &value)?.next_at {
                if self
                    .due
                    .insert(due_key(at, &key), &[][..])
                    .map_err(io)?
                    .is_none()
                {
                    added += 1;
                }
            }
        }
        let mut removed = 0;
        for item in self.due.iter() {
            let (entry, _) = item.map_err(io)?;
            let wanted = entry.len() > 8
                && match self.jobs.get(&entry[8..]).map_err(io)? {
                    Some(value) => Header::read(&entry[8..], &value)?
                        .next_at
                        .is_some_and(|at| due_key(at, &entry[8..]) == entry.as_ref()),
                    None => false,
                };
            if !wanted {
                self.due.remove(&entry).map_err(io)?;
                removed += 1;
            }
        }
        if added + removed > 0 {
            tracing::info!(
                added,
                removed,
                "schedule entries repaired after an unclean stop"
            );
        }
        Ok((added, removed))
    }
}

#[cfg(unix)]
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

#[cfg(unix)]
fn restrict_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let mode = if entry.file_type()?.is_dir() {
            0o700
        } else {
            0o600
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        if entry.file_type()?.is_dir() {
            restrict_tree(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(unix))]
fn restrict_tree(_: &Path) -> std::io::Result<()> {
    Ok(())
}

impl Store for SledStore {
    fn get(&self, job_id: &str) -> Result<Option<Record>, StoreError> {
        match self.jobs.get(job_id.as_bytes()).map_err(io)? {
            Some(bytes) => decode(job_id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn swap(&self, expected: Option<&Record>, mut new: Record) -> Result<Swap, StoreError> {
        new.version = expected.map_or(1, |e| e.version + 1);
        let key = new.job_id.clone().into_bytes();
        let value = encode(&new)?;
        let _guard = self.lock(&key);
        let stored = self.jobs.get(&key).map_err(io)?;
        let current = match &stored {
            Some(bytes) => Some(Header::read(&key, bytes)?),
            None => None,
        };
        if current.map(|c| c.version) != expected.map(|e| e.version) {
            let current = match &stored {
                Some(bytes) => Some(decode(&key, bytes)?),
                None => None,
            };
            return Ok(Swap::Conflict(current));
        }
        // New entry first, record second, old entry last: a crash in between leaves
        // an entry too many (or, if sled kept the later writes only, one missing),
        // both repaired by `reconcile` at the next start.
        let new_entry = new.next_at.map(|at| due_key(at, &key));
        let old_entry = current.and_then(|c| c.next_at).map(|at| due_key(at, &key));
        if let Some(entry) = &new_entry {
            if new_entry != old_entry {
                self.due.insert(entry.as_slice(), &[][..]).map_err(io)?;
            }
        }
        self.jobs.insert(&key, value).map_err(io)?;
        if let Some(entry) = &old_entry {
            if new_entry != old_entry {
                self.due.remove(entry.as_slice()).map_err(io)?;
            }
        }
        Ok(Swap::Done(new))
    }

    fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let end = due_key(now_ms.saturating_add(1), b"");
        let mut ids = Vec::new();
        for item in self.due.range(..end).take(limit) {
            let (key, _) = item.map_err(io)?;
            if key.len() > 8 {
                ids.push(String::from_utf8_lossy(&key[8..]).into_owned());
            }
        }
        Ok(ids)
    }

    fn next_due(&self) -> Result<Option<i64>, StoreError> {
        match self.due.first().map_err(io)? {
            Some((key, _)) if key.len() >= 8 => {
                let mut at = [0u8; 8];
                at.copy_from_slice(&key[..8]);
                Ok(Some(u64::from_be_bytes(at) as i64))
            }
            _ => Ok(None),
        }
    }

    fn by_state(&self, state: State, limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut records = Vec::new();
        for item in self.jobs.iter() {
            let (key, bytes) = item.map_err(io)?;
            if Header::read(&key, &bytes)?.state == state {
                records.push(decode(&key, &bytes)?);
                if records.len() >= limit {
                    break;
                }
            }
        }
        Ok(records)
    }

    fn counts(&self) -> Result<Vec<(State, usize)>, StoreError> {
        let mut counts: Vec<(State, usize)> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for item in self.jobs.iter() {
            let (key, bytes) = item.map_err(io)?;
            let state = Header::read(&key, &bytes)?.state;
            if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == state) {
                entry.1 += 1;
            }
        }
        Ok(counts)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn purge(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut purged = 0;
        for item in self.jobs.iter() {
            let (key, bytes) = item.map_err(io)?;
            let header = Header::read(&key, &bytes)?;
            let old = header.state == State::Delivered
                && header.finished_at.is_some_and(|t| t < cutoff_ms);
            if old && self.remove_if_unchanged(&key, header.version)? {
                purged += 1;
            }
        }
        Ok(purged)
    }
}

impl SledStore {
    /// Removes a record (and its schedule entry) if it still has `version`.
    fn remove_if_unchanged(&self, key: &[u8], version: u64) -> Result<bool, StoreError> {
        let _guard = self.lock(key);
        let Some(bytes) = self.jobs.get(key).map_err(io)? else {
            return Ok(false);
        };
        let header = Header::read(key, &bytes)?;
        if header.version != version {
            return Ok(false);
        }
        self.jobs.remove(key).map_err(io)?;
        if let Some(at) = header.next_at {
            self.due.remove(due_key(at, key)).map_err(io)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::record::sample_revocation as record;

    #[test]
    fn swap_is_compare_and_swap_on_the_version() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let Swap::Done(first) = store.swap(None, record("a", 10)).unwrap() else {
            panic!("insert")
        };
        assert_eq!(first.version, 1);
        assert!(matches!(
            store.swap(None, record("a", 10)).unwrap(),
            Swap::Conflict(Some(_))
        ));
        let mut next = first.clone();
        next.state = State::InFlight;
        let Swap::Done(second) = store.swap(Some(&first), next).unwrap() else {
            panic!("update")
        };
        assert_eq!(second.version, 2);
        // A writer that read version 1 loses.
        assert!(
            matches!(store.swap(Some(&first), first.clone()).unwrap(), Swap::Conflict(Some(r)) if r.version == 2)
        );
        assert_eq!(store.get("a").unwrap().unwrap().state, State::InFlight);
    }

    #[test]
    fn the_schedule_follows_next_at() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        for (id, at) in [("late", 300), ("early", 100), ("mid", 200)] {
            store.swap(None, record(id, at)).unwrap();
        }
        assert_eq!(store.due(150, 10).unwrap(), ["early"]);
        assert_eq!(store.due(1000, 10).unwrap(), ["early", "mid", "late"]);
        assert_eq!(store.next_due().unwrap(), Some(100));
        let early = store.get("early").unwrap().unwrap();
        let done = Record {
            next_at: None,
            state: State::Delivered,
            finished_at: Some(5),
            ..early.clone()
        };
        store.swap(Some(&early), done).unwrap();
        assert_eq!(store.due(1000, 10).unwrap(), ["mid", "late"]);
        assert_eq!(store.purge(6).unwrap(), 1);
        assert!(store.get("early").unwrap().is_none());
        assert_eq!(store.purge(6).unwrap(), 0);
    }

    #[test]
    fn records_survive_reopening_and_the_folder_is_private() {
        let dir = tempfile_dir();
        {
            let store = SledStore::open(&dir).unwrap();
            store.swap(None, record("kept", 1)).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(&dir).unwrap();
        assert!(store.get("kept").unwrap().unwrap().holds_secrets());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&*dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
    }

    #[test]
    fn reopening_repairs_the_schedule_a_crash_left_wrong() {
        let dir = tempfile_dir();
        {
            let store = SledStore::open(&dir).unwrap();
            store.swap(None, record("lost", 100)).unwrap();
            store.swap(None, record("kept", 200)).unwrap();
            // What a crash between the steps of a change can leave: the entry of
            // "lost" gone, an entry for a record that no longer has that time, and
            // one for a record that does not exist.
            store.due.remove(due_key(100, b"lost")).unwrap();
            store.due.insert(due_key(50, b"kept"), &[][..]).unwrap();
            store.due.insert(due_key(60, b"ghost"), &[][..]).unwrap();
            assert_eq!(store.due(1000, 10).unwrap(), ["kept", "ghost", "kept"]);
            store.flush().unwrap();
        }
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.due(1000, 10).unwrap(), ["lost", "kept"]);
        assert_eq!(store.next_due().unwrap(), Some(100));
        assert_eq!(store.reconcile().unwrap(), (0, 0), "nothing left to repair");
    }

    #[test]
    fn the_header_agrees_with_the_record() {
        let mut r = record("h", 42);
        r.version = 7;
        r.finished_at = Some(99);
        r.state = State::AwaitingCm;
        let bytes = encode(&r).unwrap();
        assert_eq!(
            Header::read(b"h", &bytes).unwrap(),
            Header {
                version: 7,
                next_at: Some(42),
                state: State::AwaitingCm,
                finished_at: Some(99)
            }
        );
        assert_eq!(decode(b"h", &bytes).unwrap().version, 7);
        r.next_at = None;
        r.finished_at = None;
        let header = Header::read(b"h", &encode(&r).unwrap()).unwrap();
        assert_eq!((header.next_at, header.finished_at), (None, None));
        assert!(matches!(
            Header::read(b"h", &[FORMAT, 0, 1]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn records_of_the_earlier_plain_json_format_are_read_and_replaced() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let mut old = record("old", 100);
        old.version = 3;
        store
            .jobs
            .insert("old", serde_json::to_vec(&old).unwrap())
            .unwrap();
        store.due.insert(due_key(100, b"old"), &[][..]).unwrap();
        let read = store.get("old").unwrap().unwrap();
        assert_eq!(read.version, 3);
        assert_eq!(
            store
                .counts()
                .unwrap()
                .iter()
                .find(|(s, _)| *s == State::Ready)
                .unwrap()
                .1,
            1
        );
        let next = Record {
            next_at: Some(300),
            ..read.clone()
        };
        let Swap::Done(saved) = store.swap(Some(&read), next).unwrap() else {
            panic!("swap over a record of the earlier format")
        };
        assert_eq!(saved.version, 4);
        assert_eq!(store.due(1000, 10).unwrap(), ["old"]);
        assert_eq!(store.next_due().unwrap(), Some(300));
    }

    #[test]
    fn concurrent_changes_of_one_job_keep_one_winner_and_one_schedule_entry() {
        let dir = tempfile_dir();
        let store = SledStore::open(&dir).unwrap();
        let Swap::Done(first) = store.swap(None, record("race", 10)).unwrap() else {
            panic!("insert")
        };
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (store, first) = (&store, &first);
                    scope.spawn(move || {
                        let next = Record {
                            next_at: Some(1000 + i),
                            ..first.clone()
                        };
                        matches!(store.swap(Some(first), next).unwrap(), Swap::Done(_)) as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        let stored = store.get("race").unwrap().unwrap();
        assert_eq!(stored.version, 2);
        assert_eq!(store.due(10_000, 10).unwrap(), ["race"]);
        assert_eq!(store.next_due().unwrap(), stored.next_at);
    }

    /// A fresh folder for a store, removed when the guard drops.
    struct Dir(tempfile::TempDir);

    impl std::ops::Deref for Dir {
        type Target = Path;
        fn deref(&self) -> &Path {
            self.0.path()
        }
    }

    fn tempfile_dir() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }
}
