//! Logging and tracing setup, one call per service.
//!
//! Traces are exported with OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (the standard OpenTelemetry variable), so the default needs no collector.
//! The W3C trace-context propagator is always installed so `traceparent`
//! headers are read and written on gRPC and NATS either way.

use std::sync::{Mutex, OnceLock};

pub use opentelemetry::trace::SpanContext;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    fmt::MakeWriter, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer,
    Registry,
};

use crate::{
    config::ObservabilityArgs,
    shared_metrics::{shared, OutcomeLabels},
};

/// Span attribute naming the trace of the workload signature a decision
/// used (searchable as a tag in Jaeger).
pub const SIGNATURE_TRACE_ATTRIBUTE: &str = "apollo.signature.trace_id";

/// Flushes pending spans when dropped; keep it alive for the life of `main`.
#[must_use = "dropping the guard flushes and stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("failed to flush traces: {err}");
            }
        }
    }
}

/// Errors of telemetry set-up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter did not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// Parser error.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("failed to build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already installed.
    #[error("tracing was already initialised: {0}")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
    /// The new log filter could not be installed.
    #[error("failed to change the log filter: {0}")]
    Reload(String),
}

/// Changes the log filter of the running process (`PUT /loglevel`).
pub struct LogFilterHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl std::fmt::Debug for LogFilterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFilterHandle")
            .field("current", &self.current())
            .finish()
    }
}

impl LogFilterHandle {
    /// The filter in force, as it was given.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the filter (tracing `EnvFilter` syntax); a filter that does
    /// not parse leaves the current one in force. Counted either way.
    pub fn set(&self, filter: &str) -> Result<(), TelemetryError> {
        let outcome = |outcome| {
            shared()
                .log_filter_changes
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        };
        let parsed = EnvFilter::try_new(filter).map_err(|source| {
            outcome("rejected");
            TelemetryError::Filter {
                filter: filter.to_string(),
                source,
            }
        })?;
        self.handle.reload(parsed).map_err(|e| {
            outcome("rejected");
            TelemetryError::Reload(e.to_string())
        })?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        outcome("applied");
        tracing::info!(filter, "log filter changed");
        Ok(())
    }
}

static LOG_FILTER: OnceLock<LogFilterHandle> = OnceLock::new();

/// The log filter of this process, once [`init`] installed the subscriber.
pub fn log_filter() -> Option<&'static LogFilterHandle> {
    LOG_FILTER.get()
}

/// Installs the global subscriber (text or JSON logs on stdout, OTLP traces
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
pub fn init(
    service_name: &'static str,
    args: &ObservabilityArgs,
) -> Result<TelemetryGuard, TelemetryError> {
    let provider = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service_name).build())
                .build(),
        )
    } else {
        None
    };
    init_with(service_name, args, provider, std::io::stdout)
}

/// [`init`] with a given tracer provider and log writer: tests export spans
/// to memory and read the log lines back.
pub fn init_with<W>(
    service_name: &'static str,
    args: &ObservabilityArgs,
    provider: Option<SdkTracerProvider>,
    writer: W,
) -> Result<TelemetryGuard, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&args.log_filter).map_err(|source| TelemetryError::Filter {
        filter: args.log_filter.clone(),
        source,
    })?;
    let (filter, handle) = reload::Layer::new(filter);
    let fmt_layer = if args.log_format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_target(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_writer(writer)
            .boxed()
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()?;
    // First initialisation wins, like the global subscriber itself.
    let _ = LOG_FILTER.set(LogFilterHandle {
        handle,
        current: Mutex::new(args.log_filter.clone()),
    });
    Ok(TelemetryGuard { provider })
}

/// The OpenTelemetry span context of the current `tracing` span (invalid
/// when traces are not exported).
pub fn current_span_context() -> SpanContext {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone()
}

/// Makes `span` a child of `parent`, a span recorded earlier (e.g. the
/// consumption of the insight a forecast was computed from), so work done
/// later on that data joins its trace. Does nothing for an invalid context.
pub fn set_remote_parent(span: &tracing::Span, parent: &SpanContext) {
    if parent.is_valid() {
        // Fails only when the span is disabled by the log filter.
        let _ =
            span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent.clone()));
    }
}

/// Records on the current span that it used data produced in the trace
/// `used`: a span link (Jaeger shows it as a reference) and the
/// [`SIGNATURE_TRACE_ATTRIBUTE`]-style attribute `key` with the trace id,
/// so the other trace can be found by tag. Does nothing for an invalid
/// context (data that arrived without a trace).
pub fn link_current_span(used: &SpanContext, key: &'static str) {
    if !used.is_valid() {
        return;
    }
    let span = tracing::Span::current();
    span.add_link(used.clone());
    span.set_attribute(key, used.trace_id().to_string());
}
