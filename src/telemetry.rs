//! Logging and trace export set-up shared by every binary: `RUST_LOG`
//! filtering, text for people or JSON for machines, and OpenTelemetry spans
//! sent over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Jaeger v2 ingests OTLP natively, so no Jaeger-specific exporter is needed
//! (the `opentelemetry-jaeger` crate is discontinued).

use std::io::IsTerminal;

use crate::span_export;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The OTLP exporter could not be built from the `OTEL_*` variables.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TelemetryError(String);

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
#[must_use = "dropping the guard without `shutdown` loses the spans still buffered"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK's shutdown blocks until the batch processor's thread has
        // exported; that export runs on this runtime's tonic channel, so the
        // wait must not occupy a runtime worker.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
}

/// Installs the global subscriber and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set, the OTLP span exporter. `RUST_LOG` overrides the default log level
/// of `info`. Logs go to stderr so that command output on stdout stays
/// clean. `service` names this process in traces unless `OTEL_SERVICE_NAME`
/// does; `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` pick the
/// sampler (parent-based, always on by default).
///
/// Must run inside a Tokio runtime: the exporter's gRPC channel lives there.
pub fn init(format: LogFormat, service: &str) -> Result<Telemetry, TelemetryError> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .ok()
        .filter(|endpoint| !endpoint.trim().is_empty());
    let provider = match &endpoint {
        Some(endpoint) => {
            // The builder reads the endpoint, headers and timeout from the
            // standard variables itself.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| TelemetryError(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(span_export::Reporting::new(exporter, endpoint.clone()))
                    .with_resource(resource(service))
                    .build(),
            )
        }
        None => None,
    };
    let telemetry = init_with(format, provider);
    if let Some(endpoint) = endpoint {
        let sampler =
            std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_else(|_| "parentbased_always_on".into());
        tracing::info!(%endpoint, %sampler, "exporting traces over OTLP/gRPC");
    }
    Ok(telemetry)
}

/// Like [`init`], with the tracer provider given (tests pass one with an
/// in-memory exporter); `None` exports nothing.
pub fn init_with(format: LogFormat, provider: Option<SdkTracerProvider>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A write error (stderr closed by whoever started us) drops the line;
    // by default the subscriber reports it with `eprintln!`, which panics.
    // Colour only for a person at a terminal: escape codes in a log file
    // or a collector are noise. NO_COLOR (https://no-color.org) turns it off
    // there too.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .log_internal_errors(false);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);
    // Spans go to the exporter whatever RUST_LOG says about log lines: a
    // quieter log must not break traces. Without a provider the layer is
    // absent, so tracing off costs nothing beyond the log filter's own check.
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tributary"))
            .with_filter(LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Telemetry { provider }
}

/// The process's identity in traces: `OTEL_SERVICE_NAME` if set, otherwise
/// `service`. Other `OTEL_RESOURCE_ATTRIBUTES` are read by the SDK.
fn resource(service: &str) -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    Resource::builder().with_service_name(name).build()
}
