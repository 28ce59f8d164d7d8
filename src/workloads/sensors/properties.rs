//! The rollup path's promise, checked over random data on both backends:
//! over any range, grouped or not, it answers with the exact path's count,
//! average (to float rounding), extremes and unit, and with percentiles
//! within [`RELATIVE_ERROR`] of the exact nearest-rank ones; and it sketches
//! exactly when the range holds a whole minute.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

use super::{
    AggregateQuery, AggregateRow, GROUP, Reading, aggregate, aggregate_with, exact,
    rollup::{MINUTE, RELATIVE_ERROR},
    whole_minutes,
};
use crate::store::{Store, conformance};
use crate::workloads::Fact;

/// Cases per backend: each writes a few hundred readings in several
/// batches and asks two aggregates, well under a second on either.
const CASES: u32 = 24;

/// A minute boundary (in November 2023), so that offsets below read as
/// minutes and their parts.
const BASE: i64 = 28_333_334 * MINUTE;

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

fn bound() -> impl Strategy<Value = i64> {
    // Some bounds on a minute boundary, most inside a minute.
    prop_oneof![
        (-1i64..7).prop_map(|m| BASE + m * MINUTE),
        (-MINUTE..6 * MINUTE).prop_map(|at| BASE + at),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let reading = (
        0u8..3,
        0..5 * MINUTE,
        -100_000i32..100_000,
        any::<bool>(),
        any::<bool>(),
    );
    (
        prop::collection::vec(reading, 1..300),
        1usize..5,
        bound(),
        bound(),
        any::<bool>(),
    )
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

/// Runs [`CASES`] random cases against `store`, each under its own parser.
fn run(store: Arc<dyn Store>, runtime: &tokio::runtime::Runtime) {
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
/// without a sketch; an aggregate over them stays exact.
#[test]
fn readings_from_before_rollups_aggregate_exactly() {
    use sqlx::{Connection, Executor};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("before.db").display());
    runtime.block_on(async {
        let store = crate::store::open(&url).await.unwrap();
        let case = Case {
            readings: (0..500)
                .map(|i| {
                    (
                        i as u8 % 3,
                        i * MINUTE / 100,
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
        // migration's backfill.
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        conn.execute("DELETE FROM sensor_rollups").await.unwrap();
        conn.execute(super::rollup::BACKFILL).await.unwrap();
        conn.close().await.unwrap();
        let backfilled = store
            .read(
                "SELECT CAST(SUM(count) AS BIGINT) FROM sensor_rollups WHERE sketch IS NULL",
                &[],
                &[crate::store::sql::Type::Int],
            )
            .await
            .unwrap();
        assert_eq!(backfilled[0].int(0).unwrap(), 500);
        let query = AggregateQuery {
            parser: GROUP.into(),
            metric: "temperature".into(),
            from: case.from,
            to: case.to,
            group_by_sensor: true,
        };
        let rolled = aggregate_with(store.as_ref(), &query, 0).await.unwrap();
        assert_eq!(rolled.len(), 3);
        assert_eq!(rolled.iter().map(|r| r.count).sum::<u64>(), 500);
        assert!(rolled.iter().all(|r| !r.percentiles_sketched));
        assert_eq!(rolled, exact(store.as_ref(), &query).await.unwrap());
    });
}
