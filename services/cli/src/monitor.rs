//! `tributary monitor`: shows SMS progress (sent, failed, average time per
//! message) every `--every`. In a terminal the line updates in place; when
//! piped, each reading is a plain line, so logs and tests can read it.

use std::{io::IsTerminal, time::Duration};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tributary::{
    call_failure,
    channel::{ClientTlsArgs, Link},
    grpc_client,
    proto::{GetSmsProgressRequest, SmsProgress, query_client::QueryClient},
};

/// What the monitor watches and when it stops.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Query API to read: `tributary up`, the API service, or Envoy.
    #[arg(
        long,
        env = "TRIBUTARY_CONNECT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub connect: String,
    /// Time between two readings, for example `2s` or `500ms`.
    #[arg(long, env = "TRIBUTARY_EVERY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Stop once this many messages have finished (sent or failed) since
    /// this monitor's first reading. The store's totals include earlier
    /// runs (and the 1,000 that `up` sends at start), so start the monitor
    /// before the producer whose messages it should count.
    #[arg(long, env = "TRIBUTARY_UNTIL_DONE")]
    pub until_done: Option<u64>,
    /// Stop once messages have been seen and a reading shows no change.
    #[arg(long, env = "TRIBUTARY_EXIT_WHEN_IDLE")]
    pub exit_when_idle: bool,
    /// Consumer group of the SMS senders.
    #[arg(long, env = "TRIBUTARY_SMS_GROUP", default_value = tributary::workloads::sms::GROUP)]
    pub parser: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The token to read with, for servers that require one (the full or
    /// the read-only token).
    #[command(flatten)]
    pub auth: tributary::bearer::SendTokenArgs,
}

/// What the numbers of a reading mean, printed once at start (on stderr,
/// so that the readings on stdout stay one plain line each).
const LEGEND: &str = "sent, failed, done: the group's totals in the store (all runs); \
this run: messages finished since this monitor started; avg: mean send time per message; \
[LABEL: sent/failed avg]: per sender, LABEL being the sender spec's `label` \
(or one made from its mean_ms and failure_rate)";

/// One reading as a line of text; `run` is what finished since the
/// monitor's first reading.
pub fn line(progress: &SmsProgress, run: u64) -> String {
    let mut line = format!(
        "sent {} failed {} done {} this run {run} avg {:.2} ms/message",
        progress.sent,
        progress.failed,
        progress.sent + progress.failed,
        progress.avg_ms
    );
    if !progress.senders.is_empty() {
        let senders: Vec<String> = progress
            .senders
            .iter()
            .map(|s| format!("{}: {}/{} {:.2} ms", s.sender, s.sent, s.failed, s.avg_ms))
            .collect();
        line.push_str(&format!(" [{}]", senders.join(", ")));
    }
    line
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.every >= Duration::from_millis(10),
        "--every must be at least 10ms"
    );
    let link = Link::new(
        config.connect.clone(),
        config.tls.load()?,
        config.auth.load()?,
    );
    let channel = grpc_client::connect_lazy_with_bearer(
        &link.endpoint().context("--connect")?,
        link.bearer(),
    );
    let mut client = QueryClient::new(channel);
    let terminal = std::io::stdout().is_terminal();
    let bar = terminal.then(|| {
        let bar = match config.until_done {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                    .expect("the template is valid"),
            ),
            None => ProgressBar::new_spinner(),
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let mut interval = tokio::time::interval(config.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    eprintln!(
        "monitor: SMS progress of group `{}` at {}, every {:?}. {LEGEND}",
        config.parser, config.connect, config.every
    );
    let mut last: Option<(u64, u64)> = None;
    let mut baseline: Option<u64> = None;
    let mut complained_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let progress = match client
            .get_sms_progress(GetSmsProgressRequest {
                parser: config.parser.clone(),
            })
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if let Some(hint) = call_failure::lasting_cause(&status) {
                    anyhow::bail!(
                        "cannot read progress from {}: {hint} ({})",
                        config.connect,
                        status.message()
                    );
                }
                // Once per interval of ten seconds, not once per reading.
                if complained_at.is_none_or(|at| at.elapsed() >= COMPLAIN_EVERY) {
                    complained_at = Some(tokio::time::Instant::now());
                    eprintln!(
                        "cannot read progress from {}: {}; retrying every {:?} until stopped",
                        config.connect,
                        describe(&status),
                        config.every
                    );
                }
                continue;
            }
        };
        complained_at = None;
        let done = progress.sent + progress.failed;
        let run = done - *baseline.get_or_insert(done);
        let text = line(&progress, run);
        match &bar {
            Some(bar) => {
                bar.set_position(run);
                bar.set_message(text.clone());
            }
            None => println!("{text}"),
        }
        let counts = (progress.sent, progress.failed);
        let finished = config.until_done.is_some_and(|n| run >= n)
            || (config.exit_when_idle && done > 0 && last == Some(counts));
        last = Some(counts);
        if finished {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
                println!("{text}");
            }
            return Ok(());
        }
    }
    if let Some(bar) = &bar {
        bar.abandon();
    }
    Ok(())
}

/// Least time between two complaints about the same outage.
const COMPLAIN_EVERY: Duration = Duration::from_secs(10);

/// A failed call's message and its causes, on one line.
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        text.push_str(&format!(": {e}"));
        next = e.source();
    }
    text
}
