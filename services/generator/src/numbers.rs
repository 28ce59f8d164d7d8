//! The number generator (W0): every 100 ms wall-clock tick it emits a random
//! integer in 1..=10000 that the coordinator granted it for that tick.
//!
//! Ticks are absolute: tick `t` starts at Unix time `t × 100 ms`, so all
//! generators agree on "the same time", and each deadline is computed from
//! the wall clock, so the schedule does not drift. A generator that wakes
//! after its tick has ended does not bunch up: it counts the ticks it
//! missed, logs them, and goes on with the next tick. A tick without a
//! grant (coordinator refused, slow or unreachable) is skipped and counted:
//! the generator never emits a value the coordinator did not vouch for.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Endpoint};
use tributary::{
    channel::Link,
    clock::{self, WallClock},
    grpc_client,
    proto::{
        ClaimRequest, ClaimResponse, RandomNumber, Record, coordinator_client::CoordinatorClient,
        record::Payload,
    },
};

/// The range every number is drawn from.
pub const MIN: i64 = 1;
pub const MAX: i64 = 10_000;

/// How late after its boundary a tick may still be emitted: half a tick.
/// Later than that, the value would sit closer to the next tick than to its
/// own, so the tick counts as missed.
pub const MAX_LATE_MICROS: i64 = 50_000;

/// Why a tick got no value.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The coordinator answered but granted nothing.
    #[error("refused: {0}")]
    Refused(String),
    /// The coordinator could not be reached.
    #[error("coordinator unreachable: {0}")]
    Unreachable(String),
}

/// Where a generator gets its values.
pub trait Claimer: Send {
    /// The value granted for `tick`.
    fn claim(&mut self, tick: i64) -> impl Future<Output = Result<i64, ClaimError>> + Send;
}

/// Claims over a `Coordinator.Claim` stream, reconnecting when it breaks.
pub struct GrpcClaimer {
    endpoint: Endpoint,
    bearer: tributary::bearer::AttachBearer,
    generator_id: String,
    stream: Option<(mpsc::Sender<ClaimRequest>, Streaming<ClaimResponse>)>,
    epoch: Option<u64>,
}

impl GrpcClaimer {
    pub fn new(coordinator: &Link, generator_id: String) -> anyhow::Result<Self> {
        let endpoint = coordinator
            .endpoint()
            .context("--coordinator")?
            // A claim is due within its 100 ms tick: a dead coordinator must
            // be noticed sooner than the default allows.
            .connect_timeout(Duration::from_secs(1));
        Ok(Self {
            endpoint,
            bearer: coordinator.bearer(),
            generator_id,
            stream: None,
            epoch: None,
        })
    }

