//! The rollup path's promise, checked over random data on both backends:
//! over any range, grouped or not, it answers with the exact path's count,
//! average (to float rounding), extremes and unit, and with percentiles
//! within [`RELATIVE_ERROR`] of the exact nearest-rank ones; and it sketches
//! exactly when the range holds a whole minute. Ranges over a few minutes
//! meet minute rollups and raw edges; ranges over a few hours also meet
//! hour rollups, with bounds on hours, on minutes and inside minutes.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use futures::future::BoxFuture;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

use super::{
    AggregateQuery, AggregateRow, GROUP, Reading, aggregate, aggregate_with, exact,
    rollup::{HOUR, MINUTE, RELATIVE_ERROR, whole_hours},
    whole_minutes,
};
use crate::store::{Store, conformance};
use crate::workloads::Fact;

/// Cases per backend: each writes a few hundred readings in several
/// batches and asks two aggregates, well under a second on either.
const CASES: u32 = 32;

/// An hour boundary (in November 2023), so that offsets below read as
/// hours, minutes and their parts.
const BASE: i64 = 472_222 * HOUR;

/// How long a case's readings span after [`BASE`]: a few minutes (several
/// readings a minute, so whole and edge minutes both hold some) or a few
/// hours (ranges with whole hours, their edge hours read from minutes).
const SPANS: [i64; 2] = [5 * MINUTE, 3 * HOUR + 20 * MINUTE];

#[derive(Debug, Clone)]
struct Case {
    /// (sensor, µs after BASE, value in hundredths, unit, writer)
    readings: Vec<(u8, i64, i32, bool, bool)>,
    /// How many batches the readings are written in.
    batches: usize,
    from: i64,
    to: i64,
    group_by_sensor: bool,
}

fn bound(span: i64) -> impl Strategy<Value = i64> {
    // Some bounds on an hour or a minute boundary, most inside a minute.
    prop_oneof![
        (-1..=span / HOUR + 1).prop_map(|h| BASE + h * HOUR),
        (-1..=span / MINUTE + 1).prop_map(|m| BASE + m * MINUTE),
        (-MINUTE..span + MINUTE).prop_map(|at| BASE + at),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    prop::sample::select(SPANS.to_vec())
        .prop_flat_map(|span| {
            let reading = (
                0u8..3,
                0..span,
                -100_000i32..100_000,
                any::<bool>(),
                any::<bool>(),
            );
            (
                prop::collection::vec(reading, 1..300),
                1usize..5,
                bound(span),
                bound(span),
                any::<bool>(),
            )
        })
        .prop_map(|(readings, batches, a, b, group_by_sensor)| Case {
            readings,
            batches,
            from: a.min(b),
            to: a.max(b),
            group_by_sensor,
        })
}

/// Writes the case's readings under its own parser name, in batches that
/// alternate between two writers, then writes the first batch again (a
/// redelivery, which must not count twice).
async fn write(store: &dyn Store, parser: &str, case: &Case) {
    let records: Vec<_> = case
        .readings
        .iter()
        .enumerate()
        .map(|(seq, (sensor, at, hundredths, fahrenheit, _))| {
            conformance::with_fact(
                "s",
                seq as u64,
                0,
                0,
                Fact::Reading(Reading {
                    sensor_id: format!("sensor-{sensor}"),
                    metric: "temperature".into(),
                    value: f64::from(*hundredths) / 100.0,
                    unit: if *fahrenheit { "fahrenheit" } else { "celsius" }.into(),
                    measured_at: BASE + at,
                }),
            )
        })
        .collect();
    let size = records.len().div_ceil(case.batches);
    let chunks: Vec<_> = records.chunks(size).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let writer = if case.readings[i * size].4 {
            "w1"
        } else {
            "w2"
        };
        let batch = conformance::batch(parser, writer, chunk.to_vec());
        store.write(&batch).await.unwrap();
    }
    let again = conformance::batch(parser, "w1", chunks[0].to_vec());
    store.write(&again).await.unwrap();
}

fn by_sensor(mut rows: Vec<AggregateRow>) -> Vec<AggregateRow> {
    rows.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
    rows
}

