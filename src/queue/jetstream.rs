//! The NATS JetStream queue, for the distributed mesh.
//!
//! **Layout.** One stream (default `TRIBUTARY`, `?stream=NAME` in the URL)
//! takes the subjects `NAME.records.<kind>`. A queue message carries a batch
//! of records of one kind, encoded as a `RecordBatch`, split so that no
//! message passes the server's `max_payload`.
//!
//! **Retention and consumers.** Every parser type must see every record of
//! its kinds, and the replicas of one type must split them. So each parser
//! type (consumer group) gets one durable pull consumer per kind it reads,
//! named `<group>_<kind>` and filtered on that kind's subject; replicas pull
//! from the same durable consumers and JetStream hands each message to one of
//! them. One consumer per kind (not one filtered on a subject list) keeps this
//! working on NATS 2.9, which allows a single filter subject per consumer.
//!   - A `WorkQueue` stream is ruled out: it forbids consumers whose filters
//!     overlap, and two parser types reading the same kind overlap.
//!   - An `Interest` stream deletes a message once every consumer that
//!     existed at publish time has acked it, and drops it at once if none
//!     existed: records published before a parser type's first start would be
//!     lost to it.
//!   - So the stream keeps `Limits` retention, a log bounded by age
//!     (`?max_age=SECONDS`, default 7 days): a parser type added later reads
//!     the whole retained log, and a parser type down for less than `max_age`
//!     loses nothing. Acked messages stay until they age out.
//!
//! **Dedupe.** Each message carries `Nats-Msg-Id`, a hash of the `(source,
//! seq)` keys it holds: a producer republishing the same batch within the
//! stream's duplicate window (`?duplicate_window=SECONDS`, default 120) is
//! acknowledged without a second copy. A republish that batches keys
//! differently is stored again and deduplicated by the store's idempotent
//! write instead.
//!
//! **Acks from anywhere.** The ack id of a delivery is its JetStream reply
//! subject (`$JS.ACK.<stream>.<consumer>.…`). Any ingest server publishes
//! `+ACK`, `-NAK {"delay":…}` or `+WPI` (in progress) to it on its own
//! connection, so the servers need no shared state. Redelivery after the
//! deadline is JetStream's `ack_wait`. Consumers deliver without a limit on
//! attempts: the parser dead-letters a batch once its attempts pass the
//! ingest server's maximum, as it does with the embedded queue.
//!
//! **Durability.** A publish is acknowledged once the JetStream server has
//! written it to its file store. By default NATS does not fsync each write
//! (it syncs every two minutes), so a record acked to a producer survives the
//! crash of any Tributary process and of the NATS process, but not a power
//! cut of the NATS host in that interval; run NATS with `sync_interval:
//! always` or as a replicated cluster for that.

use std::{collections::BTreeMap, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, Context,
        consumer::{AckPolicy, DeliverPolicy, pull},
        message::PublishMessage,
        stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType},
    },
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream::SelectAll};
use prost::Message as _;
use xxhash_rust::xxh3::Xxh3;

use super::{
    Batch, GroupInfo, Message, Published, Queue, QueueError, SubscribeOptions, Subscription,
    nack_backoff,
};
use crate::{
    backoff::Backoff,
    kind::{self, KindSet},
    proto::{Record, RecordBatch, RecordKind},
    wire,
};

const RECEIVED_AT: &str = "Tributary-Received-At";
const TRACEPARENT: &str = "traceparent";

/// Messages each subscriber's consumers ask for at a time. Pulled messages
/// wait in the client until the subscriber takes them, with their ack
/// deadline running, so the prefetch stays small: a few batches each.
const PREFETCH_MESSAGES: usize = 16;

/// Room left under `max_payload` for headers and protobuf framing.
const PAYLOAD_SLACK: usize = 4 << 10;

/// How long `open` keeps trying to reach a NATS server that is not up yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Messages a consumer may have delivered and unacked, across its
/// subscribers. Each is a batch of records; the ingest servers bound what one
/// subscriber holds far below this.
const MAX_ACK_PENDING: i64 = 20_000;

