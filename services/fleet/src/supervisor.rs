//! The supervisor: spawns up to `--max-workers` worker processes, holds one
//! streaming connection to each, replaces the ones that fail, and stops at
//! exactly `--samples` samples.
//!
//! Each worker id is a slot with its own task. The slots send what they
//! parse to one collector over a channel; only the collector counts, so the
//! run stops at exactly the target however many slots race for the last
//! sample.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::{net::TcpStream, sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tributary::backoff::Backoff;

use crate::{
    connection::{self, Sink, StreamEnd, StreamError},
    line::{Item, Junk},
    process::{Process, free_port},
    publish::{PublishSummary, Publisher},
    state::{Fleet, Phase, SlotState, Snapshot},
    status,
};

/// Consecutive start failures of a slot that has never streamed after which
/// the run fails: the worker binary is broken, and retrying forever would
/// hide it.
const START_FAILURES_BEFORE_GIVING_UP: u32 = 5;

/// Consecutive broken connections to a live process after which it is
/// replaced rather than reconnected to.
const BROKEN_BEFORE_REPLACING: u32 = 3;

/// How long a broken connection waits for the process to be seen exiting,
/// so that a crash is counted as a crash and not as a broken connection.
const EXIT_SETTLE: Duration = Duration::from_millis(300);

/// How often a starting worker is probed for a listening port.
const CONNECT_POLL: Duration = Duration::from_millis(10);

/// How long to wait before asking a busy worker again.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// How many junk lines per worker are logged; the rest are only counted.
const JUNK_LOGGED: u64 = 5;

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
    /// The pause before a worker's replacement starts, or before a broken
    /// connection to a live worker is made again: `--backoff` doubling up to
    /// `--backoff-max`. Exact, not jittered: the workers are our own
    /// children, not a crowd of clients to spread out, and the flags promise
    /// these values.
    fn restart_backoff(&self) -> Backoff {
        Backoff::exact(self.backoff, self.backoff_max)
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seconds from the start to the last sample.
    pub seconds: f64,
    /// Seconds from the start until every worker was stopped.
    pub total_seconds: f64,
    /// Why the run ended early, if it did.
    pub error: Option<String>,
    #[serde(flatten)]
    pub fleet: Snapshot,
    /// The supervisor's own resource use.
    pub supervisor: Usage,
    /// What reached the mesh, with `--publish`.
    pub published: Option<PublishSummary>,
}

/// CPU and memory the supervisor process used.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub peak_rss_kib: i64,
}

impl Usage {
    /// This process's use so far (getrusage; the peak RSS is the high-water
    /// mark, in KiB on Linux).
    pub fn now() -> Self {
        use nix::sys::resource::{UsageWho, getrusage};
        let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage(RUSAGE_SELF) cannot fail");
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Self {
            cpu_user_seconds: secs(usage.user_time()),
            cpu_system_seconds: secs(usage.system_time()),
            peak_rss_kib: usage.max_rss(),
        }
    }
}

