//! The parser worker against a real ingest server (in process, on an
//! ephemeral port, over the embedded queue or NATS JetStream) and a real
//! SQLite store.

mod remote;
mod toy_parser;
mod undecodable;

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
    workloads::averages,
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
        server: Default::default(),
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

/// A delivery dropped without an ack comes back after the ack deadline.
/// It was out together with nothing else, not alone as a suspect, so the
/// time-out is not charged: the attempt count stays 1.
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
        (first.ack_id.as_str(), 1)
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
        group: "picky".into(),
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
    let dead = store
        .dead_letters(&store::DeadLetterFilter {
            parser: Some("picky".into()),
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].error.as_str(), dead[0].attempts),
        ("cannot digest poison", 3)
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
    server.shutdown.cancel();
}

/// Derives a number from texts `n:WINDOW:VALUE`, and for the text `nul`
/// puts a NUL in the record's source, which no store can hold: a stand-in
/// for a record that got past the edge (queued before the edge checked,
/// say) or a parser that produces what the store refuses.
struct Numbers;

#[async_trait]
impl Parser for Numbers {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::Text]
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        let Some(Payload::Text(t)) = &record.payload else {
            return Ok(None);
        };
        if t.body == "nul" {
            record.source.push('\0');
            return Ok(None);
        }
        let Some(spec) = t.body.strip_prefix("n:") else {
            return Ok(None);
        };
        let (window, value) = spec.split_once(':').ok_or("n:WINDOW:VALUE")?;
        Ok(Some(store::Fact::Number(averages::Number {
            window_start: window.parse().map_err(|_| "bad window")?,
            window_ms: 1000,
            value: value.parse().map_err(|_| "bad value")?,
        })))
    }
}

/// SQLite: records the store cannot hold (two sums past 2^63−1, a NUL in
/// a source) are dead-lettered with the store's reason on their first
/// delivery, and every other record, before and after them in the same
/// group and source, is stored. A NUL sent to the edge is refused there.
#[tokio::test]
async fn sqlite_dead_letters_only_what_it_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    unstorable_records_are_dead_lettered_and_the_rest_stored(&url).await;
}

/// The same against PostgreSQL, which refuses the same records.
#[tokio::test]
async fn postgres_dead_letters_only_what_it_cannot_hold() {
    let url = tributary::testkit::postgres_database().await;
    unstorable_records_are_dead_lettered_and_the_rest_stored(&url).await;
}

async fn unstorable_records_are_dead_lettered_and_the_rest_stored(store_url: &str) {
    let server = start_ingest(Limits::default()).await;
    let store = store::open(store_url).await.unwrap();
    let max = i64::MAX;
    let bodies = [
        format!("n:0:{max}"),
        format!("n:0:{max}"),
        "n:1000000:4".to_string(),
        "nul".to_string(),
        format!("n:0:{max}"),
        "n:1000000:6".to_string(),
        "plain".to_string(),
    ];
    let records: Vec<Record> = bodies
        .iter()
        .enumerate()
        .map(|(seq, body)| text(seq as u64, body))
        .collect();
    publish(&server.url, records).await;
    // The edge refuses a NUL in any string, with a reason.
    let mut client = IngestClient::connect(server.url.clone()).await.unwrap();
    let mut with_nul = text(100, "fine");
    with_nul.attributes.insert("k".into(), "a\0b".into());
    let refused = client
        .publish_batch(PublishBatchRequest {
            records: vec![with_nul, text(7, "after")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refused.accepted, 1);
    assert_eq!(refused.rejections.len(), 1);
    let rejection = &refused.rejections[0];
    assert_eq!(rejection.code, tonic::Code::InvalidArgument as i32);
    assert!(rejection.reason.contains("NUL"), "{}", rejection.reason);

    let shutdown = CancellationToken::new();
    let worker = Worker {
        link: tributary::channel::Link::plain(server.url.clone()),
        group: "numbers".into(),
        parser: Arc::new(Numbers),
        store: store.clone(),
        tuning: Tuning {
            linger: Duration::from_millis(50),
            ..Tuning::default()
        },
    };
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let counts = store.counts().await.unwrap();
        if counts.dead_letters >= 3 && counts.parsers == vec![("numbers".to_string(), 5)] {
            break counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(counts.dead_letters, 3);
    let dead = store
        .dead_letters(&tributary::store::DeadLetterFilter {
            parser: Some("numbers".into()),
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap();
    let reasons: Vec<&str> = dead.iter().map(|d| d.error.as_str()).collect();
    let count = |what: &str| reasons.iter().filter(|r| r.contains(what)).count();
    assert_eq!((count("64-bit"), count("NUL")), (2, 1), "{reasons:?}");
    // Refused by the store on the first delivery, not after retries.
    assert!(dead.iter().all(|d| d.attempts == 1), "{dead:?}");
    let filter = averages::AverageFilter {
        parser: "numbers".into(),
        from: i64::MIN,
        to: i64::MAX,
        limit: 10,
    };
    let windows = averages::averages(store.as_ref(), &filter).await.unwrap();
    let windows: Vec<(i64, u64, i64)> = windows
        .iter()
        .map(|a| (a.window_start, a.count, a.sum))
        .collect();
    assert_eq!(windows, vec![(1_000_000, 2, 10), (0, 1, max)]);
    shutdown.cancel();
    running.await.unwrap().unwrap();
    server.shutdown.cancel();
}
