//! Trace linkage: one published batch is one trace, from the producer's
//! publish through ingest, the queue and the parser to the store commit.
//!
//! The services run in this process (the library Apps over real gRPC on
//! ephemeral ports, the real queues and stores), so that one in-memory span
//! exporter sees every span; the distributed case publishes to one ingest
//! server and pulls through another over NATS JetStream, so the context
//! crosses the broker in message headers as between processes.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tributary::publisher::{PublishArgs, Publisher};
use tributary::{
    grpc_client,
    proto::{
        PublishBatchRequest, Record, SensorReading, Text, ingest_client::IngestClient,
        record::Payload,
    },
    store, telemetry, testkit, trace_context,
};
use tributary_parser::{Tuning, Worker, parsers::ParserSpec};

/// One exporter per test process, installed once (a process has one global
/// subscriber); each test finds its own trace by the record kind it sends.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let guard = telemetry::init_with(telemetry::LogFormat::Text, Some(provider));
        assert!(guard.exporting());
        // The provider lives as long as the process; the simple exporter
        // has nothing buffered to flush.
        std::mem::forget(guard);
        exporter
    })
}

struct Ingest {
    url: String,
    _dir: tempfile::TempDir,
}

async fn start_ingest(queue: &str, shutdown: &CancellationToken) -> Ingest {
    let dir = tempfile::tempdir().unwrap();
    let app = tributary_ingest::App::build(tributary_ingest::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        queue: queue.into(),
        data_dir: dir.path().to_owned(),
        limits: tributary_ingest::Limits::default(),
        tls: Default::default(),
        auth: Default::default(),
        server: Default::default(),
    })
    .await
    .unwrap();
    let url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run(shutdown.clone()));
    Ingest { url, _dir: dir }
}

fn start_parser(connect: &str, store: Arc<dyn store::Store>, shutdown: &CancellationToken) {
    let spec = ParserSpec::from_spec("raw").unwrap();
    let worker = Worker {
        link: tributary::channel::Link::plain(connect.to_owned()),
        group: testkit::unique_name("traced"),
        parser: spec.config.build(),
        store,
        tuning: Tuning::default(),
    };
    tokio::spawn(worker.run(shutdown.clone()));
}

/// Publishes `records` through the producers' publisher and waits for the ack.
async fn publish(url: &str, records: Vec<Record>) {
    let args = PublishArgs {
        connect: url.to_owned(),
        batch: 500,
        window: 20_000,
        retry_secs: 10,
        rollover_secs: 0,
        tls: Default::default(),
        token: Default::default(),
    };
    let publisher = Publisher::start(&args, CancellationToken::new()).unwrap();
    let sender = publisher.sender();
    for record in records {
        sender.send(record).await.unwrap();
    }
    drop(sender);
    let totals = publisher.finish().await.unwrap();
    assert_eq!(totals.acked(), 1, "the record is acknowledged");
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The spans of the trace whose `producer publish` span has `kind`, once
/// that trace holds a `store commit`.
fn trace_of(kind: &str) -> Vec<SpanData> {
    let mut found = Vec::new();
    testkit::wait_until(
        "the batch's trace reaches the store commit",
        Duration::from_secs(30),
        || {
            let spans = exporter().get_finished_spans().unwrap();
            let Some(root) = spans
                .iter()
                .find(|s| s.name == "producer publish" && attr(s, "kind").as_deref() == Some(kind))
            else {
                return false;
            };
            let trace: TraceId = root.span_context.trace_id();
            found = spans
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .collect();
            found.iter().any(|s| s.name == "store commit")
        },
    );
    found
}

fn one<'a>(trace: &'a [SpanData], name: &str) -> &'a SpanData {
    let named: Vec<_> = trace.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        named.len(),
        1,
        "one `{name}` span in the trace; spans: {:?}",
        trace.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    named[0]
}

fn id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

