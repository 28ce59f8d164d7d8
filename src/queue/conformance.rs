//! Checks every queue backend must pass, run by each backend's tests on a
//! fresh queue: ack ownership, hand-back and group management.

use std::time::Duration;

use super::{Queue, QueueError, fixtures::*};
use crate::{kind::KindSet, proto::RecordKind};

/// Runs every check on `queue`, which must be empty and unshared.
pub(crate) async fn run(queue: &dyn Queue) {
    forged_acks_are_refused(queue).await;
    groups_are_listed_and_deleted(queue).await;
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
