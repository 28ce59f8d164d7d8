use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use tributary::{
    proto::{
        PublishBatchRequest, PullRequest, PullResponse, Record, RecordKind, Subscription, Text,
        ingest_client::IngestClient, record::Payload,
    },
    testkit,
    wire::Delivery,
};
use tributary_ingest::{App, Config, Limits};

struct Server {
    url: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(queue: &str, limits: Limits) -> Server {
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

fn jetstream() -> String {
    format!(
        "{}?stream={}&max_age=3600",
        testkit::nats_url(),
        testkit::unique_name("PULL")
    )
}

fn text(source: &str, seq: u64) -> Record {
    Record {
        source: source.into(),
        seq,
        payload: Some(Payload::Text(Text { body: "x".into() })),
        ..Default::default()
    }
}

/// Publishes each record as its own queue message.
async fn publish_each(url: &str, records: Vec<Record>) {
    let mut client = IngestClient::connect(url.to_owned()).await.unwrap();
    for record in records {
        let response = client
            .publish_batch(PublishBatchRequest {
                records: vec![record],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.rejections.is_empty(), "{:?}", response.rejections);
    }
}

/// One Pull stream: its request sender and its responses.
struct Puller {
    requests: mpsc::Sender<PullRequest>,
    responses: Streaming<PullResponse>,
}

impl Puller {
    async fn open(
        url: &str,
        group: &str,
        kinds: &[RecordKind],
        max: u32,
        deadline_ms: u32,
    ) -> Self {
        let mut client = IngestClient::connect(url.to_owned()).await.unwrap();
        let (requests, rx) = mpsc::channel(16);
        requests
            .send(PullRequest {
                subscribe: Some(Subscription {
                    parser: group.into(),
                    kinds: kinds.iter().map(|k| *k as i32).collect(),
                    max_outstanding: max,
                    ack_deadline_ms: deadline_ms,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let responses = client
            .pull(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn response(&mut self, within: Duration) -> Option<PullResponse> {
        match tokio::time::timeout(within, self.responses.next()).await {
            Ok(Some(response)) => Some(response.unwrap()),
            _ => None,
        }
    }

    async fn delivery(&mut self) -> Delivery {
        loop {
            let mut response = self
                .response(Duration::from_secs(20))
                .await
                .expect("a delivery within 20 s");
            if !response.deliveries.is_empty() {
                return response.deliveries.remove(0);
            }
        }
    }

    async fn ack(&self, ack_id: &str) {
        self.requests
            .send(PullRequest {
                ack_ids: vec![ack_id.into()],
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

async fn a_forged_ack_is_refused_and_the_delivery_stays_with_its_group(queue: &str) {
    let server = start(queue, Limits::default()).await;
    let mut victim = Puller::open(&server.url, "victim", &[RecordKind::Text], 10, 30_000).await;
    let mut evil = Puller::open(&server.url, "evil", &[RecordKind::Probe], 10, 30_000).await;
    publish_each(&server.url, vec![text("v", 0)]).await;
    let held = victim.delivery().await;
    evil.ack(&held.ack_id).await;
    let refused = evil
        .response(Duration::from_secs(10))
        .await
        .expect("the refusal comes back on the stream");
    assert!(refused.deliveries.is_empty());
    assert_eq!(refused.refusals.len(), 1, "{refused:?}");
    assert_eq!(refused.refusals[0].ack_id, held.ack_id);
    assert_eq!(
        Code::from(refused.refusals[0].code),
        Code::PermissionDenied,
        "{}",
        refused.refusals[0].reason
    );
    // A malformed id is refused too, as INVALID_ARGUMENT.
    evil.ack("not-an-ack-id").await;
    let malformed = evil.response(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        Code::from(malformed.refusals[0].code),
        Code::InvalidArgument
    );
    // The victim's delivery is still its own: when its stream closes it
    // goes back at once (the deadline is 30 s) to the group's next
    // subscriber.
    drop(victim);
    let mut replica = Puller::open(&server.url, "victim", &[RecordKind::Text], 10, 30_000).await;
    let started = tokio::time::Instant::now();
    let again = replica.delivery().await;
    println!(
        "handed back to the next subscriber in {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "handed back, not left to its deadline"
    );
    assert_eq!(again.records, held.records);
    replica.ack(&again.ack_id).await;
}

#[tokio::test]
async fn embedded_a_forged_ack_is_refused_and_the_delivery_stays_with_its_group() {
    a_forged_ack_is_refused_and_the_delivery_stays_with_its_group("embedded").await;
}

#[tokio::test]
async fn jetstream_a_forged_ack_is_refused_and_the_delivery_stays_with_its_group() {
    a_forged_ack_is_refused_and_the_delivery_stays_with_its_group(&jetstream()).await;
}

/// Redelivery to the same stream must not count a delivery's records twice:
/// after a time-out, a redelivery and its ack, a window of two still holds
/// two deliveries at once.
#[tokio::test]
async fn credit_is_released_once_whatever_the_redeliveries() {
    let server = start("embedded", Limits::default()).await;
    let mut puller = Puller::open(&server.url, "g", &[RecordKind::Text], 2, 300).await;
    publish_each(&server.url, vec![text("c", 0)]).await;
    let first = puller.delivery().await;
    // It times out and comes back to this same stream.
    let again = puller.delivery().await;
    assert_eq!(again.ack_id, first.ack_id);
    puller.ack(&again.ack_id).await;
    publish_each(&server.url, vec![text("c", 1), text("c", 2)]).await;
    let a = puller.delivery().await;
    let b = puller.delivery().await;
    assert_ne!(a.ack_id, b.ack_id, "two held at once, as the window allows");
}

/// A subscriber asking for 10^9 outstanding records gets the server's cap.
#[tokio::test]
async fn max_outstanding_is_capped_by_the_server() {
    let limits = Limits {
        max_outstanding: 3,
        max_outstanding_cap: 3,
        ..Limits::default()
    };
    let server = start("embedded", limits).await;
    let mut greedy =
        Puller::open(&server.url, "g", &[RecordKind::Text], 1_000_000_000, 30_000).await;
    publish_each(&server.url, (0..6).map(|seq| text("m", seq)).collect()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(greedy.delivery().await);
    }
    assert!(
        greedy.response(Duration::from_millis(500)).await.is_none(),
        "a fourth record delivered past the cap"
    );
    greedy.ack(&held[0].ack_id).await;
    let more = greedy.delivery().await;
    assert_ne!(more.ack_id, held[0].ack_id);
}

/// A group name one backend could not hold (a JetStream consumer name takes
/// no `.`) is refused by both alike, before anything is created, with
/// INVALID_ARGUMENT naming the character.
async fn a_group_name_no_backend_can_hold_is_refused_up_front(queue: &str) {
    let server = start(queue, Limits::default()).await;
    let mut client = IngestClient::connect(server.url.clone()).await.unwrap();
    for bad in ["orders.eu", "a b", "x>", ""] {
        let first = PullRequest {
            subscribe: Some(Subscription {
                parser: bad.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = client
            .pull(tokio_stream::once(first))
            .await
            .expect_err("the subscription is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
        assert!(status.message().contains("subscribe.parser"), "{status:?}");
    }
    let groups = client
        .list_groups(tributary::proto::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert!(groups.is_empty(), "{groups:?}");
}

#[tokio::test]
async fn embedded_a_group_name_no_backend_can_hold_is_refused_up_front() {
    a_group_name_no_backend_can_hold_is_refused_up_front("embedded").await;
}

#[tokio::test]
async fn jetstream_a_group_name_no_backend_can_hold_is_refused_up_front() {
    a_group_name_no_backend_can_hold_is_refused_up_front(&jetstream()).await;
}
