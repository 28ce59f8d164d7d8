//! Aggregation of one numeric field of the JSON records a parser stored
//! (`AggregateField`): the validated field paths, the query and its result,
//! and the SQL both backends run, which differs only in how each reads
//! JSON ([`Dialect`]).
//!
//! The records are found through the partial index `records_doc` on
//! `(parser, sent_at) WHERE doc IS NOT NULL`: only JSON records are in it,
//! so a range scan touches no other kind. Paths are bound as parameters,
//! never written into the SQL text.

use std::fmt;

use super::{
    StoreError,
    sql::{self, Sql, Type, Value},
};

/// The most levels a field path may have.
pub const MAX_LEVELS: usize = 8;
/// The longest field path, in bytes.
pub const MAX_PATH_BYTES: usize = 256;
/// The most groups a result shows; more are cut, in group order.
pub const MAX_GROUPS: usize = 1_000;

/// A field path as a regular expression, for the OpenAPI document: the
/// rules [`FieldPath::parse`] enforces, bar the length.
pub const FIELD_PATTERN: &str = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,7}$";

/// A field path: dotted keys of nested objects, each of ASCII letters,
/// digits, `_` and `-`, at most [`MAX_LEVELS`] levels and
/// [`MAX_PATH_BYTES`] bytes. ASCII only: a key with a quote, a bracket or
/// a `$` could be read as path syntax by one backend and not the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

/// Why a field path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(String);

