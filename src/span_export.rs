//! The span exporter wrapped so that a failing trace export is reported: an
//! unreachable collector otherwise drops every span without a word.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};

/// Least time between two reports of failing exports.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// An exporter that warns about failed exports: the first at once, then at
/// most once per [`REPORT_EVERY`] with the number of batches lost since.
#[derive(Debug)]
pub struct Reporting<E> {
    inner: E,
    endpoint: String,
    started: Instant,
    /// Batches that failed since the last report.
    failed: AtomicU64,
    /// When the last report went out, in ms since `started`, plus one (0:
    /// never).
    reported_at: AtomicU64,
}

impl<E> Reporting<E> {
    pub fn new(inner: E, endpoint: String) -> Self {
        Self {
            inner,
            endpoint,
            started: Instant::now(),
            failed: AtomicU64::new(0),
            reported_at: AtomicU64::new(0),
        }
    }

    fn note(&self, result: &OTelSdkResult) {
        let Err(e) = result else { return };
        let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.reported_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= REPORT_EVERY.as_millis() as u64;
        // One caller wins the report; `export` is never called concurrently,
        // but `shutdown` may race with it.
        if due
            && self
                .reported_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.failed.store(0, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.endpoint, error = %e, batches_lost = failed, "trace export failing: spans are being dropped (is the collector at OTEL_EXPORTER_OTLP_ENDPOINT up?)");
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.note(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
