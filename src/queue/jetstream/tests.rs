use std::time::Duration;

use super::*;
use crate::{kind::KindSet, queue::fixtures::*, testkit};

/// A queue on the shared NATS server with a stream of the test's own.
async fn open(stream: &str) -> JetStreamQueue {
    let url = format!("{}?stream={stream}", testkit::nats_url());
    JetStreamQueue::open(&url).await.unwrap_or_else(|e| {
        panic!("JetStream must be reachable at {url} (scripts/test.sh starts it): {e}")
    })
}

/// Deletes the test's stream from the shared server.
async fn drop_stream(queue: &JetStreamQueue) {
    queue
        .js
        .delete_stream(&queue.settings.stream)
        .await
        .expect("deleting the test stream");
}

fn texts(source: &str, range: std::ops::Range<u64>) -> Batch {
    batch(RecordKind::Text, range.map(|i| text(source, i)).collect())
}

#[test]
fn urls_are_checked() {
    let s = Settings::parse("nats://a:1,b:2?stream=S1&max_age=60&duplicate_window=30").unwrap();
    assert_eq!(s.servers, "nats://a:1,b:2");
    assert_eq!(s.stream, "S1");
    assert_eq!(s.max_age, Duration::from_secs(60));
    assert_eq!(s.subject(RecordKind::Sms), "S1.records.sms");
    for bad in [
        "nats://",
        "nats://a:1?stream=a.b",
        "nats://a:1?color=red",
        "nats://a:1?max_age=0",
        "nats://a:1?max_age=10&duplicate_window=20",
    ] {
        assert!(
            matches!(Settings::parse(bad), Err(QueueError::BadUrl { .. })),
            "{bad}"
        );
    }
}

#[test]
fn delivery_counts_come_from_both_reply_formats() {
    assert_eq!(delivered("$JS.ACK.S.c.3.10.9.1700000000.0"), Some(3));
    assert_eq!(
        delivered("$JS.ACK.dom.hash.S.c.4.10.9.1700000000.0.tok"),
        Some(4)
    );
    assert_eq!(delivered("$JS.ACK.S.c"), None);
}

#[test]
fn chunks_stay_under_the_limit_and_keep_order() {
    let records: Vec<Record> = (0..1000).map(|i| text("s", i)).collect();
    let parts = chunks(records.clone(), 4096);
    assert!(parts.len() > 1);
    for part in &parts {
        let size: usize = part.iter().map(|r| r.encoded_len() + 8).sum();
        assert!(size <= 4096, "{size}");
    }
    assert_eq!(parts.concat(), records);
}

#[test]
fn message_ids_follow_the_keys() {
    let a: Vec<Record> = (0..5).map(|i| text("s", i)).collect();
    let b: Vec<Record> = (1..6).map(|i| text("s", i)).collect();
    assert_eq!(
        message_id(RecordKind::Text, &a),
        message_id(RecordKind::Text, &a.clone())
    );
    assert_ne!(
        message_id(RecordKind::Text, &a),
        message_id(RecordKind::Text, &b)
    );
}

#[tokio::test]
async fn delivers_to_every_group_and_dedupes_republished_batches() {
    let queue = open(&testkit::unique_name("T")).await;
    let mut raw = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    let mut upper = queue
        .subscribe(options(
            "uppercase",
            KindSet::of([RecordKind::Text]),
            30_000,
        ))
        .await
        .unwrap();
    let first = queue.publish(vec![texts("a", 0..3)]).await.unwrap();
    assert_eq!(first[0].accepted, 3);
    let again = queue.publish(vec![texts("a", 0..3)]).await.unwrap();
    assert_eq!((again[0].accepted, again[0].duplicates), (0, 3));
    for (group, sub) in [("raw", &mut raw), ("uppercase", &mut upper)] {
        let message = next(sub).await;
        assert_eq!(message.records.len(), 3);
        assert_eq!(message.attempt, 1);
        assert!(crate::clock::now_micros() - message.received_at < 60_000_000);
        queue.ack(group, &message.ack_id).await.unwrap();
    }
    // Nothing else: the republished copy was never appended.
    let more = tokio::time::timeout(Duration::from_millis(500), raw.next()).await;
    assert!(more.is_err(), "unexpected second delivery");
    drop_stream(&queue).await;
}

