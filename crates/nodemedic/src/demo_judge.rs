//! How the demo judges its end: on the cluster as it is now, never on an old record. A node is
//! judged by the last fault that hit it; a node expected to recover must have a Healthy record with
//! nothing in flight *and* every probe condition False now (a node that faulted again after an
//! earlier repair still has a Healthy record from that repair). The chaos counts (duplicate
//! disruptive steps, lost remediations, unexplained taints) are judged the same way.

use crate::demo::{Expect, Probe, Scenario};
use crate::demo_stateful::StatefulEnd;
use k8s_openapi::api::core::v1::Node;
use nodemedic_core::fencing::{FencingSource, OUT_OF_SERVICE_TAINT};
use nodemedic_core::record::{NodeRecord, Phase, StepOutcome};
use nodemedic_core::{RemediationStep, Time};
use nodemedic_k8s::NodeRemediation;
use std::collections::{BTreeMap, BTreeSet};

/// One node's end, against what its last fault expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub node: String,
    /// Index of the last fault that names the node.
    pub fault: usize,
    pub ok: bool,
    pub phase: Phase,
    /// Probe conditions True now.
    pub failing: Vec<&'static str>,
    pub steps: Vec<String>,
    /// For a node expected to be replaced: the node that joined for its new Machine.
    pub replaced_by: Option<String>,
    /// For a node expected to be fenced: what holds or what is missing.
    pub fencing: Option<Result<String, String>>,
}

pub(crate) fn record<'r>(records: &'r [NodeRemediation], node: &str) -> Option<&'r NodeRecord> {
    records.iter().find(|r| r.spec.node == node).and_then(|r| r.status.as_ref()).map(|s| &s.record)
}

fn node<'n>(nodes: &'n [Node], name: &str) -> Option<&'n Node> {
    nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name))
}

/// The probe conditions that are True on the node now.
pub fn failing_conditions(node: Option<&Node>) -> Vec<&'static str> {
    let conditions = node.and_then(|n| n.status.as_ref()).and_then(|s| s.conditions.as_ref());
    Probe::ALL
        .into_iter()
        .map(Probe::condition)
        .filter(|c| conditions.is_some_and(|all| all.iter().any(|x| x.type_ == *c && x.status == "True")))
        .collect()
}

/// nodemedic's taints on the node.
pub fn our_taints(node: Option<&Node>) -> Vec<String> {
    node.and_then(|n| n.spec.as_ref())
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.key.starts_with("nodemedic.io/"))
        .map(|t| t.key.clone())
        .collect()
}

/// Every node a fault names, once, judged by the last fault naming it.
pub fn judge(
    scenario: &Scenario,
    records: &[NodeRemediation],
    nodes: &[Node],
    breaker_tripped: bool,
    replacements: &BTreeMap<String, String>,
    stateful: &[StatefulEnd],
) -> Vec<Verdict> {
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, f) in scenario.faults.iter().enumerate() {
        for n in &f.nodes {
            // Faults are played in order of `at`: the later one wins a tie.
            let later = last.get(n.as_str()).is_none_or(|&j| scenario.faults[j].at <= f.at);
            if later {
                last.insert(n, i);
            }
        }
    }
    last.into_iter()
        .map(|(name, fault)| {
            let rec = record(records, name);
            let phase = rec.map_or(Phase::Healthy, |r| r.phase);
            let in_flight = rec.is_some_and(|r| r.active.is_some());
            let current = node(nodes, name);
            let failing = failing_conditions(current);
            let taints = our_taints(current);
            let repaired = phase == Phase::Healthy && !in_flight && failing.is_empty() && taints.is_empty();
            let replaced_by = replacements.get(name).cloned();
            let fencing = (scenario.faults[fault].expect == Some(Expect::Fenced)).then(|| judge_fencing(name, rec, current, stateful));
            let ok = match scenario.faults[fault].expect {
                Some(Expect::Recovered) => repaired,
                Some(Expect::Manual) => phase == Phase::Manual && taints.iter().any(|t| t.ends_with("repair-manual")),
                Some(Expect::Breaker) => breaker_tripped && repaired,
                Some(Expect::Replaced) => {
                    let gone = current.is_none() && rec.is_none();
                    gone && replaced_by.as_deref().is_some_and(|new| healthy_now(records, nodes, new))
                }
                Some(Expect::Fenced) => fencing.as_ref().is_some_and(Result::is_ok),
                None => true,
            };
            let steps =
                rec.map(|r| r.history.iter().map(|h| format!("{}→{:?}", h.step, h.outcome).to_lowercase()).collect()).unwrap_or_default();
            Verdict { node: name.to_string(), fault, ok, phase, failing, steps, replaced_by, fencing }
        })
        .collect()
}

