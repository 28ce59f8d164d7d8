//! Conversions from store rows to proto messages. Stored bodies are encoded
//! `Record`s.
//!
//! A read never fails because of one row: what a row holds that cannot be
//! shown (a body that does not decode, a time outside RFC 3339's years 1 to
//! 9999, which the proto3 JSON mapping cannot write) is left unset and named
//! in the message's `degraded` list, or, for an average window, skipped and
//! counted. Ingest refuses such values; rows stored before it did, or written
//! by other means, may still hold them.

use pbjson_types::Timestamp;
use prost::Message;
use tributary::{
    clock,
    proto::{
        Average, DeadLetter, Latency, MetricAggregate, ParserStats, Record, SenderProgress,
        SmsProgress, Stats, StoredRecord, record::Payload,
    },
    store::{Counts, DeadLetterRow, StoredRow},
    workloads::{averages::AverageRow, probes::LatencyRow, sensors::AggregateRow, sms::SmsRow},
};

/// 0001-01-01T00:00:00Z, the first second RFC 3339 can write.
const EARLIEST_SECONDS: i64 = -62_135_596_800;
/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
const LATEST_SECONDS: i64 = 253_402_300_799;

/// Whether `ts` can be written as an RFC 3339 time.
pub fn showable(ts: &Timestamp) -> bool {
    (EARLIEST_SECONDS..=LATEST_SECONDS).contains(&ts.seconds)
        && (0..1_000_000_000).contains(&ts.nanos)
}

/// A stored time (µs), or `None` with a note in `degraded` when it cannot be
/// shown.
fn time(micros: i64, field: &str, degraded: &mut Vec<String>) -> Option<Timestamp> {
    let ts = clock::from_micros(micros);
    if showable(&ts) {
        Some(ts)
    } else {
        degraded.push(format!(
            "{field} {micros}µs is outside RFC 3339's range; unset"
        ));
        None
    }
}

/// Clears a timestamp of the record that cannot be shown, with a note.
fn clear(slot: &mut Option<Timestamp>, field: &str, degraded: &mut Vec<String>) {
    if let Some(ts) = slot
        && !showable(ts)
    {
        degraded.push(format!(
            "{field} {}s {}ns is outside RFC 3339's range; unset",
            ts.seconds, ts.nanos
        ));
        *slot = None;
    }
}

/// The stored body as a record that can be shown, or `None` with a note when
/// it does not decode.
fn record(body: &[u8], what: &str, degraded: &mut Vec<String>) -> Option<Record> {
    let mut record = match Record::decode(body) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(error = %e, what, "stored body does not decode");
            degraded.push(format!("the stored {what} does not decode: {e}"));
            return None;
        }
    };
    clear(&mut record.sent_at, "record.sent_at", degraded);
    match &mut record.payload {
        Some(Payload::SensorReading(reading)) => clear(
            &mut reading.measured_at,
            "record.sensor_reading.measured_at",
            degraded,
        ),
        // A non-finite number has no proto3 JSON form: REST could not write
        // the record at all.
        Some(Payload::Json(object)) => {
            if let Err(e) = tributary::json_check::check_json(object) {
                degraded.push(format!("record.json cannot be shown ({e}); unset"));
                record.payload = None;
            }
        }
        _ => {}
    }
    Some(record)
}

pub fn stats(counts: Counts) -> Stats {
    Stats {
        parsers: counts
            .parsers
            .into_iter()
            .map(|(parser, stored)| ParserStats { parser, stored })
            .collect(),
        dead_letters: counts.dead_letters,
        read_at: Some(clock::now_timestamp()),
    }
}

pub fn stored_record(row: StoredRow) -> StoredRecord {
    let mut degraded = Vec::new();
    StoredRecord {
        id: row.id,
        record: record(&row.body, "record", &mut degraded),
        received_at: time(row.received_at, "received_at", &mut degraded),
        stored_at: time(row.stored_at, "stored_at", &mut degraded),
        parser: row.parser,
        degraded,
    }
}

pub fn dead_letter(row: DeadLetterRow) -> DeadLetter {
    let mut degraded = Vec::new();
    DeadLetter {
        id: row.id,
        record: record(&row.body, "dead letter", &mut degraded),
        dead_at: time(row.dead_at, "dead_at", &mut degraded),
        parser: row.parser,
        error: row.error,
        attempts: row.attempts,
        degraded,
    }
}

/// The averages that can be shown, and how many windows could not.
pub fn averages(rows: Vec<AverageRow>) -> (Vec<Average>, u32) {
    let total = rows.len();
    let averages: Vec<Average> = rows.into_iter().filter_map(average).collect();
    let skipped = total - averages.len();
    (averages, u32::try_from(skipped).unwrap_or(u32::MAX))
}

/// One window's average, or `None` when its start cannot be shown.
fn average(row: AverageRow) -> Option<Average> {
    let window_start = clock::from_micros(row.window_start);
    showable(&window_start).then(|| Average {
        window_start: Some(window_start),
        window_ms: row.window_ms,
        count: row.count,
        sum: row.sum,
        average: row.sum as f64 / row.count.max(1) as f64,
    })
}

pub fn latency(row: LatencyRow, window_micros: i64, now: i64) -> Latency {
    Latency {
        highest_number: row.highest_number.unwrap_or(0),
        stored: row.stored,
        recent: row.recent,
        avg_to_ingest_ms: row.avg_to_ingest_us.unwrap_or(0.0) / 1000.0,
        avg_to_store_ms: row.avg_to_store_us.unwrap_or(0.0) / 1000.0,
        window_ms: (window_micros / 1000) as u32,
        read_at: Some(clock::from_micros(now)),
    }
}

