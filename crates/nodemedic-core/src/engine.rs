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

/// Whether `policy` manages `node` (selector, node pools, role, exclude label), exactly as `decide` selects.
pub fn selects(policy: &Policy, node: &NodeObservation) -> bool {
    Ctx::new(policy, Time(0)).selects(node)
}

/// Decides what to do now. Nodes are considered in name order, unhealthy candidates oldest first.
pub fn decide(policy: &Policy, fleet: &[NodeObservation], records: &Records, now: Time) -> Decision {
    decide_with(policy, fleet, records, now, None)
}

/// What pass 1 learns about one node: enough to count it, and whether pass 2 must look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NodeSummary {
    pub selected: bool,
    pub unhealthy: bool,
    pub unknown: bool,
    /// Pass 2 must evaluate it (a record, a firing or soft rule, or one of our taints).
    pub interesting: bool,
    /// The earliest time a pending rule fires (nodes not on the ladder).
    pub wake: Option<Time>,
    /// The summary may change without a new observation at this time (a rule's duration elapses,
    /// evidence turns stale); never for nodes with records, which are always re-evaluated.
    pub valid_until: Option<Time>,
}

fn earliest(a: Option<Time>, b: Time) -> Option<Time> {
    Some(a.map_or(b, |x| x.min(b)))
}

/// Pass 1 for one node; `reasons[rule]` receives the reason shown in the metrics for each rule.
fn summarize(ctx: &Ctx, obs: &NodeObservation, record: Option<&NodeRecord>, reasons: &mut [u8]) -> NodeSummary {
    let now = ctx.now;
    let policy = ctx.policy;
    let mut s = NodeSummary::default();
    if !ctx.selects(obs) {
        s.interesting = record.is_some_and(|r| r.active.is_some());
        reasons.fill(u8::MAX);
        return s;
    }
    s.selected = true;
    let active = record.and_then(|r| r.active.as_ref());
    let repairing = active.is_some_and(|a| a.step != RemediationStep::Quarantine && !matches!(a.stage, Stage::Verifying { .. }));
    let (mut firing, mut stale, mut attention) = (false, false, record.is_some());
    for (ri, rule) in policy.rules.iter().enumerate() {
        let remembered = record.and_then(|r| r.failing_since.get(&rule.name)).copied();
        let e = evaluate_rule(rule, obs, remembered, now);
        if let (Some(limit), Some(evidence)) = (rule.stale_after, e.evidence_at)
            && e.verdict != Verdict::Unknown
        {
            // Turns stale one millisecond after the limit.
            s.valid_until = earliest(s.valid_until, evidence + limit + Duration(1));
        }
        if let Some(key) = &ctx.soft_keys[ri] {
            reasons[ri] = e.reason.index() as u8;
            attention |= e.verdict != Verdict::Ok || obs.has_taint(key);
            continue;
        }
        let shown = if repairing { Reason::RepairInProgress } else { e.reason };
        reasons[ri] = shown.index() as u8;
        match e.verdict {
            Verdict::Firing { .. } => firing = true,
            Verdict::Pending { fires_at: Some(t), .. } => {
                s.valid_until = earliest(s.valid_until, t);
                if active.is_none() {
                    s.wake = earliest(s.wake, t);
                }
            }
            Verdict::Unknown => stale = true,
            _ => {}
        }
        if rule.gpu_count.is_some() && e.bad_now() != remembered.is_some() {
            attention = true;
        }
    }
    s.unhealthy = active.is_some() || firing;
    s.unknown = !s.unhealthy && stale;
    s.interesting = attention || firing || obs.taints.iter().any(|t| ctx.manages(&t.key));
    s
}

/// Per-node pass-1 results kept between decisions by [`crate::index::FleetIndex`].
pub(crate) struct Pass1Cache<'c> {
    /// `Some` where the node's summary can be reused (no new observation since it was made).
    pub summaries: &'c mut Vec<Option<NodeSummary>>,
    /// Reason index per node and rule, `rules` entries per node.
    pub reasons: &'c mut Vec<u8>,
    /// Nodes that had a record at the last decision: they are re-evaluated once more after it goes.
    pub had_record: &'c mut HashSet<String>,
    pub slots: &'c HashMap<String, usize>,
}

