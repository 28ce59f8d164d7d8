//! The sensors workload: readings per sensor and metric, aggregated over a
//! time range (count, average, extremes, percentiles).
//!
//! Readings are kept raw and, in the same transaction, rolled up per minute
//! and per hour ([`rollup`]); an aggregate over a long range merges the
//! hour rollups of the whole hours in it, the minute rollups of the whole
//! minutes in its partial edge hours, and reads raw readings only in the
//! partial minutes at its edges, so its cost follows the hours in the
//! range, not the readings.

#[cfg(test)]
mod properties;
pub mod rollup;

use std::collections::BTreeMap;

use async_trait::async_trait;

use self::rollup::{MINUTE, ROLLED_FROM, Rollup};
use super::{Batch, Stored, Workload};
use crate::store::{
    Store, StoreError,
    sql::{Migration, Sql, Table, Type, Value},
};

/// The parser type, and the consumer group it runs as by default.
pub const GROUP: &str = "sensor";

/// A metric the demo's sensors report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    /// A typical reading.
    pub typical: f64,
    /// How far readings stray from it.
    pub spread: f64,
}

/// The metrics the demo's sensors (`generate sensors`, `send --kind
/// sensor`) report, which the dashboard aggregates when asked for none.
pub const DEMO_METRICS: [Metric; 3] = [
    Metric {
        name: "temperature",
        unit: "celsius",
        typical: 21.0,
        spread: 4.0,
    },
    Metric {
        name: "humidity",
        unit: "percent",
        typical: 45.0,
        spread: 15.0,
    },
    Metric {
        name: "pressure",
        unit: "hectopascal",
        typical: 1013.0,
        spread: 8.0,
    },
];

/// A sensor reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub sensor_id: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// When the sensor measured it (µs since the epoch).
    pub measured_at: i64,
}

/// The sensors workload.
pub struct Sensors;

const TABLE: &str = "
CREATE TABLE sensor_readings (
    parser TEXT NOT NULL,
    source TEXT NOT NULL,
    seq BIGINT NOT NULL,
    sensor_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    unit TEXT NOT NULL,
    measured_at BIGINT NOT NULL,
    PRIMARY KEY (parser, source, seq)
);
CREATE INDEX sensor_readings_by_metric ON sensor_readings (parser, metric, measured_at);";

/// The index the aggregates read instead of the table: the filter's
/// columns lead, so a time window is one range scan, and every column the
/// query reads follows, so no row of the table is visited. It replaces the
/// index on the filter columns alone, which is its prefix.
const COVERING_INDEX: &str = "
CREATE INDEX sensor_readings_covering
    ON sensor_readings (parser, metric, measured_at, value, sensor_id, unit);
DROP INDEX sensor_readings_by_metric;
";

/// SQLite only (migration 7): the readings rebuilt as one B-tree ordered
/// by time, `WITHOUT ROWID`.
///
/// Before it, each reading went into three: the table's rows by rowid, its
/// primary key, and the covering index the aggregates read. Clustered on
/// the covering index's leading columns, the table is that index: a time
/// window is one range scan of it, and a reading costs one insert near the
/// end of its metric's range instead of three. Its key no longer holds
/// `(parser, source, seq)` alone, which needs no constraint of its own: a
/// reading is written only for a record this transaction newly stored, and
/// `records` keeps that key unique. PostgreSQL keeps its heap, key and
/// covering index.
pub const SQLITE_READINGS_BY_TIME: Migration = Migration {
    version: 7,
    name: "sensor readings clustered by time",
    sql: "
CREATE TABLE sensor_readings_by_time (
    parser TEXT NOT NULL,
    metric TEXT NOT NULL,
    measured_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sensor_id TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    PRIMARY KEY (parser, metric, measured_at, source, seq)
) WITHOUT ROWID;
INSERT INTO sensor_readings_by_time (parser, metric, measured_at, source, seq, sensor_id, value, unit)
SELECT parser, metric, measured_at, source, seq, sensor_id, value, unit FROM sensor_readings;
DROP TABLE sensor_readings;
ALTER TABLE sensor_readings_by_time RENAME TO sensor_readings;
",
};

const READINGS: Table = Table {
    name: "sensor_readings",
    columns: &[
        ("parser", Type::Text),
        ("source", Type::Text),
        ("seq", Type::Int),
        ("sensor_id", Type::Text),
        ("metric", Type::Text),
        ("value", Type::Real),
        ("unit", Type::Text),
        ("measured_at", Type::Int),
    ],
    key: "parser, source, seq",
};

