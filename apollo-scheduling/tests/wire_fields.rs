//! Reads our `SchedulingPolicy` bytes the way the Go scheduler does: a
//! message with only `13: PluginWeights` and `20: WorkloadSignatureInfo`.

use std::sync::Arc;
use std::time::SystemTime;

use apollo_common::ClusterView;
use apollo_proto::{ClusterInsight, NodeResources, SchedulingPolicyRequest};
use apollo_scheduling::config::EngineConfig;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::state::ClusterState;
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct GoPluginWeights {
    #[prost(float, tag = "1")]
    data_locality_aware: f32,
    #[prost(float, tag = "2")]
    storage_tier_aware: f32,
    #[prost(float, tag = "3")]
    io_pattern_based: f32,
    #[prost(float, tag = "4")]
    kueue_aware: f32,
    #[prost(float, tag = "5")]
    pipeline_stage_aware: f32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GoSignatureInfo {
    #[prost(int32, tag = "2")]
    current_stage: i32,
    #[prost(int32, tag = "3")]
    io_pattern: i32,
    #[prost(string, tag = "10")]
    pipeline_step: String,
    #[prost(int32, tag = "12")]
    preprocessing_type: i32,
    #[prost(string, repeated, tag = "14")]
    data_locations: Vec<String>,
    #[prost(string, repeated, tag = "15")]
    cached_on_nodes: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GoPolicy {
    #[prost(message, optional, tag = "13")]
    plugin_weights: Option<GoPluginWeights>,
    #[prost(message, optional, tag = "20")]
    workload_signature: Option<GoSignatureInfo>,
}

/// Top-level field numbers present in an encoded message.
fn top_level_fields(mut b: &[u8]) -> Vec<u32> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        out.push((key >> 3) as u32);
        match key & 7 {
            0 => {
                varint(&mut b);
            }
            1 => b = &b[8..],
            2 => {
                let len = varint(&mut b) as usize;
                b = &b[len..];
            }
            5 => b = &b[4..],
            w => panic!("unexpected wire type {w}"),
        }
    }
    out
}

#[test]
fn go_reader_finds_weights_at_13_and_signature_at_20() {
    let view = ClusterView::new();
    for n in ["n1", "n2"] {
        view.upsert_node(
            ClusterInsight {
                node_name: n.into(),
                node_resources: Some(NodeResources {
                    cpu_allocatable_cores: 16.0,
                    memory_allocatable_bytes: 64 << 30,
                    ..Default::default()
                }),
                ..Default::default()
            },
            SystemTime::now(),
            0,
        );
    }
    let state = Arc::new(ClusterState::new(view, EngineConfig::default()));
    state.resync();
    let engine = Engine::new(state);
    let req = SchedulingPolicyRequest {
        pod_name: "prep-0".into(),
        pod_namespace: "ml".into(),
        pod_labels: [(
            "workflows.argoproj.io/workflow".to_string(),
            "wf-7".to_string(),
        )]
        .into_iter()
        .collect(),
        pod_annotations: [
            ("workflows.argoproj.io/node-name", "wf-7.filter-rows"),
            ("apollo.ai-storage/io-pattern", "random"),
            ("apollo.ai-storage/data-locations", "n2"),
            ("apollo.ai-storage/cache-nodes", "n1"),
            ("kueue.x-k8s.io/queue-name", "team-a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    };
    let policy = engine.decide(&req);
    let bytes = policy.encode_to_vec();

    let fields = top_level_fields(&bytes);
    assert!(fields.contains(&13) && fields.contains(&20), "{fields:?}");
    assert!(
        !fields.iter().any(|f| (14..=19).contains(f)),
        "reserved fields present: {fields:?}"
    );

    let go = GoPolicy::decode(bytes.as_slice()).unwrap();
    let w = go.plugin_weights.expect("weights at 13");
    let ours = policy.plugin_weights.unwrap();
    assert_eq!(w.data_locality_aware, ours.data_locality_aware);
    assert_eq!(w.kueue_aware, ours.kueue_aware);
    for v in [
        w.data_locality_aware,
        w.storage_tier_aware,
        w.io_pattern_based,
        w.kueue_aware,
        w.pipeline_stage_aware,
    ] {
        assert!((0.1..=1.0).contains(&v), "{w:?}");
    }
    // Locality, kueue and pipeline info are all present, so those plugins count.
    assert!(w.data_locality_aware >= 0.8 && w.kueue_aware >= 0.8 && w.pipeline_stage_aware >= 0.7);
    let s = go.workload_signature.expect("signature at 20");
    assert_eq!(s.pipeline_step, "filter-rows");
    assert_eq!(
        s.current_stage,
        apollo_proto::PipelineStage::Preprocessing as i32
    );
    assert_eq!(s.io_pattern, apollo_proto::IoPattern::Random as i32);
    assert_eq!(
        s.preprocessing_type,
        apollo_proto::PreprocessingType::Filtering as i32
    );
    assert_eq!(s.data_locations, vec!["n2"]);
    assert_eq!(s.cached_on_nodes, vec!["n1"]);
}
