//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed)
//! and emits the encoded descriptor set that reflection and Envoy's
//! transcoder read.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "tributary/v1/record.proto",
    "tributary/v1/ingest.proto",
    "tributary/v1/coordinator.proto",
    "tributary/v1/query.proto",
    "tributary/v1/fleet.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("tributary_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .compile_well_known_types(false)
        .compile_fds(fds)?;
    Ok(())
}
