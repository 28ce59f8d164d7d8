//! The producers of the workloads (number generators, burst probe, sensor
//! clients, SMS alerts). Each producer hands records to the library's
//! [`Publisher`], which streams them to the ingest tier with a bounded
//! window and survives reconnects.
#![forbid(unsafe_code)]

pub mod burst;
pub mod numbers;
pub mod sensors;
pub mod sms;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use rand::RngExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary::{
    channel::Link,
    clock::{SystemClock, WallClock},
    publisher::{PublishArgs, Publisher, Settings},
    workloads,
};

/// `tributary generate`: the workload producers.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Generate {
    /// Random numbers in 1..=10000, one per 100 ms wall-clock tick per
    /// generator; the coordinator keeps them unique within each tick (W0).
    Numbers(NumbersArgs),
    /// Ten probe messages in the first 100 ms of every second, numbered
    /// from 0, each with its send time (W1).
    Burst(BurstArgs),
    /// Sensor readings at a steady rate (W3).
    Sensors(SensorsArgs),
    /// N SMS alerts to random numbers, then exit when all are acknowledged
    /// (W4).
    Sms(SmsArgs),
}

/// Options of `generate numbers`.
#[derive(Debug, Clone, clap::Args)]
pub struct NumbersArgs {
    #[command(flatten)]
    pub publish: PublishArgs,
    /// The coordinator that grants each tick's values.
    #[arg(
        long,
        env = "TRIBUTARY_COORDINATOR",
        default_value = "http://127.0.0.1:8080"
    )]
    pub coordinator: String,
    /// Generators to run in this process; each is its own member of the
    /// coordinator and its own source.
    #[arg(long, env = "TRIBUTARY_GENERATORS", default_value_t = 1)]
    pub generators: u32,
    /// Name prefix of the generators (a random suffix is added, so a
    /// restarted generator never reuses an earlier one's keys).
    #[arg(long, env = "TRIBUTARY_GENERATOR_NAME", default_value = "numbers")]
    pub name: String,
    /// Stop after this many ticks; 0 runs until stopped.
    #[arg(long, env = "TRIBUTARY_TICKS", default_value_t = 0)]
    pub ticks: u64,
}

/// Options of `generate burst`.
#[derive(Debug, Clone, clap::Args)]
pub struct BurstArgs {
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Messages per burst.
    #[arg(long, env = "TRIBUTARY_BURST_SIZE", default_value_t = 10)]
    pub per_second: u32,
    /// Stop after this many seconds; 0 runs until stopped.
    #[arg(long, env = "TRIBUTARY_SECONDS", default_value_t = 0)]
    pub seconds: u64,
}

/// Options of `generate sensors`.
#[derive(Debug, Clone, clap::Args)]
pub struct SensorsArgs {
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Readings per second from this client.
    #[arg(long, env = "TRIBUTARY_RATE", default_value_t = 100.0)]
    pub rate: f64,
    /// Sensors this client simulates.
    #[arg(long, env = "TRIBUTARY_SENSORS", default_value_t = 16)]
    pub sensors: u32,
    /// Stop after this many readings; 0 runs until stopped.
    #[arg(long, env = "TRIBUTARY_COUNT", default_value_t = 0)]
    pub count: u64,
}

/// Options of `generate sms`.
#[derive(Debug, Clone, clap::Args)]
pub struct SmsArgs {
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Messages to send.
    #[arg(long, short = 'n', env = "TRIBUTARY_COUNT", default_value_t = 1000)]
    pub count: u64,
    /// Source name of the messages; defaults to `sms-` and a random suffix.
    #[arg(long, env = "TRIBUTARY_SOURCE")]
    pub source: Option<String>,
}

/// A source name no earlier run has used.
pub fn unique_source(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::rng().random::<u32>())
}

