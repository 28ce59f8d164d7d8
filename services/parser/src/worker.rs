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
    proto::{Delivery, Nack, PullRequest, Record, Subscription, ingest_client::IngestClient},
    store::{NewDeadLetter, NewRecord, Store, StoreError, WriteBatch},
    trace_context,
};

use crate::parsers::Parser;

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
    /// Consumer group: replicas with the same name share the work.
    pub name: String,
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
fn stage_span(deliveries: &[Span], make: impl FnOnce() -> Span) -> Span {
    let Some(first) = deliveries.first() else {
        return make();
    };
    let span = first.in_scope(make);
    for other in &deliveries[1..] {
        span.follows_from(other);
    }
    span
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
        // Names this instance's partial aggregates in the store.
        let writer: Arc<str> = format!("{}-{:016x}", this.name, rand::rng().random::<u64>()).into();
        let mut reconnect = Backoff::client();
        // When the current run of failed sessions began.
        let mut failing_since: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            match this.clone().session(writer.clone(), &shutdown).await {
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
                        tracing::debug!(parser = %this.name, connect = %url, error = %format!("{e:#}"), "pull stream failed; reconnecting");
                    } else if let Some(repeats) = FAILED.admit() {
                        tracing::warn!(parser = %this.name, connect = %url, error = %format!("{e:#}"), repeats, "pull stream failed; reconnecting");
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
        writer: Arc<str>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let channel =
            grpc_client::connect_with_bearer(&self.link.endpoint()?, self.link.bearer()).await?;
        let mut client = IngestClient::new(channel).max_decoding_message_size(usize::MAX);
        let (requests, request_rx) = mpsc::channel(64);
        requests
            .send(PullRequest {
                subscribe: Some(Subscription {
                    parser: self.name.clone(),
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
        tracing::info!(parser = %self.name, connect = %self.link.url(), "pulling");

        // Capacity 1: one batch is written while the next one gathers.
        let (batches, batch_rx) = mpsc::channel::<Vec<(Delivery, Span)>>(1);
        let writer =
            tokio::spawn(
                self.clone()
                    .write_loop(writer, batch_rx, requests, shutdown.clone()),
            );

        let mut gathered: Vec<(Delivery, Span)> = Vec::new();
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
                            let span = delivery_span(&self.name, &delivery);
                            gathered.push((delivery, span));
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
        // The writer acks what it wrote, then drops the request stream.
        let _ = writer.await;
        result
    }

    /// Writes gathered deliveries and sends their acks and nacks.
    async fn write_loop(
        self: Arc<Self>,
        writer: Arc<str>,
        mut batches: mpsc::Receiver<Vec<(Delivery, Span)>>,
        requests: mpsc::Sender<PullRequest>,
        shutdown: CancellationToken,
    ) {
        let process_seconds =
            metrics::histogram!(metrics::PARSER_PROCESS_SECONDS, "parser" => self.name.clone());
        let commit_seconds =
            metrics::histogram!(metrics::STORE_COMMIT_SECONDS, "parser" => self.name.clone());
        let dead_letters =
            metrics::counter!(metrics::PARSER_DEAD_LETTERS, "parser" => self.name.clone());
        while let Some(gathered) = batches.recv().await {
            let (deliveries, spans): (Vec<Delivery>, Vec<Span>) = gathered.into_iter().unzip();
            let records: usize = deliveries.iter().map(|d| d.records.len()).sum();
            let parse = stage_span(
                &spans,
                || tracing::info_span!("parse", parser = %self.name, records),
            );
            let started = Instant::now();
            let (write, attempts, acks, nacks) =
                self.process(&writer, deliveries).instrument(parse).await;
            process_seconds.record(started.elapsed());
            let commit = stage_span(&spans, || {
                tracing::info_span!(
                    "store commit",
                    parser = %self.name,
                    rows = write.records.len(),
                    dead_letters = write.dead_letters.len(),
                )
            });
            // Keeps the deliveries ours while the store recovers.
            let extend = || PullRequest {
                extend_ack_ids: acks
                    .iter()
                    .chain(nacks.iter().map(|n| &n.ack_id))
                    .cloned()
                    .collect(),
                ..Default::default()
            };
            // Parts of the batch still to write, last first: the whole
            // batch, or the halves of a part the store refused as data.
            let mut parts = vec![(write, attempts)];
            let mut retry = Backoff::client();
            while let Some((part, attempts)) = parts.pop() {
                let started = Instant::now();
                match self.store.write(&part).instrument(commit.clone()).await {
                    Ok(written) => {
                        retry.reset();
                        commit_seconds.record(started.elapsed());
                        dead_letters.increment(part.dead_letters.len() as u64);
                        tracing::debug!(parser = %self.name, stored = written.stored, duplicates = written.duplicates, "batch stored");
                    }
                    Err(StoreError::Data(reason)) => match split(part, attempts, &reason) {
                        Some(halves) => parts.extend(halves),
                        None => {
                            // Even the dead letters alone cannot be held;
                            // the store only refuses those through a bug.
                            tracing::error!(parser = %self.name, %reason, "dead letters cannot be stored; dropped");
                            metrics::counter!(metrics::PARSER_UNSTORABLE, "parser" => self.name.clone())
                                .increment(1);
                        }
                    },
                    Err(e) => {
                        static FAILED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                        if let Some(repeats) = FAILED.admit() {
                            tracing::warn!(parser = %self.name, error = %e, failures = retry.failures() + 1, repeats, "store write failed; retrying");
                        }
                        let _ = requests.send(extend()).await;
                        parts.push((part, attempts));
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(retry.next_wait()) => {}
                        }
                    }
                }
            }
            drop(commit);
            let done = PullRequest {
                ack_ids: acks,
                nacks,
                ..Default::default()
            };
            if requests.send(done).await.is_err() {
                return;
            }
            // The deliveries' spans end once their acks are on their way.
            drop(spans);
        }
    }

    /// Runs the records through the parser, all deliveries of the batch in
    /// one call so that a parser may work on them concurrently. Returns what
    /// to write, the delivery attempt of each record to write, the
    /// deliveries to ack and those to nack.
    async fn process(
        &self,
        writer: &str,
        deliveries: Vec<Delivery>,
    ) -> (WriteBatch, Vec<u32>, Vec<String>, Vec<Nack>) {
        let mut write = WriteBatch {
            parser: self.name.clone(),
            writer: writer.to_owned(),
            records: Vec::with_capacity(deliveries.iter().map(|d| d.records.len()).sum()),
            dead_letters: Vec::new(),
        };
        // Records of deliveries that may still be processed, flattened; the
        // others are past their last attempt and are dead-lettered as is.
        let mut records: Vec<Record> = deliveries
            .iter()
            .filter(|d| d.attempt <= d.max_attempts)
            .flat_map(|d| d.records.iter().cloned())
            .collect();
        let mut outcomes = self.parser.process_batch(&mut records).await.into_iter();
        let mut processed = records.into_iter();
        let mut attempts = Vec::with_capacity(write.records.capacity());
        let mut acks = Vec::with_capacity(deliveries.len());
        let mut nacks = Vec::new();
        for delivery in deliveries {
            let received_at = delivery.received_at.as_ref().map_or(0, clock::to_micros);
            let exhausted = delivery.attempt > delivery.max_attempts;
            let last_try = delivery.attempt >= delivery.max_attempts;
            let mut failure = None;
            for delivered in delivery.records {
                let (record, outcome) = if exhausted {
                    let error = format!(
                        "not acknowledged after {} deliveries (parser crashed or timed out)",
                        delivery.max_attempts
                    );
                    (delivered, Err(error))
                } else {
                    let record = processed
                        .next()
                        .expect("process_batch keeps one record per record given");
                    let outcome = outcomes.next().unwrap_or_else(|| {
                        Err("the parser returned fewer outcomes than records".into())
                    });
                    (record, outcome)
                };
                match outcome {
                    Ok(fact) => {
                        attempts.push(delivery.attempt);
                        write.records.push(NewRecord {
                            sent_at: record
                                .sent_at
                                .as_ref()
                                .map_or(received_at, clock::to_micros),
                            received_at,
                            kind: delivery.kind,
                            seq: record.seq,
                            body: record.encode_to_vec(),
                            source: record.source,
                            fact,
                        });
                    }
                    Err(error) if last_try => {
                        tracing::warn!(parser = %self.name, source = %record.source, seq = record.seq, %error, "dead-lettering record");
                        write.dead_letters.push(NewDeadLetter {
                            kind: delivery.kind,
                            seq: record.seq,
                            body: record.encode_to_vec(),
                            source: record.source,
                            error,
                            attempts: delivery.attempt,
                        });
                    }
                    Err(error) => failure = Some(error),
                }
            }
            match failure {
                // The good records of the batch are stored now; the batch
                // comes back later and only the failures are new work.
                Some(error) => nacks.push(Nack {
                    ack_id: delivery.ack_id,
                    error,
                }),
                None => acks.push(delivery.ack_id),
            }
        }
        (write, attempts, acks, nacks)
    }
}

/// A part the store refused as data, split so the refusal can be narrowed
/// down: in halves (the dead letters go with the first), or, for a lone
/// record, into a dead letter carrying the store's reason. `None` when
/// there is nothing left to narrow: only dead letters, and one of them at
/// most.
///
/// A record that fails alone is found in about 2·log2(n) writes; a batch
/// with k such records costs O(k log n) writes, and the good records are
/// stored with the halves that hold no bad one.
fn split(
    mut part: WriteBatch,
    mut attempts: Vec<u32>,
    reason: &str,
) -> Option<Vec<(WriteBatch, Vec<u32>)>> {
    let empty = || WriteBatch {
        parser: part.parser.clone(),
        writer: part.writer.clone(),
        ..Default::default()
    };
    match part.records.len() {
        0 if part.dead_letters.len() <= 1 => None,
        0 => {
            let mut second = empty();
            second.dead_letters = part.dead_letters.split_off(part.dead_letters.len() / 2);
            Some(vec![(second, vec![]), (part, vec![])])
        }
        1 if part.dead_letters.is_empty() => {
            let record = part.records.remove(0);
            static REFUSED: Throttle = Throttle::new(DEFAULT_INTERVAL);
            if let Some(repeats) = REFUSED.admit() {
                tracing::warn!(parser = %part.parser, source = ?record.source, seq = record.seq, %reason, repeats, "the store cannot hold a record; dead-lettering it");
            }
            part.dead_letters.push(NewDeadLetter {
                source: record.source,
                seq: record.seq,
                kind: record.kind,
                body: record.body,
                error: reason.to_owned(),
                attempts: attempts.first().copied().unwrap_or(1),
            });
            Some(vec![(part, vec![])])
        }
        len => {
            let mut second = empty();
            second.records = part.records.split_off(len / 2);
            let second_attempts = attempts.split_off(len / 2);
            // Popped last first: the first half is written first.
            Some(vec![(second, second_attempts), (part, attempts)])
        }
    }
}
