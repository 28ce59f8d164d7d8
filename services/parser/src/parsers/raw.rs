//! `raw`: stores every record as it was delivered.

use async_trait::async_trait;
use serde::Deserialize;
use tributary::proto::{Record, RecordKind};

use super::{Outcome, Parser};

/// `raw` takes no options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl Config {
    pub fn build(&self) -> Raw {
        Raw
    }
}

impl super::ParserType for Config {
    const NAME: &'static str = "raw";

    fn build(&self) -> std::sync::Arc<dyn Parser> {
        std::sync::Arc::new(Config::build(self))
    }
}

/// The `raw` parser.
pub struct Raw;

#[async_trait]
impl Parser for Raw {
    fn kinds(&self) -> Vec<RecordKind> {
        Vec::new()
    }

    /// It reads records and never changes one.
    fn keeps_records(&self) -> bool {
        true
    }

    async fn process(&self, _record: &mut Record) -> Outcome {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::{Text, record::Payload};

    #[tokio::test]
    async fn leaves_records_alone() {
        let original = Record {
            source: "a".into(),
            payload: Some(Payload::Text(Text {
                body: "MiXed".into(),
            })),
            ..Default::default()
        };
        let mut record = original.clone();
        Raw.process(&mut record).await.unwrap();
        assert_eq!(record, original);
        assert!(Raw.kinds().is_empty(), "raw subscribes to every kind");
    }
}
