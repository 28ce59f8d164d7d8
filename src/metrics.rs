//! Prometheus metrics: the process-wide recorder, the names every service
//! shares, the `GET /metrics` route and the open-streams layer.
//!
//! One recorder serves the whole process, so the embedded mesh (`up`) shows
//! every service's metrics on its one port.

use std::{
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};

pub use ::metrics::{Counter, Gauge, counter, gauge, histogram};
use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tonic::codegen::http;

/// Records that reached an ingest server, by `kind`.
pub const INGEST_RECEIVED: &str = "tributary_ingest_records_received_total";
/// Records durably queued and acknowledged to the producer, by `kind`.
pub const INGEST_ACKED: &str = "tributary_ingest_records_acked_total";
/// Records refused, by `code` (gRPC code name).
pub const INGEST_REJECTED: &str = "tributary_ingest_records_rejected_total";
/// Queue commit latency of one publish, by `backend`.
pub const QUEUE_PUBLISH_SECONDS: &str = "tributary_queue_publish_seconds";
/// Deliveries to parsers, by `group`.
pub const QUEUE_DELIVERIES: &str = "tributary_queue_deliveries_total";
/// Deliveries with attempt > 1, by `group`.
pub const QUEUE_REDELIVERIES: &str = "tributary_queue_redeliveries_total";
/// Messages published and not yet acknowledged by a group, by `group`.
pub const QUEUE_LAG: &str = "tributary_queue_lag_messages";
/// Messages a policy dropped before the group acked them, by `group` and
/// `reason` (age, size, expired, deleted).
pub const QUEUE_DROPPED: &str = "tributary_queue_dropped_messages_total";
/// Consumer groups (or their lanes of a kind) expired for idleness.
pub const QUEUE_GROUPS_EXPIRED: &str = "tributary_queue_groups_expired_total";
/// Messages the embedded queue retains.
pub const QUEUE_RETAINED_MESSAGES: &str = "tributary_queue_retained_messages";
/// Bytes of the bodies the embedded queue retains (on disk).
pub const QUEUE_RETAINED_BYTES: &str = "tributary_queue_retained_bytes";
/// Bytes of bodies the embedded queue caches in memory.
pub const QUEUE_CACHED_BYTES: &str = "tributary_queue_cached_bytes";
/// Ack ids refused on Pull streams, by `code`.
pub const QUEUE_ACKS_REFUSED: &str = "tributary_queue_acks_refused_total";
/// Records dead-lettered, by `parser`.
pub const PARSER_DEAD_LETTERS: &str = "tributary_parser_dead_letters_total";
/// Dead letters the store refused to hold, so dropped (logged), by `parser`.
pub const PARSER_UNSTORABLE: &str = "tributary_parser_unstorable_dead_letters_total";
/// Parse time of one batch, by `parser`.
pub const PARSER_PROCESS_SECONDS: &str = "tributary_parser_process_seconds";
/// Whether a remote parser's stream to its plug-in is open (1) or not (0),
/// by `endpoint`.
pub const PARSER_PLUGIN_CONNECTED: &str = "tributary_parser_plugin_connected";
/// Failed connects to a remote parser's plug-in and plug-in batches that
/// failed whole (a broken stream, no answer in time, a malformed answer),
/// by `endpoint`.
pub const PARSER_PLUGIN_FAILURES: &str = "tributary_parser_plugin_failures_total";
/// Store commit time of one batch, by `parser`.
pub const STORE_COMMIT_SECONDS: &str = "tributary_store_commit_seconds";
/// Open gRPC calls on this server, by `method`.
pub const GRPC_OPEN_STREAMS: &str = "tributary_grpc_open_streams";
/// Values granted by the coordinator.
pub const COORDINATOR_CLAIMS: &str = "tributary_coordinator_claims_total";
/// Claims refused or re-assigned because another generator held the value.
pub const COORDINATOR_CONFLICTS: &str = "tributary_coordinator_conflicts_total";
/// Worker processes restarted by the fleet supervisor.
pub const FLEET_RESTARTS: &str = "tributary_fleet_restarts_total";

/// Histogram buckets in seconds: from a fast in-memory commit (100 µs) to a
/// store stalled by an outage (10 s).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the bucket list is a constant, non-empty list");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (by an embedding program) keeps
        // its place; ours then renders only what was described here.
        if ::metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// Installs the recorder now, so that metrics recorded before the first
/// scrape are kept.
pub fn install() {
    handle();
}

