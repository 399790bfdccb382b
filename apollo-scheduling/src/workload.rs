//! What the engine knows about a pod: its latest `WorkloadSignature` from the
//! cluster view when there is one, completed with what its labels and
//! annotations say.
//!
//! # Keys read
//!
//! APOLLO annotations (a label with the same key is used when the annotation
//! is absent):
//!
//! | key | values |
//! |---|---|
//! | `apollo.ai-storage/stage` | `data-loading`, `preprocessing`, `training`, `validation`, `inference`, `postprocessing`, `checkpointing`, `idle` (also the `PIPELINE_STAGE_*` names) |
//! | `apollo.ai-storage/io-pattern` | `read-heavy`, `write-heavy`, `balanced`, `sequential`, `random`, `bursty` |
//! | `apollo.ai-storage/workload-type` | `image`, `text`, `tabular`, `audio`, `video`, `multimodal`, `generic` |
//! | `apollo.ai-storage/data-locations` | comma list of node names holding the pod's data |
//! | `apollo.ai-storage/cache-nodes` | comma list of node names caching the pod's data |
//! | `apollo.ai-storage/requires-csd` | `true`/`false` (`1`/`0`, `yes`/`no`) |
//! | `apollo.ai-storage/preprocessing-type` | `augmentation`, `transformation`, `filtering`, `aggregation`, `sharding`, `normalization`, `feature-extract` |
//! | `apollo.ai-storage/storage-class` | `standard`, `fast`, `ultra-fast`, `csd`, `memory` (orchestrator names `high-throughput` = fast, `high-iops` = ultra-fast, `balanced` = standard) |
//! | `apollo.ai-storage/storage-size` | Kubernetes quantity, e.g. `500Gi` |
//! | `apollo.ai-storage/min-iops` | integer |
//! | `apollo.ai-storage/min-throughput-mbps` | integer |
//! | `apollo.ai-storage/cpu` | CPU quantity, e.g. `500m`, `4` |
//! | `apollo.ai-storage/memory` | memory quantity, e.g. `16Gi` |
//! | `apollo.ai-storage/gpu` | GPU count; a fraction below 1 (e.g. `0.5`) is a share of one GPU |
//! | `apollo.ai-storage/gpu-milli` | share of each GPU, 1-1000 (needs `gpu` <= 1) |
//! | `apollo.ai-storage/gpu-model` | comma list of allowed GPU models |
//! | `apollo.ai-storage/pipeline-step` | step name when no Argo/Kubeflow label names it |
//!
//! Orchestrator labels and annotations:
//!
//! | key | used for |
//! |---|---|
//! | `workflows.argoproj.io/workflow` | Argo workflow (pipeline identity) |
//! | `workflows.argoproj.io/node-name` | Argo step: the last `.`-separated segment, `[i]` suffixes removed |
//! | `workflows.argoproj.io/template` | template name (a plain name, or the `name` of the template JSON) |
//! | `training.kubeflow.org/job-name` | Kubeflow training job: stage training, distributed |
//! | `training.kubeflow.org/replica-type` | replica role (`master`, `worker`, `ps`, ...), kept as the step |
//! | `pipeline/runid` | Kubeflow Pipelines (v1) run (pipeline identity) |
//! | `pipelines.kubeflow.org/task_display_name` | Kubeflow Pipelines step name |
//! | `pipelines.kubeflow.org/component_spec` | Kubeflow Pipelines (v1) component JSON; its `name` is the step |
//! | any other `pipelines.kubeflow.org/*` | marks the pod as a pipeline step |
//! | `kueue.x-k8s.io/queue-name` | Kueue local queue |
//!
//! When no stage is given, it is guessed from the step name (`load`, `prep`,
//! `train`, `eval`, `infer`, `checkpoint`, ... as substrings).
//!
//! # Precedence
//!
//! The signature is observed behaviour, so its stage, I/O pattern and type win
//! over annotations, which only fill what it leaves unknown. Annotations are
//! declared requirements, so resource requests, CSD need, GPU models and
//! storage figures from annotations win over the signature's estimates.
//! Locality lists are merged. A value that does not parse is ignored with a
//! note (the notes end up in the policy's `reason`); it never fails a request.

use std::collections::BTreeMap;

use apollo_proto::{
    IoPattern as ProtoIo, PipelineStage, PreprocessingType, SchedulingPolicyRequest, StorageClass,
    WorkloadSignature, WorkloadSignatureInfo, WorkloadType,
};

use crate::demand::{CsdNeed, IoHints, IoPattern, LocalityHints, PodDemand, MILLI_PER_GPU};
use crate::snapshot::StorageTier;

/// Prefix of APOLLO's own annotations.
pub const ANNOTATION_PREFIX: &str = "apollo.ai-storage/";
/// Argo workflow label.
pub const ARGO_WORKFLOW: &str = "workflows.argoproj.io/workflow";
/// Argo node-name annotation.
pub const ARGO_NODE_NAME: &str = "workflows.argoproj.io/node-name";
/// Argo template annotation.
pub const ARGO_TEMPLATE: &str = "workflows.argoproj.io/template";
/// Kubeflow training job label.
pub const KUBEFLOW_JOB: &str = "training.kubeflow.org/job-name";
/// Kubeflow training replica type label.
pub const KUBEFLOW_REPLICA: &str = "training.kubeflow.org/replica-type";
/// Kubeflow Pipelines v1 run label.
pub const KFP_RUN: &str = "pipeline/runid";
/// Kubeflow Pipelines step display name.
pub const KFP_TASK_NAME: &str = "pipelines.kubeflow.org/task_display_name";
/// Kubeflow Pipelines v1 component spec (JSON).
pub const KFP_COMPONENT_SPEC: &str = "pipelines.kubeflow.org/component_spec";
/// Kueue queue label.
pub const KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";

