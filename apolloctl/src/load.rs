//! `apolloctl load`: drives ingest and the scheduling engine at fixed rates
//! from loopback and reports what they answered.
//!
//! Three call streams run side by side, each open loop at its own rate:
//! `ReportClusterInsight` (one of the openb nodes per call, in turn),
//! `ReportWorkloadSignature` and `GetSchedulingPolicy` (openb pods in
//! submission order, with their requests in `apollo.ai-storage/*`
//! annotations, as the scheduler asks). A call is due every `1 / rate`
//! seconds; due calls are issued every millisecond, each on its own task.
//! When `--max-in-flight` calls of one kind are still unanswered, a due
//! call is not sent and is counted as `not_sent` (the target is not keeping
//! up), so the offered rate never turns into an unbounded queue here.
//!
//! Bounded in time (`--duration`) and in count (`--max-calls` per kind).
//! Before the clock starts every node is reported once and the engine is
//! asked until it names a node, so the policies are decided against the
//! whole cluster.
//!
//! Results: per kind sent / ok / errors by gRPC code (with the first message
//! of each code, e.g. a server's rate limit answering `RESOURCE_EXHAUSTED`),
//! throughput, and latency percentiles from an HDR histogram (client side:
//! from sending to the answer, including gRPC on loopback). With the
//! engine's metrics address (known when `--start-stack` starts the stack)
//! the server-side `apollo_scheduling_decision_seconds` histogram is read
//! before and after, which gives the engine's own decision time over the
//! run without the client and the network. With `--pids` (or the stack's
//! own) the resident set size of each process is read at the start, every
//! progress interval and at the end.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight, GpuStatus,
    NodeResources, SchedulingPolicyRequest, Timestamp, WorkloadSignature,
};
use apollo_scheduling::simulate::{self, TraceNode, TracePod};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Semaphore,
};
use tonic::transport::Channel;

use crate::cpu_pin::{pin_process, CpuSplit};
use crate::output::Output;
use crate::stack::{Service, Stack, StopSignals};
use crate::up::{StackArgs, STOP_GRACE};

/// Arguments of `apolloctl load`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
apolloctl load --start-stack --duration 60s --insight-rate 10000 --policy-rate 200 -o json\n  \
apolloctl load --duration 10m --insight-rate 2000 --policy-rate 100 --pids 8312,8316")]
pub(crate) struct Args {
    /// Ingest gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_INGEST_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    ingest: String,
    /// Scheduling Policy Engine gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_SCHEDULING_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    scheduling: String,
    /// The scheduling engine's metrics address (`host:port` of `/metrics`),
    /// to report its server-side decision time; set by `--start-stack`.
    #[arg(long)]
    scheduling_metrics: Option<SocketAddr>,
    /// Start the stack here (nats-server and the four services on free
    /// ports), drive it, stop it; instead of `--ingest` / `--scheduling`.
    #[arg(long)]
    start_stack: bool,
    #[command(flatten)]
    stack: StackArgs,
    /// With `--start-stack`: run the scheduling engine alone on these CPUs
    /// (comma separated indices) and nats-server, the other services and
    /// this generator on the rest: the exclusive cores a Guaranteed pod with
    /// an integer CPU request gets under the kubelet's static CPU manager.
    #[arg(long, value_delimiter = ',', requires = "start_stack")]
    engine_cpus: Vec<usize>,
    /// How long to drive the services (after the warm-up).
    #[arg(long, default_value = "30s", value_parser = apollo_common::config::parse_duration)]
    duration: Duration,
    /// Node insights per second (0: none).
    #[arg(long, default_value_t = 1000.0, value_parser = rate)]
    insight_rate: f64,
    /// Node insights per call. 1: one unary `ReportClusterInsight` call
    /// each, as a node agent of its own sends. Above 1: a
    /// `StreamClusterInsights` call with this many, as a collector or an
    /// aggregating agent sends, at insight-rate / batch calls per second.
    /// Counts and rates stay in insights; latency is per call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    insight_batch: u64,
    /// `ReportWorkloadSignature` calls per second (0: none).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    signature_rate: f64,
    /// `GetSchedulingPolicy` calls per second (0: none).
    #[arg(long, default_value_t = 100.0, value_parser = rate)]
    policy_rate: f64,
    /// Number of openb nodes reported (the first N of the node list, 1-1213).
    #[arg(long, default_value_t = 1213)]
    nodes: usize,
    /// At most this many calls of each kind (default: as many as the rate
    /// and duration give).
    #[arg(long)]
    max_calls: Option<u64>,
    /// Unanswered calls of one kind at most; a due call past it is counted
    /// as not sent.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// HTTP/2 connections per service (calls are spread over them).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Deadline of each call.
    #[arg(long, default_value = "5s", value_parser = apollo_common::config::parse_duration)]
    call_timeout: Duration,
    /// Namespace of the pods asked for and reported.
    #[arg(long, default_value = "load")]
    namespace: String,
    /// Processes whose resident memory is reported (comma separated pids;
    /// with `--start-stack`, the stack's services).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// How often a progress line is printed on stderr (0s: never).
    #[arg(long, default_value = "5s", value_parser = apollo_common::config::parse_duration)]
    progress_every: Duration,
    /// Output format of the summary.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1_000_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate in calls per second (0 to 1000000)"
        )),
    }
}

