//! The REST answer time of `GET /v1/metrics/temperature/aggregate` once
//! sensor rollups keep the history: over the whole history and the last
//! hour (rollups, plus raw readings at the edges) against a range inside one
//! minute (the exact path), at 1,000,000 and 10,000,000 readings. Prints a
//! Markdown table of the answer times and one of the loads' write rates.
//!
//! Set-up: the readings are written into a fresh store by the store's own
//! write path (`Store::write`, 5,000 records a transaction, with their
//! facts, so the rollups are written exactly as the sensor parser writes
//! them; the records' bodies are empty), one reading per millisecond ending
//! now, twenty sensors taking turns, values between −10 and +30. On SQLite
//! the store is `DATA_DIR/tributary.db` and `tributary up --no-workloads
//! --data-dir DATA_DIR` answers; on PostgreSQL (with `--postgres URL`, an
//! admin URL: the bench creates a database of its own per history size)
//! `tributary api --store URL` answers. Either is this bench's build (the
//! release profile) and answers 200 sequential HTTP/1.1 requests per case,
//! after two warm-ups.
//!
//! "Whole history" sends no bounds: the range is all time, so every hour of
//! the history, the first and the last included, is a whole hour of it.
//!
//! Run: `cargo bench -p tributary-cli --bench aggregates`
//! (`-- --rows 1000000,10000000` sets the history sizes;
//! `--postgres postgres://postgres@127.0.0.1:5432/postgres` adds
//! PostgreSQL, and `--postgres-only` leaves SQLite out).

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use tributary::{
    clock,
    proto::RecordKind,
    store::{NewRecord, WriteBatch},
    testkit,
    workloads::{
        Fact,
        sensors::{GROUP, Reading, rollup::MINUTE},
    },
};

const SENSORS: i64 = 20;
const BATCH: i64 = 5_000;
const REQUESTS: usize = 200;

