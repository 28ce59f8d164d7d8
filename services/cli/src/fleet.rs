//! `tributary fleet`: the worker fleet supervisor (workload W2).

use tokio_util::sync::CancellationToken;
use tributary_fleet::{Supervisor, state::Phase, supervisor::Config};

/// What `tributary fleet` can do.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Spawn a fleet of HTTP worker processes, hold one streaming connection
    /// to each, replace the ones that crash or stall, and stop at exactly
    /// `--samples` samples. Prints a report (or JSON with `--json`).
    Collect(Config),
}

/// Runs a fleet subcommand. A run that ends early is an error, after its
/// report has been printed.
pub async fn run(command: Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Command::Collect(config) = command;
    let json = config.json;
    let supervisor = Supervisor::build(config).await?;
    if let Some(addr) = supervisor.status_addr() {
        crate::announce(addr);
    }
    let report = supervisor.run(shutdown, true).await;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("the report serialises")
        );
    } else {
        print!("{}", report.render());
    }
    match report.fleet.phase {
        Phase::Done => Ok(()),
        Phase::Interrupted => anyhow::bail!(
            "interrupted after {} of {} samples",
            report.fleet.collected,
            report.fleet.target
        ),
        Phase::Running | Phase::Failed => anyhow::bail!(
            "the run failed: {}",
            report.error.as_deref().unwrap_or("unknown error")
        ),
    }
}
