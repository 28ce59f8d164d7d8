//! Behaviour every store backend shares (facts, paging, dead letters),
//! written once and run against each backend by its own tests.

use super::{
    AggregateQuery, AverageFilter, AverageRow, DeadLetterFilter, Fact, NewDeadLetter, NewRecord,
    RecordFilter, SmsRow, Store, StoreError, WriteBatch,
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

fn with_fact(source: &str, seq: u64, sent_at: i64, received_at: i64, fact: Fact) -> NewRecord {
    NewRecord {
        sent_at,
        received_at,
        fact: Some(fact),
        ..record(source, seq)
    }
}

fn batch(parser: &str, writer: &str, records: Vec<NewRecord>) -> WriteBatch {
    WriteBatch {
        parser: parser.into(),
        writer: writer.into(),
        records,
        dead_letters: vec![],
    }
}

fn number(window_start: i64, value: i64) -> Fact {
    Fact::Number {
        window_start,
        window_ms: 1000,
        value,
    }
}

/// Two writers' partials combine into the exact average; a redelivered
/// key adds nothing.
pub async fn averages_combine_partials_and_ignore_repeated_keys(store: &dyn Store) {
    let a = vec![
        with_fact("g1", 0, 0, 0, number(1_000_000, 10)),
        with_fact("g1", 1, 0, 0, number(1_000_000, 20)),
        with_fact("g1", 2, 0, 0, number(2_000_000, 7)),
    ];
    let b = vec![with_fact("g2", 0, 0, 0, number(1_000_000, 3))];
    store
        .write(&batch("average", "w1", a.clone()))
        .await
        .unwrap();
    store.write(&batch("average", "w2", b)).await.unwrap();
    // The same keys again, through the other writer: nothing changes.
    let again = store.write(&batch("average", "w2", a)).await.unwrap();
    assert_eq!(again.stored, 0);
    let rows = store
        .averages(&AverageFilter {
            parser: "average".into(),
            from: i64::MIN,
            to: i64::MAX,
            limit: 10,
        })
        .await
        .unwrap();
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
}

/// A known data set: probes sent at known times with known transit
/// times; only those sent in the last 10 s count toward the averages.
pub async fn latency_averages_the_last_ten_seconds(store: &dyn Store) {
    let now = 100_000_000;
    let probes = vec![
        // 15 s old: outside the window, but its number is the highest.
        with_fact(
            "p",
            0,
            now - 15_000_000,
            now - 14_000_000,
            Fact::Probe { number: 90 },
        ),
        // Inside: transit to ingest 2 ms, 4 ms and 9 ms.
        with_fact(
            "p",
            1,
            now - 9_000_000,
            now - 8_998_000,
            Fact::Probe { number: 1 },
        ),
        with_fact(
            "p",
            2,
            now - 5_000_000,
            now - 4_996_000,
            Fact::Probe { number: 2 },
        ),
        with_fact("p", 3, now - 1_000, now + 8_000, Fact::Probe { number: 3 }),
    ];
    store.write(&batch("probe", "w", probes)).await.unwrap();
    let latency = store.latency("probe", now, 10_000_000).await.unwrap();
    assert_eq!(latency.highest_number, Some(90));
    assert_eq!((latency.stored, latency.recent), (4, 3));
    assert_eq!(latency.avg_to_ingest_us, Some(5_000.0));
    assert!(latency.avg_to_store_us.unwrap() > 0.0);
    let empty = store
        .latency("probe", now + 60_000_000, 10_000_000)
        .await
        .unwrap();
    assert_eq!((empty.recent, empty.avg_to_ingest_us), (0, None));
}

fn reading(seq: u64, sensor: &str, value: f64, measured_at: i64) -> NewRecord {
    with_fact(
        "s",
        seq,
        0,
        0,
        Fact::Reading {
            sensor_id: sensor.into(),
            metric: "temperature".into(),
            value,
            unit: "celsius".into(),
            measured_at,
        },
    )
}

/// Nearest-rank percentiles computed by SQL match a sort in Rust.
pub async fn aggregates_match_a_computation_in_rust(store: &dyn Store) {
    // 1..=200 for sensor a (shuffled order), 1000..=1009 for b, one
    // reading outside the time range.
    let mut records: Vec<NewRecord> = (1..=200)
        .map(|i| reading(i, "a", ((i * 37) % 200 + 1) as f64, 10))
        .collect();
    records.extend((0..10).map(|i| reading(1000 + i, "b", 1000.0 + i as f64, 20)));
    records.push(reading(5000, "a", -50.0, 99));
    store.write(&batch("sensor", "w", records)).await.unwrap();
    let query = |group_by_sensor| AggregateQuery {
        parser: "sensor".into(),
        metric: "temperature".into(),
        from: 0,
        to: 50,
        group_by_sensor,
    };
    let grouped = store.aggregate(&query(true)).await.unwrap();
    assert_eq!(grouped.len(), 2);
    let a = &grouped[0];
    assert_eq!((a.sensor_id.as_str(), a.count), ("a", 200));
    assert_eq!((a.min, a.max, a.avg), (1.0, 200.0, 100.5));
    // Nearest rank: ceil(0.5*200)=100, ceil(0.95*200)=190, ceil(0.99*200)=198.
    assert_eq!((a.p50, a.p95, a.p99), (100.0, 190.0, 198.0));
    let b = &grouped[1];
    // ceil(0.5*10)=5 -> 1004, ceil(9.5)=10 -> 1009, ceil(9.9)=10 -> 1009.
    assert_eq!((b.count, b.p50, b.p95, b.p99), (10, 1004.0, 1009.0, 1009.0));
    let overall = store.aggregate(&query(false)).await.unwrap();
    assert_eq!(overall.len(), 1);
    let all = &overall[0];
    let mut values: Vec<f64> = (1..=200).map(f64::from).collect();
    values.extend((0..10).map(|i| 1000.0 + f64::from(i)));
    let rank = |p: usize| values[(values.len() * p).div_ceil(100) - 1];
    assert_eq!(
        (
            all.sensor_id.as_str(),
            all.count,
            all.p50,
            all.p95,
            all.p99,
            all.unit.as_str()
        ),
        ("", 210, rank(50), rank(95), rank(99), "celsius")
    );
}

/// The metrics a parser has readings of are listed once each, in order,
/// and only that parser's.
pub async fn metrics_are_listed_once_each(store: &dyn Store) {
    assert!(store.metrics("sensor").await.unwrap().is_empty());
    let records: Vec<NewRecord> = ["temperature", "humidity", "temperature", "pressure"]
        .into_iter()
        .enumerate()
        .map(|(seq, metric)| {
            with_fact(
                "s",
                seq as u64,
                0,
                0,
                Fact::Reading {
                    sensor_id: "a".into(),
                    metric: metric.into(),
                    value: 1.0,
                    unit: "u".into(),
                    measured_at: 10,
                },
            )
        })
        .collect();
    store.write(&batch("sensor", "w", records)).await.unwrap();
    store
        .write(&batch("other", "w", vec![reading(9, "a", 1.0, 10)]))
        .await
        .unwrap();
    assert_eq!(
        store.metrics("sensor").await.unwrap(),
        ["humidity", "pressure", "temperature"]
    );
    assert_eq!(store.metrics("other").await.unwrap(), ["temperature"]);
    assert!(store.metrics("nobody").await.unwrap().is_empty());
}

pub async fn sms_progress_counts_outcomes_per_sender(store: &dyn Store) {
    let outcome = |seq, sender: &str, sent, duration_us| {
        with_fact(
            "m",
            seq,
            0,
            0,
            Fact::Sms {
                sender: sender.into(),
                sent,
                duration_us,
            },
        )
    };
    let records = vec![
        outcome(0, "fast", true, 10),
        outcome(1, "fast", false, 20),
        outcome(2, "slow", true, 300),
    ];
    store
        .write(&batch("sms_sender", "w", records.clone()))
        .await
        .unwrap();
    store
        .write(&batch("sms_sender", "w", records))
        .await
        .unwrap();
    let rows = store.sms_progress("sms_sender").await.unwrap();
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

/// A key twice in one batch (a redelivery gathered beside its first
/// delivery) is stored, counted and averaged once: the first copy wins.
pub async fn a_key_repeated_in_one_batch_counts_once(store: &dyn Store) {
    let records = vec![
        with_fact("g", 0, 0, 0, number(1_000_000, 20)),
        with_fact("g", 0, 0, 0, number(1_000_000, 30)),
        with_fact("g", 1, 0, 0, number(1_000_000, 10)),
        record("t", 0),
        record("t", 0),
    ];
    let written = store.write(&batch("average", "w", records)).await.unwrap();
    assert_eq!((written.stored, written.duplicates), (3, 2));
    let rows = store.averages(&all_windows()).await.unwrap();
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
        vec![("average".to_string(), 3)]
    );
}

fn all_windows() -> AverageFilter {
    AverageFilter {
        parser: "average".into(),
        from: i64::MIN,
        to: i64::MAX,
        limit: 10,
    }
}

/// Three numbers of 2^63−1 in one window: the first is held exactly, and
/// each of the others is refused as data (never wrapped, and never turned
/// into a float), whether it comes in one batch or alone; the window's
/// average stays exact.
pub async fn sums_never_wrap(store: &dyn Store) {
    let max = |seq| with_fact("big", seq, 0, 0, number(0, i64::MAX));
    let all = store
        .write(&batch("average", "w", vec![max(0), max(1), max(2)]))
        .await;
    assert!(matches!(all, Err(StoreError::Data(_))), "{all:?}");
    assert_eq!(
        store
            .write(&batch("average", "w", vec![max(0)]))
            .await
            .unwrap()
            .stored,
        1
    );
    for seq in [1, 2] {
        let alone = store.write(&batch("average", "w", vec![max(seq)])).await;
        assert!(
            matches!(&alone, Err(StoreError::Data(e)) if e.contains("64-bit")),
            "{alone:?}"
        );
    }
    // Nothing of the refused batches was kept.
    let rows = store.averages(&all_windows()).await.unwrap();
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
        vec![("average".to_string(), 1)]
    );
    // The other end of the range holds too.
    let min = |seq| with_fact("small", seq, 0, 0, number(5_000_000, i64::MIN));
    store
        .write(&batch("average", "w", vec![min(0)]))
        .await
        .unwrap();
    let below = store.write(&batch("average", "w", vec![min(1)])).await;
    assert!(matches!(below, Err(StoreError::Data(_))), "{below:?}");
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
        Fact::Reading {
            sensor_id: "x\0".into(),
            metric: "m".into(),
            value: 1.0,
            unit: "u".into(),
            measured_at: 0,
        },
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
