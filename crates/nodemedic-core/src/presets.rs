//! Built-in policies: the behaviour of each seed as a nodemedic policy (for `simulate --compare` and
//! as starting points), and nodemedic's recommended policy.

use crate::policy::*;
use crate::probe::ProbeFamily;
use crate::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
use crate::time::Duration;
use std::collections::BTreeMap;

fn rule_condition(name: &str, type_: &str, status: ConditionStatus, duration: Duration) -> Rule {
    Rule {
        name: name.into(),
        condition: Some(ConditionMatch { type_: type_.into(), status, only_with_reasons: vec![] }),
        gpu_count: None,
        check: None,
        duration,
        stale_after: None,
        effect: RuleEffect::default(),
    }
}

fn rule_check(name: &str, family: crate::probe::ProbeFamily, stale_after: Option<Duration>) -> Rule {
    Rule {
        name: name.into(),
        condition: None,
        gpu_count: None,
        check: Some(CheckMatch::family(family)),
        duration: Duration::ZERO,
        stale_after,
        effect: RuleEffect::default(),
    }
}

fn rule_gpu_count(duration: Duration) -> Rule {
    Rule {
        name: "gpu-count".into(),
        condition: None,
        gpu_count: Some(GpuCountMatch::default()),
        check: None,
        duration,
        stale_after: None,
        effect: RuleEffect::default(),
    }
}

fn soft(mut r: Rule, taint: &str) -> Rule {
    r.effect.taint = Some(taint.into());
    r
}

fn step(step: RemediationStep, timeout: Duration) -> LadderStep {
    LadderStep::new(step, timeout)
}

fn base(rules: Vec<Rule>, ladder: Vec<LadderStep>) -> Policy {
    Policy {
        selector: LabelSelector::default(),
        node_pools: vec![],
        node_pool_label: DEFAULT_NODE_POOL_LABEL.into(),
        exclude_label: DEFAULT_EXCLUDE_LABEL.into(),
        node_role: NodeRole::Worker,
        node_classes: vec![],
        rules,
        ladder,
        // The seeds' designs know nothing of fault classes; `recommended` takes the defaults.
        fault_classes: crate::class::FaultClassRungs::class_blind(),
        taint_prefix: DEFAULT_TAINT_PREFIX.into(),
        gates: Gates::default(),
        monitor_only: true,
        pause_requests: vec![],
        drain: Default::default(),
    }
}

/// Seed 000 (AMD OSSCI): GPU and network checks every 30 s; three GPU failures taint `repair-reboot`;
/// reboot and wait 5 minutes, re-check; fail → `repair-reimage`, reimage, reboot, wait 5 minutes,
/// re-check; fail → `repair-manual` and an email. Three network failures taint `slow-network` until the
/// network passes again. The run counts are the agent's thresholds (see [`crate::probe`]). Bare taint
/// keys, no gates.
pub fn seed000() -> Policy {
    let mut reboot = step(RemediationStep::Reboot, Duration::from_mins(30));
    reboot.settle = Duration::from_mins(5);
    reboot.verify_timeout = Duration::from_mins(2);
    let mut reimage = step(RemediationStep::Reimage, Duration::from_mins(90));
    reimage.settle = Duration::from_mins(5);
    reimage.verify_timeout = Duration::from_mins(2);
    let mut p = base(
        vec![rule_check("gpu", ProbeFamily::Gpu, None), soft(rule_check("network", ProbeFamily::Network, None), "slow-network")],
        vec![reboot, reimage, step(RemediationStep::Manual, Duration::ZERO)],
    );
    p.taint_prefix = String::new();
    p
}

/// Seed 003 (Civo node-recovery agent): per-checker thresholds (Ready 5 min, GPU count 10 min,
/// DiskPressure 30 min, Cilium 10 min), then a reboot with a fixed wait of 10 min (40 min on GPU
/// nodes) before re-checking. GPU nodes are only ever rebooted; the seed retries indefinitely, modelled
/// as three reboots before a person. Monitor-only by default.
pub fn seed003() -> Policy {
    let mut reboot = step(RemediationStep::Reboot, Duration::from_mins(10));
    reboot.completion = Completion::FixedWait;
    reboot.timeout_by_class = BTreeMap::from([(GPU_NODE_CLASS.to_string(), Duration::from_mins(40))]);
    // The seed re-reads the conditions once its wait is over. The engine wants evidence newer than
    // the wait, and the kubelet re-posts unchanged conditions every 5 minutes: a shorter window
    // would fail most re-checks of a node that did recover.
    reboot.verify_timeout = Duration::from_mins(5);
    let mut cilium = rule_condition("cilium", "NetworkUnavailable", ConditionStatus::True, Duration::from_mins(10));
    if let Some(c) = cilium.condition.as_mut() {
        // Cilium owns NetworkUnavailable with these two reasons: False/CiliumIsUp while its agent
        // runs, True/CiliumIsDown when the agent goes away. Seed 003 keys on CiliumIsUp to tell a
        // Cilium node from another CNI's; CiliumIsDown must count too, or the rule could never fire.
        c.only_with_reasons = vec!["CiliumIsUp".into(), "CiliumIsDown".into()];
    }
    base(
        vec![
            rule_condition("node-ready-false", "Ready", ConditionStatus::False, Duration::from_mins(5)),
            rule_condition("node-ready-unknown", "Ready", ConditionStatus::Unknown, Duration::from_mins(5)),
            rule_gpu_count(Duration::from_mins(10)),
            rule_condition("disk-pressure", "DiskPressure", ConditionStatus::True, Duration::from_mins(30)),
            cilium,
        ],
        vec![reboot.clone(), reboot.clone(), reboot, step(RemediationStep::Manual, Duration::ZERO)],
    )
}

