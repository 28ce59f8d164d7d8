//! Per-minute and per-hour rollups of sensor readings, so that an aggregate
//! over a long range reads one row per hour, sensor and writer for the whole
//! hours in it and one per minute at its partial edge hours, instead of
//! every reading.
//!
//! A rollup holds the exact count, sum, minimum and maximum of its
//! readings and a DDSketch of their values: sketches merge without loss, and
//! a quantile read from one lies within [`RELATIVE_ERROR`] of the true
//! value at the asked rank. Negative values (temperatures) are kept in the
//! sketch's own negative store, so the bound holds for them too.
//!
//! Like `average_partials`, each writer (one parser instance) keeps its own
//! rows and reads, merges and rewrites them inside its write transaction:
//! no other writer touches them, so replicas never contend and a
//! redelivered record, which is not newly stored, never counts twice. Both
//! levels are rewritten in that one transaction, so an hour's rows always
//! hold exactly what its minutes' rows hold.

use std::collections::{BTreeMap, BTreeSet};

use sketches_ddsketch::{Config, DDSketch};

use super::Reading;
use crate::store::{
    StoreError,
    sql::{Row, Sql, Table, Type, Value},
};
use crate::workloads::{Batch, Stored};

/// The length of a minute rollup's time bucket (µs).
pub const MINUTE: i64 = 60_000_000;

/// The length of an hour rollup's time bucket (µs).
pub const HOUR: i64 = 60 * MINUTE;

/// How far a sketched percentile may lie from the value at its nearest
/// rank, relative to that value: within 1%. (DDSketch's α; the sketch's
/// buckets grow by a factor (1 + α) / (1 − α).)
pub const RELATIVE_ERROR: f64 = 0.01;

/// The most buckets a sketch keeps per sign: 2,048 buckets of 2% cover
/// values from 1e-9 to 1e9 in magnitude before the smallest collapse.
const MAX_BUCKETS: u32 = 2048;

/// Magnitudes below this count as zero in a sketch (and read back as 0).
const SMALLEST: f64 = 1e-9;

/// Rolls up the readings already stored: rows written by
/// `(before rollups)`, which no parser instance is named, so they are never
/// rewritten; they have no sketch, and an aggregate over them computes its
/// percentiles from the readings. The minute is the euclidean floor of
/// `measured_at` (`%` truncates toward zero on both databases, hence the
/// double modulo); readings before [`ROLLED_FROM`] stay raw.
macro_rules! backfill {
    () => {
        "
INSERT INTO sensor_rollups (parser, metric, minute, sensor_id, writer, count, sum, min, max, unit, sketch)
SELECT parser, metric, measured_at - ((measured_at % 60000000) + 60000000) % 60000000 AS minute,
       sensor_id, '(before rollups)', COUNT(*), SUM(value), MIN(value), MAX(value), MIN(unit), NULL
FROM sensor_readings
WHERE measured_at >= -9223371999960000000
GROUP BY parser, metric, measured_at - ((measured_at % 60000000) + 60000000) % 60000000, sensor_id;
"
    };
}

/// Rolls the minute rollups already stored up into hours (migration 6),
/// as `(before hourly rollups)`, without a sketch: SQL cannot merge the
/// minutes' sketches, so an aggregate that meets such an hour reads the
/// hour's minute rows instead (see [`read`]). The hour is the euclidean
/// floor of the minute; minutes before [`HOURS_ROLLED_FROM`] stay in minute
/// rows only.
macro_rules! hourly_backfill {
    () => {
        "
INSERT INTO sensor_hourly_rollups (parser, metric, hour, sensor_id, writer, count, sum, min, max, unit, sketch)
SELECT parser, metric, minute - ((minute % 3600000000) + 3600000000) % 3600000000 AS hour,
       sensor_id, '(before hourly rollups)', SUM(count), SUM(sum), MIN(min), MAX(max), MIN(unit), NULL
FROM sensor_rollups
WHERE minute >= -9223371997200000000
GROUP BY parser, metric, minute - ((minute % 3600000000) + 3600000000) % 3600000000, sensor_id;
"
    };
}