/// Aggregates of one metric: `$1` parser, `$2` metric, `$3` from, `$4` to.
///
/// Percentiles are nearest-rank (see [`crate::store::sql::nearest_rank_columns`]),
/// found with ROW_NUMBER and COUNT window functions.
fn aggregate_sql(group_by_sensor: bool) -> String {
    let group = if group_by_sensor { "sensor_id" } else { "''" };
    let partition = if group_by_sensor {
        "PARTITION BY sensor_id "
    } else {
        ""
    };
    format!(
        "WITH ranked AS (\
           SELECT {group} AS grp, value, unit, \
             ROW_NUMBER() OVER ({partition}ORDER BY value) AS rn, \
             COUNT(*) OVER ({partition}) AS n \
           FROM sensor_readings \
           WHERE parser = $1 AND metric = $2 AND measured_at >= $3 AND measured_at < $4\
         ) \
         SELECT grp, COUNT(*), AVG(value), MIN(value), MAX(value), {ranks}, MIN(unit) \
         FROM ranked GROUP BY grp ORDER BY grp",
        ranks = crate::store::sql::nearest_rank_columns("value", "rn", "n"),
    )
}

/// The metrics `$1` (a parser) has readings of, in order, at most `$2`: a
/// loose index scan over `sensor_readings_covering` (PostgreSQL) or the
/// time-ordered table (SQLite), both led by (parser, metric, …), that costs
/// one seek per metric, however many readings each has.
const SELECT_METRICS: &str = "
WITH RECURSIVE known(metric) AS (
    SELECT (SELECT min(metric) FROM sensor_readings WHERE parser = $1)
    UNION ALL
    SELECT (SELECT min(metric) FROM sensor_readings WHERE parser = $1 AND metric > known.metric)
    FROM known
    WHERE known.metric IS NOT NULL
)
SELECT metric FROM known WHERE metric IS NOT NULL LIMIT $2";

/// The most metrics [`metrics`] lists.
pub const MAX_LISTED_METRICS: i64 = 100;

#[async_trait]
impl Workload for Sensors {
    type Fact = Reading;

    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 2,
            name: "workloads",
            sql: TABLE,
        },
        Migration {
            version: 3,
            name: "aggregate covering index",
            sql: COVERING_INDEX,
        },
        Migration {
            version: 4,
            name: "sensor rollups",
            sql: rollup::TABLE,
        },
        Migration {
            version: 6,
            name: "sensor hourly rollups",
            sql: rollup::HOURLY_TABLE,
        },
    ];

    fn texts(fact: &Reading) -> Vec<(&'static str, &str)> {
        vec![
            ("sensor_id", &fact.sensor_id),
            ("metric", &fact.metric),
            ("unit", &fact.unit),
        ]
    }

    async fn write(
        sql: &mut dyn Sql,
        batch: Batch<'_>,
        facts: &[Stored<'_, Reading>],
    ) -> Result<(), StoreError> {
        let mut values = Vec::with_capacity(facts.len() * READINGS.columns.len());
        for Stored { record, fact } in facts {
            values.extend([
                Value::Text(batch.parser),
                Value::Text(&record.source),
                Value::Int(record.seq as i64),
                Value::Text(&fact.sensor_id),
                Value::Text(&fact.metric),
                Value::Real(fact.value),
                Value::Text(&fact.unit),
                Value::Int(fact.measured_at),
            ]);
        }
        sql.insert(&READINGS, &values).await?;
        rollup::write(sql, batch, facts).await
    }

    #[cfg(test)]
    fn conformance() -> Vec<super::Check> {
        vec![
            ("sensor aggregates match Rust", tests::aggregates_match_rust),
            ("sensor metrics are listed once", tests::metrics_listed_once),
        ]
    }
}

/// Selects sensor readings to aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateQuery {
    /// The sensor parser's consumer group.
    pub parser: String,
    /// The metric.
    pub metric: String,
    /// Measured at or after (µs).
    pub from: i64,
    /// Measured before (µs).
    pub to: i64,
    /// One group per sensor instead of one overall.
    pub group_by_sensor: bool,
}

/// Aggregates of one group of readings. Count, average, extremes and unit
/// are exact; percentiles are nearest-rank, exact or sketched (see
/// [`AggregateRow::percentiles_sketched`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRow {
    /// The sensor id when grouped, empty otherwise.
    pub sensor_id: String,
    pub count: u64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// The unit (the alphabetically first, should sensors disagree).
    pub unit: String,
    /// Whether the percentiles come from merged rollup sketches, each
    /// within [`rollup::RELATIVE_ERROR`] (1%) of the value at its nearest
    /// rank, rather than from the readings themselves.
    pub percentiles_sketched: bool,
}

/// At most this many readings in a range, percentiles are computed from the
/// readings (exact nearest rank): a few milliseconds' sort at that size.
pub const EXACT_UP_TO: u64 = 10_000;

