//! The decision engine: `(policy, observed nodes, records, now) → decision`.
//!
//! Deterministic and side-effect free. The caller persists `record_changes` *before* it carries out
//! `actions`, so every step is recorded before it runs; deciding again on the applied result yields
//! no new action.

use crate::class::{self, ClassRung, FaultClass};
use crate::drain::WhenDrainBlocked;
use crate::eval::{Reason, RuleEval, Verdict, evaluate_rule, has_gpus, policy_gpu_vendors};
use crate::observe::{NodeObservation, OperatorAction, ReportedOutcome, is_control_plane_label};
use crate::policy::{Completion, ConditionStatus, ExternalTemplate, GpuVendor, LadderStep, Policy, RemediationStep};
use crate::probe::ProbeEvidence;
use crate::record::{ActiveRemediation, Diagnostic, NodeRecord, Phase, PolicyRecord, Records, Stage, StepHistory, StepOutcome};
use crate::selector::label;
use crate::time::{Duration, Time};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

mod gates;
mod ladder;
mod pass;
mod taints;

use gates::*;
use ladder::*;
pub use pass::*;
pub use taints::apply;
use taints::*;

/// How long a finished record is kept for `kubectl get` and the retry budget, at least.
pub const RECORD_RETENTION: Duration = Duration::from_days(1);

/// Something to change on the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Action {
    /// Add and remove NoSchedule taints on a node (one patch), saying why.
    SetTaints { node: String, add: Vec<String>, remove: Vec<String>, reason: String },
    /// Run a step through the executor. `(node, attempt)` identifies it: an executor that already ran
    /// that attempt must not run it again. `template` is the ladder step's (an `external` step's
    /// remediation template).
    Execute {
        node: String,
        step: RemediationStep,
        attempt: u32,
        deadline: Option<Time>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<ExternalTemplate>,
    },
    /// Tell people (the Manual escalation), once.
    Notify { node: String, notice: Notice },
    /// Put on (`present`) or take off the `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`
    /// taint: only after confirmed fencing, off again once the node is back ([`crate::fencing`]).
    SetOutOfService { node: String, present: bool, reason: String },
}

impl Action {
    pub fn node(&self) -> &str {
        match self {
            Action::SetTaints { node, .. }
            | Action::Execute { node, .. }
            | Action::Notify { node, .. }
            | Action::SetOutOfService { node, .. } => node,
        }
    }
}

/// What a person needs to take over a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub summary: String,
    pub trigger: String,
    pub reason: String,
    pub labels: BTreeMap<String, String>,
    pub history: Vec<StepHistory>,
    /// The checks as last seen: (rule, reason, detail).
    pub checks: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "change", content = "record")]
#[allow(clippy::large_enum_variant)] // a handful per decision; boxing would only complicate callers
pub enum RecordChange {
    Upsert(NodeRecord),
    Delete(String),
}

/// A transition worth telling people about (becomes a Kubernetes Event and a log line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub node: Option<String>,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    RemediationStarted,
    StepStarted,
    StepSucceeded,
    StepFailed,
    StepTimedOut,
    Recovered,
    EscalatedToManual,
    LemonNode,
    ResolvedByOperator,
    SoftTaintAdded,
    SoftTaintRemoved,
    BreakerTripped,
    BreakerClosed,
    NodeReleased,
    NodeDeleted,
    /// A drain still blocked at its deadline holds the node cordoned (policy `drain.whenBlocked: hold`).
    DrainHeld,
    /// Fencing was confirmed: the out-of-service taint goes on ([`crate::fencing`]).
    OutOfServiceAdded,
    /// The fenced node is back and Ready: the out-of-service taint comes off.
    OutOfServiceRemoved,
}

