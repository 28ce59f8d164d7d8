//! What tracing costs: the end-to-end rate of the embedded mesh with trace
//! export off, at 1% sampling and at 100% sampling, as ratios within one
//! run. Spans go over OTLP/gRPC to a real receiver (the tests' Python
//! server, writing every span as JSON), so the export's cost is paid.
//!
//! Run (after `source scripts/tools.sh`, which provides the Python venv):
//! `cargo bench -p tributary-cli --bench tracing` (`-- --records N
//! --rounds R`; default 300,000 records, 3 rounds). The modes take turns
//! within each round, so that load from elsewhere on the machine falls on
//! all of them alike.

mod support;

use std::{path::Path, process::Stdio, time::Instant};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const BIN: &str = env!("CARGO_BIN_EXE_tributary");

/// (label, OTEL_* variables) of each mode.
const MODES: [(&str, &[(&str, &str)]); 3] = [
    ("tracing off", &[]),
    (
        "1% sampling",
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ],
    ),
    (
        "100% sampling",
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
        ],
    ),
];

fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map_or(default, |n| n.parse().expect("a number"))
}

#[tokio::main]
async fn main() {
    let records = arg("--records", 300_000);
    let rounds = arg("--rounds", 3);
    let python = std::env::var("TRIBUTARY_PYTHON")
        .expect("TRIBUTARY_PYTHON is not set: `source scripts/tools.sh` first");
    let dir = tempfile::tempdir().unwrap();
    let (_receiver, endpoint) = start_receiver(&python, dir.path()).await;

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 0..rounds {
        for (i, (label, vars)) in MODES.iter().enumerate() {
            let mut env: Vec<(&str, &str)> = vars.to_vec();
            if !vars.is_empty() {
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));
            }
            let rate = run(dir.path(), &format!("r{round}m{i}"), records, &env).await;
            eprintln!("round {round}: {label}: {rate:.0} records/s");
            rates[i].push(rate);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let off = median(&rates[0]);
    println!("| mode | end to end (median of {rounds}) | vs off |");
    println!("|---|---|---|");
    for ((label, _), rates) in MODES.iter().zip(&rates) {
        let m = median(rates);
        println!(
            "| {label} | {m:.0} records/s | {:.3} ({:+.1}%) |",
            m / off,
            100.0 * (m / off - 1.0)
        );
    }
}

/// The Python OTLP receiver of the integration tests, writing to a file.
async fn start_receiver(python: &str, dir: &Path) -> (Child, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/otlp_receiver.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .arg(dir.join("spans.jsonl"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next_line()
        .await
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().to_owned();
    (child, format!("http://{addr}"))
}

/// One fresh `tributary up --parser raw` and one traced `tributary send`
/// of `records` sensor readings; the rate from the start of the send until
/// the store holds them all.
async fn run(dir: &Path, name: &str, records: u64, env: &[(&str, &str)]) -> f64 {
    let data = dir.join(name);
    let mut mesh = Command::new(BIN)
        .args([
            "up",
            "--no-workloads",
            "--listen",
            "127.0.0.1:0",
            "--parser",
            "raw",
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let line = BufReader::new(mesh.stdout.take().unwrap())
        .lines()
        .next_line()
        .await
        .unwrap()
        .unwrap();
    let url = format!("http://{}", line.strip_prefix("listening on ").unwrap());

    let started = Instant::now();
    let send = Command::new(BIN)
        .args([
            "send",
            "--json",
            "--kind",
            "sensor",
            "--connect",
            &url,
            "--count",
        ])
        .arg(records.to_string())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    support::wait_stored(&url, "raw", records).await;
    let rate = records as f64 / started.elapsed().as_secs_f64();
    mesh.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&data);
    rate
}
