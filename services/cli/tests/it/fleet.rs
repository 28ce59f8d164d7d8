//! `tributary fleet collect` against real worker processes: ours with and
//! without faults, a Python one, a Ctrl-C in the middle, and publishing into
//! a running mesh.
//!
//! "No process left behind" is checked by a marker put in the supervisor's
//! environment: every worker inherits it, so after the run no live process
//! may carry it, whatever pid it had and whoever its parent became.

use std::{path::Path, process::Stdio, time::Duration};

use rand::RngExt;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use tonic::transport::Channel;
use tributary::proto::{
    FleetPhase, FleetWorkerState, GetFleetStatusRequest, ListRecordsRequest,
    fleet_client::FleetClient, query_client::QueryClient, record::Payload,
};

use crate::support::{BIN, Mesh, eventually, ready_if, tool, wait_stored};

const WORKER: &str = env!("CARGO_BIN_EXE_tributary-worker");
const MARKER_VAR: &str = "TRIBUTARY_FLEET_TEST_MARKER";

/// A `tributary fleet collect` command whose processes can be found later.
struct Run {
    marker: String,
    command: Command,
}

impl Run {
    fn new(args: &[&str]) -> Self {
        let marker = format!("{:016x}", rand::rng().random::<u64>());
        let mut command = Command::new(BIN);
        command
            .args(["fleet", "collect"])
            .args(args)
            .env(MARKER_VAR, &marker)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Self { marker, command }
    }

    /// Runs to completion; the JSON report and whether the exit was a
    /// success.
    async fn finish(mut self) -> (Value, bool, String) {
        let output = tokio::time::timeout(Duration::from_secs(120), self.command.output())
            .await
            .expect("the run ends within 120 s")
            .expect("tributary fleet collect starts");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("stdout is one JSON report ({e}): {stdout}\nstderr: {stderr}")
        });
        assert_no_marked_process(&self.marker);
        (report, output.status.success(), stderr)
    }
}

/// Live (not zombie) processes whose environment holds `marker`.
fn marked_processes(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER_VAR}={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc is readable") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading: skip it then.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let marked = environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes());
        if marked && is_alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    state != "Z" && state != "X"
}

fn assert_no_marked_process(marker: &str) {
    let left = marked_processes(marker);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

fn u64_of(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("the report has no {key}: {report}"))
}

fn worker_pids(report: &Value) -> Vec<u64> {
    report["workers"]
        .as_array()
        .expect("the report lists workers")
        .iter()
        .flat_map(|w| {
            w["pids"]
                .as_array()
                .expect("each worker lists its pids")
                .clone()
        })
        .map(|p| p.as_u64().expect("a pid is a number"))
        .collect()
}

/// The checks every completed run must pass: exactly the target, the
/// per-worker counts add up, the cap held, and every pid is gone.
fn assert_exact(report: &Value, samples: u64, max_workers: u64) {
    assert_eq!(report["phase"], "done", "{report}");
    assert_eq!(u64_of(report, "collected"), samples, "{report}");
    let per_worker: u64 = report["workers"]
        .as_array()
        .expect("the report lists workers")
        .iter()
        .map(|w| w["samples"].as_u64().expect("samples is a number"))
        .sum();
    assert_eq!(per_worker, samples, "per-worker counts: {report}");
    assert!(
        u64_of(report, "peak_live_workers") <= max_workers,
        "{report}"
    );
    assert_eq!(u64_of(report, "live_workers"), 0, "{report}");
    let pids = worker_pids(report);
    assert!(!pids.is_empty(), "no worker was started: {report}");
    for pid in pids {
        assert!(!is_alive(pid as u32), "worker pid {pid} is still alive");
    }
}

