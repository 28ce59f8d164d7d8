//! The live state of a fleet run, shared by the worker slots, the collector
//! and the status service, and the snapshot of it that reports and status
//! answers are made from.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use serde::Serialize;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Done,
    Interrupted,
    Failed,
}

/// What a worker slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Starting,
    Streaming,
    BackingOff,
    Stopped,
}

/// One worker slot: a worker id and the processes that carried it in turn.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStats {
    pub worker_id: u32,
    pub state: SlotState,
    /// The current process, if one is alive.
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// Samples of this worker counted towards the target.
    pub samples: u64,
    /// Processes that exited while streaming, without being asked to.
    pub crashes: u64,
    /// Processes started after the first one.
    pub restarts: u64,
    /// Streams that sent nothing for the stall timeout.
    pub stalls: u64,
    /// Connections that broke while the process stayed alive.
    pub broken_connections: u64,
    /// Connections answered 503 (busy) and retried.
    pub busy_answers: u64,
    /// Processes that exited or never listened before their first
    /// connection (for example on a port taken in the meantime).
    pub start_failures: u64,
    /// Lines that were not `rnd=<int>`, reported and skipped.
    pub junk_lines: u64,
    /// Every pid this slot has used, oldest first.
    pub pids: Vec<u32>,
}

/// A consistent copy of the run's state.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub phase: Phase,
    pub target: u64,
    pub collected: u64,
    pub elapsed_seconds: f64,
    pub max_workers: u32,
    pub live_workers: u32,
    pub peak_live_workers: u32,
    pub crashes: u64,
    pub restarts: u64,
    pub stalls: u64,
    pub broken_connections: u64,
    pub start_failures: u64,
    pub junk_lines: u64,
    pub workers: Vec<WorkerStats>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    phase: Phase,
    target: u64,
    collected: u64,
    max_workers: u32,
    live: u32,
    peak_live: u32,
    workers: Vec<WorkerStats>,
}

/// The shared state. Every update holds the lock for a few field writes.
#[derive(Debug, Clone)]
pub struct Fleet(Arc<Mutex<Inner>>);

impl Fleet {
    pub fn new(target: u64, max_workers: u32, slots: u32) -> Self {
        let workers = (1..=slots)
            .map(|worker_id| WorkerStats {
                worker_id,
                state: SlotState::Starting,
                pid: None,
                port: None,
                samples: 0,
                crashes: 0,
                restarts: 0,
                stalls: 0,
                broken_connections: 0,
                busy_answers: 0,
                start_failures: 0,
                junk_lines: 0,
                pids: Vec::new(),
            })
            .collect();
        Self(Arc::new(Mutex::new(Inner {
            started: Instant::now(),
            phase: Phase::Running,
            target,
            collected: 0,
            max_workers,
            live: 0,
            peak_live: 0,
            workers,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .lock()
            .expect("no panic while holding the fleet lock")
    }

    /// Applies `update` to worker `id`'s entry.
    pub fn worker(&self, id: u32, update: impl FnOnce(&mut WorkerStats)) {
        let mut inner = self.lock();
        update(&mut inner.workers[id as usize - 1]);
    }

    /// A process of worker `id` was spawned.
    pub fn spawned(&self, id: u32, pid: u32, port: u16) {
        let mut inner = self.lock();
        inner.live += 1;
        inner.peak_live = inner.peak_live.max(inner.live);
        let worker = &mut inner.workers[id as usize - 1];
        worker.state = SlotState::Starting;
        worker.pid = Some(pid);
        worker.port = Some(port);
        worker.pids.push(pid);
    }

    /// Worker `id`'s process is gone (exited and reaped).
    pub fn reaped(&self, id: u32) {
        let mut inner = self.lock();
        inner.live -= 1;
        let worker = &mut inner.workers[id as usize - 1];
        worker.pid = None;
        worker.port = None;
    }

    /// Counts one sample of worker `id`; the new total.
    pub fn sample(&self, id: u32) -> u64 {
        let mut inner = self.lock();
        inner.collected += 1;
        inner.workers[id as usize - 1].samples += 1;
        inner.collected
    }

    /// Counts a restart of worker `id`, unless the run already made `max`.
    pub fn try_restart(&self, id: u32, max: u64) -> bool {
        let mut inner = self.lock();
        let restarts: u64 = inner.workers.iter().map(|w| w.restarts).sum();
        if restarts >= max {
            return false;
        }
        inner.workers[id as usize - 1].restarts += 1;
        tributary::metrics::counter!(tributary::metrics::FLEET_RESTARTS).increment(1);
        true
    }

    pub fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let sum = |f: fn(&WorkerStats) -> u64| inner.workers.iter().map(f).sum::<u64>();
        Snapshot {
            phase: inner.phase,
            target: inner.target,
            collected: inner.collected,
            elapsed_seconds: inner.started.elapsed().as_secs_f64(),
            max_workers: inner.max_workers,
            live_workers: inner.live,
            peak_live_workers: inner.peak_live,
            crashes: sum(|w| w.crashes),
            restarts: sum(|w| w.restarts),
            stalls: sum(|w| w.stalls),
            broken_connections: sum(|w| w.broken_connections),
            start_failures: sum(|w| w.start_failures),
            junk_lines: sum(|w| w.junk_lines),
            workers: inner.workers.clone(),
        }
    }
}
