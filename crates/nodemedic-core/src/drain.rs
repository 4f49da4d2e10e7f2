//! The drain contract: how a policy wants a node's pods to leave ([`DrainPolicy`]), and how far a
//! drain has come ([`DrainProgress`]), kept on the NodeRemediation so that a new leader resumes a
//! drain where it stood instead of starting it again or dropping it.
//!
//! Which executor work is still in flight after a restart is decided here too ([`step_to_resume`]),
//! so the controller does not grow its own idea of it.

use crate::observe::StepReport;
use crate::policy::RemediationStep;
use crate::record::{NodeRecord, Stage};
use crate::time::{Duration, Time};
use serde::{Deserialize, Serialize};

/// What a drain that cannot finish by the step's timeout does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WhenDrainBlocked {
    /// The node stays cordoned in the drain step; refused evictions are retried with backoff and
    /// people are told once which pods and PodDisruptionBudgets block it. The ladder does not move
    /// on to a disruptive step while a budget forbids the disruption.
    #[default]
    Hold,
    /// The drain step fails and the node goes to a person (the ladder's `manual` step).
    Escalate,
    /// The pods still there at the deadline are deleted past their budgets, and the ladder moves on.
    /// Recorded as an override in the drain progress and the step's history.
    Force,
}

impl WhenDrainBlocked {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenDrainBlocked::Hold => "hold",
            WhenDrainBlocked::Escalate => "escalate",
            WhenDrainBlocked::Force => "force",
        }
    }
}

/// How the pods of a namespace leave a draining node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DrainMode {
    /// Not evicted: the drain waits for the pod (a Job's pod, a batch run) to finish by itself.
    AllowCompletion,
    /// Evicted at once through the Eviction API (PodDisruptionBudgets respected).
    #[default]
    Immediate,
    /// Evicted at once; a pod still there `deleteAfter` after it was first asked to leave is
    /// deleted, past its budget.
    DeleteAfterTimeout,
}

/// A drain mode for some namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceDrainMode {
    pub namespaces: Vec<String>,
    pub mode: DrainMode,
    /// For `DeleteAfterTimeout`: how long after the first eviction request the pod is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after: Option<Duration>,
}

/// A policy's drain settings (`drain:` in the policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainPolicy {
    /// What a drain still blocked at the step's timeout does (default `hold`).
    #[serde(default)]
    pub when_blocked: WhenDrainBlocked,
    /// Per-namespace modes, first match wins; other namespaces are `Immediate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_modes: Vec<NamespaceDrainMode>,
}

/// `deleteAfter` when a `DeleteAfterTimeout` namespace does not say.
pub const DEFAULT_DELETE_AFTER: Duration = Duration::from_mins(5);

impl DrainPolicy {
    /// The mode for pods of `namespace`, with the delete-after time for `DeleteAfterTimeout`.
    pub fn mode_for(&self, namespace: &str) -> (DrainMode, Duration) {
        self.namespace_modes
            .iter()
            .find(|m| m.namespaces.iter().any(|n| n == namespace))
            .map_or((DrainMode::Immediate, DEFAULT_DELETE_AFTER), |m| (m.mode, m.delete_after.unwrap_or(DEFAULT_DELETE_AFTER)))
    }

    pub fn is_default(&self) -> bool {
        *self == DrainPolicy::default()
    }

    /// Problems a schema cannot see, as (field, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, m) in self.namespace_modes.iter().enumerate() {
            if m.namespaces.is_empty() {
                out.push((format!("drain.namespaceModes[{i}].namespaces"), "name at least one namespace".into()));
            }
            if m.delete_after.is_some() && m.mode != DrainMode::DeleteAfterTimeout {
                out.push((format!("drain.namespaceModes[{i}].deleteAfter"), "applies to mode DeleteAfterTimeout only".into()));
            }
            if m.delete_after.is_some_and(|d| d.0 <= 0) {
                out.push((format!("drain.namespaceModes[{i}].deleteAfter"), "must be positive".into()));
            }
        }
        out
    }
}

/// What happened to one pod a drain dealt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PodAnswer {
    /// The Eviction API accepted: the pod is terminating.
    Evicted,
    /// The Eviction API refused (a PodDisruptionBudget, usually); asked again with backoff.
    Refused,
    /// Left to finish by itself (`AllowCompletion`).
    AwaitingCompletion,
    /// Deleted past its budget: `DeleteAfterTimeout`, or `force` at the deadline.
    Deleted,
    /// Gone from the node.
    Gone,
}

/// One pod a drain asked to leave, and what answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainedPod {
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
    /// When it was first asked to leave (the `DeleteAfterTimeout` clock runs from here).
    pub asked_at: Time,
    pub answer: PodAnswer,
    pub answered_at: Time,
    /// The refusal in words (names the PodDisruptionBudget), or what else was seen.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// How far the drain of one attempt has come; written by the drain executor under its own field
/// manager (`status.drainProgress`), read back by whichever replica leads next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainProgress {
    /// The record's attempt this drain belongs to; progress of another attempt is ignored.
    pub attempt: u32,
    pub started_at: Time,
    pub updated_at: Time,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<DrainedPod>,
    /// Pods were deleted past their budgets because the policy says `force`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

impl DrainProgress {
    pub fn pod(&self, key: &str) -> Option<&DrainedPod> {
        self.pods.iter().find(|p| p.pod == key)
    }

