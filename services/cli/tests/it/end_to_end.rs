use std::time::Duration;

use crate::support::{Mesh, rows_of, send, wait_stored};

/// 100,000 records through `tributary up`: every one acked, every one stored
/// exactly once by each parser, and the Query count agrees.
#[tokio::test]
async fn every_published_record_is_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let summary = send(
        &mesh.url(),
        &["--count", "100000", "--kind", "text", "--source", "e2e"],
    )
    .await;
    assert_eq!(summary["acked"], 100_000);
    assert_eq!(summary["rejected"], 0);

    let channel = mesh.channel().await;
    wait_stored(&channel, "raw", 100_000, Duration::from_secs(60)).await;
    wait_stored(&channel, "uppercase", 100_000, Duration::from_secs(60)).await;
    assert_eq!(
        rows_of(dir.path(), "raw", "e2e").await,
        (100_000, 100_000, 0, 99_999)
    );
    assert_eq!(
        rows_of(dir.path(), "uppercase", "e2e").await,
        (100_000, 100_000, 0, 99_999)
    );
}

/// Sending the same keys again is acknowledged as duplicates and changes
/// nothing in the store.
#[tokio::test]
async fn republished_keys_are_acked_as_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let first = send(&mesh.url(), &["--count", "2000", "--source", "again"]).await;
    assert_eq!(first["accepted"], 2000);
    let second = send(&mesh.url(), &["--count", "2000", "--source", "again"]).await;
    assert_eq!(
        (second["accepted"].as_u64(), second["duplicates"].as_u64()),
        (Some(0), Some(2000))
    );
    wait_stored(&mesh.channel().await, "raw", 2000, Duration::from_secs(30)).await;
    assert_eq!(
        rows_of(dir.path(), "raw", "again").await,
        (2000, 2000, 0, 1999)
    );
}
