//! The one retry back-off of the project: exponential and capped, jittered
//! where many clients may retry at the same moment. Producers, parsers,
//! start-up connects to NATS and PostgreSQL, nack redelivery, the fleet's
//! worker restarts and the TLS accept loop all take their waits from it.
//!
//! Hand-written rather than taken from `backon` (the kept retry crate):
//! backon's policies are iterators that cannot be reset after a success nor
//! asked for the wait of a given attempt, and it is built around wrapping a
//! whole future in `retry()`; we retry inside long-lived stream sessions
//! (reset on progress) and compute nack delays from an attempt count that
//! the queue stores. Its jitter also adds up to a whole extra delay, past
//! the cap, where ours stays below it. The formula is a few lines over
//! `rand`, which the workspace already has.

use std::time::Duration;

use rand::RngExt;

/// Exponential back-off: the n-th wait in a row is `min(max, base * 2^(n-1))`.
///
/// Jittered ([`Backoff::new`]) it uses "equal jitter": half of that value
/// plus a random part of up to the other half. Waits never fall below half
/// the nominal value, so retries per second stay bounded, and spread over
/// the other half, so callers desynchronise. Exact ([`Backoff::exact`]) it
/// waits the nominal value, for delays that a test or an operator must be
/// able to predict.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
    failures: u32,
}

impl Backoff {
    /// A jittered back-off starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            jitter: true,
            failures: 0,
        }
    }

    /// A back-off without jitter, starting at `base` and doubling up to
    /// `max`.
    pub fn exact(base: Duration, max: Duration) -> Self {
        Self {
            jitter: false,
            ..Self::new(base, max)
        }
    }

    /// The back-off of a client of the mesh (a producer or a parser) that
    /// reconnects or retries refused work: from 100 ms, so that a blip is
    /// recovered from quickly, doubling to 5 s, so that an outage costs a
    /// request every few seconds per client, jittered.
    pub fn client() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The back-off of a server waiting at start-up for a broker or a
    /// database that is starting too: from 100 ms doubling to 2 s, so that
    /// it is seen within moments of being ready, jittered so that replicas
    /// started together do not knock together.
    pub fn startup() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// The back-off of a server's connection to its broker once lost (the
    /// ingest servers' NATS clients): from 50 ms doubling to 500 ms, so that
    /// a server publishes again within a second of the broker coming back
    /// however long the outage was, jittered so that the replicas do not
    /// all knock at the same instant. A refused connect costs next to
    /// nothing, so two tries a second per server through an outage is
    /// cheap.
    pub fn broker_reconnect() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// The wait before the next retry; each call doubles the next one.
    pub fn next_wait(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.wait_for(self.failures)
    }

    /// The wait after `failures` failures in a row (1 for the first),
    /// leaving the count alone: for callers that keep the count themselves,
    /// such as a queue that stores each message's attempts.
    pub fn wait_for(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let nominal = self.base.saturating_mul(1u32 << exponent).min(self.max);
        if !self.jitter {
            return nominal;
        }
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

    #[test]
    fn exact_waits_are_the_nominal_ones() {
        let mut backoff = Backoff::exact(Duration::from_millis(50), Duration::from_millis(300));
        let waits: Vec<u64> = (0..5)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits, [50, 100, 200, 300, 300]);
        assert_eq!(backoff.wait_for(2), Duration::from_millis(100));
        assert_eq!(backoff.failures(), 5, "wait_for leaves the count alone");
    }

    #[test]
    fn huge_failure_counts_stay_at_the_cap() {
        let backoff = Backoff::exact(Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(backoff.wait_for(u32::MAX), Duration::from_secs(10));
        assert_eq!(backoff.wait_for(0), Duration::from_secs(1));
    }
}