pub(crate) fn decide_with(
    policy: &Policy,
    fleet: &[NodeObservation],
    records: &Records,
    now: Time,
    mut cache: Option<Pass1Cache>,
) -> Decision {
    let ctx = Ctx::new(policy, now);
    let mut out = Out { actions: Vec::new(), events: Vec::new(), holds: Vec::new(), wake: None };
    let rules = policy.rules.len();
    let mut reason_counts = vec![[0u32; Reason::ALL.len()]; rules];
    let (mut selected, mut unhealthy, mut unknown) = (0usize, 0usize, 0usize);
    let mut interesting: Vec<usize> = Vec::new();
    let mut pool_sizes: HashMap<&str, usize> = HashMap::new();
    let need_pool_sizes = matches!(policy.gates.max_concurrent_per_pool, Some(crate::policy::IntOrPercent::Percent(_)));
    let mut row = vec![u8::MAX; rules];

    // Pass 1: evaluate every node cheaply; keep only those that need more than counting.
    let seen_records;
    if let Some(c) = cache.as_mut() {
        // Nodes with records now or at the last decision are evaluated afresh, the rest reuse their
        // summary until it expires.
        c.reasons.resize(fleet.len() * rules, u8::MAX);
        c.summaries.resize(fleet.len(), None);
        for name in records.nodes.keys().map(String::as_str).chain(c.had_record.iter().map(String::as_str)) {
            if let Some(&i) = c.slots.get(name) {
                c.summaries[i] = None;
            }
        }
        seen_records = records.nodes.keys().filter(|n| c.slots.contains_key(n.as_str())).count();
        c.had_record.clear();
        c.had_record.extend(records.nodes.keys().cloned());
        for (idx, obs) in fleet.iter().enumerate() {
            let cached = c.summaries[idx].filter(|s| s.valid_until.is_none_or(|t| now < t));
            let s = match cached {
                Some(s) => s,
                None => {
                    let record = records.nodes.get(&obs.name);
                    let s = summarize(&ctx, obs, record, &mut c.reasons[idx * rules..(idx + 1) * rules]);
                    // A summary with a record behind it is never reused (see above).
                    c.summaries[idx] = if record.is_some() { None } else { Some(s) };
                    s
                }
            };
            tally(
                &ctx,
                obs,
                &s,
                &c.reasons[idx * rules..(idx + 1) * rules],
                idx,
                need_pool_sizes,
                &mut pool_sizes,
                &mut reason_counts,
                &mut interesting,
                &mut out,
            );
            selected += usize::from(s.selected);
            unhealthy += usize::from(s.selected && s.unhealthy);
            unknown += usize::from(s.selected && s.unknown);
        }
    } else {
        // Records by name: a hash lookup per node beats a tree search comparing names.
        let by_name: HashMap<&str, &NodeRecord> = records.nodes.iter().map(|(name, r)| (name.as_str(), r)).collect();
        let mut seen = 0usize;
        for (idx, obs) in fleet.iter().enumerate() {
            let record = by_name.get(obs.name.as_str()).copied();
            seen += usize::from(record.is_some());
            let s = summarize(&ctx, obs, record, &mut row);
            tally(&ctx, obs, &s, &row, idx, need_pool_sizes, &mut pool_sizes, &mut reason_counts, &mut interesting, &mut out);
            selected += usize::from(s.selected);
            unhealthy += usize::from(s.selected && s.unhealthy);
            unknown += usize::from(s.selected && s.unknown);
        }
        seen_records = seen;
    }
    let mut healthy = selected - unhealthy - unknown;

    // Pass 2: full evaluation of the few nodes that need it, in name order.
    interesting.sort_by(|a, b| fleet[*a].name.cmp(&fleet[*b].name));
    interesting.dedup_by(|a, b| fleet[*a].name == fleet[*b].name);
    let mut work: Vec<Work> = interesting
        .iter()
        .map(|&idx| {
            let obs = &fleet[idx];
            let original = records.nodes.get(&obs.name);
            let evals = policy
                .rules
                .iter()
                .map(|r| evaluate_rule(r, obs, original.and_then(|rec| rec.failing_since.get(&r.name)).copied(), now))
                .collect();
            Work { obs, evals, original, record: original.cloned(), selected: ctx.selects(obs) }
        })
        .collect();

    // The circuit breaker.
    let mut policy_record = records.policy.clone();
    let breaker_open = update_breaker(&ctx, &work, selected, &mut policy_record, &mut out);

    // Disruptive steps in flight, cluster-wide and per pool.
    let mut inflight = in_flight(&ctx, &work);
    let gates = GateState { breaker_open, selected, pool_sizes: &pool_sizes };

    // Nodes on the ladder move along it; nodes that left the policy are released. A node whose next
    // step needs a new disruptive slot waits until every other node has moved, so that slots freed
    // this time (recovered, released, escalated) are handed out this time, not on the next decision.
    // A node leaves the ladder only once every remediating rule passes: from then on it counts as
    // healthy, for the gates below as on the next decision.
    let mut waiting = Vec::new();
    let mut recovered = 0;
    // Fencing is read off the step in flight before the ladder moves past it (crate::fencing).
    // The Ready count is a scan of the fleet: done only when a node in remediation promises self-fencing.
    let ready_majority = work.iter().any(|w| w.obs.self_fencing.is_some()) && {
        let ready = fleet.iter().filter(|o| o.condition("Ready").is_some_and(|c| c.status == ConditionStatus::True)).count();
        2 * ready > fleet.len()
    };
    for w in work.iter_mut() {
        if let Some(r) = w.record.as_mut() {
            for (kind, message) in crate::fencing::update(r, w.obs, now, ready_majority) {
                out.event(&w.obs.name, kind, message);
            }
        }
    }
    for (i, w) in work.iter_mut().enumerate() {
        if w.active().is_none() {
            continue;
        }
        if !w.selected {
            release(&ctx, w, &mut out);
            continue;
        }
        if advance(&ctx, w, &gates, &mut inflight, &mut out, true) {
            waiting.push(i);
        }
        recovered += usize::from(w.active().is_none());
    }
    inflight = in_flight(&ctx, &work);
    for i in waiting {
        advance(&ctx, &mut work[i], &gates, &mut inflight, &mut out, false);
        recovered += usize::from(work[i].active().is_none());
    }
    healthy += recovered;
    unhealthy -= recovered;

    // Unhealthy nodes not yet on the ladder, oldest first.
    let mut candidates: Vec<(Time, usize, usize)> = work
        .iter()
        .enumerate()
        .filter(|(_, w)| w.selected && w.active().is_none())
        .filter_map(|(i, w)| w.firing(policy).map(|(rule, since)| (since, i, rule)))
        .collect();
    candidates.sort_by(|a, b| (a.0, work[a.1].name()).cmp(&(b.0, work[b.1].name())));
    for (since, i, rule) in candidates {
        let w = &mut work[i];
        try_start(&ctx, w, rule, since, &gates, healthy, unhealthy, &mut inflight, &mut out);
        if w.active().is_some() {
            // A first step that is over at once (a zero quarantine window) moves on now, not on the
            // next decision.
            advance(&ctx, w, &gates, &mut inflight, &mut out, false);
        }
    }

    // Memory for rules whose data has no timestamp (the GPU count rule).
    for w in work.iter_mut().filter(|w| w.selected) {
        remember_gpu_failures(&ctx, w);
    }

    // Taints follow the records and the soft rules.
    for w in &work {
        reconcile_taints(&ctx, w, breaker_open, &mut out);
        out.actions.extend(crate::fencing::taint_action(w.record.as_ref(), w.obs));
    }

    // Records to write or drop.
    let mut record_changes = Vec::new();
    for w in work.iter_mut() {
        let retention = policy.gates.retry_budget.as_ref().map_or(RECORD_RETENTION, |b| b.window.max(RECORD_RETENTION));
        if let Some(r) = w.record.as_mut() {
            if let Some(b) = &policy.gates.retry_budget {
                r.remediation_starts.retain(|t| now.since(*t) < b.window);
            }
            let idle = r.active.is_none() && r.failing_since.is_empty() && crate::fencing::settled(r);
            let last = r.history.last().map(|h| h.ended_at);
            let expired = idle && r.remediation_starts.is_empty() && last.is_none_or(|t| now.since(t) >= retention);
            if expired {
                if w.original.is_some() {
                    record_changes.push(RecordChange::Delete(r.node.clone()));
                }
                continue;
            }
            if idle && let Some(t) = last {
                out.wake_at(t + retention);
            }
        }
        if w.record.as_ref() != w.original
            && let Some(r) = &w.record
        {
            record_changes.push(RecordChange::Upsert(r.clone()));
        }
    }
    if seen_records < records.nodes.len() {
        let names: HashSet<&str> = fleet.iter().map(|n| n.name.as_str()).collect();
        for name in records.nodes.keys().filter(|n| !names.contains(n.as_str())) {
            record_changes.push(RecordChange::Delete(name.clone()));
            out.event(name, EventKind::NodeDeleted, format!("node {name} no longer exists; its record is dropped"));
        }
    }

    let mut summary = Summary { selected, healthy, unhealthy, unknown, breaker_open, ..Default::default() };
    for w in work.iter().filter(|w| w.selected) {
        match w.record.as_ref().map(|r| r.phase) {
            Some(Phase::Remediating) => summary.remediating += 1,
            Some(Phase::Manual) => summary.manual += 1,
            _ => {}
        }
    }
    summary.disruptive_in_flight = in_flight(&ctx, &work).total;
    for (ri, counts) in reason_counts.iter().enumerate() {
        for reason in Reason::ALL {
            let n = counts[reason.index()];
            if n > 0 {
                summary.rule_reasons.push((policy.rules[ri].name.clone(), reason.as_str(), n));
            }
        }
    }

    let (actions, would_execute) = if policy.monitor_only { (Vec::new(), out.actions) } else { (out.actions, Vec::new()) };
    Decision {
        actions,
        would_execute,
        record_changes,
        policy_record: (policy_record != records.policy).then_some(policy_record),
        events: out.events,
        holds: out.holds,
        next_wakeup: out.wake,
        summary,
    }
}

