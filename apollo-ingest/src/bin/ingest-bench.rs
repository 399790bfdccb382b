//! Throughput of the ingest path against raw JetStream, printed as JSON.
//!
//! Both paths store the same WorkloadSignatures as the same protobuf-JSON
//! payloads with a `Nats-Msg-Id`, acknowledged, with the same number of acks
//! in flight:
//! - `ingest`: a gRPC client stream into `apollo-ingest` (decode, validate,
//!   JSON, publish, ack) served in this process on 127.0.0.1;
//! - `raw`: async-nats publishing the pre-serialised payloads directly.
//!
//! Starts its own `nats-server -js` (file storage in a temporary directory)
//! unless `--nats-url` is given.
//!
//! `cargo run --release -p apollo-ingest --bin ingest-bench -- --messages 20000`

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use apollo_common::{
    bus::{content_id, to_json},
    config::{NatsArgs, StreamArgs},
    shutdown::CancellationToken,
    Bus,
};
use apollo_ingest::Config;
use apollo_proto::{
    insight_service_client::InsightServiceClient, ResourceMetrics, Timestamp, WorkloadSignature,
};
use async_nats::{jetstream::message::PublishMessage, HeaderMap};
use clap::Parser;
use futures::{stream::FuturesUnordered, StreamExt};
use tokio::net::TcpListener;