/// Readings of one metric in the partial minutes at a range's edges,
/// `[$3, $4)` and `[$5, $6)`: `$1` parser, `$2` metric. Each half is a range
/// scan of `sensor_readings_covering` (PostgreSQL) or of the table itself
/// (SQLite, [`SQLITE_READINGS_BY_TIME`]).
const SELECT_EDGES: &str = "\
SELECT sensor_id, value, unit FROM sensor_readings \
WHERE parser = $1 AND metric = $2 AND measured_at >= $3 AND measured_at < $4 \
UNION ALL \
SELECT sensor_id, value, unit FROM sensor_readings \
WHERE parser = $1 AND metric = $2 AND measured_at >= $5 AND measured_at < $6";

/// The whole minutes inside `[from, to)` that rollups cover, as the
/// first minute's start and the end of the last; `None` when there is none.
fn whole_minutes(from: i64, to: i64) -> Option<(i64, i64)> {
    let minute = i128::from(MINUTE);
    let first = (i128::from(from) + minute - 1).div_euclid(minute) * minute;
    let first = first.max(i128::from(ROLLED_FROM));
    let end = i128::from(to).div_euclid(minute) * minute;
    // Both lie in [ROLLED_FROM, to] when first < end, so inside 64 bits.
    (first < end).then_some((first as i64, end as i64))
}

/// Aggregates of one sensor metric: from rollups and the readings at the
/// range's edges when the range holds a whole minute and more than
/// [`EXACT_UP_TO`] readings, from the readings alone otherwise.
pub async fn aggregate(
    store: &dyn Store,
    query: &AggregateQuery,
) -> Result<Vec<AggregateRow>, StoreError> {
    aggregate_with(store, query, EXACT_UP_TO).await
}

/// [`aggregate`], sketching percentiles above `exact_up_to` readings.
async fn aggregate_with(
    store: &dyn Store,
    query: &AggregateQuery,
    exact_up_to: u64,
) -> Result<Vec<AggregateRow>, StoreError> {
    let Some((first, end)) = whole_minutes(query.from, query.to) else {
        return exact(store, query).await;
    };
    let group = |sensor: String| {
        if query.group_by_sensor {
            sensor
        } else {
            String::new()
        }
    };
    let mut groups: BTreeMap<String, Rollup> = BTreeMap::new();
    for (sensor, rollup) in rollup::read(store, &query.parser, &query.metric, first, end).await? {
        groups.entry(group(sensor)).or_default().merge(&rollup)?;
    }
    let edges = [
        Value::Text(&query.parser),
        Value::Text(&query.metric),
        Value::Int(query.from),
        Value::Int(first),
        Value::Int(end),
        Value::Int(query.to),
    ];
    for row in store
        .read(SELECT_EDGES, &edges, &[Type::Text, Type::Real, Type::Text])
        .await?
    {
        groups
            .entry(group(row.text(0)?))
            .or_default()
            .add(row.real(1)?, &row.text(2)?);
    }
    let total: u64 = groups.values().map(|g| g.count).sum();
    // Minutes rolled up before sketches existed (migration 4) leave no
    // sketch to merge: their percentiles come from the readings.
    if total <= exact_up_to || groups.values().any(|g| g.sketch.is_none()) {
        return exact(store, query).await;
    }
    groups
        .into_iter()
        .filter(|(_, g)| g.count > 0)
        .map(|(sensor_id, g)| {
            let percentile = |p| {
                g.percentile(p)
                    .ok_or_else(|| StoreError::Data("a sensor rollup without a sketch".into()))
            };
            Ok(AggregateRow {
                sensor_id,
                count: g.count,
                avg: g.sum / g.count as f64,
                min: g.min,
                max: g.max,
                p50: percentile(50)?,
                p95: percentile(95)?,
                p99: percentile(99)?,
                unit: g.unit,
                percentiles_sketched: true,
            })
        })
        .collect()
}

/// Aggregates computed by the database from every reading in the range,
/// with exact nearest-rank percentiles.
async fn exact(store: &dyn Store, query: &AggregateQuery) -> Result<Vec<AggregateRow>, StoreError> {
    let params = [
        Value::Text(&query.parser),
        Value::Text(&query.metric),
        Value::Int(query.from),
        Value::Int(query.to),
    ];
    let types = [
        Type::Text,
        Type::Int,
        Type::Real,
        Type::Real,
        Type::Real,
        Type::Real,
        Type::Real,
        Type::Real,
        Type::Text,
    ];
    store
        .read(&aggregate_sql(query.group_by_sensor), &params, &types)
        .await?
        .iter()
        .map(|row| {
            Ok(AggregateRow {
                sensor_id: row.text(0)?,
                count: row.int(1)? as u64,
                avg: row.real(2)?,
                min: row.real(3)?,
                max: row.real(4)?,
                p50: row.real(5)?,
                p95: row.real(6)?,
                p99: row.real(7)?,
                unit: row.text(8)?,
                percentiles_sketched: false,
            })
        })
        .collect()
}

