use std::time::Duration;

use super::*;
use crate::{
    proto::{Record, record::Payload},
    queue::fixtures::*,
};

async fn open(dir: &tempfile::TempDir) -> EmbeddedQueue {
    EmbeddedQueue::open(&dir.path().join("q.db")).await.unwrap()
}

async fn open_with(dir: &tempfile::TempDir, options: &str) -> EmbeddedQueue {
    let settings = Settings::parse(&format!("embedded?{options}"), dir.path()).unwrap();
    EmbeddedQueue::open_with(settings).await.unwrap()
}

async fn publish_text(queue: &EmbeddedQueue, source: &str, seq: u64) {
    queue
        .publish(vec![batch(RecordKind::Text, vec![text(source, seq)])])
        .await
        .unwrap();
}

fn retained(queue: &EmbeddedQueue) -> usize {
    queue.inner.state().ledger.size().0
}

#[tokio::test]
async fn delivers_acks_and_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    let out = queue
        .publish(vec![batch(
            RecordKind::Text,
            (0..3).map(|i| text("a", i)).collect(),
        )])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Published {
            accepted: 3,
            duplicates: 0
        }]
    );
    let msg = next(&mut sub).await;
    assert_eq!((msg.attempt, msg.records.len()), (1, 3));
    assert!(crate::clock::now_micros() - msg.received_at < 60_000_000);
    queue.ack("raw", &msg.ack_id).await.unwrap();
    assert_eq!(retained(&queue), 0, "acked by its only group");
}

#[tokio::test]
async fn dedupes_keys_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let first = queue
        .publish(vec![batch(
            RecordKind::Text,
            (0..10).map(|i| text("a", i)).collect(),
        )])
        .await
        .unwrap();
    assert_eq!(first[0].accepted, 10);
    queue.close().await;
    let queue = open(&dir).await;
    let again = queue
        .publish(vec![batch(
            RecordKind::Text,
            (5..15).map(|i| text("a", i)).collect(),
        )])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![Published {
            accepted: 5,
            duplicates: 5
        }]
    );
    // Keys repeated inside one batch count once.
    let twice = queue
        .publish(vec![batch(
            RecordKind::Text,
            vec![text("b", 0), text("b", 0)],
        )])
        .await
        .unwrap();
    assert_eq!(
        twice,
        vec![Published {
            accepted: 1,
            duplicates: 1
        }]
    );
}

#[tokio::test]
async fn unacked_messages_survive_a_crash_and_come_back_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = open(&dir).await;
        let mut sub = queue
            .subscribe(options("raw", KindSet::ALL, 30_000))
            .await
            .unwrap();
        publish_text(&queue, "a", 0).await;
        publish_text(&queue, "a", 1).await;
        let first = next(&mut sub).await;
        queue.ack("raw", &first.ack_id).await.unwrap();
        let _held = next(&mut sub).await;
        // Dropped without close: no orderly flush of anything in memory.
        // The ack above went to the writer; wait for it to be committed by
        // publishing once more and awaiting that commit.
        publish_text(&queue, "c", 0).await;
        std::mem::forget(sub);
    }
    let queue = open(&dir).await;
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let msg = next(&mut sub).await;
        seen.extend(msg.decoded().iter().map(|r| (r.source.clone(), r.seq)));
        assert_eq!(
            msg.attempt, 1,
            "a crash while out with others charges nothing"
        );
        // Suspects of a crash go out alone: nothing else until the verdict.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), sub.next())
                .await
                .is_err()
        );
        queue.ack("raw", &msg.ack_id).await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, vec![("a".to_string(), 1), ("c".to_string(), 0)]);
}

