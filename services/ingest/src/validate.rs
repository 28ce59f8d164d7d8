//! Per-record checks made before anything reaches the queue.

use prost::Message;
use tonic::Code;
use tributary::{
    kind,
    proto::{Record, RecordKind},
};

/// The longest source name accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 256;

/// Why a record is refused: a status code and a reason for the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: String,
}

/// Checks one record and returns its kind.
pub fn check(record: &Record, max_record_bytes: usize) -> Result<RecordKind, Refusal> {
    let invalid = |reason: String| Refusal {
        code: Code::InvalidArgument,
        reason,
    };
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
    let size = record.encoded_len();
    if size > max_record_bytes {
        return Err(Refusal {
            code: Code::ResourceExhausted,
            reason: format!("record is {size} bytes; the limit is {max_record_bytes}"),
        });
    }
    Ok(kind)
}

/// String content every store backend can hold alike. PostgreSQL text
/// cannot hold a NUL character (SQLite can), so a record with one in any
/// string is refused here, at the edge, rather than stored by one backend
/// and dead-lettered by the other. Every string is checked, stored as text
/// or not, so that the rule is one line in the docs.
pub fn check_strings(record: &Record) -> Result<(), String> {
    use tributary::proto::record::Payload;
    let mut fields: Vec<(&str, &str)> = vec![("source", &record.source)];
    for (key, value) in &record.attributes {
        fields.push(("attribute name", key));
        fields.push(("attribute value", value));
    }
    match &record.payload {
        Some(Payload::Text(text)) => fields.push(("text body", &text.body)),
        Some(Payload::SensorReading(reading)) => fields.extend([
            ("sensor_id", reading.sensor_id.as_str()),
            ("metric", &reading.metric),
            ("unit", &reading.unit),
        ]),
        Some(Payload::Sms(sms)) => fields.extend([
            ("phone_number", sms.phone_number.as_str()),
            ("SMS body", &sms.body),
        ]),
        Some(Payload::RandomNumber(_) | Payload::Probe(_)) | None => {}
    }
    match fields.into_iter().find(|(_, value)| value.contains('\0')) {
        Some((field, _)) => Err(format!(
            "{field} holds a NUL character (U+0000), which the store cannot hold"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::{Text, record::Payload};

    fn text(source: &str, body: &str) -> Record {
        Record {
            source: source.into(),
            payload: Some(Payload::Text(Text { body: body.into() })),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_record() {
        assert_eq!(check(&text("a", "hi"), 1024), Ok(RecordKind::Text));
    }

    #[test]
    fn refuses_missing_source_and_payload() {
        assert_eq!(
            check(&text("", "hi"), 1024).unwrap_err().code,
            Code::InvalidArgument
        );
        let bare = Record {
            source: "a".into(),
            ..Default::default()
        };
        assert_eq!(check(&bare, 1024).unwrap_err().code, Code::InvalidArgument);
        let long = "s".repeat(MAX_SOURCE_BYTES + 1);
        assert_eq!(
            check(&text(&long, "hi"), 4096).unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn refuses_seq_beyond_sql_integers() {
        let mut record = text("a", "hi");
        record.seq = u64::MAX;
        assert!(check(&record, 1024).unwrap_err().reason.contains("2^63"));
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
            let refusal = check(&record, 1024).unwrap_err();
            assert_eq!(refusal.code, Code::InvalidArgument);
            assert!(
                refusal.reason.starts_with(field) && refusal.reason.contains("NUL"),
                "{}",
                refusal.reason
            );
        }
        // Other control characters are text both stores hold.
        assert!(check(&text("a\u{1}", "\t\u{7f}"), 1024).is_ok());
    }

    #[test]
    fn refuses_oversized_records_as_exhausted() {
        let refusal = check(&text("a", &"x".repeat(2000)), 1024).unwrap_err();
        assert_eq!(refusal.code, Code::ResourceExhausted);
    }
}
