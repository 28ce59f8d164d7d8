//! Wall-clock time as the mesh stores it: integer microseconds since the Unix
//! epoch, which both SQLite and PostgreSQL keep exactly in a 64-bit integer;
//! the 100 ms ticks the number generators share; and a [`WallClock`] seam so
//! that schedules can run on tokio's paused time in tests.

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pbjson_types::Timestamp;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the system clock is set after 1970");
    i64::try_from(since.as_micros()).expect("microseconds since 1970 fit in i64 until year 294247")
}

/// Converts a protobuf timestamp to microseconds since the epoch.
pub fn to_micros(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1_000)
}

/// Converts microseconds since the epoch to a protobuf timestamp.
pub fn from_micros(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000)
            .expect("a sub-second nanosecond count fits in i32"),
    }
}

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> Timestamp {
    from_micros(now_micros())
}

/// Length of one tick: "the same time" for the number generators.
pub const TICK_MICROS: i64 = 100_000;

/// The tick holding `micros`: Unix milliseconds divided by 100, floored.
pub fn tick_of(micros: i64) -> i64 {
    micros.div_euclid(TICK_MICROS)
}

/// The first microsecond of `tick`.
pub fn tick_start(tick: i64) -> i64 {
    tick.saturating_mul(TICK_MICROS)
}

/// Where schedules read the wall clock.
pub trait WallClock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch, now.
    fn now_micros(&self) -> i64;

    /// Sleeps until the wall clock reads `micros`. Sleeping is done on
    /// tokio's clock, re-read against the wall clock on each call, so a
    /// schedule of absolute deadlines does not drift.
    fn sleep_until(&self, micros: i64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let ahead = u64::try_from(micros - self.now_micros()).unwrap_or(0);
        Box::pin(tokio::time::sleep(Duration::from_micros(ahead)))
    }
}

/// How long before a deadline [`SystemClock`] stops sleeping and yields
/// instead: tokio's timer fires on whole milliseconds and up to one late,
/// so the last stretch is waited out by re-reading the clock.
const SPIN_MICROS: i64 = 2_000;

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_micros(&self) -> i64 {
        now_micros()
    }

    /// Sleeps to within [`SPIN_MICROS`] of the deadline, then yields to the
    /// runtime until the clock reaches it: a deadline is met to within
    /// microseconds instead of the timer's millisecond, for about 2% of a
    /// core per 100 ms schedule.
    fn sleep_until(&self, micros: i64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let ahead = micros - now_micros();
            if ahead > SPIN_MICROS {
                tokio::time::sleep(Duration::from_micros((ahead - SPIN_MICROS) as u64)).await;
            }
            while now_micros() < micros {
                tokio::task::yield_now().await;
            }
        })
    }
}

/// A wall clock that moves with tokio's clock from a chosen start, so that
/// `tokio::time::pause()` and `advance()` drive it in tests.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_micros: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_micros` now.
    pub fn starting_at(start_micros: i64) -> Self {
        Self {
            start_micros,
            start: tokio::time::Instant::now(),
        }
    }
}

impl WallClock for TokioClock {
    fn now_micros(&self) -> i64 {
        self.start_micros + self.start.elapsed().as_micros() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_through_timestamps() {
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            1_763_800_000_123_456,
            -1,
            -1_000_001,
        ] {
            assert_eq!(to_micros(&from_micros(micros)), micros);
        }
    }

    #[test]
    fn negative_micros_keep_nanos_positive() {
        let ts = from_micros(-1);
        assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_000));
    }

    #[test]
    fn ticks_are_tenths_of_a_second() {
        assert_eq!(tick_of(1_763_800_000_099_999), 17_638_000_000);
        assert_eq!(tick_of(1_763_800_000_100_000), 17_638_000_001);
        assert_eq!(tick_start(17_638_000_001), 1_763_800_000_100_000);
        assert_eq!(tick_of(-1), -1);
    }

    #[tokio::test]
    async fn the_system_clock_wakes_at_its_deadline_not_before() {
        let deadline = now_micros() + 20_000;
        SystemClock.sleep_until(deadline).await;
        assert!(now_micros() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_sleeps_to_wall_deadlines() {
        let clock = TokioClock::starting_at(1_000_050_000);
        clock.sleep_until(1_000_100_000).await;
        assert_eq!(clock.now_micros(), 1_000_100_000);
    }
}