/// Snapshots of each rule's verdict kept on a record: enough to show a person how the evidence evolved
/// over the attempts, bounded so a lemon node's record does not grow without end.
pub const DIAGNOSTICS_PER_RULE: usize = 5;

fn keep_recent_diagnostics(d: &mut Vec<Diagnostic>) {
    let mut per_rule: HashMap<String, usize> = HashMap::new();
    let mut keep = vec![false; d.len()];
    for (i, entry) in d.iter().enumerate().rev() {
        let n = per_rule.entry(entry.rule.clone()).or_default();
        *n += 1;
        keep[i] = *n <= DIAGNOSTICS_PER_RULE;
    }
    let mut i = 0;
    d.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// A reboot or reimage reported done is believed once the node shows a new boot ID and is not
/// NotReady; other steps (and nodes whose boot ID was unknown at the start) need only the report.
fn rebooted(a: &ActiveRemediation, obs: &NodeObservation) -> bool {
    let Some(before) = &a.boot_id_at_start else { return true };
    let ready = obs.condition("Ready").is_none_or(|c| c.status == ConditionStatus::True);
    obs.boot_id.as_ref().is_some_and(|now| now != before) && ready
}

/// Counts the disruptive steps in flight as the (updated) records say.
fn in_flight(ctx: &Ctx, work: &[Work]) -> InFlight {
    let mut inflight = InFlight { total: 0, by_pool: HashMap::new() };
    for w in work {
        if w.active().is_some_and(|a| a.step.is_disruptive()) {
            inflight.total += 1;
            *inflight.by_pool.entry(ctx.pool(w.obs).to_string()).or_default() += 1;
        }
    }
    inflight
}

struct GateState<'a> {
    breaker_open: bool,
    selected: usize,
    pool_sizes: &'a HashMap<&'a str, usize>,
}

fn update_breaker(ctx: &Ctx, work: &[Work], selected: usize, rec: &mut PolicyRecord, out: &mut Out) -> bool {
    let now = ctx.now;
    let Some(b) = &ctx.policy.gates.circuit_breaker else {
        if rec.breaker_tripped_at.take().is_some() {
            rec.breaker_extended_at = None;
            rec.breaker_reason = None;
            out.events.push(Event {
                node: None,
                kind: EventKind::BreakerClosed,
                message: "circuit breaker removed from the policy".into(),
            });
        }
        return false;
    };
    let window_start = now - b.window;
    let recent =
        work.iter().filter(|w| w.selected).filter(|w| w.turned_unhealthy_at(ctx.policy).is_some_and(|t| t >= window_start)).count();
    let exceeded = b.max_unhealthy.exceeded_by(recent, selected);
    let reason = || {
        format!(
            "{recent} of {selected} selected nodes turned unhealthy within {} (limit {}): halting new remediations for at least {}{}",
            b.window,
            b.max_unhealthy,
            b.cooldown,
            if b.manual_reset { " and until a person resets the breaker" } else { "" }
        )
    };
    if let Some(tripped) = rec.breaker_tripped_at {
        let cooling_from = rec.breaker_extended_at.map_or(tripped, |e| e.max(tripped));
        let cooled = now >= cooling_from + b.cooldown;
        let reset = !b.manual_reset || rec.breaker_reset_requested_at.is_some_and(|r| r >= tripped);
        if !(cooled && reset) {
            if !cooled {
                out.wake_at(cooling_from + b.cooldown);
            }
            return true;
        }
        if exceeded && !b.manual_reset {
            // The mass failure is still there: stay open for another cooldown rather than close and
            // trip again in the same breath (one trip, one notification). Deciding again at the same
            // instant changes nothing (a zero cooldown would otherwise extend on every pass).
            if now == cooling_from {
                return true;
            }
            rec.breaker_extended_at = Some(now);
            rec.breaker_reason = Some(reason());
            out.wake_at(now + b.cooldown);
            return true;
        }
        rec.breaker_tripped_at = None;
        rec.breaker_extended_at = None;
        rec.breaker_reason = None;
        out.events.push(Event {
            node: None,
            kind: EventKind::BreakerClosed,
            message: if b.manual_reset {
                "circuit breaker closed: cooldown passed and a person reset it".into()
            } else {
                "circuit breaker closed: cooldown passed".into()
            },
        });
    }
    if exceeded {
        let reason = reason();
        rec.breaker_tripped_at = Some(now);
        rec.breaker_extended_at = None;
        rec.breaker_reason = Some(reason.clone());
        out.events.push(Event { node: None, kind: EventKind::BreakerTripped, message: reason });
        out.wake_at(now + b.cooldown);
        return true;
    }
    false
}

