//! `uppercase`: upper-cases the text a record carries: the body of text and
//! SMS records, and the sensor id, metric and unit of sensor readings.

use async_trait::async_trait;
use serde::Deserialize;
use tributary::proto::{Record, RecordKind, record::Payload};

use super::{Outcome, Parser};

/// `uppercase` takes no options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl Config {
    pub fn build(&self) -> Uppercase {
        Uppercase
    }
}

impl super::ParserType for Config {
    const NAME: &'static str = "uppercase";

    fn build(&self) -> std::sync::Arc<dyn Parser> {
        std::sync::Arc::new(Config::build(self))
    }
}

/// The `uppercase` parser.
pub struct Uppercase;

#[async_trait]
impl Parser for Uppercase {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::Text, RecordKind::Sms, RecordKind::SensorReading]
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        let kind = tributary::kind::of(record);
        match &mut record.payload {
            Some(Payload::Text(text)) => text.body = text.body.to_uppercase(),
            Some(Payload::Sms(sms)) => sms.body = sms.body.to_uppercase(),
            Some(Payload::SensorReading(reading)) => {
                reading.sensor_id = reading.sensor_id.to_uppercase();
                reading.metric = reading.metric.to_uppercase();
                reading.unit = reading.unit.to_uppercase();
            }
            _ => {
                let kind = kind.map_or("payload-less", tributary::kind::name);
                return Err(format!(
                    "uppercase has no text to change in a {kind} record"
                ));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::{Probe, SensorReading, Text};

    #[tokio::test]
    async fn upper_cases_text_and_sensor_names() {
        let mut text = Record {
            payload: Some(Payload::Text(Text {
                body: "héllo wörld".into(),
            })),
            ..Default::default()
        };
        Uppercase.process(&mut text).await.unwrap();
        assert_eq!(
            text.payload,
            Some(Payload::Text(Text {
                body: "HÉLLO WÖRLD".into()
            }))
        );

        let mut reading = Record {
            payload: Some(Payload::SensorReading(SensorReading {
                sensor_id: "s1".into(),
                metric: "temp".into(),
                value: 1.5,
                unit: "c".into(),
                measured_at: None,
            })),
            ..Default::default()
        };
        Uppercase.process(&mut reading).await.unwrap();
        let Some(Payload::SensorReading(r)) = reading.payload else {
            unreachable!()
        };
        assert_eq!(
            (
                r.sensor_id.as_str(),
                r.metric.as_str(),
                r.unit.as_str(),
                r.value
            ),
            ("S1", "TEMP", "C", 1.5)
        );
    }

    #[tokio::test]
    async fn refuses_records_without_text_and_leaves_them_unchanged() {
        let original = Record {
            payload: Some(Payload::Probe(Probe { number: 3 })),
            ..Default::default()
        };
        let mut record = original.clone();
        let err = Uppercase.process(&mut record).await.unwrap_err();
        assert!(err.contains("probe"), "{err}");
        assert_eq!(record, original);
    }
}
