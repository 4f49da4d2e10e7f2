//! Rule evaluation: one node, one rule, one instant → a verdict with an enumerable reason.

use crate::observe::NodeObservation;
use crate::policy::{GpuCountMatch, GpuVendor, Policy, Rule};
use crate::probe::ProbeEvidence;
use crate::selector::label;
use crate::time::Time;

/// Enumerable reasons, used as metric labels and in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The condition or check is in its good state.
    Healthy,
    /// Bad, but not yet for the rule's duration.
    Failing,
    /// Bad for long enough: the rule fires.
    Unhealthy,
    /// The evidence is older than `staleAfter`: unknown, never a repair.
    Stale,
    ConditionAbsent,
    /// The condition's reason shows another owner (seed 003: a non-Cilium CNI).
    NotApplicable,
    CheckAbsent,
    /// The node is in a repair step; its checks are not re-run until the step ends (seed 000).
    RepairInProgress,
    GpuCountMatch,
    GpuCountMismatch,
    NoAllocatableGpu,
    NonGpuNode,
    /// The GPU count label is not a number: unreadable data never triggers a repair.
    InvalidGpuCountLabel,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::Healthy,
        Reason::Failing,
        Reason::Unhealthy,
        Reason::Stale,
        Reason::ConditionAbsent,
        Reason::NotApplicable,
        Reason::CheckAbsent,
        Reason::RepairInProgress,
        Reason::GpuCountMatch,
        Reason::GpuCountMismatch,
        Reason::NoAllocatableGpu,
        Reason::NonGpuNode,
        Reason::InvalidGpuCountLabel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Healthy => "Healthy",
            Reason::Failing => "Failing",
            Reason::Unhealthy => "Unhealthy",
            Reason::Stale => "Stale",
            Reason::ConditionAbsent => "ConditionAbsent",
            Reason::NotApplicable => "NotApplicable",
            Reason::CheckAbsent => "CheckAbsent",
            Reason::RepairInProgress => "RepairInProgress",
            Reason::GpuCountMatch => "GPUCountMatch",
            Reason::GpuCountMismatch => "GPUCountMismatch",
            Reason::NoAllocatableGpu => "NoAllocatableGPU",
            Reason::NonGpuNode => "NonGPUNode",
            Reason::InvalidGpuCountLabel => "InvalidGPUCountLabel",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The state a rule is in for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Good state (or not applicable to this node).
    Ok,
    /// Bad now; fires at `fires_at` if it stays bad (`None`: fires on a count, not a time).
    Pending { since: Time, fires_at: Option<Time> },
    /// Bad for long enough.
    Firing { since: Time },
    /// Cannot tell.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleEval {
    pub verdict: Verdict,
    pub reason: Reason,
    /// When the data behind the verdict was produced; `None` for always-current data (allocatable).
    pub evidence_at: Option<Time>,
}

impl RuleEval {
    fn new(verdict: Verdict, reason: Reason, evidence_at: Option<Time>) -> Self {
        RuleEval { verdict, reason, evidence_at }
    }
    /// The observed state is bad right now, whether or not the rule has fired yet.
    pub fn bad_now(&self) -> bool {
        matches!(self.verdict, Verdict::Pending { .. } | Verdict::Firing { .. })
    }
    pub fn is_ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }
    /// Evidence produced at or after `t`. Kubernetes condition times have one-second precision, so
    /// `t` is compared from the start of its second: a condition posted in the same second counts.
    pub fn fresh_since(&self, t: Time) -> bool {
        let second = Time(t.0 - t.0.rem_euclid(1000));
        self.evidence_at.is_none_or(|e| e >= second)
    }
}

