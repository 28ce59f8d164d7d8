use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::*;

const KINDS: [RecordKind; 3] = [RecordKind::Text, RecordKind::Sms, RecordKind::Probe];
const GROUPS: [&str; 3] = ["raw", "sms_sender", "probe"];
const HOLD: Duration = Duration::from_millis(1_000);
const TTL: Duration = Duration::from_secs(60);
const MAX_ATTEMPTS: u32 = 3;

fn meta(kind: RecordKind) -> Meta {
    Meta {
        kind,
        received_at: 0,
        traceparent: None,
        body: None,
        size: 10,
    }
}

fn backoff(_: u32) -> Duration {
    Duration::from_millis(100)
}

fn ledger_with(ids: &[(u64, RecordKind)]) -> Ledger {
    let mut ledger = Ledger::new(1 << 20);
    for (id, kind) in ids {
        ledger.append(*id, meta(*kind));
    }
    ledger
}

#[test]
fn another_groups_ack_leaves_a_pending_message_alone() {
    // The regroup case: g1 holds an SMS delivery, re-subscribes for probes
    // only, and g2 acks the same message for itself.
    let mut ledger = ledger_with(&[(1, RecordKind::Sms)]);
    let now = Instant::now();
    let mut changes = Vec::new();
    let g1 = ledger.subscribe("g1", KindSet::of([RecordKind::Sms]), &mut changes);
    let g2 = ledger.subscribe("g2", KindSet::of([RecordKind::Sms]), &mut changes);
    let held = ledger.claim("g1", g1, now, HOLD, &mut changes).unwrap();
    let _again = ledger.subscribe("g1", KindSet::of([RecordKind::Probe]), &mut changes);
    ledger.leave("g1", g1, now, &mut changes);
    let other = ledger.claim("g2", g2, now, HOLD, &mut changes).unwrap();
    assert_eq!(ledger.ack("g2", other.id, &mut changes), Outcome::Done);
    assert_eq!(ledger.ids(), vec![held.id], "still pending in g1");
    // A nack from g1 (its delivery was handed back by the leave) is a no-op,
    // and the message is delivered to g1's next SMS subscriber.
    assert_eq!(
        ledger.nack("g1", held.id, now, backoff, &mut changes),
        Outcome::NotPending
    );
    let sms = ledger.subscribe("g1", KindSet::of([RecordKind::Sms]), &mut changes);
    let back = ledger.claim("g1", sms, now, HOLD, &mut changes).unwrap();
    assert_eq!((back.id, back.attempt, back.alone), (held.id, 1, true));
}

#[test]
fn a_crash_condemns_only_the_delivery_out_alone() {
    let mut ledger = ledger_with(&[(1, RecordKind::Sms), (2, RecordKind::Sms)]);
    let now = Instant::now();
    let mut changes = Vec::new();
    let a = ledger.subscribe("g", KindSet::ALL, &mut changes);
    let first = ledger.claim("g", a, now, HOLD, &mut changes).unwrap();
    let second = ledger.claim("g", a, now, HOLD, &mut changes).unwrap();
    assert_eq!((first.alone, second.alone), (false, false));
    // The subscriber dies holding both: neither is charged.
    ledger.leave("g", a, now, &mut changes);
    let b = ledger.subscribe("g", KindSet::ALL, &mut changes);
    let one = ledger.claim("g", b, now, HOLD, &mut changes).unwrap();
    assert_eq!((one.id, one.attempt, one.alone), (1, 1, true));
    assert!(
        ledger.claim("g", b, now, HOLD, &mut changes).is_none(),
        "a suspect goes out alone"
    );
    // It dies again, holding only message 1: 1 alone is charged.
    ledger.leave("g", b, now, &mut changes);
    let c = ledger.subscribe("g", KindSet::ALL, &mut changes);
    let again = ledger.claim("g", c, now, HOLD, &mut changes).unwrap();
    assert_eq!((again.id, again.attempt), (1, 2));
    assert_eq!(ledger.ack("g", 1, &mut changes), Outcome::Done);
    let two = ledger.claim("g", c, now, HOLD, &mut changes).unwrap();
    assert_eq!((two.id, two.attempt, two.alone), (2, 1, true));
}

