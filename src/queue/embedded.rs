//! The embedded queue: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a publish is acknowledged only after its transaction is on disk and
//! survives a `kill -9` (and, with FULL, a power cut).
//!
//! The file holds the message log, each consumer group's acks and the
//! per-source ranges of keys already seen (the dedupe index). Delivery state
//! (what is in flight, deadlines, attempt counts) lives in memory: after a
//! restart every unacked message is delivered again, which idempotent storage
//! makes harmless, and attempt counts start over.
//!
//! One writer task owns the SQLite connection and commits whatever has queued
//! up since its last commit in one transaction (group commit), so concurrent
//! publishers share the cost of a sync.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use prost::Message as _;
use rangemap::RangeInclusiveSet;
use sqlx::{Connection, Row, SqliteConnection, SqlitePool, sqlite::SqlitePoolOptions};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use super::{Batch, Message, Published, Queue, QueueError, SubscribeOptions, Subscription};
use crate::{
    kind::KindSet,
    proto::{RecordBatch, RecordKind},
};

/// Bodies of retained messages are kept in memory up to this many bytes, so
/// that delivery does not read back what was just written. Beyond it, bodies
/// are read from the file on delivery and memory stays bounded.
const BODY_CACHE_BYTES: usize = 64 << 20;

/// How often in-flight deadlines and nack back-offs are checked. Deadlines
/// are seconds long, so a 20 ms sweep is precise enough and costs nothing
/// when little is in flight.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

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
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY,
    ranges BLOB NOT NULL
) WITHOUT ROWID;
";

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
}

#[derive(Default)]
struct State {
    /// Messages not yet acked by every group that wants them.
    log: BTreeMap<u64, Meta>,
    groups: HashMap<String, Group>,
    cached_bytes: usize,
    closed: bool,
}

struct Meta {
    kind: RecordKind,
    received_at: i64,
    traceparent: Option<Arc<str>>,
    body: Option<Arc<[u8]>>,
}

struct Group {
    kinds: KindSet,
    /// Log ids below the cursor are either pending or acked by this group.
    cursor: u64,
    /// Delivered at least once (or due for redelivery) and not acked.
    pending: BTreeMap<u64, Pending>,
    /// The pending ids that may be delivered now, lowest first.
    ready: BTreeSet<u64>,
    /// Acks at or above the cursor, loaded at start-up: skipped when the
    /// cursor reaches them.
    acked_ahead: HashSet<u64>,
}

struct Pending {
    attempt: u32,
    state: PendingState,
}

enum PendingState {
    Ready,
    InFlight { deadline: Instant, hold: Duration },
    Delayed { until: Instant },
}

enum Write {
    Publish {
        batches: Vec<Batch>,
        reply: oneshot::Sender<Result<Vec<Published>, QueueError>>,
    },
    Ack {
        group: String,
        id: u64,
    },
    Delete {
        id: u64,
    },
    Group {
        name: String,
        kinds: KindSet,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue file at `path`.
    pub async fn open(path: &Path) -> Result<Self, QueueError> {
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
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;

        let (state, dedupe, doomed) = load(&mut conn).await?;
        let (writer, rx) = mpsc::unbounded_channel();
        for id in doomed {
            // Acked by every group before the last stop but not yet deleted.
            let _ = writer.send(Write::Delete { id });
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            wake: Notify::new(),
            writer,
            reader,
            tasks: Mutex::new(Vec::new()),
        });
        let write_task = tokio::spawn(write_loop(inner.clone(), conn, rx, dedupe));
        let sweep_task = tokio::spawn(sweep_loop(Arc::downgrade(&inner)));
        inner.tasks().extend([write_task, sweep_task]);
        Ok(Self { inner })
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
        {
            let mut state = self.inner.state();
            if state.closed {
                return Err(closed());
            }
            let changed = match state.groups.get_mut(&options.group) {
                Some(group) if group.kinds == options.kinds => false,
                Some(group) => {
                    group.kinds = options.kinds;
                    true
                }
                None => {
                    state
                        .groups
                        .insert(options.group.clone(), Group::new(options.kinds));
                    true
                }
            };
            if changed {
                self.inner
                    .writer
                    .send(Write::Group {
                        name: options.group.clone(),
                        kinds: options.kinds,
                    })
                    .map_err(|_| closed())?;
            }
        }
        Ok(Box::new(EmbeddedSubscription {
            inner: self.inner.clone(),
            group: options.group,
            hold: options.ack_deadline,
        }))
    }

