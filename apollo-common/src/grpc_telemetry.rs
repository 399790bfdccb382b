//! A tower layer every gRPC server installs with
//! `Server::builder().layer(GrpcTelemetryLayer)`: one server span per call
//! that continues the caller's W3C trace (`traceparent` in the request
//! metadata), and the request count and latency per method and status code.
//!
//! The status is read from the response headers: an error answer carries it
//! there (trailers-only), a successful unary answer carries it in the
//! trailers, so a call without `grpc-status` in its headers counts as `OK`.
//! A stream that fails after it started therefore counts as `OK` here; the
//! services count such failures themselves. For a server stream the span
//! and the latency end with the response headers, not with the stream.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::propagation::Extractor;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::shared_metrics::{code_name, shared, RpcLabels};

/// Longest method path used as a label; longer ones are `unknown`.
const MAX_RPC_LABEL: usize = 128;

/// The layer; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTelemetryLayer;

impl<S> tower::Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry { inner }
    }
}

/// The service [`GrpcTelemetryLayer`] wraps around a gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
}

/// Reads `traceparent` / `tracestate` from HTTP/2 request headers.
struct HttpHeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The remote trace context a caller sent in its request headers.
pub fn extract_http_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeaderExtractor(headers)))
}

fn status_of<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcTelemetry<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The ready service handles this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // Fails only when the span is disabled by the log filter.
        let _ = span.set_parent(extract_http_context(request.headers()));
        let rpc = if path.len() <= MAX_RPC_LABEL {
            path.to_string()
        } else {
            "unknown".to_string()
        };
        let start = Instant::now();
        let future = span.in_scope(|| inner.call(request));
        let record_span = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    Ok(response) => status_of(response),
                    // The transport failed the call; gRPC calls that UNKNOWN.
                    Err(_) => tonic::Code::Unknown,
                };
                // Any path reaches the server; only the ones it serves are
                // worth a label of their own.
                let rpc = if code == tonic::Code::Unimplemented {
                    "unknown".to_string()
                } else {
                    rpc
                };
                let labels = RpcLabels {
                    rpc,
                    code: code_name(code),
                };
                let m = shared();
                m.grpc_requests.get_or_create(&labels).inc();
                m.grpc_duration
                    .get_or_create(&labels)
                    .observe(start.elapsed().as_secs_f64());
                record_span.record("rpc.grpc.status_code", code as i32);
                if code != tonic::Code::Ok {
                    record_span.record("otel.status_code", "ERROR");
                }
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comes_from_headers_and_defaults_to_ok() {
        let ok = http::Response::new(());
        assert_eq!(status_of(&ok), tonic::Code::Ok);
        let err = http::Response::builder()
            .header("grpc-status", "3")
            .body(())
            .unwrap();
        assert_eq!(status_of(&err), tonic::Code::InvalidArgument);
    }
}
