//! `tributary`: one binary for the embedded mesh, each service on its own,
//! and the producers.
#![forbid(unsafe_code)]

mod fleet;
mod groups;
mod health;
mod monitor;
mod send;
mod tail;
mod up;

use std::io::Write as _;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary::{metrics, shutdown, telemetry};

/// Tributary: a gRPC streaming mesh. Producers publish records to stateless
/// ingest servers, a durable queue holds them, parser workers store them in
/// SQL, and a query API serves them.
///
/// Every flag can also be set through the environment variable shown beside
/// it.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, after_help = OBSERVABILITY)]
struct Cli {
    /// Log format: `text` for people, `json` for log collectors. Levels come
    /// from RUST_LOG (default: info).
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: telemetry::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole mesh in one process: ingest, embedded queue, parsers,
    /// SQLite store, query API, coordinator and the demo workloads, all on
    /// one port.
    Up(up::Config),
    /// Stream records to an ingest server and report what was acknowledged.
    ///
    /// The summary's terms: `sent`, records handed to the stream; `acked`,
    /// records durably queued (accepted + duplicates); `accepted`, queued for
    /// the first time; `duplicates`, keys the queue already held (a batch
    /// republished after a reconnect), stored once all the same; `rejected`,
    /// refused for good (the first reasons are logged); `reconnects`, streams
    /// reopened after a failure, each republishing what was unacknowledged;
    /// `rollovers`, streams closed after --rollover-secs and replaced, so
    /// that Envoy spreads them over new replicas. Records carry the printed
    /// source: `GET /v1/records?source=SOURCE` (Query/ListRecords) finds them.
    Send(send::Config),
    /// Run an ingest server on its own.
    Ingest(tributary_ingest::Config),
    /// Run a parser worker on its own.
    Parser(tributary_parser::Config),
    /// Run the query API on its own.
    Api(tributary_api::Config),
    /// Run the coordinator on its own: it keeps the number generators'
    /// values unique within each 100 ms tick.
    Coordinator(tributary_coordinator::Config),
    /// Run a workload producer.
    #[command(subcommand)]
    Generate(tributary_generator::Generate),
    /// Show SMS progress (sent, failed, average time) every few seconds.
    Monitor(monitor::Config),
    /// Ask a server whether it is serving (exit status 0 if so); for
    /// container health checks.
    Health(health::Config),
    /// The worker fleet (W2): collect samples from crashing HTTP workers.
    #[command(subcommand)]
    Fleet(fleet::Command),
    /// The queue's consumer groups: list them, or delete one.
    #[command(subcommand)]
    Groups(groups::Command),
    /// Follow stored records as they arrive, like `tail -f`, optionally
    /// filtered by parser, source and kind.
    Tail(tail::Config),
}

/// Shown after every command's flags: the standard variables we read.
const OBSERVABILITY: &str = "\
Traces: OTEL_EXPORTER_OTLP_ENDPOINT (for example http://localhost:4317, Jaeger's OTLP/gRPC port)
turns span export on; without it nothing is exported. OTEL_SERVICE_NAME names this process in
traces (default: tributary-<command>). OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG choose the
sampler, for example parentbased_traceidratio and 0.01 (default: every trace).
Metrics: every server serves Prometheus text at GET /metrics on its own port.
Logs: RUST_LOG sets levels (default info); --log-format json writes one JSON object per line.";

/// jemalloc instead of glibc's allocator, for SQLite's allocations too
/// (`unprefixed_malloc_on_supported_platforms`): each record is decoded
/// into small allocations at each hop and freed once its batch is stored,
/// and glibc's malloc and free were the largest cost left in a profile of
/// the embedded mesh under bulk load. docs/benchmarks.md has the figures,
/// mimalloc's among them (faster still, but past the 128 MiB peak RSS
/// `up` is held to).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format, cli.command.service_name())
        .context("setting up telemetry from the OTEL_* variables")?;
    metrics::install();
    let result = run(cli.command).await;
    // Spans of a failed run matter most: flush them either way.
    telemetry.shutdown().await;
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    match command {
        Command::Up(config) => {
            let app = up::App::build(config).await?;
            announce(app.local_addr());
            // Signposts for a person; a script that read the address and
            // closed the pipe must not stop the mesh, so errors are ignored.
            let _ = writeln!(std::io::stdout(), "{}", app.banner());
            app.run(shutdown).await
        }
        Command::Send(config) => send::run(config, shutdown).await,
        Command::Ingest(config) => {
            let app = tributary_ingest::App::build(config).await?;
            announce(app.local_addr());
            app.run(shutdown).await
        }
        Command::Parser(config) => {
            let app = tributary_parser::App::build(config).await?;
            announce(app.local_addr());
            app.run(shutdown).await
        }
        Command::Health(config) => health::run(config).await,
        Command::Api(config) => {
            let app = tributary_api::App::build(config).await?;
            announce(app.local_addr());
            app.run(shutdown).await
        }
        Command::Coordinator(config) => {
            let app = tributary_coordinator::App::build(config).await?;
            announce(app.local_addr());
            app.run(shutdown).await
        }
        Command::Generate(command) => tributary_generator::run(command, shutdown).await,
        Command::Monitor(config) => monitor::run(config, shutdown).await,
        Command::Fleet(command) => fleet::run(command, shutdown).await,
        Command::Groups(command) => groups::run(command).await,
        Command::Tail(config) => tail::run(config, shutdown).await,
    }
}

impl Command {
    /// This process's name in traces, unless `OTEL_SERVICE_NAME` says.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Up(_) => "tributary",
            Command::Send(_) => "tributary-send",
            Command::Ingest(_) => "tributary-ingest",
            Command::Parser(_) => "tributary-parser",
            Command::Api(_) => "tributary-api",
            Command::Coordinator(_) => "tributary-coordinator",
            Command::Generate(_) => "tributary-generator",
            Command::Monitor(_) => "tributary-monitor",
            Command::Health(_) => "tributary-health",
            Command::Fleet(_) => "tributary-fleet",
            Command::Groups(_) => "tributary-groups",
            Command::Tail(_) => "tributary-tail",
        }
    }
}

/// Prints the bound address on stdout, where scripts and tests read it.
fn announce(addr: std::net::SocketAddr) {
    println!("listening on {addr}");
}