/// [`backfill!`]'s and [`hourly_backfill!`]'s statements, for readings
/// written into `sensor_readings` by other means than the store (a
/// benchmark's bulk load): their minute rollups, then those minutes' hours.
pub const BACKFILL: &str = concat!(backfill!(), hourly_backfill!());

/// [`hourly_backfill!`]'s statement alone, as migration 6 runs it.
#[cfg(test)]
pub(super) const HOURLY_BACKFILL: &str = hourly_backfill!();

/// Migration 4: the rollups table, and the rollups of readings already
/// stored.
pub(super) const TABLE: &str = concat!(
    "
CREATE TABLE sensor_rollups (
    parser TEXT NOT NULL,
    metric TEXT NOT NULL,
    minute BIGINT NOT NULL,
    sensor_id TEXT NOT NULL,
    writer TEXT NOT NULL,
    count BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    unit TEXT NOT NULL,
    sketch BYTEA,
    PRIMARY KEY (parser, metric, minute, sensor_id, writer)
);",
    backfill!()
);

/// Migration 6: the hour rollups table, and the hours of the minute
/// rollups already stored.
pub(super) const HOURLY_TABLE: &str = concat!(
    "
CREATE TABLE sensor_hourly_rollups (
    parser TEXT NOT NULL,
    metric TEXT NOT NULL,
    hour BIGINT NOT NULL,
    sensor_id TEXT NOT NULL,
    writer TEXT NOT NULL,
    count BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    unit TEXT NOT NULL,
    sketch BYTEA,
    PRIMARY KEY (parser, metric, hour, sensor_id, writer)
);",
    hourly_backfill!()
);

/// A level of rollups: minutes or hours.
struct Level {
    table: Table,
    /// Readings measured before this are not rolled up at this level.
    from: i64,
    /// One writer's rows of a metric over a span of buckets: `$1` parser,
    /// `$2` metric, `$3` first bucket, `$4` last bucket, `$5` writer.
    select_own: &'static str,
}

/// A rollups table's columns; `bucket` names its time bucket's column.
const fn columns(bucket: &'static str) -> [(&'static str, Type); 11] {
    [
        ("parser", Type::Text),
        ("metric", Type::Text),
        (bucket, Type::Int),
        ("sensor_id", Type::Text),
        ("writer", Type::Text),
        ("count", Type::Int),
        ("sum", Type::Real),
        ("min", Type::Real),
        ("max", Type::Real),
        ("unit", Type::Text),
        ("sketch", Type::Blob),
    ]
}

const MINUTES: Level = Level {
    table: Table {
        name: "sensor_rollups",
        columns: &columns("minute"),
        key: "parser, metric, minute, sensor_id, writer",
    },
    from: ROLLED_FROM,
    select_own: "\
SELECT minute, sensor_id, count, sum, min, max, unit, sketch FROM sensor_rollups \
WHERE parser = $1 AND metric = $2 AND minute >= $3 AND minute <= $4 AND writer = $5",
};

const HOURS: Level = Level {
    table: Table {
        name: "sensor_hourly_rollups",
        columns: &columns("hour"),
        key: "parser, metric, hour, sensor_id, writer",
    },
    from: HOURS_ROLLED_FROM,
    select_own: "\
SELECT hour, sensor_id, count, sum, min, max, unit, sketch FROM sensor_hourly_rollups \
WHERE parser = $1 AND metric = $2 AND hour >= $3 AND hour <= $4 AND writer = $5",
};

/// Every writer's minute rollups of a metric for the minutes starting in
/// [`$3`, `$4`): `$1` parser, `$2` metric.
const SELECT_MINUTES: &str = "\
SELECT minute, sensor_id, count, sum, min, max, unit, sketch FROM sensor_rollups \
WHERE parser = $1 AND metric = $2 AND minute >= $3 AND minute < $4";