/// Evaluates one rule. `failing_since` is the engine's memory for rules whose data has no timestamp.
pub fn evaluate_rule(rule: &Rule, node: &NodeObservation, failing_since: Option<Time>, now: Time) -> RuleEval {
    if let Some(m) = &rule.condition {
        let Some(c) = node.condition(&m.type_) else {
            return RuleEval::new(Verdict::Ok, Reason::ConditionAbsent, None);
        };
        if !m.only_with_reasons.is_empty() && !m.only_with_reasons.contains(&c.reason) {
            return RuleEval::new(Verdict::Ok, Reason::NotApplicable, None);
        }
        let evidence = c.last_heartbeat_time.map_or(c.last_transition_time, |h| h.max(c.last_transition_time));
        if let Some(stale) = rule.stale_after
            && now.since(evidence) > stale
        {
            return RuleEval::new(Verdict::Unknown, Reason::Stale, Some(evidence));
        }
        if c.status != m.status {
            return RuleEval::new(Verdict::Ok, Reason::Healthy, Some(evidence));
        }
        let since = c.last_transition_time;
        return held(rule, since, now, Some(evidence));
    }
    if let Some(m) = &rule.check {
        // The agent's published condition, read once for every caller (see `crate::probe`).
        let Some(c) = crate::probe::check_evidence(node, m) else {
            return RuleEval::new(Verdict::Ok, Reason::CheckAbsent, None);
        };
        if let Some(stale) = rule.stale_after
            && now.since(c.last_run) > stale
        {
            return RuleEval::new(Verdict::Unknown, Reason::Stale, Some(c.last_run));
        }
        return match c.evidence {
            ProbeEvidence::Passing { .. } => RuleEval::new(Verdict::Ok, Reason::Healthy, Some(c.last_run)),
            ProbeEvidence::Failing { since } => held(rule, since, now, Some(c.last_run)),
            // The probes could not tell: as if nothing were published, never a repair.
            ProbeEvidence::Unknown => RuleEval::new(Verdict::Ok, Reason::CheckAbsent, None),
        };
    }
    if let Some(m) = &rule.gpu_count {
        let reason = gpu_count_reason(m, node);
        return match reason {
            Reason::GpuCountMismatch | Reason::NoAllocatableGpu => {
                let since = failing_since.unwrap_or(now);
                let mut e = held(rule, since, now, None);
                e.reason = if e.reason == Reason::Unhealthy { reason } else { e.reason };
                e
            }
            Reason::InvalidGpuCountLabel => RuleEval::new(Verdict::Unknown, reason, None),
            _ => RuleEval::new(Verdict::Ok, reason, None),
        };
    }
    RuleEval::new(Verdict::Unknown, Reason::NotApplicable, None)
}

fn held(rule: &Rule, since: Time, now: Time, evidence_at: Option<Time>) -> RuleEval {
    let fires_at = since + rule.duration;
    if now >= fires_at {
        RuleEval::new(Verdict::Firing { since }, Reason::Unhealthy, evidence_at)
    } else {
        RuleEval::new(Verdict::Pending { since, fires_at: Some(fires_at) }, Reason::Failing, evidence_at)
    }
}

/// Seed 003's GPU count reasons: expected (label) against allocatable.
pub fn gpu_count_reason(m: &GpuCountMatch, node: &NodeObservation) -> Reason {
    let mut saw_label = false;
    let mut worst = Reason::GpuCountMatch;
    // One scan of the labels for every vendor's count label (see `selector::label`); the verdict does
    // not depend on the order the vendors are met in.
    let vendors_by_label = node.labels.iter().flat_map(|(key, value)| {
        m.vendors.iter().filter(move |v| v.count_label.len() == key.len() && v.count_label == *key).map(move |v| (v, value))
    });
    for (v, value) in vendors_by_label {
        saw_label = true;
        // `trim` only when needed: a plain number parses the same either way.
        let Ok(expected) = value.parse::<i64>().or_else(|_| value.trim().parse::<i64>()) else {
            return Reason::InvalidGpuCountLabel;
        };
        let allocatable = node.allocatable.get(&v.resource).copied().unwrap_or(0);
        if expected <= 0 {
            continue;
        }
        if allocatable <= 0 {
            worst = Reason::NoAllocatableGpu;
        } else if allocatable < expected && worst == Reason::GpuCountMatch {
            worst = Reason::GpuCountMismatch;
        }
    }
    if saw_label { worst } else { Reason::NonGpuNode }
}

/// Whether a node has GPUs, by any vendor's count label or allocatable resource (label first: it
/// still says GPU node when every GPU has dropped out of allocatable).
pub fn has_gpus(vendors: &[GpuVendor], node: &NodeObservation) -> bool {
    vendors.iter().any(|v| label(&node.labels, &v.count_label).is_some() || node.allocatable.get(&v.resource).is_some_and(|n| *n > 0))
}

/// The GPU vendors a policy knows: those of its GPU count rule, else the defaults.
pub fn policy_gpu_vendors(policy: &Policy) -> Vec<GpuVendor> {
    policy.rules.iter().find_map(|r| r.gpu_count.as_ref()).map_or_else(crate::policy::default_gpu_vendors, |g| g.vendors.clone())
}