/// producer publish → ingest receive → queue publish → queue deliver →
/// parser delivery → parse and store commit, each the parent of the next.
fn assert_journey(trace: &[SpanData], backend: &str) {
    let producer = one(trace, "producer publish");
    let receive = one(trace, "ingest receive");
    let queued = one(trace, "queue publish");
    let deliver = one(trace, "queue deliver");
    let delivery = one(trace, "parser delivery");
    let parse = one(trace, "parse");
    let commit = one(trace, "store commit");
    assert_eq!(
        producer.parent_span_id,
        SpanId::INVALID,
        "the producer starts the trace"
    );
    assert_eq!(receive.parent_span_id, id(producer));
    assert_eq!(queued.parent_span_id, id(receive));
    assert_eq!(deliver.parent_span_id, id(queued));
    assert_eq!(delivery.parent_span_id, id(deliver));
    assert_eq!(parse.parent_span_id, id(delivery));
    assert_eq!(commit.parent_span_id, id(delivery));
    assert_eq!(attr(receive, "records").as_deref(), Some("1"));
    assert_eq!(attr(receive, "accepted").as_deref(), Some("1"));
    assert_eq!(attr(queued, "backend").as_deref(), Some(backend));
    assert_eq!(attr(delivery, "attempt").as_deref(), Some("1"));
    assert_eq!(attr(commit, "rows").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_is_one_trace_in_the_embedded_mesh() {
    exporter();
    let shutdown = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let ingest = start_ingest("embedded", &shutdown).await;
    let store = store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    start_parser(&ingest.url, store, &shutdown);

    let record = Record {
        source: testkit::unique_name("embedded"),
        seq: 0,
        payload: Some(Payload::Text(Text {
            body: "traced".into(),
        })),
        ..Default::default()
    };
    publish(&ingest.url, vec![record]).await;
    assert_journey(&trace_of("text"), "embedded");

    // A unary call carries the caller's context in its metadata: the
    // server's span for the call joins the caller's trace, and the batch's
    // spans hang under it.
    let caller = tracing::info_span!("caller");
    let caller_tp = trace_context::traceparent(&caller).expect("the caller is traced");
    async {
        let channel = grpc_client::connect(
            &tonic::transport::Endpoint::from_shared(ingest.url.clone()).unwrap(),
        )
        .await
        .unwrap();
        let record = Record {
            source: testkit::unique_name("unary"),
            seq: 0,
            payload: Some(Payload::Text(Text {
                body: "unary".into(),
            })),
            ..Default::default()
        };
        IngestClient::new(channel)
            .publish_batch(PublishBatchRequest {
                records: vec![record],
            })
            .await
            .unwrap();
    }
    .instrument(caller.clone())
    .await;
    drop(caller);
    let caller_cx = trace_context::remote_parent(&caller_tp).unwrap();
    let caller_id = {
        use opentelemetry::trace::TraceContextExt;
        caller_cx.span().span_context().clone()
    };
    let mut spans = Vec::new();
    testkit::wait_until(
        "the unary call's spans are exported",
        Duration::from_secs(10),
        || {
            spans = exporter()
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|s| s.span_context.trace_id() == caller_id.trace_id())
                .collect();
            spans.iter().any(|s| s.name == "ingest receive")
        },
    );
    let server = one(&spans, "tributary.v1.Ingest/PublishBatch");
    assert_eq!(server.parent_span_id, caller_id.span_id());
    assert_eq!(one(&spans, "ingest receive").parent_span_id, id(server));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_is_one_trace_across_servers_over_jetstream_and_postgres() {
    exporter();
    let shutdown = CancellationToken::new();
    let queue = format!(
        "{}?stream={}",
        testkit::nats_url(),
        testkit::unique_name("TRACES")
    );
    // The producer publishes to one server; the parser pulls from another.
    let publish_to = start_ingest(&queue, &shutdown).await;
    let pull_from = start_ingest(&queue, &shutdown).await;
    let store = store::open(&testkit::postgres_database().await)
        .await
        .unwrap();
    start_parser(&pull_from.url, store, &shutdown);

    let record = Record {
        source: testkit::unique_name("jetstream"),
        seq: 0,
        payload: Some(Payload::SensorReading(SensorReading {
            sensor_id: "s1".into(),
            metric: "temperature".into(),
            value: 21.5,
            ..Default::default()
        })),
        ..Default::default()
    };
    publish(&publish_to.url, vec![record]).await;
    assert_journey(&trace_of("sensor_reading"), "jetstream");
    shutdown.cancel();
}
