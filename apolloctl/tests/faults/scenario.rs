//! Cluster data the fault tests feed the stack, and reads of what the
//! streams hold.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apollo_common::{
    bus::{from_json, StreamKind},
    Bus,
};
use apollo_proto::{
    ClusterInsight, NodeResources, PipelineStage, SchedulingPolicyRequest, Timestamp,
    WorkloadSummary,
};
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures::StreamExt as _;

const GIB: i64 = 1 << 30;

/// A node report collected now: 16 cores at `cpu` (0-1) use, with `pods`.
pub(crate) fn node(name: &str, cpu: f64, pods: Vec<WorkloadSummary>) -> ClusterInsight {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 16.0,
            memory_allocatable_bytes: 64 * GIB,
            cpu_used_cores: 16.0 * cpu,
            memory_used_bytes: 16 * GIB,
            ..Default::default()
        }),
        running_workloads: pods,
        collected_at: Some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

/// A pod running on a node, as a node agent reports it.
pub(crate) fn running_pod(name: &str, cores: f64, stage: PipelineStage) -> WorkloadSummary {
    WorkloadSummary {
        pod_name: name.into(),
        pod_namespace: "ml".into(),
        current_stage: stage as i32,
        cpu_usage: cores,
        memory_usage: GIB as f64,
        ..Default::default()
    }
}

/// A hot node (95 % CPU) with two movable pods: the orchestration engine
/// plans a migration off it to an idle node.
pub(crate) fn hot_node(name: &str) -> ClusterInsight {
    node(
        name,
        0.95,
        vec![
            running_pod(&format!("{name}-train"), 9.0, PipelineStage::Training),
            running_pod(&format!("{name}-prep"), 3.0, PipelineStage::Preprocessing),
        ],
    )
}

/// A scheduling request for `ml/<pod>` asking for `cpu` cores.
pub(crate) fn pod_request(pod: &str, cpu: &str) -> SchedulingPolicyRequest {
    SchedulingPolicyRequest {
        pod_name: pod.into(),
        pod_namespace: "ml".into(),
        pod_annotations: [("apollo.ai-storage/cpu".to_string(), cpu.to_string())].into(),
        ..Default::default()
    }
}

/// Every message stored on a stream under `filter`: (subject, stream
/// sequence, payload), in stream order.
pub(crate) async fn stored(
    bus: &Bus,
    kind: StreamKind,
    filter: String,
) -> Vec<(String, u64, Vec<u8>)> {
    // Right after a fault the cluster may still be electing leaders: its
    // JetStream API requests time out until then, so retry for a bounded
    // while (this is the check, not the system under test).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let consumer = loop {
        let attempt = async {
            bus.get_stream(kind)
                .await
                .map_err(|e| e.to_string())?
                .create_consumer(OrderedConfig {
                    filter_subject: filter.clone(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(consumer) => break consumer,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("reading {filter} back: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("reading {filter} back from the stream for 60 s: {e}"),
        }
    };
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.expect("messages");
    while pending > 0 {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stored messages delivered in time")
            .expect("stream open")
            .expect("message");
        let info = m.info().expect("JetStream message");
        pending = info.pending;
        out.push((
            m.subject.to_string(),
            info.stream_sequence,
            m.payload.to_vec(),
        ));
    }
    out
}

/// Decodes stored protobuf-JSON payloads.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(msgs: &[(String, u64, Vec<u8>)]) -> Vec<T> {
    msgs.iter()
        .map(|(s, _, p)| from_json(p).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

/// `nats-server --version` of the server the tests start.
pub(crate) fn nats_version() -> String {
    apollo_common::nats_server::find_binary()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
