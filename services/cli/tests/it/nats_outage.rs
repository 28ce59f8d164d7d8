//! An ingest server through an outage of its NATS server: a private
//! nats-server with JetStream (never the shared one) is killed and started
//! again on the same port and store, and the server publishes again within
//! a second of it answering.

use std::time::Duration;

use tokio::{task::JoinSet, time::Instant};
use tonic::transport::Channel;
use tributary::{
    proto::{PublishBatchRequest, Record, Text, ingest_client::IngestClient, record::Payload},
    testkit::{self, PrivateNats},
};

use crate::support::spawn_listening;

/// The promise: publishing works again this soon after NATS is back.
const PROMISE: Duration = Duration::from_secs(1);

/// The outage. Longer than the 4 s async-nats's own back-off grows to, so
/// that a client left on that default would be asleep when NATS returns.
const OUTAGE: Duration = Duration::from_secs(5);

fn one_record(seq: u64) -> PublishBatchRequest {
    PublishBatchRequest {
        records: vec![Record {
            source: "nats-outage".into(),
            seq,
            payload: Some(Payload::Text(Text {
                body: "through the outage".into(),
            })),
            ..Default::default()
        }],
    }
}

/// Publishes one record; true when the queue accepted it.
async fn publish(client: &mut IngestClient<Channel>, seq: u64) -> bool {
    match client.publish_batch(one_record(seq)).await {
        Ok(response) => response.into_inner().accepted == 1,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_publishes_again_within_1_s_of_nats_coming_back() {
    let mut nats = tokio::task::spawn_blocking(PrivateNats::start)
        .await
        .unwrap();
    let queue = format!("{}?stream={}", nats.url(), testkit::unique_name("OUTAGE"));
    let (_server, addr) =
        spawn_listening(&["ingest", "--listen", "127.0.0.1:0", "--queue", &queue]).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the ingest server accepts connections");
    let mut client = IngestClient::new(channel);
    assert!(
        publish(&mut client, 0).await,
        "publishing before the outage"
    );

    nats = tokio::task::spawn_blocking(move || {
        nats.kill();
        nats
    })
    .await
    .unwrap();
    let down = Instant::now();
    assert!(
        !publish(&mut client, 1).await,
        "a record was accepted with NATS down"
    );
    // The scenario itself: NATS stays away for OUTAGE.
    tokio::time::sleep_until(down + OUTAGE).await;

    // One attempt every 50 ms from now on, each on its own, so that an
    // attempt waiting out the outage cannot hold the next one back.
    let nats_addr = nats.url().trim_start_matches("nats://").to_owned();
    let resumed = tokio::task::spawn_blocking(move || {
        nats.resume();
        nats
    });
    // When NATS answers again, to within 5 ms.
    let answered = tokio::spawn(async move {
        while tokio::net::TcpStream::connect(&nats_addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Instant::now()
    });
    let mut attempts = JoinSet::new();
    let mut seq = 2;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let recovered = loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut client = client.clone();
                let n = seq;
                seq += 1;
                attempts.spawn(async move { publish(&mut client, n).await.then(Instant::now) });
            }
            Some(done) = attempts.join_next() => {
                if let Some(at) = done.unwrap() {
                    break at;
                }
            }
        }
        assert!(
            down.elapsed() < OUTAGE + Duration::from_secs(30),
            "no record accepted within 30 s of the outage's end"
        );
    };
    let _nats = resumed.await.unwrap();
    let back_at = answered.await.unwrap();
    // NATS may have answered up to one 5 ms poll before `back_at`.
    let took = recovered.saturating_duration_since(back_at);
    println!(
        "ingest published again {took:?} after NATS answered (outage {:?})",
        back_at.duration_since(down)
    );
    assert!(
        took <= PROMISE,
        "ingest published again {took:?} after NATS answered, past {PROMISE:?}"
    );
}
