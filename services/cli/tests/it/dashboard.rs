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
use tributary::proto::{
    Dashboard, FleetPhase, FleetReportState, WatchDashboardRequest, query_client::QueryClient,
};

use crate::support::{BIN, Mesh, spawn_listening};

const WORKER: &str = env!("CARGO_BIN_EXE_tributary-worker");

/// SMS alerts the mesh sends at start-up: enough that the senders are still
/// at work while the browser looks (the default 1,000 are done in seconds).
const SMS: &str = "20000";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the package sits at services/cli in the repository")
        .to_path_buf()
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
    browser_with(mode, url, shot, &[])
}

/// [`browser`] with extra environment variables for the script.
fn browser_with(mode: &str, url: &str, shot: &Path, env: &[(&str, &str)]) -> tokio::process::Child {
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
        .envs(env.iter().copied())
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
async fn with_a_token_the_page_asks_to_sign_in_and_then_goes_live_in_chromium() {
    const TOKEN: &str = "dashboard-reader-5d1e";
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (full, read) = (dir.path().join("full"), dir.path().join("read"));
    std::fs::write(&full, "dashboard-writer-a9c2\n").unwrap();
    std::fs::write(&read, format!("{TOKEN}\n")).unwrap();
    let mesh = Mesh::start_with_workloads(
        data.path(),
        "127.0.0.1:0",
        &[
            "--auth-token-file",
            full.to_str().unwrap(),
            "--auth-read-token-file",
            read.to_str().unwrap(),
        ],
    )
    .await;
    let shot = screenshot("dashboard-signed-in.png");
    let _ = std::fs::remove_file(&shot);

    let script = browser_with(
        "login",
        &format!("{}/", mesh.url()),
        &shot,
        &[("TRIBUTARY_DASHBOARD_TOKEN", TOKEN)],
    );
    let result = finish(script).await;
    eprintln!("browser result: {result}");
    assert_eq!(result["signed_out"], true, "{result}");
    assert_eq!(result["wrong_token_status"], 401, "{result}");
    assert!(number(&result, "probe_later") > number(&result, "probe_first"));
    assert_eq!(result["cookie_visible_to_scripts"], false, "{result}");
    assert_eq!(result["sign_in_hidden"], true, "{result}");
    assert_eq!(result["console_errors"], 0);
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
        let read_at = update.read_at.expect("every update has a time");
        if let Some(previous) = previous_read_at.replace(read_at) {
            assert!(
                tributary::clock::to_micros(&read_at) > tributary::clock::to_micros(&previous),
                "each update is read later than the one before"
            );
        }
        let fleet = update
            .fleet
            .clone()
            .expect("every update reports the fleet");
        assert_eq!(fleet.state(), FleetReportState::Unreachable);
        assert!(fleet.detail.contains("127.0.0.1:9"), "{}", fleet.detail);
        assert_eq!(update.sensor_window_ms, 60_000);
        let names: Vec<_> = update.metrics.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(names, ["temperature", "humidity", "pressure"]);

        let latency = update.latency.expect("latency is always sent");
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

/// The next update for which `done` holds, failing after `within`.
async fn update_where(
    stream: &mut tonic::Streaming<Dashboard>,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&Dashboard) -> bool,
) -> Dashboard {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let update = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{what} within {within:?}"))
            .expect("the stream stays open")
            .expect("updates are not errors");
        if done(&update) {
            return update;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_fleet_run_shows_up_on_the_dashboard_and_goes_away() {
    // A fleet run that lasts: two workers at one sample a second each.
    let mut fleet = Command::new(BIN)
        .args(["fleet", "collect", "--worker-bin", WORKER])
        .args(["--samples", "100000", "--max-workers", "2"])
        .args(["--status-listen", "127.0.0.1:0"])
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
    let status_addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let data = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", data.path().join("tributary.db").display());
    let fleet_url = format!("http://{status_addr}");
    let (_api, addr) = spawn_listening(&[
        "api",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store,
        "--fleet-status",
        &fleet_url,
    ])
    .await;
    let mut client = QueryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut stream = client
        .watch_dashboard(WatchDashboardRequest {
            interval_ms: 200,
            ..Default::default()
        })
        .await
        .expect("WatchDashboard answers")
        .into_inner();

    let update = update_where(
        &mut stream,
        Duration::from_secs(30),
        "the fleet reports samples",
        |u| {
            u.fleet.as_ref().is_some_and(|f| {
                f.state() == FleetReportState::Reporting
                    && f.status.as_ref().is_some_and(|s| s.collected > 0)
            })
        },
    )
    .await;
    let status = update.fleet.unwrap().status.unwrap();
    assert_eq!(status.phase(), FleetPhase::Running);
    assert_eq!(status.target, 100_000);
    assert_eq!(status.max_workers, 2);

    // The run ends; the dashboard says no fleet answers any more.
    let pid = nix::unistd::Pid::from_raw(fleet.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT is sent");
    let _ = tokio::time::timeout(Duration::from_secs(30), fleet.wait())
        .await
        .expect("the fleet run stops within 30 s of SIGINT");
    let gone = update_where(
        &mut stream,
        Duration::from_secs(10),
        "the dashboard notices the fleet is gone",
        |u| {
            u.fleet
                .as_ref()
                .is_some_and(|f| f.state() == FleetReportState::Unreachable)
        },
    )
    .await;
    assert!(gone.fleet.unwrap().detail.contains(&status_addr));
}
