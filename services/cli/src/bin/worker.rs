//! `tributary-worker`: the fleet's HTTP worker, started as
//! `tributary-worker -workerId 1 -port 3001`. See `tributary-worker -h`.
#![forbid(unsafe_code)]

use tracing_subscriber::EnvFilter;
use tributary::shutdown;
use tributary_fleet::worker::{self, Config, Worker};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_args(std::env::args());
    // Not `tributary::telemetry::init`: a worker's stderr is usually a pipe
    // to its supervisor, which may be gone (killed with SIGKILL). By default
    // tracing-subscriber reports a failed write with `eprintln!`, which then
    // panics; a panic in the signal task would leave the worker deaf to
    // SIGTERM, and in the parent watch, unable to notice its parent left.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    let exit_with_parent = config.exit_with_parent;
    let worker = Worker::build(config).await?;
    tracing::debug!(addr = %worker.local_addr(), "worker listening");
    let shutdown = shutdown::on_signal();
    if exit_with_parent {
        worker::exit_with_parent(shutdown.clone());
    }
    worker.run(shutdown).await
}
