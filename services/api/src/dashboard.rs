//! `WatchDashboard`: one update per interval carrying every figure the live
//! page shows, each read through the same Query handler a client would call.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use tributary::{
    clock,
    proto::{
        AggregateMetricRequest, Dashboard, GetLatencyRequest, GetSmsProgressRequest,
        ListAveragesRequest, WatchDashboardRequest, query_server::Query,
    },
    workloads::sensors::DEMO_METRICS,
};

use crate::QueryService;

/// The metrics the demo sensors report, aggregated when a request names none.
const DEFAULT_METRICS: [&str; 3] = [
    DEMO_METRICS[0].name,
    DEMO_METRICS[1].name,
    DEMO_METRICS[2].name,
];
/// Bounds the work of one update: each metric is one aggregate query.
const MAX_METRICS: usize = 16;
const DEFAULT_SENSOR_WINDOW_MS: u32 = 60_000;
const MAX_SENSOR_WINDOW_MS: u32 = 86_400_000;
const DEFAULT_AVERAGES: u32 = 60;

/// A validated `WatchDashboardRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    interval: Duration,
    averages: u32,
    metrics: Vec<String>,
    sensor_window_ms: u32,
}

impl Plan {
    /// Applies the defaults and checks the bounds the proto documents.
    pub fn new(request: WatchDashboardRequest) -> Result<Self, Status> {
        let interval = crate::service::interval(request.interval_ms)?;
        // ListAverages checks the limit itself; this only picks the default.
        let averages = match request.averages {
            0 => DEFAULT_AVERAGES,
            n => n,
        };
        let metrics = if request.metrics.is_empty() {
            DEFAULT_METRICS.map(String::from).to_vec()
        } else {
            request.metrics
        };
        if metrics.len() > MAX_METRICS {
            return Err(Status::invalid_argument(format!(
                "{} metrics asked for; at most {MAX_METRICS}",
                metrics.len()
            )));
        }
        if metrics.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("a metric name is empty"));
        }
        let sensor_window_ms = match request.sensor_window_ms {
            0 => DEFAULT_SENSOR_WINDOW_MS,
            ms if ms > MAX_SENSOR_WINDOW_MS => {
                return Err(Status::invalid_argument(format!(
                    "sensor_window_ms {ms} is above the maximum of {MAX_SENSOR_WINDOW_MS}"
                )));
            }
            ms => ms,
        };
        Ok(Self {
            interval,
            averages,
            metrics,
            sensor_window_ms,
        })
    }
}

/// Sends one update per interval into `tx` until the receiver hangs up or
/// `shutdown`. A failed read is sent as the stream's last item.
pub async fn run(
    service: QueryService,
    plan: Plan,
    tx: mpsc::Sender<Result<Dashboard, Status>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(plan.interval);
    // A slow store delays one update; it must not bunch the next ones up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let update = snapshot(&service, &plan).await;
        let failed = update.is_err();
        if tx.send(update).await.is_err() || failed {
            return;
        }
    }
}

/// Every figure at once; the reads run concurrently so an update costs
/// about as long as its slowest query.
async fn snapshot(service: &QueryService, plan: &Plan) -> Result<Dashboard, Status> {
    let now = clock::now_micros();
    let sensor_from = now - i64::from(plan.sensor_window_ms) * 1000;
    let metrics = futures::future::try_join_all(plan.metrics.iter().map(|metric| {
        service.aggregate_metric(Request::new(AggregateMetricRequest {
            metric: metric.clone(),
            from: Some(clock::from_micros(sensor_from)),
            to: None,
            group_by_sensor: false,
            parser: String::new(),
        }))
    }));
    let (latency, averages, metrics, sms, fleet) = tokio::join!(
        service.get_latency(Request::new(GetLatencyRequest::default())),
        service.list_averages(Request::new(ListAveragesRequest {
            limit: plan.averages,
            ..Default::default()
        })),
        metrics,
        service.get_sms_progress(Request::new(GetSmsProgressRequest::default())),
        service.fleet().report(),
    );
    let averages = averages?.into_inner();
    Ok(Dashboard {
        read_at: Some(clock::from_micros(now)),
        latency: Some(latency?.into_inner()),
        averages: averages.averages,
        averages_skipped: averages.skipped,
        metrics: metrics?.into_iter().map(|m| m.into_inner()).collect(),
        sensor_window_ms: plan.sensor_window_ms,
        sms: Some(sms?.into_inner()),
        fleet: Some(fleet),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_request_gets_the_documented_defaults() {
        let plan = Plan::new(WatchDashboardRequest::default()).unwrap();
        assert_eq!(plan.interval, Duration::from_secs(1));
        assert_eq!(plan.averages, 60);
        assert_eq!(plan.metrics, ["temperature", "humidity", "pressure"]);
        assert_eq!(plan.sensor_window_ms, 60_000);
    }

    #[test]
    fn out_of_bounds_requests_are_refused() {
        for request in [
            WatchDashboardRequest {
                interval_ms: 99,
                ..Default::default()
            },
            WatchDashboardRequest {
                interval_ms: 60_001,
                ..Default::default()
            },
            WatchDashboardRequest {
                sensor_window_ms: MAX_SENSOR_WINDOW_MS + 1,
                ..Default::default()
            },
            WatchDashboardRequest {
                metrics: vec!["m".into(); MAX_METRICS + 1],
                ..Default::default()
            },
            WatchDashboardRequest {
                metrics: vec![String::new()],
                ..Default::default()
            },
        ] {
            let status = Plan::new(request.clone()).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}");
        }
    }
}
