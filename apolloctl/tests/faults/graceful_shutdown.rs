//! Graceful shutdown under load: ingest and the scheduling engine get
//! SIGTERM while clients keep calling them.
//!
//! Every call ends in one of three clean ways: answered OK, a gRPC status
//! from the server (UNAVAILABLE while it drains), or a transport failure
//! (REFUSED_STREAM after the server's GOAWAY, the connection closed or
//! refused once the listener is gone) for a call the server never
//! processed, so the client may safely send it again. A call the server
//! processed while its client saw only a transport failure would not be
//! clean: each failed call's key is looked up in the stream. Nothing
//! answered OK is lost: each acknowledged insight is in the insight stream,
//! each answered policy in the policy stream. The next instance serves and,
//! for the engine, rebuilds the view from everything stored.

use std::collections::{BTreeMap, HashSet};
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apollo_common::bus::StreamKind;
use apollo_common::config::{NatsArgs, StreamArgs};
use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::TestNats;
use apollo_common::Bus;
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight,
    SchedulingPolicy,
};
use nix::sys::signal::Signal;

use crate::{
    procs::{wait_until, Service},
    scenario::{decode, nats_version, node, pod_request, stored},
};

const BOUND: Duration = Duration::from_secs(60);
/// Concurrent clients, each on its own connection.
const CLIENTS: usize = 16;
/// OK answers before SIGTERM.
const OK_BEFORE_SIGTERM: u64 = 400;

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// A status the server sent (its code).
    Status(String),
    /// Refused before the server read it: never processed.
    Refused(String),
    /// Cut off without a status.
    Reset(String),
}

/// Sorts a failed call: a status the server sent carries no source; a
/// transport failure does, and is clean only when the server refused the
/// stream or the connection before reading the request.
fn ending(status: &tonic::Status) -> Ending {
    let Some(source) = status.source() else {
        return Ending::Status(format!("{:?}", status.code()));
    };
    let mut chain = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(source);
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    let text = chain.join(": ");
    let refused = status.code() == tonic::Code::Unavailable
        && (text.contains("Connection refused")
            || text.contains("REFUSED_STREAM")
            || text.contains("refused stream")
            || text.contains("tcp connect error"));
    if refused {
        Ending::Refused(text)
    } else {
        Ending::Reset(format!("{:?}: {text}", status.code()))
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Keys of the calls answered OK.
    ok_keys: Mutex<Vec<String>>,
    /// Keys of the calls that ended in a transport failure.
    transport_failed: Mutex<Vec<String>>,
    endings: Mutex<BTreeMap<Ending, u64>>,
}

impl Tally {
    fn record(&self, key: String, r: Result<(), tonic::Status>) -> bool {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.ok_keys.lock().unwrap().push(key);
                true
            }
            Err(status) => {
                let ending = ending(&status);
                if !matches!(ending, Ending::Status(_)) {
                    self.transport_failed.lock().unwrap().push(key);
                }
                *self.endings.lock().unwrap().entry(ending).or_default() += 1;
                false
            }
        }
    }

    fn summary(&self) -> serde_json::Value {
        let endings = self.endings.lock().unwrap();
        let mut status = serde_json::Map::new();
        let (mut refused, mut reset) = (0, 0);
        for (e, n) in endings.iter() {
            match e {
                Ending::Status(code) => {
                    status.insert(code.clone(), serde_json::json!(n));
                }
                Ending::Refused(_) => refused += n,
                Ending::Reset(_) => reset += n,
            }
        }
        serde_json::json!({
            "ok": self.ok.load(Ordering::Relaxed),
            "status": status,
            "refused": refused,
            "transport_failed_other": reset,
        })
    }
}

/// Whether the process has exited (a zombie or gone).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Runs `CLIENTS` clients calling `call(client, i)` in a loop until `stop`,
/// SIGTERMs `service` after `OK_BEFORE_SIGTERM` answers and waits for it to
/// exit. Returns the tally and the time from SIGTERM to exit.
async fn sigterm_under_load<F>(service: &Service, call: F) -> (Arc<Tally>, Duration)
where
    F: Fn(
            usize,
            u64,
            tonic::transport::Channel,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = (String, Result<(), tonic::Status>)> + Send>,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let channel = tonic::transport::Endpoint::from_shared(service.url())
            .unwrap()
            .connect()
            .await
            .expect("the service accepts connections");
        let (tally, stop, call) = (Arc::clone(&tally), Arc::clone(&stop), call.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, r) = call(c, i, channel.clone()).await;
                if !tally.record(key, r) {
                    // Back off a little once the server turns calls away.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                i += 1;
            }
        }));
    }
    wait_until("load under way", BOUND, || {
        let t = Arc::clone(&tally);
        async move { t.ok.load(Ordering::Relaxed) >= OK_BEFORE_SIGTERM }
    })
    .await;
    let pid = service.pid();
    let sent = Instant::now();
    service.signal(Signal::SIGTERM);
    wait_until("exit after SIGTERM", BOUND, || async move { exited(pid) }).await;
    let took = sent.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    (tally, took)
}

