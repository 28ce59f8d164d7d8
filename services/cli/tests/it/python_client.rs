//! The Python client (`clients/python`) against a real `tributary up`: its
//! example publisher's records are all stored exactly once, JSON intact;
//! and its example parser, served by `serve_parser` as a `remote` plug-in,
//! transforms every record once, even when it is killed mid-run, and gets
//! the one record it fails on dead-lettered with its message. Needs `TRIBUTARY_CLIENT_PYTHON`, the python of a venv with the client
//! installed (`scripts/python-client.sh` makes it; `scripts/test.sh` sets
//! it).

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tributary::proto::{
    AggregateFieldRequest, DeadLetter, ListDeadLettersRequest, query_client::QueryClient,
    record::Payload,
};

use tributary::testkit;

use crate::cluster::{Backends, Cluster};
use crate::support::{Mesh, all_records, eventually, ready_if, rows_of, stored, tool, wait_stored};

const ORDERS: u64 = 10_000;

/// The python of the client's venv; fails loudly when it is not set.
fn python() -> String {
    tool("TRIBUTARY_CLIENT_PYTHON")
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/python/examples")
}

/// Runs `examples/publisher.py ARGS` to completion against `url` and
/// returns its one-line JSON summary.
async fn publish(url: &str, args: &[&str]) -> Value {
    let output = Command::new(python())
        .arg(examples().join("publisher.py"))
        .args(["--connect", url])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the client's python runs");
    assert!(
        output.status.success(),
        "publisher.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("publisher.py prints one JSON object")
}

/// The orders `publisher.py --count N --seed SEED` publishes, from its own
/// generator, one JSON object per order number; with `parsed`, as the
/// example parser (`parser.py`) turns them.
async fn expected_orders(count: u64, seed: u64, parsed: bool) -> Vec<Value> {
    let apply = if parsed {
        "from parser import parse\nturn = lambda order: parse({'kind': 'json', 'json': order})\n"
    } else {
        "turn = lambda order: order\n"
    };
    let script = format!(
        "import json, sys\n\
         sys.path.insert(0, sys.argv[1])\n\
         from publisher import orders\n\
         {apply}\
         for r in orders({count}, {seed}, set()): print(json.dumps(turn(r.json)))\n"
    );
    let output = Command::new(python())
        .args(["-c", &script])
        .arg(examples())
        .output()
        .await
        .expect("the client's python runs");
    assert!(
        output.status.success(),
        "listing the orders failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON order per line"))
        .collect()
}

/// `value` with every number as a float: JSON records travel as
/// `google.protobuf.Struct`, whose numbers are doubles.
fn floats(value: Value) -> Value {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(floats).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, floats(v))).collect()),
        other => other,
    }
}

/// The JSON payload of each stored record of `source`, by seq.
fn json_by_seq(records: Vec<tributary::proto::Record>, source: &str) -> Vec<(u64, Value)> {
    let mut out: Vec<(u64, Value)> = records
        .into_iter()
        .filter(|record| record.source == source)
        .map(|record| match record.payload {
            Some(Payload::Json(json)) => (
                record.seq,
                floats(serde_json::to_value(json).expect("a Struct is JSON")),
            ),
            other => panic!("record {} is not JSON: {other:?}", record.seq),
        })
        .collect();
    out.sort_by_key(|(seq, _)| *seq);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_publisher_stores_every_json_record_once_and_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "raw"]).await;
    let source = publish_and_read_back(&mesh.url()).await;
    let n = ORDERS as i64;
    assert_eq!(rows_of(dir.path(), "raw", &source).await, (n, n, 0, n - 1));
}

/// The same through Envoy to ingest and parser services on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_publisher_stores_every_json_record_once_on_postgres_too() {
    let backends = Backends::fresh(&testkit::postgres_admin_url()).await;
    let cluster = Cluster::start(backends, 1, 1).await;
    publish_and_read_back(&cluster.entry).await;
}

