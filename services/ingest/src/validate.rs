//! Per-record checks made before anything reaches the queue: everything the
//! store or the proto3 JSON mapping could not hold is refused here, so that no
//! stored record can later break a read.

use prost::Message;
use tonic::Code;
use tributary::{
    clock, kind,
    proto::{Record, RecordKind, record::Payload},
};

/// The longest source name accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 256;

/// How far in the past a `sent_at`, a `measured_at` or a tick may lie: a
/// week. A producer cut off from the mesh keeps its unacknowledged records
/// and sends them when it is back; a week covers any outage an operator
/// lets run before restarting producers, while a time that is months or
/// centuries old is a broken clock or a hostile caller, and would put a
/// window or a reading where no read for "recent" figures will ever look.
pub const PAST_MICROS: i64 = 7 * 24 * 3_600 * 1_000_000;

/// How far in the future such a time may lie: an hour, far more than the
/// clock skew between hosts kept by NTP, and short enough that a future
/// stamp cannot pin the dashboard's "latest" figures for long.
pub const FUTURE_MICROS: i64 = 3_600 * 1_000_000;

/// The longest blob content type accepted, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// The values a number generator (W0) may emit: a number with a tick is a
/// coordinator grant, which always lies in this range.
pub const W0_VALUES: std::ops::RangeInclusive<i64> = 1..=10_000;

/// Why a record is refused: a status code and a reason for the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: String,
}

fn invalid(reason: String) -> Refusal {
    Refusal {
        code: Code::InvalidArgument,
        reason,
    }
}

/// Checks one record and returns its kind. `now` (µs since the epoch) is the
/// receive time that the timestamps' window is centred on.
pub fn check(record: &Record, max_record_bytes: usize, now: i64) -> Result<RecordKind, Refusal> {
    if record.source.is_empty() {
        return Err(invalid(
            "source is empty: every record needs a source".into(),
        ));
    }
    if record.source.len() > MAX_SOURCE_BYTES {
        return Err(invalid(format!(
            "source is {} bytes long; the limit is {MAX_SOURCE_BYTES}",
            record.source.len()
        )));
    }
    if record.seq > i64::MAX as u64 {
        return Err(invalid(format!("seq {} is above 2^63-1", record.seq)));
    }
    check_strings(record).map_err(invalid)?;
    let Some(kind) = kind::of(record) else {
        return Err(invalid(
            "no payload, or a payload kind this server does not know".into(),
        ));
    };
    if let Some(sent_at) = &record.sent_at {
        recent("sent_at", sent_at.seconds, sent_at.nanos, now)?;
    }
    match &record.payload {
        // Without a tick it is a fleet sample: any 64-bit value.
        Some(Payload::RandomNumber(number)) if number.tick != 0 => {
            let at = number
                .tick
                .checked_mul(clock::TICK_MICROS)
                .ok_or_else(|| invalid(format!("tick {} is out of range", number.tick)))?;
            within("tick", &number.tick.to_string(), at, now)?;
            if !W0_VALUES.contains(&number.value) {
                return Err(invalid(format!(
                    "value {} of a ticked number is outside {}..={}",
                    number.value,
                    W0_VALUES.start(),
                    W0_VALUES.end()
                )));
            }
        }
        Some(Payload::Probe(probe)) if probe.number > i64::MAX as u64 => {
            return Err(invalid(format!(
                "probe number {} is above 2^63-1",
                probe.number
            )));
        }
        Some(Payload::SensorReading(reading)) => {
            if !reading.value.is_finite() {
                return Err(invalid(format!(
                    "sensor value {} is not a finite number",
                    reading.value
                )));
            }
            if let Some(measured_at) = &reading.measured_at {
                recent("measured_at", measured_at.seconds, measured_at.nanos, now)?;
            }
        }
        Some(Payload::Json(object)) => {
            tributary::json_check::check_json(object).map_err(|e| invalid(e.to_string()))?;
        }
        Some(Payload::Blob(blob)) => check_content_type(&blob.content_type)?,
        _ => {}
    }
    let size = record.encoded_len();
    if size > max_record_bytes {
        return Err(Refusal {
            code: Code::ResourceExhausted,
            reason: format!("record is {size} bytes; the limit is {max_record_bytes}"),
        });
    }
    Ok(kind)
}