#[test]
fn credit_is_counted_once_per_delivery() {
    let mut ledger = ledger_with(&[(1, RecordKind::Text)]);
    let now = Instant::now();
    let mut changes = Vec::new();
    let m = ledger.subscribe("g", KindSet::ALL, &mut changes);
    ledger.claim("g", m, now, HOLD, &mut changes).unwrap();
    assert_eq!(ledger.holding("g", m), 1);
    // The deadline passes, and the same subscriber gets it again.
    ledger.sweep(now + HOLD, &mut changes);
    assert_eq!(ledger.holding("g", m), 0);
    ledger
        .claim("g", m, now + HOLD, HOLD, &mut changes)
        .unwrap();
    assert_eq!(ledger.holding("g", m), 1);
    assert_eq!(ledger.ack("g", 1, &mut changes), Outcome::Done);
    assert_eq!(ledger.holding("g", m), 0);
    assert_eq!(ledger.ack("g", 1, &mut changes), Outcome::NotPending);
    assert_eq!(ledger.holding("g", m), 0);
}

#[test]
fn restart_makes_delivered_ids_suspects_and_strikes_the_one_out_alone() {
    let mut ledger = ledger_with(&[(1, RecordKind::Text), (2, RecordKind::Text)]);
    let mut loaded = Loaded {
        kinds: Some(KindSet::of([RecordKind::Text])),
        ..Default::default()
    };
    loaded.marks.insert(RecordKind::Text as i32, 1);
    loaded.attempts.insert(1, (0, 1, true));
    let changes = ledger.restore("g", loaded, Instant::now());
    assert_eq!(
        changes,
        vec![Change::Attempts {
            group: "g".into(),
            id: 1,
            nacks: 0,
            strikes: 2,
            alone: false
        }]
    );
    let mut changes = Vec::new();
    let m = ledger.subscribe("g", KindSet::ALL, &mut changes);
    let first = ledger
        .claim("g", m, Instant::now(), HOLD, &mut changes)
        .unwrap();
    assert_eq!((first.id, first.attempt, first.alone), (1, 3, true));
}

/// One step of a generated history.
#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Subscribe(usize, u8),
    Leave(usize),
    Claim(usize),
    /// Ack, nack or extend one of the member's deliveries (by index), or a
    /// forged one: another group's pending id under this member's group.
    Verdict(usize, usize, u8),
    Advance(u64),
    Retain(u64),
    Expire,
    DeleteGroup(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..KINDS.len()).prop_map(Op::Publish),
        2 => (0..GROUPS.len(), 1u8..8).prop_map(|(g, k)| Op::Subscribe(g, k)),
        1 => (0..16usize).prop_map(Op::Leave),
        4 => (0..16usize).prop_map(Op::Claim),
        4 => (0..16usize, 0..8usize, 0u8..10).prop_map(|(m, d, v)| Op::Verdict(m, d, v)),
        2 => (0u64..2_500).prop_map(Op::Advance),
        1 => (20u64..400).prop_map(Op::Retain),
        1 => Just(Op::Expire),
        1 => (0..GROUPS.len()).prop_map(Op::DeleteGroup),
        1 => Just(Op::Restart),
    ]
}

/// What a durable file would hold, built only from [`Change`]s.
#[derive(Default)]
struct Disk {
    messages: BTreeMap<u64, RecordKind>,
    groups: HashMap<String, KindSet>,
    acks: HashSet<(String, u64)>,
    attempts: HashMap<(String, u64), (u32, u32, bool)>,
    marks: HashMap<(String, i32), u64>,
}

