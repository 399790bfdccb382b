//! The shared gRPC limits on a real scheduling server (no NATS needed: the
//! engine is served without a bus): an oversized request is refused with
//! RESOURCE_EXHAUSTED naming the limit, and a client over its rate is
//! refused while another client is still served. Each refusal is counted in
//! `apollo_grpc_rejected_total`.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use apollo_common::{shutdown::CancellationToken, ClusterView};
use apollo_proto::{
    scheduling_policy_service_client::SchedulingPolicyServiceClient, SchedulingPolicyRequest,
};
use apollo_scheduling::{config::Config, engine::Engine, state::ClusterState};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    transport::{Channel, Endpoint, Uri},
    Code,
};

/// Connects from a chosen loopback source address, so two clients on one
/// machine are two peers to the server (all of 127.0.0.0/8 is local).
#[derive(Clone)]
struct FromSource {
    source: SocketAddr,
    server: SocketAddr,
}

impl tonic::codegen::Service<Uri> for FromSource {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (source, server) = (self.source, self.server);
        Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(source)?;
            let stream = socket.connect(server).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

struct Server {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<apollo_scheduling::error::Result<()>>,
}

impl Server {
    async fn start(flags: &[&str]) -> Self {
        let mut argv = vec!["apollo-scheduling", "--metrics-addr", "127.0.0.1:0"];
        argv.extend_from_slice(flags);
        let config = Config::try_parse_from(argv).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let state = Arc::new(ClusterState::new(ClusterView::new(), config.engine.clone()));
        let engine = Arc::new(Engine::new(state));
        let shutdown = CancellationToken::new();
        let task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                apollo_scheduling::service::serve_engine(
                    engine,
                    None,
                    &config,
                    prometheus_client::registry::Registry::default(),
                    (listener, metrics),
                    shutdown,
                )
                .await
            })
        };
        Self {
            addr,
            metrics_addr,
            shutdown,
            task,
        }
    }

    async fn client_from(&self, source: &str) -> SchedulingPolicyServiceClient<Channel> {
        let connector = FromSource {
            source: format!("{source}:0").parse().unwrap(),
            server: self.addr,
        };
        let channel = Endpoint::from_static("http://apollo.test")
            .connect_with_connector(connector)
            .await
            .expect("the server accepts connections once serve_engine bound it");
        SchedulingPolicyServiceClient::new(channel)
    }

    async fn metrics(&self) -> String {
        let mut conn = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).await.unwrap();
        body
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn request(pod: &str) -> SchedulingPolicyRequest {
    SchedulingPolicyRequest {
        pod_name: pod.into(),
        pod_namespace: "ml".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_oversized_request_is_refused_with_the_limit_in_the_message() {
    let server = Server::start(&["--grpc-max-recv-bytes", "4096"]).await;
    let mut client = server.client_from("127.0.0.1").await;
    client
        .get_scheduling_policy(request("small"))
        .await
        .expect("a request under the limit is served");

    let err = client
        .get_scheduling_policy(request(&"p".repeat(8 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("limit of 4096 bytes") && err.message().contains("request"),
        "{}",
        err.message()
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"apollo_grpc_rejected_total{reason="request_too_large"} 1"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_is_refused_while_another_is_served() {
    // A rate low enough that the burst is used up long before it refills.
    let server = Server::start(&["--grpc-client-rate", "0.01", "--grpc-client-burst", "5"]).await;
    let mut greedy = server.client_from("127.0.0.1").await;
    let mut other = server.client_from("127.0.0.2").await;

    for i in 0..5 {
        greedy
            .get_scheduling_policy(request(&format!("p{i}")))
            .await
            .expect("calls within the burst are served");
    }
    let err = greedy
        .get_scheduling_policy(request("p5"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("127.0.0.1") && err.message().contains("--grpc-client-rate"),
        "{}",
        err.message()
    );

    let served = other
        .get_scheduling_policy(request("q0"))
        .await
        .expect("another client keeps its own allowance");
    assert!(!served.into_inner().request_id.is_empty());

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"apollo_grpc_rejected_total{reason="client_rate"} 1"#),
        "{metrics}"
    );
    server.stop().await;
}
