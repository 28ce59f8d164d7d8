//! Worker fleet benchmark (W2): wall time to collect 150 samples with 1, 4,
//! 8 and 16 workers without faults, and 16 workers with a crash
//! probability of 0.05, against the physical limit of ceil(150 / workers)
//! seconds (one number per worker per second). Also the supervisor's own
//! CPU time and peak RSS, as it reports them. Prints a Markdown table.
//!
//! Run: `cargo bench -p tributary-cli --bench fleet` (add `-- --repeat N`
//! to run each case N times and keep the median, and `-- --workers W` to
//! run only the cases with W workers; a full pass takes about four minutes,
//! most of it the one-worker case).

use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tributary");
const WORKER: &str = env!("CARGO_BIN_EXE_tributary-worker");
const SAMPLES: u64 = 150;

struct Case {
    workers: u64,
    crash_prob: Option<&'static str>,
}

#[tokio::main]
async fn main() {
    let repeat: usize = std::env::args()
        .skip_while(|a| a != "--repeat")
        .nth(1)
        .map_or(1, |n| n.parse().expect("--repeat takes a number"));
    let only: Option<u64> = std::env::args()
        .skip_while(|a| a != "--workers")
        .nth(1)
        .map(|n| n.parse().expect("--workers takes a number"));
    let cases = [
        Case {
            workers: 1,
            crash_prob: None,
        },
        Case {
            workers: 4,
            crash_prob: None,
        },
        Case {
            workers: 8,
            crash_prob: None,
        },
        Case {
            workers: 16,
            crash_prob: None,
        },
        Case {
            workers: 16,
            crash_prob: Some("0.05"),
        },
    ];
    println!(
        "| workers | faults | wall time to 150 (s) | limit ceil(150/w) (s) | over limit | crashes | restarts | supervisor CPU user+sys (s) | supervisor peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for case in cases.iter().filter(|c| only.is_none_or(|w| c.workers == w)) {
        let mut runs = Vec::new();
        for _ in 0..repeat {
            runs.push(run(case).await);
        }
        runs.sort_by(|a, b| {
            a["seconds"]
                .as_f64()
                .partial_cmp(&b["seconds"].as_f64())
                .unwrap()
        });
        let report = &runs[runs.len() / 2];
        let spread: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.2}", r["seconds"].as_f64().unwrap()))
            .collect();
        eprintln!(
            "{} workers, {:?}: runs {}",
            case.workers,
            case.crash_prob,
            spread.join(", ")
        );
        let seconds = report["seconds"].as_f64().unwrap();
        let limit = SAMPLES.div_ceil(case.workers) as f64;
        let cpu = report["supervisor"]["cpu_user_seconds"].as_f64().unwrap()
            + report["supervisor"]["cpu_system_seconds"].as_f64().unwrap();
        let rss = report["supervisor"]["peak_rss_kib"].as_f64().unwrap() / 1024.0;
        println!(
            "| {} | {} | {seconds:.2} | {limit:.0} | {:+.1}% | {} | {} | {cpu:.3} | {rss:.1} |",
            case.workers,
            case.crash_prob
                .map_or("none".to_owned(), |p| format!("crashProb {p}")),
            (seconds / limit - 1.0) * 100.0,
            report["crashes"],
            report["restarts"],
        );
    }
}

async fn run(case: &Case) -> Value {
    let mut command = Command::new(BIN);
    command
        .args(["fleet", "collect", "--json", "--worker-bin", WORKER])
        .args(["--samples", &SAMPLES.to_string()])
        .args(["--max-workers", &case.workers.to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(p) = case.crash_prob {
        command.args(["--", "-crashProb", p]);
    }
    let output = command
        .output()
        .await
        .expect("tributary fleet collect runs");
    assert!(output.status.success(), "the run failed");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON report");
    assert_eq!(report["collected"], SAMPLES);
    report
}