#[tokio::test]
async fn a_record_that_crashes_the_process_is_charged_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    publish_text(&queue, "poison", 0).await;
    publish_text(&queue, "fine", 0).await;
    queue.close().await;
    // Each run delivers the first suspect and "crashes" (the queue is
    // dropped without close) before any verdict.
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let queue = open(&dir).await;
        let mut sub = queue
            .subscribe(options("raw", KindSet::ALL, 30_000))
            .await
            .unwrap();
        let msg = next(&mut sub).await;
        assert_eq!(msg.decoded()[0].source, "poison");
        attempts.push(msg.attempt);
        std::mem::forget(sub);
        drop(queue);
    }
    // The first run was a plain delivery with its neighbour in the window;
    // from then on it goes out alone and each crash is its own strike.
    assert_eq!(attempts, vec![1, 1, 2, 3]);
    let queue = open(&dir).await;
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    let poison = next(&mut sub).await;
    assert_eq!(poison.attempt, 4);
    queue.ack("raw", &poison.ack_id).await.unwrap();
    let fine = next(&mut sub).await;
    assert_eq!(
        (fine.decoded()[0].source.as_str(), fine.attempt),
        ("fine", 1),
        "its neighbour is never charged"
    );
}

#[tokio::test]
async fn a_subscriber_that_keeps_crashing_condemns_only_the_poison() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    for seq in 0..10 {
        queue
            .publish(vec![batch(
                RecordKind::Text,
                vec![text(if seq == 4 { "poison" } else { "ok" }, seq)],
            )])
            .await
            .unwrap();
    }
    let max_attempts = 3;
    let mut acked = 0;
    let mut dead = Vec::new();
    // A worker takes everything it can, then dies (drops its subscription)
    // whenever it holds the poison; otherwise it acks all it holds.
    for _ in 0..60 {
        if retained(&queue) == 0 {
            break;
        }
        let mut sub = queue
            .subscribe(options("w", KindSet::ALL, 30_000))
            .await
            .unwrap();
        let mut held = vec![next(&mut sub).await];
        while let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            held.push(msg);
        }
        for msg in &held {
            if msg.attempt > max_attempts {
                dead.push(msg.decoded()[0].source.clone());
                queue.ack("w", &msg.ack_id).await.unwrap();
            }
        }
        if held
            .iter()
            .any(|m| m.decoded()[0].source == "poison" && m.attempt <= max_attempts)
        {
            drop(sub);
            continue;
        }
        for msg in held.iter().filter(|m| m.attempt <= max_attempts) {
            queue.ack("w", &msg.ack_id).await.unwrap();
            acked += 1;
        }
    }
    assert_eq!(dead, vec!["poison".to_string()]);
    assert_eq!(acked, 9);
    assert_eq!(retained(&queue), 0);
}

#[tokio::test]
async fn redelivers_after_the_deadline_and_after_a_nack() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 500))
        .await
        .unwrap();
    publish_text(&queue, "a", 0).await;
    let first = next(&mut sub).await;
    let started = Instant::now();
    // Past its deadline it comes back uncharged: it was not out alone.
    let second = next(&mut sub).await;
    assert_eq!((second.attempt, &second.ack_id), (1, &first.ack_id));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the deadline"
    );
    // It went out alone this time: a second time-out is its own strike.
    let third = next(&mut sub).await;
    assert_eq!(third.attempt, 2);
    queue.nack("raw", &third.ack_id, "boom").await.unwrap();
    let fourth = next(&mut sub).await;
    assert_eq!(fourth.attempt, 3, "a nack is charged");
    queue.extend("raw", &fourth.ack_id).await.unwrap();
    queue.ack("raw", &fourth.ack_id).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), sub.next())
            .await
            .is_err(),
        "an acked message is not delivered again"
    );
}

#[tokio::test]
async fn groups_each_get_everything_and_members_share() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let mut raw_a = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    let mut raw_b = queue
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
    let probe = Record {
        source: "p".into(),
        payload: Some(Payload::Probe(Default::default())),
        ..Default::default()
    };
    queue
        .publish(vec![
            batch(RecordKind::Text, vec![text("a", 0)]),
            batch(RecordKind::Probe, vec![probe]),
        ])
        .await
        .unwrap();
    let one = next(&mut raw_a).await;
    let two = next(&mut raw_b).await;
    assert_ne!(
        one.ack_id, two.ack_id,
        "members of a group split the messages"
    );
    let only = next(&mut upper).await;
    assert_eq!(only.kind, RecordKind::Text);
    for ack in [&one.ack_id, &two.ack_id] {
        queue.ack("raw", ack).await.unwrap();
    }
    queue.ack("uppercase", &only.ack_id).await.unwrap();
    assert_eq!(retained(&queue), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), upper.next())
            .await
            .is_err(),
        "the probe is not for uppercase"
    );
}

