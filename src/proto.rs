//! Generated protobuf types, gRPC stubs, canonical proto3 JSON (pbjson) and
//! the REST transcoders of `tributary.v1`.
#![allow(clippy::all, missing_docs)]

/// `google.api` HTTP annotations, needed by the generated code's imports.
pub mod google_api {
    tonic::include_proto!("google.api");
}

tonic::include_proto!("tributary.v1");
include!(concat!(env!("OUT_DIR"), "/tributary.v1.serde.rs"));
include!(concat!(env!("OUT_DIR"), "/rest/query/tributary.v1.rest.rs"));
include!(concat!(
    env!("OUT_DIR"),
    "/rest/ingest/tributary.v1.rest.rs"
));
include!(concat!(env!("OUT_DIR"), "/rest/fleet/tributary.v1.rest.rs"));

/// The encoded `FileDescriptorSet` of every proto file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tributary_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::*;

    /// A double in a REST body is read as exactly the double written, even
    /// a subnormal one (serde_json's default parse was one ulp off here).
    #[test]
    fn doubles_read_from_json_are_the_doubles_written() {
        for value in [
            9.178429666345241e-308,
            0.1,
            21.5,
            f64::MAX,
            f64::MIN_POSITIVE / 3.0,
        ] {
            let reading = SensorReading {
                value,
                ..Default::default()
            };
            let json = serde_json::to_string(&reading).unwrap();
            let back: SensorReading = serde_json::from_str(&json).unwrap();
            assert_eq!(back.value.to_bits(), value.to_bits(), "{json}");
        }
    }
}
