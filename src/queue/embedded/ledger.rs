//! The embedded queue's delivery state: which messages are retained, which
//! consumer groups want them, what each group has delivered, to which live
//! subscriber, and how often each delivery failed. It holds no I/O and no
//! clock: callers pass `now` in and persist the [`Change`]s it returns, so it
//! is tested against a reference model with generated histories (below).
//!
//! # Groups and lanes
//!
//! A consumer group has one *lane* per record kind it reads, each with its
//! own cursor: a subscriber reading only probes never moves the cursor of
//! the group's SMS lane. A group's kinds are the union of its live
//! subscribers' kinds plus the lanes that lost their last subscriber less
//! than the group TTL ago; a lane idle for longer expires, and a group with
//! no lane left is gone. Each subscriber receives only the kinds it asked
//! for.
//!
//! # The promises and how they are kept
//!
//! - **Ack ownership.** Acks, nacks and extensions name their group, and only
//!   change that group's entry: a message pending in a group stays until
//!   that group acks it or a counted policy (retention, expiry, an operator's
//!   delete) drops it. A message is deleted once no group wants it any more
//!   ([`Ledger::wanted`]).
//! - **No panics.** Every lookup that could miss is handled; an id that is
//!   not pending is answered as such, never trusted.
//! - **A crash condemns only its cause.** A delivery abandoned by its
//!   subscriber (its stream closed, its deadline passed, or the process
//!   died) is not charged an attempt: it becomes a *suspect*. A group hands
//!   out at most one suspect at a time, to a subscriber holding nothing
//!   else, so if that delivery is abandoned too, it alone can have caused
//!   it: only then is it charged (a *strike*). An explicit nack is charged
//!   at once, as a parser error is a verdict on that delivery alone. The
//!   attempt a parser sees is `1 + nacks + strikes`, so a record that keeps
//!   crashing its parser is dead-lettered after `max_attempts` strikes and
//!   its neighbours never are.
//! - **Across restarts** the caller persists, before a delivery is handed
//!   out, a per-lane high-water mark of the ids delivered (with some lead,
//!   so it is written rarely) and, for a suspect delivered alone, that fact.
//!   At start-up every unacked id at or below a lane's mark is a suspect,
//!   and a suspect that was out alone when the process died takes its
//!   strike. A record that crashes the whole process is dead-lettered after
//!   `max_attempts` restarts.
//! - **Credit** is per subscriber: each knows how many deliveries it holds,
//!   counted up once when handed out and down once when the delivery is
//!   acked, nacked, abandoned or dropped, whichever comes first.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use crate::{kind::KindSet, proto::RecordKind, queue::GroupInfo};

/// How far ahead of the highest delivered id a lane's persisted mark is
/// set, in ids: a mark is written once per this many ids a lane hands out,
/// and at most this many never-delivered messages count as suspects after
/// a crash.
pub(crate) const MARK_LEAD: u64 = 64;

/// A live subscriber.
pub(crate) type MemberId = u64;

/// A retained message.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub kind: RecordKind,
    /// When the ingest server accepted it, in microseconds since the epoch.
    pub received_at: i64,
    pub traceparent: Option<Arc<str>>,
    /// The encoded body, when the cache holds it.
    pub body: Option<Bytes>,
    /// The encoded body's size in bytes, cached or not.
    pub size: usize,
}

/// Something the caller must make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The group reads these kinds now.
    Group { name: String, kinds: KindSet },
    /// The group is gone, with its acks, attempts and marks.
    DropGroup { name: String },
    /// The group's lane of a kind is gone, with its acks, attempts and
    /// mark for that kind.
    DropLane { group: String, kind: RecordKind },
    /// The group acked the message.
    Ack { group: String, id: u64 },
    /// The message is no longer wanted by any group.
    Delete { id: u64 },
    /// The failures charged to a delivery, and whether it is out alone.
    Attempts {
        group: String,
        id: u64,
        nacks: u32,
        strikes: u32,
        alone: bool,
    },
    /// Ids up to `mark` of the group's lane may have been delivered. Must
    /// be durable before the delivery that asked for it is handed out.
    Mark {
        group: String,
        kind: RecordKind,
        mark: u64,
    },
}

