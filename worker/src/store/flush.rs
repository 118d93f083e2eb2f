//! Group commit: many tasks that each need "everything I wrote is durable" share one
//! fsync. A caller's writes happen before it asks; the flush that starts after the ask
//! covers them, so whoever finds a flush already done past its ask returns at once.
//! The fsync runs on the blocking pool, never on an async worker thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Store, StoreError};

/// Shared by every task of the worker.
pub struct GroupFlush {
    store: Arc<dyn Store>,
    requested: AtomicU64,
    flushed: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for GroupFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupFlush")
            .field("requested", &self.requested.load(Ordering::SeqCst))
            .finish()
    }
}

impl GroupFlush {
    pub fn new(store: Arc<dyn Store>) -> GroupFlush {
        GroupFlush {
            store,
            requested: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
        }
    }

    /// Returns once every write made before this call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mine = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.lock().await;
        if *flushed >= mine {
            return Ok(());
        }
        let target = self.requested.load(Ordering::SeqCst);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StoreError::Io(format!("flush task failed: {e}")))??;
        *flushed = target;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_share_fsyncs_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let group = Arc::new(GroupFlush::new(store));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let group = group.clone();
                tokio::spawn(async move { group.flush().await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(group.requested.load(Ordering::SeqCst), 64);
        assert_eq!(
            *group.flushed.lock().await,
            64,
            "the last flush covered every request"
        );
    }
}
