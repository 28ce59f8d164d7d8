//! Records, batches and subscriptions for the queue backends' tests.

use std::time::Duration;

use super::{Batch, Message, SubscribeOptions, Subscription};
use crate::{
    kind::KindSet,
    proto::{Record, RecordKind, Text, record::Payload},
};

pub(crate) fn text(source: &str, seq: u64) -> Record {
    Record {
        source: source.into(),
        seq,
        payload: Some(Payload::Text(Text {
            body: format!("{source}-{seq}"),
        })),
        ..Default::default()
    }
}

pub(crate) fn batch(kind: RecordKind, records: Vec<Record>) -> Batch {
    Batch {
        kind,
        records,
        received_at: crate::clock::now_micros(),
        traceparent: None,
    }
}

pub(crate) fn options(group: &str, kinds: KindSet, deadline_ms: u64) -> SubscribeOptions {
    SubscribeOptions {
        group: group.into(),
        kinds,
        ack_deadline: Duration::from_millis(deadline_ms),
    }
}

/// Fails the test instead of hanging when nothing is delivered.
pub(crate) async fn next(sub: &mut Box<dyn Subscription>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message is delivered")
        .unwrap()
}
