//! The answer time of `AggregateField` over REST
//! (`GET /v1/parsers/raw/fields/order.total/aggregate`) at 1,000,000 JSON
//! records: the whole history, grouped by `region` and not, and the last
//! tenth of it. Prints a Markdown table.
//!
//! Set-up: the JSON records are written by the store's own write path
//! (`Store::write`, 5,000 JSON and 5,000 text records a transaction, real encoded `Record`
//! bodies, so the `doc` column is filled as the `raw` parser fills it), one
//! record per millisecond ending now, each `{"order": {"total": V,
//! "items": N}, "region": R, "customer": "c-…"}` with V between 0 and 500,
//! R one of 8 regions; every 50th record has no total and every 100th a
//! string there. Beside them, as many text records of the same parser, which
//! the partial index `records_doc (parser, sent_at) WHERE doc IS NOT NULL`
//! keeps out of the scan. On SQLite, `tributary up --no-workloads
//! --data-dir DIR` answers; on PostgreSQL (with `--postgres URL`, a
//! database of its own that the bench fills), `tributary api --store URL`.
//! Each case is `REQUESTS` sequential HTTP/1.1 requests after one warm-up.
//!
//! Run: `cargo bench -p tributary-cli --bench fields`
//! (`-- --rows 1000000 --requests 20 --postgres postgres://…/db`).

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use prost::Message as _;
use tributary::{
    clock,
    proto::{Record, RecordKind, Text, record::Payload},
    store::{NewRecord, WriteBatch},
};

const BATCH: i64 = 5_000;
const REGIONS: [&str; 8] = ["ap", "br", "ca", "de", "eu", "in", "jp", "us"];

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() {
    let rows: i64 = arg("--rows").map_or(1_000_000, |n| n.parse().expect("--rows takes a number"));
    let requests: usize =
        arg("--requests").map_or(20, |n| n.parse().expect("--requests takes a number"));
    let mut table = vec![
        "| backend | JSON records | query | p50 | p99 | requests |".to_owned(),
        "|---|---|---|---|---|---|".to_owned(),
    ];
    let end = clock::now_micros();
    let start = end - rows * 1000;

    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("tributary.db").display());
    let mut backends = vec![("SQLite", sqlite)];
    if let Some(url) = arg("--postgres") {
        backends.push(("PostgreSQL", url));
    }
    for (backend, url) in backends {
        let began = Instant::now();
        fill(&url, rows, start).await;
        eprintln!(
            "{backend}: {rows} JSON records written in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        let (mut server, addr) = support::serve_store(backend, dir.path(), &url).await;
        let client = reqwest::Client::builder().http1_only().build().unwrap();
        let tenth = start + rows * 900;
        let cases = [
            ("whole history", String::new()),
            ("whole history, by region", "?groupBy=region".to_owned()),
            (
                "last tenth (100,000 records)",
                format!("?from={}", at(tenth)),
            ),
        ];
        for (label, query) in cases {
            let url = format!("http://{addr}/v1/parsers/raw/fields/order.total/aggregate{query}");
            let (p50, p99) = time(&client, &url, requests).await;
            eprintln!("{backend} / {label}: p50 {p50:.0} ms, p99 {p99:.0} ms");
            table.push(format!(
                "| {backend} | {rows} | {label} | {p50:.0} ms | {p99:.0} ms | {requests} |"
            ));
        }
        server.kill().await.unwrap();
    }
    println!("\n{}", table.join("\n"));
}

/// RFC 3339 for a query string.
fn at(micros: i64) -> String {
    serde_json::to_value(clock::from_micros(micros))
        .unwrap()
        .as_str()
        .unwrap()
        // `+` in a query string means a space.
        .replace('+', "%2B")
}

/// One JSON record and one text record of the same parser per
/// millisecond, written through the store as the `raw` parser would.
async fn fill(url: &str, rows: i64, start: i64) {
    let store = tributary::store::open(url).await.unwrap();
    for first in (0..rows).step_by(BATCH as usize) {
        let mut records = Vec::with_capacity(2 * BATCH as usize);
        for i in first..(first + BATCH).min(rows) {
            let at = start + i * 1000;
            let total = match i {
                i if i % 100 == 0 => serde_json::json!("n/a"),
                i if i % 50 == 0 => serde_json::Value::Null,
                i => serde_json::json!(((i * 7919) % 50_000) as f64 / 100.0),
            };
            let mut order = serde_json::json!({"items": i % 7});
            if !total.is_null() {
                order["total"] = total;
            }
            let doc = serde_json::json!({
                "order": order,
                "region": REGIONS[(i % 8) as usize],
                "customer": format!("c-{}", i % 10_000),
            });
            let json = Record {
                source: "bench".into(),
                seq: i as u64,
                payload: Some(Payload::Json(serde_json::from_value(doc).unwrap())),
                ..Default::default()
            };
            let text = Record {
                source: "bench-text".into(),
                seq: i as u64,
                payload: Some(Payload::Text(Text {
                    body: "a line".into(),
                })),
                ..Default::default()
            };
            for (record, kind) in [(json, RecordKind::Json), (text, RecordKind::Text)] {
                records.push(NewRecord {
                    source: record.source.clone(),
                    seq: i as u64,
                    kind: kind as i32,
                    sent_at: at,
                    received_at: at,
                    body: record.encode_to_vec().into(),
                    fact: None,
                });
            }
        }
        let batch = WriteBatch {
            parser: "raw".into(),
            writer: "bench".into(),
            records,
            dead_letters: Vec::new(),
        };
        store.write(&batch).await.unwrap();
    }
    store.close().await;
}

/// p50 and p99 in ms of `requests` sequential GETs of `url`, after one
/// warm-up; checks every answer counts what was written.
async fn time(client: &reqwest::Client, url: &str, requests: usize) -> (f64, f64) {
    let mut samples = Vec::with_capacity(requests);
    for i in 0..=requests {
        let began = Instant::now();
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        let elapsed = began.elapsed();
        let groups = body["groups"].as_array().expect("groups");
        assert!(!groups.is_empty(), "{url}: {body}");
        assert!(body["missing"].as_str().is_some(), "{url}: {body}");
        if i > 0 {
            samples.push(elapsed);
        }
    }
    samples.sort();
    let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(rank(50)), ms(rank(99)))
}
