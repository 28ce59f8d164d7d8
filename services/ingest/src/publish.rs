//! Publishing: validate each record, append the good ones to the queue, and
//! answer each batch once the queue holds it durably.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Instant};

use futures::{Stream, StreamExt, stream::FuturesOrdered};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tracing::Instrument;
use tributary::{
    clock, grpc, kind, limits,
    log_throttle::{DEFAULT_INTERVAL, Throttle},
    metrics,
    proto::{PublishRequest, PublishResponse, Record, RecordKind, Rejection},
    queue::{Batch, Queue},
    trace_context,
};

use crate::{IngestService, Limits, validate};

/// Final rejections listed one by one in an answer; past these, they are
/// only counted, so that a batch of bad records cannot make an answer many
/// times its own size. Retryable ones are always listed: producers resend
/// exactly those.
pub const MAX_LISTED_REJECTIONS: usize = 1_000;

/// What became of one request's records.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejections: Vec<Rejection>,
    /// Every record not accepted, listed in `rejections` or not.
    pub rejected: u32,
    /// `rejected` by gRPC code, for the metric.
    by_code: HashMap<i32, u64>,
}

impl Outcome {
    fn reject(&mut self, rejection: Rejection) {
        self.rejected += 1;
        *self.by_code.entry(rejection.code).or_default() += 1;
        let retryable = rejection.code == Code::Unavailable as i32;
        if retryable || self.rejections.len() < MAX_LISTED_REJECTIONS {
            self.rejections.push(rejection);
        }
    }
}

/// Refuses a request that carries more records than `limits` allow.
pub fn check_count(records: usize, limits: &Limits) -> Result<(), Status> {
    if records > limits.max_batch_records {
        return Err(Status::resource_exhausted(format!(
            "{records} records in one request; the limit is {}",
            limits.max_batch_records
        )));
    }
    Ok(())
}

/// The source as echoed in a rejection: at most [`validate::MAX_SOURCE_BYTES`],
/// cut at a character boundary, so an over-long source is not sent back whole.
fn echo(mut source: String) -> String {
    let end = echo_str(&source).len();
    source.truncate(end);
    source
}

/// [`echo`] of a borrowed source.
fn echo_str(source: &str) -> &str {
    let mut end = source.len().min(validate::MAX_SOURCE_BYTES);
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    &source[..end]
}

/// Validates `records`, appends the valid ones (one queue message per kind)
/// and waits until the queue holds them durably. A record without `sent_at`
/// gets the receive time.
///
/// The work runs in an `ingest receive` span whose parent is `traceparent`
/// (the producer's span for this batch) when given, else the current span.
pub async fn accept(
    queue: &Arc<dyn Queue>,
    limits: &Limits,
    records: Vec<Record>,
    traceparent: Option<&str>,
) -> Outcome {
    let span = tracing::info_span!(
        "ingest receive",
        otel.kind = "server",
        records = records.len(),
        kind = tracing::field::Empty,
        accepted = tracing::field::Empty,
        rejected = tracing::field::Empty,
    );
    trace_context::set_parent(&span, traceparent);
    let outcome = append(queue, limits, records)
        .instrument(span.clone())
        .await;
    span.record("accepted", outcome.accepted + outcome.duplicates);
    span.record("rejected", outcome.rejected);
    for (&code, &count) in &outcome.by_code {
        metrics::counter!(metrics::INGEST_REJECTED, "code" => code_label(code)).increment(count);
    }
    outcome
}

