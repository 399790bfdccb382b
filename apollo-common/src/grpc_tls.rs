//! TLS and mutual TLS for every gRPC server, with certificates reloaded from
//! disk when they change.
//!
//! TLS is terminated here with tokio-rustls rather than by tonic's
//! `ServerTlsConfig`, because tonic's config takes a fixed identity: rotating
//! a certificate would need a restart. [`ReloadingCertResolver`] re-reads the
//! certificate and key when their modification time or size changes (checked
//! at most once per `recheck` interval), so new connections get the new
//! certificate while open ones keep theirs.

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use clap::Args;
use futures::Stream;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How often, at most, the certificate files are checked for changes.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(5);

/// How long a client may take to finish the TLS handshake before its
/// connection is dropped, so half-open connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of a service's gRPC server. Without a certificate the server
/// speaks plaintext HTTP/2 (h2c), which is what the deployed peers dial.
#[derive(Debug, Clone, Default, Args)]
pub struct GrpcTlsArgs {
    /// Server certificate chain (PEM) for the gRPC server; with
    /// `--tls-key`, enables TLS. Reloaded when the file changes.
    #[arg(long = "tls-cert", env = "APOLLO_TLS_CERT", requires = "server_key")]
    pub server_cert: Option<PathBuf>,
    /// Private key (PEM) of the gRPC server certificate. Reloaded when the
    /// file changes.
    #[arg(long = "tls-key", env = "APOLLO_TLS_KEY", requires = "server_cert")]
    pub server_key: Option<PathBuf>,
    /// CA bundle (PEM): when set, gRPC clients must present a certificate
    /// signed by it (mutual TLS). Needs `--tls-cert`.
    #[arg(
        long = "tls-client-ca",
        env = "APOLLO_TLS_CLIENT_CA",
        requires = "server_cert"
    )]
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS settings cannot be used. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which setting the file belongs to.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("invalid {what} {path}: {reason}")]
    Invalid {
        /// Which setting the file belongs to.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the combination of settings.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            what,
            path: path.to_owned(),
            reason: "no PEM CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Reads and checks the certificate chain and key, and pairs them.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs("TLS certificate", cert)?;
    let key_pem = read_file("TLS key", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
        what: "TLS key",
        path: key.to_owned(),
        reason: format!("no usable PEM private key ({e})"),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Invalid {
            what: "TLS key",
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Invalid {
        what: "TLS key",
        path: key.to_owned(),
        reason: format!("does not match the certificate {}: {e}", cert.display()),
    })?;
    Ok(certified)
}

/// What identifies one version of a file on disk.
type FileStamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> FileStamp {
    std::fs::metadata(path)
        .map(|m| (m.modified().ok(), m.len()))
        .unwrap_or((None, 0))
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (FileStamp, FileStamp),
    checked: Instant,
}

/// Serves the certificate in `cert`/`key`, re-reading both when either file
/// changes. A rotation that leaves the files unreadable or mismatched (for
/// example between the two writes) keeps the previous certificate and is
/// retried at the next check.
#[derive(Debug)]
pub struct ReloadingCertResolver {
    cert: PathBuf,
    key: PathBuf,
    recheck: Duration,
    loaded: Mutex<Loaded>,
}

impl ReloadingCertResolver {
    /// Loads the files now; fails with the file at fault if they are unusable.
    pub fn new(cert: PathBuf, key: PathBuf, recheck: Duration) -> Result<Self, TlsError> {
        let stamps = (stamp(&cert), stamp(&key));
        let certified = load_certified_key(&cert, &key)?;
        Ok(Self {
            cert,
            key,
            recheck,
            loaded: Mutex::new(Loaded {
                key: Arc::new(certified),
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to serve now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= self.recheck {
            loaded.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            if stamps != loaded.stamps {
                match load_certified_key(&self.cert, &self.key) {
                    Ok(certified) => {
                        tracing::info!(cert = %self.cert.display(), "gRPC TLS certificate reloaded");
                        loaded.key = Arc::new(certified);
                        loaded.stamps = stamps;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC TLS certificate changed but cannot be loaded; keeping the previous one");
                    }
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A ready server-side TLS configuration.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Builds the TLS configuration from the flags; `None` when TLS is off.
    /// Every file is read now, so a bad file stops the service at start-up.
    pub fn from_args(args: &GrpcTlsArgs) -> Result<Option<Self>, TlsError> {
        Self::from_args_with_recheck(args, DEFAULT_RECHECK)
    }

    /// As [`ServerTls::from_args`], checking the files for changes at most
    /// every `recheck`.
    pub fn from_args_with_recheck(
        args: &GrpcTlsArgs,
        recheck: Duration,
    ) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&args.server_cert, &args.server_key) else {
            return match (&args.server_cert, &args.server_key, &args.client_ca) {
                (None, None, None) => Ok(None),
                (Some(p), None, _) | (None, Some(p), _) | (None, None, Some(p)) => {
                    Err(TlsError::Invalid {
                        what: "TLS setting",
                        path: p.clone(),
                        reason: "TLS needs both APOLLO_TLS_CERT and APOLLO_TLS_KEY".into(),
                    })
                }
                _ => unreachable!("both set is handled above"),
            };
        };
        let resolver = ReloadingCertResolver::new(cert.clone(), key.clone(), recheck)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &args.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs("TLS client CA", ca)? {
                    roots.add(c).map_err(|e| TlsError::Invalid {
                        what: "TLS client CA",
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::Invalid {
                            what: "TLS client CA",
                            path: ca.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Self {
            config: Arc::new(config),
        }))
    }
}

/// One accepted gRPC connection, plaintext or TLS.
#[derive(Debug)]
pub enum GrpcConn {
    /// Plaintext HTTP/2 (h2c).
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl GrpcConn {
    fn tcp(&self) -> &TcpStream {
        match self {
            GrpcConn::Plain(s) => s,
            GrpcConn::Tls(s) => s.get_ref().0,
        }
    }
}

impl Connected for GrpcConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        let tcp = self.tcp();
        TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_flush(cx),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            GrpcConn::Plain(s) => s.is_write_vectored(),
            GrpcConn::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepted connections, for `serve_with_incoming_shutdown`.
pub type GrpcIncoming = Pin<Box<dyn Stream<Item = io::Result<GrpcConn>> + Send>>;

/// Incoming gRPC connections from an already bound listener, with
/// `TCP_NODELAY`; with `tls`, each connection completes its TLS handshake in
/// its own task (a slow client never holds up the others) and failed
/// handshakes are logged and dropped rather than ending the server.
pub fn incoming(listener: TcpListener, tls: Option<&ServerTls>) -> GrpcIncoming {
    use futures::StreamExt;
    let plain = crate::grpc::incoming(listener);
    let Some(tls) = tls else {
        return Box::pin(plain.map(|r| r.map(GrpcConn::Plain)));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<GrpcConn>>(64);
    tokio::spawn(async move {
        let mut plain = plain;
        loop {
            let tcp = tokio::select! {
                _ = tx.closed() => return,
                next = plain.next() => match next {
                    Some(Ok(tcp)) => tcp,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        continue;
                    }
                    None => return,
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(GrpcConn::Tls(Box::new(stream)))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(?peer, error = %e, "gRPC TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::info!(?peer, "gRPC TLS handshake timed out");
                    }
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
