//! The outcome of a run, as `tributary fleet collect` prints it.

use serde::Serialize;

use crate::{publish::PublishSummary, state::Snapshot};

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
