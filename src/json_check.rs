//! The checks a JSON payload (`google.protobuf.Struct`) must pass before the
//! mesh accepts it, shared by ingest and by anything else that takes JSON
//! from outside (a remote parser's output): every number finite, nesting at
//! most [`MAX_DEPTH`] levels, and no NUL character in a key or a string.
//!
//! Why each rule: proto3 JSON has no spelling for NaN or infinity, so a
//! record holding one could be stored but never shown over REST; PostgreSQL
//! JSONB and text cannot hold U+0000; and a bound on depth keeps every
//! recursive walk of a stored document (ours, the databases' JSON functions,
//! a client's parser) far from its stack or recursion limit. Size needs no
//! rule here: the record size limit covers the whole record.

use std::fmt;

use pbjson_types::{Struct, Value, value::Kind};

/// The deepest nesting accepted: the top-level object is level 1, and each
/// object or list inside a value adds one.
pub const MAX_DEPTH: usize = 32;

/// Why a JSON payload is refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Where in the document: `order.items[2].price`; empty for the
    /// top-level object itself.
    pub path: String,
    /// What is wrong there.
    pub problem: Problem,
}

/// What is wrong with a JSON payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A number that is NaN or infinite.
    NotFinite,
    /// Objects and lists nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A key holding a NUL character.
    NulInKey,
    /// A string holding a NUL character.
    NulInString,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "the JSON object".to_owned()
        } else {
            format!("JSON field {}", self.path)
        };
        match self.problem {
            Problem::NotFinite => write!(f, "{at} is NaN or infinite; JSON numbers must be finite"),
            Problem::TooDeep => write!(
                f,
                "{at} nests objects and lists deeper than {MAX_DEPTH} levels"
            ),
            Problem::NulInKey => write!(f, "a key in {at} holds a NUL character (U+0000)"),
            Problem::NulInString => write!(f, "{at} holds a NUL character (U+0000)"),
        }
    }
}

impl std::error::Error for JsonError {}

/// Checks a JSON payload; the error names the first offending path, keys
/// visited in sorted order so that the same document always names the same
/// path.
pub fn check_json(object: &Struct) -> Result<(), JsonError> {
    let mut path = String::new();
    check_struct(object, 1, &mut path)
}

fn fail(path: &str, problem: Problem) -> Result<(), JsonError> {
    Err(JsonError {
        path: path.to_owned(),
        problem,
    })
}

fn check_struct(object: &Struct, depth: usize, path: &mut String) -> Result<(), JsonError> {
    if depth > MAX_DEPTH {
        return fail(path, Problem::TooDeep);
    }
    let mut keys: Vec<&String> = object.fields.keys().collect();
    keys.sort_unstable();
    for key in keys {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        if key.contains('\0') {
            return fail(path, Problem::NulInKey);
        }
        if let Some(value) = object.fields.get(key) {
            check_value(value, depth, path)?;
        }
        path.truncate(len);
    }
    Ok(())
}

/// Checks a value found at `depth` (the level of the object or list that
/// holds it).
fn check_value(value: &Value, depth: usize, path: &mut String) -> Result<(), JsonError> {
    match &value.kind {
        Some(Kind::NumberValue(n)) if !n.is_finite() => fail(path, Problem::NotFinite),
        Some(Kind::StringValue(s)) if s.contains('\0') => fail(path, Problem::NulInString),
        Some(Kind::StructValue(inner)) => check_struct(inner, depth + 1, path),
        Some(Kind::ListValue(list)) => {
            if depth + 1 > MAX_DEPTH {
                return fail(path, Problem::TooDeep);
            }
            for (i, item) in list.values.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_value(item, depth + 1, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The payload as a JSON document (`serde_json::Value`), keys sorted. A
/// number with no fraction that a double holds exactly (|n| ≤ 2^53) is
/// written as an integer (`7`, not `7.0`), so that stored documents, and
/// the group values read from them, show numbers as people write them.
/// A number that is not finite (refused by [`check_json`]) becomes `null`.
pub fn to_json(object: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        object
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), value_to_json(value)))
            .collect(),
    )
}

