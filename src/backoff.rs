//! The one retry back-off every client of the mesh uses: exponential, capped
//! and jittered, so that a fleet of producers or parsers refused at the same
//! moment does not come back at the same moment, nor hammer a server that
//! is down.
//!
//! Hand-written: it is one formula over `rand`, which the workspace already
//! has; the retry crates on crates.io either wrap whole futures (we retry
//! inside stream sessions) or are unmaintained.

use std::time::Duration;

use rand::RngExt;

/// Exponential back-off with "equal jitter": the n-th wait is half of
/// `min(max, base * 2^n)` plus a random part of up to the other half. Waits
/// never fall below half the nominal value, so retries per second stay
/// bounded, and spread over the other half, so callers desynchronise.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A back-off starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The wait before the next retry; each call doubles the next one.
    pub fn next_wait(&mut self) -> Duration {
        let nominal = self.nominal();
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        let spread = u64::try_from((nominal - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rand::rng().random_range(0..=spread))
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn nominal(&self) -> Duration {
        self.base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for nominal_ms in [100u64, 200, 400, 800, 1600, 2000, 2000] {
            let wait = backoff.next_wait();
            let nominal = Duration::from_millis(nominal_ms);
            assert!(
                wait >= nominal / 2 && wait <= nominal,
                "{wait:?} outside [{:?}, {nominal:?}]",
                nominal / 2
            );
        }
        assert_eq!(backoff.failures(), 7);
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_waits() {
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_wait())
            .collect();
        assert!(waits.len() > 1, "all twenty waits were equal");
    }
}