fn describe(ctx: &Ctx, w: &Work, rule: usize) -> String {
    let r = &ctx.policy.rules[rule];
    let e = &w.evals[rule];
    let mut s = format!("rule `{}` {}", r.name, e.reason.as_str());
    if let Some(c) = &r.condition {
        if let Some(cond) = w.obs.condition(&c.type_) {
            s += &format!(": {}={} ({}) since {}", cond.type_, cond.status.as_str(), cond.reason, cond.last_transition_time);
            if !cond.message.is_empty() {
                s += &format!(", \"{}\"", cond.message);
            }
        }
    } else if let Some(c) = &r.check {
        if let Some(chk) = crate::probe::check_evidence(w.obs, c) {
            // The agent's conditions carry no run counts: its own thresholds were met.
            s += &match chk.evidence {
                ProbeEvidence::Failing { since } => format!(": check `{}` failing since {since} (the agent's threshold met)", c.name),
                ProbeEvidence::Passing { .. } => format!(": check `{}` passing", c.name),
                ProbeEvidence::Unknown => format!(": check `{}` unknown (the agent's probes cannot tell)", c.name),
            };
            if !chk.message.is_empty() {
                s += &format!(", \"{}\"", chk.message);
            }
        }
    } else if r.gpu_count.is_some() {
        let detail: Vec<String> = ctx
            .vendors
            .iter()
            .filter_map(|v| {
                let expected = w.obs.labels.get(&v.count_label)?;
                let alloc = w.obs.allocatable.get(&v.resource).copied().unwrap_or(0);
                Some(format!("{}={} vs allocatable {}={}", v.count_label, expected, v.resource, alloc))
            })
            .collect();
        if !detail.is_empty() {
            s += &format!(": {}", detail.join(", "));
        }
    }
    if !r.duration.0.eq(&0) {
        s += &format!(", held {}", r.duration);
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn try_start(
    ctx: &Ctx,
    w: &mut Work,
    rule: usize,
    since: Time,
    gates: &GateState,
    healthy: usize,
    unhealthy: usize,
    inflight: &mut InFlight,
    out: &mut Out,
) {
    let p = ctx.policy;
    let node = w.obs.name.clone();
    let why = describe(ctx, w, rule);
    if !p.pause_requests.is_empty() {
        out.hold(&node, Gate::Paused, format!("{why}; remediation paused by: {}", p.pause_requests.join(", ")));
        return;
    }
    if gates.breaker_open {
        out.hold(&node, Gate::CircuitBreaker, format!("{why}; circuit breaker is open"));
        return;
    }
    if let Some(min) = p.gates.min_healthy {
        let need = min.scaled_up(gates.selected);
        if healthy < need {
            out.hold(
                &node,
                Gate::MinHealthy,
                format!("{why}; only {healthy} of {} nodes healthy, minHealthy {min} needs {need}", gates.selected),
            );
            return;
        }
    }
    if let Some(max) = p.gates.max_unhealthy {
        let allowed = max.scaled_down(gates.selected);
        if unhealthy > allowed {
            out.hold(
                &node,
                Gate::MaxUnhealthy,
                format!("{why}; {unhealthy} of {} nodes unhealthy, maxUnhealthy {max} allows {allowed}", gates.selected),
            );
            return;
        }
    }
    let fault_class = crate::probe::rule_fault_class(w.obs, &p.rules[rule]);
    let rung = p.fault_classes.rung(fault_class);
    if rung == ClassRung::Events {
        let class = fault_class.map_or("none", FaultClass::as_str);
        out.hold(&node, Gate::FaultClass, format!("{why}; fault class {class}: events only, no remediation (policy faultClasses)"));
        return;
    }
    let record = w.record.get_or_insert_with(|| NodeRecord::new(&node));
    let lemon = p.gates.retry_budget.as_ref().and_then(|b| {
        let recent = record.remediation_starts.iter().filter(|t| ctx.now.since(**t) < b.window).count();
        (recent >= b.max_remediations as usize).then(|| {
            format!("remediated {recent} times within {} (budget {}): a lemon node goes straight to manual", b.window, b.max_remediations)
        })
    });
    let gpu = crate::probe::rule_fault_gpu(w.obs, &p.rules[rule]);
    let first = if lemon.is_some() { ctx.ladder.len() - 1 } else { class::next_index(&ctx.ladder, 0, rung, gpu.is_some()) };
    let step = ctx.ladder[first].step;
    if step.is_disruptive()
        && let Err((gate, msg)) = disruptive_gate(ctx, w.obs, false, gates, inflight, out)
    {
        out.hold(&node, gate, format!("{why}; {msg}"));
        return;
    }
    let record = w.record.get_or_insert_with(|| NodeRecord::new(&node));
    record.remediation_starts.push(ctx.now);
    record.phase = Phase::Remediating;
    record.active = Some(ActiveRemediation {
        trigger: p.rules[rule].name.clone(),
        reason: why.clone(),
        started_at: ctx.now,
        unhealthy_since: since,
        step_index: first,
        step,
        step_started_at: ctx.now,
        deadline: None,
        stage: Stage::Executing,
        executed: false,
        boot_id_at_start: None,
        notified_at: None,
        unobserved: Duration::ZERO,
        unobserved_until: None,
        drain_held_at: None,
        fault_class,
        gpu,
    });
    let skipped = match fault_class {
        Some(c) if lemon.is_none() => format!("; fault class {c}: repairs start at rung {}", rung.as_str()),
        _ => String::new(),
    };
    out.event(&node, EventKind::RemediationStarted, format!("node unhealthy: {why}{skipped}"));
    if let Some(l) = lemon {
        out.event(&node, EventKind::LemonNode, l);
    }
    start_step(ctx, w, first, false, inflight, out);
}

/// Checks the gates for starting a disruptive step. `holds_slot`: the node already counts as in flight.
fn disruptive_gate(
    ctx: &Ctx,
    obs: &NodeObservation,
    holds_slot: bool,
    gates: &GateState,
    inflight: &InFlight,
    out: &mut Out,
) -> Result<(), (Gate, String)> {
    let g = &ctx.policy.gates;
    if gates.breaker_open {
        return Err((Gate::CircuitBreaker, "circuit breaker is open".into()));
    }
    if !ctx.maintenance_open() {
        let next = ctx.next_maintenance_opening();
        if let Some(t) = next {
            out.wake_at(t);
        }
        return Err((
            Gate::MaintenanceWindow,
            format!("outside maintenance windows (next opens {})", next.map_or("never".into(), |t| t.to_string())),
        ));
    }
    if holds_slot {
        return Ok(());
    }
    if let Some(max) = g.max_concurrent {
        let limit = max.scaled_down(gates.selected).max(1);
        if inflight.total >= limit {
            return Err((
                Gate::MaxConcurrent,
                format!("{} disruptive remediations in flight, maxConcurrent {max} allows {limit}", inflight.total),
            ));
        }
    }
    if let Some(max) = g.max_concurrent_per_pool {
        let pool = ctx.pool(obs);
        let size = gates.pool_sizes.get(pool).copied().unwrap_or(0);
        let limit = max.scaled_down(size).max(1);
        let current = inflight.by_pool.get(pool).copied().unwrap_or(0);
        if current >= limit {
            return Err((
                Gate::MaxConcurrentPerPool,
                format!("{current} disruptive remediations in flight in pool `{pool}`, maxConcurrentPerPool {max} allows {limit}"),
            ));
        }
    }
    Ok(())
}

/// Starts ladder step `index`. `holds_slot`: the node already counts as a disruptive step in flight.
fn start_step(ctx: &Ctx, w: &mut Work, index: usize, holds_slot: bool, inflight: &mut InFlight, out: &mut Out) {
    let now = ctx.now;
    let node = w.obs.name.clone();
    let ls = &ctx.ladder[index];
    let class = ctx.policy.node_class(&w.obs.labels, has_gpus(&ctx.vendors, w.obs));
    let timeout = ls.timeout_for(class);
    let checks: Vec<(String, String, String)> = ctx
        .policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), w.evals[i].reason.as_str().to_string(), describe(ctx, w, i)))
        .collect();
    let Some(record) = w.record.as_mut() else { return };
    record.diagnostics.extend(checks.iter().map(|(rule, reason, detail)| Diagnostic {
        rule: rule.clone(),
        reason: reason.clone(),
        detail: detail.clone(),
        at: now,
    }));
    keep_recent_diagnostics(&mut record.diagnostics);
    let Some(a) = record.active.as_mut() else { return };
    record.attempt += 1;
    a.step_index = index;
    a.step = ls.step;
    a.step_started_at = now;
    a.stage = Stage::Executing;
    a.executed = !ctx.policy.monitor_only;
    a.boot_id_at_start = if matches!(ls.step, RemediationStep::Reboot | RemediationStep::Reimage | RemediationStep::PowerCycle) {
        w.obs.boot_id.clone()
    } else {
        None
    };
    a.deadline = (ls.step != RemediationStep::Manual).then_some(now + timeout);
    // Outages are counted per step: the new one's deadline owes nothing to earlier ones.
    (a.unobserved, a.unobserved_until) = (Duration::ZERO, None);
    let attempt = record.attempt;
    if ls.step.is_disruptive() && !holds_slot {
        inflight.total += 1;
        *inflight.by_pool.entry(ctx.pool(w.obs).to_string()).or_default() += 1;
    } else if !ls.step.is_disruptive() && holds_slot {
        inflight.total = inflight.total.saturating_sub(1);
        if let Some(n) = inflight.by_pool.get_mut(ctx.pool(w.obs)) {
            *n = n.saturating_sub(1);
        }
    }
    let taint = &ctx.step_taints[index];
    match ls.step {
        RemediationStep::Manual => {
            record.phase = Phase::Manual;
            a.notified_at = Some(now);
            let reason = a.reason.clone();
            let trigger = a.trigger.clone();
            let summary = format!("node {node} needs a person: automated repair did not fix it ({reason})");
            out.event(&node, EventKind::EscalatedToManual, format!("{summary}; tainted {taint}"));
            let notice = Notice { summary, trigger, reason, labels: w.obs.labels.clone(), history: record.history.clone(), checks };
            out.actions.push(Action::Notify { node, notice });
        }
        step => {
            let deadline = a.deadline;
            out.event(
                &node,
                EventKind::StepStarted,
                format!("step {step} (attempt {attempt}) started, tainted {taint}, timeout {timeout} for {class} nodes"),
            );
            if step != RemediationStep::Quarantine {
                let template = ls.template.clone();
                out.actions.push(Action::Execute { node, step, attempt, deadline, reason: a.reason.clone(), template });
            }
            if let Some(d) = deadline {
                out.wake_at(d);
            }
        }
    }
}