/// Publishes the example orders with the Python client to `url`, where a
/// `raw` parser stores them; checks each is stored once, JSON intact, and
/// that the client's reads match the gRPC answers. Returns the source.
async fn publish_and_read_back(url: &str) -> String {
    let summary = publish(url, &["--count", &ORDERS.to_string(), "--seed", "7"]).await;
    assert_eq!(summary["accepted"], ORDERS, "{summary}");
    let source = summary["source"]
        .as_str()
        .expect("the summary names the source")
        .to_owned();
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("the mesh accepts connections");
    wait_stored(&channel, "raw", ORDERS, Duration::from_secs(60)).await;

    let stored = json_by_seq(all_records(&channel, "raw").await, &source);
    let expected = expected_orders(ORDERS, 7, false).await;
    assert_eq!(stored.len(), expected.len());
    for ((seq, json), (number, want)) in stored.into_iter().zip(expected.into_iter().enumerate()) {
        assert_eq!(seq, number as u64);
        assert_eq!(json, floats(want), "order {number}");
    }

    // The client's reads against the real Query API: a field aggregation
    // equal to the gRPC answer, and a tail's backlog of the last two.
    let grpc = QueryClient::new(channel.clone())
        .aggregate_field(AggregateFieldRequest {
            parser: "raw".into(),
            field: "qty".into(),
            group_by: "region".into(),
            ..Default::default()
        })
        .await
        .expect("AggregateField answers")
        .into_inner();
    let script = r#"
import itertools, json, sys, tributary
with tributary.Client(sys.argv[1]) as client:
    totals = client.aggregate_field("raw", "qty", group_by="region")
    groups = [[g.group, g.count, g.avg, g.min, g.max, g.p50, g.p99] for g in totals.groups]
    tail = [s.record.seq for s in itertools.islice(client.tail(parser="raw", backlog=2), 2)]
    print(json.dumps({"groups": groups, "missing": totals.missing, "tail": tail}))
"#;
    let output = Command::new(python())
        .args(["-c", script, url])
        .kill_on_drop(true)
        .output()
        .await
        .expect("the client's python runs");
    assert!(
        output.status.success(),
        "the client's reads failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let want: Vec<Value> = grpc
        .groups
        .iter()
        .map(|g| {
            let group: Value = serde_json::from_str(&g.group).expect("a group is JSON text");
            serde_json::json!([group, g.count, g.avg, g.min, g.max, g.p50, g.p99])
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(read["groups"], Value::Array(want), "{read}");
    assert_eq!(read["missing"], grpc.missing, "{read}");
    assert_eq!(
        read["tail"],
        serde_json::json!([ORDERS - 2, ORDERS - 1]),
        "{read}"
    );
    source
}

/// `examples/parser.py` running as a plug-in server.
struct Plugin {
    child: Child,
    port: u16,
}

impl Plugin {
    /// Starts the example parser on `port` (0 picks one) and waits for it
    /// to print its endpoint.
    async fn start(port: u16) -> Plugin {
        let mut child = Command::new(python())
            .arg(examples().join("parser.py"))
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the client's python runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("parser.py prints its endpoint within 30 s")
        .expect("stdout is readable")
        .expect("parser.py printed its endpoint before exiting");
        let port = line
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line of parser.py: {line:?}"));
        Plugin { child, port }
    }

    /// The `--parser` spec of a remote parser calling this plug-in, in
    /// group `orders`, with `options` (JSON members) added.
    fn spec(&self, options: &str) -> String {
        format!(
            r#"{{"type":"remote","endpoint":"http://127.0.0.1:{}","group":"orders"{options}}}"#,
            self.port
        )
    }

    /// SIGKILL: the plug-in dies with batches unanswered.
    async fn kill9(mut self) -> u16 {
        self.child.kill().await.expect("parser.py can be killed");
        self.port
    }
}

/// Every dead letter of `orders`.
async fn dead_letters(mesh: &Mesh) -> Vec<DeadLetter> {
    QueryClient::new(mesh.channel().await)
        .list_dead_letters(ListDeadLettersRequest {
            parser: "orders".into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("ListDeadLetters answers")
        .into_inner()
        .dead_letters
}

/// All `ORDERS` orders of `source` are stored once each, as the example
/// parser turns them, and nothing is dead-lettered.
async fn assert_parsed_once(mesh: &Mesh, dir: &std::path::Path, source: &str) {
    let channel = mesh.channel().await;
    wait_stored(&channel, "orders", ORDERS, Duration::from_secs(120)).await;
    let n = ORDERS as i64;
    assert_eq!(rows_of(dir, "orders", source).await, (n, n, 0, n - 1));
    assert_eq!(
        dead_letters(mesh).await.len(),
        0,
        "nothing is dead-lettered"
    );
    let stored = json_by_seq(all_records(&channel, "orders").await, source);
    let expected = expected_orders(ORDERS, 7, true).await;
    assert_eq!(stored.len(), expected.len());
    for ((seq, json), (number, want)) in stored.into_iter().zip(expected.into_iter().enumerate()) {
        assert_eq!(seq, number as u64);
        assert_eq!(json, floats(want), "order {number}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_parser_transforms_every_record_once() {
    let plugin = Plugin::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = plugin.spec("");
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", &spec]).await;
    let summary = publish(
        &mesh.url(),
        &["--count", &ORDERS.to_string(), "--seed", "7"],
    )
    .await;
    assert_eq!(summary["accepted"], ORDERS, "{summary}");
    let source = summary["source"]
        .as_str()
        .expect("the summary names the source");
    assert_parsed_once(&mesh, dir.path(), source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_parser_transforms_every_record_once_even_when_killed() {
    let plugin = Plugin::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    // Small plug-in batches, one at a time, so that the run lasts long
    // enough for the kill to land in its middle; many attempts, so that
    // the batches failed while the plug-in is down are not dead-lettered.
    let spec = plugin.spec(r#","batch":20,"window":1"#);
    let mesh = Mesh::start_bare(
        dir.path(),
        "127.0.0.1:0",
        &["--parser", &spec, "--max-attempts", "1000"],
    )
    .await;
    let summary = publish(
        &mesh.url(),
        &["--count", &ORDERS.to_string(), "--seed", "7"],
    )
    .await;
    assert_eq!(summary["accepted"], ORDERS, "{summary}");
    let source = summary["source"]
        .as_str()
        .expect("the summary names the source");

    let channel = mesh.channel().await;
    eventually(
        "the plug-in storing its first records",
        Duration::from_secs(60),
        async || {
            let now = stored(&channel, "orders").await;
            ready_if(now >= 500, now)
        },
    )
    .await;
    let port = plugin.kill9().await;
    let at_kill = stored(&channel, "orders").await;
    assert!(
        at_kill < ORDERS,
        "the kill landed after the run ({at_kill} stored)"
    );
    let _restarted = Plugin::start(port).await;
    assert_parsed_once(&mesh, dir.path(), source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_the_python_parser_fails_on_is_dead_lettered_with_its_message() {
    let plugin = Plugin::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = plugin.spec("");
    let mesh = Mesh::start_bare(
        dir.path(),
        "127.0.0.1:0",
        &["--parser", &spec, "--max-attempts", "2"],
    )
    .await;
    let summary = publish(&mesh.url(), &["--count", "1000", "--fail", "17"]).await;
    assert_eq!(summary["accepted"], 1000, "{summary}");
    let source = summary["source"]
        .as_str()
        .expect("the summary names the source");

    let channel = mesh.channel().await;
    let letters = eventually("one dead letter", Duration::from_secs(60), async || {
        let letters = dead_letters(&mesh).await;
        ready_if(!letters.is_empty(), letters)
    })
    .await;
    wait_stored(&channel, "orders", 999, Duration::from_secs(60)).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    // The worker names the plug-in before its message.
    assert_eq!(
        letter.error,
        format!(
            "plug-in http://127.0.0.1:{}: order order-17 is marked to fail",
            plugin.port
        )
    );
    assert_eq!(letter.attempts, 2);
    let record = letter
        .record
        .as_ref()
        .expect("the dead letter holds its record");
    assert_eq!((record.source.as_str(), record.seq), (source, 17));
    assert_eq!(
        rows_of(dir.path(), "orders", source).await,
        (999, 999, 0, 999)
    );
    assert_eq!(dead_letters(&mesh).await.len(), 1, "only that record");
}