fn is_ready(n: &Node) -> bool {
    n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A dead node fenced and restored, judged on its record and the cluster now: the record says its
/// BMC confirmed the power-off, the out-of-service taint went on and came off; the node is Ready now
/// without that taint; every StatefulSet that preferred it runs elsewhere, its volume not attached
/// to the node.
pub fn judge_fencing(name: &str, rec: Option<&NodeRecord>, current: Option<&Node>, stateful: &[StatefulEnd]) -> Result<String, String> {
    let oos = rec.and_then(|r| r.out_of_service.as_ref()).ok_or("never marked out of service (no outOfService on its record)")?;
    if oos.source != FencingSource::BmcPowerOff {
        return Err(format!("fenced by {:?}, not by its BMC's power-off", oos.source));
    }
    let removed = oos.removed_at.ok_or("the out-of-service taint was never taken off")?;
    let node = current.ok_or("the node is gone")?;
    let tainted = node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT));
    if tainted || !is_ready(node) {
        return Err(format!("not back: Ready {}, {OUT_OF_SERVICE_TAINT} {}", is_ready(node), if tainted { "still on" } else { "off" }));
    }
    let mut moved = Vec::new();
    for s in stateful.iter().filter(|s| s.home == name) {
        match &s.running_on {
            Some(other) if other != name && s.attached_to == [other.clone()] => moved.push(format!("{}-0 Running on {other}", s.name)),
            Some(other) if other != name => {
                return Err(format!("{}'s volume is attached to {:?}, not to {other} only", s.name, s.attached_to));
            }
            _ => return Err(format!("{}-0 is not Running on another node", s.name)),
        }
    }
    let pods = if moved.is_empty() { String::new() } else { format!("; {}, its volume moved with it", moved.join(", ")) };
    Ok(format!(
        "BMC power Off confirmed, out-of-service on for {:.0}s, off once Ready again{pods}",
        removed.since(oos.added_at).as_secs_f64()
    ))
}

/// A node that is there now, Ready, with every probe passing, no nodemedic taint, and no record
/// or a Healthy one with nothing in flight.
pub fn healthy_now(records: &[NodeRemediation], nodes: &[Node], name: &str) -> bool {
    let Some(n) = node(nodes, name) else { return false };
    let ready = is_ready(n);
    let rec = record(records, name);
    let quiet = rec.is_none_or(|r| r.phase == Phase::Healthy && r.active.is_none());
    ready && quiet && failing_conditions(Some(n)).is_empty() && our_taints(Some(n)).is_empty()
}

/// How a PDB-guarded workload's node fared: the controller held its drain (a `DrainHeld` Event
/// naming the budget), no repair step started before the demo relaxed the budget, the drain then
/// completed, and none of the workload's pods is left on the node. Judged on the node's record as
/// it is at the end (the remediation the fault started: a later fault would start a new record
/// history) and the cluster's pods now.
pub fn judge_workload(
    budget: &str,
    held_note: Option<&str>,
    relaxed_at: Option<Time>,
    rec: Option<&NodeRecord>,
    pods_left: usize,
) -> Result<String, String> {
    let note = held_note.ok_or("the controller never said the drain was held (no DrainHeld Event)")?;
    if !note.contains(budget) {
        return Err(format!("the DrainHeld Event does not name the budget {budget}: {note}"));
    }
    let relaxed = relaxed_at.ok_or("the budget was never relaxed")?;
    let rec = rec.ok_or("the node has no record")?;
    let drained = rec.history.iter().any(|h| h.step == RemediationStep::Drain && h.outcome == StepOutcome::Completed);
    if !drained {
        return Err("its drain never completed".into());
    }
    let repairs = rec.history.iter().filter(|h| h.step != RemediationStep::Drain).map(|h| (h.step, h.started_at));
    let active = rec.active.as_ref().filter(|a| a.step != RemediationStep::Drain).map(|a| (a.step, a.step_started_at));
    if let Some((step, at)) = repairs.chain(active).find(|(_, at)| *at < relaxed) {
        return Err(format!("{step} started {} before the budget allowed the pods to leave", relaxed.since(at)));
    }
    if pods_left > 0 {
        return Err(format!("{pods_left} of its pods are still on the node"));
    }
    Ok("drain held by its budget (DrainHeld names it), no repair step before the budget allowed it, pods evicted, drain completed".into())
}

