//! A synthetic Kubernetes API server for tests and benchmarks: serves the
//! real JSON of the endpoints the collector reads (paged lists with `limit`
//! / `continue`, watch streams with `BOOKMARK` events, `labelSelector`
//! equality terms, metrics.k8s.io lists), from objects the caller puts in.
//! It is not a general API server: no field selectors, no resourceVersion
//! expiry (410), no authentication.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use apollo_common::shutdown::CancellationToken;
use axum::{
    body::Body,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::Notify};

/// Collections served, by URL path.
const COLLECTIONS: [(&str, &str); 5] = [
    ("/api/v1/nodes", "Node"),
    ("/api/v1/pods", "Pod"),
    ("/api/v1/persistentvolumes", "PersistentVolume"),
    ("/api/v1/persistentvolumeclaims", "PersistentVolumeClaim"),
    ("/apis/storage.k8s.io/v1/storageclasses", "StorageClass"),
];
const NODE_METRICS: &str = "/apis/metrics.k8s.io/v1beta1/nodes";
const POD_METRICS: &str = "/apis/metrics.k8s.io/v1beta1/pods";

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    path: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    objects: HashMap<&'static str, BTreeMap<String, Value>>,
    history: Vec<Change>,
    node_metrics: Vec<Value>,
    pod_metrics: Vec<Value>,
}

/// Request counts, to check the client used the protocol as intended.
#[derive(Debug, Default)]
pub struct Calls {
    /// List calls that carried `limit`.
    pub paged_lists: AtomicU64,
    /// List calls that carried `continue`.
    pub continued_lists: AtomicU64,
    /// Watch calls.
    pub watches: AtomicU64,
    /// Watch calls that asked for bookmarks.
    pub watches_with_bookmarks: AtomicU64,
    /// Bookmarks sent.
    pub bookmarks_sent: AtomicU64,
    /// metrics.k8s.io calls.
    pub metrics_calls: AtomicU64,
}

/// The HTTP server task and the token that stops it.
#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Handle on a running fake API server.
#[derive(Clone, Debug)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    down: Arc<AtomicBool>,
    /// Set while the server is stopped: open watches end.
    stopped: Arc<AtomicBool>,
    running: Arc<Mutex<Option<Running>>>,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    metrics_down: Arc<AtomicBool>,
    calls: Arc<Calls>,
    bookmark_every: Duration,
    url: String,
}

fn key_of(obj: &Value) -> String {
    let meta = &obj["metadata"];
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", meta["name"].as_str().unwrap_or("")),
        None => meta["name"].as_str().unwrap_or("").to_string(),
    }
}

fn kind_of(path: &str) -> Option<(&'static str, &'static str)> {
    COLLECTIONS.iter().copied().find(|(p, _)| *p == path)
}