/// Longest list of node names taken from one annotation.
pub const MAX_NODE_LIST: usize = 64;
/// Notes kept per request (more are summarised).
const MAX_NOTES: usize = 8;
/// Longest value echoed back in a note.
const NOTE_VALUE_CHARS: usize = 48;

/// Where the workload description came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// Nothing known beyond the pod's name.
    #[default]
    None,
    /// Labels and annotations only.
    Metadata,
    /// A workload signature (possibly completed by metadata).
    Signature,
}

/// A pipeline a pod belongs to, for co-location with its upstream steps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipelineRef {
    /// Namespace of the pipeline's pods.
    pub namespace: String,
    /// `argo` or `kfp`.
    pub kind: &'static str,
    /// Workflow or run name.
    pub name: String,
}

/// Everything derived about one pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    /// Origin of the description.
    pub source: Source,
    /// Data modality.
    pub workload_type: WorkloadType,
    /// Pipeline stage.
    pub stage: PipelineStage,
    /// Dominant I/O pattern.
    pub io_pattern: ProtoIo,
    /// Confidence of the signature (0 from metadata only).
    pub confidence: f64,
    /// ML framework, if known.
    pub framework: String,
    /// Framework version, if known.
    pub framework_version: String,
    /// Uses GPUs.
    pub is_gpu_workload: bool,
    /// Part of a distributed job.
    pub is_distributed: bool,
    /// Step of a pipeline.
    pub is_pipeline: bool,
    /// Step name.
    pub pipeline_step: String,
    /// The pipeline, when its identity is known.
    pub pipeline: Option<PipelineRef>,
    /// Names of the steps this one depends on.
    pub dependencies: Vec<String>,
    /// Estimated batch size.
    pub estimated_batch_size: i32,
    /// Preprocessing kind.
    pub preprocessing_type: PreprocessingType,
    /// Dataset name, if known.
    pub dataset_name: String,
    /// Nodes storing the pod's data.
    pub data_locations: Vec<String>,
    /// Nodes caching the pod's data.
    pub cache_nodes: Vec<String>,
    /// Kueue queue.
    pub kueue_queue: Option<String>,
    /// Kueue priority (0 unknown).
    pub kueue_priority: i32,
    /// Cannot run without a computational storage device.
    pub requires_csd: bool,
    /// Declared or recommended storage class.
    pub storage_class: Option<StorageClass>,
    /// Storage size in bytes (0 unknown).
    pub storage_size_bytes: u64,
    /// Minimum IOPS (0 unknown).
    pub min_iops: u64,
    /// Minimum throughput in MB/s (0 unknown).
    pub min_throughput_mbps: u64,
    /// CPU request in milli-cores.
    pub cpu_milli: u64,
    /// Memory request in bytes.
    pub memory_bytes: u64,
    /// GPU count.
    pub num_gpu: u32,
    /// Share of each GPU in milli-GPU (0 without GPUs).
    pub gpu_milli: u32,
    /// Allowed GPU models (empty = any).
    pub gpu_models: Vec<String>,
    /// Values that were ignored and why.
    pub notes: Vec<String>,
}

/// Labels and annotations with APOLLO's lookup rules.
struct Meta<'a> {
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
}

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.annotations
            .get(key)
            .or_else(|| self.labels.get(key))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn apollo(&self, name: &str) -> Option<(String, &'a str)> {
        let key = format!("{ANNOTATION_PREFIX}{name}");
        self.get(&key).map(|v| (key, v))
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        let after = |m: &BTreeMap<String, String>| {
            m.range(prefix.to_string()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(prefix))
        };
        after(self.annotations) || after(self.labels)
    }
}

impl Workload {
    /// Derives the workload of a request from its signature (if any) and its
    /// labels and annotations. Never fails: unusable values become notes.
    pub fn derive(req: &SchedulingPolicyRequest, signature: Option<&WorkloadSignature>) -> Self {
        let mut w = Workload::default();
        if let Some(sig) = signature {
            w.apply_signature(sig);
        }
        let meta = Meta {
            labels: &req.pod_labels,
            annotations: &req.pod_annotations,
        };
        let had_meta = w.apply_metadata(&meta, &req.pod_namespace);
        if w.source == Source::None && had_meta {
            w.source = Source::Metadata;
        }
        w.finish();
        w
    }

    fn note(&mut self, key: &str, value: &str, why: &str) {
        if self.notes.len() < MAX_NOTES {
            let shown: String = value.chars().take(NOTE_VALUE_CHARS).collect();
            let more = if value.chars().count() > NOTE_VALUE_CHARS {
                "..."
            } else {
                ""
            };
            self.notes
                .push(format!("ignored {key}={shown:?}{more}: {why}"));
        } else if self.notes.len() == MAX_NOTES {
            self.notes.push("more values ignored".into());
        }
    }

