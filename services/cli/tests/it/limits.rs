//! Hostile values and sizes: what ingest refuses, what a read does with a row
//! it cannot show, and the bounds on what one request can cost the server.

use std::{path::Path, time::Duration};

use futures::StreamExt;
use prost::Message;
use serde_json::{Value, json};
use tonic::{Code, transport::Channel};
use tributary::{
    clock,
    proto::{
        ClaimRequest, ListDeadLettersRequest, ListRecordsRequest, Probe, PublishBatchRequest,
        RandomNumber, Record, SensorReading, Text, WatchStatsRequest,
        coordinator_client::CoordinatorClient, ingest_client::IngestClient,
        query_client::QueryClient, record::Payload,
    },
    store::{self, Fact, NewDeadLetter, NewRecord, WriteBatch},
    workloads::averages::Number,
};

use crate::support::{Mesh, eventually, ready_if, wait_stored};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn record(seq: u64, payload: Payload) -> Record {
    Record {
        source: "hostile".into(),
        seq,
        payload: Some(payload),
        ..Default::default()
    }
}

fn text(body: &str) -> Payload {
    Payload::Text(Text { body: body.into() })
}

/// A timestamp as a hostile client sends it, valid or not.
macro_rules! at {
    ($seconds:expr, $nanos:expr) => {{
        let mut ts = clock::from_micros(0);
        ts.seconds = $seconds;
        ts.nanos = $nanos;
        Some(ts)
    }};
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    let response = client.get(&url).send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_times_ticks_and_numbers_are_refused_over_grpc_and_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "raw;average"]).await;
    let now = clock::now_micros();
    let tick_now = clock::tick_of(now);
    let mut bad = vec![
        Record {
            sent_at: at!(i64::MAX, 0),
            ..record(0, text("far future"))
        },
        Record {
            sent_at: at!(i64::MIN, 0),
            ..record(1, text("far past"))
        },
        Record {
            sent_at: at!(now / 1_000_000, -1),
            ..record(2, text("bad nanos"))
        },
        Record {
            sent_at: at!(now / 1_000_000 - 30 * 86_400, 0),
            ..record(3, text("a month old"))
        },
        record(
            4,
            Payload::RandomNumber(RandomNumber {
                value: 7,
                tick: 90_000_000_000_000,
            }),
        ),
        record(
            5,
            Payload::RandomNumber(RandomNumber {
                value: 10_001,
                tick: tick_now,
            }),
        ),
        record(
            6,
            Payload::Probe(Probe {
                number: i64::MAX as u64 + 1,
            }),
        ),
        record(
            7,
            Payload::SensorReading(SensorReading {
                sensor_id: "s".into(),
                metric: "m".into(),
                value: f64::NAN,
                unit: "u".into(),
                measured_at: None,
            }),
        ),
        record(
            8,
            Payload::SensorReading(SensorReading {
                sensor_id: "s".into(),
                metric: "m".into(),
                value: 1.0,
                unit: "u".into(),
                measured_at: at!(i64::MIN, 0),
            }),
        ),
    ];
    let bad_count = bad.len();
    bad.push(record(
        100,
        Payload::RandomNumber(RandomNumber {
            value: 42,
            tick: tick_now,
        }),
    ));
    let answer = IngestClient::new(mesh.channel().await)
        .publish_batch(PublishBatchRequest { records: bad })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 1, "{answer:?}");
    assert_eq!(answer.rejected as usize, bad_count);
    assert_eq!(answer.rejections.len(), bad_count);
    for rejection in &answer.rejections {
        assert_eq!(
            rejection.code,
            Code::InvalidArgument as i32,
            "{rejection:?}"
        );
        assert!(!rejection.reason.is_empty());
    }

    // Over REST, what the probe sent: a tick far past any clock,
    // and the extremes RFC 3339 can write.
    let client = http();
    let response = client
        .post(format!("{}/v1/records", mesh.url()))
        .json(&json!({"records": [
            {"source": "rest", "seq": "0", "randomNumber": {"value": "7", "tick": "90000000000000"}},
            {"source": "rest", "seq": "1", "sentAt": "9999-12-31T23:59:59Z", "text": {"body": "x"}},
            {"source": "rest", "seq": "2", "sentAt": "0001-01-01T00:00:00Z", "text": {"body": "x"}},
            {"source": "rest", "seq": "3", "sensorReading": {"sensorId": "s", "metric": "m",
                "value": "Infinity", "unit": "u"}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let rejections = body["rejections"].as_array().unwrap();
    assert_eq!(rejections.len(), 4, "{body}");
    assert!(rejections.iter().all(|r| r["code"] == 3), "{body}");
    assert!(body.get("accepted").is_none(), "{body}");

    // The good number is stored and every read still answers.
    wait_stored(&mesh.channel().await, "average", 1, Duration::from_secs(30)).await;
    for path in ["/v1/averages", "/v1/records", "/v1/dead-letters"] {
        get(&client, format!("{}{path}", mesh.url())).await;
    }
}

/// Rows no read could encode before: times outside RFC 3339, windows at the
/// ends of i64, bodies that do not decode. Written straight into the store,
/// as an older version or another writer could have left them.
async fn seed_unshowable_rows(data_dir: &Path) {
    let url = format!("sqlite://{}", data_dir.join("tributary.db").display());
    let store = store::open(&url).await.unwrap();
    let body = |seq: u64, sent_at| {
        Record {
            sent_at,
            ..record(seq, text("stored long ago"))
        }
        .encode_to_vec()
    };
    let new = |seq: u64, body: Vec<u8>, fact| NewRecord {
        source: "hostile".into(),
        seq,
        kind: 5,
        sent_at: i64::MAX,
        received_at: i64::MAX,
        body: body.into(),
        fact,
    };
    let dead = |seq: u64, body: Vec<u8>| NewDeadLetter {
        source: "hostile".into(),
        seq,
        kind: 5,
        body: body.into(),
        error: "gave up".into(),
        attempts: 5,
    };
    for (parser, records) in [
        (
            "average",
            vec![
                new(
                    0,
                    body(0, at!(i64::MAX, 0)),
                    Some(Fact::Number(Number {
                        window_start: i64::MIN,
                        window_ms: 1000,
                        value: 1,
                    })),
                ),
                new(
                    1,
                    body(1, at!(i64::MIN, 0)),
                    Some(Fact::Number(Number {
                        window_start: i64::MAX / 2,
                        window_ms: 1000,
                        value: 1,
                    })),
                ),
            ],
        ),
        ("raw", vec![new(2, vec![0xff, 0xff, 0xff], None)]),
    ] {
        store
            .write(&WriteBatch {
                parser: parser.into(),
                writer: "seed".into(),
                records,
                dead_letters: vec![
                    dead(10, body(10, at!(253_402_300_800, 0))),
                    dead(11, vec![0xff]),
                ],
            })
            .await
            .unwrap();
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_encoded_does_not_break_any_read() {
    let dir = tempfile::tempdir().unwrap();
    seed_unshowable_rows(dir.path()).await;
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let client = http();
    let base = mesh.url();

    let records = get(&client, format!("{base}/v1/records")).await;
    let records = records["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    for row in records {
        let notes = row["degraded"].as_array().unwrap();
        assert!(!notes.is_empty(), "{row}");
        assert!(row.get("receivedAt").is_none(), "{row}");
    }
    assert!(records[0]["record"]["sentAt"].is_null());
    assert_eq!(records[0]["record"]["text"]["body"], "stored long ago");
    assert!(
        records[2]["record"].is_null(),
        "the undecodable body is unset"
    );

    let averages = get(&client, format!("{base}/v1/averages")).await;
    assert_eq!(averages["skipped"], 2, "{averages}");
    assert!(averages.get("averages").is_none(), "{averages}");

    let dead = get(&client, format!("{base}/v1/dead-letters")).await;
    let dead = dead["deadLetters"].as_array().unwrap();
    assert_eq!(dead.len(), 4);
    assert!(
        dead.iter()
            .all(|d| !d["degraded"].as_array().unwrap().is_empty())
    );

    // gRPC clients get the same degraded rows, not an error.
    let page = QueryClient::new(mesh.channel().await)
        .list_records(ListRecordsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.len(), 3);

    // The dashboard keeps updating: two events, each with the skip counted.
    let response = client
        .get(format!("{base}/v1/dashboard:watch?intervalMs=100"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an update arrives within 10 s")
            .expect("the stream stays open")
            .expect("the body does not abort");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                events.push(serde_json::from_str::<Value>(data.trim()).unwrap());
            }
        }
    }
    for event in events {
        assert!(event["readAt"].is_string(), "{event}");
        assert_eq!(event["averagesSkipped"], 2, "{event}");
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS is reported")
}

/// Opens `n` WatchStats streams, 100 at a time, takes each one's first
/// update and hangs up.
async fn watch_and_hang_up(channel: &Channel, n: usize, interval_ms: u32) {
    futures::stream::iter(0..n)
        .for_each_concurrent(100, |_| {
            let mut client = QueryClient::new(channel.clone());
            async move {
                let mut stream = client
                    .watch_stats(WatchStatsRequest { interval_ms })
                    .await
                    .unwrap()
                    .into_inner();
                stream.message().await.unwrap().expect("a first update");
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_watch_streams_free_their_work_and_intervals_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let pid = mesh.child.id().unwrap();
    let channel = mesh.channel().await;
    // The longest interval allowed: before the fix each closed stream kept
    // its task until the next tick.
    watch_and_hang_up(&channel, 1_000, 60_000).await;
    let before = rss_kib(pid);
    watch_and_hang_up(&channel, 10_000, 60_000).await;
    let after = rss_kib(pid);
    eprintln!("RSS over 10,000 closed stats:watch streams: {before} KiB -> {after} KiB");
    // A leaked task costs about 2.7 KB: 10,000 of them would be ~27 MB.
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );

    let status = QueryClient::new(channel)
        .watch_stats(WatchStatsRequest {
            interval_ms: u32::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("60000"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_id_past_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let channel = mesh.channel().await;
    let claim = |id: String| {
        let mut client = CoordinatorClient::new(channel.clone());
        async move {
            let request = ClaimRequest {
                generator_id: id,
                tick: clock::tick_of(clock::now_micros()),
                min: 1,
                max: 10_000,
            };
            let mut stream = client
                .claim(futures::stream::iter([request]))
                .await?
                .into_inner();
            stream.message().await
        }
    };
    let huge = claim("g".repeat(4 << 20)).await.unwrap_err();
    assert!(
        matches!(
            huge.code(),
            Code::ResourceExhausted | Code::InvalidArgument | Code::OutOfRange
        ),
        "{huge:?}"
    );
    assert!(huge.message().len() < 1024, "the id is not echoed");
    let long = claim("g".repeat(257)).await.unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument, "{long:?}");
    assert!(long.message().contains("256"), "{long:?}");
    // An id at the bound is a member like any other.
    let answer = claim("g".repeat(256)).await.unwrap();
    assert!(answer.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_batch_is_refused_and_rejection_detail_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let mut client = IngestClient::new(mesh.channel().await);
    // The probe's request: 830,000 records without a source, under the
    // 4 MiB message limit.
    let records: Vec<Record> = (0..830_000)
        .map(|seq| Record {
            seq: seq % 100,
            ..Default::default()
        })
        .collect();
    let request = PublishBatchRequest { records };
    eprintln!("830,000-record request: {} bytes", request.encoded_len());
    let status = client.publish_batch(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    eprintln!(
        "830,000-record response: status {:?}, message {} bytes",
        status.code(),
        status.message().len()
    );
    assert!(status.message().contains("830000 records"), "{status:?}");
    assert!(status.message().len() < 1024);

    // At the cap, every record bad: all counted, the first 1,000 listed.
    let records: Vec<Record> = (0..10_000)
        .map(|seq| Record {
            source: "s".repeat(300),
            seq,
            ..Default::default()
        })
        .collect();
    let answer = client
        .publish_batch(PublishBatchRequest { records })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.rejected, 10_000);
    assert_eq!(answer.rejections.len(), 1_000);
    assert!(answer.rejections.iter().all(|r| r.source.len() == 256));
    eprintln!(
        "10,000 bad records: response {} bytes",
        answer.encoded_len()
    );
    assert!(answer.encoded_len() < 512 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_60_kb_records_stay_under_4_mib_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let channel = mesh.channel().await;
    let big = "x".repeat(60_000);
    for batch in 0..4u64 {
        let records = (0..30)
            .map(|i| record(batch * 30 + i, text(&big)))
            .collect();
        let answer = IngestClient::new(channel.clone())
            .publish_batch(PublishBatchRequest { records })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.accepted, 30, "{answer:?}");
    }
    wait_stored(&channel, "raw", 120, Duration::from_secs(60)).await;
    // tonic's client takes at most 4 MiB per message, as grpcurl and grpcio
    // do: every page must arrive under it.
    let mut client = QueryClient::new(channel);
    let (mut after_id, mut seen, mut pages) = (0, 0, 0);
    loop {
        let page = client
            .list_records(ListRecordsRequest {
                parser: "raw".into(),
                limit: 1000,
                after_id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.encoded_len() < 4 << 20, "{}", page.encoded_len());
        seen += page.records.len();
        pages += 1;
        if page.next_after_id == 0 {
            break;
        }
        assert!(page.next_after_id > after_id);
        after_id = page.next_after_id;
    }
    assert_eq!(seen, 120);
    assert!(pages >= 3, "{pages} pages");
    // Over REST too: limit=1000 answers a bounded page with a cursor.
    let response = http()
        .get(format!("{}/v1/records?limit=1000&parser=raw", mesh.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert!(body.len() < 4 << 20, "{} bytes", body.len());
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert!(page["nextAfterId"].is_string(), "a cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_page_past_1000() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tributary.db").display());
    let store = store::open(&url).await.unwrap();
    store
        .write(&WriteBatch {
            parser: "picky".into(),
            writer: "seed".into(),
            records: vec![],
            dead_letters: (0..1_500)
                .map(|seq| NewDeadLetter {
                    source: "d".into(),
                    seq,
                    kind: 5,
                    body: record(seq, text("no")).encode_to_vec().into(),
                    error: "no".into(),
                    attempts: 5,
                })
                .collect(),
        })
        .await
        .unwrap();
    store.close().await;
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let mut client = QueryClient::new(mesh.channel().await);
    let mut seqs = Vec::new();
    let mut after_id = 0;
    loop {
        let page = client
            .list_dead_letters(ListDeadLettersRequest {
                limit: 1000,
                after_id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seqs.extend(
            page.dead_letters
                .iter()
                .map(|d| d.record.as_ref().unwrap().seq),
        );
        if page.next_after_id == 0 {
            break;
        }
        after_id = page.next_after_id;
    }
    assert_eq!(seqs, (0..1_500).collect::<Vec<u64>>());
    // REST: the second page starts past the first 1,000.
    let client = http();
    let first = get(
        &client,
        format!("{}/v1/dead-letters?limit=1000", mesh.url()),
    )
    .await;
    let next = first["nextAfterId"].as_str().unwrap();
    let second = get(
        &client,
        format!("{}/v1/dead-letters?limit=1000&afterId={next}", mesh.url()),
    )
    .await;
    assert_eq!(second["deadLetters"].as_array().unwrap().len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_head_explains_numbers_and_counts_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let client = http();
    let base = mesh.url();
    for path in [
        "/v1/stats",
        "/v1/records",
        "/v1/averages",
        "/openapi.json",
        "/",
    ] {
        let response = client.head(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert!(response.bytes().await.unwrap().is_empty());
    }

    let response = client
        .get(format!("{base}/v1/records?limit=99999999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("limit=99999999999"), "{message}");
    assert!(message.contains("out of range"), "{message}");
    assert!(!message.contains("untagged"), "{message}");

    // An open SSE stream shows in the gauge, and leaves it when closed.
    let series = "tributary_grpc_open_streams{method=\"GET /v1/stats:watch\"}";
    let gauge = |client: reqwest::Client| {
        let url = format!("{base}/metrics");
        async move {
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix(series))
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        }
    };
    let response = client
        .get(format!("{}/v1/stats:watch?intervalMs=100", mesh.url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(gauge(client.clone()).await, 1.0);
    drop(body);
    eventually(
        "the stream to leave the gauge",
        Duration::from_secs(10),
        async || {
            let open = gauge(client.clone()).await;
            ready_if(open == 0.0, open)
        },
    )
    .await;
}
