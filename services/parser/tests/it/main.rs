//! The parser worker against a real ingest server (in process, on an
//! ephemeral port, over the embedded queue or NATS JetStream) and a real
//! SQLite store.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tributary::{
    proto::{
        PublishBatchRequest, PullRequest, Record, RecordKind, Subscription, Text,
        ingest_client::IngestClient, record::Payload,
    },
    store::{self, Store},
};
use tributary_ingest::{App, Config, Limits};
use tributary_parser::{
    Tuning, Worker,
    parsers::{Outcome, Parser},
};

struct Server {
    url: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start_ingest(limits: Limits) -> Server {
    start_ingest_on("embedded", limits).await
}

async fn start_ingest_on(queue: &str, limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let app = App::build(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        queue: queue.into(),
        data_dir: dir.path().to_owned(),
        limits,
        tls: Default::default(),
        auth: Default::default(),
    })
    .await
    .unwrap();
    let url = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run(shutdown.clone()));
    Server {
        url,
        shutdown,
        _dir: dir,
    }
}

fn text(seq: u64, body: &str) -> Record {
    Record {
        source: "t".into(),
        seq,
        payload: Some(Payload::Text(Text { body: body.into() })),
        ..Default::default()
    }
}

async fn publish(url: &str, records: Vec<Record>) {
    let mut client = IngestClient::connect(url.to_owned()).await.unwrap();
    let response = client
        .publish_batch(PublishBatchRequest { records })
        .await
        .unwrap()
        .into_inner();
    assert!(response.rejections.is_empty(), "{:?}", response.rejections);
}

/// A delivery dropped without an ack comes back after the ack deadline,
/// with its attempt count raised.
#[tokio::test]
async fn an_unacked_delivery_is_redelivered_after_its_deadline() {
    let server = start_ingest(Limits::default()).await;
    publish(&server.url, vec![text(0, "hello")]).await;
    let mut client = IngestClient::connect(server.url.clone()).await.unwrap();
    let subscribe = PullRequest {
        subscribe: Some(Subscription {
            parser: "forgetful".into(),
            kinds: vec![RecordKind::Text as i32],
            max_outstanding: 10,
            ack_deadline_ms: 300,
        }),
        ..Default::default()
    };
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    requests.send(subscribe).await.unwrap();
    let mut deliveries = client
        .pull(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = deliveries
        .next()
        .await
        .unwrap()
        .unwrap()
        .deliveries
        .remove(0);
    assert_eq!(first.attempt, 1);
    let started = tokio::time::Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
        .await
        .expect("redelivered within 10 s")
        .unwrap()
        .unwrap()
        .deliveries
        .remove(0);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the deadline"
    );
    assert_eq!(
        (again.ack_id.as_str(), again.attempt),
        (first.ack_id.as_str(), 2)
    );
    assert_eq!(again.records, first.records);
    server.shutdown.cancel();
}

/// Fails on records whose text says "poison", and counts its calls.
struct Picky;

#[async_trait]
impl Parser for Picky {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::Text]
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        match &record.payload {
            Some(Payload::Text(t)) if t.body == "poison" => Err("cannot digest poison".into()),
            _ => Ok(None),
        }
    }
}

/// The good records of a batch are stored at once; the poison one is
/// retried and then dead-lettered with the parser's error.
#[tokio::test]
async fn a_record_that_always_fails_ends_in_the_dead_letter_table() {
    dead_letters_after_max_attempts("embedded").await;
}

/// The same over JetStream, whose delivery count (in the reply subject)
/// drives the attempts.
#[tokio::test]
async fn over_jetstream_a_record_that_always_fails_is_dead_lettered_too() {
    let stream = tributary::testkit::unique_name("PARSER");
    let queue = format!(
        "{}?stream={stream}&max_age=3600",
        tributary::testkit::nats_url()
    );
    dead_letters_after_max_attempts(&queue).await;
}

async fn dead_letters_after_max_attempts(queue: &str) {
    let limits = Limits {
        max_attempts: 3,
        ..Limits::default()
    };
    let server = start_ingest_on(queue, limits).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
    publish(
        &server.url,
        vec![text(0, "fine"), text(1, "poison"), text(2, "also fine")],
    )
    .await;
    let shutdown = CancellationToken::new();
    let worker = Worker {
        link: tributary::channel::Link::plain(server.url.clone()),
        name: "picky".into(),
        parser: Arc::new(Picky),
        store: store.clone(),
        tuning: Tuning {
            linger: Duration::from_millis(1),
            ..Tuning::default()
        },
    };
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let counts = store.counts().await.unwrap();
        if counts.dead_letters > 0 {
            break counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(counts.parsers, vec![("picky".to_string(), 2)]);
    let dead = store.dead_letters(Some("picky"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].error.as_str(), dead[0].attempts),
        ("cannot digest poison", 3)
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
    server.shutdown.cancel();
}
