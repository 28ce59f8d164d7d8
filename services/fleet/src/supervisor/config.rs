//! `tributary fleet collect`'s configuration, and the checks it must pass
//! before any worker starts.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};

/// `tributary fleet collect`: what to run and when to stop.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Samples to collect. The run stops at exactly this many.
    #[arg(long, env = "TRIBUTARY_FLEET_SAMPLES", default_value_t = 150, value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: u64,
    /// The most worker processes alive at once.
    #[arg(long, env = "TRIBUTARY_FLEET_MAX_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_workers: u32,
    /// The worker executable. It is started as `BIN -workerId ID -port PORT
    /// [WORKER_ARGS...]` and must speak the fleet protocol. Default:
    /// `tributary-worker` next to this binary.
    #[arg(long, env = "TRIBUTARY_FLEET_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// A stream that sends nothing for this long is a stall: its worker is
    /// replaced. Covers a worker that answers and then sends nothing. Keep
    /// it above the workers' interval between numbers (Go duration).
    #[arg(long, env = "TRIBUTARY_FLEET_STALL_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
    /// How long a new worker may take to accept its first connection.
    #[arg(long, env = "TRIBUTARY_FLEET_START_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    /// Back-off before a failed worker's replacement starts; it doubles on
    /// each failure in a row of the same worker, up to `--backoff-max`.
    #[arg(long, env = "TRIBUTARY_FLEET_BACKOFF", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub backoff: Duration,
    /// The longest back-off.
    #[arg(long, env = "TRIBUTARY_FLEET_BACKOFF_MAX", default_value = "2s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// The most worker restarts in one run; past it the run fails rather
    /// than restart a hopeless fleet forever.
    #[arg(long, env = "TRIBUTARY_FLEET_MAX_RESTARTS", default_value_t = 1000)]
    pub max_restarts: u64,
    /// How long a worker has to exit after SIGTERM before it gets SIGKILL.
    #[arg(long, env = "TRIBUTARY_FLEET_KILL_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub kill_grace: Duration,
    /// Serve the fleet's status (gRPC `tributary.v1.Fleet/GetFleetStatus`,
    /// with health and reflection) on this address while the run lasts.
    /// Port 0 picks a free port; the bound address is printed.
    #[arg(long, env = "TRIBUTARY_FLEET_STATUS_LISTEN")]
    pub status_listen: Option<SocketAddr>,
    /// Also publish every sample into the mesh at this ingest address, as a
    /// RandomNumber record with a `worker_id` attribute.
    #[arg(long, env = "TRIBUTARY_FLEET_PUBLISH")]
    pub publish: Option<String>,
    /// TLS of the status listener.
    #[command(flatten)]
    pub status_tls: tributary::tls::ServerTlsArgs,
    /// File holding the bearer token that callers of the status listener
    /// (the dashboard's `--fleet-status-token-file`, scripts) must send;
    /// health and reflection stay open. Re-read every second and on SIGHUP.
    /// Without it the status is open to anyone who can connect.
    #[arg(long, env = "TRIBUTARY_FLEET_STATUS_TOKEN_FILE")]
    pub status_token_file: Option<std::path::PathBuf>,
    /// File holding a read-only token the status listener accepts too.
    #[arg(
        long,
        env = "TRIBUTARY_FLEET_STATUS_READ_TOKEN_FILE",
        requires = "status_token_file"
    )]
    pub status_read_token_file: Option<std::path::PathBuf>,
    /// TLS towards the --publish address.
    #[command(flatten)]
    pub publish_tls: tributary::channel::ClientTlsArgs,
    /// Bearer token for the --publish address.
    #[command(flatten)]
    pub publish_token: tributary::bearer::SendTokenArgs,
    /// Print the final report as one JSON object.
    #[arg(long, env = "TRIBUTARY_FLEET_JSON")]
    pub json: bool,
    /// Arguments passed to every worker after its id and port, given after
    /// `--`; for example `-- -crashProb 0.1 -stallProb 0.02`.
    #[arg(last = true, value_name = "WORKER_ARGS")]
    pub worker_args: Vec<String>,
}
impl Config {
    /// The worker executable to start: `--worker-bin`, or `tributary-worker`
    /// beside the running executable. Fails when a path is given that does
    /// not exist, so a missing build fails before the run, not as a start
    /// failure of every worker.
    pub(super) fn worker_bin(&self) -> anyhow::Result<PathBuf> {
        let worker_bin = match &self.worker_bin {
            Some(bin) => bin.clone(),
            None => default_worker_bin()?,
        };
        // A bare name is looked up in PATH when spawned; a path must exist.
        if worker_bin.components().count() > 1 && !worker_bin.is_file() {
            bail!(
                "the worker binary {} does not exist: build it (`cargo build --release` builds \
                 tributary-worker beside tributary) or pass --worker-bin",
                worker_bin.display()
            );
        }
        Ok(worker_bin)
    }

    /// Checks the timings: a back-off that cannot grow, or a zero timeout,
    /// would make every worker look broken.
    pub(super) fn check_timings(&self) -> anyhow::Result<()> {
        if self.backoff_max < self.backoff {
            bail!("--backoff-max must be at least --backoff");
        }
        if self.stall_timeout.is_zero() || self.start_timeout.is_zero() {
            bail!("--stall-timeout and --start-timeout must be above zero");
        }
        Ok(())
    }

    /// How the status listener serves: its TLS and its tokens.
    pub(super) fn status_serving(&self) -> anyhow::Result<tributary::grpc::Serving> {
        Ok(tributary::grpc::Serving {
            tls: self.status_tls.load()?,
            access: tributary::access::AccessGuard::from_sources(
                (self.status_token_file.as_ref(), None),
                (self.status_read_token_file.as_ref(), None),
            )?,
            limits: tributary::limits::ServerLimits::default(),
        })
    }

    /// The link to the `--publish` address, with its TLS and token. The
    /// address is checked now, so that a bad one fails before any worker
    /// starts.
    pub(super) fn publish_link(&self) -> anyhow::Result<Option<tributary::channel::Link>> {
        let Some(url) = &self.publish else {
            return Ok(None);
        };
        let link = tributary::channel::Link::new(
            url.clone(),
            self.publish_tls.load()?,
            self.publish_token.load()?,
        );
        link.endpoint()
            .with_context(|| format!("bad --publish address {url:?}"))?;
        Ok(Some(link))
    }
}

/// `tributary-worker` beside the running executable.
fn default_worker_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no directory")?;
    Ok(dir.join("tributary-worker"))
}
