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
    fn refuses_oversized_records_as_exhausted() {
        let refusal = check(&text("a", &"x".repeat(2000)), 1024).unwrap_err();
        assert_eq!(refusal.code, Code::ResourceExhausted);
    }
}
