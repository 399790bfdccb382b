//! Kubernetes cluster-state collector: builds one `ClusterInsight` per node
//! from the API server, metrics.k8s.io and the exporters it finds, and
//! stores it through the same [`Publisher`] as the gRPC ingest (validation,
//! JetStream acknowledgement, content-hash de-duplication).
//!
//! - Nodes, Pods, PersistentVolumes, PersistentVolumeClaims and
//!   StorageClasses are watched (list once, then watch with bookmarks), and
//!   so are exporter pods matching the configured label selectors.
//! - metrics.k8s.io and the exporters are read once per interval.
//! - Every interval the insights are built ([`aggregate`]) and published.
//!
//! Failure handling: a watch that fails keeps its last good content and
//! retries with backoff (kube-runtime's watcher resumes from its last
//! resourceVersion, or lists anew); after `--collect-stale-after` without a
//! working Node or Pod watch nothing is published (the view is too old to be
//! reported as current), `apollo_collector_view_current` turns 0 and
//! [`Collector::readiness`] false, until the watches work again. The ingest
//! service waits for the first sync only ([`Collector::synced_once`]): it
//! keeps serving node agents' reports through a Kubernetes API outage.
//! Deleted nodes stop being reported and are listed as gone.

pub mod aggregate;
pub mod exposition;
pub mod fake_api;
pub mod metrics;
pub mod model;
pub mod quantity;
pub mod sources;
pub mod state;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use apollo_common::config::parse_duration;
use apollo_common::shutdown::CancellationToken;
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use kube::{runtime::watcher, Api};
use tokio::sync::watch;

pub use metrics::CollectorMetrics;
pub use state::{ClusterState, SharedState};

use crate::service::Publisher;

/// Collector flags (all off unless `--collect-kubernetes`).
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    /// Build ClusterInsights from the Kubernetes API (in-cluster service
    /// account, else KUBECONFIG / ~/.kube/config) and store them like
    /// reported ones.
    #[arg(
        long = "collect-kubernetes",
        env = "APOLLO_COLLECT_KUBERNETES",
        default_value_t = false
    )]
    pub collect_kubernetes: bool,
    /// How often one insight per node is published.
    #[arg(long = "collect-interval", env = "APOLLO_COLLECT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Age after which data of a failing source is no longer reported (and
    /// after which a failing Node/Pod watch stops publishing altogether).
    #[arg(long = "collect-stale-after", env = "APOLLO_COLLECT_STALE_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// Read usage from metrics.k8s.io (metrics-server).
    #[arg(long = "collect-metrics-api", env = "APOLLO_COLLECT_METRICS_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_api: bool,
    /// Label selector of DCGM exporter pods (empty: do not scrape).
    #[arg(
        long = "dcgm-selector",
        env = "APOLLO_DCGM_SELECTOR",
        default_value = "app.kubernetes.io/name=dcgm-exporter"
    )]
    pub dcgm_selector: String,
    /// Container port name of the DCGM exporter.
    #[arg(
        long = "dcgm-port-name",
        env = "APOLLO_DCGM_PORT_NAME",
        default_value = "metrics"
    )]
    pub dcgm_port_name: String,
    /// Label selector of node-exporter pods (empty: do not scrape).
    #[arg(
        long = "node-exporter-selector",
        env = "APOLLO_NODE_EXPORTER_SELECTOR",
        default_value = "app.kubernetes.io/name=prometheus-node-exporter"
    )]
    pub node_exporter_selector: String,
    /// Container port name of node-exporter.
    #[arg(
        long = "node-exporter-port-name",
        env = "APOLLO_NODE_EXPORTER_PORT_NAME",
        default_value = "http-metrics"
    )]
    pub node_exporter_port_name: String,
    /// Deadline of one metrics.k8s.io read or exporter scrape.
    #[arg(long = "scrape-timeout", env = "APOLLO_SCRAPE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub scrape_timeout: Duration,
    /// Page size of the initial lists (`limit`).
    #[arg(
        long = "collect-page-size",
        env = "APOLLO_COLLECT_PAGE_SIZE",
        default_value_t = 500
    )]
    pub page_size: u32,
    /// Insights awaiting their JetStream acknowledgement at once.
    #[arg(
        long = "collect-publish-concurrency",
        env = "APOLLO_COLLECT_PUBLISH_CONCURRENCY",
        default_value_t = 256
    )]
    pub publish_concurrency: usize,
}

impl Default for CollectorArgs {
    /// The flag defaults.
    fn default() -> Self {
        apollo_common::config::flag_defaults()
    }
}

