//! The parser registry. Adding a parser is one file in this folder (its
//! `Config` implements [`ParserType`]) plus one line in
//! [`Registry::builtin`]; a program embedding the worker can register its
//! own types with [`Registry::with`]. See `docs/extending.md`.

pub mod average;
pub mod probe;
pub mod raw;
pub mod remote;
pub mod sensor;
pub mod sms_sender;
pub mod uppercase;

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tributary::{
    proto::{Record, RecordKind},
    store::Fact,
};

/// What processing one record gave: the typed fact to store beside it (if
/// any), or the error that keeps it from being stored.
pub type Outcome = Result<Option<Fact>, String>;

/// What becomes of one record of a batch that processing did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Stored as the parser left it, with its fact if it yields one.
    Store(Option<Fact>),
    /// Acknowledged without being stored: the parser filtered it out.
    Drop,
}

/// What processing one record of a batch gave: its [`Disposition`], or the
/// error that keeps it from being stored (it is retried, then
/// dead-lettered).
pub type BatchOutcome = Result<Disposition, String>;

/// Turns delivered records into what gets stored.
#[async_trait]
pub trait Parser: Send + Sync {
    /// The record kinds this parser subscribes to; empty means every kind.
    fn kinds(&self) -> Vec<RecordKind>;

    /// How many records this parser wants outstanding at once, when it
    /// knows better than the worker's setting (a parser that works slowly
    /// on few records at a time leaves the rest to its group's replicas).
    fn pull_window(&self) -> Option<u32> {
        None
    }

    /// Processes one record in place. On error the record must be left as
    /// it was delivered: it goes to the dead-letter table as delivered.
    async fn process(&self, record: &mut Record) -> Outcome;

    /// Whether every record this parser stores is as it was delivered, so
    /// the worker stores the delivered bytes instead of encoding the record
    /// again. The default, `false`, is right for any parser; one that never
    /// changes a record may say `true` to save the encoding.
    fn keeps_records(&self) -> bool {
        false
    }

    /// Processes the records of one store batch, one outcome per record in
    /// order; only here can a parser drop a record. The default takes them
    /// one at a time and stores what [`process`](Self::process) accepts; a
    /// parser that waits on something outside overrides it to work on
    /// several at once.
    async fn process_batch(&self, records: &mut [Record]) -> Vec<BatchOutcome> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            outcomes.push(self.process(record).await.map(Disposition::Store));
        }
        outcomes
    }

    /// Told the consumer group the parser works for, once, before its first
    /// record; for parsers that pass it on (a remote parser names it to its
    /// plug-in). The default ignores it.
    fn serves(&self, _group: &str) {}

    /// Waits until the parser can work: for a parser that depends on a
    /// service outside (a remote plug-in), until that service is reached.
    /// While it fails, the worker keeps the batch's deliveries (extending
    /// their deadlines) and asks again after a back-off, so an outage
    /// charges no record an attempt and dead-letters nothing. The default
    /// is always ready.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A parser type: its options as a spec gives them, checked, and the
/// parser they build. Implemented by each parser's `Config`.
pub trait ParserType: DeserializeOwned + std::fmt::Debug + Send + Sync + 'static {
    /// The type name specs use, which is also the default consumer group.
    const NAME: &'static str;

    /// Checks option values that the types alone do not constrain.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Builds the parser.
    fn build(&self) -> Arc<dyn Parser>;
}

/// A parser type's checked options, whatever the type.
pub trait ParserConfig: std::fmt::Debug + Send + Sync {
    /// The type name, which is also the default consumer-group name.
    fn type_name(&self) -> &'static str;

    /// Checks option values that the types alone do not constrain.
    fn check(&self) -> Result<(), String>;

    /// Builds the parser.
    fn build(&self) -> Arc<dyn Parser>;

    /// The options as their own type, for callers that know it.
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: ParserType> ParserConfig for T {
    fn type_name(&self) -> &'static str {
        T::NAME
    }

    fn check(&self) -> Result<(), String> {
        ParserType::check(self)
    }

