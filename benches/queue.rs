//! Publish latency of the embedded queue against a source with many gaps in
//! its sequence numbers, beside a gap-free one.
//!
//! Set-up: one embedded queue file in a temporary directory (WAL,
//! `synchronous=FULL`, on this machine's disk). Source `dense` publishes
//! sequence numbers 0..N and source `gapped` the even numbers 0..2N (N =
//! 1,000,000 by default, `QUEUE_BENCH_KEYS` to change), in publishes of
//! 5,000 records of one short text each. Then each source publishes 20 more
//! batches of 5,000 new consecutive keys, and the latency of each of those
//! publishes is measured, from the call to its durable acknowledgement: the
//! gaps behind a source should not slow its new publishes. Last, `gapped`
//! publishes 20 batches of 5,000 new keys that are all gaps (every key a new
//! range: the index's worst case, O(new keys) by design). No subscriber
//! exists: only the publish path runs.
//!
//! Run: `cargo bench --bench queue`.

use std::time::{Duration, Instant};

use tributary::{
    clock,
    proto::{Record, RecordKind, Text, record::Payload},
    queue::{Batch, Queue, embedded::EmbeddedQueue},
};

const BATCH: u64 = 5_000;
const MEASURED: usize = 20;

fn batch(source: &str, seqs: impl Iterator<Item = u64>) -> Batch {
    Batch {
        kind: RecordKind::Text,
        records: seqs
            .map(|seq| Record {
                source: source.into(),
                seq,
                payload: Some(Payload::Text(Text { body: "x".into() })),
                ..Default::default()
            })
            .collect(),
        received_at: clock::now_micros(),
        traceparent: None,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let keys: u64 = std::env::var("QUEUE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let queue = EmbeddedQueue::open(&dir.path().join("queue.db"))
        .await
        .unwrap();
    let started = Instant::now();
    for start in (0..keys).step_by(BATCH as usize) {
        let end = (start + BATCH).min(keys);
        queue
            .publish(vec![
                batch("dense", start..end),
                batch("gapped", (start..end).map(|s| s * 2)),
            ])
            .await
            .unwrap();
    }
    println!(
        "loaded {keys} keys per source in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut dense = Vec::new();
    let mut gapped = Vec::new();
    let mut new_gaps = Vec::new();
    for i in 0..MEASURED as u64 {
        let from = keys + i * BATCH;
        let t = Instant::now();
        queue
            .publish(vec![batch("dense", from..from + BATCH)])
            .await
            .unwrap();
        dense.push(t.elapsed());
        let from = 2 * keys + i * BATCH;
        let t = Instant::now();
        queue
            .publish(vec![batch("gapped", from..from + BATCH)])
            .await
            .unwrap();
        gapped.push(t.elapsed());
    }
    for i in 0..MEASURED as u64 {
        let from = 4 * keys + i * 2 * BATCH;
        let t = Instant::now();
        queue
            .publish(vec![batch("gapped", (0..BATCH).map(|s| from + 2 * s))])
            .await
            .unwrap();
        new_gaps.push(t.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (d, g, n) = (median(dense), median(gapped), median(new_gaps));
    println!(
        "publish of {BATCH} new consecutive keys, median of {MEASURED}: gap-free source {:.1} ms, source with {keys} gaps behind it {:.1} ms ({:.2}x)",
        ms(d),
        ms(g),
        g.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "publish of {BATCH} new keys that are all gaps (worst case), median of {MEASURED}: {:.1} ms ({:.2}x the gap-free source)",
        ms(n),
        n.as_secs_f64() / d.as_secs_f64()
    );
    queue.close().await;
}
