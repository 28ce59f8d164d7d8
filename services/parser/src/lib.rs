//! The parser worker service: it pulls deliveries from the ingest tier over
//! gRPC (never from the queue itself), runs them through one parser and
//! stores the results.
#![forbid(unsafe_code)]

pub mod parsers;
mod worker;

pub use worker::{Tuning, Worker};

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tributary::{
    bearer::SendTokenArgs,
    channel::{ClientTlsArgs, Link},
    grpc, store,
    tls::{ServerTls, ServerTlsArgs},
};

use crate::parsers::ParserSpec;

/// Configuration of a stand-alone parser worker.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to serve health and reflection on. The default port 0 picks
    /// a free port (printed at start), so several parsers run side by side;
    /// containers set a fixed one for their health checks.
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Ingest server (or Envoy) to pull from; the default is where
    /// `tributary up` listens.
    #[arg(
        long,
        env = "TRIBUTARY_CONNECT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub connect: String,
    /// Where results go: `sqlite://PATH`, `postgres://USER@HOST:PORT/DB`,
    /// or PostgreSQL over its Unix socket as
    /// `postgres:///DB?host=/var/run/postgresql&user=USER` (the socket's
    /// directory; faster than TCP on one host). PostgreSQL is migrated on
    /// start.
    #[arg(
        long,
        env = "TRIBUTARY_STORE",
        default_value = "sqlite://tributary-data/tributary.db"
    )]
    pub store: String,
    /// The parser: a type name (`raw`, `uppercase`, `average`, `probe`,
    /// `sensor`, `sms_sender`, `remote`) or a JSON object with a `type`, that parser's
    /// options and optionally its consumer `group`, for example
    /// `{"type":"sms_sender","mean_ms":50,"failure_rate":0.1,"concurrency":32}`
    /// or, for a plug-in in any language,
    /// `{"type":"remote","endpoint":"http://127.0.0.1:50070"}`.
    #[arg(long, env = "TRIBUTARY_PARSER", default_value = "raw")]
    pub parser: String,
    /// Consumer-group name; replicas with the same name share the work.
    /// Overrides the spec's `group`; defaults to the parser's type name.
    #[arg(long, env = "TRIBUTARY_PARSER_NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// TLS of the health listener.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// TLS towards --connect.
    #[command(flatten)]
    pub connect_tls: ClientTlsArgs,
    /// The token Ingest requires of Pull, as of Publish.
    #[command(flatten)]
    pub token: SendTokenArgs,
}

/// Pull and batching knobs, as flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Records a worker may hold unacknowledged (its pull window): the
    /// parser's side of pulling, not --publish-window (a producer stream's
    /// window on the server).
    #[arg(long, env = "TRIBUTARY_PULL_WINDOW", default_value_t = 20_000)]
    pub pull_window: u32,
    /// Records per store transaction, at most.
    #[arg(long, env = "TRIBUTARY_BATCH_RECORDS", default_value_t = 5_000)]
    pub batch_records: usize,
    /// Milliseconds a batch waits to fill before it is written anyway.
    #[arg(long, env = "TRIBUTARY_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// Milliseconds a delivery may stay unacknowledged before it is
    /// redelivered, as asked of the ingest server; this is the one to set
    /// for a parser (--ack-deadline-ms is the server's default for
    /// subscribers that ask for none).
    #[arg(long, env = "TRIBUTARY_PULL_ACK_DEADLINE_MS", default_value_t = 30_000)]
    pub pull_ack_deadline_ms: u64,
}

impl TuningArgs {
    /// Checks the knobs and turns them into [`Tuning`].
    pub fn tuning(&self) -> anyhow::Result<Tuning> {
        anyhow::ensure!(self.pull_window > 0, "--pull-window must be at least 1");
        anyhow::ensure!(self.batch_records > 0, "--batch-records must be at least 1");
        anyhow::ensure!(
            self.pull_ack_deadline_ms >= 100,
            "--pull-ack-deadline-ms must be at least 100"
        );
        Ok(Tuning {
            max_outstanding: self.pull_window,
            batch_records: self.batch_records,
            linger: Duration::from_millis(self.linger_ms),
            ack_deadline: Duration::from_millis(self.pull_ack_deadline_ms),
        })
    }
}

/// A built parser worker: configuration checked, store open, port bound.
pub struct App {
    listener: TcpListener,
    tls: Option<ServerTls>,
    worker: Worker,
}

impl App {
    /// Validates the configuration, opens the store and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let parser = ParserSpec::from_spec(&config.parser).map_err(anyhow::Error::msg)?;
        let tuning = config.tuning.tuning()?;
        let tls = config.tls.load()?;
        let link = Link::new(
            config.connect,
            config.connect_tls.load()?,
            config.token.load()?,
        );
        link.endpoint().context("--connect")?;
        let store = store::open(&config.store)
            .await
            .context("opening the store")?;
        let listener = tributary::grpc::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let worker = Worker {
            link,
            group: config.name.unwrap_or(parser.group),
            parser: parser.config.build(),
            store,
            tuning,
        };
        Ok(Self {
            listener,
            tls,
            worker,
        })
    }

    /// The address of the health endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        grpc::bound_addr(&self.listener)
    }

    /// Pulls and stores until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut routes = RoutesBuilder::default();
        grpc::add_standard_services(&mut routes, &[]).await;
        let store = self.worker.store.clone();
        let health = tokio::spawn(grpc::serve(
            self.listener,
            routes.routes(),
            self.tls,
            shutdown.clone(),
        ));
        let pulled = self.worker.run(shutdown.clone()).await;
        // A worker that cannot go on takes its health listener down with it.
        shutdown.cancel();
        store.close().await;
        health.await??;
        pulled
    }
}

/// Starts the workers for `specs` against `link`, sharing one store.
pub fn spawn_workers(
    specs: &[ParserSpec],
    link: &Link,
    store: Arc<dyn store::Store>,
    tuning: &Tuning,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    specs
        .iter()
        .map(|spec| {
            let worker = Worker {
                link: link.clone(),
                group: spec.group.clone(),
                parser: spec.config.build(),
                store: store.clone(),
                tuning: tuning.clone(),
            };
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect()
}
