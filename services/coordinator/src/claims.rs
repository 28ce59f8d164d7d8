//! The coordinator's state machine: which values it has granted for which
//! ticks, and which generators are members. It holds no I/O and no clock:
//! callers pass the current tick in, so it is tested exhaustively with
//! generated histories.
//!
//! # The promise and how it is kept
//!
//! No two generators ever get the same value for the same tick.
//!
//! - **Within one incarnation** the coordinator remembers every value it
//!   granted for each tick it still accepts claims for, and draws a new
//!   value uniformly from the requested range minus those. A generator that
//!   claims the same tick twice (say, after a lost response) gets its first
//!   value again, so a retry never takes a second value.
//! - **Joining and leaving** need nothing special: a value is unique among
//!   all grants of its tick, whoever asked. Membership (an open Claim
//!   stream) guards the one thing grants cannot: two live streams with the
//!   same generator id would be handed the same idempotent value, so a
//!   second stream with a live id is refused. A generator that leaves keeps
//!   its grants reserved until its ticks are forgotten.
//! - **Across restarts** a new incarnation knows nothing of its
//!   predecessor's grants. Grants are only ever made for ticks from
//!   `now - RETAIN_TICKS + 1` up to `now + LEAD_TICKS`, and a new
//!   incarnation started at tick `b` refuses every tick up to
//!   `b + LEAD_TICKS`: those are the only ticks its predecessor, which died
//!   before `b`, could have granted. The two incarnations' ticks are
//!   disjoint, so their values cannot collide. This assumes one coordinator
//!   at a time and clocks that agree to within a tick across a restart.
//! - **When the wall clock steps back** (an NTP correction, a VM resumed,
//!   an operator's `date -s`), the clock readings it is given go back, but
//!   its notion of "now" does not: it keeps the highest tick it was ever
//!   given ([`Claims::claim`]'s `now_tick`, a high-water mark) and judges
//!   every claim against that. Grants are only made for ticks from
//!   `high - RETAIN_TICKS + 1` to `high + LEAD_TICKS`, and every grant in
//!   that span is remembered; a tick below it has been forgotten, but the
//!   mark never goes down, so such a tick is refused as too old for good.
//!   A step back of any size therefore regrants nothing: generators whose
//!   own clocks stepped back too ask for ticks the mark has passed, are
//!   refused, and skip ticks until the wall clock catches up. (Across a
//!   restart the mark is lost, so the restart rule below still assumes the
//!   new incarnation's clock is not behind its predecessor's.)
//! - **While unreachable** the coordinator grants nothing, and a generator
//!   without a grant does not emit: it skips the tick and counts it. There
//!   is no fallback partition; pausing keeps the promise with any N.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::{RngExt, SeedableRng, rngs::StdRng};

/// Ticks (5 s) of grants kept, and so the oldest tick still accepted.
pub const RETAIN_TICKS: i64 = 50;

/// How far ahead of the coordinator's clock a tick may be claimed: one, so
/// a generator can claim its next tick while the current one runs.
pub const LEAD_TICKS: i64 = 1;

/// Why a claim got no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tick is too close to this incarnation's start: an earlier one
    /// may have granted values for it.
    BeforeStart,
    /// The tick is more than [`LEAD_TICKS`] ahead of the coordinator.
    TooFarAhead,
    /// The tick is older than the grants kept.
    TooOld,
    /// Every value of the range is taken for this tick.
    RangeUsedUp,
    /// `min` is greater than `max`.
    EmptyRange,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::BeforeStart => {
                "the tick is too close to the coordinator's start; an earlier coordinator may have granted it"
            }
            Refusal::TooFarAhead => "the tick is more than one tick ahead of the coordinator's clock",
            Refusal::TooOld => "the tick is older than the grants the coordinator keeps",
            Refusal::RangeUsedUp => "every value of the range is taken for this tick",
            Refusal::EmptyRange => "min is greater than max",
        })
    }
}

#[derive(Debug, Default)]
struct Tick {
    by_generator: HashMap<String, i64>,
    used: HashSet<i64>,
}

