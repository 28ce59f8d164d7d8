//! The workloads: what parsers derive from records beside storing them, and
//! the reads the query API answers from it. Each workload is one module
//! that owns its fact type, its tables, the gathering of its rows, its read
//! SQL with its row types, its default group name and its conformance test.
//! The store backends only loop over the registry below.
//!
//! Adding a workload is a module with a type implementing [`Workload`] and
//! one line in [`registry!`]'s invocation; see `docs/extending.md`.
//!
//! Facts are written in the same transaction as their record and only when
//! the record's key is new, so redeliveries and republished keys never count
//! twice, and a key repeated inside one batch counts once.

pub mod averages;
pub mod probes;
pub mod sensors;
pub mod sms;

use async_trait::async_trait;

use crate::store::{
    NewRecord, StoreError,
    sql::{Migration, Sql},
};

/// What a workload's write knows of the batch besides its facts.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The parser writing (its consumer group).
    pub parser: &'a str,
    /// The writing instance: partials kept per writer never contend.
    pub writer: &'a str,
    /// When the store commits the batch (µs since the epoch).
    pub stored_at: i64,
}

/// A newly stored record and the fact its parser derived from it.
#[derive(Debug)]
pub struct Stored<'a, F> {
    pub record: &'a NewRecord,
    pub fact: &'a F,
}

/// One workload's part of the store.
#[async_trait]
pub trait Workload {
    /// What its parser derives from one record.
    type Fact: std::fmt::Debug + Clone + PartialEq + Send + Sync;

    /// Its schema steps. Steps of several workloads with one version are
    /// one migration, their SQL joined in registry order (the first four
    /// workloads were created together by version 2, and a database that
    /// applied it must see the same text again).
    const MIGRATIONS: &'static [Migration];

    /// The fact's fields stored as SQL text, by name: a NUL in any is
    /// refused before either backend is asked (PostgreSQL text cannot hold
    /// one).
    fn texts(fact: &Self::Fact) -> Vec<(&'static str, &str)>;

    /// Writes the facts of the batch's newly stored records, inside the
    /// batch's transaction.
    async fn write(
        sql: &mut dyn Sql,
        batch: Batch<'_>,
        facts: &[Stored<'_, Self::Fact>],
    ) -> Result<(), StoreError>;

    /// The workload's conformance checks: every backend runs each against
    /// a fresh store.
    #[cfg(test)]
    fn conformance() -> Vec<Check>;
}

/// A named check of a store, run by every backend's tests.
#[cfg(test)]
pub(crate) type Check = (
    &'static str,
    for<'a> fn(&'a dyn crate::store::Store) -> futures::future::BoxFuture<'a, ()>,
);

/// Declares the registry once: the [`Fact`] enum, the write loop, the
/// schema steps and the conformance run all follow from it.
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident => $workload:ty ),+ $(,)?) => {
        /// A typed result a parser derives from one record: one variant per
        /// registered workload.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Fact {
            $( $(#[$doc])* $variant(<$workload as Workload>::Fact), )+
        }

        impl Fact {
            /// The fact's fields stored as SQL text, by name.
            pub(crate) fn texts(&self) -> Vec<(&'static str, &str)> {
                match self {
                    $( Fact::$variant(fact) => <$workload as Workload>::texts(fact), )+
                }
            }
        }

        /// Writes the facts of the newly stored records `new`, workload by
        /// workload.
        pub(crate) async fn write(
            sql: &mut dyn Sql,
            batch: Batch<'_>,
            new: &[&NewRecord],
        ) -> Result<(), StoreError> {
            $(
                let facts: Vec<Stored<'_, <$workload as Workload>::Fact>> = new
                    .iter()
                    .filter_map(|record| match &record.fact {
                        Some(Fact::$variant(fact)) => Some(Stored { record, fact }),
                        _ => None,
                    })
                    .collect();
                if !facts.is_empty() {
                    <$workload as Workload>::write(sql, batch, &facts).await?;
                }
            )+
            Ok(())
        }

        /// Every workload's schema steps, in registry order.
        fn steps() -> Vec<Migration> {
            let mut steps = Vec::new();
            $( steps.extend_from_slice(<$workload as Workload>::MIGRATIONS); )+
            steps
        }

        /// Every workload's conformance checks.
        #[cfg(test)]
        pub(crate) fn conformance() -> Vec<Check> {
            let mut checks = Vec::new();
            $( checks.extend(<$workload as Workload>::conformance()); )+
            checks
        }
    };
}

registry! {
    /// A number counted into its window's average.
    Number => averages::Averages,
    /// A burst probe; its send and arrival times are the record's.
    Probe => probes::Probes,
    /// A sensor reading.
    Reading => sensors::Sensors,
    /// The outcome of one simulated SMS send.
    Sms => sms::Sms,
}

/// The workloads' migrations `(version, name, sql)` in version order, steps
/// sharing a version joined in registry order.
pub(crate) fn migrations() -> Result<Vec<(i64, String, String)>, StoreError> {
    let mut merged: Vec<(i64, String, String)> = Vec::new();
    let mut steps = steps();
    steps.sort_by_key(|step| step.version); // stable: registry order kept
    for step in steps {
        match merged.last_mut() {
            Some((version, name, sql)) if *version == step.version => {
                if name != step.name {
                    return Err(StoreError::Unavailable(format!(
                        "migration {version} is named both {name:?} and {:?}",
                        step.name
                    )));
                }
                sql.push_str(step.sql);
            }
            _ => merged.push((step.version, step.name.to_owned(), step.sql.to_owned())),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_merge_in_version_order() {
        let merged = super::migrations().unwrap();
        let versions: Vec<i64> = merged.iter().map(|m| m.0).collect();
        let mut sorted = versions.clone();
        sorted.dedup();
        assert_eq!(versions, sorted, "one migration per version, in order");
        assert!(
            versions.iter().all(|v| *v > 1),
            "version 1 is the backend's own"
        );
    }
}