/// Stream settings read from the URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The server address list, as async-nats takes it.
    pub servers: String,
    /// The stream name; subjects are `<stream>.records.<kind>`.
    pub stream: String,
    /// How long the stream keeps a message.
    pub max_age: Duration,
    /// How long a message id is remembered for dedupe.
    pub duplicate_window: Duration,
    /// How long a group's consumer may have no subscriber before JetStream
    /// deletes it (`inactive_threshold`).
    pub group_ttl: Duration,
}

impl Settings {
    /// Parses `nats://HOST:PORT[,HOST:PORT…][?stream=NAME&max_age=S&duplicate_window=S]`.
    pub fn parse(url: &str) -> Result<Self, QueueError> {
        let bad = |reason: String| QueueError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (servers, query) = url.split_once('?').unwrap_or((url, ""));
        if !servers.starts_with("nats://") || servers.len() == "nats://".len() {
            return Err(bad("expected nats://HOST:PORT".into()));
        }
        let mut settings = Settings {
            servers: servers.to_owned(),
            stream: "TRIBUTARY".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            group_ttl: Duration::from_secs(7 * 24 * 3600),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("{pair:?} is not KEY=VALUE")))?;
            let seconds = || {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| bad(format!("{key} must be a positive number of seconds")))
            };
            match key {
                "stream" => {
                    let valid = !value.is_empty()
                        && value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if !valid {
                        return Err(bad(format!(
                            "stream name {value:?} must be letters, digits, `_` or `-`"
                        )));
                    }
                    settings.stream = value.to_owned();
                }
                "max_age" => settings.max_age = seconds()?,
                "duplicate_window" => settings.duplicate_window = seconds()?,
                "group_ttl" => settings.group_ttl = seconds()?,
                other => {
                    return Err(bad(format!(
                        "unknown option {other:?} (known: stream, max_age, duplicate_window, group_ttl)"
                    )));
                }
            }
        }
        if settings.duplicate_window > settings.max_age {
            return Err(bad("duplicate_window cannot exceed max_age".into()));
        }
        Ok(settings)
    }

    fn subject(&self, kind: RecordKind) -> String {
        format!("{}.records.{}", self.stream, kind::name(kind))
    }
}

impl JetStreamQueue {
    async fn stream(&self) -> Result<jetstream::stream::Stream, QueueError> {
        self.js
            .get_stream(&self.settings.stream)
            .await
            .map_err(|e| QueueError::Unavailable(format!("opening stream: {e}")))
    }
}

/// The JetStream-backed queue.
pub struct JetStreamQueue {
    client: async_nats::Client,
    js: Context,
    settings: Settings,
}

