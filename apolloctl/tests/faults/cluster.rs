//! A three-node JetStream cluster (streams with three replicas), the insight
//! stream's leader killed and started again while a client streams insights
//! through ingest: no false success (every OK is in the stream), nothing
//! acknowledged lost, nothing stored or consumed twice (client retries are
//! de-duplicated by `Nats-Msg-Id`), and ingest and the forecaster fail over
//! without being restarted.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use apollo_common::{
    bus::StreamKind,
    config::{NatsArgs, StreamArgs},
    shutdown::CancellationToken,
    testing::TestNatsCluster,
    Bus,
};
use apollo_proto::insight_service_client::InsightServiceClient;

use crate::{
    procs::{wait_until, Service},
    scenario::{nats_version, node, stored},
};

const BOUND: Duration = Duration::from_secs(90);
/// Insights sent, each to its own node subject.
const SENT: usize = 300;
const WORKERS: usize = 4;
/// How long the client retries one insight before giving up on it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// What the client saw for one insight.
#[derive(Debug, Clone, Default)]
struct Outcome {
    acknowledged: bool,
    attempts: usize,
    acked_at: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_leader_killed_under_load_loses_and_duplicates_nothing() {
    let Some(mut cluster) = TestNatsCluster::start(3) else {
        eprintln!("skipping: no nats-server binary to start a cluster with");
        return;
    };
    let env = [
        ("APOLLO_STREAM_REPLICAS", "3"),
        ("APOLLO_NATS_TIMEOUT", "5s"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let ingest = Service::start("apollo-ingest", dir.path(), &url, &env);
    let forecaster = Service::start("apollo-forecaster", dir.path(), &url, &env);
    ingest.wait_ready_state(true, BOUND).await;
    forecaster.wait_ready_state(true, BOUND).await;
    let pids = (ingest.pid(), forecaster.pid());

    let nats = NatsArgs {
        url: url.clone(),
        request_timeout: Duration::from_secs(5),
        ..NatsArgs::default()
    };
    let streams = StreamArgs {
        replicas: 3,
        ..StreamArgs::default()
    };
    let peer = CancellationToken::new();
    let bus = Bus::connect("fault-test", &nats, &streams, peer.clone())
        .await
        .unwrap();
    assert!(bus.wait_ready(BOUND).await);

    // The client: WORKERS concurrent senders, each insight retried (same
    // content, so the same message id) until acknowledged.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (next, done, url) = (next.clone(), done.clone(), ingest.url());
        workers.push(tokio::spawn(async move {
            let mut client = InsightServiceClient::connect(url).await.unwrap();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= SENT {
                    return out;
                }
                let insight = node(&format!("load-{i:04}"), 0.2, vec![]);
                let mut o = Outcome::default();
                let started = Instant::now();
                while !o.acknowledged && started.elapsed() < GIVE_UP_AFTER {
                    o.attempts += 1;
                    let call = client.report_cluster_insight(insight.clone());
                    match tokio::time::timeout(Duration::from_secs(15), call).await {
                        Ok(Ok(r)) if r.get_ref().success => {
                            o.acknowledged = true;
                            o.acked_at = Some(Instant::now());
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                out.push((i, o));
            }
        }));
    }

    // A third in: kill the insight stream's leader; two thirds in: restart it.
    let d = done.clone();
    wait_until("a third sent", BOUND, || {
        let d = d.clone();
        async move { d.load(Ordering::SeqCst) >= SENT / 3 }
    })
    .await;
    let info = bus
        .get_stream(StreamKind::Insight)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let victim: usize = leader.trim_start_matches('n').parse().unwrap();
    cluster.stop(victim);
    let killed = Instant::now();
    let d = done.clone();
    wait_until("two thirds sent", BOUND, || {
        let d = d.clone();
        async move { d.load(Ordering::SeqCst) >= 2 * SENT / 3 }
    })
    .await;
    assert!(cluster.restart(victim), "the killed server did not restart");
    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    assert_eq!(outcomes.len(), SENT);

    // What the stream holds. Right after the failover a new reader may not
    // yet see the newest committed messages (the restarted server catches
    // up): read again, for a bounded while, until every acknowledged
    // insight is there; what is still missing then counts as lost.
    let subjects = bus.subjects().clone();
    let expected: HashSet<String> = outcomes
        .iter()
        .filter(|(_, o)| o.acknowledged)
        .map(|(i, _)| subjects.cluster(&format!("load-{i:04}")).unwrap())
        .collect();
    let read_from = Instant::now();
    let mut reads = 0;
    let held = loop {
        reads += 1;
        let held = stored(
            &bus,
            StreamKind::Insight,
            bus.subjects().all("insight.cluster"),
        )
        .await;
        let seen: HashSet<&str> = held.iter().map(|(s, _, _)| s.as_str()).collect();
        if expected.iter().all(|s| seen.contains(s.as_str())) || read_from.elapsed() > BOUND {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let full_read_after_ms = read_from.elapsed().as_millis() as u64;
    let held_subjects: HashSet<&str> = held.iter().map(|(s, _, _)| s.as_str()).collect();
    let duplicated = held.len() - held_subjects.len();
    let acknowledged: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| o.acknowledged)
        .map(|(i, _)| *i)
        .collect();
    let lost: Vec<usize> = acknowledged
        .iter()
        .copied()
        .filter(|i| {
            let s = subjects.cluster(&format!("load-{i:04}")).unwrap();
            !held_subjects.contains(s.as_str())
        })
        .collect();
    let retried = outcomes.values().filter(|o| o.attempts > 1).count();
    // Recovery: the longest stretch without any acknowledgement.
    let mut ack_times: Vec<Instant> = outcomes.values().filter_map(|o| o.acked_at).collect();
    ack_times.sort();
    let longest_ack_gap = ack_times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis() as u64)
        .max()
        .unwrap_or(0);
    let first_ack_after_kill = outcomes
        .values()
        .filter_map(|o| o.acked_at)
        .filter(|t| *t > killed)
        .min()
        .map(|t| t.duration_since(killed).as_millis() as u64);

    // Downstream: the forecaster consumed each stored insight exactly once.
    let consumed = "apollo_forecaster_insights_consumed_total";
    // Redeliveries after the failover wait out the consumer's ack wait, so
    // this bound is wider than the others (a busy CI machine needs it).
    wait_until("forecaster consumed what is stored", 2 * BOUND, || async {
        forecaster.metric(consumed).await >= held.len() as f64
    })
    .await;
    ingest.wait_ready_state(true, BOUND).await;
    forecaster.wait_ready_state(true, BOUND).await;
    let forecaster_consumed = forecaster.metric(consumed).await;
    let skipped = forecaster
        .metric("apollo_forecaster_redeliveries_skipped_total")
        .await;

    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "cluster_leader_kill",
            "nats_server": nats_version(),
            "cluster": 3,
            "replicas": 3,
            "killed": leader,
            "sent": SENT,
            "acknowledged": acknowledged.len(),
            "retried": retried,
            "stored": held.len(),
            "lost": lost.len(),
            "duplicated": duplicated,
            "forecaster_consumed": forecaster_consumed,
            "forecaster_redeliveries_skipped": skipped,
            "first_ack_after_kill_ms": first_ack_after_kill,
            "longest_ack_gap_ms": longest_ack_gap,
            "stream_reads": reads,
            "all_acknowledged_visible_after_ms": full_read_after_ms,
        })
    );
    assert_eq!(acknowledged.len(), SENT, "insights never acknowledged");
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert_eq!(duplicated, 0, "stored twice");
    assert_eq!(held.len(), SENT, "stored without an acknowledgement");
    assert_eq!(
        forecaster_consumed, SENT as f64,
        "consumed twice downstream"
    );
    assert_eq!(
        (ingest.pid(), forecaster.pid()),
        pids,
        "services were restarted"
    );
    peer.cancel();
}
