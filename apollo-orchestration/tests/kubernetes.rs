//! Kubernetes interactions against a local API server speaking the real JSON
//! (list, get, create and update with resourceVersion conflicts): owner
//! resolution, a PDB refusing a migration, Event creation, Lease hand-off.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use apollo_common::shutdown::CancellationToken;
use apollo_common::ClusterView;
use apollo_orchestration::engine::{Engine, EngineConfig};
use apollo_orchestration::kubernetes::{
    Elector, EventRecorder, KubeState, LeaseSettings, Metadata,
};
use apollo_orchestration::metrics::Metrics;
use apollo_orchestration::view::WorkloadKind;
use apollo_proto::orchestration_policy::Target;
use apollo_proto::{
    ClusterInsight, MigrationTarget, NodeResources, OrchestrationAction, OrchestrationPolicy,
    PipelineStage, WorkloadSummary,
};
use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

type Key = (String, String, String);

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    version: u64,
    requests: Vec<String>,
    fail_events: bool,
}

/// A namespaced/cluster-scoped object store behind the Kubernetes REST paths.
#[derive(Clone, Default)]
struct FakeApi {
    store: Arc<Mutex<Store>>,
}

fn reply(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status(code: StatusCode, reason: &str) -> Response {
    reply(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code.as_u16()
        }),
    )
}

/// Resource, namespace and name of a path under `/api/v1` or `/apis/G/V`.
fn parse(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let rest = if let Some(r) = path.strip_prefix("/api/v1/") {
        r.to_string()
    } else {
        let r = path.strip_prefix("/apis/")?;
        r.splitn(3, '/').nth(2)?.to_string()
    };
    let s: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match s.as_slice() {
        [res] => Some((res.to_string(), None, None)),
        ["namespaces", ns, res] => Some((res.to_string(), Some(ns.to_string()), None)),
        ["namespaces", ns, res, name] => Some((
            res.to_string(),
            Some(ns.to_string()),
            Some(name.to_string()),
        )),
        _ => None,
    }
}

impl FakeApi {
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = self.clone();
        let app = axum::Router::new().fallback(move |m: Method, u: Uri, b: Bytes| {
            let this = this.clone();
            async move { this.handle(m, u, b) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn client(url: &str) -> kube::Client {
        kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    fn add(&self, resource: &str, obj: Value) {
        let mut s = self.store.lock().unwrap();
        s.version += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        s.objects.insert((resource.into(), ns, name), obj);
    }

    fn objects(&self, resource: &str) -> Vec<Value> {
        let s = self.store.lock().unwrap();
        s.objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn requests(&self) -> Vec<String> {
        self.store.lock().unwrap().requests.clone()
    }

    fn handle(&self, method: Method, uri: Uri, body: Bytes) -> Response {
        let mut s = self.store.lock().unwrap();
        s.requests.push(format!("{method} {}", uri.path()));
        let Some((res, ns, name)) = parse(uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound");
        };
        let ns_key = ns.clone().unwrap_or_default();
        match (method, name) {
            (Method::GET, None) => {
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((r, n, _), _)| *r == res && ns.as_ref().is_none_or(|x| x == n))
                    .map(|(_, v)| v.clone())
                    .collect();
                reply(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": "v1", "kind": "List",
                        "metadata": {"resourceVersion": s.version.to_string()},
                        "items": items
                    }),
                )
            }
            (Method::GET, Some(name)) => match s.objects.get(&(res, ns_key, name)) {
                Some(v) => reply(StatusCode::OK, v),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            (Method::POST, None) => {
                if res == "events" && s.fail_events {
                    return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
                }
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest");
                };
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                let key = (res, ns_key, name);
                if s.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                s.version += 1;
                obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.objects.insert(key, obj.clone());
                reply(StatusCode::CREATED, &obj)
            }
            (Method::PUT, Some(name)) => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest");
                };
                let key = (res, ns_key, name);
                let Some(current) = s.objects.get(&key) else {
                    return status(StatusCode::NOT_FOUND, "NotFound");
                };
                if current["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"] {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                s.version += 1;
                obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.objects.insert(key, obj.clone());
                reply(StatusCode::OK, &obj)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

fn owner_ref(kind: &str, name: &str) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}])
}

fn pod(name: &str, node: &str, labels: Value, owner: Option<(&str, &str)>, extra: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x"}]}
    });
    if let Some((k, n)) = owner {
        p["metadata"]["ownerReferences"] = owner_ref(k, n);
    }
    if let Some(a) = extra.get("annotations") {
        p["metadata"]["annotations"] = a.clone();
    }
    if let Some(c) = extra.get("claim") {
        p["spec"]["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": c}}]);
    }
    p
}

