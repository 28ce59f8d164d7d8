//! The SQLite store: one file in WAL mode with `synchronous=FULL`, so a
//! committed batch (and with it a parser's ack) survives a crash.
//!
//! SQLite takes one writer at a time, so writes go through a single
//! connection, owned by one thread ([`writer`]), and reads through a small
//! pool that WAL lets run alongside.

mod writer;

use std::path::Path;

use async_trait::async_trait;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, sqlite::SqlitePoolOptions};

use self::writer::Writer;

use super::{
    Counts, DeadLetterFilter, DeadLetterRow, FieldAggregates, FieldQuery, RecordFilter, Store,
    StoreError, StoredRow, WriteBatch, Written, fields,
    sql::{self, Sql, Table, Type, Value},
};
use crate::workloads;

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
    writer: Writer,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = crate::sqlite::options(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
        })?;
        // Migrated through sqlx, whose migrator keeps the applied versions;
        // then written through the writer's own connection.
        let migrating = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        sql::migrator(INIT, OWN_MIGRATIONS)?
            .run(&migrating)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        migrating.close().await;
        let writer = Writer::open(path)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;
        Ok(Self { writer, reader })
    }
}

/// A read connection running the workloads' SQL: its errors are all
/// unavailable (a read holds no data to refuse).
struct Connection<'c> {
    conn: &'c mut SqliteConnection,
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
            .map_err(unavailable)?
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
        let rows = query
            .fetch_all(&mut *self.conn)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| sql::decode(row, types).map_err(unavailable))
            .collect()
    }

    async fn insert(&mut self, table: &Table, _: &[Value<'_>]) -> Result<(), StoreError> {
        Err(read_only(table))
    }

    async fn upsert(&mut self, table: &Table, _: &[Value<'_>]) -> Result<(), StoreError> {
        Err(read_only(table))
    }
}

/// Reads go through the read pool, which never writes: every write is the
/// writer's.
fn read_only(table: &Table) -> StoreError {
    StoreError::Unavailable(format!(
        "a read of the SQLite store tried to write {}",
        table.name
    ))
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, batch: &WriteBatch) -> Result<Written, StoreError> {
        self.writer.write(batch.clone()).await.0
    }

    async fn write_owned(&self, batch: WriteBatch) -> (Result<Written, StoreError>, WriteBatch) {
        self.writer.write(batch).await
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
        let mut conn = Connection { conn: &mut tx };
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
        let mut conn = Connection { conn: &mut conn };
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::collections::HashMap;

    use super::*;
    use crate::store::{NewRecord, conformance, conformance::record};

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

    /// A record with a number counted into the averages window at 0.
    fn number(source: &str, seq: u64, value: i64) -> NewRecord {
        use crate::workloads::{Fact, averages::Number};
        let fact = Fact::Number(Number {
            window_start: 0,
            window_ms: 1000,
            value,
        });
        conformance::with_fact(source, seq, 0, 0, fact)
    }

    /// A caller that gives up on its write after handing it over (its
    /// future dropped) leaves the writer serving, and the batch, written
    /// again, is stored once.
    #[tokio::test]
    async fn a_caller_that_vanishes_mid_write_leaves_its_batch_stored_once() {
        use futures::FutureExt;
        let (_dir, store) = open_store().await;
        let batch = conformance::batch("raw", "w", (0..20_000).map(|i| record("a", i)).collect());
        // One poll hands the batch over; then the caller is gone.
        assert!(store.write(&batch).now_or_never().is_none());
        let again = store.write(&batch).await.unwrap();
        assert_eq!(again.stored + again.duplicates, 20_000);
        assert_eq!(
            store.counts().await.unwrap().parsers,
            vec![("raw".to_string(), 20_000)]
        );
    }

    /// Batches queued together share one transaction, each in its own
    /// savepoint: one the store refuses as data (an average's sum past
    /// 2^63, found after its records were inserted) is answered with its
    /// error and leaves nothing, while every other batch of the group is
    /// stored whole. A large first batch keeps the writer busy, so the rest
    /// queue up behind it and are written as one group.
    #[tokio::test]
    async fn a_refused_batch_leaves_its_group_stored() {
        let (_dir, store) = open_store().await;
        let mut batches = vec![conformance::batch(
            "first",
            "w",
            (0..20_000).map(|i| record("a", i)).collect(),
        )];
        for group in 0..6 {
            let records = if group == 3 {
                vec![number("big", 0, i64::MAX), number("big", 1, i64::MAX)]
            } else {
                (0..100).map(|i| number("n", i, 1)).collect()
            };
            batches.push(conformance::batch(&format!("p{group}"), "w", records));
        }
        let outcomes =
            futures::future::join_all(batches.iter().map(|batch| store.write(batch))).await;
        for (batch, outcome) in batches.iter().zip(&outcomes) {
            if batch.parser == "p3" {
                assert!(matches!(outcome, Err(StoreError::Data(_))), "{outcome:?}");
            } else {
                assert_eq!(
                    outcome.as_ref().unwrap().stored,
                    batch.records.len() as u64,
                    "{}",
                    batch.parser
                );
            }
        }
        let counts = store.counts().await.unwrap();
        let expected: Vec<(String, u64)> = std::iter::once(("first".to_string(), 20_000))
            .chain(
                [0, 1, 2, 4, 5]
                    .into_iter()
                    .map(|group| (format!("p{group}"), 100)),
            )
            .collect();
        assert_eq!(counts.parsers, expected);
        let refused = store
            .records(&RecordFilter {
                parser: Some("p3".into()),
                limit: 10,
                ..RecordFilter::default()
            })
            .await
            .unwrap();
        assert!(refused.is_empty(), "{refused:?}");
    }

    /// One batch of the group-commit property: the parser writing and its
    /// numbers `(source, seq, value)`, all in one averages window.
    type Numbers = (usize, Vec<(usize, u64, i64)>);

    fn numbers() -> impl Strategy<Value = Numbers> {
        let value = prop_oneof![3 => Just(1i64), 1 => Just(i64::MAX / 3)];
        (
            0usize..2,
            prop::collection::vec((0usize..2, 0u64..6, value), 1..6),
        )
    }

    /// What one transaction per batch, in order, would answer: a batch is
    /// refused as data when its new numbers would take its parser's window
    /// past 2^63 − 1 (and then leaves nothing), and otherwise stores the
    /// keys its parser has not stored, the first copy of a repeated one.
    #[derive(Default)]
    struct Model {
        stored: HashMap<(usize, usize, u64), ()>,
        sums: HashMap<usize, i128>,
    }

    impl Model {
        fn write(&mut self, (parser, numbers): &Numbers) -> Option<Written> {
            let mut seen = std::collections::HashSet::new();
            let new: Vec<&(usize, u64, i64)> = numbers
                .iter()
                .filter(|(source, seq, _)| seen.insert((*source, *seq)))
                .filter(|(source, seq, _)| !self.stored.contains_key(&(*parser, *source, *seq)))
                .collect();
            let sum = self.sums.get(parser).copied().unwrap_or(0)
                + new.iter().map(|(_, _, v)| i128::from(*v)).sum::<i128>();
            if sum > i128::from(i64::MAX) {
                return None;
            }
            self.sums.insert(*parser, sum);
            for (source, seq, _) in &new {
                self.stored.insert((*parser, *source, *seq), ());
            }
            Some(Written {
                stored: new.len() as u64,
                duplicates: (numbers.len() - new.len()) as u64,
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

        /// Batches written in rounds, each round's batches at once (so the
        /// writer groups them into shared transactions as they queue), are
        /// answered exactly as one transaction per batch in order would
        /// answer them, and the store then holds what that would hold.
        #[test]
        fn group_commits_answer_as_one_transaction_per_batch(
            rounds in prop::collection::vec(prop::collection::vec(numbers(), 1..6), 1..4)
        ) {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let (_dir, store) = open_store().await;
                let mut model = Model::default();
                for round in &rounds {
                    let batches: Vec<WriteBatch> = round
                        .iter()
                        .map(|(parser, numbers)| {
                            let records = numbers
                                .iter()
                                .map(|(source, seq, value)| number(&format!("s{source}"), *seq, *value))
                                .collect();
                            conformance::batch(&format!("p{parser}"), "w", records)
                        })
                        .collect();
                    let outcomes =
                        futures::future::join_all(batches.iter().map(|b| store.write(b))).await;
                    for (numbers, outcome) in round.iter().zip(outcomes) {
                        match (model.write(numbers), outcome) {
                            (Some(expected), Ok(written)) => assert_eq!(written, expected),
                            (None, Err(StoreError::Data(_))) => {}
                            (expected, outcome) => {
                                panic!("expected {expected:?}, got {outcome:?} for {numbers:?}")
                            }
                        }
                    }
                }
                let mut expected: Vec<(String, u64)> = (0..2)
                    .map(|parser| {
                        let n = model.stored.keys().filter(|k| k.0 == parser).count() as u64;
                        (format!("p{parser}"), n)
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect();
                expected.sort();
                assert_eq!(store.counts().await.unwrap().parsers, expected);
            });
        }
    }

    /// A batch written by hand-over comes back whole, whether stored,
    /// refused before the writer (a NUL) or refused by it (an average past
    /// 2^63): the parser splits what comes back.
    #[tokio::test]
    async fn a_handed_over_batch_comes_back_whole() {
        let (_dir, store) = open_store().await;
        let big = |seq| number("big", seq, i64::MAX);
        let stored = conformance::batch("raw", "w", vec![record("a", 0), record("a", 0)]);
        let nul = conformance::batch("raw", "w", vec![record("a\0", 1)]);
        let overflow = conformance::batch("avg", "w", vec![big(0), big(1)]);
        for (batch, expect_stored) in [(stored, true), (nul, false), (overflow, false)] {
            let (outcome, back) = store.write_owned(batch.clone()).await;
            assert_eq!(back, batch);
            match outcome {
                Ok(written) if expect_stored => {
                    assert_eq!((written.stored, written.duplicates), (1, 1))
                }
                Err(StoreError::Data(_)) if !expect_stored => {}
                other => panic!("{other:?} for {batch:?}"),
            }
        }
    }

    /// A write after the store is closed is answered, as unavailable, not
    /// left waiting on a writer that has gone.
    #[tokio::test]
    async fn writes_after_close_are_unavailable() {
        let (_dir, store) = open_store().await;
        store.close().await;
        let batch = conformance::batch("raw", "w", vec![record("a", 0)]);
        let outcome = store.write(&batch).await;
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
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
    #[test]
    fn sqlite_errors_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
        conn.execute_batch(INIT).unwrap();
        let overflow = conn
            .query_row(
                "SELECT SUM(x) FROM (SELECT 9223372036854775807 AS x UNION ALL SELECT 1)",
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap_err();
        assert!(matches!(writer::classify(overflow), StoreError::Data(_)));
        let not_null = conn
            .execute(
                "INSERT INTO parser_counts (parser, stored) VALUES ('p', NULL)",
                [],
            )
            .unwrap_err();
        assert!(matches!(writer::classify(not_null), StoreError::Data(_)));
        drop(conn);
        std::fs::remove_dir_all(dir.path()).unwrap();
        let gone = rusqlite::Connection::open_with_flags(
            dir.path().join("s.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        )
        .unwrap_err();
        assert!(matches!(writer::classify(gone), StoreError::Unavailable(_)));
    }
}
