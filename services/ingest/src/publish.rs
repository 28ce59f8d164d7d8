//! Publishing: validate each record, append the good ones to the queue, and
//! answer each batch once the queue holds it durably.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt, stream::FuturesOrdered};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tributary::{
    clock, grpc,
    proto::{PublishRequest, PublishResponse, Record, RecordKind, Rejection},
    queue::{Batch, Queue},
};

use crate::{IngestService, Limits, validate};

/// What became of one request's records.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejections: Vec<Rejection>,
}

/// Validates `records`, appends the valid ones (one queue message per kind)
/// and waits until the queue holds them durably. A record without `sent_at`
/// gets the receive time.
pub async fn accept(
    queue: &Arc<dyn Queue>,
    limits: &Limits,
    records: Vec<Record>,
    traceparent: Option<String>,
) -> Outcome {
    let received_at = clock::now_micros();
    let mut outcome = Outcome::default();
    let mut batches: Vec<Batch> = Vec::new();
    let mut slot: HashMap<RecordKind, usize> = HashMap::new();
    // (index, source, seq) of every valid record, to answer for them if the
    // queue refuses the whole append.
    let mut keys = Vec::with_capacity(records.len());
    for (index, mut record) in records.into_iter().enumerate() {
        let index = index as u32;
        match validate::check(&record, limits.max_record_bytes) {
            Err(refusal) => outcome.rejections.push(Rejection {
                index,
                source: record.source,
                seq: record.seq,
                code: refusal.code as i32,
                reason: refusal.reason,
            }),
            Ok(kind) => {
                if record.sent_at.is_none() {
                    record.sent_at = Some(clock::from_micros(received_at));
                }
                keys.push((index, record.source.clone(), record.seq));
                let at = *slot.entry(kind).or_insert_with(|| {
                    batches.push(Batch {
                        kind,
                        records: Vec::new(),
                        received_at,
                        traceparent: traceparent.clone(),
                    });
                    batches.len() - 1
                });
                batches[at].records.push(record);
            }
        }
    }
    if batches.is_empty() {
        return outcome;
    }
    match queue.publish(batches).await {
        Ok(published) => {
            for p in published {
                outcome.accepted += p.accepted;
                outcome.duplicates += p.duplicates;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, records = keys.len(), "queue refused a batch");
            outcome
                .rejections
                .extend(keys.into_iter().map(|(index, source, seq)| Rejection {
                    index,
                    source,
                    seq,
                    code: Code::Unavailable as i32,
                    reason: format!("not stored, retry: {e}"),
                }));
            outcome.rejections.sort_by_key(|r| r.index);
        }
    }
    outcome
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

/// Serves one Publish stream. Batches are appended concurrently and answered
/// in order. Reading pauses while the stream has `publish_window` records or
/// more awaiting the queue, which pushes back on the producer through HTTP/2
/// flow control.
pub fn stream(
    service: IngestService,
    mut inbound: Streaming<PublishRequest>,
    traceparent: Option<String>,
) -> ResponseStream {
    // A few answers may wait for a slow reader; beyond that the stream
    // stops, and with it reading.
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let window = service.limits.publish_window;
        let mut in_flight = FuturesOrdered::new();
        let mut waiting = 0usize;
        let mut reading = true;
        let mut failure = None;
        loop {
            tokio::select! {
                biased;
                Some((response, records)) = in_flight.next(), if !in_flight.is_empty() => {
                    waiting -= records;
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                () = service.shutdown.cancelled(), if reading => reading = false,
                message = inbound.message(), if reading && waiting < window => match message {
                    Ok(Some(request)) => {
                        let records = request.records.len();
                        waiting += records;
                        let queue = service.queue.clone();
                        let limits = service.limits.clone();
                        let traceparent = traceparent.clone();
                        in_flight.push_back(async move {
                            let outcome = accept(&queue, &limits, request.records, traceparent).await;
                            let response = PublishResponse {
                                batch_id: request.batch_id,
                                accepted: outcome.accepted,
                                duplicates: outcome.duplicates,
                                rejections: outcome.rejections,
                            };
                            (response, records)
                        });
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
