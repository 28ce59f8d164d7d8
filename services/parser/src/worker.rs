//! The parser worker: pulls deliveries over `Ingest.Pull`, runs them through
//! its parser, writes a batch to the store in one transaction, and acks only
//! after that transaction commits.
//!
//! Deliveries are gathered until `batch_records` records or `linger` has
//! passed, so the store sees large transactions under load and small ones
//! quickly when traffic is light. One batch is written while the next is
//! gathered.
//!
//! Store errors are classified (see `tributary::store`): while the store is
//! unavailable a batch is retried with back-off and its deliveries are kept;
//! a batch holding data the store can never hold is split in halves until
//! the records that fail alone are found, and only those are dead-lettered
//! with the store's reason. The rest of the batch, and the records after
//! it, are stored.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use prost::Message;
use rand::RngExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use tributary::{
    backoff::Backoff,
    call_failure,
    channel::Link,
    clock, grpc_client, kind,
    log_throttle::{DEFAULT_INTERVAL, Throttle},
    metrics,
    proto::{Nack, PullRequest, Record, Subscription, ingest_client::IngestClient},
    store::{NewDeadLetter, NewRecord, Store, StoreError, WriteBatch},
    trace_context,
    wire::Delivery,
};

use crate::parsers::{BatchOutcome, Disposition, Parser};

/// How a worker pulls and batches.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Records the worker may hold unacknowledged.
    pub max_outstanding: u32,
    /// Records per store transaction, at most (one delivery is never split).
    pub batch_records: usize,
    /// How long the first delivery of a batch waits for company.
    pub linger: Duration,
    /// Ack deadline asked of the ingest server.
    pub ack_deadline: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_outstanding: 20_000,
            batch_records: 5_000,
            linger: Duration::from_millis(5),
            ack_deadline: Duration::from_secs(30),
        }
    }
}

/// One parser worker.
pub struct Worker {
    /// The ingest server (or Envoy) to pull from, with its TLS and token.
    pub link: Link,
    /// Consumer group: replicas in the same group share the work.
    pub group: String,
    pub parser: Arc<dyn Parser>,
    pub store: Arc<dyn Store>,
    pub tuning: Tuning,
}

/// A delivery's span in the parser: the trace continues from the queue's
/// hand-over (the delivery's `traceparent`).
fn delivery_span(parser: &str, delivery: &Delivery) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "parser delivery",
        otel.kind = "consumer",
        parser,
        kind = kind::name(delivery.kind()),
        records = delivery.records.len(),
        attempt = delivery.attempt,
    );
    trace_context::set_parent(
        &span,
        Some(delivery.traceparent.as_str()).filter(|t| !t.is_empty()),
    );
    span
}

/// A span for work on a whole gathered batch: a child of the first
/// delivery's span, following from the others (one store transaction
/// serves several traces).
fn stage_span<'a>(
    deliveries: impl IntoIterator<Item = &'a Span>,
    make: impl FnOnce() -> Span,
) -> Span {
    let mut deliveries = deliveries.into_iter();
    let Some(first) = deliveries.next() else {
        return make();
    };
    let span = first.in_scope(make);
    for other in deliveries {
        span.follows_from(other);
    }
    span
}

/// A delivery waiting in a batch, its records decoded, with the span its
/// trace continues in.
struct Gathered {
    /// The delivery, its `records` moved to `records` below.
    delivery: Delivery,
    records: Vec<Delivered>,
    span: Span,
}

impl Gathered {
    fn new(group: &str, mut delivery: Delivery) -> Self {
        let span = delivery_span(group, &delivery);
        let decoded: Vec<_> = delivery.records().collect();
        let records = std::mem::take(&mut delivery.records)
            .into_iter()
            .zip(decoded)
            .map(|(bytes, record)| Delivered {
                record: record.map_err(|e| format!("the record cannot be decoded: {e}")),
                bytes,
            })
            .collect();
        Self {
            delivery,
            records,
            span,
        }
    }
}