#[tokio::test]
async fn easy_run_collects_exactly_150_from_16_workers() {
    let (report, ok, stderr) = Run::new(&["--json", "--worker-bin", WORKER]).finish().await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 150, 16);
    assert_eq!(u64_of(&report, "peak_live_workers"), 16, "{report}");
    assert_eq!(u64_of(&report, "crashes"), 0, "{report}");
    assert_eq!(u64_of(&report, "junk_lines"), 0, "{report}");
    assert!(report["supervisor"]["peak_rss_kib"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn hard_run_survives_crashes_and_stalls() {
    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        WORKER,
        "--stall-timeout",
        "2s",
        "--max-restarts",
        "500",
        "--",
        "-crashProb",
        "0.1",
        "-stallProb",
        "0.05",
        "-stall",
        "1h",
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}\n{report}");
    assert_exact(&report, 150, 16);
    // With 150 numbers or more drawn, no crash at all has a chance of
    // 0.9^150 (about 1e-7) and no stall 0.95^150 (about 5e-4).
    assert!(u64_of(&report, "crashes") > 0, "{report}");
    assert!(u64_of(&report, "stalls") > 0, "{report}");
    let restarts = u64_of(&report, "restarts");
    assert!(restarts <= 500, "{report}");
    // Every failed process but the last of each slot was replaced.
    let failures =
        u64_of(&report, "crashes") + u64_of(&report, "stalls") + u64_of(&report, "start_failures");
    assert!(restarts + 16 >= failures, "{report}");
}

#[tokio::test]
async fn split_truncated_junk_and_huge_lines_still_count_exactly() {
    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        WORKER,
        "--samples",
        "40",
        "--max-workers",
        "8",
        "--",
        "-chunking",
        "split",
        "-junkProb",
        "0.3",
        "-truncateProb",
        "0.3",
        "-max",
        "9223372036854775807",
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 40, 8);
    // 40 numbers or more, each with two chances of 0.3 of a bad line.
    assert!(u64_of(&report, "junk_lines") > 0, "{report}");
    assert_eq!(u64_of(&report, "crashes"), 0, "{report}");
}

#[tokio::test]
async fn merged_lines_are_all_counted() {
    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        WORKER,
        "--samples",
        "24",
        "--max-workers",
        "4",
        "--stall-timeout",
        "5s",
        "--",
        "-chunking",
        "merge",
        "-mergeLines",
        "3",
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 24, 4);
    assert_eq!(u64_of(&report, "stalls"), 0, "{report}");
}

#[tokio::test]
async fn a_worker_that_answers_and_sends_nothing_is_replaced() {
    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        WORKER,
        "--samples",
        "12",
        "--max-workers",
        "4",
        "--stall-timeout",
        "500ms",
        "--backoff-max",
        "100ms",
        "--",
        "-muteProb",
        "0.9",
        "-interval",
        "100ms",
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 12, 4);
    // Each of the first four connections is mute with a chance of 0.9, so
    // none of them being mute has a chance of 1e-4.
    assert!(u64_of(&report, "stalls") > 0, "{report}");
}

#[tokio::test]
async fn the_restart_cap_ends_a_hopeless_run() {
    let (report, ok, _) = Run::new(&[
        "--json",
        "--worker-bin",
        WORKER,
        "--samples",
        "1000",
        "--max-workers",
        "4",
        "--max-restarts",
        "3",
        "--",
        "-crashProb",
        "0.9",
    ])
    .finish()
    .await;
    assert!(!ok, "a run past its restart cap must fail: {report}");
    assert_eq!(report["phase"], "failed", "{report}");
    assert_eq!(u64_of(&report, "restarts"), 3, "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("--max-restarts"),
        "{report}"
    );
    assert!(u64_of(&report, "peak_live_workers") <= 4, "{report}");
}

#[tokio::test]
async fn a_worker_binary_that_cannot_start_is_a_clear_error() {
    let (report, ok, _) = Run::new(&["--json", "--worker-bin", "/bin/false", "--max-workers", "2"])
        .finish()
        .await;
    assert!(!ok, "{report}");
    assert_eq!(report["phase"], "failed", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("failed to start"), "{error}");
    assert_eq!(u64_of(&report, "collected"), 0, "{report}");
}

