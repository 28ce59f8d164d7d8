//! `tributary up`: the embedded mesh in one process, every gRPC service on
//! one port. Parser workers and the demo producers still reach the ingest
//! service and the coordinator over gRPC, exactly as they do in the
//! distributed mesh.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tributary::{
    clock::SystemClock,
    grpc,
    proto::{
        coordinator_server::CoordinatorServer, ingest_server::IngestServer,
        query_server::QueryServer,
    },
    queue::{self, Queue},
    store::{self, Store},
};
use tributary_api::{FleetSource, QueryService};
use tributary_coordinator::CoordinatorService;
use tributary_ingest::IngestService;
use tributary_parser::parsers::ParserSpec;

/// Configuration of the embedded mesh.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address for every service; port 0 picks a free port, and the bound
    /// address is printed.
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the queue file (queue.db) and the store (tributary.db).
    #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data")]
    pub data_dir: PathBuf,
    /// A parser to run: a type name (`raw`, `uppercase`, `average`, `probe`,
    /// `sensor`, `sms_sender`) or a JSON spec with a `type`, its options and
    /// optionally a `group`. Repeat the flag, or separate with `;`. The
    /// workloads' own parsers are added unless `--no-workloads`.
    #[arg(
        long = "parser",
        env = "TRIBUTARY_PARSERS",
        value_delimiter = ';',
        default_value = "raw;uppercase"
    )]
    pub parsers: Vec<String>,
    #[command(flatten)]
    pub limits: tributary_ingest::Limits,
    #[command(flatten)]
    pub tuning: tributary_parser::TuningArgs,
    #[command(flatten)]
    pub workloads: tributary_generator::Workloads,
    #[command(flatten)]
    pub fleet: tributary_api::FleetArgs,
}

/// The embedded mesh, built: files open, port bound.
pub struct App {
    listener: TcpListener,
    queue: Arc<dyn Queue>,
    store: Arc<dyn Store>,
    parsers: Vec<ParserSpec>,
    fleet: FleetSource,
    config: Config,
}

impl App {
    /// Checks the whole configuration, then opens the data files and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.limits.validate()?;
        config.tuning.tuning()?;
        config.workloads.validate()?;
        let fleet = config.fleet.source()?;
        let parsers = config
            .parsers
            .iter()
            .map(String::as_str)
            .chain(config.workloads.parsers())
            .map(|spec| ParserSpec::from_spec(spec).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let queue = queue::open("embedded", &config.data_dir)
            .await
            .context("opening the embedded queue")?;
        let store_url = format!(
            "sqlite://{}",
            config.data_dir.join("tributary.db").display()
        );
        let store = store::open(&store_url).await.context("opening the store")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            queue,
            store,
            parsers,
            fleet,
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// Runs until `shutdown`; then parsers finish their batches, streams
    /// drain, and the queue and store close.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        // gRPC and REST answer through the one Query service, so the
        // dashboard's stream reports the same fleet on both.
        let query =
            QueryService::new(self.store.clone(), shutdown.clone()).with_fleet(self.fleet.clone());
        let rest = tributary::rest::Either(
            tributary_api::rest::transcoder(query.clone()),
            tributary_ingest::rest(
                self.queue.clone(),
                self.config.limits.clone(),
                shutdown.clone(),
            ),
        );
        let mut routes = RoutesBuilder::from(tributary_api::http_routes(rest));
        routes.add_service(tributary_ingest::service(
            self.queue.clone(),
            self.config.limits.clone(),
            shutdown.clone(),
        ));
        routes.add_service(QueryServer::new(query));
        routes.add_service(tributary_coordinator::service(
            Arc::new(SystemClock),
            shutdown.clone(),
        ));
        grpc::add_standard_services(
            &mut routes,
            &[
                grpc::service_name::<IngestServer<IngestService>>(),
                grpc::service_name::<QueryServer<QueryService>>(),
                grpc::service_name::<CoordinatorServer<CoordinatorService>>(),
            ],
        )
        .await;
        let server = tokio::spawn(grpc::serve(
            self.listener,
            routes.routes(),
            shutdown.clone(),
        ));

        // Workers stop on their own token, cancelled only after the server
        // has begun draining, so they can ack their last batch.
        let connect = format!("http://{addr}");
        let tuning = self.config.tuning.tuning()?;
        let workers = tributary_parser::spawn_workers(
            &self.parsers,
            &connect,
            self.store.clone(),
            &tuning,
            &shutdown,
        );
        let producers = self.config.workloads.spawn(&connect, &shutdown)?;
        tracing::info!(%addr, data_dir = %self.config.data_dir.display(), parsers = self.parsers.len(), producers = producers.len(), "mesh up");

        for producer in producers {
            let _ = producer.await;
        }
        for worker in workers {
            let _ = worker.await;
        }
        server.await??;
        self.queue.close().await;
        self.store.close().await;
        Ok(())
    }
}