impl Args {
    fn validate(&self) -> Result<(), String> {
        if !(1..=1213).contains(&self.nodes) {
            return Err(format!("--nodes {} is outside 1-1213", self.nodes));
        }
        if self.duration.is_zero() {
            return Err("--duration must be above 0s".into());
        }
        if self.max_in_flight == 0 || self.connections == 0 {
            return Err("--max-in-flight and --connections must be at least 1".into());
        }
        if self.insight_rate + self.signature_rate + self.policy_rate == 0.0 {
            return Err("every rate is 0: nothing to send".into());
        }
        Ok(())
    }
}

/// The kinds of call driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    ReportClusterInsight,
    ReportWorkloadSignature,
    GetSchedulingPolicy,
}

impl Rpc {
    /// The RPC's name, `batch` messages per call.
    fn name_for(self, batch: u64) -> &'static str {
        match self {
            Self::ReportClusterInsight if batch > 1 => "StreamClusterInsights",
            _ => self.name(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::ReportClusterInsight => "ReportClusterInsight",
            Self::ReportWorkloadSignature => "ReportWorkloadSignature",
            Self::GetSchedulingPolicy => "GetSchedulingPolicy",
        }
    }
}

/// What one kind of call got, as it runs.
struct Tally {
    sent: u64,
    ok: u64,
    not_sent: u64,
    errors: BTreeMap<&'static str, u64>,
    first_error: BTreeMap<&'static str, String>,
    /// Latency of answered calls (ok or error), microseconds.
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            sent: 0,
            ok: 0,
            not_sent: 0,
            errors: BTreeMap::new(),
            first_error: BTreeMap::new(),
            // 1 µs to 10 min at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one answered call that carried `batch` messages, of which
    /// the server stored `Ok(n)`.
    fn record(&mut self, elapsed: Duration, result: Result<u64, tonic::Status>, batch: u64) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us.max(1));
        match result {
            Ok(n) => {
                self.ok += n.min(batch);
                if n < batch {
                    *self.errors.entry(NOT_STORED).or_default() += batch - n;
                    self.first_error.entry(NOT_STORED).or_insert_with(|| {
                        format!("the server stored {n} of the {batch} messages of a call")
                    });
                }
            }
            Err(status) => {
                let code = code_name(status.code());
                *self.errors.entry(code).or_default() += batch;
                self.first_error
                    .entry(code)
                    .or_insert_with(|| status.message().to_string());
            }
        }
    }

    fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Messages a call answered OK without storing (a stream's shortfall).
const NOT_STORED: &str = "NOT_STORED";

/// The canonical gRPC name of a status code (`RESOURCE_EXHAUSTED`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Percentiles of a latency histogram, milliseconds.
#[derive(Debug, Serialize, PartialEq)]
struct LatencyMs {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl LatencyMs {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// The summary of one kind of call.
#[derive(Debug, Serialize)]
struct RpcSummary {
    rate_per_s: f64,
    /// Messages per call (counts and rates below are in messages, latency
    /// is per call).
    messages_per_call: u64,
    sent: u64,
    ok: u64,
    errors: u64,
    errors_by_code: BTreeMap<&'static str, u64>,
    first_error_by_code: BTreeMap<&'static str, String>,
    not_sent_in_flight_limit: u64,
    ok_per_s: f64,
    latency_ms: LatencyMs,
}

/// Issues calls of one kind, `batch` messages each, at `rate` messages per
/// second until `deadline` (or `max_calls` calls), at most `max_in_flight`
/// unanswered; waits for the last answers. `call(i)` makes the i-th call
/// and resolves to the number of messages the server stored.
async fn drive<F, Fut>(
    rate: f64,
    batch: u64,
    deadline: tokio::time::Instant,
    max_calls: Option<u64>,
    max_in_flight: usize,
    tally: Arc<Mutex<Tally>>,
    call: F,
) where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<u64, tonic::Status>> + Send + 'static,
{
    if rate <= 0.0 {
        return;
    }
    let rate = rate / batch as f64;
    let limit = Arc::new(Semaphore::new(max_in_flight));
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut issued = 0u64;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let mut due = ((now - start).as_secs_f64() * rate) as u64;
        if let Some(max) = max_calls {
            due = due.min(max);
        }
        while issued < due {
            let i = issued;
            issued += 1;
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                lock(&tally).not_sent += batch;
                continue;
            };
            lock(&tally).sent += batch;
            let fut = call(i);
            let tally = tally.clone();
            tokio::spawn(async move {
                let sent_at = Instant::now();
                let result = fut.await;
                lock(&tally).record(sent_at.elapsed(), result, batch);
                drop(permit);
            });
        }
        if max_calls.is_some_and(|m| issued >= m) {
            break;
        }
    }
    // Every permit back = every call answered (each has a deadline).
    let _ = limit.acquire_many(max_in_flight as u32).await;
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_timestamp() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The insight a node agent would report for an idle trace node, with a
/// usage that moves with `k` so consecutive reports differ.
fn node_insight(node: &TraceNode, k: u64) -> ClusterInsight {
    const MIB: i64 = 1 << 20;
    let cpu = node.cpu_milli as f64 / 1000.0;
    let mem = node.memory_mib as i64 * MIB;
    let used = (k % 50) as f64 / 100.0;
    ClusterInsight {
        node_name: node.name.clone(),
        node_type: "gpu".into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: cpu,
            memory_allocatable_bytes: mem,
            gpu_allocatable: node.gpus as i32,
            gpu_available: node.gpus as i32,
            cpu_available_cores: cpu,
            memory_available_bytes: mem,
            cpu_used_cores: cpu * used,
            memory_used_bytes: (mem as f64 * used) as i64,
            ..Default::default()
        }),
        gpu_devices: (0..node.gpus)
            .map(|g| GpuStatus {
                gpu_id: format!("{}-gpu{g}", node.name),
                gpu_model: node.model.clone(),
                is_available: true,
                utilization_percent: used * 100.0,
                ..Default::default()
            })
            .collect(),
        collected_at: Some(now_timestamp()),
        ..Default::default()
    }
}

