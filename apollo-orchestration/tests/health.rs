//! The service comes up against a real NATS server and reports SERVING.

use std::time::Duration;

use apollo_common::{
    config::{parse_flags, ObservabilityArgs},
    shutdown::CancellationToken,
    testing::TestNats,
};
use clap::Parser as _;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[tokio::test]
async fn serves_health_once_nats_is_ready() {
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let mut config = apollo_orchestration::Config::parse_from(["apollo-orchestration"]);
    config.nats = n;
    config.streams = s;
    config.observability = parse_flags::<ObservabilityArgs>(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--shutdown-grace",
        "500ms",
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let server = tokio::spawn(apollo_orchestration::serve(config, listener, token.clone()));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    // Watch streams every status change: wait for SERVING without polling.
    let mut updates = client
        .watch(HealthCheckRequest {
            service: "apollo.OrchestrationPolicyService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(update) = updates.message().await.unwrap() {
            if update.status() == ServingStatus::Serving {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(serving);
    // Shutdown must finish within the grace period even though the health
    // watch stream is still open.
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("server did not stop within its grace period")
        .unwrap()
        .unwrap();
    drop(updates);
}