    fn apply_signature(&mut self, s: &WorkloadSignature) {
        self.source = Source::Signature;
        self.workload_type = s.workload_type();
        self.stage = s.current_stage();
        self.io_pattern = s.io_pattern();
        self.confidence = if s.confidence.is_finite() {
            s.confidence.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.framework = s.framework.clone();
        self.framework_version = s.framework_version.clone();
        self.is_gpu_workload = s.is_gpu_workload;
        self.is_distributed = s.is_distributed;
        self.is_pipeline = s.is_pipeline;
        self.pipeline_step = s.pipeline_step.clone();
        self.estimated_batch_size = s.estimated_batch_size.max(0);
        if let Some(argo) = &s.argo_context {
            if !argo.workflow_name.is_empty() {
                self.is_pipeline = true;
                self.pipeline = Some(PipelineRef {
                    namespace: if argo.workflow_namespace.is_empty() {
                        s.pod_namespace.clone()
                    } else {
                        argo.workflow_namespace.clone()
                    },
                    kind: "argo",
                    name: argo.workflow_name.clone(),
                });
            }
            if self.pipeline_step.is_empty() {
                self.pipeline_step = if argo.step_name.is_empty() {
                    argo.template_name.clone()
                } else {
                    argo.step_name.clone()
                };
            }
            self.dependencies = argo
                .dependencies
                .iter()
                .take(MAX_NODE_LIST)
                .cloned()
                .collect();
        }
        if let Some(kf) = &s.kubeflow_info {
            if kf.cpu_request.is_finite() && kf.cpu_request > 0.0 {
                self.cpu_milli = (kf.cpu_request * 1000.0).round() as u64;
            }
            self.memory_bytes = kf.memory_request_bytes.max(0) as u64;
            if kf.gpu_request > 0 {
                self.num_gpu = kf.gpu_request.min(64) as u32;
                self.gpu_milli = MILLI_PER_GPU;
            }
            if kf.replicas > 1 || kf.parallelism > 1 {
                self.is_distributed = true;
            }
        }
        if let Some(m) = &s.current_metrics {
            if self.cpu_milli == 0 && m.cpu_request_cores.is_finite() && m.cpu_request_cores > 0.0 {
                self.cpu_milli = (m.cpu_request_cores * 1000.0).round() as u64;
            }
            if self.memory_bytes == 0 && m.memory_request_bytes > 0 {
                self.memory_bytes = m.memory_request_bytes as u64;
            }
        }
        if let Some(k) = &s.kueue_info {
            if !k.queue_name.is_empty() {
                self.kueue_queue = Some(k.queue_name.clone());
            } else if !k.local_queue.is_empty() {
                self.kueue_queue = Some(k.local_queue.clone());
            }
            self.kueue_priority = k.priority;
        }
        if let Some(d) = &s.data_locality {
            push_nodes(
                &mut self.data_locations,
                d.data_nodes.iter().map(String::as_str),
            );
            if !d.primary_node.is_empty() {
                push_nodes(&mut self.data_locations, [d.primary_node.as_str()]);
            }
            push_nodes(
                &mut self.cache_nodes,
                d.cache_nodes.iter().map(String::as_str),
            );
        }
        if let Some(r) = &s.storage_recommendation {
            let class = r.recommended_class();
            if class != StorageClass::Unspecified {
                self.storage_class = Some(class);
            }
            if let Some(b) = parse_bytes(&r.recommended_size) {
                self.storage_size_bytes = b;
            }
            self.min_iops = r.recommended_iops.max(0) as u64;
            self.min_throughput_mbps = r.recommended_throughput_mbps.max(0) as u64;
        }
    }

    /// Returns whether any recognised key was present.
    fn apply_metadata(&mut self, m: &Meta<'_>, namespace: &str) -> bool {
        let mut seen = false;

        // Orchestrators.
        if let Some(wf) = m.get(ARGO_WORKFLOW) {
            seen = true;
            self.is_pipeline = true;
            if self.pipeline.is_none() {
                self.pipeline = Some(PipelineRef {
                    namespace: namespace.to_string(),
                    kind: "argo",
                    name: wf.to_string(),
                });
            }
        }
        if let Some(node) = m.get(ARGO_NODE_NAME) {
            seen = true;
            self.is_pipeline = true;
            if self.pipeline_step.is_empty() {
                self.pipeline_step = argo_step(node);
            }
        }
        if let Some(t) = m.get(ARGO_TEMPLATE) {
            seen = true;
            if self.pipeline_step.is_empty() {
                match template_name(t) {
                    Some(n) => self.pipeline_step = n,
                    None => self.note(ARGO_TEMPLATE, t, "no template name"),
                }
            }
        }
        if let Some(job) = m.get(KUBEFLOW_JOB) {
            seen = true;
            self.is_distributed = true;
            if self.stage == PipelineStage::Unknown {
                self.stage = PipelineStage::Training;
            }
            if self.pipeline_step.is_empty() {
                self.pipeline_step = match m.get(KUBEFLOW_REPLICA) {
                    Some(r) => format!("{job}/{}", r.to_ascii_lowercase()),
                    None => job.to_string(),
                };
            }
        }
        if let Some(run) = m.get(KFP_RUN) {
            seen = true;
            self.is_pipeline = true;
            if self.pipeline.is_none() {
                self.pipeline = Some(PipelineRef {
                    namespace: namespace.to_string(),
                    kind: "kfp",
                    name: run.to_string(),
                });
            }
        }
        if m.has_prefix("pipelines.kubeflow.org/") {
            seen = true;
            self.is_pipeline = true;
            if self.pipeline_step.is_empty() {
                if let Some(n) = m.get(KFP_TASK_NAME) {
                    self.pipeline_step = n.to_string();
                } else if let Some(spec) = m.get(KFP_COMPONENT_SPEC) {
                    match template_name(spec) {
                        Some(n) => self.pipeline_step = n,
                        None => self.note(KFP_COMPONENT_SPEC, spec, "no component name"),
                    }
                }
            }
        }
        if let Some(q) = m.get(KUEUE_QUEUE) {
            seen = true;
            self.kueue_queue = Some(q.to_string());
        }
        if let Some((_, step)) = m.apollo("pipeline-step") {
            seen = true;
            if self.pipeline_step.is_empty() {
                self.pipeline_step = step.chars().take(253).collect();
            }
        }

        // Behaviour (fills what the signature leaves unknown).
        if let Some((k, v)) = m.apollo("stage") {
            seen = true;
            match parse_stage(v) {
                Some(s) if self.stage == PipelineStage::Unknown => self.stage = s,
                Some(_) => {}
                None => self.note(&k, v, "unknown stage"),
            }
        }
        if let Some((k, v)) = m.apollo("io-pattern") {
            seen = true;
            match parse_io(v) {
                Some(p) if self.io_pattern == ProtoIo::Unknown => self.io_pattern = p,
                Some(_) => {}
                None => self.note(&k, v, "unknown I/O pattern"),
            }
        }
        if let Some((k, v)) = m.apollo("workload-type") {
            seen = true;
            match parse_workload_type(v) {
                Some(t) if self.workload_type == WorkloadType::Unknown => self.workload_type = t,
                Some(_) => {}
                None => self.note(&k, v, "unknown workload type"),
            }
        }
        if let Some((k, v)) = m.apollo("preprocessing-type") {
            seen = true;
            match parse_preprocessing(v) {
                Some(p) => self.preprocessing_type = p,
                None => self.note(&k, v, "unknown preprocessing type"),
            }
        }
        for (name, is_cache) in [("data-locations", false), ("cache-nodes", true)] {
            if let Some((k, v)) = m.apollo(name) {
                seen = true;
                let (names, bad) = split_nodes(v);
                if bad {
                    self.note(&k, v, "malformed node names skipped");
                }
                let list = if is_cache {
                    &mut self.cache_nodes
                } else {
                    &mut self.data_locations
                };
                push_nodes(list, names.iter().map(String::as_str));
            }
        }

        // Declared requirements (win over the signature).
        if let Some((k, v)) = m.apollo("requires-csd") {
            seen = true;
            match parse_bool(v) {
                Some(b) => self.requires_csd = b,
                None => self.note(&k, v, "expected true or false"),
            }
        }
        if let Some((k, v)) = m.apollo("storage-class") {
            seen = true;
            match parse_storage_class(v) {
                Some(c) => self.storage_class = Some(c),
                None => self.note(&k, v, "unknown storage class"),
            }
        }
        if let Some((k, v)) = m.apollo("storage-size") {
            seen = true;
            match parse_bytes(v) {
                Some(b) => self.storage_size_bytes = b,
                None => self.note(&k, v, "not a size quantity"),
            }
        }
        if let Some((k, v)) = m.apollo("min-iops") {
            seen = true;
            match parse_count(v) {
                Some(n) => self.min_iops = n,
                None => self.note(&k, v, "not a non-negative integer"),
            }
        }
        if let Some((k, v)) = m.apollo("min-throughput-mbps") {
            seen = true;
            match parse_count(v) {
                Some(n) => self.min_throughput_mbps = n,
                None => self.note(&k, v, "not a non-negative integer"),
            }
        }
        if let Some((k, v)) = m.apollo("cpu") {
            seen = true;
            match parse_cpu_milli(v) {
                Some(c) => self.cpu_milli = c,
                None => self.note(&k, v, "not a CPU quantity"),
            }
        }
        if let Some((k, v)) = m.apollo("memory") {
            seen = true;
            match parse_bytes(v) {
                Some(b) => self.memory_bytes = b,
                None => self.note(&k, v, "not a memory quantity"),
            }
        }
        let mut milli_given = None;
        if let Some((k, v)) = m.apollo("gpu-milli") {
            seen = true;
            match v.parse::<u32>() {
                Ok(x) if (1..=MILLI_PER_GPU).contains(&x) => milli_given = Some(x),
                _ => self.note(&k, v, "expected an integer 1-1000"),
            }
        }
        if let Some((k, v)) = m.apollo("gpu") {
            seen = true;
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x == 0.0 => {
                    self.num_gpu = 0;
                    self.gpu_milli = 0;
                }
                Ok(x) if x.is_finite() && x > 0.0 && x < 1.0 => {
                    self.num_gpu = 1;
                    self.gpu_milli = ((x * 1000.0).round() as u32).clamp(1, MILLI_PER_GPU);
                }
                Ok(x) if (1.0..=64.0).contains(&x) && x.fract() == 0.0 => {
                    self.num_gpu = x as u32;
                    self.gpu_milli = MILLI_PER_GPU;
                }
                _ => self.note(&k, v, "expected a GPU count 0-64 or a fraction below 1"),
            }
        }
        if let Some(milli) = milli_given {
            if self.num_gpu == 0 {
                self.num_gpu = 1;
                self.gpu_milli = milli;
            } else if self.num_gpu == 1 {
                self.gpu_milli = milli;
            } else {
                self.note(
                    &format!("{ANNOTATION_PREFIX}gpu-milli"),
                    &milli.to_string(),
                    "a multi-GPU request takes whole GPUs",
                );
            }
        }
        if let Some((k, v)) = m.apollo("gpu-model") {
            seen = true;
            let (models, bad) = split_nodes(v);
            if bad || models.is_empty() {
                self.note(&k, v, "malformed model names skipped");
            }
            self.gpu_models = models;
        }
        seen
    }

