//! The live dashboard in a real browser: Debian's Chromium, driven by
//! playwright-core (`tests/browser/dashboard.mjs`), against `tributary up`
//! with its demo workloads, and the `WatchDashboard` stream over gRPC.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{ChildStdout, Command},
};
use tokio_stream::StreamExt;
use tributary::proto::{FleetReportState, WatchDashboardRequest, query_client::QueryClient};

use crate::support::Mesh;

/// SMS alerts the mesh sends at start-up: enough that the senders are still
/// at work while the browser looks (the default 1,000 are done in seconds).
const SMS: &str = "50000";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where screenshots go: under target/, which CI keeps as artifacts.
fn screenshot(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    target.join("dashboard").join(name)
}

/// `node tests/browser/dashboard.mjs MODE URL SCREENSHOT`, with its stdin
/// and stdout piped; fails loudly when the browser or the driver is missing.
fn browser(mode: &str, url: &str, shot: &Path) -> tokio::process::Child {
    let dir = repo_root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{} has no node_modules/playwright-core: run scripts/test.sh, which runs npm ci there",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: run scripts/test.sh, which installs Debian's chromium"
    );
    Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .args([mode, url])
        .arg(shot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node.js is needed for the browser tests)")
}

/// The next JSON line the script prints.
async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>, within: Duration) -> Value {
    let line = tokio::time::timeout(within, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("the browser script printed nothing within {within:?}"))
        .expect("the script's stdout is readable")
        .expect("the browser script exited early; its reason is on stderr above");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Waits for the script and returns its final JSON line.
async fn finish(mut child: tokio::process::Child) -> Value {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let result = next_json(&mut lines, Duration::from_secs(120)).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the browser script exits after its result")
        .expect("its exit status is readable");
    assert!(status.success(), "the browser checks failed: {result}");
    result
}

fn number(result: &Value, key: &str) -> f64 {
    result[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {result}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_live_numbers_in_chromium() {
    let data = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_with_workloads(data.path(), "127.0.0.1:0", &["--sms", SMS]).await;
    let shot = screenshot("dashboard.png");
    let _ = std::fs::remove_file(&shot);

    let result = finish(browser("check", &format!("{}/", mesh.url()), &shot)).await;
    eprintln!("browser result: {result}");

    assert!(number(&result, "probe_later") > number(&result, "probe_first"));
    assert!(number(&result, "probe_increase_ms") <= 3000.0, "{result}");
    assert!(number(&result, "avg_transit_ms").is_finite());
    assert!(number(&result, "sms_later") > number(&result, "sms_first"));
    assert_eq!(result["console_errors"], 0);
    assert_eq!(
        result["sensor_metrics"],
        serde_json::json!(["temperature", "humidity", "pressure"])
    );
    assert_eq!(result["fleet"], "no fleet reporting");
    // Updates keep arriving; how evenly is a figure for docs/benchmarks.md,
    // not a test.
    assert!(number(&result["cadence"], "updates") >= 2.0, "{result}");
    let png = std::fs::read(&shot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_recovers_by_itself_when_the_server_comes_back() {
    let data = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_with_workloads(data.path(), "127.0.0.1:0", &["--sms", SMS]).await;
    let addr = mesh.addr.to_string();
    let shot = screenshot("dashboard-reconnected.png");

    let mut script = browser("reconnect", &format!("{}/", mesh.url()), &shot);
    let mut stdin = script.stdin.take().expect("stdin is piped");
    let stdout = script.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(
        next_json(&mut lines, Duration::from_secs(60)).await["event"],
        "live"
    );

    let mut child = mesh.child;
    let pid = nix::unistd::Pid::from_raw(child.id().expect("the mesh runs") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM is sent");
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the mesh exits within 30 s of SIGTERM")
        .expect("its exit status is readable");
    assert!(exit.success(), "the mesh stops cleanly on SIGTERM: {exit}");
    stdin.write_all(b"stopped\n").await.unwrap();
    assert_eq!(
        next_json(&mut lines, Duration::from_secs(30)).await["event"],
        "reconnecting"
    );

    // The same port and data: the page's EventSource URL is unchanged.
    let again = Mesh::start_with_workloads(data.path(), &addr, &["--sms", SMS]).await;
    assert_eq!(again.addr.to_string(), addr);
    stdin.write_all(b"restarted\n").await.unwrap();
    let result = next_json(&mut lines, Duration::from_secs(60)).await;
    eprintln!("browser result: {result}");
    let status = tokio::time::timeout(Duration::from_secs(30), script.wait())
        .await
        .expect("the browser script exits after its result")
        .unwrap();
    assert!(status.success(), "the reconnect checks failed: {result}");
    assert_eq!(result["status"], "live");
    assert_eq!(result["navigations"], 1);
    assert!(number(&result, "sms_later") > number(&result, "sms_first"));
    drop(again);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_dashboard_streams_every_figure_over_grpc() {
    let data = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_with_workloads(
        data.path(),
        "127.0.0.1:0",
        // Nothing listens on port 9 of loopback (discard is not served).
        &["--fleet-status", "http://127.0.0.1:9"],
    )
    .await;
    let mut client = QueryClient::new(mesh.channel().await);

    let refused = client
        .watch_dashboard(WatchDashboardRequest {
            interval_ms: 50,
            ..Default::default()
        })
        .await
        .expect_err("an interval below 100 ms is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let mut stream = client
        .watch_dashboard(WatchDashboardRequest {
            interval_ms: 200,
            ..Default::default()
        })
        .await
        .expect("WatchDashboard answers")
        .into_inner();
    // Poll updates until every workload has shown up, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut previous_read_at = None;
    loop {
        let update = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("every workload shows up on the dashboard within 30 s")
            .expect("the stream stays open")
            .expect("updates are not errors");
        let read_at = update.read_at.clone().expect("every update has a time");
        if let Some(previous) = previous_read_at.replace(read_at.clone()) {
            assert!(
                tributary::clock::to_micros(&read_at) > tributary::clock::to_micros(&previous),
                "each update is read later than the one before"
            );
        }
        let fleet = update.fleet.clone().expect("every update reports the fleet");
        assert_eq!(fleet.state(), FleetReportState::Unreachable);
        assert!(fleet.detail.contains("127.0.0.1:9"), "{}", fleet.detail);
        assert_eq!(update.sensor_window_ms, 60_000);
        let names: Vec<_> = update.metrics.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(names, ["temperature", "humidity", "pressure"]);

        let latency = update.latency.clone().expect("latency is always sent");
        let sms = update.sms.clone().expect("SMS progress is always sent");
        let sensors_seen = update.metrics.iter().all(|m| !m.groups.is_empty());
        if latency.stored > 0
            && latency.recent > 0
            && !update.averages.is_empty()
            && sensors_seen
            && sms.sent + sms.failed > 0
        {
            assert!(latency.avg_to_store_ms > 0.0);
            break;
        }
    }
}