struct Case {
    label: &'static str,
    query: String,
    /// Whether the answer's percentiles should be sketched.
    sketched: bool,
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() {
    let sizes: Vec<i64> = arg("--rows").map_or(vec![1_000_000, 10_000_000], |list| {
        list.split(',')
            .map(|n| n.parse().expect("--rows takes numbers"))
            .collect()
    });
    let postgres = arg("--postgres");
    let sqlite = !std::env::args().any(|a| a == "--postgres-only");
    let mut table = vec![
        "| backend | readings | query | path | p50 | p99 | requests |".to_owned(),
        "|---|---|---|---|---|---|---|".to_owned(),
    ];
    let mut loads = vec![
        "| backend | readings | written in | readings/s |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    for rows in sizes {
        let mut backends = Vec::new();
        if sqlite {
            backends.push("SQLite");
        }
        if postgres.is_some() {
            backends.push("PostgreSQL");
        }
        for backend in backends {
            let dir = tempfile::tempdir().unwrap();
            let url = match &postgres {
                Some(admin) if backend == "PostgreSQL" => {
                    testkit::postgres_database_on(admin).await
                }
                _ => format!("sqlite://{}", dir.path().join("tributary.db").display()),
            };
            let end = clock::now_micros();
            let start = end - rows * 1000;
            let began = Instant::now();
            fill(&url, rows, start).await;
            let seconds = began.elapsed().as_secs_f64();
            eprintln!("{backend}: {rows} readings written in {seconds:.1} s");
            loads.push(format!(
                "| {backend} | {rows} | {seconds:.1} s | {:.0} |",
                rows as f64 / seconds
            ));
            let (mut server, addr) = support::serve_store(backend, dir.path(), &url).await;
            for (label, p50, p99, path) in run_cases(&addr, rows, start, end).await {
                eprintln!("{backend} / {rows} / {label}: p50 {p50:.1} ms, p99 {p99:.1} ms");
                table.push(format!(
                    "| {backend} | {rows} | {label} | {path} | {p50:.1} ms | {p99:.1} ms | {REQUESTS} |"
                ));
            }
            server.kill().await.unwrap();
        }
    }
    println!("\n{}\n\n{}", table.join("\n"), loads.join("\n"));
}

/// Times every case against the server at `addr` over a history of `rows`
/// readings from `start` to `end`: (label, p50, p99, path).
async fn run_cases(
    addr: &str,
    rows: i64,
    start: i64,
    end: i64,
) -> Vec<(&'static str, f64, f64, &'static str)> {
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    // A minute well inside the history, and the bounds of the last hour
    // (or of the whole history, if shorter), both inside minutes.
    let minute = end - end.rem_euclid(MINUTE) - 5 * MINUTE;
    let hour_from = (end - 3_600_000_000).max(start) + 30_500_000;
    let cases = [
        Case {
            label: "10 s inside one minute (10,000 readings)",
            query: format!(
                "?from={}&to={}",
                at(minute + 20_000_000),
                at(minute + 30_000_000)
            ),
            sketched: false,
        },
        Case {
            label: "whole history",
            query: String::new(),
            sketched: true,
        },
        Case {
            label: "whole history, per sensor",
            query: "?groupBySensor=true".into(),
            sketched: true,
        },
        Case {
            label: "last hour, bounds inside minutes (edges read raw)",
            query: format!("?from={}&to={}", at(hour_from), at(end - 29_500_000)),
            sketched: true,
        },
    ];
    let mut timed = Vec::new();
    for case in &cases {
        let url = format!(
            "http://{addr}/v1/metrics/temperature/aggregate{}",
            case.query
        );
        let (p50, p99) = time(&client, &url, case.sketched, rows).await;
        let path = if case.sketched { "rollups" } else { "exact" };
        timed.push((case.label, p50, p99, path));
    }
    timed
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

/// Writes `rows` readings through the store at `url`, as the sensor parser
/// would.
async fn fill(url: &str, rows: i64, start: i64) {
    let store = tributary::store::open(url).await.unwrap();
    for first in (0..rows).step_by(BATCH as usize) {
        let records = (first..(first + BATCH).min(rows))
            .map(|i| NewRecord {
                source: "bench".into(),
                seq: i as u64,
                kind: RecordKind::SensorReading as i32,
                sent_at: start + i * 1000,
                received_at: start + i * 1000,
                body: Default::default(),
                fact: Some(Fact::Reading(Reading {
                    sensor_id: format!("sensor-{:03}", i % SENSORS),
                    metric: "temperature".into(),
                    value: -10.0 + ((i * 7919) % 4000) as f64 / 100.0,
                    unit: "celsius".into(),
                    measured_at: start + i * 1000,
                })),
            })
            .collect();
        let batch = WriteBatch {
            parser: GROUP.into(),
            writer: "bench".into(),
            records,
            dead_letters: Vec::new(),
        };
        store.write(&batch).await.unwrap();
    }
    store.close().await;
}

/// p50 and p99 in ms of [`REQUESTS`] sequential GETs of `url`, after two
/// warm-ups; checks each answer took the path the case claims.
async fn time(client: &reqwest::Client, url: &str, sketched: bool, rows: i64) -> (f64, f64) {
    let mut samples = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS + 2 {
        let began = Instant::now();
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        let elapsed = began.elapsed();
        let groups = body["groups"].as_array().expect("groups");
        assert!(!groups.is_empty(), "{url}: {body}");
        for group in groups {
            let flag = group["percentilesSketched"].as_bool().unwrap_or(false);
            assert_eq!(flag, sketched, "{url}: {group}");
        }
        if url.ends_with("aggregate") {
            assert_eq!(groups[0]["count"], rows.to_string(), "{url}: {body}");
        }
        if i >= 2 {
            samples.push(elapsed);
        }
    }
    samples.sort();
    let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(rank(50)), ms(rank(99)))
}
