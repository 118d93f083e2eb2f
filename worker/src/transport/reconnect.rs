//! The waits between reconnection attempts: exponential backoff with jitter, from the
//! `backoff` crate. It is the only file that names that crate in the transport, so a
//! swap (e.g. to `backon`; `backoff` is flagged unmaintained, RUSTSEC-2025-0012)
//! touches this file alone.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::ExponentialBackoff;

use super::config::ReconnectPolicy;

/// The reconnection waits of one supervisor: never exhausted (a broker outage is
/// waited out), reset after a stable session.
#[derive(Debug)]
pub(crate) struct ReconnectBackoff {
    inner: ExponentialBackoff,
    fallback: Duration,
}

impl ReconnectBackoff {
    /// Waits as `policy` says.
    pub(crate) fn new(policy: &ReconnectPolicy) -> ReconnectBackoff {
        let initial = policy.initial.max(Duration::from_millis(1));
        let max = policy.max.max(initial);
        let inner = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(initial)
            .with_max_interval(max)
            .with_multiplier(policy.multiplier.max(1.0))
            .with_randomization_factor(policy.randomization.clamp(0.0, 1.0))
            .with_max_elapsed_time(None)
            .build();
        ReconnectBackoff {
            inner,
            fallback: max,
        }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // Without a maximum elapsed time the crate never gives up; the fallback only
        // keeps this total.
        self.inner.next_backoff().unwrap_or(self.fallback)
    }

    /// Starts again from the initial wait.
    pub(crate) fn reset(&mut self) {
        self.inner.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_up_to_the_maximum_and_reset() {
        let policy = ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
            multiplier: 2.0,
            randomization: 0.5,
            stable_after: Duration::from_secs(1),
        };
        let mut backoff = ReconnectBackoff::new(&policy);
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        for _ in 0..20 {
            // max * (1 + randomization)
            assert!(backoff.next_delay() <= Duration::from_millis(1200));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(150));
    }
}
