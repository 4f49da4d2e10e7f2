//! The content of a notification: what happened, to which node, what the checks saw, what was tried.
//!
//! Everything here is plain data the controller fills from the Node, the probe results and the
//! NodeRemediation record; renderers and channels only read it.

use nodemedic_core::RemediationStep;
use nodemedic_core::record::{ActiveRemediation, NodeRecord, StepHistory, StepOutcome};
use nodemedic_core::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A sensible `limit` for [`Incident::with_probes`]: the results per probe a notification keeps.
pub const DEFAULT_PROBE_RESULTS: usize = 5;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IncidentKind {
    /// The ladder reached `repair-manual`: a person has to take over.
    NodeManual,
    /// The policy's circuit breaker opened: nodemedic stopped repairing nodes of this policy.
    BreakerTripped,
    /// The breaker closed again.
    BreakerReset,
    /// The node used up its retry budget (it keeps breaking after repairs).
    LemonNode,
    /// A remediation step did not report back before its timeout.
    StepTimedOut,
    /// A remediation started on the node.
    RemediationStarted,
    /// A remediation ended (recovered, handed to a person, or ended from outside).
    RemediationFinished,
    /// The node passed its checks again after an incident.
    NodeRecovered,
    /// A drain could not finish by its deadline (PodDisruptionBudgets, pods left to complete): the
    /// node stays cordoned in the drain step until they allow it (policy `drain.whenBlocked: hold`).
    DrainBlocked,
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 9] = [
        IncidentKind::NodeManual,
        IncidentKind::BreakerTripped,
        IncidentKind::BreakerReset,
        IncidentKind::LemonNode,
        IncidentKind::StepTimedOut,
        IncidentKind::RemediationStarted,
        IncidentKind::RemediationFinished,
        IncidentKind::NodeRecovered,
        IncidentKind::DrainBlocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::NodeManual => "NodeManual",
            IncidentKind::BreakerTripped => "BreakerTripped",
            IncidentKind::BreakerReset => "BreakerReset",
            IncidentKind::LemonNode => "LemonNode",
            IncidentKind::StepTimedOut => "StepTimedOut",
            IncidentKind::RemediationStarted => "RemediationStarted",
            IncidentKind::RemediationFinished => "RemediationFinished",
            IncidentKind::NodeRecovered => "NodeRecovered",
            IncidentKind::DrainBlocked => "DrainBlocked",
        }
    }

    /// The severity an incident of this kind gets unless the controller overrides it.
    pub fn default_severity(self) -> Severity {
        match self {
            IncidentKind::NodeManual | IncidentKind::BreakerTripped | IncidentKind::LemonNode => Severity::Critical,
            IncidentKind::StepTimedOut | IncidentKind::DrainBlocked => Severity::Warning,
            IncidentKind::BreakerReset
            | IncidentKind::RemediationStarted
            | IncidentKind::RemediationFinished
            | IncidentKind::NodeRecovered => Severity::Info,
        }
    }

    /// What a person should do next, unless the controller says something more specific.
    pub fn default_next_action(self) -> &'static str {
        match self {
            IncidentKind::NodeManual => {
                "Inspect and repair the node by hand, then run `nodemedic resume <node>`; `nodemedic abort <node>` keeps it cordoned."
            }
            IncidentKind::BreakerTripped => {
                "Too many nodes failed at once: look for a shared cause (driver rollout, fabric, power) before `nodemedic reset-breaker`."
            }
            IncidentKind::BreakerReset => "None: automatic remediation resumed.",
            IncidentKind::LemonNode => "The node keeps failing after repairs: have the provider replace or inspect the hardware.",
            IncidentKind::StepTimedOut => "Check the executor for this step; the ladder moves on to the next step.",
            IncidentKind::RemediationStarted => "None: nodemedic is repairing the node.",
            IncidentKind::RemediationFinished => "None unless the node is in Manual.",
            IncidentKind::NodeRecovered => "None: the node is healthy again.",
            IncidentKind::DrainBlocked => {
                "The named pods' PodDisruptionBudgets (or unfinished pods) keep the node from draining; it stays cordoned and no reboot runs until they allow it. Relax the budget, move the workload, or `nodemedic abort <node>`."
            }
        }
    }

    /// Whether an incident of this kind is a problem that stays open until something resolves it (an
    /// Alertmanager alert fires for these and is resolved later).
    pub fn is_alert(self) -> bool {
        matches!(
            self,
            IncidentKind::NodeManual
                | IncidentKind::BreakerTripped
                | IncidentKind::LemonNode
                | IncidentKind::StepTimedOut
                | IncidentKind::DrainBlocked
        )
    }
}

