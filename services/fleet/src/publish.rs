//! `--publish`: streams the collected samples into the mesh through the
//! library's publisher ([`tributary::publisher`]), as RandomNumber records
//! with a `worker_id` attribute, and waits for every acknowledgement.
//!
//! Collection never waits for the mesh: samples queue here, unbounded (the
//! run is bounded by `--samples`), and are handed on to the publisher as
//! its window allows.

use std::sync::atomic::Ordering;

use anyhow::Context;
use rand::RngExt;
use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tributary::{
    channel::Link,
    clock,
    proto::{RandomNumber, Record, record::Payload},
    publisher::{self, Settings},
};

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

/// A running publisher of samples.
pub struct Publisher {
    tx: Option<mpsc::UnboundedSender<Record>>,
    task: JoinHandle<anyhow::Result<PublishSummary>>,
    source: String,
    next_seq: u64,
}

impl Publisher {
    /// Starts publishing to the ingest endpoint `link` with the publisher's
    /// default settings.
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

/// Hands the queued samples to the library's publisher as its window
/// allows, then waits for their answers.
async fn run(
    link: Link,
    source: String,
    mut samples: mpsc::UnboundedReceiver<Record>,
) -> anyhow::Result<PublishSummary> {
    // Nothing cuts the publisher's retries short: the run waits for every
    // sample's answer or for the publisher to give up.
    let publisher =
        publisher::Publisher::start_on(&Settings::default(), &link, CancellationToken::new())
            .with_context(|| format!("bad --publish address {:?}", link.url()))?;
    let records = publisher.sender();
    while let Some(record) = samples.recv().await {
        if records.send(record).await.is_err() {
            // The publisher has stopped; `finish` says why.
            break;
        }
    }
    drop(records);
    let totals = publisher.finish().await?;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    Ok(PublishSummary {
        source,
        accepted: load(&totals.accepted),
        duplicates: load(&totals.duplicates),
        rejected: load(&totals.rejected),
        reconnects: load(&totals.reconnects),
    })
}
