//! The trace excerpts of the repository's `data/`, compiled into the binary,
//! so `apolloctl` runs the same way from any directory and from an installed
//! binary. They are the defaults when no flag or environment variable names
//! a trace directory; the full traces are read with an explicit directory.
//!
//! Parsing goes through the one loader of each format:
//! [`apollo_scheduling::simulate::parse_nodes`] / `parse_pods` for openb and
//! [`apollo_forecaster::eval::parse_genai`] for the GenAI series.

use std::path::{Path, PathBuf};

use apollo_forecaster::eval::{self, Dataset, EvalError, GENAI_FILES};
use apollo_scheduling::simulate::{self, SimError, TraceNode, TracePod};

/// How errors and messages name the embedded files.
pub(crate) const EMBEDDED: &str = "<embedded excerpt>";

/// `data/alibaba-gpu-2023/openb_node_list_gpu_node.csv`: 1,213 GPU nodes.
const OPENB_NODES: &[u8] =
    include_bytes!("../../data/alibaba-gpu-2023/openb_node_list_gpu_node.csv");
/// `data/alibaba-gpu-2023/openb_pod_list_default.csv`: 8,152 pods in submission order.
const OPENB_PODS: &[u8] = include_bytes!("../../data/alibaba-gpu-2023/openb_pod_list_default.csv");

/// `data/alibaba-genai-2026/`: six containers' series, in [`GENAI_FILES`] order.
const GENAI: [&[u8]; 3] = [
    include_bytes!("../../data/alibaba-genai-2026/pod_gpu_duty_cycle_anon.csv"),
    include_bytes!("../../data/alibaba-genai-2026/pod_gpu_memory_used_bytes_anon.csv"),
    include_bytes!("../../data/alibaba-genai-2026/pod_memory_util_anon.csv"),
];

/// The openb node list of the excerpt.
pub(crate) fn openb_nodes() -> Result<Vec<TraceNode>, SimError> {
    simulate::parse_nodes(
        OPENB_NODES,
        &Path::new(EMBEDDED).join("openb_node_list_gpu_node.csv"),
    )
}

/// The openb default pod list of the excerpt, in submission order.
pub(crate) fn openb_pods() -> Result<Vec<TracePod>, SimError> {
    simulate::parse_pods(
        OPENB_PODS,
        &Path::new(EMBEDDED).join("openb_pod_list_default.csv"),
    )
}

/// The GenAI series of the excerpt (containers with at least `min_len` points).
pub(crate) fn genai(min_len: usize) -> Result<Dataset, EvalError> {
    let files: Vec<(PathBuf, &[u8])> = GENAI_FILES
        .iter()
        .zip(GENAI)
        .map(|(name, bytes)| (Path::new(EMBEDDED).join(name), bytes))
        .collect();
    eval::parse_genai(files, EMBEDDED, min_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_excerpts_parse_whole() {
        let nodes = openb_nodes().unwrap();
        assert_eq!(nodes.len(), 1213);
        assert_eq!(nodes.iter().map(|n| u64::from(n.gpus)).sum::<u64>(), 6212);
        assert_eq!(openb_pods().unwrap().len(), 8152);
        let genai = genai(1).unwrap();
        // Three files x six containers, 1,441 samples each.
        assert_eq!(genai.series.len(), 18);
        assert!(genai.series.iter().all(|s| s.values.len() == 1441));
    }
}
