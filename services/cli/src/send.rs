//! `tributary send`: streams records over `Ingest.Publish` with a bounded
//! window of unacknowledged records, survives server restarts by
//! reconnecting and republishing what was not acknowledged (the keys are the
//! same, so nothing is stored twice), and reports what happened.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Endpoint};
use tributary::{
    clock,
    proto::{
        PublishRequest, PublishResponse, Record, SensorReading, Text, ingest_client::IngestClient,
        record::Payload,
    },
};

/// What `send` publishes and how.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Ingest endpoint: `tributary up`, an ingest server, or Envoy.
    #[arg(
        long,
        env = "TRIBUTARY_CONNECT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub connect: String,
    /// How many records to send.
    #[arg(long, short = 'n', env = "TRIBUTARY_COUNT", default_value_t = 100_000)]
    pub count: u64,
    /// What to send.
    #[arg(long, value_enum, env = "TRIBUTARY_KIND", default_value_t = Kind::Sensor)]
    pub kind: Kind,
    /// Records per request.
    #[arg(long, env = "TRIBUTARY_BATCH", default_value_t = 500)]
    pub batch: usize,
    /// Most records sent but not yet acknowledged.
    #[arg(long, env = "TRIBUTARY_WINDOW", default_value_t = 20_000)]
    pub window: usize,
    /// Records per second; 0 sends as fast as acknowledgements allow.
    #[arg(long, env = "TRIBUTARY_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Source name of the records. Defaults to `send-` and a random suffix,
    /// so that a new run never reuses an earlier run's keys.
    #[arg(long, env = "TRIBUTARY_SOURCE")]
    pub source: Option<String>,
    /// Seconds to keep reconnecting after the server goes away before
    /// giving up.
    #[arg(long, env = "TRIBUTARY_RETRY_SECS", default_value_t = 30)]
    pub retry_secs: u64,
    /// Seconds after which a publish stream is closed (once its window is
    /// acknowledged) and a new one opened. Behind Envoy, which balances per
    /// stream, this spreads producers over replicas added since they
    /// started. 0 keeps one stream for the whole run.
    #[arg(long, env = "TRIBUTARY_ROLLOVER_SECS", default_value_t = 30)]
    pub rollover_secs: u64,
    /// Print the final summary as one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// Record kinds `send` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Sensor readings: temperature, humidity and pressure from 16 sensors.
    Sensor,
    /// Lines of text.
    Text,
}

/// Running totals.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    reconnects: u64,
    rollovers: u64,
}

/// The state that outlives a broken stream.
struct Outbox {
    /// Batches sent (or to send) and not yet answered, by batch id.
    unacked: BTreeMap<u64, Vec<Record>>,
    /// Batch ids to (re)send before new ones.
    resend: VecDeque<u64>,
    next_seq: u64,
    next_batch: u64,
    unacked_records: usize,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(config.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(
        config.window >= config.batch,
        "--window must be at least --batch"
    );
    let source = config
        .source
        .clone()
        .unwrap_or_else(|| format!("send-{:016x}", rand::rng().random::<u64>()));
    let endpoint = Endpoint::from_shared(config.connect.clone())
        .with_context(|| format!("bad --connect URI {:?}", config.connect))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);