/// What the chaos run counts; all must be zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChaosCounts {
    /// A reboot or reimage asked again within the same remediation (each ladder step runs once).
    pub duplicate_disruptive: usize,
    /// Nodes still failing a probe at the end with nothing in flight and no person asked.
    pub lost_remediations: Vec<String>,
    /// nodemedic taints no record or probe explains: (node, taint).
    pub unexplained_taints: Vec<(String, String)>,
}

/// The reboots and reimages the agents were asked for: (node, remediation start, step) → attempts.
pub type Asks = BTreeMap<(String, Time, RemediationStep), BTreeSet<u32>>;

/// Counts what must never happen, on the cluster as it is now and the agents' asks.
pub fn chaos_counts(asks: &Asks, records: &[NodeRemediation], nodes: &[Node]) -> ChaosCounts {
    let duplicate_disruptive = asks.values().map(|attempts| attempts.len().saturating_sub(1)).sum();
    let mut counts = ChaosCounts { duplicate_disruptive, ..ChaosCounts::default() };
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let rec = record(records, &name);
        let active = rec.and_then(|r| r.active.as_ref());
        let manual = rec.is_some_and(|r| r.phase == Phase::Manual);
        let failing = failing_conditions(Some(n));
        if failing.contains(&Probe::Gpu.condition()) && active.is_none() && !manual {
            counts.lost_remediations.push(name.clone());
        }
        for taint in our_taints(Some(n)) {
            let explained =
                if taint.ends_with("slow-network") { failing.contains(&Probe::Network.condition()) } else { active.is_some() || manual };
            if !explained {
                counts.unexplained_taints.push((name.clone(), taint));
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use nodemedic_core::record::{StepHistory, StepOutcome};
    use nodemedic_k8s::{NodeRemediationSpec, NodeRemediationStatus};

    const SCENARIO: &str = r#"
name: refault
nodes: 4
duration: 3m
policy:
  rules:
  - name: gpu
    condition: {type: GPUProblem, status: "True"}
  ladder:
  - {step: reboot, timeout: 60s}
  - {step: manual}
faults:
- {at: 5s, nodes: [gpu-001], kind: gpu, message: "Xid 79", fixedBy: reboot, expect: recovered}
- {at: 60s, nodes: [gpu-001], kind: gpu, message: "Xid 79 again", fixedBy: reboot, expect: recovered}
"#;

    fn gpu_node(name: &str, gpu_problem: &str, taints: &[&str]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec = Some(NodeSpec {
            taints: Some(taints.iter().map(|k| Taint { key: k.to_string(), effect: "NoSchedule".into(), ..Taint::default() }).collect()),
            ..NodeSpec::default()
        });
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition { type_: "GPUProblem".into(), status: gpu_problem.into(), ..NodeCondition::default() }]),
            ..NodeStatus::default()
        });
        n
    }

    /// The record left by the first repair: Healthy, reboot → recovered.
    fn repaired_once(node: &str) -> NodeRemediation {
        let mut record = NodeRecord::new(node);
        record.attempt = 1;
        record.history.push(StepHistory {
            attempt: 1,
            step: RemediationStep::Reboot,
            started_at: Time(1),
            ended_at: Time(2),
            outcome: StepOutcome::Recovered,
            reason: "the checks pass again".into(),
            executed: true,
        });
        let mut r = NodeRemediation::new(node, NodeRemediationSpec { node: node.into(), policy: "demo".into() });
        r.status = Some(NodeRemediationStatus { record, ..NodeRemediationStatus::default() });
        r
    }

    /// Issue 16 point 7: three nodes that faulted again were never repaired, still had their GPU
    /// condition True, and the demo printed ✓ from the Healthy record of the earlier repair.
    #[test]
    fn a_node_that_faulted_again_and_still_fails_its_gpu_probe_is_a_failure_despite_an_old_healthy_record() {
        let scenario = Scenario::parse(SCENARIO).unwrap_or_else(|e| panic!("{e:#}"));
        let records = [repaired_once("gpu-001")];
        let verdicts = judge(&scenario, &records, &[gpu_node("gpu-001", "True", &[])], false, &BTreeMap::new(), &[]);
        assert_eq!(verdicts.len(), 1, "judged once, by its last fault: {verdicts:?}");
        assert_eq!((verdicts[0].fault, verdicts[0].ok), (1, false), "{verdicts:?}");
        assert_eq!(verdicts[0].failing, vec!["GPUProblem"]);
        // The same record with the probe passing now is a success.
        let verdicts = judge(&scenario, &records, &[gpu_node("gpu-001", "False", &[])], false, &BTreeMap::new(), &[]);
        assert!(verdicts[0].ok, "{verdicts:?}");
    }

    #[test]
    fn a_refaulted_node_nobody_works_on_is_a_lost_remediation_and_a_leftover_repair_taint_is_unexplained() {
        let records = [repaired_once("gpu-001")];
        let nodes = [gpu_node("gpu-001", "True", &[]), gpu_node("gpu-002", "False", &["nodemedic.io/repair-reboot"])];
        let counts = chaos_counts(&Asks::new(), &records, &nodes);
        assert_eq!(counts.lost_remediations, vec!["gpu-001".to_string()]);
        assert_eq!(counts.unexplained_taints, vec![("gpu-002".to_string(), "nodemedic.io/repair-reboot".to_string())]);
        assert_eq!(counts.duplicate_disruptive, 0);
    }

    #[test]
    fn a_reboot_asked_again_within_one_remediation_is_a_duplicate() {
        let mut asks = Asks::new();
        asks.entry(("gpu-001".into(), Time(1), RemediationStep::Reboot)).or_default().extend([1, 2]);
        asks.entry(("gpu-001".into(), Time(1), RemediationStep::Reimage)).or_default().insert(3);
        // A later remediation of the same node reboots again: not a duplicate.
        asks.entry(("gpu-001".into(), Time(9), RemediationStep::Reboot)).or_default().insert(4);
        assert_eq!(chaos_counts(&asks, &[], &[]).duplicate_disruptive, 1);
    }

    fn history(step: RemediationStep, started_at: i64, outcome: StepOutcome) -> StepHistory {
        StepHistory {
            attempt: 1,
            step,
            started_at: Time(started_at),
            ended_at: Time(started_at + 1),
            outcome,
            reason: String::new(),
            executed: true,
        }
    }

    /// Issue 12: the demo's PDB-guarded workload. A reboot that started before the budget let the
    /// pods go is exactly what a held drain must prevent.
    #[test]
    fn a_repair_started_before_the_budget_was_relaxed_fails_the_workload_and_one_after_it_passes() {
        let held = Some("drain of node gpu-002 blocked after 20s: pod training/trainer-0 refused by trainer-budget; holding");
        let mut rec = NodeRecord::new("gpu-002");
        rec.history = vec![
            history(RemediationStep::Drain, 1_000, StepOutcome::Completed),
            history(RemediationStep::Reboot, 5_000, StepOutcome::Recovered),
        ];
        assert!(judge_workload("trainer-budget", held, Some(Time(4_000)), Some(&rec), 0).is_ok());
        let early = judge_workload("trainer-budget", held, Some(Time(6_000)), Some(&rec), 0).err().unwrap_or_default();
        assert!(early.contains("reboot started 1s before the budget"), "{early}");
        assert!(judge_workload("trainer-budget", None, Some(Time(4_000)), Some(&rec), 0).is_err(), "never held");
        assert!(judge_workload("other-budget", held, Some(Time(4_000)), Some(&rec), 0).is_err(), "the Event must name the budget");
        assert!(judge_workload("trainer-budget", held, Some(Time(4_000)), Some(&rec), 1).is_err(), "a pod left on the node");
        rec.history.remove(0);
        assert!(judge_workload("trainer-budget", held, Some(Time(4_000)), Some(&rec), 0).is_err(), "no completed drain");
    }

    /// Issue 11's demo node: ✓ only when the record says the BMC fenced it and the taint came off,
    /// the node is Ready without the taint now, and the StatefulSet pod runs elsewhere with its volume.
    #[test]
    fn a_fenced_node_passes_only_when_restored_and_its_stateful_pod_runs_elsewhere_with_its_volume() {
        use nodemedic_core::fencing::{OUT_OF_SERVICE_VALUE, OutOfService};
        let mut rec = NodeRecord::new("gpu-006");
        let oos = OutOfService {
            attempt: 1,
            source: FencingSource::BmcPowerOff,
            added_at: Time(10_000),
            reason: "the BMC confirmed power Off".into(),
            boot_id: None,
            removed_at: Some(Time(30_000)),
            removed_reason: Some("back and Ready".into()),
            lifted: true,
        };
        rec.out_of_service = Some(oos.clone());
        let node = ready(gpu_node("gpu-006", "False", &[]));
        let end = |on: Option<&str>, attached: &[&str]| StatefulEnd {
            name: "ledger".into(),
            home: "gpu-006".into(),
            running_on: on.map(str::to_string),
            attached_to: attached.iter().map(|s| s.to_string()).collect(),
        };
        let moved = [end(Some("gpu-000"), &["gpu-000"])];
        let ok = judge_fencing("gpu-006", Some(&rec), Some(&node), &moved);
        assert!(ok.as_ref().is_ok_and(|t| t.contains("on for 20s") && t.contains("ledger-0 Running on gpu-000")), "{ok:?}");
        assert!(judge_fencing("gpu-006", Some(&NodeRecord::new("gpu-006")), Some(&node), &moved).is_err(), "never fenced");
        for (on, attached) in [(Some("gpu-006"), vec!["gpu-006"]), (None, vec![]), (Some("gpu-000"), vec!["gpu-006", "gpu-000"])] {
            assert!(judge_fencing("gpu-006", Some(&rec), Some(&node), &[end(on, &attached)]).is_err(), "{on:?} {attached:?}");
        }
        let mut tainted = node.clone();
        if let Some(t) = tainted.spec.as_mut().and_then(|s| s.taints.as_mut()) {
            t.push(Taint {
                key: OUT_OF_SERVICE_TAINT.into(),
                value: Some(OUT_OF_SERVICE_VALUE.into()),
                effect: "NoExecute".into(),
                ..Taint::default()
            });
        }
        assert!(judge_fencing("gpu-006", Some(&rec), Some(&tainted), &moved).is_err(), "the taint still on");
        assert!(judge_fencing("gpu-006", Some(&rec), Some(&gpu_node("gpu-006", "False", &[])), &moved).is_err(), "not Ready");
        rec.out_of_service = Some(OutOfService { removed_at: None, ..oos.clone() });
        assert!(judge_fencing("gpu-006", Some(&rec), Some(&node), &moved).is_err(), "never taken off");
        rec.out_of_service = Some(OutOfService { source: FencingSource::NewBootId, ..oos });
        assert!(judge_fencing("gpu-006", Some(&rec), Some(&node), &moved).is_err(), "not the BMC's power-off");
    }

    fn ready(mut n: Node) -> Node {
        if let Some(c) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c.push(NodeCondition { type_: "Ready".into(), status: "True".into(), ..NodeCondition::default() });
        }
        n
    }

    #[test]
    fn a_replaced_node_passes_only_when_it_and_its_record_are_gone_and_its_replacement_is_healthy_now() {
        let yaml = SCENARIO
            .replace("fixedBy: reboot, expect: recovered}\n- {at: 60s", "fixedBy: replace, expect: replaced}\n- {at: 60s")
            .replace("faults:", "machines: [gpu-001]\nfaults:")
            .replace("- {at: 60s, nodes: [gpu-001], kind: gpu, message: \"Xid 79 again\", fixedBy: reboot, expect: recovered}\n", "");
        let scenario = Scenario::parse(&yaml).unwrap_or_else(|e| panic!("{e:#}"));
        let replaced = BTreeMap::from([("gpu-001".to_string(), "gpu-004".to_string())]);
        let new = ready(gpu_node("gpu-004", "False", &[]));
        assert!(judge(&scenario, &[], std::slice::from_ref(&new), false, &replaced, &[])[0].ok);
        // The old node still there, or its record, or a replacement still failing: not replaced.
        let old = gpu_node("gpu-001", "True", &[]);
        assert!(!judge(&scenario, &[], &[old, new.clone()], false, &replaced, &[])[0].ok);
        assert!(!judge(&scenario, &[repaired_once("gpu-001")], std::slice::from_ref(&new), false, &replaced, &[])[0].ok);
        let failing = ready(gpu_node("gpu-004", "True", &[]));
        assert!(!judge(&scenario, &[], &[failing], false, &replaced, &[])[0].ok);
        assert!(!judge(&scenario, &[], &[new], false, &BTreeMap::new(), &[])[0].ok, "no replacement joined");
    }
}
