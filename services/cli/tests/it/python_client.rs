//! The Python client (`clients/python`) against a real `tributary up`: its
//! example publisher's records are all stored exactly once, JSON intact.
//! Needs `TRIBUTARY_CLIENT_PYTHON`, the python of a venv with the client
//! installed (`scripts/python-client.sh` makes it; `scripts/test.sh` sets
//! it).

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::process::Command;
use tributary::proto::record::Payload;

use crate::support::{Mesh, all_records, rows_of, tool, wait_stored};

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
/// generator, one JSON object per order number.
async fn expected_orders(count: u64, seed: u64) -> Vec<Value> {
    let script = format!(
        "import json, sys\n\
         sys.path.insert(0, sys.argv[1])\n\
         from publisher import orders\n\
         for r in orders({count}, {seed}, set()): print(json.dumps(r.json))\n"
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
    wait_stored(&channel, "raw", ORDERS, Duration::from_secs(60)).await;
    let n = ORDERS as i64;
    assert_eq!(rows_of(dir.path(), "raw", source).await, (n, n, 0, n - 1));

    let stored = json_by_seq(all_records(&channel, "raw").await, source);
    let expected = expected_orders(ORDERS, 7).await;
    assert_eq!(stored.len(), expected.len());
    for ((seq, json), (number, want)) in stored.into_iter().zip(expected.into_iter().enumerate()) {
        assert_eq!(seq, number as u64);
        assert_eq!(json, floats(want), "order {number}");
    }
}
