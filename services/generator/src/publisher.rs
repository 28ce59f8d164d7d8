//! The publisher every producer shares: it streams records over
//! `Ingest.Publish` with a bounded window of unacknowledged records, and
//! when the stream breaks it reconnects and republishes what was not
//! acknowledged. Keys are unchanged on republish, so nothing is stored
//! twice.
//!
//! Producers hand records in through a channel; the publisher takes a new
//! one only while the window has room, so a slow mesh slows the producer.
//!
//! Records the server refuses as UNAVAILABLE (its queue is down) are held
//! and sent again after an exponential, jittered back-off (`Backoff`), so
//! an outage costs a few requests a second, not a hot loop; they count
//! against the window meanwhile, so the producer waits too. If nothing is
//! accepted for `--retry-secs`, the publisher gives up, as it does when it
//! cannot connect.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Endpoint};
use tracing::Span;
use tributary::{
    backoff::Backoff,
    bearer::{AttachBearer, SendTokenArgs},
    call_failure,
    channel::{ClientTlsArgs, Link},
    grpc_client, kind,
    log_throttle::{DEFAULT_INTERVAL, Throttle},
    proto::{PublishRequest, PublishResponse, Record, ingest_client::IngestClient},
    trace_context,
};

/// How a publisher connects and batches.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Ingest endpoint: `tributary up`, an ingest server, or Envoy.
    #[arg(
        long,
        env = "TRIBUTARY_CONNECT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub connect: String,
    /// Records per request, at most.
    #[arg(long, env = "TRIBUTARY_BATCH", default_value_t = 500)]
    pub batch: usize,
    /// Most records sent but not yet acknowledged.
    #[arg(long, env = "TRIBUTARY_WINDOW", default_value_t = 20_000)]
    pub window: usize,
    /// Seconds to keep retrying, after the server goes away or while it
    /// refuses records as unavailable, before giving up.
    #[arg(long, env = "TRIBUTARY_RETRY_SECS", default_value_t = 30)]
    pub retry_secs: u64,
    /// Seconds after which a publish stream is closed (once its window is
    /// acknowledged) and a new one opened. Behind Envoy, which balances per
    /// stream, this spreads producers over replicas added since they
    /// started. 0 keeps one stream for the whole run.
    #[arg(long, env = "TRIBUTARY_ROLLOVER_SECS", default_value_t = 30)]
    pub rollover_secs: u64,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    #[command(flatten)]
    pub token: SendTokenArgs,
}

impl PublishArgs {
    /// The ingest link these flags describe, with their files read.
    pub fn link(&self) -> anyhow::Result<Link> {
        Ok(Link::new(
            self.connect.clone(),
            self.tls.load()?,
            self.token.load()?,
        ))
    }
}

/// Running totals, readable while the publisher runs.
#[derive(Debug, Default)]
pub struct Totals {
    /// Records taken from the producer.
    pub sent: AtomicU64,
    /// Records durably accepted for the first time.
    pub accepted: AtomicU64,
    /// Records acknowledged as already held.
    pub duplicates: AtomicU64,
    /// Records rejected for good.
    pub rejected: AtomicU64,
    /// Streams re-opened after a failure.
    pub reconnects: AtomicU64,
    /// Streams closed at their age limit and replaced.
    pub rollovers: AtomicU64,
    /// Records refused as unavailable and sent again after a back-off.
    pub retried: AtomicU64,
}

impl Totals {
    /// Records acknowledged (accepted or duplicate).
    pub fn acked(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed) + self.duplicates.load(Ordering::Relaxed)
    }

    /// Records answered in any way.
    pub fn answered(&self) -> u64 {
        self.acked() + self.rejected.load(Ordering::Relaxed)
    }
}

