//! A real NATS server with JetStream for tests.
//!
//! Resolution order: `NATS_URL` if set; else the `nats-server` binary on PATH,
//! started on a free loopback port with a temporary store directory; else a
//! testcontainers `nats` container when a Docker engine is present; else a
//! clear failure naming the install command. Each [`TestNats::bus_args`] call
//! returns unique subject and stream prefixes, so tests share a server and
//! still run in parallel. [`TestNatsCluster`] starts a JetStream cluster of
//! servers that can each be killed and restarted.

use std::{path::PathBuf, process::Child, time::Duration};

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

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
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
        if let Some(binary) = crate::nats_server::find_binary() {
            let store = tempfile::tempdir().expect("create temp dir for the JetStream store");
            let (child, port) = crate::nats_server::spawn(&binary, None, store.path())
                .unwrap_or_else(|e| panic!("failed to start {}: {e}", binary.display()));
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
            let Ok((c, _)) = crate::nats_server::spawn(binary, Some(*port), store.path()) else {
                return false;
            };
            *child = Some(c);
            return true;
        }
        false
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One server of a [`TestNatsCluster`].
struct ClusterServer {
    name: String,
    port: u16,
    cluster_port: u16,
    store: PathBuf,
    child: Option<Child>,
}

/// A JetStream cluster of nats-server processes on loopback (each with its
/// own store directory), for fault tests: any server can be killed and
/// started again on the same ports and store. Stopped on drop.
pub struct TestNatsCluster {
    binary: PathBuf,
    servers: Vec<ClusterServer>,
    _root: tempfile::TempDir,
}

impl std::fmt::Debug for TestNatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNatsCluster")
            .field("url", &self.url())
            .finish()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

impl TestNatsCluster {
    /// Starts `size` clustered servers from the `nats-server` binary; `None`
    /// when there is no binary to start (e.g. only `NATS_URL` is given).
    pub fn start(size: usize) -> Option<Self> {
        let binary = crate::nats_server::find_binary()?;
        let root = tempfile::tempdir().expect("create temp dir for the cluster stores");
        let servers: Vec<ClusterServer> = (0..size)
            .map(|i| ClusterServer {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                store: root.path().join(format!("n{i}")),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            binary,
            servers,
            _root: root,
        };
        for i in 0..size {
            assert!(cluster.restart(i), "cluster server {i} did not start");
        }
        Some(cluster)
    }

    /// Client URLs of every server, comma separated (what services take).
    pub fn url(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.server_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URL of server `i`.
    pub fn server_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    /// Kills server `i` (SIGKILL: nothing flushed, like a crash).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its ports and store; false if it did not
    /// come up.
    pub fn restart(&mut self, i: usize) -> bool {
        if self.servers[i].child.is_some() {
            return true;
        }
        let routes: Vec<u16> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| s.cluster_port)
            .collect();
        let s = &self.servers[i];
        match crate::nats_server::spawn_cluster_node(
            &self.binary,
            &s.name,
            s.port,
            s.cluster_port,
            &routes,
            &s.store,
        ) {
            Ok(child) => {
                self.servers[i].child = Some(child);
                true
            }
            Err(err) => {
                eprintln!("cluster server {i}: {err}");
                false
            }
        }
    }
}

impl Drop for TestNatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.stop(i);
        }
    }
}

/// Subscribes to `subject` and returns only once the server has registered
/// the interest. `Client::flush` only flushes the socket; a message published
/// right after on another connection could otherwise arrive before the
/// subscription exists. Subscriptions on one connection are processed in
/// order, so a round trip through a second, private subscription is the
/// barrier.
pub async fn subscribe_ready(
    client: &async_nats::Client,
    subject: String,
) -> async_nats::Subscriber {
    use futures::StreamExt as _;
    let sub = client
        .subscribe(subject.clone())
        .await
        .unwrap_or_else(|e| panic!("subscribe {subject}: {e}"));
    let barrier = format!("_apollo_test_barrier.{}", uuid::Uuid::new_v4().simple());
    let mut probe = client
        .subscribe(barrier.clone())
        .await
        .expect("subscribe barrier");
    client
        .publish(barrier, "".into())
        .await
        .expect("publish barrier");
    tokio::time::timeout(Duration::from_secs(10), probe.next())
        .await
        .expect("barrier round trip timed out")
        .expect("barrier subscription closed");
    sub
}
