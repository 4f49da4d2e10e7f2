//! Builders for observed nodes and a decide-then-apply harness. Pure; used by tests, benchmarks and
//! the simulator so they all drive the engine the same way.

use crate::class::FaultClass;
use crate::engine::{Decision, apply, decide};
use crate::observe::{NodeCondition, NodeObservation, ReportedOutcome, StepReport};
use crate::policy::{ConditionStatus, Policy};
use crate::probe::{ProbeFamily, Published, RunOutcome, ThresholdMachine, Thresholds};
use crate::record::Records;
use crate::time::{Duration, Time};
use std::collections::BTreeMap;

/// 2026-11-16T00:00:00Z, a Monday: a fixed origin so tests read the same every day.
pub const EPOCH: Time = Time(1_794_787_200_000);

/// A healthy worker: Ready=True since `at`, in `pool`.
pub fn node(name: &str, pool: &str, at: Time) -> NodeObservation {
    let mut n = NodeObservation::new(name);
    n.labels.insert(crate::policy::DEFAULT_NODE_POOL_LABEL.into(), pool.into());
    n.conditions.push(NodeCondition {
        type_: "Ready".into(),
        status: ConditionStatus::True,
        reason: "KubeletReady".into(),
        message: String::new(),
        last_transition_time: at,
        last_heartbeat_time: Some(at),
        gpu: None,
    });
    n
}

/// A healthy worker with `gpus` NVIDIA GPUs (count label and allocatable agree).
pub fn gpu_node(name: &str, pool: &str, gpus: i64, at: Time) -> NodeObservation {
    let mut n = node(name, pool, at);
    n.labels.insert("nvidia.com/gpu.count".into(), gpus.to_string());
    n.allocatable.insert("nvidia.com/gpu".into(), gpus);
    n
}

/// Names `gpu` as the GPU the node's `type_` condition is about, as the adapter reads it from the
/// agent's annotation.
pub fn set_condition_gpu(n: &mut NodeObservation, type_: &str, gpu: Option<crate::gpu::GpuDevice>) {
    if let Some(c) = n.conditions.iter_mut().find(|c| c.type_ == type_) {
        c.gpu = gpu;
    }
}

/// Sets (or replaces) a condition; the transition time moves only when the status changes.
pub fn set_condition(n: &mut NodeObservation, type_: &str, status: ConditionStatus, reason: &str, at: Time) {
    if let Some(c) = n.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = at;
        }
        c.status = status;
        c.reason = reason.into();
        c.last_heartbeat_time = Some(at);
    } else {
        n.conditions.push(NodeCondition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: at,
            last_heartbeat_time: Some(at),
            gpu: None,
        });
    }
}

/// The condition type a test's check name is published under: a probe family's, else a plugin's own.
pub fn check_condition_type(check: &str) -> &str {
    match ProbeFamily::from_check_name(check) {
        Some(family) => family.condition_type(),
        None => check,
    }
}

/// Publishes what the agent's threshold machine lets it publish for `check` after a run at `at`, as the
/// agent writes its condition: the transition moves (to when the machine's verdict began) only when the
/// status changes, the heartbeat always. Nothing is written before the machine's first verdict.
pub fn publish(n: &mut NodeObservation, check: &str, published: Published, at: Time) {
    publish_with_class(n, check, published, at, None);
}

/// [`publish`], with a failure's reason carrying the fault class the agent's catalog gave it.
pub fn publish_with_class(n: &mut NodeObservation, check: &str, published: Published, at: Time, class: Option<FaultClass>) {
    let (Some(status), Some(since)) = (published.condition_status(), published.since()) else {
        return;
    };
    let failed = class.and_then(FaultClass::condition_reason).unwrap_or("ProbeFailed");
    let (reason, message) = match published {
        Published::Unhealthy { .. } => (failed, format!("{check} failed")),
        Published::Healthy { .. } => ("ProbePassed", format!("{check} ok")),
        Published::Unknown { .. } | Published::NotYetRun => ("ProbeUnknown", format!("{check} unknown")),
    };
    let type_ = check_condition_type(check).to_string();
    set_condition(n, &type_, status, reason, since);
    if let Some(c) = n.conditions.iter_mut().find(|c| c.type_ == type_) {
        c.message = message;
        c.last_heartbeat_time = Some(at);
    }
}

