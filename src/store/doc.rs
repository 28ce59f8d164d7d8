//! The JSON document stored beside a JSON record (the `doc` column), which
//! field aggregation reads: the one place the store looks inside a record
//! body, so that the document can never disagree with the body it comes
//! from.

use prost::Message as _;

use super::{NewRecord, StoreError};
use crate::{
    json_check,
    proto::{Record, RecordKind, record::Payload},
};

/// The document of `record` as JSON text (keys sorted, integral numbers
/// written as integers), or `None` when it is not a JSON record. A body
/// that does not decode, or a document that breaks the JSON rules (which
/// ingest enforces, but a parser could break), is data neither backend can
/// hold alike: PostgreSQL's JSONB refuses a NUL that SQLite would keep.
pub(crate) fn of(record: &NewRecord) -> Result<Option<String>, StoreError> {
    if record.kind != RecordKind::Json as i32 {
        return Ok(None);
    }
    let decoded = Record::decode(&record.body[..]).map_err(|e| {
        StoreError::Data(format!(
            "JSON record {:?}/{} does not decode: {e}",
            record.source, record.seq
        ))
    })?;
    let Some(Payload::Json(object)) = &decoded.payload else {
        return Ok(None);
    };
    json_check::check_json(object).map_err(|e| {
        StoreError::Data(format!(
            "JSON record {:?}/{}: {e}",
            record.source, record.seq
        ))
    })?;
    Ok(Some(json_check::to_json(object).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::record;

    #[test]
    fn only_json_records_have_a_document() {
        assert_eq!(of(&record("a", 1)).unwrap(), None);
        let json = Record {
            source: "a".into(),
            payload: Some(Payload::Json(
                [
                    ("price".to_owned(), 12.5.into()),
                    ("n".to_owned(), 7.0.into()),
                ]
                .into_iter()
                .collect(),
            )),
            ..Default::default()
        };
        let stored = NewRecord {
            kind: RecordKind::Json as i32,
            body: json.encode_to_vec().into(),
            ..record("a", 1)
        };
        assert_eq!(
            of(&stored).unwrap().as_deref(),
            Some(r#"{"n":7,"price":12.5}"#)
        );
        let broken = NewRecord {
            kind: RecordKind::Json as i32,
            body: vec![0xff].into(),
            ..record("a", 2)
        };
        assert!(matches!(of(&broken), Err(StoreError::Data(_))));
    }
}
