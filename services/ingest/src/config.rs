//! Command-line and environment configuration of the ingest server.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Configuration of a stand-alone ingest server.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on; port 0 picks a free port.
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The queue: `embedded` (a file in --data-dir), `embedded:PATH`, or
    /// NATS JetStream as `nats://HOST:PORT[?stream=NAME&max_age=SECONDS]`.
    /// The embedded queue takes `?max_age=SECONDS` (default 604800, 7 days),
    /// `max_bytes=BYTES` (default 8589934592, 8 GiB) and `group_ttl=SECONDS`
    /// (default 604800): older or excess messages, and groups with no
    /// subscriber for that long, are dropped, logged and counted.
    #[arg(long, env = "TRIBUTARY_QUEUE", default_value = "embedded")]
    pub queue: String,
    /// Directory for the embedded queue's file.
    #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub tls: tributary::tls::ServerTlsArgs,
    #[command(flatten)]
    pub auth: tributary::bearer::RequireTokenArgs,
    #[command(flatten)]
    pub server: tributary::limits::ServerLimits,
}

/// Limits and timings of the Ingest service.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Most records one Publish stream may have waiting for the queue; the
    /// server stops reading the stream until acks bring it below. The
    /// server's side of publishing; not --pull-window, which is how many
    /// deliveries `up`'s own parsers hold.
    #[arg(long, env = "TRIBUTARY_PUBLISH_WINDOW", default_value_t = 20_000)]
    pub publish_window: usize,
    /// Most encoded bytes of records one Publish stream may have waiting
    /// for the queue; like --publish-window, the server stops reading the
    /// stream until acks bring it below. A single request larger than this
    /// is still taken when nothing else waits.
    #[arg(
        long,
        env = "TRIBUTARY_PUBLISH_WINDOW_BYTES",
        default_value_t = 8 << 20
    )]
    pub publish_window_bytes: usize,
    /// Memory budget, in bytes, for publish data in flight on this server
    /// (all streams and PublishBatch calls, gRPC and REST): received and
    /// not yet acknowledged by the queue. A request that does not fit is
    /// not read into more memory: its records are answered UNAVAILABLE
    /// with a retry hint, and the producer sends them again later.
    #[arg(
        long,
        env = "TRIBUTARY_INFLIGHT_BYTES",
        default_value_t = 256 << 20
    )]
    pub inflight_bytes: usize,
    /// Largest gRPC request message accepted, in bytes; larger requests get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRIBUTARY_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,
    /// Largest single record accepted, in encoded bytes; a larger record is
    /// rejected alone with RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRIBUTARY_MAX_RECORD_BYTES", default_value_t = 64 << 10)]
    pub max_record_bytes: usize,
    /// Most records one request (a Publish batch or a PublishBatch call) may
    /// carry; a larger request is refused with RESOURCE_EXHAUSTED, so that
    /// neither its validation nor its answer can grow without bound.
    #[arg(long, env = "TRIBUTARY_MAX_BATCH_RECORDS", default_value_t = 10_000)]
    pub max_batch_records: usize,
    /// Deliveries of a batch before its parser dead-letters what still fails.
    #[arg(long, env = "TRIBUTARY_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Milliseconds a delivery may stay unacknowledged before it is
    /// redelivered, when the subscriber does not choose. The server's
    /// default; --pull-ack-deadline-ms is what a parser asks for, and wins.
    #[arg(long, env = "TRIBUTARY_ACK_DEADLINE_MS", default_value_t = 30_000)]
    pub ack_deadline_ms: u32,
    /// Records a Pull subscriber may hold unacknowledged, when it does not
    /// choose.
    #[arg(long, env = "TRIBUTARY_MAX_OUTSTANDING", default_value_t = 10_000)]
    pub max_outstanding: u32,
    /// Most records any Pull subscriber may hold unacknowledged, whatever
    /// it asks for: a larger `max_outstanding` gets this.
    #[arg(long, env = "TRIBUTARY_MAX_OUTSTANDING_CAP", default_value_t = 100_000)]
    pub max_outstanding_cap: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            publish_window: 20_000,
            publish_window_bytes: 8 << 20,
            inflight_bytes: 256 << 20,
            max_message_bytes: 4 << 20,
            max_record_bytes: 64 << 10,
            max_batch_records: 10_000,
            max_attempts: 5,
            ack_deadline_ms: 30_000,
            max_outstanding: 10_000,
            max_outstanding_cap: 100_000,
        }
    }
}

impl Limits {
    /// Checks that the limits make sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.publish_window > 0,
            "--publish-window must be at least 1"
        );
        anyhow::ensure!(
            self.max_batch_records > 0,
            "--max-batch-records must be at least 1"
        );
        anyhow::ensure!(
            self.publish_window_bytes > 0,
            "--publish-window-bytes must be at least 1"
        );
        anyhow::ensure!(
            self.inflight_bytes >= self.max_message_bytes,
            "--inflight-bytes ({}) must be at least --max-message-bytes ({}), or a large request could never be taken",
            self.inflight_bytes,
            self.max_message_bytes
        );
        anyhow::ensure!(self.max_attempts > 0, "--max-attempts must be at least 1");
        anyhow::ensure!(
            self.max_outstanding_cap >= self.max_outstanding,
            "--max-outstanding-cap ({}) cannot be below --max-outstanding ({})",
            self.max_outstanding_cap,
            self.max_outstanding
        );
        anyhow::ensure!(
            self.ack_deadline_ms >= 100,
            "--ack-deadline-ms must be at least 100"
        );
        anyhow::ensure!(
            self.max_record_bytes <= self.max_message_bytes,
            "--max-record-bytes ({}) cannot exceed --max-message-bytes ({})",
            self.max_record_bytes,
            self.max_message_bytes
        );
        Ok(())
    }

    /// The default ack deadline.
    pub fn ack_deadline(&self) -> Duration {
        Duration::from_millis(u64::from(self.ack_deadline_ms))
    }
}