/// Ends the current step with `outcome`; `recovered` closes the remediation.
fn end_step(ctx: &Ctx, w: &mut Work, outcome: StepOutcome, reason: String, out: &mut Out) {
    let now = ctx.now;
    let node = w.obs.name.clone();
    let Some(record) = w.record.as_mut() else { return };
    let Some(a) = record.active.as_mut() else { return };
    let h = StepHistory {
        attempt: record.attempt,
        step: a.step,
        started_at: a.step_started_at,
        ended_at: now,
        outcome,
        reason: reason.clone(),
        executed: a.executed,
    };
    let step = a.step;
    let kind = match outcome {
        StepOutcome::Recovered => EventKind::StepSucceeded,
        StepOutcome::TimedOut => EventKind::StepTimedOut,
        StepOutcome::Failed => EventKind::StepFailed,
        StepOutcome::Completed | StepOutcome::Ended => EventKind::StepSucceeded,
    };
    if matches!(outcome, StepOutcome::Recovered | StepOutcome::Ended) {
        close_remediation(record);
    } else {
        a.stage = Stage::AwaitingNext { ended_at: now };
    }
    record.push_history(h);
    out.event(&node, kind, format!("step {step} {}: {reason}", outcome.as_str()));
    if outcome == StepOutcome::Recovered {
        out.event(&node, EventKind::Recovered, format!("node healthy again after {step}; repair taints removed"));
    }
}

