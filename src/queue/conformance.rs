//! Checks every queue backend must pass, run by each backend's tests on a
//! fresh queue: ack ownership, hand-back and group management.

use std::time::Duration;

use super::{Queue, QueueError, fixtures::*};
use crate::{kind::KindSet, proto::RecordKind};

/// Runs every check on `queue`, which must be empty and unshared.
pub(crate) async fn run(queue: &dyn Queue) {
    forged_acks_are_refused(queue).await;
    groups_are_listed_and_deleted(queue).await;
    json_and_blob_records_flow_by_kind(queue).await;
}

/// JSON and blob records pass through unchanged, to the groups that take
/// their kinds and to no other.
async fn json_and_blob_records_flow_by_kind(queue: &dyn Queue) {
    use crate::proto::{Blob, Record, record::Payload};
    let open_kinds = KindSet::of([RecordKind::Json, RecordKind::Blob]);
    let mut open = queue
        .subscribe(options("open", open_kinds, 30_000))
        .await
        .unwrap();
    let mut texts = queue
        .subscribe(options("texts", KindSet::of([RecordKind::Text]), 30_000))
        .await
        .unwrap();
    let json = Record {
        source: "j".into(),
        payload: Some(Payload::Json(
            serde_json::from_value(serde_json::json!({
                "order": 7, "price": 12.5, "tags": ["a", null, true], "nested": {"x": -1e300}
            }))
            .unwrap(),
        )),
        ..Default::default()
    };
    let blob = Record {
        source: "b".into(),
        payload: Some(Payload::Blob(Blob {
            content_type: "image/png".into(),
            data: (0..=255).collect(),
        })),
        ..Default::default()
    };
    queue
        .publish(vec![
            batch(RecordKind::Json, vec![json.clone()]),
            batch(RecordKind::Blob, vec![blob.clone()]),
            batch(RecordKind::Text, vec![text("t", 0)]),
        ])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let message = next(&mut open).await;
        got.extend(message.decoded());
        queue.ack("open", &message.ack_id).await.unwrap();
    }
    got.sort_by(|a, b| a.source.cmp(&b.source));
    assert_eq!(got, vec![blob, json]);
    // The text group skips both: up to the text record published after
    // them (a backend may first replay texts of earlier checks), it is
    // handed texts only.
    loop {
        let message = next(&mut texts).await;
        queue.ack("texts", &message.ack_id).await.unwrap();
        assert!(
            message
                .decoded()
                .iter()
                .all(|r| matches!(r.payload, Some(Payload::Text(_)))),
            "{:?}",
            message.decoded()
        );
        if message.decoded().contains(&text("t", 0)) {
            break;
        }
    }
}

async fn forged_acks_are_refused(queue: &dyn Queue) {
    let texts = KindSet::of([RecordKind::Text]);
    let mut victim = queue
        .subscribe(options("victim", texts, 30_000))
        .await
        .unwrap();
    let mut evil = queue
        .subscribe(options("evil", texts, 30_000))
        .await
        .unwrap();
    queue
        .publish(vec![batch(RecordKind::Text, vec![text("f", 0)])])
        .await
        .unwrap();
    let held = next(&mut victim).await;
    let theirs = next(&mut evil).await;
    assert!(matches!(
        queue.ack("evil", &held.ack_id).await,
        Err(QueueError::Denied(_))
    ));
    assert!(matches!(
        queue.nack("evil", &held.ack_id, "x").await,
        Err(QueueError::Denied(_))
    ));
    assert!(matches!(
        queue.ack("victim", "not an id").await,
        Err(QueueError::Invalid(_))
    ));
    queue.ack("evil", &theirs.ack_id).await.unwrap();
    // The victim's delivery is untouched: handed back, it comes again to
    // the victim, well before its deadline.
    queue.abandon("victim", &held.ack_id).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), victim.next())
        .await
        .expect("handed back at once")
        .unwrap();
    assert_eq!(again.records, held.records);
    queue.ack("victim", &again.ack_id).await.unwrap();
}

async fn names(queue: &dyn Queue) -> Vec<String> {
    queue
        .groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect()
}

async fn groups_are_listed_and_deleted(queue: &dyn Queue) {
    let names = self::names(queue).await;
    assert!(names.contains(&"victim".to_string()), "{names:?}");
    assert!(names.contains(&"evil".to_string()), "{names:?}");
    assert!(queue.delete_group("evil").await.unwrap().is_some());
    assert_eq!(queue.delete_group("evil").await.unwrap(), None);
    let names = self::names(queue).await;
    assert!(!names.contains(&"evil".to_string()), "{names:?}");
}
