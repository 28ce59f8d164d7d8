//! `tributary health`: asks a server's `grpc.health.v1.Health` whether it
//! serves, for container health checks and scripts. Exits 0 when SERVING,
//! 1 otherwise, printing the status either way.

use std::time::Duration;

use anyhow::{Context, bail};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tributary::{
    call_failure,
    channel::{ClientTlsArgs, Link},
    grpc_client,
};

/// Which server and service to ask about.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The server to ask.
    #[arg(
        long,
        env = "TRIBUTARY_HEALTH_CONNECT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub connect: String,
    /// The service to ask about, such as `tributary.v1.Ingest`; empty asks
    /// about the server as a whole.
    #[arg(long, env = "TRIBUTARY_HEALTH_SERVICE", default_value = "")]
    pub service: String,
    /// Seconds to wait for an answer.
    #[arg(long, env = "TRIBUTARY_HEALTH_TIMEOUT_SECS", default_value_t = 3)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(config.timeout_secs);
    let endpoint = Link::new(config.connect.clone(), config.tls.load()?, None)
        .endpoint()
        .context("--connect")?
        .connect_timeout(timeout)
        .timeout(timeout);
    let hint = |e: &(dyn std::error::Error + 'static)| {
        call_failure::lasting_cause(e).map_or(String::new(), |hint| format!(" ({hint})"))
    };
    let channel = grpc_client::connect(&endpoint).await.map_err(|e| {
        let hint = hint(&e);
        anyhow::Error::new(e).context(format!("connecting to {}{hint}", config.connect))
    })?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: config.service.clone(),
        })
        .await
        .map_err(|status| {
            let hint = hint(&status);
            anyhow::Error::new(status)
                .context(format!("asking {} for its health{hint}", config.connect))
        })?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        bail!("{} is not serving", config.connect);
    }
    Ok(())
}