/// The node is done with the ladder: healthy, nothing in flight, no remembered failures.
fn close_remediation(record: &mut NodeRecord) {
    record.active = None;
    record.phase = Phase::Healthy;
    record.failing_since.clear();
}

/// Closes a remediation whose node passed its checks before the next step began. The last step keeps
/// its own outcome in the history; its reason says what happened after it.
fn recovered_while_waiting(w: &mut Work, next: RemediationStep, out: &mut Out) {
    let node = w.obs.name.clone();
    let Some(record) = w.record.as_mut() else { return };
    let Some(last_step) = record.active.as_ref().map(|a| a.step) else { return };
    close_remediation(record);
    if let Some(h) = record.history.last_mut() {
        h.reason = format!("{}; the node then recovered before {next} started", h.reason);
    }
    out.event(
        &node,
        EventKind::Recovered,
        format!("node healthy again while waiting for {next} (after {last_step}); repair taints removed, {next} not needed"),
    );
}

/// Moves a node along the ladder as far as it can go now. With `defer_new_slot`, stops before a step
/// that needs a new disruptive slot and returns true: the caller hands slots out afterwards.
fn advance(ctx: &Ctx, w: &mut Work, gates: &GateState, inflight: &mut InFlight, out: &mut Out, defer_new_slot: bool) -> bool {
    let now = ctx.now;
    let p = ctx.policy;
    // Bounded: each pass either changes the stage or stops.
    for _ in 0..8 {
        let Some(a) = w.active().cloned() else { return false };
        let abort = w.obs.operator_request.as_ref().filter(|r| r.action == OperatorAction::Abort && r.at >= a.started_at);
        if let Some(req) = abort
            && a.step != RemediationStep::Manual
        {
            // A person stops the ladder: the step in flight ends, nothing else runs, the node stays
            // cordoned under the Manual taint until someone resolves it.
            let msg = format!("ladder aborted by {} at {}; the node stays cordoned for a person", req.by, req.at);
            if matches!(a.stage, Stage::AwaitingNext { .. }) {
                if let Some(h) = w.record.as_mut().and_then(|r| r.history.last_mut()) {
                    h.reason = format!("{}; {msg}", h.reason);
                }
            } else {
                end_step(ctx, w, StepOutcome::Failed, msg, out);
            }
            start_step(ctx, w, ctx.ladder.len() - 1, a.step.is_disruptive(), inflight, out);
            return false;
        }
        let ls = &ctx.ladder[a.step_index.min(ctx.ladder.len() - 1)];
        match a.stage {
            Stage::Executing => match a.step {
                RemediationStep::Manual => {
                    let req = w.obs.operator_request.as_ref().filter(|r| r.action == OperatorAction::Resolve && r.at >= a.step_started_at);
                    let Some(req) = req else { return false };
                    if w.healthy_since(p, req.at) {
                        let msg = format!("resolved by {} at {}; the checks pass", req.by, req.at);
                        out.event(w.name(), EventKind::ResolvedByOperator, msg.clone());
                        end_step(ctx, w, StepOutcome::Recovered, msg, out);
                    } else {
                        out.hold(
                            w.name(),
                            Gate::AwaitingOperator,
                            format!("{} marked the node resolved at {}; waiting for the checks to pass on fresh data", req.by, req.at),
                        );
                    }
                    return false;
                }
                RemediationStep::Quarantine => {
                    if w.healthy_since(p, a.started_at) {
                        end_step(ctx, w, StepOutcome::Recovered, "recovered by itself while quarantined".into(), out);
                        return false;
                    }
                    match a.deadline {
                        Some(d) if now < d => {
                            out.wake_at(d);
                            return false;
                        }
                        _ => end_step(ctx, w, StepOutcome::Completed, "quarantine window over, node still unhealthy".into(), out),
                    }
                }
                step => {
                    let report = w.obs.step_report.as_ref().filter(|r| w.record.as_ref().is_some_and(|rec| rec.attempt == r.attempt));
                    if step == RemediationStep::Drain
                        && a.executed
                        && ls.completion == Completion::Reported
                        && blocked_drain(ctx, w, &a, inflight, out) != BlockedDrain::NotBlocked
                    {
                        return false;
                    }
                    let completed_at = match (report.map(|r| (r.outcome, r.at, r.message.clone())), ls.completion) {
                        (Some((ReportedOutcome::Failed, _, msg)), _) => {
                            end_step(ctx, w, StepOutcome::Failed, format!("executor reported failure: {msg}"), out);
                            continue;
                        }
                        (Some((ReportedOutcome::Succeeded, at, _)), Completion::Reported) if rebooted(&a, w.obs) => at,
                        (_, Completion::FixedWait) if a.deadline.is_some_and(|d| now >= d) => a.deadline.unwrap_or(now),
                        (_, Completion::Reported) if a.deadline.is_some_and(|d| now >= d) => {
                            let reason = if report.is_some_and(|r| r.outcome == ReportedOutcome::Succeeded) {
                                format!(
                                    "the executor reported success, but within {} the node did not come back Ready with a new boot ID (still {})",
                                    now.since(a.step_started_at),
                                    w.obs.boot_id.as_deref().unwrap_or("unknown")
                                )
                            } else if a.executed {
                                format!("no completion report within {}", now.since(a.step_started_at))
                            } else {
                                "monitor-only: not executed".into()
                            };
                            end_step(ctx, w, StepOutcome::TimedOut, reason, out);
                            continue;
                        }
                        _ => {
                            if let Some(d) = a.deadline {
                                out.wake_at(d);
                            }
                            return false;
                        }
                    };
                    if step.is_repair() {
                        let verify_from = completed_at + ls.settle;
                        let verify_deadline = verify_from + ls.verify_timeout;
                        if let Some(act) = w.record.as_mut().and_then(|r| r.active.as_mut()) {
                            act.stage = Stage::Verifying { completed_at, verify_from, verify_deadline };
                        }
                    } else {
                        end_step(ctx, w, StepOutcome::Completed, finished(w, step), out);
                    }
                }
            },
            Stage::Verifying { completed_at, verify_from, verify_deadline } => {
                if now < verify_from {
                    out.wake_at(verify_from);
                    return false;
                }
                if w.healthy_since(p, completed_at) {
                    end_step(ctx, w, StepOutcome::Recovered, "the checks pass again".into(), out);
                    return false;
                }
                if let Some(rule) = w.failing_since(p, completed_at) {
                    let why = describe(ctx, w, rule);
                    end_step(ctx, w, StepOutcome::Failed, format!("re-check failed: {why}"), out);
                    continue;
                }
                if now >= verify_deadline {
                    end_step(
                        ctx,
                        w,
                        StepOutcome::Failed,
                        format!("the checks did not confirm recovery within {} after settling", ls.verify_timeout),
                        out,
                    );
                    continue;
                }
                out.wake_at(verify_deadline);
                return false;
            }
            Stage::AwaitingNext { ended_at } => {
                let next = class::next_index(&ctx.ladder, a.step_index + 1, p.fault_classes.rung(a.fault_class), a.gpu.is_some());
                let step = ctx.ladder[next].step;
                // A quarantined node held back from its first disruptive step (a gate, a busy slot)
                // may heal meanwhile (a power blip): checks that pass on evidence newer than the
                // quarantine end the remediation instead of draining and rebooting a healthy node.
                // Not after a disruptive step: a repair whose re-check failed has shown the fault
                // is real, and one passing probe must not return the node to service.
                if !a.step.is_disruptive() && step != RemediationStep::Manual && w.healthy_since(p, ended_at) {
                    recovered_while_waiting(w, step, out);
                    return false;
                }
                if defer_new_slot && step.is_disruptive() && !a.step.is_disruptive() {
                    return true;
                }
                if step.is_disruptive()
                    && let Err((gate, msg)) = disruptive_gate(ctx, w.obs, a.step.is_disruptive(), gates, inflight, out)
                {
                    out.hold(w.name(), gate, format!("next step {step} waits: {msg}"));
                    return false;
                }
                // Loop on: a Manual step looks at once for a person's resolve request, as it will on
                // every later decision.
                start_step(ctx, w, next, a.step.is_disruptive(), inflight, out);
            }
        }
    }
    false
}

