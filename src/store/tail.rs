//! Following stored records as they arrive (`tributary tail`).
//!
//! A tail reads `records` by id, after a cursor. On SQLite that is exact:
//! one writer commits at a time, so ids become visible in order. On
//! PostgreSQL several writers (parser replicas) commit concurrently, and an
//! id taken by a slow transaction can become visible after a larger one was
//! already read: a plain cursor would skip it. So [`Cursor`] keeps the ids it
//! sent whose rows were stamped less than a settling horizon ago, reads again
//! from the oldest of them, and sends only what it has not sent. A row whose
//! write took longer than the horizon to commit after its `stored_at` stamp
//! can still be missed; the horizon is far above a write's commit time.
//!
//! [`Cursor`] is a pure state machine; [`read`] and [`start`] are the SQL.

use std::collections::BTreeMap;

use crate::{
    kind::KindSet,
    proto::RecordKind,
    store::{
        Store, StoreError, StoredRow,
        sql::{Row, Type, Value},
    },
};

/// How long after its `stored_at` stamp a row is assumed committed when ids
/// may commit out of order (PostgreSQL): 5 s, while a write commits in
/// milliseconds.
pub const SETTLE_MICROS: i64 = 5_000_000;

/// Which records a tail follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailFilter {
    /// Only this parser's records.
    pub parser: Option<String>,
    /// Only this source's records.
    pub source: Option<String>,
    /// Only these kinds.
    pub kinds: KindSet,
}

/// Where a tail stands: what it has sent and where to read next.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// Every row with an id at or below `low` has been sent, or is taken as
    /// never coming: rows are looked for after it.
    low: i64,
    /// Where the next read starts: `low`, or the end of the last page when
    /// that page was full and more rows may follow.
    scan: i64,
    /// Ids above `low` already sent, with their `stored_at` stamps.
    sent: BTreeMap<i64, i64>,
    /// How long a sent id is kept to catch rows that commit out of id
    /// order; 0 when ids commit in order.
    settle: i64,
}

impl Cursor {
    /// A cursor that sends rows with ids above `after`. `settle` is 0 for a
    /// store whose ids become visible in order, else [`SETTLE_MICROS`].
    pub fn new(after: i64, settle: i64) -> Self {
        Self {
            low: after,
            scan: after,
            sent: BTreeMap::new(),
            settle: settle.max(0),
        }
    }

    /// Read the next page of rows with ids above this.
    pub fn read_after(&self) -> i64 {
        self.scan
    }

    /// Takes a page read after [`Cursor::read_after`] (ids ascending, at most
    /// [`PAGE`]) at `now` (µs) and returns the rows to send: those not sent
    /// before. `full` says the page hit its limit, so rows beyond its last
    /// id are still to be read.
    pub fn take(&mut self, page: Vec<StoredRow>, full: bool, now: i64) -> Vec<StoredRow> {
        let last = page.last().map(|row| row.id);
        let fresh: Vec<StoredRow> = page
            .into_iter()
            .filter(|row| row.id > self.low && !self.sent.contains_key(&row.id))
            .collect();
        if self.settle == 0 {
            // Ids commit in order: everything up to the last row read is done.
            if let Some(last) = last {
                self.low = self.low.max(last);
            }
            self.scan = self.low;
            return fresh;
        }
        for row in &fresh {
            self.sent.insert(row.id, row.stored_at);
        }
        // Advance `low` over the leading sent ids that have settled: a row
        // below a settled id could only still appear if its write took
        // longer than the horizon to commit.
        let horizon = now.saturating_sub(self.settle);
        while let Some((&id, &stored_at)) = self.sent.first_key_value() {
            if stored_at > horizon {
                break;
            }
            self.low = id;
            self.sent.remove(&id);
        }
        // A full page continues where it ended; otherwise the next read goes
        // back to `low` to look again for rows that committed late.
        self.scan = match (full, last) {
            (true, Some(last)) => last.max(self.low),
            _ => self.low,
        };
        fresh
    }

    /// Ids sent and kept to catch late commits (for tests and metrics).
    pub fn unsettled(&self) -> usize {
        self.sent.len()
    }
}

/// Rows read per look at the store.
pub const PAGE: u32 = 500;

/// A bit mask of kinds, bit `k` for the enum value `k`, for the SQL below.
fn kind_mask(kinds: KindSet) -> i64 {
    kinds.kinds().fold(0i64, |mask, kind| mask | (1i64 << (kind as i32)))
}

const ROWS: &str = "SELECT id, parser, kind, sent_at, received_at, stored_at, body FROM records \
     WHERE id > $1 AND ($2 = '' OR parser = $2) AND ($3 = '' OR source = $3) \
     AND (($4 >> kind) & 1) = 1 ORDER BY id LIMIT $5";

const ROW_TYPES: [Type; 7] = [
    Type::Int,
    Type::Text,
    Type::Int,
    Type::Int,
    Type::Int,
    Type::Int,
    Type::Blob,
];

/// The first `PAGE` matching rows with ids above `after`, ascending.
pub async fn read(
    store: &dyn Store,
    filter: &TailFilter,
    after: i64,
) -> Result<Vec<StoredRow>, StoreError> {
    let rows = store
        .read(
            ROWS,
            &[
                Value::Int(after),
                Value::Text(filter.parser.as_deref().unwrap_or("")),
                Value::Text(filter.source.as_deref().unwrap_or("")),
                Value::Int(kind_mask(filter.kinds)),
                Value::Int(i64::from(PAGE)),
            ],
            &ROW_TYPES,
        )
        .await?;
    rows.iter().map(stored_row).collect()
}

fn stored_row(row: &Row) -> Result<StoredRow, StoreError> {
    Ok(StoredRow {
        id: row.int(0)?,
        parser: row.text(1)?,
        kind: i32::try_from(row.int(2)?).unwrap_or(RecordKind::Unspecified as i32),
        sent_at: row.int(3)?,
        received_at: row.int(4)?,
        stored_at: row.int(5)?,
        body: row.blob(6)?.to_vec(),
    })
}

/// The id to follow after so that the last `backlog` matching rows are
/// sent first: the id before them, or the newest id when `backlog` is 0.
pub async fn start(
    store: &dyn Store,
    filter: &TailFilter,
    backlog: u32,
) -> Result<i64, StoreError> {
    let (sql, limit) = if backlog == 0 {
        ("SELECT COALESCE(MAX(id), 0) FROM records", None)
    } else {
        (
            "SELECT COALESCE(MIN(id) - 1, 0) FROM (SELECT id FROM records \
             WHERE ($1 = '' OR parser = $1) AND ($2 = '' OR source = $2) \
             AND (($3 >> kind) & 1) = 1 ORDER BY id DESC LIMIT $4) AS newest",
            Some(backlog),
        )
    };
    let params: Vec<Value<'_>> = match limit {
        None => Vec::new(),
        Some(limit) => vec![
            Value::Text(filter.parser.as_deref().unwrap_or("")),
            Value::Text(filter.source.as_deref().unwrap_or("")),
            Value::Int(kind_mask(filter.kinds)),
            Value::Int(i64::from(limit)),
        ],
    };
    let rows = store.read(sql, &params, &[Type::Int]).await?;
    match rows.first() {
        Some(row) => row.int(0),
        None => Ok(0),
    }
}