/// The policy request for the i-th call: the openb pods in turn.
fn policy_request(pods: &[TracePod], namespace: &str, i: u64) -> SchedulingPolicyRequest {
    let pod = &pods[(i % pods.len() as u64) as usize];
    SchedulingPolicyRequest {
        pod_name: pod.name.clone(),
        pod_namespace: namespace.to_string(),
        ..simulate::request_for(pod, 0)
    }
}

/// The signature the Insight-Trace sidecar would report for the i-th call.
fn signature(pods: &[TracePod], namespace: &str, i: u64) -> WorkloadSignature {
    let pod = &pods[(i % pods.len() as u64) as usize];
    let now = now_timestamp();
    WorkloadSignature {
        pod_name: pod.name.clone(),
        pod_namespace: namespace.to_string(),
        is_gpu_workload: pod.num_gpu > 0,
        confidence: 0.9,
        first_seen: Some(now),
        last_seen: Some(now),
        updated_at: Some(now),
        ..Default::default()
    }
}

/// One process whose memory is watched.
#[derive(Debug, Serialize)]
struct ProcessMemory {
    pid: u32,
    name: String,
    rss_start_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    rss_peak_kib: Option<u64>,
    /// Resident memory at each progress interval, KiB (flat or growing).
    rss_samples_kib: Vec<u64>,
    /// CPU time (user + system) the process used while the load ran, s.
    cpu_s: Option<f64>,
    #[serde(skip)]
    cpu_start_ticks: Option<u64>,
}

/// User + system CPU time of a process, in clock ticks (None when gone).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// `VmRSS` of a process, KiB (None when it is gone).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The program name of a process (its first argument's file name).
fn process_name(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    argv0.rsplit('/').next().unwrap_or_default().to_string()
}

/// The 1, 5 and 15 minute load averages of the machine.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The scheduling engine's `GET /metrics` text at `addr`.
async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("metrics did not answer within 5s")?
}

/// Cumulative bucket counts of `apollo_scheduling_decision_seconds`
/// (upper bound in seconds, count).
fn decision_buckets(text: &str) -> Vec<(f64, u64)> {
    parse_buckets(text, "apollo_scheduling_decision_seconds_bucket")
}

