//! The supervisor: spawns up to `--max-workers` worker processes, holds one
//! streaming connection to each, replaces the ones that fail, and stops at
//! exactly `--samples` samples.
//!
//! Each worker id is a [`slot`] with its own task. The slots send what they
//! parse to one [`collector`] over a channel; only the collector counts, so
//! the run stops at exactly the target however many slots race for the last
//! sample. This module starts them, stops them, and writes the [`Report`].

mod collector;
mod config;
mod report;
mod slot;

use std::{net::SocketAddr, path::PathBuf, time::Instant};

use anyhow::Context;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use self::{
    collector::{Collector, Event},
    slot::Slot,
};
pub use self::{
    config::Config,
    report::{Report, Usage},
};
use crate::{
    publish::Publisher,
    state::{Fleet, Phase},
    status,
};

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
        let worker_bin = config.worker_bin()?;
        config.check_timings()?;
        let status_serving = config.status_serving()?;
        let publish = config.publish_link()?;
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
        let (events, rx) = mpsc::channel::<Event>(1024);
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

        let mut collector = Collector::new(rx, fleet.clone(), config.samples, started, progress);
        let ending = collector.collect(publisher.as_mut(), &shutdown).await;
        let (mut phase, mut error, seconds) = (ending.phase, ending.error, ending.seconds);
        // Stop the slots first: each stops its process and waits for it.
        // Samples still in flight are dropped with the channel: the target
        // is reached or the run is over.
        fleet.set_phase(phase);
        run.cancel();
        collector.finish();
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
