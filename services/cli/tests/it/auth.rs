//! Tokens on every data route: with a token configured, Query (gRPC and
//! REST), Ingest, the Coordinator, Fleet status and the dashboard's stream
//! refuse callers without it; the read-only token reads but cannot write;
//! health and /metrics stay open; a rotated token file takes effect without
//! a restart; and no token ever reaches the log.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use tokio_stream::StreamExt;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tributary::proto::{
    ClaimRequest, GetFleetStatusRequest, GetStatsRequest, ListRecordsRequest, PublishBatchRequest,
    Record, Text, WatchDashboardRequest, coordinator_client::CoordinatorClient,
    fleet_client::FleetClient, ingest_client::IngestClient, query_client::QueryClient,
    record::Payload,
};

use crate::support::{BIN, Mesh, eventually, ready_if};

const WORKER: &str = env!("CARGO_BIN_EXE_tributary-worker");
const FULL: &str = "full-token-7f3a9c";
const READ: &str = "read-token-2b8e41";

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// `request` with `authorization: Bearer <token>` when a token is given.
fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a valid header"),
        );
    }
    request
}

async fn list_records(channel: &Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let request = ListRecordsRequest {
        parser: "raw".into(),
        limit: 1,
        ..Default::default()
    };
    QueryClient::new(channel.clone())
        .list_records(with_token(request, token))
        .await
        .map(drop)
}

async fn publish(channel: &Channel, token: Option<&str>, seq: u64) -> Result<(), tonic::Status> {
    let request = PublishBatchRequest {
        records: vec![Record {
            source: "auth-test".into(),
            seq,
            payload: Some(Payload::Text(Text {
                body: format!("line {seq}"),
            })),
            ..Default::default()
        }],
    };
    IngestClient::new(channel.clone())
        .publish_batch(with_token(request, token))
        .await
        .map(drop)
}

async fn claim(channel: &Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let tick = tributary::clock::now_micros() / 100_000 + 20;
    let requests = tokio_stream::iter(vec![ClaimRequest {
        generator_id: "auth-test".into(),
        tick,
        min: 1,
        max: 10_000,
    }]);
    let mut responses = CoordinatorClient::new(channel.clone())
        .claim(with_token(requests, token))
        .await?
        .into_inner();
    responses
        .next()
        .await
        .unwrap_or_else(|| Err(tonic::Status::unknown("the claim stream ended at once")))
        .map(drop)
}

async fn watch_dashboard(channel: &Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let request = WatchDashboardRequest {
        interval_ms: 200,
        ..Default::default()
    };
    let mut updates = QueryClient::new(channel.clone())
        .watch_dashboard(with_token(request, token))
        .await?
        .into_inner();
    updates
        .next()
        .await
        .unwrap_or_else(|| Err(tonic::Status::unknown("the dashboard stream ended at once")))
        .map(drop)
}

/// Polls GetStats with `token` until `parser` has stored `want` records.
pub async fn wait_stored_with(
    channel: &Channel,
    token: &str,
    parser: &str,
    want: u64,
    within: Duration,
) {
    let now = eventually(
        &format!("{parser} storing {want} records"),
        within,
        async || {
            let stats = QueryClient::new(channel.clone())
                .get_stats(with_token(GetStatsRequest {}, Some(token)))
                .await
                .expect("GetStats answers with the token")
                .into_inner();
            let now = stats
                .parsers
                .iter()
                .find(|p| p.parser == parser)
                .map_or(0, |p| p.stored);
            ready_if(now >= want, now)
        },
    )
    .await;
    assert_eq!(now, want, "{parser} stored more records than were sent");
}

fn assert_code(result: Result<(), tonic::Status>, code: Code, what: &str) {
    match result {
        Ok(()) => panic!("{what}: expected {code:?}, got an answer"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            for token in [FULL, READ] {
                assert!(
                    !status.message().contains(token),
                    "{what}: the answer echoes a token"
                );
            }
        }
    }
}

