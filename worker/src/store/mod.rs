//! The job store: the source of truth for every job the worker has taken. Behind the
//! small [`Store`] trait, so the engine does not know it is `sled`.
//!
//! Changes are compare-and-swap on the record's `version`; a record and its place in
//! the schedule (the index of `next_at`) change in one transaction. Nothing is durable
//! until [`Store::flush`], which the engine calls (through [`GroupFlush`], so that
//! concurrent jobs share fsyncs) before every externally visible step.

mod flush;
mod sled_store;

use crate::job::record::{Record, State};

pub use flush::GroupFlush;
pub use sled_store::SledStore;

/// A failure of the store itself (disk, corruption); the job is not lost, the step is
/// retried or the worker stops.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the job store at `{path}` cannot be opened: {detail}")]
    Open { path: String, detail: String },
    #[error("the job store failed: {0}")]
    Io(String),
    #[error("the record of job `{job_id}` cannot be read: {detail}")]
    Corrupt { job_id: String, detail: String },
}

/// The outcome of a compare-and-swap.
#[derive(Debug)]
pub enum Swap {
    /// Stored; the record now has this version.
    Done(Record),
    /// Someone changed the record first; this is what is stored now.
    Conflict(Option<Record>),
}

/// What the engine needs of a store.
pub trait Store: Send + Sync + 'static {
    /// The record of a job.
    fn get(&self, job_id: &str) -> Result<Option<Record>, StoreError>;
    /// Stores `new` if the stored record still has `expected`'s version (or, with
    /// `expected` `None`, if there is none). The stored version is `expected + 1`.
    fn swap(&self, expected: Option<&Record>, new: Record) -> Result<Swap, StoreError>;
    /// Up to `limit` job ids whose `next_at` is at or before `now_ms`, earliest first.
    fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError>;
    /// The earliest `next_at` of any record, if any.
    fn next_due(&self) -> Result<Option<i64>, StoreError>;
    /// Records in a state (at most `limit`).
    fn by_state(&self, state: State, limit: usize) -> Result<Vec<Record>, StoreError>;
    /// Counts per state.
    fn counts(&self) -> Result<Vec<(State, usize)>, StoreError>;
    /// Makes every change so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Removes delivered records finished before `cutoff_ms`; how many.
    fn purge(&self, cutoff_ms: i64) -> Result<usize, StoreError>;
}
