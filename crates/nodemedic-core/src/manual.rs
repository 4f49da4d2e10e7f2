//! Manual actions (the actions API, `nodemedic action`) are held to the same gates as automatic
//! remediation: a person cordoning a pool or replacing an instance takes nodes out of service just
//! as the engine does. [`may_take_out`] answers "may these nodes be taken out now?" for one policy
//! from the same inputs as [`decide`]: the counts it compares come from `decide` itself, run on the
//! fleet as it is and on the fleet without the nodes in question.
//!
//! Gates checked: pause requests, the circuit breaker, minHealthy / maxUnhealthy (after taking the
//! nodes out), and for repairs (disruptive) maxConcurrent / maxConcurrentPerPool. Maintenance
//! windows do not hold a manual action: a person chose the time. Nodes the policy does not select
//! are not its business and pass.

use crate::engine::{Gate, decide, selects};
use crate::observe::NodeObservation;
use crate::policy::Policy;
use crate::record::Records;
use crate::selector::label;
use crate::time::Time;
use std::collections::BTreeMap;

/// One gate that refuses the action, and why (the engine's wording).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualHold {
    pub gate: Gate,
    pub message: String,
}

/// The answer for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GateCheck {
    /// The nodes of the request that this policy selects (in request order).
    pub selected: Vec<String>,
    /// Every gate that refuses; empty means the action may go ahead.
    pub holds: Vec<ManualHold>,
}

impl GateCheck {
    pub fn allowed(&self) -> bool {
        self.holds.is_empty()
    }
}

/// May `out_of_service` (cordoned or repaired) be taken out now, `repairs` of them by a disruptive
/// repair? `repairs` should be a subset of `out_of_service`; a repaired node is out of service too.
/// `already_out` are nodes out of service by other hands (cordoned by a person or an earlier
/// action) that the engine's own records do not know about: they do not count as healthy either.
pub fn may_take_out(
    policy: &Policy,
    fleet: &[NodeObservation],
    records: &Records,
    out_of_service: &[String],
    repairs: &[String],
    already_out: &[String],
    now: Time,
) -> GateCheck {
    let by_name: BTreeMap<&str, &NodeObservation> = fleet.iter().map(|n| (n.name.as_str(), n)).collect();
    let mine = |names: &[String]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for name in names {
            if by_name.get(name.as_str()).is_some_and(|n| selects(policy, n)) && !v.contains(name) {
                v.push(name.clone());
            }
        }
        v
    };
    let mut taken = mine(out_of_service);
    for r in mine(repairs) {
        if !taken.contains(&r) {
            taken.push(r);
        }
    }
    let repaired = mine(repairs);
    let mut check = GateCheck { selected: taken.clone(), holds: Vec::new() };
    if taken.is_empty() {
        return check;
    }
    let mut hold = |gate: Gate, message: String| check.holds.push(ManualHold { gate, message });

    if !policy.pause_requests.is_empty() {
        hold(Gate::Paused, format!("remediation paused by: {}", policy.pause_requests.join(", ")));
    }
    let before = decide(policy, fleet, records, now).summary;
    if before.breaker_open {
        let why = records.policy.breaker_reason.clone().unwrap_or_else(|| "too many nodes turned unhealthy recently".into());
        hold(Gate::CircuitBreaker, format!("circuit breaker is open: {why}"));
    }

    // The fleet as it would be: the nodes in question are no longer counted healthy.
    let gone = |name: &String| taken.contains(name) || already_out.contains(name);
    let rest: Vec<NodeObservation> = fleet.iter().filter(|n| !gone(&n.name)).cloned().collect();
    let mut rest_records = records.clone();
    rest_records.nodes.retain(|name, _| !gone(name));
    let after = decide(policy, &rest, &rest_records, now).summary;
    let total = before.selected;
    let healthy_after = after.healthy;
    let unhealthy_after = total.saturating_sub(healthy_after + after.unknown);
    let g = &policy.gates;
    if let Some(min) = g.min_healthy {
        let need = min.scaled_up(total);
        if healthy_after < need {
            hold(
                Gate::MinHealthy,
                format!(
                    "taking {} node(s) out leaves {healthy_after} of {total} nodes healthy, minHealthy {min} needs {need}",
                    taken.len()
                ),
            );
        }
    }
    if let Some(max) = g.max_unhealthy {
        let allowed = max.scaled_down(total);
        if unhealthy_after > allowed {
            hold(
                Gate::MaxUnhealthy,
                format!(
                    "taking {} node(s) out makes {unhealthy_after} of {total} nodes unhealthy, maxUnhealthy {max} allows {allowed}",
                    taken.len()
                ),
            );
        }
    }
    if !repaired.is_empty() {
        for h in concurrency_holds(policy, fleet, records, &by_name, &repaired, total) {
            hold(h.gate, h.message);
        }
    }
    check
}

