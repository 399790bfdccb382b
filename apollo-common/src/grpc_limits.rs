//! Limits of every gRPC server: message sizes, calls in progress and a
//! request rate per client, each refused with RESOURCE_EXHAUSTED and a
//! message naming the limit, and counted in `apollo_grpc_rejected_total`.
//!
//! The defaults never bite normal load: the AI-Storage Scheduler calls the
//! scheduling engine once per pod on its hot path, thousands of times a
//! second from a handful of addresses, each call taking well under a
//! millisecond. They stop one misbehaving client from starving the others.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use clap::Args;
use http_body_util::BodyExt;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::Semaphore;
use tonic::{
    body::Body,
    codegen::{http, BoxFuture, Service},
    transport::server::TcpConnectInfo,
    Code, Status,
};

/// Clients whose rate is tracked at once; beyond it, clients that are back
/// to a full allowance are forgotten first.
const MAX_TRACKED_CLIENTS: usize = 65_536;

/// Limits of the gRPC server, shared by every service.
#[derive(Debug, Clone, Args)]
pub struct GrpcLimitArgs {
    /// Largest request message the gRPC server decodes, in bytes; larger
    /// ones are refused with RESOURCE_EXHAUSTED.
    #[arg(
        long = "grpc-max-recv-bytes",
        env = "APOLLO_GRPC_MAX_RECV_BYTES",
        default_value_t = 4 * 1024 * 1024
    )]
    pub max_recv_bytes: usize,
    /// Largest response message the gRPC server sends, in bytes; a larger
    /// answer fails with RESOURCE_EXHAUSTED instead of being sent.
    #[arg(
        long = "grpc-max-send-bytes",
        env = "APOLLO_GRPC_MAX_SEND_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub max_send_bytes: usize,
    /// gRPC calls in progress at once over all clients (a call counts until
    /// its response starts); more are refused with RESOURCE_EXHAUSTED.
    /// 0 = no limit.
    #[arg(
        long = "grpc-max-concurrent-calls",
        env = "APOLLO_GRPC_MAX_CONCURRENT_CALLS",
        default_value_t = 10_000
    )]
    pub max_concurrent_calls: usize,
    /// gRPC calls per second allowed to one client (peer IP address) on
    /// average; calls over it are refused with RESOURCE_EXHAUSTED. 0 = no
    /// limit.
    #[arg(
        long = "grpc-client-rate",
        env = "APOLLO_GRPC_CLIENT_RATE",
        default_value_t = 20_000.0
    )]
    pub client_rate: f64,
    /// Calls one client may make in a burst above its rate.
    #[arg(
        long = "grpc-client-burst",
        env = "APOLLO_GRPC_CLIENT_BURST",
        default_value_t = 40_000
    )]
    pub client_burst: u32,
}

impl GrpcLimitArgs {
    /// Checks the values clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_recv_bytes < 1024 || self.max_send_bytes < 1024 {
            return Err(format!(
                "--grpc-max-recv-bytes ({}) and --grpc-max-send-bytes ({}) must be at least 1024",
                self.max_recv_bytes, self.max_send_bytes
            ));
        }
        if !(self.client_rate.is_finite() && self.client_rate >= 0.0) {
            return Err(format!(
                "--grpc-client-rate must be a non-negative number, got {}",
                self.client_rate
            ));
        }
        if self.client_rate > 0.0 && self.client_burst == 0 {
            return Err("--grpc-client-burst must be at least 1 when a rate is set".into());
        }
        Ok(())
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Rejection {
    /// The client is over `--grpc-client-rate`.
    ClientRate,
    /// `--grpc-max-concurrent-calls` calls are in progress.
    Concurrency,
    /// The request message is over `--grpc-max-recv-bytes`.
    RequestTooLarge,
    /// The response message is over `--grpc-max-send-bytes`.
    ResponseTooLarge,
}