/// A gate that kept the engine from acting on a node this time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub node: String,
    pub gate: Gate,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Gate {
    Paused,
    CircuitBreaker,
    MinHealthy,
    MaxUnhealthy,
    MaxConcurrent,
    MaxConcurrentPerPool,
    MaintenanceWindow,
    /// Waiting for a person or for the checks after one acted.
    AwaitingOperator,
    /// The fault's class starts no remediation (policy `faultClasses`: `events`).
    FaultClass,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Paused => "paused",
            Gate::CircuitBreaker => "circuit_breaker",
            Gate::MinHealthy => "min_healthy",
            Gate::MaxUnhealthy => "max_unhealthy",
            Gate::MaxConcurrent => "max_concurrent",
            Gate::MaxConcurrentPerPool => "max_concurrent_per_pool",
            Gate::MaintenanceWindow => "maintenance_window",
            Gate::AwaitingOperator => "awaiting_operator",
            Gate::FaultClass => "fault_class",
        }
    }
}

/// Fleet figures for metrics and status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub selected: usize,
    pub healthy: usize,
    pub unhealthy: usize,
    /// Selected nodes whose evidence is stale: neither healthy nor broken.
    pub unknown: usize,
    pub remediating: usize,
    pub manual: usize,
    /// Nodes in a disruptive step after this decision.
    pub disruptive_in_flight: usize,
    pub breaker_open: bool,
    /// (rule, reason, nodes) for every non-zero count.
    pub rule_reasons: Vec<(String, &'static str, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// To carry out, after `record_changes` are persisted. Empty in monitor-only mode.
    pub actions: Vec<Action>,
    /// What would have been carried out in monitor-only mode.
    pub would_execute: Vec<Action>,
    pub record_changes: Vec<RecordChange>,
    /// The policy record, when it changed.
    pub policy_record: Option<PolicyRecord>,
    pub events: Vec<Event>,
    pub holds: Vec<Hold>,
    /// Decide again no later than this, even if nothing is observed to change.
    pub next_wakeup: Option<Time>,
    pub summary: Summary,
}

struct Ctx<'a> {
    policy: &'a Policy,
    now: Time,
    ladder: Vec<LadderStep>,
    step_taints: Vec<String>,
    soft_keys: Vec<Option<String>>,
    /// Every taint key the engine manages; few, so a scan (comparing lengths first) beats hashing.
    managed_keys: Vec<String>,
    vendors: Vec<GpuVendor>,
}

impl<'a> Ctx<'a> {
    fn new(policy: &'a Policy, now: Time) -> Self {
        let mut ladder = policy.ladder.clone();
        if ladder.last().is_none_or(|s| s.step != RemediationStep::Manual) {
            // Past the last rung there is always a person.
            ladder.push(LadderStep::new(RemediationStep::Manual, Duration::ZERO));
        }
        let step_taints: Vec<String> = ladder.iter().map(|s| policy.step_taint(s.step)).collect();
        let soft_keys: Vec<Option<String>> = policy.rules.iter().map(|r| r.effect.taint.as_deref().map(|t| policy.taint_key(t))).collect();
        let mut managed_keys: Vec<String> =
            RemediationStep::ALL.iter().map(|s| policy.step_taint(*s)).chain(soft_keys.iter().flatten().cloned()).collect();
        managed_keys.sort();
        managed_keys.dedup();
        Ctx { policy, now, ladder, step_taints, soft_keys, managed_keys, vendors: policy_gpu_vendors(policy) }
    }

    fn manages(&self, taint_key: &str) -> bool {
        self.managed_keys.iter().any(|k| k.len() == taint_key.len() && k == taint_key)
    }

    fn selects(&self, n: &NodeObservation) -> bool {
        let p = self.policy;
        // One scan of the labels for the exclude label and the control-plane role (see `label`).
        let (mut excluded, mut control_plane) = (false, false);
        for (k, v) in &n.labels {
            if k.len() == p.exclude_label.len() && *k == p.exclude_label {
                excluded = v == "true";
            }
            control_plane |= is_control_plane_label(k);
        }
        if excluded {
            return false;
        }
        let role_ok = match p.node_role {
            crate::policy::NodeRole::Any => true,
            crate::policy::NodeRole::Worker => !control_plane,
            crate::policy::NodeRole::ControlPlane => control_plane,
        };
        role_ok
            && (p.node_pools.is_empty() || label(&n.labels, &p.node_pool_label).is_some_and(|pool| p.node_pools.contains(pool)))
            && p.selector.matches(&n.labels)
    }