impl Change {
    /// Whether the delivery that produced this change must wait until it
    /// is durable.
    pub(crate) fn before_delivery(&self) -> bool {
        matches!(
            self,
            Change::Mark { .. } | Change::Attempts { alone: true, .. }
        )
    }
}

/// Why a message was dropped without its group acking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// Older than the retention age.
    Age,
    /// The queue held more bytes than its retention size.
    Size,
}

impl DropReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::Age => "age",
            DropReason::Size => "size",
        }
    }
}

/// A message retention dropped, and the groups that had not acked it.
#[derive(Debug, Clone)]
pub(crate) struct Dropped {
    pub id: u64,
    pub reason: DropReason,
    pub groups: Vec<String>,
}

/// A message taken for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub id: u64,
    pub attempt: u32,
    pub meta: Meta,
    /// Whether it goes out alone, as a suspect.
    pub alone: bool,
}

/// How a caller's ack, nack or extension fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied.
    Done,
    /// The group has no such delivery pending: acked already, dropped by a
    /// policy, or never delivered. Nothing changed.
    NotPending,
}

/// One consumer group's view of the log.
#[derive(Debug, Clone, Default)]
struct Group {
    lanes: BTreeMap<i32, Lane>,
    members: HashMap<MemberId, Member>,
    /// Delivered at least once (or due for redelivery) and not acked.
    pending: BTreeMap<u64, Pending>,
    /// Pending ids that may be delivered now to anyone, lowest first.
    ready: BTreeSet<u64>,
    /// Pending suspects that may be delivered now, alone.
    suspects: BTreeSet<u64>,
    /// The suspect out alone right now, if any.
    alone: Option<u64>,
    /// Acks above a lane's cursor, loaded at start-up: skipped when the
    /// cursor reaches them.
    acked_ahead: HashSet<u64>,
}

#[derive(Debug, Clone, Default)]
struct Lane {
    /// Ids of this kind below the cursor are pending or acked by the group.
    cursor: u64,
    /// Live subscribers reading this kind.
    members: usize,
    /// When the last of them left; `None` while one is live.
    idle_since: Option<Instant>,
    /// The persisted high-water mark of delivered ids.
    mark: u64,
}

#[derive(Debug, Clone)]
struct Member {
    kinds: KindSet,
    /// Deliveries out to this subscriber.
    holding: usize,
}

#[derive(Debug, Clone)]
struct Pending {
    kind: RecordKind,
    nacks: u32,
    strikes: u32,
    suspect: bool,
    state: PendingState,
}

#[derive(Debug, Clone)]
enum PendingState {
    Ready,
    Out {
        member: MemberId,
        deadline: Instant,
        hold: Duration,
    },
    Delayed {
        until: Instant,
    },
}

impl Pending {
    fn attempt(&self) -> u32 {
        1u32.saturating_add(self.nacks).saturating_add(self.strikes)
    }
}

/// The delivery state of the whole queue.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    log: BTreeMap<u64, Meta>,
    by_kind: BTreeMap<i32, BTreeSet<u64>>,
    groups: HashMap<String, Group>,
    next_member: MemberId,
    /// Bytes of every retained body, cached or not.
    bytes: u64,
    cached_bytes: usize,
    cache_cap: usize,
}

/// Start-up state of one group, as persisted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Loaded {
    pub kinds: Option<KindSet>,
    pub acked: HashSet<u64>,
    /// Per kind, the persisted mark.
    pub marks: HashMap<i32, u64>,
    /// Per message: nacks, strikes, and whether it was out alone.
    pub attempts: HashMap<u64, (u32, u32, bool)>,
}

fn key(kind: RecordKind) -> i32 {
    kind as i32
}

impl Ledger {
    /// An empty ledger whose body cache holds at most `cache_cap` bytes.
    pub(crate) fn new(cache_cap: usize) -> Self {
        Self {
            cache_cap,
            ..Default::default()
        }
    }

    /// Adds a durably written message. Its body is kept in memory only
    /// while the cache has room.
    pub(crate) fn append(&mut self, id: u64, mut meta: Meta) {
        if let Some(body) = &meta.body {
            if self.cached_bytes + body.len() <= self.cache_cap {
                self.cached_bytes += body.len();
            } else {
                meta.body = None;
            }
        }
        self.bytes += meta.size as u64;
        self.by_kind.entry(key(meta.kind)).or_default().insert(id);
        if let Some(old) = self.log.insert(id, meta) {
            // Ids come from an autoincrement column and are never reused;
            // keep the accounting right even if one were.
            self.uncount(&old);
        }
    }

