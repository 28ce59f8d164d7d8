//! `sensor`: stores sensor readings in a typed table, which the query API
//! aggregates (count, average, extremes, percentiles) in SQL.

use async_trait::async_trait;
use serde::Deserialize;
use tributary::{
    clock,
    proto::{Record, RecordKind, record::Payload},
    store::Fact,
    workloads::sensors::Reading,
};

use super::{Outcome, Parser};

/// `sensor` takes no options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl Config {
    pub fn build(&self) -> Sensor {
        Sensor
    }
}

impl super::ParserType for Config {
    const NAME: &'static str = tributary::workloads::sensors::GROUP;

    fn build(&self) -> std::sync::Arc<dyn Parser> {
        std::sync::Arc::new(Config::build(self))
    }
}

/// The `sensor` parser.
pub struct Sensor;

#[async_trait]
impl Parser for Sensor {
    fn kinds(&self) -> Vec<RecordKind> {
        vec![RecordKind::SensorReading]
    }

    /// It reads records and never changes one.
    fn keeps_records(&self) -> bool {
        true
    }

    async fn process(&self, record: &mut Record) -> Outcome {
        let Some(Payload::SensorReading(reading)) = &record.payload else {
            return Err("sensor takes only sensor readings".into());
        };
        if reading.metric.is_empty() || reading.sensor_id.is_empty() {
            return Err("a sensor reading needs a sensor_id and a metric".into());
        }
        if !reading.value.is_finite() {
            return Err(format!(
                "reading value {} is not a finite number",
                reading.value
            ));
        }
        let measured_at = reading
            .measured_at
            .as_ref()
            .or(record.sent_at.as_ref())
            .map_or(0, clock::to_micros);
        Ok(Some(Fact::Reading(Reading {
            sensor_id: reading.sensor_id.clone(),
            metric: reading.metric.clone(),
            value: reading.value,
            unit: reading.unit.clone(),
            measured_at,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::proto::SensorReading;

    #[tokio::test]
    async fn rejects_readings_that_cannot_be_aggregated() {
        let mut nan = Record {
            payload: Some(Payload::SensorReading(SensorReading {
                sensor_id: "s".into(),
                metric: "m".into(),
                value: f64::NAN,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(
            Sensor
                .process(&mut nan)
                .await
                .unwrap_err()
                .contains("finite")
        );
    }
}