/// A blob's content type is a short line of printable ASCII, as MIME
/// types are: it is shown in headers and logs, where control characters
/// would forge lines.
fn check_content_type(content_type: &str) -> Result<(), Refusal> {
    if content_type.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(invalid(format!(
            "blob content_type is {} bytes long; the limit is {MAX_CONTENT_TYPE_BYTES}",
            content_type.len()
        )));
    }
    if let Some(c) = content_type.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(invalid(format!(
            "blob content_type holds {c:?}; only printable ASCII is allowed"
        )));
    }
    Ok(())
}

/// A timestamp must be valid (nanos in 0..1e9) and lie in the window around
/// `now`, which also keeps it inside RFC 3339's years 1..=9999.
fn recent(field: &str, seconds: i64, nanos: i32, now: i64) -> Result<(), Refusal> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(invalid(format!(
            "{field} has nanos {nanos}, outside 0..=999999999"
        )));
    }
    let at = seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(nanos / 1_000)))
        .ok_or_else(|| invalid(format!("{field} {seconds}s is out of range")))?;
    within(field, &format!("{seconds}s"), at, now)
}

/// `at` (µs) must lie in `[now - PAST_MICROS, now + FUTURE_MICROS]`.
fn within(field: &str, shown: &str, at: i64, now: i64) -> Result<(), Refusal> {
    let earliest = now.saturating_sub(PAST_MICROS);
    let latest = now.saturating_add(FUTURE_MICROS);
    if at < earliest || at > latest {
        return Err(invalid(format!(
            "{field} {shown} is not within 7 days before and 1 hour after the server's time"
        )));
    }
    Ok(())
}

