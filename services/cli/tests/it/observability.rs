//! Traces and metrics as operators meet them: separate `tributary`
//! processes exporting OTLP/gRPC to a real receiver (a Python server built
//! on the official `opentelemetry-proto` package), and `/metrics` checked
//! by Prometheus's own `promtool`.

use std::{collections::HashMap, net::SocketAddr, path::Path, process::Stdio, time::Duration};

use nix::{sys::signal, unistd::Pid};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use tributary::proto::{PublishBatchRequest, Record, ingest_client::IngestClient};

use crate::support::{
    BIN, Mesh, eventually, ready_if, rows_of, send, send_command, send_summary, spawn_listening,
    tool, wait_stored,
};

/// The Python receiver, and the file it appends spans to.
struct Receiver {
    _child: Child,
    endpoint: String,
    out: std::path::PathBuf,
}

async fn start_receiver(dir: &Path) -> Receiver {
    let out = dir.join("spans.jsonl");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/otlp_receiver.py"
    );
    let mut child = Command::new(tool("TRIBUTARY_PYTHON"))
        .arg(script)
        .arg(&out)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the Python OTLP receiver starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the receiver prints its address within 30 s")
        .unwrap()
        .expect("the receiver prints its address before exiting");
    let addr = line
        .strip_prefix("listening on ")
        .expect("`listening on ADDR`");
    Receiver {
        _child: child,
        endpoint: format!("http://{addr}"),
        out,
    }
}

/// Starts `tributary ARGS` exporting to `endpoint`; returns it and its
/// address.
async fn spawn_traced(args: &[&str], endpoint: &str, env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tributary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("tributary prints its address")
        .unwrap()
        .expect("tributary prints its address before exiting");
    let addr = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    (child, addr)
}

