//! `average`: stores each random number and counts it into the average of
//! its window. The store keeps a partial count and sum per window and per
//! writing replica; the query API adds the partials up, so the averages are
//! exact however many replicas share the work.
//!
//! # The domain, and why averages stay exact
//!
//! It takes numbers that fit in 32 bits ([`DOMAIN`]), which holds W0's
//! 1..=10000 and any fleet sample, and refuses others with a reason (after
//! the worker's attempts they are dead-lettered). A window's sum is kept
//! exactly in 64 bits: with 32-bit numbers it cannot pass 2^63 before 2^32
//! numbers have fallen into one window, and the store refuses a sum that
//! would (as data, never wrapping it). The average served is that exact sum
//! over the exact count, rounded once to the nearest double.

use async_trait::async_trait;
use serde::Deserialize;
use tributary::{
    clock,
    proto::{Record, RecordKind, record::Payload},
    store::Fact,
    workloads::averages::Number,
};

use super::{Outcome, Parser};

/// The numbers `average` takes.
pub const DOMAIN: std::ops::RangeInclusive<i64> = i32::MIN as i64..=i32::MAX as i64;

/// Options of `average`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Window length in milliseconds; windows are aligned to the Unix epoch.
    #[serde(default = "default_window_ms")]
    pub window_ms: u32,
}

fn default_window_ms() -> u32 {
    1000
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        if self.window_ms == 0 {
            return Err("average: window_ms must be at least 1".into());
        }
        Ok(())
    }

    pub fn build(&self) -> Average {
        Average {
            window_ms: self.window_ms,
        }
    }
}

impl super::ParserType for Config {
    const NAME: &'static str = tributary::workloads::averages::GROUP;

    fn check(&self) -> Result<(), String> {
        Config::check(self)
    }

    fn build(&self) -> std::sync::Arc<dyn Parser> {
        std::sync::Arc::new(Config::build(self))
    }
}

/// The `average` parser.
pub struct Average {
    window_ms: u32,
}

impl Average {
    /// The start (µs) of the window holding `at` (µs); `None` when it lies
    /// before the first window an i64 can hold (only near `i64::MIN`).
    fn window_start(&self, at: i64) -> Option<i64> {
        let width = i64::from(self.window_ms) * 1000;
        at.div_euclid(width).checked_mul(width)
    }
}

#[async_trait]
impl Parser for Average {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::RandomNumber]
    }

    /// It reads records and never changes one.
    fn keeps_records(&self) -> bool {
        true
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        let Some(Payload::RandomNumber(number)) = &record.payload else {
            return Err("average takes only random numbers".into());
        };
        if !DOMAIN.contains(&number.value) {
            return Err(format!(
                "value {} is outside the numbers average takes, {}..={}",
                number.value,
                DOMAIN.start(),
                DOMAIN.end()
            ));
        }
        // A number belongs to the window of its tick when it has one (the
        // generator's wall-clock slot), else to that of its send time.
        let at = if number.tick > 0 {
            number.tick.checked_mul(clock::TICK_MICROS)
        } else {
            Some(record.sent_at.as_ref().map_or(0, clock::to_micros))
        };
        // Ingest refuses such times; a record queued before it did is
        // refused here rather than stored in a window no read can show.
        let window_start = at.and_then(|at| self.window_start(at)).ok_or_else(|| {
            format!(
                "the window of tick {} or of its send time is out of range",
                number.tick
            )
        })?;
        Ok(Some(Fact::Number(Number {
            window_start,
            window_ms: self.window_ms,
            value: number.value,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::RandomNumber;

    #[tokio::test]
    async fn numbers_fall_in_the_window_of_their_tick() {
        let parser = Config { window_ms: 1000 }.build();
        let mut record = Record {
            payload: Some(Payload::RandomNumber(RandomNumber {
                value: 42,
                tick: 17_638_000_019,
            })),
            ..Default::default()
        };
        assert_eq!(
            parser.process(&mut record).await.unwrap(),
            Some(Fact::Number(Number {
                window_start: 1_763_800_001_000_000,
                window_ms: 1000,
                value: 42
            }))
        );
        let mut text = Record::default();
        assert!(parser.process(&mut text).await.is_err());
    }

    #[tokio::test]
    async fn windows_out_of_range_are_refused_not_wrapped() {
        let parser = Config { window_ms: 7 }.build();
        assert_eq!(parser.window_start(i64::MIN), None);
        assert_eq!(
            parser.window_start(i64::MAX),
            Some(i64::MAX - i64::MAX % 7_000)
        );
        let mut record = Record {
            payload: Some(Payload::RandomNumber(RandomNumber {
                value: 1,
                tick: i64::MAX,
            })),
            ..Default::default()
        };
        assert!(parser.process(&mut record).await.is_err());
    }

    #[tokio::test]
    async fn numbers_outside_the_domain_are_refused_with_a_reason() {
        let parser = Config { window_ms: 1000 }.build();
        for value in [i64::MAX, i64::MIN, i64::from(i32::MAX) + 1] {
            let mut record = Record {
                payload: Some(Payload::RandomNumber(RandomNumber { value, tick: 0 })),
                ..Default::default()
            };
            let refused = parser.process(&mut record).await.unwrap_err();
            assert!(refused.contains("outside"), "{refused}");
        }
        for value in [1, 10_000, i64::from(i32::MIN), i64::from(i32::MAX)] {
            let mut record = Record {
                payload: Some(Payload::RandomNumber(RandomNumber { value, tick: 0 })),
                ..Default::default()
            };
            assert!(parser.process(&mut record).await.is_ok());
        }
    }
}