    fn finish(&mut self) {
        if self.num_gpu > 0 {
            self.is_gpu_workload = true;
        }
        if self.stage == PipelineStage::Unknown && !self.pipeline_step.is_empty() {
            self.stage = stage_from_name(&self.pipeline_step);
        }
        if self.preprocessing_type == PreprocessingType::Unknown
            && self.stage == PipelineStage::Preprocessing
        {
            self.preprocessing_type = preprocessing_from_name(&self.pipeline_step);
        }
        if self.storage_class == Some(StorageClass::Csd) && !self.requires_csd {
            // A CSD storage class cannot be served by a node without one.
            self.requires_csd = true;
        }
        if !self.pipeline_step.is_empty() && self.pipeline.is_some() {
            self.is_pipeline = true;
        }
    }

    /// Whether the pod's demand restricts GPU models (a hard need).
    pub fn has_gpu_model_constraint(&self) -> bool {
        self.num_gpu > 0 && !self.gpu_models.is_empty()
    }

    /// How much the pod cares about computational storage.
    pub fn csd_need(&self) -> CsdNeed {
        if self.requires_csd {
            return CsdNeed::Requires;
        }
        let benefits = matches!(
            self.preprocessing_type,
            PreprocessingType::Filtering
                | PreprocessingType::Aggregation
                | PreprocessingType::Transformation
                | PreprocessingType::FeatureExtract
        ) || self.stage == PipelineStage::Preprocessing;
        if benefits {
            CsdNeed::Benefits
        } else {
            CsdNeed::None
        }
    }