/// The value of an unlabelled sample `name` (a counter's `_total` or a
/// gauge) of a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let value = l.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// How closely the engine's cluster view followed the insight stream.
#[derive(Debug, Serialize, PartialEq)]
struct ViewFollowing {
    /// Insight messages the view applied from the start of the run to its
    /// end (compare with the insights stored).
    messages_applied: u64,
    /// When the run ended, how long before then JetStream had stored the
    /// newest message the view had applied (its staleness).
    lag_at_end_s: f64,
}

fn view_following(before: &str, after: &str, ended_unix_s: f64) -> Option<ViewFollowing> {
    const APPLIED: &str = "apollo_view_messages_applied_total";
    let applied = sample(after, APPLIED)? - sample(before, APPLIED).unwrap_or(0.0);
    let newest = sample(after, "apollo_view_last_stored_timestamp_seconds")?;
    Some(ViewFollowing {
        messages_applied: applied.max(0.0) as u64,
        lag_at_end_s: (ended_unix_s - newest).max(0.0),
    })
}

/// `name{le="X"} N` lines of a Prometheus text exposition.
fn parse_buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = rest.rsplit(' ').next()?.trim().parse::<f64>().ok()?;
            Some((le, count as u64))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The engine's decision time over the run, from the histogram difference:
/// each quantile is the upper bound of the bucket that holds it.
#[derive(Debug, Serialize)]
struct ServerDecisions {
    decisions: u64,
    p50_at_most_ms: f64,
    p90_at_most_ms: f64,
    p99_at_most_ms: f64,
    /// Share of decisions that took at most 1 ms (the `le` bucket at or
    /// below 1 ms; None when no such bucket bound exists).
    share_within_1ms: Option<f64>,
}

fn server_decisions(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<ServerDecisions> {
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0);
            (*le, n.saturating_sub(b))
        })
        .collect();
    let total = diff.last()?.1;
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let want = (q * total as f64).ceil() as u64;
        diff.iter()
            .find(|(_, c)| *c >= want)
            .map(|(le, _)| le * 1000.0)
            .unwrap_or(f64::INFINITY)
    };
    let within = diff
        .iter()
        .rfind(|(le, _)| *le <= 0.001 + 1e-12)
        .map(|(_, c)| *c as f64 / total as f64);
    Some(ServerDecisions {
        decisions: total,
        p50_at_most_ms: at(0.5),
        p90_at_most_ms: at(0.9),
        p99_at_most_ms: at(0.99),
        share_within_1ms: within,
    })
}

/// The whole run's result.
#[derive(Debug, Serialize)]
struct Summary {
    duration_s: f64,
    warmup_s: f64,
    nodes: usize,
    ingest: String,
    scheduling: String,
    rpcs: BTreeMap<&'static str, RpcSummary>,
    /// The engine's own decision time (server side), when its metrics were read.
    scheduling_decision_server: Option<ServerDecisions>,
    /// How closely the engine's view followed the insights, when its
    /// metrics were read.
    scheduling_view: Option<ViewFollowing>,
    processes: Vec<ProcessMemory>,
    load_average_start: Option<[f64; 3]>,
    /// The CPUs of the engine and of everything else (`--engine-cpus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_split: Option<CpuSplit>,
    load_average_end: Option<[f64; 3]>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    args.validate().map_err(crate::client::UsageError)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(async {
        // A signal ends the run without a summary, but stops the stack first.
        let mut signals = StopSignals::listen()?;
        if !args.start_stack {
            return tokio::select! {
                r = drive_all(&args, None) => r,
                sig = signals.recv() => Err(anyhow::anyhow!("{sig}: load stopped early")),
            };
        }
        let mut stack = Stack::start(&args.stack.options(true)).await?;
        let ready = tokio::select! {
            r = stack.wait_ready(args.stack.ready_timeout) => r,
            sig = signals.recv() => Err(anyhow::anyhow!("{sig} while starting; stack stopped")),
        };
        if let Err(err) = ready {
            stack.stop(STOP_GRACE, true).await?;
            return Err(err);
        }
        let result = tokio::select! {
            r = drive_all(&args, Some(&stack)) => r,
            sig = signals.recv() => Err(anyhow::anyhow!("{sig}: load stopped early")),
        };
        let keep = result.is_err() || args.stack.keep_logs;
        let dir = stack.endpoints().work_dir.clone();
        stack.stop(STOP_GRACE, keep).await?;
        result.with_context(|| format!("stack logs in {}", dir.display()))
    })
}

