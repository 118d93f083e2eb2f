//! Revocations first. A revocation is urgent (a compromised key stays trusted until it
//! is done) and cheap; a bulk issuance run can keep every CPU, the store and the broker
//! busy. While a revocation is being worked on, no new issuance step starts; the
//! issuance steps already running finish. So that a long stream of revocations cannot
//! stop issuance altogether, an issuance step waits at most [`MAX_WAIT`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The longest an issuance step waits for revocations to finish.
pub const MAX_WAIT: Duration = Duration::from_millis(500);

/// Counts revocations at work; issuance waits while there are any.
#[derive(Debug, Default)]
pub struct Priority {
    active: AtomicUsize,
    clear: Notify,
}

/// Held while a revocation is at work.
#[derive(Debug)]
pub struct Urgent(Arc<Priority>);

impl Priority {
    /// A revocation starts; it counts until the guard drops.
    pub fn urgent(self: &Arc<Self>) -> Urgent {
        self.active.fetch_add(1, Ordering::SeqCst);
        Urgent(self.clone())
    }

    /// Returns when no revocation is at work, or after [`MAX_WAIT`]; whether it waited.
    pub async fn yield_to_urgent(&self) -> bool {
        if self.active.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let _ = tokio::time::timeout(MAX_WAIT, async {
            loop {
                let notified = self.clear.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.active.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        true
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.clear.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn issuance_waits_for_revocations_and_no_longer_than_the_cap() {
        let priority = Arc::new(Priority::default());
        assert!(!priority.yield_to_urgent().await, "nothing urgent: no wait");

        let urgent = priority.urgent();
        let waiter = {
            let priority = priority.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                priority.yield_to_urgent().await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(urgent);
        let waited = waiter.await.unwrap();
        assert_eq!(
            waited,
            Duration::from_millis(100),
            "released when the revocation ends"
        );

        let _forever = priority.urgent();
        let started = tokio::time::Instant::now();
        assert!(priority.yield_to_urgent().await);
        assert_eq!(started.elapsed(), MAX_WAIT, "never longer than the cap");
    }
}
