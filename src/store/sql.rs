//! The SQL text of the workload tables and their queries, written once for
//! both SQLite and PostgreSQL: `$n` placeholders (SQLite reads them as
//! numbered parameters), integer microseconds for time, explicit casts where
//! PostgreSQL would widen a sum to NUMERIC, and no `$n IS NULL` tests, whose
//! parameter type PostgreSQL cannot infer (open bounds are passed as
//! `i64::MIN` / `i64::MAX` instead).
//!
//! Each read comes back as a plain tuple (`sqlx::query_as`), which both
//! backends decode alike, and is turned into its row type here, once.

use super::{AggregateRow, AverageRow, LatencyRow, SmsRow};

/// The tables that hold what parsers derive from records (see
/// [`super::Fact`]). Each fact table is keyed like `records`, so a fact is
/// stored at most once per key even if a backend wrote it twice.
pub const WORKLOAD_TABLES: &str = "
CREATE TABLE average_partials (
    parser TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_ms BIGINT NOT NULL,
    writer TEXT NOT NULL,
    count BIGINT NOT NULL,
    sum BIGINT NOT NULL,
    PRIMARY KEY (parser, window_start, window_ms, writer)
);
CREATE TABLE probes (
    parser TEXT NOT NULL,
    source TEXT NOT NULL,
    seq BIGINT NOT NULL,
    number BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    stored_at BIGINT NOT NULL,
    PRIMARY KEY (parser, source, seq)
);
CREATE INDEX probes_by_sent_at ON probes (parser, sent_at);
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
CREATE INDEX sensor_readings_by_metric ON sensor_readings (parser, metric, measured_at);
CREATE TABLE sms_outcomes (
    parser TEXT NOT NULL,
    source TEXT NOT NULL,
    seq BIGINT NOT NULL,
    sender TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_us BIGINT NOT NULL,
    PRIMARY KEY (parser, source, seq)
);
";

/// The index `AggregateMetric` reads instead of the table: the filter's
/// columns lead, so a time window is one range scan, and every column the
/// query reads follows, so no row of the table is visited. It replaces the
/// index on the filter columns alone, which is its prefix. Percentiles still
/// need every value in the window: the cost grows with the window's rows.
pub const AGGREGATE_INDEX: &str = "
CREATE INDEX sensor_readings_covering
    ON sensor_readings (parser, metric, measured_at, value, sensor_id, unit);
DROP INDEX sensor_readings_by_metric;
";

/// One writer's partial for a window: `$1` parser, `$2` window start, `$3`
/// window ms, `$4` writer. Read, added to in Rust with a checked sum, and
/// written back with [`UPSERT_AVERAGE_PARTIAL`]: only its writer (one parser
/// instance, writing one batch at a time) ever touches the row, so the read
/// and the write cannot interleave with another's.
pub const SELECT_AVERAGE_PARTIAL: &str = "\
SELECT count, sum FROM average_partials \
WHERE parser = $1 AND window_start = $2 AND window_ms = $3 AND writer = $4";

/// Sets one writer's partial for a window: `$1` parser, `$2` window start,
/// `$3` window ms, `$4` writer, `$5` count, `$6` sum.
pub const UPSERT_AVERAGE_PARTIAL: &str = "\
INSERT INTO average_partials (parser, window_start, window_ms, writer, count, sum) \
VALUES ($1, $2, $3, $4, $5, $6) \
ON CONFLICT (parser, window_start, window_ms, writer) DO UPDATE SET \
count = excluded.count, sum = excluded.sum";

/// Heads of the multi-row fact inserts; the rows follow, then
/// [`ON_KEY_CONFLICT_SKIP`].
pub const INSERT_PROBES: &str =
    "INSERT INTO probes (parser, source, seq, number, sent_at, received_at, stored_at) ";
pub const INSERT_READINGS: &str = "INSERT INTO sensor_readings \
(parser, source, seq, sensor_id, metric, value, unit, measured_at) ";
pub const INSERT_SMS_OUTCOMES: &str =
    "INSERT INTO sms_outcomes (parser, source, seq, sender, outcome, duration_us) ";
pub const ON_KEY_CONFLICT_SKIP: &str = " ON CONFLICT (parser, source, seq) DO NOTHING";

/// Combined partials per window, newest first: `$1` parser, `$2` from,
/// `$3` to, `$4` limit. The sum of partial sums over the sum of partial
/// counts is the exact average of the window, however many writers
/// contributed.
pub const SELECT_AVERAGES: &str = "\
SELECT window_start, window_ms, CAST(SUM(count) AS BIGINT), CAST(SUM(sum) AS BIGINT) \
FROM average_partials \
WHERE parser = $1 AND window_start >= $2 AND window_start < $3 \
GROUP BY window_start, window_ms \
ORDER BY window_start DESC, window_ms \
LIMIT $4";