/// Every writer's rollups of a metric for the hours starting in [`$3`,
/// `$4`) and the minutes starting in [`$5`, `$6`) and [`$7`, `$8`): `$1`
/// parser, `$2` metric. Each part is a range scan of its table's key.
const SELECT_SPANS: &str = "\
SELECT hour, sensor_id, count, sum, min, max, unit, sketch FROM sensor_hourly_rollups \
WHERE parser = $1 AND metric = $2 AND hour >= $3 AND hour < $4 \
UNION ALL \
SELECT minute, sensor_id, count, sum, min, max, unit, sketch FROM sensor_rollups \
WHERE parser = $1 AND metric = $2 AND minute >= $5 AND minute < $6 \
UNION ALL \
SELECT minute, sensor_id, count, sum, min, max, unit, sketch FROM sensor_rollups \
WHERE parser = $1 AND metric = $2 AND minute >= $7 AND minute < $8";

const COLUMNS: [Type; 8] = [
    Type::Int,
    Type::Text,
    Type::Int,
    Type::Real,
    Type::Real,
    Type::Real,
    Type::Text,
    Type::Blob,
];

/// Readings measured before this minute (in the year 290,000 BC) are never
/// rolled up, and a query reads them raw: the minute arithmetic of every
/// rolled reading then stays inside 64 bits, and the literal reads as an
/// integer in SQLite (which parses one beyond −(2^63 − 2^25) as a float).
pub const ROLLED_FROM: i64 = -9_223_371_999_960_000_000;

/// Readings measured before this hour, the first after [`ROLLED_FROM`],
/// are rolled up in minutes only, so that an hour row holds whole hours.
pub const HOURS_ROLLED_FROM: i64 = -9_223_371_997_200_000_000;

// The first whole hour of minute rows: an hour boundary at or after
// ROLLED_FROM, less than an hour after it.
const _: () = assert!(
    HOURS_ROLLED_FROM % HOUR == 0
        && HOURS_ROLLED_FROM >= ROLLED_FROM
        && HOURS_ROLLED_FROM - HOUR < ROLLED_FROM
);

/// The start of the minute holding `at`.
pub fn minute_of(at: i64) -> i64 {
    at.saturating_sub(at.rem_euclid(MINUTE))
}

/// The start of the hour holding `at`.
pub fn hour_of(at: i64) -> i64 {
    at.saturating_sub(at.rem_euclid(HOUR))
}

/// The whole hours inside the minute-aligned span `[first, end)` that hour
/// rollups cover, as the first hour's start and the end of the last;
/// `None` when there is none.
pub fn whole_hours(first: i64, end: i64) -> Option<(i64, i64)> {
    let hour = i128::from(HOUR);
    let start = (i128::from(first) + hour - 1).div_euclid(hour) * hour;
    let start = start.max(i128::from(HOURS_ROLLED_FROM));
    let stop = i128::from(end).div_euclid(hour) * hour;
    // Both lie in [HOURS_ROLLED_FROM, end] when start < stop.
    (start < stop).then_some((start as i64, stop as i64))
}

/// Aggregates of a set of readings: exact count, sum and extremes, and a
/// sketch of their values (`None` when some of them were rolled up before
/// sketches existed).
#[derive(Clone)]
pub struct Rollup {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// The alphabetically first unit, as the exact aggregate's `MIN(unit)`.
    pub unit: String,
    pub sketch: Option<DDSketch>,
}

impl Default for Rollup {
    fn default() -> Self {
        Rollup {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            unit: String::new(),
            sketch: Some(DDSketch::new(config())),
        }
    }
}

fn config() -> Config {
    Config::new(RELATIVE_ERROR, MAX_BUCKETS, SMALLEST)
}

impl Rollup {
    /// Counts one reading in.
    pub fn add(&mut self, value: f64, unit: &str) {
        self.take_unit(unit);
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if let Some(sketch) = &mut self.sketch {
            sketch.add(value);
        }
    }

