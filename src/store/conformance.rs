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
        body: vec![seq as u8].into(),
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
            body: vec![1, 2].into(),
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
                body: vec![seq as u8].into(),
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
            body: vec![0].into(),
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
    let json = json_record("b", 100, 1, serde_json::json!({"order": 7}));
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

/// A JSON record sent at `sent_at`, holding `doc` (an object).
pub fn json_record(source: &str, seq: u64, sent_at: i64, doc: serde_json::Value) -> NewRecord {
    use prost::Message as _;
    let object: pbjson_types::Struct =
        serde_json::from_value(doc).expect("a test document is a JSON object");
    let body = crate::proto::Record {
        source: source.into(),
        seq,
        payload: Some(crate::proto::record::Payload::Json(object)),
        ..Default::default()
    }
    .encode_to_vec();
    NewRecord {
        kind: crate::proto::RecordKind::Json as i32,
        sent_at,
        body: body.into(),
        ..record(source, seq)
    }
}

/// A small deterministic generator (xorshift64*), so that a failing seed
/// can be replayed.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a field aggregation should answer, recomputed in Rust from the
/// documents in range: `(group JSON text, values)` per group, missing and
/// non-numeric counts.
fn recompute(
    docs: &[serde_json::Value],
    field: &[&str],
    group_by: Option<&[&str]>,
) -> (std::collections::BTreeMap<String, Vec<f64>>, u64, u64) {
    let at = |doc: &serde_json::Value, path: &[&str]| -> Option<serde_json::Value> {
        path.iter()
            .try_fold(doc, |v, key| v.as_object()?.get(*key))
            .cloned()
    };
    let mut groups = std::collections::BTreeMap::new();
    let (mut missing, mut non_numeric) = (0, 0);
    for doc in docs {
        let group = match group_by {
            Some(path) => at(doc, path).map(|g| g.to_string()),
            None => Some(String::new()),
        };
        match (at(doc, field), group) {
            (None, _) | (_, None) => missing += 1,
            (Some(serde_json::Value::Number(n)), Some(group)) => groups
                .entry(group)
                .or_insert_with(Vec::new)
                .push(n.as_f64().expect("a finite number")),
            (Some(_), Some(_)) => non_numeric += 1,
        }
    }
    (groups, missing, non_numeric)
}

/// Field aggregation over random JSON records, with and without a group,
/// matches a recomputation in Rust: counts, extremes and nearest-rank
/// percentiles exactly, the average to float rounding; records outside
/// the range, of other parsers or of other kinds are not read.
pub async fn json_fields_aggregate_as_recomputed(store: &dyn Store) {
    use serde_json::json;

    use super::fields::{FieldPath, FieldQuery};

    let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(rand::random::<u32>());
    eprintln!("json field aggregation seed: {seed:#x}");
    let mut rng = Xorshift(seed);
    let regions = [json!("eu"), json!("us"), json!("ap"), json!(7), json!(null)];
    let mut records = Vec::new();
    let mut in_range = Vec::new();
    for seq in 0..600u64 {
        let mut doc = serde_json::Map::new();
        let mut order = serde_json::Map::new();
        match rng.below(20) {
            0..=15 => {
                // Integers and fractions, negative and positive, with ties.
                let value = (rng.below(2_001) as f64 - 1_000.0) / [1.0, 4.0][rng.below(2) as usize];
                order.insert("total".into(), json!(value));
            }
            16 => {}
            17 => {
                order.insert("total".into(), json!("12"));
            }
            18 => {
                order.insert("total".into(), json!(null));
            }
            _ => {
                order.insert("total".into(), json!({"amount": 1}));
            }
        }
        doc.insert("order".into(), order.into());
        if rng.below(20) != 0 {
            doc.insert(
                "region".into(),
                regions[rng.below(regions.len() as u64) as usize].clone(),
            );
        }
        let doc = serde_json::Value::Object(doc);
        let sent_at = rng.below(1_000) as i64;
        if (100..900).contains(&sent_at) {
            in_range.push(doc.clone());
        }
        records.push(json_record("s", seq, sent_at, doc));
    }
    // Not read: another parser's JSON record, and a text record.
    store
        .write(&batch(
            "other",
            "w",
            vec![json_record("s", 0, 500, json!({"order": {"total": 1e9}}))],
        ))
        .await
        .unwrap();
    records.push(NewRecord {
        sent_at: 500,
        ..record("t", 0)
    });
    store.write(&batch("raw", "w", records)).await.unwrap();

    let field = FieldPath::parse("order.total").unwrap();
    for group_by in [None, Some(&["region"][..])] {
        let query = FieldQuery {
            parser: "raw".into(),
            field: field.clone(),
            from: 100,
            to: 900,
            group_by: group_by.map(|p| FieldPath::parse(&p.join(".")).unwrap()),
        };
        let got = store.aggregate_field(&query).await.unwrap();
        let (expected, missing, non_numeric) = recompute(&in_range, &["order", "total"], group_by);
        assert_eq!(
            (got.missing, got.non_numeric, got.groups_truncated),
            (missing, non_numeric, false),
            "grouped: {group_by:?}"
        );
        assert_eq!(
            got.groups
                .iter()
                .map(|g| g.group.clone())
                .collect::<Vec<_>>(),
            expected.keys().cloned().collect::<Vec<_>>()
        );
        for (g, (_, values)) in got.groups.iter().zip(expected) {
            let mut values = values;
            values.sort_by(f64::total_cmp);
            let n = values.len();
            let rank = |p: usize| values[(n * p).div_ceil(100) - 1];
            let avg = values.iter().sum::<f64>() / n as f64;
            assert_eq!(
                (g.count, g.min, g.max, g.p50, g.p95, g.p99),
                (
                    n as u64,
                    values[0],
                    values[n - 1],
                    rank(50),
                    rank(95),
                    rank(99)
                ),
                "group {}",
                g.group
            );
            assert!(
                (g.avg - avg).abs() <= 1e-9 * avg.abs().max(1.0),
                "{} vs {avg}",
                g.avg
            );
        }
    }
    // A field no record has: every record in range is missing.
    let nowhere = FieldQuery {
        parser: "raw".into(),
        field: FieldPath::parse("order.nothing").unwrap(),
        from: 100,
        to: 900,
        group_by: None,
    };
    let got = store.aggregate_field(&nowhere).await.unwrap();
    assert!(got.groups.is_empty());
    assert_eq!((got.missing, got.non_numeric), (in_range.len() as u64, 0));
    // A parser with nothing stored.
    let empty = FieldQuery {
        parser: "nobody".into(),
        ..nowhere
    };
    assert_eq!(
        store.aggregate_field(&empty).await.unwrap(),
        Default::default()
    );
}

