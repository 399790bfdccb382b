//! Memory and CPU of the Kubernetes collector at scale, printed as JSON.
//!
//! A synthetic API server in this process serves `--nodes` Nodes and
//! `--pods` Pods (paged lists, watches with bookmarks); the collector syncs
//! through kube-runtime watchers and publishes one ClusterInsight per node
//! every `--interval` through the ingest publisher into JetStream (a
//! `nats-server` child process, memory storage, so its CPU is not counted).
//! Each interval `--churn` pods change (watch events).
//!
//! Reported per interval: process CPU seconds (user+system, includes the
//! synthetic server's share for the churn and bookmarks), resident memory,
//! insights published and the collector's own round time. Also the initial
//! sync (a full paged list of everything, what a polling collector would pay
//! every interval), so the watch-based steady state can be compared with it.
//! metrics.k8s.io and exporter scraping are off here.
//!
//! `cargo run --release -p apollo-ingest --bin collector-bench -- --nodes 5000 --pods 150000`

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use apollo_common::{
    config::{NatsArgs, StreamArgs},
    shutdown::CancellationToken,
    Bus,
};
use apollo_ingest::{
    collector::{fake_api, Collector, CollectorArgs, CollectorMetrics},
    metrics::Metrics,
    IngestSettings, Publisher,
};
use clap::Parser;
use prometheus_client::registry::Registry;
use serde_json::json;

/// Collector memory and CPU per interval at cluster scale.
#[derive(Debug, Parser)]
#[command(name = "collector-bench")]
struct Args {
    /// Nodes in the synthetic cluster.
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    /// Pods, spread evenly over the nodes.
    #[arg(long, default_value_t = 150_000)]
    pods: usize,
    /// Collection interval in seconds.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Intervals measured after the initial sync.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Pods changed per interval.
    #[arg(long, default_value_t = 1_500)]
    churn: usize,
    /// Use this NATS server instead of starting one.
    #[arg(long)]
    nats_url: Option<String>,
}

/// A nats-server child process, killed on drop.
struct LocalNats {
    child: Child,
    store: PathBuf,
    url: String,
}

impl LocalNats {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = std::env::temp_dir().join(format!("collector-bench-{}", std::process::id()));
        std::fs::create_dir_all(&store)?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start nats-server (install it or pass --nats-url)")?;
        let me = Self {
            child,
            store,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not start listening on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Process CPU seconds (user + system) from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (index 11, 12 after the name);
    // 100 ticks per second on Linux x86-64.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn pod_json(i: usize, nodes: usize, phase: &str, cpu_milli: usize) -> serde_json::Value {
    let mut p = fake_api::pod(
        &format!("ns-{}", i % 50),
        &format!("pod-{i}"),
        &format!("node-{}", i % nodes),
        phase,
        &format!("{cpu_milli}m"),
        "512Mi",
        0,
    );
    p["metadata"]["labels"] = json!({"app": format!("app-{}", i % 1000)});
    p
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let local = match &args.nats_url {
        Some(_) => None,
        None => Some(LocalNats::start()?),
    };
    let url = args
        .nats_url
        .clone()
        .or_else(|| local.as_ref().map(|l| l.url.clone()))
        .context("no NATS URL")?;
    let shutdown = CancellationToken::new();

    let api = fake_api::FakeApi::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        Duration::from_secs(5),
        shutdown.clone(),
    )?;
    let load_started = Instant::now();
    api.apply_many(
        (0..args.nodes)
            .map(|i| fake_api::node(&format!("node-{i}"), "64", "512Gi", 0, &["worker"])),
        false,
    );
    api.apply_many(
        (0..args.pods).map(|i| pod_json(i, args.nodes, "Running", 250)),
        false,
    );
    let load_seconds = load_started.elapsed().as_secs_f64();

    let nats = NatsArgs {
        url,
        subject_prefix: "cbench".into(),
        stream_prefix: "CBENCH".into(),
        request_timeout: Duration::from_secs(10),
        ..NatsArgs::default()
    };
    let streams = StreamArgs {
        storage: "memory".into(),
        insight_max_per_subject: 2,
        ..StreamArgs::default()
    };
    let bus = Bus::connect("collector-bench", &nats, &streams, CancellationToken::new()).await?;
    if !bus.wait_ready(Duration::from_secs(10)).await {
        bail!("NATS not ready");
    }
    let mut registry = Registry::default();
    let publisher = Arc::new(Publisher::new(
        bus.clone(),
        Metrics::register(&mut registry),
        IngestSettings {
            max_future_skew: Duration::from_secs(300),
            publish_deadline: Duration::from_secs(10),
            max_inflight_acks: 256,
        },
    ));
    let collector_metrics = CollectorMetrics::register(&mut registry);
    let collector_args = CollectorArgs {
        collect_kubernetes: true,
        interval: Duration::from_secs(args.interval),
        stale_after: Duration::from_secs(args.interval * 12),
        metrics_api: false,
        dcgm_selector: String::new(),
        node_exporter_selector: String::new(),
        ..CollectorArgs::default()
    };