/// A running publisher.
pub struct Publisher {
    records: mpsc::Sender<Record>,
    totals: Arc<Totals>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Publisher {
    /// Starts publishing to `args.connect`. `shutdown` only cuts reconnect
    /// waits short: a producer stops by dropping its senders.
    pub fn start(args: &PublishArgs, shutdown: CancellationToken) -> anyhow::Result<Self> {
        Self::start_on(args, &args.link()?, shutdown)
    }

    /// Like [`Publisher::start`], to `link` instead of the flags' address,
    /// TLS and token.
    pub fn start_on(
        args: &PublishArgs,
        link: &Link,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
        anyhow::ensure!(
            args.window >= args.batch,
            "--window must be at least --batch"
        );
        let endpoint = link.endpoint().context("--connect")?;
        let (records, rx) = mpsc::channel(args.batch);
        let totals = Arc::new(Totals::default());
        let task = tokio::spawn(publish(
            args.clone(),
            endpoint,
            link.bearer(),
            rx,
            totals.clone(),
            shutdown,
        ));
        Ok(Self {
            records,
            totals,
            task,
        })
    }

    /// Where the producer sends records.
    pub fn sender(&self) -> mpsc::Sender<Record> {
        self.records.clone()
    }

    /// The running totals.
    pub fn totals(&self) -> Arc<Totals> {
        self.totals.clone()
    }

    /// Waits until every record handed in is answered (the producer must
    /// have dropped its senders), and returns the totals.
    pub async fn finish(self) -> anyhow::Result<Arc<Totals>> {
        drop(self.records);
        self.task.await.context("the publisher task panicked")??;
        Ok(self.totals)
    }
}

/// The state that outlives a broken stream.
struct Outbox {
    /// Batches sent (or to send) and not yet answered, by batch id.
    unacked: BTreeMap<u64, Vec<Record>>,
    /// The span of each unanswered batch: it ends when the batch is
    /// answered, and a republished batch stays in its first trace.
    spans: HashMap<u64, Span>,
    /// Batch ids to (re)send before new ones.
    resend: VecDeque<u64>,
    next_batch: u64,
    unacked_records: usize,
    /// The producer has dropped its senders.
    input_closed: bool,
    /// Batches of refused records waiting out their back-off.
    held: Vec<u64>,
    /// When the held batches go again.
    retry_at: Option<Instant>,
    /// The back-off of refused records.
    refusals: Backoff,
    /// Since when records have been refused with none accepted.
    refused_since: Option<Instant>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            unacked: BTreeMap::new(),
            spans: HashMap::new(),
            resend: VecDeque::new(),
            next_batch: 0,
            unacked_records: 0,
            input_closed: false,
            held: Vec::new(),
            retry_at: None,
            refusals: Backoff::client(),
            refused_since: None,
        }
    }
}