async fn check(store: &dyn Store, parser: &str, case: &Case) {
    write(store, parser, case).await;
    let query = AggregateQuery {
        parser: parser.into(),
        metric: "temperature".into(),
        from: case.from,
        to: case.to,
        group_by_sensor: case.group_by_sensor,
    };
    let exact = by_sensor(exact(store, &query).await.unwrap());
    // Sketch at any count, so that these few readings take the rollup path.
    let rolled = by_sensor(aggregate_with(store, &query, 0).await.unwrap());
    // Few readings: the public read stays exact.
    assert_eq!(
        by_sensor(aggregate(store, &query).await.unwrap()),
        exact,
        "at most EXACT_UP_TO readings are aggregated exactly"
    );

    let sketched = whole_minutes(case.from, case.to).is_some();
    assert_eq!(rolled.len(), exact.len(), "{rolled:?}\n{exact:?}");
    for (r, e) in rolled.iter().zip(&exact) {
        assert_eq!(
            (&r.sensor_id, r.count, r.min, r.max, &r.unit),
            (&e.sensor_id, e.count, e.min, e.max, &e.unit)
        );
        assert!(
            (r.avg - e.avg).abs() <= 1e-9 * e.avg.abs().max(1.0),
            "avg {} against {}",
            r.avg,
            e.avg
        );
        assert!(!e.percentiles_sketched);
        assert_eq!(r.percentiles_sketched, sketched, "{r:?}");
        for (p, got, want) in [(50, r.p50, e.p50), (95, r.p95, e.p95), (99, r.p99, e.p99)] {
            if sketched {
                assert!(
                    (got - want).abs() <= RELATIVE_ERROR * want.abs() + 1e-9,
                    "p{p}: {got} against {want}"
                );
            } else {
                assert_eq!(got, want, "p{p}");
            }
        }
    }
}

/// Readings every 20 s over 3 h 20 min, and a range with bounds inside
/// minutes that holds two whole hours: its edge hours are read from minute
/// rows and its edge minutes raw. Run on every backend before the random
/// cases, so that the hour rows are always met.
fn hours_case(group_by_sensor: bool) -> Case {
    Case {
        readings: (0..600)
            .map(|i: i64| {
                (
                    (i % 3) as u8,
                    i * 20_000_000 + i % 7,
                    ((i * 7919) % 20_000 - 10_000) as i32,
                    i % 11 == 0,
                    i % 2 == 0,
                )
            })
            .collect(),
        batches: 4,
        from: BASE + 47 * MINUTE + 12_345_678,
        to: BASE + 3 * HOUR + 5 * MINUTE + 30_000_001,
        group_by_sensor,
    }
}

/// Runs a fixed several-hours case, then [`CASES`] random cases, against
/// `store`, each under its own parser.
fn run(store: Arc<dyn Store>, runtime: &tokio::runtime::Runtime) {
    for group_by_sensor in [false, true] {
        let case = hours_case(group_by_sensor);
        let minutes = whole_minutes(case.from, case.to).unwrap();
        assert_eq!(
            whole_hours(minutes.0, minutes.1),
            Some((BASE + HOUR, BASE + 3 * HOUR))
        );
        let parser = format!("{GROUP}-hours-{group_by_sensor}");
        runtime.block_on(check(store.as_ref(), &parser, &case));
    }
    let next = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |case| {
            let parser = format!("{GROUP}-{}", next.fetch_add(1, Ordering::Relaxed));
            runtime.block_on(check(store.as_ref(), &parser, &case));
            Ok(())
        })
        .unwrap();
}

#[test]
fn rollups_match_exact_aggregates_on_sqlite() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rollups.db").display());
    let store = runtime.block_on(crate::store::open(&url)).unwrap();
    run(store, &runtime);
}

#[test]
fn rollups_match_exact_aggregates_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime
        .block_on(async { crate::store::open(&crate::testkit::postgres_database().await).await })
        .unwrap();
    run(store, &runtime);
}

/// Readings stored before rollups existed are rolled up by migration 4
/// (minutes) and migration 6 (their hours) without a sketch; an aggregate
/// over them stays exact, over whole hours and inside them.
#[test]
fn readings_from_before_rollups_aggregate_exactly_on_sqlite() {
    on_sqlite(readings_from_before_rollups_aggregate_exactly);
}

#[test]
fn readings_from_before_rollups_aggregate_exactly_on_postgres() {
    on_postgres(readings_from_before_rollups_aggregate_exactly);
}

