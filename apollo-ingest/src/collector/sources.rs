//! Measured usage: metrics.k8s.io (NodeMetrics, PodMetrics) and the
//! exporters found through the API (DCGM, node-exporter), read once per
//! interval.
//!
//! A failed read keeps the last good data (marked stale in metrics) and
//! backs off per target (interval x 2^failures, at most 5 minutes); data
//! older than `--collect-stale-after` is left out of insights rather than
//! reported as current.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HttpClient},
    rt::TokioExecutor,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    Api,
};

use super::{
    aggregate::{GpuTelemetry, HostTelemetry, Observed, Usage},
    exposition::{self, HostSample, Problem},
    metrics::CollectorMetrics,
    quantity,
};

/// Largest exporter response read (DCGM with many GPUs stays far below).
const MAX_SCRAPE_BYTES: usize = 16 * 1024 * 1024;
/// Longest backoff of a failing target.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Exporters scraped at once.
const SCRAPE_CONCURRENCY: usize = 32;

/// Data of one source for one node (or the whole metrics API).
#[derive(Debug, Clone)]
struct Held<T> {
    value: Option<(T, Instant)>,
    last_ok: bool,
    failures: u32,
    next_attempt: Option<Instant>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Self {
            value: None,
            last_ok: false,
            failures: 0,
            next_attempt: None,
        }
    }
}

impl<T> Held<T> {
    fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| now >= t)
    }

    fn succeeded(&mut self, value: T, now: Instant) {
        self.value = Some((value, now));
        self.last_ok = true;
        self.failures = 0;
        self.next_attempt = None;
    }

    fn failed(&mut self, interval: Duration, now: Instant) {
        self.last_ok = false;
        self.failures = self.failures.saturating_add(1);
        let backoff = interval
            .saturating_mul(1u32 << self.failures.min(16).saturating_sub(1))
            .min(MAX_BACKOFF);
        self.next_attempt = Some(now + backoff);
    }

    /// The value if younger than `max_age`, and whether it is stale.
    fn fresh(&self, now: Instant, max_age: Duration) -> Option<(&T, bool)> {
        let (v, at) = self.value.as_ref()?;
        (now.saturating_duration_since(*at) <= max_age).then_some((v, !self.last_ok))
    }
}

/// Usage of every node and pod from one metrics.k8s.io read.
#[derive(Debug, Clone, Default)]
struct ApiUsage {
    nodes: HashMap<String, Usage>,
    pods: HashMap<String, Usage>,
}

/// Everything measured, with its age.
#[derive(Debug, Default)]
pub struct Telemetry {
    usage: Held<ApiUsage>,
    dcgm: HashMap<String, Held<Vec<GpuTelemetry>>>,
    hosts: HashMap<String, Held<HostTelemetry>>,
    host_samples: HashMap<String, (HostSample, Instant)>,
}

/// Reads the sources.
#[derive(Clone)]
pub struct Sources {
    client: kube::Client,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    metrics: CollectorMetrics,
    interval: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn metrics_api(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", kind),
        plural,
    )
}

/// `usage.cpu` / `usage.memory` of a metrics object.
fn usage_of(v: &serde_json::Value, problems: &mut Vec<Problem>) -> Option<Usage> {
    let cpu = v.get("cpu")?.as_str()?;
    let mem = v.get("memory")?.as_str()?;
    match (quantity::parse(cpu), quantity::bytes(mem)) {
        (Ok(cpu_cores), Ok(memory_bytes)) => Some(Usage {
            cpu_cores,
            memory_bytes,
        }),
        _ => {
            problems.push(Problem {
                reason: "unknown_unit",
                detail: format!("cpu {cpu:?} memory {mem:?}"),
            });
            None
        }
    }
}

