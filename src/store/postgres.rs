//! The PostgreSQL store, for the distributed mesh: many parser replicas write
//! to one database, and the query API reads from it.
//!
//! A batch is written with one `INSERT … SELECT FROM UNNEST(arrays)` per
//! column set: one statement and one round trip carry thousands of rows, with
//! a plan PostgreSQL can cache, and `ON CONFLICT DO NOTHING` on the record key
//! keeps writes idempotent.
//!
//! Stored counts are kept per writer (one row per parser worker instance),
//! so that parser replicas never wait on each other's row lock to commit;
//! reads sum them.
//!
//! The pool reconnects on its own: while PostgreSQL is down or restarting,
//! writes fail with [`StoreError::Unavailable`], the parser keeps its
//! deliveries unacked and retries with back-off, and nothing is lost.

use std::{collections::HashSet, time::Duration};

use async_trait::async_trait;
use sqlx::{
    PgConnection, PgPool, Postgres, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    Counts, DeadLetterFilter, DeadLetterRow, FieldAggregates, FieldQuery, NewRecord, RecordFilter,
    Store, StoreError, StoredRow, WriteBatch, Written, fields,
    sql::{self, Existing, Sql, Table, Type, Value},
};
use crate::{backoff::Backoff, clock, workloads};

/// Rows per statement. Arrays have no bound-parameter limit, but keeping a
/// statement to a few megabytes keeps server memory per writer modest.
const ROWS_PER_INSERT: usize = 10_000;

/// How long `open` keeps trying to reach a database that is not up yet (a
/// service started beside its database, as compose does).
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

const INIT: &str = "
CREATE TABLE records (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parser TEXT NOT NULL,
    source TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind INTEGER NOT NULL,
    sent_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    stored_at BIGINT NOT NULL,
    body BYTEA NOT NULL,
    UNIQUE (parser, source, seq)
);
CREATE TABLE parser_counts (
    parser TEXT NOT NULL,
    writer TEXT NOT NULL,
    stored BIGINT NOT NULL,
    PRIMARY KEY (parser, writer)
);
CREATE TABLE dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parser TEXT NOT NULL,
    source TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind INTEGER NOT NULL,
    body BYTEA NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    dead_at BIGINT NOT NULL,
    UNIQUE (parser, source, seq)
);
";

const INSERT_RECORDS: &str = "
INSERT INTO records (parser, source, seq, kind, sent_at, received_at, stored_at, body, doc)
SELECT $1, r.source, r.seq, r.kind, r.sent_at, r.received_at, $2, r.body, r.doc::jsonb
FROM UNNEST($3::text[], $4::int8[], $5::int4[], $6::int8[], $7::int8[], $8::bytea[], $9::text[])
    AS r (source, seq, kind, sent_at, received_at, body, doc)
ON CONFLICT (parser, source, seq) DO NOTHING";

/// The same insert, reporting the keys it inserted: facts follow only them.
const INSERT_RECORDS_RETURNING_KEYS: &str = "
INSERT INTO records (parser, source, seq, kind, sent_at, received_at, stored_at, body, doc)
SELECT $1, r.source, r.seq, r.kind, r.sent_at, r.received_at, $2, r.body, r.doc::jsonb
FROM UNNEST($3::text[], $4::int8[], $5::int4[], $6::int8[], $7::int8[], $8::bytea[], $9::text[])
    AS r (source, seq, kind, sent_at, received_at, body, doc)
ON CONFLICT (parser, source, seq) DO NOTHING
RETURNING source, seq";

const INSERT_DEAD_LETTERS: &str = "
INSERT INTO dead_letters (parser, source, seq, kind, body, error, attempts, dead_at)
SELECT $1, d.source, d.seq, d.kind, d.body, d.error, d.attempts, $2
FROM UNNEST($3::text[], $4::int8[], $5::int4[], $6::bytea[], $7::text[], $8::int4[])
    AS d (source, seq, kind, body, error, attempts)
ON CONFLICT (parser, source, seq) DO NOTHING";

/// This backend's own schema steps: the JSON document of each JSON record
/// as JSONB and the partial index field aggregation scans, which holds
/// JSON records only.
const OWN_MIGRATIONS: &[sql::Migration] = &[sql::Migration {
    version: 5,
    name: "json documents",
    sql: "
ALTER TABLE records ADD COLUMN doc JSONB;
CREATE INDEX records_doc ON records (parser, sent_at) WHERE doc IS NOT NULL;
",
}];

