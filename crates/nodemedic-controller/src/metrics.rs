//! Prometheus metrics of the controller (prometheus-client), refreshed from each decision.
//!
//! Gauges describe the fleet as of the last decision (checks by rule and reason, nodes by phase,
//! how long each node has been unhealthy, which gates hold); counters count what was done (steps
//! started and how they ended, reconcile errors). Per-node series are removed as soon as the node
//! is healthy again or deleted, so a cluster that churns nodes does not grow the scrape forever.

use nodemedic_core::engine::{Action, Decision, EventKind, Gate};
use nodemedic_core::record::{NodeRecord, Phase};
use nodemedic_core::{Records, Time};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub policy: String,
    pub rule: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub policy: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub policy: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub policy: String,
    pub gate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub policy: String,
    pub step: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

/// Label values set last time, per policy, so vanished ones can be removed.
#[derive(Default)]
struct Seen {
    rules: BTreeMap<String, BTreeSet<(String, String)>>,
    nodes: BTreeMap<String, BTreeSet<String>>,
    gates: BTreeMap<String, BTreeSet<String>>,
    holds: BTreeMap<String, BTreeSet<(String, Gate)>>,
}

pub struct Metrics {
    registry: Registry,
    checks: Family<RuleLabels, Gauge>,
    nodes_by_phase: Family<PhaseLabels, Gauge>,
    node_unhealthy_seconds: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    gate_holds: Family<GateLabels, Gauge>,
    gate_holds_total: Family<GateLabels, Counter>,
    actions_total: Family<StepLabels, Counter>,
    breaker_open: Family<PolicyLabels, Gauge>,
    leader: Gauge,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_seconds: Histogram,
    seen: Mutex<Seen>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nodemedic");
        let checks = Family::<RuleLabels, Gauge>::default();
        registry.register("checks", "Selected nodes by rule and the reason of its verdict, as of the last decision", checks.clone());
        let nodes_by_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register("nodes", "Selected nodes by phase (Healthy, Unhealthy, Unknown, Remediating, Manual)", nodes_by_phase.clone());
        let node_unhealthy_seconds = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "node_unhealthy_seconds",
            "How long a node in remediation has been unhealthy; the series goes away when it recovers or is deleted",
            node_unhealthy_seconds.clone(),
        );
        let gate_holds = Family::<GateLabels, Gauge>::default();
        registry.register("gate_holds", "Nodes a safety gate is holding back right now, by gate", gate_holds.clone());
        let gate_holds_total = Family::<GateLabels, Counter>::default();
        registry.register("gate_hold_starts", "Times a gate started holding a node back, by gate", gate_holds_total.clone());
        let actions_total = Family::<StepLabels, Counter>::default();
        registry.register(
            "remediation_actions",
            "Remediation steps by step and outcome (started, would_start in monitor-only, succeeded, failed, timed_out, executor_error)",
            actions_total.clone(),
        );
        let breaker_open = Family::<PolicyLabels, Gauge>::default();
        registry.register("circuit_breaker_open", "1 while the policy's circuit breaker is open", breaker_open.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease and may write", leader.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register("reconcile_errors", "Failed reconciles by error kind", reconcile_errors.clone());
        let reconcile_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register("reconcile_duration_seconds", "Time for one reconcile of one policy", reconcile_seconds.clone());
        Metrics {
            registry,
            checks,
            nodes_by_phase,
            node_unhealthy_seconds,
            gate_holds,
            gate_holds_total,
            actions_total,
            breaker_open,
            leader,
            reconcile_errors,
            reconcile_seconds,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The text exposition format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn reconcile_error(&self, label: &str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { error: label.to_string() }).inc();
    }

    pub fn reconcile_took(&self, seconds: f64) {
        self.reconcile_seconds.observe(seconds);
    }

    pub fn executor_error(&self, policy: &str, step: &str) {
        self.actions_total.get_or_create(&StepLabels { policy: policy.into(), step: step.into(), outcome: "executor_error".into() }).inc();
    }

    /// Refreshes every series of `policy` from a decision and the records it left behind.
    pub fn observe(&self, policy: &str, decision: &Decision, records: &Records, now: Time) {
        let Ok(mut seen) = self.seen.lock() else { return };
        let sum = &decision.summary;

        let rules: BTreeSet<(String, String)> = sum.rule_reasons.iter().map(|(r, reason, _)| (r.clone(), reason.to_string())).collect();
        for (rule, reason) in seen.rules.get(policy).into_iter().flatten().filter(|k| !rules.contains(k)) {
            self.checks.remove(&RuleLabels { policy: policy.into(), rule: rule.clone(), reason: reason.clone() });
        }
        for (rule, reason, n) in &sum.rule_reasons {
            self.checks
                .get_or_create(&RuleLabels { policy: policy.into(), rule: rule.clone(), reason: reason.to_string() })
                .set(i64::from(*n));
        }
        seen.rules.insert(policy.into(), rules);

        for (phase, n) in [
            ("Healthy", sum.healthy),
            ("Unhealthy", sum.unhealthy),
            ("Unknown", sum.unknown),
            ("Remediating", sum.remediating),
            ("Manual", sum.manual),
        ] {
            self.nodes_by_phase.get_or_create(&PhaseLabels { policy: policy.into(), phase: phase.into() }).set(n as i64);
        }
        self.breaker_open.get_or_create(&PolicyLabels { policy: policy.into() }).set(i64::from(sum.breaker_open));

        let mut unhealthy = BTreeSet::new();
        for (node, record) in &records.nodes {
            if let Some(since) = unhealthy_since(record) {
                let secs = now.since(since).0 as f64 / 1000.0;
                self.node_unhealthy_seconds.get_or_create(&NodeLabels { policy: policy.into(), node: node.clone() }).set(secs);
                unhealthy.insert(node.clone());
            }
        }
        for node in seen.nodes.get(policy).into_iter().flatten().filter(|n| !unhealthy.contains(*n)) {
            self.node_unhealthy_seconds.remove(&NodeLabels { policy: policy.into(), node: node.clone() });
        }
        seen.nodes.insert(policy.into(), unhealthy);

        let mut by_gate: BTreeMap<String, i64> = BTreeMap::new();
        let holds: BTreeSet<(String, Gate)> = decision.holds.iter().map(|h| (h.node.clone(), h.gate)).collect();
        for (node, gate) in &holds {
            *by_gate.entry(gate.as_str().to_string()).or_default() += 1;
            if !seen.holds.get(policy).is_some_and(|s| s.contains(&(node.clone(), *gate))) {
                self.gate_holds_total.get_or_create(&GateLabels { policy: policy.into(), gate: gate.as_str().into() }).inc();
            }
        }
        for gate in seen.gates.get(policy).into_iter().flatten().filter(|g| !by_gate.contains_key(*g)) {
            self.gate_holds.remove(&GateLabels { policy: policy.into(), gate: gate.clone() });
        }
        for (gate, n) in &by_gate {
            self.gate_holds.get_or_create(&GateLabels { policy: policy.into(), gate: gate.clone() }).set(*n);
        }
        seen.gates.insert(policy.into(), by_gate.into_keys().collect());
        seen.holds.insert(policy.into(), holds);

        for (action, outcome) in
            decision.actions.iter().map(|a| (a, "started")).chain(decision.would_execute.iter().map(|a| (a, "would_start")))
        {
            if let Action::Execute { step, .. } = action {
                self.actions_total
                    .get_or_create(&StepLabels { policy: policy.into(), step: step.to_string(), outcome: outcome.into() })
                    .inc();
            }
        }
        for e in &decision.events {
            let outcome = match e.kind {
                EventKind::StepSucceeded => "succeeded",
                EventKind::StepFailed => "failed",
                EventKind::StepTimedOut => "timed_out",
                _ => continue,
            };
            let step = step_of(e.node.as_deref(), records).unwrap_or_else(|| "unknown".into());
            self.actions_total.get_or_create(&StepLabels { policy: policy.into(), step, outcome: outcome.into() }).inc();
        }
    }

    /// Drops every series of a policy that no longer exists.
    pub fn forget_policy(&self, policy: &str) {
        let Ok(mut seen) = self.seen.lock() else { return };
        for (rule, reason) in seen.rules.remove(policy).into_iter().flatten() {
            self.checks.remove(&RuleLabels { policy: policy.into(), rule, reason });
        }
        for node in seen.nodes.remove(policy).into_iter().flatten() {
            self.node_unhealthy_seconds.remove(&NodeLabels { policy: policy.into(), node });
        }
        for gate in seen.gates.remove(policy).into_iter().flatten() {
            self.gate_holds.remove(&GateLabels { policy: policy.into(), gate });
        }
        seen.holds.remove(policy);
        for phase in ["Healthy", "Unhealthy", "Unknown", "Remediating", "Manual"] {
            self.nodes_by_phase.remove(&PhaseLabels { policy: policy.into(), phase: phase.into() });
        }
        self.breaker_open.remove(&PolicyLabels { policy: policy.into() });
    }
}

fn unhealthy_since(record: &NodeRecord) -> Option<Time> {
    if record.phase == Phase::Healthy {
        return None;
    }
    record.active.as_ref().map(|a| a.unhealthy_since)
}

/// The step an event was about: the last ended step in the record after the decision.
fn step_of(node: Option<&str>, records: &Records) -> Option<String> {
    let record = records.nodes.get(node?)?;
    record.history.last().map(|h| h.step.to_string())
}
