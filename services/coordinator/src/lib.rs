//! The coordinator: hands each number generator, per 100 ms tick, a value
//! no other generator gets for that tick. [`claims`] holds the scheme and
//! its reasoning; [`CoordinatorService`] serves it over `Coordinator.Claim`.
#![forbid(unsafe_code)]

pub mod claims;
mod service;

pub use service::CoordinatorService;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tributary::{
    clock::{SystemClock, WallClock},
    grpc,
    proto::coordinator_server::CoordinatorServer,
};

/// Configuration of a stand-alone coordinator.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "127.0.0.1:50054")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls: tributary::tls::ServerTlsArgs,
    #[command(flatten)]
    pub auth: tributary::bearer::RequireTokenArgs,
    #[command(flatten)]
    pub server: tributary::limits::ServerLimits,
}

/// A built coordinator: port bound.
pub struct App {
    listener: TcpListener,
    serving: grpc::Serving,
}

impl App {
    /// Checks the TLS files, then binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.server.validate().map_err(anyhow::Error::msg)?;
        let serving = grpc::Serving {
            tls: config.tls.load()?,
            access: config.auth.guard()?,
            limits: config.server,
        };
        let listener = tributary::grpc::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self { listener, serving })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut routes = RoutesBuilder::default();
        routes.add_service(service(Arc::new(SystemClock), shutdown.clone()));
        grpc::add_standard_services(
            &mut routes,
            &[grpc::service_name::<CoordinatorServer<CoordinatorService>>()],
        )
        .await;
        Ok(grpc::serve_with(self.listener, routes.routes(), self.serving, shutdown).await?)
    }
}

/// The Coordinator gRPC service: a new incarnation, started now.
pub fn service(
    clock: Arc<dyn WallClock>,
    shutdown: CancellationToken,
) -> CoordinatorServer<CoordinatorService> {
    CoordinatorServer::new(CoordinatorService::new(clock, shutdown))
        .max_decoding_message_size(service::MAX_REQUEST_BYTES)
}