/// How PostgreSQL reads JSON for field aggregation: the dotted path split
/// into the text array `#>` takes, `jsonb_typeof` for the type, and the
/// JSONB value's text for a group. Group text is ordered bytewise (`C`),
/// as SQLite orders it, whatever the database's collation.
const DIALECT: fields::Dialect = fields::Dialect {
    field_type: "jsonb_typeof(doc #> string_to_array($2, '.'))",
    numeric_types: "('number')",
    field_value: "(doc #> string_to_array($2, '.'))::float8",
    group_text: "(doc #> string_to_array($5, '.'))::text",
    sqlite_paths: false,
    byte_order: " COLLATE \"C\"",
};

/// The PostgreSQL-backed store.
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database `url` names and migrates it, waiting up to a
    /// minute for a database that is still starting.
    ///
    /// `url` is sqlx's: over TCP `postgres://USER@HOST:PORT/DB`, over a Unix
    /// socket `postgres:///DB?host=DIR&user=USER` (or the directory
    /// percent-encoded as the host, `postgres://%2Fvar%2Frun%2Fpostgresql/DB`),
    /// where DIR holds the server's `.s.PGSQL.PORT`. The socket is the faster
    /// way on one host: sqlx 0.9.0 does not set `TCP_NODELAY`, so over TCP
    /// Nagle's algorithm delays some of the store's round trips.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|e| StoreError::BadUrl {
            url: url.to_owned(),
            reason: format!("{e}"),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let mut backoff = Backoff::startup();
        loop {
            // Replicas starting together all migrate: sqlx takes an advisory
            // lock, so exactly one applies each migration.
            match sql::migrator(INIT, OWN_MIGRATIONS)?.run(&pool).await {
                Ok(()) => break,
                Err(e) => {
                    let wait = backoff.next_wait();
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(StoreError::Unavailable(format!("migrating: {e}")));
                    }
                    tracing::warn!(error = %e, "PostgreSQL not ready; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(Self { pool })
    }
}

/// A PostgreSQL connection running the workloads' SQL; `fail` classifies
/// its errors (a write's are classified, a read's are all unavailable).
struct Connection<'c> {
    conn: &'c mut PgConnection,
    fail: fn(sqlx::Error) -> StoreError,
}

type Arguments = <Postgres as sqlx::Database>::Arguments;

fn bind<'q>(
    query: sqlx::query::Query<'q, Postgres, Arguments>,
    value: &Value<'q>,
) -> sqlx::query::Query<'q, Postgres, Arguments> {
    match *value {
        Value::Int(v) => query.bind(v),
        Value::Real(v) => query.bind(v),
        Value::Text(v) => query.bind(v),
        Value::Blob(v) => query.bind(v),
    }
}