impl Report {
    /// The report for people.
    pub fn render(&self) -> String {
        let f = &self.fleet;
        let mut out = format!(
            "{} of {} samples in {:.2} s ({:.2} s with shutdown); {} crashes, {} restarts, {} stalls, {} broken connections, {} start failures, {} junk lines; peak {} of {} workers\n",
            f.collected,
            f.target,
            self.seconds,
            self.total_seconds,
            f.crashes,
            f.restarts,
            f.stalls,
            f.broken_connections,
            f.start_failures,
            f.junk_lines,
            f.peak_live_workers,
            f.max_workers,
        );
        for w in &f.workers {
            out.push_str(&format!(
                "  worker {:>3}: {:>5} samples, {} crashes, {} restarts, {} stalls\n",
                w.worker_id, w.samples, w.crashes, w.restarts, w.stalls
            ));
        }
        out.push_str(&format!(
            "supervisor: {:.2} s user + {:.2} s system CPU, peak RSS {} KiB\n",
            self.supervisor.cpu_user_seconds,
            self.supervisor.cpu_system_seconds,
            self.supervisor.peak_rss_kib
        ));
        if let Some(p) = &self.published {
            out.push_str(&format!(
                "published as {}: {} accepted, {} duplicates, {} rejected\n",
                p.source, p.accepted, p.duplicates, p.rejected
            ));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }
}

/// What a slot tells the collector.
enum Event {
    Sample {
        worker_id: u32,
        value: i64,
    },
    Junk {
        worker_id: u32,
        junk: Junk,
    },
    /// The run cannot go on.
    Fatal(String),
}

/// A validated configuration with its status listener bound.
pub struct Supervisor {
    config: Config,
    worker_bin: PathBuf,
    status: Option<tokio::net::TcpListener>,
    status_serving: tributary::grpc::Serving,
    publish: Option<tributary::channel::Link>,
}

impl Supervisor {
    /// Checks the configuration and binds the status address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let worker_bin = match &config.worker_bin {
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
        if config.backoff_max < config.backoff {
            bail!("--backoff-max must be at least --backoff");
        }
        if config.stall_timeout.is_zero() || config.start_timeout.is_zero() {
            bail!("--stall-timeout and --start-timeout must be above zero");
        }
        let status_serving = tributary::grpc::Serving {
            tls: config.status_tls.load()?,
            access: tributary::access::AccessGuard::from_sources(
                (config.status_token_file.as_ref(), None),
                (config.status_read_token_file.as_ref(), None),
            )?,
            limits: tributary::limits::ServerLimits::default(),
        };
        let publish = match &config.publish {
            Some(url) => {
                let link = tributary::channel::Link::new(
                    url.clone(),
                    config.publish_tls.load()?,
                    config.publish_token.load()?,
                );
                // Checked now, so that a bad address fails before any worker
                // starts.
                link.endpoint()
                    .with_context(|| format!("bad --publish address {url:?}"))?;
                Some(link)
            }
            None => None,
        };
        let status = match config.status_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the status address {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            worker_bin,
            status,
            status_serving,
            publish,
        })
    }

    /// The bound status address, with `--status-listen`.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status.as_ref().map(tributary::grpc::bound_addr)
    }

    /// Runs until the target is reached, `shutdown` is cancelled, or the run
    /// fails; in every case every worker is stopped before it returns.
    pub async fn run(self, shutdown: CancellationToken, progress: bool) -> Report {
        let config = self.config;
        let slots = config
            .max_workers
            .min(u32::try_from(config.samples).unwrap_or(u32::MAX));
        let fleet = Fleet::new(config.samples, config.max_workers, slots);
        let started = Instant::now();

        let status_stop = CancellationToken::new();
        let status_serving = self.status_serving;
        let status_task = self.status.map(|listener| {
            tokio::spawn(status::serve(
                listener,
                status_serving,
                fleet.clone(),
                status_stop.clone(),
            ))
        });
        let mut publisher = self.publish.map(Publisher::start);

        let run = shutdown.child_token();
        let (events, mut rx) = mpsc::channel::<Event>(1024);
        let mut slots_tasks = JoinSet::new();
        for id in 1..=slots {
            let slot = Slot {
                id,
                config: config.clone(),
                worker_bin: self.worker_bin.clone(),
                fleet: fleet.clone(),
                run: run.clone(),
                events: events.clone(),
            };
            slots_tasks.spawn(slot.run());
        }
        drop(events);

        let bar = progress_bar(config.samples, progress);
        let mut error = None;
        let mut phase = Phase::Done;
        let mut seconds = None;
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    phase = Phase::Interrupted;
                    break;
                }
                event = rx.recv() => event,
            };
            match event {
                Some(Event::Sample { worker_id, value }) => {
                    let collected = fleet.sample(worker_id);
                    if let Some(publisher) = &mut publisher {
                        publisher.publish(worker_id, value);
                    }
                    bar.set_position(collected);
                    if collected.is_multiple_of(8) || collected == config.samples {
                        let s = fleet.snapshot();
                        bar.set_message(format!(
                            "{} live, {} crashes, {} restarts",
                            s.live_workers, s.crashes, s.restarts
                        ));
                    }
                    if collected == config.samples {
                        seconds = Some(started.elapsed().as_secs_f64());
                        break;
                    }
                }
                Some(Event::Junk { worker_id, junk }) => {
                    let mut count = 0;
                    fleet.worker(worker_id, |w| {
                        w.junk_lines += 1;
                        count = w.junk_lines;
                    });
                    if count <= JUNK_LOGGED {
                        tracing::warn!(worker_id, line = %junk.line, reason = %junk.reason, "skipping a junk line");
                    }
                }
                Some(Event::Fatal(message)) => {
                    phase = Phase::Failed;
                    error = Some(message);
                    break;
                }
                None => {
                    phase = Phase::Failed;
                    error = Some("every worker slot ended".into());
                    break;
                }
            }
        }
        let seconds = seconds.unwrap_or_else(|| started.elapsed().as_secs_f64());
        // Stop the slots first: each stops its process and waits for it.
        // Samples still in flight are dropped with the channel: the target
        // is reached or the run is over.
        fleet.set_phase(phase);
        run.cancel();
        drop(rx);
        bar.finish_and_clear();
        while let Some(joined) = slots_tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "a worker slot task failed");
            }
        }
        let published = match publisher {
            Some(publisher) => match publisher.finish().await {
                Ok(summary) => Some(summary),
                Err(e) => {
                    error.get_or_insert_with(|| format!("publishing: {e:#}"));
                    if phase == Phase::Done {
                        phase = Phase::Failed;
                        fleet.set_phase(phase);
                    }
                    None
                }
            },
            None => None,
        };
        status_stop.cancel();
        if let Some(task) = status_task {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the status server failed"),
                Err(e) => tracing::warn!(error = %e, "the status server task failed"),
                Ok(Ok(())) => {}
            }
        }
        Report {
            seconds,
            total_seconds: started.elapsed().as_secs_f64(),
            error,
            fleet: fleet.snapshot(),
            supervisor: Usage::now(),
            published,
        }
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

