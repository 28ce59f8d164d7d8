//! The SQLite store: one file in WAL mode with `synchronous=FULL`, so a
//! committed batch (and with it a parser's ack) survives a crash.
//!
//! SQLite takes one writer at a time, so writes go through a single
//! connection and reads through a small pool that WAL lets run alongside.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use async_trait::async_trait;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, sqlite::SqlitePoolOptions};

use super::{
    Counts, DeadLetterFilter, DeadLetterRow, FieldAggregates, FieldQuery, NewRecord, RecordFilter,
    Store, StoreError, StoredRow, WriteBatch, Written, fields,
    sql::{self, Existing, Sql, Table, Type, Value},
};
use crate::{clock, workloads};

/// The most rows one INSERT of records takes (9 bound values each, far
/// under SQLite's limit of 32,766 variables per statement).
const ROWS_PER_INSERT: usize = 512;

const INIT: &str = "
CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    parser TEXT NOT NULL,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (parser, source, seq)
);
CREATE TABLE parser_counts (
    parser TEXT PRIMARY KEY,
    stored INTEGER NOT NULL
);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY,
    parser TEXT NOT NULL,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    body BLOB NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    dead_at INTEGER NOT NULL,
    UNIQUE (parser, source, seq)
);
";

/// This backend's own schema steps: the JSON document of each JSON record
/// (text holding JSON, read with SQLite's JSON functions) and the partial
/// index field aggregation scans, which holds JSON records only.
/// Then the sensor readings as one B-tree ordered by time
/// ([`workloads::sensors::SQLITE_READINGS_BY_TIME`]).
const OWN_MIGRATIONS: &[sql::Migration] = &[
    sql::Migration {
        version: 5,
        name: "json documents",
        sql: "
ALTER TABLE records ADD COLUMN doc TEXT;
CREATE INDEX records_doc ON records (parser, sent_at) WHERE doc IS NOT NULL;
",
    },
    workloads::sensors::SQLITE_READINGS_BY_TIME,
];

/// How SQLite reads JSON for field aggregation: `json_type` tells
/// `integer`/`real` apart from the rest, and `->` gives a value's JSON
/// text.
const DIALECT: fields::Dialect = fields::Dialect {
    field_type: "json_type(doc, $2)",
    numeric_types: "('integer', 'real')",
    field_value: "CAST(json_extract(doc, $2) AS REAL)",
    group_text: "(doc -> $5)",
    sqlite_paths: true,
    byte_order: "",
};

/// The SQLite-backed store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = crate::sqlite::options(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
        })?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        sql::migrator(INIT, OWN_MIGRATIONS)?
            .run(&writer)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;
        Ok(Self { writer, reader })
    }
}

/// SQLite's limit of bound variables per statement.
const MAX_VARIABLES: usize = 32_766;

/// The row counts of the INSERT statements that write `rows` rows, at most
/// `max` each: as many `max` as fit, then the rest in falling powers of two.
///
/// Every statement text is kept prepared in the connection's cache, keyed
/// by its text, and a many-row INSERT's text follows its row count. Cut at
/// whatever count a batch happens to have, every batch would bring new
/// texts, each parsed anew (a 3,000-row statement takes longer to parse
/// than to run) and pushing the last out of the cache; cut this way, a
/// table only ever sees `log2(max) + 2` texts.
fn statement_sizes(rows: usize, max: usize) -> impl Iterator<Item = usize> {
    let max = max.max(1);
    let rest = rows % max;
    std::iter::repeat_n(max, rows / max).chain(
        (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(move |size| rest & size != 0),
    )
}

/// `head` followed by ` VALUES` and `rows` rows of `width` placeholders.
/// Written out directly: sqlx's `QueryBuilder` formats each placeholder
/// through `fmt`, which under load cost more than the binding itself.
fn values_sql(head: &str, width: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(","));
    let mut text = String::with_capacity(head.len() + 8 + rows * (row.len() + 1));
    text.push_str(head);
    text.push_str(" VALUES ");
    for i in 0..rows {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&row);
    }
    text
}

/// The sources of one write, each bound as one shared string: a batch's
/// records mostly come from a few producers, and binding a `&str` copies
/// it into a new allocation per row.
#[derive(Default)]
struct Sources<'a> {
    last: Option<(&'a str, Arc<str>)>,
}

impl<'a> Sources<'a> {
    fn of(&mut self, source: &'a str) -> Arc<str> {
        match &self.last {
            Some((name, shared)) if *name == source => shared.clone(),
            _ => {
                let shared: Arc<str> = Arc::from(source);
                self.last = Some((source, shared.clone()));
                shared
            }
        }
    }
}

