//! The embedded queue's memory bound, measured on a real `tributary ingest`
//! process: what it holds for an idle consumer group lives on disk, not in
//! memory.

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tributary::proto::{
    ListGroupsRequest, PublishBatchRequest, PullRequest, Record, RecordKind, Subscription, Text,
    ingest_client::IngestClient, record::Payload,
};

use crate::support::{Verbatim, eventually, spawn_listening};

/// Resident set size of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is mounted");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS is reported");
    kib * 1024
}

/// 1 GiB published behind a consumer group with no live subscriber raises
/// the server's RSS by no more than the body cache's cap plus a fixed
/// margin, and the group still has every message waiting.
#[tokio::test]
async fn a_gigabyte_behind_an_idle_group_keeps_memory_bounded() {
    const CACHE: u64 = 32 << 20;
    const MARGIN: u64 = 96 << 20;
    const TOTAL: u64 = 1 << 30;
    const BODY: usize = 60_000;
    const PER_CALL: usize = 60;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let queue = format!("embedded?cache_bytes={CACHE}");
    let (child, addr) = spawn_listening(&[
        "ingest",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--queue",
        &queue,
    ])
    .await;
    let pid = child.id().expect("the server runs");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = IngestClient::new(channel.clone());

    // The group subscribes once and goes away: from then on it is idle.
    let subscribe = PullRequest {
        subscribe: Some(Subscription {
            parser: "idle".into(),
            kinds: vec![RecordKind::Text as i32],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pull = client
        .pull(tokio_stream::iter(vec![subscribe]))
        .await
        .unwrap()
        .into_inner();
    while pull.next().await.is_some() {}

    // Warm up the publish path so that its buffers count in the baseline.
    let body = "x".repeat(BODY);
    let batch = |call: u64| PublishBatchRequest {
        records: (0..PER_CALL as u64)
            .map(|i| Record {
                source: "bulk".into(),
                seq: call * PER_CALL as u64 + i,
                payload: Some(Payload::Text(Text { body: body.clone() })),
                ..Default::default()
            })
            .collect(),
    };
    let calls = TOTAL / (BODY * PER_CALL) as u64;
    for call in 0..4 {
        client.publish_batch(batch(call)).await.unwrap();
    }
    let before = rss_bytes(pid);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..2u64 {
        let mut client = IngestClient::new(channel.clone());
        let batches: Vec<_> = (4..calls).filter(|c| c % 2 == lane).map(batch).collect();
        tasks.spawn(async move {
            let mut peak = 0;
            for request in batches {
                let response = client.publish_batch(request).await.unwrap().into_inner();
                assert!(response.rejections.is_empty(), "{:?}", response.rejections);
                peak = peak.max(rss_bytes(pid));
            }
            peak
        });
    }
    let mut peak = 0;
    while let Some(lane_peak) = tasks.join_next().await {
        peak = peak.max(lane_peak.unwrap());
    }
    let after = rss_bytes(pid);
    let growth = peak.max(after).saturating_sub(before);
    println!(
        "published {} MiB behind an idle group: RSS {} MiB before, {} MiB peak, {} MiB after",
        (calls * (BODY * PER_CALL) as u64) >> 20,
        before >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(
        growth <= CACHE + MARGIN,
        "RSS grew by {} MiB, over the {} MiB cache cap plus a {} MiB margin",
        growth >> 20,
        CACHE >> 20,
        MARGIN >> 20
    );
    let groups = client
        .list_groups(ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "idle");
    assert_eq!(groups[0].members, 0);
    assert_eq!(
        groups[0].lag, calls,
        "every message still waits for the group"
    );
    drop(child);
}

/// `tributary groups list` shows the running parsers' groups, and
/// `groups delete` of an unknown group fails, naming it.
#[tokio::test]
async fn the_groups_command_lists_and_refuses_an_unknown_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = crate::support::Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    let url = mesh.url();
    let listed = eventually(
        "raw listed by groups list",
        std::time::Duration::from_secs(30),
        async || {
            let output = tokio::process::Command::new(crate::support::BIN)
                .args(["groups", "list", "--connect", &url])
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            let text = String::from_utf8(output.stdout).unwrap();
            if text.lines().any(|l| l.starts_with("raw ")) {
                Ok(text)
            } else {
                Err(Verbatim(text))
            }
        },
    )
    .await;
    assert!(listed.starts_with("group"), "{listed}");
    let output = tokio::process::Command::new(crate::support::BIN)
        .args(["groups", "delete", "no-such-group", "--connect", &url])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-group"), "{stderr}");
}