/// One delivered record: the bytes it came in, and the record they hold or
/// why they hold none.
struct Delivered {
    bytes: Bytes,
    record: Result<Record, String>,
}

/// Whether a delivery is past its last attempt: its records are
/// dead-lettered as they are, without going through the parser again.
fn exhausted(delivery: &Delivery) -> bool {
    delivery.attempt > delivery.max_attempts
}

/// How long a run of failed sessions is only noted at debug level before
/// it is warned of.
const QUIET_OUTAGE: Duration = Duration::from_secs(2);

impl Worker {
    /// Runs until `shutdown`: reconnects with back-off whenever the stream
    /// breaks. On shutdown it finishes and acks the batch in hand. Fails at
    /// once on what waiting cannot heal (a refused token, an untrusted
    /// certificate), naming the address and what to change.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let this = Arc::new(self);
        this.parser.serves(&this.group);
        // Names this instance's partial aggregates in the store.
        let writer_id: Arc<str> =
            format!("{}-{:016x}", this.group, rand::rng().random::<u64>()).into();
        let mut reconnect = Backoff::client();
        // When the current run of failed sessions began.
        let mut failing_since: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            match this.clone().session(writer_id.clone(), &shutdown).await {
                Ok(()) => {
                    reconnect.reset();
                    failing_since = None;
                }
                Err(e) => {
                    let url = this.link.url();
                    if let Some(hint) = call_failure::lasting_cause(e.as_ref()) {
                        anyhow::bail!("cannot pull from {url}: {hint} ({e:#})");
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    // The first failures are only noted: the stream may come
                    // back within QUIET_OUTAGE, or the next attempts show a
                    // cause that waiting cannot heal (a TLS listener answers
                    // a plaintext client with a closed connection as often
                    // as with a telling protocol error).
                    static FAILED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                    if since.elapsed() < QUIET_OUTAGE {
                        tracing::debug!(parser = %this.group, connect = %url, error = %format!("{e:#}"), "pull stream failed; reconnecting");
                    } else if let Some(repeats) = FAILED.admit() {
                        tracing::warn!(parser = %this.group, connect = %url, error = %format!("{e:#}"), repeats, "pull stream failed; reconnecting");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(reconnect.next_wait()) => {}
            }
        }
        Ok(())
    }

    async fn session(
        self: Arc<Self>,
        writer_id: Arc<str>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let channel =
            grpc_client::connect_with_bearer(&self.link.endpoint()?, self.link.bearer()).await?;
        let mut client = IngestClient::new(channel).max_decoding_message_size(usize::MAX);
        let (requests, request_rx) = mpsc::channel(64);
        requests
            .send(PullRequest {
                subscribe: Some(Subscription {
                    parser: self.group.clone(),
                    kinds: self.parser.kinds().into_iter().map(|k| k as i32).collect(),
                    max_outstanding: self
                        .parser
                        .pull_window()
                        .unwrap_or(self.tuning.max_outstanding),
                    ack_deadline_ms: u32::try_from(self.tuning.ack_deadline.as_millis())
                        .unwrap_or(u32::MAX),
                }),
                ..Default::default()
            })
            .await?;
        let mut deliveries = client
            .pull(ReceiverStream::new(request_rx))
            .await?
            .into_inner();
        tracing::info!(parser = %self.group, connect = %self.link.url(), "pulling");

        // Capacity 1: one batch is written while the next one gathers.
        let (batches, batch_rx) = mpsc::channel::<Vec<Gathered>>(1);
        let write_task =
            tokio::spawn(
                self.clone()
                    .write_loop(writer_id, batch_rx, requests, shutdown.clone()),
            );

        let mut gathered: Vec<Gathered> = Vec::new();
        let mut records = 0usize;
        let mut flush_at: Option<Instant> = None;
        let result = loop {
            let linger = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = linger => {
                    records = 0;
                    flush_at = None;
                    if batches.send(std::mem::take(&mut gathered)).await.is_err() {
                        break Ok(());
                    }
                }
                message = deliveries.message() => match message {
                    Ok(Some(response)) => {
                        for refusal in &response.refusals {
                            tracing::warn!(ack_id = %refusal.ack_id, code = refusal.code, reason = %refusal.reason, "the server refused an ack");
                        }
                        for delivery in response.deliveries {
                            records += delivery.records.len();
                            gathered.push(Gathered::new(&self.group, delivery));
                        }
                        flush_at.get_or_insert_with(|| Instant::now() + self.tuning.linger);
                        if records >= self.tuning.batch_records {
                            records = 0;
                            flush_at = None;
                            if batches.send(std::mem::take(&mut gathered)).await.is_err() {
                                break Ok(());
                            }
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(anyhow::anyhow!(status)),
                },
            }
        };
        if !gathered.is_empty() {
            let _ = batches.send(gathered).await;
        }
        drop(batches);
        // The write task acks what it wrote, then drops the request stream.
        let _ = write_task.await;
        result
    }

    /// Writes gathered deliveries and sends their acks and nacks.
    async fn write_loop(
        self: Arc<Self>,
        writer_id: Arc<str>,
        mut batches: mpsc::Receiver<Vec<Gathered>>,
        requests: mpsc::Sender<PullRequest>,
        shutdown: CancellationToken,
    ) {
        let process_seconds =
            metrics::histogram!(metrics::PARSER_PROCESS_SECONDS, "parser" => self.group.clone());
        let commit_seconds =
            metrics::histogram!(metrics::STORE_COMMIT_SECONDS, "parser" => self.group.clone());
        let dead_letters =
            metrics::counter!(metrics::PARSER_DEAD_LETTERS, "parser" => self.group.clone());
        while let Some(gathered) = batches.recv().await {
            let records: usize = gathered.iter().map(|g| g.records.len()).sum();
            let parse = stage_span(
                gathered.iter().map(|g| &g.span),
                || tracing::info_span!("parse", parser = %self.group, records),
            );
            if !self.wait_ready(&gathered, &requests, &shutdown).await {
                return;
            }
            let started = Instant::now();
            let (whole, answers) = self.process(&writer_id, gathered).instrument(parse).await;
            process_seconds.record(started.elapsed());
            let commit = stage_span(&answers.spans, || {
                tracing::info_span!(
                    "store commit",
                    parser = %self.group,
                    rows = whole.batch.records.len(),
                    dead_letters = whole.batch.dead_letters.len(),
                )
            });
            // Parts of the batch still to write, last first: the whole
            // batch, or the halves of a part the store refused as data.
            let mut parts = vec![whole];
            let mut retry = Backoff::client();
            while let Some(mut part) = parts.pop() {
                let started = Instant::now();
                // The store takes the batch and hands it back, so a store
                // writing on its own thread needs no copy of it.
                let (outcome, batch) = self
                    .store
                    .write_owned(std::mem::take(&mut part.batch))
                    .instrument(commit.clone())
                    .await;
                part.batch = batch;
                match outcome {
                    Ok(written) => {
                        retry.reset();
                        commit_seconds.record(started.elapsed());
                        dead_letters.increment(part.batch.dead_letters.len() as u64);
                        tracing::debug!(parser = %self.group, stored = written.stored, duplicates = written.duplicates, "batch stored");
                    }
                    Err(StoreError::Data(reason)) => match part.split(&reason) {
                        Some(halves) => parts.extend(halves),
                        None => {
                            // Even the dead letters alone cannot be held;
                            // the store only refuses those through a bug.
                            tracing::error!(parser = %self.group, %reason, "dead letters cannot be stored; dropped");
                            metrics::counter!(metrics::PARSER_UNSTORABLE, "parser" => self.group.clone())
                                .increment(1);
                        }
                    },
                    Err(e) => {
                        static FAILED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                        if let Some(repeats) = FAILED.admit() {
                            tracing::warn!(parser = %self.group, error = %e, failures = retry.failures() + 1, repeats, "store write failed; retrying");
                        }
                        let _ = requests.send(answers.extend()).await;
                        parts.push(part);
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(retry.next_wait()) => {}
                        }
                    }
                }
            }
            drop(commit);
            if !answers.send(&requests).await {
                return;
            }
        }
    }

    /// Waits for [`Parser::ready`], keeping `gathered`'s deliveries ours
    /// meanwhile. False when the worker shuts down first or the stream is
    /// gone.
    async fn wait_ready(
        &self,
        gathered: &[Gathered],
        requests: &mpsc::Sender<PullRequest>,
        shutdown: &CancellationToken,
    ) -> bool {
        // Asked again well within a deadline, so that the deliveries are
        // extended before it passes.
        let patience = self.tuning.ack_deadline / 3;
        let mut retry = Backoff::client();
        loop {
            let error = match tokio::time::timeout(patience, self.parser.ready()).await {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => error,
                Err(_) => format!("not ready within {patience:?}"),
            };
            static WAITING: Throttle = Throttle::new(DEFAULT_INTERVAL);
            if let Some(repeats) = WAITING.admit() {
                tracing::warn!(parser = %self.group, %error, failures = retry.failures() + 1, repeats, "parser not ready; holding its records");
            }
            let extend = PullRequest {
                extend_ack_ids: gathered.iter().map(|g| g.delivery.ack_id.clone()).collect(),
                ..Default::default()
            };
            if requests.send(extend).await.is_err() {
                return false;
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(retry.next_wait()) => {}
            }
        }
    }

    /// Runs the records through the parser, all deliveries of the batch in
    /// one call so that a parser may work on them concurrently. Returns what
    /// to write, and how to answer the deliveries once it is written.
    async fn process(&self, writer_id: &str, mut gathered: Vec<Gathered>) -> (Part, Answers) {
        let total = gathered.iter().map(|g| g.records.len()).sum();
        let mut part = Part {
            batch: WriteBatch {
                parser: self.group.clone(),
                writer: writer_id.to_owned(),
                records: Vec::with_capacity(total),
                dead_letters: Vec::new(),
            },
            attempts: Vec::with_capacity(total),
        };
        let mut answers = Answers {
            acks: Vec::with_capacity(gathered.len()),
            nacks: Vec::new(),
            spans: Vec::with_capacity(gathered.len()),
        };
        // The decoded records of deliveries that may still be processed,
        // moved out in delivery order (a default record is left in each
        // place); the others keep theirs and are dead-lettered as they are.
        let mut records: Vec<Record> = Vec::with_capacity(total);
        for g in &mut gathered {
            if !exhausted(&g.delivery) {
                records.extend(
                    g.records
                        .iter_mut()
                        .filter_map(|d| d.record.as_mut().ok().map(std::mem::take)),
                );
            }
        }
        let outcomes = self.parser.process_batch(&mut records).await;
        // Each record as the parser left it, with its outcome.
        let mut parsed =
            records
                .into_iter()
                .zip(outcomes.into_iter().chain(std::iter::repeat_with(|| {
                    Err("the parser returned fewer outcomes than records".into())
                })));
        let keeps = self.parser.keeps_records();
        for Gathered {
            delivery,
            records: delivered,
            span,
        } in gathered
        {
            answers.spans.push(span);
            let mut failure = None;
            let exhausted = exhausted(&delivery).then(|| {
                format!(
                    "not acknowledged after {} deliveries (parser crashed or timed out)",
                    delivery.max_attempts
                )
            });
            for (index, Delivered { bytes, record }) in delivered.into_iter().enumerate() {
                let processed = match (record, &exhausted) {
                    (Err(error), _) => Processed::undecodable(&delivery, index, bytes, error),
                    (Ok(record), Some(error)) => Processed::of(
                        &self.group,
                        &delivery,
                        record,
                        bytes,
                        Err(error.clone()),
                        keeps,
                    ),
                    // `process_batch` keeps one record per record given, so
                    // this record is the next one parsed.
                    (Ok(_), None) => match parsed.next() {
                        Some((record, outcome)) => {
                            Processed::of(&self.group, &delivery, record, bytes, outcome, keeps)
                        }
                        None => Processed::Failed("the parser lost a record".into()),
                    },
                };
                match processed {
                    Processed::Stored(record) => part.push(record, delivery.attempt),
                    Processed::DeadLettered(dead) => part.batch.dead_letters.push(dead),
                    Processed::Dropped => {}
                    Processed::Failed(error) => failure = Some(error),
                }
            }
            match failure {
                // The good records of the batch are stored now; the batch
                // comes back later and only the failures are new work.
                Some(error) => answers.nacks.push(Nack {
                    ack_id: delivery.ack_id,
                    error,
                }),
                None => answers.acks.push(delivery.ack_id),
            }
        }
        (part, answers)
    }
}

/// What the parser made of one delivered record.
enum Processed {
    /// Parsed: stored, with its fact if it yields one.
    Stored(NewRecord),
    /// Dropped by the parser: acknowledged with its delivery, never stored.
    Dropped,
    /// Failed on its delivery's last attempt, or never tried because the
    /// delivery is past its last attempt: dead-lettered with the reason.
    DeadLettered(NewDeadLetter),
    /// Failed with attempts left: its delivery is nacked with this error
    /// and comes back.
    Failed(String),
}

impl Processed {
    /// What becomes of `record`, delivered in `delivery` as `bytes`, given
    /// the parser's `outcome` for it. A stored record keeps the delivered
    /// bytes when the parser `keeps` records as delivered; a dead letter
    /// always does (a parser leaves a record it fails as it was).
    fn of(
        group: &str,
        delivery: &Delivery,
        record: Record,
        bytes: Bytes,
        outcome: BatchOutcome,
        keeps: bool,
    ) -> Self {
        match outcome {
            Ok(Disposition::Drop) => Self::Dropped,
            Ok(Disposition::Store(fact)) => {
                let received_at = delivery.received_at.as_ref().map_or(0, clock::to_micros);
                Self::Stored(NewRecord {
                    sent_at: record
                        .sent_at
                        .as_ref()
                        .map_or(received_at, clock::to_micros),
                    received_at,
                    // The record's own kind: a parser may have replaced
                    // its payload (a remote parser's JSON or text result).
                    kind: kind::of(&record).map_or(delivery.kind, |k| k as i32),
                    seq: record.seq,
                    body: if keeps {
                        bytes
                    } else {
                        record.encode_to_vec().into()
                    },
                    source: record.source,
                    fact,
                })
            }
            Err(error) if delivery.attempt >= delivery.max_attempts => {
                tracing::warn!(parser = %group, source = %record.source, seq = record.seq, %error, "dead-lettering record");
                Self::DeadLettered(NewDeadLetter {
                    kind: delivery.kind,
                    seq: record.seq,
                    body: bytes,
                    source: record.source,
                    error,
                    attempts: delivery.attempt,
                })
            }
            Err(error) => Self::Failed(error),
        }
    }