/// The texts of one statement, each distinct one bound as one shared
/// string: sqlx copies a bound `&str` into two new allocations, and a
/// workload's rows repeat a few texts (parser, writer, metric, unit,
/// sensor) in every row.
#[derive(Default)]
struct Texts<'a> {
    seen: HashMap<&'a str, Arc<str>>,
}

impl<'a> Texts<'a> {
    fn of(&mut self, text: &'a str) -> Arc<str> {
        self.seen
            .entry(text)
            .or_insert_with(|| Arc::from(text))
            .clone()
    }
}

/// Cuts `items` into consecutive slices of [`statement_sizes`].
fn statement_chunks<T>(mut items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    statement_sizes(items.len(), max).map(move |size| {
        let (head, tail) = items.split_at(size);
        items = tail;
        head
    })
}

/// A SQLite connection running the workloads' SQL; `fail` classifies its
/// errors (a write's are classified, a read's are all unavailable).
struct Connection<'c> {
    conn: &'c mut SqliteConnection,
    fail: fn(sqlx::Error) -> StoreError,
}

type Arguments<'q> = <Sqlite as sqlx::Database>::Arguments;
type Query<'q> = sqlx::query::Query<'q, Sqlite, Arguments<'q>>;

fn bind<'q>(query: Query<'q>, value: &Value<'q>) -> Query<'q> {
    match *value {
        Value::Int(v) => query.bind(v),
        Value::Real(v) => query.bind(v),
        Value::Text(v) => query.bind(v),
        Value::Blob(v) => query.bind(v),
    }
}

