//! Records passed on encoded.
//!
//! A queue message's body is an encoded `RecordBatch`, and a `Delivery`
//! carries the same records to a parser. On the wire, a `repeated Record`
//! field is a run of length-delimited fields, one encoded record each, which
//! is also how a `repeated bytes` field of that number looks. So the ingest
//! server splits a body into its records' encodings ([`split`]) and hands
//! them on in a [`Delivery`] without decoding or re-encoding one; the parser
//! decodes each record once. Clients see `tributary.v1.Delivery` as
//! `ingest.proto` describes it: the tests below hold each twin in
//! `proto/internal/wire.proto` to its public message, field by field, and
//! decode each one's bytes as the other.

use bytes::Bytes;
use prost::{DecodeError, Message};

use crate::proto::Record;

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/wire/tributary.wire.rs"));
}

pub use generated::{Delivery, RecordBatch};

/// Splits an encoded `RecordBatch` into its records' encodings, each a
/// slice of `body` (nothing is copied or decoded). An error means the
/// body's framing is broken; a record's own bytes are checked only when it
/// is decoded.
pub fn split(body: Bytes) -> Result<Vec<Bytes>, DecodeError> {
    RecordBatch::decode(body).map(|batch| batch.records)
}

impl Delivery {
    /// Decodes each record, in order. A record that cannot be decoded is
    /// an error of its own; the others are unaffected.
    pub fn records(&self) -> impl ExactSizeIterator<Item = Result<Record, DecodeError>> + '_ {
        self.records
            .iter()
            .map(|bytes| Record::decode(bytes.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use prost_types::{
        FileDescriptorSet,
        field_descriptor_proto::{Label, Type},
    };

    use super::*;
    use crate::proto::{self, RecordKind, SensorReading, record::Payload};

    const WIRE_DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/wire/wire_descriptor.bin"));

    /// Each field of a message: number → (name, label, wire type).
    fn fields(set: &[u8], message: &str) -> BTreeMap<i32, (String, Label, String)> {
        let set = FileDescriptorSet::decode(set).unwrap();
        let (package, name) = message.rsplit_once('.').unwrap();
        let found = set
            .file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("{message} is not described"));
        found
            .field
            .iter()
            .map(|f| {
                // A message field and a bytes field share a wire form.
                let shape = match f.r#type() {
                    Type::Message | Type::Bytes
                        if f.type_name() != ".google.protobuf.Timestamp" =>
                    {
                        "length-delimited".to_owned()
                    }
                    other => format!("{other:?} {}", f.type_name()),
                };
                (f.number(), (f.name().to_owned(), f.label(), shape))
            })
            .collect()
    }

    #[test]
    fn each_twin_has_its_public_messages_fields() {
        for (public, twin) in [
            ("tributary.v1.Delivery", "tributary.wire.Delivery"),
            ("tributary.v1.RecordBatch", "tributary.wire.RecordBatch"),
        ] {
            let public = fields(proto::FILE_DESCRIPTOR_SET, public);
            let twin = fields(WIRE_DESCRIPTORS, twin);
            assert_eq!(public, twin, "{twin:?} differs from its public message");
            assert!(
                public
                    .values()
                    .any(|(_, label, shape)| *label == Label::Repeated
                        && shape == "length-delimited"),
                "the records field was not compared"
            );
        }
    }