fn readings_from_before_rollups_aggregate_exactly(url: String) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let store = crate::store::open(&url).await.unwrap();
        // 500 readings over 2 h 30 min.
        let case = Case {
            readings: (0..500)
                .map(|i| {
                    (
                        i as u8 % 3,
                        i * 3 * MINUTE / 10,
                        (i as i32 * 7919) % 5000 - 2500,
                        false,
                        false,
                    )
                })
                .collect(),
            batches: 3,
            from: i64::MIN,
            to: i64::MAX,
            group_by_sensor: true,
        };
        write(store.as_ref(), GROUP, &case).await;
        // As an older release left it: readings, no rollups; then the
        // migrations' backfills.
        execute(&url, "DELETE FROM sensor_rollups").await;
        execute(&url, "DELETE FROM sensor_hourly_rollups").await;
        execute(&url, super::rollup::BACKFILL).await;
        for table in ["sensor_rollups", "sensor_hourly_rollups"] {
            let backfilled = store
                .read(
                    &format!("SELECT CAST(SUM(count) AS BIGINT) FROM {table} WHERE sketch IS NULL"),
                    &[],
                    &[crate::store::sql::Type::Int],
                )
                .await
                .unwrap();
            assert_eq!(backfilled[0].int(0).unwrap(), 500, "{table}");
        }
        for (from, to) in [
            (case.from, case.to),
            (BASE + 20 * MINUTE + 1, BASE + 2 * HOUR + 10 * MINUTE + 7),
        ] {
            let query = AggregateQuery {
                parser: GROUP.into(),
                metric: "temperature".into(),
                from,
                to,
                group_by_sensor: true,
            };
            let rolled = aggregate_with(store.as_ref(), &query, 0).await.unwrap();
            assert_eq!(rolled.len(), 3);
            assert!(rolled.iter().all(|r| !r.percentiles_sketched));
            assert_eq!(rolled, exact(store.as_ref(), &query).await.unwrap());
        }
    })
}

/// A store upgraded to hour rollups has its earlier hours rolled up by
/// migration 6 without a sketch, though their minutes have theirs: an
/// aggregate over those hours reads the minutes and still sketches, before
/// and after a writer adds readings to those hours.
#[test]
fn hours_rolled_up_by_the_migration_answer_from_their_minutes_on_sqlite() {
    on_sqlite(hours_rolled_up_by_the_migration_answer_from_their_minutes);
}

#[test]
fn hours_rolled_up_by_the_migration_answer_from_their_minutes_on_postgres() {
    on_postgres(hours_rolled_up_by_the_migration_answer_from_their_minutes);
}

fn hours_rolled_up_by_the_migration_answer_from_their_minutes(
    url: String,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let store = crate::store::open(&url).await.unwrap();
        // The first 400 readings (2 h 13 min) before the upgrade.
        let all = hours_case(true);
        let mut before = all.clone();
        before.readings.truncate(400);
        write(store.as_ref(), GROUP, &before).await;
        // As migration 6 leaves a store whose minutes were rolled up with
        // sketches: hour rows from the minute rows, without sketches.
        execute(&url, "DELETE FROM sensor_hourly_rollups").await;
        execute(&url, super::rollup::HOURLY_BACKFILL).await;
        let query = AggregateQuery {
            parser: GROUP.into(),
            metric: "temperature".into(),
            from: all.from,
            to: all.to,
            group_by_sensor: true,
        };
        check_sketched(store.as_ref(), &query).await;
        // After it, the writers roll the rest up into their own hour rows,
        // beside the migration's in hour 2 (the first 400 are redelivered,
        // not new, and do not count again).
        write(store.as_ref(), GROUP, &all).await;
        check_sketched(store.as_ref(), &query).await;
    })
}

/// Runs `test` against a fresh SQLite database's URL.
fn on_sqlite(test: fn(String) -> BoxFuture<'static, ()>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rollups.db").display());
    runtime.block_on(test(url));
}

/// Runs `test` against a fresh PostgreSQL database's URL.
fn on_postgres(test: fn(String) -> BoxFuture<'static, ()>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async { test(crate::testkit::postgres_database().await).await });
}

/// Runs `sql` on the database at `url` beside its store, as a migration
/// or an older release would.
async fn execute(url: &str, sql: &'static str) {
    use sqlx::{Connection, Executor};
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        conn.execute(sql).await.unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        conn.execute(sql).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// The rollup path sketches `query` and agrees with the exact path.
async fn check_sketched(store: &dyn Store, query: &AggregateQuery) {
    let exact = by_sensor(exact(store, query).await.unwrap());
    let rolled = by_sensor(aggregate_with(store, query, 0).await.unwrap());
    assert_eq!(rolled.len(), exact.len());
    for (r, e) in rolled.iter().zip(&exact) {
        assert!(r.percentiles_sketched, "{r:?}");
        assert_eq!(
            (&r.sensor_id, r.count, r.min, r.max, &r.unit),
            (&e.sensor_id, e.count, e.min, e.max, &e.unit)
        );
        assert!((r.avg - e.avg).abs() <= 1e-9 * e.avg.abs().max(1.0));
        for (got, want) in [(r.p50, e.p50), (r.p95, e.p95), (r.p99, e.p99)] {
            assert!((got - want).abs() <= RELATIVE_ERROR * want.abs() + 1e-9);
        }
    }
}
