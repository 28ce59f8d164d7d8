//! The parser registry. Adding a parser is one file in this folder plus one
//! variant of [`ParserConfig`] and one arm in each of its matches; the
//! compiler then checks that every parser is handled.

pub mod average;
pub mod probe;
pub mod raw;
pub mod sensor;
pub mod sms_sender;
pub mod uppercase;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use tributary::{
    proto::{Record, RecordKind},
    store::Fact,
};

/// What processing one record gave: the typed fact to store beside it (if
/// any), or the error that keeps it from being stored.
pub type Outcome = Result<Option<Fact>, String>;

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
    /// it was delivered: it goes to the dead-letter table as it stands.
    async fn process(&self, record: &mut Record) -> Outcome;

    /// Processes the records of one store batch, one outcome per record in
    /// order. The default takes them one at a time; a parser that waits on
    /// something outside overrides it to work on several at once.
    async fn process_batch(&self, records: &mut [Record]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            outcomes.push(self.process(record).await);
        }
        outcomes
    }
}

/// Every parser's configuration, tagged by its type name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParserConfig {
    /// Stores records as they are.
    Raw(raw::Config),
    /// Upper-cases the text of text, SMS and sensor records.
    Uppercase(uppercase::Config),
    /// Stores random numbers and their per-window averages.
    Average(average::Config),
    /// Stores burst probes with their arrival times.
    Probe(probe::Config),
    /// Stores sensor readings for aggregation.
    Sensor(sensor::Config),
    /// Simulates sending SMS messages and stores the outcomes.
    SmsSender(sms_sender::Config),
}

const KNOWN: &str = "raw, uppercase, average, probe, sensor, sms_sender";

/// A parser to run: its configuration and its consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct ParserSpec {
    pub config: ParserConfig,
    /// Consumer group: workers of one group split the records between them;
    /// each group gets every record of its kinds. Defaults to the type name,
    /// so replicas of one parser type share the work.
    pub group: String,
}

impl ParserSpec {
    /// Parses a spec: a bare type name (`uppercase`) or a JSON object with a
    /// `type`, that parser's options, and optionally a `group`.
    pub fn from_spec(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let mut json: serde_json::Value = if spec.starts_with('{') {
            serde_json::from_str(spec).map_err(|e| format!("bad parser spec {spec:?}: {e}"))?
        } else {
            serde_json::json!({ "type": spec })
        };
        let group = match json.as_object_mut().and_then(|o| o.remove("group")) {
            None => None,
            Some(serde_json::Value::String(g)) => {
                tributary::queue::check_group(&g)
                    .map_err(|e| format!("bad parser spec {spec:?}: {e}"))?;
                Some(g)
            }
            Some(other) => {
                return Err(format!(
                    "bad parser spec {spec:?}: group must be a string, not {other}"
                ));
            }
        };
        let config: ParserConfig = serde_json::from_value(json)
            .map_err(|e| format!("bad parser spec {spec:?}: {e} (known types: {KNOWN})"))?;
        config.check()?;
        Ok(Self {
            group: group.unwrap_or_else(|| config.type_name().to_owned()),
            config,
        })
    }
}

impl ParserConfig {
    /// The type name, which is also the default consumer-group name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParserConfig::Raw(_) => "raw",
            ParserConfig::Uppercase(_) => "uppercase",
            ParserConfig::Average(_) => "average",
            ParserConfig::Probe(_) => "probe",
            ParserConfig::Sensor(_) => "sensor",
            ParserConfig::SmsSender(_) => "sms_sender",
        }
    }

    /// Checks option values that the types alone do not constrain.
    pub fn check(&self) -> Result<(), String> {
        match self {
            ParserConfig::Average(config) => config.check(),
            ParserConfig::SmsSender(config) => config.check(),
            ParserConfig::Raw(_)
            | ParserConfig::Uppercase(_)
            | ParserConfig::Probe(_)
            | ParserConfig::Sensor(_) => Ok(()),
        }
    }

    /// Builds the parser.
    pub fn build(&self) -> Arc<dyn Parser> {
        match self {
            ParserConfig::Raw(config) => Arc::new(config.build()),
            ParserConfig::Uppercase(config) => Arc::new(config.build()),
            ParserConfig::Average(config) => Arc::new(config.build()),
            ParserConfig::Probe(config) => Arc::new(config.build()),
            ParserConfig::Sensor(config) => Arc::new(config.build()),
            ParserConfig::SmsSender(config) => Arc::new(config.build()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_or_configure_a_parser() {
        assert_eq!(
            ParserSpec::from_spec("raw").unwrap(),
            ParserSpec {
                config: ParserConfig::Raw(raw::Config {}),
                group: "raw".into()
            }
        );
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
        let ParserConfig::SmsSender(config) = sender.config else {
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
