//! The one way Tributary clients open gRPC channels (from the endpoints
//! that `channel::Link` builds), so that every client carries the caller's
//! trace context, and its bearer token when it has one, to the server.

use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::{bearer::AttachBearer, trace_context::Propagate};

/// A channel whose calls carry the current span's `traceparent` and the
/// client's bearer token.
pub type TracedChannel = InterceptedService<Channel, Outgoing>;

/// What every outgoing call gets. One interceptor rather than two nested
/// ones: tonic's generated clients cannot wrap an already intercepted
/// channel in a second interceptor.
#[derive(Debug, Clone)]
pub struct Outgoing {
    bearer: AttachBearer,
}

impl Interceptor for Outgoing {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let request = Propagate.call(request)?;
        self.bearer.call(request)
    }
}

/// Connects now; calls carry no token.
pub async fn connect(endpoint: &Endpoint) -> Result<TracedChannel, tonic::transport::Error> {
    connect_with_bearer(endpoint, AttachBearer::new(None)).await
}

/// Connects now; calls carry `bearer`'s token.
pub async fn connect_with_bearer(
    endpoint: &Endpoint,
    bearer: AttachBearer,
) -> Result<TracedChannel, tonic::transport::Error> {
    Ok(InterceptedService::new(
        endpoint.connect().await?,
        Outgoing { bearer },
    ))
}

/// Connects on first use (and again after a failure); calls carry no token.
pub fn connect_lazy(endpoint: &Endpoint) -> TracedChannel {
    traced(endpoint.connect_lazy())
}

/// Connects on first use (and again after a failure); calls carry
/// `bearer`'s token.
pub fn connect_lazy_with_bearer(endpoint: &Endpoint, bearer: AttachBearer) -> TracedChannel {
    InterceptedService::new(endpoint.connect_lazy(), Outgoing { bearer })
}

/// Wraps an existing channel; calls carry no token.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(
        channel,
        Outgoing {
            bearer: AttachBearer::new(None),
        },
    )
}
