//! Behaviour every store backend shares (paging, dead letters, refusals),
//! written once and run against each backend by its own tests, and the
//! builders the workloads' conformance checks use.

use super::{
    DeadLetterFilter, Fact, NewDeadLetter, NewRecord, RecordFilter, Store, StoreError, WriteBatch,
};

/// A text record with no fact.
pub fn record(source: &str, seq: u64) -> NewRecord {
    NewRecord {
        source: source.into(),
        seq,
        kind: 5,
        sent_at: 1,
        received_at: 2,
        body: vec![seq as u8],
        fact: None,
    }
}

pub fn with_fact(source: &str, seq: u64, sent_at: i64, received_at: i64, fact: Fact) -> NewRecord {
    NewRecord {
        sent_at,
        received_at,
        fact: Some(fact),
        ..record(source, seq)
    }
}

pub fn batch(parser: &str, writer: &str, records: Vec<NewRecord>) -> WriteBatch {
    WriteBatch {
        parser: parser.into(),
        writer: writer.into(),
        records,
        dead_letters: vec![],
    }
}

/// Runs every registered workload's conformance checks, each against a
/// fresh store from `open`.
pub async fn every_workload<S, F>(open: impl Fn() -> F)
where
    S: Store,
    F: std::future::Future<Output = S>,
{
    for (name, check) in crate::workloads::conformance() {
        let store = open().await;
        eprintln!("workload conformance: {name}");
        check(&store).await;
        store.close().await;
    }
}

pub async fn reads_back_in_pages_and_keeps_dead_letters(store: &dyn Store) {
    let batch = WriteBatch {
        parser: "raw".into(),
        writer: "w".into(),
        records: (0..10)
            .map(|i| record(if i % 2 == 0 { "a" } else { "b" }, i))
            .collect(),
        dead_letters: vec![NewDeadLetter {
            source: "c".into(),
            seq: 7,
            kind: 5,
            body: vec![1, 2],
            error: "boom".into(),
            attempts: 5,
        }],
    };
    store.write(&batch).await.unwrap();
    store.write(&batch).await.unwrap();
    let page = store
        .records(&RecordFilter {
            source: Some("b".into()),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.body[0]).collect::<Vec<_>>(),
        vec![1, 3, 5]
    );
    let next = store
        .records(&RecordFilter {
            source: Some("b".into()),
            limit: 3,
            after_id: page[2].id,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|r| r.body[0]).collect::<Vec<_>>(),
        vec![7, 9]
    );
    let raw = |after_id, limit| DeadLetterFilter {
        parser: Some("raw".into()),
        after_id,
        limit,
    };
    let dead = store.dead_letters(&raw(0, 10)).await.unwrap();
    assert_eq!(
        (dead.len(), dead[0].error.as_str(), dead[0].attempts),
        (1, "boom", 5)
    );
    assert_eq!(store.counts().await.unwrap().dead_letters, 1);
    // Dead letters page by id like records: the next page starts after the
    // last id of the one before.
    let more = WriteBatch {
        parser: "raw".into(),
        writer: "w".into(),
        records: vec![],
        dead_letters: (10..15)
            .map(|seq| NewDeadLetter {
                source: "c".into(),
                seq,
                kind: 5,
                body: vec![seq as u8],
                error: "boom".into(),
                attempts: 5,
            })
            .collect(),
    };
    store.write(&more).await.unwrap();
    let first = store.dead_letters(&raw(0, 4)).await.unwrap();
    let rest = store.dead_letters(&raw(first[3].id, 4)).await.unwrap();
    let bodies: Vec<u8> = first.iter().chain(&rest).map(|d| d.body[0]).collect();
    assert_eq!(bodies, vec![1, 10, 11, 12, 13, 14]);
    assert!(first.windows(2).all(|w| w[0].id < w[1].id));
}