    /// The pods still blocking the drain, with why (the budget that refused them), at most `max`.
    pub fn blocking(&self, max: usize) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| matches!(p.answer, PodAnswer::Refused | PodAnswer::AwaitingCompletion))
            .take(max)
            .map(|p| if p.detail.is_empty() { format!("pod {}", p.pod) } else { format!("pod {} {}", p.pod, p.detail) })
            .collect()
    }
}

/// A step whose executor work may have been lost with the process that started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepToResume {
    pub node: String,
    pub step: RemediationStep,
    pub attempt: u32,
    pub deadline: Option<Time>,
    pub reason: String,
}

/// The step in flight on `record` that a new leader must resume (or whose outcome it must read
/// back): executed (not monitor-only), still executing, and without a report for its attempt.
/// Quarantine and manual have no executor work.
pub fn step_to_resume(record: &NodeRecord, report: Option<&StepReport>) -> Option<StepToResume> {
    let a = record.active.as_ref()?;
    let has_work = !matches!(a.step, RemediationStep::Quarantine | RemediationStep::Manual);
    let reported = report.is_some_and(|r| r.attempt == record.attempt);
    (has_work && a.executed && a.stage == Stage::Executing && !reported).then(|| StepToResume {
        node: record.node.clone(),
        step: a.step,
        attempt: record.attempt,
        deadline: a.deadline,
        reason: a.reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::ReportedOutcome;
    use crate::record::{ActiveRemediation, Phase};

    fn draining(executed: bool) -> NodeRecord {
        let t = Time(1_795_000_000_000);
        NodeRecord {
            node: "gpu-1".into(),
            phase: Phase::Remediating,
            attempt: 2,
            active: Some(ActiveRemediation {
                trigger: "gpu".into(),
                reason: "Xid 79".into(),
                started_at: t,
                unhealthy_since: t,
                step_index: 1,
                step: RemediationStep::Drain,
                step_started_at: t,
                deadline: Some(t + Duration::from_mins(10)),
                stage: Stage::Executing,
                executed,
                boot_id_at_start: None,
                notified_at: None,
                unobserved: Duration::ZERO,
                unobserved_until: None,
                drain_held_at: None,
                fault_class: None,
                gpu: None,
            }),
            ..NodeRecord::default()
        }
    }

    #[test]
    fn an_executed_drain_without_a_report_is_resumed_once_reported_it_is_not() {
        let rec = draining(true);
        let resume = step_to_resume(&rec, None);
        assert_eq!(resume.map(|r| (r.step, r.attempt)), Some((RemediationStep::Drain, 2)));
        let old = StepReport { attempt: 1, outcome: ReportedOutcome::Succeeded, at: Time(0), message: String::new() };
        assert!(step_to_resume(&rec, Some(&old)).is_some(), "a report about an older attempt does not count");
        let done = StepReport { attempt: 2, ..old };
        assert_eq!(step_to_resume(&rec, Some(&done)), None);
    }

    #[test]
    fn monitor_only_steps_and_steps_between_stages_are_not_resumed() {
        assert_eq!(step_to_resume(&draining(false), None), None);
        let mut rec = draining(true);
        if let Some(a) = rec.active.as_mut() {
            a.stage = Stage::AwaitingNext { ended_at: Time(0) };
        }
        assert_eq!(step_to_resume(&rec, None), None);
        if let Some(a) = rec.active.as_mut() {
            a.stage = Stage::Executing;
            a.step = RemediationStep::Manual;
        }
        assert_eq!(step_to_resume(&rec, None), None);
    }

    #[test]
    fn a_namespace_mode_applies_to_its_namespaces_only() {
        let p = DrainPolicy {
            when_blocked: WhenDrainBlocked::Hold,
            namespace_modes: vec![
                NamespaceDrainMode { namespaces: vec!["batch".into()], mode: DrainMode::AllowCompletion, delete_after: None },
                NamespaceDrainMode {
                    namespaces: vec!["scratch".into()],
                    mode: DrainMode::DeleteAfterTimeout,
                    delete_after: Some(Duration::from_secs(30)),
                },
            ],
        };
        assert_eq!(p.mode_for("batch").0, DrainMode::AllowCompletion);
        assert_eq!(p.mode_for("scratch"), (DrainMode::DeleteAfterTimeout, Duration::from_secs(30)));
        assert_eq!(p.mode_for("default").0, DrainMode::Immediate);
        assert!(p.problems().is_empty());
    }

    #[test]
    fn a_delete_after_on_another_mode_or_an_empty_namespace_list_is_refused() {
        let p = DrainPolicy {
            when_blocked: WhenDrainBlocked::Force,
            namespace_modes: vec![NamespaceDrainMode {
                namespaces: vec![],
                mode: DrainMode::Immediate,
                delete_after: Some(Duration::from_secs(30)),
            }],
        };
        let fields: Vec<String> = p.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["drain.namespaceModes[0].namespaces", "drain.namespaceModes[0].deleteAfter"]);
    }

    #[test]
    fn the_blocking_pods_are_named_with_their_budget() {
        let t = Time(0);
        let pod = |name: &str, answer, detail: &str| DrainedPod {
            pod: name.into(),
            uid: name.into(),
            asked_at: t,
            answer,
            answered_at: t,
            detail: detail.into(),
        };
        let p = DrainProgress {
            attempt: 1,
            started_at: t,
            updated_at: t,
            pods: vec![
                pod("default/web-0", PodAnswer::Evicted, ""),
                pod("default/db-0", PodAnswer::Refused, "blocked by PodDisruptionBudget db"),
            ],
            forced: false,
        };
        assert_eq!(p.blocking(10), ["pod default/db-0 blocked by PodDisruptionBudget db"]);
    }
}
