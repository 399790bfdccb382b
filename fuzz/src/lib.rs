//! Fuzz targets for every decoder and validator at APOLLO's boundaries.
//!
//! Each target takes arbitrary bytes, runs them through the same code the
//! services run on input they receive, checks what must hold whatever the
//! input (no panic, and the invariants named in each target), and returns a
//! short outcome class (`ok`, or the error with digits and quotes removed).
//! The classes guide the stable driver (`apollo-fuzz`): an input that
//! produces a class not seen before joins its corpus.
//!
//! The same functions are the bodies of the cargo-fuzz targets in
//! `fuzz_targets/` (feature `libfuzzer`).

#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use apollo_common::{bus, ClusterView};
use apollo_proto::{ClusterInsight, OrchestrationPolicy, ResourcePrediction, WorkloadSignature};
use prost::Message as _;

/// A fuzz target: bytes in, outcome class out; panics on a broken invariant.
pub type Target = fn(&[u8]) -> String;

/// Every target by name, with its seed inputs.
pub fn targets() -> Vec<(&'static str, Target, Vec<Vec<u8>>)> {
    vec![
        (
            "ingest_cluster_insight",
            ingest_cluster_insight,
            seeds::insight_protobuf(),
        ),
        (
            "ingest_workload_signature",
            ingest_workload_signature,
            seeds::signature_protobuf(),
        ),
        (
            "nats_cluster_insight",
            nats_cluster_insight,
            seeds::insight_json(),
        ),
        (
            "nats_workload_signature",
            nats_workload_signature,
            seeds::signature_json(),
        ),
        ("nats_forecast", nats_forecast, seeds::forecast_json()),
        (
            "nats_orchestration_policy",
            nats_orchestration_policy,
            seeds::policy_json(),
        ),
        ("subject_token", subject_token, seeds::tokens()),
        ("trace_openb_nodes", trace_openb_nodes, seeds::openb_nodes()),
        ("trace_openb_pods", trace_openb_pods, seeds::openb_pods()),
        ("trace_genai", trace_genai, seeds::genai()),
        ("prometheus_dcgm", prometheus_dcgm, seeds::dcgm()),
        (
            "prometheus_node_exporter",
            prometheus_node_exporter,
            seeds::node_exporter(),
        ),
        (
            "kubernetes_quantity",
            kubernetes_quantity,
            seeds::quantities(),
        ),
        ("orchestrator_reply", orchestrator_reply, seeds::replies()),
    ]
}

/// An outcome class: `ok`, or the start of an error message without
/// digits and quoted parts (so values and positions do not make every
/// error new).
fn class<T, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => class_of_text(&e.to_string()),
    }
}

fn class_of_text(text: &str) -> String {
    let mut out = String::from("err:");
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (None, '"' | '`' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, _) if !c.is_ascii_digit() => out.push(c),
            _ => {}
        }
        if out.len() >= 28 {
            break;
        }
    }
    out
}

/// A validation outcome by its metric label (field path and rule).
fn violation_class(r: &Result<(), apollo_ingest::validate::Violation>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(v) => v.label(),
    }
}

/// A trace parser's outcome, without the file name that starts its errors.
fn trace_class<T, E: std::fmt::Display>(r: &Result<T, E>, path: &str) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => class_of_text(&e.to_string().replace(path, "")),
    }
}

fn limits() -> apollo_ingest::validate::Limits {
    apollo_ingest::validate::Limits::now(Duration::from_secs(300))
}

/// Protobuf bytes as a gRPC `ReportClusterInsight` carries them, through
/// ingest's validator. A valid insight survives re-encoding unchanged.
pub fn ingest_cluster_insight(data: &[u8]) -> String {
    let Ok(ci) = ClusterInsight::decode(data) else {
        return "undecodable".into();
    };
    let checked = apollo_ingest::validate::cluster_insight(&ci, &limits());
    match &checked {
        Ok(()) => {
            let again = ClusterInsight::decode(ci.encode_to_vec().as_slice())
                .expect("a decoded insight re-encodes");
            assert!(
                apollo_ingest::validate::cluster_insight(&again, &limits()).is_ok(),
                "a valid insight stays valid after a round trip"
            );
        }
        Err(v) => assert!(!v.label().is_empty(), "every violation names its rule"),
    }
    violation_class(&checked)
}