/// What [`blocked_drain`] made of a drain step.
#[derive(PartialEq)]
enum BlockedDrain {
    /// Not blocked (yet): the usual report and deadline handling applies.
    NotBlocked,
    /// Held or forced past its deadline: the step stays, nothing else happens now.
    Waiting,
    /// Ended and handed to a person.
    Escalated,
}

/// A drain that failed or is still unfinished at its deadline is blocked (PodDisruptionBudgets,
/// pods left to complete). It never simply turns into the next disruptive step: the policy's
/// `drain.whenBlocked` holds it (people told once), escalates it to a person, or (force) gives the
/// executor a second timeout to delete the pods past their budgets and report.
fn blocked_drain(ctx: &Ctx, w: &mut Work, a: &ActiveRemediation, inflight: &mut InFlight, out: &mut Out) -> BlockedDrain {
    let now = ctx.now;
    let report = w.obs.step_report.as_ref().filter(|r| w.record.as_ref().is_some_and(|rec| rec.attempt == r.attempt));
    let failed = report.is_some_and(|r| r.outcome == ReportedOutcome::Failed);
    let past_deadline = report.is_none() && a.deadline.is_some_and(|d| now >= d);
    if !failed && !past_deadline {
        return BlockedDrain::NotBlocked;
    }
    let attempt = w.record.as_ref().map_or(0, |r| r.attempt);
    let progress = w.obs.drain_progress.as_ref().filter(|p| p.attempt == attempt);
    let mut why = progress.map(|p| p.blocking(10)).unwrap_or_default().join("; ");
    if let Some(r) = report.filter(|_| failed) {
        why = if why.is_empty() { r.message.clone() } else { format!("{why} ({})", r.message) };
    }
    if why.is_empty() {
        why = "no completion report".into();
    }
    match ctx.policy.drain.when_blocked {
        WhenDrainBlocked::Hold => {
            if a.drain_held_at.is_none() {
                if let Some(act) = w.record.as_mut().and_then(|r| r.active.as_mut()) {
                    act.drain_held_at = Some(now);
                }
                let msg = format!(
                    "drain of node {} blocked after {}: {why}; holding the node cordoned (drain.whenBlocked: hold), evictions are retried and no later step runs until the pods have left",
                    w.obs.name,
                    now.since(a.step_started_at)
                );
                out.event(w.name(), EventKind::DrainHeld, msg);
            }
            BlockedDrain::Waiting
        }
        WhenDrainBlocked::Escalate if ctx.ladder.last().is_some_and(|l| l.step == RemediationStep::Manual) => {
            let msg = format!("drain blocked: {why}; escalated to a person (drain.whenBlocked: escalate)");
            end_step(ctx, w, StepOutcome::Failed, msg, out);
            start_step(ctx, w, ctx.ladder.len() - 1, true, inflight, out);
            BlockedDrain::Escalated
        }
        WhenDrainBlocked::Escalate => BlockedDrain::NotBlocked,
        WhenDrainBlocked::Force => {
            // The executor deletes what is left at the deadline and then reports; a second timeout
            // bounds the wait for that report.
            let ls = &ctx.ladder[a.step_index.min(ctx.ladder.len() - 1)];
            let class = ctx.policy.node_class(&w.obs.labels, has_gpus(&ctx.vendors, w.obs));
            match a.deadline.map(|d| d + ls.timeout_for(class)) {
                Some(second) if past_deadline && now < second => {
                    out.wake_at(second);
                    BlockedDrain::Waiting
                }
                _ => BlockedDrain::NotBlocked,
            }
        }
    }
}