/// Pins the stack's scheduling engine to `engine_cpus` and nats-server, the
/// other services and this process to the remaining CPUs.
fn pin_stack(stack: &Stack, engine_cpus: &[usize]) -> anyhow::Result<CpuSplit> {
    let split = CpuSplit::new(engine_cpus, &crate::cpu_pin::allowed_cpus()?)?;
    let mut others: Vec<u32> = vec![0];
    others.extend(stack.nats_pid());
    for e in &stack.endpoints().services {
        if e.service == Service::Scheduling.binary() {
            pin_process(e.pid, &split.engine)
                .with_context(|| format!("cannot pin {}", e.service))?;
        } else {
            others.push(e.pid);
        }
    }
    for pid in others {
        pin_process(pid, &split.others).with_context(|| format!("cannot pin process {pid}"))?;
    }
    eprintln!(
        "apollo-scheduling on CPUs {:?}; nats-server, the other services and the load generator on {:?}",
        split.engine, split.others
    );
    Ok(split)
}

/// Channels to `url`, `n` connections.
async fn channels(url: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(crate::client::channel(url, timeout).await?);
    }
    Ok(out)
}

async fn drive_all(args: &Args, stack: Option<&Stack>) -> anyhow::Result<()> {
    let cpu_split = match stack {
        Some(s) if !args.engine_cpus.is_empty() => Some(pin_stack(s, &args.engine_cpus)?),
        _ => None,
    };
    let (ingest_url, scheduling_url, metrics, pids) = match stack {
        Some(s) => {
            let e = s.endpoints();
            let metrics = e
                .services
                .iter()
                .find(|x| x.service == Service::Scheduling.binary())
                .and_then(|x| x.metrics.trim_start_matches("http://").parse().ok());
            let mut pids: Vec<u32> = e.services.iter().map(|x| x.pid).collect();
            pids.extend(s.nats_pid());
            pids.push(std::process::id());
            pids.extend(&args.pids);
            (
                e.grpc(Service::Ingest).to_string(),
                e.grpc(Service::Scheduling).to_string(),
                metrics,
                pids,
            )
        }
        None => (
            args.ingest.clone(),
            args.scheduling.clone(),
            args.scheduling_metrics,
            args.pids.clone(),
        ),
    };
    let mut nodes = crate::traces::openb_nodes().context("cannot read the openb node list")?;
    nodes.truncate(args.nodes);
    let nodes = Arc::new(nodes);
    let pods = Arc::new(crate::traces::openb_pods().context("cannot read the openb pod list")?);

    let ingest = channels(&ingest_url, args.connections, args.call_timeout).await?;
    let scheduling = channels(&scheduling_url, args.connections, args.call_timeout).await?;

    let warmup = Instant::now();
    warm_up(&ingest[0], &scheduling[0], &nodes, args).await?;
    let warmup_s = warmup.elapsed().as_secs_f64();

    let mut processes: Vec<ProcessMemory> = pids
        .iter()
        .map(|&pid| {
            let rss = rss_kib(pid);
            ProcessMemory {
                pid,
                name: process_name(pid),
                rss_start_kib: rss,
                rss_end_kib: None,
                rss_peak_kib: rss,
                rss_samples_kib: Vec::new(),
                cpu_s: None,
                cpu_start_ticks: cpu_ticks(pid),
            }
        })
        .collect();
    let metrics_before = match metrics {
        Some(addr) => Some(scrape(addr).await?),
        None => None,
    };
    let load_start = load_average();

    let tallies: BTreeMap<Rpc, Arc<Mutex<Tally>>> = [
        Rpc::ReportClusterInsight,
        Rpc::ReportWorkloadSignature,
        Rpc::GetSchedulingPolicy,
    ]
    .into_iter()
    .map(|r| (r, Arc::new(Mutex::new(Tally::new()))))
    .collect();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.duration;

    let insights = {
        let (ch, nodes, batch) = (ingest.clone(), nodes.clone(), args.insight_batch);
        drive(
            args.insight_rate,
            batch,
            deadline,
            args.max_calls,
            args.max_in_flight,
            tallies[&Rpc::ReportClusterInsight].clone(),
            move |i| {
                let mut client = InsightServiceClient::new(ch[i as usize % ch.len()].clone());
                let insight = |k: u64| {
                    let node = &nodes[(k % nodes.len() as u64) as usize];
                    node_insight(node, k / nodes.len() as u64)
                };
                let msgs: Vec<ClusterInsight> = (i * batch..(i + 1) * batch).map(insight).collect();
                async move {
                    if batch == 1 {
                        let msg = msgs.into_iter().next().expect("a batch of one");
                        return client.report_cluster_insight(msg).await.map(|_| 1);
                    }
                    let stored = client
                        .stream_cluster_insights(tokio_stream::iter(msgs))
                        .await?
                        .into_inner();
                    Ok(u64::try_from(stored.messages_processed).unwrap_or(0))
                }
            },
        )
    };
    let signatures = {
        let (ch, pods, ns) = (ingest.clone(), pods.clone(), args.namespace.clone());
        drive(
            args.signature_rate,
            1,
            deadline,
            args.max_calls,
            args.max_in_flight,
            tallies[&Rpc::ReportWorkloadSignature].clone(),
            move |i| {
                let mut client = InsightServiceClient::new(ch[i as usize % ch.len()].clone());
                let msg = signature(&pods, &ns, i);
                async move { client.report_workload_signature(msg).await.map(|_| 1) }
            },
        )
    };
    let policies = {
        let (ch, pods, ns) = (scheduling.clone(), pods.clone(), args.namespace.clone());
        drive(
            args.policy_rate,
            1,
            deadline,
            args.max_calls,
            args.max_in_flight,
            tallies[&Rpc::GetSchedulingPolicy].clone(),
            move |i| {
                let mut client =
                    SchedulingPolicyServiceClient::new(ch[i as usize % ch.len()].clone());
                let msg = policy_request(&pods, &ns, i);
                async move { client.get_scheduling_policy(msg).await.map(|_| 1) }
            },
        )
    };
    let all = async { tokio::join!(insights, signatures, policies) };
    tokio::pin!(all);
    let mut progress = (!args.progress_every.is_zero()).then(|| {
        tokio::time::interval_at(
            tokio::time::Instant::now() + args.progress_every,
            args.progress_every,
        )
    });
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = async { progress.as_mut().expect("guarded").tick().await }, if progress.is_some() => {
                sample_memory(&mut processes);
                eprintln!("{}", progress_line(started.elapsed(), args.duration, &tallies, args.insight_batch));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ended_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    sample_memory(&mut processes);
    for p in &mut processes {
        p.rss_end_kib = rss_kib(p.pid);
        p.cpu_s = match (p.cpu_start_ticks, cpu_ticks(p.pid)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / TICKS_PER_S),
            _ => None,
        };
    }
    let (scheduling_decision_server, scheduling_view) = match (metrics, metrics_before) {
        (Some(addr), Some(before)) => {
            let after = scrape(addr).await?;
            (
                server_decisions(&decision_buckets(&before), &decision_buckets(&after)),
                view_following(&before, &after, ended_unix_s),
            )
        }
        _ => (None, None),
    };
    let rates = [
        (
            Rpc::ReportClusterInsight,
            args.insight_rate,
            args.insight_batch,
        ),
        (Rpc::ReportWorkloadSignature, args.signature_rate, 1),
        (Rpc::GetSchedulingPolicy, args.policy_rate, 1),
    ];
    let rpcs = rates
        .into_iter()
        .filter(|(_, r, _)| *r > 0.0)
        .map(|(rpc, rate, batch)| {
            let t = lock(&tallies[&rpc]);
            let summary = RpcSummary {
                rate_per_s: rate,
                messages_per_call: batch,
                sent: t.sent,
                ok: t.ok,
                errors: t.errors_total(),
                errors_by_code: t.errors.clone(),
                first_error_by_code: t.first_error.clone(),
                not_sent_in_flight_limit: t.not_sent,
                ok_per_s: t.ok as f64 / elapsed,
                latency_ms: LatencyMs::of(&t.latency_us),
            };
            (rpc.name_for(batch), summary)
        })
        .collect();
    let summary = Summary {
        duration_s: elapsed,
        warmup_s,
        nodes: nodes.len(),
        ingest: ingest_url,
        scheduling: scheduling_url,
        rpcs,
        scheduling_decision_server,
        scheduling_view,
        processes,
        load_average_start: load_start,
        cpu_split,
        load_average_end: load_average(),
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&summary)?),
        Output::Text => print_text(&summary),
    }
    Ok(())
}