/// Runs one `generate` command to its end (or until `shutdown`) and prints
/// a summary line.
pub async fn run(command: Generate, shutdown: CancellationToken) -> anyhow::Result<()> {
    let clock: Arc<dyn WallClock> = Arc::new(SystemClock);
    let started = Instant::now();
    match command {
        Generate::Numbers(args) => {
            anyhow::ensure!(args.generators > 0, "--generators must be at least 1");
            let link = args.publish.link()?;
            let publisher = Publisher::start_on(&args.publish.settings(), &link, shutdown.clone())?;
            // The coordinator takes the same token as ingest.
            let coordinator = link.to(args.coordinator.clone());
            let (tasks, stats) = spawn_numbers(&args, &publisher, &coordinator, clock, &shutdown)?;
            for task in tasks {
                task.await?;
            }
            let totals = publisher.finish().await?;
            let sum = |f: fn(&numbers::TickStats) -> u64| stats.iter().map(|s| f(s)).sum::<u64>();
            println!(
                "{} generators: {} numbers emitted ({} acked), {} ticks missed, {} ticks without a grant",
                args.generators,
                sum(|s| s.emitted.load(Ordering::Relaxed)),
                totals.acked(),
                sum(|s| s.missed.load(Ordering::Relaxed)),
                sum(|s| s.unclaimed.load(Ordering::Relaxed)),
            );
        }
        Generate::Burst(args) => {
            let publisher = Publisher::start(&args.publish, shutdown.clone())?;
            let burst = burst::Burst {
                source: unique_source("burst"),
                clock,
                records: publisher.sender(),
                per_second: args.per_second,
                seconds: args.seconds,
                stats: Arc::default(),
            };
            let stats = burst.stats.clone();
            burst.run(shutdown).await;
            let totals = publisher.finish().await?;
            println!(
                "burst: {} probes sent ({} acked), {} seconds missed",
                stats.sent.load(Ordering::Relaxed),
                totals.acked(),
                stats.missed_seconds.load(Ordering::Relaxed)
            );
        }
        Generate::Sensors(args) => {
            anyhow::ensure!(
                args.rate > 0.0 && args.rate.is_finite(),
                "--rate must be positive"
            );
            anyhow::ensure!(args.sensors > 0, "--sensors must be at least 1");
            let publisher = Publisher::start(&args.publish, shutdown.clone())?;
            sensors::Sensors {
                source: unique_source("sensors"),
                clock,
                records: publisher.sender(),
                rate: args.rate,
                sensors: args.sensors,
                count: args.count,
            }
            .run(shutdown)
            .await;
            let totals = publisher.finish().await?;
            println!(
                "sensors: {} readings acked in {:.1} s",
                totals.acked(),
                started.elapsed().as_secs_f64()
            );
        }
        Generate::Sms(args) => {
            let publisher = Publisher::start(&args.publish, shutdown.clone())?;
            let source = args.source.unwrap_or_else(|| unique_source("sms"));
            sms::produce(source.clone(), args.count, publisher.sender(), shutdown).await;
            let totals = publisher.finish().await?;
            println!(
                "sms: {} of {} messages from {source} acked in {:.3} s",
                totals.acked(),
                args.count,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Each generator's running counts.
pub type Stats = Vec<Arc<numbers::TickStats>>;

/// Starts `args.generators` number generators feeding `publisher`, each
/// claiming its values from `coordinator`.
pub fn spawn_numbers(
    args: &NumbersArgs,
    publisher: &Publisher,
    coordinator: &Link,
    clock: Arc<dyn WallClock>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<JoinHandle<()>>, Stats)> {
    let mut tasks = Vec::new();
    let mut stats = Vec::new();
    for i in 0..args.generators {
        let source = unique_source(&format!("{}-{i}", args.name));
        let generator = numbers::NumberGenerator {
            claimer: numbers::GrpcClaimer::new(coordinator, source.clone())?,
            source,
            clock: clock.clone(),
            records: publisher.sender(),
            stats: Arc::default(),
            ticks: args.ticks,
        };
        stats.push(generator.stats.clone());
        tasks.push(tokio::spawn(generator.run(shutdown.clone())));
    }
    Ok((tasks, stats))
}

/// Which demo workloads `tributary up` runs, and how big.
#[derive(Debug, Clone, clap::Args)]
pub struct Workloads {
    /// Run no demo workload (no producers and none of their parsers).
    #[arg(long, env = "TRIBUTARY_NO_WORKLOADS")]
    pub no_workloads: bool,
    /// Number generators (W0); 0 turns them off.
    #[arg(long, env = "TRIBUTARY_DEMO_GENERATORS", default_value_t = 2)]
    pub generators: u32,
    /// Run the burst probe (W1); `--burst false` turns it off.
    #[arg(long, env = "TRIBUTARY_DEMO_BURST", default_value_t = true, action = clap::ArgAction::Set)]
    pub burst: bool,
    /// Sensor readings per second (W3); 0 turns the sensor client off.
    #[arg(long, env = "TRIBUTARY_DEMO_SENSOR_RATE", default_value_t = 20.0)]
    pub sensor_rate: f64,
    /// SMS alerts sent once at start-up (W4); 0 turns them off.
    #[arg(long, env = "TRIBUTARY_DEMO_SMS", default_value_t = 1000)]
    pub sms: u64,
}

impl Workloads {
    /// Checks the sizes.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.sensor_rate >= 0.0 && self.sensor_rate.is_finite(),
            "--sensor-rate must be 0 or more"
        );
        Ok(())
    }

    /// Parser specs the workloads need: the average, probe and sensor
    /// parsers, and two SMS senders with different settings that split the
    /// messages between them.
    pub fn parsers(&self) -> Vec<String> {
        if self.no_workloads {
            return Vec::new();
        }
        let sender = |options: &str| format!(r#"{{"type":"{}",{options}}}"#, workloads::sms::GROUP);
        vec![
            workloads::averages::GROUP.into(),
            workloads::probes::GROUP.into(),
            workloads::sensors::GROUP.into(),
            sender(r#""mean_ms":20,"failure_rate":0.05,"concurrency":32,"label":"fast""#),
            sender(r#""mean_ms":80,"failure_rate":0.15,"concurrency":16,"label":"flaky""#),
        ]
    }

    /// Starts the producers against the mesh at `link` (ingest and
    /// coordinator both). They stop on `shutdown`.
    pub fn spawn(
        &self,
        link: &Link,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut tasks = Vec::new();
        if self.no_workloads {
            return Ok(tasks);
        }
        let clock: Arc<dyn WallClock> = Arc::new(SystemClock);
        // The demo producers publish with the defaults, in smaller batches:
        // their records come a few at a time.
        let settings = |batch| Settings {
            batch,
            ..Settings::default()
        };
        let background = |publisher: Publisher, producers: Vec<JoinHandle<()>>| {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                for producer in producers {
                    let _ = producer.await;
                }
                match publisher.finish().await {
                    Ok(_) => {}
                    // Records in flight when the mesh stops are expected:
                    // the demo producers have no one to hand them to.
                    Err(e) if shutdown.is_cancelled() => {
                        tracing::info!(error = %format!("{e:#}"), "demo producer stopped with the mesh");
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "demo producer stopped"),
                }
            })
        };
        if self.generators > 0 {
            let args = NumbersArgs {
                publish: PublishArgs {
                    batch: 100,
                    ..PublishArgs::to(link.url())
                },
                coordinator: link.url().to_owned(),
                generators: self.generators,
                name: "numbers".into(),
                ticks: 0,
            };
            let publisher = Publisher::start_on(&settings(100), link, shutdown.clone())?;
            let (producers, _) = spawn_numbers(&args, &publisher, link, clock.clone(), shutdown)?;
            tasks.push(background(publisher, producers));
        }
        if self.burst {
            let publisher = Publisher::start_on(&settings(100), link, shutdown.clone())?;
            let burst = burst::Burst {
                source: unique_source("burst"),
                clock: clock.clone(),
                records: publisher.sender(),
                per_second: 10,
                seconds: 0,
                stats: Arc::default(),
            };
            let producer = tokio::spawn(burst.run(shutdown.clone()));
            tasks.push(background(publisher, vec![producer]));
        }
        if self.sensor_rate > 0.0 {
            let publisher = Publisher::start_on(&settings(100), link, shutdown.clone())?;
            let sensors = sensors::Sensors {
                source: unique_source("sensors"),
                clock: clock.clone(),
                records: publisher.sender(),
                rate: self.sensor_rate,
                sensors: 16,
                count: 0,
            };
            let producer = tokio::spawn(sensors.run(shutdown.clone()));
            tasks.push(background(publisher, vec![producer]));
        }
        if self.sms > 0 {
            let publisher = Publisher::start_on(&settings(50), link, shutdown.clone())?;
            let producer = tokio::spawn(sms::produce(
                unique_source("sms"),
                self.sms,
                publisher.sender(),
                shutdown.clone(),
            ));
            tasks.push(background(publisher, vec![producer]));
        }
        Ok(tasks)
    }
}
