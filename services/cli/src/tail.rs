//! `tributary tail`: follows stored records as they arrive, like `tail -f`,
//! through the Query API's `TailRecords` stream. A broken stream is opened
//! again after the last record printed, so a server restart loses nothing
//! it had stored; Ctrl-C ends the command with status 0.

use std::{io::Write as _, time::Duration};

use anyhow::Context;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tributary::{
    backoff::Backoff,
    channel::{ClientTlsArgs, Link},
    grpc_client, kind,
    proto::{
        RecordKind, StoredRecord, TailRecordsRequest, query_client::QueryClient, record::Payload,
    },
    ranges::{MAX_BACKLOG, MAX_POLL_MS, MIN_POLL_MS},
};

/// What to follow and how to print it.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Each line: stored time, parser, source#seq, kind, payload. \
With --json, one StoredRecord per line in proto3 JSON (as GET /v1/records shows it). \
Ends on Ctrl-C, or after --count records."
)]
pub struct Config {
    /// Query API to read: `tributary up`, the API service, or Envoy.
    #[arg(
        long,
        env = "TRIBUTARY_CONNECT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub connect: String,
    /// Only records stored by this parser (consumer group); all when unset.
    #[arg(long)]
    pub parser: Option<String>,
    /// Only records from this source; all when unset.
    #[arg(long)]
    pub source: Option<String>,
    /// Only records of this kind; repeat for several. Kinds:
    /// random_number, probe, sensor_reading, sms, text, json, blob.
    #[arg(long = "kind", value_parser = parse_kind)]
    pub kinds: Vec<RecordKind>,
    /// Print the last N matching records already stored first (at most
    /// 1000).
    #[arg(long, short = 'n', default_value_t = 0)]
    pub backlog: u32,
    /// Print one JSON object per record instead of a line of text.
    #[arg(long)]
    pub json: bool,
    /// Stop after printing this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// How often the server looks for new records when none arrived, for
    /// example `200ms` (from 50ms to 10s).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The token to read with, for servers that require one (the full or
    /// the read-only token).
    #[command(flatten)]
    pub auth: tributary::bearer::SendTokenArgs,
}

fn parse_kind(name: &str) -> Result<RecordKind, String> {
    kind::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = kind::ALL.into_iter().map(kind::name).collect();
        format!("unknown kind {name:?} (kinds: {})", known.join(", "))
    })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.backlog <= MAX_BACKLOG,
        "--backlog is at most {MAX_BACKLOG}"
    );
    if let Some(parser) = &config.parser {
        tributary::queue::check_group(parser).map_err(|e| anyhow::anyhow!("--parser: {e}"))?;
    }
    let poll_ms = u32::try_from(config.poll.as_millis()).unwrap_or(u32::MAX);
    anyhow::ensure!(
        (MIN_POLL_MS..=MAX_POLL_MS).contains(&poll_ms),
        "--poll must be from {MIN_POLL_MS}ms to {MAX_POLL_MS}ms"
    );
    let link = Link::new(
        config.connect.clone(),
        config.tls.load()?,
        config.auth.load()?,
    );
    let channel = grpc_client::connect_lazy_with_bearer(
        &link.endpoint().context("--connect")?,
        link.bearer(),
    );
    let mut client = QueryClient::new(channel);
    let mut printed = 0u64;
    let mut last_id = 0i64;
    let mut backoff = Backoff::client();
    let mut stdout = std::io::stdout().lock();
    loop {
        let request = TailRecordsRequest {
            parser: config.parser.clone().unwrap_or_default(),
            source: config.source.clone().unwrap_or_default(),
            kinds: config.kinds.iter().map(|k| *k as i32).collect(),
            backlog: if last_id == 0 { config.backlog } else { 0 },
            poll_ms,
            after_id: last_id,
        };
        let opened = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            opened = client.tail_records(request) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => {
                // On stderr, so that stdout holds only records; tests wait
                // for this line to know the tail has started.
                eprintln!("tail: following {} after record {last_id}", config.connect);
                stream.into_inner()
            }
            // Bad flags are ours to fix; say so and stop.
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                anyhow::bail!("the server refused the tail: {}", status.message());
            }
            Err(status) => {
                retry(&shutdown, &mut backoff, &config.connect, &status).await?;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = stream.next() => next,
            };
            match next {
                Some(Ok(record)) => {
                    backoff.reset();
                    last_id = last_id.max(record.id);
                    let line = if config.json {
                        serde_json::to_string(&record).context("encoding a record as JSON")?
                    } else {
                        line(&record)
                    };
                    if writeln!(stdout, "{line}")
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        // The reader went away (`| head`): we are done.
                        return Ok(());
                    }
                    printed += 1;
                    if config.count.is_some_and(|count| printed >= count) {
                        return Ok(());
                    }
                }
                Some(Err(status)) => {
                    retry(&shutdown, &mut backoff, &config.connect, &status).await?;
                    break;
                }
                None => {
                    // The server shut down its side (a restart): reopen.
                    retry(
                        &shutdown,
                        &mut backoff,
                        &config.connect,
                        &tonic::Status::unavailable("the server ended the stream"),
                    )
                    .await?;
                    break;
                }
            }
        }
    }
}

/// Waits out a back-off step after a failed stream, or returns early on
/// Ctrl-C (as `Ok`, the loop above then sees the cancellation).
async fn retry(
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    connect: &str,
    status: &tonic::Status,
) -> anyhow::Result<()> {
    let delay = backoff.next_wait();
    eprintln!(
        "tail: {connect}: {} ({:?}); retrying in {delay:?}",
        status.message(),
        status.code()
    );
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
    Ok(())
}

/// One record as a line of text.
pub fn line(stored: &StoredRecord) -> String {
    // A Timestamp's JSON is its RFC 3339 text, quoted.
    let at = stored
        .stored_at
        .as_ref()
        .and_then(|ts| serde_json::to_string(ts).ok())
        .map_or_else(|| "-".to_owned(), |at| at.trim_matches('"').to_owned());
    let Some(record) = &stored.record else {
        return format!("{at} {} #{} (undecodable)", stored.parser, stored.id);
    };
    let kind = kind::of(record).map_or("unknown", kind::name);
    let json = match &record.payload {
        Some(Payload::Text(text)) => Ok(text.body.clone()),
        Some(Payload::Blob(blob)) => {
            Ok(format!("{} ({} bytes)", blob.content_type, blob.data.len()))
        }
        Some(Payload::Json(json)) => serde_json::to_string(json),
        Some(Payload::RandomNumber(payload)) => serde_json::to_string(payload),
        Some(Payload::Probe(payload)) => serde_json::to_string(payload),
        Some(Payload::SensorReading(payload)) => serde_json::to_string(payload),
        Some(Payload::Sms(payload)) => serde_json::to_string(payload),
        None => Ok(String::new()),
    };
    let payload = json.unwrap_or_else(|e| format!("(not shown: {e})"));
    format!(
        "{at} {} {}#{} {kind} {payload}",
        stored.parser, record.source, record.seq
    )
}
