//! The ingest server: producers publish record batches here and parsers pull
//! deliveries from here. It keeps no state of its own: the queue holds it all,
//! so any server can take any publish, pull or ack.
#![forbid(unsafe_code)]

mod config;
pub mod publish;
pub mod pull;
mod service;
pub mod validate;

pub use config::{Config, Limits};
pub use service::IngestService;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tributary::{
    access::AccessGuard,
    grpc::{self, Serving},
    limits::ServerLimits,
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
    access: AccessGuard,
    server: ServerLimits,
}

impl App {
    /// Checks the configuration, opens the queue and binds the listen
    /// address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.limits.validate()?;
        config.server.validate().map_err(anyhow::Error::msg)?;
        let tls = config.tls.load()?;
        let access = config.auth.guard()?;
        let queue = queue::open(&config.queue, &config.data_dir).await?;
        let listener = tributary::grpc::bind(config.listen).await?;
        Ok(Self {
            listener,
            queue,
            limits: config.limits,
            tls,
            access,
            server: config.server,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// Serves until `shutdown` is cancelled, then drains and closes the queue.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // One service answers gRPC and REST, so both draw on one memory
        // budget.
        let ingest = IngestService::new(self.queue.clone(), self.limits.clone(), shutdown.clone());
        let mut routes = RoutesBuilder::from(tributary::rest::router(rest(ingest.clone())));
        routes.add_service(service(ingest));
        let health = grpc::add_standard_services(
            &mut routes,
            &[grpc::service_name::<IngestServer<IngestService>>()],
        )
        .await;
        tokio::spawn(watch_health(self.queue.clone(), health, shutdown.clone()));
        let serving = Serving {
            tls: self.tls,
            access: self.access,
            limits: self.server,
        };
        let served = grpc::serve_with(self.listener, routes.routes(), serving, shutdown).await;
        self.queue.close().await;
        Ok(served?)
    }
}

/// How often health looks at the queue.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the Ingest service's health in step with its queue: NOT_SERVING
/// while the queue cannot serve (its writer stopped, or JetStream is
/// unreachable), so that health checks and load balancers route around it.
pub async fn watch_health(
    queue: Arc<dyn Queue>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let name = grpc::service_name::<IngestServer<IngestService>>();
    let mut serving = true;
    let mut every = tokio::time::interval(HEALTH_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = queue.healthy();
        if now != serving {
            serving = now;
            let status = if now {
                tonic_health::ServingStatus::Serving
            } else {
                tracing::error!(
                    backend = queue.backend(),
                    "the queue cannot serve; health says NOT_SERVING"
                );
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status(name, status).await;
        }
    }
}

/// The Ingest gRPC service, for servers that host several services on one
/// port. Tokens are checked by the server's access layer
/// ([`tributary::grpc::serve_with`]), like every other route.
pub fn service(ingest: IngestService) -> IngestServer<IngestService> {
    let max = ingest.limits.max_message_bytes;
    IngestServer::new(ingest)
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX)
}

/// The REST transcoder of Ingest's annotated methods (`POST /v1/records`),
/// answered by the same handlers as gRPC.
pub fn rest(ingest: IngestService) -> impl Transcode + Clone + Send + 'static {
    tributary::rest::ingest(ingest)
}
