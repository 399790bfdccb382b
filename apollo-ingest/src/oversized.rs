//! Counts unary calls refused for exceeding `--grpc-max-recv-bytes` in the
//! ingest metrics.
//!
//! tonic refuses such a request with OUT_OF_RANGE while decoding, before the
//! handler runs, so the refusal is only visible on the response (the status
//! of a trailers-only response is in its headers). Client streams see the
//! error in the handler and count it there.

use std::task::{Context, Poll};

use tonic::{
    codegen::{http, BoxFuture, Service},
    server::NamedService,
};

use crate::{
    metrics::{Kind, Metrics},
    service::TOO_LARGE_REASON,
};

/// Wraps the generated `InsightServiceServer`.
#[derive(Debug, Clone)]
pub(crate) struct CountOversized<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> CountOversized<S> {
    pub(crate) fn new(inner: S, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S: apollo_common::shell::MessageLimits> apollo_common::shell::MessageLimits
    for CountOversized<S>
{
    fn limit_message_sizes(self, max_recv: usize, max_send: usize) -> Self {
        Self {
            inner: self.inner.limit_message_sizes(max_recv, max_send),
            metrics: self.metrics,
        }
    }
}

impl<S: NamedService> NamedService for CountOversized<S> {
    const NAME: &'static str = S::NAME;
}

fn unary_kind(path: &str) -> Option<Kind> {
    match path.rsplit('/').next() {
        Some("ReportWorkloadSignature") => Some(Kind::Workload),
        Some("ReportClusterInsight") => Some(Kind::Cluster),
        _ => None,
    }
}

impl<S, B, R> Service<http::Request<B>> for CountOversized<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let kind = unary_kind(req.uri().path());
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(kind) = kind {
                let out_of_range = resp
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|v| v.as_bytes() == b"11");
                if out_of_range {
                    metrics.received(kind);
                    metrics.rejected(kind, TOO_LARGE_REASON.to_string());
                }
            }
            Ok(resp)
        })
    }
}
