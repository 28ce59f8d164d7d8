//! STOPGAP, to be deleted when the REST face lands: `GET
//! /v1/dashboard:watch` as Server-Sent Events, one event per `Dashboard`,
//! so that the page works before the transcoded REST routes exist. The REST
//! face generates this route (and every other) from the `google.api.http`
//! annotations, with canonical proto3 JSON from pbjson; this module writes
//! that JSON by hand for the one message the page reads, which is why it
//! must not outlive the REST face.

use std::convert::Infallible;

use axum::{
    Router,
    response::{
        IntoResponse,
        sse::{Event, Sse},
    },
    routing::get,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Request;
use tributary::proto::{
    AggregateMetricResponse, Average, Dashboard, FleetReport, FleetStatus, FleetWorker, Latency,
    SenderProgress, SmsProgress, WatchDashboardRequest, query_server::Query,
};

use crate::QueryService;

/// The stopgap route over `service`.
pub fn routes(service: QueryService) -> Router {
    Router::new().route(
        "/v1/dashboard:watch",
        get(move || {
            let service = service.clone();
            async move {
                let stream = match service
                    .watch_dashboard(Request::new(WatchDashboardRequest::default()))
                    .await
                {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            status.message().to_owned(),
                        )
                            .into_response();
                    }
                };
                let events = stream.map(|update| {
                    Ok::<_, Infallible>(match update {
                        Ok(dashboard) => {
                            Event::default().data(dashboard_json(&dashboard).to_string())
                        }
                        Err(status) => Event::default().event("error").data(
                            json!({"code": status.code() as i32, "message": status.message()})
                                .to_string(),
                        ),
                    })
                });
                // No keep-alive comments are needed: an update comes every
                // second.
                Sse::new(events).into_response()
            }
        }),
    )
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |ts| {
        let micros = tributary::clock::to_micros(ts);
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64);
        Value::String(humantime::format_rfc3339_micros(time).to_string())
    })
}

fn latency(l: &Latency) -> Value {
    json!({
        "highestNumber": l.highest_number.to_string(),
        "stored": l.stored.to_string(),
        "recent": l.recent.to_string(),
        "avgToIngestMs": l.avg_to_ingest_ms,
        "avgToStoreMs": l.avg_to_store_ms,
        "windowMs": l.window_ms,
        "readAt": timestamp(l.read_at.as_ref()),
    })
}

fn average(a: &Average) -> Value {
    json!({
        "windowStart": timestamp(a.window_start.as_ref()),
        "windowMs": a.window_ms,
        "count": a.count.to_string(),
        "sum": a.sum.to_string(),
        "average": a.average,
    })
}

fn metric(m: &AggregateMetricResponse) -> Value {
    let groups: Vec<Value> = m
        .groups
        .iter()
        .map(|g| {
            json!({
                "sensorId": g.sensor_id,
                "count": g.count.to_string(),
                "avg": g.avg, "min": g.min, "max": g.max,
                "p50": g.p50, "p95": g.p95, "p99": g.p99,
                "unit": g.unit,
            })
        })
        .collect();
    json!({"metric": m.metric, "groups": groups})
}

fn sender(s: &SenderProgress) -> Value {
    json!({
        "sender": s.sender,
        "sent": s.sent.to_string(),
        "failed": s.failed.to_string(),
        "avgMs": s.avg_ms,
    })
}

fn sms(s: &SmsProgress) -> Value {
    json!({
        "sent": s.sent.to_string(),
        "failed": s.failed.to_string(),
        "avgMs": s.avg_ms,
        "senders": s.senders.iter().map(sender).collect::<Vec<_>>(),
        "readAt": timestamp(s.read_at.as_ref()),
    })
}

fn worker(w: &FleetWorker) -> Value {
    json!({
        "workerId": w.worker_id,
        "state": w.state().as_str_name(),
        "pid": w.pid,
        "port": w.port,
        "samples": w.samples.to_string(),
        "crashes": w.crashes.to_string(),
        "restarts": w.restarts.to_string(),
    })
}

fn fleet_status(s: &FleetStatus) -> Value {
    json!({
        "phase": s.phase().as_str_name(),
        "target": s.target.to_string(),
        "collected": s.collected.to_string(),
        "elapsedSeconds": s.elapsed_seconds,
        "maxWorkers": s.max_workers,
        "liveWorkers": s.live_workers,
        "peakLiveWorkers": s.peak_live_workers,
        "crashes": s.crashes.to_string(),
        "restarts": s.restarts.to_string(),
        "stalls": s.stalls.to_string(),
        "workers": s.workers.iter().map(worker).collect::<Vec<_>>(),
        "readAt": timestamp(s.read_at.as_ref()),
    })
}

fn fleet(f: &FleetReport) -> Value {
    json!({
        "state": f.state().as_str_name(),
        "status": f.status.as_ref().map(fleet_status),
        "detail": f.detail,
    })
}

fn dashboard_json(d: &Dashboard) -> Value {
    json!({
        "readAt": timestamp(d.read_at.as_ref()),
        "latency": d.latency.as_ref().map(latency),
        "averages": d.averages.iter().map(average).collect::<Vec<_>>(),
        "metrics": d.metrics.iter().map(metric).collect::<Vec<_>>(),
        "sensorWindowMs": d.sensor_window_ms,
        "sms": d.sms.as_ref().map(sms),
        "fleet": d.fleet.as_ref().map(fleet),
    })
}
