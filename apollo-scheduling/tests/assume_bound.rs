//! `--max-assumed` on a real server (no NATS: the engine is served without a
//! bus): decisions past the cap end the oldest assumptions, and the
//! `assumptions_ended{how="evicted"}` counter and the assumed-pods gauge say
//! so on `/metrics`.

use std::{sync::Arc, time::Duration, time::SystemTime};

use apollo_common::{shutdown::CancellationToken, ClusterView};
use apollo_proto::{
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight, NodeResources,
    SchedulingPolicyRequest,
};
use apollo_scheduling::{config::Config, engine::Engine, state::ClusterState};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn node(name: &str) -> ClusterInsight {
    ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 64.0,
            cpu_available_cores: 64.0,
            memory_allocatable_bytes: 256 << 30,
            ..NodeResources::default()
        }),
        ..ClusterInsight::default()
    }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn decisions_past_the_cap_evict_the_oldest_and_count_it() {
    let argv = [
        "apollo-scheduling",
        "--metrics-addr",
        "127.0.0.1:0",
        "--max-assumed",
        "4",
    ];
    let config = Config::try_parse_from(argv).unwrap();
    assert_eq!(config.engine.max_assumed, 4);
    let view = ClusterView::new();
    for i in 0..3 {
        view.upsert_node(node(&format!("n{i}")), SystemTime::now(), 0);
    }
    let state = Arc::new(ClusterState::new(view, config.engine.clone()));
    state.resync();
    let engine = Arc::new(Engine::new(Arc::clone(&state)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
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
    let mut client = SchedulingPolicyServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("the server accepts connections once serve_engine bound it");
    for i in 0..10 {
        let policy = client
            .get_scheduling_policy(SchedulingPolicyRequest {
                pod_name: format!("p{i}"),
                pod_namespace: "ml".into(),
                pod_annotations: [("apollo.ai-storage/cpu".to_string(), "1".to_string())].into(),
                ..Default::default()
            })
            .await
            .expect("served")
            .into_inner();
        assert!(!policy.node_preferences.is_empty(), "{policy:?}");
    }
    let s = state.stats();
    assert_eq!((s.assumed, s.ended.evicted), (4, 6));
    assert_eq!(state.assumed_node("ml", "p0"), None);
    assert!(state.assumed_node("ml", "p9").is_some());

    // The gauges follow the state once a second: wait for them.
    let want = [
        r#"apollo_scheduling_assumptions_ended_total{how="evicted"} 6"#,
        "apollo_scheduling_assumed_pods 4",
    ];
    let mut body = String::new();
    for _ in 0..100 {
        body = scrape(metrics_addr).await;
        if want.iter().all(|w| body.contains(w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in want {
        assert!(body.contains(w), "{w} missing:\n{body}");
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn a_zero_cap_is_refused() {
    let config = Config::try_parse_from(["apollo-scheduling", "--max-assumed", "0"]).unwrap();
    let err = config.engine.validate().unwrap_err();
    assert!(err.to_string().contains("--max-assumed"), "{err}");
}
