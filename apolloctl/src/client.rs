//! Connections to the services, and the error kind that maps to exit code 2.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use anyhow::Context as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A usage mistake the parser could not catch (e.g. a malformed
/// `NAMESPACE/POD`); exits with code 2 like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// TLS for every gRPC connection apolloctl makes, matching the servers'
/// `APOLLO_TLS_CERT` / `APOLLO_TLS_KEY` / `APOLLO_TLS_CLIENT_CA`. The names
/// differ from the servers' on purpose: `APOLLO_TLS_CERT` is a server's own
/// certificate, while apolloctl presents a client certificate.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ClientTlsArgs {
    /// CA bundle (PEM) that signed the servers' certificates; enables TLS
    /// for every gRPC endpoint (`http://` endpoints are dialled as
    /// `https://`).
    #[arg(long = "tls-ca", env = "APOLLO_TLS_CA", global = true)]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for servers that require mutual TLS
    /// (`APOLLO_TLS_CLIENT_CA` on the server). Needs `--tls-client-key`.
    #[arg(
        long = "tls-client-cert",
        env = "APOLLO_TLS_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(
        long = "tls-client-key",
        env = "APOLLO_TLS_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,
    /// Name the server certificate must carry, when it differs from the
    /// endpoint's host (e.g. dialling an IP address or a port-forward).
    #[arg(
        long = "tls-server-name",
        env = "APOLLO_TLS_SERVER_NAME",
        global = true
    )]
    pub(crate) server_name: Option<String>,
}

/// The TLS client configuration of this run, loaded once from the files.
#[derive(Debug, Clone)]
struct ClientTls {
    config: ClientTlsConfig,
}

/// Set once by [`configure_tls`]; `None` inside means plaintext.
static CLIENT_TLS: OnceLock<Option<ClientTls>> = OnceLock::new();

fn read_pem(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let body =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !body.windows(11).any(|w| w == b"-----BEGIN ") {
        anyhow::bail!("invalid {what} {}: no PEM block found", path.display());
    }
    Ok(body)
}

/// Loads the TLS settings for every later [`channel`]. Files are read and
/// checked now, so a wrong path fails before any connection is tried.
pub(crate) fn configure_tls(args: &ClientTlsArgs) -> anyhow::Result<()> {
    let tls = match (&args.ca, &args.client_cert, &args.client_key) {
        (None, None, None) => {
            if args.server_name.is_some() {
                return Err(
                    UsageError("--tls-server-name needs --tls-ca (APOLLO_TLS_CA)".into()).into(),
                );
            }
            None
        }
        (None, _, _) => {
            return Err(UsageError(
                "--tls-client-cert needs --tls-ca (APOLLO_TLS_CA) to verify the server".into(),
            )
            .into())
        }
        (Some(ca), cert, key) => {
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem("TLS CA", ca)?));
            if let (Some(cert), Some(key)) = (cert, key) {
                config = config.identity(Identity::from_pem(
                    read_pem("TLS client certificate", cert)?,
                    read_pem("TLS client key", key)?,
                ));
            }
            if let Some(name) = &args.server_name {
                config = config.domain_name(name.clone());
            }
            Some(ClientTls { config })
        }
    };
    // A second call (never made by main) keeps the first settings.
    let _ = CLIENT_TLS.set(tls);
    Ok(())
}

fn client_tls() -> Option<&'static ClientTls> {
    CLIENT_TLS.get().and_then(Option::as_ref)
}

/// The endpoint for `url` with this run's TLS settings: with TLS, an
/// `http://` URL is dialled as `https://`; an `https://` URL without TLS
/// settings is a usage error, since there is nothing to verify the server
/// against.
fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    let invalid = || UsageError(format!("invalid URL {url:?}"));
    match client_tls() {
        None => {
            if url.starts_with("https://") {
                return Err(UsageError(format!(
                    "{url} is https: give the CA that signed its certificate with --tls-ca (APOLLO_TLS_CA)"
                ))
                .into());
            }
            Ok(Endpoint::from_shared(url.to_string()).map_err(|_| invalid())?)
        }
        Some(tls) => {
            let url = match url.strip_prefix("http://") {
                Some(rest) => format!("https://{rest}"),
                None => url.to_string(),
            };
            Endpoint::from_shared(url.clone())
                .map_err(|_| invalid())?
                .tls_config(tls.config.clone())
                .with_context(|| format!("TLS settings for {url}"))
        }
    }
}

/// A gRPC channel to `url`, connected now, with per-call `timeout`. One
/// attempt: an unreachable server is one error line, not a retry loop.
pub(crate) async fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    endpoint(url)?
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