fn describe() {
    describe_counter!(INGEST_RECEIVED, "Records that reached an ingest server.");
    describe_counter!(
        INGEST_ACKED,
        "Records committed to the queue and acknowledged to the producer."
    );
    describe_counter!(
        INGEST_REJECTED,
        "Records refused, by gRPC status code name."
    );
    describe_histogram!(
        QUEUE_PUBLISH_SECONDS,
        Unit::Seconds,
        "Queue commit latency of one publish."
    );
    describe_counter!(QUEUE_DELIVERIES, "Queue messages delivered to parsers.");
    describe_counter!(
        QUEUE_REDELIVERIES,
        "Queue messages delivered again (attempt > 1)."
    );
    describe_gauge!(
        QUEUE_LAG,
        "Messages published but not yet acknowledged by the parser group."
    );
    describe_counter!(
        QUEUE_DROPPED,
        "Queue messages dropped by retention, expiry or deletion before their group acked them."
    );
    describe_counter!(
        QUEUE_GROUPS_EXPIRED,
        "Consumer groups (or their lanes of one kind) expired for idleness."
    );
    describe_gauge!(
        QUEUE_RETAINED_MESSAGES,
        "Messages the embedded queue retains."
    );
    describe_gauge!(
        QUEUE_RETAINED_BYTES,
        Unit::Bytes,
        "Bytes of message bodies the embedded queue retains on disk."
    );
    describe_gauge!(
        QUEUE_CACHED_BYTES,
        Unit::Bytes,
        "Bytes of message bodies the embedded queue caches in memory (capped)."
    );
    describe_counter!(
        QUEUE_ACKS_REFUSED,
        "Ack ids refused on Pull streams: malformed, foreign or another group's."
    );
    describe_counter!(
        PARSER_DEAD_LETTERS,
        "Records moved to the dead-letter table."
    );
    describe_counter!(
        PARSER_UNSTORABLE,
        "Dead letters the store refused to hold, dropped and logged."
    );
    describe_histogram!(
        PARSER_PROCESS_SECONDS,
        Unit::Seconds,
        "Parse time of one batch."
    );
    describe_gauge!(
        PARSER_PLUGIN_CONNECTED,
        "Whether a remote parser's stream to its plug-in is open (1) or not (0)."
    );
    describe_counter!(
        PARSER_PLUGIN_FAILURES,
        "Failed connects to a plug-in, and plug-in batches failed whole: a broken stream, no answer in time, a malformed answer."
    );
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Store commit time of one batch."
    );
    describe_gauge!(GRPC_OPEN_STREAMS, "Open gRPC calls on this server.");
    describe_counter!(COORDINATOR_CLAIMS, "Values granted to generators.");
    describe_counter!(
        COORDINATOR_CONFLICTS,
        "Claims refused or re-assigned because another generator held the value."
    );
    describe_counter!(
        FLEET_RESTARTS,
        "Worker processes restarted by the fleet supervisor."
    );
    describe_counter!(
        crate::access::AUTH_REFUSED,
        "Requests refused for a missing, wrong or read-only token, by reason."
    );
    describe_counter!(
        crate::limits::SHED,
        "Calls and records shed at a server-wide limit, by limit."
    );
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics` in Prometheus text format, to merge into a server's router.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    )
}

/// Counts open gRPC calls per method, from the request until the response
/// body ends (a stream's whole life). REST streams (a server-streaming
/// method as SSE, NDJSON or a JSON array) count too, labelled by verb and
/// path (`GET /v1/stats:watch`): a REST answer is a stream when it has no
/// known length, which only the streaming routes, whose paths take no
/// parameters, give; so the labels stay few.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenStreamsLayer;

impl<S> tower::Layer<S> for OpenStreamsLayer {
    type Service = OpenStreams<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenStreams { inner }
    }
}

/// The service [`OpenStreamsLayer`] makes.
#[derive(Debug, Clone)]
pub struct OpenStreams<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for OpenStreams<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let guard = grpc.then(|| OpenGuard::new(request.uri().path()));
        let rest = (!grpc).then(|| format!("{} {}", request.method(), request.uri().path()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let streaming = response.status().is_success()
                && http_body::Body::size_hint(response.body())
                    .exact()
                    .is_none();
            let guard = guard.or_else(|| rest.filter(|_| streaming).map(|m| OpenGuard::new(&m)));
            Ok(match guard {
                Some(guard) => response.map(|body| crate::held_body::Held::wrap(body, guard)),
                None => response,
            })
        })
    }
}

/// One open call in the gauge, until dropped.
struct OpenGuard(::metrics::Gauge);

impl OpenGuard {
    fn new(path: &str) -> Self {
        let gauge = ::metrics::gauge!(GRPC_OPEN_STREAMS, "method" => path.trim_start_matches('/').to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_metrics_render_with_help_and_type() {
        install();
        counter!(INGEST_RECEIVED, "kind" => "text").increment(3);
        histogram!(STORE_COMMIT_SECONDS, "parser" => "raw").record(0.002);
        let text = render();
        assert!(text.contains("# TYPE tributary_ingest_records_received_total counter"));
        assert!(text.contains("tributary_ingest_records_received_total{kind=\"text\"} 3"));
        assert!(text.contains("# TYPE tributary_store_commit_seconds histogram"));
        assert!(
            text.contains("tributary_store_commit_seconds_bucket{parser=\"raw\",le=\"0.0025\"} 1")
        );
    }
}
