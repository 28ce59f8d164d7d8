//! The burst probe (W1): at the start of every wall-clock second it sends
//! ten messages, numbered from 0 over the life of the probe, each with its
//! send time. They all leave within the first 100 ms of the second; a
//! second the probe wakes too late for is skipped, counted and logged, and
//! the numbering goes on without a gap.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary::{
    clock::{self, WallClock},
    proto::{Probe, Record, record::Payload},
};

/// The part of each second the burst must fit in.
pub const WINDOW_MICROS: i64 = 100_000;

/// What the probe has done.
#[derive(Debug, Default)]
pub struct BurstStats {
    /// Messages sent.
    pub sent: AtomicU64,
    /// Seconds skipped because the probe woke after their window.
    pub missed_seconds: AtomicU64,
}

/// The burst probe.
pub struct Burst {
    pub source: String,
    pub clock: Arc<dyn WallClock>,
    pub records: mpsc::Sender<Record>,
    /// Messages per burst.
    pub per_second: u32,
    /// Stop after this many seconds; 0 runs until shutdown.
    pub seconds: u64,
    pub stats: Arc<BurstStats>,
}

impl Burst {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut second = self.clock.now_micros().div_euclid(1_000_000) + 1;
        let mut number = 0u64;
        let mut done = 0u64;
        while self.seconds == 0 || done < self.seconds {
            let start = second * 1_000_000;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.clock.sleep_until(start) => {}
            }
            if self.clock.now_micros() >= start + WINDOW_MICROS {
                let now = self.clock.now_micros();
                let next = now.div_euclid(1_000_000) + 1;
                let missed = (next - second) as u64;
                self.stats
                    .missed_seconds
                    .fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(source = %self.source, missed, "woke after the burst window; skipping to the next second");
                done += missed;
                second = next;
                continue;
            }
            for _ in 0..self.per_second {
                let record = Record {
                    source: self.source.clone(),
                    seq: number,
                    sent_at: Some(clock::from_micros(self.clock.now_micros())),
                    attributes: Default::default(),
                    payload: Some(Payload::Probe(Probe { number })),
                };
                if self.records.send(record).await.is_err() {
                    return;
                }
                number += 1;
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            done += 1;
            second += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::clock::TokioClock;

    /// On paused time: ten sends inside [0, 100 ms) of each second, numbered
    /// from 0 with no gaps, one burst per second.
    #[tokio::test(start_paused = true)]
    async fn ten_sends_inside_the_first_100_ms_of_each_second() {
        let start = 1_763_800_000_731_000;
        let (records, mut rx) = mpsc::channel(10_000);
        let burst = Burst {
            source: "b".into(),
            clock: Arc::new(TokioClock::starting_at(start)),
            records,
            per_second: 10,
            seconds: 60,
            stats: Arc::default(),
        };
        burst.run(CancellationToken::new()).await;
        let mut got = Vec::new();
        while let Ok(record) = rx.try_recv() {
            got.push(record);
        }
        assert_eq!(got.len(), 600);
        let first_second = start / 1_000_000 + 1;
        for (i, record) in got.iter().enumerate() {
            let Some(Payload::Probe(probe)) = &record.payload else {
                panic!("not a probe")
            };
            assert_eq!((probe.number, record.seq), (i as u64, i as u64));
            let sent_at = clock::to_micros(record.sent_at.as_ref().unwrap());
            let second = first_second + (i / 10) as i64;
            let offset = sent_at - second * 1_000_000;
            assert!(
                (0..WINDOW_MICROS).contains(&offset),
                "message {i} sent {offset} µs into its second"
            );
        }
    }
}
