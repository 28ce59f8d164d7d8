//! The parser registry. Adding a parser is one file in this folder plus one
//! variant of [`ParserConfig`] and one arm in each of its matches; the
//! compiler then checks that every parser is handled.

pub mod raw;
pub mod uppercase;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use tributary::proto::{Record, RecordKind};

/// Turns delivered records into what gets stored.
#[async_trait]
pub trait Parser: Send + Sync {
    /// The record kinds this parser subscribes to; empty means every kind.
    fn kinds(&self) -> Vec<RecordKind>;

    /// Processes one record in place. On error the record must be left as
    /// it was delivered: it goes to the dead-letter table as it stands.
    async fn process(&self, record: &mut Record) -> Result<(), String>;
}

/// Every parser's configuration, tagged by its type name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParserConfig {
    /// Stores records as they are.
    Raw(raw::Config),
    /// Upper-cases the text of text, SMS and sensor records.
    Uppercase(uppercase::Config),
}

impl ParserConfig {
    /// Parses a spec: a bare type name (`uppercase`) or a JSON object with a
    /// `type` and that parser's options.
    pub fn from_spec(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let json = if spec.starts_with('{') {
            spec.to_owned()
        } else {
            serde_json::json!({ "type": spec }).to_string()
        };
        serde_json::from_str(&json)
            .map_err(|e| format!("bad parser spec {spec:?}: {e} (known types: raw, uppercase)"))
    }

    /// The type name, which is also the default consumer-group name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParserConfig::Raw(_) => "raw",
            ParserConfig::Uppercase(_) => "uppercase",
        }
    }

    /// Builds the parser.
    pub fn build(&self) -> Arc<dyn Parser> {
        match self {
            ParserConfig::Raw(config) => Arc::new(config.build()),
            ParserConfig::Uppercase(config) => Arc::new(config.build()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_or_configure_a_parser() {
        assert_eq!(
            ParserConfig::from_spec("raw").unwrap(),
            ParserConfig::Raw(raw::Config {})
        );
        assert_eq!(
            ParserConfig::from_spec(r#"{"type":"uppercase"}"#)
                .unwrap()
                .type_name(),
            "uppercase"
        );
    }

    #[test]
    fn specs_reject_unknown_types_and_options() {
        let err = ParserConfig::from_spec("lowercase").unwrap_err();
        assert!(err.contains("known types"), "{err}");
        assert!(ParserConfig::from_spec(r#"{"type":"raw","speed":3}"#).is_err());
    }
}
