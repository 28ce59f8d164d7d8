//! `--publish`: streams the collected samples into the mesh over
//! `Ingest.Publish`, as RandomNumber records with a `worker_id` attribute.
//!
//! The same protocol as `tributary send`: batches go out as samples arrive,
//! everything unanswered is republished after a reconnect (same keys, so
//! nothing is stored twice), and the run waits for every acknowledgement.
//! No window is needed beyond `--samples` itself: the fleet produces a
//! bounded number of samples at a few dozen per second.
//!
//! Samples the mesh refuses as UNAVAILABLE are sent again after the shared
//! exponential, jittered back-off, never at once; after 30 s with nothing
//! accepted, publishing gives up.

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
    backoff::Backoff,
    bearer::AttachBearer,
    channel::Link,
    clock, grpc_client,
    log_throttle::{DEFAULT_INTERVAL, Throttle},
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

struct Outbox {
    unacked: BTreeMap<u64, Vec<Record>>,
    next_batch: u64,
    input_open: bool,
    /// Batches of refused samples waiting out their back-off.
    held: Vec<u64>,
    /// When the held batches go again.
    retry_at: Option<tokio::time::Instant>,
    refusals: Backoff,
    /// Since when samples have been refused with none accepted.
    refused_since: Option<Instant>,
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
        unacked: BTreeMap::new(),
        next_batch: 0,
        input_open: true,
        held: Vec::new(),
        retry_at: None,
        refusals: Backoff::client(),
        refused_since: None,
    };
    let mut failing_since: Option<Instant> = None;
    let mut reconnect = Backoff::client();
    loop {
        let answered = summary.accepted + summary.duplicates + summary.rejected;
        match session(&endpoint, &bearer, &mut rx, &mut outbox, &mut summary).await {
            Ok(()) => return Ok(summary),
            Err(e) => {
                if summary.accepted + summary.duplicates + summary.rejected > answered {
                    failing_since = None;
                    reconnect.reset();
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RETRY_FOR {
                    bail!("gave up after {} s of failures: {e:#}", RETRY_FOR.as_secs());
                }
                summary.reconnects += 1;
                static FAILED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                if let Some(repeats) = FAILED.admit() {
                    tracing::warn!(error = %format!("{e:#}"), repeats, "publish stream failed; reconnecting");
                }
                // The session sends every unanswered batch again at once.
                outbox.held.clear();
                outbox.retry_at = None;
                tokio::time::sleep(reconnect.next_wait()).await;
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
            () = async {
                match outbox.retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                outbox.retry_at = None;
                for batch_id in std::mem::take(&mut outbox.held) {
                    let Some(records) = outbox.unacked.get(&batch_id) else {
                        continue;
                    };
                    tx.send(PublishRequest {
                        batch_id,
                        records: records.clone(),
                        ..Default::default()
                    })
                    .await
                    .context("the publish stream closed")?;
                }
            }
            response = responses.message() => {
                let response = response
                    .context("publish stream failed")?
                    .ok_or_else(|| anyhow::anyhow!("the server ended the publish stream"))?;
                settle(response, outbox, summary);
                if outbox.refused_since.is_some_and(|since| since.elapsed() > RETRY_FOR) {
                    bail!(
                        "gave up after {} s of samples refused as unavailable",
                        RETRY_FOR.as_secs()
                    );
                }
            }
        }
    }
}

/// Applies one batch's answer. Records the queue could not take become a
/// new batch, held until the back-off says to send it again.
fn settle(response: PublishResponse, outbox: &mut Outbox, summary: &mut PublishSummary) {
    let Some(records) = outbox.unacked.remove(&response.batch_id) else {
        return;
    };
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
    if response.accepted + response.duplicates > 0 {
        outbox.refusals.reset();
        outbox.refused_since = None;
    }
    if retry.is_empty() {
        return;
    }
    let batch_id = outbox.next_batch;
    outbox.next_batch += 1;
    outbox.unacked.insert(batch_id, retry);
    outbox.held.push(batch_id);
    outbox.refused_since.get_or_insert_with(Instant::now);
    if outbox.retry_at.is_none() {
        let wait = outbox.refusals.next_wait();
        outbox.retry_at = Some(tokio::time::Instant::now() + wait);
        static REFUSED: Throttle = Throttle::new(DEFAULT_INTERVAL);
        if let Some(repeats) = REFUSED.admit() {
            tracing::warn!(
                retry_in_ms = wait.as_millis() as u64,
                repeats,
                "the mesh refused samples as unavailable; retrying after a back-off"
            );
        }
    }
}