async fn append(queue: &Arc<dyn Queue>, limits: &Limits, records: Vec<Record>) -> Outcome {
    let received_at = clock::now_micros();
    let mut outcome = Outcome::default();
    // One batch per kind; a request holds few kinds, so they are found by
    // a scan (as the counts below), not a hash per record.
    let mut batches: Vec<Batch> = Vec::new();
    let mut keys = Keys::with_capacity(records.len());
    // Counted per kind per request, not per record: a metric lookup per
    // record would cost more than the rest of the bookkeeping.
    let mut received: Vec<(&'static str, u64)> = Vec::new();
    for (index, mut record) in records.into_iter().enumerate() {
        let index = index as u32;
        let name = kind::of(&record).map_or("unknown", kind::name);
        match received.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => received.push((name, 1)),
        }
        match validate::check(&record, limits.max_record_bytes, received_at) {
            Err(refusal) => outcome.reject(Rejection {
                index,
                source: echo(record.source),
                seq: record.seq,
                code: refusal.code as i32,
                reason: refusal.reason,
            }),
            Ok(kind) => {
                if record.sent_at.is_none() {
                    record.sent_at = Some(clock::from_micros(received_at));
                }
                keys.push(index, &record.source, record.seq);
                let at = match batches.iter().position(|b| b.kind == kind) {
                    Some(at) => at,
                    None => {
                        batches.push(Batch {
                            kind,
                            records: Vec::new(),
                            received_at,
                            traceparent: None,
                        });
                        batches.len() - 1
                    }
                };
                batches[at].records.push(record);
            }
        }
    }
    for (kind, count) in received {
        metrics::counter!(metrics::INGEST_RECEIVED, "kind" => kind).increment(count);
    }
    if batches.is_empty() {
        return outcome;
    }
    let kinds: Vec<RecordKind> = batches.iter().map(|b| b.kind).collect();
    if let [kind] = kinds.as_slice() {
        tracing::Span::current().record("kind", kind::name(*kind));
    }
    let backend = queue.backend();
    let span = tracing::info_span!(
        "queue publish",
        otel.kind = "producer",
        backend,
        records = keys.len(),
        messages = batches.len(),
    );
    // Each queue message carries this span's context: its deliveries
    // continue the batch's trace in whichever process pulls them.
    let traceparent = trace_context::traceparent(&span);
    for batch in &mut batches {
        batch.traceparent.clone_from(&traceparent);
    }
    let started = Instant::now();
    let published = queue.publish(batches).instrument(span).await;
    metrics::histogram!(metrics::QUEUE_PUBLISH_SECONDS, "backend" => backend)
        .record(started.elapsed());
    match published {
        Ok(published) => {
            for (p, kind) in published.into_iter().zip(kinds) {
                outcome.accepted += p.accepted;
                outcome.duplicates += p.duplicates;
                metrics::counter!(metrics::INGEST_ACKED, "kind" => kind::name(kind))
                    .increment(u64::from(p.accepted + p.duplicates));
            }
        }
        Err(e) => {
            // One line per interval with the count held back: during an
            // outage every producer's every batch is refused.
            static REFUSED: Throttle = Throttle::new(DEFAULT_INTERVAL);
            if let Some(repeats) = REFUSED.admit() {
                tracing::warn!(error = %e, records = keys.len(), repeats, "queue refused a batch");
            }
            for (index, source, seq) in keys.into_iter() {
                outcome.reject(Rejection {
                    index,
                    source,
                    seq,
                    code: Code::Unavailable as i32,
                    reason: format!("not stored, retry: {e}"),
                });
            }
            outcome.rejections.sort_by_key(|r| r.index);
        }
    }
    outcome
}

/// The keys of a request's valid records, to answer for them if the queue
/// refuses the whole append. A request's records mostly share a source, so
/// each run of one source is kept once, not copied per record.
struct Keys {
    /// Each run's source, as echoed in a rejection.
    sources: Vec<String>,
    /// (index in the request, run, seq) per record.
    keys: Vec<(u32, usize, u64)>,
}

impl Keys {
    fn with_capacity(records: usize) -> Self {
        Self {
            sources: Vec::new(),
            keys: Vec::with_capacity(records),
        }
    }

    fn push(&mut self, index: u32, source: &str, seq: u64) {
        let echoed = echo_str(source);
        if self.sources.last().is_none_or(|last| last != echoed) {
            self.sources.push(echoed.to_owned());
        }
        self.keys.push((index, self.sources.len() - 1, seq));
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn into_iter(self) -> impl Iterator<Item = (u32, String, u64)> {
        let Keys { sources, keys } = self;
        keys.into_iter().map(move |(index, run, seq)| {
            (index, sources.get(run).cloned().unwrap_or_default(), seq)
        })
    }
}

/// Reserves `bytes` of the in-flight budget for one request; `None` when
/// they do not fit now. The reservation ends when the permit is dropped,
/// after the queue has answered for the request.
pub fn reserve(budget: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    budget.clone().try_acquire_many_owned(bytes).ok()
}

/// The answer to a request shed at the memory budget: every record
/// UNAVAILABLE with a retry hint, nothing kept.
pub fn shed(records: Vec<Record>) -> Outcome {
    metrics::counter!(limits::SHED, "limit" => "inflight_bytes").increment(1);
    metrics::counter!(metrics::INGEST_REJECTED, "code" => "unavailable")
        .increment(records.len() as u64);
    let reason = format!(
        "the server is at its memory budget for in-flight publish data; retry in {} s",
        limits::RETRY_AFTER.as_secs()
    );
    let mut outcome = Outcome::default();
    for (index, record) in records.into_iter().enumerate() {
        outcome.reject(Rejection {
            index: index as u32,
            source: echo(record.source),
            seq: record.seq,
            code: Code::Unavailable as i32,
            reason: reason.clone(),
        });
    }
    outcome
}

/// A gRPC code number as the label Prometheus users expect:
/// `invalid_argument`, `resource_exhausted`, `unavailable`.
pub(crate) fn code_label(code: i32) -> String {
    let name = format!("{:?}", Code::from(code));
    let mut label = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            label.push('_');
        }
        label.push(c.to_ascii_lowercase());
    }
    label
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