    async fn ack(&self, ack_id: &str) -> Result<(), QueueError> {
        let (id, group) = parse_ack_id(ack_id)?;
        let mut state = self.inner.state();
        let Some(g) = state.groups.get_mut(group) else {
            return Ok(());
        };
        if g.pending.remove(&id).is_none() {
            // Already acked, or acked before a restart: nothing to do.
            return Ok(());
        }
        g.ready.remove(&id);
        let _ = self.inner.writer.send(Write::Ack {
            group: group.to_owned(),
            id,
        });
        if state.done_by_all(id) {
            state.forget(id);
            let _ = self.inner.writer.send(Write::Delete { id });
        }
        Ok(())
    }

    async fn nack(&self, ack_id: &str, _error: &str) -> Result<(), QueueError> {
        let (id, group) = parse_ack_id(ack_id)?;
        let mut state = self.inner.state();
        if let Some(p) = state
            .groups
            .get_mut(group)
            .and_then(|g| g.pending.get_mut(&id))
            && matches!(p.state, PendingState::InFlight { .. })
        {
            p.state = PendingState::Delayed {
                until: Instant::now() + super::nack_backoff(p.attempt),
            };
        }
        Ok(())
    }

    async fn extend(&self, ack_id: &str) -> Result<(), QueueError> {
        let (id, group) = parse_ack_id(ack_id)?;
        let mut state = self.inner.state();
        if let Some(p) = state
            .groups
            .get_mut(group)
            .and_then(|g| g.pending.get_mut(&id))
            && let PendingState::InFlight { deadline, hold } = &mut p.state
        {
            *deadline = Instant::now() + *hold;
        }
        Ok(())
    }

    async fn lag(&self, group: &str) -> Result<u64, QueueError> {
        let state = self.inner.state();
        let Some(g) = state.groups.get(group) else {
            return Ok(0);
        };
        // Past the cursor: not yet handed out; below it: pending until acked.
        let ahead = state
            .log
            .range(g.cursor..)
            .filter(|(id, meta)| g.kinds.contains(meta.kind) && !g.acked_ahead.contains(id))
            .count();
        Ok((ahead + g.pending.len()) as u64)
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
            let claim = self.inner.claim(&self.group, self.hold)?;
            if let Some(claim) = claim {
                match self.inner.load(&self.group, claim).await? {
                    Some(message) => return Ok(message),
                    None => continue,
                }
            }
            notified.await;
        }
    }
}

