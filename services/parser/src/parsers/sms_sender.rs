//! `sms_sender`: simulates sending each SMS and stores the outcome, sent or
//! failed, with the simulated send time.
//!
//! A send takes a random time drawn from an exponential distribution with
//! the configured mean. Exponential because a send is modelled as a
//! memoryless service time (the classic M/M/c server): most sends are quick,
//! a few take several times the mean, and the only parameter is the mean.
//! Each attempt fails with the configured probability. A failed send is
//! stored as `failed`; it is retried only if `retries` says so, and each
//! retry is another full attempt whose time is added to the message's.
//! At most `concurrency` sends run at once in one instance.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Exp};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tributary::{
    proto::{Record, RecordKind, record::Payload},
    store::Fact,
    workloads::sms,
};

use super::{BatchOutcome, Disposition, Outcome, Parser};

/// Options of `sms_sender`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mean simulated send time in milliseconds; 0 sends instantly.
    #[serde(default = "default_mean_ms")]
    pub mean_ms: f64,
    /// Probability that one attempt fails, from 0 to 1.
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// Sends in flight at once in this instance.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Further attempts after a failed one; 0 (the default) never retries.
    #[serde(default)]
    pub retries: u32,
    /// The name this sender's outcomes are stored under; defaults to one
    /// made from its settings.
    #[serde(default)]
    pub label: Option<String>,
    /// Seed of the random draws, for reproducible runs; random by default.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_mean_ms() -> f64 {
    50.0
}

fn default_failure_rate() -> f64 {
    0.05
}

fn default_concurrency() -> usize {
    32
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mean_ms: default_mean_ms(),
            failure_rate: default_failure_rate(),
            concurrency: default_concurrency(),
            retries: 0,
            label: None,
            seed: None,
        }
    }
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        if !(self.mean_ms.is_finite() && self.mean_ms >= 0.0) {
            return Err(format!(
                "sms_sender: mean_ms must be 0 or more, not {}",
                self.mean_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(format!(
                "sms_sender: failure_rate must be between 0 and 1, not {}",
                self.failure_rate
            ));
        }
        if self.concurrency == 0 {
            return Err("sms_sender: concurrency must be at least 1".into());
        }
        Ok(())
    }

    pub fn build(&self) -> SmsSender {
        let seed = self.seed.unwrap_or_else(|| rand::rng().random());
        SmsSender {
            send_time: (self.mean_ms > 0.0).then(|| {
                Exp::new(1.0 / self.mean_ms).expect("a positive finite mean gives a valid rate")
            }),
            failure_rate: self.failure_rate,
            retries: self.retries,
            concurrency: self.concurrency,
            slots: Arc::new(Semaphore::new(self.concurrency)),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            label: self
                .label
                .clone()
                .unwrap_or_else(|| format!("mean{}ms-fail{}", self.mean_ms, self.failure_rate)),
        }
    }
}

impl super::ParserType for Config {
    const NAME: &'static str = tributary::workloads::sms::GROUP;

    fn check(&self) -> Result<(), String> {
        Config::check(self)
    }

    fn build(&self) -> std::sync::Arc<dyn Parser> {
        std::sync::Arc::new(Config::build(self))
    }
}

/// The `sms_sender` parser.
pub struct SmsSender {
    /// Send-time distribution in milliseconds; `None` for a zero mean.
    send_time: Option<Exp<f64>>,
    failure_rate: f64,
    retries: u32,
    concurrency: usize,
    slots: Arc<Semaphore>,
    rng: Mutex<StdRng>,
    label: String,
}

impl SmsSender {
    /// One draw: the attempt's duration in µs and whether it fails.
    fn draw(&self) -> (u64, bool) {
        let mut rng = self
            .rng
            .lock()
            .expect("no draw panics while holding the lock");
        let millis = self.send_time.map_or(0.0, |exp| exp.sample(&mut *rng));
        let failed = rng.random_bool(self.failure_rate);
        ((millis * 1000.0).round() as u64, failed)
    }

    /// Sends one message: its attempts, one after another.
    async fn send(&self) -> Fact {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut duration_us = 0u64;
        let mut sent = false;
        for _ in 0..=self.retries {
            let (micros, failed) = self.draw();
            if micros > 0 {
                tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
            }
            duration_us += micros;
            if !failed {
                sent = true;
                break;
            }
        }
        Fact::Sms(sms::Outcome {
            sender: self.label.clone(),
            sent,
            duration_us: duration_us as i64,
        })
    }
}