    /// Storage hints for the scorer.
    pub fn io_hints(&self) -> IoHints {
        let writes = self.stage == PipelineStage::Checkpointing;
        let pattern = match self.io_pattern {
            ProtoIo::Unknown => IoPattern::Unknown,
            ProtoIo::ReadHeavy => IoPattern::SequentialRead,
            ProtoIo::WriteHeavy => IoPattern::SequentialWrite,
            ProtoIo::Balanced | ProtoIo::Bursty => IoPattern::Mixed,
            ProtoIo::Sequential if writes => IoPattern::SequentialWrite,
            ProtoIo::Sequential => IoPattern::SequentialRead,
            ProtoIo::Random if writes => IoPattern::RandomWrite,
            ProtoIo::Random => IoPattern::RandomRead,
        };
        let tier = match self.storage_class {
            Some(StorageClass::UltraFast | StorageClass::Memory) => Some(StorageTier::Nvme),
            Some(StorageClass::Fast) => Some(StorageTier::Ssd),
            _ => None,
        };
        IoHints {
            pattern,
            throughput_mbps: self.min_throughput_mbps as f64,
            iops: self.min_iops,
            tier,
        }
    }

    /// The scorer's view of the pod; `upstream_nodes` are the nodes of its
    /// pipeline's upstream steps.
    pub fn demand(&self, upstream_nodes: Vec<String>) -> PodDemand {
        let mut d = PodDemand::new(self.cpu_milli, self.memory_bytes)
            .with_io(self.io_hints())
            .with_csd(self.csd_need())
            .with_locality(LocalityHints {
                cache_nodes: self.cache_nodes.clone(),
                data_nodes: self.data_locations.clone(),
                upstream_nodes,
            });
        if self.num_gpu > 0 {
            d = d
                .with_gpu(self.num_gpu, self.gpu_milli)
                .with_gpu_models(self.gpu_models.iter().cloned());
        }
        d
    }

    /// The signature as field 20 of `SchedulingPolicy` carries it.
    pub fn signature_info(&self) -> WorkloadSignatureInfo {
        WorkloadSignatureInfo {
            workload_type: self.workload_type as i32,
            current_stage: self.stage as i32,
            io_pattern: self.io_pattern as i32,
            confidence: self.confidence,
            framework: self.framework.clone(),
            framework_version: self.framework_version.clone(),
            is_gpu_workload: self.is_gpu_workload,
            is_distributed: self.is_distributed,
            is_pipeline: self.is_pipeline,
            pipeline_step: self.pipeline_step.clone(),
            estimated_batch_size: self.estimated_batch_size,
            preprocessing_type: self.preprocessing_type as i32,
            dataset_name: self.dataset_name.clone(),
            data_locations: self.data_locations.clone(),
            cached_on_nodes: self.cache_nodes.clone(),
        }
    }
}

fn push_nodes<'a>(list: &mut Vec<String>, names: impl IntoIterator<Item = &'a str>) {
    for n in names {
        let n = n.trim();
        if list.len() >= MAX_NODE_LIST {
            return;
        }
        if !n.is_empty() && n.len() <= 253 && !list.iter().any(|x| x == n) {
            list.push(n.to_string());
        }
    }
}

/// Splits a comma list of names; the flag says something malformed was skipped.
fn split_nodes(v: &str) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut bad = false;
    for part in v.split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        let valid = p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            bad = true;
            continue;
        }
        if out.len() >= MAX_NODE_LIST {
            bad = true;
            break;
        }
        if !out.iter().any(|x: &String| x == p) {
            out.push(p.to_string());
        }
    }
    (out, bad)
}

fn norm(v: &str) -> String {
    v.trim().to_ascii_lowercase().replace(['_', ' '], "-")
}