/// The concurrency gates for repairs asked by hand: the disruptive steps in flight (as the engine counts
/// them, from the records) plus those asked, against maxConcurrent and maxConcurrentPerPool.
fn concurrency_holds(
    policy: &Policy,
    fleet: &[NodeObservation],
    records: &Records,
    by_name: &BTreeMap<&str, &NodeObservation>,
    repaired: &[String],
    total: usize,
) -> Vec<ManualHold> {
    let g = &policy.gates;
    let mut holds = Vec::new();
    let mut hold = |gate: Gate, message: String| holds.push(ManualHold { gate, message });
    // Disruptive steps in flight, from the records (as the engine counts them).
    let pool_of = |name: &str| by_name.get(name).and_then(|n| label(&n.labels, &policy.node_pool_label)).cloned().unwrap_or_default();
    let mut inflight_by_pool: BTreeMap<String, usize> = BTreeMap::new();
    let mut inflight = 0usize;
    for (name, r) in &records.nodes {
        if r.active.as_ref().is_some_and(|a| a.step.is_disruptive()) && by_name.get(name.as_str()).is_some_and(|n| selects(policy, n)) {
            inflight += 1;
            *inflight_by_pool.entry(pool_of(name)).or_default() += 1;
        }
    }
    if let Some(max) = g.max_concurrent {
        let limit = max.scaled_down(total).max(1);
        if inflight + repaired.len() > limit {
            hold(
                Gate::MaxConcurrent,
                format!(
                    "{inflight} disruptive remediations in flight and {} more asked, maxConcurrent {max} allows {limit}",
                    repaired.len()
                ),
            );
        }
    }
    if let Some(max) = g.max_concurrent_per_pool {
        let mut pool_sizes: BTreeMap<String, usize> = BTreeMap::new();
        for n in fleet.iter().filter(|n| selects(policy, n)) {
            *pool_sizes.entry(pool_of(&n.name)).or_default() += 1;
        }
        let mut asked: BTreeMap<String, usize> = BTreeMap::new();
        for r in repaired {
            *asked.entry(pool_of(r)).or_default() += 1;
        }
        for (pool, more) in asked {
            let limit = max.scaled_down(pool_sizes.get(&pool).copied().unwrap_or(0)).max(1);
            let current = inflight_by_pool.get(&pool).copied().unwrap_or(0);
            if current + more > limit {
                hold(
                    Gate::MaxConcurrentPerPool,
                    format!(
                        "{current} disruptive remediations in flight in pool `{pool}` and {more} more asked, maxConcurrentPerPool {max} allows {limit}"
                    ),
                );
            }
        }
    }
    holds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CircuitBreaker, ConditionStatus, IntOrPercent};
    use crate::record::{ActiveRemediation, NodeRecord, Phase, Stage};
    use crate::testkit::{EPOCH, gpu_node, set_condition};
    use crate::{Duration, RemediationStep, presets};

    fn fleet(pool: &str, n: usize) -> Vec<NodeObservation> {
        (0..n).map(|i| gpu_node(&format!("{pool}-{i}"), pool, 8, EPOCH)).collect()
    }

    fn names(pool: &str, range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("{pool}-{i}")).collect()
    }

    fn gates_of(c: &GateCheck) -> Vec<Gate> {
        c.holds.iter().map(|h| h.gate).collect()
    }

    fn policy_with(f: impl FnOnce(&mut Policy)) -> Policy {
        let mut p = presets::seed000();
        p.monitor_only = false;
        f(&mut p);
        p
    }

    fn reboot_record(node: &str) -> NodeRecord {
        NodeRecord {
            phase: Phase::Remediating,
            active: Some(ActiveRemediation {
                trigger: "gpu".into(),
                reason: "test".into(),
                started_at: EPOCH,
                unhealthy_since: EPOCH,
                step_index: 0,
                step: RemediationStep::Reboot,
                step_started_at: EPOCH,
                deadline: None,
                stage: Stage::Executing,
                executed: true,
                boot_id_at_start: None,
                notified_at: None,
                unobserved: crate::time::Duration::ZERO,
                unobserved_until: None,
                drain_held_at: None,
                fault_class: None,
                gpu: None,
            }),
            attempt: 1,
            ..NodeRecord::new(node)
        }
    }

    #[test]
    fn a_policy_without_gates_lets_a_whole_pool_be_cordoned() {
        let p = policy_with(|_| {});
        let check = may_take_out(&p, &fleet("a", 4), &Records::default(), &names("a", 0..4), &[], &[], EPOCH);
        assert!(check.allowed(), "{check:?}");
        assert_eq!(check.selected.len(), 4);
    }

    #[test]
    fn min_healthy_counts_the_nodes_taken_out() {
        let p = policy_with(|p| p.gates.min_healthy = Some(IntOrPercent::Percent(75)));
        let nodes = fleet("a", 4);
        let one = may_take_out(&p, &nodes, &Records::default(), &names("a", 0..1), &[], &[], EPOCH);
        assert!(one.allowed(), "3 of 4 healthy meets 75%: {one:?}");
        let two = may_take_out(&p, &nodes, &Records::default(), &names("a", 0..2), &[], &[], EPOCH);
        assert_eq!(gates_of(&two), [Gate::MinHealthy]);
        assert!(two.holds[0].message.contains("leaves 2 of 4 nodes healthy"), "{}", two.holds[0].message);
    }

    #[test]
    fn taking_out_an_already_broken_node_costs_no_healthy_node() {
        let p = policy_with(|p| p.gates.min_healthy = Some(IntOrPercent::Count(3)));
        let mut nodes = fleet("a", 4);
        set_condition(&mut nodes[0], "Ready", ConditionStatus::False, "KubeletNotReady", EPOCH);
        let check = may_take_out(&p, &nodes, &Records::default(), &names("a", 0..1), &[], &[], EPOCH + Duration::from_mins(10));
        assert!(check.allowed(), "{check:?}");
    }

    #[test]
    fn nodes_already_cordoned_by_hand_do_not_count_as_healthy() {
        let p = policy_with(|p| p.gates.min_healthy = Some(IntOrPercent::Count(3)));
        let nodes = fleet("a", 4);
        let first = may_take_out(&p, &nodes, &Records::default(), &names("a", 0..1), &[], &[], EPOCH);
        assert!(first.allowed(), "{first:?}");
        let second = may_take_out(&p, &nodes, &Records::default(), &names("a", 1..2), &[], &names("a", 0..1), EPOCH);
        assert_eq!(gates_of(&second), [Gate::MinHealthy]);
    }

    #[test]
    fn max_unhealthy_holds_when_the_action_would_exceed_it() {
        let p = policy_with(|p| p.gates.max_unhealthy = Some(IntOrPercent::Count(1)));
        let check = may_take_out(&p, &fleet("a", 4), &Records::default(), &names("a", 0..2), &[], &[], EPOCH);
        assert_eq!(gates_of(&check), [Gate::MaxUnhealthy]);
    }

    #[test]
    fn a_pause_request_holds_every_manual_action() {
        let p = policy_with(|p| p.pause_requests = vec!["upgrade-window".into()]);
        let check = may_take_out(&p, &fleet("a", 2), &Records::default(), &names("a", 0..1), &[], &[], EPOCH);
        assert_eq!(gates_of(&check), [Gate::Paused]);
        assert!(check.holds[0].message.contains("upgrade-window"));
    }

    #[test]
    fn an_open_circuit_breaker_holds() {
        let p = policy_with(|p| {
            p.gates.circuit_breaker = Some(CircuitBreaker {
                max_unhealthy: IntOrPercent::Count(1),
                window: Duration::from_mins(10),
                cooldown: Duration::from_mins(30),
                manual_reset: false,
            })
        });
        let mut records = Records::default();
        records.policy.breaker_tripped_at = Some(EPOCH);
        records.policy.breaker_reason = Some("2 of 4 turned unhealthy".into());
        let check = may_take_out(&p, &fleet("a", 4), &records, &names("a", 0..1), &[], &[], EPOCH + Duration::from_mins(1));
        assert_eq!(gates_of(&check), [Gate::CircuitBreaker]);
        assert!(check.holds[0].message.contains("2 of 4 turned unhealthy"));
    }

    #[test]
    fn max_concurrent_counts_repairs_in_flight_and_asked() {
        let p = policy_with(|p| p.gates.max_concurrent = Some(IntOrPercent::Count(1)));
        let nodes = fleet("a", 4);
        let free = may_take_out(&p, &nodes, &Records::default(), &names("a", 1..2), &names("a", 1..2), &[], EPOCH);
        assert!(free.allowed(), "{free:?}");
        let mut records = Records::default();
        records.nodes.insert("a-0".into(), reboot_record("a-0"));
        let busy = may_take_out(&p, &nodes, &records, &names("a", 1..2), &names("a", 1..2), &[], EPOCH);
        assert_eq!(gates_of(&busy), [Gate::MaxConcurrent]);
        let cordon_only = may_take_out(&p, &nodes, &records, &names("a", 1..2), &[], &[], EPOCH);
        assert!(cordon_only.allowed(), "a cordon is not a disruptive step: {cordon_only:?}");
    }

    #[test]
    fn max_concurrent_per_pool_looks_at_the_repaired_nodes_pool() {
        let p = policy_with(|p| p.gates.max_concurrent_per_pool = Some(IntOrPercent::Count(1)));
        let mut nodes = fleet("a", 3);
        nodes.extend(fleet("b", 3));
        let mut records = Records::default();
        records.nodes.insert("a-0".into(), reboot_record("a-0"));
        let same_pool = may_take_out(&p, &nodes, &records, &names("a", 1..2), &names("a", 1..2), &[], EPOCH);
        assert_eq!(gates_of(&same_pool), [Gate::MaxConcurrentPerPool]);
        let other_pool = may_take_out(&p, &nodes, &records, &names("b", 0..1), &names("b", 0..1), &[], EPOCH);
        assert!(other_pool.allowed(), "{other_pool:?}");
    }

    #[test]
    fn nodes_the_policy_does_not_select_pass() {
        let p = policy_with(|p| {
            p.node_pools = vec!["b".into()];
            p.gates.min_healthy = Some(IntOrPercent::Percent(100));
        });
        let check = may_take_out(&p, &fleet("a", 2), &Records::default(), &names("a", 0..2), &[], &[], EPOCH);
        assert!(check.allowed());
        assert!(check.selected.is_empty());
    }
}
