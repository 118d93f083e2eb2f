//! One lock per `job_id`, so two deliveries of the same job (or a delivery and the
//! scheduler) never work on it at once inside one worker. Entries are removed when the
//! last holder lets go, so the map does not grow with the number of jobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The lock table.
#[derive(Debug, Default)]
pub struct JobLocks {
    table: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// A held lock; releasing it drops the table entry when nobody else waits. It owns
/// what it needs, so it can move into a spawned task.
pub struct JobGuard {
    locks: Arc<JobLocks>,
    job_id: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl JobLocks {
    fn entry(&self, job_id: &str) -> Arc<AsyncMutex<()>> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.entry(job_id.to_string()).or_default().clone()
    }

    /// Waits for the job's lock.
    pub async fn lock(self: &Arc<Self>, job_id: &str) -> JobGuard {
        let guard = self.entry(job_id).lock_owned().await;
        JobGuard {
            locks: self.clone(),
            job_id: job_id.to_string(),
            guard: Some(guard),
        }
    }

    /// Takes the job's lock if it is free.
    pub fn try_lock(self: &Arc<Self>, job_id: &str) -> Option<JobGuard> {
        let guard = self.entry(job_id).try_lock_owned().ok();
        match guard {
            Some(guard) => Some(JobGuard {
                locks: self.clone(),
                job_id: job_id.to_string(),
                guard: Some(guard),
            }),
            None => {
                self.release(job_id);
                None
            }
        }
    }

    /// Jobs locked or waited for right now.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, job_id: &str) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        // Only the table holds it: nobody has or waits for this lock.
        if table.get(job_id).is_some_and(|m| Arc::strong_count(m) == 1) {
            table.remove(job_id);
        }
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.locks.release(&self.job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_is_locked_once_and_the_table_empties() {
        let locks = Arc::new(JobLocks::default());
        let first = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none());
        assert!(locks.try_lock("b").is_some());
        drop(first);
        assert!(locks.try_lock("a").is_some());
        assert!(locks.is_empty());
    }
}