    /// What becomes of delivered bytes that hold no record: the delivery is
    /// retried while it has attempts left (a record never fails its decode
    /// by chance, but the rule is the one every failure follows), then they
    /// are dead-lettered as they came. Their key is unknown, so the dead
    /// letter is named after the delivery and the record's place in it.
    fn undecodable(delivery: &Delivery, index: usize, bytes: Bytes, error: String) -> Self {
        if delivery.attempt < delivery.max_attempts {
            return Self::Failed(error);
        }
        tracing::warn!(ack_id = %delivery.ack_id, index, %error, "dead-lettering delivered bytes that hold no record");
        Self::DeadLettered(NewDeadLetter {
            source: format!("undecodable {}", delivery.ack_id),
            seq: index as u64,
            kind: delivery.kind,
            body: bytes,
            error,
            attempts: delivery.attempt,
        })
    }
}

/// How to answer a batch's deliveries once its records are written.
struct Answers {
    /// Deliveries whose every record is stored, dropped by the parser or
    /// dead-lettered.
    acks: Vec<String>,
    /// Deliveries holding records the parser failed and may try again.
    nacks: Vec<Nack>,
    /// The deliveries' spans, which end once the answers are on their way.
    spans: Vec<Span>,
}

impl Answers {
    /// A request that keeps the deliveries ours while the store recovers.
    fn extend(&self) -> PullRequest {
        PullRequest {
            extend_ack_ids: self
                .acks
                .iter()
                .chain(self.nacks.iter().map(|n| &n.ack_id))
                .cloned()
                .collect(),
            ..Default::default()
        }
    }

