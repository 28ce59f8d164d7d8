//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed)
//! and emits the encoded descriptor set that reflection and Envoy's
//! transcoder read, the canonical proto3 JSON (pbjson) of every message, and
//! the REST face generated from the `google.api.http` annotations.

use std::{env, fs, path::PathBuf};

use rest_over_grpc::build::{DescriptorOptions, Generator, OpenApiInfo, ServiceDefinition};

const PROTOS: &[&str] = &[
    "tributary/v1/record.proto",
    "tributary/v1/ingest.proto",
    "tributary/v1/coordinator.proto",
    "tributary/v1/query.proto",
    "tributary/v1/fleet.proto",
    "tributary/v1/plugin.proto",
];

/// Services with `google.api.http` annotations. Each gets a transcoder of its
/// own (in `OUT_DIR/rest/<name>/`), because the services run on different
/// servers in the distributed mesh and a generated transcoder needs a handler
/// for every service it was generated for.
const REST_SERVICES: &[(&str, &str)] = &[
    ("query", ".tributary.v1.Query"),
    ("ingest", ".tributary.v1.Ingest"),
    ("fleet", ".tributary.v1.Fleet"),
];

/// Well-known types come from pbjson-types, which carries their canonical
/// JSON forms (RFC 3339 timestamps); prost-types has no serde support.
const WELL_KNOWN: (&str, &str) = (".google.protobuf", "::pbjson_types");

/// The public `Delivery` is, in Rust, its wire twin from
/// `proto/internal/wire.proto`, whose records stay encoded: the ingest
/// server passes them on from the queue without decoding them, and each
/// parser decodes them once.
const WIRE_DELIVERY: (&str, &str) = (".tributary.v1.Delivery", "crate::wire::Delivery");

/// Compiles `proto/internal/wire.proto` into `OUT_DIR/wire/`, kept out of
/// the descriptor set: its messages are not API, only other Rust types for
/// public messages' bytes.
fn wire(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .open_files(["internal/wire.proto"])?;
    let dir = out.join("wire");
    fs::create_dir_all(&dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .out_dir(&dir)
        .compile_well_known_types(true)
        .extern_path(WELL_KNOWN.0, WELL_KNOWN.1)
        .extern_path(".tributary.v1", "crate::proto")
        .bytes(".tributary.wire")
        .compile_fds(compiler.file_descriptor_set())?;
    // Its own encoded descriptors, for the tests that hold each message to
    // its public twin.
    fs::write(
        dir.join("wire_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    // Encoded by protox itself: prost's descriptor types would drop the
    // `google.api.http` option, an extension they do not know.
    let encoded = compiler.encode_file_descriptor_set();
    let fds = compiler.file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("tributary_descriptor.bin"), &encoded)?;
    // "Compile" well-known types only so that prost does not map them to
    // prost-types itself; the extern path sends them to pbjson-types.
    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(WELL_KNOWN.0, WELL_KNOWN.1)
        .extern_path(WIRE_DELIVERY.0, WIRE_DELIVERY.1)
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .extern_path(WELL_KNOWN.0, WELL_KNOWN.1)
        // Pull responses are gRPC only; their deliveries carry records as
        // bytes, which have no proto3 JSON of their own.
        .exclude([WIRE_DELIVERY.0, ".tributary.v1.PullResponse"])
        .build(&[".tributary.v1"])?;
    wire(&out)?;

    for (name, service) in REST_SERVICES {
        let dir = out.join("rest").join(name);
        fs::create_dir_all(&dir)?;
        let options = DescriptorOptions::new()
            .package(*service)
            .extern_path(WELL_KNOWN.0, WELL_KNOWN.1);
        Generator::new()
            .add_all(ServiceDefinition::from_fds(&encoded, &options)?)
            .write(&dir)?;
    }

    // One OpenAPI document for the whole REST face, as users see it through
    // `tributary up` or Envoy; the transcoder generated with it is unused.
    let dir = out.join("rest").join("all");
    fs::create_dir_all(&dir)?;
    let mut all = Generator::builder()
        .emit_tonic_bridge(false)
        .emit_openapi_spec(Some(OpenApiInfo::new(
            "Tributary REST API",
            env::var("CARGO_PKG_VERSION")?,
        )))
        .build();
    let mut options = DescriptorOptions::new().extern_path(WELL_KNOWN.0, WELL_KNOWN.1);
    for (_, service) in REST_SERVICES {
        options = options.package(*service);
    }
    all.add_all(ServiceDefinition::from_fds(&encoded, &options)?)
        .write(&dir)?;
    Ok(())
}