fn query_pairs(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b,c=d` equality selectors only.
fn matches(selector: Option<&String>, obj: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl FakeApi {
    /// Serves on `listener` until `shutdown`; watches send a bookmark when
    /// idle for `bookmark_every`.
    pub fn serve(
        listener: TcpListener,
        bookmark_every: Duration,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let api = Self {
            inner: Arc::default(),
            changed: Arc::new(Notify::new()),
            down: Arc::default(),
            stopped: Arc::default(),
            running: Arc::default(),
            addr,
            shutdown,
            metrics_down: Arc::default(),
            calls: Arc::default(),
            bookmark_every,
            url: format!("http://{addr}"),
        };
        api.spawn_server(listener);
        Ok(api)
    }

    fn spawn_server(&self, listener: TcpListener) {
        let me = self.clone();
        let app = Router::new().fallback(move |uri: Uri| {
            let me = me.clone();
            async move { me.handle(uri) }
        });
        let stop = self.shutdown.child_token();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running { stop, task });
    }

    /// Stops the HTTP server as a crashed API server would be gone: open
    /// watches end, connections close and the port refuses connections.
    /// The objects are kept for [`FakeApi::restart`].
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(Running { stop, task }) = running {
            stop.cancel();
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Serves again on the same address, with the objects and history kept
    /// (a watch resuming from its last resourceVersion gets what changed).
    pub async fn restart(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.stopped.store(false, Ordering::SeqCst);
        self.spawn_server(listener);
        Ok(())
    }

    /// Base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("own URL is valid"));
        kube::Client::try_from(config).expect("kube client for a plain HTTP URL")
    }

    /// Request counters.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Makes every request fail with 500 (and ends open watches), or
    /// recovers.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Makes metrics.k8s.io fail with 503, or recovers.
    pub fn set_metrics_down(&self, down: bool) {
        self.metrics_down.store(down, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces an object (a Node, Pod, ... in its JSON form).
    pub fn apply(&self, object: Value) {
        self.apply_many(std::iter::once(object), true);
    }

    /// Creates or replaces many objects; `record` false loads them without
    /// watch history (only for objects present before any client lists).
    pub fn apply_many(&self, objects: impl IntoIterator<Item = Value>, record: bool) {
        let mut inner = self.lock();
        for mut object in objects {
            let Some((path, _)) = COLLECTIONS
                .iter()
                .copied()
                .find(|(_, k)| object["kind"].as_str() == Some(k))
            else {
                continue;
            };
            inner.rv += 1;
            let rv = inner.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let key = key_of(&object);
            let existed = inner
                .objects
                .entry(path)
                .or_default()
                .insert(key, object.clone())
                .is_some();
            if record {
                inner.history.push(Change {
                    rv,
                    path,
                    kind: if existed { "MODIFIED" } else { "ADDED" },
                    object,
                });
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Deletes an object by kind and `namespace/name` (or `name`).
    pub fn delete(&self, kind: &str, key: &str) -> bool {
        let mut inner = self.lock();
        let Some((path, _)) = COLLECTIONS.iter().copied().find(|(_, k)| *k == kind) else {
            return false;
        };
        let Some(mut object) = inner.objects.entry(path).or_default().remove(key) else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.history.push(Change {
            rv,
            path,
            kind: "DELETED",
            object,
        });
        drop(inner);
        self.changed.notify_waiters();
        true
    }

    /// Sets the NodeMetrics items served (`{"metadata":{"name":..},"usage":{..}}`).
    pub fn set_node_metrics(&self, items: Vec<Value>) {
        self.lock().node_metrics = items;
    }

    /// Sets the PodMetrics items served.
    pub fn set_pod_metrics(&self, items: Vec<Value>) {
        self.lock().pod_metrics = items;
    }

    fn handle(&self, uri: Uri) -> Response {
        if self.down.load(Ordering::SeqCst) {
            // 500 rather than 503: clients retry 503 in place for a long
            // time, which would hide the outage from the caller.
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "apiserver down",
            );
        }
        let q = query_pairs(&uri);
        let path = uri.path();
        if path == NODE_METRICS || path == POD_METRICS {
            self.calls.metrics_calls.fetch_add(1, Ordering::Relaxed);
            if self.metrics_down.load(Ordering::SeqCst) {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                );
            }
            let inner = self.lock();
            let (kind, items) = if path == NODE_METRICS {
                ("NodeMetricsList", inner.node_metrics.clone())
            } else {
                ("PodMetricsList", inner.pod_metrics.clone())
            };
            let body = json!({
                "kind": kind, "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {}, "items": items
            });
            return ([("content-type", "application/json")], body.to_string()).into_response();
        }
        let Some((path, kind)) = kind_of(path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        if q.get("watch").map(String::as_str) == Some("true")
            || q.get("watch").map(String::as_str) == Some("1")
        {
            return self.watch(path, kind, &q);
        }
        self.list(path, kind, &q)
    }

    fn list(&self, path: &'static str, kind: &str, q: &HashMap<String, String>) -> Response {
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > 0)
            .unwrap_or(usize::MAX);
        if limit != usize::MAX {
            self.calls.paged_lists.fetch_add(1, Ordering::Relaxed);
        }
        let inner = self.lock();
        // continue token: "<rv>/<last key>"
        let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                self.calls.continued_lists.fetch_add(1, Ordering::Relaxed);
                let (rv, key) = token.split_once('/').unwrap_or(("0", ""));
                (rv.parse().unwrap_or(inner.rv), Some(key.to_string()))
            }
            None => (inner.rv, None),
        };
        let empty = BTreeMap::new();
        let objects = inner.objects.get(path).unwrap_or(&empty);
        let selector = q.get("labelSelector");
        let range: Box<dyn Iterator<Item = (&String, &Value)>> = match &after {
            Some(k) => Box::new(objects.range::<String, _>((
                std::ops::Bound::Excluded(k.clone()),
                std::ops::Bound::Unbounded,
            ))),
            None => Box::new(objects.iter()),
        };
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        for (k, v) in range.filter(|(_, v)| matches(selector, v)) {
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(v);
            last = Some(k.clone());
        }
        let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
        if more {
            metadata["continue"] = json!(format!("{list_rv}/{}", last.unwrap_or_default()));
        }
        let api_version = if path.starts_with("/apis/storage.k8s.io") {
            "storage.k8s.io/v1"
        } else {
            "v1"
        };
        let body = json!({
            "kind": format!("{kind}List"), "apiVersion": api_version,
            "metadata": metadata, "items": items
        });
        ([("content-type", "application/json")], body.to_string()).into_response()
    }

    fn watch(
        &self,
        path: &'static str,
        kind: &'static str,
        q: &HashMap<String, String>,
    ) -> Response {
        self.calls.watches.fetch_add(1, Ordering::Relaxed);
        let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        if bookmarks {
            self.calls
                .watches_with_bookmarks
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut from: u64 = q
            .get("resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let timeout = Duration::from_secs(
            q.get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .unwrap_or(290),
        );
        let selector = q.get("labelSelector").cloned();
        let me = self.clone();
        let api_version = if path.starts_with("/apis/storage.k8s.io") {
            "storage.k8s.io/v1"
        } else {
            "v1"
        };
        let stream = async_stream(move |tx| async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if me.down.load(Ordering::SeqCst) || me.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let notified = me.changed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let (lines, head) = {
                    let inner = me.lock();
                    let start = inner.history.partition_point(|c| c.rv <= from);
                    let lines: Vec<String> = inner.history[start..]
                        .iter()
                        .filter(|c| c.path == path && matches(selector.as_ref(), &c.object))
                        .map(|c| json!({"type": c.kind, "object": c.object}).to_string() + "\n")
                        .collect();
                    (lines, inner.rv)
                };
                from = head;
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(me.bookmark_every) => {
                        if bookmarks {
                            let b = json!({"type": "BOOKMARK", "object": {
                                "kind": kind, "apiVersion": api_version,
                                "metadata": {"resourceVersion": from.to_string()}
                            }});
                            me.calls.bookmarks_sent.fetch_add(1, Ordering::Relaxed);
                            if tx.send(b.to_string() + "\n").await.is_err() {
                                return;
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// A body stream fed by a task through a channel.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures::Stream<Item = Result<String, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok(line), rx))
    })
}

/// A Node object as the API server returns it.
pub fn node(name: &str, cpu: &str, memory: &str, gpus: u32, roles: &[&str]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(name));
    for r in roles {
        labels.insert(format!("node-role.kubernetes.io/{r}"), json!(""));
    }
    let mut alloc =
        json!({"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"});
    if gpus > 0 {
        alloc["nvidia.com/gpu"] = json!(gpus.to_string());
        labels.insert(
            "nvidia.com/gpu.product".into(),
            json!("NVIDIA-A100-SXM4-80GB"),
        );
    }
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {},
        "status": {
            "capacity": alloc, "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

/// A Pod object with one container requesting `cpu`, `memory` and `gpus`
/// (`nvidia.com/gpu`, omitted when 0), bound to `node` (unbound if empty).
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    phase: &str,
    cpu: &str,
    memory: &str,
    gpus: u32,
) -> Value {
    let mut requests = json!({"cpu": cpu, "memory": memory});
    if gpus > 0 {
        requests["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    let mut spec = json!({"containers": [{"name": "main", "image": "busybox", "resources": {"requests": requests}}]});
    if !node.is_empty() {
        spec["nodeName"] = json!(node);
    }
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
        "status": {"phase": phase}
    })
}
