//! Following stored records as they arrive (`tributary tail`).
//!
//! A tail reads `records` in id order, in *rounds*: a round first reads the
//! newest id (the round's `high`), then pages through the matching rows
//! between the cursor and `high`. On SQLite that is exact: one writer
//! commits at a time, so once `high` is visible every smaller id is too,
//! and the cursor moves to `high` when the round ends. On PostgreSQL
//! writers (parser replicas) commit concurrently, so an id below `high` can
//! still become visible after it was read. [`Cursor`] then moves only to a
//! `high` seen at least a settling horizon before the round began, reads the
//! unsettled ids again each round, and sends only what it has not sent. A
//! row whose write took longer than the horizon to commit can be missed;
//! the horizon is far above a write's commit time.
//!
//! [`Cursor`] is a pure state machine (property-tested below against a
//! model store with late commits); [`read`], [`newest`] and [`start`] are
//! the SQL.

use std::collections::{BTreeSet, VecDeque};

use crate::{
    kind::KindSet,
    proto::RecordKind,
    store::{
        Store, StoreError, StoredRow,
        sql::{Row, Type, Value},
    },
};

/// How long after an id was seen every smaller id is assumed committed when
/// ids may commit out of order (PostgreSQL): 5 s, while a write commits in
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
    /// Every matching row with an id at or below `low` has been sent, or is
    /// taken as never coming.
    low: i64,
    /// Where the round's next page starts.
    scan: i64,
    /// The round under way: its `high`, and where `low` may move when it
    /// ends.
    round: Option<Round>,
    /// Ids above `low` already sent (only kept when ids commit out of order).
    sent: BTreeSet<i64>,
    /// Newest ids seen and when (µs), oldest first, until they settle.
    marks: VecDeque<(i64, i64)>,
    /// The settling horizon; 0 when ids commit in order.
    settle: i64,
}

#[derive(Debug, Clone, Copy)]
struct Round {
    high: i64,
    safe: i64,
}

impl Cursor {
    /// A cursor that sends rows with ids above `after`. `settle` is 0 for a
    /// store whose ids become visible in order, else [`SETTLE_MICROS`].
    pub fn new(after: i64, settle: i64) -> Self {
        Self {
            low: after,
            scan: after,
            round: None,
            sent: BTreeSet::new(),
            marks: VecDeque::new(),
            settle: settle.max(0),
        }
    }

    /// Whether a round is under way; if not, read the newest id and call
    /// [`Cursor::begin`].
    pub fn in_round(&self) -> bool {
        self.round.is_some()
    }

    /// Starts a round at `now` (µs), `high` being the newest id in the
    /// store.
    pub fn begin(&mut self, high: i64, now: i64) {
        let safe = if self.settle == 0 {
            high
        } else {
            self.marks.push_back((high, now));
            let horizon = now.saturating_sub(self.settle);
            let mut safe = self.low;
            while let Some(&(id, seen)) = self.marks.front() {
                if seen > horizon {
                    break;
                }
                safe = safe.max(id);
                self.marks.pop_front();
            }
            safe
        };
        self.scan = self.low;
        self.round = Some(Round { high, safe });
    }

    /// The ids the next page covers: above the first, at most the second.
    /// `None` when no round is under way or nothing is left to read in it.
    pub fn range(&self) -> Option<(i64, i64)> {
        let round = self.round?;
        (self.scan < round.high).then_some((self.scan, round.high))
    }

    /// Takes a page read over [`Cursor::range`] (ids ascending, at most
    /// [`PAGE`]) and returns the rows to send: those not sent before. `full`
    /// says the page hit its limit, so the round goes on after its last id;
    /// otherwise the round ends.
    pub fn take(&mut self, page: Vec<StoredRow>, full: bool) -> Vec<StoredRow> {
        let last = page.last().map(|row| row.id);
        let fresh: Vec<StoredRow> = page
            .into_iter()
            .filter(|row| row.id > self.low && !self.sent.contains(&row.id))
            .collect();
        if self.settle > 0 {
            self.sent.extend(fresh.iter().map(|row| row.id));
        }
        match (full, last) {
            (true, Some(last)) => self.scan = self.scan.max(last),
            _ => self.end_round(),
        }
        fresh
    }