impl CollectorArgs {
    /// Checks values clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Duration::from_millis(100) {
            return Err("--collect-interval must be at least 100ms".into());
        }
        if self.stale_after < self.interval {
            return Err("--collect-stale-after must be at least --collect-interval".into());
        }
        if self.page_size == 0 || self.publish_concurrency == 0 {
            return Err(
                "--collect-page-size and --collect-publish-concurrency must be positive".into(),
            );
        }
        if self.scrape_timeout.is_zero() {
            return Err("--scrape-timeout must be positive".into());
        }
        Ok(())
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Insights stored.
    pub published: u64,
    /// Insights refused or not acknowledged.
    pub failed: u64,
    /// Whether the round was skipped because the view is too old.
    pub skipped_stale: bool,
}

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    state: SharedState,
    ready: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Starts the watchers, the source readers and the publishing loop.
    pub fn spawn(
        client: kube::Client,
        publisher: Arc<Publisher>,
        args: CollectorArgs,
        metrics: CollectorMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let state: SharedState = Default::default();
        let (ready_tx, ready) = watch::channel(false);
        let wc = || watcher::Config::default().page_size(args.page_size);
        let mut tasks = Vec::new();
        macro_rules! watch_all {
            ($k:ty, $binding:expr, $cfg:expr) => {
                tasks.push(tokio::spawn(state::run_watch(
                    Api::<$k>::all(client.clone()),
                    $cfg,
                    $binding,
                    state.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )))
            };
        }
        watch_all!(Node, state::nodes(), wc());
        watch_all!(Pod, state::pods(), wc());
        watch_all!(PersistentVolume, state::volumes(), wc());
        watch_all!(PersistentVolumeClaim, state::claims(), wc());
        watch_all!(StorageClass, state::classes(), wc());
        if !args.dcgm_selector.is_empty() {
            watch_all!(
                Pod,
                state::exporters("dcgm_pods", args.dcgm_port_name.clone(), |s| {
                    &mut s.dcgm_targets
                }),
                wc().labels(&args.dcgm_selector)
            );
        }
        if !args.node_exporter_selector.is_empty() {
            watch_all!(
                Pod,
                state::exporters(
                    "node_exporter_pods",
                    args.node_exporter_port_name.clone(),
                    |s| &mut s.node_exporter_targets
                ),
                wc().labels(&args.node_exporter_selector)
            );
        }
        let sources =
            sources::Sources::new(client, metrics.clone(), args.interval, args.scrape_timeout);
        let round = Round {
            state: state.clone(),
            publisher,
            sources,
            telemetry: Arc::new(tokio::sync::Mutex::new(sources::Telemetry::default())),
            args,
            metrics,
            ready: ready_tx,
        };
        tasks.push(tokio::spawn(round.run(shutdown)));
        Self {
            state,
            ready,
            tasks,
        }
    }

    /// True while the Node and Pod views are synced and current.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Turns true once the views were first synced and stays true: what
    /// gates the ingest service's readiness. A later Kubernetes API outage
    /// stops the collector's publishing (and shows in
    /// `apollo_collector_view_current`), not the reports node agents send.
    pub fn synced_once(&self, shutdown: CancellationToken) -> watch::Receiver<bool> {
        let mut ready = self.ready.clone();
        let (tx, rx) = watch::channel(*ready.borrow());
        tokio::spawn(async move {
            let synced = tokio::select! {
                _ = shutdown.cancelled() => false,
                r = ready.wait_for(|r| *r) => r.is_ok(),
            };
            if synced {
                let _ = tx.send(true);
                // Hold the sender so the value stays.
                shutdown.cancelled().await;
            }
        });
        rx
    }

    /// The collector's view of the cluster.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Waits for every task to stop (after the shutdown token fired).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Round {
    state: SharedState,
    publisher: Arc<Publisher>,
    sources: sources::Sources,
    telemetry: Arc<tokio::sync::Mutex<sources::Telemetry>>,
    args: CollectorArgs,
    metrics: CollectorMetrics,
    ready: watch::Sender<bool>,
}

/// The start of the current interval on the wall-clock grid (multiples of
/// `interval` since the Unix epoch), and the time until the next one.
/// Replicas collecting the same view then publish byte-identical insights,
/// which JetStream de-duplicates by content id.
fn grid(interval: Duration) -> (apollo_proto::Timestamp, Duration) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let step = interval.as_nanos().max(1);
    let start = now.as_nanos() / step * step;
    let next = Duration::from_nanos(u64::try_from(start + step - now.as_nanos()).unwrap_or(0));
    let ts = apollo_proto::Timestamp {
        seconds: i64::try_from(start / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(start % 1_000_000_000).unwrap_or(0),
    };
    (ts, next)
}

