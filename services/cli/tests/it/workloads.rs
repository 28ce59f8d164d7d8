//! The workloads end to end: real `tributary` processes (mesh, coordinator,
//! producers, monitor) on ephemeral ports.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::Command,
};
use tributary::{
    clock,
    proto::{
        AggregateMetricRequest, GetLatencyRequest, GetSmsProgressRequest, ListAveragesRequest,
        Record, SmsProgress, query_client::QueryClient, record::Payload,
    },
};

use crate::support::{
    BIN, Mesh, all_records, eventually, ready_if, spawn_listening, stored, wait_stored,
};

/// Runs `tributary ARGS` to completion and returns its stdout.
async fn run_ok(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .expect("tributary runs");
    assert!(
        output.status.success(),
        "tributary {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

/// Three generator processes against a real coordinator process, stored by
/// two `average` replicas: no tick ever holds a value twice, and the stored
/// averages equal the averages recomputed from the stored numbers.
#[tokio::test]
async fn generators_never_repeat_a_value_in_a_tick_and_averages_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    // A pull window of one record spreads the numbers over both replicas.
    let mesh = Mesh::start_bare(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--parser",
            "average",
            "--parser",
            "average",
            "--pull-window",
            "1",
        ],
    )
    .await;
    let (_coordinator, coordinator_addr) =
        spawn_listening(&["coordinator", "--listen", "127.0.0.1:0"]).await;
    let coordinator_url = format!("http://{coordinator_addr}");
    let url = mesh.url();
    let generators = spawn_generators(3, &url, &coordinator_url, 40);
    let mut emitted = 0u64;
    for generator in generators {
        emitted += generator.await.unwrap().emitted;
    }
    // Start-up may cost a generator a tick or two, never most of them.
    assert!(emitted >= 3 * 35, "only {emitted} of 120 ticks emitted");

    let channel = mesh.channel().await;
    wait_stored(&channel, "average", emitted, Duration::from_secs(30)).await;
    let records = all_records(&channel, "average").await;
    assert_eq!(records.len() as u64, emitted);

    let by_tick = unique_per_tick(&records);
    let mut windows: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
    let mut sources = HashSet::new();
    for record in &records {
        let Some(Payload::RandomNumber(n)) = &record.payload else {
            unreachable!("checked by unique_per_tick")
        };
        let window = clock::tick_start(n.tick).div_euclid(1_000_000) * 1_000_000;
        let entry = windows.entry(window).or_default();
        entry.0 += 1;
        entry.1 += n.value;
        sources.insert(record.source.clone());
    }
    assert_eq!(sources.len(), 3);
    // The generators overlapped: many ticks hold more than one value.
    assert!(by_tick.values().filter(|v| v.len() > 1).count() >= 10);

    let averages = QueryClient::new(channel.clone())
        .list_averages(ListAveragesRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("ListAverages answers")
        .into_inner()
        .averages;
    let stored: BTreeMap<i64, (u64, i64)> = averages
        .iter()
        .map(|a| {
            let start = clock::to_micros(a.window_start.as_ref().unwrap());
            assert_eq!(a.average, a.sum as f64 / a.count as f64);
            (start, (a.count, a.sum))
        })
        .collect();
    assert_eq!(stored, windows);

    // Both replicas wrote partials.
    let writers = writers_of(dir.path()).await;
    assert_eq!(writers, 2, "partials from {writers} replicas");
}

/// What a `generate numbers` run reported.
struct Generated {
    emitted: u64,
    missed: u64,
    unclaimed: u64,
}

/// Starts `n` generator processes of one generator each, for `ticks` ticks.
fn spawn_generators(
    n: usize,
    url: &str,
    coordinator: &str,
    ticks: u64,
) -> Vec<tokio::task::JoinHandle<Generated>> {
    (0..n)
        .map(|i| {
            let (url, coordinator) = (url.to_owned(), coordinator.to_owned());
            tokio::spawn(async move {
                let (name, ticks) = (format!("gen{i}"), ticks.to_string());
                let summary = run_ok(&[
                    "generate",
                    "numbers",
                    "--connect",
                    &url,
                    "--coordinator",
                    &coordinator,
                    "--name",
                    &name,
                    "--ticks",
                    &ticks,
                ])
                .await;
                // "1 generators: E numbers emitted (A acked), M ticks missed,
                // U ticks without a grant"
                let words: Vec<&str> = summary.split_whitespace().collect();
                let number = |i: usize| -> u64 {
                    words
                        .get(i)
                        .and_then(|w| w.trim_start_matches('(').parse().ok())
                        .unwrap_or_else(|| panic!("unexpected summary {summary:?}"))
                };
                assert_eq!(
                    number(2),
                    number(5),
                    "every emitted number acked: {summary}"
                );
                Generated {
                    emitted: number(2),
                    missed: number(7),
                    unclaimed: number(10),
                }
            })
        })
        .collect()
}

/// The values of each tick, checking that none repeats within a tick and
/// that all are in range.
fn unique_per_tick(records: &[Record]) -> HashMap<i64, HashSet<i64>> {
    let mut by_tick: HashMap<i64, HashSet<i64>> = HashMap::new();
    for record in records {
        let Some(Payload::RandomNumber(n)) = &record.payload else {
            panic!("not a number: {record:?}")
        };
        assert!((1..=10_000).contains(&n.value), "{} out of range", n.value);
        assert!(
            by_tick.entry(n.tick).or_default().insert(n.value),
            "tick {} holds {} twice",
            n.tick,
            n.value
        );
    }
    by_tick
}

/// The coordinator is killed mid-run and restarted on the same address:
/// the generators pause (they count the ticks without a grant), resume
/// with the new incarnation, and no tick ever holds a value twice.
#[tokio::test]
async fn generators_pause_while_the_coordinator_is_down_and_resume_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "average"]).await;
    let (mut coordinator, coordinator_addr) =
        spawn_listening(&["coordinator", "--listen", "127.0.0.1:0"]).await;
    let coordinator_url = format!("http://{coordinator_addr}");
    let generators = spawn_generators(2, &mesh.url(), &coordinator_url, 80);

    let channel = mesh.channel().await;
    eventually("10 numbers stored", Duration::from_secs(30), async || {
        let now = stored(&channel, "average").await;
        ready_if(now >= 10, now)
    })
    .await;
    coordinator.kill().await.unwrap();
    // The outage: a fixed stretch of ticks with nobody to grant them.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restarted_at = clock::now_micros();
    let (_coordinator, _) =
        spawn_listening(&["coordinator", "--listen", &coordinator_addr.to_string()]).await;

    let mut emitted = 0;
    for generator in generators {
        let run = generator.await.unwrap();
        assert!(
            run.unclaimed >= 5,
            "only {} ticks without a grant",
            run.unclaimed
        );
        assert_eq!(run.emitted + run.missed + run.unclaimed, 80);
        emitted += run.emitted;
    }
    wait_stored(&channel, "average", emitted, Duration::from_secs(30)).await;
    let records = all_records(&channel, "average").await;
    let by_tick = unique_per_tick(&records);
    let after_restart = by_tick
        .keys()
        .filter(|t| clock::tick_start(**t) > restarted_at)
        .count();
    assert!(
        after_restart >= 5,
        "only {after_restart} ticks emitted after the restart"
    );
}