/// `$1` parser: highest number and count of every probe.
pub const SELECT_PROBE_TOTALS: &str = "SELECT MAX(number), COUNT(*) FROM probes WHERE parser = $1";

/// `$1` parser, `$2` window start, `$3` now: the recent probes' count and
/// average transit times (µs).
pub const SELECT_PROBE_WINDOW: &str = "\
SELECT COUNT(*), \
CAST(AVG(received_at - sent_at) AS DOUBLE PRECISION), \
CAST(AVG(stored_at - sent_at) AS DOUBLE PRECISION) \
FROM probes WHERE parser = $1 AND sent_at >= $2 AND sent_at <= $3";

/// Aggregates of one metric: `$1` parser, `$2` metric, `$3` from, `$4` to.
///
/// Percentiles are nearest-rank: the value at rank ceil(p/100 * n) in
/// ascending order, found with ROW_NUMBER and COUNT window functions.
/// `(n * p + 99) / 100` is that ceiling in integer arithmetic, which both
/// databases share (SQLite has no CEIL unless built with math functions).
pub fn aggregate(group_by_sensor: bool) -> String {
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
         SELECT grp, COUNT(*), AVG(value), MIN(value), MAX(value), \
           MIN(CASE WHEN rn = (n * 50 + 99) / 100 THEN value END), \
           MIN(CASE WHEN rn = (n * 95 + 99) / 100 THEN value END), \
           MIN(CASE WHEN rn = (n * 99 + 99) / 100 THEN value END), \
           MIN(unit) \
         FROM ranked GROUP BY grp ORDER BY grp"
    )
}

/// `$1` parser: per sender, messages sent, failed, and total send time.
pub const SELECT_SMS_PROGRESS: &str = "\
SELECT sender, \
CAST(SUM(CASE WHEN outcome = 'sent' THEN 1 ELSE 0 END) AS BIGINT), \
CAST(SUM(CASE WHEN outcome = 'sent' THEN 0 ELSE 1 END) AS BIGINT), \
CAST(SUM(duration_us) AS BIGINT) \
FROM sms_outcomes WHERE parser = $1 GROUP BY sender ORDER BY sender";

/// A row of [`SELECT_AVERAGES`].
pub type AverageTuple = (i64, i64, i64, i64);

pub fn average(row: AverageTuple) -> AverageRow {
    AverageRow {
        window_start: row.0,
        window_ms: row.1 as u32,
        count: row.2 as u64,
        sum: row.3,
    }
}

/// The rows of [`SELECT_PROBE_TOTALS`] and [`SELECT_PROBE_WINDOW`].
pub type ProbeTotalsTuple = (Option<i64>, i64);
pub type ProbeWindowTuple = (i64, Option<f64>, Option<f64>);

pub fn latency(totals: ProbeTotalsTuple, recent: ProbeWindowTuple) -> LatencyRow {
    LatencyRow {
        highest_number: totals.0.map(|n| n as u64),
        stored: totals.1 as u64,
        recent: recent.0 as u64,
        avg_to_ingest_us: recent.1,
        avg_to_store_us: recent.2,
    }
}

/// A row of [`aggregate`].
pub type AggregateTuple = (String, i64, f64, f64, f64, f64, f64, f64, String);

pub fn aggregate_row(row: AggregateTuple) -> AggregateRow {
    AggregateRow {
        sensor_id: row.0,
        count: row.1 as u64,
        avg: row.2,
        min: row.3,
        max: row.4,
        p50: row.5,
        p95: row.6,
        p99: row.7,
        unit: row.8,
    }
}

/// The metrics `$1` (a parser) has readings of, in order, at most
/// [`MAX_LISTED_METRICS`]: a loose index scan over
/// `sensor_readings_covering` (parser, metric, …) that costs one index seek
/// per metric, however many readings each has, on both backends.
pub const SELECT_METRICS: &str = "
WITH RECURSIVE known(metric) AS (
    SELECT (SELECT min(metric) FROM sensor_readings WHERE parser = $1)
    UNION ALL
    SELECT (SELECT min(metric) FROM sensor_readings WHERE parser = $1 AND metric > known.metric)
    FROM known
    WHERE known.metric IS NOT NULL
)
SELECT metric FROM known WHERE metric IS NOT NULL LIMIT $2";

/// The most metrics [`SELECT_METRICS`] lists.
pub const MAX_LISTED_METRICS: i64 = 100;

/// A row of [`SELECT_SMS_PROGRESS`].
pub type SmsTuple = (String, i64, i64, i64);

pub fn sms(row: SmsTuple) -> SmsRow {
    SmsRow {
        sender: row.0,
        sent: row.1 as u64,
        failed: row.2 as u64,
        total_us: row.3,
    }
}