#[async_trait]
impl Sql for Connection<'_> {
    async fn execute(&mut self, text: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let query = params
            .iter()
            .fold(sqlx::query(sqlx::AssertSqlSafe(text)), bind);
        Ok(query
            .execute(&mut *self.conn)
            .await
            .map_err(self.fail)?
            .rows_affected())
    }

    async fn fetch(
        &mut self,
        text: &str,
        params: &[Value<'_>],
        types: &[Type],
    ) -> Result<Vec<sql::Row>, StoreError> {
        let query = params
            .iter()
            .fold(sqlx::query(sqlx::AssertSqlSafe(text)), bind);
        let rows = query.fetch_all(&mut *self.conn).await.map_err(self.fail)?;
        rows.iter()
            .map(|row| sql::decode(row, types).map_err(self.fail))
            .collect()
    }

    async fn insert(&mut self, table: &Table, values: &[Value<'_>]) -> Result<(), StoreError> {
        self.insert_rows(table, values, Existing::Skip).await
    }

    async fn upsert(&mut self, table: &Table, values: &[Value<'_>]) -> Result<(), StoreError> {
        self.insert_rows(table, values, Existing::Replace).await
    }
}

impl Connection<'_> {
    /// A many-row insert, in statements of at most [`MAX_VARIABLES`]
    /// bound values.
    async fn insert_rows(
        &mut self,
        table: &Table,
        values: &[Value<'_>],
        existing: Existing,
    ) -> Result<(), StoreError> {
        let width = table.columns.len().max(1);
        let columns: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
        let head = format!("INSERT INTO {} ({})", table.name, columns.join(", "));
        let tail = table.on_conflict(existing);
        let rows: Vec<&[Value<'_>]> = values.chunks(width).collect();
        let max_rows = (MAX_VARIABLES / width).min(ROWS_PER_INSERT);
        for chunk in statement_chunks(&rows, max_rows) {
            let mut text = values_sql(&head, width, chunk.len());
            text.push_str(&tail);
            let mut texts = Texts::default();
            let query = chunk.iter().flat_map(|row| row.iter()).fold(
                sqlx::query(sqlx::AssertSqlSafe(text)),
                |query, value| match *value {
                    Value::Text(v) => query.bind(texts.of(v)),
                    _ => bind(query, value),
                },
            );
            query.execute(&mut *self.conn).await.map_err(self.fail)?;
        }
        Ok(())
    }
}

/// The INSERTs of `records` (with their JSON documents `docs`) into
/// `records`, skipping keys the parser already stored.
fn record_inserts<'q>(
    batch: &WriteBatch,
    records: &[&'q NewRecord],
    docs: &'q [Option<String>],
    stored_at: i64,
) -> Vec<Query<'q>> {
    // Shared rather than copied into every row's arguments.
    let parser: Arc<str> = Arc::from(batch.parser.as_str());
    let mut sources = Sources::default();
    statement_chunks(records, ROWS_PER_INSERT)
        .zip(statement_chunks(docs, ROWS_PER_INSERT))
        .map(|(chunk, docs)| {
            let mut text = values_sql(
                "INSERT INTO records (parser, source, seq, kind, sent_at, received_at, stored_at, body, doc)",
                9,
                chunk.len(),
            );
            text.push_str(" ON CONFLICT (parser, source, seq) DO NOTHING");
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(text));
            for (r, doc) in chunk.iter().zip(docs) {
                insert = insert
                    .bind(parser.clone())
                    .bind(sources.of(&r.source))
                    .bind(r.seq as i64)
                    .bind(r.kind)
                    .bind(r.sent_at)
                    .bind(r.received_at)
                    .bind(stored_at)
                    .bind(r.body.as_slice())
                    .bind(doc.as_deref());
            }
            insert
        })
        .collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, batch: &WriteBatch) -> Result<Written, StoreError> {
        let stored_at = clock::now_micros();
        let (records, docs) = super::storable_with_docs(batch)?;
        // The inserts are bound before the transaction begins, so the one
        // writer connection is not held while they are (this measured no
        // change in rate; see docs/benchmarks.md).
        let inserts = record_inserts(batch, &records, &docs, stored_at);
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let mut stored = 0u64;
        // Facts must follow only the records this transaction inserts. This
        // one connection is the only writer, and a new row's id is one past
        // the highest, so they are the rows past the highest id now (a
        // writer elsewhere committing first makes the insert fail instead,
        // with SQLITE_BUSY_SNAPSHOT). When every record is new, as in all
        // but a redelivery, they are not even read back.
        let with_facts = records.iter().any(|r| r.fact.is_some());
        let last_id: Option<i64> = if with_facts {
            sqlx::query_scalar("SELECT MAX(id) FROM records")
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?
        } else {
            None
        };
        for insert in inserts {
            stored += insert
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
        }
        if with_facts {
            let new: Vec<&NewRecord> = if stored == records.len() as u64 {
                records.clone()
            } else {
                let inserted: HashSet<(String, i64)> =
                    sqlx::query_as("SELECT source, seq FROM records WHERE id > ?")
                        .bind(last_id.unwrap_or(i64::MIN))
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(classify)?
                        .into_iter()
                        .collect();
                records
                    .iter()
                    .copied()
                    .filter(|r| inserted.contains(&(r.source.clone(), r.seq as i64)))
                    .collect()
            };
            let mut conn = Connection {
                conn: &mut tx,
                fail: classify,
            };
            let context = workloads::Batch {
                parser: &batch.parser,
                writer: &batch.writer,
                stored_at,
            };
            workloads::write(&mut conn, context, &new).await?;
        }
        if stored > 0 {
            sqlx::query(
                "INSERT INTO parser_counts (parser, stored) VALUES (?, ?) \
                 ON CONFLICT (parser) DO UPDATE SET stored = stored + excluded.stored",
            )
            .bind(batch.parser.as_str())
            .bind(stored as i64)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        for dead in &batch.dead_letters {
            sqlx::query(
                "INSERT INTO dead_letters (parser, source, seq, kind, body, error, attempts, dead_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (parser, source, seq) DO NOTHING",
            )
            .bind(batch.parser.as_str())
            .bind(super::dead_letter_text(&dead.source))
            .bind(dead.seq as i64)
            .bind(dead.kind)
            .bind(dead.body.as_slice())
            .bind(super::dead_letter_text(&dead.error))
            .bind(i64::from(dead.attempts))
            .bind(stored_at)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Written {
            stored,
            duplicates: batch.records.len() as u64 - stored,
        })
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let parsers = sqlx::query("SELECT parser, stored FROM parser_counts ORDER BY parser")
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1) as u64))
            .collect();
        let dead_letters: i64 = sqlx::query("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?
            .get(0);
        Ok(Counts {
            parsers,
            dead_letters: dead_letters as u64,
        })
    }

    async fn records(&self, filter: &RecordFilter) -> Result<Vec<StoredRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, parser, kind, sent_at, received_at, stored_at, body FROM records \
             WHERE id > ? AND (? IS NULL OR parser = ?) AND (? IS NULL OR source = ?) \
             ORDER BY id LIMIT ?",
        )
        .bind(filter.after_id)
        .bind(filter.parser.as_deref())
        .bind(filter.parser.as_deref())
        .bind(filter.source.as_deref())
        .bind(filter.source.as_deref())
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|row| StoredRow {
                id: row.get(0),
                parser: row.get(1),
                kind: row.get(2),
                sent_at: row.get(3),
                received_at: row.get(4),
                stored_at: row.get(5),
                body: row.get(6),
            })
            .collect())
    }

    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        let parser = filter.parser.as_deref();
        let rows = sqlx::query(
            "SELECT id, parser, body, error, attempts, dead_at FROM dead_letters \
             WHERE id > ? AND (? IS NULL OR parser = ?) ORDER BY id LIMIT ?",
        )
        .bind(filter.after_id)
        .bind(parser)
        .bind(parser)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|row| DeadLetterRow {
                id: row.get(0),
                parser: row.get(1),
                body: row.get(2),
                error: row.get(3),
                attempts: row.get::<i64, _>(4) as u32,
                dead_at: row.get(5),
            })
            .collect())
    }

    async fn aggregate_field(&self, query: &FieldQuery) -> Result<FieldAggregates, StoreError> {
        // One read transaction: the counts and the groups see one snapshot.
        let mut tx = self.reader.begin().await.map_err(unavailable)?;
        let mut conn = Connection {
            conn: &mut tx,
            fail: unavailable,
        };
        let result = fields::aggregate(&mut conn, &DIALECT, query).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(result)
    }

    async fn read(
        &self,
        text: &str,
        params: &[Value<'_>],
        types: &[Type],
    ) -> Result<Vec<sql::Row>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(unavailable)?;
        let mut conn = Connection {
            conn: &mut conn,
            fail: unavailable,
        };
        conn.fetch(text, params, types).await
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// SQLite's permanent data errors: a string or blob too big, a failed
/// constraint, a type mismatch, and an integer overflow in arithmetic.
/// Busy, locked, I/O and full-disk errors are worth a retry.
fn is_data(db: &dyn sqlx::error::DatabaseError) -> bool {
    const TOOBIG: i32 = 18;
    const CONSTRAINT: i32 = 19;
    const MISMATCH: i32 = 20;
    let primary = db
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    matches!(primary, Some(TOOBIG | CONSTRAINT | MISMATCH))
        || db.message().contains("integer overflow")
}

fn classify(e: sqlx::Error) -> StoreError {
    super::classify(e, is_data)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn statements_cover_every_row_once_with_few_texts(rows in 0usize..20_000, max in 1usize..1_000) {
            let sizes: Vec<usize> = super::statement_sizes(rows, max).collect();
            prop_assert_eq!(sizes.iter().sum::<usize>(), rows);
            prop_assert!(sizes.iter().all(|&s| s >= 1 && s <= max));
            // Past the full statements, each size is a distinct power of two
            // below `max`: the texts a table can see are few and fixed.
            let rest: Vec<usize> = sizes.iter().copied().filter(|&s| s != max).collect();
            prop_assert!(rest.iter().all(|s| s.is_power_of_two() && *s < max));
            prop_assert!(rest.windows(2).all(|w| w[0] > w[1]));
            let items: Vec<usize> = (0..rows).collect();
            let joined: Vec<usize> = super::statement_chunks(&items, max).flatten().copied().collect();
            prop_assert_eq!(joined, items);
        }
    }

    use super::*;
    use crate::store::{conformance, conformance::record};

    #[tokio::test]
    async fn writes_each_key_once_and_counts_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        let batch = WriteBatch {
            parser: "raw".into(),
            writer: "w".into(),
            records: (0..5000).map(|i| record("a", i)).collect(),
            dead_letters: vec![],
        };
        assert_eq!(store.write(&batch).await.unwrap().stored, 5000);
        let again = store.write(&batch).await.unwrap();
        assert_eq!((again.stored, again.duplicates), (0, 5000));
        // Another parser stores the same keys under its own name.
        let other = WriteBatch {
            parser: "uppercase".into(),
            ..batch.clone()
        };
        assert_eq!(store.write(&other).await.unwrap().stored, 5000);
        let counts = store.counts().await.unwrap();
        assert_eq!(
            counts.parsers,
            vec![("raw".to_string(), 5000), ("uppercase".to_string(), 5000)]
        );
    }

    /// A store an earlier release left (migrated to 6, readings in a rowid
    /// table with its key and covering index) keeps every reading through
    /// migration 7, answers the same aggregates from the time-ordered
    /// table, and still stores a redelivered reading once.
    #[tokio::test]
    async fn readings_move_into_the_time_ordered_table_intact() {
        use crate::workloads::{
            Fact,
            sensors::{self, AggregateQuery, Reading},
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(crate::sqlite::options(&path).unwrap())
            .await
            .unwrap();
        sql::migrator(INIT, OWN_MIGRATIONS)
            .unwrap()
            .run_to(6, &pool)
            .await
            .unwrap();
        // 300 readings of two sensors: s0 holds the even values 2..=300,
        // s1 the odd 1..=299.
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
             INSERT INTO sensor_readings (parser, source, seq, sensor_id, metric, value, unit, measured_at) \
             SELECT 'sensor', 'old', i, 's' || (i % 2), 'temperature', i, 'celsius', i * 1000 FROM n",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let schema: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE name = 'sensor_readings'")
                .fetch_one(&store.reader)
                .await
                .unwrap();
        assert!(schema.contains("WITHOUT ROWID"), "{schema}");
        let query = AggregateQuery {
            parser: "sensor".into(),
            metric: "temperature".into(),
            from: 0,
            to: i64::MAX,
            group_by_sensor: true,
        };
        let summary = |rows: Vec<sensors::AggregateRow>| -> Vec<(String, u64, f64, f64, f64)> {
            rows.into_iter()
                .map(|r| (r.sensor_id, r.count, r.avg, r.min, r.max))
                .collect()
        };
        assert_eq!(
            summary(sensors::aggregate(&store, &query).await.unwrap()),
            [
                ("s0".to_string(), 150, 151.0, 2.0, 300.0),
                ("s1".to_string(), 150, 150.0, 1.0, 299.0)
            ]
        );

        let reading = conformance::with_fact(
            "new",
            1,
            0,
            0,
            Fact::Reading(Reading {
                sensor_id: "s0".into(),
                metric: "temperature".into(),
                value: 1000.0,
                unit: "celsius".into(),
                measured_at: 400_000,
            }),
        );
        let batch = conformance::batch("sensor", "w", vec![reading]);
        assert_eq!(store.write(&batch).await.unwrap().stored, 1);
        assert_eq!(store.write(&batch).await.unwrap().duplicates, 1);
        assert_eq!(
            summary(sensors::aggregate(&store, &query).await.unwrap())[0],
            (
                "s0".to_string(),
                151,
                (22_650.0 + 1000.0) / 151.0,
                2.0,
                1000.0
            )
        );
    }

    #[tokio::test]
    async fn reads_back_in_pages_and_keeps_dead_letters() {
        let (_dir, store) = open_store().await;
        conformance::reads_back_in_pages_and_keeps_dead_letters(&store).await;
    }

    #[tokio::test]
    async fn tail_reads_filter_and_start() {
        let (_dir, store) = open_store().await;
        assert!(store.ids_commit_in_order());
        conformance::tail_reads_filter_and_start(&store).await;
    }

    async fn open_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn every_workload_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let next = std::sync::atomic::AtomicU32::new(0);
        conformance::every_workload(|| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("w{n}.db"));
            async move { SqliteStore::open(&path).await.unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn json_fields_aggregate_as_recomputed() {
        let (_dir, store) = open_store().await;
        conformance::json_fields_aggregate_as_recomputed(&store).await;
    }

    #[tokio::test]
    async fn json_field_groups_are_cut_at_1000() {
        let (_dir, store) = open_store().await;
        conformance::json_field_groups_are_cut_at_1000(&store).await;
    }

    #[tokio::test]
    async fn json_and_blob_records_read_back() {
        let (_dir, store) = open_store().await;
        conformance::json_and_blob_records_read_back(&store).await;
    }

    #[tokio::test]
    async fn rejects_unknown_urls() {
        assert!(matches!(
            crate::store::open("mysql://x").await,
            Err(StoreError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn text_with_nul_is_refused_as_data_by_both() {
        let (_dir, store) = open_store().await;
        conformance::text_with_nul_is_refused_as_data_by_both(&store).await;
    }

    /// Constraint failures and integer overflow are data; they would fail
    /// the same way again.
    #[tokio::test]
    async fn sqlite_errors_are_classified() {
        let (_dir, store) = open_store().await;
        let overflow =
            sqlx::query("SELECT SUM(x) FROM (SELECT 9223372036854775807 AS x UNION ALL SELECT 1)")
                .fetch_one(&store.writer)
                .await
                .unwrap_err();
        assert!(matches!(classify(overflow), StoreError::Data(_)));
        let not_null = sqlx::query("INSERT INTO parser_counts (parser, stored) VALUES ('p', NULL)")
            .execute(&store.writer)
            .await
            .unwrap_err();
        assert!(matches!(classify(not_null), StoreError::Data(_)));
        store.writer.close().await;
        let closed = sqlx::query("SELECT 1")
            .execute(&store.writer)
            .await
            .unwrap_err();
        assert!(matches!(classify(closed), StoreError::Unavailable(_)));
    }
}
