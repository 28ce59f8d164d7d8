//! The one way Tributary clients open gRPC channels, so that every client
//! carries the caller's trace context to the server.

use std::time::Duration;

use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::trace_context::Propagate;

/// A channel whose calls carry the current span's `traceparent`.
pub type TracedChannel = InterceptedService<Channel, Propagate>;

/// The endpoint for `uri` with the options every client wants: a bounded
/// connect time, and no Nagle delay on small acks and claims.
pub fn endpoint(uri: impl Into<String>) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.into())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

/// Connects now.
pub async fn connect(endpoint: &Endpoint) -> Result<TracedChannel, tonic::transport::Error> {
    Ok(traced(endpoint.connect().await?))
}

/// Connects on first use (and again after a failure).
pub fn connect_lazy(endpoint: &Endpoint) -> TracedChannel {
    traced(endpoint.connect_lazy())
}

/// Wraps an existing channel.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, Propagate)
}