    let progress = ProgressBar::new(config.count);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} acked  {per_sec}  eta {eta}")
            .expect("the template is valid"),
    );
    let mut totals = Totals::default();
    let mut outbox = Outbox {
        unacked: BTreeMap::new(),
        resend: VecDeque::new(),
        next_seq: 0,
        next_batch: 0,
        unacked_records: 0,
    };
    let started = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let answered = totals.accepted + totals.duplicates + totals.rejected;
        match session(
            &config,
            &source,
            &endpoint,
            &mut outbox,
            &mut totals,
            &progress,
            started,
            &shutdown,
        )
        .await
        {
            Ok(Ended::Done) => break,
            Ok(Ended::RolledOver) => totals.rollovers += 1,
            Err(e) => {
                if totals.accepted + totals.duplicates + totals.rejected > answered {
                    // The stream made progress before failing: a new outage.
                    failing_since = None;
                    failures = 0;
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(config.retry_secs) {
                    progress.abandon();
                    bail!("gave up after {} s of failures: {e:#}", config.retry_secs);
                }
                failures += 1;
                totals.reconnects += 1;
                tracing::warn!(error = %format!("{e:#}"), unacked = outbox.unacked_records, "publish stream failed; reconnecting");
                // Everything unanswered goes again, in order.
                outbox.resend = outbox.unacked.keys().copied().collect();
                let pause = Duration::from_millis(100u64 << failures.min(4));
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    progress.finish_and_clear();
    report(&config, &source, &totals, started.elapsed());
    if !outbox.unacked.is_empty() {
        bail!("{} records were never acknowledged", outbox.unacked_records);
    }
    Ok(())
}

/// How a publish stream ended without error.
enum Ended {
    /// Everything was generated and answered, or shutdown was asked for.
    Done,
    /// The stream reached its age limit with nothing outstanding.
    RolledOver,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &Config,
    source: &str,
    endpoint: &Endpoint,
    outbox: &mut Outbox,
    totals: &mut Totals,
    progress: &ProgressBar,
    started: Instant,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let roll_at = (config.rollover_secs > 0)
        .then(|| Instant::now() + Duration::from_secs(config.rollover_secs));
    let channel = endpoint.connect().await.context("connecting")?;
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel::<PublishRequest>(8);
    let mut responses = client
        .publish(ReceiverStream::new(rx))
        .await
        .context("opening the publish stream")?
        .into_inner();
    let mut stopping = false;
    loop {
        let finished = outbox.next_seq >= config.count || stopping;
        // Past its age, the stream takes no new batches; once what it
        // carries is answered, it ends and the caller opens a new one.
        let rolling = roll_at.is_some_and(|at| Instant::now() >= at);
        let done_generating = finished || rolling;
        if done_generating && outbox.unacked.is_empty() {
            return Ok(if finished {
                Ended::Done
            } else {
                Ended::RolledOver
            });
        }
        let may_send = !outbox.resend.is_empty()
            || (!done_generating && outbox.unacked_records + config.batch <= config.window);
        let send_at = if config.rate > 0 && outbox.resend.is_empty() {
            started + Duration::from_secs_f64(outbox.next_seq as f64 / config.rate as f64)
        } else {
            Instant::now()
        };
        tokio::select! {
            () = shutdown.cancelled(), if !stopping => stopping = true,
            permit = async {
                tokio::time::sleep_until(send_at).await;
                tx.reserve().await
            }, if may_send => {
                let permit = permit.context("the publish stream closed")?;
                let batch_id = match outbox.resend.pop_front() {
                    Some(id) => id,
                    None => {
                        let n = (config.count - outbox.next_seq).min(config.batch as u64);
                        let records: Vec<Record> = (outbox.next_seq..outbox.next_seq + n)
                            .map(|seq| make_record(config.kind, source, seq))
                            .collect();
                        outbox.next_seq += n;
                        totals.sent += n;
                        outbox.unacked_records += records.len();
                        let id = outbox.next_batch;
                        outbox.next_batch += 1;
                        outbox.unacked.insert(id, records);
                        id
                    }
                };
                let records = outbox.unacked[&batch_id].clone();
                permit.send(PublishRequest { batch_id, records });
            }
            response = responses.message() => {
                let response = response.context("publish stream failed")?
                    .ok_or_else(|| anyhow::anyhow!("the server ended the publish stream"))?;
                settle(response, outbox, totals, progress);
            }
        }
    }
}

/// Applies one batch's answer: acknowledged records are done, records the
/// queue could not take go again in a new batch, other rejections are final.
fn settle(
    response: PublishResponse,
    outbox: &mut Outbox,
    totals: &mut Totals,
    progress: &ProgressBar,
) {
    let Some(records) = outbox.unacked.remove(&response.batch_id) else {
        return;
    };
    outbox.unacked_records -= records.len();
    totals.accepted += u64::from(response.accepted);
    totals.duplicates += u64::from(response.duplicates);
    let mut retry = Vec::new();
    for rejection in &response.rejections {
        let record = records.get(rejection.index as usize);
        match (Code::from(rejection.code), record) {
            (Code::Unavailable, Some(record)) => retry.push(record.clone()),
            _ => {
                totals.rejected += 1;
                if totals.rejected <= 5 {
                    tracing::warn!(seq = rejection.seq, code = ?Code::from(rejection.code), reason = %rejection.reason, "record rejected");
                }
            }
        }
    }
    progress.inc(records.len() as u64 - retry.len() as u64);
    if !retry.is_empty() {
        let id = outbox.next_batch;
        outbox.next_batch += 1;
        outbox.unacked_records += retry.len();
        outbox.unacked.insert(id, retry);
        outbox.resend.push_back(id);
    }
}

/// The record with sequence number `seq`.
fn make_record(kind: Kind, source: &str, seq: u64) -> Record {
    let payload = match kind {
        Kind::Sensor => {
            let metric = ["temperature", "humidity", "pressure"][(seq % 3) as usize];
            let unit = ["celsius", "percent", "hectopascal"][(seq % 3) as usize];
            let base = [20.0, 50.0, 1013.0][(seq % 3) as usize];
            Payload::SensorReading(SensorReading {
                sensor_id: format!("sensor-{}", seq % 16),
                metric: metric.into(),
                value: base + rand::rng().random_range(-5.0..5.0),
                unit: unit.into(),
                measured_at: Some(clock::now_timestamp()),
            })
        }
        Kind::Text => Payload::Text(Text {
            body: format!("line {seq} from {source}"),
        }),
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
    let acked = totals.accepted + totals.duplicates;
    let rate = acked as f64 / elapsed.as_secs_f64().max(1e-9);
    if config.json {
        println!(
            "{}",
            serde_json::json!({
                "source": source,
                "sent": totals.sent,
                "acked": acked,
                "accepted": totals.accepted,
                "duplicates": totals.duplicates,
                "rejected": totals.rejected,
                "reconnects": totals.reconnects,
                "rollovers": totals.rollovers,
                "seconds": elapsed.as_secs_f64(),
                "records_per_second": rate,
            })
        );
    } else {
        println!(
            "sent {} records from {source}: {acked} acked ({} duplicates), {} rejected, {} reconnects, in {:.2} s ({rate:.0} records/s)",
            totals.sent,
            totals.duplicates,
            totals.rejected,
            totals.reconnects,
            elapsed.as_secs_f64()
        );
    }
}
