//! Builders for observed nodes and a decide-then-apply harness. Pure; used by tests, benchmarks and
//! the simulator so they all drive the engine the same way.

use crate::engine::{Decision, apply, decide};
use crate::observe::{CheckObservation, NodeCondition, NodeObservation, ReportedOutcome, StepReport};
use crate::policy::{ConditionStatus, Policy};
use crate::record::Records;
use crate::time::{Duration, Time};

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
        });
    }
}

/// Records one probe run the way the agent counts them.
pub fn probe(n: &mut NodeObservation, check: &str, passed: bool, at: Time) {
    let c = match n.checks.iter_mut().position(|c| c.name == check) {
        Some(i) => &mut n.checks[i],
        None => {
            n.checks.push(CheckObservation {
                name: check.into(),
                consecutive_failures: 0,
                consecutive_passes: 0,
                last_run: at,
                failing_since: None,
                message: String::new(),
            });
            let last = n.checks.len() - 1;
            &mut n.checks[last]
        }
    };
    c.last_run = at;
    if passed {
        c.consecutive_passes += 1;
        c.consecutive_failures = 0;
        c.failing_since = None;
        c.message = format!("{check} ok");
    } else {
        if c.consecutive_failures == 0 {
            c.failing_since = Some(at);
        }
        c.consecutive_failures += 1;
        c.consecutive_passes = 0;
        c.message = format!("{check} failed");
    }
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
}

impl Harness {
    pub fn new(policy: Policy, fleet: Vec<NodeObservation>) -> Self {
        Harness { policy, fleet, records: Records::default(), now: EPOCH }
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
    pub fn probe(&mut self, name: &str, check: &str, passed: bool) {
        let now = self.now;
        probe(self.node(name), check, passed, now);
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