/// A message taken for delivery, before its body is decoded.
struct Claim {
    id: u64,
    attempt: u32,
    kind: RecordKind,
    received_at: i64,
    traceparent: Option<Arc<str>>,
    body: Option<Arc<[u8]>>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("queue state lock is never poisoned: no panics under it")
    }

    fn tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().expect("task list lock is never poisoned")
    }

    /// Takes the next deliverable message of `group`: a redelivery first,
    /// then the next unseen message of the group's kinds.
    fn claim(&self, group: &str, hold: Duration) -> Result<Option<Claim>, QueueError> {
        let mut state = self.state();
        if state.closed {
            return Err(closed());
        }
        let State { log, groups, .. } = &mut *state;
        let g = groups
            .get_mut(group)
            .ok_or_else(|| QueueError::Invalid(format!("unknown consumer group {group:?}")))?;
        let id = match g.ready.pop_first() {
            Some(id) => id,
            None => {
                let next = log
                    .range(g.cursor..)
                    .find(|(id, meta)| g.kinds.contains(meta.kind) && !g.acked_ahead.contains(id))
                    .map(|(id, _)| *id);
                match next {
                    Some(id) => {
                        g.cursor = id + 1;
                        g.pending.insert(
                            id,
                            Pending {
                                attempt: 0,
                                state: PendingState::Ready,
                            },
                        );
                        id
                    }
                    None => {
                        if let Some((last, _)) = log.last_key_value() {
                            g.cursor = g.cursor.max(last + 1);
                        }
                        return Ok(None);
                    }
                }
            }
        };
        let pending = g
            .pending
            .get_mut(&id)
            .expect("every ready id is pending: both change under one lock");
        pending.attempt += 1;
        pending.state = PendingState::InFlight {
            deadline: Instant::now() + hold,
            hold,
        };
        let meta = log
            .get(&id)
            .expect("a pending message stays in the log until every group acks it");
        Ok(Some(Claim {
            id,
            attempt: pending.attempt,
            kind: meta.kind,
            received_at: meta.received_at,
            traceparent: meta.traceparent.clone(),
            body: meta.body.clone(),
        }))
    }

    /// Decodes a claimed message, reading its body from the file when it is
    /// not cached. `None` when the message was deleted meanwhile.
    async fn load(&self, group: &str, claim: Claim) -> Result<Option<Message>, QueueError> {
        let body = match claim.body {
            Some(body) => body,
            None => {
                let row = sqlx::query("SELECT body FROM messages WHERE id = ?")
                    .bind(claim.id as i64)
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(unavailable)?;
                match row {
                    Some(row) => Arc::from(row.get::<Vec<u8>, _>(0)),
                    None => return Ok(None),
                }
            }
        };
        let batch = RecordBatch::decode(&*body).map_err(|e| {
            QueueError::Unavailable(format!("message {} is corrupt: {e}", claim.id))
        })?;
        Ok(Some(Message {
            ack_id: format!("{}:{group}", claim.id),
            kind: claim.kind,
            records: batch.records,
            attempt: claim.attempt,
            received_at: claim.received_at,
            traceparent: claim.traceparent.map(|t| t.to_string()),
        }))
    }
}

impl State {
    /// Whether every group that wants message `id` has acked it.
    fn done_by_all(&self, id: u64) -> bool {
        let Some(meta) = self.log.get(&id) else {
            return false;
        };
        let mut wanted = false;
        for g in self.groups.values().filter(|g| g.kinds.contains(meta.kind)) {
            wanted = true;
            let acked =
                (id < g.cursor && !g.pending.contains_key(&id)) || g.acked_ahead.contains(&id);
            if !acked {
                return false;
            }
        }
        wanted
    }

    /// Drops a fully acked message from memory.
    fn forget(&mut self, id: u64) {
        if let Some(meta) = self.log.remove(&id)
            && let Some(body) = meta.body
        {
            self.cached_bytes -= body.len();
        }
        for g in self.groups.values_mut() {
            g.acked_ahead.remove(&id);
        }
    }
}

impl Group {
    fn new(kinds: KindSet) -> Self {
        Self {
            kinds,
            cursor: 0,
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
            acked_ahead: HashSet::new(),
        }
    }
}

/// Moves deliveries whose deadline or back-off has passed back to ready.
async fn sweep_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut woke = false;
        for g in inner.state().groups.values_mut() {
            for (id, p) in g.pending.iter_mut() {
                let due = match p.state {
                    PendingState::InFlight { deadline, .. } => deadline <= now,
                    PendingState::Delayed { until } => until <= now,
                    PendingState::Ready => false,
                };
                if due {
                    p.state = PendingState::Ready;
                    g.ready.insert(*id);
                    woke = true;
                }
            }
        }
        if woke {
            inner.wake.notify_waiters();
        }
    }
}