#[tokio::test]
async fn rejects_malformed_and_foreign_ack_ids() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    for bad in ["", "x:raw", "5:", "5", "zz:1:raw", "1:x:raw", "1:2:"] {
        assert!(
            matches!(queue.ack("raw", bad).await, Err(QueueError::Invalid(_))),
            "{bad:?}"
        );
    }
    let other = tempfile::tempdir().unwrap();
    let elsewhere = open(&other).await;
    let mut sub = elsewhere
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    publish_text(&elsewhere, "a", 0).await;
    let foreign = next(&mut sub).await;
    assert!(matches!(
        queue.ack("raw", &foreign.ack_id).await,
        Err(QueueError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_forged_ack_is_refused_and_the_delivery_stays_its_groups() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let mut victim = queue
        .subscribe(options("victim", KindSet::ALL, 1_000))
        .await
        .unwrap();
    let _evil = queue
        .subscribe(options("evil", KindSet::of([RecordKind::Probe]), 1_000))
        .await
        .unwrap();
    publish_text(&queue, "a", 0).await;
    let held = next(&mut victim).await;
    for op in 0..3 {
        let refused = match op {
            0 => queue.ack("evil", &held.ack_id).await,
            1 => queue.nack("evil", &held.ack_id, "x").await,
            _ => queue.extend("evil", &held.ack_id).await,
        };
        assert!(matches!(refused, Err(QueueError::Denied(_))), "{refused:?}");
    }
    // A forged id naming evil's own group for victim's message changes
    // nothing either: it is not pending there.
    let forged = held.ack_id.replace(":victim", ":evil");
    queue.ack("evil", &forged).await.unwrap();
    assert_eq!(retained(&queue), 1);
    // The victim's delivery is still its own: it comes back at its deadline.
    let again = next(&mut victim).await;
    assert_eq!(again.decoded()[0].source, "a");
    queue.ack("victim", &again.ack_id).await.unwrap();
    assert_eq!(retained(&queue), 0);
}

#[tokio::test]
async fn regrouping_never_deletes_what_a_group_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let mut g1 = queue
        .subscribe(options("g1", KindSet::of([RecordKind::Sms]), 30_000))
        .await
        .unwrap();
    let mut g2 = queue
        .subscribe(options("g2", KindSet::of([RecordKind::Sms]), 30_000))
        .await
        .unwrap();
    let sms = Record {
        source: "s".into(),
        payload: Some(Payload::Sms(Default::default())),
        ..Default::default()
    };
    queue
        .publish(vec![batch(RecordKind::Sms, vec![sms])])
        .await
        .unwrap();
    let held = next(&mut g1).await;
    let _probe_only = queue
        .subscribe(options("g1", KindSet::of([RecordKind::Probe]), 30_000))
        .await
        .unwrap();
    let theirs = next(&mut g2).await;
    queue.ack("g2", &theirs.ack_id).await.unwrap();
    assert_eq!(retained(&queue), 1, "still pending in g1");
    queue.nack("g1", &held.ack_id, "later").await.unwrap();
    // The queue still serves: publishing works and g1 gets its SMS back.
    publish_text(&queue, "t", 0).await;
    let back = next(&mut g1).await;
    assert_eq!(back.ack_id, held.ack_id);
    queue.ack("g1", &back.ack_id).await.unwrap();
}

#[tokio::test]
async fn a_closed_subscription_hands_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let mut first = queue
        .subscribe(options("raw", KindSet::ALL, 3_600_000))
        .await
        .unwrap();
    let mut replica = queue
        .subscribe(options("raw", KindSet::ALL, 3_600_000))
        .await
        .unwrap();
    publish_text(&queue, "a", 0).await;
    let held = next(&mut first).await;
    drop(first);
    // Well within the hour-long deadline.
    let again = tokio::time::timeout(Duration::from_secs(2), replica.next())
        .await
        .expect("handed back at once")
        .unwrap();
    assert_eq!((again.ack_id, again.attempt), (held.ack_id, 1));
}