/// The `hot`/`w1` cluster of the engine tests, as Kubernetes objects: two
/// Deployment pods labelled `app=etl` on `hot`, a StatefulSet pod with a
/// claim, a no-migrate pod, a control-plane node, and a PDB over `app=etl`
/// allowing `allowed` disruptions.
fn cluster(api: &FakeApi, allowed: i32) {
    api.add(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "etl", "namespace": "ml"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "etl"}}, "template": {}}}),
    );
    let mut rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "etl-7d9f8b6c5d", "namespace": "ml"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "etl"}}}});
    rs["metadata"]["ownerReferences"] = owner_ref("Deployment", "etl");
    api.add("replicasets", rs);
    api.add("statefulsets", json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "ml"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": {}}}));
    let etl = json!({"app": "etl"});
    api.add(
        "pods",
        pod(
            "prep",
            "hot",
            etl.clone(),
            Some(("ReplicaSet", "etl-7d9f8b6c5d")),
            json!({}),
        ),
    );
    api.add(
        "pods",
        pod(
            "train",
            "hot",
            etl,
            Some(("ReplicaSet", "etl-7d9f8b6c5d")),
            json!({}),
        ),
    );
    api.add(
        "pods",
        pod(
            "db-0",
            "w1",
            json!({"app": "db"}),
            Some(("StatefulSet", "db")),
            json!({"claim": "data-db-0"}),
        ),
    );
    api.add(
        "pods",
        pod(
            "pinned",
            "w1",
            json!({"app": "pinned"}),
            None,
            json!({"annotations": {"apollo.ai-storage/no-migrate": "true"}}),
        ),
    );
    api.add("poddisruptionbudgets", json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "etl", "namespace": "ml"},
        "spec": {"minAvailable": 2, "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["etl"]}]}},
        "status": {"currentHealthy": 2, "desiredHealthy": 2, "disruptionsAllowed": allowed, "expectedPods": 2}}));
    api.add("nodes", json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "cp", "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}));
    api.add(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w1"}, "spec": {}}),
    );
}

#[tokio::test]
async fn owners_pdbs_annotations_claims_and_roles_are_read() {
    let api = FakeApi::default();
    cluster(&api, 0);
    let client = FakeApi::client(&api.serve().await);
    let meta = Metadata::fetch(&client).await.expect("metadata");

    let prep = &meta.pods["ml/prep"];
    let owner = prep.owner.as_ref().expect("owner");
    assert_eq!(owner.kind, WorkloadKind::Deployment);
    assert_eq!(owner.name, "etl", "the Deployment, not its ReplicaSet");
    assert_eq!(owner.replicas, Some(3));
    assert!(!owner.inferred);
    assert!(!prep.disruption_allowed, "PDB allows 0 disruptions");

    let db = &meta.pods["ml/db-0"];
    let owner = db.owner.as_ref().unwrap();
    assert_eq!(
        (owner.kind, owner.name.as_str(), owner.replicas),
        (WorkloadKind::StatefulSet, "db", Some(2))
    );
    assert_eq!(db.claims, vec!["data-db-0".to_string()]);
    assert!(db.disruption_allowed, "no PDB selects db-0");

    let pinned = &meta.pods["ml/pinned"];
    assert!(pinned.no_migrate);
    assert!(pinned.owner.is_none());
    assert!(meta.nodes["cp"].control_plane);
    assert_eq!(
        meta.nodes["cp"].taints,
        vec!["node-role.kubernetes.io/control-plane=:NoSchedule".to_string()]
    );
    assert!(!meta.nodes["w1"].control_plane);
    let reqs = api.requests();
    for path in [
        "GET /api/v1/pods",
        "GET /apis/apps/v1/replicasets",
        "GET /apis/apps/v1/deployments",
        "GET /apis/apps/v1/statefulsets",
        "GET /apis/policy/v1/poddisruptionbudgets",
        "GET /api/v1/nodes",
    ] {
        assert!(
            reqs.iter().any(|r| r == path),
            "{path} not requested: {reqs:?}"
        );
    }
}

