//! What every Tributary gRPC server has: health, reflection (v1 and v1alpha,
//! since the grpcurl that package managers ship speaks only v1alpha), the
//! status mapping for oversized messages, and graceful serving.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    codegen::http,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::Server,
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    access::{AccessGuard, AccessLayer},
    limits::ServerLimits,
    proto::FILE_DESCRIPTOR_SET,
    tls::ServerTls,
};

/// How long a server waits for open streams to finish after shutdown starts.
pub const GRACE: Duration = Duration::from_secs(10);

/// Adds health and reflection to `routes` and returns the health reporter,
/// with every name in `serving` (and the server as a whole) marked SERVING.
pub async fn add_standard_services(routes: &mut RoutesBuilder, serving: &[&str]) -> HealthReporter {
    add_standard_services_advertising(routes, serving, &[]).await
}

/// Like [`add_standard_services`], and reflection also lists `advertised`:
/// services a gateway in front of this server routes to other servers.
pub async fn add_standard_services_advertising(
    routes: &mut RoutesBuilder,
    serving: &[&str],
    advertised: &[String],
) -> HealthReporter {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in serving {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    // Reflection lists only what this server serves, not every service the
    // descriptor set happens to define.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in serving {
            builder = builder.with_service_name(*name);
        }
        for name in advertised {
            builder = builder.with_service_name(name.clone());
        }
        builder
    };
    let v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor set was produced by protox from our own protos");
    let v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor set was produced by protox from our own protos");
    routes
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha);
    reporter
}

/// The gRPC services our descriptor set defines (`tributary.v1.Ingest`, …).
pub fn defined_services() -> Vec<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set was produced by protox from our own protos");
    set.file
        .iter()
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service
                .iter()
                .map(move |service| format!("{package}.{}", service.name()))
        })
        .collect()
}

/// Binds a server's `--listen` address. A port another process holds gets
/// a hint naming the flag that moves it, since that is the usual fix.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{addr} is already in use, probably by another Tributary process: choose \
                     another address with --listen (TRIBUTARY_LISTEN), or port 0 for a free one"
                ),
            )
        } else {
            e
        }
    })
}

/// The address a listener is bound to (the real port when 0 was asked for).
pub fn bound_addr(listener: &TcpListener) -> std::net::SocketAddr {
    listener
        .local_addr()
        .expect("a bound TCP listener has a local address")
}

/// The fully qualified name of a generated service, for health checks.
pub fn service_name<S: NamedService>() -> &'static str {
    S::NAME
}

/// Serves `routes` on `listener` (over TLS when `tls` is given) until
/// `shutdown` is cancelled, then lets open streams finish for up to
/// [`GRACE`]. Every route is open, and the default [`ServerLimits`] apply.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let options = Serving {
        tls,
        ..Serving::default()
    };
    serve_with(listener, routes, options, shutdown).await
}

/// How a server serves its listener: TLS, who may call what, and the
/// server-wide limits.
#[derive(Debug, Clone, Default)]
pub struct Serving {
    pub tls: Option<ServerTls>,
    pub access: AccessGuard,
    pub limits: ServerLimits,
}

/// [`serve`], with the tokens of `options.access` required on every data
/// route (re-read as their files change) and `options.limits` applied.
pub async fn serve_with(
    listener: TcpListener,
    routes: Routes,
    options: Serving,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let Serving {
        tls,
        access,
        limits,
    } = options;
    access.watch(shutdown.clone());
    let router = Server::builder()
        // Outermost, so the open-call gauge counts every call, whatever a
        // layer inside does with it.
        .layer(crate::metrics::OpenStreamsLayer)
        // Refusals first: a caller without a token costs no call slot.
        .layer(AccessLayer::new(access))
        .layer(limits.layer())
        // Before the status rewrite, so the call's span covers the handler
        // and everything it spawns in the span.
        .layer(crate::trace_context::ServerSpanLayer)
        // tonic reports a message over the decoding limit as OUT_OF_RANGE;
        // gRPC's convention (and our contract) is RESOURCE_EXHAUSTED. The
        // rewrite is a layer so that every service gets it, unary included.
        .layer(tower::util::MapResponseLayer::new(too_large_is_exhausted))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .max_concurrent_streams(limits.max_streams_per_connection)
        // HTTP/1.1 for the REST face, browsers and Prometheus scrapes
        // (`GET /metrics`), on the same port as gRPC.
        .accept_http1(true)
        .add_routes(with_metrics(routes));
    let stop = shutdown.clone().cancelled_owned();
    // TLS wraps the whole listener, so every route on it is covered.
    let server = async move {
        match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(incoming(listener), stop)
                    .await
            }
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(tls.incoming(listener), stop)
                    .await
            }
        }
    };
    drain(server, &shutdown).await
}

/// `routes` plus `GET /metrics` on the same port.
fn with_metrics(routes: Routes) -> Routes {
    Routes::from(routes.into_axum_router().merge(crate::metrics::router()))
}

/// Runs `server` to completion, but gives up [`GRACE`] after `shutdown`.
pub async fn drain<E>(
    server: impl Future<Output = Result<(), E>>,
    shutdown: &CancellationToken,
) -> Result<(), E> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(GRACE, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                grace_secs = GRACE.as_secs(),
                "streams still open after the grace period; closing them"
            );
            Ok(())
        }
    }
}

/// Accepted connections with Nagle's algorithm off: small acks and
/// deliveries must not wait for delayed ACKs (a 40 ms stall per round trip).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

fn too_large_is_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    // grpc-message is percent-encoded on the wire.
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            String::from_utf8_lossy(m.as_bytes())
                .replace("%20", " ")
                .contains("too large")
        });
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// Maps an error met while reading a request stream to the status to answer
/// with: oversized messages become RESOURCE_EXHAUSTED, as on unary calls.
pub fn inbound_status(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        tonic::Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}