impl FieldPath {
    /// Checks a path as the caller wrote it.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        if path.is_empty() {
            return Err(PathError("is empty".into()));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError(format!(
                "is {} bytes long; the limit is {MAX_PATH_BYTES}",
                path.len()
            )));
        }
        let keys: Vec<&str> = path.split('.').collect();
        if keys.len() > MAX_LEVELS {
            return Err(PathError(format!(
                "has {} levels; the limit is {MAX_LEVELS}",
                keys.len()
            )));
        }
        for key in keys {
            if key.is_empty() {
                return Err(PathError(
                    "has an empty key (a leading, trailing or doubled dot)".into(),
                ));
            }
            if let Some(c) = key
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            {
                return Err(PathError(format!(
                    "key {key:?} holds {c:?}; keys hold ASCII letters, digits, `_` and `-`"
                )));
            }
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as written: `order.total`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path in SQLite's JSON path syntax, every key quoted so that a
    /// key of digits is a key, not an index: `$."order"."total"`. Safe to
    /// bind: keys hold no quote.
    fn sqlite(&self) -> String {
        let mut path = String::from("$");
        for key in self.0.split('.') {
            path.push_str(&format!(".\"{key}\""));
        }
        path
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which JSON records to read and the field to aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldQuery {
    /// The parser whose stored JSON records to read.
    pub parser: String,
    /// The numeric field.
    pub field: FieldPath,
    /// Sent at or after (µs).
    pub from: i64,
    /// Sent before (µs).
    pub to: i64,
    /// The field whose values group the result, if any.
    pub group_by: Option<FieldPath>,
}

/// Aggregates of one group's numeric values. Count, average and extremes
/// are exact; percentiles are nearest-rank and exact.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldGroup {
    /// The group's value as compact JSON text (`"eu"`, `7`); empty when not
    /// grouped.
    pub group: String,
    pub count: u64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The result of a field aggregation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldAggregates {
    /// One group overall, or one per value, sorted by the value's JSON
    /// text; empty when no record in the range has a number at the field.
    pub groups: Vec<FieldGroup>,
    /// JSON records in the range without the field, or, when grouping,
    /// without the group field.
    pub missing: u64,
    /// JSON records in the range whose field holds something other than a
    /// number.
    pub non_numeric: u64,
    /// Whether there were more than [`MAX_GROUPS`] groups.
    pub groups_truncated: bool,
}

/// How a backend reads JSON: expressions over the `doc` column, with the
/// field path bound as `$2` and the group path (when grouping) as `$5`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dialect {
    /// The JSON type at `$2`: NULL when missing.
    pub field_type: &'static str,
    /// The types [`Dialect::field_type`] gives numbers, as an SQL list.
    pub numeric_types: &'static str,
    /// The field at `$2` as a double; only evaluated on numbers.
    pub field_value: &'static str,
    /// The value at `$5` as JSON text: NULL when missing.
    pub group_text: &'static str,
    /// How a path is bound: SQLite's `$."a"."b"` or the dotted keys
    /// PostgreSQL splits into a text array.
    pub sqlite_paths: bool,
    /// Appended to `ORDER BY` of group text: byte order on both backends.
    pub byte_order: &'static str,
}

/// The records of the query: `$1` parser, `$3` from, `$4` to, with the
/// field's type, its value when numeric, and the group (`''` when not
/// grouped). The `doc IS NOT NULL` term lets the planner use the partial
/// index.
fn classified(dialect: &Dialect, grouped: bool) -> String {
    let group = if grouped { dialect.group_text } else { "''" };
    format!(
        "SELECT t, CASE WHEN t IN {numeric} THEN {value} END AS v, g FROM (\
           SELECT {field_type} AS t, doc, {group} AS g FROM records \
           WHERE parser = $1 AND doc IS NOT NULL AND sent_at >= $3 AND sent_at < $4\
         ) AS d",
        numeric = dialect.numeric_types,
        value = dialect.field_value,
        field_type = dialect.field_type,
    )
}

/// Counts of missing and non-numeric fields.
fn counts_sql(dialect: &Dialect, grouped: bool) -> String {
    format!(
        "SELECT \
           COALESCE(SUM(CASE WHEN t IS NULL OR g IS NULL THEN 1 ELSE 0 END), 0), \
           COALESCE(SUM(CASE WHEN t IS NOT NULL AND g IS NOT NULL AND v IS NULL \
             THEN 1 ELSE 0 END), 0) \
         FROM ({}) AS c",
        classified(dialect, grouped)
    )
}

/// Per group: count, average, extremes and nearest-rank percentiles (the
/// same definition and SQL as the sensor aggregates'), over the first
/// groups in byte order of their JSON text, as many as the last parameter
/// says (`$6` when grouping, `$5` otherwise).
fn groups_sql(dialect: &Dialect, grouped: bool) -> String {
    let order = dialect.byte_order;
    let limit = if grouped { 6 } else { 5 };
    format!(
        "WITH numbers AS (\
           SELECT g, v FROM ({classified}) AS c WHERE v IS NOT NULL AND g IS NOT NULL\
         ), kept AS (\
           SELECT g FROM numbers GROUP BY g ORDER BY g{order} LIMIT ${limit}\
         ), ranked AS (\
           SELECT g, v, ROW_NUMBER() OVER (PARTITION BY g ORDER BY v) AS rn, \
             COUNT(*) OVER (PARTITION BY g) AS n \
           FROM numbers WHERE g IN (SELECT g FROM kept)\
         ) \
         SELECT g, COUNT(*), AVG(v), MIN(v), MAX(v), {ranks} \
         FROM ranked GROUP BY g ORDER BY g{order}",
        classified = classified(dialect, grouped),
        ranks = sql::nearest_rank_columns("v", "rn", "n"),
    )
}

/// Runs a field aggregation on `conn` (a read transaction, so that the
/// counts and the groups see the same records).
pub(super) async fn aggregate(
    conn: &mut dyn Sql,
    dialect: &Dialect,
    query: &FieldQuery,
) -> Result<FieldAggregates, StoreError> {
    let bind = |path: &FieldPath| {
        if dialect.sqlite_paths {
            path.sqlite()
        } else {
            path.as_str().to_owned()
        }
    };
    let field = bind(&query.field);
    let group = query.group_by.as_ref().map(bind);
    let grouped = group.is_some();
    let mut params = vec![
        Value::Text(&query.parser),
        Value::Text(&field),
        Value::Int(query.from),
        Value::Int(query.to),
    ];
    if let Some(group) = &group {
        params.push(Value::Text(group));
    }
    // Each statement binds exactly the placeholders it names.
    let counts = conn
        .fetch(
            &counts_sql(dialect, grouped),
            &params,
            &[Type::Int, Type::Int],
        )
        .await?;
    // One more group than shown, to tell whether any were cut.
    params.push(Value::Int(MAX_GROUPS as i64 + 1));
    let (missing, non_numeric) = match counts.first() {
        Some(row) => (row.int(0)? as u64, row.int(1)? as u64),
        None => (0, 0),
    };
    let types = [
        Type::Text,
        Type::Int,
        Type::Real,
        Type::Real,
        Type::Real,
        Type::Real,
        Type::Real,
        Type::Real,
    ];
    let rows = conn
        .fetch(&groups_sql(dialect, grouped), &params, &types)
        .await?;
    let groups_truncated = rows.len() > MAX_GROUPS;
    let mut groups = Vec::with_capacity(rows.len().min(MAX_GROUPS));
    for row in rows.iter().take(MAX_GROUPS) {
        let text = row.text(0)?;
        groups.push(FieldGroup {
            group: if grouped { canonical(&text) } else { text },
            count: row.int(1)? as u64,
            avg: row.real(2)?,
            min: row.real(3)?,
            max: row.real(4)?,
            p50: row.real(5)?,
            p95: row.real(6)?,
            p99: row.real(7)?,
        });
    }
    // Canonical text can sort differently from the backend's own.
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(FieldAggregates {
        groups,
        missing,
        non_numeric,
        groups_truncated,
    })
}

/// A group value's JSON text as both backends show it: compact, numbers in
/// serde_json's shortest form (PostgreSQL writes `1e300` out in full and
/// puts spaces in objects, SQLite keeps the stored text).
fn canonical(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_syntax() {
        for good in ["price", "order.total", "a-b_c.D9", "0"] {
            assert!(FieldPath::parse(good).is_ok(), "{good}");
        }
        let nine = ["a"; MAX_LEVELS + 1].join(".");
        let long = "a".repeat(MAX_PATH_BYTES + 1);
        for (bad, why) in [
            ("", "empty"),
            (".a", "empty key"),
            ("a..b", "empty key"),
            ("a.", "empty key"),
            ("a b", "holds ' '"),
            ("a\"", "holds '\"'"),
            ("a[0]", "holds '['"),
            ("$.a", "holds '$'"),
            ("a'--", "holds '\\''"),
            ("é.x", "holds 'é'"),
            (nine.as_str(), "levels"),
            (long.as_str(), "bytes"),
        ] {
            let e = FieldPath::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        assert_eq!(
            FieldPath::parse(&["a"; MAX_LEVELS].join(".")).map(|p| p.0.len()),
            Ok(15)
        );
        // The pattern in the OpenAPI document says the same.
        let pattern = FIELD_PATTERN;
        assert!(pattern.contains("{0,7}") && MAX_LEVELS == 8);
    }

    #[test]
    fn sqlite_paths_quote_every_key() {
        let path = FieldPath::parse("order.0.total-x").unwrap();
        assert_eq!(path.sqlite(), r#"$."order"."0"."total-x""#);
    }

    #[test]
    fn group_text_is_made_canonical() {
        assert_eq!(
            canonical("{\"a\": 1, \"b\": [1, 2]}"),
            r#"{"a":1,"b":[1,2]}"#
        );
        assert_eq!(canonical(&format!("1{}", "0".repeat(300))), "1e+300");
        assert_eq!(canonical("\"eu\""), "\"eu\"");
        assert_eq!(canonical("7"), "7");
    }
}
