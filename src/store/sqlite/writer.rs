//! The SQLite store's writer: one thread owns the one write connection and
//! runs every write transaction on it from `BEGIN` to `COMMIT`.
//!
//! Through sqlx, each statement of a transaction was a round trip between
//! the writing task and the connection's own thread, and every bound value
//! was copied into an owned argument first. The store's rate was bound by
//! that chain, not by SQLite: the connection was held all the time while
//! its thread was on the CPU half of it (docs/benchmarks.md). Here a whole
//! transaction runs where the connection is, with each statement prepared
//! once and its values bound straight from the batch.
//!
//! **Group commit.** Batches that queue up while a transaction runs are
//! written together in the next one. A batch the store refuses as data is
//! answered with its error and the others are written again without it
//! ([`commit`]). Every batch is answered only after the commit that holds it
//! is on disk (WAL, `synchronous=FULL`), or with the error that stopped it.
//!
//! rusqlite rather than raw FFI: it shares sqlx's SQLite library
//! (`libsqlite3-sys`) and gives safe prepared-statement caching and binding.

use std::{collections::HashSet, path::Path, sync::Mutex, thread, time::Duration};

use rusqlite::{Connection, OpenFlags, Statement, ffi, types::ToSqlOutput};
use tokio::sync::{mpsc, oneshot};

use crate::{
    clock,
    store::{
        NewRecord, StoreError, WriteBatch, Written,
        sql::{self, Cell, Existing, Sql, Table, Type, Value},
    },
    workloads,
};

/// The most rows one INSERT of records takes (9 bound values each, far
/// under SQLite's limit of 32,766 variables per statement).
const ROWS_PER_INSERT: usize = 512;

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

/// Cuts `items` into consecutive slices of [`statement_sizes`].
fn statement_chunks<T>(mut items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    statement_sizes(items.len(), max).map(move |size| {
        let (head, tail) = items.split_at(size);
        items = tail;
        head
    })
}

/// Batches waiting for the writer, at most: a parser awaits its write, so
/// this only bounds how many parsers' batches queue at once.
const QUEUED: usize = 64;

/// Records one group commit takes, at most (a few parsers' full batches):
/// beyond it, queued batches wait for the next transaction, so no batch's
/// answer waits behind an unbounded group.
const GROUP_RECORDS: usize = 20_000;

/// Statements kept prepared: each table's many-row insert texts (see
/// [`statement_sizes`]) and the workloads' few statements.
const PREPARED: usize = 128;

/// How long a write waits for another process's lock on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One batch as the writer's thread needs it, with what the caller worked
/// out off that thread: which records to insert (each key once) and their
/// JSON documents.
struct Prepared {
    batch: WriteBatch,
    /// The positions in `batch.records` of the records to insert, when a
    /// key repeats in the batch; `None` when every record is to be.
    keep: Option<Vec<usize>>,
    /// The JSON document of each record to insert, in order.
    docs: Vec<Option<String>>,
}

/// The positions of the records of `batch` to insert, when a key repeats
/// in it (`None` when every record is to be), and their JSON documents.
type Plan = (Option<Vec<usize>>, Vec<Option<String>>);

fn plan(batch: &WriteBatch) -> Result<Plan, StoreError> {
    let (records, docs) = crate::store::storable_with_docs(batch)?;
    let keep = (records.len() < batch.records.len()).then(|| {
        let mut kept = records.iter().peekable();
        let mut keep = Vec::with_capacity(records.len());
        for (i, record) in batch.records.iter().enumerate() {
            if kept.next_if(|k| std::ptr::eq(**k, record)).is_some() {
                keep.push(i);
            }
        }
        keep
    });
    Ok((keep, docs))
}

impl Prepared {
    /// The records to insert, in order.
    fn records(&self) -> Vec<&NewRecord> {
        match &self.keep {
            None => self.batch.records.iter().collect(),
            Some(keep) => keep
                .iter()
                .filter_map(|&i| self.batch.records.get(i))
                .collect(),
        }
    }
}

/// A batch's outcome, and the batch handed back so that the caller's
/// thread, not the writer's, frees it.
type Answer = (Result<Written, StoreError>, Prepared);

struct Job {
    batch: Prepared,
    reply: oneshot::Sender<Answer>,
}

enum Command {
    Write(Job),
    Close(oneshot::Sender<()>),
}

