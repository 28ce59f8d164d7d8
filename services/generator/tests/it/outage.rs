//! An outage of the queue: the server refuses every record as
//! UNAVAILABLE. The producer must back off (a few requests a second, not a
//! hot loop), both logs must stay a few lines long, and every record must
//! be accepted once the queue is back.

use std::{
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tributary::publisher::{PublishArgs, Publisher};
use tributary::{
    grpc,
    proto::{Record, Text, record::Payload},
    queue::{self, Batch, GroupInfo, Published, Queue, QueueError, SubscribeOptions, Subscription},
};
use tributary_ingest::Limits;

/// A queue that refuses every publish while `refusing` is set, and counts
/// the publishes it is asked for.
struct Switchable {
    inner: Arc<dyn Queue>,
    refusing: AtomicBool,
    publishes: AtomicU64,
}

#[async_trait]
impl Queue for Switchable {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn publish(&self, batches: Vec<Batch>) -> Result<Vec<Published>, QueueError> {
        self.publishes.fetch_add(1, Ordering::SeqCst);
        if self.refusing.load(Ordering::SeqCst) {
            return Err(QueueError::Unavailable("the test's outage".into()));
        }
        self.inner.publish(batches).await
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, QueueError> {
        self.inner.subscribe(options).await
    }

    async fn ack(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        self.inner.ack(group, ack_id).await
    }

    async fn nack(&self, group: &str, ack_id: &str, error: &str) -> Result<(), QueueError> {
        self.inner.nack(group, ack_id, error).await
    }

    async fn extend(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        self.inner.extend(group, ack_id).await
    }

    async fn abandon(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        self.inner.abandon(group, ack_id).await
    }

    async fn lag(&self, group: &str) -> Result<u64, QueueError> {
        self.inner.lag(group).await
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>, QueueError> {
        self.inner.groups().await
    }

    async fn delete_group(&self, group: &str) -> Result<Option<u64>, QueueError> {
        self.inner.delete_group(group).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

/// Log lines, as the fmt subscriber writes them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// Lines written so far whose target starts with `target`.
    fn of(&self, target: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(&format!(" {target}")))
            .map(str::to_owned)
            .collect()
    }
}

fn text(source: &str, seq: u64) -> Record {
    Record {
        source: source.into(),
        seq,
        payload: Some(Payload::Text(Text {
            body: format!("line {seq}"),
        })),
        ..Default::default()
    }
}

/// Five seconds of refusals while a producer keeps offering 100 records a
/// second: the server is asked to publish at most a few times a second,
/// the server and the producer each write at most two WARN lines (the
/// first refusal, then one summary per 5 s), and once the queue is back
/// every record is accepted, none twice.
///
/// Only upper bounds are asserted on counts over time, so a slow machine
/// (which makes fewer attempts) cannot fail it; before back-off, the same
/// run made thousands of attempts and as many WARN lines.
#[tokio::test]
async fn a_refusing_queue_costs_a_few_requests_a_second_and_a_few_log_lines() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is single-threaded, so every task logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Switchable {
        inner: queue::open("embedded", dir.path()).await.unwrap(),
        refusing: AtomicBool::new(false),
        publishes: AtomicU64::new(0),
    });
    let shutdown = CancellationToken::new();
    let mut routes = RoutesBuilder::default();
    routes.add_service(tributary_ingest::service(
        tributary_ingest::IngestService::new(queue.clone(), Limits::default(), shutdown.clone()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(grpc::serve(
        listener,
        routes.routes(),
        None,
        shutdown.clone(),
    ));

    let args = PublishArgs {
        connect: url,
        batch: 100,
        window: 1000,
        retry_secs: 60,
        rollover_secs: 0,
        tls: Default::default(),
        token: Default::default(),
    };
    let publisher = Publisher::start(&args, shutdown.clone()).unwrap();
    let totals = publisher.totals();
    let records = publisher.sender();
    let producer = tokio::spawn(async move {
        let mut seq = 0u64;
        let mut every = tokio::time::interval(Duration::from_millis(10));
        loop {
            every.tick().await;
            if records.send(text("outage", seq)).await.is_err() {
                return seq;
            }
            seq += 1;
        }
    });

    // Flowing first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while totals.accepted.load(Ordering::SeqCst) < 50 {
        assert!(
            Instant::now() < deadline,
            "nothing accepted before the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The outage: the queue refuses everything for five seconds.
    let before = queue.publishes.load(Ordering::SeqCst);
    let (server_before, producer_before) = (
        lines.of("tributary_ingest").len(),
        lines.of("tributary::publisher").len(),
    );
    queue.refusing.store(true, Ordering::SeqCst);
    let outage = Duration::from_secs(5);
    tokio::time::sleep(outage).await;
    queue.refusing.store(false, Ordering::SeqCst);
    let attempts = queue.publishes.load(Ordering::SeqCst) - before;
    let server_lines = lines.of("tributary_ingest").len() - server_before;
    let producer_lines = lines.of("tributary::publisher").len() - producer_before;

    eprintln!(
        "5 s outage: {attempts} publish attempts, {server_lines} server and \
         {producer_lines} producer WARN lines"
    );
    assert!(
        totals.retried.load(Ordering::SeqCst) > 0,
        "the outage refused nothing"
    );
    // Back-off from 100 ms doubling (jittered to half or more) allows
    // about seven rounds in 5 s; what was in flight when it began adds a
    // few more.
    assert!(
        attempts <= 20,
        "{attempts} publish attempts in a 5 s outage"
    );
    assert!(
        server_lines <= 2,
        "{server_lines} server log lines in a 5 s outage:\n{}",
        lines.of("tributary_ingest").join("\n")
    );
    assert!(
        producer_lines <= 2,
        "{producer_lines} producer log lines in a 5 s outage:\n{}",
        lines.of("tributary::publisher").join("\n")
    );

    // Back again: everything offered is accepted, once.
    producer.abort();
    let _ = producer.await;
    let totals = tokio::time::timeout(Duration::from_secs(60), publisher.finish())
        .await
        .expect("every record answered within 60 s of the queue's return")
        .unwrap();
    let sent = totals.sent.load(Ordering::SeqCst);
    assert_eq!(totals.accepted.load(Ordering::SeqCst), sent);
    assert_eq!(totals.rejected.load(Ordering::SeqCst), 0);
    assert_eq!(totals.duplicates.load(Ordering::SeqCst), 0);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