impl fmt::Display for IncidentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent it is; ordered, so channels can ask for a minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    #[default]
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Node as Kubernetes shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeDetails {
    pub name: String,
    #[serde(default)]
    pub internal_ips: Vec<String>,
    #[serde(default)]
    pub external_ips: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl NodeDetails {
    pub fn named(name: &str) -> Self {
        NodeDetails { name: name.to_string(), ..Default::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: String,
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={}:{}", self.key, value, self.effect),
            None => write!(f, "{}:{}", self.key, self.effect),
        }
    }
}

/// A Node condition (`Ready`, `GpuHealthy`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Time>,
}

/// The latest results of one health probe, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeHistory {
    pub probe: String,
    pub results: Vec<ProbeResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub at: Time,
    pub passed: bool,
    #[serde(default)]
    pub message: String,
}

/// One step of the ladder as it ran: finished steps come from the record's history; the step in progress
/// (typically `manual`) has no end or outcome yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub step: RemediationStep,
    pub started_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<StepOutcome>,
    pub reason: String,
    /// False when the step was only recorded (monitor-only mode).
    pub executed: bool,
}

impl Attempt {
    /// "recovered", "failed", … or "in progress".
    pub fn outcome_text(&self) -> &'static str {
        self.outcome.map_or("in progress", StepOutcome::as_str)
    }
}

impl From<&StepHistory> for Attempt {
    fn from(h: &StepHistory) -> Self {
        Attempt {
            attempt: h.attempt,
            step: h.step,
            started_at: h.started_at,
            ended_at: Some(h.ended_at),
            outcome: Some(h.outcome),
            reason: h.reason.clone(),
            executed: h.executed,
        }
    }
}

impl Attempt {
    /// The step that is running now, as the record's active remediation shows it.
    pub fn in_progress(active: &ActiveRemediation, attempt: u32) -> Self {
        Attempt {
            attempt,
            step: active.step,
            started_at: active.step_started_at,
            ended_at: None,
            outcome: None,
            reason: active.reason.clone(),
            executed: active.executed,
        }
    }

    /// Every attempt a node record knows: its history, then the step in progress if there is one.
    pub fn all_from_record(record: &NodeRecord) -> Vec<Attempt> {
        let mut attempts: Vec<Attempt> = record.history.iter().map(Attempt::from).collect();
        if let Some(active) = &record.active {
            attempts.push(Attempt::in_progress(active, record.attempt));
        }
        attempts
    }
}

/// A notification's content. The controller builds one per event with [`Incident::for_node`] or
/// [`Incident::for_policy`] and fills in what it knows; the idempotency `key` names the event, so the same
/// event built again after a restart has the same key and is not delivered twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    /// `<node>/<kind>/<attempt>` for node incidents, `policy:<policy>/<kind>/<millis>` for breaker ones.
    pub key: String,
    pub kind: IncidentKind,
    pub severity: Severity,
    /// When it happened.
    pub at: Time,
    pub policy: String,
    /// The rule that fired (for node incidents), e.g. `gpu-count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// One line saying what happened and why.
    pub summary: String,
    /// None for policy-wide incidents (the breaker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeDetails>,
    #[serde(default)]
    pub probes: Vec<ProbeHistory>,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    pub next_action: String,
    /// Earlier incidents this one closes (Alertmanager resolves their alerts): a recovered node resolves its
    /// Manual, lemon and timeout alerts; a reset breaker resolves the trip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolves: Vec<Resolved>,
}

/// An incident that a later one closes, named as the alert for it was labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub kind: IncidentKind,
    pub severity: Severity,
}

impl Incident {
    /// A node incident keyed `<node>/<kind>/<attempt>`: `attempt` is the record's attempt counter, so one
    /// ladder step produces at most one incident of each kind.
    pub fn for_node(kind: IncidentKind, policy: &str, node: NodeDetails, attempt: u32, at: Time) -> Self {
        let key = format!("{}/{}/{}", node.name, kind.as_str(), attempt);
        let summary = format!("{} on node {}", kind.as_str(), node.name);
        let mut incident = Incident::bare(key, kind, policy, at, summary);
        incident.node = Some(node);
        incident
    }

    /// A policy-wide incident keyed `policy:<policy>/<kind>/<millis of since>`: `since` is when the breaker
    /// tripped (for both the trip and its reset), so each trip is told once.
    pub fn for_policy(kind: IncidentKind, policy: &str, since: Time, at: Time) -> Self {
        let key = format!("policy:{}/{}/{}", policy, kind.as_str(), since.as_millis());
        let summary = format!("{} for policy {}", kind.as_str(), policy);
        Incident::bare(key, kind, policy, at, summary)
    }