/// The handle the store writes through.
pub(super) struct Writer {
    commands: mpsc::Sender<Command>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Writer {
    /// Opens the write connection to the (migrated) file at `path` and
    /// starts its thread.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = connect(path).map_err(unavailable)?;
        let (commands, receiver) = mpsc::channel(QUEUED);
        let thread = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, receiver))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(Self {
            commands,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes `batch` in a transaction (shared with other queued batches)
    /// and answers once it is committed, handing the batch back.
    pub(super) async fn write(
        &self,
        batch: WriteBatch,
    ) -> (Result<Written, StoreError>, WriteBatch) {
        let (keep, docs) = match plan(&batch) {
            Ok(plan) => plan,
            Err(e) => return (Err(e), batch),
        };
        let batch = Prepared { batch, keep, docs };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(command)) = self
            .commands
            .send(Command::Write(Job { batch, reply }))
            .await
        {
            let batch = match command {
                Command::Write(job) => job.batch.batch,
                Command::Close(_) => WriteBatch::default(),
            };
            return (Err(stopped()), batch);
        }
        match answer.await {
            Ok((outcome, prepared)) => (outcome, prepared.batch),
            // The thread ended holding the batch, which it never does
            // without answering (a panic in a write is answered). The
            // channel is closed by then, so no later write of the empty
            // batch handed back can succeed and be taken for this one.
            Err(_) => (Err(stopped()), WriteBatch::default()),
        }
    }

    /// Finishes the queued writes and closes the connection.
    pub(super) async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Close(done)).await.is_ok() {
            let _ = finished.await;
        }
        let thread = self.thread.lock().ok().and_then(|mut held| held.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store writer has stopped".into())
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // As `crate::sqlite::options` sets for every other connection.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(PREPARED);
    Ok(conn)
}

/// The writer's thread: takes whatever has queued, writes it in one
/// transaction, answers, and repeats until closed or dropped.
fn run(mut conn: Connection, mut commands: mpsc::Receiver<Command>) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = commands.blocking_recv() else {
            break;
        };
        let mut group = Vec::new();
        let mut records = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Write(job) => {
                    records += job.batch.batch.records.len();
                    group.push(job);
                }
                Command::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if records < GROUP_RECORDS {
                next = commands.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
        }
        // A panic in a write (a bug) fails its group as unavailable and
        // hands every batch back, so the callers retry rather than lose it.
        let outcomes =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(&mut conn, &group)))
                .unwrap_or_else(|_| {
                    tracing::error!("a store write panicked; its batches will be retried");
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    group
                        .iter()
                        .map(|_| Err(StoreError::Unavailable("the store writer failed".into())))
                        .collect()
                });
        for (Job { batch, reply }, outcome) in group.into_iter().zip(outcomes) {
            let _ = reply.send((outcome, batch));
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the store's write connection failed");
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Writes `group` in one transaction; returns each batch's outcome, in
/// order.
///
/// A batch refused as data rolls the transaction back; it is answered with
/// its error and the group is written again without it. The outcome is the
/// one the batches would have had one transaction each, in order, and the
/// common case (nothing refused) pays for no savepoint journal.
fn commit(conn: &mut Connection, group: &[Job]) -> Vec<Result<Written, StoreError>> {
    let mut outcomes: Vec<Option<Result<Written, StoreError>>> =
        group.iter().map(|_| None).collect();
    'attempt: loop {
        let pending: Vec<usize> = (0..group.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if pending.is_empty() {
            break;
        }
        // IMMEDIATE: the write lock is taken now, so the snapshot `write`
        // reads ids from is the one it inserts into.
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            fail(&mut outcomes, &unavailable(e));
            break;
        }
        let stored_at = clock::now_micros();
        let mut written = Vec::with_capacity(pending.len());
        for &i in &pending {
            match write(conn, &group[i].batch, stored_at) {
                Ok(done) => written.push((i, done)),
                Err(e) => {
                    let rolled_back = conn.is_autocommit();
                    if !rolled_back && let Err(rollback) = conn.execute_batch("ROLLBACK") {
                        fail(&mut outcomes, &unavailable(rollback));
                        break 'attempt;
                    }
                    match e {
                        // SQLite rolled back on its own only after an I/O
                        // error or a full disk: not the batch's fault.
                        StoreError::Data(_) if !rolled_back => {
                            outcomes[i] = Some(Err(e));
                            continue 'attempt;
                        }
                        e => {
                            fail(&mut outcomes, &e);
                            break 'attempt;
                        }
                    }
                }
            }
        }
        if let Err(e) = conn.execute_batch("COMMIT") {
            let e = unavailable(e);
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            fail(&mut outcomes, &e);
            break;
        }
        for (i, done) in written {
            outcomes[i] = Some(Ok(done));
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| Err(stopped())))
        .collect()
}