    fn pool<'n>(&self, n: &'n NodeObservation) -> &'n str {
        label(&n.labels, &self.policy.node_pool_label).map_or("", String::as_str)
    }

    fn maintenance_open(&self) -> bool {
        let windows = &self.policy.gates.maintenance_windows;
        if windows.is_empty() {
            return true;
        }
        let day = self.now.start_of_day();
        windows.iter().any(|w| {
            let Some(start) = w.start_millis() else { return false };
            // A window that opened yesterday may still be open.
            [day, day - Duration::from_days(1)].into_iter().any(|d| {
                let open = d + Duration(start);
                let on_day = w.days.is_empty() || w.days.iter().any(|wd| wd.index() == d.weekday());
                on_day && self.now >= open && self.now < open + w.duration
            })
        })
    }

    fn next_maintenance_opening(&self) -> Option<Time> {
        let day = self.now.start_of_day();
        let mut best: Option<Time> = None;
        for w in &self.policy.gates.maintenance_windows {
            let Some(start) = w.start_millis() else { continue };
            for k in 0..8 {
                let d = day + Duration::from_days(k);
                let open = d + Duration(start);
                if open > self.now && (w.days.is_empty() || w.days.iter().any(|wd| wd.index() == d.weekday())) {
                    best = Some(best.map_or(open, |b| b.min(open)));
                    break;
                }
            }
        }
        best
    }
}

/// A selected node that needs more than counting.
struct Work<'a> {
    obs: &'a NodeObservation,
    evals: Vec<RuleEval>,
    original: Option<&'a NodeRecord>,
    record: Option<NodeRecord>,
    selected: bool,
}

impl Work<'_> {
    fn name(&self) -> &str {
        &self.obs.name
    }
    fn active(&self) -> Option<&ActiveRemediation> {
        self.record.as_ref().and_then(|r| r.active.as_ref())
    }
    /// The earliest firing remediating rule: (rule index, since).
    fn firing(&self, policy: &Policy) -> Option<(usize, Time)> {
        self.evals
            .iter()
            .enumerate()
            .filter(|(i, _)| !policy.rules[*i].is_soft())
            .filter_map(|(i, e)| match e.verdict {
                Verdict::Firing { since } => Some((i, since)),
                _ => None,
            })
            .min_by_key(|(i, since)| (*since, *i))
    }
    /// When the policy started counting the node unhealthy: the moment its earliest remediating rule
    /// fired (the bad state's start plus the rule's duration), or for a node on the ladder, the moment
    /// its trigger fired (never later than the remediation's start). The breaker's window is about
    /// this moment, not about when the bad state began: a rule that waits longer than the window
    /// (disk pressure for 30 minutes against a 10-minute window) must still be able to trip it.
    fn turned_unhealthy_at(&self, policy: &Policy) -> Option<Time> {
        if let Some(a) = self.active() {
            let fired = policy.rules.iter().find(|r| r.name == a.trigger).map(|r| a.unhealthy_since + r.duration);
            return Some(fired.map_or(a.started_at, |f| f.min(a.started_at)));
        }
        self.evals
            .iter()
            .zip(&policy.rules)
            .filter(|(_, rule)| !rule.is_soft())
            .filter_map(|(e, rule)| match e.verdict {
                Verdict::Firing { since } => Some(since + rule.duration),
                _ => None,
            })
            .min()
    }
    /// Every remediating rule passes on evidence produced at or after `since`, and the rule that
    /// started the remediation passes on evidence it actually saw: an absent check (the agent has not
    /// reported since the reboot) proves nothing.
    fn healthy_since(&self, policy: &Policy, since: Time) -> bool {
        let trigger = self.active().map(|a| a.trigger.as_str());
        self.evals.iter().enumerate().filter(|(i, _)| !policy.rules[*i].is_soft()).all(|(i, e)| {
            let seen = !matches!(e.reason, Reason::CheckAbsent | Reason::ConditionAbsent);
            e.is_ok() && e.fresh_since(since) && (Some(policy.rules[i].name.as_str()) != trigger || seen)
        })
    }
    /// Some remediating rule is bad on evidence produced at or after `since`.
    fn failing_since(&self, policy: &Policy, since: Time) -> Option<usize> {
        self.evals.iter().enumerate().filter(|(i, _)| !policy.rules[*i].is_soft()).find_map(|(i, e)| {
            // A published check failure, a bad condition or GPU count is bad now, whatever the rule's duration.
            let bad = matches!(e.verdict, Verdict::Firing { .. } | Verdict::Pending { .. });
            (bad && e.fresh_since(since)).then_some(i)
        })
    }
}

