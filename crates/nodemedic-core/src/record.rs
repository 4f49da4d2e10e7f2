//! Durable state: one record per node the engine has something to remember about, and one per policy.
//!
//! Records are plain serialisable data kept in the API server (the NodeRemediation and policy status).
//! A process that reloads them makes exactly the decisions it would have made without restarting.

use crate::policy::RemediationStep;
use crate::time::{Duration, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most step outcomes kept per node; older ones are dropped first.
pub const HISTORY_LIMIT: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node: String,
    pub phase: Phase,
    /// The ladder run in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveRemediation>,
    /// Bumped every time a step starts; executors key their work on (node, attempt) so a step can never
    /// run twice, also across restarts and leader changes.
    #[serde(default)]
    pub attempt: u32,
    /// When each remediation started, kept for the retry budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remediation_starts: Vec<Time>,
    /// First time a rule without its own timestamp (the GPU count rule) was seen failing, by rule name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failing_since: BTreeMap<String, Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StepHistory>,
    /// Every rule's verdict and evidence at each step start (the last few per rule): what an operator
    /// reads in `kubectl describe` to see why the node is where it is and how the evidence evolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
    /// The `node.kubernetes.io/out-of-service` taint nodemedic put on the node after confirmed
    /// fencing, when and why, and when and why it came off again ([`crate::fencing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_service: Option<crate::fencing::OutOfService>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    pub rule: String,
    /// The verdict's reason (`Unhealthy`, `GPUCountMismatch`, `Stale`, …).
    pub reason: String,
    pub detail: String,
    pub at: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, PartialOrd, Ord, schemars::JsonSchema)]
/// Serialised as Kubernetes phases are: `Healthy`, `Remediating`, `Manual`.
pub enum Phase {
    /// Nothing in flight (the record only remembers history, budgets or pending timers).
    #[default]
    Healthy,
    /// On the ladder, in a step before Manual.
    Remediating,
    /// Waiting for a person (`repair-manual`).
    Manual,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Healthy => "Healthy",
            Phase::Remediating => "Remediating",
            Phase::Manual => "Manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveRemediation {
    /// The rule that started it and what it saw.
    pub trigger: String,
    pub reason: String,
    pub started_at: Time,
    /// When the node was first seen unhealthy (for the breaker window and time-to-repair figures).
    pub unhealthy_since: Time,
    pub step_index: usize,
    pub step: RemediationStep,
    pub step_started_at: Time,
    /// When the step counts as failed (or, for `fixedWait`, as done); none for Manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    pub stage: Stage,
    /// False in monitor-only mode: the step was decided and recorded but not executed.
    pub executed: bool,
    /// The node's boot ID when a reboot or reimage started: the executor's success report counts
    /// only once the node shows another one (and is Ready), so a report alone proves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id_at_start: Option<String>,
    /// Set once the Manual escalation notice was sent, so it is sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<Time>,
    /// Time within this step during which the controller could not observe the cluster; the
    /// step's deadline was moved on by it (see [`crate::outage`]).
    #[serde(default, skip_serializing_if = "Duration::is_zero")]
    pub unobserved: Duration,
    /// Outages up to this time are counted in `unobserved` (each is counted once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unobserved_until: Option<Time>,
    /// When a drain still blocked at its deadline began to hold (policy `drain.whenBlocked: hold`):
    /// people were told then, once; the step stays until the pods have left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_held_at: Option<Time>,
    /// The fault class the trigger's condition carried when the remediation started: it chose the
    /// rung, and keeps repair steps below that rung skipped for the rest of the ladder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_class: Option<crate::class::FaultClass>,
    /// The GPU the trigger's condition named when the remediation started: a `resetGpu` step resets
    /// this one, and is skipped when it is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::gpu::GpuDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "name")]
pub enum Stage {
    /// The step is running (or, for quarantine, watching for self-recovery) until its deadline.
    Executing,
    /// The step completed at `completedAt`; the checks are trusted again after settling and must
    /// confirm recovery before `verifyDeadline`.
    Verifying { completed_at: Time, verify_from: Time, verify_deadline: Time },
    /// The step ended without fixing the node; the next step waits for its gates.
    AwaitingNext { ended_at: Time },
}

/// The stage as one flat object (`name` plus the times that stage has), which is how serde writes it;
/// Kubernetes structural schemas cannot express a tagged union.
impl schemars::JsonSchema for Stage {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Stage".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "enum": ["executing", "verifying", "awaitingNext"]},
                "completedAt": {"type": "string", "format": "date-time"},
                "verifyFrom": {"type": "string", "format": "date-time"},
                "verifyDeadline": {"type": "string", "format": "date-time"},
                "endedAt": {"type": "string", "format": "date-time"}
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepHistory {
    pub attempt: u32,
    pub step: RemediationStep,
    pub started_at: Time,
    pub ended_at: Time,
    pub outcome: StepOutcome,
    pub reason: String,
    pub executed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StepOutcome {
    /// The checks passed after the step: the node is healthy again.
    Recovered,
    /// The step ran (or was skipped over) without fixing the node.
    Failed,
    /// The executor did not report within the step's timeout.
    TimedOut,
    /// A preparatory step finished and the ladder moved on.
    Completed,
    /// Ended from outside: a person resolved it, or the node left the policy.
    Ended,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Recovered => "recovered",
            StepOutcome::Failed => "failed",
            StepOutcome::TimedOut => "timed_out",
            StepOutcome::Completed => "completed",
            StepOutcome::Ended => "ended",
        }
    }
}

/// Per-policy durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_tripped_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_reason: Option<String>,
    /// A person asked to close the breaker (honoured once its cooldown has passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_reset_requested_at: Option<Time>,
    /// The breaker found the mass failure still there when its cooldown ended and stayed open: the
    /// next cooldown runs from here. The trip itself (and its notification) stays the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_extended_at: Option<Time>,
}

/// All durable state the engine reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Records {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    pub policy: PolicyRecord,
}

impl NodeRecord {
    pub fn new(node: &str) -> Self {
        NodeRecord { node: node.to_string(), ..Default::default() }
    }
    pub(crate) fn push_history(&mut self, h: StepHistory) {
        self.history.push(h);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRD's structural schema is written by hand for Stage: every field serde writes must be in it,
    /// or the API server refuses the record (a Verifying stage once was, with snake_case fields).
    #[test]
    fn every_stage_serialises_only_fields_its_schema_declares() {
        let schema = serde_json::to_value(schemars::schema_for!(Stage)).unwrap_or_default();
        let declared: Vec<String> = schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        assert!(!declared.is_empty(), "{schema}");
        let t = Time(1_795_000_000_000);
        for stage in [
            Stage::Executing,
            Stage::Verifying { completed_at: t, verify_from: t, verify_deadline: t },
            Stage::AwaitingNext { ended_at: t },
        ] {
            let v = serde_json::to_value(&stage).unwrap_or_default();
            for key in v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                assert!(declared.contains(&key), "{stage:?} writes `{key}`, not in the schema {declared:?}");
            }
            assert_eq!(serde_json::from_value::<Stage>(v).ok(), Some(stage));
        }
    }
}
