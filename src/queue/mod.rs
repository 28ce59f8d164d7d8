//! The durable queue between the ingest tier and the parsers.
//!
//! One queue message carries a batch of records of one kind, as one producer
//! published them: per-message costs (a durable write, an ack) are then paid
//! once per batch, not once per record. Consumer groups are named after parser
//! types: every group sees every message of its kinds, and the subscribers of
//! one group share its messages.
//!
//! Nothing above this trait knows which backend is in use; [`open`] picks one
//! from a URL.

#[cfg(test)]
mod conformance;
pub mod embedded;
#[cfg(test)]
mod fixtures;
pub mod jetstream;

use std::{path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    backoff::Backoff,
    kind::KindSet,
    proto::{Record, RecordKind},
};

/// Errors a caller of the queue can act on.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend could not do the work now; the caller may retry.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The request names something the queue does not know or accept.
    #[error("invalid queue request: {0}")]
    Invalid(String),
    /// The request names a delivery of another consumer group.
    #[error("refused: {0}")]
    Denied(String),
    /// The queue URL is malformed or names an unknown backend.
    #[error("bad queue URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Records of one kind to append as one queue message.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The kind of every record in `records`.
    pub kind: RecordKind,
    /// The records, already validated by the ingest server.
    pub records: Vec<Record>,
    /// When the ingest server accepted them, in microseconds since the epoch.
    pub received_at: i64,
    /// W3C trace context of the publishing request, if any.
    pub traceparent: Option<String>,
}

/// How a published batch fared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Records appended for the first time.
    pub accepted: u32,
    /// Records whose key the queue already held; nothing was appended for them.
    pub duplicates: u32,
}

/// A message handed to a subscriber.
#[derive(Debug, Clone)]
pub struct Message {
    /// Acknowledges the message through any handle on the same queue.
    pub ack_id: String,
    /// The kind of every record.
    pub kind: RecordKind,
    /// The records, each as encoded in the message's body (a slice of it:
    /// the queue neither decodes nor copies them; see [`crate::wire`]).
    pub records: Vec<Bytes>,
    /// 1 on the first delivery, counting up on each redelivery.
    pub attempt: u32,
    /// When the ingest server accepted the batch, in microseconds.
    pub received_at: i64,
    /// W3C trace context of the publishing request, if any.
    pub traceparent: Option<String>,
}

#[cfg(test)]
impl Message {
    /// The records, decoded; a test fails on one that cannot be.
    pub(crate) fn decoded(&self) -> Vec<Record> {
        use prost::Message as _;
        self.records
            .iter()
            .map(|bytes| Record::decode(bytes.clone()).expect("a queued record decodes"))
            .collect()
    }
}

/// Longest consumer group name, in bytes: a group name is kept in memory, in
/// the queue file, in JetStream consumer names and in metric labels.
pub const MAX_GROUP_BYTES: usize = 200;

/// Checks a consumer group name: 1 to [`MAX_GROUP_BYTES`] bytes of ASCII
/// letters, digits, `_` and `-`. Both backends take the same names: a
/// JetStream consumer name cannot hold `.`, `*`, `>`, `/`, `\` or white
/// space, and a name also appears in URLs (`/v1/groups/{group}`) and in
/// metric labels.
pub fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > MAX_GROUP_BYTES {
        return Err(format!(
            "a consumer group name must be 1 to {MAX_GROUP_BYTES} bytes, not {}",
            group.len()
        ));
    }
    match group
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(bad) => Err(format!(
            "consumer group {:?} holds {bad:?}; a name takes ASCII letters, digits, `_` and `-`",
            group.chars().take(64).collect::<String>()
        )),
        None => Ok(()),
    }
}

/// What a subscriber receives and how long it may hold a message.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The consumer group: the parser type's name.
    pub group: String,
    /// The kinds to receive.
    pub kinds: KindSet,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    pub ack_deadline: Duration,
}

/// What an operator sees of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's name: its parser type.
    pub name: String,
    /// The kinds it reads: the union of its live subscribers' kinds and of
    /// the kinds whose last subscriber left less than the group TTL ago.
    pub kinds: KindSet,
    /// Live subscribers (on this server, for the embedded queue; waiting
    /// pulls, for JetStream).
    pub members: usize,
    /// Messages it wants and has not acked, delivered or not.
    pub lag: u64,
    /// How long since its last subscriber left; zero while one is live.
    pub idle: Duration,
}

/// A stream of messages for one subscriber of a consumer group. Dropping it
/// leaves the group: what it held and had not acked goes back at once.
#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next message. The message counts as delivered (its
    /// deadline runs) from the moment this returns.
    async fn next(&mut self) -> Result<Message, QueueError>;
}

/// The queue: append batches durably, deliver them to consumer groups, and
/// take acknowledgements by id from anyone.
#[async_trait]
pub trait Queue: Send + Sync {
    /// The backend's name in metrics and traces: `embedded` or `jetstream`.
    fn backend(&self) -> &'static str;

