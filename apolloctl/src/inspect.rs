//! Commands that look at a running stack: `policy get`, `watch`,
//! `forecast`, `tap`, `explain`.

use std::time::Duration;

use anyhow::Context as _;
use apollo_proto::{
    forecast_service_client::ForecastServiceClient,
    orchestration_policy_service_client::OrchestrationPolicyServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight,
    ExecutionResult, OrchestrationAction, OrchestrationPolicy, OrchestrationPolicyRequest,
    PolicySubscription, PredictionRequest, ResourceAlert, ResourcePrediction, SchedulingDecision,
    SchedulingPolicy, SchedulingPolicyRequest, SchedulingResult, Timestamp, WorkloadSignature,
};
use futures::StreamExt as _;
use serde::Serialize;

use crate::client::{self, UsageError};
use crate::output::Output;

const DEFAULT_TIMEOUT: &str = "5s";

/// `apolloctl policy ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// The policy the engine gives a pod now.
    #[command(
        after_help = "Examples:\n  apolloctl policy get openb/openb-pod-0017\n  apolloctl policy get ml/trainer-0 --orchestration --action migrate -o json"
    )]
    Get(PolicyGetArgs),
}

/// Arguments of `apolloctl policy get`.
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyGetArgs {
    /// The pod, as NAMESPACE/NAME.
    pod: String,
    /// Ask the Orchestration Policy Engine instead of the scheduling engine.
    #[arg(long)]
    orchestration: bool,
    /// With --orchestration: the action to evaluate (migrate, provision,
    /// scale-up, scale-down, rebalance, optimize); default any.
    #[arg(long, value_parser = parse_action)]
    action: Option<OrchestrationAction>,
    /// Scheduling Policy Engine gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_SCHEDULING_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    scheduling: String,
    /// Orchestration Policy Engine gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_ORCHESTRATION_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    orchestration_url: String,
    /// Per-call deadline.
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = apollo_common::config::parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Arguments of `apolloctl watch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  apolloctl watch\n  apolloctl watch --action migrate --action scale-up --namespace ml -o json\n\nA subscriber id resumes where it left off after a reconnect."
)]
pub(crate) struct WatchArgs {
    /// Only these actions (repeat or comma separate).
    #[arg(long, value_delimiter = ',', value_parser = parse_action)]
    action: Vec<OrchestrationAction>,
    /// Only these namespaces (repeat or comma separate).
    #[arg(long, value_delimiter = ',')]
    namespace: Vec<String>,
    /// Subscriber id (default: a fresh one per run).
    #[arg(long)]
    subscriber_id: Option<String>,
    /// Stop after this many policies (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Orchestration Policy Engine gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_ORCHESTRATION_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    orchestration: String,
    /// Output format (`json`: one policy per line).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Arguments of `apolloctl forecast`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  apolloctl forecast openb-node-0227 --horizon 30")]
pub(crate) struct ForecastArgs {
    /// Node name.
    node: String,
    /// Horizon in minutes.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i32).range(1..=10080))]
    horizon: i32,
    /// Interval level (0-1).
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Forecaster gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_FORECASTER_URL",
        default_value = "http://127.0.0.1:50055"
    )]
    forecaster: String,
    /// Per-call deadline.
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = apollo_common::config::parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Arguments of `apolloctl tap`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  apolloctl tap 'apollo.alert.>'\n  apolloctl tap 'apollo.policy.scheduling.openb.*' --count 5 -o json"
)]
pub(crate) struct TapArgs {
    /// Subject (wildcards allowed), e.g. `apollo.forecast.>`.
    subject: String,
    /// Stop after this many messages (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// NATS server.
    #[arg(long, env = "APOLLO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// First subject token of APOLLO's subjects.
    #[arg(long, env = "APOLLO_SUBJECT_PREFIX", default_value = "apollo")]
    subject_prefix: String,
    /// Output format (`json`: one `{subject, type, message}` per line).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Arguments of `apolloctl explain`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  apolloctl explain 6f1c2a3e-3b1e-4a53-9d55-0c1f7a7e9b21\n\nThe engines keep a decision record per request id in the JetStream\nkey-value bucket <STREAM_PREFIX>_DECISIONS for --decision-record-ttl (1h)."
)]
pub(crate) struct ExplainArgs {
    /// The policy's request id.
    request_id: String,
    /// NATS server.
    #[arg(long, env = "APOLLO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Stream name prefix of the stack.
    #[arg(long, env = "APOLLO_STREAM_PREFIX", default_value = "APOLLO")]
    stream_prefix: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Parses an action name (`migrate`, `scale-up`, ...).
pub(crate) fn parse_action(s: &str) -> Result<OrchestrationAction, String> {
    let norm = s.trim().to_ascii_lowercase().replace('_', "-");
    Ok(match norm.as_str() {
        "migrate" => OrchestrationAction::Migrate,
        "provision" => OrchestrationAction::Provision,
        "scale-up" => OrchestrationAction::ScaleUp,
        "scale-down" => OrchestrationAction::ScaleDown,
        "rebalance" => OrchestrationAction::Rebalance,
        "optimize" => OrchestrationAction::Optimize,
        _ => {
            return Err(format!(
            "unknown action {s:?} (migrate, provision, scale-up, scale-down, rebalance, optimize)"
        ))
        }
    })
}

/// Lower-case name of an action.
pub(crate) fn action_name(a: i32) -> &'static str {
    match OrchestrationAction::try_from(a).unwrap_or(OrchestrationAction::Unspecified) {
        OrchestrationAction::Migrate => "migrate",
        OrchestrationAction::Provision => "provision",
        OrchestrationAction::ScaleUp => "scale-up",
        OrchestrationAction::ScaleDown => "scale-down",
        OrchestrationAction::Rebalance => "rebalance",
        OrchestrationAction::Optimize => "optimize",
        OrchestrationAction::Unspecified => "unspecified",
    }
}

/// Upper-case name of a scheduling decision.
pub(crate) fn decision_name(d: i32) -> &'static str {
    match SchedulingDecision::try_from(d).unwrap_or(SchedulingDecision::Unspecified) {
        SchedulingDecision::Allow => "ALLOW",
        SchedulingDecision::Prefer => "PREFER",
        SchedulingDecision::Require => "REQUIRE",
        SchedulingDecision::Delay => "DELAY",
        SchedulingDecision::Reject => "REJECT",
        SchedulingDecision::Unspecified => "UNSPECIFIED",
    }
}

fn split_pod(spec: &str) -> Result<(String, String), UsageError> {
    match spec.split_once('/') {
        Some((ns, name))
            if !ns.trim().is_empty() && !name.trim().is_empty() && !name.contains('/') =>
        {
            Ok((ns.trim().to_string(), name.trim().to_string()))
        }
        _ => Err(UsageError(format!(
            "pod must be NAMESPACE/NAME, got {spec:?}"
        ))),
    }
}

fn ts(t: &Option<Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|d| d.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Prints a scheduling policy for people.
pub(crate) fn print_scheduling_policy(p: &SchedulingPolicy) {
    println!("pod          {}/{}", p.pod_namespace, p.pod_name);
    println!("request id   {}", p.request_id);
    println!("decision     {}", decision_name(p.decision));
    println!("reason       {}", p.reason);
    if let Some(r) = &p.resource_requirements {
        println!(
            "requests     cpu {:.2} cores, memory {:.1} GiB, gpu {}",
            r.cpu_cores,
            r.memory_bytes as f64 / (1u64 << 30) as f64,
            r.gpu_count
        );
    }
    if let Some(w) = &p.plugin_weights {
        println!(
            "weights      locality {:.2} storage-tier {:.2} io-pattern {:.2} kueue {:.2} pipeline {:.2}",
            w.data_locality_aware, w.storage_tier_aware, w.io_pattern_based, w.kueue_aware, w.pipeline_stage_aware
        );
    }
    if p.node_preferences.is_empty() {
        println!("nodes        (none preferred)");
    } else {
        println!("nodes        score  node / factors");
        for n in &p.node_preferences {
            println!("             {:>5}  {}  {}", n.score, n.node_name, n.reason);
        }
    }
}

fn print_orchestration_policy(p: &OrchestrationPolicy) {
    use apollo_proto::orchestration_policy::Target;
    let target = match &p.target {
        Some(Target::Migration(m)) => format!(
            "{}/{} {} -> {}{}",
            m.pod_namespace,
            m.pod_name,
            m.source_node,
            m.target_node,
            if m.preserve_pv { " (preserve PV)" } else { "" }
        ),
        Some(Target::Autoscaling(a)) => format!(
            "{} {}/{} replicas {} -> {}",
            a.workload_kind,
            a.workload_namespace,
            a.workload_name,
            a.current_replicas,
            a.desired_replicas
        ),
        Some(Target::Provisioning(v)) => format!(
            "pvc {}/{} {:.1} GiB class {}",
            v.namespace,
            v.pvc_name,
            v.size_bytes as f64 / (1u64 << 30) as f64,
            v.storage_class
        ),
        None => "-".into(),
    };
    println!(
        "{}  {:<10} {:<9} {}  {}",
        ts(&p.created_at),
        action_name(p.action),
        apollo_proto::PolicyPriority::try_from(p.priority)
            .map(|x| x
                .as_str_name()
                .trim_start_matches("POLICY_PRIORITY_")
                .to_ascii_lowercase())
            .unwrap_or_default(),
        target,
        p.reason
    );
    for f in &p.contributing_factors {
        println!("             - {f}");
    }
}

/// `apolloctl policy get`.
pub(crate) async fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Get(args) = cmd;
    let (ns, name) = split_pod(&args.pod)?;
    if args.orchestration {
        let mut c = OrchestrationPolicyServiceClient::new(
            client::channel(&args.orchestration_url, args.timeout).await?,
        );
        let p = c
            .get_orchestration_policy(OrchestrationPolicyRequest {
                pod_name: name,
                pod_namespace: ns,
                requested_action: args.action.map_or(0, |a| a as i32),
            })
            .await
            .map_err(|s| client::status_line("GetOrchestrationPolicy", &s))?
            .into_inner();
        match args.output {
            Output::Json => print_json(&p)?,
            Output::Text => print_orchestration_policy(&p),
        }
        return Ok(());
    }
    if args.action.is_some() {
        return Err(UsageError("--action needs --orchestration".into()).into());
    }
    let mut c =
        SchedulingPolicyServiceClient::new(client::channel(&args.scheduling, args.timeout).await?);
    let p = c
        .get_scheduling_policy(SchedulingPolicyRequest {
            pod_name: name,
            pod_namespace: ns,
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_line("GetSchedulingPolicy", &s))?
        .into_inner();
    match args.output {
        Output::Json => print_json(&p)?,
        Output::Text => print_scheduling_policy(&p),
    }
    Ok(())
}

/// `apolloctl watch`.
pub(crate) async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut c = OrchestrationPolicyServiceClient::new(
        // Streams are long-lived: no per-call deadline.
        client::channel(&args.orchestration, Duration::from_secs(365 * 86_400)).await?,
    );
    let subscriber_id = args
        .subscriber_id
        .clone()
        .unwrap_or_else(|| format!("apolloctl-{}", uuid::Uuid::new_v4().simple()));
    let mut stream = c
        .subscribe_policies(PolicySubscription {
            subscriber_id: subscriber_id.clone(),
            action_filters: args.action.iter().map(|a| *a as i32).collect(),
            namespace_filters: args.namespace.clone(),
        })
        .await
        .map_err(|s| client::status_line("SubscribePolicies", &s))?
        .into_inner();
    eprintln!("watching orchestration policies as {subscriber_id} (Ctrl-C stops)");
    let mut seen = 0usize;
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            n = stream.next() => n,
        };
        match next {
            Some(Ok(p)) => {
                match args.output {
                    Output::Json => print_json(&p)?,
                    Output::Text => print_orchestration_policy(&p),
                }
                seen += 1;
                if args.count > 0 && seen >= args.count {
                    return Ok(());
                }
            }
            Some(Err(s)) => return Err(client::status_line("SubscribePolicies", &s)),
            None => anyhow::bail!("the orchestration engine ended the stream"),
        }
    }
}

/// `apolloctl forecast`.
pub(crate) async fn forecast(args: ForecastArgs) -> anyhow::Result<()> {
    if !(0.5..1.0).contains(&args.confidence) {
        return Err(UsageError(format!(
            "--confidence must be in [0.5, 1), got {}",
            args.confidence
        ))
        .into());
    }
    let mut c = ForecastServiceClient::new(client::channel(&args.forecaster, args.timeout).await?);
    let p = c
        .get_resource_prediction(PredictionRequest {
            node_name: args.node.clone(),
            horizon_minutes: args.horizon,
            confidence_level: args.confidence,
        })
        .await
        .map_err(|s| client::status_line("GetResourcePrediction", &s))?
        .into_inner();
    match args.output {
        Output::Json => print_json(&p)?,
        Output::Text => print_forecast(&p),
    }
    Ok(())
}

fn print_forecast(p: &ResourcePrediction) {
    println!(
        "node {}  model {}  level {:.0}%  horizon {} min{}",
        p.node_name,
        p.model_type,
        p.confidence_level * 100.0,
        p.prediction_horizon_minutes,
        if p.anomaly_detected {
            format!(
                "  ANOMALY {} (score {:.2})",
                p.anomaly_type, p.anomaly_score
            )
        } else {
            String::new()
        }
    );
    println!(
        "{:<9} {:>20} {:>20} {:>20}",
        "time", "cpu % [lo, hi]", "memory % [lo, hi]", "gpu % [lo, hi]"
    );
    for (i, u) in p.predicted_usage.iter().enumerate() {
        let lo = p.lower_bound.get(i).cloned().unwrap_or_default();
        let hi = p.upper_bound.get(i).cloned().unwrap_or_default();
        let cell = |v: f64, l: f64, h: f64| format!("{v:5.1} [{l:5.1},{h:5.1}]");
        println!(
            "{:<9} {:>20} {:>20} {:>20}",
            ts(&u.timestamp),
            cell(u.cpu_usage, lo.cpu_usage, hi.cpu_usage),
            cell(u.memory_usage, lo.memory_usage, hi.memory_usage),
            cell(u.gpu_usage, lo.gpu_usage, hi.gpu_usage)
        );
    }
    for r in &p.recommendations {
        println!(
            "recommendation: {} — {}",
            r.recommendation_type, r.description
        );
    }
}

/// The message type carried on an APOLLO subject (after the prefix).
fn decode(
    prefix: &str,
    subject: &str,
    payload: &[u8],
) -> (&'static str, Result<serde_json::Value, String>) {
    fn typed<T: serde::de::DeserializeOwned + Serialize>(
        p: &[u8],
    ) -> Result<serde_json::Value, String> {
        let msg: T = serde_json::from_slice(p).map_err(|e| e.to_string())?;
        serde_json::to_value(&msg).map_err(|e| e.to_string())
    }
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or("");
    let mut tokens = rest.split('.');
    match (tokens.next(), tokens.next()) {
        (Some("insight"), Some("workload")) => {
            ("WorkloadSignature", typed::<WorkloadSignature>(payload))
        }
        (Some("insight"), Some("cluster")) => ("ClusterInsight", typed::<ClusterInsight>(payload)),
        (Some("forecast"), _) => ("ResourcePrediction", typed::<ResourcePrediction>(payload)),
        (Some("alert"), _) => ("ResourceAlert", typed::<ResourceAlert>(payload)),
        (Some("policy"), Some("scheduling")) => {
            ("SchedulingPolicy", typed::<SchedulingPolicy>(payload))
        }
        (Some("policy"), Some("orchestration")) => {
            ("OrchestrationPolicy", typed::<OrchestrationPolicy>(payload))
        }
        (Some("feedback"), Some("scheduling")) => {
            ("SchedulingResult", typed::<SchedulingResult>(payload))
        }
        (Some("feedback"), Some("orchestration")) => {
            ("ExecutionResult", typed::<ExecutionResult>(payload))
        }
        _ => (
            "raw",
            serde_json::from_slice(payload).or_else(|_| {
                Ok(serde_json::Value::String(
                    String::from_utf8_lossy(payload).into_owned(),
                ))
            }),
        ),
    }
}

/// `apolloctl tap`.
pub(crate) async fn tap(args: TapArgs) -> anyhow::Result<()> {
    if args.subject.trim().is_empty() || args.subject.contains(' ') {
        return Err(UsageError(format!("invalid subject {:?}", args.subject)).into());
    }
    let nats = client::nats(&args.nats_url).await?;
    let mut sub = nats
        .subscribe(args.subject.clone())
        .await
        .with_context(|| format!("cannot subscribe to {}", args.subject))?;
    nats.flush()
        .await
        .context("NATS did not confirm the subscription")?;
    if args.output == Output::Text {
        eprintln!(
            "tapping {} on {} (Ctrl-C stops)",
            args.subject, args.nats_url
        );
    }
    let mut seen = 0usize;
    loop {
        let msg = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            m = sub.next() => m,
        };
        let Some(msg) = msg else {
            anyhow::bail!("the NATS connection closed");
        };
        let (kind, value) = decode(&args.subject_prefix, msg.subject.as_str(), &msg.payload);
        match args.output {
            Output::Json => print_json(&serde_json::json!({
                "subject": msg.subject.as_str(),
                "type": kind,
                "message": value.as_ref().ok(),
                "error": value.as_ref().err(),
            }))?,
            Output::Text => {
                println!("── {}  ({kind})", msg.subject);
                match value {
                    Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
                    Err(e) => println!("undecodable as {kind}: {e}"),
                }
            }
        }
        seen += 1;
        if args.count > 0 && seen >= args.count {
            return Ok(());
        }
    }
}

/// `apolloctl explain`.
pub(crate) async fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let id = args.request_id.trim();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(UsageError(format!("invalid request id {:?}", args.request_id)).into());
    }
    let nats = client::nats(&args.nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let bucket = apollo_common::bus::decision_bucket(&args.stream_prefix);
    let store = js
        .get_key_value(&bucket)
        .await
        .with_context(|| format!("no decision records: bucket {bucket} not found"))?;
    let entry = store
        .get(id)
        .await
        .with_context(|| format!("cannot read {bucket}"))?
        .with_context(|| {
            format!("no decision record for {id} (unknown id, or older than the engines' --decision-record-ttl)")
        })?;
    let record: serde_json::Value =
        serde_json::from_slice(&entry).context("the decision record is not JSON")?;
    match args.output {
        Output::Json => print_json(&record)?,
        Output::Text => print_record(&record)?,
    }
    Ok(())
}

fn print_record(r: &serde_json::Value) -> anyhow::Result<()> {
    let kind = r.get("kind").and_then(|v| v.as_str()).unwrap_or("?");
    println!("kind         {kind}");
    println!(
        "decided at   {}",
        r.get("decided_at").and_then(|v| v.as_str()).unwrap_or("?")
    );
    if let Some(req) = r.get("request") {
        println!("request      {}", serde_json::to_string(req)?);
    }
    if let Some(v) = r.get("view") {
        println!("engine view  {}", serde_json::to_string(v)?);
    }
    if let Some(extra) = r.get("inputs") {
        println!("inputs       {}", serde_json::to_string(extra)?);
    }
    match kind {
        "scheduling" => {
            let p: SchedulingPolicy =
                serde_json::from_value(r.get("policy").cloned().unwrap_or_default())
                    .context("the record's policy is not a SchedulingPolicy")?;
            if let Some(sig) = &p.workload_signature {
                println!("signature    {}", serde_json::to_string(sig)?);
            }
            print_scheduling_policy(&p);
        }
        "orchestration" => {
            let p: OrchestrationPolicy =
                serde_json::from_value(r.get("policy").cloned().unwrap_or_default())
                    .context("the record's policy is not an OrchestrationPolicy")?;
            print_orchestration_policy(&p);
        }
        _ => println!("{}", serde_json::to_string_pretty(r)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_need_namespace_and_name() {
        assert_eq!(
            split_pod("ml/trainer-0").unwrap(),
            ("ml".to_string(), "trainer-0".to_string())
        );
        for bad in ["trainer-0", "/x", "ml/", "a/b/c", ""] {
            assert!(split_pod(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn actions_parse_both_spellings() {
        assert_eq!(
            parse_action("scale_up").unwrap(),
            OrchestrationAction::ScaleUp
        );
        assert_eq!(
            parse_action("Migrate").unwrap(),
            OrchestrationAction::Migrate
        );
        assert!(parse_action("teleport").is_err());
        assert_eq!(
            action_name(OrchestrationAction::ScaleDown as i32),
            "scale-down"
        );
    }

    #[test]
    fn tap_decodes_by_subject_family() {
        let sig = serde_json::to_vec(&WorkloadSignature {
            pod_name: "p".into(),
            pod_namespace: "ns".into(),
            ..Default::default()
        })
        .unwrap();
        let (kind, v) = decode("apollo", "apollo.insight.workload.ns.p", &sig);
        assert_eq!(kind, "WorkloadSignature");
        assert_eq!(v.unwrap()["podName"], "p");
        let (kind, v) = decode("apollo", "apollo.forecast.n1", b"{\"nodeName\": 5}");
        assert_eq!(kind, "ResourcePrediction");
        assert!(v.is_err(), "a wrongly typed field must not decode");
        let (kind, v) = decode("apollo", "other.thing", b"hello");
        assert_eq!(kind, "raw");
        assert_eq!(v.unwrap(), serde_json::Value::String("hello".into()));
    }
}
