//! The workload figures: the number generator's tick precision, the burst
//! probe's window, SMS throughput against the number of senders, and the
//! wall time of a 10,000-message SMS run. Everything runs as real
//! `tributary` processes on this machine. Prints a Markdown table.
//!
//! Run: `cargo bench -p tributary-cli --bench workloads`
//! (`-- --seconds N` sets how long the tick and burst runs last; default 120).

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;
use tributary::{
    clock,
    proto::{GetSmsProgressRequest, query_client::QueryClient, record::Payload},
};

const BIN: &str = env!("CARGO_BIN_EXE_tributary");

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map_or(120, |n| n.parse().expect("--seconds takes a number"));

    let (p50, p99, max, ticks, missed) = tick_precision_and_burst(seconds).await;
    let mut rows = vec![
        format!(
            "| number generator: offset from the tick boundary ({} ticks, 2 generators, {seconds} s) | p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms | p99 < 5 ms |",
            ticks.0, p50, p99, max
        ),
        format!(
            "| number generator: ticks missed / without a grant | {} / {} | 0 |",
            missed.0, missed.1
        ),
        format!(
            "| burst: seconds with all 10 messages sent inside 100 ms | {} of {} ({:.1}%) | 100% |",
            ticks.1,
            ticks.2,
            100.0 * ticks.1 as f64 / ticks.2.max(1) as f64
        ),
    ];
    for senders in [1, 2, 4] {
        let (rate, elapsed) = sms_run(senders, 20.0, 4000).await;
        rows.push(format!(
            "| SMS throughput, {senders} sender(s), mean 20 ms, concurrency 32 each (4,000 messages in {elapsed:.2} s) | {rate:.0} messages/s | linear |"
        ));
    }
    let mut walls = Vec::new();
    for _ in 0..3 {
        walls.push(sms_wall_time(3, 10_000).await);
    }
    walls.sort_by(f64::total_cmp);
    rows.push(format!(
        "| SMS run: 10,000 messages, mean 0 ms, 3 senders, producer start → monitor shows 10,000 (median of 3: {}) | {:.3} s | < 0.5 s |",
        walls
            .iter()
            .map(|w| format!("{w:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        walls[1]
    ));
    println!("| figure | value | target |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

async fn start_mesh(dir: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--no-workloads",
            "--data-dir",
        ])
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().to_owned();
    (child, format!("http://{addr}"))
}

fn tributary(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs two number generators and the burst probe against one mesh (with
/// its coordinator) for `seconds`, then reads the stored records back.
/// Returns (p50, p99, max offset in ms, (ticks, good seconds, seconds),
/// (missed, unclaimed)).
async fn tick_precision_and_burst(
    seconds: u64,
) -> (f64, f64, f64, (usize, usize, usize), (u64, u64)) {
    let dir = tempfile::tempdir().unwrap();
    let (mut mesh, url) =
        start_mesh(dir.path(), &["--parser", "average", "--parser", "probe"]).await;
    let ticks = (seconds * 10).to_string();
    let secs = seconds.to_string();
    let numbers = tributary(&[
        "generate",
        "numbers",
        "--connect",
        &url,
        "--coordinator",
        &url,
        "--generators",
        "2",
        "--ticks",
        &ticks,
    ])
    .output();
    let burst = tributary(&["generate", "burst", "--connect", &url, "--seconds", &secs]).output();
    let (numbers, burst) = tokio::join!(numbers, burst);
    let numbers = String::from_utf8(numbers.unwrap().stdout).unwrap();
    let burst = String::from_utf8(burst.unwrap().stdout).unwrap();
    eprintln!("{}{}", numbers.trim_end(), burst.trim_end());
    // "2 generators: N numbers emitted (N acked), M ticks missed, U ticks without a grant"
    let words: Vec<&str> = numbers.split_whitespace().collect();
    let missed: u64 = words[7].parse().unwrap();
    let unclaimed: u64 = words[10].parse().unwrap();
    let emitted: usize = words[2].parse().unwrap();
    let probes: usize = burst.split_whitespace().nth(1).unwrap().parse().unwrap();

    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (numbers, probes) = loop {
        let numbers = support::all_records(&channel, "average").await;
        let probes_stored = support::all_records(&channel, "probe").await;
        if numbers.len() >= emitted && probes_stored.len() >= probes {
            break (numbers, probes_stored);
        }
        assert!(Instant::now() < deadline, "records not stored in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    mesh.kill().await.unwrap();

    let mut offsets: Vec<f64> = numbers
        .iter()
        .map(|r| {
            let Some(Payload::RandomNumber(n)) = &r.payload else {
                unreachable!()
            };
            (clock::to_micros(r.sent_at.as_ref().unwrap()) - clock::tick_start(n.tick)) as f64
                / 1000.0
        })
        .collect();
    offsets.sort_by(f64::total_cmp);
    let late: Vec<String> = offsets
        .iter()
        .rev()
        .take(8)
        .map(|o| format!("{o:.2}"))
        .collect();
    eprintln!("largest offsets (ms): {}", late.join(", "));

    // Burst: per wall-clock second, did all of its 10 messages leave in
    // the first 100 ms?
    let mut by_burst: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for r in &probes {
        let Some(Payload::Probe(p)) = &r.payload else {
            unreachable!()
        };
        by_burst
            .entry(p.number / 10)
            .or_default()
            .push(clock::to_micros(r.sent_at.as_ref().unwrap()));
    }
    let good = by_burst
        .values()
        .filter(|sent| {
            let second = sent[0].div_euclid(1_000_000) * 1_000_000;
            sent.len() == 10 && sent.iter().all(|s| (0..100_000).contains(&(s - second)))
        })
        .count();
    (
        percentile(&offsets, 50.0),
        percentile(&offsets, 99.0),
        *offsets.last().unwrap(),
        (offsets.len(), good, by_burst.len()),
        (missed, unclaimed),
    )
}

fn sender_specs(senders: usize, mean_ms: f64) -> Vec<String> {
    (0..senders)
        .map(|i| {
            format!(
                r#"{{"type":"sms_sender","mean_ms":{mean_ms},"failure_rate":0.1,"concurrency":32,"label":"s{i}"}}"#
            )
        })
        .flat_map(|spec| ["--parser".to_owned(), spec])
        .collect()
}

/// Sends `count` messages through `senders` senders; returns (messages/s,
/// seconds) from the producer's start until every outcome is stored.
async fn sms_run(senders: usize, mean_ms: f64, count: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let specs = sender_specs(senders, mean_ms);
    let args: Vec<&str> = specs.iter().map(String::as_str).collect();
    let (mut mesh, url) = start_mesh(dir.path(), &args).await;
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = QueryClient::new(channel);
    let n = count.to_string();
    let started = Instant::now();
    let mut producer = tributary(&[
        "generate",
        "sms",
        "--connect",
        &url,
        "--count",
        &n,
        "--batch",
        "20",
    ])
    .spawn()
    .unwrap();
    loop {
        let p = client
            .get_sms_progress(GetSmsProgressRequest::default())
            .await
            .unwrap()
            .into_inner();
        if p.sent + p.failed >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    producer.wait().await.unwrap();
    mesh.kill().await.unwrap();
    (count as f64 / elapsed, elapsed)
}

/// Wall time from the producer's start until `tributary monitor` (polling
/// every 10 ms) shows all `count` messages done.
async fn sms_wall_time(senders: usize, count: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let specs = sender_specs(senders, 0.0);
    let args: Vec<&str> = specs.iter().map(String::as_str).collect();
    let (mut mesh, url) = start_mesh(dir.path(), &args).await;
    let n = count.to_string();
    let mut monitor = tributary(&[
        "monitor",
        "--connect",
        &url,
        "--every",
        "10ms",
        "--until-done",
        &n,
    ])
    .spawn()
    .unwrap();
    // The clock starts once the monitor has connected and read once.
    let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
    lines
        .next_line()
        .await
        .unwrap()
        .expect("the monitor prints a first reading");
    let started = Instant::now();
    let mut producer = tributary(&[
        "generate",
        "sms",
        "--connect",
        &url,
        "--count",
        &n,
        "--batch",
        "500",
    ])
    .spawn()
    .unwrap();
    let mut last = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        last = line;
    }
    let elapsed = started.elapsed().as_secs_f64();
    monitor.wait().await.unwrap();
    eprintln!("monitor: {last}");
    producer.wait().await.unwrap();
    mesh.kill().await.unwrap();
    elapsed
}