pub fn aggregate(row: AggregateRow) -> MetricAggregate {
    MetricAggregate {
        sensor_id: row.sensor_id,
        count: row.count,
        avg: row.avg,
        min: row.min,
        max: row.max,
        p50: row.p50,
        p95: row.p95,
        p99: row.p99,
        unit: row.unit,
        percentiles_sketched: row.percentiles_sketched,
    }
}

/// A field aggregation's answer.
pub fn field_aggregates(
    parser: String,
    field: String,
    result: tributary::store::FieldAggregates,
) -> tributary::proto::AggregateFieldResponse {
    tributary::proto::AggregateFieldResponse {
        parser,
        field,
        groups: result
            .groups
            .into_iter()
            .map(|g| tributary::proto::FieldAggregate {
                group: g.group,
                count: g.count,
                avg: g.avg,
                min: g.min,
                max: g.max,
                p50: g.p50,
                p95: g.p95,
                p99: g.p99,
            })
            .collect(),
        missing: result.missing,
        non_numeric: result.non_numeric,
        groups_truncated: result.groups_truncated,
    }
}

/// Per-sender rows and their exact totals (sums of counts and of times).
pub fn sms_progress(rows: Vec<SmsRow>) -> SmsProgress {
    let avg_ms = |total_us: i64, n: u64| {
        if n == 0 {
            0.0
        } else {
            total_us as f64 / n as f64 / 1000.0
        }
    };
    let sent = rows.iter().map(|r| r.sent).sum();
    let failed = rows.iter().map(|r| r.failed).sum();
    let total_us = rows.iter().map(|r| r.total_us).sum();
    SmsProgress {
        sent,
        failed,
        avg_ms: avg_ms(total_us, sent + failed),
        senders: rows
            .into_iter()
            .map(|r| SenderProgress {
                avg_ms: avg_ms(r.total_us, r.sent + r.failed),
                sender: r.sender,
                sent: r.sent,
                failed: r.failed,
            })
            .collect(),
        read_at: Some(clock::now_timestamp()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::SensorReading;

    fn body(record: &Record) -> Vec<u8> {
        record.encode_to_vec()
    }

    fn stored(body: Vec<u8>, received_at: i64) -> StoredRow {
        StoredRow {
            id: 1,
            parser: "p".into(),
            kind: 3,
            sent_at: 0,
            received_at,
            stored_at: 5,
            body,
        }
    }

    #[test]
    fn times_rfc_3339_cannot_write_are_unset_and_named() {
        let record = Record {
            source: "s".into(),
            sent_at: Some(Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            payload: Some(Payload::SensorReading(SensorReading {
                measured_at: Some(Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let shown = stored_record(stored(body(&record), i64::MIN));
        let record = shown.record.unwrap();
        assert_eq!(record.sent_at, None);
        let Some(Payload::SensorReading(reading)) = record.payload else {
            panic!("the payload is kept");
        };
        assert_eq!(reading.measured_at, None);
        assert_eq!(shown.received_at, None);
        assert!(shown.stored_at.is_some());
        assert_eq!(shown.degraded.len(), 3, "{:?}", shown.degraded);
        assert!(shown.degraded[0].contains("sent_at"));
    }

    /// A JSON payload with a number proto3 JSON cannot write (stored before
    /// ingest refused it, or by other means) is unset and named, so that
    /// the page can still be written over REST.
    #[test]
    fn a_json_payload_rest_cannot_write_is_unset_and_named() {
        let record = Record {
            source: "s".into(),
            payload: Some(Payload::Json(
                [("price".to_owned(), pbjson_types::Value::from(f64::NAN))]
                    .into_iter()
                    .collect(),
            )),
            ..Default::default()
        };
        let shown = stored_record(stored(body(&record), 1));
        assert_eq!(shown.record.as_ref().unwrap().payload, None);
        assert!(shown.degraded[0].contains("price"), "{:?}", shown.degraded);
    }

    #[test]
    fn a_body_that_does_not_decode_is_named_not_fatal() {
        let shown = stored_record(stored(vec![0xff, 0xff, 0xff], 1));
        assert_eq!(shown.record, None);
        assert!(shown.degraded[0].contains("does not decode"));
    }

    #[test]
    fn a_record_shown_whole_has_no_notes() {
        let record = Record {
            source: "s".into(),
            sent_at: Some(clock::from_micros(1_763_800_000_000_000)),
            ..Default::default()
        };
        assert!(stored_record(stored(body(&record), 1)).degraded.is_empty());
    }

    #[test]
    fn windows_that_cannot_be_shown_are_skipped_and_counted() {
        let row = |window_start| AverageRow {
            window_start,
            window_ms: 1000,
            count: 2,
            sum: 4,
        };
        let (shown, skipped) = averages(vec![row(i64::MAX), row(0), row(i64::MIN)]);
        assert_eq!((shown.len(), skipped), (1, 2));
        assert_eq!(shown[0].average, 2.0);
        assert!(showable(&clock::from_micros(LATEST_SECONDS * 1_000_000)));
        assert!(!showable(&clock::from_micros(
            (LATEST_SECONDS + 1) * 1_000_000
        )));
        assert!(showable(&clock::from_micros(EARLIEST_SECONDS * 1_000_000)));
        assert!(!showable(&clock::from_micros(
            EARLIEST_SECONDS * 1_000_000 - 1
        )));
    }
}
