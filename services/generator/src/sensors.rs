//! The sensor client (W3): streams typed readings at a steady rate from a
//! set of simulated sensors, through the publisher's bounded window.

use std::sync::Arc;

use rand::RngExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary::{
    clock::{self, WallClock},
    proto::{Record, SensorReading, record::Payload},
    workloads::sensors::{DEMO_METRICS, Metric},
};

/// A simulated sensor client.
pub struct Sensors {
    pub source: String,
    pub clock: Arc<dyn WallClock>,
    pub records: mpsc::Sender<Record>,
    /// Readings per second, across all sensors.
    pub rate: f64,
    /// Sensors simulated.
    pub sensors: u32,
    /// Stop after this many readings; 0 runs until shutdown.
    pub count: u64,
}

impl Sensors {
    pub async fn run(self, shutdown: CancellationToken) {
        let started = self.clock.now_micros();
        let mut seq = 0u64;
        let site = format!("site-{}", rand::rng().random_range(1..=9));
        while self.count == 0 || seq < self.count {
            // Absolute schedule: reading k is due at start + k / rate.
            let due = started + (seq as f64 * 1e6 / self.rate) as i64;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.clock.sleep_until(due) => {}
            }
            let Metric {
                name: metric,
                unit,
                typical,
                spread,
            } = DEMO_METRICS[seq as usize % DEMO_METRICS.len()];
            let sensor = (seq / 3) % u64::from(self.sensors);
            let now = clock::from_micros(self.clock.now_micros());
            let record = Record {
                source: self.source.clone(),
                seq,
                sent_at: Some(now),
                attributes: [("site".to_owned(), site.clone())].into(),
                payload: Some(Payload::SensorReading(SensorReading {
                    sensor_id: format!("sensor-{sensor:03}"),
                    metric: metric.into(),
                    value: typical + rand::rng().random_range(-spread..spread),
                    unit: unit.into(),
                    measured_at: Some(now),
                })),
            };
            if self.records.send(record).await.is_err() {
                return;
            }
            seq += 1;
        }
    }
}