/// Commits queued writes in groups until the queue closes.
async fn write_loop(
    inner: Arc<Inner>,
    mut conn: SqliteConnection,
    mut rx: mpsc::UnboundedReceiver<Write>,
    mut dedupe: HashMap<String, RangeInclusiveSet<u64>>,
) {
    let mut ops = Vec::new();
    while let Some(first) = rx.recv().await {
        ops.push(first);
        while ops.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &mut ops, &dedupe).await;
        let mut close = None;
        match result {
            Ok(mut committed) => {
                dedupe.extend(committed.sources);
                {
                    let mut state = inner.state();
                    for (id, meta) in committed.messages {
                        if let Some(body) = &meta.body {
                            state.cached_bytes += body.len();
                        }
                        state.log.insert(id, meta);
                    }
                }
                inner.wake.notify_waiters();
                for (index, op) in ops.drain(..).enumerate() {
                    match op {
                        Write::Publish { reply, .. } => {
                            let outcome = committed.outcomes.remove(&index).unwrap_or_default();
                            let _ = reply.send(Ok(outcome));
                        }
                        Write::Close { reply } => close = Some(reply),
                        _ => {}
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
                        Write::Close { reply } => close = Some(reply),
                        // Lost acks only cause redeliveries, which storage
                        // absorbs; lost deletes are redone at start-up.
                        _ => {}
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
    sources: HashMap<String, RangeInclusiveSet<u64>>,
    /// Outcomes of each publish, by its index among the committed writes.
    outcomes: HashMap<usize, Vec<Published>>,
}

async fn commit(
    conn: &mut SqliteConnection,
    ops: &mut [Write],
    dedupe: &HashMap<String, RangeInclusiveSet<u64>>,
) -> Result<Committed, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut committed = Committed {
        messages: Vec::new(),
        sources: HashMap::new(),
        outcomes: HashMap::new(),
    };
    let mut cached = 0usize;
    for (index, op) in ops.iter_mut().enumerate() {
        match op {
            Write::Publish { batches, .. } => {
                let mut outcomes = Vec::with_capacity(batches.len());
                for batch in batches.drain(..) {
                    let mut published = Published::default();
                    let mut fresh = Vec::with_capacity(batch.records.len());
                    for record in batch.records {
                        // Looked up before inserting so that the source name
                        // is cloned once per commit, not once per record.
                        if !committed.sources.contains_key(&record.source) {
                            let known = dedupe.get(&record.source).cloned().unwrap_or_default();
                            committed.sources.insert(record.source.clone(), known);
                        }
                        let seen = committed
                            .sources
                            .get_mut(&record.source)
                            .expect("inserted just above");
                        if seen.contains(&record.seq) {
                            published.duplicates += 1;
                        } else {
                            seen.insert(record.seq..=record.seq);
                            published.accepted += 1;
                            fresh.push(record);
                        }
                    }
                    if !fresh.is_empty() {
                        let body: Arc<[u8]> =
                            Arc::from(RecordBatch { records: fresh }.encode_to_vec());
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
                        let keep = cached + body.len() <= BODY_CACHE_BYTES;
                        if keep {
                            cached += body.len();
                        }
                        committed.messages.push((
                            result.last_insert_rowid() as u64,
                            Meta {
                                kind: batch.kind,
                                received_at: batch.received_at,
                                traceparent: batch.traceparent.map(Arc::from),
                                body: keep.then_some(body),
                            },
                        ));
                    }
                    outcomes.push(published);
                }
                committed.outcomes.insert(index, outcomes);
            }
            Write::Ack { group, id } => {
                sqlx::query("INSERT OR IGNORE INTO acks (grp, msg_id) VALUES (?, ?)")
                    .bind(&*group)
                    .bind(*id as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Delete { id } => {
                sqlx::query("DELETE FROM messages WHERE id = ?")
                    .bind(*id as i64)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM acks WHERE msg_id = ?")
                    .bind(*id as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Group { name, kinds } => {
                sqlx::query(
                    "INSERT INTO groups (name, kinds) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET kinds = excluded.kinds",
                )
                .bind(&*name)
                .bind(i64::from(kinds.bits()))
                .execute(&mut *tx)
                .await?;
            }
            Write::Close { .. } => {}
        }
    }
    for (source, ranges) in &committed.sources {
        sqlx::query(
            "INSERT INTO sources (source, ranges) VALUES (?, ?) ON CONFLICT (source) DO UPDATE SET ranges = excluded.ranges",
        )
        .bind(source)
        .bind(encode_ranges(ranges))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(committed)
}

/// Reads the log index, the groups with their acks and the dedupe index.
/// Also returns the messages every interested group had acked, to delete.
async fn load(
    conn: &mut SqliteConnection,
) -> Result<(State, HashMap<String, RangeInclusiveSet<u64>>, Vec<u64>), QueueError> {
    let mut state = State::default();
    let rows = sqlx::query("SELECT id, kind, received_at, traceparent FROM messages ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    for row in rows {
        let kind = RecordKind::try_from(row.get::<i32, _>(1)).unwrap_or(RecordKind::Unspecified);
        state.log.insert(
            row.get::<i64, _>(0) as u64,
            Meta {
                kind,
                received_at: row.get(2),
                traceparent: row.get::<Option<String>, _>(3).map(Arc::from),
                body: None,
            },
        );
    }
    for row in sqlx::query("SELECT name, kinds FROM groups")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
    {
        let kinds = KindSet::from_bits(row.get::<i64, _>(1) as u8);
        state.groups.insert(row.get(0), Group::new(kinds));
    }
    for row in sqlx::query("SELECT grp, msg_id FROM acks")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
    {
        if let Some(g) = state.groups.get_mut(row.get::<&str, _>(0)) {
            g.acked_ahead.insert(row.get::<i64, _>(1) as u64);
        }
    }
    let doomed: Vec<u64> = state
        .log
        .keys()
        .copied()
        .filter(|id| state.done_by_all(*id))
        .collect();
    for id in &doomed {
        state.forget(*id);
    }
    let mut dedupe = HashMap::new();
    for row in sqlx::query("SELECT source, ranges FROM sources")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?
    {
        dedupe.insert(row.get(0), decode_ranges(row.get(1)));
    }
    Ok((state, dedupe, doomed))
}

/// Ranges as consecutive little-endian (start, end) pairs of u64.
fn encode_ranges(ranges: &RangeInclusiveSet<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for range in ranges.iter() {
        out.extend_from_slice(&range.start().to_le_bytes());
        out.extend_from_slice(&range.end().to_le_bytes());
    }
    out
}

fn decode_ranges(bytes: &[u8]) -> RangeInclusiveSet<u64> {
    let mut set = RangeInclusiveSet::new();
    for pair in bytes.chunks_exact(16) {
        let start = u64::from_le_bytes(pair[..8].try_into().expect("chunk of 16 has 8 bytes"));
        let end = u64::from_le_bytes(pair[8..].try_into().expect("chunk of 16 has 8 bytes"));
        set.insert(start..=end);
    }
    set
}

fn parse_ack_id(ack_id: &str) -> Result<(u64, &str), QueueError> {
    ack_id
        .split_once(':')
        .and_then(|(id, group)| Some((u64::from_str(id).ok()?, group)))
        .filter(|(_, group)| !group.is_empty())
        .ok_or_else(|| QueueError::Invalid(format!("malformed ack id {ack_id:?}")))
}

fn unavailable(e: sqlx::Error) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn closed() -> QueueError {
    QueueError::Unavailable("the queue is closed".into())
}

#[cfg(test)]
mod tests;
