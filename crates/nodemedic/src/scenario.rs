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
    /// Pods the demo runs on a node, guarded by a PodDisruptionBudget that lets none of them go.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Nodes that are Cluster API Machines: the demo installs the Machine CRD, creates their
    /// Machines and plays the MachineSet controller (a deleted Machine's node is replaced by a new
    /// node under a new name).
    #[serde(default)]
    pub machines: Vec<String>,
    /// StatefulSets of one replica with a ReadWriteOnce volume, each preferring a node: what a node
    /// that dies leaves behind (namespace `db`).
    #[serde(default)]
    pub stateful_sets: Vec<StatefulWorkload>,
    /// A second NodeHealthPolicy (`demo-fencing`) for the nodes that have a BMC (the demo labels the
    /// nodes of `kind: dead` faults `demo.nodemedic.io/bmc=redfish`): its ladder fences them. The two
    /// policies' selectors must not overlap.
    #[serde(default)]
    pub fencing_policy: Option<Policy>,
}

/// A StatefulSet `name` of one replica whose pod prefers `node`, with a statically provisioned
/// ReadWriteOnce CSI volume (`pv-<name>`, claim `data-<name>-0`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatefulWorkload {
    pub name: String,
    pub node: String,
}

/// A workload whose drain must wait for its PodDisruptionBudget: `pods` pods on `node` (namespace
/// `training`, label `app: <name>`) and the budget `<name>-budget` with `minAvailable: <pods>`.
/// `relaxAfterHeld` after the controller says the drain is held (its `DrainHeld` Event), the demo,
/// as the workload's owner, relaxes the budget to `minAvailable: 0`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub node: String,
    #[serde(default = "default_workload_pods")]
    pub pods: u32,
    #[serde(default = "default_relax_after_held")]
    pub relax_after_held: Duration,
}

fn default_workload_pods() -> u32 {
    2
}
fn default_relax_after_held() -> Duration {
    Duration::from_secs(5)
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
    /// The node dies: its kubelet (and agent) stop, so the node lifecycle controller marks it
    /// Unknown, and it stays down until its BMC powers it on again.
    Dead,
}

impl FaultKind {
    /// The probe that fails, for a fault the node agent reports; none for a node that died.
    pub fn probe(self) -> Option<Probe> {
        match self {
            FaultKind::Gpu => Some(Probe::Gpu),
            FaultKind::Network => Some(Probe::Network),
            FaultKind::Dead => None,
        }
    }
}

/// The probes the demo's simulated agents publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Gpu,
    Network,
}

impl Probe {
    pub const ALL: [Probe; 2] = [Probe::Gpu, Probe::Network];

    /// The condition the node agent publishes for the family (nodemedic-core's probe contract).
    pub fn condition(self) -> &'static str {
        match self {
            Probe::Gpu => nodemedic_core::ProbeFamily::Gpu.condition_type(),
            Probe::Network => nodemedic_core::ProbeFamily::Network.condition_type(),
        }
    }
    pub fn reasons(self) -> (&'static str, &'static str) {
        match self {
            Probe::Gpu => ("GPUFault", "GPUsHealthy"),
            Probe::Network => ("SlowNetwork", "NetworkHealthy"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FixedBy {
    Reboot,
    Reimage,
    /// Only a new machine: the node must be one of `machines` (replaced through Cluster API).
    Replace,
    /// A person powers the machine on through its BMC (the demo does, 15 s after the BMC says Off):
    /// only for `kind: dead`.
    PowerOn,
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
    /// Replaced through Cluster API: the node and its record are gone, and the node that joined
    /// for its new Machine is Ready, healthy and selected by the policy.
    Replaced,
    /// Fenced through its BMC: the power-off confirmed, the out-of-service taint put on and, once
    /// the node was powered on and Ready again, taken off (the record says both and the node has no
    /// such taint now); the StatefulSet pods that preferred it Running on other nodes now, their
    /// volumes no longer attached to it; the node left to a person (`repair-manual`).
    Fenced,
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
                bail!("scenario faults[{i}]: say what ends it: fixedBy (reboot, reimage, replace, powerOn, never) or recoversAfter");
            }
            dead_fault_is_whole(&s, i, f)?;
            let replaced = f.fixed_by == Some(FixedBy::Replace) || f.expect == Some(Expect::Replaced);
            if let Some(n) = f.nodes.iter().find(|n| replaced && !s.machines.contains(n)) {
                bail!("scenario faults[{i}]: `{n}` can only be replaced if it is a Cluster API Machine: list it under machines");
            }
        }
        for (i, w) in s.workloads.iter().enumerate() {
            if !names.contains(&w.node) {
                bail!("scenario workloads[{i}].node: no node `{}`", w.node);
            }
            if w.pods == 0 || !is_dns_label(&w.name) {
                bail!("scenario workloads[{i}]: a name of lowercase letters, digits and dashes, and at least one pod");
            }
        }
        if let Some(n) = s.machines.iter().find(|n| !names.contains(*n)) {
            bail!("scenario machines: no node `{n}`");
        }
        for (i, w) in s.stateful_sets.iter().enumerate() {
            if !names.contains(&w.node) {
                bail!("scenario statefulSets[{i}].node: no node `{}`", w.node);
            }
            if !is_dns_label(&w.name) {
                bail!("scenario statefulSets[{i}]: a name of lowercase letters, digits and dashes");
            }
        }
        if let Some(p) = &s.fencing_policy {
            p.validate().map_err(|e| anyhow::anyhow!("scenario fencingPolicy: {e}"))?;
        }
        Ok(s)
    }

    /// The nodes that die (`kind: dead`): each has a BMC in the demo.
    pub fn dead_nodes(&self) -> BTreeSet<&str> {
        self.faults.iter().filter(|f| f.kind == FaultKind::Dead).flat_map(|f| f.nodes.iter().map(String::as_str)).collect()
    }
}

