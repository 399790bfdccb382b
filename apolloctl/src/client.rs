//! Connections to the services, and the error kind that maps to exit code 2.

use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Channel, Endpoint};

/// A usage mistake the parser could not catch (e.g. a malformed
/// `NAMESPACE/POD`); exits with code 2 like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// A gRPC channel to `url`, connected now, with per-call `timeout`. One
/// attempt: an unreachable server is one error line, not a retry loop.
pub(crate) async fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|_| UsageError(format!("invalid URL {url:?}")))?;
    endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// A gRPC status as one line: `CODE: message`.
pub(crate) fn status_line(what: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

/// Connects to NATS at `url` (one attempt, 3 s).
pub(crate) async fn nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new()
        .name("apolloctl")
        .connection_timeout(Duration::from_secs(3));
    opts.connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}