/// Answers every batch not yet answered with `e`, as unavailable: whatever
/// stopped the group, the batches may be written later.
fn fail(outcomes: &mut [Option<Result<Written, StoreError>>], e: &StoreError) {
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = Some(Err(StoreError::Unavailable(e.to_string())));
    }
}

/// The text of an insert of `rows` records.
fn records_insert(rows: usize) -> String {
    let mut text = values_sql(
        "INSERT INTO records (parser, source, seq, kind, sent_at, received_at, stored_at, body, doc)",
        9,
        rows,
    );
    text.push_str(" ON CONFLICT (parser, source, seq) DO NOTHING");
    text
}

/// One batch's writes, inside the group's transaction.
fn write(conn: &mut Connection, job: &Prepared, stored_at: i64) -> Result<Written, StoreError> {
    let records = job.records();
    let batch = &job.batch;
    // Facts must follow only the records this batch inserts. This
    // connection holds the write lock and a new row's id is one past the
    // highest, so they are the rows past the highest id now. When every
    // record is new, as in all but a redelivery, they are not read back.
    let with_facts = records.iter().any(|r| r.fact.is_some());
    let last_id: Option<i64> = if with_facts {
        conn.prepare_cached("SELECT MAX(id) FROM records")
            .and_then(|mut select| select.query_row([], |row| row.get(0)))
            .map_err(classify)?
    } else {
        None
    };
    let mut stored = 0u64;
    for (chunk, docs) in statement_chunks(&records, ROWS_PER_INSERT)
        .zip(statement_chunks(&job.docs, ROWS_PER_INSERT))
    {
        let mut insert = conn
            .prepare_cached(&records_insert(chunk.len()))
            .map_err(classify)?;
        let mut index = 0;
        for (r, doc) in chunk.iter().zip(docs) {
            let values: [&dyn rusqlite::ToSql; 9] = [
                &batch.parser,
                &r.source,
                &(r.seq as i64),
                &r.kind,
                &r.sent_at,
                &r.received_at,
                &stored_at,
                &&r.body[..],
                doc,
            ];
            for value in values {
                index += 1;
                insert.raw_bind_parameter(index, value).map_err(classify)?;
            }
        }
        stored += insert.raw_execute().map_err(classify)? as u64;
    }
    if with_facts {
        let new: Vec<&NewRecord> = if stored == records.len() as u64 {
            records
        } else {
            let inserted = inserted_since(conn, last_id.unwrap_or(i64::MIN))?;
            records
                .into_iter()
                .filter(|r| inserted.contains(&(r.source.clone(), r.seq as i64)))
                .collect()
        };
        let context = workloads::Batch {
            parser: &batch.parser,
            writer: &batch.writer,
            stored_at,
        };
        // The workloads' SQL is written once for both backends, as async
        // calls; on this connection none of them waits, so each future is
        // ready the first time it is polled.
        futures::executor::block_on(workloads::write(&mut Tx { conn }, context, &new))?;
    }
    if stored > 0 {
        conn.prepare_cached(
            "INSERT INTO parser_counts (parser, stored) VALUES (?, ?) \
             ON CONFLICT (parser) DO UPDATE SET stored = stored + excluded.stored",
        )
        .and_then(|mut upsert| upsert.execute((&batch.parser, stored as i64)))
        .map_err(classify)?;
    }
    for dead in &batch.dead_letters {
        conn.prepare_cached(
            "INSERT INTO dead_letters (parser, source, seq, kind, body, error, attempts, dead_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (parser, source, seq) DO NOTHING",
        )
        .and_then(|mut insert| {
            insert.execute((
                &batch.parser,
                crate::store::dead_letter_text(&dead.source),
                dead.seq as i64,
                dead.kind,
                &dead.body[..],
                crate::store::dead_letter_text(&dead.error),
                i64::from(dead.attempts),
                stored_at,
            ))
        })
        .map_err(classify)?;
    }
    Ok(Written {
        stored,
        duplicates: (batch.records.len() as u64).saturating_sub(stored),
    })
}