    /// Counts another rollup's readings in.
    pub fn merge(&mut self, other: &Rollup) -> Result<(), StoreError> {
        if other.count == 0 {
            return Ok(());
        }
        self.take_unit(&other.unit);
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch = match (self.sketch.take(), &other.sketch) {
            (Some(mut mine), Some(theirs)) => {
                mine.merge(theirs)
                    .map_err(|e| StoreError::Data(format!("sensor rollup: {e}")))?;
                Some(mine)
            }
            _ => None,
        };
        Ok(())
    }

    fn take_unit(&mut self, unit: &str) {
        if self.count == 0 || unit < self.unit.as_str() {
            unit.clone_into(&mut self.unit);
        }
    }

    /// The value at nearest rank ceil(p/100 · count), within
    /// [`RELATIVE_ERROR`] of it; `None` without a sketch.
    pub fn percentile(&self, p: u32) -> Option<f64> {
        let sketch = self.sketch.as_ref()?;
        if self.count == 0 {
            return Some(0.0);
        }
        // The sketch reads rank floor(q · (n − 1)) (0-based); aiming half a
        // rank above the wanted one keeps float rounding off the floor.
        let rank = (self.count * u64::from(p)).div_ceil(100).max(1) - 1;
        let q = if rank + 1 >= self.count {
            1.0
        } else {
            (rank as f64 + 0.5) / (self.count - 1) as f64
        };
        let value = sketch.quantile(q).ok().flatten()?;
        // The true value lies within the exact extremes; so does the
        // answer, which only brings it closer.
        Some(value.clamp(self.min, self.max))
    }

    /// Reads a row of [`COLUMNS`] from column 2 on.
    fn from_row(row: &Row) -> Result<Rollup, StoreError> {
        let count = u64::try_from(row.int(2)?)
            .map_err(|_| StoreError::Data("a sensor rollup counts below zero".into()))?;
        let blob = row.blob(7)?;
        let sketch = if blob.is_empty() {
            None
        } else {
            let sketch: DDSketch = postcard::from_bytes(blob)
                .map_err(|e| StoreError::Data(format!("a sensor rollup's sketch: {e}")))?;
            // A sketch from another configuration would fail to merge, and
            // one that disagrees with its row was not written by us.
            if sketch.count() as u64 != count {
                return Err(StoreError::Data(format!(
                    "a sensor rollup's sketch counts {} readings, its row {count}",
                    sketch.count()
                )));
            }
            Some(sketch)
        };
        Ok(Rollup {
            count,
            sum: row.real(3)?,
            min: row.real(4)?,
            max: row.real(5)?,
            unit: row.text(6)?,
            sketch,
        })
    }

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        match &self.sketch {
            Some(sketch) => postcard::to_allocvec(sketch)
                .map_err(|e| StoreError::Data(format!("encoding a sensor rollup: {e}"))),
            None => Ok(Vec::new()),
        }
    }
}

/// A rollup's place: metric, minute, sensor.
type Key<'a> = (&'a str, i64, &'a str);