impl JetStreamQueue {
    /// Connects, waiting up to a minute for a server that is starting, and
    /// creates the stream if it does not exist.
    pub async fn open(url: &str) -> Result<Self, QueueError> {
        let settings = Settings::parse(url)?;
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let mut backoff = Backoff::startup();
        let client = loop {
            let options = async_nats::ConnectOptions::new()
                .name("tributary")
                .connection_timeout(Duration::from_secs(5))
                .reconnect_delay_callback(reconnect_delay);
            match options.connect(settings.servers.as_str()).await {
                Ok(client) => break client,
                Err(e) => {
                    let wait = backoff.next_wait();
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(QueueError::Unavailable(format!(
                            "connecting to {}: {e}",
                            settings.servers
                        )));
                    }
                    tracing::warn!(error = %e, servers = %settings.servers, "NATS not ready; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(StreamConfig {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.records.>", settings.stream)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_age: settings.max_age,
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| QueueError::Unavailable(format!("creating stream: {e}")))?;
        Ok(Self {
            client,
            js,
            settings,
        })
    }

    /// Checks that `ack_id` is a reply subject of this queue's stream, so that
    /// a client cannot make a server publish to an arbitrary subject, and
    /// that it names one of `group`'s consumers, so that a group cannot ack
    /// another's deliveries.
    fn reply_subject(&self, group: &str, ack_id: &str) -> Result<String, QueueError> {
        let shown: String = ack_id.chars().take(120).collect();
        let clean = !ack_id.contains([' ', '\t', '\r', '\n', '*', '>']);
        let (stream, consumer) = match reply_parts(ack_id) {
            Some(parts) if clean => parts,
            _ => {
                return Err(QueueError::Invalid(format!(
                    "{shown:?} is not an ack id of this queue"
                )));
            }
        };
        if stream != self.settings.stream {
            return Err(QueueError::Invalid(format!(
                "{shown:?} is not an ack id of this queue"
            )));
        }
        let ours = kind::ALL
            .into_iter()
            .any(|k| consumer == consumer_name(group, k));
        if !ours {
            return Err(QueueError::Denied(format!(
                "ack id {shown:?} belongs to consumer {consumer:?}, not to group {group:?}"
            )));
        }
        Ok(ack_id.to_owned())
    }

    async fn reply(
        &self,
        group: &str,
        ack_id: &str,
        body: impl Into<Bytes>,
    ) -> Result<(), QueueError> {
        let subject = self.reply_subject(group, ack_id)?;
        self.client
            .publish(subject, body.into())
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))
    }
}

/// The wait before reconnect attempt `attempts` (1 for the first) after the
/// connection to NATS is lost. async-nats's own default doubles to 4 s, so
/// after an outage of a few seconds the servers came back up to 4 s after
/// NATS did; this caps the wait at half a second ([`Backoff::broker_reconnect`]).
/// The first attempt goes at once, as async-nats's does.
fn reconnect_delay(attempts: usize) -> Duration {
    let failures = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    if failures == 0 {
        Duration::ZERO
    } else {
        Backoff::broker_reconnect().wait_for(failures)
    }
}

/// The durable consumer of `group` for `kind`.
fn consumer_name(group: &str, kind: RecordKind) -> String {
    format!("{group}_{}", kind::name(kind))
}

/// The stream and consumer a JetStream reply subject names:
/// `$JS.ACK.<stream>.<consumer>.…` (9 tokens), or with a domain and account
/// hash after `$JS.ACK.` (11 or more).
pub fn reply_parts(ack_id: &str) -> Option<(&str, &str)> {
    let tokens: Vec<&str> = ack_id.split('.').collect();
    if tokens.first() != Some(&"$JS") || tokens.get(1) != Some(&"ACK") {
        return None;
    }
    let at = match tokens.len() {
        9 => 2,
        n if n >= 11 => 4,
        _ => return None,
    };
    Some((tokens.get(at)?, tokens.get(at + 1)?))
}

/// The delivery count carried in a JetStream reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or
/// with a domain and account hash after `$JS.ACK.` (11 or more tokens).
/// async-nats parses this too, but only for messages it built itself.
pub fn delivered(ack_id: &str) -> Option<u32> {
    let tokens: Vec<&str> = ack_id.split('.').collect();
    let index = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return None,
    };
    tokens.get(index)?.parse().ok()
}

/// The message id of a chunk: its kind, size and a hash of its keys.
fn message_id(kind: RecordKind, records: &[Record]) -> String {
    let mut hash = Xxh3::new();
    for record in records {
        hash.update(record.source.as_bytes());
        hash.update(&[0]);
        hash.update(&record.seq.to_le_bytes());
    }
    format!(
        "{}-{}-{:016x}",
        kind::name(kind),
        records.len(),
        hash.digest()
    )
}

