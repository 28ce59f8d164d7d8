//! The REST answer time of `GET /v1/metrics/{metric}/aggregate` over a store
//! holding 1,000,000 sensor readings, from a real `tributary api` process
//! over HTTP/1.1, for SQLite and PostgreSQL: PostgreSQL with the store's
//! covering index and (for comparison, in the same run) with the index the
//! aggregate had before it; SQLite with its time-ordered readings table.
//! Prints a Markdown table.
//!
//! Run: `cargo bench -p tributary-cli --bench rest`
//! (`-- --rows N` changes the number of readings; `-- --sqlite-only` or
//! `-- --postgres-only` runs one store).

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use tributary::{clock, testkit, workloads::sensors::rollup::BACKFILL};

/// Readings are spread one per millisecond, ending now: 1,000,000 cover the
/// last 1,000 s. Twenty sensors take turns.
const SENSORS: i64 = 20;

struct Case {
    label: &'static str,
    query: String,
    requests: usize,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: i64 = args
        .iter()
        .skip_while(|a| *a != "--rows")
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("--rows takes a number"));
    let sqlite_only = args.iter().any(|a| a == "--sqlite-only");
    let postgres_only = args.iter().any(|a| a == "--postgres-only");

    let end = clock::now_micros();
    let start = end - rows * 1000;
    let at = |micros: i64| {
        serde_json::to_value(clock::from_micros(micros))
            .unwrap()
            .as_str()
            .unwrap()
            // `+` in a query string means a space.
            .replace('+', "%2B")
    };
    let cases = [
        Case {
            label: "all readings",
            query: String::new(),
            requests: 12,
        },
        Case {
            label: "all readings, per sensor",
            query: "?groupBySensor=true".into(),
            requests: 12,
        },
        Case {
            label: "last 10 s (10,000 readings)",
            query: format!("?from={}", at(end - 10_000_000)),
            requests: 300,
        },
        Case {
            label: "last 60 s (60,000 readings)",
            query: format!("?from={}", at(end - 60_000_000)),
            requests: 100,
        },
    ];

    let mut table = vec![
        "| store | index | query | p50 | p99 | requests |".to_owned(),
        "|---|---|---|---|---|---|".to_owned(),
    ];

    let dir = tempfile::tempdir().unwrap();
    if !postgres_only {
        let path = dir.path().join("tributary.db");
        let sqlite = format!("sqlite://{}", path.display());
        eprintln!("filling SQLite with {rows} readings");
        fill_sqlite(&sqlite, rows, start).await;
        run_store("SQLite", &sqlite, SQLITE_LAYOUTS, &cases, &mut table).await;
    }

    if !sqlite_only {
        let pg = testkit::postgres_database().await;
        eprintln!("filling PostgreSQL with {rows} readings");
        fill_postgres(&pg, rows, start).await;
        run_store("PostgreSQL", &pg, POSTGRES_LAYOUTS, &cases, &mut table).await;
    }
    println!("\n{}", table.join("\n"));
}

/// A layout of the readings: its name, and the statements that make it
/// from the previous one.
type Layout = (&'static str, Option<[&'static str; 2]>);

/// PostgreSQL's layouts: the migrated (covering) index, then the older
/// filter-only index.
const POSTGRES_LAYOUTS: &[Layout] = &[
    ("covering (migration 3)", None),
    (
        "filter columns only (before)",
        Some([
            "CREATE INDEX sensor_readings_by_metric ON sensor_readings (parser, metric, measured_at)",
            "DROP INDEX sensor_readings_covering",
        ]),
    ),
];

/// SQLite's readings have no index to swap: since migration 7 the table is
/// itself ordered by (parser, metric, measured_at).
const SQLITE_LAYOUTS: &[Layout] = &[("time-ordered table (migration 7)", None)];

/// Times every case against `tributary api` on `store`, in each of
/// `layouts` in turn.
async fn run_store(
    name: &str,
    store: &str,
    layouts: &[Layout],
    cases: &[Case],
    table: &mut Vec<String>,
) {
    for &(index, swap) in layouts {
        if let Some(statements) = swap {
            execute(store, &statements).await;
        }
        let (mut child, addr) =
            support::spawn_listening(&["api", "--listen", "127.0.0.1:0", "--store", store]).await;
        let client = reqwest::Client::builder().http1_only().build().unwrap();
        for case in cases {
            let url = format!(
                "http://{addr}/v1/metrics/temperature/aggregate{}",
                case.query
            );
            let (p50, p99) = time(&client, &url, case.requests).await;
            eprintln!(
                "{name} / {index} / {}: p50 {p50:.1} ms, p99 {p99:.1} ms",
                case.label
            );
            table.push(format!(
                "| {name} | {index} | {} | {p50:.1} ms | {p99:.1} ms | {} |",
                case.label, case.requests
            ));
        }
        child.kill().await.unwrap();
    }
}

async fn execute(store: &str, statements: &[&'static str]) {
    if store.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(store).await.unwrap();
        for statement in statements {
            conn.execute(*statement).await.unwrap();
        }
        conn.execute("ANALYZE").await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(store).await.unwrap();
        for statement in statements {
            conn.execute(*statement).await.unwrap();
        }
        conn.execute("ANALYZE sensor_readings").await.unwrap();
    }
}

/// p50 and p99 in ms of `n` sequential GETs of `url`, after two warm-ups.
async fn time(client: &reqwest::Client, url: &str, n: usize) -> (f64, f64) {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 2 {
        let began = Instant::now();
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        let elapsed = began.elapsed();
        assert!(body["groups"][0]["count"].is_string(), "{url}: {body}");
        if i >= 2 {
            samples.push(elapsed);
        }
    }
    samples.sort();
    let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(rank(50)), ms(rank(99)))
}

/// Opens the store once (which migrates it), then inserts the readings with
/// one set-based statement: the setup is not what is measured. Readings
/// loaded around the store have no sketched rollups; the backfill rolls them
/// up without sketches, as migration 4 does for older stores, so that every
/// query here computes its percentiles from the readings (the path this
/// bench measures; `--bench aggregates` measures the rollups).
async fn fill_sqlite(url: &str, rows: i64, start: i64) {
    tributary::store::open(url).await.unwrap().close().await;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    conn.execute("PRAGMA journal_mode = WAL").await.unwrap();
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {rows}) \
         INSERT INTO sensor_readings (parser, source, seq, sensor_id, metric, value, unit, measured_at) \
         SELECT 'sensor', 'bench', i, 'sensor-' || (i % {SENSORS}), 'temperature', \
                20.0 + ((i * 7919) % 1000) / 100.0, 'C', {start} + i * 1000 FROM n"
    );
    conn.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    conn.execute(BACKFILL).await.unwrap();
    conn.execute("ANALYZE").await.unwrap();
    conn.close().await.unwrap();
}

async fn fill_postgres(url: &str, rows: i64, start: i64) {
    tributary::store::open(url).await.unwrap().close().await;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let sql = format!(
        "INSERT INTO sensor_readings (parser, source, seq, sensor_id, metric, value, unit, measured_at) \
         SELECT 'sensor', 'bench', i, 'sensor-' || (i % {SENSORS}), 'temperature', \
                20.0 + ((i * 7919) % 1000) / 100.0, 'C', {start} + i * 1000 \
         FROM generate_series(0::BIGINT, {rows} - 1) AS i"
    );
    conn.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    conn.execute(BACKFILL).await.unwrap();
    conn.execute("ANALYZE sensor_readings").await.unwrap();
    conn.close().await.unwrap();
}