/// One column of an insert, gathered into the array UNNEST reads.
enum Column<'a> {
    Int(Vec<i64>),
    Real(Vec<f64>),
    Text(Vec<&'a str>),
    Blob(Vec<&'a [u8]>),
}

/// The SQL of a many-row insert into `table`: one array per column,
/// unnested into rows, so one statement carries thousands of rows with a
/// plan PostgreSQL caches.
fn unnest_insert(table: &Table, existing: Existing) -> String {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| {
            let array = match ty {
                Type::Int => "int8[]",
                Type::Real => "float8[]",
                Type::Text => "text[]",
                Type::Blob => "bytea[]",
            };
            format!("${}::{array}", i + 1)
        })
        .collect();
    format!(
        "INSERT INTO {table} ({names}) SELECT * FROM UNNEST({arrays}){conflict}",
        table = table.name,
        names = names.join(", "),
        arrays = arrays.join(", "),
        conflict = table.on_conflict(existing),
    )
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
    /// A many-row insert, [`ROWS_PER_INSERT`] rows a statement.
    async fn insert_rows(
        &mut self,
        table: &Table,
        values: &[Value<'_>],
        existing: Existing,
    ) -> Result<(), StoreError> {
        let width = table.columns.len();
        let text = unnest_insert(table, existing);
        for chunk in values.chunks(ROWS_PER_INSERT * width) {
            let mut columns: Vec<Column<'_>> = table
                .columns
                .iter()
                .map(|(_, ty)| match ty {
                    Type::Int => Column::Int(Vec::new()),
                    Type::Real => Column::Real(Vec::new()),
                    Type::Text => Column::Text(Vec::new()),
                    Type::Blob => Column::Blob(Vec::new()),
                })
                .collect();
            for (i, value) in chunk.iter().enumerate() {
                match (&mut columns[i % width], *value) {
                    (Column::Int(column), Value::Int(v)) => column.push(v),
                    (Column::Real(column), Value::Real(v)) => column.push(v),
                    (Column::Text(column), Value::Text(v)) => column.push(v),
                    (Column::Blob(column), Value::Blob(v)) => column.push(v),
                    (_, value) => {
                        return Err(StoreError::Data(format!(
                            "{value:?} does not fit column {} of {}",
                            table.columns[i % width].0,
                            table.name
                        )));
                    }
                }
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(text.as_str()));
            for column in columns {
                query = match column {
                    Column::Int(v) => query.bind(v),
                    Column::Real(v) => query.bind(v),
                    Column::Text(v) => query.bind(v),
                    Column::Blob(v) => query.bind(v),
                };
            }
            query.execute(&mut *self.conn).await.map_err(self.fail)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn write(&self, batch: &WriteBatch) -> Result<Written, StoreError> {
        let stored_at = clock::now_micros();
        let (records, docs) = super::storable_with_docs(batch)?;
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let mut stored = 0u64;
        // Facts must follow only the keys this transaction inserted, so the
        // insert reports them when any record carries a fact.
        let with_facts = records.iter().any(|r| r.fact.is_some());
        let mut new_keys: HashSet<(String, i64)> = HashSet::new();
        for (chunk, docs) in records
            .chunks(ROWS_PER_INSERT)
            .zip(docs.chunks(ROWS_PER_INSERT))
        {
            let insert = sqlx::query(if with_facts {
                INSERT_RECORDS_RETURNING_KEYS
            } else {
                INSERT_RECORDS
            })
            .bind(batch.parser.as_str())
            .bind(stored_at)
            .bind(chunk.iter().map(|r| r.source.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.seq as i64).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.kind).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.sent_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.received_at).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| &r.body[..]).collect::<Vec<_>>())
            .bind(docs.iter().map(Option::as_deref).collect::<Vec<_>>());
            if with_facts {
                let rows = insert.fetch_all(&mut *tx).await.map_err(classify)?;
                stored += rows.len() as u64;
                new_keys.extend(rows.into_iter().map(|row| (row.get(0), row.get(1))));
            } else {
                stored += insert
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
            }
        }
        if with_facts {
            let new: Vec<&NewRecord> = records
                .iter()
                .copied()
                .filter(|r| new_keys.contains(&(r.source.clone(), r.seq as i64)))
                .collect();
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
                "INSERT INTO parser_counts (parser, writer, stored) VALUES ($1, $2, $3) \
                 ON CONFLICT (parser, writer) DO UPDATE \
                 SET stored = parser_counts.stored + excluded.stored",
            )
            .bind(batch.parser.as_str())
            .bind(batch.writer.as_str())
            .bind(stored as i64)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        if !batch.dead_letters.is_empty() {
            let dead = &batch.dead_letters;
            sqlx::query(INSERT_DEAD_LETTERS)
                .bind(batch.parser.as_str())
                .bind(stored_at)
                .bind(
                    dead.iter()
                        .map(|d| super::dead_letter_text(&d.source))
                        .collect::<Vec<_>>(),
                )
                .bind(dead.iter().map(|d| d.seq as i64).collect::<Vec<_>>())
                .bind(dead.iter().map(|d| d.kind).collect::<Vec<_>>())
                .bind(dead.iter().map(|d| &d.body[..]).collect::<Vec<_>>())
                .bind(
                    dead.iter()
                        .map(|d| super::dead_letter_text(&d.error))
                        .collect::<Vec<_>>(),
                )
                .bind(dead.iter().map(|d| d.attempts as i32).collect::<Vec<_>>())
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
        let parsers = sqlx::query(
            "SELECT parser, SUM(stored)::BIGINT FROM parser_counts GROUP BY parser ORDER BY parser",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1) as u64))
        .collect();
        let dead_letters: i64 = sqlx::query("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(&self.pool)
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
             WHERE id > $1 AND ($2::text IS NULL OR parser = $2) \
             AND ($3::text IS NULL OR source = $3) ORDER BY id LIMIT $4",
        )
        .bind(filter.after_id)
        .bind(filter.parser.as_deref())
        .bind(filter.source.as_deref())
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
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
        let rows = sqlx::query(
            "SELECT id, parser, body, error, attempts, dead_at FROM dead_letters \
             WHERE id > $1 AND ($2::text IS NULL OR parser = $2) ORDER BY id LIMIT $3",
        )
        .bind(filter.after_id)
        .bind(filter.parser.as_deref())
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|row| DeadLetterRow {
                id: row.get(0),
                parser: row.get(1),
                body: row.get(2),
                error: row.get(3),
                attempts: row.get::<i32, _>(4) as u32,
                dead_at: row.get(5),
            })
            .collect())
    }

    async fn aggregate_field(&self, query: &FieldQuery) -> Result<FieldAggregates, StoreError> {
        // One snapshot for the counts and the groups.
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
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
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let mut conn = Connection {
            conn: &mut conn,
            fail: unavailable,
        };
        conn.fetch(text, params, types).await
    }

    fn ids_commit_in_order(&self) -> bool {
        false
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// PostgreSQL's permanent data errors: SQLSTATE class 22 (data exception:
/// an invalid byte sequence such as NUL in text, a number out of range)
/// and class 23 (integrity constraint violation). Connection (08),
/// serialization and deadlock (40), lock (55), resource (53) and
/// operator (57) errors are worth a retry.
fn is_data(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.code()
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

fn classify(e: sqlx::Error) -> StoreError {
    super::classify(e, is_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        store::{conformance, conformance::record},
        testkit,
    };

    async fn open_store() -> PostgresStore {
        PostgresStore::open(&testkit::postgres_database().await)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_workload_conforms() {
        conformance::every_workload(open_store).await;
    }

    #[tokio::test]
    async fn writes_each_key_once_across_writers() {
        let url = testkit::postgres_database().await;
        let one = PostgresStore::open(&url).await.unwrap();
        let two = PostgresStore::open(&url).await.unwrap();
        let batch = WriteBatch {
            parser: "raw".into(),
            writer: "w".into(),
            records: (0..25_000).map(|i| record("a", i)).collect(),
            dead_letters: vec![],
        };
        assert_eq!(one.write(&batch).await.unwrap().stored, 25_000);
        let again = two.write(&batch).await.unwrap();
        assert_eq!((again.stored, again.duplicates), (0, 25_000));
        let mut more = batch.clone();
        more.records = (25_000..25_010).map(|i| record("a", i)).collect();
        assert_eq!(two.write(&more).await.unwrap().stored, 10);
        let counts = one.counts().await.unwrap();
        assert_eq!(counts.parsers, vec![("raw".to_string(), 25_010)]);
        let stored: i64 = sqlx::query("SELECT COUNT(*) FROM records")
            .fetch_one(&one.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 25_010);
    }

    #[tokio::test]
    async fn reads_back_in_pages_and_keeps_dead_letters() {
        conformance::reads_back_in_pages_and_keeps_dead_letters(&open_store().await).await;
    }

    #[tokio::test]
    async fn tail_reads_filter_and_start() {
        let store = open_store().await;
        assert!(!store.ids_commit_in_order());
        conformance::tail_reads_filter_and_start(&store).await;
    }

    #[tokio::test]
    async fn json_fields_aggregate_as_recomputed() {
        conformance::json_fields_aggregate_as_recomputed(&open_store().await).await;
    }

    #[tokio::test]
    async fn json_field_groups_are_cut_at_1000() {
        conformance::json_field_groups_are_cut_at_1000(&open_store().await).await;
    }

    #[tokio::test]
    async fn json_and_blob_records_read_back() {
        conformance::json_and_blob_records_read_back(&open_store().await).await;
    }

    #[tokio::test]
    async fn bad_urls_fail_before_connecting() {
        assert!(matches!(
            PostgresStore::open("postgres://host:notaport/db").await,
            Err(StoreError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn text_with_nul_is_refused_as_data_by_both() {
        conformance::text_with_nul_is_refused_as_data_by_both(&open_store().await).await;
    }

    /// PostgreSQL's refusals of data (NUL in text, a number out of range)
    /// are data; a server that cannot be reached is unavailable.
    #[tokio::test]
    async fn postgres_errors_are_classified() {
        let store = open_store().await;
        let nul = sqlx::query("SELECT $1::text")
            .bind("a\0b")
            .fetch_one(&store.pool)
            .await
            .unwrap_err();
        assert!(matches!(classify(nul), StoreError::Data(_)));
        let range = sqlx::query("SELECT $1::int8 + $1::int8")
            .bind(i64::MAX)
            .fetch_one(&store.pool)
            .await
            .unwrap_err();
        assert!(matches!(classify(range), StoreError::Data(_)));
        // Nothing listens on port 1.
        let nowhere = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .unwrap();
        let down = sqlx::query("SELECT 1").execute(&nowhere).await.unwrap_err();
        assert!(matches!(classify(down), StoreError::Unavailable(_)));
    }
}