impl Disk {
    fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Group { name, kinds } => {
                    self.groups.insert(name, kinds);
                }
                Change::DropGroup { name } => {
                    self.groups.remove(&name);
                    self.acks.retain(|(g, _)| *g != name);
                    self.attempts.retain(|(g, _), _| *g != name);
                    self.marks.retain(|(g, _), _| *g != name);
                }
                Change::DropLane { group, kind } => {
                    let of_kind = |id: &u64| self.messages.get(id) == Some(&kind);
                    self.marks.remove(&(group.clone(), kind as i32));
                    let acks: Vec<(String, u64)> = self
                        .acks
                        .iter()
                        .filter(|(g, id)| *g == group && of_kind(id))
                        .cloned()
                        .collect();
                    for a in acks {
                        self.acks.remove(&a);
                    }
                    let attempts: Vec<(String, u64)> = self
                        .attempts
                        .keys()
                        .filter(|(g, id)| *g == group && of_kind(id))
                        .cloned()
                        .collect();
                    for a in attempts {
                        self.attempts.remove(&a);
                    }
                }
                Change::Ack { group, id } => {
                    self.attempts.remove(&(group.clone(), id));
                    self.acks.insert((group, id));
                }
                Change::Delete { id } => {
                    self.messages.remove(&id);
                    self.acks.retain(|(_, m)| *m != id);
                    self.attempts.retain(|(_, m), _| *m != id);
                }
                Change::Attempts {
                    group,
                    id,
                    nacks,
                    strikes,
                    alone,
                } => {
                    self.attempts.insert((group, id), (nacks, strikes, alone));
                }
                Change::Mark { group, kind, mark } => {
                    let at = self.marks.entry((group, kind as i32)).or_default();
                    *at = (*at).max(mark);
                }
            }
        }
    }

    fn load(&self, now: Instant) -> (Ledger, Vec<Change>) {
        let mut ledger = Ledger::new(1 << 20);
        for (id, kind) in &self.messages {
            ledger.append(*id, meta(*kind));
        }
        let mut changes = Vec::new();
        for (name, kinds) in &self.groups {
            let mut loaded = Loaded {
                kinds: Some(*kinds),
                ..Default::default()
            };
            for (g, id) in &self.acks {
                if g == name {
                    loaded.acked.insert(*id);
                }
            }
            for ((g, kind), mark) in &self.marks {
                if g == name {
                    loaded.marks.insert(*kind, *mark);
                }
            }
            for ((g, id), a) in &self.attempts {
                if g == name {
                    loaded.attempts.insert(*id, *a);
                }
            }
            changes.extend(ledger.restore(name, loaded, now));
        }
        let doomed = ledger.unwanted();
        ledger.forget(&doomed);
        changes.extend(doomed.into_iter().map(|id| Change::Delete { id }));
        (ledger, changes)
    }
}

/// The reference model: what each group's lane of a kind must still get,
/// and what each delivery has been charged.
#[derive(Default)]
struct Model {
    kinds: HashMap<u64, RecordKind>,
    /// Live members: id -> (group, kinds, out deliveries with deadline).
    members: BTreeMap<MemberId, (usize, KindSet, BTreeMap<u64, Instant>)>,
    /// Per live lane (group, kind): the ids it must end up acking, unless
    /// a counted policy drops them: those retained when the lane was made,
    /// and those published since.
    expect: HashMap<(usize, RecordKind), HashSet<u64>>,
    /// Per (group, id): acked.
    acked: HashSet<(usize, u64)>,
    /// Per (group, id): dropped by a counted policy.
    dropped: HashSet<(usize, u64)>,
    /// Per (group, id): 1 + nacks + abandons while alone.
    charged: HashMap<(usize, u64), u32>,
    /// Per group: the delivery out alone.
    alone: HashMap<usize, (u64, MemberId)>,
}

fn group_index(name: &str) -> usize {
    GROUPS.iter().position(|g| *g == name).unwrap_or(usize::MAX)
}

impl Model {
    fn out_of(&self, g: usize, id: u64) -> Option<MemberId> {
        self.members
            .iter()
            .find(|(_, (mg, _, out))| *mg == g && out.contains_key(&id))
            .map(|(m, _)| *m)
    }

    fn reads(&self, g: usize, kind: RecordKind) -> bool {
        self.expect.contains_key(&(g, kind))
    }

    /// A delivery comes back without a verdict: charged only if alone.
    fn abandon(&mut self, g: usize, id: u64) {
        if self.alone.get(&g).is_some_and(|(a, _)| *a == id) {
            self.alone.remove(&g);
            *self.charged.entry((g, id)).or_insert(1) += 1;
        }
    }

