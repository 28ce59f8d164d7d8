//! `probe`: stores each burst-probe message with its send time, its arrival
//! at the ingest tier and its commit to the store, for the latency query.

use async_trait::async_trait;
use serde::Deserialize;
use tributary::{
    proto::{Record, RecordKind, record::Payload},
    store::Fact,
    workloads,
};

use super::{Outcome, Parser};

/// `probe` takes no options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl Config {
    pub fn build(&self) -> Probe {
        Probe
    }
}

impl super::ParserType for Config {
    const NAME: &'static str = tributary::workloads::probes::GROUP;

    fn build(&self) -> std::sync::Arc<dyn Parser> {
        std::sync::Arc::new(Config::build(self))
    }
}

/// The `probe` parser.
pub struct Probe;

#[async_trait]
impl Parser for Probe {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::Probe]
    }

    /// It reads records and never changes one.
    fn keeps_records(&self) -> bool {
        true
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        match &record.payload {
            Some(Payload::Probe(probe)) if record.sent_at.is_some() => {
                Ok(Some(Fact::Probe(workloads::probes::Probe {
                    number: probe.number,
                })))
            }
            Some(Payload::Probe(_)) => Err("a probe must carry its send time (sent_at)".into()),
            _ => Err("probe takes only probe records".into()),
        }
    }
}
