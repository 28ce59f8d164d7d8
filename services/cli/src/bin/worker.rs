//! `tributary-worker`: the fleet's HTTP worker, started as
//! `tributary-worker -workerId 1 -port 3001`. See `tributary-worker -h`.
#![forbid(unsafe_code)]

use tributary::{shutdown, telemetry};
use tributary_fleet::worker::{Config, Worker};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_args(std::env::args());
    telemetry::init(telemetry::LogFormat::Text);
    let worker = Worker::build(config).await?;
    tracing::debug!(addr = %worker.local_addr(), "worker listening");
    worker.run(shutdown::on_signal()).await
}