/// The sensor metrics `parser` has readings of, sorted, at most
/// [`MAX_LISTED_METRICS`].
pub async fn metrics(store: &dyn Store, parser: &str) -> Result<Vec<String>, StoreError> {
    store
        .read(
            SELECT_METRICS,
            &[Value::Text(parser), Value::Int(MAX_LISTED_METRICS)],
            &[Type::Text],
        )
        .await?
        .iter()
        .map(|row| row.text(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::store::{
        NewRecord,
        conformance::{batch, with_fact},
    };
    use crate::workloads::Fact;

    fn reading(seq: u64, sensor: &str, value: f64, measured_at: i64) -> NewRecord {
        with_fact(
            "s",
            seq,
            0,
            0,
            Fact::Reading(Reading {
                sensor_id: sensor.into(),
                metric: "temperature".into(),
                value,
                unit: "celsius".into(),
                measured_at,
            }),
        )
    }

    /// Nearest-rank percentiles computed by SQL match a sort in Rust.
    pub fn aggregates_match_rust(store: &dyn Store) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // 1..=200 for sensor a (shuffled order), 1000..=1009 for b, one
            // reading outside the time range.
            let mut records: Vec<NewRecord> = (1..=200)
                .map(|i| reading(i, "a", ((i * 37) % 200 + 1) as f64, 10))
                .collect();
            records.extend((0..10).map(|i| reading(1000 + i, "b", 1000.0 + i as f64, 20)));
            records.push(reading(5000, "a", -50.0, 99));
            store.write(&batch(GROUP, "w", records)).await.unwrap();
            let query = |group_by_sensor| AggregateQuery {
                parser: GROUP.into(),
                metric: "temperature".into(),
                from: 0,
                to: 50,
                group_by_sensor,
            };
            let grouped = aggregate(store, &query(true)).await.unwrap();
            assert_eq!(grouped.len(), 2);
            let a = &grouped[0];
            assert_eq!((a.sensor_id.as_str(), a.count), ("a", 200));
            assert_eq!((a.min, a.max, a.avg), (1.0, 200.0, 100.5));
            // Nearest rank: ceil(0.5*200)=100, ceil(0.95*200)=190, ceil(0.99*200)=198.
            assert_eq!((a.p50, a.p95, a.p99), (100.0, 190.0, 198.0));
            let b = &grouped[1];
            // ceil(0.5*10)=5 -> 1004, ceil(9.5)=10 -> 1009, ceil(9.9)=10 -> 1009.
            assert_eq!((b.count, b.p50, b.p95, b.p99), (10, 1004.0, 1009.0, 1009.0));
            let overall = aggregate(store, &query(false)).await.unwrap();
            assert_eq!(overall.len(), 1);
            let all = &overall[0];
            let mut values: Vec<f64> = (1..=200).map(f64::from).collect();
            values.extend((0..10).map(|i| 1000.0 + f64::from(i)));
            let rank = |p: usize| values[(values.len() * p).div_ceil(100) - 1];
            assert_eq!(
                (
                    all.sensor_id.as_str(),
                    all.count,
                    all.p50,
                    all.p95,
                    all.p99,
                    all.unit.as_str()
                ),
                ("", 210, rank(50), rank(95), rank(99), "celsius")
            );
        })
    }

    /// The metrics a parser has readings of are listed once each, in order,
    /// and only that parser's.
    pub fn metrics_listed_once(store: &dyn Store) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            assert!(metrics(store, GROUP).await.unwrap().is_empty());
            let records: Vec<NewRecord> = ["temperature", "humidity", "temperature", "pressure"]
                .into_iter()
                .enumerate()
                .map(|(seq, metric)| {
                    with_fact(
                        "s",
                        seq as u64,
                        0,
                        0,
                        Fact::Reading(Reading {
                            sensor_id: "a".into(),
                            metric: metric.into(),
                            value: 1.0,
                            unit: "u".into(),
                            measured_at: 10,
                        }),
                    )
                })
                .collect();
            store.write(&batch(GROUP, "w", records)).await.unwrap();
            store
                .write(&batch("other", "w", vec![reading(9, "a", 1.0, 10)]))
                .await
                .unwrap();
            assert_eq!(
                metrics(store, GROUP).await.unwrap(),
                ["humidity", "pressure", "temperature"]
            );
            assert_eq!(metrics(store, "other").await.unwrap(), ["temperature"]);
            assert!(metrics(store, "nobody").await.unwrap().is_empty());
        })
    }
}