/// The keys of the records stored past `last_id`.
fn inserted_since(conn: &Connection, last_id: i64) -> Result<HashSet<(String, i64)>, StoreError> {
    let mut select = conn
        .prepare_cached("SELECT source, seq FROM records WHERE id > ?")
        .map_err(classify)?;
    let rows = select
        .query_map([last_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(classify)?;
    rows.collect::<Result<_, _>>().map_err(classify)
}

/// The write connection inside its transaction, running the workloads' SQL.
struct Tx<'c> {
    conn: &'c mut Connection,
}

/// Bound as borrowed: SQLite copies what it keeps, so no value is copied
/// on the way in.
impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef;
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Int(v) => ValueRef::Integer(v),
            Value::Real(v) => ValueRef::Real(v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

/// Binds `params` to a statement of the workloads' dialect, whose
/// placeholders are `$1…` (numbered) or `?` (in order).
fn bind_numbered(statement: &mut Statement<'_>, params: &[Value<'_>]) -> Result<(), StoreError> {
    for index in 1..=statement.parameter_count() {
        let number = match statement.parameter_name(index) {
            Some(name) => name
                .strip_prefix(['$', '?'])
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    StoreError::Unavailable(format!("unsupported placeholder {name:?}"))
                })?,
            None => index,
        };
        let value = params
            .get(number - 1)
            .ok_or_else(|| StoreError::Unavailable(format!("no value for placeholder {number}")))?;
        statement
            .raw_bind_parameter(index, value)
            .map_err(classify)?;
    }
    Ok(())
}

fn decode(row: &rusqlite::Row<'_>, types: &[Type]) -> rusqlite::Result<sql::Row> {
    let mut cells = Vec::with_capacity(types.len());
    for (i, ty) in types.iter().enumerate() {
        cells.push(match ty {
            Type::Int => Cell::Int(row.get(i)?),
            Type::Real => Cell::Real(row.get(i)?),
            Type::Text => Cell::Text(row.get(i)?),
            Type::Blob => Cell::Blob(row.get(i)?),
        });
    }
    Ok(sql::Row(cells))
}

#[async_trait::async_trait]
impl Sql for Tx<'_> {
    async fn execute(&mut self, text: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let mut statement = self.conn.prepare_cached(text).map_err(classify)?;
        bind_numbered(&mut statement, params)?;
        Ok(statement.raw_execute().map_err(classify)? as u64)
    }

    async fn fetch(
        &mut self,
        text: &str,
        params: &[Value<'_>],
        types: &[Type],
    ) -> Result<Vec<sql::Row>, StoreError> {
        let mut statement = self.conn.prepare_cached(text).map_err(classify)?;
        bind_numbered(&mut statement, params)?;
        let mut rows = statement.raw_query();
        let mut decoded = Vec::new();
        while let Some(row) = rows.next().map_err(classify)? {
            decoded.push(decode(row, types).map_err(classify)?);
        }
        Ok(decoded)
    }

    async fn insert(&mut self, table: &Table, values: &[Value<'_>]) -> Result<(), StoreError> {
        self.insert_rows(table, values, Existing::Skip)
    }

    async fn upsert(&mut self, table: &Table, values: &[Value<'_>]) -> Result<(), StoreError> {
        self.insert_rows(table, values, Existing::Replace)
    }
}

impl Tx<'_> {
    /// A many-row insert, in statements of at most [`MAX_VARIABLES`]
    /// bound values.
    fn insert_rows(
        &mut self,
        table: &Table,
        values: &[Value<'_>],
        existing: Existing,
    ) -> Result<(), StoreError> {
        let width = table.columns.len().max(1);
        let columns: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
        let head = format!("INSERT INTO {} ({})", table.name, columns.join(", "));
        let tail = table.on_conflict(existing);
        let max_rows = (MAX_VARIABLES / width).min(ROWS_PER_INSERT);
        let rows: Vec<&[Value<'_>]> = values.chunks(width).collect();
        for chunk in statement_chunks(&rows, max_rows) {
            let mut text = values_sql(&head, width, chunk.len());
            text.push_str(&tail);
            let mut insert = self.conn.prepare_cached(&text).map_err(classify)?;
            for (i, value) in chunk.iter().flat_map(|row| row.iter()).enumerate() {
                insert.raw_bind_parameter(i + 1, value).map_err(classify)?;
            }
            insert.raw_execute().map_err(classify)?;
        }
        Ok(())
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// SQLite's permanent data errors: a string or blob too big, a failed
/// constraint, a type mismatch, and an integer overflow in arithmetic.
/// Busy, locked, I/O and full-disk errors are worth a retry.
pub(super) fn classify(e: rusqlite::Error) -> StoreError {
    let data = match &e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            matches!(
                failure.extended_code & 0xff,
                ffi::SQLITE_TOOBIG | ffi::SQLITE_CONSTRAINT | ffi::SQLITE_MISMATCH
            ) || message
                .as_deref()
                .is_some_and(|m| m.contains("integer overflow"))
        }
        rusqlite::Error::ToSqlConversionFailure(_) => true,
        _ => false,
    };
    if data {
        StoreError::Data(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
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
}