/// Seed 004 (medik8s Node Health Check with poison pill): worker nodes, Ready False or Unknown for
/// 300 s, minHealthy 51 %, remediation by reboot; what a reboot does not fix is left to a person.
pub fn seed004() -> Policy {
    let mut p = base(
        vec![
            rule_condition("ready-false", "Ready", ConditionStatus::False, Duration::from_secs(300)),
            rule_condition("ready-unknown", "Ready", ConditionStatus::Unknown, Duration::from_secs(300)),
        ],
        vec![step(RemediationStep::Reboot, Duration::from_mins(15)), step(RemediationStep::Manual, Duration::ZERO)],
    );
    p.selector = LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: "node-role.kubernetes.io/worker".into(),
            operator: SelectorOperator::Exists,
            values: vec![],
        }],
    };
    p.node_role = NodeRole::Any;
    p.gates.min_healthy = Some(IntOrPercent::Percent(51));
    p
}

/// nodemedic's recommended policy for GPU workers: agent checks with staleness, the GPU count rule,
/// node readiness, a slow-network soft taint; quarantine → drain → reboot → reimage → replace →
/// manual, completion proven by reports rather than fixed sleeps; every safety gate on.
pub fn recommended() -> Policy {
    let stale = Some(Duration::from_mins(5));
    let mut reboot = step(RemediationStep::Reboot, Duration::from_mins(15));
    reboot.timeout_by_class = BTreeMap::from([(GPU_NODE_CLASS.to_string(), Duration::from_mins(40))]);
    reboot.settle = Duration::from_mins(2);
    let mut reimage = step(RemediationStep::Reimage, Duration::from_mins(60));
    reimage.timeout_by_class = BTreeMap::from([(GPU_NODE_CLASS.to_string(), Duration::from_mins(90))]);
    reimage.settle = Duration::from_mins(2);
    let mut replace = step(RemediationStep::Replace, Duration::from_days(7));
    replace.settle = Duration::from_mins(2);
    replace.verify_timeout = Duration::from_mins(30);
    let mut p = base(
        vec![
            rule_condition("ready-false", "Ready", ConditionStatus::False, Duration::from_mins(5)),
            rule_condition("ready-unknown", "Ready", ConditionStatus::Unknown, Duration::from_mins(5)),
            rule_check("gpu", ProbeFamily::Gpu, stale),
            rule_gpu_count(Duration::from_mins(2)),
            rule_condition("disk-pressure", "DiskPressure", ConditionStatus::True, Duration::from_mins(30)),
            soft(rule_check("network", ProbeFamily::Network, stale), "slow-network"),
        ],
        vec![
            step(RemediationStep::Quarantine, Duration::ZERO),
            step(RemediationStep::Drain, Duration::from_mins(10)),
            reboot,
            reimage,
            replace,
            step(RemediationStep::Manual, Duration::ZERO),
        ],
    );
    p.gates = Gates {
        min_healthy: Some(IntOrPercent::Percent(80)),
        max_unhealthy: None,
        max_concurrent: Some(IntOrPercent::Percent(5)),
        max_concurrent_per_pool: None,
        circuit_breaker: Some(CircuitBreaker {
            max_unhealthy: IntOrPercent::Percent(10),
            window: Duration::from_mins(10),
            cooldown: Duration::from_mins(30),
            manual_reset: false,
        }),
        retry_budget: Some(RetryBudget { max_remediations: 3, window: Duration::from_days(7) }),
        maintenance_windows: vec![],
    };
    // The fault class chooses the rung (crate::class's defaults).
    p.fault_classes = Default::default();
    p
}

/// Every preset by name, in the order `simulate --compare` lists them.
pub fn all() -> Vec<(&'static str, Policy)> {
    vec![("nodemedic", recommended()), ("seed000", seed000()), ("seed003", seed003()), ("seed004", seed004())]
}

pub fn by_name(name: &str) -> Option<Policy> {
    all().into_iter().find(|(n, _)| *n == name).map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_preset_is_valid_and_round_trips_through_yaml() {
        for (name, p) in super::all() {
            p.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(crate::Policy::from_json(&json).unwrap(), p, "{name}");
            assert_eq!(crate::Policy::from_yaml(&json).unwrap(), p, "{name}");
        }
    }
}
