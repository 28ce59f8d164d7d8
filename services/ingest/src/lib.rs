//! The ingest server: producers publish record batches here and parsers pull
//! deliveries from here. It keeps no state of its own: the queue holds it all,
//! so any server can take any publish, pull or ack.
#![forbid(unsafe_code)]

mod config;
mod publish;
mod pull;
mod service;
mod validate;

pub use config::{Config, Limits};
pub use service::IngestService;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::{InterceptorLayer, RoutesBuilder, interceptor::InterceptedService};
use tower::Layer as _;
use tributary::{
    bearer::{BearerToken, RequireBearer},
    grpc,
    proto::ingest_server::IngestServer,
    queue::{self, Queue},
    rest::Transcode,
    tls::ServerTls,
};

/// A built ingest server: its queue is open and its port is bound.
pub struct App {
    listener: TcpListener,
    queue: Arc<dyn Queue>,
    limits: Limits,
    tls: Option<ServerTls>,
    token: Option<BearerToken>,
}

impl App {
    /// Checks the configuration, opens the queue and binds the listen
    /// address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.limits.validate()?;
        let tls = config.tls.load()?;
        let token = config.auth.load()?;
        let queue = queue::open(&config.queue, &config.data_dir).await?;
        let listener = tributary::grpc::bind(config.listen).await?;
        Ok(Self {
            listener,
            queue,
            limits: config.limits,
            tls,
            token,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// Serves until `shutdown` is cancelled, then drains and closes the queue.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let rest = rest(
            self.queue.clone(),
            self.limits.clone(),
            self.token.clone(),
            shutdown.clone(),
        );
        let mut routes = RoutesBuilder::from(tributary::rest::router(rest));
        routes.add_service(service(
            self.queue.clone(),
            self.limits.clone(),
            self.token.clone(),
            shutdown.clone(),
        ));
        grpc::add_standard_services(
            &mut routes,
            &[grpc::service_name::<IngestServer<IngestService>>()],
        )
        .await;
        let served = grpc::serve(self.listener, routes.routes(), self.tls, shutdown).await;
        self.queue.close().await;
        Ok(served?)
    }
}

/// The Ingest gRPC service over `queue`, for servers that host several
/// services on one port. With a `token`, every Ingest call must carry it.
pub fn service(
    queue: Arc<dyn Queue>,
    limits: Limits,
    token: Option<BearerToken>,
    shutdown: CancellationToken,
) -> InterceptedService<IngestServer<IngestService>, RequireBearer> {
    let max = limits.max_message_bytes;
    let server = IngestServer::new(IngestService::new(queue, limits, shutdown))
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    // The token check wraps this service alone, not the listener: health
    // and reflection beside it stay open, and in `tributary up` the Query
    // and Coordinator services are not producer-facing.
    InterceptorLayer::new(RequireBearer::new(token)).layer(server)
}

/// The REST transcoder of Ingest's annotated methods (`POST /v1/records`)
/// over `queue`, answered by the same handlers as gRPC and guarded by the
/// same `token`.
pub fn rest(
    queue: Arc<dyn Queue>,
    limits: Limits,
    token: Option<BearerToken>,
    shutdown: CancellationToken,
) -> impl Transcode + Clone + Send + 'static {
    tributary::rest::ingest(
        IngestService::new(queue, limits, shutdown),
        RequireBearer::new(token),
    )
}
