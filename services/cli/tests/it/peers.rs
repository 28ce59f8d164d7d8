//! Clients nobody on the Rust side wrote: the real grpcurl and a Python
//! grpcio client generated from our protos.

use std::path::Path;

use tokio::process::Command;

use crate::support::{Mesh, send, tool, wait_stored};

async fn grpcurl(args: &[&str]) -> String {
    let output = Command::new(tool("TRIBUTARY_GRPCURL"))
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let addr = mesh.addr.to_string();

    let services = grpcurl(&["-plaintext", &addr, "list"]).await;
    for name in [
        "tributary.v1.Ingest",
        "tributary.v1.Query",
        "tributary.v1.Coordinator",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == name),
            "{name} missing from {services}"
        );
    }

    let record = grpcurl(&["-plaintext", &addr, "describe", "tributary.v1.Record"]).await;
    assert!(record.contains("string source = 1;"), "{record}");
    assert!(record.contains("oneof payload"), "{record}");

    send(&mesh.url(), &["--count", "10", "--source", "curl"]).await;
    wait_stored(
        &mesh.channel().await,
        "raw",
        10,
        std::time::Duration::from_secs(30),
    )
    .await;
    let stats = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "tributary.v1.Query/GetStats",
    ])
    .await;
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("grpcurl prints JSON");
    let raw = stats["parsers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["parser"] == "raw")
        .expect("raw has stored records");
    assert_eq!(raw["stored"], "10", "int64 is a string in proto3 JSON");

    let health = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"tributary.v1.Ingest"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn a_python_grpcio_client_publishes_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peer/peer.py");
    let output = Command::new(tool("TRIBUTARY_PYTHON"))
        .arg(&script)
        .arg("--addr")
        .arg(mesh.addr.to_string())
        .arg("--count")
        .arg("2000")
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "peer.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("peer ok"));
}

/// The attacks of a hostile grpcio client on the Pull contract (a forged
/// ack, a regroup, an idle group) all fail, and the server keeps serving.
#[tokio::test]
async fn a_hostile_python_grpcio_client_cannot_break_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peer/hostile.py");
    let output = Command::new(tool("TRIBUTARY_PYTHON"))
        .arg(&script)
        .arg("--addr")
        .arg(mesh.addr.to_string())
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "hostile.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("hostile ok"));
}