fn progress_bar(len: u64, enabled: bool) -> ProgressBar {
    use std::io::IsTerminal;
    let target = if enabled && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} samples  {elapsed}  {msg}")
            .expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Why a worker process was let go.
enum Outcome {
    /// The run is over.
    Stop,
    /// It exited (or never listened) before its first connection, or exited
    /// before sending a single sample.
    StartFailed(String),
    /// It exited while serving.
    Crashed(Option<ExitStatus>),
    /// It sent nothing for the stall timeout.
    Stalled,
    /// Its connections kept breaking while it stayed alive.
    Broken,
}

/// One worker id and the processes that carry it in turn.
struct Slot {
    id: u32,
    config: Config,
    worker_bin: PathBuf,
    fleet: Fleet,
    run: CancellationToken,
    events: mpsc::Sender<Event>,
}

impl Slot {
    async fn run(self) {
        // Restarts of this slot with no sample streamed since.
        let mut restarts = self.config.restart_backoff();
        let mut start_failures_in_row = 0u32;
        let mut ever_streamed = false;
        let mut first = true;
        while !self.run.is_cancelled() {
            if !first && !self.fleet.try_restart(self.id, self.config.max_restarts) {
                self.fatal(format!(
                    "restarts reached the --max-restarts cap of {}",
                    self.config.max_restarts
                ))
                .await;
                break;
            }
            first = false;
            let port = match free_port() {
                Ok(port) => port,
                Err(e) => {
                    self.fatal(format!("finding a free port: {e}")).await;
                    break;
                }
            };
            let mut process =
                match Process::spawn(&self.worker_bin, self.id, port, &self.config.worker_args) {
                    Ok(process) => process,
                    Err(e) => {
                        self.fatal(format!("starting {}: {e}", self.worker_bin.display()))
                            .await;
                        break;
                    }
                };
            self.fleet.spawned(self.id, process.pid, port);
            tracing::debug!(
                worker_id = self.id,
                pid = process.pid,
                port,
                "worker started"
            );
            let (outcome, streamed) = self.serve(&mut process).await;
            process.stop(self.config.kill_grace).await;
            self.fleet.reaped(self.id);
            ever_streamed |= streamed;
            if streamed {
                restarts.reset();
            }
            match outcome {
                Outcome::Stop => break,
                Outcome::StartFailed(why) => {
                    self.fleet.worker(self.id, |w| w.start_failures += 1);
                    start_failures_in_row += 1;
                    tracing::warn!(worker_id = self.id, %why, "worker failed to start");
                    if !ever_streamed && start_failures_in_row >= START_FAILURES_BEFORE_GIVING_UP {
                        self.fatal(format!(
                            "worker {} failed to start {start_failures_in_row} times in a row; last: {why}",
                            self.id
                        ))
                        .await;
                        break;
                    }
                }
                Outcome::Crashed(status) => {
                    start_failures_in_row = 0;
                    self.fleet.worker(self.id, |w| w.crashes += 1);
                    let status = status.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
                    tracing::debug!(worker_id = self.id, pid = process.pid, %status, "worker crashed; restarting");
                }
                Outcome::Stalled => {
                    start_failures_in_row = 0;
                    self.fleet.worker(self.id, |w| w.stalls += 1);
                    tracing::debug!(
                        worker_id = self.id,
                        pid = process.pid,
                        "worker stalled; restarting"
                    );
                }
                Outcome::Broken => {
                    start_failures_in_row = 0;
                    tracing::warn!(
                        worker_id = self.id,
                        pid = process.pid,
                        "worker connections keep breaking; restarting"
                    );
                }
            }
            self.fleet
                .worker(self.id, |w| w.state = SlotState::BackingOff);
            let pause = restarts.next_wait();
            tokio::select! {
                () = self.run.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.fleet.worker(self.id, |w| w.state = SlotState::Stopped);
    }

    async fn fatal(&self, message: String) {
        tracing::error!(worker_id = self.id, %message, "the fleet cannot go on");
        let _ = self.events.send(Event::Fatal(message)).await;
    }

    /// Streams from `process` over one connection at a time until the run
    /// ends or the process must be replaced. Also says whether any sample
    /// came from it.
    async fn serve(&self, process: &mut Process) -> (Outcome, bool) {
        let mut sink = SlotSink {
            worker_id: self.id,
            events: self.events.clone(),
            samples: 0,
        };
        let mut connected = false;
        // Broken connections in a row to this process.
        let mut broken = self.config.restart_backoff();
        let mut busy_since = None;
        loop {
            let deadline = tokio::time::Instant::now() + self.config.start_timeout;
            let addr = process.addr;
            let tcp = tokio::select! {
                biased;
                () = self.run.cancelled() => return (Outcome::Stop, sink.samples > 0),
                status = process.wait() => {
                    let outcome = if connected {
                        exited(status.ok(), &sink, process).await
                    } else {
                        Outcome::StartFailed(format!(
                            "exited with {} before listening; stderr: {}",
                            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                            process.stderr_tail().await
                        ))
                    };
                    return (outcome, sink.samples > 0);
                }
                tcp = connect_when_listening(addr, deadline) => tcp,
            };
            let Some(tcp) = tcp else {
                let outcome = if connected {
                    Outcome::Broken
                } else {
                    Outcome::StartFailed(format!(
                        "not listening on {addr} after {:?}",
                        self.config.start_timeout
                    ))
                };
                return (outcome, sink.samples > 0);
            };
            connected = true;
            self.fleet
                .worker(self.id, |w| w.state = SlotState::Streaming);
            let result = tokio::select! {
                biased;
                () = self.run.cancelled() => return (Outcome::Stop, sink.samples > 0),
                status = process.wait() => return (exited(status.ok(), &sink, process).await, sink.samples > 0),
                result = connection::stream(tcp, addr, self.config.samples, self.config.stall_timeout, &mut sink) => result,
            };
            match result {
                Ok(StreamEnd::Complete) => {
                    broken.reset();
                    busy_since = None;
                }
                Err(StreamError::Busy) => {
                    // The worker still holds the connection that just ended
                    // (it has not seen it close yet), or another client got
                    // there first. Wait for it, within the stall timeout.
                    self.fleet.worker(self.id, |w| w.busy_answers += 1);
                    let since = *busy_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > self.config.stall_timeout {
                        return (Outcome::Broken, sink.samples > 0);
                    }
                    tokio::select! {
                        () = self.run.cancelled() => return (Outcome::Stop, sink.samples > 0),
                        () = tokio::time::sleep(BUSY_RETRY) => {}
                    }
                }
                Ok(StreamEnd::Stopped) => return (Outcome::Stop, sink.samples > 0),
                Err(StreamError::Stalled(_)) => return (Outcome::Stalled, sink.samples > 0),
                Err(e) => {
                    // A crash breaks the connection a moment before the
                    // exit can be reaped; give the exit a chance to show.
                    if let Ok(status) = tokio::time::timeout(EXIT_SETTLE, process.wait()).await {
                        return (exited(status.ok(), &sink, process).await, sink.samples > 0);
                    }
                    self.fleet.worker(self.id, |w| w.broken_connections += 1);
                    let pause = broken.next_wait();
                    tracing::debug!(worker_id = self.id, error = %e, "connection to worker broke; reconnecting");
                    if broken.failures() >= BROKEN_BEFORE_REPLACING {
                        return (Outcome::Broken, sink.samples > 0);
                    }
                    tokio::select! {
                        () = self.run.cancelled() => return (Outcome::Stop, sink.samples > 0),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

/// What an exit means. A process that never sent a sample did not start
/// properly: most often another program took its port between our check and
/// its bind (the connection we made then reached that other program), which
/// is no crash of the worker's.
async fn exited(status: Option<ExitStatus>, sink: &SlotSink, process: &mut Process) -> Outcome {
    if sink.samples > 0 {
        return Outcome::Crashed(status);
    }
    Outcome::StartFailed(format!(
        "exited with {} before sending a sample; stderr: {}",
        status.map_or_else(|| "an unknown status".to_owned(), |s| s.to_string()),
        process.stderr_tail().await
    ))
}

/// Polls `addr` until something accepts, or gives up at `deadline`.
async fn connect_when_listening(
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<TcpStream> {
    loop {
        if let Ok(tcp) = TcpStream::connect(addr).await {
            return Some(tcp);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(CONNECT_POLL).await;
    }
}

/// Forwards a slot's parsed lines to the collector.
struct SlotSink {
    worker_id: u32,
    events: mpsc::Sender<Event>,
    samples: u64,
}

impl Sink for SlotSink {
    async fn accept(&mut self, item: Item) -> bool {
        let event = match item {
            Item::Sample(value) => {
                self.samples += 1;
                Event::Sample {
                    worker_id: self.worker_id,
                    value,
                }
            }
            Item::Junk(junk) => Event::Junk {
                worker_id: self.worker_id,
                junk,
            },
        };
        self.events.send(event).await.is_ok()
    }
}
