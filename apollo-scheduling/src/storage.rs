//! Storage requirements (field 7 of `SchedulingPolicy`) and the resource
//! requirements (field 6) derived from a workload.
//!
//! Storage class: the declared or recommended class when there is one;
//! otherwise CSD when a CSD is required, ultra-fast for random I/O, fast for
//! checkpointing, write-heavy I/O and read-heavy/sequential loading or
//! training, standard for the rest (including nothing known).

use apollo_proto::{
    ComputedResourceRequirements, IoPattern, PipelineStage, StorageClass, StorageRequirements,
};

use crate::workload::Workload;

/// The class a workload should get.
pub fn storage_class(w: &Workload) -> StorageClass {
    if let Some(c) = w.storage_class {
        return c;
    }
    if w.requires_csd {
        return StorageClass::Csd;
    }
    match (w.io_pattern, w.stage) {
        (IoPattern::Random, _) => StorageClass::UltraFast,
        (_, PipelineStage::Checkpointing) | (IoPattern::WriteHeavy, _) => StorageClass::Fast,
        (
            IoPattern::ReadHeavy | IoPattern::Sequential,
            PipelineStage::DataLoading | PipelineStage::Training | PipelineStage::Preprocessing,
        ) => StorageClass::Fast,
        _ => StorageClass::Standard,
    }
}

/// Field 7.
pub fn storage_requirements(w: &Workload) -> StorageRequirements {
    StorageRequirements {
        storage_class: storage_class(w) as i32,
        size_bytes: clamp_i64(w.storage_size_bytes),
        min_iops: clamp_i64(w.min_iops),
        min_throughput_mbps: clamp_i64(w.min_throughput_mbps),
        expected_io_pattern: w.io_pattern as i32,
        requires_csd: w.requires_csd,
    }
}

/// Field 6.
pub fn resource_requirements(w: &Workload) -> ComputedResourceRequirements {
    ComputedResourceRequirements {
        cpu_cores: w.cpu_milli as f64 / 1000.0,
        memory_bytes: clamp_i64(w.memory_bytes),
        storage_bytes: clamp_i64(w.storage_size_bytes),
        gpu_count: w.num_gpu.min(i32::MAX as u32) as i32,
        expected_iops: clamp_i64(w.min_iops),
        expected_throughput_mbps: clamp_i64(w.min_throughput_mbps),
    }
}

fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_rules() {
        let mk = |io, stage, csd, class| Workload {
            io_pattern: io,
            stage,
            requires_csd: csd,
            storage_class: class,
            ..Workload::default()
        };
        let cases = [
            (
                mk(IoPattern::Unknown, PipelineStage::Unknown, false, None),
                StorageClass::Standard,
            ),
            (
                mk(IoPattern::Random, PipelineStage::Inference, false, None),
                StorageClass::UltraFast,
            ),
            (
                mk(
                    IoPattern::Unknown,
                    PipelineStage::Checkpointing,
                    false,
                    None,
                ),
                StorageClass::Fast,
            ),
            (
                mk(
                    IoPattern::ReadHeavy,
                    PipelineStage::DataLoading,
                    false,
                    None,
                ),
                StorageClass::Fast,
            ),
            (
                mk(IoPattern::Random, PipelineStage::Preprocessing, true, None),
                StorageClass::Csd,
            ),
            (
                mk(
                    IoPattern::Random,
                    PipelineStage::Training,
                    false,
                    Some(StorageClass::Memory),
                ),
                StorageClass::Memory,
            ),
        ];
        for (i, (w, want)) in cases.iter().enumerate() {
            assert_eq!(storage_class(w), *want, "case {i}");
        }
        let r = storage_requirements(&Workload {
            storage_size_bytes: u64::MAX,
            requires_csd: true,
            ..Workload::default()
        });
        assert_eq!(r.size_bytes, i64::MAX);
        assert!(r.requires_csd);
        assert_eq!(r.storage_class, StorageClass::Csd as i32);
    }
}