/// One probe run published at once, as an agent with thresholds of one run publishes it.
pub fn probe(n: &mut NodeObservation, check: &str, passed: bool, at: Time) {
    let mut machine = ThresholdMachine::new(Thresholds::new(1, 1));
    machine.record(if passed { RunOutcome::Passed } else { RunOutcome::Failed }, at);
    publish(n, check, machine.published(), at);
}

pub fn report(n: &mut NodeObservation, attempt: u32, outcome: ReportedOutcome, at: Time) {
    n.step_report = Some(StepReport { attempt, outcome, at, message: format!("{outcome:?}") });
}

/// A fleet, its records and a clock, driven through decide → apply.
pub struct Harness {
    pub policy: Policy,
    pub fleet: Vec<NodeObservation>,
    pub records: Records,
    pub now: Time,
    /// The simulated agents' thresholds for every check (the agent's defaults unless a test sets them).
    pub thresholds: Thresholds,
    /// One threshold machine per (node, check), as each node's agent keeps them.
    pub agents: BTreeMap<(String, String), ThresholdMachine>,
}

impl Harness {
    pub fn new(policy: Policy, fleet: Vec<NodeObservation>) -> Self {
        Harness { policy, fleet, records: Records::default(), now: EPOCH, thresholds: Thresholds::AGENT_DEFAULT, agents: BTreeMap::new() }
    }
    /// One 8-GPU node `gpu-1` (boot ID `boot-1`) whose agent, publishing after one run, has just failed
    /// the `gpu` check: the start of most ladder tests.
    pub fn one_failing_gpu_node(policy: Policy) -> Self {
        let mut h = Harness::new(policy, vec![gpu_node("gpu-1", "a", 8, EPOCH)]).with_thresholds(1, 1);
        h.node("gpu-1").boot_id = Some("boot-1".into());
        h.probe("gpu-1", "gpu", false);
        h
    }
    /// The same harness with agents that publish after these thresholds (their probe schedules').
    pub fn with_thresholds(mut self, failures_before_unhealthy: u32, passes_before_healthy: u32) -> Self {
        self.thresholds = Thresholds::new(failures_before_unhealthy, passes_before_healthy);
        self
    }
    pub fn node(&mut self, name: &str) -> &mut NodeObservation {
        match self.fleet.iter().position(|n| n.name == name) {
            Some(i) => &mut self.fleet[i],
            None => panic!("no node {name} in the harness"),
        }
    }
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
    }
    /// Decides at the current time and applies the result.
    pub fn decide(&mut self) -> Decision {
        let d = decide(&self.policy, &self.fleet, &self.records, self.now);
        apply(&d, &mut self.fleet, &mut self.records);
        d
    }
    /// One probe run on `name`'s agent: its threshold machine decides what is published.
    pub fn probe(&mut self, name: &str, check: &str, passed: bool) {
        let now = self.now;
        let thresholds = self.thresholds;
        let machine = self.agents.entry((name.to_string(), check.to_string())).or_insert_with(|| ThresholdMachine::new(thresholds));
        machine.record(if passed { RunOutcome::Passed } else { RunOutcome::Failed }, now);
        let published = machine.published();
        publish(self.node(name), check, published, now);
    }
    /// The agent on `name` restarted (a reboot): its machines start again from nothing.
    pub fn restart_agent(&mut self, name: &str) {
        self.agents.retain(|(node, _), _| node != name);
    }
    /// Where `name`'s active remediation stands, if one is active.
    pub fn stage(&self, name: &str) -> Option<crate::record::Stage> {
        self.records.nodes.get(name).and_then(|r| r.active.as_ref()).map(|a| a.stage.clone())
    }
    pub fn attempt(&self, name: &str) -> u32 {
        self.records.nodes.get(name).map_or(0, |r| r.attempt)
    }
    pub fn report(&mut self, name: &str, outcome: ReportedOutcome) {
        let (attempt, now) = (self.attempt(name), self.now);
        report(self.node(name), attempt, outcome, now);
    }
    pub fn taints(&self, name: &str) -> Vec<String> {
        let mut keys: Vec<String> =
            self.fleet.iter().filter(|n| n.name == name).flat_map(|n| n.taints.iter().map(|t| t.key.clone())).collect();
        keys.sort();
        keys
    }
}
