//! Server-wide limits every listener applies, whatever it hosts: calls per
//! HTTP/2 connection, calls open on the whole server, and how long an HTTP
//! client may take to send a request body. Past a limit the server sheds
//! the call at once with UNAVAILABLE (HTTP 503) and a retry hint; it never
//! queues without bound. Health, reflection, `/metrics` and the dashboard's
//! static files are not counted, so they keep answering under load.
//!
//! The memory budget for in-flight publish data is the ingest service's
//! (`tributary_ingest::Limits`): only it knows what a request's records cost.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tonic::codegen::http::{self, HeaderValue, StatusCode, header};

/// Calls shed because a server-wide limit was reached, by `limit`.
pub const SHED: &str = "tributary_shed_total";

/// What a shed caller is told to wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Server-wide limits of a listener.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerLimits {
    /// Most calls one HTTP/2 connection may have open at once (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS): a client past it waits for one of
    /// its own calls to end before it may open another.
    #[arg(
        long,
        env = "TRIBUTARY_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_streams_per_connection: u32,
    /// Most calls open on the whole server at once, streams and unary calls
    /// of every connection together. Past it a new call gets UNAVAILABLE
    /// (HTTP 503) with a one-second retry hint. Health, reflection and
    /// /metrics are not counted and keep answering.
    #[arg(long, env = "TRIBUTARY_MAX_STREAMS", default_value_t = 4096)]
    pub max_streams: usize,
    /// Seconds an HTTP client (REST, not gRPC) may take to send a whole
    /// request body; a slower body is cut off and the request fails with a
    /// 400 instead of holding its connection and memory.
    #[arg(long, env = "TRIBUTARY_REST_BODY_TIMEOUT_SECS", default_value_t = 10)]
    pub rest_body_timeout_secs: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 256,
            max_streams: 4096,
            rest_body_timeout_secs: 10,
        }
    }
}

impl ServerLimits {
    /// Checks that the limits are usable.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_streams_per_connection == 0 || self.max_streams == 0 {
            return Err("--max-streams and --max-streams-per-connection must be at least 1");
        }
        if self.rest_body_timeout_secs == 0 {
            return Err("--rest-body-timeout-secs must be at least 1");
        }
        Ok(())
    }

    /// The layer that enforces `max_streams` and the REST body timeout.
    pub fn layer(&self) -> LimitLayer {
        LimitLayer {
            slots: Arc::new(Semaphore::new(self.max_streams)),
            body_timeout: Duration::from_secs(self.rest_body_timeout_secs),
        }
    }
}

/// Whether a call is cheap and must keep answering under load.
fn exempt(path: &str) -> bool {
    crate::access::required(&http::Method::GET, path).is_none()
}

/// Sheds calls past the server's limit and puts a deadline on HTTP request
/// bodies.
#[derive(Debug, Clone)]
pub struct LimitLayer {
    slots: Arc<Semaphore>,
    body_timeout: Duration,
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`LimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
    layer: LimitLayer,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Limit<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if exempt(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.layer.slots.clone().try_acquire_owned() else {
            metrics::counter!(SHED, "limit" => "max_streams").increment(1);
            let response = busy(grpc);
            return Box::pin(async move { Ok(response) });
        };
        let request = if grpc {
            request
        } else {
            let deadline = tokio::time::Instant::now() + self.layer.body_timeout;
            request.map(|body| {
                tonic::body::Body::new(ReadDeadline {
                    body,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                })
            })
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| crate::held_body::Held::wrap(body, permit)))
        })
    }
}

/// UNAVAILABLE with a retry hint: `retry-after` for HTTP clients,
/// `grpc-retry-pushback-ms` (gRPC's own hint) for gRPC ones.
fn busy(grpc: bool) -> http::Response<tonic::body::Body> {
    let message = format!(
        "the server is at its limit of open calls; retry in {} s",
        RETRY_AFTER.as_secs()
    );
    let mut response = if grpc {
        tonic::Status::unavailable(message).into_http()
    } else {
        let body = serde_json::json!({"code": tonic::Code::Unavailable as i32, "message": message});
        let mut response = http::Response::new(tonic::body::Body::new(axum::body::Body::from(
            body.to_string(),
        )));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER.as_secs()),
    );
    headers.insert(
        "grpc-retry-pushback-ms",
        HeaderValue::from(RETRY_AFTER.as_millis() as u64),
    );
    response
}

/// The body read past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within the server's body timeout")]
pub struct BodyTimedOut;

pin_project_lite::pin_project! {
    /// A request body that fails once its deadline passes, however steadily
    /// it trickles in. (tower-http's body timeout resets on every frame, so
    /// a client sending one byte at a time would never hit it.)
    struct ReadDeadline {
        #[pin]
        body: tonic::body::Body,
        deadline: Pin<Box<tokio::time::Sleep>>,
    }
}

impl http_body::Body for ReadDeadline {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!(SHED, "limit" => "rest_body_timeout").increment(1);
                Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                    BodyTimedOut.to_string(),
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_metrics_are_never_shed() {
        assert!(exempt("/grpc.health.v1.Health/Check"));
        assert!(exempt("/metrics"));
        assert!(!exempt("/tributary.v1.Ingest/Publish"));
        assert!(!exempt("/v1/records"));
    }
}
