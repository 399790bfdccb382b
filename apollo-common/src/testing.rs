//! A real NATS server with JetStream for tests.
//!
//! Resolution order: `NATS_URL` if set; else the `nats-server` binary on PATH,
//! started on a free loopback port with a temporary store directory; else a
//! testcontainers `nats` container when a Docker engine is present; else a
//! clear failure naming the install command. Each [`TestNats::bus_args`] call
//! returns unique subject and stream prefixes, so tests share a server and
//! still run in parallel.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::config::{NatsArgs, StreamArgs};

enum Backend {
    External,
    Binary {
        child: Option<Child>,
        port: u16,
        store: tempfile::TempDir,
        binary: PathBuf,
    },
    Container(
        #[allow(dead_code)] Box<testcontainers::ContainerAsync<testcontainers_modules::nats::Nats>>,
    ),
}

/// A NATS server for one test (stopped on drop).
pub struct TestNats {
    url: String,
    backend: Backend,
}

impl std::fmt::Debug for TestNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNats").field("url", &self.url).finish()
    }
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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

fn spawn_binary(binary: &PathBuf, port: u16, store: &std::path::Path) -> std::io::Result<Child> {
    Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

impl TestNats {
    /// Starts (or finds) a NATS server; panics with a clear message when none
    /// can be had, since the test cannot run without one.
    pub async fn start() -> Self {
        if let Ok(url) = std::env::var("NATS_URL") {
            return Self {
                url,
                backend: Backend::External,
            };
        }
        if let Some(binary) = find_binary() {
            let store = tempfile::tempdir().expect("create temp dir for the JetStream store");
            for _ in 0..5 {
                let port = free_port().expect("pick a free port");
                let mut child =
                    spawn_binary(&binary, port, store.path()).expect("start nats-server");
                if wait_listening(port, Duration::from_secs(10)) {
                    return Self {
                        url: format!("nats://127.0.0.1:{port}"),
                        backend: Backend::Binary {
                            child: Some(child),
                            port,
                            store,
                            binary,
                        },
                    };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("nats-server did not start listening");
        }
        if docker_available() {
            use testcontainers::{runners::AsyncRunner, ImageExt};
            use testcontainers_modules::nats::{Nats, NatsServerCmd};
            let cmd = NatsServerCmd::default().with_jetstream();
            let container = Nats::default()
                .with_cmd(&cmd)
                .start()
                .await
                .expect("start the nats container");
            let host = container.get_host().await.expect("container host");
            let port = container
                .get_host_port_ipv4(4222)
                .await
                .expect("container port");
            return Self {
                url: format!("nats://{host}:{port}"),
                backend: Backend::Container(Box::new(container)),
            };
        }
        panic!(
            "these tests need a NATS server with JetStream: set NATS_URL, or install the binary \
             (`apt-get install -y nats-server`), or run a Docker engine for testcontainers"
        );
    }

    /// URL of the server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bus settings with unique subject and stream prefixes (memory storage).
    pub fn bus_args(&self) -> (NatsArgs, StreamArgs) {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let nats = NatsArgs {
            url: self.url.clone(),
            subject_prefix: format!("t{id}"),
            stream_prefix: format!("T{}", id.to_ascii_uppercase()),
            request_timeout: Duration::from_secs(2),
            ..NatsArgs::default()
        };
        let streams = StreamArgs {
            storage: "memory".into(),
            ..StreamArgs::default()
        };
        (nats, streams)
    }

    /// Whether [`stop`](Self::stop)/[`restart`](Self::restart) are supported
    /// (only for a server this helper started from the binary).
    pub fn can_restart(&self) -> bool {
        matches!(self.backend, Backend::Binary { .. })
    }

    /// Stops the server (simulates an outage); returns false if unsupported.
    pub fn stop(&mut self) -> bool {
        if let Backend::Binary { child, .. } = &mut self.backend {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return true;
        }
        false
    }

    /// Starts the server again on the same port and store; returns false if
    /// unsupported or it did not come back.
    pub fn restart(&mut self) -> bool {
        if let Backend::Binary {
            child,
            port,
            store,
            binary,
        } = &mut self.backend
        {
            if child.is_some() {
                return true;
            }
            let Ok(c) = spawn_binary(binary, *port, store.path()) else {
                return false;
            };
            *child = Some(c);
            return wait_listening(*port, Duration::from_secs(10));
        }
        false
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}