/// SIGTERM, then wait: a clean shutdown, which must flush the spans.
async fn stop(mut child: Child) {
    let pid = child.id().expect("still running") as i32;
    signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("tributary stops within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "tributary exited with {status}");
}

fn spans(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("the receiver writes JSON lines"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_three_processes_reach_a_real_otlp_receiver_as_one_trace() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = start_receiver(dir.path()).await;
    let data = dir.path().to_str().unwrap();
    let (ingest, ingest_addr) = spawn_traced(
        &[
            "ingest",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            "embedded",
            "--data-dir",
            data,
        ],
        &receiver.endpoint,
        &[],
    )
    .await;
    let url = format!("http://{ingest_addr}");
    let store = format!("sqlite://{data}/tributary.db");
    let (parser, parser_addr) = spawn_traced(
        &[
            "parser",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &url,
            "--store",
            &store,
            "--parser",
            "raw",
        ],
        &receiver.endpoint,
        // The standard variable names the service in traces.
        &[("OTEL_SERVICE_NAME", "parser-under-test")],
    )
    .await;

    let source = tributary::testkit::unique_name("traced");
    let summary = send_traced(&url, &receiver.endpoint, &source).await;
    assert_eq!(summary["acked"], 1, "{summary}");
    eventually("the record stored", Duration::from_secs(30), async || {
        let rows = rows_of(dir.path(), "raw", &source).await;
        ready_if(rows.0 >= 1, rows)
    })
    .await;
    // Both servers serve Prometheus text on their own port.
    promtool_check("a stand-alone ingest server", &scrape(ingest_addr).await).await;
    promtool_check("a stand-alone parser", &scrape(parser_addr).await).await;
    // The servers' batch exporters have not sent yet (they wait up to 5 s):
    // their shutdown must flush the spans.
    stop(ingest).await;
    stop(parser).await;

    let all = spans(&receiver.out);
    let by_name = |name: &str| -> &Value {
        let named: Vec<&Value> = all.iter().filter(|s| s["name"] == name).collect();
        assert_eq!(named.len(), 1, "one `{name}` span; got {all:#?}");
        named[0]
    };
    let producer = by_name("producer publish");
    let receive = by_name("ingest receive");
    let queued = by_name("queue publish");
    let deliver = by_name("queue deliver");
    let delivery = by_name("parser delivery");
    let commit = by_name("store commit");
    assert_eq!(producer["service"], "tributary-send");
    assert_eq!(receive["service"], "tributary-ingest");
    assert_eq!(deliver["service"], "tributary-ingest");
    assert_eq!(delivery["service"], "parser-under-test");
    assert_eq!(commit["service"], "parser-under-test");
    assert_eq!(producer["parent_span_id"], "");
    assert_eq!(receive["parent_span_id"], producer["span_id"]);
    assert_eq!(queued["parent_span_id"], receive["span_id"]);
    assert_eq!(deliver["parent_span_id"], queued["span_id"]);
    assert_eq!(delivery["parent_span_id"], deliver["span_id"]);
    assert_eq!(commit["parent_span_id"], delivery["span_id"]);
    for span in [receive, queued, deliver, delivery, commit] {
        assert_eq!(span["trace_id"], producer["trace_id"], "{span}");
    }
    assert_eq!(producer["attributes"]["kind"], "text");
    assert_eq!(receive["attributes"]["records"], "1");
    assert_eq!(queued["attributes"]["backend"], "embedded");
    assert_eq!(delivery["attributes"]["parser"], "raw");
    assert_eq!(commit["attributes"]["rows"], "1");
    // The gRPC server layer names each call's span after its method.
    assert!(
        all.iter()
            .any(|s| s["name"] == "tributary.v1.Ingest/Pull" && s["service"] == "tributary-ingest"),
        "the Pull stream has a server span"
    );
}

async fn send_traced(url: &str, endpoint: &str, source: &str) -> Value {
    send_summary(
        send_command(url, &["--count", "1", "--kind", "text", "--source", source])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
    )
    .await
}

/// `GET /metrics` over HTTP/1.1. Written out rather than pulling an HTTP
/// client crate into the tests: one request, `Connection: close`, read to
/// the end.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response has a head and a body");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET /metrics on {addr}: {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    // A body without Content-Length comes chunked.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Runs `promtool check metrics` on `text`, failing with its complaints.
async fn promtool_check(what: &str, text: &str) {
    let promtool = tool("TRIBUTARY_PROMTOOL");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{promtool} does not run ({e}): scripts/test.sh installs it (Debian package prometheus)")
        });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed on {what}:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sample values by their full series name (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}; have {:#?}", samples.keys()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_the_embedded_mesh_pass_promtool_and_move_with_records() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &[]).await;
    promtool_check("a fresh `tributary up`", &scrape(mesh.addr).await).await;

    let summary = send(&mesh.url(), &["--count", "1000", "--kind", "text"]).await;
    assert_eq!(summary["acked"], 1000, "{summary}");
    let channel = mesh.channel().await;
    wait_stored(&channel, "raw", 1000, Duration::from_secs(30)).await;
    wait_stored(&channel, "uppercase", 1000, Duration::from_secs(30)).await;
    // One bad record: a record without a payload is INVALID_ARGUMENT.
    let answer = IngestClient::new(channel.clone())
        .publish_batch(PublishBatchRequest {
            records: vec![Record {
                source: "bad".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.rejections.len(), 1);

    let text = scrape(mesh.addr).await;
    promtool_check("`tributary up` after 1000 records", &text).await;
    let s = samples(&text);
    assert_eq!(
        sample(&s, "tributary_ingest_records_received_total{kind=\"text\"}"),
        1000.0
    );
    assert_eq!(
        sample(&s, "tributary_ingest_records_acked_total{kind=\"text\"}"),
        1000.0
    );
    assert_eq!(
        sample(
            &s,
            "tributary_ingest_records_rejected_total{code=\"invalid_argument\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &s,
            "tributary_queue_publish_seconds_count{backend=\"embedded\"}"
        ) >= 2.0
    );
    assert!(sample(&s, "tributary_queue_deliveries_total{group=\"raw\"}") >= 2.0);
    assert!(
        sample(
            &s,
            "tributary_parser_process_seconds_count{parser=\"uppercase\"}"
        ) >= 1.0
    );
    assert!(sample(&s, "tributary_store_commit_seconds_count{parser=\"raw\"}") >= 1.0);
    // The scrape itself is HTTP/1.1, not gRPC; the parsers' Pull streams
    // are open.
    assert_eq!(
        sample(
            &s,
            "tributary_grpc_open_streams{method=\"tributary.v1.Ingest/Pull\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_the_api_and_the_coordinator_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/tributary.db", dir.path().display());
    let (_api, api) = spawn_listening(&["api", "--listen", "127.0.0.1:0", "--store", &store]).await;
    promtool_check("a stand-alone api", &scrape(api).await).await;
    let (_coordinator, coordinator) =
        spawn_listening(&["coordinator", "--listen", "127.0.0.1:0"]).await;
    promtool_check("a stand-alone coordinator", &scrape(coordinator).await).await;
}