#[tokio::test]
async fn sigint_mid_run_leaves_no_worker_alive() {
    let mut run = Run::new(&[
        "--worker-bin",
        WORKER,
        "--samples",
        "100000",
        "--status-listen",
        "127.0.0.1:0",
    ]);
    let mut child = run.command.spawn().expect("tributary fleet collect starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the status address is printed within 30 s")
        .expect("stdout is readable")
        .expect("a line before exit");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the status server accepts connections");
    let mut client = FleetClient::new(channel);

    // Wait until all 16 workers stream and samples flow.
    let status = eventually(
        "16 workers streaming and samples flowing",
        Duration::from_secs(30),
        async || {
            let status = client
                .get_fleet_status(GetFleetStatusRequest {})
                .await
                .expect("GetFleetStatus answers")
                .into_inner();
            let streaming = status
                .workers
                .iter()
                .filter(|w| w.state() == FleetWorkerState::Streaming && w.pid != 0)
                .count();
            ready_if(streaming == 16 && status.collected > 0, status)
        },
    )
    .await;
    assert_eq!(status.phase(), FleetPhase::Running);
    // The same status over the listener's REST face, as canonical JSON.
    let rest: serde_json::Value = reqwest::get(format!("http://{addr}/v1/fleet/status"))
        .await
        .expect("GET /v1/fleet/status answers")
        .json()
        .await
        .expect("the answer is JSON");
    assert_eq!(rest["phase"], "FLEET_PHASE_RUNNING", "{rest}");
    assert_eq!(rest["target"], "100000", "{rest}");
    assert_eq!(rest["workers"].as_array().map(Vec::len), Some(16), "{rest}");
    let pids: Vec<u32> = status.workers.iter().map(|w| w.pid).collect();
    assert!(pids.iter().all(|&pid| is_alive(pid)));
    assert_eq!(
        marked_processes(&run.marker).len(),
        17,
        "supervisor + 16 workers"
    );

    let supervisor = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(supervisor, nix::sys::signal::Signal::SIGINT).expect("SIGINT is sent");
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the supervisor exits within 30 s of SIGINT")
        .expect("the exit status is readable");
    assert!(!exit.success(), "an interrupted run exits with failure");
    for pid in pids {
        assert!(!is_alive(pid), "worker pid {pid} survived SIGINT");
    }
    assert_no_marked_process(&run.marker);
    let rest: Vec<String> = {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    };
    assert!(
        rest.iter().any(|l| l.contains("samples in")),
        "the interrupted run still prints its report: {rest:?}"
    );
}

#[tokio::test]
async fn any_binary_that_speaks_the_protocol_works() {
    // The fixture runs as the README offers it: executable, by its shebang
    // (the Python standard library only, so any python3 on PATH will do).
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker.py");

    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        fixture.to_str().unwrap(),
        "--samples",
        "30",
        "--max-workers",
        "6",
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 30, 6);
    assert_eq!(u64_of(&report, "crashes"), 0, "{report}");
    for worker in report["workers"].as_array().unwrap() {
        assert!(worker["samples"].as_u64().unwrap() > 0, "{worker}");
    }
}

#[tokio::test]
async fn a_worker_dribbling_bytes_without_samples_is_replaced_as_a_stall() {
    let python = tool("TRIBUTARY_PYTHON");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker.py");
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("python-worker");
    write_script(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{python}' '{}' \"$@\"\n",
            fixture.display()
        ),
    );
    // Worker 1 sends a byte every 50 ms, ten times within the stall
    // timeout, and never a sample: bytes must not hold its slot.
    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        wrapper.to_str().unwrap(),
        "--samples",
        "40",
        "--max-workers",
        "3",
        "--stall-timeout",
        "500ms",
        "--backoff-max",
        "100ms",
        "--",
        "-interval",
        "0.1",
        "-dribbleWorker",
        "1",
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 40, 3);
    let dribbler = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == 1)
        .unwrap_or_else(|| panic!("worker 1 is reported: {report}"));
    assert_eq!(dribbler["samples"].as_u64(), Some(0), "{report}");
    assert!(dribbler["stalls"].as_u64().unwrap() > 0, "{report}");
}