/// Counts newly stored readings into their writer's minute and hour
/// rollups.
pub(super) async fn write(
    sql: &mut dyn Sql,
    batch: Batch<'_>,
    facts: &[Stored<'_, Reading>],
) -> Result<(), StoreError> {
    let mut minutes: BTreeMap<Key<'_>, Rollup> = BTreeMap::new();
    for Stored { fact, .. } in facts.iter().filter(|s| s.fact.measured_at >= MINUTES.from) {
        let key = (
            fact.metric.as_str(),
            minute_of(fact.measured_at),
            fact.sensor_id.as_str(),
        );
        minutes.entry(key).or_default().add(fact.value, &fact.unit);
    }
    // The batch's hours from its minutes: merging a few sketches costs
    // less than adding every reading to a second one.
    let mut hours: BTreeMap<Key<'_>, Rollup> = BTreeMap::new();
    for ((metric, minute, sensor), rollup) in &minutes {
        if *minute >= HOURS.from {
            hours
                .entry((metric, hour_of(*minute), sensor))
                .or_default()
                .merge(rollup)?;
        }
    }
    rewrite(sql, batch, &MINUTES, minutes).await?;
    rewrite(sql, batch, &HOURS, hours).await
}

/// Merges the writer's stored rows of `level` into `new` and writes the
/// result back.
async fn rewrite(
    sql: &mut dyn Sql,
    batch: Batch<'_>,
    level: &Level,
    mut new: BTreeMap<Key<'_>, Rollup>,
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    // One read per metric of the writer's rows over the batch's buckets.
    let mut spans: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut sensors: BTreeSet<&str> = BTreeSet::new();
    for (metric, bucket, sensor) in new.keys() {
        sensors.insert(sensor);
        let span = spans.entry(metric).or_insert((*bucket, *bucket));
        span.0 = span.0.min(*bucket);
        span.1 = span.1.max(*bucket);
    }
    for (metric, (first, last)) in spans {
        let params = [
            Value::Text(batch.parser),
            Value::Text(metric),
            Value::Int(first),
            Value::Int(last),
            Value::Text(batch.writer),
        ];
        for row in sql.fetch(level.select_own, &params, &COLUMNS).await? {
            let (bucket, sensor) = (row.int(0)?, row.text(1)?);
            let Some(sensor) = sensors.get(sensor.as_str()) else {
                continue;
            };
            if let Some(rollup) = new.get_mut(&(metric, bucket, *sensor)) {
                rollup.merge(&Rollup::from_row(&row)?)?;
            }
        }
    }
    let sketches: Vec<Vec<u8>> = new.values().map(Rollup::encode).collect::<Result<_, _>>()?;
    let mut values = Vec::with_capacity(new.len() * level.table.columns.len());
    for (((metric, bucket, sensor), rollup), sketch) in new.iter().zip(&sketches) {
        let count = i64::try_from(rollup.count)
            .map_err(|_| StoreError::Data("a sensor rollup past 2^63 readings".into()))?;
        values.extend([
            Value::Text(batch.parser),
            Value::Text(metric),
            Value::Int(*bucket),
            Value::Text(sensor),
            Value::Text(batch.writer),
            Value::Int(count),
            Value::Real(rollup.sum),
            Value::Real(rollup.min),
            Value::Real(rollup.max),
            Value::Text(&rollup.unit),
            Value::Blob(sketch),
        ]);
    }
    sql.upsert(&level.table, &values).await
}

/// Every writer's rollups of `metric` for the minutes starting in
/// `[first, end)` (both minute starts), merged per sensor: hour rows for
/// the whole hours inside, minute rows for the rest.
///
/// An hour rolled up by migration 6 has no sketch, though its minutes may
/// have theirs: meeting one, the span is read again from minute rows alone,
/// which sketch exactly when every minute does.
pub(super) async fn read(
    store: &dyn crate::store::Store,
    parser: &str,
    metric: &str,
    first: i64,
    end: i64,
) -> Result<BTreeMap<String, Rollup>, StoreError> {
    // Without a whole hour, an empty hour span and all minutes in the
    // second minute span.
    let (start, stop) = whole_hours(first, end).unwrap_or((first, first));
    let params = [
        Value::Text(parser),
        Value::Text(metric),
        Value::Int(start),
        Value::Int(stop),
        Value::Int(first),
        Value::Int(start),
        Value::Int(stop),
        Value::Int(end),
    ];
    let mut merged: BTreeMap<String, Rollup> = BTreeMap::new();
    for row in store.read(SELECT_SPANS, &params, &COLUMNS).await? {
        let rollup = Rollup::from_row(&row)?;
        // The spans are disjoint: a bucket among the hours is an hour row.
        let bucket = row.int(0)?;
        if rollup.sketch.is_none() && (start..stop).contains(&bucket) {
            return read_minutes(store, parser, metric, first, end).await;
        }
        merged.entry(row.text(1)?).or_default().merge(&rollup)?;
    }
    Ok(merged)
}

/// Every writer's minute rollups of `metric` for the minutes starting in
/// `[first, end)`, merged per sensor.
async fn read_minutes(
    store: &dyn crate::store::Store,
    parser: &str,
    metric: &str,
    first: i64,
    end: i64,
) -> Result<BTreeMap<String, Rollup>, StoreError> {
    let params = [
        Value::Text(parser),
        Value::Text(metric),
        Value::Int(first),
        Value::Int(end),
    ];
    let mut merged: BTreeMap<String, Rollup> = BTreeMap::new();
    for row in store.read(SELECT_MINUTES, &params, &COLUMNS).await? {
        merged
            .entry(row.text(1)?)
            .or_default()
            .merge(&Rollup::from_row(&row)?)?;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_floor_below_zero_too() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(MINUTE - 1), 0);
        assert_eq!(minute_of(-1), -MINUTE);
        assert_eq!(minute_of(ROLLED_FROM), ROLLED_FROM);
        assert_eq!(minute_of(i64::MAX) % MINUTE, 0);
    }

    #[test]
    fn hours_floor_below_zero_too() {
        assert_eq!(hour_of(0), 0);
        assert_eq!(hour_of(HOUR - 1), 0);
        assert_eq!(hour_of(-1), -HOUR);
        assert_eq!(hour_of(-HOUR), -HOUR);
        assert_eq!(hour_of(-HOUR - 1), -2 * HOUR);
        assert_eq!(hour_of(i64::MAX) % HOUR, 0);
        // The first hour rolled up is the first whole hour of minute rows.
        assert_eq!(hour_of(HOURS_ROLLED_FROM), HOURS_ROLLED_FROM);
        assert_eq!(minute_of(HOURS_ROLLED_FROM), HOURS_ROLLED_FROM);
        // The hourly backfill's literal and euclidean floor are these.
        assert!(hourly_backfill!().contains(&HOURS_ROLLED_FROM.to_string()));
        assert!(hourly_backfill!().contains(&format!("% {HOUR}) + {HOUR}) % {HOUR}")));
    }

    #[test]
    fn whole_hours_lie_inside_their_minutes() {
        assert_eq!(whole_hours(0, HOUR), Some((0, HOUR)));
        assert_eq!(whole_hours(MINUTE, HOUR), None);
        assert_eq!(whole_hours(0, HOUR - MINUTE), None);
        assert_eq!(
            whole_hours(MINUTE, 3 * HOUR - MINUTE),
            Some((HOUR, 2 * HOUR))
        );
        assert_eq!(whole_hours(-HOUR - MINUTE, MINUTE), Some((-HOUR, 0)));
        let top = minute_of(i64::MAX);
        assert_eq!(
            whole_hours(ROLLED_FROM, top),
            Some((HOURS_ROLLED_FROM, hour_of(top)))
        );
        assert_eq!(whole_hours(ROLLED_FROM, HOURS_ROLLED_FROM), None);
    }

    #[test]
    fn sketched_percentiles_of_negative_values_keep_their_bound() {
        let mut rollup = Rollup::default();
        let values: Vec<f64> = (-500..500).map(|i| f64::from(i) / 7.0).collect();
        for v in values.iter().rev() {
            rollup.add(*v, "celsius");
        }
        let encoded = rollup.encode().unwrap();
        assert!(encoded.len() < 2_000, "{} bytes", encoded.len());
        for p in [1, 50, 95, 99, 100] {
            let exact = values[(values.len() * p as usize).div_ceil(100) - 1];
            let sketched = rollup.percentile(p).unwrap();
            assert!(
                (sketched - exact).abs() <= RELATIVE_ERROR * exact.abs() + 1e-12,
                "p{p}: {sketched} against {exact}"
            );
        }
    }
}
