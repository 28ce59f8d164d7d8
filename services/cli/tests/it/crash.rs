use std::time::Duration;

use crate::support::{Mesh, eventually, ready_if, rows_of, send_command, stored, wait_stored};

/// `kill -9` of the whole mesh in the middle of a stream. The sender
/// reconnects to the restarted mesh and republishes what was not acked.
/// Every record ends up stored exactly once.
#[tokio::test]
async fn a_killed_mesh_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let addr = mesh.addr;
    let sender = send_command(
        &mesh.url(),
        &[
            "--count",
            "200000",
            "--rate",
            "40000",
            "--retry-secs",
            "60",
            "--source",
            "crash",
        ],
    )
    .spawn()
    .unwrap();

    // Kill only once records are flowing all the way to the store.
    let channel = mesh.channel().await;
    eventually(
        "a record stored before the kill",
        Duration::from_secs(30),
        async || {
            let now = stored(&channel, "raw").await;
            ready_if(now > 0, now)
        },
    )
    .await;
    mesh.kill9().await;

    let mesh = Mesh::start_bare(dir.path(), &addr.to_string(), &[]).await;
    let output = tokio::time::timeout(Duration::from_secs(120), sender.wait_with_output())
        .await
        .expect("the sender finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["acked"], 200_000);
    assert!(
        summary["reconnects"].as_u64().unwrap() >= 1,
        "the kill broke the stream"
    );

    wait_stored(
        &mesh.channel().await,
        "raw",
        200_000,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        rows_of(dir.path(), "raw", "crash").await,
        (200_000, 200_000, 0, 199_999)
    );
}
