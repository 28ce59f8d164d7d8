//! The embedded queue: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a publish is acknowledged only after its transaction is on disk and
//! survives a `kill -9` (and, with FULL, a power cut).
//!
//! The file holds the message log, each consumer group's kinds and acks, the
//! failures charged to deliveries, each lane's high-water mark of delivered
//! ids, and the per-source ranges of keys already seen (the dedupe index).
//! Who holds what right now lives in memory, in the [`ledger`], which also
//! argues the delivery promises; this file is its I/O: it persists what the
//! ledger says must be durable, waiting for it where a delivery depends on
//! it.
//!
//! One writer task owns the SQLite connection and commits whatever has queued
//! up since its last commit in one transaction (group commit), so concurrent
//! publishers share the cost of a sync.
//!
//! **Retention and expiry** (URL options, see [`Settings`]): messages older
//! than `max_age`, or the oldest beyond `max_bytes`, are dropped; a group's
//! lane of a kind with no live subscriber for `group_ttl` expires. What a
//! policy drops that a group had not acked is logged per group and counted
//! in `tributary_queue_dropped_messages_total{group,reason}`.

mod ack_id;
mod dedupe;
mod ledger;

pub use self::ack_id::AckId;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message as _;
use sqlx::{Connection, Row, SqliteConnection, SqlitePool, sqlite::SqlitePoolOptions};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use self::{
    dedupe::{Added, Dedupe},
    ledger::{Change, Ledger, Loaded, MemberId, Meta, Outcome},
};
use super::{
    Batch, GroupInfo, Message, Published, Queue, QueueError, SubscribeOptions, Subscription,
};
use crate::{
    clock,
    kind::KindSet,
    metrics,
    proto::{RecordBatch, RecordKind},
    wire,
};

/// Bodies of retained messages are kept in memory up to this many bytes, so
/// that delivery does not read back what was just written. Beyond it, bodies
/// are read from the file on delivery and memory stays bounded.
///
/// 16 MiB holds some 200,000 small records: more than every parser's
/// credit, so groups that keep up never read back. A larger cache only
/// fills with backlog while producers outrun the store; in the pipeline
/// benchmark 64 MiB raised the peak RSS by about 45 MiB and gave no
/// measurable rate (docs/benchmarks.md).
const BODY_CACHE_BYTES: usize = 16 << 20;

/// How often in-flight deadlines and nack back-offs are checked. Deadlines
/// are seconds long, so a 20 ms sweep is precise enough and costs nothing
/// when little is in flight.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

/// How often retention and group expiry run: their limits are hours and
/// gigabytes, so once a second is plenty.
const RETAIN_EVERY: Duration = Duration::from_secs(1);