/// Distinct writers in the average partials, read from the store file.
async fn writers_of(data_dir: &std::path::Path) -> i64 {
    use sqlx::{Connection, Row};
    let url = format!(
        "sqlite://{}?mode=ro",
        data_dir.join("tributary.db").display()
    );
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT COUNT(DISTINCT writer) FROM average_partials WHERE parser = 'average'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0)
}

/// Reads "sent S failed F ..." off a monitor line.
fn counts(line: &str) -> (u64, u64) {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((words[0], words[2]), ("sent", "failed"), "{line}");
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

/// 1,000 messages, three differently configured senders in one group: the
/// senders split the messages, sent + failed is exactly 1,000, and the
/// monitor's output (piped, so plain lines) shows monotone counts that end
/// at the totals.
#[tokio::test]
async fn sms_senders_split_the_messages_and_the_monitor_ends_at_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let senders = [
        r#"{"type":"sms_sender","mean_ms":2,"failure_rate":0.1,"concurrency":8,"label":"a"}"#,
        r#"{"type":"sms_sender","mean_ms":5,"failure_rate":0.3,"concurrency":8,"label":"b"}"#,
        r#"{"type":"sms_sender","mean_ms":10,"failure_rate":0.5,"concurrency":8,"label":"c"}"#,
    ];
    let mut args = Vec::new();
    for spec in &senders {
        args.extend(["--parser", spec]);
    }
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &args).await;
    let url = mesh.url();
    let mut monitor = Command::new(BIN)
        .args([
            "monitor",
            "--connect",
            &url,
            "--every",
            "100ms",
            "--until-done",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the monitor starts");
    // `--until-done` counts from the monitor's first reading: the producer
    // starts once that reading is out.
    let mut readings = BufReader::new(monitor.stdout.take().unwrap());
    let mut output = String::new();
    tokio::time::timeout(Duration::from_secs(30), readings.read_line(&mut output))
        .await
        .expect("the monitor prints its first reading")
        .unwrap();
    assert_eq!(counts(&output), (0, 0), "{output}");
    let summary = run_ok(&[
        "generate",
        "sms",
        "--connect",
        &url,
        "--count",
        "1000",
        "--batch",
        "20",
    ])
    .await;
    assert!(summary.contains("1000 of 1000 messages"), "{summary}");
    let status = tokio::time::timeout(Duration::from_secs(60), monitor.wait())
        .await
        .expect("the monitor ends once 1,000 are done")
        .unwrap();
    readings.read_to_string(&mut output).await.unwrap();
    assert!(status.success(), "monitor failed; output:\n{output}");

    let lines: Vec<&str> = output.lines().collect();
    assert!(lines.len() >= 2, "{output}");
    let mut previous = (0, 0);
    for line in &lines {
        let now = counts(line);
        assert!(
            now.0 >= previous.0 && now.1 >= previous.1,
            "counts went down: {output}"
        );
        previous = now;
    }
    assert_eq!(previous.0 + previous.1, 1000, "{output}");

    let progress: SmsProgress = QueryClient::new(mesh.channel().await)
        .get_sms_progress(GetSmsProgressRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((progress.sent, progress.failed), previous);
    assert_eq!(progress.senders.len(), 3, "{progress:?}");
    for sender in &progress.senders {
        assert!(sender.sent + sender.failed > 0, "{progress:?}");
    }
    wait_stored(
        &mesh.channel().await,
        "sms_sender",
        1000,
        Duration::from_secs(10),
    )
    .await;
}

/// The burst probe through the mesh: every probe is stored, numbered from
/// 0, and the latency query sees them.
#[tokio::test]
async fn burst_probes_are_stored_and_measured() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "probe"]).await;
    let summary = run_ok(&[
        "generate",
        "burst",
        "--connect",
        &mesh.url(),
        "--seconds",
        "3",
    ])
    .await;
    assert!(
        summary.contains("30 probes sent (30 acked), 0 seconds missed"),
        "{summary}"
    );
    let channel = mesh.channel().await;
    wait_stored(&channel, "probe", 30, Duration::from_secs(30)).await;
    let latency = QueryClient::new(channel)
        .get_latency(GetLatencyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((latency.highest_number, latency.stored), (29, 30));
    assert_eq!(latency.recent, 30);
    assert!(latency.avg_to_ingest_ms > 0.0 && latency.avg_to_store_ms >= latency.avg_to_ingest_ms);
}