    /// The lane is gone: the group starts afresh should it read the kind
    /// again.
    fn forget_lane(&mut self, g: usize, kind: RecordKind) {
        self.expect.remove(&(g, kind));
        let ids: Vec<u64> = self
            .kinds
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.acked.remove(&(g, *id));
            self.dropped.remove(&(g, *id));
            self.charged.remove(&(g, *id));
        }
        for (_, (mg, _, out)) in self.members.iter_mut() {
            if *mg == g {
                out.retain(|id, _| !ids.contains(id));
            }
        }
        if self.alone.get(&g).is_some_and(|(id, _)| ids.contains(id)) {
            self.alone.remove(&g);
        }
    }
}

fn check_credit(ledger: &Ledger, model: &Model) -> Result<(), TestCaseError> {
    for (m, (g, _, out)) in &model.members {
        prop_assert_eq!(
            ledger.holding(GROUPS[*g], *m),
            out.len(),
            "credit of member {} of {}",
            m,
            GROUPS[*g]
        );
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut ledger = Ledger::new(1 << 20);
    let mut disk = Disk::default();
    let mut model = Model::default();
    let mut now = Instant::now();
    let mut next_id = 1u64;
    let mut changes = Vec::new();
    let mut member_list: Vec<MemberId> = Vec::new();

    for op in ops {
        match op {
            Op::Publish(k) => {
                let kind = KINDS[k];
                disk.messages.insert(next_id, kind);
                ledger.append(next_id, meta(kind));
                model.kinds.insert(next_id, kind);
                for ((_, k), ids) in model.expect.iter_mut() {
                    if *k == kind {
                        ids.insert(next_id);
                    }
                }
                next_id += 1;
            }
            Op::Subscribe(g, bits) => {
                let kinds = KindSet::of(
                    KINDS
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| bits & (1 << i) != 0)
                        .map(|(_, k)| *k),
                );
                let retained = ledger.ids();
                for kind in kinds.kinds() {
                    if !model.expect.contains_key(&(g, kind)) {
                        let ids = retained
                            .iter()
                            .copied()
                            .filter(|id| model.kinds[id] == kind)
                            .collect();
                        model.expect.insert((g, kind), ids);
                    }
                }
                let m = ledger.subscribe(GROUPS[g], kinds, &mut changes);
                model.members.insert(m, (g, kinds, BTreeMap::new()));
                member_list.push(m);
            }
            Op::Leave(i) => {
                let Some(&m) = member_list.get(i % member_list.len().max(1)) else {
                    continue;
                };
                let Some((g, _, out)) = model.members.remove(&m) else {
                    continue;
                };
                ledger.leave(GROUPS[g], m, now, &mut changes);
                for id in out.keys() {
                    model.abandon(g, *id);
                }
            }
            Op::Claim(i) => {
                let Some(&m) = member_list.get(i % member_list.len().max(1)) else {
                    continue;
                };
                let Some((g, kinds, held)) = model.members.get(&m).cloned() else {
                    continue;
                };
                let Some(claim) = ledger.claim(GROUPS[g], m, now, HOLD, &mut changes) else {
                    continue;
                };
                prop_assert!(
                    kinds.contains(claim.meta.kind),
                    "a subscriber gets only its kinds"
                );
                prop_assert!(
                    !model.acked.contains(&(g, claim.id)),
                    "message {} came back to {} after its ack",
                    claim.id,
                    GROUPS[g]
                );
                prop_assert!(
                    !model.dropped.contains(&(g, claim.id)),
                    "a dropped message came back"
                );
                prop_assert!(
                    model.out_of(g, claim.id).is_none(),
                    "delivered twice at once"
                );
                let charged = model.charged.get(&(g, claim.id)).copied().unwrap_or(1);
                prop_assert_eq!(claim.attempt, charged, "attempt of {}", claim.id);
                if claim.alone {
                    prop_assert!(held.is_empty(), "a suspect goes out alone");
                    prop_assert!(!model.alone.contains_key(&g), "one suspect out per group");
                    model.alone.insert(g, (claim.id, m));
                } else if let Some((_, holder)) = model.alone.get(&g) {
                    prop_assert_ne!(*holder, m, "the holder of a suspect gets nothing else");
                }
                if let Some((_, _, out)) = model.members.get_mut(&m) {
                    out.insert(claim.id, now + HOLD);
                }
            }
            Op::Verdict(i, d, v) => {
                let Some(&m) = member_list.get(i % member_list.len().max(1)) else {
                    continue;
                };
                let Some((g, _, out)) = model.members.get(&m).cloned() else {
                    continue;
                };
                let group = GROUPS[g];
                if v == 9 {
                    // Forged: an id pending in another group, acked as ours.
                    let theirs: Vec<u64> = model
                        .members
                        .values()
                        .filter(|(og, _, _)| *og != g)
                        .flat_map(|(_, _, o)| o.keys().copied())
                        .filter(|id| model.out_of(g, *id).is_none())
                        .collect();
                    if let Some(id) = theirs.first()
                        && !model.reads(g, model.kinds[id])
                    {
                        let before = ledger.ids();
                        let outcome = ledger.ack(group, *id, &mut changes);
                        prop_assert_eq!(outcome, Outcome::NotPending);
                        prop_assert_eq!(ledger.ids(), before, "a forged ack deletes nothing");
                    }
                    continue;
                }
                let Some((&id, _)) = out.iter().nth(d % out.len().max(1)) else {
                    continue;
                };
                let charged = model.charged.get(&(g, id)).copied().unwrap_or(1);
                let verdict = if charged > MAX_ATTEMPTS { 0 } else { v };
                match verdict {
                    0..=4 => {
                        // Past its last attempt a parser dead-letters it
                        // and acks it: the same verdict for the queue.
                        prop_assert_eq!(ledger.ack(group, id, &mut changes), Outcome::Done);
                        model.acked.insert((g, id));
                    }
                    5..=6 => {
                        prop_assert_eq!(
                            ledger.nack(group, id, now, backoff, &mut changes),
                            Outcome::Done
                        );
                        *model.charged.entry((g, id)).or_insert(1) += 1;
                    }
                    _ => {
                        prop_assert_eq!(ledger.extend(group, id, now), Outcome::Done);
                        if let Some((_, _, o)) = model.members.get_mut(&m) {
                            o.insert(id, now + HOLD);
                        }
                        continue;
                    }
                }
                if model.alone.get(&g).is_some_and(|(a, _)| *a == id) {
                    model.alone.remove(&g);
                }
                if let Some((_, _, o)) = model.members.get_mut(&m) {
                    o.remove(&id);
                }
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(ms);
                ledger.sweep(now, &mut changes);
                let mut expired = Vec::new();
                for (_, (g, _, out)) in model.members.iter_mut() {
                    out.retain(|id, deadline| {
                        let keep = *deadline > now;
                        if !keep {
                            expired.push((*g, *id));
                        }
                        keep
                    });
                }
                for (g, id) in expired {
                    model.abandon(g, id);
                }
            }
            Op::Retain(max_bytes) => {
                for drop in ledger.retain(0, Duration::from_secs(1), max_bytes, &mut changes) {
                    for g in 0..GROUPS.len() {
                        let wanted = drop.groups.iter().any(|n| group_index(n) == g);
                        let expected = model
                            .expect
                            .get(&(g, model.kinds[&drop.id]))
                            .is_some_and(|ids| ids.contains(&drop.id));
                        if expected && !model.acked.contains(&(g, drop.id)) {
                            prop_assert!(
                                wanted,
                                "a drop is counted for every group that wanted it"
                            );
                            model.dropped.insert((g, drop.id));
                        }
                        if let Some(m) = model.out_of(g, drop.id)
                            && let Some((_, _, out)) = model.members.get_mut(&m)
                        {
                            out.remove(&drop.id);
                        }
                        if model.alone.get(&g).is_some_and(|(a, _)| *a == drop.id) {
                            model.alone.remove(&g);
                        }
                    }
                }
            }
            Op::Expire => {
                now += TTL;
                ledger.sweep(now, &mut changes);
                let mut expired = Vec::new();
                for (_, (g, _, out)) in model.members.iter_mut() {
                    for id in std::mem::take(out).into_keys() {
                        expired.push((*g, id));
                    }
                }
                for (g, id) in expired {
                    model.abandon(g, id);
                }
                for (name, kinds, _) in ledger.expire(now, TTL, &mut changes) {
                    let g = group_index(&name);
                    for kind in kinds {
                        let live = model
                            .members
                            .values()
                            .any(|(mg, k, _)| *mg == g && k.contains(kind));
                        prop_assert!(!live, "a lane with a live subscriber never expires");
                        model.forget_lane(g, kind);
                    }
                }
                // The deliveries the sweep took back are out again later;
                // the members stay live.
            }
            Op::DeleteGroup(g) => {
                if ledger.delete_group(GROUPS[g], &mut changes).is_some() {
                    for kind in KINDS {
                        model.forget_lane(g, kind);
                    }
                    model.alone.remove(&g);
                    let gone: Vec<MemberId> = model
                        .members
                        .iter()
                        .filter(|(_, (mg, _, _))| *mg == g)
                        .map(|(m, _)| *m)
                        .collect();
                    for m in gone {
                        model.members.remove(&m);
                    }
                }
            }
            Op::Restart => {
                disk.apply(std::mem::take(&mut changes));
                let (fresh, start) = disk.load(now);
                ledger = fresh;
                disk.apply(start);
                let out: Vec<(usize, u64)> = model
                    .members
                    .values()
                    .flat_map(|(g, _, o)| o.keys().map(move |id| (*g, *id)))
                    .collect();
                for (g, id) in out {
                    model.abandon(g, id);
                }
                model.members.clear();
                member_list.clear();
            }
        }
        disk.apply(std::mem::take(&mut changes));
        check_credit(&ledger, &model)?;
    }

    // Drain: every lane's group reads everything, acking (or
    // dead-lettering) all it gets; deadlines pass between rounds.
    let mut lanes: HashMap<usize, Vec<RecordKind>> = HashMap::new();
    for (g, kind) in model.expect.keys() {
        lanes.entry(*g).or_default().push(*kind);
    }
    let mut drainers = Vec::new();
    for (g, kinds) in lanes {
        drainers.push((
            g,
            ledger.subscribe(GROUPS[g], KindSet::of(kinds), &mut changes),
        ));
    }
    for _ in 0..4 {
        for (g, m) in &drainers {
            while let Some(claim) = ledger.claim(GROUPS[*g], *m, now, HOLD, &mut changes) {
                prop_assert!(!model.acked.contains(&(*g, claim.id)));
                prop_assert_eq!(
                    ledger.ack(GROUPS[*g], claim.id, &mut changes),
                    Outcome::Done
                );
                model.acked.insert((*g, claim.id));
            }
        }
        now += HOLD * 2;
        ledger.sweep(now, &mut changes);
    }
    for ((g, kind), ids) in &model.expect {
        for id in ids {
            prop_assert!(
                model.acked.contains(&(*g, *id)) || model.dropped.contains(&(*g, *id)),
                "message {} ({:?}) neither acked nor dropped by {}",
                id,
                kind,
                GROUPS[*g]
            );
        }
    }
    // Nothing is kept that every reader has acked.
    for id in ledger.ids() {
        let kind = model.kinds[&id];
        let read = model.expect.keys().any(|(_, k)| *k == kind);
        prop_assert!(
            !read,
            "message {} is retained though every reader acked it",
            id
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("TRIBUTARY_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    })]

    /// Random histories of publishes, (re)subscriptions with changing
    /// kinds, claims, acks, nacks, extensions, forged acks, deadlines,
    /// subscribers leaving, retention, expiry, group deletion and crashes
    /// with restarts, against the reference model above.
    #[test]
    fn the_ledger_keeps_its_promises(ops in proptest::collection::vec(op(), 0..200)) {
        run(ops)?;
    }
}