/// How often (at most) sources silent past the dedupe window are
/// forgotten; a quarter of the window when that is shorter.
const DEDUPE_EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// The most operations one transaction takes, so that a flood of publishes
/// still gets acknowledged in steady steps.
const MAX_OPS_PER_COMMIT: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    records INTEGER NOT NULL,
    traceparent TEXT,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    kinds INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (
    grp TEXT NOT NULL,
    msg_id INTEGER NOT NULL,
    PRIMARY KEY (grp, msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS acks_by_msg ON acks (msg_id);
CREATE TABLE IF NOT EXISTS attempts (
    grp TEXT NOT NULL,
    msg_id INTEGER NOT NULL,
    nacks INTEGER NOT NULL,
    strikes INTEGER NOT NULL,
    alone INTEGER NOT NULL,
    PRIMARY KEY (grp, msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attempts_by_msg ON attempts (msg_id);
CREATE TABLE IF NOT EXISTS marks (
    grp TEXT NOT NULL,
    kind INTEGER NOT NULL,
    mark INTEGER NOT NULL,
    PRIMARY KEY (grp, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY,
    ranges BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    source TEXT NOT NULL,
    start INTEGER NOT NULL,
    end_ INTEGER NOT NULL,
    touched INTEGER NOT NULL,
    PRIMARY KEY (source, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Retention and expiry of the embedded queue, from its URL:
/// `embedded[:PATH][?max_age=SECONDS&max_bytes=BYTES&group_ttl=SECONDS&dedupe_window=SECONDS&cache_bytes=BYTES]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The queue file.
    pub path: PathBuf,
    /// Messages older than this are dropped (default 7 days, as JetStream's
    /// stream here).
    pub max_age: Duration,
    /// Past this many bytes of bodies, the oldest messages are dropped
    /// (default 8 GiB).
    pub max_bytes: u64,
    /// A group's lane of a kind with no live subscriber this long expires
    /// (default 7 days: a group idle as long as the retention has lost its
    /// backlog to age anyway).
    pub group_ttl: Duration,
    /// Bytes of message bodies kept in memory for delivery (default 16
    /// MiB); the rest are read back from the file.
    pub cache_bytes: usize,
    /// A source silent this long has its dedupe keys forgotten (default 7
    /// days; see [`dedupe`] for the rule).
    pub dedupe_window: Duration,
}

impl Settings {
    /// The defaults for a queue file at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 8 << 30,
            group_ttl: Duration::from_secs(7 * 24 * 3600),
            cache_bytes: BODY_CACHE_BYTES,
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Parses `embedded[:PATH][?OPTIONS]`; the file defaults to
    /// `data_dir/queue.db`.
    pub fn parse(url: &str, data_dir: &Path) -> Result<Self, QueueError> {
        let bad = |reason: String| QueueError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let path = match base.split_once(':') {
            None if base == "embedded" => data_dir.join("queue.db"),
            Some(("embedded", path)) if !path.is_empty() => PathBuf::from(path),
            _ => {
                return Err(bad(
                    "expected `embedded`, `embedded:PATH` or `nats://HOST:PORT`".into(),
                ));
            }
        };
        let mut settings = Self::new(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("{pair:?} is not KEY=VALUE")))?;
            let number = || {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("{key} must be a positive whole number")))
            };
            match key {
                "max_age" => settings.max_age = Duration::from_secs(number()?),
                "max_bytes" => settings.max_bytes = number()?,
                "group_ttl" => settings.group_ttl = Duration::from_secs(number()?),
                "dedupe_window" => settings.dedupe_window = Duration::from_secs(number()?),
                "cache_bytes" => {
                    settings.cache_bytes = usize::try_from(number()?).unwrap_or(usize::MAX);
                }
                other => {
                    return Err(bad(format!(
                        "unknown option {other:?} (known: max_age, max_bytes, group_ttl, dedupe_window, cache_bytes)"
                    )));
                }
            }
        }
        Ok(settings)
    }
}

/// The embedded, durable queue. Cheap to share: all handles of one process
/// must share one instance, since the file has a single writer.
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Woken when a message becomes deliverable.
    wake: Notify,
    writer: mpsc::UnboundedSender<Write>,
    reader: SqlitePool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// A random number made with the file: ack ids name it, so an id from
    /// another queue file is refused.
    store_id: u64,
    settings: Settings,
}

struct State {
    ledger: Ledger,
    closed: bool,
}

enum Write {
    Publish {
        batches: Vec<Batch>,
        reply: oneshot::Sender<Result<Vec<Published>, QueueError>>,
    },
    Change(Change),
    /// Changes a delivery waits for.
    Durable {
        changes: Vec<Change>,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue file at `path`, with the
    /// default retention.
    pub async fn open(path: &Path) -> Result<Self, QueueError> {
        Self::open_with(Settings::new(path.to_owned())).await
    }

    /// Opens (creating if needed) the queue file `settings` name.
    pub async fn open_with(settings: Settings) -> Result<Self, QueueError> {
        let path = &settings.path;
        let options = crate::sqlite::options(path).map_err(|e| {
            QueueError::Unavailable(format!("cannot create {}: {e}", path.display()))
        })?;
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(unavailable)?;
        sqlx::raw_sql(SCHEMA)
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        let store_id = store_id(&mut conn).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;

        let (ledger, dedupe, changes) = load(&mut conn, settings.cache_bytes).await?;
        let (writer, rx) = mpsc::unbounded_channel();
        for change in changes {
            // Strikes of deliveries that were out alone when the process
            // died, and messages no group wanted any more.
            let _ = writer.send(Write::Change(change));
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                ledger,
                closed: false,
            }),
            wake: Notify::new(),
            writer,
            reader,
            tasks: Mutex::new(Vec::new()),
            store_id,
            settings,
        });
        let write_task = tokio::spawn(write_loop(inner.clone(), conn, rx, dedupe));
        let sweep_task = tokio::spawn(sweep_loop(Arc::downgrade(&inner)));
        inner.tasks().extend([write_task, sweep_task]);
        Ok(Self { inner })
    }

    /// Checks that `ack_id` is one of this queue's and names `group`.
    fn own(&self, group: &str, ack_id: &str) -> Result<u64, QueueError> {
        let AckId {
            store,
            id,
            group: named,
        } = AckId::parse(ack_id)?;
        if store != self.inner.store_id {
            return Err(QueueError::Invalid(format!(
                "ack id {ack_id:?} is not from this queue"
            )));
        }
        if named != group {
            return Err(QueueError::Denied(format!(
                "ack id {ack_id:?} belongs to consumer group {named:?}, not to {group:?}"
            )));
        }
        Ok(id)
    }

    /// Applies `op` to the ledger under the lock and queues what it
    /// changed for the writer.
    fn apply<T>(
        &self,
        op: impl FnOnce(&mut Ledger, &mut Vec<Change>) -> T,
    ) -> Result<T, QueueError> {
        let mut changes = Vec::new();
        let out = {
            let mut state = self.inner.state();
            if state.closed {
                return Err(closed());
            }
            op(&mut state.ledger, &mut changes)
        };
        self.inner.persist(changes);
        Ok(out)
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, batches: Vec<Batch>) -> Result<Vec<Published>, QueueError> {
        let (reply, done) = oneshot::channel();
        self.inner
            .writer
            .send(Write::Publish { batches, reply })
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, QueueError> {
        if options.group.is_empty() {
            return Err(QueueError::Invalid(
                "the consumer group name is empty".into(),
            ));
        }
        let member =
            self.apply(|ledger, changes| ledger.subscribe(&options.group, options.kinds, changes))?;
        // Redeliveries already pending may be for this subscriber.
        self.inner.wake.notify_waiters();
        Ok(Box::new(EmbeddedSubscription {
            inner: self.inner.clone(),
            group: options.group,
            member,
            hold: options.ack_deadline,
        }))
    }

    async fn ack(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        let id = self.own(group, ack_id)?;
        self.apply(|ledger, changes| ledger.ack(group, id, changes))?;
        Ok(())
    }

    async fn nack(&self, group: &str, ack_id: &str, _error: &str) -> Result<(), QueueError> {
        let id = self.own(group, ack_id)?;
        self.apply(|ledger, changes| {
            ledger.nack(group, id, Instant::now(), super::nack_backoff, changes)
        })?;
        Ok(())
    }

    async fn extend(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        let id = self.own(group, ack_id)?;
        self.apply(|ledger, _| ledger.extend(group, id, Instant::now()))?;
        Ok(())
    }

    async fn abandon(&self, group: &str, ack_id: &str) -> Result<(), QueueError> {
        let id = self.own(group, ack_id)?;
        if self.apply(|ledger, changes| ledger.abandon(group, id, changes))? == Outcome::Done {
            self.inner.wake.notify_waiters();
        }
        Ok(())
    }

    async fn lag(&self, group: &str) -> Result<u64, QueueError> {
        Ok(self.inner.state().ledger.lag(group))
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>, QueueError> {
        Ok(self.inner.state().ledger.groups(Instant::now()))
    }

    async fn delete_group(&self, group: &str) -> Result<Option<u64>, QueueError> {
        let dropped = self.apply(|ledger, changes| ledger.delete_group(group, changes))?;
        if let Some(lost) = dropped {
            tracing::warn!(%group, lost, "consumer group deleted by an operator");
            metrics::counter!(metrics::QUEUE_DROPPED, "group" => group.to_owned(), "reason" => "deleted")
                .increment(lost);
        }
        Ok(dropped)
    }

    fn healthy(&self) -> bool {
        !self.inner.writer.is_closed() && !self.inner.state().closed
    }

    async fn close(&self) {
        self.inner.state().closed = true;
        self.inner.wake.notify_waiters();
        let (reply, done) = oneshot::channel();
        if self.inner.writer.send(Write::Close { reply }).is_ok() {
            let _ = done.await;
        }
        for task in self.inner.tasks().drain(..) {
            task.abort();
        }
    }
}

impl Drop for EmbeddedQueue {
    fn drop(&mut self) {
        for task in self.inner.tasks().drain(..) {
            task.abort();
        }
    }
}

struct EmbeddedSubscription {
    inner: Arc<Inner>,
    group: String,
    member: MemberId,
    hold: Duration,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Result<Message, QueueError> {
        loop {
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            // Registered before looking, so a wake between the look and the
            // wait is not lost.
            notified.as_mut().enable();
            let mut changes = Vec::new();
            let claim = {
                let mut state = self.inner.state();
                if state.closed {
                    return Err(closed());
                }
                if !state.ledger.has_group(&self.group) {
                    return Err(QueueError::Unavailable(format!(
                        "consumer group {:?} was deleted",
                        self.group
                    )));
                }
                state.ledger.claim(
                    &self.group,
                    self.member,
                    Instant::now(),
                    self.hold,
                    &mut changes,
                )
            };
            let Some(claim) = claim else {
                self.inner.persist(changes);
                notified.await;
                continue;
            };
            let id = claim.id;
            if claim.alone {
                tracing::debug!(group = %self.group, id, attempt = claim.attempt, "a suspect goes out alone");
            }
            let sent = match self.inner.persist_before_delivery(changes).await {
                Ok(()) => self.inner.load(&self.group, claim).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(Some(message)) => return Ok(message),
                // Dropped by retention meanwhile.
                Ok(None) => continue,
                Err(e) => {
                    self.inner.state().ledger.unclaim(&self.group, id);
                    return Err(e);
                }
            }
        }
    }
}

impl Drop for EmbeddedSubscription {
    /// What the subscriber held goes back at once, not at its deadline.
    fn drop(&mut self) {
        let mut changes = Vec::new();
        {
            let mut state = self.inner.state();
            state
                .ledger
                .leave(&self.group, self.member, Instant::now(), &mut changes);
        }
        self.inner.persist(changes);
        self.inner.wake.notify_waiters();
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic under this lock would be a bug in the ledger, which has no
        // panicking paths; recover the state rather than fail every call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues changes for the writer without waiting: losing them in a crash
    /// costs a redelivery, never a record.
    fn persist(&self, changes: Vec<Change>) {
        for change in changes {
            let _ = self.writer.send(Write::Change(change));
        }
    }

    /// Persists `changes`, waiting for those a delivery depends on (a lane's
    /// mark, a suspect going out alone) to be durable.
    async fn persist_before_delivery(&self, changes: Vec<Change>) -> Result<(), QueueError> {
        let (durable, later): (Vec<Change>, Vec<Change>) =
            changes.into_iter().partition(Change::before_delivery);
        self.persist(later);
        if durable.is_empty() {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        self.writer
            .send(Write::Durable {
                changes: durable,
                reply,
            })
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    /// Decodes a claimed message, reading its body from the file when it is
    /// not cached. `None` when the message was deleted meanwhile.
    async fn load(&self, group: &str, claim: ledger::Claim) -> Result<Option<Message>, QueueError> {
        let body = match claim.meta.body {
            Some(body) => body,
            None => {
                let row = sqlx::query("SELECT body FROM messages WHERE id = ?")
                    .bind(claim.id as i64)
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(unavailable)?;
                match row {
                    Some(row) => Bytes::from(row.get::<Vec<u8>, _>(0)),
                    None => return Ok(None),
                }
            }
        };
        let records = wire::split(body).map_err(|e| {
            QueueError::Unavailable(format!("message {} is corrupt: {e}", claim.id))
        })?;
        Ok(Some(Message {
            ack_id: AckId {
                store: self.store_id,
                id: claim.id,
                group,
            }
            .to_string(),
            kind: claim.meta.kind,
            records,
            attempt: claim.attempt,
            received_at: claim.meta.received_at,
            traceparent: claim.meta.traceparent.map(|t| t.to_string()),
        }))
    }
}

/// Moves deliveries whose deadline or back-off has passed back to ready,
/// and applies retention and group expiry.
async fn sweep_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_retain = Instant::now();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut changes = Vec::new();
        let woke = inner.state().ledger.sweep(now, &mut changes);
        if now.duration_since(last_retain) >= RETAIN_EVERY {
            last_retain = now;
            retain(&inner, now, &mut changes);
        }
        inner.persist(changes);
        if woke {
            inner.wake.notify_waiters();
        }
    }
}

/// Applies retention and expiry; logs and counts what they dropped.
fn retain(inner: &Inner, now: Instant, changes: &mut Vec<Change>) {
    let settings = &inner.settings;
    let (dropped, expired) = {
        let mut state = inner.state();
        let dropped = state.ledger.retain(
            clock::now_micros(),
            settings.max_age,
            settings.max_bytes,
            changes,
        );
        let expired = state.ledger.expire(now, settings.group_ttl, changes);
        let (messages, bytes, cached) = state.ledger.size();
        metrics::gauge!(metrics::QUEUE_RETAINED_MESSAGES).set(messages as f64);
        metrics::gauge!(metrics::QUEUE_RETAINED_BYTES).set(bytes as f64);
        metrics::gauge!(metrics::QUEUE_CACHED_BYTES).set(cached as f64);
        (dropped, expired)
    };
    let mut lost: HashMap<(String, &'static str), u64> = HashMap::new();
    if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
        tracing::debug!(
            first = first.id,
            last = last.id,
            "retention dropped messages"
        );
    }
    for drop in dropped {
        for group in drop.groups {
            *lost.entry((group, drop.reason.as_str())).or_default() += 1;
        }
    }
    for ((group, reason), lost) in lost {
        tracing::warn!(%group, lost, reason, "retention dropped messages the group had not acked");
        metrics::counter!(metrics::QUEUE_DROPPED, "group" => group, "reason" => reason)
            .increment(lost);
    }
    for (group, kinds, lost) in expired {
        let kinds: Vec<&str> = kinds.into_iter().map(crate::kind::name).collect();
        tracing::warn!(%group, ?kinds, lost, ttl_secs = settings.group_ttl.as_secs(), "idle consumer group lanes expired");
        metrics::counter!(metrics::QUEUE_GROUPS_EXPIRED).increment(1);
        metrics::counter!(metrics::QUEUE_DROPPED, "group" => group, "reason" => "expired")
            .increment(lost);
    }
}

/// Commits queued writes in groups until the queue closes.
async fn write_loop(
    inner: Arc<Inner>,
    mut conn: SqliteConnection,
    mut rx: mpsc::UnboundedReceiver<Write>,
    mut dedupe: Dedupe,
) {
    let mut ops = Vec::new();
    let mut last_expiry = Instant::now();
    while let Some(first) = rx.recv().await {
        let window = inner.settings.dedupe_window;
        if last_expiry.elapsed() >= (window / 4).min(DEDUPE_EXPIRY_EVERY) {
            last_expiry = Instant::now();
            let horizon = clock::now_micros()
                .saturating_sub(i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
            match dedupe.expire(&mut conn, horizon).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    sources = n,
                    "forgot the keys of sources silent past the dedupe window"
                ),
                Err(e) => tracing::warn!(error = %e, "could not expire dedupe keys; will retry"),
            }
        }
        ops.push(first);
        while ops.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &mut ops, &mut dedupe).await;
        let mut close = None;
        match result {
            Ok(mut committed) => {
                {
                    let mut state = inner.state();
                    for (id, meta) in committed.messages {
                        state.ledger.append(id, meta);
                    }
                }
                inner.wake.notify_waiters();
                for (index, op) in ops.drain(..).enumerate() {
                    match op {
                        Write::Publish { reply, .. } => {
                            let outcome = committed.outcomes.remove(&index).unwrap_or_default();
                            let _ = reply.send(Ok(outcome));
                        }
                        Write::Durable { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                        Write::Close { reply } => close = Some(reply),
                        Write::Change(_) => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue commit failed; publishers will retry");
                for op in ops.drain(..) {
                    match op {
                        Write::Publish { reply, .. } => {
                            let _ = reply.send(Err(QueueError::Unavailable(e.to_string())));
                        }
                        Write::Durable { reply, .. } => {
                            let _ = reply.send(Err(QueueError::Unavailable(e.to_string())));
                        }
                        Write::Close { reply } => close = Some(reply),
                        // Lost acks only cause redeliveries, which storage
                        // absorbs; lost deletes are redone at start-up; lost
                        // attempt counts only make a delivery look younger.
                        Write::Change(_) => {}
                    }
                }
            }
        }
        if let Some(reply) = close {
            let _ = conn.close().await;
            let _ = reply.send(());
            return;
        }
    }
}

/// What one transaction made durable.
struct Committed {
    messages: Vec<(u64, Meta)>,
    /// Outcomes of each publish, by its index among the committed writes.
    outcomes: HashMap<usize, Vec<Published>>,
}

/// Commits `ops` in one transaction. The dedupe index takes the new keys
/// at once and gives them back if the transaction fails.
async fn commit(
    conn: &mut SqliteConnection,
    ops: &mut [Write],
    dedupe: &mut Dedupe,
) -> Result<Committed, sqlx::Error> {
    let mut added = Added::default();
    match commit_with(conn, ops, dedupe, &mut added).await {
        Ok(committed) => Ok(committed),
        Err(e) => {
            dedupe.undo(added);
            Err(e)
        }
    }
}

async fn commit_with(
    conn: &mut SqliteConnection,
    ops: &mut [Write],
    dedupe: &mut Dedupe,
    added: &mut Added,
) -> Result<Committed, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut sets = SetChanges::default();
    let mut committed = Committed {
        messages: Vec::new(),
        outcomes: HashMap::new(),
    };
    for (index, op) in ops.iter_mut().enumerate() {
        match op {
            Write::Publish { batches, .. } => {
                let mut outcomes = Vec::with_capacity(batches.len());
                for batch in batches.drain(..) {
                    let mut published = Published::default();
                    let mut fresh = Vec::with_capacity(batch.records.len());
                    for record in batch.records {
                        if dedupe.add(&record.source, record.seq, added) {
                            published.accepted += 1;
                            fresh.push(record);
                        } else {
                            published.duplicates += 1;
                        }
                    }
                    if !fresh.is_empty() {
                        let body = Bytes::from(RecordBatch { records: fresh }.encode_to_vec());
                        let result = sqlx::query(
                            "INSERT INTO messages (kind, received_at, records, traceparent, body) VALUES (?, ?, ?, ?, ?)",
                        )
                        .bind(batch.kind as i32)
                        .bind(batch.received_at)
                        .bind(published.accepted as i64)
                        .bind(batch.traceparent.as_deref())
                        .bind(&*body)
                        .execute(&mut *tx)
                        .await?;
                        committed.messages.push((
                            result.last_insert_rowid() as u64,
                            Meta {
                                kind: batch.kind,
                                received_at: batch.received_at,
                                traceparent: batch.traceparent.map(Arc::from),
                                size: body.len(),
                                // The ledger keeps it only while its cache
                                // has room.
                                body: Some(body),
                            },
                        ));
                    }
                    outcomes.push(published);
                }
                committed.outcomes.insert(index, outcomes);
            }
            Write::Change(change) => sets.apply(&mut tx, change).await?,
            Write::Durable { changes, .. } => {
                for change in changes.iter() {
                    sets.apply(&mut tx, change).await?;
                }
            }
            Write::Close { .. } => {}
        }
    }
    sets.flush(&mut tx).await?;
    dedupe.persist(&mut tx, added, clock::now_micros()).await?;
    tx.commit().await?;
    Ok(committed)
}

/// The acks and deletes of one transaction, written set-wise: a few
/// statements per transaction rather than two or three per message. Each
/// statement is a round trip to the connection's thread, and under load
/// those round trips, not SQLite, were the writer's cost.
///
/// Other changes keep their order against these: [`SetChanges::apply`]
/// writes what it holds before any change it does not hold. Within the set,
/// acks are written before deletes, which is the only order the ledger
/// produces (a message is deleted once its last group acks it, never
/// acked after it is deleted).
#[derive(Default)]
struct SetChanges {
    /// Message ids acked, per group.
    acks: HashMap<String, Vec<u64>>,
    /// Messages no group wants any more.
    deletes: Vec<u64>,
}

impl SetChanges {
    async fn apply(
        &mut self,
        conn: &mut SqliteConnection,
        change: &Change,
    ) -> Result<(), sqlx::Error> {
        match change {
            Change::Ack { group, id } => self.acks.entry(group.clone()).or_default().push(*id),
            Change::Delete { id } => self.deletes.push(*id),
            other => {
                self.flush(conn).await?;
                apply_change(conn, other).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        for (group, ids) in self.acks.drain() {
            write_acks(conn, &group, &ids).await?;
        }
        if !self.deletes.is_empty() {
            write_deletes(conn, &self.deletes).await?;
            self.deletes.clear();
        }
        Ok(())
    }
}

/// Records that `group` acked the messages `ids`.
async fn write_acks(
    conn: &mut SqliteConnection,
    group: &str,
    ids: &[u64],
) -> Result<(), sqlx::Error> {
    let ids = json_ids(ids);
    sqlx::query("INSERT OR IGNORE INTO acks (grp, msg_id) SELECT ?1, value FROM json_each(?2)")
        .bind(group)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM attempts WHERE grp = ?1 AND msg_id IN (SELECT value FROM json_each(?2))",
    )
    .bind(group)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the messages `ids`, with their acks and attempts.
async fn write_deletes(conn: &mut SqliteConnection, ids: &[u64]) -> Result<(), sqlx::Error> {
    let ids = json_ids(ids);
    for sql in [
        "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM acks WHERE msg_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM attempts WHERE msg_id IN (SELECT value FROM json_each(?1))",
    ] {
        sqlx::query(sql).bind(&ids).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Message ids as a JSON array, for `json_each`: one bound text instead of
/// a statement whose text (and so its cache entry) follows the count.
fn json_ids(ids: &[u64]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(ids.len() * 8 + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "{}", *id as i64);
    }
    out.push(']');
    out
}

async fn apply_change(conn: &mut SqliteConnection, change: &Change) -> Result<(), sqlx::Error> {
    match change {
        Change::Group { name, kinds } => {
            sqlx::query(
                "INSERT INTO groups (name, kinds) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET kinds = excluded.kinds",
            )
            .bind(name)
            .bind(i64::from(kinds.bits()))
            .execute(&mut *conn)
            .await?;
        }
        Change::DropGroup { name } => {
            for sql in [
                "DELETE FROM groups WHERE name = ?",
                "DELETE FROM acks WHERE grp = ?",
                "DELETE FROM attempts WHERE grp = ?",
                "DELETE FROM marks WHERE grp = ?",
            ] {
                sqlx::query(sql).bind(name).execute(&mut *conn).await?;
            }
        }
        Change::DropLane { group, kind } => {
            for sql in [
                "DELETE FROM marks WHERE grp = ? AND kind = ?",
                "DELETE FROM acks WHERE grp = ? AND msg_id IN (SELECT id FROM messages WHERE kind = ?)",
                "DELETE FROM attempts WHERE grp = ? AND msg_id IN (SELECT id FROM messages WHERE kind = ?)",
            ] {
                sqlx::query(sql)
                    .bind(group)
                    .bind(*kind as i32)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Change::Ack { group, id } => write_acks(conn, group, &[*id]).await?,
        Change::Delete { id } => write_deletes(conn, &[*id]).await?,
        Change::Attempts {
            group,
            id,
            nacks,
            strikes,
            alone,
        } => {
            sqlx::query(
                "INSERT INTO attempts (grp, msg_id, nacks, strikes, alone) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (grp, msg_id) DO UPDATE SET nacks = excluded.nacks, strikes = excluded.strikes, alone = excluded.alone",
            )
            .bind(group)
            .bind(*id as i64)
            .bind(i64::from(*nacks))
            .bind(i64::from(*strikes))
            .bind(*alone)
            .execute(&mut *conn)
            .await?;
        }
        Change::Mark { group, kind, mark } => {
            sqlx::query(
                "INSERT INTO marks (grp, kind, mark) VALUES (?, ?, ?) \
                 ON CONFLICT (grp, kind) DO UPDATE SET mark = max(mark, excluded.mark)",
            )
            .bind(group)
            .bind(*kind as i32)
            .bind(*mark as i64)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// This file's random id, made on first open.
async fn store_id(conn: &mut SqliteConnection) -> Result<u64, QueueError> {
    let fresh = rand::random::<u64>() >> 1;
    sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)")
        .bind(fresh as i64)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    let id: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'store_id'")
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(id as u64)
}

/// Rebuilds the ledger and the dedupe index from the file. Also returns
/// the changes start-up itself makes: strikes for deliveries that were out
/// alone, and deletes of messages no group wants.
async fn load(
    conn: &mut SqliteConnection,
    cache_bytes: usize,
) -> Result<(Ledger, Dedupe, Vec<Change>), QueueError> {
    let mut ledger = Ledger::new(cache_bytes);
    let rows = sqlx::query(
        "SELECT id, kind, received_at, traceparent, length(body) FROM messages ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    for row in rows {
        let kind = RecordKind::try_from(row.get::<i32, _>(1)).unwrap_or(RecordKind::Unspecified);
        ledger.append(
            row.get::<i64, _>(0) as u64,
            Meta {
                kind,
                received_at: row.get(2),
                traceparent: row.get::<Option<String>, _>(3).map(Arc::from),
                body: None,
                size: row.get::<i64, _>(4).max(0) as usize,
            },
        );
    }
    let mut groups: HashMap<String, Loaded> = HashMap::new();
    for row in sqlx::query("SELECT name, kinds FROM groups")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
    {
        let kinds = KindSet::from_bits(row.get::<i64, _>(1) as u8);
        groups.entry(row.get(0)).or_default().kinds = Some(kinds);
    }
    for row in sqlx::query("SELECT grp, msg_id FROM acks")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
    {
        if let Some(g) = groups.get_mut(row.get::<&str, _>(0)) {
            g.acked.insert(row.get::<i64, _>(1) as u64);
        }
    }
    for row in sqlx::query("SELECT grp, kind, mark FROM marks")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
    {
        if let Some(g) = groups.get_mut(row.get::<&str, _>(0)) {
            g.marks
                .insert(row.get::<i32, _>(1), row.get::<i64, _>(2) as u64);
        }
    }
    for row in sqlx::query("SELECT grp, msg_id, nacks, strikes, alone FROM attempts")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
    {
        if let Some(g) = groups.get_mut(row.get::<&str, _>(0)) {
            let count = |i: usize| u32::try_from(row.get::<i64, _>(i)).unwrap_or(u32::MAX);
            g.attempts.insert(
                row.get::<i64, _>(1) as u64,
                (count(2), count(3), row.get::<bool, _>(4)),
            );
        }
    }
    let mut changes = Vec::new();
    for (name, loaded) in groups {
        changes.extend(ledger.restore(&name, loaded, Instant::now()));
    }
    let doomed = ledger.unwanted();
    ledger.forget(&doomed);
    changes.extend(doomed.into_iter().map(|id| Change::Delete { id }));
    let dedupe = Dedupe::load(conn).await.map_err(unavailable)?;
    Ok((ledger, dedupe, changes))
}

fn unavailable(e: sqlx::Error) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn closed() -> QueueError {
    QueueError::Unavailable("the queue is closed".into())
}

#[cfg(test)]
mod tests;