/// Grants and members of one coordinator incarnation.
#[derive(Debug)]
pub struct Claims {
    first_tick: i64,
    /// The highest clock reading (tick) ever passed in: the coordinator's
    /// "now", which never goes back even when the wall clock does.
    high_tick: i64,
    ticks: BTreeMap<i64, Tick>,
    members: HashSet<String>,
    rng: StdRng,
    /// Claims so far that met a value another generator held.
    conflicts: u64,
}

impl Claims {
    /// A fresh incarnation started during tick `start_tick`.
    pub fn new(start_tick: i64, seed: u64) -> Self {
        Self {
            first_tick: start_tick + LEAD_TICKS + 1,
            high_tick: start_tick,
            ticks: BTreeMap::new(),
            members: HashSet::new(),
            rng: StdRng::seed_from_u64(seed),
            conflicts: 0,
        }
    }

    /// Claims so far that were refused or drew again because another
    /// generator held the value.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Adds a member; false if one with this id is already live.
    pub fn join(&mut self, generator: &str) -> bool {
        self.members.insert(generator.to_owned())
    }

    /// Removes a member.
    pub fn leave(&mut self, generator: &str) {
        self.members.remove(generator);
    }

    /// Live members.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Grants `generator` a value in `min..=max` for `tick`, unique among
    /// the tick's grants, with the coordinator's clock at `now_tick`. A
    /// reading behind an earlier one (the wall clock stepped back) counts as
    /// the earlier one.
    pub fn claim(
        &mut self,
        generator: &str,
        tick: i64,
        min: i64,
        max: i64,
        now_tick: i64,
    ) -> Result<i64, Refusal> {
        self.high_tick = self.high_tick.max(now_tick);
        let now_tick = self.high_tick;
        if min > max {
            return Err(Refusal::EmptyRange);
        }
        if tick < self.first_tick {
            return Err(Refusal::BeforeStart);
        }
        if tick > now_tick + LEAD_TICKS {
            return Err(Refusal::TooFarAhead);
        }
        if tick <= now_tick - RETAIN_TICKS {
            return Err(Refusal::TooOld);
        }
        self.forget_before(now_tick - RETAIN_TICKS + 1);
        let grants = self.ticks.entry(tick).or_default();
        if let Some(value) = grants.by_generator.get(generator) {
            return Ok(*value);
        }
        let Some((value, redrawn)) = draw(&mut self.rng, &grants.used, min, max) else {
            self.conflicts += 1;
            return Err(Refusal::RangeUsedUp);
        };
        self.conflicts += u64::from(redrawn);
        grants.used.insert(value);
        grants.by_generator.insert(generator.to_owned(), value);
        Ok(value)
    }

    fn forget_before(&mut self, oldest: i64) {
        self.ticks = self.ticks.split_off(&oldest);
    }
}