/// The history's reason for a finished preparatory step; a forced drain says it was an override.
fn finished(w: &Work, step: RemediationStep) -> String {
    let attempt = w.record.as_ref().map_or(0, |r| r.attempt);
    let forced = w.obs.drain_progress.as_ref().is_some_and(|p| p.attempt == attempt && p.forced);
    if step == RemediationStep::Drain && forced {
        "drain finished; override: pods were deleted past their PodDisruptionBudgets (drain.whenBlocked: force)".into()
    } else {
        format!("{step} finished")
    }
}

/// The node left the policy (exclude label, selector change): stop managing it and lift our taints.
fn release(ctx: &Ctx, w: &mut Work, out: &mut Out) {
    end_step(ctx, w, StepOutcome::Ended, "node no longer selected by the policy (exclude label or selector change)".into(), out);
    out.event(w.name(), EventKind::NodeReleased, "nodemedic stopped managing this node; its repair taints are removed".into());
}

fn remember_gpu_failures(ctx: &Ctx, w: &mut Work) {
    for (i, rule) in ctx.policy.rules.iter().enumerate() {
        if rule.gpu_count.is_none() {
            continue;
        }
        let bad = w.evals[i].bad_now();
        let known = w.record.as_ref().is_some_and(|r| r.failing_since.contains_key(&rule.name));
        if bad && !known && w.active().is_none() {
            let name = w.obs.name.clone();
            w.record.get_or_insert_with(|| NodeRecord::new(&name)).failing_since.insert(rule.name.clone(), ctx.now);
        } else if !bad
            && known
            && let Some(r) = w.record.as_mut()
        {
            r.failing_since.remove(&rule.name);
        }
    }
}

fn reconcile_taints(ctx: &Ctx, w: &Work, breaker_open: bool, out: &mut Out) {
    let mut desired: Vec<&str> = Vec::new();
    if let Some(a) = w.active() {
        desired.push(&ctx.step_taints[a.step_index.min(ctx.step_taints.len() - 1)]);
    }
    let mut soft_changes = Vec::new();
    if w.selected {
        for (i, key) in ctx.soft_keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let present = w.obs.has_taint(key);
            let want = match (w.evals[i].verdict, w.evals[i].reason) {
                (Verdict::Firing { .. }, _) => present || !breaker_open,
                (_, Reason::CheckAbsent | Reason::ConditionAbsent | Reason::NotApplicable) => false,
                (Verdict::Ok, _) => false,
                // Failing but not yet often enough, recovering but not yet often enough, or unknown: keep as is.
                _ => present,
            };
            if want {
                desired.push(key);
            }
            if want != present {
                soft_changes.push((i, key.as_str(), want));
            }
        }
    }
    let add: Vec<String> = desired.iter().filter(|k| !w.obs.has_taint(k)).map(|k| k.to_string()).collect();
    let mut remove: Vec<String> = w
        .obs
        .taints
        .iter()
        .filter(|t| ctx.manages(&t.key) && !desired.contains(&t.key.as_str()))
        .filter(|t| w.selected || !ctx.soft_keys.iter().flatten().any(|k| *k == t.key))
        .map(|t| t.key.clone())
        .collect();
    remove.sort();
    remove.dedup();
    let mut why: Vec<String> = Vec::new();
    let step_taint = w.active().map(|a| (a, ctx.step_taints[a.step_index.min(ctx.step_taints.len() - 1)].as_str()));
    if let Some((a, key)) = step_taint
        && add.iter().any(|k| k == key)
    {
        why.push(format!("{key} shows remediation step {} (attempt {}): {}", a.step, w.record.as_ref().map_or(0, |r| r.attempt), a.reason));
    }
    let lifted: Vec<&str> = remove.iter().map(String::as_str).filter(|k| !ctx.soft_keys.iter().flatten().any(|s| s == k)).collect();
    if !lifted.is_empty() {
        let because = match (w.selected, step_taint) {
            (false, _) => "the node is no longer selected by the policy".to_string(),
            (true, Some((a, _))) => format!("the node moved on to step {}", a.step),
            (true, None) => "the remediation ended".to_string(),
        };
        why.push(format!("{} lifted: {because}", lifted.join(", ")));
    }
    for (i, key, want) in soft_changes {
        let rule = &ctx.policy.rules[i];
        let text = if want {
            format!("{}; tainted {key} (never escalates)", describe(ctx, w, i))
        } else {
            format!("rule `{}` {}; removed {key}", rule.name, w.evals[i].reason.as_str())
        };
        why.push(text.clone());
        out.event(w.name(), if want { EventKind::SoftTaintAdded } else { EventKind::SoftTaintRemoved }, text);
    }
    if !add.is_empty() || !remove.is_empty() {
        if why.is_empty() {
            why.push("taints brought in line with the node's record".into());
        }
        out.actions.push(Action::SetTaints { node: w.obs.name.clone(), add, remove, reason: why.join("; ") });
    }
}

/// Applies a decision to records and, unless monitor-only, to the observed nodes' taints: what the
/// controller's writes would produce. Used by the simulator and by tests.
pub fn apply(decision: &Decision, fleet: &mut [NodeObservation], records: &mut Records) {
    for c in &decision.record_changes {
        match c {
            RecordChange::Upsert(r) => {
                records.nodes.insert(r.node.clone(), r.clone());
            }
            RecordChange::Delete(n) => {
                records.nodes.remove(n);
            }
        }
    }
    if let Some(p) = &decision.policy_record {
        records.policy = p.clone();
    }
    let mut by_name: HashMap<&str, &Action> = HashMap::new();
    for a in &decision.actions {
        match a {
            Action::SetTaints { node, .. } => {
                by_name.insert(node.as_str(), a);
            }
            Action::SetOutOfService { node, present, .. } => {
                if let Some(n) = fleet.iter_mut().find(|n| n.name == *node) {
                    crate::fencing::apply_taint(n, *present);
                }
            }
            _ => {}
        }
    }
    if by_name.is_empty() {
        return;
    }
    for n in fleet.iter_mut() {
        if let Some(Action::SetTaints { add, remove, .. }) = by_name.get(n.name.as_str()) {
            n.taints.retain(|t| !remove.contains(&t.key));
            for k in add {
                if !n.has_taint(k) {
                    n.taints.push(crate::observe::Taint { key: k.clone(), value: None, effect: crate::observe::TaintEffect::NoSchedule });
                }
            }
        }
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