    fn uncount(&mut self, meta: &Meta) {
        self.bytes = self.bytes.saturating_sub(meta.size as u64);
        if let Some(body) = &meta.body {
            self.cached_bytes = self.cached_bytes.saturating_sub(body.len());
        }
    }

    /// Rebuilds a group from what was persisted: unacked ids at or below a
    /// lane's mark may have been delivered and become suspects; one that was
    /// out alone takes its strike.
    pub(crate) fn restore(&mut self, name: &str, loaded: Loaded, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(kinds) = loaded.kinds else {
            return changes;
        };
        let mut group = Group::default();
        // Ids are never reused: those above the newest retained one are
        // yet to be published, and new to every lane.
        let newest = self.log.last_key_value().map_or(0, |(id, _)| *id);
        for kind in kinds.kinds() {
            let mark = loaded.marks.get(&key(kind)).copied().unwrap_or(0);
            group.lanes.insert(
                key(kind),
                Lane {
                    cursor: mark.min(newest).saturating_add(1),
                    members: 0,
                    idle_since: Some(now),
                    mark,
                },
            );
            let ids = self.by_kind.get(&key(kind));
            for &id in ids.into_iter().flatten() {
                if loaded.acked.contains(&id) {
                    if id > mark {
                        group.acked_ahead.insert(id);
                    }
                    continue;
                }
                if id > mark {
                    continue;
                }
                let (nacks, mut strikes, alone) =
                    loaded.attempts.get(&id).copied().unwrap_or_default();
                if alone {
                    strikes = strikes.saturating_add(1);
                    changes.push(Change::Attempts {
                        group: name.to_owned(),
                        id,
                        nacks,
                        strikes,
                        alone: false,
                    });
                }
                group.pending.insert(
                    id,
                    Pending {
                        kind,
                        nacks,
                        strikes,
                        suspect: true,
                        state: PendingState::Ready,
                    },
                );
                group.suspects.insert(id);
            }
        }
        self.groups.insert(name.to_owned(), group);
        changes
    }

    /// Ids no group wants, to delete after a restart.
    pub(crate) fn unwanted(&self) -> Vec<u64> {
        self.log
            .keys()
            .copied()
            .filter(|id| !self.wanted(*id))
            .collect()
    }

    /// Forgets messages no group wants (after [`Ledger::unwanted`] was
    /// persisted).
    pub(crate) fn forget(&mut self, ids: &[u64]) {
        for id in ids {
            self.remove(*id);
        }
    }

    /// Whether some group still wants message `id`: it is pending there, or
    /// it is ahead of the cursor of a lane of its kind and not acked. A
    /// message no group reads yet is kept for groups to come.
    pub(crate) fn wanted(&self, id: u64) -> bool {
        let Some(meta) = self.log.get(&id) else {
            return false;
        };
        let mut read = false;
        for g in self.groups.values() {
            if g.pending.contains_key(&id) {
                return true;
            }
            if let Some(lane) = g.lanes.get(&key(meta.kind)) {
                read = true;
                if id >= lane.cursor && !g.acked_ahead.contains(&id) {
                    return true;
                }
            }
        }
        !read
    }

    /// Joins `group` as a new live subscriber reading `kinds`.
    pub(crate) fn subscribe(
        &mut self,
        group: &str,
        kinds: KindSet,
        changes: &mut Vec<Change>,
    ) -> MemberId {
        let member = self.next_member;
        self.next_member += 1;
        let fresh = !self.groups.contains_key(group);
        let g = self.groups.entry(group.to_owned()).or_default();
        let before = g.kinds();
        for kind in kinds.kinds() {
            let lane = g.lanes.entry(key(kind)).or_default();
            lane.members += 1;
            lane.idle_since = None;
        }
        g.members.insert(member, Member { kinds, holding: 0 });
        if fresh || g.kinds() != before {
            changes.push(Change::Group {
                name: group.to_owned(),
                kinds: g.kinds(),
            });
        }
        member
    }