#[tokio::test]
async fn any_handle_acks_and_nacks_redeliver() {
    let stream = testkit::unique_name("T");
    let queue = open(&stream).await;
    let other = open(&stream).await;
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    queue.publish(vec![texts("a", 0..2)]).await.unwrap();
    let first = next(&mut sub).await;
    other.nack("raw", &first.ack_id, "boom").await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(second.attempt, 2);
    assert_eq!(second.records, first.records);
    other.ack("raw", &second.ack_id).await.unwrap();
    other.close().await;
    let more = tokio::time::timeout(Duration::from_millis(700), sub.next()).await;
    assert!(
        more.is_err(),
        "acked through another handle, yet redelivered"
    );
    drop_stream(&queue).await;
}

#[tokio::test]
async fn unacked_messages_come_back_after_the_deadline() {
    let queue = open(&testkit::unique_name("T")).await;
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 1_000))
        .await
        .unwrap();
    queue.publish(vec![texts("a", 0..1)]).await.unwrap();
    let first = next(&mut sub).await;
    let again = next(&mut sub).await;
    assert_eq!((first.attempt, again.attempt), (1, 2));
    queue.ack("raw", &again.ack_id).await.unwrap();
    drop_stream(&queue).await;
}

#[tokio::test]
async fn subscribers_of_one_group_split_the_messages() {
    let queue = open(&testkit::unique_name("T")).await;
    let mut one = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    let mut two = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    let batches = (0..40).map(|i| texts("a", i * 10..i * 10 + 10)).collect();
    queue.publish(batches).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut deliveries = 0;
    while seen.len() < 400 {
        let message = tokio::select! {
            m = next(&mut one) => m,
            m = next(&mut two) => m,
        };
        deliveries += 1;
        for r in &message.decoded() {
            assert!(seen.insert(r.seq), "seq {} delivered twice", r.seq);
        }
        queue.ack("raw", &message.ack_id).await.unwrap();
    }
    assert_eq!(deliveries, 40);
    drop_stream(&queue).await;
}

#[tokio::test]
async fn foreign_ack_ids_are_refused() {
    let queue = open(&testkit::unique_name("T")).await;
    for bad in ["orders.new", "$JS.ACK.OTHER.c.1.1.1.1.0", "$JS.ACK.>"] {
        assert!(
            matches!(queue.ack("raw", bad).await, Err(QueueError::Invalid(_))),
            "{bad}"
        );
    }
    drop_stream(&queue).await;
}

#[test]
fn reply_subjects_name_their_stream_and_consumer() {
    assert_eq!(
        reply_parts("$JS.ACK.T.raw_text.1.2.3.4.0"),
        Some(("T", "raw_text"))
    );
    assert_eq!(
        reply_parts("$JS.ACK.dom.acc.T.raw_text.1.2.3.4.0.tok"),
        Some(("T", "raw_text"))
    );
    assert_eq!(reply_parts("$JS.ACK.T.raw_text"), None);
    assert_eq!(reply_parts("_INBOX.T.raw_text.1.2.3.4.0.x"), None);
}

#[tokio::test]
async fn conformance() {
    let queue = open(&testkit::unique_name("CONF")).await;
    crate::queue::conformance::run(&queue).await;
    drop_stream(&queue).await;
}

#[tokio::test]
async fn lag_counts_what_a_group_has_not_acked() {
    let queue = open(&testkit::unique_name("LAG")).await;
    assert_eq!(
        queue.lag("raw").await.unwrap(),
        0,
        "an unknown group has no lag"
    );
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    queue
        .publish(vec![
            texts("lag", 0..1),
            texts("lag", 1..2),
            texts("lag", 2..3),
        ])
        .await
        .unwrap();
    let first = next(&mut sub).await;
    queue.ack("raw", &first.ack_id).await.unwrap();
    // The ack reaches the server asynchronously; wait for its count.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lag = queue.lag("raw").await.unwrap();
        if lag == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lag {lag}, want 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop_stream(&queue).await;
}

#[test]
fn reconnects_start_at_once_and_never_wait_past_half_a_second() {
    assert_eq!(reconnect_delay(0), Duration::ZERO);
    assert_eq!(reconnect_delay(1), Duration::ZERO);
    // Whatever the outage's length, the next try is at most 500 ms away.
    for attempts in 2..10_000 {
        let wait = reconnect_delay(attempts);
        assert!(
            wait <= Duration::from_millis(500),
            "attempt {attempts}: {wait:?}"
        );
    }
    assert!(reconnect_delay(usize::MAX) <= Duration::from_millis(500));
}