impl Sources {
    /// Sources read through `client` (metrics.k8s.io) and plain HTTP
    /// (exporters), each read bounded by `timeout`.
    pub fn new(
        client: kube::Client,
        metrics: CollectorMetrics,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client,
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
            metrics,
            interval,
            timeout,
        }
    }

    async fn list_usage(&self) -> Result<ApiUsage, kube::Error> {
        let lp = ListParams::default();
        let nodes: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &metrics_api("NodeMetrics", "nodes"));
        let pods: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &metrics_api("PodMetrics", "pods"));
        let node_list = nodes.list(&lp).await?;
        let pod_list = pods.list(&lp).await?;
        let mut problems = Vec::new();
        let mut out = ApiUsage::default();
        for n in node_list.items {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            if let Some(u) = n.data.get("usage").and_then(|u| usage_of(u, &mut problems)) {
                out.nodes.insert(name, u);
            }
        }
        for p in pod_list.items {
            let (Some(ns), Some(name)) = (p.metadata.namespace.clone(), p.metadata.name.clone())
            else {
                continue;
            };
            let mut total = Usage::default();
            let mut ok = true;
            for c in p
                .data
                .get("containers")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
            {
                match c.get("usage").and_then(|u| usage_of(u, &mut problems)) {
                    Some(u) => {
                        total.cpu_cores += u.cpu_cores;
                        total.memory_bytes = total.memory_bytes.saturating_add(u.memory_bytes);
                    }
                    None => ok = false,
                }
            }
            if ok {
                out.pods.insert(format!("{ns}/{name}"), total);
            }
        }
        for p in &problems {
            self.metrics.data_problem("metrics_api", p.reason);
        }
        Ok(out)
    }

    /// Reads metrics.k8s.io once (if due).
    pub async fn read_usage(&self, telemetry: &tokio::sync::Mutex<Telemetry>) {
        let now = Instant::now();
        if !telemetry.lock().await.usage.due(now) {
            return;
        }
        let res = tokio::time::timeout(self.timeout, self.list_usage()).await;
        let mut t = telemetry.lock().await;
        match res {
            Ok(Ok(u)) => {
                t.usage.succeeded(u, Instant::now());
                self.metrics.source_up("metrics_api", 1.0);
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "metrics.k8s.io read failed, keeping last usage");
                self.metrics.scrape_error("metrics_api", "api_error");
                self.metrics.source_up("metrics_api", 0.0);
                t.usage.failed(self.interval, now);
            }
            Err(_) => {
                tracing::warn!("metrics.k8s.io read timed out, keeping last usage");
                self.metrics.scrape_error("metrics_api", "timeout");
                self.metrics.source_up("metrics_api", 0.0);
                t.usage.failed(self.interval, now);
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<String, &'static str> {
        let uri: hyper::Uri = url.parse().map_err(|_| "bad_url")?;
        let work = async {
            let resp = self.http.get(uri).await.map_err(|_| "connect")?;
            if !resp.status().is_success() {
                return Err("http_status");
            }
            let body = Limited::new(resp.into_body(), MAX_SCRAPE_BYTES)
                .collect()
                .await
                .map_err(|_| "body")?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "not_utf8")
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timeout")?
    }

    /// Scrapes the due targets of one exporter kind (`dcgm` or
    /// `node_exporter`), given as `(node, url)`.
    pub async fn scrape(
        &self,
        source: &'static str,
        targets: Vec<(String, String)>,
        telemetry: &tokio::sync::Mutex<Telemetry>,
    ) {
        let now = Instant::now();
        let due: Vec<(String, String)> = {
            let t = telemetry.lock().await;
            targets
                .iter()
                .filter(|(node, _)| match source {
                    "dcgm" => t.dcgm.get(node).is_none_or(|h| h.due(now)),
                    _ => t.hosts.get(node).is_none_or(|h| h.due(now)),
                })
                .cloned()
                .collect()
        };
        let results: Vec<(String, Result<String, &'static str>)> =
            futures::stream::iter(due.into_iter().map(|(node, url)| async move {
                let res = self.fetch(&url).await;
                (node, res)
            }))
            .buffer_unordered(SCRAPE_CONCURRENCY)
            .collect()
            .await;
        let done = Instant::now();
        let mut t = telemetry.lock().await;
        let (mut ok, mut failed) = (0usize, 0usize);
        for (node, res) in results {
            let text = match res {
                Ok(text) => text,
                Err(reason) => {
                    tracing::debug!(source, node = %node, reason, "exporter scrape failed");
                    self.metrics.scrape_error(source, reason);
                    failed += 1;
                    match source {
                        "dcgm" => t.dcgm.entry(node).or_default().failed(self.interval, now),
                        _ => t.hosts.entry(node).or_default().failed(self.interval, now),
                    }
                    continue;
                }
            };
            ok += 1;
            let mut problems = Vec::new();
            if source == "dcgm" {
                let gpus = exposition::parse_dcgm(&text, &mut problems);
                t.dcgm.entry(node).or_default().succeeded(gpus, done);
            } else {
                let sample = exposition::parse_node_exporter(&text, &mut problems);
                let prev = t.host_samples.remove(&node);
                let seconds = prev.as_ref().map_or(0.0, |(_, at)| {
                    done.saturating_duration_since(*at).as_secs_f64()
                });
                let host = exposition::host_telemetry(
                    prev.as_ref().map(|(s, _)| s),
                    &sample,
                    seconds,
                    &mut problems,
                );
                t.host_samples.insert(node.clone(), (sample, done));
                t.hosts.entry(node).or_default().succeeded(host, done);
            }
            for p in &problems {
                tracing::debug!(source, reason = p.reason, detail = %p.detail, "exporter data refused");
                self.metrics.data_problem(source, p.reason);
            }
        }
        if ok + failed > 0 {
            self.metrics
                .source_up(source, ok as f64 / (ok + failed) as f64);
        }
    }
}

impl Telemetry {
    /// Fresh measurements for the next round, updating the staleness metrics.
    pub fn observed(&mut self, max_age: Duration, metrics: &CollectorMetrics) -> Observed {
        let now = Instant::now();
        let mut out = Observed::default();
        match self.usage.fresh(now, max_age) {
            Some((u, stale)) => {
                out.node_usage = u.nodes.clone();
                out.pod_usage = u.pods.clone();
                metrics.staleness("metrics_api", if stale { u.nodes.len() } else { 0 }, 0);
            }
            None => {
                let expired = self.usage.value.as_ref().map_or(0, |(u, _)| u.nodes.len());
                metrics.staleness("metrics_api", 0, expired);
            }
        }
        let (mut stale, mut expired) = (0, 0);
        self.dcgm
            .retain(|node, held| match held.fresh(now, max_age) {
                Some((gpus, s)) => {
                    stale += usize::from(s);
                    out.gpus.insert(node.clone(), gpus.clone());
                    true
                }
                None => {
                    expired += 1;
                    held.value.is_some() && held.failures < 64
                }
            });
        metrics.staleness("dcgm", stale, expired);
        let (mut stale, mut expired) = (0, 0);
        self.hosts
            .retain(|node, held| match held.fresh(now, max_age) {
                Some((host, s)) => {
                    stale += usize::from(s);
                    out.hosts.insert(node.clone(), host.clone());
                    true
                }
                None => {
                    expired += 1;
                    held.value.is_some() && held.failures < 64
                }
            });
        metrics.staleness("node_exporter", stale, expired);
        out
    }

    /// Forgets nodes deleted from the API.
    pub fn forget(&mut self, node: &str) {
        self.dcgm.remove(node);
        self.hosts.remove(node);
        self.host_samples.remove(node);
    }
}