    fn bare(key: String, kind: IncidentKind, policy: &str, at: Time, summary: String) -> Self {
        let resolves = match kind {
            IncidentKind::NodeRecovered => {
                [IncidentKind::NodeManual, IncidentKind::LemonNode, IncidentKind::StepTimedOut, IncidentKind::DrainBlocked]
                    .into_iter()
                    .map(|kind| Resolved { kind, severity: kind.default_severity() })
                    .collect()
            }
            IncidentKind::BreakerReset => {
                vec![Resolved { kind: IncidentKind::BreakerTripped, severity: IncidentKind::BreakerTripped.default_severity() }]
            }
            _ => Vec::new(),
        };
        Incident {
            key,
            kind,
            severity: kind.default_severity(),
            at,
            policy: policy.to_string(),
            rule: None,
            summary,
            node: None,
            probes: Vec::new(),
            attempts: Vec::new(),
            next_action: kind.default_next_action().to_string(),
            resolves,
        }
    }

    pub fn with_rule(mut self, rule: &str) -> Self {
        self.rule = Some(rule.to_string());
        self
    }
    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
    pub fn with_next_action(mut self, next_action: impl Into<String>) -> Self {
        self.next_action = next_action.into();
        self
    }
    pub fn with_attempts(mut self, attempts: Vec<Attempt>) -> Self {
        self.attempts = attempts;
        self
    }
    /// Keeps the last `limit` results of each probe.
    pub fn with_probes(mut self, probes: Vec<ProbeHistory>, limit: usize) -> Self {
        self.probes = probes
            .into_iter()
            .map(|mut history| {
                let excess = history.results.len().saturating_sub(limit);
                history.results.drain(..excess);
                history
            })
            .collect();
        self
    }

    /// The node's name, or empty for policy-wide incidents.
    pub fn node_name(&self) -> &str {
        self.node.as_ref().map_or("", |node| node.name.as_str())
    }

    /// A short title: `[critical] NodeManual: gpu-7 (policy gpu-default)`.
    pub fn title(&self) -> String {
        match &self.node {
            Some(node) => format!("[{}] {}: {} (policy {})", self.severity, self.kind, node.name, self.policy),
            None => format!("[{}] {}: policy {}", self.severity, self.kind, self.policy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemedic_core::record::{Phase, Stage};

    #[test]
    fn node_incidents_are_keyed_by_node_kind_and_attempt() {
        let incident = Incident::for_node(IncidentKind::NodeManual, "gpu", NodeDetails::named("gpu-7"), 4, Time(0));
        assert_eq!(incident.key, "gpu-7/NodeManual/4");
        assert_eq!(incident.severity, Severity::Critical);
        let breaker = Incident::for_policy(IncidentKind::BreakerTripped, "gpu", Time(1_000), Time(2_000));
        assert_eq!(breaker.key, "policy:gpu/BreakerTripped/1000");
        assert_eq!(breaker.node_name(), "");
    }

    #[test]
    fn a_recovered_node_resolves_its_manual_lemon_and_timeout_incidents() {
        let incident = Incident::for_node(IncidentKind::NodeRecovered, "gpu", NodeDetails::named("gpu-7"), 4, Time(0));
        let kinds: Vec<IncidentKind> = incident.resolves.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, vec![IncidentKind::NodeManual, IncidentKind::LemonNode, IncidentKind::StepTimedOut, IncidentKind::DrainBlocked]);
    }

    #[test]
    fn only_the_last_probe_results_are_kept() {
        let results = (0..8).map(|i| ProbeResult { at: Time(i), passed: false, message: format!("run {i}") }).collect();
        let incident = Incident::for_node(IncidentKind::NodeManual, "gpu", NodeDetails::named("n"), 1, Time(0))
            .with_probes(vec![ProbeHistory { probe: "dcgm".into(), results }], 3);
        let messages: Vec<&str> = incident.probes[0].results.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, vec!["run 5", "run 6", "run 7"]);
    }

    #[test]
    fn attempts_from_a_record_are_its_history_then_the_step_in_progress() {
        let mut record = NodeRecord::new("gpu-7");
        record.phase = Phase::Manual;
        record.attempt = 2;
        record.history.push(StepHistory {
            attempt: 1,
            step: RemediationStep::Reboot,
            started_at: Time(10),
            ended_at: Time(20),
            outcome: StepOutcome::Failed,
            reason: "still 7 GPUs".into(),
            executed: true,
        });
        record.active = Some(ActiveRemediation {
            trigger: "gpu-count".into(),
            reason: "GPU count 7 < 8".into(),
            started_at: Time(10),
            unhealthy_since: Time(5),
            step_index: 1,
            step: RemediationStep::Manual,
            step_started_at: Time(21),
            deadline: None,
            stage: Stage::Executing,
            executed: true,
            boot_id_at_start: None,
            notified_at: None,
            unobserved: nodemedic_core::Duration::ZERO,
            unobserved_until: None,
            drain_held_at: None,
            fault_class: None,
            gpu: None,
        });
        let attempts = Attempt::all_from_record(&record);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].outcome_text(), "failed");
        assert_eq!(attempts[1].step, RemediationStep::Manual);
        assert_eq!(attempts[1].outcome_text(), "in progress");
    }
}
