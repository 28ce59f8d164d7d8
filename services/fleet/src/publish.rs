//! `--publish`: streams the collected samples into the mesh over
//! `Ingest.Publish`, as RandomNumber records with a `worker_id` attribute.
//!
//! The same protocol as `tributary send`: batches go out as samples arrive,
//! everything unanswered is republished after a reconnect (same keys, so
//! nothing is stored twice), and the run waits for every acknowledgement.
//! No window is needed beyond `--samples` itself: the fleet produces a
//! bounded number of samples at a few dozen per second.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::RngExt;
use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, transport::Endpoint};
use tributary::{
    bearer::AttachBearer,
    channel::Link,
    clock, grpc_client,
    proto::{
        PublishRequest, PublishResponse, RandomNumber, Record, ingest_client::IngestClient,
        record::Payload,
    },
};

/// How long publishing keeps retrying a mesh that does not answer.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Most records per request.
const BATCH: usize = 500;

/// What reached the mesh.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PublishSummary {
    /// The records' source; their seqs count from 0 in collection order.
    pub source: String,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub reconnects: u64,
}

/// A running publisher.
pub struct Publisher {
    tx: Option<mpsc::UnboundedSender<Record>>,
    task: JoinHandle<anyhow::Result<PublishSummary>>,
    source: String,
    next_seq: u64,
}

impl Publisher {
    /// Starts publishing to the ingest endpoint `link`.
    pub fn start(link: Link) -> Self {
        let source = format!("fleet-{:016x}", rand::rng().random::<u64>());
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(link, source.clone(), rx));
        Self {
            tx: Some(tx),
            task,
            source,
            next_seq: 0,
        }
    }

    /// Queues one sample.
    pub fn publish(&mut self, worker_id: u32, value: i64) {
        let record = Record {
            source: self.source.clone(),
            seq: self.next_seq,
            sent_at: Some(clock::now_timestamp()),
            attributes: [("worker_id".to_owned(), worker_id.to_string())].into(),
            payload: Some(Payload::RandomNumber(RandomNumber { value, tick: 0 })),
        };
        self.next_seq += 1;
        if let Some(tx) = &self.tx {
            // A send fails only once the task has ended with an error, which
            // `finish` reports.
            let _ = tx.send(record);
        }
    }

    /// Waits until every queued sample is acknowledged.
    pub async fn finish(mut self) -> anyhow::Result<PublishSummary> {
        self.tx.take();
        self.task.await.context("the publish task panicked")?
    }
}

#[derive(Default)]
struct Outbox {
    unacked: BTreeMap<u64, Vec<Record>>,
    next_batch: u64,
    input_open: bool,
}

async fn run(
    link: Link,
    source: String,
    mut rx: mpsc::UnboundedReceiver<Record>,
) -> anyhow::Result<PublishSummary> {
    let endpoint = link
        .endpoint()
        .with_context(|| format!("bad --publish address {:?}", link.url()))?;
    let bearer = link.bearer();
    let mut summary = PublishSummary {
        source,
        ..Default::default()
    };
    let mut outbox = Outbox {
        input_open: true,
        ..Default::default()
    };
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let answered = summary.accepted + summary.duplicates + summary.rejected;
        match session(&endpoint, &bearer, &mut rx, &mut outbox, &mut summary).await {
            Ok(()) => return Ok(summary),
            Err(e) => {
                if summary.accepted + summary.duplicates + summary.rejected > answered {
                    failing_since = None;
                    failures = 0;
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RETRY_FOR {
                    bail!("gave up after {} s of failures: {e:#}", RETRY_FOR.as_secs());
                }
                failures += 1;
                summary.reconnects += 1;
                tracing::warn!(error = %format!("{e:#}"), "publish stream failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(100u64 << failures.min(4))).await;
            }
        }
    }
}

async fn session(
    endpoint: &Endpoint,
    bearer: &AttachBearer,
    rx: &mut mpsc::UnboundedReceiver<Record>,
    outbox: &mut Outbox,
    summary: &mut PublishSummary,
) -> anyhow::Result<()> {
    let channel = grpc_client::connect_with_bearer(endpoint, bearer.clone())
        .await
        .context("connecting")?;
    let (tx, requests) = mpsc::channel::<PublishRequest>(16);
    let mut responses = IngestClient::new(channel)
        .publish(ReceiverStream::new(requests))
        .await
        .context("opening the publish stream")?
        .into_inner();
    for (&batch_id, records) in &outbox.unacked {
        tx.send(PublishRequest {
            batch_id,
            records: records.clone(),
            ..Default::default()
        })
        .await
        .context("the publish stream closed")?;
    }
    loop {
        if !outbox.input_open && outbox.unacked.is_empty() {
            return Ok(());
        }
        tokio::select! {
            record = rx.recv(), if outbox.input_open => {
                let Some(record) = record else {
                    outbox.input_open = false;
                    continue;
                };
                let mut records = vec![record];
                while records.len() < BATCH {
                    match rx.try_recv() {
                        Ok(record) => records.push(record),
                        Err(_) => break,
                    }
                }
                let batch_id = outbox.next_batch;
                outbox.next_batch += 1;
                outbox.unacked.insert(batch_id, records.clone());
                tx.send(PublishRequest {
                    batch_id,
                    records,
                    ..Default::default()
                })
                    .await
                    .context("the publish stream closed")?;
            }
            response = responses.message() => {
                let response = response
                    .context("publish stream failed")?
                    .ok_or_else(|| anyhow::anyhow!("the server ended the publish stream"))?;
                if let Some((batch_id, records)) = settle(response, outbox, summary) {
                    tx.send(PublishRequest {
                    batch_id,
                    records,
                    ..Default::default()
                })
                        .await
                        .context("the publish stream closed")?;
                }
            }
        }
    }
}

/// Applies one batch's answer. Records the queue could not take are
/// returned as a new batch to send again.
fn settle(
    response: PublishResponse,
    outbox: &mut Outbox,
    summary: &mut PublishSummary,
) -> Option<(u64, Vec<Record>)> {
    let records = outbox.unacked.remove(&response.batch_id)?;
    summary.accepted += u64::from(response.accepted);
    summary.duplicates += u64::from(response.duplicates);
    let mut retry = Vec::new();
    for rejection in &response.rejections {
        match (
            Code::from(rejection.code),
            records.get(rejection.index as usize),
        ) {
            (Code::Unavailable, Some(record)) => retry.push(record.clone()),
            (code, _) => {
                summary.rejected += 1;
                tracing::warn!(seq = rejection.seq, ?code, reason = %rejection.reason, "sample rejected by the mesh");
            }
        }
    }
    if retry.is_empty() {
        return None;
    }
    let batch_id = outbox.next_batch;
    outbox.next_batch += 1;
    outbox.unacked.insert(batch_id, retry.clone());
    Some((batch_id, retry))
}
