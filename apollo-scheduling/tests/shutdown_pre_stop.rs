//! A call that arrives while the server is shutting down gets UNAVAILABLE
//! "shutting down" (a status, which clients retry elsewhere), not a reset
//! stream or a refused connection, for the pre-stop window
//! (`--shutdown-pre-stop`); gRPC health says NOT_SERVING meanwhile. After
//! the window the server stops. A real server on 127.0.0.1:0, no NATS.

use std::{sync::Arc, time::Duration};

use apollo_common::{grpc::SHUTTING_DOWN, shutdown::CancellationToken, ClusterView};
use apollo_proto::{
    scheduling_policy_service_client::SchedulingPolicyServiceClient, SchedulingPolicyRequest,
};
use apollo_scheduling::{
    config::Config, engine::Engine, service::SERVICE_NAME, state::ClusterState,
};
use clap::Parser;
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

fn request() -> SchedulingPolicyRequest {
    SchedulingPolicyRequest {
        pod_name: "p".into(),
        pod_namespace: "ml".into(),
        ..Default::default()
    }
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_the_pre_stop_window_get_unavailable_then_the_server_stops() {
    let config = Config::try_parse_from([
        "apollo-scheduling",
        "--metrics-addr",
        "127.0.0.1:0",
        "--shutdown-grace",
        "40s",
        // Long enough for the calls below to land inside it on a loaded
        // machine; the server then stops by itself.
        "--shutdown-pre-stop",
        "6s",
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(ClusterState::new(ClusterView::new(), config.engine.clone()));
    let engine = Arc::new(Engine::new(state));
    let shutdown = CancellationToken::new();
    let mut server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            apollo_scheduling::service::serve_engine(
                engine,
                None,
                &config,
                prometheus_client::registry::Registry::default(),
                listener,
                shutdown,
            )
            .await
        })
    };
    let url = format!("http://{addr}");
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SchedulingPolicyServiceClient::new(channel.clone());
    client
        .get_scheduling_policy(request())
        .await
        .expect("served");
    assert_eq!(
        health(channel.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );

    shutdown.cancel();
    // On the open connection and on a new one alike: a status from the
    // server (no transport error under it), UNAVAILABLE, saying why.
    let fresh = Channel::from_shared(url).unwrap().connect().await.unwrap();
    for (which, channel) in [("open", channel.clone()), ("new", fresh.clone())] {
        let err = SchedulingPolicyServiceClient::new(channel)
            .get_scheduling_policy(request())
            .await
            .expect_err("refused while shutting down");
        assert_eq!(err.code(), Code::Unavailable, "{which}: {err:?}");
        assert_eq!(err.message(), SHUTTING_DOWN, "{which}");
        assert!(
            std::error::Error::source(&err).is_none(),
            "{which}: a transport error, not a status: {err:?}"
        );
    }
    // Health is still answered, and says NOT_SERVING (bounded wait: the
    // drain sets it as it starts).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = health(fresh.clone()).await.expect("health answered");
        if s == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health still {s} while stopping"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // After the window the server stops by itself (well within the grace).
    tokio::time::timeout(Duration::from_secs(30), &mut server)
        .await
        .expect("the server stops after the pre-stop window")
        .unwrap()
        .unwrap();
    let after = SchedulingPolicyServiceClient::new(fresh)
        .get_scheduling_policy(request())
        .await
        .expect_err("stopped");
    assert_eq!(after.code(), Code::Unavailable);
    assert!(
        std::error::Error::source(&after).is_some(),
        "after the stop only the transport fails: {after:?}"
    );
}
