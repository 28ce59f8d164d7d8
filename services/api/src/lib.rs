//! The query API: serves what the parsers stored over gRPC and, on the same
//! port, over REST, with the live dashboard page.
#![forbid(unsafe_code)]

mod convert;
mod dashboard;
mod fleet;
mod page;
mod paging;
pub mod rest;
mod service;

pub use fleet::{BadFleetUrl, FleetArgs, FleetSource};
pub use page::ASSETS_PREFIX;
pub use service::QueryService;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tributary::{
    access::AccessGuard,
    grpc,
    proto::query_server::QueryServer,
    rest::Transcode,
    store::{self, Store},
};

/// Configuration of a stand-alone query API.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// The store to read: `sqlite://PATH`, `postgres://USER@HOST:PORT/DB`,
    /// or PostgreSQL over its Unix socket as
    /// `postgres:///DB?host=/var/run/postgresql&user=USER` (the socket's
    /// directory).
    #[arg(
        long,
        env = "TRIBUTARY_STORE",
        default_value = "sqlite://tributary-data/tributary.db"
    )]
    pub store: String,
    /// Other mesh services to list in reflection, comma-separated (for
    /// example `tributary.v1.Ingest`), when a gateway such as Envoy sends
    /// reflection here and routes those services' calls to other servers.
    #[arg(long, env = "TRIBUTARY_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<String>,
    #[command(flatten)]
    pub tls: tributary::tls::ServerTlsArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub auth: tributary::bearer::RequireTokenArgs,
    #[command(flatten)]
    pub server: tributary::limits::ServerLimits,
}

/// A built query API: store open, port bound.
pub struct App {
    listener: TcpListener,
    store: Arc<dyn Store>,
    fleet: FleetSource,
    advertise: Vec<String>,
    tls: Option<tributary::tls::ServerTls>,
    access: AccessGuard,
    server: tributary::limits::ServerLimits,
}

impl App {
    /// Opens the store and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let defined = grpc::defined_services();
        for name in &config.advertise {
            anyhow::ensure!(
                defined.contains(name),
                "--advertise {name:?} is not a service of this mesh (known: {})",
                defined.join(", ")
            );
        }
        config.server.validate().map_err(anyhow::Error::msg)?;
        let tls = config.tls.load()?;
        let access = config.auth.guard()?;
        let fleet = config.fleet.source()?;
        let store = store::open(&config.store)
            .await
            .context("opening the store")?;
        let listener = tributary::grpc::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            store,
            fleet,
            advertise: config.advertise,
            tls,
            access,
            server: config.server,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // gRPC and REST answer through the one service, so the dashboard's
        // stream reports the same fleet on both.
        let query = QueryService::new(self.store.clone(), shutdown.clone()).with_fleet(self.fleet);
        let mut routes = RoutesBuilder::from(http_routes(
            rest::transcoder(query.clone()),
            &self.access,
            self.tls.is_some(),
        ));
        routes.add_service(QueryServer::new(query));
        grpc::add_standard_services_advertising(
            &mut routes,
            &[grpc::service_name::<QueryServer<QueryService>>()],
            &self.advertise,
        )
        .await;
        let serving = grpc::Serving {
            tls: self.tls,
            access: self.access,
            limits: self.server,
        };
        let served = grpc::serve_with(self.listener, routes.routes(), serving, shutdown).await;
        self.store.close().await;
        Ok(served?)
    }
}

/// The Query gRPC service over `store`.
pub fn service(store: Arc<dyn Store>, shutdown: CancellationToken) -> QueryServer<QueryService> {
    QueryServer::new(QueryService::new(store, shutdown))
}

/// Everything the api serves over plain HTTP beside gRPC, on the same port:
/// the REST face of `rest` (Query's routes; `tributary up` adds Ingest's),
/// the OpenAPI document, and the dashboard page at `/` with its assets under
/// [`ASSETS_PREFIX`], and the sign-in page that lets a browser with the
/// token (`access`) read the dashboard's stream (`secure`: on a TLS
/// listener). Both the stand-alone api and `tributary up` serve exactly
/// this, so a page or route added here appears in both.
pub fn http_routes<T>(rest: T, access: &AccessGuard, secure: bool) -> axum::Router
where
    T: Transcode + Clone + Send + 'static,
{
    tributary::rest::router(rest)
        .merge(page::routes())
        .merge(tributary::access::login_routes(access.clone(), secure))
}
