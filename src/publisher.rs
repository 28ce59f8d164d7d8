//! The one publisher of the mesh: every producer (`tributary send`, the
//! workload generators, `fleet collect --publish`) hands its records to a
//! [`Publisher`], which streams them over `Ingest.Publish` and answers for
//! their delivery.
//!
//! - **Window.** The producer pushes records into [`Publisher::sender`]; a
//!   new record is taken only while fewer than `window` records are
//!   unacknowledged, so a slow mesh slows the producer and memory stays
//!   bounded.
//! - **Reconnect.** When the stream breaks, the publisher reconnects after
//!   the clients' [`Backoff`] and republishes everything unanswered, in
//!   order, with the same keys, so nothing is stored twice. A cause that
//!   waiting cannot heal (a refused token, an untrusted CA) fails at once;
//!   other failures give up after `retry_secs` without progress.
//! - **Settle.** Each batch's answer settles it: acknowledged records are
//!   done, records refused as UNAVAILABLE (the queue is down) are held and
//!   sent again after the same back-off, so an outage costs a few requests
//!   a second; other rejections are final and counted.
//! - **Trace.** Each batch is the root of its own trace (`producer
//!   publish`), carried in the request's `traceparent`; a republished or
//!   retried batch stays in the trace of the batch its records came in.
//!
//! The defaults (window, batch size, retry and rollover times) live here, in
//! [`Settings::default`] and the `DEFAULT_*` constants that the flags of
//! [`PublishArgs`] show.

mod outbox;
mod stream;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    bearer::{SendTokenArgs, TokenError},
    channel::{ChannelError, ClientTlsArgs, Link},
    proto::Record,
    tls::TlsError,
};

/// The ingest endpoint a producer publishes to unless told otherwise:
/// `tributary up` on its default address.
pub const DEFAULT_CONNECT: &str = "http://127.0.0.1:8080";
/// Records per request, at most. Large enough that a fast producer sends
/// few requests, far below the server's 10,000-record batch limit.
pub const DEFAULT_BATCH: usize = 500;
/// Records sent and not yet acknowledged, at most: enough to keep a busy
/// mesh fed across a round trip, small enough to hold in memory.
pub const DEFAULT_WINDOW: usize = 20_000;
/// Seconds without progress (a broken stream, or records refused as
/// unavailable) before a publisher gives up. Keep it below the queue's
/// dedupe horizon, so that a republished record is still known.
pub const DEFAULT_RETRY_SECS: u64 = 30;
/// Seconds after which a publish stream is closed and a new one opened.
pub const DEFAULT_ROLLOVER_SECS: u64 = 30;

/// How a publisher batches and how long it keeps trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Records per request, at most.
    pub batch: usize,
    /// Records sent but not yet acknowledged, at most.
    pub window: usize,
    /// How long to keep retrying without progress before giving up.
    pub retry_for: Duration,
    /// Age after which a publish stream is replaced; `None` keeps one.
    pub rollover: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            window: DEFAULT_WINDOW,
            retry_for: Duration::from_secs(DEFAULT_RETRY_SECS),
            rollover: rollover(DEFAULT_ROLLOVER_SECS),
        }
    }
}

fn rollover(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// How a publisher connects and batches: the flags of every producer.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Ingest endpoint: `tributary up`, an ingest server, or Envoy.
    #[arg(long, env = "TRIBUTARY_CONNECT", default_value = DEFAULT_CONNECT)]
    pub connect: String,
    /// Records per request, at most.
    #[arg(long, env = "TRIBUTARY_BATCH", default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Most records sent but not yet acknowledged.
    #[arg(long, env = "TRIBUTARY_WINDOW", default_value_t = DEFAULT_WINDOW)]
    pub window: usize,
    /// Seconds to keep retrying, after the server goes away or while it
    /// refuses records as unavailable, before giving up.
    #[arg(long, env = "TRIBUTARY_RETRY_SECS", default_value_t = DEFAULT_RETRY_SECS)]
    pub retry_secs: u64,
    /// Seconds after which a publish stream is closed (once its window is
    /// acknowledged) and a new one opened. Behind Envoy, which balances per
    /// stream, this spreads producers over replicas added since they
    /// started. 0 keeps one stream for the whole run.
    #[arg(long, env = "TRIBUTARY_ROLLOVER_SECS", default_value_t = DEFAULT_ROLLOVER_SECS)]
    pub rollover_secs: u64,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    #[command(flatten)]
    pub token: SendTokenArgs,
}