/// Splits records into runs whose encoding stays under `limit` bytes; a
/// single record larger than that still gets a run of its own (the ingest
/// server caps records far below any NATS payload limit).
fn chunks(records: Vec<Record>, limit: usize) -> Vec<Vec<Record>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for record in records {
        let len = record.encoded_len() + 8;
        if !current.is_empty() && size + len > limit {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(record);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[async_trait]
impl Queue for JetStreamQueue {
    fn backend(&self) -> &'static str {
        "jetstream"
    }

    async fn publish(&self, batches: Vec<Batch>) -> Result<Vec<Published>, QueueError> {
        let limit = self
            .client
            .server_info()
            .max_payload
            .saturating_sub(PAYLOAD_SLACK)
            .max(64 << 10);
        // Send every message first and await the acks together afterwards:
        // the server acks in pipeline, not one round trip per message.
        let mut pending = Vec::new();
        for (index, batch) in batches.into_iter().enumerate() {
            let subject = self.settings.subject(batch.kind);
            for records in chunks(batch.records, limit) {
                let count = records.len() as u32;
                let mut headers = HeaderMap::new();
                headers.insert(RECEIVED_AT, batch.received_at.to_string().as_str());
                if let Some(tp) = &batch.traceparent {
                    headers.insert(TRACEPARENT, tp.as_str());
                }
                // `headers` replaces the map, so the id goes on after it.
                let publish = PublishMessage::build()
                    .headers(headers)
                    .message_id(message_id(batch.kind, &records))
                    .payload(RecordBatch { records }.encode_to_vec().into());
                let ack = self
                    .js
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(|e| QueueError::Unavailable(format!("publishing: {e}")))?;
                pending.push((index, count, ack));
            }
        }
        let mut outcomes: BTreeMap<usize, Published> = BTreeMap::new();
        let acks = futures::future::join_all(
            pending
                .into_iter()
                .map(|(index, count, ack)| async move { (index, count, ack.await) }),
        )
        .await;
        for (index, count, ack) in acks {
            let ack = ack.map_err(|e| QueueError::Unavailable(format!("publish ack: {e}")))?;
            let outcome = outcomes.entry(index).or_default();
            if ack.duplicate {
                outcome.duplicates += count;
            } else {
                outcome.accepted += count;
            }
        }
        Ok(outcomes.into_values().collect())
    }

    async fn lag(&self, group: &str) -> Result<u64, QueueError> {
        let stream = self.stream().await?;
        // A group is one durable consumer per kind (see `subscribe`); those
        // not created yet have no lag.
        let mut lag = 0;
        for kind in kind::ALL {
            let name = consumer_name(group, kind);
            if let Ok(info) = stream.consumer_info(&name).await {
                lag += info.num_pending + info.num_ack_pending as u64;
            }
        }
        Ok(lag)
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, QueueError> {
        let group = &options.group;
        if group.is_empty()
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(QueueError::Invalid(format!(
                "consumer group {group:?} must be letters, digits, `_` or `-`"
            )));
        }
        let stream = self.stream().await?;
        let mut messages = SelectAll::new();
        for kind in options.kinds.kinds() {
            let name = consumer_name(group, kind);
            let config = pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: self.settings.subject(kind),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_deadline,
                max_deliver: -1,
                max_ack_pending: MAX_ACK_PENDING,
                // An idle group expires, as the embedded queue's does.
                inactive_threshold: self.settings.group_ttl,
                ..Default::default()
            };
            // Creating with an existing name updates the editable fields
            // (the ack deadline), so the newest subscriber's choice holds.
            let consumer = stream
                .create_consumer(config)
                .await
                .map_err(|e| QueueError::Unavailable(format!("creating consumer {name}: {e}")))?;
            let pulled = consumer
                .stream()
                .max_messages_per_batch(PREFETCH_MESSAGES)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| QueueError::Unavailable(format!("pulling from {name}: {e}")))?;
            messages.push(pulled.map(move |m| (kind, m)));
        }
        Ok(Box::new(JetStreamSubscription { messages }))
    }

    async fn ack(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        self.reply(group, ack_id, "+ACK").await
    }

    async fn nack(&self, group: &str, ack_id: &str, _error: &str) -> Result<(), QueueError> {
        let attempt = delivered(ack_id).unwrap_or(1);
        let delay = nack_backoff(attempt).as_nanos();
        self.reply(group, ack_id, format!("-NAK {{\"delay\":{delay}}}"))
            .await
    }

    async fn extend(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        self.reply(group, ack_id, "+WPI").await
    }

    /// JetStream counts every delivery, so this is a plain nack without
    /// delay: the message goes to another subscriber now rather than after
    /// `ack_wait`.
    async fn abandon(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        self.reply(group, ack_id, "-NAK").await
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>, QueueError> {
        let stream = self.stream().await?;
        let mut names = stream.consumer_names();
        // Per group: its kinds, waiting pulls and lag.
        let mut groups: BTreeMap<String, (Vec<RecordKind>, usize, u64)> = BTreeMap::new();
        while let Some(name) = names.next().await {
            let name =
                name.map_err(|e| QueueError::Unavailable(format!("listing consumers: {e}")))?;
            let Some((group, kind)) = kind::ALL.into_iter().find_map(|k| {
                name.strip_suffix(&format!("_{}", kind::name(k)))
                    .map(|g| (g.to_owned(), k))
            }) else {
                continue;
            };
            let info = stream
                .consumer_info(&name)
                .await
                .map_err(|e| QueueError::Unavailable(format!("reading consumer {name}: {e}")))?;
            let entry = groups.entry(group).or_default();
            entry.0.push(kind);
            entry.1 += info.num_waiting;
            entry.2 += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(groups
            .into_iter()
            .map(|(name, (kinds, members, lag))| GroupInfo {
                name,
                kinds: KindSet::of(kinds),
                members,
                lag,
                idle: Duration::ZERO,
            })
            .collect())
    }

    async fn delete_group(&self, group: &str) -> Result<Option<u64>, QueueError> {
        let stream = self.stream().await?;
        let mut found = None;
        for kind in kind::ALL {
            let name = consumer_name(group, kind);
            let Ok(info) = stream.consumer_info(&name).await else {
                continue;
            };
            let lost = info.num_pending + info.num_ack_pending as u64;
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| QueueError::Unavailable(format!("deleting consumer {name}: {e}")))?;
            *found.get_or_insert(0) += lost;
        }
        Ok(found)
    }

    fn healthy(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn close(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::debug!(error = %e, "flushing NATS on close");
        }
    }
}

