//! The averages workload: random numbers counted into per-window averages.
//!
//! Each writer (one parser instance) keeps its own partial `(count, sum)`
//! per window, so replicas never contend on one row; a read sums the
//! partials, which gives the exact average however many writers
//! contributed.

use async_trait::async_trait;

use super::{Batch, Stored, Workload};
use crate::store::{
    Store, StoreError,
    sql::{Migration, Sql, Type, Value},
};

/// The parser type, and the consumer group it runs as by default.
pub const GROUP: &str = "average";

/// A number counted into its window's average.
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    /// Start of the window (µs since the epoch).
    pub window_start: i64,
    /// Length of the window in milliseconds.
    pub window_ms: u32,
    /// The number.
    pub value: i64,
}

/// The averages workload.
pub struct Averages;

const TABLE: &str = "
CREATE TABLE average_partials (
    parser TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_ms BIGINT NOT NULL,
    writer TEXT NOT NULL,
    count BIGINT NOT NULL,
    sum BIGINT NOT NULL,
    PRIMARY KEY (parser, window_start, window_ms, writer)
);";

/// One writer's partial for a window: `$1` parser, `$2` window start, `$3`
/// window ms, `$4` writer. Read, added to in Rust with a checked sum, and
/// written back with [`UPSERT_PARTIAL`]: only its writer (one parser
/// instance, writing one batch at a time) ever touches the row, so the read
/// and the write cannot interleave with another's. (SQLite would turn an
/// overflowing `sum + excluded.sum` into a float rather than fail.)
const SELECT_PARTIAL: &str = "\
SELECT count, sum FROM average_partials \
WHERE parser = $1 AND window_start = $2 AND window_ms = $3 AND writer = $4";

/// Sets one writer's partial for a window: `$1` parser, `$2` window start,
/// `$3` window ms, `$4` writer, `$5` count, `$6` sum.
const UPSERT_PARTIAL: &str = "\
INSERT INTO average_partials (parser, window_start, window_ms, writer, count, sum) \
VALUES ($1, $2, $3, $4, $5, $6) \
ON CONFLICT (parser, window_start, window_ms, writer) DO UPDATE SET \
count = excluded.count, sum = excluded.sum";

/// Combined partials per window, newest first: `$1` parser, `$2` from,
/// `$3` to, `$4` limit.
const SELECT_AVERAGES: &str = "\
SELECT window_start, window_ms, CAST(SUM(count) AS BIGINT), CAST(SUM(sum) AS BIGINT) \
FROM average_partials \
WHERE parser = $1 AND window_start >= $2 AND window_start < $3 \
GROUP BY window_start, window_ms \
ORDER BY window_start DESC, window_ms \
LIMIT $4";

/// Per window `(start, ms)`: the count and exact sum of a batch's numbers.
type Partials = std::collections::BTreeMap<(i64, u32), (i64, i128)>;

fn partials(facts: &[Stored<'_, Number>]) -> Partials {
    let mut partials = Partials::new();
    for Stored { fact, .. } in facts {
        let partial = partials
            .entry((fact.window_start, fact.window_ms))
            .or_default();
        partial.0 += 1;
        partial.1 += i128::from(fact.value);
    }
    partials
}

/// A writer's stored partial `(count, sum)` plus new numbers, checked: a
/// sum past the 64-bit range is refused as data, never wrapped nor turned
/// into a float.
fn add_partial(
    window: (i64, u32),
    stored: Option<(i64, i64)>,
    new: (i64, i128),
) -> Result<(i64, i64), StoreError> {
    let (count, sum) = stored.unwrap_or_default();
    let total = i128::from(sum) + new.1;
    let sum = i64::try_from(total).map_err(|_| {
        StoreError::Data(format!(
            "the sum of the {} ms window at {} µs would be {total}, past the 64-bit range",
            window.1, window.0
        ))
    })?;
    Ok((count + new.0, sum))
}

#[async_trait]
impl Workload for Averages {
    type Fact = Number;

    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 2,
        name: "workloads",
        sql: TABLE,
    }];

    fn texts(_: &Number) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    async fn write(
        sql: &mut dyn Sql,
        batch: Batch<'_>,
        facts: &[Stored<'_, Number>],
    ) -> Result<(), StoreError> {
        for (window, new) in partials(facts) {
            let key = [
                Value::Text(batch.parser),
                Value::Int(window.0),
                Value::Int(i64::from(window.1)),
                Value::Text(batch.writer),
            ];
            let rows = sql
                .fetch(SELECT_PARTIAL, &key, &[Type::Int, Type::Int])
                .await?;
            let stored = match rows.first() {
                Some(row) => Some((row.int(0)?, row.int(1)?)),
                None => None,
            };
            let (count, sum) = add_partial(window, stored, new)?;
            let mut values = key.to_vec();
            values.extend([Value::Int(count), Value::Int(sum)]);
            sql.execute(UPSERT_PARTIAL, &values).await?;
        }
        Ok(())
    }

    #[cfg(test)]
    fn conformance() -> Vec<super::Check> {
        vec![
            ("averages combine partials", tests::combine_partials),
            ("averages count a repeated key once", tests::repeated_key),
            ("averages never wrap", tests::sums_never_wrap),
        ]
    }
}

/// Selects windows of averages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AverageFilter {
    /// The average parser's consumer group.
    pub parser: String,
    /// Only windows starting at or after this time (µs).
    pub from: i64,
    /// Only windows starting before this time (µs).
    pub to: i64,
    /// At most this many windows, newest first.
    pub limit: u32,
}

