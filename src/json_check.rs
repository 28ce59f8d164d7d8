//! The one check of JSON record payloads (`Record.json`), for every place
//! that accepts one: whatever passes can be stored by both store backends
//! and shown again as plain JSON by REST.
//!
//! Refused: numbers that JSON cannot write (NaN, ±infinity), NUL characters
//! in keys or strings (PostgreSQL text cannot hold them), and nesting deeper
//! than [`MAX_DEPTH`] objects and lists. A value with no kind set is a JSON
//! `null`, as pbjson reads and writes it. The reason names the path of the
//! offending value, as `$.a.b[2]`.

use pbjson_types::{Struct, Value, value::Kind};

/// The deepest nesting of objects and lists accepted, the top object
/// counting as 1: deeper than any data model a team writes by hand, and
/// shallow enough that recursive encoders and decoders (ours and the
/// readers') never run out of stack.
pub const MAX_DEPTH: usize = 32;

/// Checks a JSON object payload; the error names the offending path.
pub fn check_json(object: &Struct) -> Result<(), String> {
    let mut path = String::from("$");
    check_struct(object, 1, &mut path)
}

fn check_struct(object: &Struct, depth: usize, path: &mut String) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{path} is nested deeper than {MAX_DEPTH} objects and lists"
        ));
    }
    // Sorted, so that the same payload always reports the same path.
    let mut keys: Vec<&String> = object.fields.keys().collect();
    keys.sort();
    for key in keys {
        let len = path.len();
        path.push('.');
        path.push_str(key);
        if key.contains('\0') {
            return Err(format!(
                "key {path:?} holds a NUL character (U+0000), which the store cannot hold"
            ));
        }
        check_value(&object.fields[key], depth, path)?;
        path.truncate(len);
    }
    Ok(())
}

fn check_value(value: &Value, depth: usize, path: &mut String) -> Result<(), String> {
    match &value.kind {
        Some(Kind::NumberValue(n)) if !n.is_finite() => {
            Err(format!("{path} is {n}, which JSON cannot hold"))
        }
        Some(Kind::StringValue(s)) if s.contains('\0') => Err(format!(
            "{path} holds a NUL character (U+0000), which the store cannot hold"
        )),
        Some(Kind::StructValue(object)) => check_struct(object, depth + 1, path),
        Some(Kind::ListValue(list)) => {
            if depth + 1 > MAX_DEPTH {
                return Err(format!(
                    "{path} is nested deeper than {MAX_DEPTH} objects and lists"
                ));
            }
            for (i, item) in list.values.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_value(item, depth + 1, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        None
        | Some(
            Kind::NullValue(_) | Kind::NumberValue(_) | Kind::StringValue(_) | Kind::BoolValue(_),
        ) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbjson_types::ListValue;

    fn object(fields: impl IntoIterator<Item = (&'static str, Kind)>) -> Struct {
        Struct {
            fields: fields
                .into_iter()
                .map(|(k, kind)| (k.to_owned(), Value { kind: Some(kind) }))
                .collect(),
        }
    }

    /// An object `{"a": {"a": … 1}}` nested `depth` deep.
    fn nested(depth: usize) -> Struct {
        let mut inner = object([("a", Kind::NumberValue(1.0))]);
        for _ in 1..depth {
            inner = object([("a", Kind::StructValue(inner))]);
        }
        inner
    }

    #[test]
    fn plain_json_passes() {
        let list = ListValue {
            values: vec![
                Value {
                    kind: Some(Kind::NullValue(0)),
                },
                Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            ],
        };
        let json = object([
            ("n", Kind::NumberValue(-1.5e300)),
            ("s", Kind::StringValue("héllo".into())),
            ("l", Kind::ListValue(list)),
            ("o", Kind::StructValue(nested(MAX_DEPTH - 1))),
        ]);
        assert_eq!(check_json(&json), Ok(()));
        assert_eq!(check_json(&Struct::default()), Ok(()));
    }

    #[test]
    fn numbers_json_cannot_hold_are_refused_with_their_path() {
        for (n, shown) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let list = ListValue {
                values: vec![
                    Value {
                        kind: Some(Kind::NumberValue(1.0)),
                    },
                    Value {
                        kind: Some(Kind::NumberValue(n)),
                    },
                ],
            };
            let json = object([(
                "a",
                Kind::StructValue(object([("b", Kind::ListValue(list))])),
            )]);
            assert_eq!(
                check_json(&json),
                Err(format!("$.a.b[1] is {shown}, which JSON cannot hold"))
            );
        }
    }

    #[test]
    fn nesting_is_limited_for_objects_and_lists() {
        assert_eq!(check_json(&nested(MAX_DEPTH)), Ok(()));
        let err = check_json(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.contains("deeper than 32"), "{err}");

        let mut list = Value {
            kind: Some(Kind::NumberValue(0.0)),
        };
        // The top object and 31 lists: 32 levels.
        for _ in 1..MAX_DEPTH {
            list = Value {
                kind: Some(Kind::ListValue(ListValue { values: vec![list] })),
            };
        }
        let ok = Struct {
            fields: [("l".to_owned(), list.clone())].into(),
        };
        assert_eq!(check_json(&ok), Ok(()));
        let deeper = Struct {
            fields: [(
                "l".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: vec![list] })),
                },
            )]
            .into(),
        };
        let err = check_json(&deeper).unwrap_err();
        assert!(err.contains("deeper than 32"), "{err}");
    }

    #[test]
    fn nul_characters_are_refused_and_kindless_values_are_null() {
        let err = check_json(&object([("a\0b", Kind::BoolValue(true))])).unwrap_err();
        assert!(err.contains("NUL") && err.contains(r#""$.a\0b""#), "{err}");
        let err = check_json(&object([("s", Kind::StringValue("x\0".into()))])).unwrap_err();
        assert!(err.starts_with("$.s holds a NUL"), "{err}");
        let kindless = Struct {
            fields: [("v".to_owned(), Value { kind: None })].into(),
        };
        assert_eq!(check_json(&kindless), Ok(()));
        let null: Struct = serde_json::from_str(r#"{"v":null}"#).unwrap();
        assert_eq!(null, kindless, "pbjson reads null as no kind");
    }
}
