//! W3C trace context (`traceparent`) across process boundaries: into and out
//! of gRPC metadata (a server layer and a client interceptor) and as the
//! string a queue message or a publish request carries.
//!
//! Without an OpenTelemetry layer installed spans have no trace context, so
//! nothing is written and nothing is parsed into a parent.

use std::{
    collections::HashMap,
    task::{Context as TaskContext, Poll},
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::http;
use tracing::{Instrument, Span, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header, metadata key and queue message header that carries the context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of `span`, if it belongs to a trace.
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The remote parent a `traceparent` names, if it parses.
pub fn remote_parent(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `traceparent` (if any, and valid) the parent of `span`.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(remote_parent) {
        // Fails only when the span is disabled, where a parent means nothing.
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the trace `traceparent` names (a causal relation that is
/// not parenthood, such as one store commit covering several batches).
pub fn add_link(span: &Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(remote_parent) {
        span.add_link(cx.span().span_context().clone());
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Client side: writes the current span's context into each call's metadata,
/// so the server's span for the call joins the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Propagate;

impl tonic::service::Interceptor for Propagate {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = Span::current().context();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new()
                .inject_context(&cx, &mut Metadata(request.metadata_mut()));
        }
        Ok(request)
    }
}

/// Server side: every call runs in a span named after its gRPC method, whose
/// parent is the caller's `traceparent` when the metadata carries one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSpanLayer;

impl<S> tower::Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerSpan { inner }
    }
}

/// The service [`ServerSpanLayer`] makes.
#[derive(Debug, Clone)]
pub struct ServerSpan<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ServerSpan<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/');
        let span = tracing::info_span!(
            "grpc request",
            otel.name = method,
            otel.kind = "server",
            rpc.system = "grpc",
        );
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        self.inner.call(request).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tonic::service::Interceptor;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Runs `f` under an OpenTelemetry layer; returns the exporter and the
    /// provider, which must outlive the reading (its shutdown on drop
    /// clears the in-memory exporter).
    fn with_tracing<T>(f: impl FnOnce() -> T) -> (T, InMemorySpanExporter, SdkTracerProvider) {
        use opentelemetry::trace::TracerProvider as _;
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let out = tracing::subscriber::with_default(subscriber, f);
        provider.force_flush().unwrap();
        (out, exporter, provider)
    }

    #[test]
    fn a_span_round_trips_through_its_traceparent() {
        let ((parent, child), exporter, _provider) = with_tracing(|| {
            let parent = tracing::info_span!("parent");
            let tp = traceparent(&parent).expect("a span under an OTel layer has a context");
            let child = tracing::info_span!("child");
            set_parent(&child, Some(&tp));
            let ids = (
                parent.context().span().span_context().clone(),
                child.context().span().span_context().clone(),
            );
            drop(child);
            drop(parent);
            ids
        });
        assert_eq!(parent.trace_id(), child.trace_id());
        let spans = exporter.get_finished_spans().unwrap();
        let child_data = spans.iter().find(|s| s.name == "child").unwrap();
        assert_eq!(child_data.parent_span_id, parent.span_id());
    }

    #[test]
    fn no_tracing_layer_means_no_traceparent() {
        let span = tracing::info_span!("alone");
        assert_eq!(traceparent(&span), None);
    }

    #[test]
    fn garbage_is_no_parent() {
        assert!(remote_parent("not a traceparent").is_none());
        assert!(remote_parent("00-00000000000000000000000000000000-0000000000000000-01").is_none());
        assert!(remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
    }

    #[test]
    fn the_interceptor_writes_the_current_context_into_metadata() {
        let (written, _, _) = with_tracing(|| {
            let span = tracing::info_span!("call");
            let _entered = span.enter();
            let request = Propagate.call(tonic::Request::new(())).unwrap();
            let written = request
                .metadata()
                .get(TRACEPARENT)
                .map(|v| v.to_str().unwrap().to_owned());
            (written, traceparent(&span))
        });
        assert!(written.0.is_some());
        assert_eq!(written.0, written.1);
    }
}