fn sample_memory(processes: &mut [ProcessMemory]) {
    for p in processes {
        if let Some(rss) = rss_kib(p.pid) {
            p.rss_peak_kib = Some(p.rss_peak_kib.map_or(rss, |m| m.max(rss)));
            p.rss_samples_kib.push(rss);
        }
    }
}

fn progress_line(
    elapsed: Duration,
    total: Duration,
    tallies: &BTreeMap<Rpc, Arc<Mutex<Tally>>>,
    insight_batch: u64,
) -> String {
    let mut line = format!(
        "load {:>5.0}s/{:.0}s",
        elapsed.as_secs_f64(),
        total.as_secs_f64()
    );
    for (rpc, t) in tallies {
        let t = lock(t);
        if t.sent + t.not_sent == 0 {
            continue;
        }
        line.push_str(&format!(
            "  {} sent {} ok {} err {} p99 {:.2}ms",
            rpc.name_for(match rpc {
                Rpc::ReportClusterInsight => insight_batch,
                _ => 1,
            }),
            t.sent,
            t.ok,
            t.errors_total(),
            t.latency_us.value_at_quantile(0.99) as f64 / 1000.0
        ));
    }
    line
}

/// Reports every node once and asks the engine until it names a node.
async fn warm_up(
    ingest: &Channel,
    scheduling: &Channel,
    nodes: &[TraceNode],
    args: &Args,
) -> anyhow::Result<()> {
    let mut ingest = InsightServiceClient::new(ingest.clone());
    let stored = ingest
        .stream_cluster_insights(tokio_stream::iter(
            nodes.iter().map(|n| node_insight(n, 0)).collect::<Vec<_>>(),
        ))
        .await
        .map_err(|s| crate::client::status_line("ingest refused the node insights", &s))?
        .into_inner();
    if stored.messages_processed != nodes.len() as i64 {
        bail!(
            "ingest stored {} of {} node insights: {}",
            stored.messages_processed,
            nodes.len(),
            stored.status
        );
    }
    if args.policy_rate == 0.0 {
        return Ok(());
    }
    let mut scheduling = SchedulingPolicyServiceClient::new(scheduling.clone());
    let deadline = Instant::now() + args.stack.ready_timeout;
    loop {
        let probe = scheduling
            .get_scheduling_policy(SchedulingPolicyRequest {
                pod_name: "apolloctl-load-probe".into(),
                pod_namespace: args.namespace.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| crate::client::status_line("scheduling engine did not answer", &s))?
            .into_inner();
        if !probe.node_preferences.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the scheduling engine saw no nodes within {:?}: {}",
                args.stack.ready_timeout,
                probe.reason
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_text(s: &Summary) {
    println!(
        "load over {:.1}s against {} nodes (warm-up {:.1}s)",
        s.duration_s, s.nodes, s.warmup_s
    );
    println!(
        "{:<24} {:>9} {:>9} {:>8} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "rpc", "sent", "ok", "errors", "not sent", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, r) in &s.rpcs {
        println!(
            "{:<24} {:>9} {:>9} {:>8} {:>9} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            name,
            r.sent,
            r.ok,
            r.errors,
            r.not_sent_in_flight_limit,
            r.ok_per_s,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.max
        );
        for (code, n) in &r.errors_by_code {
            let msg = r.first_error_by_code.get(code).map_or("", String::as_str);
            println!("    {code} x{n}: {msg}");
        }
    }
    if let Some(d) = &s.scheduling_decision_server {
        println!(
            "engine decision time (server side, {} decisions): p50 <= {} ms, p90 <= {} ms, p99 <= {} ms",
            d.decisions, d.p50_at_most_ms, d.p90_at_most_ms, d.p99_at_most_ms
        );
    }
    if let Some(v) = &s.scheduling_view {
        println!(
            "engine view: {} insight messages applied, {:.3} s behind the stream at the end",
            v.messages_applied, v.lag_at_end_s
        );
    }
    for p in &s.processes {
        let kib =
            |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1}", v as f64 / 1024.0));
        println!(
            "rss MiB {:<22} pid {:<8} start {:>8} end {:>8} peak {:>8}  cpu {}",
            p.name,
            p.pid,
            kib(p.rss_start_kib),
            kib(p.rss_end_kib),
            kib(p.rss_peak_kib),
            p.cpu_s.map_or("-".to_string(), |c| format!("{c:.1} s"))
        );
    }
    if let (Some(a), Some(b)) = (s.load_average_start, s.load_average_end) {
        println!(
            "load average         start {:.2} {:.2} {:.2}  end {:.2} {:.2} {:.2}",
            a[0], a[1], a[2], b[0], b[1], b[2]
        );
    }
    if let Some(c) = &s.cpu_split {
        println!(
            "cpus                 engine {:?}  others {:?}",
            c.engine, c.others
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_quantiles_come_from_the_bucket_difference() {
        let before = [
            (0.0001, 10),
            (0.0002, 10),
            (0.0004, 10),
            (f64::INFINITY, 10),
        ];
        // 100 new decisions: 90 within 100 µs, 9 within 200 µs, 1 within 400 µs.
        let after = [
            (0.0001, 100),
            (0.0002, 109),
            (0.0004, 110),
            (f64::INFINITY, 110),
        ];
        let d = server_decisions(&before, &after).unwrap();
        assert_eq!(d.decisions, 100);
        assert_eq!(d.p50_at_most_ms, 0.1);
        assert_eq!(d.p90_at_most_ms, 0.1);
        assert_eq!(d.p99_at_most_ms, 0.2);
        assert_eq!(d.share_within_1ms, Some(1.0));
        assert!(server_decisions(&after, &after).is_none());
    }

    #[test]
    fn view_following_is_the_applied_difference_and_the_staleness_at_the_end() {
        let before = "apollo_view_messages_applied_total 100\n\
apollo_view_messages_applied_by_kind_total{kind=\"x\"} 5\n";
        let after = "# HELP apollo_view_messages_applied Insight messages\n\
apollo_view_messages_applied_total 1100\n\
apollo_view_last_stored_timestamp_seconds 1000.25\n";
        assert_eq!(
            view_following(before, after, 1002.0),
            Some(ViewFollowing {
                messages_applied: 1000,
                lag_at_end_s: 1.75
            })
        );
        // No applied counter after the run: nothing to report.
        assert_eq!(view_following(before, "", 1002.0), None);
        assert_eq!(sample(after, "apollo_view_messages_applied"), None);
    }

    #[test]
    fn buckets_parse_from_the_exposition() {
        let text = "# TYPE apollo_scheduling_decision_seconds histogram\n\
apollo_scheduling_decision_seconds_sum 0.5\n\
apollo_scheduling_decision_seconds_bucket{le=\"2.5e-5\"} 3\n\
apollo_scheduling_decision_seconds_bucket{le=\"+Inf\"} 7\n";
        assert_eq!(
            parse_buckets(text, "apollo_scheduling_decision_seconds_bucket"),
            vec![(2.5e-5, 3), (f64::INFINITY, 7)]
        );
    }

    #[test]
    fn tallies_count_each_answer_once_by_code() {
        let mut t = Tally::new();
        t.record(Duration::from_micros(300), Ok(1), 1);
        t.record(
            Duration::from_micros(900),
            Err(tonic::Status::resource_exhausted(
                "rate limit: 100/s per client",
            )),
            1,
        );
        t.record(
            Duration::from_micros(50),
            Err(tonic::Status::resource_exhausted("second")),
            1,
        );
        assert_eq!(t.ok, 1);
        assert_eq!(t.errors_total(), 2);
        assert_eq!(
            t.first_error["RESOURCE_EXHAUSTED"],
            "rate limit: 100/s per client"
        );
        assert_eq!(t.latency_us.len(), 3);
        assert!((LatencyMs::of(&t.latency_us).max - 0.9).abs() < 0.001);
    }

    #[test]
    fn batched_calls_count_messages_and_a_shortfall() {
        let mut t = Tally::new();
        t.record(Duration::from_micros(300), Ok(100), 100);
        t.record(Duration::from_micros(400), Ok(97), 100);
        t.record(
            Duration::from_micros(500),
            Err(tonic::Status::unavailable("NATS unavailable")),
            100,
        );
        assert_eq!(t.ok, 197);
        assert_eq!(t.errors[NOT_STORED], 3);
        assert_eq!(t.errors["UNAVAILABLE"], 100);
        assert!(t.first_error[NOT_STORED].contains("stored 97 of the 100"));
        assert_eq!(t.latency_us.len(), 3, "latency is per call");
        assert_eq!(
            Rpc::ReportClusterInsight.name_for(100),
            "StreamClusterInsights"
        );
        assert_eq!(
            Rpc::ReportClusterInsight.name_for(1),
            "ReportClusterInsight"
        );
    }

    #[test]
    fn insights_and_requests_pass_their_validators() {
        let nodes = crate::traces::openb_nodes().unwrap();
        let pods = crate::traces::openb_pods().unwrap();
        let limits = apollo_ingest::validate::Limits::now(Duration::from_secs(300));
        for (k, node) in nodes.iter().enumerate() {
            let ins = node_insight(node, k as u64);
            assert_eq!(ins.gpu_devices.len(), node.gpus as usize);
            apollo_ingest::validate::cluster_insight(&ins, &limits).unwrap();
        }
        for i in 0..pods.len() as u64 {
            apollo_ingest::validate::workload_signature(&signature(&pods, "load", i), &limits)
                .unwrap();
        }
        let r = policy_request(&pods, "load", 8153);
        assert_eq!(r.pod_name, pods[1].name);
        assert_eq!(r.pod_namespace, "load");
        assert!(r.pod_annotations.contains_key("apollo.ai-storage/cpu"));
    }
}