/// Sensor readings through the mesh, aggregated by SQL: counts per metric
/// and per sensor add up, and the percentiles are ordered.
#[tokio::test]
async fn sensor_readings_are_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "sensor"]).await;
    run_ok(&[
        "generate",
        "sensors",
        "--connect",
        &mesh.url(),
        "--rate",
        "3000",
        "--sensors",
        "4",
        "--count",
        "1200",
    ])
    .await;
    let channel = mesh.channel().await;
    wait_stored(&channel, "sensor", 1200, Duration::from_secs(30)).await;
    let mut client = QueryClient::new(channel);
    let overall = client
        .aggregate_metric(AggregateMetricRequest {
            metric: "temperature".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.groups.len(), 1);
    let all = &overall.groups[0];
    assert_eq!((all.count, all.unit.as_str()), (400, "celsius"));
    assert!(all.min <= all.p50 && all.p50 <= all.p95 && all.p95 <= all.p99 && all.p99 <= all.max);
    assert!((17.0..25.0).contains(&all.avg), "{all:?}");
    let grouped = client
        .aggregate_metric(AggregateMetricRequest {
            metric: "temperature".into(),
            group_by_sensor: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grouped.groups.len(), 4);
    assert_eq!(grouped.groups.iter().map(|g| g.count).sum::<u64>(), 400);
    assert!(!grouped.unknown_metric && grouped.known_metrics.is_empty());
    // A metric the sensors never sent is said to be unknown, with the ones
    // they did send; a known one outside the range is merely empty.
    let unknown = client
        .aggregate_metric(AggregateMetricRequest {
            metric: "temprature".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unknown.groups.is_empty() && unknown.unknown_metric);
    assert_eq!(
        unknown.known_metrics,
        ["humidity", "pressure", "temperature"]
    );
    let long_ago = client
        .aggregate_metric(AggregateMetricRequest {
            metric: "temperature".into(),
            to: Some(tributary::clock::from_micros(1_000_000)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(long_ago.groups.is_empty() && !long_ago.unknown_metric);
    assert!(long_ago.known_metrics.is_empty());
    let missing = client
        .aggregate_metric(AggregateMetricRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
}

/// `tributary up` runs every workload by default: averages, latency,
/// sensor aggregates and SMS progress all fill up.
#[tokio::test]
async fn up_runs_every_workload_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_with_workloads(dir.path(), "127.0.0.1:0", &["--sms", "400"]).await;
    let mut client = QueryClient::new(mesh.channel().await);
    let sms = eventually(
        "every workload filling up",
        Duration::from_secs(60),
        async || {
            let averages = client
                .list_averages(ListAveragesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .averages;
            let latency = client
                .get_latency(GetLatencyRequest::default())
                .await
                .unwrap()
                .into_inner();
            let sensors = client
                .aggregate_metric(AggregateMetricRequest {
                    metric: "humidity".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let sms = client
                .get_sms_progress(GetSmsProgressRequest::default())
                .await
                .unwrap()
                .into_inner();
            let numbers_per_window = averages.iter().map(|a| a.count).max().unwrap_or(0);
            if numbers_per_window >= 2
                && latency.stored >= 10
                && !sensors.groups.is_empty()
                && sms.sent + sms.failed == 400
            {
                Ok(sms)
            } else {
                Err(format!(
                    "averages {averages:?}, latency {latency:?}, sensors {sensors:?}, sms {sms:?}"
                ))
            }
        },
    )
    .await;
    assert_eq!(sms.senders.len(), 2, "{sms:?}");
}