/// String content every store backend can hold alike. PostgreSQL text
/// cannot hold a NUL character (SQLite can), so a record with one in any
/// string is refused here, at the edge, rather than stored by one backend
/// and dead-lettered by the other. Every string is checked, stored as text
/// or not, so that the rule is one line in the docs.
pub fn check_strings(record: &Record) -> Result<(), String> {
    use tributary::proto::record::Payload;
    let check = |field: &str, value: &str| {
        if value.contains('\0') {
            return Err(format!(
                "{field} holds a NUL character (U+0000), which the store cannot hold"
            ));
        }
        Ok(())
    };
    check("source", &record.source)?;
    for (key, value) in &record.attributes {
        check("attribute name", key)?;
        check("attribute value", value)?;
    }
    match &record.payload {
        Some(Payload::Text(text)) => check("text body", &text.body),
        Some(Payload::SensorReading(reading)) => {
            check("sensor_id", &reading.sensor_id)?;
            check("metric", &reading.metric)?;
            check("unit", &reading.unit)
        }
        Some(Payload::Sms(sms)) => {
            check("phone_number", &sms.phone_number)?;
            check("SMS body", &sms.body)
        }
        Some(
            Payload::RandomNumber(_) | Payload::Probe(_) | Payload::Json(_) | Payload::Blob(_),
        )
        | None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::{Probe, RandomNumber, SensorReading, Text};

    /// A fixed "now" for the checks: 2025-11-22T08:26:40Z.
    const NOW: i64 = 1_763_800_000_000_000;

    fn text(source: &str, body: &str) -> Record {
        Record {
            source: source.into(),
            payload: Some(Payload::Text(Text { body: body.into() })),
            ..Default::default()
        }
    }

    fn with(payload: Payload) -> Record {
        Record {
            source: "a".into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    /// A timestamp as sent, which need not be valid.
    macro_rules! timestamp {
        ($seconds:expr, $nanos:expr) => {{
            let mut ts = clock::from_micros(0);
            ts.seconds = $seconds;
            ts.nanos = $nanos;
            ts
        }};
    }

    fn refused(record: &Record) -> String {
        let refusal = check(record, 4096, NOW).unwrap_err();
        assert_eq!(refusal.code, Code::InvalidArgument, "{record:?}");
        refusal.reason
    }

    #[test]
    fn accepts_a_plain_record() {
        assert_eq!(check(&text("a", "hi"), 1024, NOW), Ok(RecordKind::Text));
    }

    #[test]
    fn refuses_missing_source_and_payload() {
        assert_eq!(
            check(&text("", "hi"), 1024, NOW).unwrap_err().code,
            Code::InvalidArgument
        );
        let bare = Record {
            source: "a".into(),
            ..Default::default()
        };
        assert_eq!(
            check(&bare, 1024, NOW).unwrap_err().code,
            Code::InvalidArgument
        );
        let long = "s".repeat(MAX_SOURCE_BYTES + 1);
        assert_eq!(
            check(&text(&long, "hi"), 4096, NOW).unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn refuses_seq_beyond_sql_integers() {
        let mut record = text("a", "hi");
        record.seq = u64::MAX;
        assert!(
            check(&record, 1024, NOW)
                .unwrap_err()
                .reason
                .contains("2^63")
        );
    }

    #[test]
    fn refuses_nul_characters_in_any_string() {
        use tributary::proto::{SensorReading, SmsMessage};
        let mut in_attribute = text("a", "hi");
        in_attribute.attributes.insert("k".into(), "v\0".into());
        let sensor = Record {
            source: "a".into(),
            payload: Some(Payload::SensorReading(SensorReading {
                unit: "\0".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let sms = Record {
            source: "a".into(),
            payload: Some(Payload::Sms(SmsMessage {
                phone_number: "+1\0".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        for (record, field) in [
            (text("a\0", "hi"), "source"),
            (text("a", "h\0i"), "text body"),
            (in_attribute, "attribute value"),
            (sensor, "unit"),
            (sms, "phone_number"),
        ] {
            let refusal = check(&record, 1024, NOW).unwrap_err();
            assert_eq!(refusal.code, Code::InvalidArgument);
            assert!(
                refusal.reason.starts_with(field) && refusal.reason.contains("NUL"),
                "{}",
                refusal.reason
            );
        }
        // Other control characters are text both stores hold.
        assert!(check(&text("a\u{1}", "\t\u{7f}"), 1024, NOW).is_ok());
    }

    #[test]
    fn refuses_oversized_records_as_exhausted() {
        let refusal = check(&text("a", &"x".repeat(2000)), 1024, NOW).unwrap_err();
        assert_eq!(refusal.code, Code::ResourceExhausted);
    }

    #[test]
    fn sent_at_must_be_a_valid_time_near_now() {
        let at = |seconds, nanos| {
            let mut record = text("a", "hi");
            record.sent_at = Some(timestamp!(seconds, nanos));
            record
        };
        let now_s = NOW / 1_000_000;
        for (seconds, nanos) in [
            (i64::MAX, 0),
            (i64::MIN, 0),
            (-62_135_596_801, 0),
            (253_402_300_800, 0),
            (now_s - 8 * 86_400, 0),
            (now_s + 2 * 3_600, 0),
            (now_s, -1),
            (now_s, 1_000_000_000),
        ] {
            assert!(
                refused(&at(seconds, nanos)).contains("sent_at"),
                "{seconds}s {nanos}ns"
            );
        }
        for seconds in [now_s - 6 * 86_400, now_s, now_s + 1_800] {
            assert!(check(&at(seconds, 999_999_999), 4096, NOW).is_ok());
        }
    }

    #[test]
    fn measured_at_must_be_near_now_and_values_finite() {
        let reading = |seconds, value| {
            with(Payload::SensorReading(SensorReading {
                sensor_id: "s".into(),
                metric: "m".into(),
                value,
                unit: "u".into(),
                measured_at: Some(timestamp!(seconds, 0)),
            }))
        };
        let now_s = NOW / 1_000_000;
        assert!(refused(&reading(i64::MIN, 1.0)).contains("measured_at"));
        assert!(refused(&reading(now_s - 30 * 86_400, 1.0)).contains("measured_at"));
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(refused(&reading(now_s, value)).contains("finite"));
        }
        assert!(check(&reading(now_s, -1e300), 4096, NOW).is_ok());
    }

    #[test]
    fn ticks_must_mean_a_time_near_now_and_carry_a_w0_value() {
        let number = |value, tick| with(Payload::RandomNumber(RandomNumber { value, tick }));
        let tick_now = clock::tick_of(NOW);
        for tick in [
            90_000_000_000_000,
            i64::MAX,
            i64::MIN,
            -1,
            tick_now + 36_001,
        ] {
            assert!(refused(&number(7, tick)).contains("tick"), "{tick}");
        }
        assert!(check(&number(7, tick_now), 4096, NOW).is_ok());
        for value in [0, 10_001, i64::MIN] {
            assert!(refused(&number(value, tick_now)).contains("value"));
        }
        // Without a tick it is a fleet sample: any 64-bit value.
        assert!(check(&number(i64::MIN, 0), 4096, NOW).is_ok());
    }

    #[test]
    fn json_payloads_are_checked_and_named_by_path() {
        use pbjson_types::{Struct, Value};
        let json = |fields: Vec<(&str, Value)>| {
            with(Payload::Json(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Struct>(),
            ))
        };
        let ok = json(vec![("order", 7.0.into()), ("price", 12.5.into())]);
        assert_eq!(check(&ok, 4096, NOW), Ok(RecordKind::Json));
        let items: Value = vec![Value::from(1.0), Value::from(f64::NAN)].into();
        let order: Struct = [("items".to_owned(), items)].into_iter().collect();
        let reason = refused(&json(vec![("order", order.into())]));
        assert!(reason.contains("order.items[1]"), "{reason}");
        assert!(refused(&json(vec![("k\0", 1.0.into())])).contains("NUL"));
        assert!(refused(&json(vec![("k", "a\0".into())])).contains("NUL"));
        let mut deep: Value = 1.0.into();
        for _ in 0..40 {
            deep = vec![deep].into();
        }
        assert!(refused(&json(vec![("k", deep)])).contains("deeper than 32"));
        // Size is the record limit's.
        let big = json(vec![("k", "x".repeat(5000).into())]);
        assert_eq!(
            check(&big, 4096, NOW).unwrap_err().code,
            Code::ResourceExhausted
        );
    }

    #[test]
    fn blob_content_types_are_short_printable_ascii() {
        use tributary::proto::Blob;
        let blob = |content_type: &str| {
            with(Payload::Blob(Blob {
                content_type: content_type.into(),
                data: vec![0, 1, 2, 255],
            }))
        };
        assert_eq!(check(&blob(""), 4096, NOW), Ok(RecordKind::Blob));
        assert!(check(&blob("image/png; charset=x"), 4096, NOW).is_ok());
        assert!(refused(&blob(&"a".repeat(MAX_CONTENT_TYPE_BYTES + 1))).contains("content_type"));
        for bad in ["text/plain\r\nX: y", "a\0", "imagé/png", "\u{7f}"] {
            assert!(refused(&blob(bad)).contains("content_type"), "{bad:?}");
        }
    }

    #[test]
    fn probe_numbers_must_fit_sql_integers() {
        let probe = |number| with(Payload::Probe(Probe { number }));
        assert!(refused(&probe(i64::MAX as u64 + 1)).contains("2^63"));
        assert!(check(&probe(i64::MAX as u64), 4096, NOW).is_ok());
    }
}