const GIB: i64 = 1 << 30;

fn insight(name: &str, cpu: f64, pods: &[(&str, f64, PipelineStage)]) -> ClusterInsight {
    ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 16.0,
            memory_allocatable_bytes: 64 * GIB,
            cpu_used_cores: 16.0 * cpu,
            memory_used_bytes: 16 * GIB,
            ..Default::default()
        }),
        running_workloads: pods
            .iter()
            .map(|(n, c, s)| WorkloadSummary {
                pod_name: n.to_string(),
                pod_namespace: "ml".into(),
                current_stage: *s as i32,
                cpu_usage: *c,
                memory_usage: GIB as f64,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn engine() -> Engine {
    let view = ClusterView::new();
    let now = SystemTime::now();
    view.upsert_node(
        insight(
            "hot",
            0.95,
            &[
                ("prep", 2.5, PipelineStage::Preprocessing),
                ("train", 6.0, PipelineStage::Training),
            ],
        ),
        now,
        1,
    );
    view.upsert_node(
        insight("w1", 0.3, &[("db-0", 1.0, PipelineStage::Idle)]),
        now,
        2,
    );
    let cfg = EngineConfig {
        forecast_horizon: Duration::from_secs(1800),
        stale_after: Duration::from_secs(120),
        ..EngineConfig::default()
    };
    Engine::new(cfg, view, Metrics::default())
}

fn migrations(p: &[OrchestrationPolicy]) -> Vec<String> {
    p.iter()
        .filter_map(|p| match &p.target {
            Some(Target::Migration(m)) => Some(m.pod_name.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_pdb_with_no_allowed_disruption_refuses_the_migration() {
    // Same cluster, PDB allowing one disruption: the hot node is relieved.
    let api = FakeApi::default();
    cluster(&api, 1);
    let meta = Metadata::fetch(&FakeApi::client(&api.serve().await))
        .await
        .unwrap();
    let e = engine();
    e.set_kubernetes(KubeState::Ready(Arc::new(meta)));
    let cycle = e.plan(SystemTime::now());
    assert!(
        !migrations(&cycle.issued).is_empty(),
        "control: a move is issued"
    );
    assert!(cycle.unavailable.is_empty(), "{:?}", cycle.unavailable);

    let api = FakeApi::default();
    cluster(&api, 0);
    let meta = Metadata::fetch(&FakeApi::client(&api.serve().await))
        .await
        .unwrap();
    let e = engine();
    e.set_kubernetes(KubeState::Ready(Arc::new(meta)));
    let cycle = e.plan(SystemTime::now());
    assert!(migrations(&cycle.issued).is_empty(), "{:?}", cycle.issued);
    // The planner skips pods a rail refuses; a fresh evaluation says why.
    let why = e
        .policy_for(
            "ml",
            "prep",
            OrchestrationAction::Unspecified,
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(why.action, OrchestrationAction::Unspecified as i32);
    assert!(
        why.reason
            .contains("PodDisruptionBudget allows no disruption"),
        "{}",
        why.reason
    );

    // Without Kubernetes the view says what it lacks.
    let e = engine();
    e.set_kubernetes(KubeState::Unreachable("connection refused".into()));
    let cycle = e.plan(SystemTime::now());
    assert!(cycle.unavailable.iter().any(|u| u.contains("unreachable")));
}

async fn plan_with(api: &FakeApi) -> Vec<String> {
    let meta = Metadata::fetch(&FakeApi::client(&api.serve().await))
        .await
        .unwrap();
    let e = engine();
    e.set_kubernetes(KubeState::Ready(Arc::new(meta)));
    migrations(&e.plan(SystemTime::now()).issued)
}

#[tokio::test]
async fn cordoned_nodes_and_untolerated_taints_are_not_targets() {
    // w1, the only worker with room, carries a GPU taint.
    let gpu_taint = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w1"},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}});
    let api = FakeApi::default();
    cluster(&api, 1);
    api.add("nodes", gpu_taint.clone());
    assert!(
        plan_with(&api).await.is_empty(),
        "moved onto a tainted node"
    );

    // The same pods tolerating the taint may go there.
    let api = FakeApi::default();
    cluster(&api, 1);
    api.add("nodes", gpu_taint);
    for name in ["prep", "train"] {
        let mut p = pod(
            name,
            "hot",
            json!({"app": "etl"}),
            Some(("ReplicaSet", "etl-7d9f8b6c5d")),
            json!({}),
        );
        p["spec"]["tolerations"] =
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
        api.add("pods", p);
    }
    assert!(
        !plan_with(&api).await.is_empty(),
        "tolerating pods stay put"
    );

    // A cordoned node is never a target.
    let api = FakeApi::default();
    cluster(&api, 1);
    api.add(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w1"},
        "spec": {"unschedulable": true}}),
    );
    assert!(
        plan_with(&api).await.is_empty(),
        "moved onto a cordoned node"
    );
}

fn migration_policy() -> OrchestrationPolicy {
    OrchestrationPolicy {
        request_id: "4f1c2a9e-0b7d-4c1e-9a53-2d6f8e0b1c77".into(),
        action: OrchestrationAction::Migrate as i32,
        reason: "node hot at 95% now, threshold 85%".into(),
        target: Some(Target::Migration(MigrationTarget {
            pod_name: "prep".into(),
            pod_namespace: "ml".into(),
            source_node: "hot".into(),
            target_node: "w1".into(),
            preserve_pv: false,
            timeout_seconds: 300,
        })),
        ..OrchestrationPolicy::default()
    }
}

#[tokio::test]
async fn an_issued_policy_records_an_event_on_its_pod_and_failures_are_counted() {
    let api = FakeApi::default();
    let client = FakeApi::client(&api.serve().await);
    let metrics = Metrics::default();
    let rec = EventRecorder::new(client, metrics.clone());
    rec.record(&migration_policy())
        .await
        .expect("event created");
    let events = api.objects("events");
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev["metadata"]["namespace"], "ml");
    assert_eq!(ev["involvedObject"]["kind"], "Pod");
    assert_eq!(ev["involvedObject"]["name"], "prep");
    assert_eq!(ev["reason"], "ApolloMigrate");
    assert_eq!(ev["type"], "Normal");
    let msg = ev["message"].as_str().unwrap();
    assert!(msg.contains("node hot at 95% now, threshold 85%"), "{msg}");
    assert!(api
        .requests()
        .contains(&"POST /api/v1/namespaces/ml/events".to_string()));
    assert_eq!(metrics.kube_events_count("created"), 1);

    api.store.lock().unwrap().fail_events = true;
    let mut p = migration_policy();
    p.request_id = "second".into();
    assert!(rec.record(&p).await.is_err());
    assert_eq!(metrics.kube_events_count("error"), 1);
}

fn lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: "apollo-orchestration".into(),
        namespace: "apollo".into(),
        identity: identity.into(),
        // Thirty renewals long: a loaded machine that delays a few renewals
        // does not hand the lease over.
        duration: Duration::from_secs(6),
        renew: Duration::from_millis(200),
    }
}

async fn wait_for(rx: &mut tokio::sync::watch::Receiver<bool>, want: bool, within: Duration) {
    tokio::time::timeout(within, rx.wait_for(|l| *l == want))
        .await
        .unwrap_or_else(|_| panic!("leadership never became {want}"))
        .expect("elector alive");
}

#[tokio::test]
async fn exactly_one_elector_leads_and_the_other_takes_over_when_renewals_stop() {
    let api = FakeApi::default();
    let url = api.serve().await;
    let a = Elector::new(FakeApi::client(&url), lease("replica-a"));
    let b = Elector::new(FakeApi::client(&url), lease("replica-b"));
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a creates the lease"
    );
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b finds it held");

    let (a_tx, mut a_rx) = tokio::sync::watch::channel(false);
    let (b_tx, b_rx) = tokio::sync::watch::channel(false);
    let a_stop = CancellationToken::new();
    let b_stop = CancellationToken::new();
    let (ma, mb) = (Metrics::default(), Metrics::default());
    let a_task = tokio::spawn(a.run(a_tx, ma.clone(), a_stop.clone()));
    tokio::spawn(b.run(b_tx, mb.clone(), b_stop.clone()));
    wait_for(&mut a_rx, true, Duration::from_secs(5)).await;
    assert_eq!(ma.leader.get(), 1);
    // Several renewals pass (each 200 ms); b must stay on standby throughout.
    let mut b_watch = b_rx.clone();
    let stayed_standby =
        tokio::time::timeout(Duration::from_millis(1200), b_watch.wait_for(|l| *l)).await;
    assert!(stayed_standby.is_err(), "b became leader while a renewed");
    assert_eq!(mb.leader.get(), 0);

    // a crashes (stops renewing, no release): b takes over once the 6 s
    // lease expires.
    a_task.abort();
    let _ = a_task.await;
    let mut b_watch = b_rx.clone();
    wait_for(&mut b_watch, true, Duration::from_secs(20)).await;
    drop(a_rx);
    drop(a_stop);
    assert_eq!(mb.leader.get(), 1);
    let leases = api.objects("leases");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0]["spec"]["holderIdentity"], "replica-b");
    assert_eq!(leases[0]["spec"]["leaseTransitions"], 1);
    assert!(api
        .requests()
        .iter()
        .any(|r| r
            == "PUT /apis/coordination.k8s.io/v1/namespaces/apollo/leases/apollo-orchestration"));

    // b shuts down cleanly: it releases, and a restarted a takes over at once
    // (well before the 6 s lease would expire; bounded generously here).
    b_stop.cancel();
    until("release", Duration::from_secs(5), || {
        let l = api.objects("leases");
        l[0]["spec"]["holderIdentity"].is_null().then_some(())
    })
    .await;
    let a = Elector::new(FakeApi::client(&url), lease("replica-a"));
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "released lease taken at once"
    );
    assert_eq!(api.objects("leases")[0]["spec"]["leaseTransitions"], 2);
}

async fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

mod two_replicas {
    //! Two service replicas on one nats-server and one API server: only the
    //! Lease holder plans, its policy gets an Event, and the Lease passes to
    //! the other replica when the holder stops.

    use super::*;
    use apollo_common::testing::TestNats;
    use apollo_proto::insight_service_client::InsightServiceClient;
    use apollo_proto::orchestration_policy_service_client::OrchestrationPolicyServiceClient;
    use apollo_proto::{OrchestrationPolicyRequest, PolicySubscription};
    use tonic::transport::Channel;

    async fn connect(addr: std::net::SocketAddr) -> Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        for _ in 0..200 {
            if let Ok(c) = endpoint.connect().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{addr} never accepted connections");
    }

    fn holder(api: &FakeApi) -> Option<String> {
        api.objects("leases")
            .first()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
    }

    #[tokio::test]
    async fn only_the_lease_holder_plans_and_its_policy_gets_an_event() {
        let api = FakeApi::default();
        cluster(&api, 1);
        let url = api.serve().await;
        let nats = TestNats::start().await;
        let (n, s) = nats.bus_args();
        let all = CancellationToken::new();

        let mut ingest = apollo_ingest::Config::new(n.clone(), s.clone());
        ingest.observability.shutdown_grace = Duration::from_millis(300);
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingest_addr = grpc.local_addr().unwrap();
        tokio::spawn(apollo_ingest::serve(ingest, (grpc, http), all.clone()));

        let mut replicas = HashMap::new();
        let mut addrs = Vec::new();
        for id in ["orch-a", "orch-b"] {
            let mut config = apollo_orchestration::Config::with_defaults(n.clone(), s.clone());
            config.plan_min_gap = Duration::from_millis(50);
            config.observability.shutdown_grace = Duration::from_millis(300);
            config.kube.kubernetes = true;
            config.kube.identity = Some(id.into());
            config.kube.lease_duration = Duration::from_secs(2);
            config.kube.lease_renew = Duration::from_millis(200);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let stop = all.child_token();
            replicas.insert(id, stop.clone());
            tokio::spawn(apollo_orchestration::serve_with_kubernetes(
                config,
                listener,
                Some(FakeApi::client(&url)),
                stop,
            ));
        }
        let bus = apollo_common::Bus::connect("test-peer", &n, &s, CancellationToken::new())
            .await
            .unwrap();
        assert!(bus.wait_ready(Duration::from_secs(30)).await);
        apollo_common::testing::wait_serving(&format!("http://{ingest_addr}")).await;
        let leader = until("a lease holder", Duration::from_secs(10), || holder(&api)).await;
        let mut policies = OrchestrationPolicyServiceClient::new(connect(addrs[0]).await);
        let mut stream = policies
            .subscribe_policies(PolicySubscription {
                subscriber_id: "kube-e2e".into(),
                action_filters: vec![OrchestrationAction::Migrate as i32],
                namespace_filters: vec!["ml".into()],
            })
            .await
            .unwrap()
            .into_inner();

        let mut insights = InsightServiceClient::new(connect(ingest_addr).await);
        let mut cold = insight("w1", 0.3, &[("db-0", 1.0, PipelineStage::Idle)]);
        let mut hot = insight(
            "hot",
            0.95,
            &[
                ("prep", 2.5, PipelineStage::Preprocessing),
                ("train", 6.0, PipelineStage::Training),
            ],
        );
        let now = Some(apollo_orchestration::forecast::to_timestamp(
            SystemTime::now(),
        ));
        cold.collected_at = now;
        hot.collected_at = now;
        insights.report_cluster_insight(cold).await.unwrap();
        insights.report_cluster_insight(hot).await.unwrap();

        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a migration within 10 s")
            .unwrap()
            .expect("stream open");
        let Some(Target::Migration(m)) = &first.target else {
            panic!("not a migration: {first:?}");
        };
        assert_eq!(m.source_node, "hot");
        // Both replicas see the same overload; a second replica planning
        // would issue its own move of the same pod.
        let second = tokio::time::timeout(Duration::from_millis(1500), stream.message()).await;
        assert!(second.is_err(), "second migration: {second:?}");

        let events = until("the policy's event", Duration::from_secs(5), || {
            let ev = api.objects("events");
            (!ev.is_empty()).then_some(ev)
        })
        .await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["involvedObject"]["name"], m.pod_name.as_str());
        assert!(events[0]["message"]
            .as_str()
            .unwrap()
            .contains(&first.request_id));

        // The holder shuts down (and releases); the other replica takes the Lease.
        replicas[leader.as_str()].cancel();
        let other = if leader == "orch-a" {
            "orch-b"
        } else {
            "orch-a"
        };
        until("hand-off", Duration::from_secs(10), || {
            (holder(&api).as_deref() == Some(other)).then_some(())
        })
        .await;
        // The new leader takes back what the old one issued before it plans
        // (it never planned before): it answers with the old leader's policy
        // for the pod, rather than a move of its own.
        let other_addr = addrs[if other == "orch-a" { 0 } else { 1 }];
        let mut survivor = OrchestrationPolicyServiceClient::new(connect(other_addr).await);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let p = survivor
                .get_orchestration_policy(OrchestrationPolicyRequest {
                    pod_name: m.pod_name.clone(),
                    pod_namespace: "ml".into(),
                    requested_action: 0,
                })
                .await
                .unwrap()
                .into_inner();
            if p.request_id == first.request_id {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the new leader does not know the old leader's policy: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        all.cancel();
    }
}