/// More than 1,000 group values: the first 1,000 by JSON text are shown
/// and the cut is reported. Group values keep their JSON form: strings
/// quoted, numbers as written.
pub async fn json_field_groups_are_cut_at_1000(store: &dyn Store) {
    use serde_json::json;

    use super::fields::{FieldPath, FieldQuery, MAX_GROUPS};

    let records = (0..1_005u64)
        .map(|i| json_record("s", i, 10, json!({"v": i, "k": format!("k{i:04}")})))
        .collect();
    store.write(&batch("raw", "w", records)).await.unwrap();
    let query = |group: &str| FieldQuery {
        parser: "raw".into(),
        field: FieldPath::parse("v").unwrap(),
        from: i64::MIN,
        to: i64::MAX,
        group_by: Some(FieldPath::parse(group).unwrap()),
    };
    let got = store.aggregate_field(&query("k")).await.unwrap();
    assert!(got.groups_truncated);
    assert_eq!(got.groups.len(), MAX_GROUPS);
    assert_eq!(got.groups[0].group, "\"k0000\"");
    assert_eq!(got.groups[999].group, "\"k0999\"");
    assert_eq!((got.groups[3].count, got.groups[3].p99), (1, 3.0));
    // Grouped by the numbers themselves: integers shown as integers.
    let got = store.aggregate_field(&query("v")).await.unwrap();
    assert!(
        got.groups.iter().any(|g| g.group == "7"),
        "{:?}",
        &got.groups[..3]
    );
}

/// A JSON record and a blob record are stored and read back as written.
pub async fn json_and_blob_records_read_back(store: &dyn Store) {
    use prost::Message as _;
    let json = json_record("s", 0, 5, serde_json::json!({"order": 7, "price": 12.5}));
    let blob = crate::proto::Record {
        source: "s".into(),
        seq: 1,
        payload: Some(crate::proto::record::Payload::Blob(crate::proto::Blob {
            content_type: "application/octet-stream".into(),
            data: vec![0, 1, 2, 254, 255],
        })),
        ..Default::default()
    };
    let blob = NewRecord {
        kind: crate::proto::RecordKind::Blob as i32,
        body: blob.encode_to_vec().into(),
        ..record("s", 1)
    };
    store
        .write(&batch("raw", "w", vec![json.clone(), blob.clone()]))
        .await
        .unwrap();
    let rows = store
        .records(&RecordFilter {
            parser: Some("raw".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let read: Vec<(i32, Vec<u8>)> = rows.into_iter().map(|r| (r.kind, r.body)).collect();
    assert_eq!(
        read,
        vec![
            (json.kind, json.body.to_vec()),
            (blob.kind, blob.body.to_vec())
        ]
    );
}