#[tokio::test]
async fn the_body_cache_honours_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_with(&dir, "cache_bytes=100000").await;
    let _idle = queue
        .subscribe(options("idle", KindSet::ALL, 30_000))
        .await
        .unwrap();
    for seq in 0..50 {
        let record = Record {
            source: "big".into(),
            seq,
            payload: Some(Payload::Text(crate::proto::Text {
                body: "x".repeat(10_000),
            })),
            ..Default::default()
        };
        queue
            .publish(vec![batch(RecordKind::Text, vec![record])])
            .await
            .unwrap();
    }
    let (messages, bytes, cached) = queue.inner.state().ledger.size();
    assert_eq!(messages, 50);
    assert!(bytes > 500_000, "{bytes}");
    assert!(
        cached <= 100_000,
        "cached {cached} bytes over a cap of 100000"
    );
}

#[tokio::test]
async fn retention_by_size_drops_the_oldest_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_with(&dir, "max_bytes=1000").await;
    let mut sub = queue
        .subscribe(options("slow", KindSet::ALL, 30_000))
        .await
        .unwrap();
    for seq in 0..100 {
        publish_text(&queue, "r", seq).await;
    }
    // The sweep applies retention once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.inner.state().ledger.size().1 > 1000 {
        assert!(Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = next(&mut sub).await;
    assert!(first.decoded()[0].seq > 0, "the oldest went first");
    assert!(queue.lag("slow").await.unwrap() < 100);
}

#[tokio::test]
async fn groups_are_listed_and_deleted_and_a_deleted_group_frees_its_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    let sub = queue
        .subscribe(options("typo", KindSet::of([RecordKind::Text]), 30_000))
        .await
        .unwrap();
    drop(sub);
    for seq in 0..5 {
        publish_text(&queue, "x", seq).await;
    }
    let groups = queue.groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].name.as_str(), groups[0].members, groups[0].lag),
        ("typo", 0, 5)
    );
    assert_eq!(queue.delete_group("typo").await.unwrap(), Some(5));
    assert_eq!(queue.delete_group("typo").await.unwrap(), None);
    assert!(queue.groups().await.unwrap().is_empty());
    // No group reads text now: the messages are kept for groups to come.
    assert_eq!(retained(&queue), 5);
    // After a restart the group stays gone.
    queue.close().await;
    let queue = open(&dir).await;
    assert!(queue.groups().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_idle_group_expires_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_with(&dir, "group_ttl=1").await;
    let mut live = queue
        .subscribe(options("live", KindSet::ALL, 30_000))
        .await
        .unwrap();
    drop(
        queue
            .subscribe(options("gone", KindSet::ALL, 30_000))
            .await
            .unwrap(),
    );
    publish_text(&queue, "a", 0).await;
    let msg = next(&mut live).await;
    queue.ack("live", &msg.ack_id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = queue
            .groups()
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.name)
            .collect();
        if names == vec!["live".to_string()] {
            break;
        }
        assert!(Instant::now() < deadline, "still {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its backlog no longer pins the message.
    let deadline = Instant::now() + Duration::from_secs(5);
    while retained(&queue) > 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gapped_keys_are_stored_as_ranges_that_merge() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    for seq in [0, 2, 4, 1, 3] {
        publish_text(&queue, "g", seq).await;
    }
    queue.close().await;
    let queue = open(&dir).await;
    let again = queue
        .publish(vec![batch(
            RecordKind::Text,
            (0..6).map(|i| text("g", i)).collect(),
        )])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![Published {
            accepted: 1,
            duplicates: 5
        }]
    );
    queue.close().await;
    let mut conn =
        SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("q.db").display()))
            .await
            .unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT start, end_ FROM seen WHERE source = 'g'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, vec![(0, 5)], "one row for one range");
}