impl Rejection {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientRate => "client_rate",
            Self::Concurrency => "concurrency",
            Self::RequestTooLarge => "request_too_large",
            Self::ResponseTooLarge => "response_too_large",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `apollo_grpc_rejected_total{reason}`.
#[derive(Clone, Debug, Default)]
pub struct LimitMetrics {
    rejected: Family<ReasonLabel, Counter>,
}

impl LimitMetrics {
    /// Registers the counter.
    /// Every reason starts at zero.
    pub fn register(registry: &mut Registry) -> Self {
        let me = Self::default();
        for why in [
            Rejection::ClientRate,
            Rejection::Concurrency,
            Rejection::RequestTooLarge,
            Rejection::ResponseTooLarge,
        ] {
            let _ = me.rejected.get_or_create(&ReasonLabel {
                reason: why.label(),
            });
        }
        registry.register(
            "apollo_grpc_rejected",
            "gRPC calls refused with RESOURCE_EXHAUSTED by a server limit, by reason",
            me.rejected.clone(),
        );
        me
    }

    fn count(&self, why: Rejection) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    /// Calls refused for `why` so far.
    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .get()
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per client address.
#[derive(Debug)]
struct ClientRates {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl ClientRates {
    fn refill(&self, b: &Bucket, now: Instant) -> f64 {
        (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.rate).min(self.burst)
    }

