//! Benchmark of the distributed mesh as local processes (the compose
//! topology without Docker): producers → Envoy → 3 ingest servers → NATS
//! JetStream → 2 parser replicas → PostgreSQL, with the two ceilings it is
//! held against measured in the same run. Prints a Markdown table.
//!
//! Needs what `scripts/test.sh` sets up (NATS, PostgreSQL, Envoy):
//! `source scripts/tools.sh && cargo bench -p tributary-cli --bench mesh`
//! (add `-- --records N` for the bulk run's size; default 1,000,000, and
//! `--ceilings-only` to measure only the ceilings). The store ceiling is
//! measured over TCP and over PostgreSQL's Unix socket; the mesh reaches
//! PostgreSQL over the socket, as compose does.

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream::Config as StreamConfig};
use prost::Message as _;
use sqlx::Row;
use tributary::{
    clock,
    proto::{Record, RecordBatch, RecordKind, Text, record::Payload},
    store::{NewRecord, Store, WriteBatch, postgres::PostgresStore},
    testkit,
};

use cluster::{Backends, Cluster, finish, stored, wait_stored};

const BATCH: usize = 500;

/// A text record like the ones `tributary send --kind text` makes, so that
/// the ceilings move the same bytes as the mesh.
fn reading(seq: u64) -> Record {
    Record {
        source: "bulk-a".into(),
        seq,
        sent_at: Some(clock::now_timestamp()),
        attributes: Default::default(),
        payload: Some(Payload::Text(Text {
            body: format!("line {seq} from bulk-a"),
        })),
    }
}

#[tokio::main]
async fn main() {
    let records: u64 = std::env::args()
        .skip_while(|a| a != "--records")
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("--records takes a number"));
    println!(
        "record size: {} bytes encoded; {BATCH} records per message\n",
        reading(0).encoded_len()
    );

    let ceilings_only = std::env::args().any(|a| a == "--ceilings-only");
    let nats_ceiling = jetstream_ceiling(records).await;
    let tcp_ceiling = postgres_ceiling(&testkit::postgres_database().await, records).await;
    let socket = testkit::postgres_socket_dir();
    let socket_url = testkit::over_socket(&testkit::postgres_database().await, &socket);
    let postgres_ceiling = postgres_ceiling(&socket_url, records).await;
    let ceilings = [
        format!(
            "| ceiling: async-nats JetStream publish, same bytes, Nats-Msg-Id, pipelined acks | {nats_ceiling:.0} records/s |"
        ),
        format!(
            "| ceiling: PostgreSQL store writes alone over TCP (5,000-row UNNEST transactions) | {tcp_ceiling:.0} rows/s |"
        ),
        format!(
            "| ceiling: PostgreSQL store writes alone over the Unix socket (the same) | {postgres_ceiling:.0} rows/s |"
        ),
    ];
    if ceilings_only {
        println!("| figure | value |");
        println!("|---|---|");
        for row in &ceilings {
            println!("{row}");
        }
        return;
    }

    let backends = Backends::fresh_over_socket(&testkit::postgres_admin_url(), &socket).await;
    let cluster = Cluster::start(backends, 3, 2).await;
    let e2e = bulk(&cluster, records).await;
    let (p50, p99, n) = latency(&cluster, 5_000, 10).await;

    let lower = nats_ceiling.min(postgres_ceiling);
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| end to end through Envoy into PostgreSQL (2 producers, 3 servers, 2 parsers) | {e2e:.0} records/s |"
    );
    println!(
        "| send→stored latency at 5,000 records/s ({n} records) | p50 {p50:.1} ms, p99 {p99:.1} ms |"
    );
    for row in &ceilings {
        println!("{row}");
    }
    println!(
        "| end to end / lower ceiling | {:.0}% |",
        100.0 * e2e / lower
    );
}

/// Publishes `count` records as 500-record messages straight to JetStream,
/// the way the ingest servers do, with up to 64 acks outstanding.
async fn jetstream_ceiling(count: u64) -> f64 {
    let client = async_nats::connect(testkit::nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let name = testkit::unique_name("CEILING");
    js.create_stream(StreamConfig {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let messages: Vec<_> = (0..count)
        .step_by(BATCH)
        .map(|start| {
            let records = (start..(start + BATCH as u64).min(count))
                .map(reading)
                .collect();
            RecordBatch { records }.encode_to_vec()
        })
        .collect();
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (i, payload) in messages.into_iter().enumerate() {
        if pending.len() >= 64 {
            let ack: jetstream::context::PublishAckFuture = pending.pop_front().unwrap();
            ack.await.unwrap();
        }
        let publish = PublishMessage::build()
            .message_id(format!("m-{i}"))
            .payload(payload.into());
        pending.push_back(js.send_publish(format!("{name}.x"), publish).await.unwrap());
    }
    for ack in pending {
        ack.await.unwrap();
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name).await.unwrap();
    rate
}

/// Writes `count` rows through the PostgreSQL store at `url` in 5,000-row
/// batches.
async fn postgres_ceiling(url: &str, count: u64) -> f64 {
    let store = PostgresStore::open(url).await.unwrap();
    let body = prost::bytes::Bytes::from(reading(0).encode_to_vec());
    let started = Instant::now();
    for start in (0..count).step_by(5_000) {
        let records = (start..(start + 5_000).min(count))
            .map(|seq| NewRecord {
                source: "ceiling".into(),
                seq,
                kind: RecordKind::Text as i32,
                sent_at: 0,
                received_at: 0,
                body: body.clone(),
                fact: None,
            })
            .collect();
        store
            .write(&WriteBatch {
                parser: "raw".into(),
                writer: "ceiling".into(),
                records,
                dead_letters: vec![],
            })
            .await
            .unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Two `tributary send` processes through Envoy; records/s until stored.
async fn bulk(cluster: &Cluster, count: u64) -> f64 {
    let half = count / 2;
    let started = Instant::now();
    let a = cluster::producer(cluster, "bulk-a", half, 0);
    let b = cluster::producer(cluster, "bulk-b", count - half, 0);
    finish(a).await;
    finish(b).await;
    wait_stored(cluster, count as i64, Duration::from_secs(600)).await;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let mut db = cluster.db().await;
    assert_eq!(stored(&mut db).await, count as i64);
    rate
}

/// One producer at `rate`/s for `seconds`; send→stored percentiles.
async fn latency(cluster: &Cluster, rate: u64, seconds: u64) -> (f64, f64, usize) {
    let count = rate * seconds;
    let before = stored(&mut cluster.db().await).await;
    finish(cluster::producer(cluster, "paced", count, rate)).await;
    wait_stored(cluster, before + count as i64, Duration::from_secs(120)).await;
    let mut db = cluster.db().await;
    let mut latencies: Vec<f64> = sqlx::query(
        "SELECT stored_at - sent_at FROM records WHERE parser = 'raw' AND source = 'paced'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.get::<i64, _>(0) as f64 / 1000.0)
    .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), latencies.len())
}