/// A client of the same streams as the services (same prefixes).
async fn peer_bus(n: &NatsArgs) -> Bus {
    let bus = Bus::connect(
        "test-peer",
        n,
        &StreamArgs::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(bus.wait_ready(BOUND).await);
    bus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sigterm_under_load_fails_calls_cleanly_and_loses_no_acknowledged_report() {
    let nats = TestNats::start().await;
    let (n, _) = nats.bus_args();
    let env = [
        ("APOLLO_SUBJECT_PREFIX", n.subject_prefix.as_str()),
        ("APOLLO_STREAM_PREFIX", n.stream_prefix.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let ingest = Service::start("apollo-ingest", dir.path(), nats.url(), &env);
    ingest.wait_ready_state(true, BOUND).await;
    let bus = peer_bus(&n).await;

    let (tally, took) = sigterm_under_load(&ingest, |c, i, channel| {
        Box::pin(async move {
            let name = format!("c{c}-{i}");
            let r = match InsightServiceClient::new(channel)
                .report_cluster_insight(node(&name, 0.2, vec![]))
                .await
            {
                Ok(r) if r.get_ref().success => Ok(()),
                Ok(r) => Err(tonic::Status::internal(r.into_inner().message)),
                Err(status) => Err(status),
            };
            (name, r)
        })
    })
    .await;
    let stored_names: HashSet<String> = decode::<ClusterInsight>(
        &stored(&bus, StreamKind::Insight, bus.subjects().all("insight")).await,
    )
    .into_iter()
    .map(|i| i.node_name)
    .collect();
    let acknowledged = tally.ok_keys.lock().unwrap().clone();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored_names.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let failed = tally.transport_failed.lock().unwrap().clone();
    let processed: Vec<&String> = failed
        .iter()
        .filter(|k| stored_names.contains(*k))
        .collect();
    assert!(
        processed.is_empty(),
        "stored although the client saw only a transport failure: {processed:?}"
    );
    let unique: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(
        unique.len(),
        acknowledged.len(),
        "a report acknowledged twice"
    );

    // The next instance serves.
    let next = Service::start("apollo-ingest", dir.path(), nats.url(), &env);
    next.wait_ready_state(true, BOUND).await;
    let r = InsightServiceClient::connect(next.url())
        .await
        .unwrap()
        .report_cluster_insight(node("after", 0.2, vec![]))
        .await
        .expect("the next instance answers")
        .into_inner();
    assert!(r.success, "{r:?}");

    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "ingest SIGTERM under load",
            "nats_server": nats_version(),
            "clients": CLIENTS,
            "calls": tally.summary(),
            "acknowledged": acknowledged.len(),
            "stored_of_acknowledged": acknowledged.len() - lost.len(),
            "stored_total": stored_names.len(),
            "lost": lost.len(),
            "transport_failed_but_processed": processed.len(),
            "sigterm_to_exit_ms": took.as_millis() as u64,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_sigterm_under_load_fails_calls_cleanly_and_publishes_every_answer() {
    let nats = TestNats::start().await;
    let (n, _) = nats.bus_args();
    let env = [
        ("APOLLO_SUBJECT_PREFIX", n.subject_prefix.as_str()),
        ("APOLLO_STREAM_PREFIX", n.stream_prefix.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let ingest = Service::start("apollo-ingest", dir.path(), nats.url(), &env);
    let scheduling = Service::start("apollo-scheduling", dir.path(), nats.url(), &env);
    ingest.wait_ready_state(true, BOUND).await;
    scheduling.wait_ready_state(true, BOUND).await;
    let bus = peer_bus(&n).await;
    let mut ic = InsightServiceClient::connect(ingest.url()).await.unwrap();
    const NODES: usize = 40;
    for i in 0..NODES {
        let r = ic
            .report_cluster_insight(node(&format!("n{i}"), 0.01 * i as f64, vec![]))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success);
    }
    wait_until("the engine holds every node", BOUND, || async {
        scheduling.metric("apollo_scheduling_nodes").await == NODES as f64
    })
    .await;

    let (tally, took) = sigterm_under_load(&scheduling, |c, i, channel| {
        Box::pin(async move {
            let pod = format!("c{c}-{i}");
            let r = SchedulingPolicyServiceClient::new(channel)
                .get_scheduling_policy(pod_request(&pod, "1"))
                .await
                .map(|_| ());
            (pod, r)
        })
    })
    .await;
    let published: HashSet<String> = decode::<SchedulingPolicy>(
        &stored(
            &bus,
            StreamKind::Policy,
            bus.subjects().all("policy.scheduling"),
        )
        .await,
    )
    .into_iter()
    .map(|p: SchedulingPolicy| p.pod_name)
    .collect();
    let answered = tally.ok_keys.lock().unwrap().clone();
    let lost: Vec<&String> = answered
        .iter()
        .filter(|k| !published.contains(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered policies never published ({} in the stream)",
        lost.len(),
        answered.len(),
        published.len()
    );
    let failed = tally.transport_failed.lock().unwrap().clone();
    let processed: Vec<&String> = failed.iter().filter(|k| published.contains(*k)).collect();
    assert!(
        processed.is_empty(),
        "answered and published although the client saw only a transport failure: {processed:?}"
    );

    // The next instance rebuilds its view from the stream and serves.
    let next = Service::start("apollo-scheduling", dir.path(), nats.url(), &env);
    next.wait_ready_state(true, BOUND).await;
    wait_until("the next instance holds every node", BOUND, || async {
        next.metric("apollo_scheduling_nodes").await == NODES as f64
    })
    .await;
    let p = SchedulingPolicyServiceClient::connect(next.url())
        .await
        .unwrap()
        .get_scheduling_policy(pod_request("after", "1"))
        .await
        .expect("the next instance answers")
        .into_inner();
    assert!(!p.node_preferences.is_empty(), "{p:?}");

    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "scheduling SIGTERM under load",
            "nats_server": nats_version(),
            "clients": CLIENTS,
            "calls": tally.summary(),
            "answered": answered.len(),
            "published_of_answered": answered.len() - lost.len(),
            "lost": lost.len(),
            "transport_failed_but_processed": processed.len(),
            "sigterm_to_exit_ms": took.as_millis() as u64,
        })
    );
}