    let rss_before = rss_mib();
    let cpu_before = cpu_seconds();
    let sync_started = Instant::now();
    let collector = Collector::spawn(
        api.client(),
        publisher,
        collector_args,
        collector_metrics,
        shutdown.clone(),
    );
    let mut ready = collector.readiness();
    // Ready once the first round found the view synced; wait for the sync
    // itself through the view (ready follows within one interval).
    loop {
        let synced = {
            let s = apollo_ingest::collector::state::lock(collector.state());
            s.nodes.is_synced() && s.pods.is_synced()
        };
        if synced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sync_seconds = sync_started.elapsed().as_secs_f64();
    let sync_cpu = cpu_seconds() - cpu_before;
    let rss_synced = rss_mib();
    tokio::time::timeout(
        Duration::from_secs(args.interval * 3),
        ready.wait_for(|r| *r),
    )
    .await
    .context("collector never ready")??;

    let encode = |registry: &Registry| {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, registry);
        text
    };
    let mut rounds = Vec::new();
    let mut churn_base = 0usize;
    let mut last_text = encode(&registry);
    let mut last_cpu = cpu_seconds();
    for r in 0..args.rounds {
        // Churn: flip requests of a slice of pods.
        let changed = (0..args.churn).map(|k| {
            let i = (churn_base + k) % args.pods;
            pod_json(i, args.nodes, "Running", 250 + 250 * ((r + 1) % 2))
        });
        api.apply_many(changed, true);
        churn_base += args.churn;
        tokio::time::sleep(Duration::from_secs(args.interval)).await;
        let text = encode(&registry);
        let cpu = cpu_seconds();
        let published = metric(
            &text,
            "apollo_collector_insights_total{outcome=\"published\"}",
        ) - metric(
            &last_text,
            "apollo_collector_insights_total{outcome=\"published\"}",
        );
        let cycles = metric(&text, "apollo_collector_cycle_seconds_count")
            - metric(&last_text, "apollo_collector_cycle_seconds_count");
        let cycle_sum = metric(&text, "apollo_collector_cycle_seconds_sum")
            - metric(&last_text, "apollo_collector_cycle_seconds_sum");
        rounds.push(json!({
            "interval": r,
            "cpu_seconds": cpu - last_cpu,
            "rss_mib": rss_mib(),
            "insights_published": published,
            "round_seconds": if cycles > 0.0 { cycle_sum / cycles } else { 0.0 },
        }));
        last_text = text;
        last_cpu = cpu;
    }
    let mut cpu: Vec<f64> = rounds
        .iter()
        .map(|r| r["cpu_seconds"].as_f64().unwrap_or(0.0))
        .collect();
    cpu.sort_by(f64::total_cmp);
    let mut round_s: Vec<f64> = rounds
        .iter()
        .map(|r| r["round_seconds"].as_f64().unwrap_or(0.0))
        .collect();
    round_s.sort_by(f64::total_cmp);
    let rss_peak = rounds
        .iter()
        .map(|r| r["rss_mib"].as_f64().unwrap_or(0.0))
        .fold(rss_synced, f64::max);
    let median_cpu = percentile(&cpu, 0.5);
    let out = json!({
        "nodes": args.nodes,
        "pods": args.pods,
        "interval_seconds": args.interval,
        "churn_pods_per_interval": args.churn,
        "synthetic_load_seconds": load_seconds,
        "initial_sync": {
            "wall_seconds": sync_seconds,
            "cpu_seconds": sync_cpu,
        },
        "rss_mib": {
            "before_collector": rss_before,
            "after_sync": rss_synced,
            "peak": rss_peak,
            "collector_delta_after_sync": rss_synced - rss_before,
            "collector_delta_peak": rss_peak - rss_before,
        },
        "per_interval": rounds,
        "cpu_seconds_per_interval": {
            "median": median_cpu,
            "min": cpu.first().copied().unwrap_or(0.0),
            "max": cpu.last().copied().unwrap_or(0.0),
            "share_of_one_core": median_cpu / args.interval as f64,
        },
        "round_seconds": {
            "median": percentile(&round_s, 0.5),
            "min": round_s.first().copied().unwrap_or(0.0),
            "max": round_s.last().copied().unwrap_or(0.0),
        },
        "full_relist_cpu_over_watch_interval_cpu": if median_cpu > 0.0 { sync_cpu / median_cpu } else { 0.0 },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    shutdown.cancel();
    collector.join().await;
    bus.drain().await;
    drop(local);
    Ok(())
}