    fn build(&self) -> Arc<dyn Parser> {
        ParserType::build(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

type ParseFn = fn(serde_json::Value) -> Result<Arc<dyn ParserConfig>, String>;

/// The parser types a spec may name.
#[derive(Clone)]
pub struct Registry {
    types: Vec<(&'static str, ParseFn)>,
}

impl Registry {
    /// No parser types.
    pub fn empty() -> Self {
        Self { types: Vec::new() }
    }

    /// Every parser type of Tributary: the one list they are declared in.
    pub fn builtin() -> Self {
        Self::empty()
            .with::<raw::Config>()
            .with::<uppercase::Config>()
            .with::<average::Config>()
            .with::<probe::Config>()
            .with::<sensor::Config>()
            .with::<sms_sender::Config>()
            .with::<remote::Config>()
    }

    /// Adds a parser type; a later type of the same name replaces it.
    pub fn with<T: ParserType>(mut self) -> Self {
        self.types.retain(|(name, _)| *name != T::NAME);
        self.types.push((T::NAME, |options| {
            let config: T = serde_json::from_value(options).map_err(|e| e.to_string())?;
            config.check()?;
            Ok(Arc::new(config))
        }));
        self
    }

    /// The type names, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.types.iter().map(|(name, _)| *name).collect()
    }

    /// Parses a spec: a bare type name (`uppercase`) or a JSON object with
    /// a `type`, that parser's options, and optionally a `group`.
    pub fn spec(&self, spec: &str) -> Result<ParserSpec, String> {
        let spec = spec.trim();
        let bad = |reason: String| format!("bad parser spec {spec:?}: {reason}");
        let json: serde_json::Value = if spec.starts_with('{') {
            serde_json::from_str(spec).map_err(|e| bad(e.to_string()))?
        } else {
            serde_json::json!({ "type": spec })
        };
        let serde_json::Value::Object(mut options) = json else {
            return Err(bad("expected a type name or a JSON object".into()));
        };
        let group = match options.remove("group") {
            None => None,
            Some(serde_json::Value::String(g)) => {
                tributary::queue::check_group(&g).map_err(|e| bad(e.to_string()))?;
                Some(g)
            }
            Some(other) => return Err(bad(format!("group must be a string, not {other}"))),
        };
        let known = || self.names().join(", ");
        let type_name = match options.remove("type") {
            Some(serde_json::Value::String(name)) => name,
            Some(other) => {
                return Err(bad(format!(
                    "type must be a string, not {other} (known types: {})",
                    known()
                )));
            }
            None => return Err(bad(format!("no type (known types: {})", known()))),
        };
        let Some((_, parse)) = self.types.iter().find(|(name, _)| *name == type_name) else {
            return Err(bad(format!(
                "unknown type {type_name:?} (known types: {})",
                known()
            )));
        };
        let config = parse(serde_json::Value::Object(options)).map_err(bad)?;
        Ok(ParserSpec {
            group: group.unwrap_or_else(|| config.type_name().to_owned()),
            config,
        })
    }
}

/// A parser to run: its configuration and its consumer group.
#[derive(Debug, Clone)]
pub struct ParserSpec {
    pub config: Arc<dyn ParserConfig>,
    /// Consumer group: workers of one group split the records between them;
    /// each group gets every record of its kinds. Defaults to the type name,
    /// so replicas of one parser type share the work.
    pub group: String,
}

impl ParserSpec {
    /// Parses a spec naming one of the [built-in](Registry::builtin) types.
    pub fn from_spec(spec: &str) -> Result<Self, String> {
        Registry::builtin().spec(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_or_configure_a_parser() {
        let raw = ParserSpec::from_spec("raw").unwrap();
        assert_eq!((raw.config.type_name(), raw.group.as_str()), ("raw", "raw"));
        assert_eq!(
            ParserSpec::from_spec(r#"{"type":"uppercase"}"#)
                .unwrap()
                .config
                .type_name(),
            "uppercase"
        );
        let sender = ParserSpec::from_spec(
            r#"{"type":"sms_sender","mean_ms":5,"failure_rate":0.2,"group":"alerts"}"#,
        )
        .unwrap();
        assert_eq!(sender.group, "alerts");
        let Some(config) = sender.config.as_any().downcast_ref::<sms_sender::Config>() else {
            panic!("{sender:?}")
        };
        assert_eq!(
            (config.mean_ms, config.failure_rate, config.concurrency),
            (5.0, 0.2, 32)
        );
    }

    #[test]
    fn specs_reject_unknown_types_and_options() {
        let err = ParserSpec::from_spec("lowercase").unwrap_err();
        assert!(err.contains("known types"), "{err}");
        assert!(ParserSpec::from_spec(r#"{"type":"raw","speed":3}"#).is_err());
        let err = ParserSpec::from_spec(r#"{"type":"sms_sender","failure_rate":2}"#).unwrap_err();
        assert!(err.contains("failure_rate"), "{err}");
    }

    #[test]
    fn specs_name_only_groups_every_queue_backend_takes() {
        let spec = ParserSpec::from_spec(r#"{"type":"raw","group":"raw-eu"}"#).unwrap();
        assert_eq!(spec.group, "raw-eu");
        for bad in [r#""""#, r#""orders.eu""#, r#""a b""#, "7"] {
            let err =
                ParserSpec::from_spec(&format!(r#"{{"type":"raw","group":{bad}}}"#)).unwrap_err();
            assert!(err.contains("group"), "{bad}: {err}");
        }
    }
}
