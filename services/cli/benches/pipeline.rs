//! End-to-end benchmark of the embedded mesh, with the ceilings it is held
//! against measured in the same run. Prints a Markdown table.
//!
//! Set-up: `tributary up --no-workloads --parser raw` (the demo workloads
//! off, so only the benchmark's records are stored, by one group), then a
//! second `up --no-workloads --parser raw --parser sensor`: two groups on
//! the one kind, each storing every record.
//!
//! Run: `cargo bench -p tributary-cli --bench pipeline` (add `-- --records N`
//! to change the bulk run's size; default 1,000,000). To compare builds in
//! one sitting, `TRIBUTARY_BENCH_BIN=PATH` runs the meshes from another
//! `tributary` binary (an older commit's release build); the ceilings and
//! the producer stay this build's.

mod support;

use std::{
    path::Path,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::Stream;
use prost::Message;
use tokio::{process::Command, sync::mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming, transport::Server};
use tributary::{
    clock,
    proto::{
        GetStatsRequest, PublishBatchRequest, PublishBatchResponse, PublishRequest,
        PublishResponse, PullRequest, PullResponse, Record, SensorReading,
        ingest_client::IngestClient,
        ingest_server::{Ingest, IngestServer},
        query_client::QueryClient,
        record::Payload,
    },
    store::{self, NewRecord, WriteBatch},
};

const BIN: &str = env!("CARGO_BIN_EXE_tributary");
const BATCH: usize = 500;
const WINDOW: usize = 20_000;

fn reading(seq: u64) -> Record {
    Record {
        source: "bench".into(),
        seq,
        sent_at: Some(clock::now_timestamp()),
        attributes: Default::default(),
        payload: Some(Payload::SensorReading(SensorReading {
            sensor_id: format!("sensor-{}", seq % 16),
            metric: "temperature".into(),
            value: 20.0 + (seq % 100) as f64 / 10.0,
            unit: "celsius".into(),
            measured_at: Some(clock::now_timestamp()),
        })),
    }
}

#[tokio::main]
async fn main() {
    let records: u64 = std::env::args()
        .skip_while(|a| a != "--records")
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("--records takes a number"));
    let size = reading(0).encoded_len();
    println!("record size: {size} bytes encoded; batches of {BATCH}; window {WINDOW}\n");

    let tonic_ceiling = tonic_bidi_ceiling(records).await;
    let sqlite_ceiling = sqlite_ceiling(records).await;

    let dir = tempfile::tempdir().unwrap();
    let (mut mesh, addr) = start_mesh(dir.path(), &["raw"]).await;
    let url = format!("http://{addr}");
    let (ingest_rate, e2e_rate) = bulk(&url, records, &["raw"]).await;
    let (p50, p99, n) = latency(&url, dir.path(), records, 10_000, 10).await;
    let rss = peak_rss_kib(mesh.id().unwrap());
    mesh.kill().await.unwrap();

    let two = tempfile::tempdir().unwrap();
    let (mut mesh, addr) = start_mesh(two.path(), &["raw", "sensor"]).await;
    let (_, two_group_rate) = bulk(&format!("http://{addr}"), records, &["raw", "sensor"]).await;
    let two_group_rss = peak_rss_kib(mesh.id().unwrap());
    mesh.kill().await.unwrap();

    println!("| figure | value |");
    println!("|---|---|");
    println!("| ingest, acked to the producer | {ingest_rate:.0} records/s |");
    println!("| end to end, stored (raw parser, SQLite) | {e2e_rate:.0} records/s |");
    println!(
        "| end to end, two groups on one kind (raw + sensor), each storing every record | {two_group_rate:.0} records/s ({:.0} rows/s) |",
        2.0 * two_group_rate
    );
    println!(
        "| send→stored latency at 10,000 records/s ({n} records) | p50 {p50:.1} ms, p99 {p99:.1} ms |"
    );
    println!(
        "| peak RSS of `tributary up`: one group, two groups | {:.0} MiB, {:.0} MiB |",
        rss as f64 / 1024.0,
        two_group_rss as f64 / 1024.0
    );
    println!("| ceiling: tonic bidi stream, ack-only server | {tonic_ceiling:.0} records/s |");
    println!(
        "| ceiling: SQLite store writes alone (5,000-row transactions) | {sqlite_ceiling:.0} rows/s |"
    );
    println!(
        "| end to end / SQLite ceiling | {:.0}% |",
        100.0 * e2e_rate / sqlite_ceiling
    );
}

