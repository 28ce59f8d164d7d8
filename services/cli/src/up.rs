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
    access::AccessGuard,
    bearer::{BearerToken, RequireTokenArgs},
    channel::{ClientTls, Link},
    clock::SystemClock,
    grpc,
    proto::{
        coordinator_server::CoordinatorServer, ingest_server::IngestServer,
        query_server::QueryServer,
    },
    queue::{self, Queue},
    store::{self, Store},
    tls::{ServerTls, ServerTlsArgs},
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
    /// The embedded queue and its retention: `embedded` (queue.db in
    /// --data-dir) or `embedded:PATH`, optionally with
    /// `?max_age=SECONDS` (default 604800, 7 days), `max_bytes=BYTES`
    /// (default 8589934592, 8 GiB) and `group_ttl=SECONDS` (default 604800).
    /// Older or excess messages, and consumer groups with no subscriber for
    /// `group_ttl`, are dropped, logged and counted.
    #[arg(long, env = "TRIBUTARY_QUEUE", default_value = "embedded")]
    pub queue: String,
    /// A parser to run: a type name (`raw`, `uppercase`, `average`, `probe`,
    /// `sensor`, `sms_sender`, `remote`) or a JSON spec with a `type`, its options and
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
    pub tls: ServerTlsArgs,
    /// With --tls-client-ca: the client certificate this process's own
    /// parsers and producers present to its listener.
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// The CA that signed --tls-cert; needed with --tls-cert, since this
    /// process's own parsers and producers connect to its listener over TLS
    /// as `localhost` (so the certificate must name localhost too).
    #[arg(long, env = "TRIBUTARY_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    #[command(flatten)]
    pub auth: RequireTokenArgs,
    #[command(flatten)]
    pub server: tributary::limits::ServerLimits,
    #[command(flatten)]
    pub fleet: tributary_api::FleetArgs,
}

/// The name this process's own clients check its certificate under.
const OWN_SERVER_NAME: &str = "localhost";

/// The embedded mesh, built: files open, port bound.
pub struct App {
    listener: TcpListener,
    queue: Arc<dyn Queue>,
    store: Arc<dyn Store>,
    parsers: Vec<ParserSpec>,
    tls: Option<ServerTls>,
    access: AccessGuard,
    /// The token this process's own parsers and producers present: an
    /// internal one, so that rotating the token file cannot lock them out.
    token: Option<BearerToken>,
    /// How this process's own parsers and producers reach its listener.
    own_tls: Option<ClientTls>,
    fleet: FleetSource,
    config: Config,
}

