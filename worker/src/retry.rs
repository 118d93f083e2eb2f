//! The retry policy, in one place: exponential backoff with jitter (over the `backoff`
//! crate, which is flagged unmaintained: RUSTSEC-2025-0012; swapping it touches only
//! this file), and the limit on attempts.
//!
//! The engine persists a job's retry count and asks [`RetryPolicy::delay`] for the wait
//! before the next attempt; a `Retry-After` from D-Trust is honoured when longer.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;

/// How retryable failures are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max_interval: Duration,
    /// Retries after the first attempt; then the job fails with `RETRIES_EXHAUSTED`.
    pub max_retries: u32,
    /// ±fraction of randomness around each interval (0.0 to 1.0).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max_interval: Duration::from_secs(300),
            max_retries: 10,
            jitter: 0.3,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry), at least
    /// `retry_after` when D-Trust asked for one. `None` when retries are exhausted.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        let mut backoff = ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial)
            .with_multiplier(self.multiplier)
            .with_max_interval(self.max_interval)
            .with_randomization_factor(self.jitter.clamp(0.0, 1.0))
            .with_max_elapsed_time(None)
            .build();
        let mut delay = self.initial;
        for _ in 0..retry {
            delay = backoff.next_backoff().unwrap_or(self.max_interval);
        }
        Some(delay.max(retry_after.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_up_to_the_cap_and_stop_after_the_limit() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_millis(1000),
            max_retries: 6,
            jitter: 0.0,
        };
        let delays: Vec<u128> = (1..=6)
            .map(|n| policy.delay(n, None).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay(7, None), None);
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let policy = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let d = policy.delay(1, None).unwrap().as_secs_f64();
            assert!((0.5..=1.5).contains(&d), "{d}");
        }
    }
}