#[tokio::test]
async fn the_older_dedupe_layout_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    open(&dir).await.close().await;
    let mut conn =
        SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("q.db").display()))
            .await
            .unwrap();
    let mut blob = Vec::new();
    for (start, end) in [(0u64, 9u64), (20, 20)] {
        blob.extend_from_slice(&start.to_le_bytes());
        blob.extend_from_slice(&end.to_le_bytes());
    }
    sqlx::query("INSERT INTO sources (source, ranges) VALUES ('old', ?)")
        .bind(blob)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let queue = open(&dir).await;
    let out = queue
        .publish(vec![batch(
            RecordKind::Text,
            vec![text("old", 5), text("old", 20), text("old", 21)],
        )])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Published {
            accepted: 1,
            duplicates: 2
        }]
    );
}

#[tokio::test]
async fn a_silent_sources_keys_are_forgotten_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_with(&dir, "dedupe_window=1").await;
    publish_text(&queue, "quiet", 0).await;
    publish_text(&queue, "busy", 0).await;
    // Past the window a commit forgets the silent source; one that keeps
    // publishing, even only duplicates, keeps its keys.
    let mut conn = SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.path().join("queue.db").display()
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let busy = queue
            .publish(vec![batch(RecordKind::Text, vec![text("busy", 0)])])
            .await
            .unwrap();
        assert_eq!(busy[0].duplicates, 1, "a live source keeps its keys");
        let quiet: i64 = sqlx::query_scalar("SELECT count(*) FROM seen WHERE source = 'quiet'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if quiet == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never forgotten");
    }
    let quiet = queue
        .publish(vec![batch(RecordKind::Text, vec![text("quiet", 0)])])
        .await
        .unwrap();
    assert_eq!(quiet[0].accepted, 1);
}