    /// Takes one call from `client`'s allowance; false when none is left.
    fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            // A full bucket is the same as no bucket: forget those.
            buckets.retain(|_, b| self.refill(b, now) < self.burst);
            if buckets.len() >= MAX_TRACKED_CLIENTS {
                tracing::warn!(
                    clients = buckets.len(),
                    "too many clients to track their rate; not limiting a new one"
                );
                return true;
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        bucket.tokens = self.refill(bucket, now);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Shared {
    args: GrpcLimitArgs,
    rates: Option<ClientRates>,
    calls: Option<Arc<Semaphore>>,
    metrics: LimitMetrics,
}

/// The tower layer enforcing [`GrpcLimitArgs`] on every call of a server.
#[derive(Debug, Clone)]
pub struct GrpcLimitsLayer {
    shared: Arc<Shared>,
}

impl GrpcLimitsLayer {
    /// A layer with these limits, counting refusals in `metrics`.
    pub fn new(args: &GrpcLimitArgs, metrics: LimitMetrics) -> Self {
        let rates = (args.client_rate > 0.0).then(|| ClientRates {
            rate: args.client_rate,
            burst: f64::from(args.client_burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        });
        let calls = (args.max_concurrent_calls > 0)
            .then(|| Arc::new(Semaphore::new(args.max_concurrent_calls)));
        Self {
            shared: Arc::new(Shared {
                args: args.clone(),
                rates,
                calls,
                metrics,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for GrpcLimitsLayer {
    type Service = GrpcLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcLimits {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service behind [`GrpcLimitsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcLimits<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    fn refuse(&self, why: Rejection, message: String) -> http::Response<Body> {
        self.metrics.count(why);
        tracing::debug!(reason = why.label(), %message, "gRPC call refused");
        Status::resource_exhausted(message).into_http()
    }

    /// The status replacing tonic's OUT_OF_RANGE for a message over a size
    /// limit, or `None` when `status` is something else.
    fn oversize(&self, status: &Status) -> Option<(Rejection, Status)> {
        if status.code() != Code::OutOfRange {
            return None;
        }
        let msg = status.message();
        let (why, what, limit, flag) = if msg.contains("decoded message length too large") {
            (
                Rejection::RequestTooLarge,
                "request",
                self.args.max_recv_bytes,
                "--grpc-max-recv-bytes",
            )
        } else if msg.contains("encoded message length too large") {
            (
                Rejection::ResponseTooLarge,
                "response",
                self.args.max_send_bytes,
                "--grpc-max-send-bytes",
            )
        } else {
            return None;
        };
        let found = msg
            .split("found ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?");
        Some((
            why,
            Status::resource_exhausted(format!(
                "{what} message of {found} bytes is over the server's limit of {limit} bytes ({flag}); {msg}"
            )),
        ))
    }

    /// Rewrites an oversize OUT_OF_RANGE in `headers` to RESOURCE_EXHAUSTED.
    fn rewrite(&self, headers: &mut http::HeaderMap) {
        let Some(status) = Status::from_header_map(headers) else {
            return;
        };
        if let Some((why, replacement)) = self.oversize(&status) {
            headers.remove("grpc-status-details-bin");
            if replacement.add_header(headers).is_ok() {
                self.metrics.count(why);
            }
        }
    }
}

impl<S, B> Service<http::Request<B>> for GrpcLimits<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        if let Some(rates) = &shared.rates {
            let client = req
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(|c| c.remote_addr())
                .map(|a| a.ip());
            if let Some(client) = client {
                if !rates.allow(client, Instant::now()) {
                    let refused = shared.refuse(
                        Rejection::ClientRate,
                        format!(
                            "client {client} is over its rate of {} calls/s (burst {}, --grpc-client-rate); retry later",
                            shared.args.client_rate, shared.args.client_burst
                        ),
                    );
                    return Box::pin(async move { Ok(refused) });
                }
            }
        }
        let permit = match &shared.calls {
            None => None,
            Some(calls) => match calls.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let refused = shared.refuse(
                        Rejection::Concurrency,
                        format!(
                            "server is at its limit of {} concurrent calls (--grpc-max-concurrent-calls); retry later",
                            shared.args.max_concurrent_calls
                        ),
                    );
                    return Box::pin(async move { Ok(refused) });
                }
            },
        };
        // The clone takes the readiness the caller polled (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            drop(permit);
            // A decoding error of a unary call is a trailers-only response
            // (status in the headers); others end in the trailers.
            shared.rewrite(resp.headers_mut());
            let (parts, body) = resp.into_parts();
            let body = body.map_frame(move |mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    shared.rewrite(trailers);
                }
                frame
            });
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(flags: &[&str]) -> GrpcLimitArgs {
        crate::config::parse_flags::<GrpcLimitArgs>(flags).unwrap()
    }

    #[test]
    fn defaults_validate_and_bad_values_are_refused() {
        let a = args(&[]);
        a.validate().unwrap();
        assert_eq!(a.max_recv_bytes, 4 * 1024 * 1024);
        assert!(args(&["--grpc-max-recv-bytes", "10"]).validate().is_err());
        assert!(args(&["--grpc-client-rate", "NaN"]).validate().is_err());
        assert!(args(&["--grpc-client-burst", "0"]).validate().is_err());
        assert!(
            args(&["--grpc-client-rate", "0", "--grpc-client-burst", "0"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let rates = ClientRates {
            rate: 10.0,
            burst: 3.0,
            buckets: Mutex::new(HashMap::new()),
        };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!((0..3).all(|_| rates.allow(a, t0)));
        assert!(!rates.allow(a, t0), "burst used up");
        assert!(rates.allow(b, t0), "another client keeps its own allowance");
        assert!(
            !rates.allow(a, t0 + Duration::from_millis(50)),
            "half a token"
        );
        assert!(rates.allow(a, t0 + Duration::from_millis(110)), "refilled");
    }

    #[test]
    fn oversize_statuses_become_resource_exhausted_with_the_limit() {
        let layer = GrpcLimitsLayer::new(
            &args(&["--grpc-max-recv-bytes", "2048"]),
            LimitMetrics::default(),
        );
        let shared = &layer.shared;
        let tonic_says = Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 2048 bytes",
        );
        let (why, st) = shared.oversize(&tonic_says).unwrap();
        assert_eq!(why, Rejection::RequestTooLarge);
        assert_eq!(st.code(), Code::ResourceExhausted);
        assert!(st.message().contains("request message of 5000 bytes"));
        assert!(st.message().contains("limit of 2048 bytes"));
        let mut headers = http::HeaderMap::new();
        tonic_says.add_header(&mut headers).unwrap();
        shared.rewrite(&mut headers);
        let rewritten = Status::from_header_map(&headers).unwrap();
        assert_eq!(rewritten.code(), Code::ResourceExhausted);
        assert_eq!(shared.metrics.rejected(Rejection::RequestTooLarge), 1);
        assert!(shared
            .oversize(&Status::out_of_range("page 3 of 2"))
            .is_none());
        assert!(shared.oversize(&Status::internal("boom")).is_none());
    }
}
