//! The SQL store the parsers write to and the query API reads from.
//!
//! Every write is idempotent on the record's key `(parser, source, seq)`: a
//! redelivered record is stored once. Timestamps are integer microseconds so
//! that SQLite and PostgreSQL keep them alike. Record bodies are stored as the
//! encoded protobuf the parser produced; the query API owns their decoding.
//!
//! Beside the record, a parser may derive one typed [`Fact`] from it; each
//! kind of fact belongs to a workload ([`crate::workloads`]), which owns its
//! tables and reads. The backends here hold records, dead letters and
//! counts, loop over the registered workloads inside the write transaction,
//! and bind the workloads' SQL ([`sql::Sql`]).
//!
//! # Errors are classified
//!
//! A failed write is either [`StoreError::Unavailable`] (connection,
//! timeout, serialization failure, lock: the same batch may succeed later,
//! so callers retry with back-off) or [`StoreError::Data`] (the batch holds
//! something this store can never hold: an encoding it refuses, a number
//! out of range, a failed constraint; retrying the same batch fails the same
//! way, so callers split it and dead-letter the records that fail alone).
//! Both backends refuse the same records: what only PostgreSQL would refuse
//! (a NUL character in text) is checked here, before either is asked, and
//! averages' sums are checked in Rust, where SQLite would silently turn an
//! overflowing integer into a float.

#[cfg(test)]
pub(crate) mod conformance;
mod doc;
pub mod fields;
pub mod postgres;
pub mod sql;
pub mod sqlite;
pub mod tail;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::workloads::Fact;
pub use fields::{FieldAggregates, FieldGroup, FieldPath, FieldQuery};

/// Errors a caller of the store can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not do the work now; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The batch holds data the store can never hold; the same batch will
    /// fail again, so the records that cause it must be set aside.
    #[error("the store cannot hold this data: {0}")]
    Data(String),
    /// The store URL is malformed or names an unknown backend.
    #[error("bad store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A processed record to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// The record's source.
    pub source: String,
    /// The record's sequence number in its source.
    pub seq: u64,
    /// The record kind's protobuf enum value.
    pub kind: i32,
    /// When the producer sent it (µs since the epoch).
    pub sent_at: i64,
    /// When an ingest server accepted it (µs since the epoch).
    pub received_at: i64,
    /// The record as the parser produced it, protobuf-encoded (often a
    /// slice of the delivery it came in: a parser that keeps records as
    /// delivered stores their bytes without a copy).
    pub body: Bytes,
    /// What the parser derived from the record, if anything.
    pub fact: Option<Fact>,
}

/// A record a parser gave up on.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The record's source.
    pub source: String,
    /// The record's sequence number in its source.
    pub seq: u64,
    /// The record kind's protobuf enum value.
    pub kind: i32,
    /// The record as delivered, protobuf-encoded.
    pub body: Bytes,
    /// The last error met.
    pub error: String,
    /// Deliveries made before giving up.
    pub attempts: u32,
}

/// What one parser writes in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    /// The parser writing (its consumer group).
    pub parser: String,
    /// The writing instance: partial aggregates are kept per writer, so
    /// replicas never contend on one row, and combined when read.
    pub writer: String,
    /// Records to store.
    pub records: Vec<NewRecord>,
    /// Records to dead-letter.
    pub dead_letters: Vec<NewDeadLetter>,
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Records stored for the first time.
    pub stored: u64,
    /// Records whose key was already stored by this parser.
    pub duplicates: u64,
}

/// A stored record, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// The row id: increases with the order of storage.
    pub id: i64,
    /// The parser that stored it.
    pub parser: String,
    /// The record kind's protobuf enum value.
    pub kind: i32,
    /// When the producer sent it (µs).
    pub sent_at: i64,
    /// When an ingest server accepted it (µs).
    pub received_at: i64,
    /// When the store committed it (µs).
    pub stored_at: i64,
    /// The record as the parser produced it, protobuf-encoded.
    pub body: Vec<u8>,
}

/// A dead letter, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    /// The row id: increases with the order of dead-lettering.
    pub id: i64,
    /// The parser that gave up.
    pub parser: String,
    /// The record as delivered, protobuf-encoded.
    pub body: Vec<u8>,
    /// The last error.
    pub error: String,
    /// Deliveries made.
    pub attempts: u32,
    /// When it was dead-lettered (µs).
    pub dead_at: i64,
}

/// Stored counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records stored per parser, sorted by parser name.
    pub parsers: Vec<(String, u64)>,
    /// Rows in the dead-letter table.
    pub dead_letters: u64,
}

/// Which stored records to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only this parser's records.
    pub parser: Option<String>,
    /// Only this source's records.
    pub source: Option<String>,
    /// Only rows with a larger id.
    pub after_id: i64,
    /// At most this many rows.
    pub limit: u32,
}

/// Which dead letters to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this parser's dead letters.
    pub parser: Option<String>,
    /// Only rows with a larger id.
    pub after_id: i64,
    /// At most this many rows.
    pub limit: u32,
}

/// The store: idempotent batched writes and the reads the query API needs.
#[async_trait]
pub trait Store: Send + Sync {
    /// Writes a batch in one transaction. Keys already stored by the same
    /// parser are skipped and counted as duplicates.
    async fn write(&self, batch: &WriteBatch) -> Result<Written, StoreError>;