#[test]
fn urls_are_checked() {
    let dir = Path::new("d");
    let s = Settings::parse("embedded?max_age=60&max_bytes=1000&group_ttl=5", dir).unwrap();
    assert_eq!(
        (s.path.as_path(), s.max_age, s.max_bytes, s.group_ttl),
        (
            Path::new("d/queue.db"),
            Duration::from_secs(60),
            1000,
            Duration::from_secs(5)
        )
    );
    assert_eq!(
        Settings::parse("embedded:/x/q.db", dir).unwrap().path,
        PathBuf::from("/x/q.db")
    );
    for bad in [
        "embedded:",
        "embeded",
        "embedded?max_age=0",
        "embedded?max_age=x",
        "embedded?nope=1",
        "embedded?max_age",
    ] {
        assert!(
            matches!(Settings::parse(bad, dir), Err(QueueError::BadUrl { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn lag_counts_what_a_group_has_not_acked() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    assert_eq!(
        queue.lag("raw").await.unwrap(),
        0,
        "an unknown group has no lag"
    );
    let mut sub = queue
        .subscribe(options("raw", KindSet::ALL, 30_000))
        .await
        .unwrap();
    for seq in 0..3 {
        publish_text(&queue, "lag", seq).await;
    }
    assert_eq!(queue.lag("raw").await.unwrap(), 3);
    // Delivered but unacked still counts; acked does not.
    let first = next(&mut sub).await;
    assert_eq!(queue.lag("raw").await.unwrap(), 3);
    queue.ack("raw", &first.ack_id).await.unwrap();
    assert_eq!(queue.lag("raw").await.unwrap(), 2);
}

#[tokio::test]
async fn a_closed_queue_is_not_healthy_and_refuses_work() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    assert!(queue.healthy());
    queue.close().await;
    assert!(!queue.healthy());
    assert!(matches!(
        queue
            .publish(vec![batch(RecordKind::Text, vec![text("a", 0)])])
            .await,
        Err(QueueError::Unavailable(_))
    ));
}

#[tokio::test]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir).await;
    crate::queue::conformance::run(&queue).await;
}

/// One step of [`acks_and_deletes_survive_reopening_as_the_model_says`].
#[derive(Debug, Clone)]
enum Step {
    /// Publish one message of one record, with the next sequence number.
    Publish,
    /// Take up to this many messages as group 0 or 1 and ack each at once,
    /// without waiting between acks, so that one commit writes several.
    Ack { group: usize, count: usize },
    /// Close the queue and open the file again.
    Reopen,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => Just(Step::Publish),
        3 => (0..2usize, 1..6usize).prop_map(|(group, count)| Step::Ack { group, count }),
        1 => Just(Step::Reopen),
    ]
}

const MODEL_GROUPS: [&str; 2] = ["raw", "sensor"];

async fn subscribe_both(queue: &EmbeddedQueue) -> Vec<Box<dyn Subscription>> {
    let mut subs = Vec::new();
    for group in MODEL_GROUPS {
        subs.push(
            queue
                .subscribe(options(group, KindSet::ALL, 30_000))
                .await
                .unwrap(),
        );
    }
    subs
}

/// What the file holds must match the model: each group's lag is what it
/// has not acked, and a message stays retained while any group lacks it.
async fn check_against(queue: &EmbeddedQueue, unacked: &[std::collections::BTreeSet<u64>; 2]) {
    for (group, model) in MODEL_GROUPS.iter().zip(unacked) {
        assert_eq!(
            queue.lag(group).await.unwrap(),
            model.len() as u64,
            "lag of {group}"
        );
    }
    let union: std::collections::BTreeSet<u64> = unacked[0].union(&unacked[1]).copied().collect();
    assert_eq!(retained(queue), union.len(), "messages retained");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Acks and the deletes they cause are written set-wise, several per
    /// statement. Random publishes, acks by two groups and reopenings of
    /// the file, checked against a model of what each group still lacks
    /// after every reopening; at the end each group gets exactly that,
    /// once, and the file is empty.
    #[test]
    fn acks_and_deletes_survive_reopening_as_the_model_says(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut queue = open(&dir).await;
            let mut subs = subscribe_both(&queue).await;
            let mut unacked: [std::collections::BTreeSet<u64>; 2] = Default::default();
            let mut seq = 0u64;
            for step in steps.into_iter().chain([Step::Reopen]) {
                match step {
                    Step::Publish => {
                        publish_text(&queue, "model", seq).await;
                        for model in &mut unacked {
                            model.insert(seq);
                        }
                        seq += 1;
                    }
                    Step::Ack { group, count } => {
                        for _ in 0..count.min(unacked[group].len()) {
                            let msg = next(&mut subs[group]).await;
                            let got = msg.decoded()[0].seq;
                            assert!(unacked[group].remove(&got), "{got} delivered to {} after its ack", MODEL_GROUPS[group]);
                            queue.ack(MODEL_GROUPS[group], &msg.ack_id).await.unwrap();
                        }
                    }
                    Step::Reopen => {
                        drop(subs);
                        queue.close().await;
                        queue = open(&dir).await;
                        subs = subscribe_both(&queue).await;
                        check_against(&queue, &unacked).await;
                    }
                }
            }
            for (group, model) in unacked.iter().enumerate() {
                let mut got = std::collections::BTreeSet::new();
                for _ in 0..model.len() {
                    let msg = next(&mut subs[group]).await;
                    assert!(got.insert(msg.decoded()[0].seq), "delivered twice");
                    queue.ack(MODEL_GROUPS[group], &msg.ack_id).await.unwrap();
                }
                assert_eq!(&got, model, "what {} still lacked", MODEL_GROUPS[group]);
            }
            drop(subs);
            queue.close().await;
            let queue = open(&dir).await;
            check_against(&queue, &Default::default()).await;
        });
    }
}