    /// A subscriber went away: what it held is abandoned now, not at its
    /// deadline.
    pub(crate) fn leave(
        &mut self,
        group: &str,
        member: MemberId,
        now: Instant,
        changes: &mut Vec<Change>,
    ) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let Some(gone) = g.members.remove(&member) else {
            return;
        };
        for kind in gone.kinds.kinds() {
            if let Some(lane) = g.lanes.get_mut(&key(kind)) {
                lane.members = lane.members.saturating_sub(1);
                if lane.members == 0 {
                    lane.idle_since = Some(now);
                }
            }
        }
        let held: Vec<u64> = g
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.state, PendingState::Out { member: m, .. } if m == member))
            .map(|(id, _)| *id)
            .collect();
        for id in held {
            g.abandon(group, id, changes);
        }
    }

    /// The next delivery for `member` of `group`: a suspect alone when it
    /// holds nothing and none is out, else a ready redelivery, else the
    /// lowest new id of the kinds it reads. `None` when there is nothing
    /// for it (or it is not a live member).
    pub(crate) fn claim(
        &mut self,
        group: &str,
        member: MemberId,
        now: Instant,
        hold: Duration,
        changes: &mut Vec<Change>,
    ) -> Option<Claim> {
        let Ledger {
            log,
            by_kind,
            groups,
            ..
        } = self;
        let g = groups.get_mut(group)?;
        let who = g.members.get(&member)?.clone();
        // A suspect goes out alone: its holder gets nothing else meanwhile.
        if let Some(out) = g.alone
            && matches!(g.pending.get(&out).map(|p| &p.state),
                Some(PendingState::Out { member: m, .. }) if *m == member)
        {
            return None;
        }
        let wants = |id: &u64| log.get(id).is_some_and(|m| who.kinds.contains(m.kind));
        let mut alone = false;
        let mut picked = None;
        if who.holding == 0 && g.alone.is_none() {
            picked = g.suspects.iter().copied().find(|id| wants(id));
            alone = picked.is_some();
        }
        if picked.is_none() {
            picked = g.ready.iter().copied().find(|id| wants(id));
        }
        if picked.is_none() {
            // The lowest unseen id over the lanes this subscriber reads.
            let mut best: Option<(u64, i32)> = None;
            for kind in who.kinds.kinds() {
                let Some(lane) = g.lanes.get(&key(kind)) else {
                    continue;
                };
                let ids = by_kind.get(&key(kind));
                let next = ids.and_then(|ids| {
                    ids.range(lane.cursor..)
                        .find(|id| !g.acked_ahead.contains(id))
                        .copied()
                });
                if let Some(id) = next
                    && best.is_none_or(|(b, _)| id < b)
                {
                    best = Some((id, key(kind)));
                }
            }
            let (id, lane_key) = best?;
            let kind = log.get(&id)?.kind;
            if let Some(lane) = g.lanes.get_mut(&lane_key) {
                lane.cursor = id + 1;
                if id > lane.mark {
                    lane.mark = id.saturating_add(MARK_LEAD);
                    changes.push(Change::Mark {
                        group: group.to_owned(),
                        kind,
                        mark: lane.mark,
                    });
                }
            }
            g.pending.insert(
                id,
                Pending {
                    kind,
                    nacks: 0,
                    strikes: 0,
                    suspect: false,
                    state: PendingState::Ready,
                },
            );
            picked = Some(id);
        }
        let id = picked?;
        let meta = log.get(&id)?.clone();
        let pending = g.pending.get_mut(&id)?;
        g.ready.remove(&id);
        g.suspects.remove(&id);
        pending.state = PendingState::Out {
            member,
            deadline: now + hold,
            hold,
        };
        if alone {
            g.alone = Some(id);
            changes.push(Change::Attempts {
                group: group.to_owned(),
                id,
                nacks: pending.nacks,
                strikes: pending.strikes,
                alone: true,
            });
        }
        let attempt = pending.attempt();
        if let Some(m) = g.members.get_mut(&member) {
            m.holding += 1;
        }
        Some(Claim {
            id,
            attempt,
            meta,
            alone,
        })
    }

    /// Hands a claimed delivery back uncharged, when it could not be sent
    /// (its persistence failed, or its body could not be read).
    pub(crate) fn unclaim(&mut self, group: &str, id: u64) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let Some(p) = g.pending.get_mut(&id) else {
            return;
        };
        if let PendingState::Out { member, .. } = p.state {
            if let Some(m) = g.members.get_mut(&member) {
                m.holding = m.holding.saturating_sub(1);
            }
            if g.alone == Some(id) {
                g.alone = None;
            }
            p.state = PendingState::Ready;
            if p.suspect {
                g.suspects.insert(id);
            } else {
                g.ready.insert(id);
            }
        }
    }

    /// The group has processed message `id`.
    pub(crate) fn ack(&mut self, group: &str, id: u64, changes: &mut Vec<Change>) -> Outcome {
        let Some(g) = self.groups.get_mut(group) else {
            return Outcome::NotPending;
        };
        let Some(p) = g.pending.remove(&id) else {
            return Outcome::NotPending;
        };
        g.release(id, &p);
        g.ready.remove(&id);
        g.suspects.remove(&id);
        changes.push(Change::Ack {
            group: group.to_owned(),
            id,
        });
        if !self.wanted(id) {
            self.remove(id);
            changes.push(Change::Delete { id });
        }
        Outcome::Done
    }

    /// The group's parser failed on message `id`: charge it and deliver it
    /// again after `backoff(attempt)`. A nack of a delivery that is not out
    /// (its deadline passed, or it was handed back) changes nothing.
    pub(crate) fn nack(
        &mut self,
        group: &str,
        id: u64,
        now: Instant,
        backoff: impl Fn(u32) -> Duration,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        let Some(g) = self.groups.get_mut(group) else {
            return Outcome::NotPending;
        };
        let Some(p) = g.pending.get(&id).cloned() else {
            return Outcome::NotPending;
        };
        if !matches!(p.state, PendingState::Out { .. }) {
            return Outcome::NotPending;
        }
        g.release(id, &p);
        let Some(p) = g.pending.get_mut(&id) else {
            return Outcome::NotPending;
        };
        let delay = backoff(p.attempt());
        p.nacks = p.nacks.saturating_add(1);
        // The parser answered: it did not crash on it.
        p.suspect = false;
        p.state = PendingState::Delayed { until: now + delay };
        changes.push(Change::Attempts {
            group: group.to_owned(),
            id,
            nacks: p.nacks,
            strikes: p.strikes,
            alone: false,
        });
        Outcome::Done
    }

    /// Takes back one delivery whose subscriber went away, at once.
    pub(crate) fn abandon(&mut self, group: &str, id: u64, changes: &mut Vec<Change>) -> Outcome {
        let Some(g) = self.groups.get_mut(group) else {
            return Outcome::NotPending;
        };
        if !matches!(
            g.pending.get(&id).map(|p| &p.state),
            Some(PendingState::Out { .. })
        ) {
            return Outcome::NotPending;
        }
        g.abandon(group, id, changes);
        Outcome::Done
    }

    /// Restarts the deadline of a delivery that is out.
    pub(crate) fn extend(&mut self, group: &str, id: u64, now: Instant) -> Outcome {
        let Some(p) = self
            .groups
            .get_mut(group)
            .and_then(|g| g.pending.get_mut(&id))
        else {
            return Outcome::NotPending;
        };
        match &mut p.state {
            PendingState::Out { deadline, hold, .. } => {
                *deadline = now + *hold;
                Outcome::Done
            }
            _ => Outcome::NotPending,
        }
    }

    /// Abandons deliveries whose deadline passed and readies those whose
    /// back-off ended. Returns whether anything became deliverable.
    pub(crate) fn sweep(&mut self, now: Instant, changes: &mut Vec<Change>) -> bool {
        let mut woke = false;
        for (name, g) in &mut self.groups {
            let mut expired = Vec::new();
            for (id, p) in &mut g.pending {
                match p.state {
                    PendingState::Out { deadline, .. } if deadline <= now => expired.push(*id),
                    PendingState::Delayed { until } if until <= now => {
                        p.state = PendingState::Ready;
                        if p.suspect {
                            g.suspects.insert(*id);
                        } else {
                            g.ready.insert(*id);
                        }
                        woke = true;
                    }
                    _ => {}
                }
            }
            for id in expired {
                g.abandon(name, id, changes);
                woke = true;
            }
        }
        woke
    }

    /// Drops lanes idle for `ttl` or longer, and groups left with none.
    /// Returns, per group, the kinds that expired and how many messages
    /// they still wanted.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        ttl: Duration,
        changes: &mut Vec<Change>,
    ) -> Vec<(String, Vec<RecordKind>, u64)> {
        let mut stale: Vec<(String, Vec<i32>)> = Vec::new();
        for (name, g) in &self.groups {
            let lanes: Vec<i32> = g
                .lanes
                .iter()
                .filter(|(_, l)| l.idle_since.is_some_and(|t| now.duration_since(t) >= ttl))
                .map(|(k, _)| *k)
                .collect();
            if !lanes.is_empty() {
                stale.push((name.clone(), lanes));
            }
        }
        let mut lost = Vec::new();
        for (name, lanes) in stale {
            let dropped = self.drop_lanes(&name, &lanes, changes);
            let kinds = lanes
                .iter()
                .filter_map(|k| RecordKind::try_from(*k).ok())
                .collect();
            lost.push((name, kinds, dropped));
        }
        lost
    }

    /// Deletes a group at an operator's request. Returns how many messages
    /// it still wanted, or `None` when there is no such group.
    pub(crate) fn delete_group(&mut self, name: &str, changes: &mut Vec<Change>) -> Option<u64> {
        let lanes: Vec<i32> = self.groups.get(name)?.lanes.keys().copied().collect();
        let dropped = self.drop_lanes(name, &lanes, changes);
        // A group with no lane (never possible today) goes too.
        if self.groups.remove(name).is_some() {
            changes.push(Change::DropGroup {
                name: name.to_owned(),
            });
        }
        Some(dropped)
    }

    fn drop_lanes(&mut self, name: &str, lanes: &[i32], changes: &mut Vec<Change>) -> u64 {
        let Some(g) = self.groups.get_mut(name) else {
            return 0;
        };
        let mut dropped = 0u64;
        for lane_key in lanes {
            let Some(lane) = g.lanes.remove(lane_key) else {
                continue;
            };
            if let Some(ids) = self.by_kind.get(lane_key) {
                g.acked_ahead.retain(|id| !ids.contains(id));
            }
            if let Ok(kind) = RecordKind::try_from(*lane_key) {
                changes.push(Change::DropLane {
                    group: name.to_owned(),
                    kind,
                });
            }
            let ids: Vec<u64> = g
                .pending
                .iter()
                .filter(|(_, p)| key(p.kind) == *lane_key)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(p) = g.pending.remove(&id) {
                    g.release(id, &p);
                    g.ready.remove(&id);
                    g.suspects.remove(&id);
                    dropped += 1;
                }
            }
            if let Some(ids) = self.by_kind.get(lane_key) {
                dropped += ids
                    .range(lane.cursor..)
                    .filter(|id| !g.acked_ahead.contains(id))
                    .count() as u64;
            }
        }
        if g.lanes.is_empty() {
            self.groups.remove(name);
            changes.push(Change::DropGroup {
                name: name.to_owned(),
            });
        } else {
            changes.push(Change::Group {
                name: name.to_owned(),
                kinds: g.kinds(),
            });
        }
        for id in self.unwanted_of(lanes) {
            self.remove(id);
            changes.push(Change::Delete { id });
        }
        dropped
    }

    /// Unwanted messages of the given kinds.
    fn unwanted_of(&self, lanes: &[i32]) -> Vec<u64> {
        lanes
            .iter()
            .filter_map(|k| self.by_kind.get(k))
            .flatten()
            .copied()
            .filter(|id| !self.wanted(*id))
            .collect()
    }

    /// Drops the oldest messages while any is older than `max_age` (by its
    /// `received_at`, against `now_micros`) or the log holds more than
    /// `max_bytes`. Returns each dropped message with the groups that still
    /// wanted it.
    pub(crate) fn retain(
        &mut self,
        now_micros: i64,
        max_age: Duration,
        max_bytes: u64,
        changes: &mut Vec<Change>,
    ) -> Vec<Dropped> {
        let oldest_kept =
            now_micros.saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX));
        let mut dropped = Vec::new();
        while let Some((&id, meta)) = self.log.first_key_value() {
            let kind = meta.kind;
            let reason = if meta.received_at < oldest_kept {
                DropReason::Age
            } else if self.bytes > max_bytes {
                DropReason::Size
            } else {
                break;
            };
            let mut groups = Vec::new();
            for (name, g) in &mut self.groups {
                let pending = g.pending.remove(&id);
                let ahead = g
                    .lanes
                    .get(&key(kind))
                    .is_some_and(|l| id >= l.cursor && !g.acked_ahead.contains(&id));
                if let Some(p) = &pending {
                    g.release(id, p);
                    g.ready.remove(&id);
                    g.suspects.remove(&id);
                }
                if pending.is_some() || ahead {
                    groups.push(name.clone());
                }
                g.acked_ahead.remove(&id);
            }
            self.remove(id);
            changes.push(Change::Delete { id });
            dropped.push(Dropped { id, reason, groups });
        }
        dropped
    }

    fn remove(&mut self, id: u64) {
        if let Some(meta) = self.log.remove(&id) {
            if let Some(ids) = self.by_kind.get_mut(&key(meta.kind)) {
                ids.remove(&id);
            }
            self.uncount(&meta);
        }
        for g in self.groups.values_mut() {
            g.acked_ahead.remove(&id);
        }
    }

    /// Messages the group wants and has not acked (delivered or not).
    pub(crate) fn lag(&self, group: &str) -> u64 {
        let Some(g) = self.groups.get(group) else {
            return 0;
        };
        let ahead: usize = g
            .lanes
            .iter()
            .map(|(k, lane)| {
                self.by_kind.get(k).map_or(0, |ids| {
                    ids.range(lane.cursor..)
                        .filter(|id| !g.acked_ahead.contains(id))
                        .count()
                })
            })
            .sum();
        (ahead + g.pending.len()) as u64
    }

    /// Every group, by name.
    pub(crate) fn groups(&self, now: Instant) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = self
            .groups
            .iter()
            .map(|(name, g)| GroupInfo {
                name: name.clone(),
                kinds: g.kinds(),
                members: g.members.len(),
                lag: self.lag(name),
                idle: g
                    .lanes
                    .values()
                    .map(|l| {
                        l.idle_since
                            .map_or(Duration::ZERO, |t| now.duration_since(t))
                    })
                    .min()
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether the group exists.
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Retained messages, the bytes of their bodies, and the bytes of
    /// those cached in memory.
    pub(crate) fn size(&self) -> (usize, u64, usize) {
        (self.log.len(), self.bytes, self.cached_bytes)
    }

    /// Deliveries `member` of `group` holds.
    #[cfg(test)]
    pub(crate) fn holding(&self, group: &str, member: MemberId) -> usize {
        self.groups
            .get(group)
            .and_then(|g| g.members.get(&member))
            .map_or(0, |m| m.holding)
    }

    /// Every retained id.
    #[cfg(test)]
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.log.keys().copied().collect()
    }
}