/// Text neither backend can hold alike (a NUL, which PostgreSQL text
/// refuses) is refused as data by both, in a record's source or in its
/// fact; a dead letter holding one is kept, with the NUL replaced.
pub async fn text_with_nul_is_refused_as_data_by_both(store: &dyn Store) {
    let in_source = record("a\0b", 0);
    let in_fact = with_fact(
        "s",
        0,
        0,
        0,
        Fact::Reading(crate::workloads::sensors::Reading {
            sensor_id: "x\0".into(),
            metric: "m".into(),
            value: 1.0,
            unit: "u".into(),
            measured_at: 0,
        }),
    );
    for bad in [in_source, in_fact] {
        let written = store
            .write(&batch("raw", "w", vec![record("ok", 0), bad]))
            .await;
        assert!(
            matches!(&written, Err(StoreError::Data(e)) if e.contains("NUL")),
            "{written:?}"
        );
    }
    assert_eq!(store.counts().await.unwrap().parsers, vec![]);
    let dead = WriteBatch {
        parser: "raw".into(),
        writer: "w".into(),
        records: vec![record("ok", 0)],
        dead_letters: vec![NewDeadLetter {
            source: "a\0b".into(),
            seq: 0,
            kind: 5,
            body: vec![0],
            error: "source holds a NUL".into(),
            attempts: 1,
        }],
    };
    store.write(&dead).await.unwrap();
    let dead = store
        .dead_letters(&DeadLetterFilter {
            parser: Some("raw".into()),
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, vec![0]);
}

/// The SQL of a tail ([`super::tail`]) filters by parser, source and kind,
/// pages in id order within a round's bounds, and starts after a backlog.
pub async fn tail_reads_filter_and_start(store: &dyn Store) {
    use super::tail::{self, TailFilter};
    use crate::{kind::KindSet, proto::RecordKind};
    let mut json = record("b", 100);
    json.kind = RecordKind::Json as i32;
    let mut records: Vec<NewRecord> = (0..6)
        .map(|i| record(if i % 2 == 0 { "a" } else { "b" }, i))
        .collect();
    records.push(json);
    store.write(&batch("raw", "w", records)).await.unwrap();
    store
        .write(&batch("upper", "w", vec![record("a", 0)]))
        .await
        .unwrap();
    let every = TailFilter {
        parser: None,
        source: None,
        kinds: KindSet::ALL,
    };
    let newest = tail::newest(store).await.unwrap();
    let all = tail::read(store, &every, (0, newest)).await.unwrap();
    assert_eq!(all.len(), 8);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "id order");
    assert_eq!(all.last().map(|row| row.id), Some(newest));
    // A round's bounds: above the first id, at most the second.
    let middle = tail::read(store, &every, (all[1].id, all[4].id))
        .await
        .unwrap();
    let ids: Vec<i64> = middle.iter().map(|row| row.id).collect();
    assert_eq!(ids, vec![all[2].id, all[3].id, all[4].id]);

    let only = |parser: Option<&str>, source: Option<&str>, kinds: &[RecordKind]| TailFilter {
        parser: parser.map(str::to_owned),
        source: source.map(str::to_owned),
        kinds: KindSet::of(kinds.iter().copied()),
    };
    let count =
        async |filter: &TailFilter| tail::read(store, filter, (0, newest)).await.unwrap().len();
    assert_eq!(count(&only(Some("raw"), None, &[])).await, 7);
    assert_eq!(count(&only(Some("upper"), None, &[])).await, 1);
    assert_eq!(count(&only(None, Some("a"), &[])).await, 4);
    assert_eq!(count(&only(Some("raw"), Some("b"), &[])).await, 4);
    assert_eq!(count(&only(None, None, &[RecordKind::Json])).await, 1);
    assert_eq!(
        count(&only(None, None, &[RecordKind::Text, RecordKind::Json])).await,
        8
    );
    assert_eq!(count(&only(None, None, &[RecordKind::Sms])).await, 0);
    assert_eq!(count(&only(Some("nobody"), None, &[])).await, 0);

    // Where a tail starts: after the newest, or before the last N matches.
    assert_eq!(tail::start(store, &every, 0).await.unwrap(), newest);
    assert_eq!(tail::start(store, &every, 2).await.unwrap(), all[5].id);
    let raw_b = only(Some("raw"), Some("b"), &[]);
    let raw_b_rows = tail::read(store, &raw_b, (0, newest)).await.unwrap();
    assert_eq!(
        tail::start(store, &raw_b, 2).await.unwrap(),
        raw_b_rows[2].id - 1
    );
    // A backlog larger than what matches starts before the first match.
    assert_eq!(
        tail::start(store, &raw_b, 1000).await.unwrap(),
        raw_b_rows[0].id - 1
    );
    // Nothing matches: follow from the newest.
    assert_eq!(
        tail::start(store, &only(Some("nobody"), None, &[]), 5)
            .await
            .unwrap(),
        newest
    );
}