/// The largest integer below which every integer is a double: 2^53.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

fn value_to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() <= EXACT_INTEGERS {
                // Exact: the guard keeps the value inside i64 and integral.
                J::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(J::Null, J::Number)
            }
        }
        Some(Kind::StructValue(inner)) => to_json(inner),
        Some(Kind::ListValue(list)) => J::Array(list.values.iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn object(fields: Vec<(&str, Value)>) -> Struct {
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn number(n: f64) -> Value {
        Kind::NumberValue(n).into()
    }

    /// `levels` objects nested inside one another (the top level counts).
    fn nested(levels: usize) -> Struct {
        let mut inner = object(vec![("x", number(1.0))]);
        for _ in 1..levels {
            inner = object(vec![("a", inner.into())]);
        }
        inner
    }

    #[test]
    fn names_the_path_of_a_bad_number() {
        let items: Vec<Value> = (0..3)
            .map(|i| object(vec![("price", number(if i == 2 { f64::NAN } else { 1.0 }))]).into())
            .collect();
        let doc = object(vec![(
            "order",
            object(vec![("items", items.into())]).into(),
        )]);
        let e = check_json(&doc).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.problem),
            ("order.items[2].price", Problem::NotFinite)
        );
        assert!(e.to_string().contains("order.items[2].price"), "{e}");
        for n in [f64::INFINITY, f64::NEG_INFINITY] {
            let e = check_json(&object(vec![("v", number(n))])).unwrap_err();
            assert_eq!((e.path.as_str(), e.problem), ("v", Problem::NotFinite));
        }
    }

    #[test]
    fn depth_is_bounded_at_32_levels() {
        assert_eq!(check_json(&nested(MAX_DEPTH)), Ok(()));
        let e = check_json(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(e.problem, Problem::TooDeep);
        assert_eq!(e.path, vec!["a"; MAX_DEPTH].join("."));
        // Lists count as levels too.
        let mut value: Value = number(1.0);
        for _ in 1..MAX_DEPTH {
            value = vec![value].into();
        }
        assert_eq!(check_json(&object(vec![("l", value.clone())])), Ok(()));
        let e = check_json(&object(vec![("l", vec![value].into())])).unwrap_err();
        assert_eq!(e.problem, Problem::TooDeep);
    }

    #[test]
    fn refuses_nul_in_keys_and_strings() {
        let e = check_json(&object(vec![("a\0", number(1.0))])).unwrap_err();
        assert_eq!(e.problem, Problem::NulInKey);
        let e = check_json(&object(vec![("a", Kind::from("x\0").into())])).unwrap_err();
        assert_eq!((e.path.as_str(), e.problem), ("a", Problem::NulInString));
        // Other control characters are fine.
        assert_eq!(
            check_json(&object(vec![("\u{1}", Kind::from("\t\u{7f}").into())])),
            Ok(())
        );
    }

    #[test]
    fn integral_numbers_are_written_as_integers() {
        let doc = object(vec![
            ("order", number(7.0)),
            ("price", number(12.5)),
            ("big", number(1e300)),
            ("none", Value::from(())),
        ]);
        assert_eq!(
            to_json(&doc).to_string(),
            r#"{"big":1e+300,"none":null,"order":7,"price":12.5}"#
        );
        // A Value with no kind is null, as pbjson reads `null` back.
        assert_eq!(
            to_json(&object(vec![("v", Value { kind: None })])).to_string(),
            r#"{"v":null}"#
        );
    }

    /// A random JSON value at most `depth` levels deep (counting lists and
    /// objects), with finite numbers and NUL-free strings.
    fn valid_value(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::from(())),
            any::<bool>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(number),
            "[a-z \\u{1}-\\u{7f}é]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(depth, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::hash_map("[a-z0-9_]{1,6}", inner, 0..4)
                    .prop_map(|m: HashMap<String, Value>| Value::from(Struct::from(m))),
            ]
        })
    }

    fn valid_struct() -> impl Strategy<Value = Struct> {
        prop::collection::hash_map("[a-z0-9_]{1,6}", valid_value(6), 0..5).prop_map(Struct::from)
    }

    /// The paths of every value in a document, as `check_json` names them,
    /// with the depth of the object or list holding each.
    fn paths(object: &Struct, depth: usize, prefix: &str, out: &mut Vec<(String, usize)>) {
        for (key, value) in &object.fields {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            value_paths(value, depth, path, out);
        }
    }

    fn value_paths(value: &Value, depth: usize, path: String, out: &mut Vec<(String, usize)>) {
        out.push((path.clone(), depth));
        match &value.kind {
            Some(Kind::StructValue(inner)) => paths(inner, depth + 1, &path, out),
            Some(Kind::ListValue(list)) => {
                for (i, item) in list.values.iter().enumerate() {
                    value_paths(item, depth + 1, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    /// Replaces the value at `path` (as [`paths`] names it).
    fn replace(object: &mut Struct, path: &str, new: Value) -> bool {
        fn walk(value: &mut Value, here: String, path: &str, new: &Value) -> bool {
            if here == path {
                *value = new.clone();
                return true;
            }
            match &mut value.kind {
                Some(Kind::StructValue(inner)) => inner
                    .fields
                    .iter_mut()
                    .any(|(k, v)| walk(v, format!("{here}.{k}"), path, new)),
                Some(Kind::ListValue(list)) => list
                    .values
                    .iter_mut()
                    .enumerate()
                    .any(|(i, v)| walk(v, format!("{here}[{i}]"), path, new)),
                _ => false,
            }
        }
        object
            .fields
            .iter_mut()
            .any(|(k, v)| walk(v, k.clone(), path, &new))
    }

    proptest! {
        #[test]
        fn valid_documents_pass(doc in valid_struct()) {
            prop_assert_eq!(check_json(&doc), Ok(()));
            // And their JSON reads back as the same document (pbjson reads
            // `null` as a Value with no kind, which is null too).
            let text = to_json(&doc).to_string();
            let back: Struct = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(to_json(&back), to_json(&doc));
        }

        #[test]
        fn an_injected_bad_number_is_named(
            doc in valid_struct(),
            pick in any::<prop::sample::Index>(),
            bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
        ) {
            let mut all = Vec::new();
            paths(&doc, 1, "", &mut all);
            prop_assume!(!all.is_empty());
            let (path, _) = all[pick.index(all.len())].clone();
            let mut doc = doc;
            prop_assert!(replace(&mut doc, &path, number(bad)));
            let e = check_json(&doc).unwrap_err();
            prop_assert_eq!(e.problem, Problem::NotFinite);
            prop_assert_eq!(e.path, path);
        }

        #[test]
        fn injected_deep_nesting_is_refused_at_its_path(
            doc in valid_struct(),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut all = Vec::new();
            paths(&doc, 1, "", &mut all);
            prop_assume!(!all.is_empty());
            let (path, depth) = all[pick.index(all.len())].clone();
            // Nest objects so that the document is exactly one level too
            // deep below `path`: its value sits at `depth`, the chain adds
            // the rest.
            let extra = MAX_DEPTH + 1 - depth;
            let mut doc = doc;
            prop_assert!(replace(&mut doc, &path, nested(extra).into()));
            let e = check_json(&doc).unwrap_err();
            prop_assert_eq!(e.problem, Problem::TooDeep);
            let expected = std::iter::once(path.as_str())
                .chain(std::iter::repeat_n("a", extra - 1))
                .collect::<Vec<_>>()
                .join(".");
            prop_assert_eq!(e.path, expected);
        }
    }
}