    fn end_round(&mut self) {
        if let Some(round) = self.round.take() {
            self.low = self.low.max(round.safe);
            self.sent = self.sent.split_off(&(self.low + 1));
        }
        self.scan = self.low;
    }

    /// Ids sent and kept to catch late commits.
    pub fn unsettled(&self) -> usize {
        self.sent.len()
    }
}

/// Rows read per look at the store.
pub const PAGE: u32 = 500;

/// A bit mask of kinds, bit `k` for the enum value `k`, for the SQL below.
fn kind_mask(kinds: KindSet) -> i64 {
    kinds
        .kinds()
        .fold(0i64, |mask, kind| mask | (1i64 << (kind as i32)))
}

const ROWS: &str = "SELECT id, parser, CAST(kind AS BIGINT), sent_at, received_at, stored_at, body FROM records \
     WHERE id > $1 AND id <= $2 AND ($3 = '' OR parser = $3) AND ($4 = '' OR source = $4) \
     AND (($5 >> kind) & 1) = 1 ORDER BY id LIMIT $6";

const ROW_TYPES: [Type; 7] = [
    Type::Int,
    Type::Text,
    Type::Int,
    Type::Int,
    Type::Int,
    Type::Int,
    Type::Blob,
];

/// The first [`PAGE`] matching rows with ids in `(after, upto]`, ascending.
pub async fn read(
    store: &dyn Store,
    filter: &TailFilter,
    (after, upto): (i64, i64),
) -> Result<Vec<StoredRow>, StoreError> {
    let rows = store
        .read(
            ROWS,
            &[
                Value::Int(after),
                Value::Int(upto),
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

/// The newest id in the store, 0 when it is empty.
pub async fn newest(store: &dyn Store) -> Result<i64, StoreError> {
    let rows = store
        .read(
            "SELECT COALESCE(MAX(id), 0) FROM records",
            &[],
            &[Type::Int],
        )
        .await?;
    match rows.first() {
        Some(row) => row.int(0),
        None => Ok(0),
    }
}

/// The id to follow after so that the last `backlog` matching rows are
/// sent first: the id before them, or the newest id when `backlog` is 0.
pub async fn start(
    store: &dyn Store,
    filter: &TailFilter,
    backlog: u32,
) -> Result<i64, StoreError> {
    let newest = newest(store).await?;
    if backlog == 0 {
        return Ok(newest);
    }
    let rows = store
        .read(
            "SELECT MIN(id) FROM (SELECT id FROM records \
             WHERE ($1 = '' OR parser = $1) AND ($2 = '' OR source = $2) \
             AND (($3 >> kind) & 1) = 1 ORDER BY id DESC LIMIT $4) AS backlog",
            &[
                Value::Text(filter.parser.as_deref().unwrap_or("")),
                Value::Text(filter.source.as_deref().unwrap_or("")),
                Value::Int(kind_mask(filter.kinds)),
                Value::Int(i64::from(backlog)),
            ],
            &[Type::Int],
        )
        .await?;
    match rows
        .first()
        .map(|row| row.opt_int(0))
        .transpose()?
        .flatten()
    {
        Some(oldest) => Ok(oldest - 1),
        None => Ok(newest),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A page in the model is this small, so rounds span several pages.
    const MODEL_PAGE: usize = 3;
    const SETTLE: i64 = 100;

    /// A row of the model store: its id, whether the tail's filter matches
    /// it, and when its write commits.
    #[derive(Debug, Clone)]
    struct ModelRow {
        id: i64,
        matches: bool,
        commits_at: i64,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Rows allocated now, committing after these delays (below the
        /// horizon), matching the filter or not.
        Insert(Vec<(i64, bool)>),
        /// Time passes.
        Wait(i64),
        /// The tail looks at the store once.
        Step,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                prop::collection::vec((0..SETTLE, any::<bool>()), 1..6).prop_map(Op::Insert),
                (1..40i64).prop_map(Op::Wait),
                Just(Op::Step),
                Just(Op::Step),
            ],
            1..120,
        )
    }

    struct Model {
        rows: Vec<ModelRow>,
        now: i64,
        in_order: bool,
    }

    impl Model {
        fn visible(&self, row: &ModelRow) -> bool {
            row.commits_at <= self.now
        }

        fn newest(&self) -> i64 {
            self.rows
                .iter()
                .filter(|row| self.visible(row))
                .map(|row| row.id)
                .max()
                .unwrap_or(0)
        }

        fn page(&self, (after, upto): (i64, i64)) -> Vec<StoredRow> {
            self.rows
                .iter()
                .filter(|row| self.visible(row) && row.matches)
                .filter(|row| row.id > after && row.id <= upto)
                .take(MODEL_PAGE)
                .map(|row| StoredRow {
                    id: row.id,
                    parser: String::new(),
                    kind: 0,
                    sent_at: 0,
                    received_at: 0,
                    stored_at: 0,
                    body: Vec::new(),
                })
                .collect()
        }

        /// One look: what the tail sends.
        fn step(&self, cursor: &mut Cursor) -> Vec<i64> {
            if !cursor.in_round() {
                cursor.begin(self.newest(), self.now);
            }
            let (page, full) = match cursor.range() {
                Some(range) => {
                    let page = self.page(range);
                    let full = page.len() == MODEL_PAGE;
                    (page, full)
                }
                None => (Vec::new(), false),
            };
            cursor.take(page, full).iter().map(|row| row.id).collect()
        }
    }

    fn follow(ops: Vec<Op>, in_order: bool) -> Result<(), TestCaseError> {
        let mut model = Model {
            rows: Vec::new(),
            now: 0,
            in_order,
        };
        let mut cursor = Cursor::new(0, if in_order { 0 } else { SETTLE });
        let mut sent = BTreeSet::new();
        let mut check = |model: &Model, ids: Vec<i64>| -> Result<(), TestCaseError> {
            for id in ids {
                let row = &model.rows[(id - 1) as usize];
                prop_assert!(row.matches && model.visible(row), "sent {row:?}");
                prop_assert!(sent.insert(id), "sent {id} twice");
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Insert(rows) => {
                    for (delay, matches) in rows {
                        let id = model.rows.len() as i64 + 1;
                        let delay = if model.in_order { 0 } else { delay };
                        model.rows.push(ModelRow {
                            id,
                            matches,
                            commits_at: model.now + delay,
                        });
                    }
                }
                Op::Wait(micros) => model.now += micros,
                Op::Step => {
                    let ids = model.step(&mut cursor);
                    check(&model, ids)?;
                }
            }
            prop_assert!(cursor.unsettled() <= model.rows.len());
        }
        // Once every write has committed and settled, a few rounds send
        // every matching row.
        model.now += 2 * SETTLE + 1;
        for _ in 0..3 * (model.rows.len() + 2) {
            let ids = model.step(&mut cursor);
            check(&model, ids)?;
            model.now += 1;
        }
        let matching: BTreeSet<i64> = model
            .rows
            .iter()
            .filter(|row| row.matches)
            .map(|row| row.id)
            .collect();
        prop_assert_eq!(sent, matching);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// With concurrent writers committing out of id order, every
        /// matching row is sent exactly once.
        #[test]
        fn late_commits_are_sent_once(ops in ops()) {
            follow(ops, false)?;
        }

        /// With one writer, the cursor keeps nothing and still sends every
        /// matching row exactly once.
        #[test]
        fn in_order_commits_are_sent_once(ops in ops()) {
            follow(ops, true)?;
        }
    }

    #[test]
    fn in_order_cursor_keeps_no_ids() {
        let mut cursor = Cursor::new(10, 0);
        cursor.begin(12, 0);
        let row = |id| StoredRow {
            id,
            parser: String::new(),
            kind: 0,
            sent_at: 0,
            received_at: 0,
            stored_at: 0,
            body: Vec::new(),
        };
        assert_eq!(cursor.range(), Some((10, 12)));
        let sent = cursor.take(vec![row(11), row(12)], false);
        assert_eq!(sent.len(), 2);
        assert_eq!((cursor.unsettled(), cursor.in_round()), (0, false));
        cursor.begin(12, 1);
        assert_eq!(cursor.range(), None);
    }
}
