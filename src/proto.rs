//! Generated protobuf types and gRPC stubs of `tributary.v1`.
#![allow(clippy::all, missing_docs)]

/// `google.api` HTTP annotations, needed by the generated code's imports.
pub mod google_api {
    tonic::include_proto!("google.api");
}

tonic::include_proto!("tributary.v1");

/// The encoded `FileDescriptorSet` of every proto file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tributary_descriptor.bin"));
