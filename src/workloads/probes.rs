//! The probes workload: burst probes with their send, arrival and storage
//! times, read back as the average transit times of recent probes.

use async_trait::async_trait;

use super::{Batch, Stored, Workload};
use crate::store::{
    Store, StoreError,
    sql::{Migration, Sql, Table, Type, Value},
};

/// The parser type, and the consumer group it runs as by default.
pub const GROUP: &str = "probe";

/// A burst probe; its send and arrival times are the record's.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The probe's number.
    pub number: u64,
}

/// The probes workload.
pub struct Probes;

const TABLE: &str = "
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
CREATE INDEX probes_by_sent_at ON probes (parser, sent_at);";

const PROBES: Table = Table {
    name: "probes",
    columns: &[
        ("parser", Type::Text),
        ("source", Type::Text),
        ("seq", Type::Int),
        ("number", Type::Int),
        ("sent_at", Type::Int),
        ("received_at", Type::Int),
        ("stored_at", Type::Int),
    ],
    key: "parser, source, seq",
};

/// `$1` parser: highest number and count of every probe.
const SELECT_TOTALS: &str = "SELECT MAX(number), COUNT(*) FROM probes WHERE parser = $1";

/// `$1` parser, `$2` window start, `$3` now: the recent probes' count and
/// average transit times (µs).
const SELECT_WINDOW: &str = "\
SELECT COUNT(*), \
CAST(AVG(received_at - sent_at) AS DOUBLE PRECISION), \
CAST(AVG(stored_at - sent_at) AS DOUBLE PRECISION) \
FROM probes WHERE parser = $1 AND sent_at >= $2 AND sent_at <= $3";

#[async_trait]
impl Workload for Probes {
    type Fact = Probe;

    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 2,
        name: "workloads",
        sql: TABLE,
    }];

    fn texts(_: &Probe) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    async fn write(
        sql: &mut dyn Sql,
        batch: Batch<'_>,
        facts: &[Stored<'_, Probe>],
    ) -> Result<(), StoreError> {
        let mut values = Vec::with_capacity(facts.len() * PROBES.columns.len());
        for Stored { record, fact } in facts {
            values.extend([
                Value::Text(batch.parser),
                Value::Text(&record.source),
                Value::Int(record.seq as i64),
                Value::Int(fact.number as i64),
                Value::Int(record.sent_at),
                Value::Int(record.received_at),
                Value::Int(batch.stored_at),
            ]);
        }
        sql.insert(&PROBES, &values).await
    }

    #[cfg(test)]
    fn conformance() -> Vec<super::Check> {
        vec![("probes average the last ten seconds", tests::latency_window)]
    }
}

/// The burst probe's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyRow {
    /// Highest probe number stored, if any.
    pub highest_number: Option<u64>,
    /// Probes stored in all.
    pub stored: u64,
    /// Probes sent inside the window.
    pub recent: u64,
    /// Average of received_at - sent_at over the window (µs).
    pub avg_to_ingest_us: Option<f64>,
    /// Average of stored_at - sent_at over the window (µs).
    pub avg_to_store_us: Option<f64>,
}

/// The probe figures of `parser`: averages over probes sent in
/// `[now - window, now]` (µs).
pub async fn latency(
    store: &dyn Store,
    parser: &str,
    now: i64,
    window: i64,
) -> Result<LatencyRow, StoreError> {
    let totals = store
        .read(
            SELECT_TOTALS,
            &[Value::Text(parser)],
            &[Type::Int, Type::Int],
        )
        .await?;
    let recent = store
        .read(
            SELECT_WINDOW,
            &[
                Value::Text(parser),
                Value::Int(now - window),
                Value::Int(now),
            ],
            &[Type::Int, Type::Real, Type::Real],
        )
        .await?;
    let (Some(totals), Some(recent)) = (totals.first(), recent.first()) else {
        return Err(StoreError::Unavailable(
            "an aggregate query returned no row".into(),
        ));
    };
    Ok(LatencyRow {
        highest_number: totals.opt_int(0)?.map(|n| n as u64),
        stored: totals.int(1)? as u64,
        recent: recent.int(0)? as u64,
        avg_to_ingest_us: recent.opt_real(1)?,
        avg_to_store_us: recent.opt_real(2)?,
    })
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::store::conformance::{batch, with_fact};
    use crate::workloads::Fact;

    fn probe(number: u64) -> Fact {
        Fact::Probe(Probe { number })
    }

    /// A known data set: probes sent at known times with known transit
    /// times; only those sent in the last 10 s count toward the averages.
    pub fn latency_window(store: &dyn Store) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let now = 100_000_000;
            let probes = vec![
                // 15 s old: outside the window, but its number is the highest.
                with_fact("p", 0, now - 15_000_000, now - 14_000_000, probe(90)),
                // Inside: transit to ingest 2 ms, 4 ms and 9 ms.
                with_fact("p", 1, now - 9_000_000, now - 8_998_000, probe(1)),
                with_fact("p", 2, now - 5_000_000, now - 4_996_000, probe(2)),
                with_fact("p", 3, now - 1_000, now + 8_000, probe(3)),
            ];
            store.write(&batch(GROUP, "w", probes)).await.unwrap();
            let latency = latency(store, GROUP, now, 10_000_000).await.unwrap();
            assert_eq!(latency.highest_number, Some(90));
            assert_eq!((latency.stored, latency.recent), (4, 3));
            assert_eq!(latency.avg_to_ingest_us, Some(5_000.0));
            assert!(latency.avg_to_store_us.unwrap() > 0.0);
            let empty = super::latency(store, GROUP, now + 60_000_000, 10_000_000)
                .await
                .unwrap();
            assert_eq!((empty.recent, empty.avg_to_ingest_us), (0, None));
        })
    }
}
