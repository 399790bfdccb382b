//! W3C trace context in NATS headers.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Reads trace context out of NATS headers.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes `traceparent` for the current span. Without an active OpenTelemetry
/// trace a fresh (unsampled) one is started, so every message can still be
/// correlated across services.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
    if headers.get("traceparent").is_none() {
        let trace = uuid::Uuid::new_v4().simple().to_string();
        let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
        headers.insert("traceparent", format!("00-{trace}-{span}-00").as_str());
    }
}

/// The span to handle one consumed message in: a consumer span whose parent
/// is the trace the message carries, so the publisher's trace continues in
/// the consuming service.
pub fn consume_span(
    subject: &str,
    family: &'static str,
    headers: Option<&HeaderMap>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "bus.consume",
        otel.name = %format_args!("{family} process"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = subject,
    );
    // Fails only when the span is disabled by the log filter.
    let _ = span.set_parent(extract_context(headers));
    span
}

/// The remote parent context carried by a message, for `span.set_parent`.
pub fn extract_context(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(h) => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(h)))
        }
        None => opentelemetry::Context::new(),
    }
}
