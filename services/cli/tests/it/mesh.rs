//! The distributed mesh under load and under failure: real NATS JetStream,
//! real PostgreSQL, three ingest servers and two parser replicas behind the
//! real Envoy. Each test checks the promise: every record stored exactly
//! once.

use std::time::Duration;

use tonic::transport::Channel;
use tributary::{
    proto::{GetSmsProgressRequest, query_client::QueryClient},
    testkit::{self, PrivatePostgres},
};

use crate::{
    cluster::{
        Backends, Cluster, dead_letters, finish, producer, rows_of, shares, stored, wait_stored,
    },
    support::{BIN, tool},
};

const PER_PRODUCER: u64 = 100_000;

/// Waits until the cluster has stored at least `n` records, so that a fault
/// lands mid-run rather than before records flow.
async fn until_flowing(cluster: &Cluster, n: i64) {
    wait_stored(cluster, n, Duration::from_secs(60)).await;
}

/// Both producers' records are all stored, once each.
async fn assert_all_stored_once(cluster: &Cluster) {
    wait_stored(cluster, 2 * PER_PRODUCER as i64, Duration::from_secs(120)).await;
    let mut db = cluster.db().await;
    let n = PER_PRODUCER as i64;
    for source in ["mesh-a", "mesh-b"] {
        assert_eq!(
            rows_of(&mut db, source).await,
            (n, n, 0, n - 1),
            "records of {source}"
        );
    }
    assert_eq!(stored(&mut db).await, 2 * n, "rows beyond the two sources");
    assert_eq!(shares(&mut db).await.iter().sum::<i64>(), 2 * n);
    assert_eq!(dead_letters(&mut db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cross_envoy_into_postgres_once_each_and_replicas_share_the_work() {
    // The parsers and the api reach PostgreSQL over its Unix socket.
    let backends = Backends::fresh_over_socket(
        &testkit::postgres_admin_url(),
        &testkit::postgres_socket_dir(),
    )
    .await;
    assert!(
        backends.store.starts_with("postgres:///"),
        "{}",
        backends.store
    );
    let cluster = Cluster::start(backends, 3, 2).await;

    // grpcurl through Envoy sees every mesh service.
    let listed = std::process::Command::new(tool("TRIBUTARY_GRPCURL"))
        .args([
            "-plaintext",
            cluster.entry.trim_start_matches("http://"),
            "list",
        ])
        .output()
        .expect("grpcurl runs");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for service in [
        "tributary.v1.Ingest",
        "tributary.v1.Query",
        "tributary.v1.Coordinator",
    ] {
        assert!(listed.contains(service), "grpcurl list via Envoy: {listed}");
    }

    let a = producer(&cluster, "mesh-a", PER_PRODUCER, 0);
    let b = producer(&cluster, "mesh-b", PER_PRODUCER, 0);
    for summary in [finish(a).await, finish(b).await] {
        assert_eq!(summary["acked"], PER_PRODUCER);
    }
    assert_all_stored_once(&cluster).await;
    let shares = shares(&mut cluster.db().await).await;
    assert_eq!(shares.len(), 2, "one count row per replica: {shares:?}");
    assert!(
        shares.iter().all(|&n| n > 0),
        "both replicas stored records: {shares:?}"
    );
    // Every session on the database but this one is a parser's or the
    // api's, and none came over TCP (a socket session has no client_addr).
    let (over_socket, over_tcp): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE client_addr IS NULL), \
                COUNT(*) FILTER (WHERE client_addr IS NOT NULL) \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut cluster.db().await)
    .await
    .expect("pg_stat_activity is readable");
    assert!(
        over_socket > 0 && over_tcp == 0,
        "{over_socket} sessions over the socket, {over_tcp} over TCP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingest_server_loses_nothing() {
    let backends = Backends::fresh(&testkit::postgres_admin_url()).await;
    let mut cluster = Cluster::start(backends, 3, 2).await;
    let a = producer(&cluster, "mesh-a", PER_PRODUCER, 20_000);
    let b = producer(&cluster, "mesh-b", PER_PRODUCER, 20_000);
    until_flowing(&cluster, 20_000).await;
    let victim = cluster.busiest_server().await;
    cluster.servers[victim].kill9().await;
    for summary in [finish(a).await, finish(b).await] {
        assert_eq!(summary["acked"], PER_PRODUCER);
    }
    assert_all_stored_once(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_parser_hands_its_work_to_the_other_replica() {
    let backends = Backends::fresh(&testkit::postgres_admin_url()).await;
    let mut cluster = Cluster::start(backends, 3, 2).await;
    let a = producer(&cluster, "mesh-a", PER_PRODUCER, 20_000);
    let b = producer(&cluster, "mesh-b", PER_PRODUCER, 20_000);
    until_flowing(&cluster, 20_000).await;
    cluster.parsers[0].kill9().await;
    let before = stored(&mut cluster.db().await).await;
    for summary in [finish(a).await, finish(b).await] {
        assert_eq!(summary["acked"], PER_PRODUCER);
    }
    assert_all_stored_once(&cluster).await;
    assert!(
        before < 2 * PER_PRODUCER as i64,
        "the kill landed after the run was over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_store_outage_loses_nothing() {
    let postgres = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    let backends = Backends::fresh(&postgres.admin_url()).await;
    let cluster = Cluster::start(backends, 3, 2).await;
    let a = producer(&cluster, "mesh-a", PER_PRODUCER, 10_000);
    let b = producer(&cluster, "mesh-b", PER_PRODUCER, 10_000);
    until_flowing(&cluster, 10_000).await;
    let before = stored(&mut cluster.db().await).await;
    assert!(
        before < 2 * PER_PRODUCER as i64,
        "the outage would land after the run was over"
    );
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.stop();
        // The outage itself: the scenario is ten seconds without a store.
        std::thread::sleep(Duration::from_secs(10));
        postgres.resume();
        postgres
    })
    .await
    .unwrap();
    for summary in [finish(a).await, finish(b).await] {
        assert_eq!(summary["acked"], PER_PRODUCER);
    }
    assert_all_stored_once(&cluster).await;
    drop(postgres);
}

/// A workload in the distributed mesh: 1,000 SMS through Envoy, JetStream
/// and two differently configured senders sharing one consumer group, into
/// PostgreSQL, with progress read back through Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_alerts_run_distributed_and_every_message_is_sent_or_failed_once() {
    let backends = Backends::fresh(&testkit::postgres_admin_url()).await;
    let mut cluster = Cluster::start(backends, 3, 0).await;
    cluster
        .add_parser_with(r#"{"type":"sms_sender","mean_ms":5,"failure_rate":0.1,"concurrency":16,"label":"fast"}"#)
        .await;
    cluster
        .add_parser_with(r#"{"type":"sms_sender","mean_ms":20,"failure_rate":0.3,"concurrency":8,"label":"slow"}"#)
        .await;
    let output = tokio::process::Command::new(BIN)
        .args([
            "generate",
            "sms",
            "--count",
            "1000",
            "--batch",
            "25",
            "--connect",
        ])
        .arg(&cluster.entry)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("generate sms runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let channel = Channel::from_shared(cluster.entry.clone())
        .unwrap()
        .connect()
        .await
        .expect("Envoy accepts connections");
    let mut query = QueryClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let progress = query
            .get_sms_progress(GetSmsProgressRequest::default())
            .await
            .expect("GetSmsProgress answers through Envoy")
            .into_inner();
        if progress.sent + progress.failed >= 1000 {
            break progress;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} sent and {} failed of 1000 within 60 s",
            progress.sent,
            progress.failed
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(progress.sent + progress.failed, 1000);
    assert!(progress.failed > 0 && progress.sent > progress.failed);
    let senders: Vec<&str> = progress.senders.iter().map(|s| s.sender.as_str()).collect();
    assert_eq!(senders, ["fast", "slow"], "both senders took messages");
}

/// The REST face through Envoy, as compose users reach it: `POST
/// /v1/records` lands on an ingest server (the api service hosts no Ingest),
/// reads and the OpenAPI document come from the api service over PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_publishes_and_reads_through_envoy() {
    let backends = Backends::fresh(&testkit::postgres_admin_url()).await;
    let cluster = Cluster::start(backends, 2, 1).await;
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let records: Vec<serde_json::Value> = (0..10)
        .map(|seq| serde_json::json!({"source": "envoy-rest", "seq": seq.to_string(), "text": {"body": "via envoy"}}))
        .collect();
    let response = client
        .post(format!("{}/v1/records", cluster.entry))
        .json(&serde_json::json!({ "records": records }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 10, "{body}");

    wait_stored(&cluster, 10, Duration::from_secs(60)).await;
    let page: serde_json::Value = client
        .get(format!(
            "{}/v1/records?parser=raw&source=envoy-rest",
            cluster.entry
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<&str> = page["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        // Canonical JSON leaves the default out: seq 0 has no field.
        .map(|r| r["record"]["seq"].as_str().unwrap_or("0"))
        .collect();
    let mut seqs: Vec<u64> = seqs.iter().map(|s| s.parse().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "{page}");
    let openapi = client
        .get(format!("{}/openapi.json", cluster.entry))
        .send()
        .await
        .unwrap();
    assert_eq!(openapi.status(), 200);
    let openapi: serde_json::Value = openapi.json().await.unwrap();
    assert!(
        openapi["paths"]["/v1/records"]["post"].is_object(),
        "{openapi}"
    );
}

/// Envoy notices an ingest server that dies before the mesh has carried any
/// traffic: its health checks run every second from start-up
/// (`no_traffic_interval`), where Envoy's default would check an idle
/// cluster once a minute and leave a dead server in rotation for that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_before_any_traffic_is_marked_failed_within_3_s() {
    const PROMISE: Duration = Duration::from_secs(3);
    let backends = Backends::fresh(&testkit::postgres_admin_url()).await;
    // No parsers: their Pull streams would be traffic.
    let mut cluster = Cluster::start(backends, 3, 0).await;
    assert_eq!(
        cluster.stat("cluster.server.upstream_cx_total").await,
        Some(0),
        "the server cluster has carried traffic before the kill"
    );
    let victim = cluster.servers[1].addr;
    cluster.servers[1].kill9().await;
    let killed = tokio::time::Instant::now();
    // Polled past the promise, so that a miss reports how late it was.
    let deadline = killed + Duration::from_secs(5);
    loop {
        let flags = cluster.health_flags(victim).await;
        if flags.contains("failed_active_hc") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Envoy still shows the killed server {victim} as {flags:?} 5 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed();
    println!("Envoy marked the killed server failed {took:?} after the kill");
    assert!(
        took <= PROMISE,
        "Envoy marked the killed server failed {took:?} after the kill, past {PROMISE:?}"
    );
    for (i, server) in cluster.servers.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert_eq!(
            cluster.health_flags(server.addr).await,
            "healthy",
            "server {i} stays in rotation"
        );
    }
}
