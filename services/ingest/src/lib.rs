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
use tonic::service::RoutesBuilder;
use tributary::{
    grpc,
    proto::ingest_server::IngestServer,
    queue::{self, Queue},
    rest::Transcode,
};

/// A built ingest server: its queue is open and its port is bound.
pub struct App {
    listener: TcpListener,
    queue: Arc<dyn Queue>,
    limits: Limits,
}

impl App {
    /// Opens the queue and binds the listen address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.limits.validate()?;
        let queue = queue::open(&config.queue, &config.data_dir).await?;
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            queue,
            limits: config.limits,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// Serves until `shutdown` is cancelled, then drains and closes the queue.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let rest = rest(self.queue.clone(), self.limits.clone(), shutdown.clone());
        let mut routes = RoutesBuilder::from(tributary::rest::router(rest));
        routes.add_service(service(
            self.queue.clone(),
            self.limits.clone(),
            shutdown.clone(),
        ));
        grpc::add_standard_services(
            &mut routes,
            &[grpc::service_name::<IngestServer<IngestService>>()],
        )
        .await;
        let served = grpc::serve(self.listener, routes.routes(), shutdown).await;
        self.queue.close().await;
        Ok(served?)
    }
}

/// The Ingest gRPC service over `queue`, for servers that host several
/// services on one port.
pub fn service(
    queue: Arc<dyn Queue>,
    limits: Limits,
    shutdown: CancellationToken,
) -> IngestServer<IngestService> {
    let max = limits.max_message_bytes;
    IngestServer::new(IngestService::new(queue, limits, shutdown))
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX)
}

/// The REST transcoder of Ingest's annotated methods (`POST /v1/records`)
/// over `queue`, answered by the same handlers as gRPC.
pub fn rest(
    queue: Arc<dyn Queue>,
    limits: Limits,
    shutdown: CancellationToken,
) -> impl Transcode + Clone + Send + 'static {
    tributary::rest::ingest(IngestService::new(queue, limits, shutdown))
}