    /// Appends the batches; returns only once they are durable, one outcome
    /// per batch in order. Records whose `(source, seq)` the queue has seen
    /// before are counted as duplicates and not appended again.
    async fn publish(&self, batches: Vec<Batch>) -> Result<Vec<Published>, QueueError>;

    /// Joins a consumer group, creating it on first use.
    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, QueueError>;

    /// The message is processed: never deliver it to `group` again.
    ///
    /// Every method taking an `ack_id` checks that it is one of this queue's
    /// and belongs to `group` (the caller's subscription): another group's
    /// id is [`QueueError::Denied`], a malformed or foreign one
    /// [`QueueError::Invalid`], and neither changes anything. An id that is
    /// the group's but no longer pending (acked already, say) is a no-op.
    async fn ack(&self, group: &str, ack_id: &str) -> Result<(), QueueError>;

    /// The message failed with `error`: deliver it again after a back-off
    /// that grows with the attempt count.
    async fn nack(&self, group: &str, ack_id: &str, error: &str) -> Result<(), QueueError>;

    /// The message is still being worked on: restart its deadline.
    async fn extend(&self, group: &str, ack_id: &str) -> Result<(), QueueError>;

    /// The subscriber holding the message went away without a verdict:
    /// deliver it again now. The backend decides what it charges.
    async fn abandon(&self, group: &str, ack_id: &str) -> Result<(), QueueError>;

    /// Messages published and not yet acknowledged by `group` (delivered or
    /// not), for the lag metric. A group that never subscribed has none.
    async fn lag(&self, group: &str) -> Result<u64, QueueError>;

    /// Every consumer group, by name.
    async fn groups(&self) -> Result<Vec<GroupInfo>, QueueError>;

    /// Deletes a consumer group: what it had not acked is no longer kept
    /// for it. Returns how many messages it still wanted, or `None` when
    /// there is no such group.
    async fn delete_group(&self, group: &str) -> Result<Option<u64>, QueueError>;

    /// Whether the backend can serve now: its writer is running (embedded)
    /// or its server connection is up (JetStream). Health reports it.
    fn healthy(&self) -> bool {
        true
    }

    /// Flushes what is buffered and stops background work.
    async fn close(&self);
}

/// Opens the queue a URL names: `embedded` (a queue file in `data_dir`),
/// `embedded:PATH` (that file), either with retention options (see
/// [`embedded::Settings`]), or `nats://HOST:PORT[?stream=NAME…]`
/// (JetStream; see [`jetstream`]).
pub async fn open(url: &str, data_dir: &Path) -> Result<Arc<dyn Queue>, QueueError> {
    if url.starts_with("nats://") {
        return Ok(Arc::new(jetstream::JetStreamQueue::open(url).await?));
    }
    let settings = embedded::Settings::parse(url, data_dir)?;
    Ok(Arc::new(
        embedded::EmbeddedQueue::open_with(settings).await?,
    ))
}

/// How long a nacked message waits before its next delivery: 100 ms after the
/// first attempt, doubling each time, capped at 10 s so that a recovering
/// parser is not kept waiting long.
/// Exact, not jittered: JetStream is told the delay per message and the
/// embedded ledger recomputes it from the stored attempt count.
pub fn nack_backoff(attempt: u32) -> Duration {
    Backoff::exact(Duration::from_millis(100), Duration::from_secs(10)).wait_for(attempt)
}

impl From<QueueError> for tonic::Status {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Unavailable(_) => {
                tracing::warn!(error = %e, "queue unavailable");
                tonic::Status::unavailable("the queue is unavailable; retry later")
            }
            QueueError::Invalid(reason) => tonic::Status::invalid_argument(reason),
            QueueError::Denied(reason) => tonic::Status::permission_denied(reason),
            QueueError::BadUrl { .. } => {
                tracing::error!(error = %e, "queue misconfigured");
                tonic::Status::internal("the queue is misconfigured")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_what_both_backends_and_urls_take() {
        for good in ["raw", "sms_sender", "raw-2", &"g".repeat(MAX_GROUP_BYTES)] {
            assert_eq!(check_group(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "a.b",
            "a b",
            "a*",
            "a>",
            "a/b",
            "é",
            "a\0",
            &"g".repeat(201),
        ] {
            assert!(check_group(bad).is_err(), "{bad:?} was taken");
        }
        let err = check_group("orders.eu").unwrap_err();
        assert!(
            err.contains("'.'") && err.contains("letters, digits"),
            "{err}"
        );
    }

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(nack_backoff(1), Duration::from_millis(100));
        assert_eq!(nack_backoff(2), Duration::from_millis(200));
        assert_eq!(nack_backoff(4), Duration::from_millis(800));
        assert_eq!(nack_backoff(30), Duration::from_secs(10));
    }
}