impl Round {
    async fn run(self, shutdown: CancellationToken) {
        loop {
            let (_, wait) = grid(self.args.interval);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let started = Instant::now();
            self.read_sources().await;
            let report = self.publish_round().await;
            self.metrics.cycle(started.elapsed().as_secs_f64());
            tracing::debug!(?report, "collection round done");
        }
        let _ = self.ready.send(false);
    }

    async fn read_sources(&self) {
        let (dcgm, hosts, gone) = {
            let s = state::lock(&self.state);
            (
                s.dcgm_targets.values().cloned().collect::<Vec<_>>(),
                s.node_exporter_targets
                    .values()
                    .cloned()
                    .collect::<Vec<_>>(),
                s.gone.keys().cloned().collect::<Vec<_>>(),
            )
        };
        {
            let mut t = self.telemetry.lock().await;
            for n in &gone {
                t.forget(n);
            }
        }
        let usage = async {
            if self.args.metrics_api {
                self.sources.read_usage(&self.telemetry).await;
            }
        };
        tokio::join!(
            usage,
            self.sources.scrape("dcgm", dcgm, &self.telemetry),
            self.sources.scrape("node_exporter", hosts, &self.telemetry),
        );
    }

    /// Whether the Node and Pod views can be reported as current.
    fn view_current(&self, s: &ClusterState) -> bool {
        let ok = |since: Option<Instant>| since.is_none_or(|t| t.elapsed() < self.args.stale_after);
        s.nodes.is_synced()
            && s.pods.is_synced()
            && ok(s.nodes.failing_since())
            && ok(s.pods.failing_since())
    }

    /// Builds and publishes one insight per node.
    async fn publish_round(&self) -> RoundReport {
        let observed = self
            .telemetry
            .lock()
            .await
            .observed(self.args.stale_after, &self.metrics);
        let (insights, stats, current) = {
            let s = state::lock(&self.state);
            let current = self.view_current(&s);
            let kube_up = s.nodes.failing_since().is_none() && s.pods.failing_since().is_none();
            self.metrics
                .source_up("kubernetes", if kube_up { 1.0 } else { 0.0 });
            if !current {
                (Vec::new(), Default::default(), false)
            } else {
                let (insights, stats) = aggregate::build_insights(
                    s.nodes.values(),
                    s.pods.values(),
                    s.volumes.values(),
                    &observed,
                    grid(self.args.interval).0,
                );
                (insights, stats, true)
            }
        };
        self.metrics.view_current(current);
        self.ready.send_if_modified(|r| {
            let changed = *r != current;
            if changed {
                tracing::info!(current, "kubernetes view currency changed");
            }
            *r = current;
            changed
        });
        if !current {
            self.metrics.insights("skipped_stale", 1);
            return RoundReport {
                skipped_stale: true,
                ..Default::default()
            };
        }
        if stats.gpu_unplaced > 0 {
            tracing::debug!(
                unplaced = stats.gpu_unplaced,
                "GPU requests exceed node GPUs"
            );
        }
        let results: Vec<bool> = futures::stream::iter(insights.into_iter().map(|i| {
            let publisher = self.publisher.clone();
            async move {
                match publisher.store_cluster_insight(&i).await {
                    Ok(_) => true,
                    Err(err) => {
                        tracing::warn!(node = %i.node_name, %err, "collected insight not stored");
                        false
                    }
                }
            }
        }))
        .buffer_unordered(self.args.publish_concurrency)
        .collect()
        .await;
        let published = results.iter().filter(|ok| **ok).count() as u64;
        let failed = results.len() as u64 - published;
        self.metrics.insights("published", published);
        if failed > 0 {
            self.metrics.insights("failed", failed);
        }
        RoundReport {
            published,
            failed,
            skipped_stale: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_start_is_a_multiple_of_the_interval_and_not_in_the_future() {
        let interval = Duration::from_millis(300);
        let clock = || {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        };
        let before = clock();
        let (ts, wait) = grid(interval);
        let after = clock();
        let nanos = ts.seconds as u128 * 1_000_000_000 + ts.nanos as u128;
        assert_eq!(nanos % interval.as_nanos(), 0);
        assert!(wait <= interval && !wait.is_zero());
        // The step that holds the moment `grid` read the clock.
        assert!(nanos <= after, "in the future");
        assert!(nanos + interval.as_nanos() > before, "a step too early");
    }

    #[test]
    fn defaults_match_the_command_line_and_validate() {
        let d = CollectorArgs::default();
        assert!(!d.collect_kubernetes);
        assert_eq!(d.interval, Duration::from_secs(10));
        assert_eq!(d.dcgm_port_name, "metrics");
        assert_eq!(d.node_exporter_port_name, "http-metrics");
        assert!(d.validate().is_ok());
    }
}
