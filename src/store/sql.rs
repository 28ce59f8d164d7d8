//! The one SQL interface both backends offer the workloads: bound values,
//! typed result cells, and a many-row insert. A workload writes its SQL once
//! against [`Sql`]; SQLite and PostgreSQL differ only in how they bind it.
//!
//! The SQL the workloads write is the dialect both databases share: `$n`
//! placeholders (SQLite reads them as numbered parameters), integer
//! microseconds for time, explicit casts where PostgreSQL would widen a sum
//! to NUMERIC, and no `$n IS NULL` tests, whose parameter type PostgreSQL
//! cannot infer (open bounds are passed as `i64::MIN` / `i64::MAX`).
//!
//! Hand-written rather than sqlx's `Any` driver: `Any` would take over the
//! pools, and each backend's pool is tuned (one SQLite writer, a lazy
//! PostgreSQL pool that waits for its database); this interface sits on the
//! connections those pools hand out.

use async_trait::async_trait;

use super::StoreError;

/// A value bound to a placeholder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// The SQL type of a column, as a result is decoded or an insert bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A 64-bit integer; SQL NULL reads as `None`.
    Int,
    /// A double; SQL NULL reads as `None`.
    Real,
    /// Text; SQL NULL reads as `None`.
    Text,
    /// Bytes (`BYTEA` in DDL, which SQLite stores as a blob); SQL NULL
    /// reads as `None`.
    Blob,
}

/// One decoded cell of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

/// One result row, decoded with the types the query asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Cell>);

impl Row {
    fn cell(&self, index: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(index)
            .ok_or_else(|| StoreError::Unavailable(format!("no column {index} in a result row")))
    }

    /// An integer column that may be NULL.
    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(index)? {
            Cell::Int(v) => Ok(*v),
            other => Err(mismatch(index, "an integer", other)),
        }
    }

    /// An integer column; NULL reads as 0 (a SUM over no rows).
    pub fn int(&self, index: usize) -> Result<i64, StoreError> {
        Ok(self.opt_int(index)?.unwrap_or(0))
    }

    /// A double column that may be NULL.
    pub fn opt_real(&self, index: usize) -> Result<Option<f64>, StoreError> {
        match self.cell(index)? {
            Cell::Real(v) => Ok(*v),
            other => Err(mismatch(index, "a double", other)),
        }
    }

    /// A double column; NULL reads as 0.
    pub fn real(&self, index: usize) -> Result<f64, StoreError> {
        Ok(self.opt_real(index)?.unwrap_or(0.0))
    }

    /// A text column; NULL reads as empty.
    pub fn text(&self, index: usize) -> Result<String, StoreError> {
        match self.cell(index)? {
            Cell::Text(v) => Ok(v.clone().unwrap_or_default()),
            other => Err(mismatch(index, "text", other)),
        }
    }

    /// A bytes column; NULL reads as empty.
    pub fn blob(&self, index: usize) -> Result<&[u8], StoreError> {
        match self.cell(index)? {
            Cell::Blob(v) => Ok(v.as_deref().unwrap_or_default()),
            other => Err(mismatch(index, "bytes", other)),
        }
    }
}

fn mismatch(index: usize, wanted: &str, got: &Cell) -> StoreError {
    StoreError::Unavailable(format!("column {index} is {got:?}, not {wanted}"))
}

/// Decodes a backend's result row with the types the query asked for;
/// both backends' binding code calls it.
pub(super) fn decode<R>(row: &R, types: &[Type]) -> Result<Row, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut cells = Vec::with_capacity(types.len());
    for (i, ty) in types.iter().enumerate() {
        cells.push(match ty {
            Type::Int => Cell::Int(row.try_get(i)?),
            Type::Real => Cell::Real(row.try_get(i)?),
            Type::Text => Cell::Text(row.try_get(i)?),
            Type::Blob => Cell::Blob(row.try_get(i)?),
        });
    }
    Ok(Row(cells))
}

/// The nearest-rank p50, p95 and p99 of `value` as three aggregate
/// columns, over rows ranked by `rank` (ROW_NUMBER in ascending order of
/// value) among `count` rows of their group: the value at rank
/// ceil(p/100 * n). `(n * p + 99) / 100` is that ceiling in integer
/// arithmetic, which both databases share (SQLite has no CEIL unless built
/// with math functions).
pub fn nearest_rank_columns(value: &str, rank: &str, count: &str) -> String {
    [50, 95, 99]
        .map(|p| format!("MIN(CASE WHEN {rank} = ({count} * {p} + 99) / 100 THEN {value} END)"))
        .join(", ")
}

/// A table a workload inserts many rows into at once, skipping rows whose
/// key is already there.
#[derive(Debug)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// Its columns, in the order each inserted row gives their values.
    pub columns: &'static [(&'static str, Type)],
    /// The conflict target of [`Sql::upsert`]: rows whose key exists are
    /// replaced. [`Sql::insert`] skips a row that clashes with any unique
    /// key of the table.
    pub key: &'static str,
}

/// What a many-row insert does with a row whose key is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    Skip,
    Replace,
}

