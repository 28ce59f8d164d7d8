//! `tributary send`: streams generic records (sensor readings or text) at a
//! chosen rate through the library's publisher ([`tributary::publisher`]),
//! which keeps a bounded window, reconnects and republishes on failure, and
//! reports what happened.

use std::{sync::atomic::Ordering, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use rand::RngExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tributary::{
    clock,
    proto::{Record, SensorReading, Text, record::Payload},
    publisher::{PublishArgs, Publisher, Totals},
    workloads::sensors::DEMO_METRICS,
};

/// What `send` publishes and how.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub publish: PublishArgs,
    /// How many records to send.
    #[arg(long, short = 'n', env = "TRIBUTARY_COUNT", default_value_t = 100_000)]
    pub count: u64,
    /// What to send.
    #[arg(long, value_enum, env = "TRIBUTARY_KIND", default_value_t = Kind::Sensor)]
    pub kind: Kind,
    /// Records per second; 0 sends as fast as acknowledgements allow.
    #[arg(long, env = "TRIBUTARY_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Source name of the records. Defaults to `send-` and a random suffix,
    /// so that a new run never reuses an earlier run's keys.
    #[arg(long, env = "TRIBUTARY_SOURCE")]
    pub source: Option<String>,
    /// Print the final summary as one JSON object instead of a sentence.
    #[arg(long, env = "TRIBUTARY_JSON")]
    pub json: bool,
}

/// Record kinds `send` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Sensor readings: temperature, humidity and pressure from 16 sensors.
    Sensor,
    /// Lines of text.
    Text,
    /// JSON orders, `{"order": SEQ, "region": R, "items": N, "total": T}`
    /// with R one of `eu`, `us`, `ap`, `sa`: for `AggregateField`, for
    /// example `GET /v1/parsers/raw/fields/total/aggregate?groupBy=region`.
    Json,
}

/// The regions of `--kind json` orders.
const REGIONS: [&str; 4] = ["eu", "us", "ap", "sa"];

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let source = config
        .source
        .clone()
        .unwrap_or_else(|| format!("send-{:016x}", rand::rng().random::<u64>()));
    let publisher = Publisher::start(&config.publish, shutdown.clone())?;
    let totals = publisher.totals();

    let progress = ProgressBar::new(config.count);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} acked  {rate}  eta {eta}")
            .expect("the template is valid")
            // Whole records per second: indicatif's own {per_sec} shows four
            // decimals.
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} records/s", state.per_sec());
                },
            ),
    );
    let ticker = {
        let progress = progress.clone();
        let totals = totals.clone();
        tokio::spawn(async move {
            loop {
                progress.set_position(totals.answered());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let started = Instant::now();
    let records = publisher.sender();
    for seq in 0..config.count {
        let due = if config.rate > 0 {
            started + Duration::from_secs_f64(seq as f64 / config.rate as f64)
        } else {
            started
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            sent = async {
                tokio::time::sleep_until(due).await;
                records.send(make_record(config.kind, &source, seq)).await
            } => if sent.is_err() { break },
        }
    }
    drop(records);
    let finished = publisher.finish().await;
    ticker.abort();
    match finished {
        Ok(totals) => {
            progress.finish_and_clear();
            report(&config, &source, &totals, started.elapsed());
            Ok(())
        }
        Err(e) => {
            progress.abandon();
            Err(e.into())
        }
    }
}

/// The record with sequence number `seq`.
fn make_record(kind: Kind, source: &str, seq: u64) -> Record {
    let payload = match kind {
        Kind::Sensor => {
            let demo = DEMO_METRICS[seq as usize % DEMO_METRICS.len()];
            let (metric, unit, base) = (demo.name, demo.unit, demo.typical);
            Payload::SensorReading(SensorReading {
                // The same names as `generate sensors`, so that the two
                // group together in AggregateMetric.
                sensor_id: format!("sensor-{:03}", seq % 16),
                metric: metric.into(),
                value: base + rand::rng().random_range(-5.0..5.0),
                unit: unit.into(),
                measured_at: Some(clock::now_timestamp()),
            })
        }
        Kind::Text => Payload::Text(Text {
            body: format!("line {seq} from {source}"),
        }),
        Kind::Json => {
            let mut rng = rand::rng();
            let order = serde_json::json!({
                "order": seq,
                "region": REGIONS[seq as usize % REGIONS.len()],
                "items": rng.random_range(1..=5),
                "total": (rng.random_range(100..50_000) as f64) / 100.0,
            });
            // A JSON object always reads as a `Struct`.
            Payload::Json(serde_json::from_value(order).unwrap_or_default())
        }
    };
    Record {
        source: source.to_owned(),
        seq,
        sent_at: Some(clock::now_timestamp()),
        attributes: Default::default(),
        payload: Some(payload),
    }
}

fn report(config: &Config, source: &str, totals: &Totals, elapsed: Duration) {
    let acked = totals.acked();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let rate = acked as f64 / elapsed.as_secs_f64().max(1e-9);
    if config.json {
        println!(
            "{}",
            serde_json::json!({
                "source": source,
                "sent": load(&totals.sent),
                "acked": acked,
                "accepted": load(&totals.accepted),
                "duplicates": load(&totals.duplicates),
                "rejected": load(&totals.rejected),
                "reconnects": load(&totals.reconnects),
                "rollovers": load(&totals.rollovers),
                "seconds": elapsed.as_secs_f64(),
                "records_per_second": rate,
            })
        );
    } else {
        println!(
            "sent {} records from {source}: {acked} acked ({} duplicates), {} rejected, {} reconnects, {} rollovers, in {:.2} s ({rate:.0} records/s)",
            load(&totals.sent),
            load(&totals.duplicates),
            load(&totals.rejected),
            load(&totals.reconnects),
            load(&totals.rollovers),
            elapsed.as_secs_f64()
        );
        let url = config.publish.connect.trim_end_matches('/');
        println!(
            "find them: curl -s '{url}/v1/records?source={source}&parser=raw&limit=3'   \
             (or: grpcurl -d '{{\"source\":\"{source}\",\"limit\":3}}' ... tributary.v1.Query/ListRecords)"
        );
    }
}