impl PublishArgs {
    /// The flags' defaults, publishing to `connect` without TLS settings
    /// or token: for producers started by code rather than from flags.
    pub fn to(connect: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            batch: DEFAULT_BATCH,
            window: DEFAULT_WINDOW,
            retry_secs: DEFAULT_RETRY_SECS,
            rollover_secs: DEFAULT_ROLLOVER_SECS,
            tls: ClientTlsArgs::default(),
            token: SendTokenArgs::default(),
        }
    }

    /// The ingest link these flags describe, with their files read.
    pub fn link(&self) -> Result<Link, PublishError> {
        Ok(Link::new(
            self.connect.clone(),
            self.tls.load()?,
            self.token.load()?,
        ))
    }

    /// The batching and retrying these flags ask for.
    pub fn settings(&self) -> Settings {
        Settings {
            batch: self.batch,
            window: self.window,
            retry_for: Duration::from_secs(self.retry_secs),
            rollover: rollover(self.rollover_secs),
        }
    }
}

/// Why a publisher could not start, or stopped before every record was
/// answered.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The settings cannot work.
    #[error("{0}")]
    Settings(&'static str),
    #[error("--connect: {0}")]
    Endpoint(#[from] ChannelError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A failure that waiting cannot heal, with what the user must change.
    #[error("cannot publish to {url}: {hint} ({cause})")]
    Lasting {
        url: String,
        hint: &'static str,
        cause: String,
    },
    /// The server stayed unreachable for the whole retry time.
    #[error("gave up on {url} after {secs} s of failures (--retry-secs): {cause}")]
    Unreachable {
        url: String,
        secs: u64,
        cause: String,
    },
    /// Records were refused as unavailable, and none accepted, for the
    /// whole retry time.
    #[error("gave up after {secs} s of records refused as unavailable ({unacked} unacknowledged)")]
    Refused { secs: u64, unacked: usize },
    /// Shutdown came while records were still unanswered.
    #[error("stopped with {unacked} records unacknowledged")]
    Stopped { unacked: usize },
    #[error("the publisher task panicked")]
    Panicked,
}

/// Running totals, readable while the publisher runs.
#[derive(Debug, Default)]
pub struct Totals {
    /// Records taken from the producer.
    pub sent: AtomicU64,
    /// Records durably accepted for the first time.
    pub accepted: AtomicU64,
    /// Records acknowledged as already held.
    pub duplicates: AtomicU64,
    /// Records rejected for good.
    pub rejected: AtomicU64,
    /// Streams re-opened after a failure.
    pub reconnects: AtomicU64,
    /// Streams closed at their age limit and replaced.
    pub rollovers: AtomicU64,
    /// Records refused as unavailable and sent again after a back-off.
    pub retried: AtomicU64,
}

impl Totals {
    /// Records acknowledged (accepted or duplicate).
    pub fn acked(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed) + self.duplicates.load(Ordering::Relaxed)
    }

    /// Records answered in any way.
    pub fn answered(&self) -> u64 {
        self.acked() + self.rejected.load(Ordering::Relaxed)
    }
}

/// A running publisher: push records into [`Publisher::sender`], then
/// [`Publisher::finish`].
pub struct Publisher {
    records: mpsc::Sender<Record>,
    totals: Arc<Totals>,
    task: JoinHandle<Result<(), PublishError>>,
}

impl Publisher {
    /// Starts publishing to `args.connect` with the flags' settings, TLS
    /// and token. `shutdown` only cuts reconnect waits short: a producer
    /// stops by dropping its senders.
    pub fn start(args: &PublishArgs, shutdown: CancellationToken) -> Result<Self, PublishError> {
        Self::start_on(&args.settings(), &args.link()?, shutdown)
    }

    /// Starts publishing to `link` with `settings`.
    pub fn start_on(
        settings: &Settings,
        link: &Link,
        shutdown: CancellationToken,
    ) -> Result<Self, PublishError> {
        if settings.batch == 0 {
            return Err(PublishError::Settings("--batch must be at least 1"));
        }
        if settings.window < settings.batch {
            return Err(PublishError::Settings("--window must be at least --batch"));
        }
        let target = stream::Target {
            endpoint: link.endpoint()?,
            bearer: link.bearer(),
        };
        let (records, input) = mpsc::channel(settings.batch);
        let totals = Arc::new(Totals::default());
        let task = tokio::spawn(stream::run(
            settings.clone(),
            target,
            input,
            totals.clone(),
            shutdown,
        ));
        Ok(Self {
            records,
            totals,
            task,
        })
    }

    /// Where the producer sends records.
    pub fn sender(&self) -> mpsc::Sender<Record> {
        self.records.clone()
    }

    /// The running totals.
    pub fn totals(&self) -> Arc<Totals> {
        self.totals.clone()
    }

    /// Waits until every record handed in is answered (the producer must
    /// have dropped its senders), and returns the totals.
    pub async fn finish(self) -> Result<Arc<Totals>, PublishError> {
        drop(self.records);
        self.task.await.map_err(|_| PublishError::Panicked)??;
        Ok(self.totals)
    }
}

/// The back-off of reconnects and of refused records.
fn backoff() -> Backoff {
    Backoff::client()
}