    async fn exchange(&mut self, tick: i64) -> Result<ClaimResponse, tonic::Status> {
        let request = self.request(tick);
        match &self.stream {
            Some((tx, _)) => tx
                .send(request)
                .await
                .map_err(|_| tonic::Status::unavailable("stream closed"))?,
            None => {
                let channel = grpc_client::connect_with_bearer(&self.endpoint, self.bearer.clone())
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let (tx, rx) = mpsc::channel(4);
                // The first request opens the stream: queue it before the
                // call, which waits for the server's headers.
                tx.send(request)
                    .await
                    .map_err(|_| tonic::Status::unavailable("stream closed"))?;
                let responses = CoordinatorClient::new(channel)
                    .claim(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                self.stream = Some((tx, responses));
            }
        }
        let (_, responses) = self.stream.as_mut().expect("set above");
        // Answers come in order; an answer to an abandoned earlier claim
        // may still be ahead of ours.
        loop {
            match responses.message().await? {
                Some(response) if response.tick == tick => return Ok(response),
                Some(_) => continue,
                None => {
                    return Err(tonic::Status::unavailable(
                        "the coordinator ended the stream",
                    ));
                }
            }
        }
    }

    fn request(&self, tick: i64) -> ClaimRequest {
        ClaimRequest {
            generator_id: self.generator_id.clone(),
            tick,
            min: MIN,
            max: MAX,
        }
    }
}

impl Claimer for GrpcClaimer {
    async fn claim(&mut self, tick: i64) -> Result<i64, ClaimError> {
        // An abandoned claim may have left its request half sent; a stream
        // in that state is dropped by the caller's timeout, never reused
        // mid-message, because every await point here is message-aligned.
        match self.exchange(tick).await {
            Ok(response) => {
                if self.epoch.is_some_and(|e| e != response.epoch) {
                    tracing::warn!(generator = %self.generator_id, epoch = response.epoch, "the coordinator restarted");
                }
                self.epoch = Some(response.epoch);
                if response.refused {
                    Err(ClaimError::Refused(response.reason))
                } else {
                    Ok(response.value)
                }
            }
            Err(status) => {
                self.stream = None;
                Err(ClaimError::Unreachable(status.message().to_owned()))
            }
        }
    }
}

/// What a generator has done.
#[derive(Debug, Default)]
pub struct TickStats {
    /// Values emitted.
    pub emitted: AtomicU64,
    /// Ticks that passed before the generator woke for them.
    pub missed: AtomicU64,
    /// Ticks skipped for want of a grant.
    pub unclaimed: AtomicU64,
}

/// One number generator.
pub struct NumberGenerator<C: Claimer> {
    /// Source of its records: unique per generator incarnation.
    pub source: String,
    pub claimer: C,
    pub clock: Arc<dyn WallClock>,
    pub records: mpsc::Sender<Record>,
    pub stats: Arc<TickStats>,
    /// Stop after this many ticks; 0 runs until shutdown.
    pub ticks: u64,
}

/// Ticks in a row without a value before a warning: one second.
const QUIET_TICKS: u64 = 10;

impl<C: Claimer> NumberGenerator<C> {
    /// Emits until `shutdown` (or `ticks` ticks), then drops its sender.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = clock::tick_of(self.clock.now_micros()) + 1;
        let mut seq = 0u64;
        let mut done = 0u64;
        let mut unclaimed_streak = 0u64;
        while self.ticks == 0 || done < self.ticks {
            // Claim ahead of the tick, but never past its end.
            let claimed = tokio::select! {
                () = shutdown.cancelled() => break,
                claimed = self.claimer.claim(tick) => Some(claimed),
                () = self.clock.sleep_until(clock::tick_start(tick + 1)) => None,
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.clock.sleep_until(clock::tick_start(tick)) => {}
            }
            let now = self.clock.now_micros();
            if now - clock::tick_start(tick) > MAX_LATE_MICROS {
                // The first tick that can still be emitted on time.
                let next = (now - MAX_LATE_MICROS).div_euclid(clock::TICK_MICROS) + 1;
                let missed = (next - tick) as u64;
                self.stats.missed.fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(source = %self.source, missed, tick, "missed ticks; going on with the next one");
                done += missed;
                tick = next;
                continue;
            }
            match claimed {
                Some(Ok(value)) => {
                    if unclaimed_streak >= QUIET_TICKS {
                        tracing::info!(source = %self.source, skipped = unclaimed_streak, "values granted again; emitting");
                    }
                    unclaimed_streak = 0;
                    let record = Record {
                        source: self.source.clone(),
                        seq,
                        sent_at: Some(clock::from_micros(now)),
                        attributes: Default::default(),
                        payload: Some(Payload::RandomNumber(RandomNumber { value, tick })),
                    };
                    seq += 1;
                    if self.records.send(record).await.is_err() {
                        break;
                    }
                    self.stats.emitted.fetch_add(1, Ordering::Relaxed);
                }
                failed => {
                    self.stats.unclaimed.fetch_add(1, Ordering::Relaxed);
                    unclaimed_streak += 1;
                    // A refusal or two is routine (a coordinator refuses
                    // the ticks right after its own start); a second of
                    // them is worth a warning.
                    let level_warn = unclaimed_streak == QUIET_TICKS;
                    if unclaimed_streak == 1 || level_warn {
                        let why = match failed {
                            Some(Err(e)) => e.to_string(),
                            _ => "no answer within the tick".to_owned(),
                        };
                        if level_warn {
                            tracing::warn!(source = %self.source, tick, skipped = unclaimed_streak, reason = %why, "no value granted; pausing until the coordinator grants again");
                        } else {
                            tracing::debug!(source = %self.source, tick, reason = %why, "no value granted for this tick");
                        }
                    }
                }
            }
            done += 1;
            tick += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::clock::TokioClock;

    /// Grants the tick number as the value; refuses ticks in `refuse`.
    struct Fake {
        refuse: std::ops::Range<i64>,
    }

    impl Claimer for Fake {
        async fn claim(&mut self, tick: i64) -> Result<i64, ClaimError> {
            if self.refuse.contains(&tick) {
                Err(ClaimError::Refused("test".into()))
            } else {
                Ok(tick)
            }
        }
    }

    fn generator(
        clock: TokioClock,
        refuse: std::ops::Range<i64>,
        ticks: u64,
    ) -> (NumberGenerator<Fake>, mpsc::Receiver<Record>) {
        // Room for every record: the tests read them after the run.
        let (records, rx) = mpsc::channel(ticks as usize + 1);
        let generator = NumberGenerator {
            source: "g".into(),
            claimer: Fake { refuse },
            clock: Arc::new(clock),
            records,
            stats: Arc::default(),
            ticks,
        };
        (generator, rx)
    }

    fn emitted(mut rx: mpsc::Receiver<Record>) -> Vec<(i64, i64, i64)> {
        let mut out = Vec::new();
        while let Ok(record) = rx.try_recv() {
            let Some(Payload::RandomNumber(n)) = record.payload else {
                panic!("not a number")
            };
            out.push((n.tick, n.value, clock::to_micros(&record.sent_at.unwrap())));
        }
        out
    }

    /// On paused time every tick is emitted at its boundary, one per tick,
    /// with no drift over an hour's worth of ticks.
    #[tokio::test(start_paused = true)]
    async fn emits_once_per_tick_on_the_boundary() {
        let start = 1_763_800_000_042_000;
        let (generator, rx) = generator(TokioClock::starting_at(start), 0..0, 36_000);
        let stats = generator.stats.clone();
        generator.run(CancellationToken::new()).await;
        let out = emitted(rx);
        assert_eq!(out.len(), 36_000);
        let first = clock::tick_of(start) + 1;
        for (i, (tick, value, sent_at)) in out.into_iter().enumerate() {
            assert_eq!(tick, first + i as i64);
            assert_eq!(value, tick);
            assert_eq!(sent_at, clock::tick_start(tick));
        }
        assert_eq!(stats.missed.load(Ordering::Relaxed), 0);
    }

    /// Refused ticks are skipped and counted, never emitted.
    #[tokio::test(start_paused = true)]
    async fn skips_ticks_without_a_grant() {
        let start = 1_000_000_000_000_000;
        let first = clock::tick_of(start) + 1;
        let (generator, rx) = generator(TokioClock::starting_at(start), first + 3..first + 6, 10);
        let stats = generator.stats.clone();
        generator.run(CancellationToken::new()).await;
        let ticks: Vec<i64> = emitted(rx).into_iter().map(|(t, _, _)| t - first).collect();
        assert_eq!(ticks, vec![0, 1, 2, 6, 7, 8, 9]);
        assert_eq!(stats.unclaimed.load(Ordering::Relaxed), 3);
    }

    /// A generator held up past its tick says so and does not bunch up.
    #[tokio::test(start_paused = true)]
    async fn a_late_wake_up_counts_missed_ticks() {
        let start = 2_000_000_000_000_000;
        let clock = TokioClock::starting_at(start);
        let (records, mut rx) = mpsc::channel(1);
        let generator = NumberGenerator {
            source: "g".into(),
            claimer: Fake { refuse: 0..0 },
            clock: Arc::new(clock),
            records,
            stats: Arc::default(),
            ticks: 20,
        };
        let stats = generator.stats.clone();
        let run = tokio::spawn(generator.run(CancellationToken::new()));
        // A consumer that stalls for 380 ms after the first record: the
        // generator's third send waits, and it wakes too late for a tick.
        let mut got = vec![rx.recv().await.unwrap()];
        tokio::time::sleep(Duration::from_millis(380)).await;
        while let Some(record) = rx.recv().await {
            got.push(record);
        }
        run.await.unwrap();
        let missed = stats.missed.load(Ordering::Relaxed);
        assert!(missed >= 1, "missed {missed}");
        assert_eq!(got.len() as u64 + missed, 20);
        let mut ticks: Vec<i64> = got
            .iter()
            .map(|r| match &r.payload {
                Some(Payload::RandomNumber(n)) => n.tick,
                _ => unreachable!(),
            })
            .collect();
        ticks.dedup();
        assert_eq!(ticks.len(), got.len(), "one record per tick");
    }
}
