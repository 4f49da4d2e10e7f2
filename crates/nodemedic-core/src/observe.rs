//! What the engine is told about each node: a snapshot the adapter builds from the Node object, the
//! agent's check reports and the executor's step reports. Plain data; nothing here talks to a cluster.

use crate::policy::ConditionStatus;
use crate::selector::Labels;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeObservation {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub taints: Vec<Taint>,
    #[serde(default)]
    pub conditions: Vec<NodeCondition>,
    /// Allocatable extended resources as whole counts (e.g. `nvidia.com/gpu: 8`).
    #[serde(default)]
    pub allocatable: BTreeMap<String, i64>,
    /// The executor's report on the step in flight, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_report: Option<StepReport>,
    /// How far the drain of the step in flight has come, as its executor last wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_progress: Option<crate::drain::DrainProgress>,
    /// A person's request about this node (e.g. "resolved by hand").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_request: Option<OperatorRequest>,
    /// `status.nodeInfo.bootID`: a reboot or reimage is done only once it has changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The node agent's self-fencing promise and its last contact with the API server (its Lease),
    /// when it publishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_fencing: Option<crate::selffence::SelfFencingObservation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: Time,
    /// When the owner last confirmed the condition; lets a dead agent be told from a healthy node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// The GPU the fault is on, when the agent's fault history knows it (a Kubernetes condition has no
    /// field for it; the adapter reads it from the agent's [`crate::gpu::FAULTY_GPU_ANNOTATION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::gpu::GpuDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// Must equal the record's attempt number, or the report is about an older step and ignored.
    pub attempt: u32,
    pub outcome: ReportedOutcome,
    pub at: Time,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReportedOutcome {
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorRequest {
    pub action: OperatorAction,
    pub by: String,
    pub at: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OperatorAction {
    /// The node was repaired by hand: leave Manual once the checks pass.
    Resolve,
    /// Stop the automated ladder now and keep the node cordoned: it goes straight to Manual (the
    /// `repair-manual` taint) and waits for a person, who ends it with `Resolve`.
    Abort,
}

impl NodeObservation {
    pub fn new(name: impl Into<String>) -> Self {
        NodeObservation { name: name.into(), ..Default::default() }
    }
    pub fn has_taint(&self, key: &str) -> bool {
        self.taints.iter().any(|t| t.key == key)
    }
    pub fn condition(&self, type_: &str) -> Option<&NodeCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
    pub fn is_control_plane(&self) -> bool {
        self.labels.keys().any(|k| is_control_plane_label(k))
    }
}

/// Labels that mark a control-plane node (either is enough).
pub const CONTROL_PLANE_LABELS: [&str; 2] = ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"];

pub(crate) fn is_control_plane_label(key: &str) -> bool {
    CONTROL_PLANE_LABELS.iter().any(|c| c.len() == key.len() && *c == key)
}
