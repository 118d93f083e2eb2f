//! The client-side rate limit toward D-Trust: one token bucket shared by all of a
//! worker's tasks (`maxRequestsPerSecond`, per worker process). A request waits for its
//! slot; bursts up to one second's worth are allowed after a quiet period.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket (as a virtual schedule: each request takes the next free slot).
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `per_second` requests per second on average.
    pub fn new(per_second: f64) -> RateLimiter {
        let per_second = per_second.max(0.001);
        let interval = Duration::from_secs_f64(1.0 / per_second);
        RateLimiter {
            interval,
            burst: Duration::from_secs(1).max(interval),
            next: Mutex::new(None),
        }
    }

    /// Waits until a request may be made; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let now = Instant::now();
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            // Unused capacity accumulates for at most `burst`.
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            let slot = next.map_or(earliest, |n| n.max(earliest));
            *next = Some(slot + self.interval);
            slot
        };
        if slot > now {
            tokio::time::sleep_until(slot).await;
            slot - now
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_to_the_rate_after_the_burst() {
        let limiter = RateLimiter::new(10.0);
        let start = Instant::now();
        for _ in 0..30 {
            limiter.acquire().await;
        }
        // 10 of burst at once, then 20 at 100 ms each (paused clock: exact).
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(2100), "{elapsed:?}");
    }
}