    /// [`Store::write`], taking the batch and handing it back with the
    /// outcome: a store that writes on another thread (SQLite's) then
    /// neither copies the batch nor frees it there. The caller keeps it for
    /// what follows a refusal (splitting it).
    async fn write_owned(&self, batch: WriteBatch) -> (Result<Written, StoreError>, WriteBatch) {
        let outcome = self.write(&batch).await;
        (outcome, batch)
    }

    /// Counts stored records per parser, and dead letters.
    async fn counts(&self) -> Result<Counts, StoreError>;

    /// Reads stored records in id order.
    async fn records(&self, filter: &RecordFilter) -> Result<Vec<StoredRow>, StoreError>;

    /// Reads dead letters in id order (oldest first).
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetterRow>, StoreError>;

    /// Aggregates one numeric field of a parser's stored JSON records (see
    /// [`fields`]); missing and non-numeric values are counted, not errors.
    async fn aggregate_field(&self, query: &FieldQuery) -> Result<FieldAggregates, StoreError>;

    /// Runs a read of a workload (see [`crate::workloads`]) on the read
    /// pool: `params` bound to `$1…`, each row decoded with `types`.
    async fn read(
        &self,
        sql: &str,
        params: &[sql::Value<'_>],
        types: &[sql::Type],
    ) -> Result<Vec<sql::Row>, StoreError>;

    /// Whether a row with a larger id is never visible before one with a
    /// smaller id: true for a single writer (SQLite); false where writers
    /// commit concurrently (PostgreSQL), which [`tail`] must allow for.
    fn ids_commit_in_order(&self) -> bool {
        true
    }

    /// Closes connections.
    async fn close(&self);
}

/// Classifies a failed write: `is_data` tells the backend's permanent data
/// errors apart; everything else (I/O, pool timeouts, serialization
/// failures, locks, and errors we do not know) is worth a retry.
pub(crate) fn classify(
    e: sqlx::Error,
    is_data: impl Fn(&dyn sqlx::error::DatabaseError) -> bool,
) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if is_data(db.as_ref()) => StoreError::Data(e.to_string()),
        sqlx::Error::Encode(_) => StoreError::Data(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// A batch's storable records ([`storable_records`]) with the JSON
/// document of each ([`doc::of`]), as both backends insert them.
pub(crate) fn storable_with_docs(
    batch: &WriteBatch,
) -> Result<(Vec<&NewRecord>, Vec<Option<String>>), StoreError> {
    let records = storable_records(batch)?;
    let docs = records
        .iter()
        .map(|r| doc::of(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((records, docs))
}

/// The records of `batch` with each key once: the first copy wins, as it
/// would had the copies come in separate batches, so a key repeated in one
/// batch is stored, counted and folded into its facts once. Returns an
/// error naming the first record neither backend can hold.
fn storable_records(batch: &WriteBatch) -> Result<Vec<&NewRecord>, StoreError> {
    let mut seen = std::collections::HashSet::with_capacity(batch.records.len());
    let mut unique = Vec::with_capacity(batch.records.len());
    for record in &batch.records {
        if let Some(field) = nul_field(record) {
            return Err(StoreError::Data(format!(
                "{field} of {:?}/{} holds a NUL character, which PostgreSQL text cannot hold",
                record.source, record.seq
            )));
        }
        if seen.insert((record.source.as_str(), record.seq)) {
            unique.push(record);
        }
    }
    Ok(unique)
}

/// The first text field of `record` stored as SQL text that holds a NUL.
fn nul_field(record: &NewRecord) -> Option<&'static str> {
    let has_nul = |s: &str| s.contains('\0');
    if has_nul(&record.source) {
        return Some("source");
    }
    let texts = record.fact.as_ref().map(Fact::texts).unwrap_or_default();
    texts
        .into_iter()
        .find(|(_, text)| has_nul(text))
        .map(|(name, _)| name)
}

/// Text as a dead letter keeps it: NUL characters, which PostgreSQL text
/// cannot hold, become U+FFFD on both backends, so a record refused for
/// holding one can still be dead-lettered.
pub(crate) fn dead_letter_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}

/// Opens the store a URL names: `sqlite://PATH` (created if missing) or
/// `postgres://USER@HOST:PORT/DB` (migrated on open).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PostgresStore::open(url).await?));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::BadUrl {
                url: url.to_owned(),
                reason: "no file path after sqlite://".into(),
            });
        }
        return Ok(Arc::new(sqlite::SqliteStore::open(path.as_ref()).await?));
    }
    Err(StoreError::BadUrl {
        url: url.to_owned(),
        reason: "expected sqlite://PATH or postgres://USER@HOST:PORT/DB".into(),
    })
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                tonic::Status::unavailable("the store is unavailable; retry later")
            }
            StoreError::Data(_) => {
                tracing::warn!(error = %e, "store refused data");
                tonic::Status::invalid_argument("the store cannot hold this data")
            }
            StoreError::BadUrl { .. } => {
                tracing::error!(error = %e, "store misconfigured");
                tonic::Status::internal("the store is misconfigured")
            }
        }
    }
}
