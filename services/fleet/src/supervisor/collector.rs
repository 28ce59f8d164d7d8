//! The collector: the one place that counts samples. The slots send what
//! they parse over one channel and only the collector counts, so the run
//! stops at exactly the target however many slots race for the last sample.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    line::Junk,
    publish::Publisher,
    state::{Fleet, Phase},
};

/// How many junk lines per worker are logged; the rest are only counted.
const JUNK_LOGGED: u64 = 5;

/// What a slot tells the collector.
pub(super) enum Event {
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

/// How a collection ended.
pub(super) struct Ending {
    pub(super) phase: Phase,
    /// Why the run ended early, if it did.
    pub(super) error: Option<String>,
    /// Seconds from the start to the last sample, or to the end of the
    /// collection when the target was not reached.
    pub(super) seconds: f64,
}

/// Counts the slots' events into the fleet's state and the progress bar.
pub(super) struct Collector {
    events: mpsc::Receiver<Event>,
    fleet: Fleet,
    target: u64,
    started: Instant,
    bar: ProgressBar,
}

impl Collector {
    /// A collector of `target` samples, with a progress bar on stderr when
    /// `progress` is asked for and stderr is a terminal.
    pub(super) fn new(
        events: mpsc::Receiver<Event>,
        fleet: Fleet,
        target: u64,
        started: Instant,
        progress: bool,
    ) -> Self {
        Self {
            events,
            fleet,
            target,
            started,
            bar: progress_bar(target, progress),
        }
    }

    /// Counts samples, passing each to `publisher`, until the target is
    /// reached, `shutdown` is cancelled, a slot reports that the run cannot
    /// go on, or every slot has ended.
    pub(super) async fn collect(
        &mut self,
        mut publisher: Option<&mut Publisher>,
        shutdown: &CancellationToken,
    ) -> Ending {
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
                event = self.events.recv() => event,
            };
            match event {
                Some(Event::Sample { worker_id, value }) => {
                    let collected = self.fleet.sample(worker_id);
                    if let Some(publisher) = &mut publisher {
                        publisher.publish(worker_id, value);
                    }
                    self.bar.set_position(collected);
                    if collected.is_multiple_of(8) || collected == self.target {
                        let s = self.fleet.snapshot();
                        self.bar.set_message(format!(
                            "{} live, {} crashes, {} restarts",
                            s.live_workers, s.crashes, s.restarts
                        ));
                    }
                    if collected == self.target {
                        seconds = Some(self.started.elapsed().as_secs_f64());
                        break;
                    }
                }
                Some(Event::Junk { worker_id, junk }) => {
                    let mut count = 0;
                    self.fleet.worker(worker_id, |w| {
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
        Ending {
            phase,
            error,
            seconds: seconds.unwrap_or_else(|| self.started.elapsed().as_secs_f64()),
        }
    }

    /// Drops the samples still in flight, which the run no longer needs,
    /// and clears the progress bar.
    pub(super) fn finish(self) {
        drop(self.events);
        self.bar.finish_and_clear();
    }
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