    /// Sends the acks and nacks, then ends the deliveries' spans. False when
    /// the request stream is gone.
    async fn send(self, requests: &mpsc::Sender<PullRequest>) -> bool {
        let done = PullRequest {
            ack_ids: self.acks,
            nacks: self.nacks,
            ..Default::default()
        };
        let sent = requests.send(done).await.is_ok();
        drop(self.spans);
        sent
    }
}

/// Records and dead letters to write in one transaction, with the delivery
/// attempt of each record: a record the store refuses alone is dead-lettered
/// with its attempt.
struct Part {
    batch: WriteBatch,
    /// The attempt of the delivery that brought each of `batch.records`, in
    /// the same order.
    attempts: Vec<u32>,
}

impl Part {
    fn push(&mut self, record: NewRecord, attempt: u32) {
        self.batch.records.push(record);
        self.attempts.push(attempt);
    }

    /// A part the store refused as data, split so the refusal can be
    /// narrowed down: in halves (the dead letters go with the first), or,
    /// for a lone record, into a dead letter carrying the store's reason.
    /// `None` when there is nothing left to narrow: only dead letters, and
    /// one of them at most.
    ///
    /// A record that fails alone is found in about 2·log2(n) writes; a batch
    /// with k such records costs O(k log n) writes, and the good records are
    /// stored with the halves that hold no bad one.
    fn split(mut self, reason: &str) -> Option<Vec<Part>> {
        let empty = || Part {
            batch: WriteBatch {
                parser: self.batch.parser.clone(),
                writer: self.batch.writer.clone(),
                ..Default::default()
            },
            attempts: Vec::new(),
        };
        match self.batch.records.len() {
            0 if self.batch.dead_letters.len() <= 1 => None,
            0 => {
                let mut second = empty();
                let half = self.batch.dead_letters.len() / 2;
                second.batch.dead_letters = self.batch.dead_letters.split_off(half);
                Some(vec![second, self])
            }
            1 if self.batch.dead_letters.is_empty() => {
                let record = self.batch.records.remove(0);
                let attempts = self.attempts.first().copied().unwrap_or(1);
                self.attempts.clear();
                static REFUSED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                if let Some(repeats) = REFUSED.admit() {
                    tracing::warn!(parser = %self.batch.parser, source = ?record.source, seq = record.seq, %reason, repeats, "the store cannot hold a record; dead-lettering it");
                }
                self.batch.dead_letters.push(NewDeadLetter {
                    source: record.source,
                    seq: record.seq,
                    kind: record.kind,
                    body: record.body,
                    error: reason.to_owned(),
                    attempts,
                });
                Some(vec![self])
            }
            len => {
                let mut second = empty();
                second.batch.records = self.batch.records.split_off(len / 2);
                second.attempts = self.attempts.split_off(len / 2);
                // Popped last first: the first half is written first.
                Some(vec![second, self])
            }
        }
    }
}