/// A value drawn uniformly from `min..=max` minus `used`, if any is left,
/// and whether a value another generator held was drawn first.
fn draw(rng: &mut StdRng, used: &HashSet<i64>, min: i64, max: i64) -> Option<(i64, bool)> {
    let size = (max as i128 - min as i128 + 1) as u128;
    let taken = used.iter().filter(|v| (min..=max).contains(*v)).count() as u128;
    if taken >= size {
        return None;
    }
    // With at most half the range taken, rejection sampling needs under two
    // draws on average; past that, pick among the free values directly.
    if taken * 2 <= size {
        let mut redrawn = false;
        loop {
            let value = rng.random_range(min..=max);
            if !used.contains(&value) {
                return Some((value, redrawn));
            }
            redrawn = true;
        }
    }
    let free: Vec<i64> = (min..=max).filter(|v| !used.contains(v)).collect();
    // Past half the range taken, a uniform draw over the whole range would
    // more likely than not have hit a held value.
    Some((free[rng.random_range(0..free.len())], true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_value_another_generator_holds_counts_as_a_conflict() {
        let mut claims = Claims::new(0, 7);
        // One value for two generators: the second is refused.
        assert_eq!(claims.claim("a", 10, 5, 5, 10), Ok(5));
        assert_eq!(claims.conflicts(), 0);
        assert_eq!(claims.claim("b", 10, 5, 5, 10), Err(Refusal::RangeUsedUp));
        assert_eq!(claims.conflicts(), 1);
        // Asking again for the same tick is no conflict.
        assert_eq!(claims.claim("a", 10, 5, 5, 10), Ok(5));
        assert_eq!(claims.conflicts(), 1);
    }

    #[test]
    fn a_restarted_coordinator_refuses_the_ticks_its_predecessor_could_have_granted() {
        let mut before = Claims::new(100, 1);
        // The last tick the first incarnation can grant while alive at 104.
        assert!(before.claim("g", 105, 1, 10_000, 104).is_ok());
        let mut after = Claims::new(104, 2);
        assert_eq!(
            after.claim("g", 105, 1, 10_000, 104),
            Err(Refusal::BeforeStart)
        );
        assert_eq!(
            after.claim("g", 105, 1, 10_000, 105),
            Err(Refusal::BeforeStart)
        );
        assert!(after.claim("g", 106, 1, 10_000, 105).is_ok());
    }

    #[test]
    fn claims_are_idempotent_and_bounded_in_time() {
        let mut claims = Claims::new(0, 3);
        let first = claims.claim("a", 10, 1, 10_000, 9).unwrap();
        assert_eq!(claims.claim("a", 10, 1, 10_000, 10), Ok(first));
        assert_eq!(
            claims.claim("a", 12, 1, 10_000, 10),
            Err(Refusal::TooFarAhead)
        );
        assert_eq!(
            claims.claim("a", 10, 1, 10_000, 10 + RETAIN_TICKS),
            Err(Refusal::TooOld)
        );
        assert_eq!(claims.claim("a", 10, 5, 4, 10), Err(Refusal::EmptyRange));
    }

    #[test]
    fn a_small_range_is_shared_until_it_is_used_up() {
        let mut claims = Claims::new(0, 4);
        let mut values: Vec<i64> = ["a", "b", "c"]
            .iter()
            .map(|g| claims.claim(g, 5, 1, 3, 5).unwrap())
            .collect();
        values.sort();
        assert_eq!(values, vec![1, 2, 3]);
        assert_eq!(claims.claim("d", 5, 1, 3, 5), Err(Refusal::RangeUsedUp));
    }

    #[test]
    fn one_live_stream_per_generator_id() {
        let mut claims = Claims::new(0, 5);
        assert!(claims.join("a"));
        assert!(!claims.join("a"));
        claims.leave("a");
        assert!(claims.join("a"));
        assert_eq!(claims.members(), 1);
    }

    /// The wall clock steps back 60 s (600 ticks) after a minute of grants:
    /// no tick already granted gets a value again, and a generator asking
    /// for a tick it holds gets the value it holds.
    #[test]
    fn a_clock_stepped_back_sixty_seconds_regrants_nothing() {
        let mut claims = Claims::new(1_000, 9);
        let mut granted: HashMap<(i64, &str), i64> = HashMap::new();
        for now in 1_002..=1_602 {
            for g in ["a", "b"] {
                let value = claims.claim(g, now + 1, 1, 3, now).unwrap();
                granted.insert((now + 1, g), value);
            }
        }
        let stepped_back = 1_602 - 600;
        for tick in 1_000..=1_604 {
            for g in ["a", "b", "c"] {
                match claims.claim(g, tick, 1, 3, stepped_back) {
                    Ok(value) => {
                        // Only a tick still remembered answers, and only with
                        // the value its holder already has, or a value no one
                        // holds for a generator that holds none.
                        assert!(tick > 1_602 - RETAIN_TICKS, "tick {tick} granted again");
                        match granted.get(&(tick, g)) {
                            Some(held) => assert_eq!(*held, value, "tick {tick} regranted"),
                            None => {
                                assert!(
                                    granted.iter().all(|((t, _), v)| *t != tick || *v != value),
                                    "tick {tick} value {value} granted twice"
                                );
                                granted.insert((tick, g), value);
                            }
                        }
                    }
                    Err(refusal) => assert!(
                        matches!(
                            refusal,
                            Refusal::TooOld
                                | Refusal::RangeUsedUp
                                | Refusal::BeforeStart
                                | Refusal::TooFarAhead
                        ),
                        "{refusal:?}"
                    ),
                }
            }
        }
        // Ticks the mark has passed stay refused as the clock catches up.
        for now in stepped_back..=1_602 {
            assert_eq!(claims.claim("c", 1_100, 1, 3, now), Err(Refusal::TooOld));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// N generators (2 to 16) join and leave at random over 10,000
        /// ticks, the coordinator restarts at random, and members claim
        /// mostly their next tick but also the current one, late ones, ones
        /// too far ahead, and retries. The wall clock steps back at random, by
        /// up to two minutes, and generators claim by the stepped clock too.
        /// Across every incarnation no value is
        /// ever granted to two generators for one tick, no generator ever
        /// holds two values for one tick, and every value is in range.
        #[test]
        fn no_tick_ever_has_a_duplicate_value(
            n in 2usize..=16,
            // (tick, generator, what): 0..=3 join, 4..=6 leave, 7 restart,
            // 8 the clock steps back.
            events in proptest::collection::vec((0i64..10_000, 0usize..16, 0u8..9), 0..300),
            seed in any::<u64>(),
            // The full range, or one so small that grants run out.
            max in prop_oneof![Just(10_000i64), 16i64..40],
        ) {
            let mut by_tick: BTreeMap<i64, Vec<(usize, u8)>> = BTreeMap::new();
            for (tick, who, what) in events {
                by_tick.entry(tick).or_default().push((who % n, what));
            }
            let mut rng = StdRng::seed_from_u64(seed);
            let mut claims = Claims::new(0, rng.random());
            let mut members = vec![false; n];
            // Per tick: value -> generator, and generator -> value.
            let mut owner: HashMap<i64, HashMap<i64, usize>> = HashMap::new();
            let mut held: HashMap<i64, HashMap<usize, i64>> = HashMap::new();
            // How far the wall clock is behind true time.
            let mut behind = 0i64;
            for true_now in 0..10_000i64 {
                let mut now = true_now - behind;
                for &(who, what) in by_tick.get(&now).into_iter().flatten() {
                    match what {
                        0..=3 if !members[who] => {
                            prop_assert!(claims.join(&who.to_string()));
                            members[who] = true;
                        }
                        4..=6 if members[who] => {
                            claims.leave(&who.to_string());
                            members[who] = false;
                        }
                        7 => {
                            // A restart assumes a clock not behind the
                            // predecessor's (see the module's reasoning).
                            behind = 0;
                            now = true_now;
                            claims = Claims::new(now, rng.random());
                            for (g, _) in members.iter().enumerate().filter(|(_, live)| **live) {
                                prop_assert!(claims.join(&g.to_string()));
                            }
                        }
                        8 => {
                            behind += rng.random_range(1..=1_200);
                            now = true_now - behind;
                        }
                        _ => {}
                    }
                }
                for g in (0..n).filter(|g| members[*g]) {
                    let tick = match rng.random_range(0..10) {
                        0 => now,
                        1 => now - rng.random_range(1..RETAIN_TICKS + 3),
                        2 => now + 2,
                        _ => now + 1,
                    };
                    let attempts = if rng.random_range(0..5) == 0 { 2 } else { 1 };
                    for _ in 0..attempts {
                        let Ok(value) = claims.claim(&g.to_string(), tick, 1, max, now) else {
                            continue;
                        };
                        prop_assert!((1..=max).contains(&value));
                        let first_owner = *owner.entry(tick).or_default().entry(value).or_insert(g);
                        prop_assert_eq!(first_owner, g, "tick {} value {} went to two generators", tick, value);
                        let first_value = *held.entry(tick).or_default().entry(g).or_insert(value);
                        prop_assert_eq!(first_value, value, "generator {} got two values for tick {}", g, tick);
                    }
                }
            }
        }
    }
}
