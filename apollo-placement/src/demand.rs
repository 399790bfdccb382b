//! What a pod needs from a node: resources to fit, plus hints that steer the
//! choice between nodes that fit (I/O, computational storage, locality).

use thiserror::Error;

/// One GPU expressed in milli-GPU: the unit of GPU sharing.
pub const MILLI_PER_GPU: u32 = 1000;

/// Storage device class, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StorageTier {
    /// NVMe flash.
    Nvme,
    /// SATA/SAS flash.
    Ssd,
    /// Spinning disk.
    Hdd,
}

impl StorageTier {
    /// Parses a device type (`nvme`, `ssd`, `hdd`, case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nvme" => Some(Self::Nvme),
            "ssd" | "sata-ssd" | "sas-ssd" => Some(Self::Ssd),
            "hdd" | "disk" => Some(Self::Hdd),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nvme => "nvme",
            Self::Ssd => "ssd",
            Self::Hdd => "hdd",
        }
    }
}

/// A demand that cannot be satisfied by construction.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DemandError {
    /// `gpu_milli` outside 1..=1000 while GPUs are requested.
    #[error("gpu_milli must be in 1..=1000 when num_gpu > 0, got {0}")]
    GpuMilliOutOfRange(u32),
    /// A multi-GPU request that shares GPUs, which the allocator does not support.
    #[error(
        "a pod requesting {num_gpu} GPUs must take whole GPUs (gpu_milli 1000), got {gpu_milli}"
    )]
    PartialMultiGpu {
        /// Requested GPU count.
        num_gpu: u32,
        /// Requested share of each GPU.
        gpu_milli: u32,
    },
    /// GPU share requested without a GPU count.
    #[error("gpu_milli {0} requested with num_gpu 0")]
    MilliWithoutGpu(u32),
}

/// Dominant I/O access pattern of the workload, as derived from its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum IoPattern {
    /// No information: storage fit is not scored.
    #[default]
    Unknown,
    /// Large sequential reads (dataset streaming, checkpoint loading).
    SequentialRead,
    /// Small random reads (shuffled samples, embeddings lookups).
    RandomRead,
    /// Large sequential writes (checkpoints, logs).
    SequentialWrite,
    /// Small random writes.
    RandomWrite,
    /// Mixed reads and writes.
    Mixed,
}

impl IoPattern {
    /// Random access needs IOPS, which only flash delivers.
    pub fn is_random(self) -> bool {
        matches!(self, Self::RandomRead | Self::RandomWrite | Self::Mixed)
    }
}

/// How much a pod cares about computational storage (CSD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum CsdNeed {
    /// Indifferent.
    #[default]
    None,
    /// Runs faster next to a CSD (preprocessing, filtering, aggregation).
    Benefits,
    /// Cannot run without a CSD: nodes without one are infeasible.
    Requires,
}

/// Storage hints: scored against the node's devices when present.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoHints {
    /// Access pattern.
    pub pattern: IoPattern,
    /// Expected throughput in MB/s (0 = unknown).
    pub throughput_mbps: f64,
    /// Expected IOPS (0 = unknown).
    pub iops: u64,
    /// Preferred tier, if the workload declares one.
    pub tier: Option<StorageTier>,
}

impl IoHints {
    /// True when any hint is set, i.e. storage fit should be scored.
    pub fn is_set(&self) -> bool {
        self.pattern != IoPattern::Unknown
            || self.throughput_mbps > 0.0
            || self.iops > 0
            || self.tier.is_some()
    }
}

/// Node names that hold this pod's inputs; placing the pod there saves transfers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityHints {
    /// Nodes caching the pod's dataset (strongest preference).
    pub cache_nodes: Vec<String>,
    /// Nodes storing the pod's dataset.
    pub data_nodes: Vec<String>,
    /// Nodes running (or that ran) the upstream pipeline steps.
    pub upstream_nodes: Vec<String>,
}

impl LocalityHints {
    /// True when any locality hint is set.
    pub fn is_set(&self) -> bool {
        !(self.cache_nodes.is_empty()
            && self.data_nodes.is_empty()
            && self.upstream_nodes.is_empty())
    }
}

/// Everything the scorer needs to know about one pod.
///
/// GPU conventions follow the openb trace: `num_gpu` = 1 with `gpu_milli` < 1000
/// shares one GPU; `num_gpu` >= 1 with `gpu_milli` = 1000 takes whole GPUs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodDemand {
    /// CPU request in milli-cores.
    pub cpu_milli: u64,
    /// Memory request in bytes.
    pub memory_bytes: u64,
    /// Number of GPUs.
    pub num_gpu: u32,
    /// Share of each GPU in milli-GPU (1000 = whole GPU); 0 when `num_gpu` is 0.
    pub gpu_milli: u32,
    /// Allowed GPU models (`gpu_spec`); empty = any model.
    pub gpu_models: Vec<String>,
    /// Storage hints.
    pub io: IoHints,
    /// Computational-storage need.
    pub csd: CsdNeed,
    /// Data locality hints.
    pub locality: LocalityHints,
}

impl PodDemand {
    /// A CPU/memory-only demand; add GPUs and hints with the `with_*` builders.
    pub fn new(cpu_milli: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_milli,
            memory_bytes,
            ..Self::default()
        }
    }

    /// Sets the GPU request (see the type docs for conventions).
    pub fn with_gpu(mut self, num_gpu: u32, gpu_milli: u32) -> Self {
        self.num_gpu = num_gpu;
        self.gpu_milli = gpu_milli;
        self
    }

    /// Restricts the GPU models the pod may use.
    pub fn with_gpu_models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.gpu_models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the storage hints.
    pub fn with_io(mut self, io: IoHints) -> Self {
        self.io = io;
        self
    }

    /// Sets the CSD need.
    pub fn with_csd(mut self, csd: CsdNeed) -> Self {
        self.csd = csd;
        self
    }

    /// Sets the locality hints.
    pub fn with_locality(mut self, locality: LocalityHints) -> Self {
        self.locality = locality;
        self
    }

    /// Memory request in MiB (rounded down), the trace's unit.
    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes >> 20
    }

    /// Memory from MiB, the trace's unit.
    pub fn bytes_from_mib(mib: u64) -> u64 {
        mib.saturating_mul(1 << 20)
    }

    /// Total GPU requested in milli-GPU (`num_gpu` x `gpu_milli`).
    pub fn gpu_milli_total(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }

    /// True for a pod that shares one GPU with others.
    pub fn is_gpu_sharing(&self) -> bool {
        self.num_gpu == 1 && self.gpu_milli < MILLI_PER_GPU
    }

    /// Checks the GPU conventions so the allocator never sees an impossible shape.
    pub fn validate(&self) -> Result<(), DemandError> {
        if self.num_gpu == 0 {
            if self.gpu_milli != 0 {
                return Err(DemandError::MilliWithoutGpu(self.gpu_milli));
            }
            return Ok(());
        }
        if self.gpu_milli == 0 || self.gpu_milli > MILLI_PER_GPU {
            return Err(DemandError::GpuMilliOutOfRange(self.gpu_milli));
        }
        if self.num_gpu > 1 && self.gpu_milli != MILLI_PER_GPU {
            return Err(DemandError::PartialMultiGpu {
                num_gpu: self.num_gpu,
                gpu_milli: self.gpu_milli,
            });
        }
        Ok(())
    }
}
