//! Prometheus metrics of the controller (prometheus-client), refreshed from each decision.
//!
//! Gauges describe the fleet as of the last decision (checks by rule and reason, nodes by phase,
//! how long each node has been unhealthy, which gates hold); counters count what was done (steps
//! started and how they ended, reconcile errors). Per-node series are removed as soon as the node
//! is healthy again or deleted, so a cluster that churns nodes does not grow the scrape forever.
//!
//! The per-node series (`node_state`, `node_step_deadline_seconds`, `node_unhealthy_seconds`) exist
//! only for nodes on the ladder or waiting for a person: they are what the alerts and the dashboard's
//! problem-node panels read (`deploy/helm/nodemedic/files/`).

use k8s_openapi::api::core::v1::Node;
use nodemedic_core::engine::{Action, Decision, EventKind, Gate};
use nodemedic_core::record::{NodeRecord, Phase, Stage};
use nodemedic_core::{Records, Time};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

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
pub struct NodeStateLabels {
    pub policy: String,
    pub node: String,
    pub pool: String,
    pub phase: String,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStepLabels {
    pub policy: String,
    pub node: String,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: String,
    pub outcome: String,
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
    /// Per policy: each problem node's state labels and step-deadline labels set last time, and when
    /// it became unhealthy (for the time-to-repair figure once it recovers).
    states: BTreeMap<String, BTreeMap<String, ProblemNode>>,
}

/// The series a node on the ladder or in Manual has, and when it became unhealthy.
struct ProblemNode {
    state: NodeStateLabels,
    deadline: Option<NodeStepLabels>,
    unhealthy_since: Time,
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
    node_state: Family<NodeStateLabels, Gauge>,
    node_step_deadline: Family<NodeStepLabels, Gauge<f64, AtomicU64>>,
    time_to_quarantine: Family<PolicyLabels, Histogram, fn() -> Histogram>,
    time_to_repair: Family<PolicyLabels, Histogram, fn() -> Histogram>,
    deliveries: Family<DeliveryLabels, Counter>,
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
        let node_state = Family::<NodeStateLabels, Gauge>::default();
        registry.register(
            "node_state",
            "1 for each node on the ladder or waiting for a person, labelled with its pool, phase and current step; healthy nodes have no series",
            node_state.clone(),
        );
        let node_step_deadline = Family::<NodeStepLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "node_step_deadline_seconds",
            "Unix time by which the node's current step must end (its timeout, or the verify deadline once it completed)",
            node_step_deadline.clone(),
        );
        let time_to_quarantine = Family::<PolicyLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "time_to_quarantine_seconds",
            "From a node first seen unhealthy to its remediation starting (the first step taints it)",
            time_to_quarantine.clone(),
        );
        let time_to_repair = Family::<PolicyLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "time_to_repair_seconds",
            "From a node first seen unhealthy to the checks confirming it recovered",
            time_to_repair.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "notification_deliveries",
            "Notification delivery tries by channel and outcome (delivered, failed, gave_up)",
            deliveries.clone(),
        );
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
            node_state,
            node_step_deadline,
            time_to_quarantine,
            time_to_repair,
            deliveries,
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

    /// Counts one notification delivery try of a channel: `delivered`, `failed` (to be retried) or
    /// `gave_up` (the retries ran out).
    pub fn notification_delivery(&self, channel: &str, outcome: &str) {
        self.deliveries.get_or_create(&DeliveryLabels { channel: channel.into(), outcome: outcome.into() }).inc();
    }

    /// Refreshes every series of `policy` from a decision and the records it left behind. `pools`
    /// names the pool (the policy's node pool label) of nodes that have records.
    pub fn observe(&self, policy: &str, decision: &Decision, records: &Records, pools: &BTreeMap<String, String>, now: Time) {
        let Ok(mut seen) = self.seen.lock() else { return };
        self.observe_problem_nodes(&mut seen, policy, decision, records, pools, now);
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

    /// The per-node state and deadline series of nodes on the ladder or in Manual, and the
    /// time-to-quarantine and time-to-repair figures of the remediations that started or recovered.
    fn observe_problem_nodes(
        &self,
        seen: &mut Seen,
        policy: &str,
        decision: &Decision,
        records: &Records,
        pools: &BTreeMap<String, String>,
        now: Time,
    ) {
        let before = seen.states.remove(policy).unwrap_or_default();
        let by_policy = PolicyLabels { policy: policy.into() };
        for e in &decision.events {
            let Some(node) = e.node.as_deref() else { continue };
            match e.kind {
                EventKind::RemediationStarted => {
                    if let Some(a) = records.nodes.get(node).and_then(|r| r.active.as_ref()) {
                        self.time_to_quarantine.get_or_create(&by_policy).observe(a.started_at.since(a.unhealthy_since).as_secs_f64());
                    }
                }
                EventKind::Recovered => {
                    if let Some(p) = before.get(node) {
                        self.time_to_repair.get_or_create(&by_policy).observe(now.since(p.unhealthy_since).as_secs_f64());
                    }
                }
                _ => {}
            }
        }
        let mut states = BTreeMap::new();
        for (node, record) in records.nodes.iter().filter(|(_, r)| r.phase != Phase::Healthy) {
            let Some(active) = record.active.as_ref() else { continue };
            let step = active.step.to_string();
            let state = NodeStateLabels {
                policy: policy.into(),
                node: node.clone(),
                pool: pools.get(node).cloned().unwrap_or_default(),
                phase: record.phase.as_str().into(),
                step: step.clone(),
            };
            self.node_state.get_or_create(&state).set(1);
            let deadline = match &active.stage {
                Stage::Verifying { verify_deadline, .. } => Some(*verify_deadline),
                Stage::Executing => active.deadline,
                Stage::AwaitingNext { .. } => None,
            };
            let deadline = deadline.map(|d| {
                let labels = NodeStepLabels { policy: policy.into(), node: node.clone(), step };
                self.node_step_deadline.get_or_create(&labels).set(d.0 as f64 / 1000.0);
                labels
            });
            states.insert(node.clone(), ProblemNode { state, deadline, unhealthy_since: active.unhealthy_since });
        }
        for (node, old) in &before {
            let current = states.get(node);
            if current.is_none_or(|c| c.state != old.state) {
                self.node_state.remove(&old.state);
            }
            if let Some(old_deadline) = &old.deadline
                && current.is_none_or(|c| c.deadline.as_ref() != Some(old_deadline))
            {
                self.node_step_deadline.remove(old_deadline);
            }
        }
        seen.states.insert(policy.into(), states);
    }

    /// Drops every series of a policy that no longer exists.
    pub fn forget_policy(&self, policy: &str) {
        let Ok(mut seen) = self.seen.lock() else { return };
        for problem in seen.states.remove(policy).into_iter().flat_map(BTreeMap::into_values) {
            self.node_state.remove(&problem.state);
            if let Some(labels) = problem.deadline {
                self.node_step_deadline.remove(&labels);
            }
        }
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

/// Buckets from 5 s to about 45 h: quarantine takes seconds to minutes, a repair up to a reimage or
/// a replacement.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(5.0, 3.0, 10))
}

/// The pool (the value of `pool_label`) of each node on the ladder or in Manual, for the per-node
/// series. A fleet with no such node costs one pass over the records, not over the nodes.
pub fn pools_of(snapshot: &[Arc<Node>], pool_label: &str, records: &Records) -> BTreeMap<String, String> {
    let problem = |name: &str| records.nodes.get(name).is_some_and(|r| r.phase != Phase::Healthy);
    if !records.nodes.values().any(|r| r.phase != Phase::Healthy) {
        return BTreeMap::new();
    }
    snapshot
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            if !problem(name) {
                return None;
            }
            let pool = n.metadata.labels.as_ref().and_then(|l| l.get(pool_label)).cloned().unwrap_or_default();
            Some((name.to_string(), pool))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use nodemedic_core::engine::{Event, Summary};
    use nodemedic_core::record::ActiveRemediation;
    use nodemedic_core::{Duration, RemediationStep};

    fn rebooting(unhealthy_since: Time, deadline: Time) -> NodeRecord {
        let active = ActiveRemediation {
            trigger: "gpu".into(),
            reason: "XidCritical".into(),
            started_at: unhealthy_since,
            unhealthy_since,
            step_index: 1,
            step: RemediationStep::Reboot,
            step_started_at: unhealthy_since,
            deadline: Some(deadline),
            stage: Stage::Executing,
            executed: true,
            boot_id_at_start: None,
            notified_at: None,
            unobserved: nodemedic_core::Duration::ZERO,
            unobserved_until: None,
            drain_held_at: None,
            fault_class: None,
            gpu: None,
        };
        NodeRecord { node: "gpu-001".into(), phase: Phase::Remediating, active: Some(active), ..NodeRecord::default() }
    }

    fn event(kind: EventKind) -> Event {
        Event { node: Some("gpu-001".into()), kind, message: String::new() }
    }

    #[test]
    fn a_node_on_the_ladder_has_state_and_deadline_series_that_go_away_when_it_recovers() {
        let m = Metrics::new();
        let t0 = Time::from_millis(1_800_000_000_000);
        let records =
            Records { nodes: BTreeMap::from([("gpu-001".into(), rebooting(t0, t0 + Duration::from_secs(600)))]), ..Records::default() };
        let pools = BTreeMap::from([("gpu-001".to_string(), "h100".to_string())]);
        let started = Decision { events: vec![event(EventKind::RemediationStarted)], ..Decision::default() };
        m.observe("gpu", &started, &records, &pools, t0);
        let text = m.encode();
        assert!(
            text.contains(r#"nodemedic_node_state{policy="gpu",node="gpu-001",pool="h100",phase="Remediating",step="reboot"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"nodemedic_node_step_deadline_seconds{policy="gpu",node="gpu-001",step="reboot"} 1800000600.0"#), "{text}");
        assert!(text.contains(r#"nodemedic_time_to_quarantine_seconds_count{policy="gpu"} 1"#), "{text}");

        let recovered = Decision { events: vec![event(EventKind::Recovered)], summary: Summary::default(), ..Decision::default() };
        m.observe("gpu", &recovered, &Records::default(), &BTreeMap::new(), t0 + Duration::from_secs(300));
        let text = m.encode();
        assert!(!text.contains("gpu-001"), "a recovered node leaves no per-node series:\n{text}");
        assert!(text.contains(r#"nodemedic_time_to_repair_seconds_sum{policy="gpu"} 300.0"#), "{text}");
    }

    #[test]
    fn a_deleted_policy_takes_its_problem_nodes_series_with_it() {
        let m = Metrics::new();
        let t0 = Time::from_millis(1_800_000_000_000);
        let records = Records { nodes: BTreeMap::from([("gpu-001".into(), rebooting(t0, t0))]), ..Records::default() };
        m.observe("gpu", &Decision::default(), &records, &BTreeMap::new(), t0);
        assert!(m.encode().contains("gpu-001"));
        m.forget_policy("gpu");
        assert!(!m.encode().contains("gpu-001"), "{}", m.encode());
    }

    #[test]
    fn only_problem_nodes_are_looked_up_for_their_pool() -> Result<(), serde_json::Error> {
        let node = |name: &str, pool: &str| -> Result<Arc<Node>, serde_json::Error> {
            Ok(Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"pool": pool}}}))?))
        };
        let snapshot = vec![node("gpu-000", "a")?, node("gpu-001", "b")?, node("gpu-002", "b")?];
        let t0 = Time::from_millis(0);
        let healthy = NodeRecord { node: "gpu-002".into(), ..NodeRecord::default() };
        let records =
            Records { nodes: BTreeMap::from([("gpu-001".into(), rebooting(t0, t0)), ("gpu-002".into(), healthy)]), ..Records::default() };
        assert_eq!(pools_of(&snapshot, "pool", &records), BTreeMap::from([("gpu-001".to_string(), "b".to_string())]));
        Ok(())
    }

    #[test]
    fn delivery_tries_are_counted_by_channel_and_outcome() {
        let m = Metrics::new();
        m.notification_delivery("email", "failed");
        m.notification_delivery("email", "failed");
        m.notification_delivery("email", "delivered");
        let text = m.encode();
        assert!(text.contains(r#"nodemedic_notification_deliveries_total{channel="email",outcome="failed"} 2"#), "{text}");
        assert!(text.contains(r#"nodemedic_notification_deliveries_total{channel="email",outcome="delivered"} 1"#), "{text}");
    }
}
