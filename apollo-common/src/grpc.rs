//! gRPC server plumbing every service uses the same way.

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// Server reflection over APOLLO's descriptor set plus gRPC health, so
/// `grpcurl` works against any APOLLO service without local protos.
pub fn reflection_service(
) -> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(apollo_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// Incoming connections from an already bound listener (so tests can bind
/// `127.0.0.1:0`), with `TCP_NODELAY`: small unary answers must not wait for
/// Nagle plus delayed ACK (about 40 ms per call otherwise).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Answers every new call except gRPC health and reflection with
/// UNAVAILABLE once `stopping` is cancelled, for the pre-stop window
/// between the start of a shutdown and the server's refusal of new streams
/// (see [`pre_stop_window`]). A client thus gets a status it knows to retry
/// elsewhere, not a reset stream or a refused connection, while load
/// balancers and probes see NOT_SERVING and stop sending. Calls already
/// running when shutdown starts are not touched.
#[derive(Debug, Clone)]
pub struct StopGateLayer {
    stopping: tokio_util::sync::CancellationToken,
}

impl StopGateLayer {
    /// A gate that closes when `stopping` is cancelled.
    pub fn new(stopping: tokio_util::sync::CancellationToken) -> Self {
        Self { stopping }
    }
}

impl<S> tower_layer::Layer<S> for StopGateLayer {
    type Service = StopGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StopGate {
            inner,
            stopping: self.stopping.clone(),
        }
    }
}

/// A service behind [`StopGateLayer`].
#[derive(Debug, Clone)]
pub struct StopGate<S> {
    inner: S,
    stopping: tokio_util::sync::CancellationToken,
}

/// Message of the UNAVAILABLE answer while stopping.
pub const SHUTTING_DOWN: &str = "shutting down; retry on another replica";

/// Paths answered while stopping: health (so clients see NOT_SERVING) and
/// reflection.
fn answered_while_stopping(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for StopGate<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        if self.stopping.is_cancelled() && !answered_while_stopping(req.uri().path()) {
            tracing::debug!(path = req.uri().path(), "call refused: shutting down");
            let refused = tonic::Status::unavailable(SHUTTING_DOWN).into_http();
            return Box::pin(async move { Ok(refused) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// How long a stopping server keeps answering with UNAVAILABLE before it
/// refuses new streams: `--shutdown-pre-stop`, at most half the grace period
/// (the other half is for the calls in progress and the clean-up).
pub fn pre_stop_window(
    pre_stop: std::time::Duration,
    grace: std::time::Duration,
) -> std::time::Duration {
    pre_stop.min(grace / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_pre_stop_window_leaves_half_the_grace_period() {
        let s = Duration::from_secs;
        assert_eq!(pre_stop_window(s(1), s(20)), s(1));
        assert_eq!(pre_stop_window(s(5), s(2)), s(1));
        assert_eq!(pre_stop_window(Duration::ZERO, s(2)), Duration::ZERO);
    }

    #[test]
    fn only_health_and_reflection_are_answered_while_stopping() {
        assert!(answered_while_stopping("/grpc.health.v1.Health/Check"));
        assert!(answered_while_stopping(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!answered_while_stopping(
            "/apollo.SchedulingPolicyService/GetSchedulingPolicy"
        ));
    }
}
