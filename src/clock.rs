//! Wall-clock time as the mesh stores it: integer microseconds since the Unix
//! epoch, which both SQLite and PostgreSQL keep exactly in a 64-bit integer.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

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
}