/// `tributary up --no-workloads` with one parser group per name in `parsers`.
async fn start_mesh(dir: &Path, parsers: &[&str]) -> (tokio::process::Child, String) {
    let bin = std::env::var("TRIBUTARY_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned());
    println!("mesh binary: {bin}");
    support::spawn_announcing(
        Command::new(bin)
            .args(["up", "--no-workloads", "--listen", "127.0.0.1:0"])
            .args(parsers.iter().flat_map(|p| ["--parser", p]))
            .arg("--data-dir")
            .arg(dir),
    )
    .await
}

/// Publishes `count` records with a window; returns (acked/s, stored/s),
/// stored meaning every group in `groups` stored every record.
async fn bulk(url: &str, count: u64, groups: &[&str]) -> (f64, f64) {
    let started = Instant::now();
    publish(url, "bulk", count, None).await;
    let acked = started.elapsed();
    for group in groups {
        support::wait_stored(url, group, count).await;
    }
    let stored = started.elapsed();
    (
        count as f64 / acked.as_secs_f64(),
        count as f64 / stored.as_secs_f64(),
    )
}

/// Publishes `count` records from `source`, optionally paced to `rate`/s.
async fn publish(url: &str, source: &str, count: u64, rate: Option<u64>) {
    let mut client = IngestClient::connect(url.to_owned()).await.unwrap();
    let (tx, rx) = mpsc::channel(WINDOW / BATCH);
    let mut responses = client
        .publish(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let source = source.to_owned();
    let producer = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut seq = 0;
        let mut batch_id = 0;
        while seq < count {
            if let Some(rate) = rate {
                tokio::time::sleep_until(
                    started + Duration::from_secs_f64(seq as f64 / rate as f64),
                )
                .await;
            }
            let n = (count - seq).min(BATCH as u64);
            let records = (seq..seq + n)
                .map(|s| Record {
                    source: source.clone(),
                    ..reading(s)
                })
                .collect();
            tx.send(PublishRequest {
                batch_id,
                records,
                ..Default::default()
            })
            .await
            .unwrap();
            seq += n;
            batch_id += 1;
        }
    });
    let mut acked = 0u64;
    while acked < count {
        let response = responses.next().await.unwrap().unwrap();
        assert!(response.rejections.is_empty());
        acked += u64::from(response.accepted + response.duplicates);
    }
    producer.await.unwrap();
}

/// Paced publishing, then send→stored latency percentiles from the store.
/// `earlier` records were stored before this run, by `bulk`.
async fn latency(
    url: &str,
    dir: &Path,
    earlier: u64,
    rate: u64,
    seconds: u64,
) -> (f64, f64, usize) {
    let count = rate * seconds;
    publish(url, "paced", count, Some(rate)).await;
    let mut query = QueryClient::connect(url.to_owned()).await.unwrap();
    let store = store::open(&format!("sqlite://{}", dir.join("tributary.db").display()))
        .await
        .unwrap();
    loop {
        let stats = query
            .get_stats(GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        let stored = stats
            .parsers
            .iter()
            .find(|p| p.parser == "raw")
            .map_or(0, |p| p.stored);
        if stored >= count + earlier {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(count as usize);
    let mut after_id = 0;
    loop {
        let rows = store
            .records(&tributary::store::RecordFilter {
                parser: Some("raw".into()),
                source: Some("paced".into()),
                after_id,
                limit: 100_000,
            })
            .await
            .unwrap();
        let Some(last) = rows.last() else { break };
        after_id = last.id;
        latencies.extend(
            rows.iter()
                .map(|r| (r.stored_at - r.sent_at) as f64 / 1000.0),
        );
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), latencies.len())
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An Ingest server that acks every batch at once: what tonic alone allows.
struct AckOnly;

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for AckOnly {
    type PublishStream = Responses<PublishResponse>;
    type PullStream = Responses<PullResponse>;

    async fn publish(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(request)) = inbound.next().await {
                let response = PublishResponse {
                    batch_id: request.batch_id,
                    accepted: request.records.len() as u32,
                    ..Default::default()
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish_batch(
        &self,
        _: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }

    async fn pull(
        &self,
        _: Request<Streaming<PullRequest>>,
    ) -> Result<Response<Self::PullStream>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }

    async fn list_groups(
        &self,
        _: Request<tributary::proto::ListGroupsRequest>,
    ) -> Result<Response<tributary::proto::ListGroupsResponse>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }

    async fn delete_group(
        &self,
        _: Request<tributary::proto::DeleteGroupRequest>,
    ) -> Result<Response<tributary::proto::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }
}

async fn tonic_bidi_ceiling(count: u64) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(IngestServer::new(AckOnly))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let started = Instant::now();
    publish(&format!("http://{addr}"), "ceiling", count, None).await;
    count as f64 / started.elapsed().as_secs_f64()
}

async fn sqlite_ceiling(count: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn store::Store> =
        store::open(&format!("sqlite://{}", dir.path().join("c.db").display()))
            .await
            .unwrap();
    let batches: Vec<WriteBatch> = (0..count)
        .step_by(5000)
        .map(|start| WriteBatch {
            parser: "raw".into(),
            writer: "bench".into(),
            records: (start..(start + 5000).min(count))
                .map(|seq| {
                    let record = reading(seq);
                    NewRecord {
                        source: record.source.clone(),
                        seq,
                        kind: 3,
                        sent_at: 0,
                        received_at: 0,
                        body: record.encode_to_vec().into(),
                        fact: None,
                    }
                })
                .collect(),
            dead_letters: vec![],
        })
        .collect();
    let started = Instant::now();
    for batch in &batches {
        store.write(batch).await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}
