//! The demo's scenario file: its schema and the checks made when it is read (nodes named by the
//! faults exist, every fault says what ends it, the policy is valid). A library module so the
//! fuzz targets parse scenarios with the code `nodemedic demo` runs.

use anyhow::{Result, bail};
use nodemedic_core::{Duration, Policy};
use serde::Deserialize;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "default_nodes")]
    pub nodes: usize,
    #[serde(default = "default_pools")]
    pub pools: usize,
    #[serde(default = "default_gpus")]
    pub gpus_per_node: u32,
    /// Longest the demo runs after the start.
    pub duration: Duration,
    /// The NodeHealthPolicy spec the controller runs.
    pub policy: Policy,
    /// SIGKILL the leading controller replica at this time (a replacement starts at once): the
    /// standby takes over when the lease expires and carries on from the records.
    #[serde(default)]
    pub kill_leader_at: Option<Duration>,
    #[serde(default)]
    pub faults: Vec<Fault>,
}

fn default_nodes() -> usize {
    16
}
fn default_pools() -> usize {
    2
}
fn default_gpus() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// When, after the start.
    pub at: Duration,
    pub nodes: Vec<String>,
    pub kind: FaultKind,
    pub message: String,
    /// The repair that clears it (the simulated agent's probe passes after it).
    #[serde(default)]
    pub fixed_by: Option<FixedBy>,
    /// Clears by itself this long after it began (a flaky link, a power event that passes).
    #[serde(default)]
    pub recovers_after: Option<Duration>,
    /// The outcome the summary checks.
    #[serde(default)]
    pub expect: Option<Expect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// The agent's GPU probe fails: condition GPUProblem=True.
    Gpu,
    /// The agent's network probe fails: condition NetworkProblem=True.
    Network,
}

impl FaultKind {
    pub fn condition(self) -> &'static str {
        match self {
            FaultKind::Gpu => "GPUProblem",
            FaultKind::Network => "NetworkProblem",
        }
    }
    pub fn reasons(self) -> (&'static str, &'static str) {
        match self {
            FaultKind::Gpu => ("GPUFault", "GPUsHealthy"),
            FaultKind::Network => ("SlowNetwork", "NetworkHealthy"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FixedBy {
    Reboot,
    Reimage,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Expect {
    /// Healthy again, without a person.
    Recovered,
    /// Escalated to `repair-manual`.
    Manual,
    /// The circuit breaker tripped while it was failing, and it ended healthy.
    Breaker,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario> {
        let s: Scenario = nodemedic_core::input::from_yaml_str(text).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
        s.policy.validate().map_err(|e| anyhow::anyhow!("scenario policy: {e}"))?;
        let names: BTreeSet<String> = (0..s.nodes).map(node_name).collect();
        for (i, f) in s.faults.iter().enumerate() {
            for n in &f.nodes {
                if !names.contains(n) {
                    bail!("scenario faults[{i}].nodes: no node `{n}` (the demo has gpu-000 … {})", node_name(s.nodes.saturating_sub(1)));
                }
            }
            if f.fixed_by.is_none() && f.recovers_after.is_none() {
                bail!("scenario faults[{i}]: say what ends it: fixedBy (reboot, reimage, never) or recoversAfter");
            }
        }
        Ok(s)
    }
}

/// The demo's node names: gpu-000, gpu-001, …
pub fn node_name(i: usize) -> String {
    format!("gpu-{i:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_that_repeats_a_key_is_refused_naming_it() {
        let text = include_str!("../../../examples/demo-scenario.yaml");
        assert!(Scenario::parse(text).is_ok());
        let twice = format!("{text}\nkillLeaderAt: 1m\nkillLeaderAt: 2m\n");
        let err = Scenario::parse(&twice).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("duplicate key `killLeaderAt`"), "{err}");
    }
}
