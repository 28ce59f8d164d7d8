//! The embedded queue's dedupe index: per source, the ranges of sequence
//! numbers already appended.
//!
//! **Cost.** A commit touches only the keys it adds: each new key is put in
//! the in-memory range set, and only the ranges that now hold a new key are
//! written (`seen` rows keyed by `(source, start)`; a grown range replaces
//! the rows it swallowed). A source with a million gaps costs a publish no
//! more than a gap-free one. If the commit fails, the keys it added are
//! taken out again.
//!
//! **Window.** A source's keys are forgotten, all at once, when the source
//! has published nothing for the dedupe window (by default the queue's
//! retention age). Forgetting only whole, silent sources never reopens a
//! gap a live producer could republish into: a producer republishes only
//! what it has not seen acknowledged, while it keeps running, so a source
//! that has been silent longer than any producer's retry horizon has
//! nothing left to republish. Keep producers' retry horizons (a `send`
//! that keeps retrying, a restarted producer reusing its source id) below
//! the window.

use std::collections::{BTreeSet, HashMap};

use rangemap::RangeInclusiveSet;
use sqlx::{Row, SqliteConnection};

/// Sequence numbers already appended, per source.
#[derive(Debug, Default)]
pub(crate) struct Dedupe {
    sources: HashMap<String, Source>,
}

#[derive(Debug, Default)]
struct Source {
    seen: RangeInclusiveSet<u64>,
    /// When the source last published, in microseconds since the epoch.
    touched: i64,
}

/// Keys one commit added, to persist or to take back, per source that
/// published in it (duplicates too: republishing keeps a source alive).
#[derive(Debug, Default)]
pub(crate) struct Added {
    keys: HashMap<String, Vec<u64>>,
}

impl Dedupe {
    /// Reads the index, converting the older one-blob-per-source layout.
    pub(crate) async fn load(conn: &mut SqliteConnection) -> Result<Self, sqlx::Error> {
        let mut dedupe = Self::default();
        for row in sqlx::query("SELECT source, start, end_, touched FROM seen")
            .fetch_all(&mut *conn)
            .await?
        {
            let (start, end) = (row.get::<i64, _>(1) as u64, row.get::<i64, _>(2) as u64);
            let source = dedupe.sources.entry(row.get(0)).or_default();
            if start <= end {
                source.seen.insert(start..=end);
            }
            source.touched = source.touched.max(row.get(3));
        }
        let legacy = sqlx::query("SELECT source, ranges FROM sources")
            .fetch_all(&mut *conn)
            .await?;
        if !legacy.is_empty() {
            let now = crate::clock::now_micros();
            for row in legacy {
                let name: String = row.get(0);
                let source = dedupe.sources.entry(name.clone()).or_default();
                source.touched = source.touched.max(now);
                for range in decode_ranges(row.get(1)).iter() {
                    source.seen.insert(range.clone());
                    sqlx::query(
                        "INSERT OR REPLACE INTO seen (source, start, end_, touched) VALUES (?, ?, ?, ?)",
                    )
                    .bind(&name)
                    .bind(*range.start() as i64)
                    .bind(*range.end() as i64)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            sqlx::query("DELETE FROM sources")
                .execute(&mut *conn)
                .await?;
        }
        Ok(dedupe)
    }

    /// Whether `(source, seq)` was seen; if not, it is now, as part of
    /// `added`.
    pub(crate) fn add(&mut self, source: &str, seq: u64, added: &mut Added) -> bool {
        let entry = match self.sources.get_mut(source) {
            Some(entry) => entry,
            None => self.sources.entry(source.to_owned()).or_default(),
        };
        let keys = match added.keys.get_mut(source) {
            Some(keys) => keys,
            None => added.keys.entry(source.to_owned()).or_default(),
        };
        if entry.seen.contains(&seq) {
            return false;
        }
        entry.seen.insert(seq..=seq);
        keys.push(seq);
        true
    }

    /// Writes the ranges that hold the keys of `added`, and the sources'
    /// last-publish time.
    pub(crate) async fn persist(
        &mut self,
        conn: &mut SqliteConnection,
        added: &Added,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        for (name, keys) in &added.keys {
            let Some(source) = self.sources.get_mut(name) else {
                continue;
            };
            source.touched = now;
            let ranges: BTreeSet<(u64, u64)> = keys
                .iter()
                .filter_map(|k| source.seen.get(k))
                .map(|r| (*r.start(), *r.end()))
                .collect();
            for (start, end) in ranges {
                sqlx::query("DELETE FROM seen WHERE source = ? AND start BETWEEN ? AND ?")
                    .bind(name)
                    .bind(start as i64)
                    .bind(end as i64)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("INSERT INTO seen (source, start, end_, touched) VALUES (?, ?, ?, ?)")
                    .bind(name)
                    .bind(start as i64)
                    .bind(end as i64)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query("UPDATE seen SET touched = ? WHERE source = ? AND start = (SELECT min(start) FROM seen WHERE source = ?)")
                .bind(now)
                .bind(name)
                .bind(name)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Takes back the keys of a commit that failed.
    pub(crate) fn undo(&mut self, added: Added) {
        for (name, keys) in added.keys {
            if let Some(source) = self.sources.get_mut(&name) {
                for key in keys {
                    source.seen.remove(key..=key);
                }
            }
        }
    }

    /// Forgets the sources silent since before `horizon` (microseconds
    /// since the epoch), in memory and in the file.
    pub(crate) async fn expire(
        &mut self,
        conn: &mut SqliteConnection,
        horizon: i64,
    ) -> Result<usize, sqlx::Error> {
        let silent: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, s)| s.touched < horizon)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &silent {
            sqlx::query("DELETE FROM seen WHERE source = ?")
                .bind(name)
                .execute(&mut *conn)
                .await?;
            self.sources.remove(name);
        }
        Ok(silent.len())
    }
}

/// The older layout: ranges as consecutive little-endian (start, end)
/// pairs of u64.
pub(crate) fn decode_ranges(bytes: &[u8]) -> RangeInclusiveSet<u64> {
    let mut set = RangeInclusiveSet::new();
    for pair in bytes.chunks_exact(16) {
        let mut start = [0u8; 8];
        let mut end = [0u8; 8];
        start.copy_from_slice(&pair[..8]);
        end.copy_from_slice(&pair[8..]);
        let (start, end) = (u64::from_le_bytes(start), u64::from_le_bytes(end));
        if start <= end {
            set.insert(start..=end);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Random keys over a few sources, in commits that succeed or fail
        /// (and are taken back), against a set of the committed keys: a key
        /// is new exactly when the model has not seen it, and a failed
        /// commit leaves no key behind.
        #[test]
        fn the_index_answers_as_a_set_of_committed_keys(
            commits in proptest::collection::vec(
                (proptest::collection::vec((0usize..3, 0u64..64), 0..40), any::<bool>()),
                0..40,
            )
        ) {
            let mut dedupe = Dedupe::default();
            let mut committed: HashSet<(usize, u64)> = HashSet::new();
            for (keys, fails) in commits {
                let mut added = Added::default();
                let mut staged = HashSet::new();
                for (source, seq) in keys {
                    let new = dedupe.add(&format!("s{source}"), seq, &mut added);
                    let expected = !committed.contains(&(source, seq)) && staged.insert((source, seq));
                    prop_assert_eq!(new, expected, "key ({}, {})", source, seq);
                }
                if fails {
                    dedupe.undo(added);
                } else {
                    committed.extend(staged);
                }
            }
        }
    }
}