struct InFlight {
    total: usize,
    by_pool: HashMap<String, usize>,
}

struct Out {
    actions: Vec<Action>,
    events: Vec<Event>,
    holds: Vec<Hold>,
    wake: Option<Time>,
}

impl Out {
    fn wake_at(&mut self, t: Time) {
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }
    fn event(&mut self, node: &str, kind: EventKind, message: String) {
        self.events.push(Event { node: Some(node.to_string()), kind, message });
    }
    fn hold(&mut self, node: &str, gate: Gate, message: String) {
        self.holds.push(Hold { node: node.to_string(), gate, message });
    }
}

#[allow(clippy::too_many_arguments)]
fn tally<'n>(
    ctx: &Ctx,
    obs: &'n NodeObservation,
    s: &NodeSummary,
    reasons: &[u8],
    idx: usize,
    need_pool_sizes: bool,
    pool_sizes: &mut HashMap<&'n str, usize>,
    reason_counts: &mut [[u32; Reason::ALL.len()]],
    interesting: &mut Vec<usize>,
    out: &mut Out,
) {
    if s.selected {
        if need_pool_sizes {
            *pool_sizes.entry(ctx.pool(obs)).or_default() += 1;
        }
        for (ri, r) in reasons.iter().enumerate() {
            if let Some(c) = reason_counts[ri].get_mut(*r as usize) {
                *c += 1;
            }
        }
        if let Some(t) = s.wake {
            out.wake_at(t);
        }
    }
    if s.interesting {
        interesting.push(idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::OperatorRequest;
    use crate::presets;
    use crate::testkit::{EPOCH, Harness, gpu_node};

    fn on_reboot() -> Harness {
        let mut policy = presets::seed000();
        policy.monitor_only = false;
        let mut h = Harness::new(policy, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
        for _ in 0..3 {
            h.probe("gpu-1", "gpu", false);
            h.decide();
            h.advance(Duration::from_secs(30));
        }
        h
    }

    fn request(h: &mut Harness, action: OperatorAction, by: &str) {
        let now = h.now;
        h.node("gpu-1").operator_request = Some(OperatorRequest { action, by: by.into(), at: now });
    }

    #[test]
    fn an_abort_stops_the_ladder_and_keeps_the_node_cordoned_for_a_person() {
        let mut h = on_reboot();
        assert_eq!(h.taints("gpu-1"), ["repair-reboot"]);
        request(&mut h, OperatorAction::Abort, "carol");
        let d = h.decide();
        let record = &h.records.nodes["gpu-1"];
        assert_eq!(record.phase, Phase::Manual);
        assert_eq!(h.taints("gpu-1"), ["repair-manual"], "still cordoned, no reboot taint");
        let last = record.history.last().map(|s| (s.step, s.outcome, s.reason.contains("aborted by carol")));
        assert_eq!(last, Some((RemediationStep::Reboot, StepOutcome::Failed, true)));
        assert!(d.actions.iter().all(|a| !matches!(a, Action::Execute { .. })), "no further step runs");
        assert!(d.actions.iter().any(|a| matches!(a, Action::Notify { .. })), "people are told");
        // The request stays on the object: deciding again changes nothing.
        h.advance(Duration::from_hours(2));
        let again = h.decide();
        assert!(again.record_changes.is_empty() && again.actions.is_empty(), "{again:?}");
    }

    #[test]
    fn an_abort_from_an_earlier_remediation_is_ignored() {
        let mut h = on_reboot();
        let earlier = h.now - Duration::from_hours(1);
        h.node("gpu-1").operator_request = Some(OperatorRequest { action: OperatorAction::Abort, by: "carol".into(), at: earlier });
        h.decide();
        assert_eq!(h.records.nodes["gpu-1"].phase, Phase::Remediating);
        assert_eq!(h.taints("gpu-1"), ["repair-reboot"]);
    }
}