impl Group {
    /// The kinds of the group's lanes.
    fn kinds(&self) -> KindSet {
        let kinds: Vec<RecordKind> = self
            .lanes
            .keys()
            .filter_map(|k| RecordKind::try_from(*k).ok())
            .collect();
        if kinds.is_empty() {
            KindSet::of([RecordKind::Unspecified])
        } else {
            KindSet::of(kinds)
        }
    }

    /// Frees the credit of a delivery that was out.
    fn release(&mut self, id: u64, p: &Pending) {
        if let PendingState::Out { member, .. } = p.state {
            if let Some(m) = self.members.get_mut(&member) {
                m.holding = m.holding.saturating_sub(1);
            }
            if self.alone == Some(id) {
                self.alone = None;
            }
        }
    }

    /// Takes back a delivery that is out, uncharged unless it was out alone.
    fn abandon(&mut self, name: &str, id: u64, changes: &mut Vec<Change>) {
        let Some(p) = self.pending.get(&id).cloned() else {
            return;
        };
        if !matches!(p.state, PendingState::Out { .. }) {
            return;
        }
        let was_alone = self.alone == Some(id);
        self.release(id, &p);
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        if was_alone {
            p.strikes = p.strikes.saturating_add(1);
            changes.push(Change::Attempts {
                group: name.to_owned(),
                id,
                nacks: p.nacks,
                strikes: p.strikes,
                alone: false,
            });
        }
        p.suspect = true;
        p.state = PendingState::Ready;
        self.suspects.insert(id);
    }
}

#[cfg(test)]
mod tests;