/// Compares client-streamed ingest with raw JetStream publishing.
#[derive(Debug, Parser)]
#[command(name = "ingest-bench")]
struct Args {
    /// Messages per round and path.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Rounds per path (the median rate is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Acks in flight, for both paths.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Distinct pods (subjects) the messages spread over.
    #[arg(long, default_value_t = 500)]
    pods: usize,
    /// JetStream storage: `file` or `memory`.
    #[arg(long, default_value = "file", value_parser = ["file", "memory"])]
    storage: String,
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
        let store = std::env::temp_dir().join(format!("ingest-bench-{}", std::process::id()));
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

fn bus_args(url: &str, name: &str, storage: &str) -> (NatsArgs, StreamArgs) {
    let nats = NatsArgs {
        url: url.to_string(),
        subject_prefix: name.to_string(),
        stream_prefix: name.to_ascii_uppercase(),
        request_timeout: Duration::from_secs(10),
        ..NatsArgs::default()
    };
    let streams = StreamArgs {
        storage: storage.to_string(),
        ..StreamArgs::default()
    };
    (nats, streams)
}

/// Messages of one round; `round` makes the content unique per round so
/// de-duplication never short-cuts a later round.
fn signatures(round: usize, n: usize, pods: usize) -> Vec<WorkloadSignature> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (0..n)
        .map(|i| WorkloadSignature {
            pod_name: format!("trainer-{}", i % pods.max(1)),
            pod_namespace: "bench".into(),
            pod_uid: format!("uid-{i}"),
            node_name: format!("gpu-node-{}", i % 16),
            container_name: "main".into(),
            workload_type: 1,
            current_stage: 3,
            io_pattern: 1,
            confidence: 0.9,
            framework: "pytorch".into(),
            framework_version: "2.4.0".into(),
            is_gpu_workload: true,
            estimated_batch_size: 64,
            current_metrics: Some(ResourceMetrics {
                cpu_usage_percent: (i % 100) as f64,
                cpu_request_cores: 8.0,
                memory_usage_percent: 40.0,
                memory_usage_bytes: 12 << 30,
                disk_read_bytes: (i as i64) * 4096,
                disk_read_iops: 1200,
                gpu_usage_percent: 88.0,
                gpu_memory_usage_bytes: 30 << 30,
                gpu_memory_total_bytes: 80 << 30,
                collected_at: Some(Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            updated_at: Some(Timestamp {
                seconds: now.as_secs() as i64,
                nanos: ((round % 1000) * 1000) as i32,
            }),
            ..Default::default()
        })
        .collect()
}

async fn raw_round(
    bus: &Bus,
    msgs: &[WorkloadSignature],
    inflight: usize,
) -> anyhow::Result<Duration> {
    let subjects = bus.subjects();
    let prepared = msgs
        .iter()
        .map(|m| {
            let subject = subjects.workload(&m.pod_namespace, &m.pod_name)?;
            let payload = to_json(m)?;
            Ok((subject, payload))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let js = bus.jetstream();
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (subject, payload) in prepared {
        while acks.len() >= inflight {
            if let Some(res) = acks.next().await {
                res?;
            }
        }
        let id = content_id(&subject, &payload);
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let publish = PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(&id);
        let ack = js.send_publish(subject, publish).await?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(res) = acks.next().await {
        res?;
    }
    Ok(start.elapsed())
}

async fn ingest_round(
    client: &mut InsightServiceClient<tonic::transport::Channel>,
    msgs: Vec<WorkloadSignature>,
) -> anyhow::Result<Duration> {
    let n = msgs.len() as i64;
    let start = Instant::now();
    let resp = client
        .stream_workload_signatures(futures::stream::iter(msgs))
        .await?
        .into_inner();
    let took = start.elapsed();
    if resp.messages_processed != n {
        bail!(
            "ingest stored {} of {n}: {}",
            resp.messages_processed,
            resp.status
        );
    }
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    serde_json::json!({
        "cpu_model": model,
        "logical_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "kernel": kernel,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.messages == 0 || args.rounds == 0 || args.inflight == 0 {
        bail!("--messages, --rounds and --inflight must be positive");
    }
    let local = match &args.nats_url {
        Some(_) => None,
        None => Some(LocalNats::start()?),
    };
    let url = args
        .nats_url
        .clone()
        .or_else(|| local.as_ref().map(|l| l.url.clone()))
        .context("no NATS URL")?;
    let suffix = std::process::id();

    // Ingest, in process.
    let (n, s) = bus_args(&url, &format!("benchingest{suffix}"), &args.storage);
    let mut config = Config::new(n, s);
    config.max_inflight_acks = args.inflight;
    config.publish_deadline = Duration::from_secs(10);
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(apollo_ingest::serve(config, (grpc, http), shutdown.clone()));
    let mut client = InsightServiceClient::connect(format!("http://{addr}")).await?;

    // Raw JetStream, its own streams.
    let (n, s) = bus_args(&url, &format!("benchraw{suffix}"), &args.storage);
    let raw_token = CancellationToken::new();
    let raw = Bus::connect("ingest-bench", &n, &s, raw_token.clone()).await?;
    if !raw.wait_ready(Duration::from_secs(20)).await {
        bail!("NATS at {url} not ready");
    }

    // Warm-up of both paths (connections, streams, allocator).
    let warm = signatures(999, 1000.min(args.messages), args.pods);
    let mut ready = false;
    for _ in 0..100 {
        if ingest_round(&mut client, warm.clone()).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        bail!("ingest never became ready");
    }
    raw_round(&raw, &warm, args.inflight).await?;

    let payload_bytes: usize = signatures(0, 100, args.pods)
        .iter()
        .map(|m| to_json(m).map(|b| b.len()).unwrap_or(0))
        .sum::<usize>()
        / 100;

    let mut raw_rates = Vec::new();
    let mut ingest_rates = Vec::new();
    for round in 0..args.rounds {
        let msgs = signatures(2 * round, args.messages, args.pods);
        let took = raw_round(&raw, &msgs, args.inflight).await?;
        raw_rates.push(args.messages as f64 / took.as_secs_f64());
        let msgs = signatures(2 * round + 1, args.messages, args.pods);
        let took = ingest_round(&mut client, msgs).await?;
        ingest_rates.push(args.messages as f64 / took.as_secs_f64());
    }
    let raw_rate = median(raw_rates.clone());
    let ingest_rate = median(ingest_rates.clone());
    let ratio = ingest_rate / raw_rate;

    let version = Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = serde_json::json!({
        "benchmark": "ingest client stream vs raw JetStream publish (acked)",
        "messages_per_round": args.messages,
        "rounds": args.rounds,
        "inflight_acks": args.inflight,
        "distinct_subjects": args.pods,
        "payload_bytes_avg": payload_bytes,
        "storage": args.storage,
        "raw_jetstream_msgs_per_s": raw_rate.round(),
        "ingest_msgs_per_s": ingest_rate.round(),
        "ingest_to_raw_ratio": (ratio * 1000.0).round() / 1000.0,
        "raw_rounds_msgs_per_s": raw_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "ingest_rounds_msgs_per_s": ingest_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "target_ratio": 0.5,
        "meets_target": ratio >= 0.5,
        "nats_server": if args.nats_url.is_some() { "external".to_string() } else { version },
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);

    shutdown.cancel();
    let _ = server.await;
    raw.drain().await;
    raw_token.cancel();
    drop(local);
    Ok(())
}