/// `tributary up --no-workloads` with debug logs written to `log`.
async fn logged_mesh(data: &Path, log: &Path, extra: &[&str]) -> (tokio::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(["up", "--no-workloads", "--listen", "127.0.0.1:0"])
        .args(["--data-dir", path(data)])
        .args(extra)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("tributary up starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("tributary up prints its address within 60 s")
        .unwrap()
        .expect("a line before exit");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

#[tokio::test]
async fn with_a_token_every_data_route_refuses_callers_without_it() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (full_file, read_file) = (dir.path().join("full"), dir.path().join("read"));
    std::fs::write(&full_file, format!("{FULL}\n")).unwrap();
    std::fs::write(&read_file, format!("{READ}\n")).unwrap();
    let log = dir.path().join("mesh.log");
    let (_mesh, addr) = logged_mesh(
        data.path(),
        &log,
        &[
            "--auth-token-file",
            path(&full_file),
            "--auth-read-token-file",
            path(&read_file),
        ],
    )
    .await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // gRPC: Query, Ingest, Coordinator and the dashboard's stream.
    assert_code(
        list_records(&channel, None).await,
        Code::Unauthenticated,
        "Query without a token",
    );
    assert_code(
        list_records(&channel, Some("full-token-7f3a9")).await,
        Code::Unauthenticated,
        "Query with a wrong token",
    );
    list_records(&channel, Some(READ))
        .await
        .expect("the read-only token reads");
    list_records(&channel, Some(FULL))
        .await
        .expect("the full token reads");
    assert_code(
        publish(&channel, None, 0).await,
        Code::Unauthenticated,
        "Ingest without a token",
    );
    assert_code(
        publish(&channel, Some(READ), 0).await,
        Code::PermissionDenied,
        "Ingest with the read-only token",
    );
    publish(&channel, Some(FULL), 0)
        .await
        .expect("the full token publishes");
    assert_code(
        claim(&channel, None).await,
        Code::Unauthenticated,
        "Claim without a token",
    );
    assert_code(
        claim(&channel, Some(READ)).await,
        Code::PermissionDenied,
        "Claim with the read-only token",
    );
    claim(&channel, Some(FULL))
        .await
        .expect("the full token claims");
    assert_code(
        watch_dashboard(&channel, None).await,
        Code::Unauthenticated,
        "WatchDashboard without a token",
    );
    watch_dashboard(&channel, Some(READ))
        .await
        .expect("the read-only token watches the dashboard");

    // REST: records, publishing, and the dashboard's SSE stream.
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let base = format!("http://{addr}");
    let records = format!("{base}/v1/records?parser=raw&limit=1");
    let refused = http.get(&records).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], 16, "{body}");
    let ok = http.get(&records).bearer_auth(READ).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let publish_body =
        serde_json::json!({"records": [{"source": "rest", "seq": "1", "text": {"body": "hi"}}]});
    let post = |token: Option<&'static str>| {
        let mut request = http.post(format!("{base}/v1/records")).json(&publish_body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some(READ)).await.unwrap().status(), 403);
    assert_eq!(post(Some(FULL)).await.unwrap().status(), 200);

    let stream = format!("{base}/v1/dashboard:watch");
    let sse = |cookie: Option<String>| {
        let mut request = http.get(&stream).header("accept", "text/event-stream");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    assert_eq!(sse(None).await.unwrap().status(), 401);
    assert_eq!(
        sse(Some("tributary_token=not-it".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    // A browser signs in once; the cookie then carries the token.
    let no_redirects = reqwest::Client::builder()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = format!("{base}/login");
    let wrong = no_redirects
        .post(&login)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let signed_in = no_redirects
        .post(&login)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", READ))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let set_cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let mut live = sse(Some(cookie.clone())).await.unwrap();
    assert_eq!(live.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), live.chunk())
        .await
        .expect("an update within 10 s")
        .unwrap()
        .expect("the stream is open");
    assert!(first.starts_with(b"data:"), "{first:?}");
    // The cookie reads; it never writes, even holding the full token.
    let full_cookie = no_redirects
        .post(&login)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", FULL))
        .send()
        .await
        .unwrap();
    let full_cookie = full_cookie.headers()["set-cookie"].to_str().unwrap();
    let full_cookie = full_cookie.split(';').next().unwrap().to_owned();
    let forged = http
        .post(format!("{base}/v1/records"))
        .header("cookie", full_cookie)
        .json(&publish_body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    // Health, /metrics and the page itself stay open; refusals are counted.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no token")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    assert_eq!(http.get(&base).send().await.unwrap().status(), 200);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["missing", "invalid", "read_only"] {
        let line = format!("tributary_auth_refused_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "no {line} in /metrics");
    }

    // Debug logs name refusals, never a token.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("request refused"),
        "refusals are logged at debug"
    );
    for token in [FULL, READ] {
        assert!(!log.contains(token), "the log contains a token");
    }
}

#[tokio::test]
async fn a_rotated_token_file_takes_effect_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let mesh = Mesh::start_bare(
        data.path(),
        "127.0.0.1:0",
        &["--auth-token-file", path(&token_file)],
    )
    .await;
    let channel = mesh.channel().await;
    publish(&channel, Some("first-token"), 0)
        .await
        .expect("the first token works");

    // Rotate as a secret manager does: write aside, rename over.
    let next = dir.path().join("token.next");
    std::fs::write(&next, "second-token\n").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    eventually(
        "the rotated token to be accepted",
        Duration::from_secs(15),
        async || list_records(&channel, Some("second-token")).await,
    )
    .await;
    assert_code(
        list_records(&channel, Some("first-token")).await,
        Code::Unauthenticated,
        "the old token after rotation",
    );
    // The mesh's own parsers, which pull with a token of their own, still
    // store what is published with the new one.
    publish(&channel, Some("second-token"), 1)
        .await
        .expect("the new token publishes");
    wait_stored_with(&channel, "second-token", "raw", 2, Duration::from_secs(60)).await;
    // A token file that breaks keeps the last good token.
    std::fs::write(&token_file, "").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    list_records(&channel, Some("second-token"))
        .await
        .expect("an empty token file keeps the last good token");
}

#[tokio::test]
async fn fleet_status_wants_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{FULL}\n")).unwrap();
    let mut fleet = Command::new(BIN)
        .args(["fleet", "collect", "--worker-bin", WORKER])
        .args(["--samples", "100000", "--max-workers", "1"])
        .args(["--status-listen", "127.0.0.1:0"])
        .args(["--status-token-file", path(&token_file)])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tributary fleet collect starts");
    let mut lines = BufReader::new(fleet.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the fleet prints its status address within 30 s")
        .unwrap()
        .expect("a line before exit");
    let addr = line.strip_prefix("listening on ").unwrap().to_owned();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = |token: Option<&'static str>| {
        let mut client = FleetClient::new(channel.clone());
        async move {
            client
                .get_fleet_status(with_token(GetFleetStatusRequest {}, token))
                .await
                .map(drop)
        }
    };
    assert_code(
        status(None).await,
        Code::Unauthenticated,
        "Fleet status without a token",
    );
    status(Some(FULL))
        .await
        .expect("the token reads the fleet status");
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let url = format!("http://{addr}/v1/fleet/status");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&url)
            .bearer_auth(FULL)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    assert_eq!(health.into_inner().status, 1);
}
