//! PROVISION, two triggers:
//! - a storage device predicted to fill past `fill_threshold` within
//!   `horizon` at its observed growth rate (least squares over the samples of
//!   the last cycles); the new volume is sized to the growth over
//!   `sizing_horizon`, at least `min_size`, rounded up to GiB, in the class of
//!   the device's tier, for the workload doing the most I/O on the node;
//! - a workload whose I/O needs a faster class than the node's best device
//!   (the sidecar's recommended class, or a random-access pattern on disk).
//!
//! Each (device or pod) is proposed at most once per `repeat_after`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use apollo_placement::snapshot::StorageTier;
use apollo_proto::{IoPattern, OrchestrationAction, PipelineStage, StorageClass};

use super::{pct, Proposal, Subject};
use crate::view::PlanningView;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Thresholds of provisioning.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionConfig {
    /// Fill level (0-1) that must not be reached within the horizon. Default 0.85.
    pub fill_threshold: f64,
    /// How far ahead growth is extrapolated. Default 6 h.
    pub horizon: Duration,
    /// Growth period a new volume must absorb. Default 24 h.
    pub sizing_horizon: Duration,
    /// Smallest volume. Default 10 GiB.
    pub min_size_bytes: i64,
    /// Size of a volume provisioned for a faster class. Default 100 GiB.
    pub class_upgrade_size_bytes: i64,
    /// Samples needed spanning at least this long before a rate is trusted. Default 2 min.
    pub min_sample_span: Duration,
    /// Do not propose the same thing again within this. Default 1 h.
    pub repeat_after: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            fill_threshold: 0.85,
            horizon: Duration::from_secs(6 * 3600),
            sizing_horizon: Duration::from_secs(24 * 3600),
            min_size_bytes: 10 * 1024 * 1024 * 1024,
            class_upgrade_size_bytes: 100 * 1024 * 1024 * 1024,
            min_sample_span: Duration::from_secs(120),
            repeat_after: Duration::from_secs(3600),
        }
    }
}

/// Device usage samples and what was proposed when.
#[derive(Debug, Default, Clone)]
pub struct GrowthBook {
    samples: HashMap<(String, String), VecDeque<(SystemTime, f64)>>,
    proposed: HashMap<String, SystemTime>,
}

const MAX_SAMPLES: usize = 64;

impl GrowthBook {
    /// Records a device's used bytes at `at`.
    pub fn observe(&mut self, node: &str, device: &str, at: SystemTime, used: f64) {
        let q = self
            .samples
            .entry((node.to_string(), device.to_string()))
            .or_default();
        if q.back().is_some_and(|(t, _)| *t >= at) {
            return;
        }
        q.push_back((at, used));
        while q.len() > MAX_SAMPLES {
            q.pop_front();
        }
    }

    /// Growth in bytes per second (least-squares slope), if the samples span
    /// at least `min_span`.
    pub fn rate(&self, node: &str, device: &str, min_span: Duration) -> Option<f64> {
        let q = self.samples.get(&(node.to_string(), device.to_string()))?;
        let (first, last) = (q.front()?, q.back()?);
        if last.0.duration_since(first.0).unwrap_or_default() < min_span || q.len() < 2 {
            return None;
        }
        let xs: Vec<f64> = q
            .iter()
            .map(|(t, _)| t.duration_since(first.0).unwrap_or_default().as_secs_f64())
            .collect();
        let n = xs.len() as f64;
        let mx = xs.iter().sum::<f64>() / n;
        let my = q.iter().map(|(_, y)| y).sum::<f64>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (x, (_, y)) in xs.iter().zip(q) {
            num += (x - mx) * (y - my);
            den += (x - mx) * (x - mx);
        }
        (den > 0.0).then(|| num / den)
    }

    fn recently(&self, key: &str, now: SystemTime, within: Duration) -> bool {
        self.proposed
            .get(key)
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() < within)
    }
}

/// The storage class of a device tier.
pub fn class_of(tier: StorageTier) -> StorageClass {
    match tier {
        StorageTier::Nvme => StorageClass::UltraFast,
        StorageTier::Ssd => StorageClass::Fast,
        StorageTier::Hdd => StorageClass::Standard,
    }
}

fn class_rank(c: StorageClass) -> u8 {
    match c {
        StorageClass::Unspecified => 0,
        StorageClass::Standard => 1,
        StorageClass::Fast | StorageClass::Csd => 2,
        StorageClass::UltraFast | StorageClass::Memory => 3,
    }
}

/// The orchestrator's workload type for a pipeline stage.
pub fn workload_type(stage: PipelineStage) -> &'static str {
    match stage {
        PipelineStage::Inference => "inference",
        PipelineStage::DataLoading
        | PipelineStage::Preprocessing
        | PipelineStage::Postprocessing => "data-pipeline",
        _ => "training",
    }
}