/// One window's combined partials.
#[derive(Debug, Clone, PartialEq)]
pub struct AverageRow {
    /// Start of the window (µs).
    pub window_start: i64,
    /// Length of the window (ms).
    pub window_ms: u32,
    /// Numbers in the window.
    pub count: u64,
    /// Their sum.
    pub sum: i64,
}

/// Combined average partials per window, newest first.
pub async fn averages(
    store: &dyn Store,
    filter: &AverageFilter,
) -> Result<Vec<AverageRow>, StoreError> {
    let params = [
        Value::Text(&filter.parser),
        Value::Int(filter.from),
        Value::Int(filter.to),
        Value::Int(i64::from(filter.limit)),
    ];
    let types = [Type::Int, Type::Int, Type::Int, Type::Int];
    store
        .read(SELECT_AVERAGES, &params, &types)
        .await?
        .iter()
        .map(|row| {
            Ok(AverageRow {
                window_start: row.int(0)?,
                window_ms: row.int(1)? as u32,
                count: row.int(2)? as u64,
                sum: row.int(3)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::store::conformance::{batch, record, with_fact};
    use crate::workloads::Fact;

    fn number(window_start: i64, value: i64) -> Fact {
        Fact::Number(Number {
            window_start,
            window_ms: 1000,
            value,
        })
    }

    fn all_windows() -> AverageFilter {
        AverageFilter {
            parser: GROUP.into(),
            from: i64::MIN,
            to: i64::MAX,
            limit: 10,
        }
    }

    /// Two writers' partials combine into the exact average; a redelivered
    /// key adds nothing.
    pub fn combine_partials(store: &dyn Store) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let a = vec![
                with_fact("g1", 0, 0, 0, number(1_000_000, 10)),
                with_fact("g1", 1, 0, 0, number(1_000_000, 20)),
                with_fact("g1", 2, 0, 0, number(2_000_000, 7)),
            ];
            let b = vec![with_fact("g2", 0, 0, 0, number(1_000_000, 3))];
            store.write(&batch(GROUP, "w1", a.clone())).await.unwrap();
            store.write(&batch(GROUP, "w2", b)).await.unwrap();
            // The same keys again, through the other writer: nothing changes.
            let again = store.write(&batch(GROUP, "w2", a)).await.unwrap();
            assert_eq!(again.stored, 0);
            let rows = averages(store, &all_windows()).await.unwrap();
            assert_eq!(
                rows,
                vec![
                    AverageRow {
                        window_start: 2_000_000,
                        window_ms: 1000,
                        count: 1,
                        sum: 7
                    },
                    AverageRow {
                        window_start: 1_000_000,
                        window_ms: 1000,
                        count: 3,
                        sum: 33
                    },
                ]
            );
        })
    }

    /// A key twice in one batch (a redelivery gathered beside its first
    /// delivery) is stored, counted and averaged once: the first copy wins.
    pub fn repeated_key(store: &dyn Store) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let records = vec![
                with_fact("g", 0, 0, 0, number(1_000_000, 20)),
                with_fact("g", 0, 0, 0, number(1_000_000, 30)),
                with_fact("g", 1, 0, 0, number(1_000_000, 10)),
                record("t", 0),
                record("t", 0),
            ];
            let written = store.write(&batch(GROUP, "w", records)).await.unwrap();
            assert_eq!((written.stored, written.duplicates), (3, 2));
            let rows = averages(store, &all_windows()).await.unwrap();
            assert_eq!(
                rows,
                vec![AverageRow {
                    window_start: 1_000_000,
                    window_ms: 1000,
                    count: 2,
                    sum: 30
                }]
            );
            assert_eq!(
                store.counts().await.unwrap().parsers,
                vec![(GROUP.to_string(), 3)]
            );
        })
    }

    /// Three numbers of 2^63−1 in one window: the first is held exactly, and
    /// each of the others is refused as data (never wrapped, and never turned
    /// into a float), whether it comes in one batch or alone; the window's
    /// average stays exact.
    pub fn sums_never_wrap(store: &dyn Store) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let max = |seq| with_fact("big", seq, 0, 0, number(0, i64::MAX));
            let all = store
                .write(&batch(GROUP, "w", vec![max(0), max(1), max(2)]))
                .await;
            assert!(matches!(all, Err(StoreError::Data(_))), "{all:?}");
            assert_eq!(
                store
                    .write(&batch(GROUP, "w", vec![max(0)]))
                    .await
                    .unwrap()
                    .stored,
                1
            );
            for seq in [1, 2] {
                let alone = store.write(&batch(GROUP, "w", vec![max(seq)])).await;
                assert!(
                    matches!(&alone, Err(StoreError::Data(e)) if e.contains("64-bit")),
                    "{alone:?}"
                );
            }
            // Nothing of the refused batches was kept.
            let rows = averages(store, &all_windows()).await.unwrap();
            assert_eq!(
                rows,
                vec![AverageRow {
                    window_start: 0,
                    window_ms: 1000,
                    count: 1,
                    sum: i64::MAX
                }]
            );
            assert_eq!(
                store.counts().await.unwrap().parsers,
                vec![(GROUP.to_string(), 1)]
            );
            // The other end of the range holds too.
            let min = |seq| with_fact("small", seq, 0, 0, number(5_000_000, i64::MIN));
            store.write(&batch(GROUP, "w", vec![min(0)])).await.unwrap();
            let below = store.write(&batch(GROUP, "w", vec![min(1)])).await;
            assert!(matches!(below, Err(StoreError::Data(_))), "{below:?}");
        })
    }
}