struct JetStreamSubscription<S> {
    messages: SelectAll<S>,
}

#[async_trait]
impl<S> Subscription for JetStreamSubscription<S>
where
    S: futures::Stream<Item = (RecordKind, Result<jetstream::Message, pull::MessagesError>)>
        + Send
        + Unpin,
{
    async fn next(&mut self) -> Result<Message, QueueError> {
        loop {
            let Some((kind, pulled)) = self.messages.next().await else {
                return Err(QueueError::Unavailable("the subscription ended".into()));
            };
            let message = match pulled {
                Ok(message) => message,
                // Missed heartbeats and the like: the pull stream carries on
                // and reconnects by itself.
                Err(e) if !matches!(e.kind(), pull::MessagesErrorKind::ConsumerDeleted) => {
                    tracing::debug!(error = %e, "JetStream pull hiccup");
                    continue;
                }
                Err(e) => return Err(QueueError::Unavailable(e.to_string())),
            };
            let Some(ack_id) = message.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let headers = message.headers.as_ref();
            let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.to_string());
            let records = match wire::split(message.payload.clone()) {
                Ok(records) => records,
                Err(e) => {
                    // Not ours to parse: someone published to our subjects.
                    // Ack it away rather than redeliver it forever.
                    tracing::warn!(error = %e, subject = %message.subject, "undecodable message acked away");
                    let _ = message.ack().await;
                    continue;
                }
            };
            return Ok(Message {
                attempt: delivered(&ack_id).unwrap_or(1),
                ack_id,
                kind,
                records,
                received_at: header(RECEIVED_AT)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_default(),
                traceparent: header(TRACEPARENT),
            });
        }
    }
}

#[cfg(test)]
mod tests;