/// Plans provisioning; records this cycle's device samples first.
pub fn plan(view: &PlanningView, cfg: &ProvisionConfig, book: &mut GrowthBook) -> Vec<Proposal> {
    let now = view.now;
    let mut out = Vec::new();
    for node in &view.nodes {
        for d in &node.devices {
            book.observe(&node.name, &d.name, now, d.used_bytes as f64);
        }
    }
    for node in &view.nodes {
        for d in &node.devices {
            if d.total_bytes <= 0 {
                continue;
            }
            let key = format!("device/{}/{}", node.name, d.name);
            if book.recently(&key, now, cfg.repeat_after) {
                continue;
            }
            let Some(rate) = book.rate(&node.name, &d.name, cfg.min_sample_span) else {
                continue;
            };
            let total = d.total_bytes as f64;
            let fill_now = d.used_bytes as f64 / total;
            let predicted =
                (d.used_bytes as f64 + rate.max(0.0) * cfg.horizon.as_secs_f64()) / total;
            if rate <= 0.0 || predicted < cfg.fill_threshold {
                continue;
            }
            let Some(pod) = view.pods_on(&node.name).max_by(|a, b| {
                a.io_usage
                    .total_cmp(&b.io_usage)
                    .then_with(|| b.name.cmp(&a.name))
            }) else {
                continue;
            };
            let lead = ((cfg.fill_threshold * total - d.used_bytes as f64).max(0.0) / rate).round();
            let growth = rate * cfg.sizing_horizon.as_secs_f64();
            let size = ((growth.max(cfg.min_size_bytes as f64) / GIB).ceil() * GIB) as i64;
            let class = class_of(d.tier);
            book.proposed.insert(key, now);
            out.push(Proposal {
                action: OrchestrationAction::Provision,
                namespace: pod.namespace.clone(),
                subject: Subject::Provision {
                    workload: pod.name.clone(),
                    pvc_name: format!("{}-{}-expand", pod.name, d.name),
                    class,
                    size_bytes: size,
                    node: Some(node.name.clone()),
                },
                urgency: (0.9 - lead / cfg.horizon.as_secs_f64() * 0.6).clamp(0.3, 0.9),
                reason: format!(
                    "device {} on {} grows {:.1} MiB/min and reaches {} within {}s: provision {} GiB {}",
                    d.name,
                    node.name,
                    rate * 60.0 / (1024.0 * 1024.0),
                    pct(cfg.fill_threshold),
                    lead as u64,
                    size as f64 / GIB,
                    class.as_str_name()
                ),
                factors: vec![
                    format!("workload={}", pod.name),
                    format!("workload_type={}", workload_type(pod.stage)),
                    format!("node={}", node.name),
                    format!("device={}", d.name),
                    format!("current={}", pct(fill_now)),
                    format!("predicted={}", pct(predicted.min(9.99))),
                    format!("threshold={}", pct(cfg.fill_threshold)),
                    format!("lead_time={}s", lead as u64),
                    format!("growth_bytes_per_s={rate:.0}"),
                    format!("size_bytes={size}"),
                ],
                deadline_in: Duration::from_secs_f64(lead.max(300.0)),
                disruptive: false,
            });
        }
    }
    for pod in &view.pods {
        let Some(node) = view.node(&pod.node) else {
            continue;
        };
        let have = node.best_tier().map_or(StorageClass::Standard, class_of);
        let want = if class_rank(pod.recommended_class) > 0 {
            pod.recommended_class
        } else if matches!(pod.io_pattern, IoPattern::Random) && class_rank(have) < 2 {
            StorageClass::Fast
        } else {
            continue;
        };
        if class_rank(want) <= class_rank(have) {
            continue;
        }
        let key = format!("pod/{}", pod.key());
        if book.recently(&key, now, cfg.repeat_after) {
            continue;
        }
        book.proposed.insert(key, now);
        out.push(Proposal {
            action: OrchestrationAction::Provision,
            namespace: pod.namespace.clone(),
            subject: Subject::Provision {
                workload: pod.name.clone(),
                pvc_name: format!(
                    "{}-{}",
                    pod.name,
                    want.as_str_name().to_ascii_lowercase().replace('_', "-")
                ),
                class: want,
                size_bytes: cfg.class_upgrade_size_bytes,
                node: None,
            },
            urgency: 0.35,
            reason: format!(
                "{} needs {} storage ({}), best on {} is {}",
                pod.key(),
                want.as_str_name(),
                pod.io_pattern.as_str_name(),
                node.name,
                have.as_str_name()
            ),
            factors: vec![
                format!("workload={}", pod.name),
                format!("workload_type={}", workload_type(pod.stage)),
                format!("io_pattern={}", pod.io_pattern.as_str_name()),
                format!("recommended_class={}", pod.recommended_class.as_str_name()),
                format!("node_best_class={}", have.as_str_name()),
                format!("size_bytes={}", cfg.class_upgrade_size_bytes),
            ],
            deadline_in: Duration::from_secs(3600),
            disruptive: false,
        });
    }
    out
}
