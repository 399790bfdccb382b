//! Plugin weights (field 13 of `SchedulingPolicy`): how much each of the
//! scheduler's APOLLO plugins should count for this pod. The scheduler uses
//! `max(1, int(w * 10))`, so weights live in [0.1, 1].
//!
//! # Table
//!
//! Base weights by stage (DataLocalityAware, StorageTierAware, IOPatternBased,
//! KueueAware, PipelineStageAware):
//!
//! | stage | locality | tier | io | kueue | pipeline |
//! |---|---|---|---|---|---|
//! | data loading | 1.0 | 0.8 | 0.7 | 0.3 | 0.5 |
//! | preprocessing | 0.8 | 0.6 | 0.8 | 0.3 | 0.7 |
//! | training | 0.7 | 0.7 | 0.5 | 0.6 | 0.5 |
//! | validation | 0.6 | 0.5 | 0.5 | 0.3 | 0.5 |
//! | inference | 0.4 | 0.6 | 0.7 | 0.2 | 0.3 |
//! | postprocessing | 0.5 | 0.5 | 0.6 | 0.2 | 0.7 |
//! | checkpointing | 0.3 | 1.0 | 0.8 | 0.2 | 0.4 |
//! | idle | 0.2 | 0.2 | 0.2 | 0.2 | 0.2 |
//! | unknown | 0.5 | 0.5 | 0.5 | 0.5 | 0.5 |
//!
//! Adjustments, applied in this order, then clamped to [0.1, 1]:
//! - I/O pattern: read-heavy or sequential +0.1 tier and +0.1 io; random +0.2
//!   io and +0.1 tier; write-heavy +0.2 tier; bursty +0.2 io.
//! - Requires a CSD: tier = 1.0.
//! - Kueue queue present: kueue at least 0.8; absent: kueue = 0.1 (the plugin
//!   has nothing to act on).
//! - Data or cache nodes known: locality +0.2, at least 0.8; none known:
//!   locality at most 0.3.
//! - Pipeline step (Argo, Kubeflow Pipelines): pipeline at least 0.7; not a
//!   pipeline: pipeline = 0.2.

use apollo_proto::{IoPattern, PipelineStage, PluginWeights};

use crate::workload::Workload;

/// Lowest weight sent (the scheduler maps it to 1).
pub const MIN_WEIGHT: f32 = 0.1;
/// Highest weight sent.
pub const MAX_WEIGHT: f32 = 1.0;

fn base(stage: PipelineStage) -> [f32; 5] {
    match stage {
        PipelineStage::DataLoading => [1.0, 0.8, 0.7, 0.3, 0.5],
        PipelineStage::Preprocessing => [0.8, 0.6, 0.8, 0.3, 0.7],
        PipelineStage::Training => [0.7, 0.7, 0.5, 0.6, 0.5],
        PipelineStage::Validation => [0.6, 0.5, 0.5, 0.3, 0.5],
        PipelineStage::Inference => [0.4, 0.6, 0.7, 0.2, 0.3],
        PipelineStage::Postprocessing => [0.5, 0.5, 0.6, 0.2, 0.7],
        PipelineStage::Checkpointing => [0.3, 1.0, 0.8, 0.2, 0.4],
        PipelineStage::Idle => [0.2; 5],
        PipelineStage::Unknown => [0.5; 5],
    }
}

/// The weights for a workload, per the table in the module docs.
pub fn plugin_weights(w: &Workload) -> PluginWeights {
    let [mut loc, mut tier, mut io, mut kueue, mut pipe] = base(w.stage);
    match w.io_pattern {
        IoPattern::ReadHeavy | IoPattern::Sequential => {
            tier += 0.1;
            io += 0.1;
        }
        IoPattern::Random => {
            io += 0.2;
            tier += 0.1;
        }
        IoPattern::WriteHeavy => tier += 0.2,
        IoPattern::Bursty => io += 0.2,
        IoPattern::Balanced | IoPattern::Unknown => {}
    }
    if w.requires_csd {
        tier = 1.0;
    }
    if w.kueue_queue.is_some() {
        kueue = kueue.max(0.8);
    } else {
        kueue = 0.1;
    }
    if !w.data_locations.is_empty() || !w.cache_nodes.is_empty() {
        loc = (loc + 0.2).max(0.8);
    } else {
        loc = loc.min(0.3);
    }
    if w.is_pipeline || !w.pipeline_step.is_empty() && w.pipeline.is_some() {
        pipe = pipe.max(0.7);
    } else {
        pipe = 0.2;
    }
    let c = |v: f32| (v.clamp(MIN_WEIGHT, MAX_WEIGHT) * 100.0).round() / 100.0;
    PluginWeights {
        data_locality_aware: c(loc),
        storage_tier_aware: c(tier),
        io_pattern_based: c(io),
        kueue_aware: c(kueue),
        pipeline_stage_aware: c(pipe),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(stage: PipelineStage) -> Workload {
        Workload {
            stage,
            ..Workload::default()
        }
    }

    #[test]
    fn table_rows() {
        // (workload, expected [loc, tier, io, kueue, pipe])
        let mut loading = w(PipelineStage::DataLoading);
        loading.data_locations = vec!["n1".into()];
        loading.io_pattern = IoPattern::ReadHeavy;
        let mut ckpt = w(PipelineStage::Checkpointing);
        ckpt.io_pattern = IoPattern::WriteHeavy;
        let mut train = w(PipelineStage::Training);
        train.kueue_queue = Some("q".into());
        let mut prep = w(PipelineStage::Preprocessing);
        prep.is_pipeline = true;
        prep.requires_csd = true;
        prep.io_pattern = IoPattern::Random;
        let cases = [
            (w(PipelineStage::Unknown), [0.3, 0.5, 0.5, 0.1, 0.2]),
            (loading, [1.0, 0.9, 0.8, 0.1, 0.2]),
            (ckpt, [0.3, 1.0, 0.8, 0.1, 0.2]),
            (train, [0.3, 0.7, 0.5, 0.8, 0.2]),
            (prep, [0.3, 1.0, 1.0, 0.1, 0.7]),
            (w(PipelineStage::Idle), [0.2, 0.2, 0.2, 0.1, 0.2]),
        ];
        for (i, (wl, want)) in cases.iter().enumerate() {
            let p = plugin_weights(wl);
            let got = [
                p.data_locality_aware,
                p.storage_tier_aware,
                p.io_pattern_based,
                p.kueue_aware,
                p.pipeline_stage_aware,
            ];
            for (g, e) in got.iter().zip(want) {
                assert!((g - e).abs() < 1e-4, "case {i}: got {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn every_weight_is_in_range_for_every_stage_and_pattern() {
        for s in 0..=8 {
            for p in 0..=6 {
                let mut wl = w(PipelineStage::try_from(s).unwrap());
                wl.io_pattern = IoPattern::try_from(p).unwrap();
                wl.requires_csd = p % 2 == 0;
                wl.kueue_queue = (s % 2 == 0).then(|| "q".into());
                let pw = plugin_weights(&wl);
                for v in [
                    pw.data_locality_aware,
                    pw.storage_tier_aware,
                    pw.io_pattern_based,
                    pw.kueue_aware,
                    pw.pipeline_stage_aware,
                ] {
                    assert!((MIN_WEIGHT..=MAX_WEIGHT).contains(&v), "{s}/{p}: {pw:?}");
                    // The scheduler's integer weight is never 0.
                    assert!(((v * 10.0) as i32).max(1) >= 1);
                }
            }
        }
    }
}