#[async_trait]
impl Parser for SmsSender {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::Sms]
    }

    /// Four batches of `concurrency` messages: enough to keep every slot
    /// busy between pulls, few enough that other senders of the group get
    /// their share of the messages.
    fn pull_window(&self) -> Option<u32> {
        Some(u32::try_from(self.concurrency.saturating_mul(4)).unwrap_or(u32::MAX))
    }

    /// It reads records and never changes one.
    fn keeps_records(&self) -> bool {
        true
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        if !matches!(record.payload, Some(Payload::Sms(_))) {
            return Err("sms_sender takes only SMS records".into());
        }
        Ok(Some(self.send().await))
    }

    async fn process_batch(&self, records: &mut [Record]) -> Vec<BatchOutcome> {
        futures::future::join_all(
            records
                .iter_mut()
                .map(|record| async move { self.process(record).await.map(Disposition::Store) }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::SmsMessage;

    fn messages(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                seq: i as u64,
                payload: Some(Payload::Sms(SmsMessage {
                    phone_number: "0123456789".into(),
                    body: "hi".into(),
                })),
                ..Default::default()
            })
            .collect()
    }

    /// (sent, failed, mean ms) of a batch's outcomes.
    fn tally(outcomes: &[BatchOutcome]) -> (usize, usize, f64) {
        let (mut sent, mut failed, mut total) = (0, 0, 0i64);
        for outcome in outcomes {
            let Ok(Disposition::Store(Some(Fact::Sms(sms::Outcome {
                sent: ok,
                duration_us,
                ..
            })))) = outcome
            else {
                panic!("unexpected outcome {outcome:?}")
            };
            if *ok {
                sent += 1
            } else {
                failed += 1
            }
            total += duration_us;
        }
        (sent, failed, total as f64 / outcomes.len() as f64 / 1000.0)
    }

    /// With a seeded RNG on paused time, the failure rate and mean send
    /// time of 20,000 sends land on their settings. The bounds are about
    /// five standard errors: 0.1 ± 0.0021 and 50 ms ± 0.35 ms.
    #[tokio::test(start_paused = true)]
    async fn failure_rate_and_mean_time_converge_to_their_settings() {
        let sender = Config {
            mean_ms: 50.0,
            failure_rate: 0.1,
            concurrency: 256,
            seed: Some(7),
            ..Config::default()
        }
        .build();
        let mut records = messages(20_000);
        let outcomes = sender.process_batch(&mut records).await;
        let (sent, failed, mean_ms) = tally(&outcomes);
        assert_eq!(sent + failed, 20_000);
        let rate = failed as f64 / 20_000.0;
        assert!((rate - 0.1).abs() < 0.011, "failure rate {rate}");
        assert!((mean_ms - 50.0).abs() < 1.8, "mean send time {mean_ms} ms");
    }

    /// With concurrency 4, 400 sends of mean 50 ms take about
    /// 400 × 50 / 4 = 5 s of (paused) time: never the ~50 ms that unbounded
    /// concurrency would take.
    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let sender = Config {
            mean_ms: 50.0,
            failure_rate: 0.0,
            concurrency: 4,
            seed: Some(11),
            ..Config::default()
        }
        .build();
        let started = tokio::time::Instant::now();
        let outcomes = sender.process_batch(&mut messages(400)).await;
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(tally(&outcomes).0, 400);
        assert!((4.0..6.0).contains(&elapsed), "took {elapsed} s");
    }

    /// A failed attempt is retried only as configured, and what still
    /// fails is reported as failed, never as sent.
    #[tokio::test(start_paused = true)]
    async fn retries_are_explicit() {
        let always_fails = |retries| {
            Config {
                mean_ms: 10.0,
                failure_rate: 1.0,
                retries,
                seed: Some(3),
                ..Config::default()
            }
            .build()
        };
        let (sent, failed, _) = tally(&always_fails(0).process_batch(&mut messages(50)).await);
        assert_eq!((sent, failed), (0, 50));
        // Three attempts each: about three times the mean per message.
        let (sent, failed, mean_ms) =
            tally(&always_fails(2).process_batch(&mut messages(500)).await);
        assert_eq!((sent, failed), (0, 500));
        assert!((25.0..35.0).contains(&mean_ms), "mean {mean_ms} ms");
    }

    #[test]
    fn settings_are_checked() {
        let bad = Config {
            failure_rate: 1.5,
            ..Config::default()
        };
        assert!(bad.check().unwrap_err().contains("failure_rate"));
        let none = Config {
            concurrency: 0,
            ..Config::default()
        };
        assert!(none.check().is_err());
    }
}