/// Parses a stage name (`training`, `data-loading`, `PIPELINE_STAGE_TRAINING`, ...).
pub fn parse_stage(v: &str) -> Option<PipelineStage> {
    if let Some(s) = PipelineStage::from_str_name(v.trim()) {
        return Some(s);
    }
    Some(match norm(v).as_str() {
        "data-loading" | "dataloading" | "loading" | "load" | "ingest" | "ingestion" => {
            PipelineStage::DataLoading
        }
        "preprocessing" | "preprocess" | "pre-processing" => PipelineStage::Preprocessing,
        "training" | "train" | "fine-tuning" | "finetuning" => PipelineStage::Training,
        "validation" | "validate" | "evaluation" | "eval" => PipelineStage::Validation,
        "inference" | "serving" | "predict" | "prediction" => PipelineStage::Inference,
        "postprocessing" | "postprocess" | "post-processing" => PipelineStage::Postprocessing,
        "checkpointing" | "checkpoint" => PipelineStage::Checkpointing,
        "idle" => PipelineStage::Idle,
        _ => return None,
    })
}

/// Parses an I/O pattern name.
pub fn parse_io(v: &str) -> Option<ProtoIo> {
    if let Some(p) = ProtoIo::from_str_name(v.trim()) {
        return Some(p);
    }
    Some(match norm(v).as_str() {
        "read-heavy" | "read" | "readheavy" => ProtoIo::ReadHeavy,
        "write-heavy" | "write" | "writeheavy" => ProtoIo::WriteHeavy,
        "balanced" | "mixed" => ProtoIo::Balanced,
        "sequential" => ProtoIo::Sequential,
        "random" => ProtoIo::Random,
        "bursty" => ProtoIo::Bursty,
        _ => return None,
    })
}

fn parse_workload_type(v: &str) -> Option<WorkloadType> {
    if let Some(t) = WorkloadType::from_str_name(v.trim()) {
        return Some(t);
    }
    Some(match norm(v).as_str() {
        "image" | "vision" => WorkloadType::Image,
        "text" | "nlp" | "llm" => WorkloadType::Text,
        "tabular" => WorkloadType::Tabular,
        "audio" | "speech" => WorkloadType::Audio,
        "video" => WorkloadType::Video,
        "multimodal" | "multi-modal" => WorkloadType::Multimodal,
        "generic" => WorkloadType::Generic,
        _ => return None,
    })
}

fn parse_preprocessing(v: &str) -> Option<PreprocessingType> {
    if let Some(t) = PreprocessingType::from_str_name(v.trim()) {
        return Some(t);
    }
    Some(match norm(v).as_str() {
        "augmentation" | "augment" => PreprocessingType::Augmentation,
        "transformation" | "transform" => PreprocessingType::Transformation,
        "filtering" | "filter" => PreprocessingType::Filtering,
        "aggregation" | "aggregate" => PreprocessingType::Aggregation,
        "sharding" | "shard" => PreprocessingType::Sharding,
        "normalization" | "normalisation" | "normalize" => PreprocessingType::Normalization,
        "feature-extract" | "feature-extraction" | "features" => PreprocessingType::FeatureExtract,
        _ => return None,
    })
}