impl Table {
    /// The `ON CONFLICT` clause of a many-row insert: replacing sets every
    /// column outside the key to the inserted row's.
    pub(super) fn on_conflict(&self, existing: Existing) -> String {
        match existing {
            // Any key: a table's unique key may differ between backends
            // (SQLite's sensor readings are keyed by time).
            Existing::Skip => " ON CONFLICT DO NOTHING".to_owned(),
            Existing::Replace => {
                let key: Vec<&str> = self.key.split(',').map(str::trim).collect();
                let set: Vec<String> = self
                    .columns
                    .iter()
                    .filter(|(name, _)| !key.contains(name))
                    .map(|(name, _)| format!("{name} = excluded.{name}"))
                    .collect();
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    self.key,
                    set.join(", ")
                )
            }
        }
    }
}

/// A connection (inside a write transaction, or from the read pool) that
/// runs the workloads' SQL.
#[async_trait]
pub trait Sql: Send {
    /// Runs a statement; returns the rows it affected.
    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError>;

    /// Runs a query and decodes every row with `types`, one per column.
    async fn fetch(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        types: &[Type],
    ) -> Result<Vec<Row>, StoreError>;

    /// Inserts `values` (row-major, `table.columns.len()` per row; the
    /// types must match the columns'), skipping keys already present.
    async fn insert(&mut self, table: &Table, values: &[Value<'_>]) -> Result<(), StoreError>;

    /// Inserts `values` like [`Sql::insert`], replacing the other columns
    /// of rows whose key is present. A key may appear once in `values`
    /// (PostgreSQL refuses to update one row twice in a statement).
    async fn upsert(&mut self, table: &Table, values: &[Value<'_>]) -> Result<(), StoreError>;
}

/// One step of the schema; see [`crate::workloads`] for how the steps of
/// every workload are merged.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version: applied in order, once.
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    /// Its SQL, the same on both backends.
    pub sql: &'static str,
}

/// The store's migrations: `init` is the backend's own first schema
/// (records, counts, dead letters); the later steps are the workloads' and
/// the backend's `own` (whose SQL differs between backends), merged in
/// version order. A version may not be both a workload's and the
/// backend's.
pub(super) fn migrator(
    init: &'static str,
    own: &[Migration],
) -> Result<sqlx::migrate::Migrator, StoreError> {
    use sqlx::migrate::{Migration as Step, MigrationType, Migrator};
    let mut steps = vec![Step::new(
        1,
        "init".into(),
        MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(init),
        false,
    )];
    let mut all = crate::workloads::migrations()?;
    for step in own {
        if all.iter().any(|(version, _, _)| *version == step.version) {
            return Err(StoreError::Unavailable(format!(
                "migration {} is both a workload's and the backend's",
                step.version
            )));
        }
        all.push((step.version, step.name.to_owned(), step.sql.to_owned()));
    }
    all.sort_by_key(|(version, _, _)| *version);
    for (version, name, sql) in all {
        steps.push(Step::new(
            version,
            name.into(),
            MigrationType::Simple,
            sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
            false,
        ));
    }
    Ok(Migrator::with_migrations(steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database migrated by an earlier release has these steps applied;
    /// sqlx refuses to open it if their text changes by a byte. The
    /// workloads' DDL moved into their modules, so this pins that the
    /// merged steps are still exactly what was applied.
    #[test]
    fn applied_migrations_keep_their_checksums() {
        let pinned = [
            (
                2,
                "a344261676a5ef7107716cc40a9f77225eeb148eb31e8a87cf5d0626b6a14e4dec3236c3b50dbdf1b5f762e72561af4d",
            ),
            (
                3,
                "d50d4cecb9afcab539325038184fa43d6b6dd85f8551389e847ebcaebf4f1ad8cb5b3babcecceb22180daa8e85a01d89",
            ),
            (
                4,
                "16827fc7ee2cb32e570498e0af3eeae644831770d625d81b8ceed032f99e910e1b2d86c460e3c1fcb78a301fbb429039",
            ),
        ];
        let migrator = migrator("", &[]).unwrap();
        for (version, checksum) in pinned {
            let step = migrator
                .iter()
                .find(|m| m.version == version)
                .unwrap_or_else(|| panic!("migration {version} is gone"));
            let hex: String = step.checksum.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex, checksum,
                "migration {version} ({}) changed",
                step.description
            );
        }
    }

    #[test]
    fn rows_decode_what_was_asked_and_refuse_the_rest() {
        let row = Row(vec![
            Cell::Int(Some(7)),
            Cell::Real(None),
            Cell::Text(Some("x".into())),
        ]);
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.opt_real(1).unwrap(), None);
        assert_eq!(row.text(2).unwrap(), "x");
        assert!(row.text(0).is_err());
        assert!(row.int(3).is_err());
        let row = Row(vec![Cell::Blob(Some(vec![1, 2])), Cell::Blob(None)]);
        assert_eq!(row.blob(0).unwrap(), [1, 2]);
        assert!(row.blob(1).unwrap().is_empty());
        assert!(row.text(0).is_err());
    }

    #[test]
    fn an_upsert_replaces_the_columns_outside_the_key() {
        let table = Table {
            name: "t",
            columns: &[("a", Type::Text), ("b", Type::Int), ("c", Type::Blob)],
            key: "a, b",
        };
        assert_eq!(
            table.on_conflict(Existing::Replace),
            " ON CONFLICT (a, b) DO UPDATE SET c = excluded.c"
        );
        assert_eq!(table.on_conflict(Existing::Skip), " ON CONFLICT DO NOTHING");
    }
}
