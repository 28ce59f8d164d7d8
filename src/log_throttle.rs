//! Summarising repeated warnings: during an outage the same WARN would be
//! written once per refused batch or failed write, thousands of times a
//! second. A [`Throttle`] lets one line through per interval and counts
//! the others; the next line that passes carries that count.
//!
//! Hand-written because the tracing ecosystem has no maintained layer for
//! it, and a layer would have to guess which events are "the same"; here
//! each call site owns its throttle, so one site's flood never hides
//! another's warning.
//!
//! ```
//! use std::time::Duration;
//! use tributary::log_throttle::Throttle;
//!
//! static REFUSED: Throttle = Throttle::new(Duration::from_secs(5));
//! if let Some(repeats) = REFUSED.admit() {
//!     tracing::warn!(repeats, "queue refused a batch");
//! }
//! ```

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// The interval most call sites use: an outage shows up at once, then as
/// one line per 5 s per site.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// One call site's throttle.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When a line last went through.
    last: Option<Instant>,
    /// Occurrences held back since then.
    held: u64,
}

impl Throttle {
    /// A throttle letting one line through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State {
                last: None,
                held: 0,
            }),
        }
    }

    /// Records one occurrence. Returns `Some(n)` when a line should be
    /// written: `n` is the number of occurrences it stands for (this one
    /// and those held back since the last line). Returns `None` when the
    /// line is held back and counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // The guarded section cannot panic, and a poisoned counter is
        // still a counter.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last {
            Some(last) if now.duration_since(last) < self.interval => {
                state.held += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held) + 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carries_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(1));
        // 1,000 occurrences a second for ten seconds: two more lines.
        let mut lines = Vec::new();
        for ms in 1..10_000u64 {
            if let Some(n) = throttle.admit_at(start + Duration::from_millis(ms)) {
                lines.push((ms, n));
            }
        }
        assert_eq!(lines, vec![(5_000, 5_000)]);
        assert_eq!(
            throttle.admit_at(start + Duration::from_secs(60)),
            Some(5_000)
        );
    }
}