/// A batch awaiting the queue: its answer, and the records and bytes it
/// held of the stream's window.
type InFlight = Pin<Box<dyn Future<Output = (PublishResponse, usize, usize)> + Send>>;

fn outcome_response(outcome: Outcome) -> PublishResponse {
    PublishResponse {
        batch_id: 0,
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        rejections: outcome.rejections,
        rejected: outcome.rejected,
    }
}

/// Serves one Publish stream. Batches are appended concurrently and answered
/// in order. Reading pauses while the stream has `publish_window` records or
/// `publish_window_bytes` bytes or more awaiting the queue, which pushes
/// back on the producer through HTTP/2 flow control. A batch that does not
/// fit the server's memory budget is answered UNAVAILABLE at once.
pub fn stream(service: IngestService, mut inbound: Streaming<PublishRequest>) -> ResponseStream {
    // A few answers may wait for a slow reader; beyond that the stream
    // stops, and with it reading.
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let window = service.limits.publish_window;
        let window_bytes = service.limits.publish_window_bytes;
        let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let mut waiting = 0usize;
        let mut waiting_bytes = 0usize;
        let mut reading = true;
        let mut failure = None;
        loop {
            tokio::select! {
                biased;
                Some((response, records, bytes)) = in_flight.next(), if !in_flight.is_empty() => {
                    waiting -= records;
                    waiting_bytes -= bytes;
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                () = service.shutdown.cancelled(), if reading => reading = false,
                message = inbound.message(),
                    if reading && waiting < window && waiting_bytes < window_bytes => match message {
                    Ok(Some(request)) => {
                        let records = request.records.len();
                        if let Err(status) = check_count(records, &service.limits) {
                            // Answer what is already durable, then refuse.
                            failure = Some(status);
                            reading = false;
                            continue;
                        }
                        let bytes = request.encoded_len();
                        let Some(permit) = reserve(&service.budget, bytes) else {
                            let response = PublishResponse {
                                batch_id: request.batch_id,
                                ..outcome_response(shed(request.records))
                            };
                            in_flight.push_back(Box::pin(async move { (response, 0usize, 0usize) }) as InFlight);
                            continue;
                        };
                        waiting += records;
                        waiting_bytes += bytes;
                        let queue = service.queue.clone();
                        let limits = service.limits.clone();
                        in_flight.push_back(Box::pin(async move {
                            let _permit = permit;
                            // Each batch is its own trace, rooted at the
                            // producer's span when it sent one: a stream
                            // lives for many batches.
                            let traceparent = Some(request.traceparent.as_str())
                                .filter(|tp| !tp.is_empty());
                            let outcome = accept(&queue, &limits, request.records, traceparent)
                                .instrument(tracing::Span::none())
                                .await;
                            let response = PublishResponse {
                                batch_id: request.batch_id,
                                ..outcome_response(outcome)
                            };
                            (response, records, bytes)
                        }));
                    }
                    Ok(None) => reading = false,
                    Err(status) => {
                        // Answer what is already durable, then the error.
                        failure = Some(grpc::inbound_status(status));
                        reading = false;
                    }
                },
                else => break,
            }
        }
        if let Some(status) = failure {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_snake_case() {
        assert_eq!(code_label(Code::InvalidArgument as i32), "invalid_argument");
        assert_eq!(
            code_label(Code::ResourceExhausted as i32),
            "resource_exhausted"
        );
        assert_eq!(code_label(Code::Unavailable as i32), "unavailable");
    }

    #[test]
    fn keys_answer_for_every_record_with_its_own_source() {
        // Multi-byte characters put the cut inside one: it moves back to a
        // boundary, as `echo` cuts an owned source.
        let long = "é".repeat(validate::MAX_SOURCE_BYTES);
        let mut keys = Keys::with_capacity(5);
        keys.push(0, "a", 1);
        keys.push(2, "a", 2);
        keys.push(3, "b", 7);
        keys.push(5, "a", 3);
        keys.push(6, &long, 9);
        assert_eq!(keys.len(), 5);
        let answered: Vec<(u32, String, u64)> = keys.into_iter().collect();
        assert_eq!(
            answered,
            vec![
                (0, "a".to_owned(), 1),
                (2, "a".to_owned(), 2),
                (3, "b".to_owned(), 7),
                (5, "a".to_owned(), 3),
                (6, echo(long.clone()), 9),
            ]
        );
        assert!(echo(long).len() <= validate::MAX_SOURCE_BYTES);
    }
}
