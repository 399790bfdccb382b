//! The services as real child processes (the workspace's binaries beside
//! `apolloctl`), each on fixed loopback ports it keeps across restarts, with
//! its log in a temporary directory that is printed when a wait fails.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Directory of the service binaries: beside `apolloctl`.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_apolloctl"))
        .parent()
        .expect("apolloctl has a directory")
        .to_path_buf()
}

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// One service process.
pub(crate) struct Service {
    name: &'static str,
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// gRPC address.
    pub(crate) grpc: SocketAddr,
    /// `/metrics`, `/readyz` address.
    pub(crate) metrics: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Starts `name` (e.g. `apollo-scheduling`) against `nats_url`, logging
    /// into `dir`, with `env` on top of the ports and the NATS URL.
    pub(crate) fn start(
        name: &'static str,
        dir: &Path,
        nats_url: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let binary = bin_dir().join(name);
        assert!(
            binary.is_file(),
            "{name} missing in {}: run `cargo build --bins` (scripts/test.sh builds the workspace)",
            binary.parent().unwrap().display()
        );
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut all = vec![
            ("APOLLO_GRPC_ADDR".to_string(), grpc.to_string()),
            ("APOLLO_METRICS_ADDR".to_string(), metrics.to_string()),
            ("APOLLO_NATS_URL".to_string(), nats_url.to_string()),
            ("APOLLO_LOG".to_string(), "info".to_string()),
            ("APOLLO_SHUTDOWN_GRACE".to_string(), "5s".to_string()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut s = Self {
            name,
            binary,
            env: all,
            grpc,
            metrics,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        s.spawn();
        s
    }

    /// Starts the process again (same ports, same settings, log appended).
    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the service log");
        let child = Command::new(&self.binary)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Sets `key` for the next [`Service::spawn`].
    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Binary name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The gRPC URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Process id of the running process.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `sig` to the process.
    pub(crate) fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("signal the service");
    }

    /// SIGKILL, and waits until the process is gone.
    pub(crate) fn sigkill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.take().expect("running").wait();
    }

    /// SIGTERM, and waits (at most `timeout`) until the process exited.
    /// Returns the time from the signal to the exit and its status.
    pub(crate) async fn sigterm(
        &mut self,
        timeout: Duration,
    ) -> (Duration, std::process::ExitStatus) {
        self.signal(Signal::SIGTERM);
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("wait for the service") {
                self.child = None;
                return (start.elapsed(), status);
            }
            if start.elapsed() > timeout {
                self.fail(&format!("still running {timeout:?} after SIGTERM"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Panics with `msg` and the last lines of the log.
    pub(crate) fn fail(&self, msg: &str) -> ! {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        panic!("{}: {msg}\n--- log tail ---\n{tail}", self.name)
    }

    /// `GET path` on the metrics server: (status code, body).
    pub(crate) async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(self.metrics).await.ok()?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).await.ok()?;
            let code = buf.split_whitespace().nth(1)?.parse().ok()?;
            let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
            Some((code, body))
        };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .ok()
            .flatten()
    }

    /// Whether `/readyz` answers 200.
    pub(crate) async fn is_ready(&self) -> bool {
        matches!(self.http_get("/readyz").await, Some((200, _)))
    }

    /// Waits until `/readyz` answers 200 (or not, with `ready = false`).
    pub(crate) async fn wait_ready_state(&self, ready: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.is_ready().await != ready {
            if Instant::now() > deadline {
                self.fail(&format!("readiness never became {ready}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a metric sample line starting with `series` (name and
    /// labels exactly as exported), or 0 when absent.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let Some((200, body)) = self.http_get("/metrics").await else {
            self.fail("no /metrics")
        };
        body.lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse::<f64>().ok())?
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after
/// `timeout`. Returns how long it took.
pub(crate) async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
