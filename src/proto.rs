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