/// A dead node is powered on by a person and expected fenced; nothing else is; and something must
/// fence it.
fn dead_fault_is_whole(s: &Scenario, i: usize, f: &Fault) -> Result<()> {
    let dead = f.kind == FaultKind::Dead;
    if dead != (f.fixed_by == Some(FixedBy::PowerOn)) || f.recovers_after.is_some() && dead {
        bail!("scenario faults[{i}]: a node of `kind: dead` is ended by `fixedBy: powerOn` (and only it is)");
    }
    if dead != (f.expect == Some(Expect::Fenced)) && f.expect.is_some() {
        bail!("scenario faults[{i}]: `expect: fenced` goes with `kind: dead`");
    }
    if dead && s.fencing_policy.is_none() {
        bail!("scenario faults[{i}]: a node of `kind: dead` needs a fencingPolicy whose ladder powers it off");
    }
    Ok(())
}

/// A name Kubernetes accepts for the workload's pods and budget.
fn is_dns_label(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The demo's node names: gpu-000, gpu-001, …
pub fn node_name(i: usize) -> String {
    format!("gpu-{i:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name: t
nodes: 4
duration: 1m
policy:
  rules:
  - name: gpu
    condition: {type: GPUProblem, status: "True"}
  ladder:
  - {step: drain, timeout: 20s}
  - {step: replace, timeout: 60s}
  - {step: manual}
"#;

    fn error(extra: &str) -> String {
        Scenario::parse(&format!("{BASE}{extra}")).err().map(|e| format!("{e:#}")).unwrap_or_default()
    }

    #[test]
    fn a_node_replaced_through_cluster_api_must_be_a_machine_and_a_workload_must_be_on_a_node() {
        let fault = "faults:\n- {at: 5s, nodes: [gpu-001], kind: gpu, message: m, fixedBy: replace, expect: replaced}\n";
        assert!(error(fault).contains("`gpu-001` can only be replaced if it is a Cluster API Machine"), "{}", error(fault));
        assert!(Scenario::parse(&format!("{BASE}machines: [gpu-001]\n{fault}")).is_ok());
        assert!(error("machines: [gpu-009]\n").contains("machines: no node `gpu-009`"));
        assert!(error("workloads:\n- {name: trainer, node: gpu-007}\n").contains("workloads[0].node: no node `gpu-007`"));
        assert!(error("workloads:\n- {name: Trainer, node: gpu-001}\n").contains("workloads[0]: a name of lowercase"));
        let ok = Scenario::parse(&format!("{BASE}workloads:\n- {{name: trainer, node: gpu-001}}\n")).map_err(|e| format!("{e:#}"));
        let w = ok.as_ref().map(|s| (s.workloads[0].pods, s.workloads[0].relax_after_held)).ok();
        assert_eq!(w, Some((2, Duration::from_secs(5))), "{ok:?}");
    }

    #[test]
    fn a_dead_node_is_powered_on_by_a_person_expected_fenced_and_needs_a_fencing_policy() {
        let dead = "faults:\n- {at: 5s, nodes: [gpu-001], kind: dead, message: m, fixedBy: powerOn, expect: fenced}\n";
        assert!(error(dead).contains("needs a fencingPolicy"), "{}", error(dead));
        let fencing = "fencingPolicy:\n  rules:\n  - {name: gone, condition: {type: Ready, status: Unknown}}\n  ladder:\n  - {step: powerOff, timeout: 60s}\n";
        let ok = Scenario::parse(&format!("{BASE}{fencing}{dead}")).map_err(|e| format!("{e:#}"));
        assert_eq!(ok.as_ref().map(|s| s.dead_nodes().into_iter().collect::<Vec<_>>()).ok(), Some(vec!["gpu-001"]), "{ok:?}");
        for wrong in [
            "faults:\n- {at: 5s, nodes: [gpu-001], kind: dead, message: m, fixedBy: reboot}\n",
            "faults:\n- {at: 5s, nodes: [gpu-001], kind: gpu, message: m, fixedBy: powerOn}\n",
            "faults:\n- {at: 5s, nodes: [gpu-001], kind: dead, message: m, fixedBy: powerOn, recoversAfter: 5s}\n",
        ] {
            assert!(error(&format!("{fencing}{wrong}")).contains("ended by `fixedBy: powerOn`"), "{wrong}");
        }
        let gpu_fenced = "faults:\n- {at: 5s, nodes: [gpu-001], kind: gpu, message: m, fixedBy: reboot, expect: fenced}\n";
        assert!(error(gpu_fenced).contains("`expect: fenced` goes with `kind: dead`"), "{}", error(gpu_fenced));
        assert!(error("statefulSets:\n- {name: db, node: gpu-009}\n").contains("statefulSets[0].node: no node `gpu-009`"));
    }

    #[test]
    fn a_scenario_that_repeats_a_key_is_refused_naming_it() {
        let text = include_str!("../../../examples/demo-scenario.yaml");
        assert!(Scenario::parse(text).is_ok());
        let twice = format!("{text}\nkillLeaderAt: 1m\nkillLeaderAt: 2m\n");
        let err = Scenario::parse(&twice).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("duplicate key `killLeaderAt`"), "{err}");
    }
}
