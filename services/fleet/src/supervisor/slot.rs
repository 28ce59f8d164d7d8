//! A slot: one worker id, the processes that carry it in turn, and the
//! policy for replacing them. A slot streams from its process until the run
//! ends or the process must go, then backs off and starts the next one.

use std::{net::SocketAddr, path::PathBuf, process::ExitStatus, time::Duration};

use tokio::{net::TcpStream, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tributary::backoff::Backoff;

use super::{Config, collector::Event};
use crate::{
    connection::{self, Sink, StreamEnd, StreamError},
    line::Item,
    process::{Process, free_port},
    state::{Fleet, SlotState},
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

/// The pause before a worker's replacement starts, or before a broken
/// connection to a live worker is made again: `--backoff` doubling up to
/// `--backoff-max`. Exact, not jittered: the workers are our own children,
/// not a crowd of clients to spread out, and the flags promise these values.
fn restart_backoff(config: &Config) -> Backoff {
    Backoff::exact(config.backoff, config.backoff_max)
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
pub(super) struct Slot {
    pub(super) id: u32,
    pub(super) config: Config,
    pub(super) worker_bin: PathBuf,
    pub(super) fleet: Fleet,
    /// Cancelled when the run is over.
    pub(super) run: CancellationToken,
    pub(super) events: mpsc::Sender<Event>,
}

impl Slot {
    /// Starts, serves and replaces the slot's processes until the run ends
    /// or the slot cannot go on.
    pub(super) async fn run(self) {
        // Restarts of this slot with no sample streamed since.
        let mut restarts = restart_backoff(&self.config);
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
        let outcome = self.stream(process, &mut sink).await;
        (outcome, sink.streamed())
    }

    /// Connects to `process` and streams into `sink`, reconnecting while the
    /// process lives, until the run ends or the process must be replaced.
    async fn stream(&self, process: &mut Process, sink: &mut SlotSink) -> Outcome {
        let mut connected = false;
        // Broken connections in a row to this process.
        let mut broken = restart_backoff(&self.config);
        let mut busy_since = None;
        loop {
            let deadline = tokio::time::Instant::now() + self.config.start_timeout;
            let addr = process.addr;
            let tcp = tokio::select! {
                biased;
                () = self.run.cancelled() => return Outcome::Stop,
                status = process.wait() => {
                    let outcome = if connected {
                        exited(status.ok(), sink, process).await
                    } else {
                        Outcome::StartFailed(format!(
                            "exited with {} before listening; stderr: {}",
                            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                            process.stderr_tail().await
                        ))
                    };
                    return outcome;
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
                return outcome;
            };
            connected = true;
            self.fleet
                .worker(self.id, |w| w.state = SlotState::Streaming);
            let result = tokio::select! {
                biased;
                () = self.run.cancelled() => return Outcome::Stop,
                status = process.wait() => return exited(status.ok(), sink, process).await,
                result = connection::stream(tcp, addr, self.config.samples, self.config.stall_timeout, &mut *sink) => result,
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
                        return Outcome::Broken;
                    }
                    tokio::select! {
                        () = self.run.cancelled() => return Outcome::Stop,
                        () = tokio::time::sleep(BUSY_RETRY) => {}
                    }
                }
                Ok(StreamEnd::Stopped) => return Outcome::Stop,
                Err(StreamError::Stalled(_)) => return Outcome::Stalled,
                Err(e) => {
                    // A crash breaks the connection a moment before the
                    // exit can be reaped; give the exit a chance to show.
                    if let Ok(status) = tokio::time::timeout(EXIT_SETTLE, process.wait()).await {
                        return exited(status.ok(), sink, process).await;
                    }
                    self.fleet.worker(self.id, |w| w.broken_connections += 1);
                    let pause = broken.next_wait();
                    tracing::debug!(worker_id = self.id, error = %e, "connection to worker broke; reconnecting");
                    if broken.failures() >= BROKEN_BEFORE_REPLACING {
                        return Outcome::Broken;
                    }
                    tokio::select! {
                        () = self.run.cancelled() => return Outcome::Stop,
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
    if sink.streamed() {
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

impl SlotSink {
    /// Whether the process behind this sink sent any sample: only then did
    /// it start properly, and only then is its exit a crash.
    fn streamed(&self) -> bool {
        self.samples > 0
    }
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