impl App {
    /// Checks the whole configuration, then opens the data files and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.limits.validate()?;
        config.server.validate().map_err(anyhow::Error::msg)?;
        config.tuning.tuning()?;
        config.workloads.validate()?;
        let fleet = config.fleet.source()?;
        let parsers = config
            .parsers
            .iter()
            .cloned()
            .chain(config.workloads.parsers())
            .map(|spec| ParserSpec::from_spec(&spec).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tls = config.tls.load()?;
        let (access, token) = config.auth.guard()?.with_internal_token();
        let own_tls = match &tls {
            Some(_) => Some(own_client_tls(&config)?),
            None => None,
        };
        // Bound first, so that a busy port stops us before anything is
        // created on disk.
        let listener = tributary::grpc::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        anyhow::ensure!(
            config.queue.starts_with("embedded"),
            "--queue must be an embedded queue (`embedded[:PATH][?OPTIONS]`); for JetStream run the services separately"
        );
        let queue = queue::open(&config.queue, &config.data_dir)
            .await
            .context("opening the embedded queue")?;
        let store_url = format!(
            "sqlite://{}",
            config.data_dir.join("tributary.db").display()
        );
        let store = store::open(&store_url).await.context("opening the store")?;
        Ok(Self {
            listener,
            queue,
            store,
            parsers,
            tls,
            access,
            token,
            own_tls,
            fleet,
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// What to do next, for the person who started `up`: the dashboard,
    /// REST and grpcurl one-liners, a producer, and where the data lives.
    pub fn banner(&self) -> String {
        let mut addr = self.local_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let (scheme, grpcurl, curl, send) = match &self.config.tls_ca {
            Some(ca) => {
                let ca = ca.display();
                (
                    "https",
                    format!("grpcurl -cacert {ca} localhost:{}", addr.port()),
                    format!("curl -s --cacert {ca}"),
                    format!(" --tls-ca {ca}"),
                )
            }
            None => (
                "http",
                format!("grpcurl -plaintext {addr}"),
                "curl -s".to_owned(),
                String::new(),
            ),
        };
        let host = match self.config.tls_ca {
            Some(_) => format!("localhost:{}", addr.port()),
            None => addr.to_string(),
        };
        let token = if self.token.is_some() {
            " --auth-token-file FILE"
        } else {
            ""
        };
        format!(
            "dashboard  {scheme}://{host}/\n\
             REST       {curl} {scheme}://{host}/v1/stats\n\
             gRPC       {grpcurl} list\n\
             send       tributary send --connect {scheme}://{host}{send}{token} --count 1000\n\
             data       {} (queue.db: the queue; tributary.db: the SQLite store)\n\
             stop       Ctrl-C (or SIGTERM): drains and closes cleanly",
            self.config.data_dir.display()
        )
    }

    /// Runs until `shutdown`; then parsers finish their batches, streams
    /// drain, and the queue and store close.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        // gRPC and REST answer through the one Query service, so the
        // dashboard's stream reports the same fleet on both.
        let query =
            QueryService::new(self.store.clone(), shutdown.clone()).with_fleet(self.fleet.clone());
        // One Ingest service answers gRPC and REST, so both draw on one
        // memory budget.
        let ingest = IngestService::new(
            self.queue.clone(),
            self.config.limits.clone(),
            shutdown.clone(),
        );
        let rest = tributary::rest::Either(
            tributary_api::rest::transcoder(query.clone()),
            tributary_ingest::rest(ingest.clone()),
        );
        let mut routes = RoutesBuilder::from(tributary_api::http_routes(
            rest,
            &self.access,
            self.tls.is_some(),
        ));
        routes.add_service(tributary_ingest::service(ingest));
        routes.add_service(QueryServer::new(query));
        routes.add_service(tributary_coordinator::service(
            Arc::new(SystemClock),
            shutdown.clone(),
        ));
        let health = grpc::add_standard_services(
            &mut routes,
            &[
                grpc::service_name::<IngestServer<IngestService>>(),
                grpc::service_name::<QueryServer<QueryService>>(),
                grpc::service_name::<CoordinatorServer<CoordinatorService>>(),
            ],
        )
        .await;
        tokio::spawn(tributary_ingest::watch_health(
            self.queue.clone(),
            health,
            shutdown.clone(),
        ));
        let serving = grpc::Serving {
            tls: self.tls.clone(),
            access: self.access.clone(),
            limits: self.config.server.clone(),
        };
        let server = tokio::spawn(grpc::serve_with(
            self.listener,
            routes.routes(),
            serving,
            shutdown.clone(),
        ));

        // Workers stop on their own token, cancelled only after the server
        // has begun draining, so they can ack their last batch.
        // An unspecified listen address (0.0.0.0) is reached over loopback.
        let mut own = addr;
        if own.ip().is_unspecified() {
            own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let link = match self.own_tls {
            Some(tls) => Link::new(format!("https://{own}"), tls, self.token.clone()),
            None => Link::new(
                format!("http://{own}"),
                ClientTls::default(),
                self.token.clone(),
            ),
        };
        let tuning = self.config.tuning.tuning()?;
        let workers = tributary_parser::spawn_workers(
            &self.parsers,
            &link,
            self.store.clone(),
            &tuning,
            &shutdown,
        );
        let producers = self.config.workloads.spawn(&link, &shutdown)?;
        tracing::info!(%addr, data_dir = %self.config.data_dir.display(), parsers = self.parsers.len(), producers = producers.len(), "mesh up");

        for producer in producers {
            let _ = producer.await;
        }
        for worker in workers {
            if let Ok(Err(e)) = worker.await {
                tracing::error!(error = %format!("{e:#}"), "a parser worker stopped");
            }
        }
        server.await??;
        self.queue.close().await;
        self.store.close().await;
        Ok(())
    }
}

/// The TLS this process's own clients use towards its listener: they trust
/// --tls-ca and check the certificate
/// under [`OWN_SERVER_NAME`], whatever address the listener is bound to.
fn own_client_tls(config: &Config) -> anyhow::Result<ClientTls> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))
    };
    // Trusting the served certificate itself is no default: rustls refuses
    // a certificate marked as a CA as a server's own, which is how most
    // self-signed certificates are made.
    let Some(ca) = &config.tls_ca else {
        anyhow::bail!(
            "with --tls-cert, give --tls-ca too: the CA that signed the certificate, which this \
             process's own parsers and producers trust when they connect to it"
        );
    };
    let ca = read("--tls-ca", ca)?;
    let identity = match (&config.tls_client_cert, &config.tls_client_key) {
        (Some(cert), Some(key)) => Some((
            read("--tls-client-cert", cert)?,
            read("--tls-client-key", key)?,
        )),
        (None, None) if config.tls.tls_client_ca.is_some() => anyhow::bail!(
            "with --tls-client-ca, give --tls-client-cert and --tls-client-key too: this \
             process's own parsers and producers must present a client certificate"
        ),
        (None, None) => None,
        _ => anyhow::bail!("--tls-client-cert and --tls-client-key go together"),
    };
    Ok(ClientTls::for_own_listener(ca, identity, OWN_SERVER_NAME))
}