/// Protobuf bytes of a `ReportWorkloadSignature`, through ingest's validator.
pub fn ingest_workload_signature(data: &[u8]) -> String {
    let Ok(sig) = WorkloadSignature::decode(data) else {
        return "undecodable".into();
    };
    let checked = apollo_ingest::validate::workload_signature(&sig, &limits());
    if let Err(v) = &checked {
        assert!(!v.label().is_empty(), "every violation names its rule");
    }
    violation_class(&checked)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A message on `apollo.insight.cluster.<node>` as each consumer decodes it:
/// the engines' `ClusterView` (then the scheduling engine's per-node state)
/// and the forecaster's sample store.
pub fn nats_cluster_insight(data: &[u8]) -> String {
    let decoded = bus::from_json::<ClusterInsight>(data);
    if let Ok(ci) = &decoded {
        let view = ClusterView::new();
        let name = ci.node_name.clone();
        let stored = view.upsert_node(ci.clone(), SystemTime::now(), 1);
        assert_eq!(stored, !name.is_empty(), "a named node is stored");
        let state = apollo_scheduling::state::ClusterState::new(
            view.clone(),
            apollo_scheduling::config::EngineConfig::default(),
        );
        state.sync_node(&name);
        let engine = apollo_forecaster::engine::Engine::new(
            apollo_forecaster::config::ForecastArgs::default(),
            apollo_forecaster::metrics::Metrics::unregistered(),
        )
        .expect("the default forecaster settings are valid");
        let _ = engine.ingest(ci, Some(now_ms()), now_ms());
    }
    class(&decoded)
}

/// A message on `apollo.insight.workload.<ns>.<pod>` into the `ClusterView`
/// and the scheduling engine's per-pod state.
pub fn nats_workload_signature(data: &[u8]) -> String {
    let decoded = bus::from_json::<WorkloadSignature>(data);
    if let Ok(sig) = &decoded {
        let view = ClusterView::new();
        let named = !sig.pod_name.is_empty() && !sig.pod_namespace.is_empty();
        let (ns, pod) = (sig.pod_namespace.clone(), sig.pod_name.clone());
        assert_eq!(view.upsert_pod(sig.clone(), SystemTime::now(), 1), named);
        let state = apollo_scheduling::state::ClusterState::new(
            view,
            apollo_scheduling::config::EngineConfig::default(),
        );
        state.sync_pod(&ns, &pod);
    }
    class(&decoded)
}

/// A message on `apollo.forecast.<node>` into the scheduling engine.
pub fn nats_forecast(data: &[u8]) -> String {
    let decoded = bus::from_json::<ResourcePrediction>(data);
    if let Ok(p) = &decoded {
        let state = apollo_scheduling::state::ClusterState::new(
            ClusterView::new(),
            apollo_scheduling::config::EngineConfig::default(),
        );
        let _ = state.apply_forecast(p);
    }
    class(&decoded)
}

/// A policy from `apollo.policy.orchestration.>` as the executor turns it
/// into an orchestrator REST request.
pub fn nats_orchestration_policy(data: &[u8]) -> String {
    let decoded = bus::from_json::<OrchestrationPolicy>(data);
    match &decoded {
        Ok(p) => class(&apollo_orchestration::executor::request_for(p, 70)),
        Err(_) => class(&decoded),
    }
}

/// Subject tokens: decoding any token never panics, and every name
/// survives encode then decode unchanged, with no dot, wildcard or space.
pub fn subject_token(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let decoded = bus::decode_token(&text);
    if let Ok(token) = bus::encode_token(&text) {
        assert!(
            !token.contains(['.', '*', '>', ' ']),
            "encoded token {token:?} is not one subject token"
        );
        assert_eq!(
            bus::decode_token(&token).expect("an encoded token decodes"),
            text
        );
    }
    class(&decoded)
}

/// The openb node list format (`apolloctl simulate --nodes`, replay).
pub fn trace_openb_nodes(data: &[u8]) -> String {
    let path = "fuzz/openb_node_list.csv";
    trace_class(
        &apollo_scheduling::simulate::parse_nodes(data, Path::new(path)),
        path,
    )
}

/// The openb pod list format (`apolloctl simulate --pods`, replay).
pub fn trace_openb_pods(data: &[u8]) -> String {
    let path = "fuzz/openb_pod_list.csv";
    trace_class(
        &apollo_scheduling::simulate::parse_pods(data, Path::new(path)),
        path,
    )
}

/// A GenAI series file (`apolloctl eval forecast --genai`).
pub fn trace_genai(data: &[u8]) -> String {
    let name = apollo_forecaster::eval::GENAI_FILES[0];
    let files = vec![(PathBuf::from(name), data)];
    trace_class(
        &apollo_forecaster::eval::parse_genai(files, "fuzz", 1),
        name,
    )
}

/// A DCGM exporter scrape, as ingest's collector reads it.
pub fn prometheus_dcgm(data: &[u8]) -> String {
    let mut problems = Vec::new();
    let gpus = apollo_ingest::collector::exposition::parse_dcgm(
        &String::from_utf8_lossy(data),
        &mut problems,
    );
    format!(
        "gpus:{} problems:{}",
        gpus.len().min(3),
        problems.len().min(3)
    )
}

/// A node-exporter scrape, as ingest's collector reads it.
pub fn prometheus_node_exporter(data: &[u8]) -> String {
    let mut problems = Vec::new();
    let _ = apollo_ingest::collector::exposition::parse_node_exporter(
        &String::from_utf8_lossy(data),
        &mut problems,
    );
    format!("problems:{}", problems.len().min(3))
}

/// Kubernetes quantities (`500m`, `16Gi`) from the API server.
pub fn kubernetes_quantity(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let value = apollo_ingest::collector::quantity::parse(&text);
    if let Ok(v) = &value {
        assert!(v.is_finite(), "quantity {text:?} parsed to {v}");
    }
    let _ = apollo_ingest::collector::quantity::bytes(&text);
    class(&value)
}

/// A reply of the AI-Storage Orchestrator's REST API, as the executor reads
/// an accepted migration and its status.
pub fn orchestrator_reply(data: &[u8]) -> String {
    use apollo_orchestration::executor::{migration_id, migration_outcome, reply_json};
    let value = reply_json(data);
    let id = migration_id(&value);
    let outcome = migration_outcome(id.as_deref().unwrap_or("m"), &value);
    format!(
        "{} {}",
        class(&id),
        match outcome {
            None => "pending".to_string(),
            Some(r) => class(&r),
        }
    )
}

/// Seed inputs: valid examples of each format, from which the driver mutates.
mod seeds {
    use super::*;
    use apollo_proto::{GpuStatus, NodeResources, Timestamp};

    fn now() -> Option<Timestamp> {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Some(Timestamp {
            seconds: d.as_secs() as i64,
            nanos: 0,
        })
    }

    fn insight() -> ClusterInsight {
        ClusterInsight {
            node_name: "node-a".into(),
            node_type: "gpu".into(),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: 64.0,
                cpu_used_cores: 12.5,
                memory_allocatable_bytes: 1 << 38,
                gpu_allocatable: 2,
                ..Default::default()
            }),
            gpu_devices: vec![GpuStatus {
                gpu_id: "node-a-gpu0".into(),
                gpu_model: "V100M32".into(),
                utilization_percent: 40.0,
                allocated_milli: 500,
                ..Default::default()
            }],
            collected_at: now(),
            ..Default::default()
        }
    }

    fn signature() -> WorkloadSignature {
        WorkloadSignature {
            pod_name: "trainer-0".into(),
            pod_namespace: "ml".into(),
            workload_type: 2,
            current_stage: 3,
            confidence: 0.8,
            is_gpu_workload: true,
            updated_at: now(),
            ..Default::default()
        }
    }

    pub(super) fn insight_protobuf() -> Vec<Vec<u8>> {
        vec![insight().encode_to_vec(), Vec::new()]
    }

    pub(super) fn signature_protobuf() -> Vec<Vec<u8>> {
        vec![signature().encode_to_vec(), Vec::new()]
    }

    pub(super) fn insight_json() -> Vec<Vec<u8>> {
        vec![
            serde_json::to_vec(&insight()).expect("serialises"),
            b"{}".to_vec(),
        ]
    }

    pub(super) fn signature_json() -> Vec<Vec<u8>> {
        vec![serde_json::to_vec(&signature()).expect("serialises")]
    }

    pub(super) fn forecast_json() -> Vec<Vec<u8>> {
        vec![br#"{"nodeName":"node-a","horizonMinutes":30,"predictions":[{"timestamp":"2026-11-30T12:00:00Z","cpuUsage":40.5,"memoryUsage":20,"gpuUsage":90}],"upperBound":[{"cpuUsage":60,"memoryUsage":30,"gpuUsage":99}]}"#.to_vec()]
    }

    pub(super) fn policy_json() -> Vec<Vec<u8>> {
        vec![br#"{"requestId":"r-1","action":"ORCHESTRATION_ACTION_MIGRATE","targetPod":"trainer-0","targetNamespace":"ml","sourceNode":"node-a","targetNode":"node-b","contributingFactors":{"preserve_pv":"true"},"constraints":{"maxRetries":2,"timeoutSeconds":60}}"#.to_vec(),
             br#"{"action":"ORCHESTRATION_ACTION_SCALE","targetPod":"web-5d8f-x2x","targetNamespace":"ml","scaling":{"currentReplicas":2,"targetReplicas":4}}"#.to_vec()]
    }

    pub(super) fn tokens() -> Vec<Vec<u8>> {
        vec![
            b"trainer%2E0".to_vec(),
            b"node-a".to_vec(),
            b"a.b c>*".to_vec(),
        ]
    }

    pub(super) fn openb_nodes() -> Vec<Vec<u8>> {
        vec![b"sn,cpu_milli,memory_mib,gpu,model\nopenb-node-0000,64000,262144,2,P100\nopenb-node-0001,96000,786432,8,V100M32\n".to_vec()]
    }

    pub(super) fn openb_pods() -> Vec<Vec<u8>> {
        vec![b"name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\nopenb-pod-0000,12000,16384,1,1000,,LS,Running,0,12537496,0\nopenb-pod-0001,6000,12288,1,460,V100M16|V100M32,LS,Running,427061,12902960,427061\n".to_vec()]
    }

    pub(super) fn genai() -> Vec<Vec<u8>> {
        vec![b"value,timestamp_anon,container_ip\n0.0,1662858720.0,11415d99a127e215\n0.5,1662858777.0,11415d99a127e215\n0.7,1662858837.0,11415d99a127e215\n".to_vec()]
    }

    pub(super) fn dcgm() -> Vec<Vec<u8>> {
        vec![include_bytes!("../../apollo-ingest/tests/fixtures/dcgm-exporter.txt").to_vec()]
    }

    pub(super) fn node_exporter() -> Vec<Vec<u8>> {
        vec![
            include_bytes!("../../apollo-ingest/tests/fixtures/node-exporter-a.txt").to_vec(),
            include_bytes!("../../apollo-ingest/tests/fixtures/node-exporter-b.txt").to_vec(),
        ]
    }

    pub(super) fn quantities() -> Vec<Vec<u8>> {
        ["500m", "16Gi", "1.5e3", "2Ki", "100M", "0.25"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
    }

    pub(super) fn replies() -> Vec<Vec<u8>> {
        vec![
            br#"{"id":"m-17","status":"running"}"#.to_vec(),
            br#"{"migration_id":42,"status":"failed","error":"target full"}"#.to_vec(),
            br#"{"status":"completed"}"#.to_vec(),
            b"accepted".to_vec(),
        ]
    }
}
