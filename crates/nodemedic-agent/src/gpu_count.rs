//! How many GPUs of each vendor the count checks expect on a node: the config's `expected_gpus`, or the node's own
//! GPU-count labels, so one DaemonSet config serves a mixed fleet.

use std::collections::BTreeMap;

use crate::config::AgentConfig;

/// Node labels that give an NVIDIA GPU count (GPU feature discovery's), in the order they are tried.
pub const NVIDIA_COUNT_LABELS: &[&str] = &["nvidia.com/gpu.count"];
/// Node labels that give an AMD GPU count (the AMD GPU operator's node labeller, new and beta names).
pub const AMD_COUNT_LABELS: &[&str] = &["amd.com/gpu.count", "beta.amd.com/gpu.count"];

/// How many GPUs of each vendor the count checks expect on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedGpus {
    pub nvidia: Option<u32>,
    pub amd: Option<u32>,
}

impl ExpectedGpus {
    /// `expected_gpus` from the config when it is set (an operator's explicit number wins, for every vendor);
    /// otherwise each vendor's count from the node's own labels, so one DaemonSet config serves a mixed fleet.
    /// No value and no label: no count check for that vendor.
    pub fn resolve(configured: Option<u32>, labels: &BTreeMap<String, String>) -> ExpectedGpus {
        if configured.is_some() {
            return ExpectedGpus { nvidia: configured, amd: configured };
        }
        let read = |names: &[&str]| names.iter().find_map(|name| labels.get(*name).and_then(|v| v.trim().parse::<u32>().ok()));
        ExpectedGpus { nvidia: read(NVIDIA_COUNT_LABELS), amd: read(AMD_COUNT_LABELS) }
    }

    /// From the config alone (`check --once`, which reads no node).
    pub fn configured(config: &AgentConfig) -> ExpectedGpus {
        ExpectedGpus::resolve(config.expected_gpus, &BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_fleet_takes_each_nodes_gpu_count_from_its_labels_unless_the_config_names_one() {
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let nvidia_node = labels(&[("nvidia.com/gpu.count", "8"), ("nvidia.com/gpu.product", "H100")]);
        assert_eq!(ExpectedGpus::resolve(None, &nvidia_node), ExpectedGpus { nvidia: Some(8), amd: None });
        let amd_node = labels(&[("beta.amd.com/gpu.count", "4")]);
        assert_eq!(ExpectedGpus::resolve(None, &amd_node), ExpectedGpus { nvidia: None, amd: Some(4) });
        let cpu_node = labels(&[("nvidia.com/gpu.count", "eight")]);
        assert_eq!(ExpectedGpus::resolve(None, &cpu_node), ExpectedGpus::default());
        assert_eq!(ExpectedGpus::resolve(Some(2), &nvidia_node), ExpectedGpus { nvidia: Some(2), amd: Some(2) });
    }
}