async fn publish(
    args: PublishArgs,
    endpoint: Endpoint,
    bearer: AttachBearer,
    mut input: mpsc::Receiver<Record>,
    totals: Arc<Totals>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut outbox = Outbox::default();
    let mut failing_since: Option<Instant> = None;
    let mut reconnect = Backoff::client();
    // Consecutive failed streams of the current outage.
    let mut failures = 0u32;
    let url = endpoint.uri().clone();
    loop {
        let answered = totals.answered();
        match session(&args, &endpoint, &bearer, &mut input, &mut outbox, &totals).await {
            Ok(Ended::Done) => return Ok(()),
            Ok(Ended::RolledOver) => {
                totals.rollovers.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ended::Refused) => bail!(
                "gave up after {} s of records refused as unavailable ({} unacknowledged)",
                args.retry_secs,
                outbox.unacked_records
            ),
            Err(e) => {
                if totals.answered() > answered {
                    // The stream made progress before failing: a new outage.
                    failing_since = None;
                    reconnect.reset();
                    failures = 0;
                }
                failures += 1;
                if let Some(hint) = call_failure::lasting_cause(e.as_ref()) {
                    bail!("cannot publish to {url}: {hint} ({e:#})");
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(args.retry_secs) {
                    bail!(
                        "gave up on {url} after {} s of failures (--retry-secs): {e:#}",
                        args.retry_secs
                    );
                }
                totals.reconnects.fetch_add(1, Ordering::Relaxed);
                // A stream the server ends because the process is stopping
                // is no outage; otherwise once per interval, not once per
                // attempt, so an outage does not flood the log.
                // The first failures of an outage are only noted: a stream
                // that comes back within QUIET_OUTAGE needs nobody's action,
                // and the next attempts may yet show a cause that waiting
                // cannot heal (a TLS listener answers a plaintext client with
                // a broken pipe as often as with a telling protocol error).
                static FAILED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                if shutdown.is_cancelled() {
                    tracing::debug!(connect = %url, error = %format!("{e:#}"), "publish stream ended while stopping");
                } else if failures <= 1 || since.elapsed() < QUIET_OUTAGE {
                    tracing::debug!(connect = %url, error = %format!("{e:#}"), "publish stream failed; reconnecting");
                } else if let Some(repeats) = FAILED.admit() {
                    tracing::warn!(connect = %url, error = %format!("{e:#}"), unacked = outbox.unacked_records, retrying_for = ?since.elapsed(), repeats, "publish stream failed; reconnecting");
                }
                // Everything unanswered goes again, in order.
                outbox.resend = outbox.unacked.keys().copied().collect();
                outbox.held.clear();
                outbox.retry_at = None;
                let pause = reconnect.next_wait();
                tokio::select! {
                    () = shutdown.cancelled() => bail!(
                        "stopped with {} records unacknowledged", outbox.unacked_records
                    ),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// How long an outage is only noted at debug level before it is warned of.
const QUIET_OUTAGE: Duration = Duration::from_secs(2);

/// How a publish stream ended without error.
enum Ended {
    /// The producer is done and everything was answered.
    Done,
    /// The stream reached its age limit with nothing outstanding.
    RolledOver,
    /// Records were refused as unavailable, and none accepted, for longer
    /// than `--retry-secs`.
    Refused,
}

async fn session(
    args: &PublishArgs,
    endpoint: &Endpoint,
    bearer: &AttachBearer,
    input: &mut mpsc::Receiver<Record>,
    outbox: &mut Outbox,
    totals: &Totals,
) -> anyhow::Result<Ended> {
    let roll_at =
        (args.rollover_secs > 0).then(|| Instant::now() + Duration::from_secs(args.rollover_secs));
    let channel = grpc_client::connect_with_bearer(endpoint, bearer.clone())
        .await
        .context("connecting")?;
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel::<PublishRequest>(8);
    let mut responses = client
        .publish(ReceiverStream::new(rx))
        .await
        .context("opening the publish stream")?
        .into_inner();
    loop {
        // Past its age, the stream takes no new records; once what it
        // carries is answered, it ends and the caller opens a new one.
        let rolling = roll_at.is_some_and(|at| Instant::now() >= at);
        if outbox.unacked.is_empty() {
            if outbox.input_closed {
                return Ok(Ended::Done);
            }
            if rolling {
                return Ok(Ended::RolledOver);
            }
        }
        // From a refusal until something is accepted again, new records
        // wait: they would only be refused as well, and the held records
        // alone probe whether the mesh is back.
        let may_take = !outbox.input_closed
            && !rolling
            && outbox.refused_since.is_none()
            && outbox.unacked_records + args.batch <= args.window;
        tokio::select! {
            // Wakes an idle stream when it comes of age.
            () = async {
                match roll_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if !rolling => {}
            // Refused records go again once their back-off is over.
            () = async {
                match outbox.retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                outbox.retry_at = None;
                let held = std::mem::take(&mut outbox.held);
                outbox.resend.extend(held);
            }
            // Republished batches go first and need no new records.
            permit = tx.reserve(), if !outbox.resend.is_empty() => {
                let permit = permit.context("the publish stream closed")?;
                let batch_id = outbox.resend.pop_front().expect("checked non-empty");
                let records = outbox.unacked[&batch_id].clone();
                let traceparent = outbox.traceparent(batch_id);
                permit.send(PublishRequest { batch_id, records, traceparent });
            }
            // Only while the request channel has room, so that the send
            // below never waits and answers keep being read.
            first = input.recv(), if may_take && outbox.resend.is_empty() && tx.capacity() > 0 => {
                let Some(first) = first else {
                    outbox.input_closed = true;
                    continue;
                };
                // Whatever else is ready goes in the same batch; nothing
                // waits for company, so a lone record leaves at once.
                let mut records = vec![first];
                while records.len() < args.batch {
                    match input.try_recv() {
                        Ok(record) => records.push(record),
                        Err(_) => break,
                    }
                }
                totals.sent.fetch_add(records.len() as u64, Ordering::Relaxed);
                outbox.unacked_records += records.len();
                let batch_id = outbox.next_batch;
                outbox.next_batch += 1;
                outbox.spans.insert(batch_id, batch_span(&records));
                outbox.unacked.insert(batch_id, records.clone());
                let traceparent = outbox.traceparent(batch_id);
                tx.try_send(PublishRequest { batch_id, records, traceparent })
                    .map_err(|_| anyhow::anyhow!("the publish stream closed"))?;
            }
            response = responses.message() => {
                let response = response.context("publish stream failed")?
                    .ok_or_else(|| anyhow::anyhow!("the server ended the publish stream"))?;
                settle(response, outbox, totals, args.batch);
                if outbox
                    .refused_since
                    .is_some_and(|since| since.elapsed() > Duration::from_secs(args.retry_secs))
                {
                    return Ok(Ended::Refused);
                }
            }
        }
    }
}

impl Outbox {
    fn traceparent(&self, batch_id: u64) -> String {
        self.spans
            .get(&batch_id)
            .and_then(trace_context::traceparent)
            .unwrap_or_default()
    }
}

/// The root of one batch's trace: the producer's publish.
fn batch_span(records: &[Record]) -> Span {
    let kind = records
        .first()
        .and_then(kind::of)
        .map_or("unknown", kind::name);
    tracing::info_span!(
        parent: None,
        "producer publish",
        otel.kind = "producer",
        records = records.len(),
        kind,
        accepted = tracing::field::Empty,
        rejected = tracing::field::Empty,
    )
}

/// Applies one batch's answer: acknowledged records are done, records the
/// queue could not take go again in a new batch after a back-off, other
/// rejections are final.
fn settle(response: PublishResponse, outbox: &mut Outbox, totals: &Totals, batch: usize) {
    let Some(records) = outbox.unacked.remove(&response.batch_id) else {
        return;
    };
    outbox.unacked_records -= records.len();
    let span = outbox.spans.remove(&response.batch_id);
    if let Some(span) = &span {
        span.record("accepted", response.accepted + response.duplicates);
        span.record("rejected", response.rejections.len());
    }
    totals
        .accepted
        .fetch_add(u64::from(response.accepted), Ordering::Relaxed);
    totals
        .duplicates
        .fetch_add(u64::from(response.duplicates), Ordering::Relaxed);
    let mut retry = Vec::new();
    for rejection in &response.rejections {
        let record = records.get(rejection.index as usize);
        match (Code::from(rejection.code), record) {
            (Code::Unavailable, Some(record)) => retry.push(record.clone()),
            _ => {
                let rejected = totals.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                if rejected <= 5 {
                    tracing::warn!(seq = rejection.seq, code = ?Code::from(rejection.code), reason = %rejection.reason, "record rejected");
                }
            }
        }
    }
    if response.accepted + response.duplicates > 0 {
        outbox.refusals.reset();
        outbox.refused_since = None;
    }
    if !retry.is_empty() {
        outbox.unacked_records += retry.len();
        totals
            .retried
            .fetch_add(retry.len() as u64, Ordering::Relaxed);
        // Refused records join the last held batch while it has room, so
        // a retry round sends few requests however the refusals came.
        let last = outbox.held.last().copied();
        match last.and_then(|id| outbox.unacked.get_mut(&id)) {
            Some(held) if held.len() + retry.len() <= batch => held.extend(retry),
            _ => {
                let id = outbox.next_batch;
                outbox.next_batch += 1;
                outbox.unacked.insert(id, retry);
                // The retried records continue the trace of the batch they
                // came in.
                if let Some(span) = span {
                    outbox.spans.insert(id, span);
                }
                outbox.held.push(id);
            }
        }
        outbox.refused_since.get_or_insert_with(Instant::now);
        if outbox.retry_at.is_none() {
            let wait = outbox.refusals.next_wait();
            outbox.retry_at = Some(Instant::now() + wait);
            static REFUSED: Throttle = Throttle::new(DEFAULT_INTERVAL);
            if let Some(repeats) = REFUSED.admit() {
                tracing::warn!(
                    records = outbox.unacked_records,
                    retry_in_ms = wait.as_millis() as u64,
                    repeats,
                    "the mesh refused records as unavailable; retrying after a back-off"
                );
            }
        }
    }
}
