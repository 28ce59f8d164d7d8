//! The SMS workload: the outcome of each simulated send, read back as
//! progress per sender.

use async_trait::async_trait;

use super::{Batch, Stored, Workload};
use crate::store::{
    Store, StoreError,
    sql::{Migration, Sql, Table, Type, Value},
};

/// The parser type, and the consumer group it runs as by default.
pub const GROUP: &str = "sms_sender";

/// The outcome of one simulated SMS send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The label of the sender instance that handled it.
    pub sender: String,
    /// Whether the send succeeded.
    pub sent: bool,
    /// Simulated send time, retries included (µs).
    pub duration_us: i64,
}

/// The SMS workload.
pub struct Sms;

const TABLE: &str = "
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

const OUTCOMES: Table = Table {
    name: "sms_outcomes",
    columns: &[
        ("parser", Type::Text),
        ("source", Type::Text),
        ("seq", Type::Int),
        ("sender", Type::Text),
        ("outcome", Type::Text),
        ("duration_us", Type::Int),
    ],
    key: "parser, source, seq",
};

/// `$1` parser: per sender, messages sent, failed, and total send time.
const SELECT_PROGRESS: &str = "\
SELECT sender, \
CAST(SUM(CASE WHEN outcome = 'sent' THEN 1 ELSE 0 END) AS BIGINT), \
CAST(SUM(CASE WHEN outcome = 'sent' THEN 0 ELSE 1 END) AS BIGINT), \
CAST(SUM(duration_us) AS BIGINT) \
FROM sms_outcomes WHERE parser = $1 GROUP BY sender ORDER BY sender";

#[async_trait]
impl Workload for Sms {
    type Fact = Outcome;

    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 2,
        name: "workloads",
        sql: TABLE,
    }];

    fn texts(fact: &Outcome) -> Vec<(&'static str, &str)> {
        vec![("sender", &fact.sender)]
    }

    async fn write(
        sql: &mut dyn Sql,
        batch: Batch<'_>,
        facts: &[Stored<'_, Outcome>],
    ) -> Result<(), StoreError> {
        let mut values = Vec::with_capacity(facts.len() * OUTCOMES.columns.len());
        for Stored { record, fact } in facts {
            values.extend([
                Value::Text(batch.parser),
                Value::Text(&record.source),
                Value::Int(record.seq as i64),
                Value::Text(&fact.sender),
                Value::Text(if fact.sent { "sent" } else { "failed" }),
                Value::Int(fact.duration_us),
            ]);
        }
        sql.insert(&OUTCOMES, &values).await
    }

    #[cfg(test)]
    fn conformance() -> Vec<super::Check> {
        vec![("sms progress counts per sender", tests::progress_per_sender)]
    }
}

/// SMS outcomes of one sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsRow {
    /// The sender's label.
    pub sender: String,
    /// Messages sent.
    pub sent: u64,
    /// Messages failed.
    pub failed: u64,
    /// Total simulated send time (µs).
    pub total_us: i64,
}

/// SMS outcomes of `parser`, per sender, sorted by sender.
pub async fn progress(store: &dyn Store, parser: &str) -> Result<Vec<SmsRow>, StoreError> {
    let types = [Type::Text, Type::Int, Type::Int, Type::Int];
    store
        .read(SELECT_PROGRESS, &[Value::Text(parser)], &types)
        .await?
        .iter()
        .map(|row| {
            Ok(SmsRow {
                sender: row.text(0)?,
                sent: row.int(1)? as u64,
                failed: row.int(2)? as u64,
                total_us: row.int(3)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::store::conformance::{batch, with_fact};
    use crate::workloads::Fact;

    pub fn progress_per_sender(store: &dyn Store) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let outcome = |seq, sender: &str, sent, duration_us| {
                with_fact(
                    "m",
                    seq,
                    0,
                    0,
                    Fact::Sms(Outcome {
                        sender: sender.into(),
                        sent,
                        duration_us,
                    }),
                )
            };
            let records = vec![
                outcome(0, "fast", true, 10),
                outcome(1, "fast", false, 20),
                outcome(2, "slow", true, 300),
            ];
            store
                .write(&batch(GROUP, "w", records.clone()))
                .await
                .unwrap();
            store.write(&batch(GROUP, "w", records)).await.unwrap();
            let rows = progress(store, GROUP).await.unwrap();
            assert_eq!(
                rows,
                vec![
                    SmsRow {
                        sender: "fast".into(),
                        sent: 1,
                        failed: 1,
                        total_us: 30
                    },
                    SmsRow {
                        sender: "slow".into(),
                        sent: 1,
                        failed: 0,
                        total_us: 300
                    },
                ]
            );
        })
    }
}
