//! Durable state: one record per node the engine has something to remember about, and one per policy.
//!
//! Records are plain serialisable data kept in the API server (the NodeRemediation and policy status).
//! A process that reloads them makes exactly the decisions it would have made without restarting.

use crate::policy::RemediationStep;
use crate::time::Time;
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
    /// Set once the Manual escalation notice was sent, so it is sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<Time>,
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
mod stage_tests {
    use super::*;

    /// The CRD schema names the stage's times in camelCase (`completedAt`, `verifyFrom`, …); the API server
    /// refuses a record written any other way, so the serialised form must match it.
    #[test]
    fn stage_times_serialise_in_camel_case_as_the_schema_declares() -> Result<(), serde_json::Error> {
        let verifying = Stage::Verifying { completed_at: Time(0), verify_from: Time(1000), verify_deadline: Time(2000) };
        let json = serde_json::to_value(&verifying)?;
        let mut keys: Vec<&str> = json.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(keys, ["completedAt", "name", "verifyDeadline", "verifyFrom"]);
        assert_eq!(json["name"], "verifying");
        assert_eq!(serde_json::from_value::<Stage>(json)?, verifying);
        let awaiting = serde_json::to_value(Stage::AwaitingNext { ended_at: Time(0) })?;
        assert!(awaiting.get("endedAt").is_some(), "{awaiting}");
        Ok(())
    }
}