/// The workload reads, written once: both backends run the same SQL and
/// decode the same tuples, and differ only in their pool type, which sqlx
/// cannot abstract over without a wall of trait bounds. Each backend
/// expands this into a private `reads` module and calls it from its
/// `Store` impl.
macro_rules! workload_reads {
    ($pool:ty) => {
        mod reads {
            use super::super::{
                AggregateQuery, AggregateRow, AverageFilter, AverageRow, LatencyRow, SmsRow,
                StoreError, sql,
            };

            fn unavailable(e: sqlx::Error) -> StoreError {
                StoreError::Unavailable(e.to_string())
            }

            pub async fn averages(
                pool: &$pool,
                filter: &AverageFilter,
            ) -> Result<Vec<AverageRow>, StoreError> {
                let rows: Vec<sql::AverageTuple> = sqlx::query_as(sql::SELECT_AVERAGES)
                    .bind(filter.parser.as_str())
                    .bind(filter.from)
                    .bind(filter.to)
                    .bind(i64::from(filter.limit))
                    .fetch_all(pool)
                    .await
                    .map_err(unavailable)?;
                Ok(rows.into_iter().map(sql::average).collect())
            }

            pub async fn latency(
                pool: &$pool,
                parser: &str,
                now: i64,
                window: i64,
            ) -> Result<LatencyRow, StoreError> {
                let totals = sqlx::query_as(sql::SELECT_PROBE_TOTALS).bind(parser);
                let recent = sqlx::query_as(sql::SELECT_PROBE_WINDOW)
                    .bind(parser)
                    .bind(now - window)
                    .bind(now);
                Ok(sql::latency(
                    totals.fetch_one(pool).await.map_err(unavailable)?,
                    recent.fetch_one(pool).await.map_err(unavailable)?,
                ))
            }

            pub async fn aggregate(
                pool: &$pool,
                query: &AggregateQuery,
            ) -> Result<Vec<AggregateRow>, StoreError> {
                let text = sqlx::AssertSqlSafe(sql::aggregate(query.group_by_sensor));
                let rows: Vec<sql::AggregateTuple> = sqlx::query_as(text)
                    .bind(query.parser.as_str())
                    .bind(query.metric.as_str())
                    .bind(query.from)
                    .bind(query.to)
                    .fetch_all(pool)
                    .await
                    .map_err(unavailable)?;
                Ok(rows.into_iter().map(sql::aggregate_row).collect())
            }

            pub async fn metrics(pool: &$pool, parser: &str) -> Result<Vec<String>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(sql::SELECT_METRICS)
                    .bind(parser)
                    .bind(sql::MAX_LISTED_METRICS)
                    .fetch_all(pool)
                    .await
                    .map_err(unavailable)?;
                Ok(rows.into_iter().map(|(metric,)| metric).collect())
            }

            pub async fn sms_progress(
                pool: &$pool,
                parser: &str,
            ) -> Result<Vec<SmsRow>, StoreError> {
                let rows: Vec<sql::SmsTuple> = sqlx::query_as(sql::SELECT_SMS_PROGRESS)
                    .bind(parser)
                    .fetch_all(pool)
                    .await
                    .map_err(unavailable)?;
                Ok(rows.into_iter().map(sql::sms).collect())
            }
        }
    };
}
pub(crate) use workload_reads;

/// Folds a batch's new numbers into this writer's partials, one window at a
/// time, with checked sums (see [`SELECT_AVERAGE_PARTIAL`]). A macro for the
/// same reason as [`workload_reads`]: only the connection type differs.
macro_rules! write_number_partials {
    ($tx:expr, $batch:expr, $new:expr, $is_data:expr) => {
        async {
            for (window, new) in super::number_partials($new) {
                let stored: Option<(i64, i64)> = sqlx::query_as(sql::SELECT_AVERAGE_PARTIAL)
                    .bind($batch.parser.as_str())
                    .bind(window.0)
                    .bind(i64::from(window.1))
                    .bind($batch.writer.as_str())
                    .fetch_optional(&mut *$tx)
                    .await
                    .map_err(|e| super::classify(e, $is_data))?;
                let (count, sum) = super::add_partial(window, stored, new)?;
                sqlx::query(sql::UPSERT_AVERAGE_PARTIAL)
                    .bind($batch.parser.as_str())
                    .bind(window.0)
                    .bind(i64::from(window.1))
                    .bind($batch.writer.as_str())
                    .bind(count)
                    .bind(sum)
                    .execute(&mut *$tx)
                    .await
                    .map_err(|e| super::classify(e, $is_data))?;
            }
            Ok::<(), StoreError>(())
        }
    };
}
pub(crate) use write_number_partials;

/// The store's migrations; `init` is the backend's own first schema, the
/// later steps are the same SQL on both backends.
pub(super) fn migrator(init: &'static str) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migration = |version, name: &str, sql: &'static str| {
        Migration::new(
            version,
            name.to_owned().into(),
            MigrationType::Simple,
            sqlx::SqlSafeStr::into_sql_str(sql),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(1, "init", init),
        migration(2, "workloads", WORKLOAD_TABLES),
        migration(3, "aggregate covering index", AGGREGATE_INDEX),
    ])
}
