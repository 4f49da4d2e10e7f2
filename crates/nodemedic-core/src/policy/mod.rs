//! The policy model: which nodes, what counts as unhealthy, the remediation ladder and the safety gates.
//!
//! One model expresses every seed: seed 000's taint ladder (`repair-reboot` → `repair-reimage` →
//! `repair-manual`, three failed checks, `slow-network`), seed 003's per-checker thresholds and
//! GPU-count rule with monitor-only on by default, and seed 004's selector, `unhealthyConditions`,
//! `minHealthy` and `pauseRequests`. Field names are camelCase so the same type can back a CRD.

use crate::class::FaultClassRungs;
use crate::drain::DrainPolicy;
use crate::selector::{LabelSelector, Labels};
use crate::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

mod gates;
mod ladder;
mod validate;

pub use gates::*;
pub use ladder::*;
pub use validate::*;

/// Label whose value `true` takes a node out of nodemedic's hands.
pub const DEFAULT_EXCLUDE_LABEL: &str = "nodemedic.io/exclude";
/// The node-pool label (GKE's, as seed 002 uses; configurable per policy).
pub const DEFAULT_NODE_POOL_LABEL: &str = "cloud.google.com/gke-nodepool";
pub const DEFAULT_TAINT_PREFIX: &str = "nodemedic.io/";
/// Node class every node with GPUs belongs to unless a custom class matched first.
pub const GPU_NODE_CLASS: &str = "gpu";
/// Node class of nodes that match no custom class and have no GPUs.
pub const STANDARD_NODE_CLASS: &str = "standard";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Which nodes the policy manages (AND'ed with `nodePools`, `nodeRole` and the exclude label).
    #[serde(default)]
    pub selector: LabelSelector,
    /// Node pools to manage; empty means all pools (seed 003).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_pools: Vec<String>,
    #[serde(default = "default_node_pool_label")]
    pub node_pool_label: String,
    /// Nodes labelled `<excludeLabel>=true` are never touched.
    #[serde(default = "default_exclude_label")]
    pub exclude_label: String,
    /// Control-plane and worker nodes get separate policies; `any` opts out of the split.
    #[serde(default)]
    pub node_role: NodeRole,
    /// Named node classes for per-class step timeouts; checked in order. `gpu` and `standard` are built in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_classes: Vec<NodeClass>,
    /// Unhealthy rules; a node is unhealthy when any remediating rule fires (medik8s: OR'ed).
    pub rules: Vec<Rule>,
    /// The remediation ladder, tried in order.
    pub ladder: Vec<LadderStep>,
    /// The rung a remediation starts at for each fault class the agent's catalog reports (`replace:
    /// replace`, `restartApplication: events`…); unset classes take the defaults (docs/controller.md,
    /// "Fault classes").
    #[serde(default, skip_serializing_if = "FaultClassRungs::is_default")]
    pub fault_classes: FaultClassRungs,
    /// Taint keys are `<taintPrefix><name>`: `nodemedic.io/repair-reboot` by default, bare `repair-reboot`
    /// with an empty prefix (seed 000's keys).
    #[serde(default = "default_taint_prefix")]
    pub taint_prefix: String,
    #[serde(default)]
    pub gates: Gates,
    /// Decide and record everything, execute nothing. On unless turned off explicitly (seed 003).
    #[serde(default = "default_true")]
    pub monitor_only: bool,
    /// While non-empty, no new remediation starts; in-flight ones continue (medik8s `pauseRequests`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_requests: Vec<String>,
    /// How drains treat pods: per-namespace modes, and what a drain still blocked at its timeout
    /// does (default: hold the node cordoned, never move on to a reboot past a budget).
    #[serde(default, skip_serializing_if = "DrainPolicy::is_default")]
    pub drain: DrainPolicy,
}

fn default_node_pool_label() -> String {
    DEFAULT_NODE_POOL_LABEL.into()
}
fn default_exclude_label() -> String {
    DEFAULT_EXCLUDE_LABEL.into()
}
fn default_taint_prefix() -> String {
    DEFAULT_TAINT_PREFIX.into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NodeRole {
    #[default]
    Worker,
    ControlPlane,
    Any,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClass {
    pub name: String,
    pub selector: LabelSelector,
}

/// One unhealthy rule. Exactly one of `condition`, `gpuCount`, `check` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<GpuCountMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckMatch>,
    /// How long the bad state must hold before the rule fires.
    #[serde(default)]
    pub duration: Duration,
    /// Evidence older than this (condition heartbeat, check run) is stale: "unknown", never a repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Duration>,
    #[serde(default)]
    pub effect: RuleEffect,
}

/// A Node condition in a given status. `False` and `Unknown` are distinct (medik8s semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// The rule applies only when the condition's reason is one of these; otherwise it is skipped as
    /// not applicable (seed 003's Cilium rule: `NetworkUnavailable` owned by Cilium says `CiliumIsUp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_with_reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// Seed 003's GPU rule: the expected count label (static, set by GPU feature discovery) against the
/// allocatable resource (dynamic; drops when a GPU falls off the bus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuCountMatch {
    #[serde(default = "default_gpu_vendors")]
    pub vendors: Vec<GpuVendor>,
}

impl Default for GpuCountMatch {
    fn default() -> Self {
        GpuCountMatch { vendors: default_gpu_vendors() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuVendor {
    /// Label with the expected GPU count, e.g. `nvidia.com/gpu.count`.
    pub count_label: String,
    /// Extended resource name in allocatable, e.g. `nvidia.com/gpu`.
    pub resource: String,
}

pub fn default_gpu_vendors() -> Vec<GpuVendor> {
    vec![
        GpuVendor { count_label: "nvidia.com/gpu.count".into(), resource: "nvidia.com/gpu".into() },
        GpuVendor { count_label: "amd.com/gpu.count".into(), resource: "amd.com/gpu".into() },
    ]
}

/// A check the node agent publishes: a probe family (`gpu`, `network`, `disk`, `custom`) read from the
/// family's condition, or a custom plugin's own condition (`plugin: true`). How many runs make a failure
/// or a pass is the agent's probe schedule (docs/agent-probes.md); the rule's `duration` says how long
/// a published failure must last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckMatch {
    /// `gpu`, `network`, `disk` or `custom`; with `plugin: true`, the custom plugin's name.
    pub name: String,
    /// The check is a custom plugin of this name, which publishes a condition of its own name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plugin: bool,
}

impl CheckMatch {
    /// A probe family's check.
    pub fn family(family: crate::probe::ProbeFamily) -> Self {
        CheckMatch { name: family.check_name().into(), plugin: false }
    }
}

/// What a firing rule does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleEffect {
    /// Set: a soft condition that never escalates; the node only carries this NoSchedule taint while
    /// the rule fires (seed 000's `slow-network`). Unset: the node enters the remediation ladder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taint: Option<String>,
}

impl Rule {
    pub fn is_soft(&self) -> bool {
        self.effect.taint.is_some()
    }
}