/// Parses a storage class name, including the orchestrator's names.
pub fn parse_storage_class(v: &str) -> Option<StorageClass> {
    if let Some(c) = StorageClass::from_str_name(v.trim()) {
        return (c != StorageClass::Unspecified).then_some(c);
    }
    Some(match norm(v).as_str() {
        "standard" | "balanced" => StorageClass::Standard,
        "fast" | "high-throughput" | "ssd" => StorageClass::Fast,
        "ultra-fast" | "ultrafast" | "high-iops" | "nvme" => StorageClass::UltraFast,
        "csd" => StorageClass::Csd,
        "memory" | "ram" | "tmpfs" => StorageClass::Memory,
        _ => return None,
    })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

fn parse_count(v: &str) -> Option<u64> {
    v.trim().parse::<u64>().ok().filter(|&n| n <= 1 << 50)
}

fn split_number(v: &str) -> Option<(f64, &str)> {
    let v = v.trim();
    let i = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let num: f64 = v[..i].parse().ok()?;
    if !num.is_finite() || num < 0.0 {
        return None;
    }
    Some((num, &v[i..]))
}

/// Parses a Kubernetes byte quantity (`512Mi`, `1.5Gi`, `10G`, `1048576`).
pub fn parse_bytes(v: &str) -> Option<u64> {
    let (num, unit) = split_number(v)?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "P" | "PB" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    let bytes = num * mult;
    (bytes.is_finite() && bytes < 9.0e18).then(|| bytes.round() as u64)
}

/// Parses a Kubernetes CPU quantity into milli-cores (`500m`, `2`, `1.5`).
pub fn parse_cpu_milli(v: &str) -> Option<u64> {
    let (num, unit) = split_number(v)?;
    let milli = match unit {
        "" => num * 1000.0,
        "m" => num,
        _ => return None,
    };
    (milli.is_finite() && milli < 1.0e12).then(|| milli.round() as u64)
}

/// Step name of an Argo node name: `wf-x.preprocess(0)` or `wf[1].train` -> the last segment.
fn argo_step(node_name: &str) -> String {
    let last = node_name.rsplit('.').next().unwrap_or(node_name);
    let cut = last.find(['[', '(']).unwrap_or(last.len());
    let step = last[..cut].trim();
    if step.is_empty() {
        node_name.chars().take(253).collect()
    } else {
        step.chars().take(253).collect()
    }
}

/// A template or component name: the value itself, or the `name` of its JSON.
fn template_name(v: &str) -> Option<String> {
    let v = v.trim();
    if v.starts_with('{') {
        if v.len() > 64 * 1024 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(v).ok()?;
        return json
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .map(|n| n.chars().take(253).collect());
    }
    (v.len() <= 253).then(|| v.to_string())
}

/// Guesses a stage from a step name.
pub fn stage_from_name(name: &str) -> PipelineStage {
    let n = name.to_ascii_lowercase();
    let has = |keys: &[&str]| keys.iter().any(|k| n.contains(k));
    if has(&["postprocess", "post-process", "export", "publish"]) {
        PipelineStage::Postprocessing
    } else if has(&[
        "preprocess",
        "pre-process",
        "prep",
        "transform",
        "clean",
        "augment",
        "feature",
        "tokeni",
        "shard",
        "filter",
    ]) {
        PipelineStage::Preprocessing
    } else if has(&["checkpoint", "ckpt"]) {
        PipelineStage::Checkpointing
    } else if has(&["train", "finetune", "fine-tune"]) {
        PipelineStage::Training
    } else if has(&["eval", "valid", "test"]) {
        PipelineStage::Validation
    } else if has(&["infer", "predict", "serve", "serving"]) {
        PipelineStage::Inference
    } else if has(&["load", "ingest", "download", "fetch"]) {
        PipelineStage::DataLoading
    } else {
        PipelineStage::Unknown
    }
}

fn preprocessing_from_name(name: &str) -> PreprocessingType {
    let n = name.to_ascii_lowercase();
    let has = |k: &str| n.contains(k);
    if has("augment") {
        PreprocessingType::Augmentation
    } else if has("filter") {
        PreprocessingType::Filtering
    } else if has("aggregat") {
        PreprocessingType::Aggregation
    } else if has("shard") {
        PreprocessingType::Sharding
    } else if has("normali") {
        PreprocessingType::Normalization
    } else if has("feature") {
        PreprocessingType::FeatureExtract
    } else if has("transform") {
        PreprocessingType::Transformation
    } else {
        PreprocessingType::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> SchedulingPolicyRequest {
        SchedulingPolicyRequest {
            pod_name: "p".into(),
            pod_namespace: "ns".into(),
            pod_uid: String::new(),
            pod_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pod_annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_bytes("10G"), Some(10_000_000_000));
        assert_eq!(parse_bytes("42"), Some(42));
        assert_eq!(parse_bytes("-1Gi"), None);
        assert_eq!(parse_bytes("1Zi"), None);
        assert_eq!(parse_bytes("Gi"), None);
        assert_eq!(parse_cpu_milli("500m"), Some(500));
        assert_eq!(parse_cpu_milli("2"), Some(2000));
        assert_eq!(parse_cpu_milli("1.5"), Some(1500));
        assert_eq!(parse_cpu_milli("two"), None);
    }

    #[test]
    fn argo_step_names() {
        assert_eq!(argo_step("wf-abc.preprocess"), "preprocess");
        assert_eq!(argo_step("wf[0].train(1)"), "train");
        assert_eq!(argo_step("plain"), "plain");
        assert_eq!(
            template_name(r#"{"name":"featurize","container":{}}"#).as_deref(),
            Some("featurize")
        );
        assert_eq!(template_name("{not json"), None);
    }

    #[test]
    fn derivation_table() {
        // (labels, annotations, expected stage, pipeline step, kueue, csd need)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            PipelineStage,
            &'a str,
            Option<&'a str>,
            CsdNeed,
        );
        let cases: &[Case<'_>] = &[
            (&[], &[], PipelineStage::Unknown, "", None, CsdNeed::None),
            (
                &[(ARGO_WORKFLOW, "wf-1")],
                &[(ARGO_NODE_NAME, "wf-1.preprocess-images")],
                PipelineStage::Preprocessing,
                "preprocess-images",
                None,
                CsdNeed::Benefits,
            ),
            (
                &[
                    (KUBEFLOW_JOB, "bert"),
                    (KUBEFLOW_REPLICA, "Worker"),
                    (KUEUE_QUEUE, "team-a"),
                ],
                &[],
                PipelineStage::Training,
                "bert/worker",
                Some("team-a"),
                CsdNeed::None,
            ),
            (
                &[],
                &[
                    ("apollo.ai-storage/stage", "inference"),
                    ("apollo.ai-storage/requires-csd", "true"),
                ],
                PipelineStage::Inference,
                "",
                None,
                CsdNeed::Requires,
            ),
            (
                &[("pipelines.kubeflow.org/v2_component", "true")],
                &[(KFP_TASK_NAME, "evaluate-model")],
                PipelineStage::Validation,
                "evaluate-model",
                None,
                CsdNeed::None,
            ),
            (
                &[],
                &[("apollo.ai-storage/storage-class", "csd")],
                PipelineStage::Unknown,
                "",
                None,
                CsdNeed::Requires,
            ),
        ];
        for (i, (labels, ann, stage, step, queue, csd)) in cases.iter().enumerate() {
            let w = Workload::derive(&req(labels, ann), None);
            assert_eq!(w.stage, *stage, "case {i}");
            assert_eq!(w.pipeline_step, *step, "case {i}");
            assert_eq!(w.kueue_queue.as_deref(), *queue, "case {i}");
            assert_eq!(w.csd_need(), *csd, "case {i}");
            assert!(w.notes.is_empty(), "case {i}: {:?}", w.notes);
        }
    }

    #[test]
    fn resources_and_storage_from_annotations() {
        let w = Workload::derive(
            &req(
                &[],
                &[
                    ("apollo.ai-storage/cpu", "1500m"),
                    ("apollo.ai-storage/memory", "8Gi"),
                    ("apollo.ai-storage/gpu", "0.5"),
                    ("apollo.ai-storage/gpu-model", "V100M16, A100"),
                    ("apollo.ai-storage/storage-size", "500Gi"),
                    ("apollo.ai-storage/min-iops", "20000"),
                    ("apollo.ai-storage/min-throughput-mbps", "800"),
                    ("apollo.ai-storage/io-pattern", "random"),
                    ("apollo.ai-storage/data-locations", "n1, n2,n1"),
                    ("apollo.ai-storage/cache-nodes", "n3"),
                ],
            ),
            None,
        );
        assert_eq!(w.source, Source::Metadata);
        assert_eq!((w.cpu_milli, w.memory_bytes), (1500, 8 << 30));
        assert_eq!((w.num_gpu, w.gpu_milli), (1, 500));
        assert_eq!(w.gpu_models, vec!["V100M16", "A100"]);
        assert!(w.has_gpu_model_constraint());
        assert_eq!(w.storage_size_bytes, 500 << 30);
        assert_eq!((w.min_iops, w.min_throughput_mbps), (20_000, 800));
        assert_eq!(w.io_pattern, ProtoIo::Random);
        assert_eq!(w.data_locations, vec!["n1", "n2"]);
        assert_eq!(w.cache_nodes, vec!["n3"]);
        let d = w.demand(vec![]);
        d.validate().unwrap();
        assert_eq!(d.io.pattern, IoPattern::RandomRead);
    }

    #[test]
    fn garbage_is_noted_not_fatal() {
        let w = Workload::derive(
            &req(
                &[],
                &[
                    ("apollo.ai-storage/cpu", "lots"),
                    ("apollo.ai-storage/memory", "-3Gi"),
                    ("apollo.ai-storage/gpu", "NaN"),
                    ("apollo.ai-storage/gpu-milli", "5000"),
                    ("apollo.ai-storage/stage", "dreaming"),
                    ("apollo.ai-storage/requires-csd", "maybe"),
                    ("apollo.ai-storage/data-locations", "ok-node,bad node!,"),
                ],
            ),
            None,
        );
        assert_eq!((w.cpu_milli, w.memory_bytes, w.num_gpu), (0, 0, 0));
        assert_eq!(w.stage, PipelineStage::Unknown);
        assert!(!w.requires_csd);
        assert_eq!(w.data_locations, vec!["ok-node"]);
        assert_eq!(w.notes.len(), 7, "{:?}", w.notes);
        assert!(w.notes[0].contains("apollo.ai-storage/"), "{:?}", w.notes);
        w.demand(vec![]).validate().unwrap();
    }

    #[test]
    fn multi_gpu_with_share_keeps_whole_gpus() {
        let w = Workload::derive(
            &req(
                &[],
                &[
                    ("apollo.ai-storage/gpu", "4"),
                    ("apollo.ai-storage/gpu-milli", "500"),
                ],
            ),
            None,
        );
        assert_eq!((w.num_gpu, w.gpu_milli), (4, 1000));
        assert_eq!(w.notes.len(), 1);
        w.demand(vec![]).validate().unwrap();
    }

    #[test]
    fn signature_wins_for_behaviour_annotations_for_requirements() {
        let sig = WorkloadSignature {
            pod_name: "p".into(),
            pod_namespace: "ns".into(),
            current_stage: PipelineStage::Training as i32,
            io_pattern: ProtoIo::ReadHeavy as i32,
            confidence: 0.9,
            current_metrics: Some(apollo_proto::ResourceMetrics {
                cpu_request_cores: 2.0,
                memory_request_bytes: 1 << 30,
                ..Default::default()
            }),
            data_locality: Some(apollo_proto::DataLocalityInfo {
                data_nodes: vec!["d1".into()],
                cache_nodes: vec!["c1".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let w = Workload::derive(
            &req(
                &[],
                &[
                    ("apollo.ai-storage/stage", "inference"),
                    ("apollo.ai-storage/cpu", "4"),
                    ("apollo.ai-storage/data-locations", "d2"),
                ],
            ),
            Some(&sig),
        );
        assert_eq!(w.source, Source::Signature);
        assert_eq!(w.stage, PipelineStage::Training);
        assert_eq!(w.io_pattern, ProtoIo::ReadHeavy);
        assert_eq!(w.cpu_milli, 4000);
        assert_eq!(w.memory_bytes, 1 << 30);
        assert_eq!(w.data_locations, vec!["d1", "d2"]);
        assert_eq!(w.cache_nodes, vec!["c1"]);
        let info = w.signature_info();
        assert_eq!(info.current_stage, PipelineStage::Training as i32);
        assert_eq!(info.cached_on_nodes, vec!["c1"]);
    }

    #[test]
    fn huge_label_maps_are_fine() {
        let labels: Vec<(String, String)> = (0..10_000)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let r = SchedulingPolicyRequest {
            pod_name: "p".into(),
            pod_namespace: "ns".into(),
            pod_labels: labels.into_iter().collect(),
            ..Default::default()
        };
        let w = Workload::derive(&r, None);
        assert_eq!(w.source, Source::None);
    }
}