    /// `tributary.v1.Delivery` as `ingest.proto` describes it, for the
    /// tests only (the crate's `Delivery` is the twin).
    #[derive(Clone, PartialEq, prost::Message)]
    struct PublicDelivery {
        #[prost(string, tag = "1")]
        ack_id: String,
        #[prost(message, repeated, tag = "2")]
        records: Vec<Record>,
        #[prost(uint32, tag = "3")]
        attempt: u32,
        #[prost(uint32, tag = "4")]
        max_attempts: u32,
        #[prost(message, optional, tag = "5")]
        received_at: Option<pbjson_types::Timestamp>,
        #[prost(enumeration = "RecordKind", tag = "6")]
        kind: i32,
        #[prost(string, tag = "7")]
        traceparent: String,
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            "[a-z0-9é-]{0,12}",
            any::<u64>(),
            proptest::option::of((any::<i64>(), 0..1_000_000_000i32)),
            proptest::collection::btree_map("[a-z]{0,4}", "[a-z ]{0,6}", 0..3),
            "[a-z]{0,8}",
            -1e300..1e300f64,
        )
            .prop_map(|(source, seq, sent_at, attributes, sensor, value)| Record {
                source,
                seq,
                sent_at: sent_at.map(|(seconds, nanos)| pbjson_types::Timestamp { seconds, nanos }),
                attributes: attributes.into_iter().collect(),
                payload: Some(Payload::SensorReading(SensorReading {
                    sensor_id: sensor,
                    metric: "temperature".into(),
                    value,
                    unit: "celsius".into(),
                    measured_at: None,
                })),
            })
    }

    proptest! {
        /// A body split and handed on in a twin delivery is, to a client
        /// reading `tributary.v1`, the delivery of the records published;
        /// and the twin reads a public delivery's records back.
        #[test]
        fn a_split_body_delivers_the_records_published(
            records in proptest::collection::vec(record(), 0..8),
            attempt in any::<u32>(),
            ack_id in "[a-z0-9:]{0,20}",
            traceparent in "[a-f0-9-]{0,20}",
        ) {
            let body = proto::RecordBatch { records: records.clone() }.encode_to_vec();
            let split = split(Bytes::from(body)).unwrap();
            prop_assert_eq!(split.len(), records.len());
            let twin = Delivery {
                ack_id: ack_id.clone(),
                records: split,
                attempt,
                max_attempts: 5,
                received_at: Some(pbjson_types::Timestamp { seconds: 7, nanos: 9 }),
                kind: RecordKind::SensorReading as i32,
                traceparent: traceparent.clone(),
            };
            let public = PublicDelivery::decode(twin.encode_to_vec().as_slice()).unwrap();
            let expected = PublicDelivery {
                ack_id,
                records: records.clone(),
                attempt,
                max_attempts: 5,
                received_at: twin.received_at,
                kind: twin.kind,
                traceparent,
            };
            prop_assert_eq!(public, expected.clone());
            let back = Delivery::decode(expected.encode_to_vec().as_slice()).unwrap();
            let decoded: Vec<Record> = back.records().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded, records);
        }

        /// Whatever the bytes, splitting answers; where the body decodes
        /// as a public batch, the split records decode to its records, and
        /// where a split record fails to decode, so does the public batch
        /// (the fuzz target `queue_body` asks the same of many more).
        #[test]
        fn splitting_agrees_with_decoding_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let public = proto::RecordBatch::decode(body.as_slice());
            match split(Bytes::from(body.clone())) {
                Err(_) => prop_assert!(public.is_err()),
                Ok(parts) => {
                    let decoded: Result<Vec<Record>, _> =
                        parts.into_iter().map(Record::decode).collect();
                    match (decoded, public) {
                        (Ok(records), Ok(batch)) => {
                            prop_assert_eq!(records.len(), batch.records.len());
                            for (split, public) in records.iter().zip(&batch.records) {
                                prop_assert!(same(split, public), "{split:?} against {public:?}");
                            }
                        }
                        (Err(_), Err(_)) => {}
                        // Inside a batch a record sits one level deeper.
                        (Ok(_), Err(e)) if e.to_string().contains("recursion limit") => {}
                        (decoded, public) => prop_assert!(
                            false,
                            "split {decoded:?} but the public batch {public:?}"
                        ),
                    }
                }
            }
        }
    }

    /// Equal records; a record holding a NaN equals nothing, itself
    /// included, so it is taken as it is.
    #[allow(clippy::eq_op)]
    fn same(a: &Record, b: &Record) -> bool {
        a == b || a != a
    }

    #[test]
    fn a_record_that_cannot_be_decoded_fails_alone() {
        let good = Record {
            source: "s".into(),
            seq: 1,
            payload: Some(Payload::SensorReading(SensorReading::default())),
            ..Default::default()
        };
        let delivery = Delivery {
            records: vec![
                Bytes::from(good.encode_to_vec()),
                Bytes::from_static(&[0x0a, 0x05, b'x']),
                Bytes::from(good.encode_to_vec()),
            ],
            ..Default::default()
        };
        let decoded: Vec<_> = delivery.records().collect();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0].as_ref().unwrap(), &good);
        assert!(decoded[1].is_err());
        assert_eq!(decoded[2].as_ref().unwrap(), &good);
    }
}