#[tokio::test]
async fn published_samples_are_stored_with_their_worker_id() {
    let data = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(data.path(), "127.0.0.1:0", &[]).await;
    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        WORKER,
        "--samples",
        "20",
        "--max-workers",
        "4",
        "--publish",
        &mesh.url(),
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 20, 4);
    let published = &report["published"];
    assert_eq!(published["accepted"], 20, "{report}");
    let source = published["source"].as_str().unwrap().to_owned();

    let channel = mesh.channel().await;
    wait_stored(&channel, "raw", 20, Duration::from_secs(30)).await;
    let stored = QueryClient::new(channel)
        .list_records(ListRecordsRequest {
            parser: "raw".into(),
            source: source.clone(),
            limit: 100,
            after_id: 0,
            max_bytes: 0,
        })
        .await
        .expect("ListRecords answers")
        .into_inner()
        .records;
    assert_eq!(stored.len(), 20);
    let mut seqs: Vec<u64> = Vec::new();
    for row in &stored {
        let record = row.record.as_ref().expect("a stored row has its record");
        seqs.push(record.seq);
        let worker_id: u32 = record.attributes["worker_id"]
            .parse()
            .expect("worker_id is a number");
        assert!((1..=4).contains(&worker_id), "{record:?}");
        assert!(
            matches!(record.payload, Some(Payload::RandomNumber(_))),
            "{record:?}"
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_worker_that_fails_to_start_is_started_again() {
    // Each worker id's first process exits at once, as a worker that lost
    // its port to another process would; the second one is ours.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("flaky-worker");
    write_script(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             # $2 is the worker id (-workerId ID -port PORT ...).\n\
             if [ ! -e '{dir}/started-'\"$2\" ]; then touch '{dir}/started-'\"$2\"; echo 'cannot bind' >&2; exit 1; fi\n\
             exec '{WORKER}' \"$@\"\n",
            dir = dir.path().display()
        ),
    );

    let (report, ok, stderr) = Run::new(&[
        "--json",
        "--worker-bin",
        wrapper.to_str().unwrap(),
        "--samples",
        "12",
        "--max-workers",
        "4",
    ])
    .finish()
    .await;
    assert!(ok, "the run failed: {stderr}");
    assert_exact(&report, 12, 4);
    assert_eq!(u64_of(&report, "start_failures"), 4, "{report}");
    assert_eq!(u64_of(&report, "restarts"), 4, "{report}");
    assert_eq!(u64_of(&report, "crashes"), 0, "{report}");
    assert!(
        stderr.contains("cannot bind"),
        "the worker's stderr is shown: {stderr}"
    );
}

#[tokio::test]
async fn our_workers_exit_when_the_supervisor_is_killed_with_sigkill() {
    let mut run = Run::new(&[
        "--worker-bin",
        WORKER,
        "--samples",
        "100000",
        "--max-workers",
        "4",
    ]);
    let mut child = run.command.spawn().expect("tributary fleet collect starts");
    // Four workers and the supervisor carry the marker once all are up.
    eventually(
        "4 workers and the supervisor carrying the marker",
        Duration::from_secs(30),
        async || {
            let marked = marked_processes(&run.marker);
            ready_if(marked.len() >= 5, marked)
        },
    )
    .await;
    // SIGKILL: the supervisor cannot stop anything. The workers see their
    // parent go and exit on their own (-exitWithParent, on by default).
    child.kill().await.expect("the supervisor can be killed");
    eventually(
        "every worker to exit after the supervisor's SIGKILL",
        Duration::from_secs(10),
        async || {
            let left = marked_processes(&run.marker);
            ready_if(left.is_empty(), left)
        },
    )
    .await;
}

/// A worker whose supervisor died while it was still starting (the parent
/// its supervisor named is not its parent by the time it looks) exits by
/// itself instead of being left behind.
#[tokio::test]
async fn a_worker_whose_supervisor_died_while_it_started_exits() {
    // This test process is the worker's parent, and it is not pid 1.
    let mut worker = tokio::process::Command::new(WORKER)
        .args(["-workerId", "1", "-port", "0"])
        .env("TRIBUTARY_WORKER_PARENT_PID", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts");
    let exited = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    assert!(
        matches!(exited, Ok(Ok(_))),
        "the worker was still running 30 s after its named parent was gone: {exited:?}"
    );
}

/// Writes an executable shell script.
fn write_script(path: &std::path::Path, text: String) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
