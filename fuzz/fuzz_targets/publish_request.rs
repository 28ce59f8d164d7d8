//! A Publish request from the wire: decoding, the batch-size check and every
//! per-record check. The oracle is the ingest promise: a record the checks
//! accept lies in every documented value range (`docs/limits.md`), can be
//! held alike by both store backends, and has a proto3 JSON form that the
//! REST face can write and read back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use pbjson_types::Timestamp;
use tonic::Code;
use tributary::{
    clock, kind,
    proto::{PublishRequest, Record, RecordKind, record::Payload},
};
use tributary_ingest::{
    Limits, publish,
    validate::{self, FUTURE_MICROS, MAX_SOURCE_BYTES, PAST_MICROS, W0_VALUES},
};

/// The receive time the checks centre their window on.
const NOW: i64 = 1_763_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = PublishRequest::decode(data) else {
        return;
    };
    let limits = Limits::default();
    if publish::check_count(request.records.len(), &limits).is_err() {
        assert!(request.records.len() > limits.max_batch_records);
        return;
    }
    for record in &request.records {
        match validate::check(record, limits.max_record_bytes, NOW) {
            Ok(kind) => accepted(record, kind, &limits),
            Err(refusal) => {
                assert!(!refusal.reason.is_empty());
                assert!(matches!(
                    refusal.code,
                    Code::InvalidArgument | Code::ResourceExhausted
                ));
            }
        }
    }
});

fn within_window(micros: i64) -> bool {
    (NOW - PAST_MICROS..=NOW + FUTURE_MICROS).contains(&micros)
}

fn timestamp_micros(t: &Timestamp) -> i64 {
    assert!((0..1_000_000_000).contains(&t.nanos));
    t.seconds * 1_000_000 + i64::from(t.nanos / 1_000)
}

fn accepted(record: &Record, kind: RecordKind, limits: &Limits) {
    assert_eq!(kind::of(record), Some(kind));
    assert!(!record.source.is_empty() && record.source.len() <= MAX_SOURCE_BYTES);
    assert!(record.seq <= i64::MAX as u64);
    assert!(validate::check_strings(record).is_ok());
    assert!(record.encoded_len() <= limits.max_record_bytes);
    if let Some(sent_at) = &record.sent_at {
        assert!(within_window(timestamp_micros(sent_at)));
    }
    match &record.payload {
        Some(Payload::RandomNumber(number)) if number.tick != 0 => {
            assert!(W0_VALUES.contains(&number.value));
            assert!(within_window(number.tick * clock::TICK_MICROS));
        }
        Some(Payload::Probe(probe)) => assert!(probe.number <= i64::MAX as u64),
        Some(Payload::SensorReading(reading)) => {
            assert!(reading.value.is_finite());
            if let Some(measured_at) = &reading.measured_at {
                assert!(within_window(timestamp_micros(measured_at)));
            }
        }
        Some(Payload::Json(object)) => {
            assert!(tributary::json_check::check_json(object).is_ok());
        }
        Some(Payload::Blob(blob)) => {
            assert!(blob.content_type.len() <= validate::MAX_CONTENT_TYPE_BYTES);
            assert!(blob.content_type.bytes().all(|b| (b' '..=b'~').contains(&b)));
        }
        _ => {}
    }
    let json = serde_json::to_string(record).expect("an accepted record has a JSON form");
    let back: Record = serde_json::from_str(&json).expect("the JSON form of a record reads back");
    if let Some(Payload::Json(_)) = &record.payload {
        // pbjson reads a JSON `null` back as a Value with no kind, not as
        // `NullValue`: the same JSON, so the JSON forms must agree.
        let again = serde_json::to_string(&back).expect("read back, it has a JSON form");
        assert_eq!(again, json, "JSON round trip changed the record");
    } else {
        assert_eq!(&back, record, "JSON round trip changed the record: {json}");
    }
}
