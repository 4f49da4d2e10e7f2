//! The figures `nodemedic simulate` reports, checked on scenarios small enough to work out by hand:
//! a few injected faults, fixed repair and response durations, no generated faults.
//!
//! Timing shared by every scenario (see docs/fault-model.md, "Accounting and assumptions"):
//! - node 0 probes on the half-minute (its probe phase is 0) and every fault below starts on a probe
//!   tick, so a GPU fault is first seen 30 s after it starts and reaches seed 000's "fails three
//!   times" at 90 s, when the node is tainted (time to quarantine 1.5 min);
//! - a GPU node reboots in exactly 10 min, a reimage takes 40 min plus that reboot, a replacement
//!   waits 24 h for its part and technician (lead time) and then takes 12 h of hands-on work, both
//!   booked as the repair that worked whoever asked, and people start work 4 h after a fault reaches them (one draw);
//! - probes see every fault (sensitivity 1), so the figures do not depend on a coin.

use nodemedic_core::{Policy, presets};
use nodemedic_sim::faults::{
    Cause, DurationDist, Fault, FaultModel, Fix, FleetSpec, MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, ProbeSensitivity, RepairDurations,
    Symptom,
};
use nodemedic_sim::sim::{Report, SimConfig, simulate_faults};
use std::collections::BTreeMap;

const GPUS: f64 = 8.0;
const REBOOT_MIN: f64 = 10.0;
const REIMAGE_MIN: f64 = 40.0;
const REPLACE_MIN: f64 = 12.0 * 60.0;
const REPLACE_LEAD_MIN: f64 = 24.0 * 60.0;
const RESPONSE_MIN: f64 = 4.0 * 60.0;
/// Seed 000's wait after a reboot or reimage before it re-checks.
const SEED000_SETTLE_MIN: f64 = 5.0;
/// Every fault starts an hour into the run, on a probe tick.
const FAULT_AT_MS: i64 = MS_PER_HOUR;

fn fixed_durations() -> FaultModel {
    FaultModel {
        repair: RepairDurations {
            gpu_node_reboot: DurationDist::fixed(10 * MS_PER_MINUTE),
            cpu_node_reboot: DurationDist::fixed(3 * MS_PER_MINUTE),
            reimage: DurationDist::fixed(40 * MS_PER_MINUTE),
            replace: DurationDist::fixed(12 * MS_PER_HOUR),
            replace_lead: DurationDist::fixed(24 * MS_PER_HOUR),
            manual_response: DurationDist::fixed(4 * MS_PER_HOUR),
        },
        probe_sensitivity: ProbeSensitivity { gpu: 1.0, network: 1.0 },
        ..FaultModel::default()
    }
}

fn fleet(nodes: u32, days: i64) -> SimConfig {
    SimConfig {
        fleet: FleetSpec { nodes, gpus_per_node: 8, duration_ms: days * MS_PER_DAY },
        model: fixed_durations(),
        ..SimConfig::default()
    }
}

fn fault(node: u32, cause: Cause, symptom: Symptom, fix: Fix, self_clear_after_ms: Option<i64>) -> Fault {
    let gpu = matches!(symptom, Symptom::Gpu | Symptom::GpuCount).then_some(0);
    Fault { id: 0, node, gpu, start_ms: FAULT_AT_MS, cause, symptom, fix, self_clear_after_ms, false_positive: false }
}

fn run(cfg: &SimConfig, policy: &Policy, faults: &[Fault]) -> Report {
    simulate_faults(cfg, "scenario", policy, faults, &mut |_| {})
}

fn steps(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn gpu_hours(minutes: f64) -> f64 {
    minutes / 60.0 * GPUS
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-9, "{what}: got {got}, want {want}");
}

#[test]
fn a_gpu_fault_that_a_reboot_fixes_is_rebooted_once_and_repaired_after_detection_plus_the_reboot() {
    let cfg = fleet(4, 1);
    let faults = [fault(0, Cause::GpuSystemProcessor, Symptom::Gpu, Fix::Reboot, None)];
    let r = run(&cfg, &presets::seed000(), &faults);

    assert_eq!(r.faults.real, 1);
    assert_eq!(r.remediations_by_step, steps(&[("reboot", 1)]));
    assert_eq!(r.escalations_to_manual, 0);
    assert!(r.gate_holds.is_empty(), "{:?}", r.gate_holds);
    assert_eq!((r.time_to_quarantine.count, r.time_to_repair.count), (1, 1));
    assert_close(r.time_to_quarantine.mean_minutes, 1.5, "time to quarantine, mean");
    assert_close(r.time_to_quarantine.p95_minutes, 1.5, "time to quarantine, p95");
    // Detection (three failed probes, 1.5 min) plus the reboot that cleared it.
    assert_close(r.time_to_repair.mean_minutes, 1.5 + REBOOT_MIN, "time to repair, mean");
    assert_close(r.time_to_repair.p95_minutes, 1.5 + REBOOT_MIN, "time to repair, p95");

    let lost = &r.gpu_hours_lost;
    assert_close(lost.faulty_node_serving, gpu_hours(1.5), "faulty node still taking work");
    assert_close(lost.effective_repair, gpu_hours(REBOOT_MIN), "the repair that worked");
    // Repaired but still tainted while seed 000 waits 5 minutes to re-check: a healthy node kept out.
    assert_close(lost.healthy_nodes_disrupted, gpu_hours(SEED000_SETTLE_MIN), "healthy node disrupted");
    assert_close(lost.ineffective_repairs + lost.waiting, 0.0, "nothing wasted, nothing waited for");
}

#[test]
fn a_fault_that_needs_a_part_climbs_reboot_then_reimage_then_escalates_to_manual_once() {
    let cfg = fleet(4, 3);
    let faults = [fault(0, Cause::FaultyGpu, Symptom::Gpu, Fix::Replace, None)];
    let r = run(&cfg, &presets::seed000(), &faults);

    assert_eq!(r.remediations_by_step, steps(&[("reboot", 1), ("reimage", 1)]));
    assert_eq!(r.escalations_to_manual, 1);
    assert_eq!(r.faults.found_by_people, 0, "automation had it; people were called, not surprised");
    assert_close(r.time_to_quarantine.mean_minutes, 1.5, "time to quarantine");
    // Seed 000's story: tainted at 1.5 min; reboot (10 min); settle 5 min, the re-check fails;
    // reimage (40 + 10 min); settle 5 min, the re-check fails; a person answers in 4 h, waits 24 h
    // for the part and swaps it in 12 h.
    let escalated_at = 1.5 + REBOOT_MIN + SEED000_SETTLE_MIN + (REIMAGE_MIN + REBOOT_MIN) + SEED000_SETTLE_MIN;
    assert_close(escalated_at, 71.5, "escalated at");
    assert_eq!(r.time_to_repair.count, 1);
    let repaired_at = escalated_at + RESPONSE_MIN + REPLACE_LEAD_MIN + REPLACE_MIN;
    assert_close(r.time_to_repair.mean_minutes, repaired_at, "time to repair, mean");
    assert_close(r.time_to_repair.p95_minutes, repaired_at, "time to repair, p95");

    let lost = &r.gpu_hours_lost;
    assert_close(lost.faulty_node_serving, gpu_hours(1.5), "faulty node still taking work");
    assert_close(lost.ineffective_repairs, gpu_hours(REBOOT_MIN + REIMAGE_MIN + REBOOT_MIN), "repairs that did not fix");
    assert_close(lost.waiting, gpu_hours(2.0 * SEED000_SETTLE_MIN + RESPONSE_MIN), "waiting: settling and the person's response");
    assert_close(lost.effective_repair, gpu_hours(REPLACE_LEAD_MIN + REPLACE_MIN), "the replacement: lead time and swap");
    // After the swap the person marks the node resolved; the engine waits until the agent publishes the GPU
    // check passing (its two passing runs, 1 min) before lifting the manual taint, holding it meanwhile.
    assert_close(lost.healthy_nodes_disrupted, gpu_hours(1.0), "waiting for the agent's passes after the swap");
    assert_eq!(r.gate_holds, steps(&[("awaiting_operator", 1)]));
}

#[test]
fn a_min_healthy_gate_that_must_hold_counts_one_hold_per_held_node() {
    // Seed 004: minHealthy 51% of 4 nodes needs 3 healthy; two nodes NotReady at once leave 2.
    let cfg = fleet(4, 3);
    let faults = [
        fault(0, Cause::PowerSupply, Symptom::NodeNotReady, Fix::Replace, None),
        fault(1, Cause::PowerSupply, Symptom::NodeNotReady, Fix::Replace, None),
    ];
    let r = run(&cfg, &presets::seed004(), &faults);

    assert_eq!(r.gate_holds, steps(&[("min_healthy", 2)]), "each node counted once, when its hold begins");
    assert!(r.remediations_by_step.is_empty(), "the gate held throughout: {:?}", r.remediations_by_step);
    assert_eq!(r.escalations_to_manual, 0);
    // People find both in their own time (4 h, one draw: finding it is the response), wait 24 h for
    // the supplies and replace them in 12 h.
    assert_eq!(r.faults.found_by_people, 2);
    assert_close(r.time_to_quarantine.mean_minutes, RESPONSE_MIN, "cordoned by the person who found it");
    assert_close(r.time_to_repair.mean_minutes, RESPONSE_MIN + REPLACE_LEAD_MIN + REPLACE_MIN, "time to repair");
}

#[test]
fn the_same_fault_on_one_node_of_four_passes_the_min_healthy_gate() {
    let cfg = fleet(4, 3);
    let faults = [fault(0, Cause::PowerSupply, Symptom::NodeNotReady, Fix::Replace, None)];
    let r = run(&cfg, &presets::seed004(), &faults);
    assert!(r.gate_holds.is_empty(), "{:?}", r.gate_holds);
    assert_eq!(r.remediations_by_step, steps(&[("reboot", 1)]));
    assert_eq!(r.escalations_to_manual, 1, "what a reboot does not fix is left to a person");
}

#[test]
fn time_to_repair_reports_the_mean_and_the_95th_percentile_of_every_repaired_fault() {
    // Twenty transient faults that seed 000 does not watch (it has no Ready rule) clear by themselves
    // after 1, 2, …, 20 minutes: mean 10.5 min; p95 is the 19th of 20 sorted values (nearest rank).
    let cfg = fleet(20, 1);
    let faults: Vec<Fault> = (0..20)
        .map(|i| fault(i, Cause::Dependency, Symptom::NodeNotReady, Fix::SelfClears, Some(i64::from(i + 1) * MS_PER_MINUTE)))
        .collect();
    let r = run(&cfg, &presets::seed000(), &faults);

    assert_eq!(r.time_to_repair.count, 20);
    assert_close(r.time_to_repair.mean_minutes, 10.5, "time to repair, mean");
    assert_close(r.time_to_repair.p95_minutes, 19.0, "time to repair, p95");
    assert_eq!(r.time_to_quarantine.count, 0, "never quarantined");
    assert!(r.remediations_by_step.is_empty());
    // Each node served while faulty for its whole fault: 1 + 2 + … + 20 = 210 minutes.
    assert_close(r.gpu_hours_lost.faulty_node_serving, gpu_hours(210.0), "faulty nodes still taking work");
    assert_close(r.gpu_hours_lost.total, gpu_hours(210.0), "nothing else lost");
}

#[test]
fn a_slow_network_soft_taint_on_a_flapping_link_counts_as_a_healthy_node_disrupted() {
    // A flap is not a real fault: seed 000 taints slow-network once the agent publishes the network check
    // failing (three failed runs, 90 s) and lifts it once the agent publishes it passing (two passing
    // runs): the flap clears at 10 min, on a probe tick, and the second pass is 30 s later.
    let cfg = fleet(4, 1);
    let flap = fault(0, Cause::NetworkFlap, Symptom::Network, Fix::SelfClears, Some(10 * MS_PER_MINUTE));
    let r = run(&cfg, &presets::seed000(), &[flap]);
    assert_eq!((r.faults.real, r.faults.network_flaps), (0, 1));
    assert!(r.remediations_by_step.is_empty());
    assert_eq!(r.time_to_quarantine.count, 0, "only real faults are timed");
    let tainted_minutes = 10.0 - 1.5 + 0.5;
    assert_close(r.gpu_hours_lost.healthy_nodes_disrupted, gpu_hours(tainted_minutes), "healthy node disrupted");
    assert_close(r.gpu_hours_lost.total, gpu_hours(tainted_minutes), "nothing else lost");
}

#[test]
fn injected_faults_on_nodes_outside_the_fleet_are_ignored() {
    let cfg = fleet(4, 1);
    let r = run(&cfg, &presets::seed000(), &[fault(9, Cause::FaultyGpu, Symptom::Gpu, Fix::Replace, None)]);
    assert_eq!(r.faults.real, 0);
    assert_close(r.gpu_hours_lost.total, 0.0, "nothing lost");
}

/// Eight of a 64-node pool lose rack power at the same instant and come back after 20 minutes.
fn rack_power_event() -> Vec<Fault> {
    (0..8).map(|i| fault(i, Cause::RackPower, Symptom::NodeNotReady, Fix::SelfClears, Some(20 * MS_PER_MINUTE))).collect()
}

#[test]
fn a_rack_power_event_trips_the_recommended_policys_circuit_breaker_and_nothing_is_rebooted_for_it() {
    // The recommended breaker trips when more than 10% of the selected nodes (6.4 of 64) turn
    // unhealthy within 10 minutes; the eight nodes' Ready=Unknown rule fires together after 5 minutes.
    // minHealthy 80% (52 of 64) still passes with 56 healthy, so the breaker is what holds them.
    let cfg = SimConfig { trace: true, ..fleet(64, 1) };
    let r = run(&cfg, &presets::recommended(), &rack_power_event());

    assert_eq!(r.timeline.iter().filter(|l| l.contains("BreakerTripped")).count(), 1, "tripped once");
    assert_eq!(r.gate_holds, steps(&[("circuit_breaker", 8)]));
    assert!(r.remediations_by_step.is_empty(), "{:?}", r.remediations_by_step);
    // Power returns after 20 minutes, before the 30-minute cooldown ends: every node recovers by itself.
    assert_eq!(r.time_to_repair.count, 8);
    assert_close(r.time_to_repair.mean_minutes, 20.0, "time to repair");
}

#[test]
fn without_its_circuit_breaker_the_recommended_policy_drains_and_reboots_nodes_in_a_rack_power_event() {
    let mut policy = presets::recommended();
    policy.gates.circuit_breaker = None;
    let r = run(&fleet(64, 1), &policy, &rack_power_event());
    assert!(!r.gate_holds.contains_key("circuit_breaker"));
    // maxConcurrent 5% of 64 lets three nodes at a time into drain and reboot: three are rebooted for
    // a fault that needed none. The other five wait for a slot after their quarantine; their power
    // returns first, and a node that heals while waiting is released, not drained.
    assert_eq!(r.remediations_by_step.get("drain"), Some(&3), "{:?}", r.remediations_by_step);
    assert_eq!(r.remediations_by_step.get("reboot"), Some(&3), "{:?}", r.remediations_by_step);
}

#[test]
fn the_fault_models_rack_power_events_trip_the_recommended_policys_circuit_breaker() {
    // Only rack power events, on a 64-node fleet in racks of 16: one event takes 25% of the fleet.
    let mut model = fixed_durations();
    model.unexpected_per_gpu_day = 0.0;
    model.flaps.episodes_per_node_day = 0.0;
    model.false_positives.per_node_day = 0.0;
    model.rack_power.per_rack_day = 0.25;
    model.rack_power.nodes_per_rack = 16;
    let cfg = SimConfig { model, trace: true, ..fleet(64, 2) };
    let r = nodemedic_sim::sim::simulate(&cfg, "nodemedic", &presets::recommended(), &mut |_| {});
    assert!(r.faults.real >= 16, "at least one event: {:?}", r.faults);
    assert!(r.timeline.iter().any(|l| l.contains("BreakerTripped")), "the breaker tripped");
    assert!(r.gate_holds.get("circuit_breaker").is_some_and(|n| *n > 0), "{:?}", r.gate_holds);
}

#[test]
fn a_part_needing_gpu_fault_goes_straight_to_replace_under_nodemedic_and_climbs_the_ladder_class_blind() {
    // Twenty nodes: the recommended policy's minHealthy 80 % holds a four-node fleet.
    let cfg = fleet(20, 3);
    let faults = [fault(0, Cause::FaultyGpu, Symptom::Gpu, Fix::Replace, None)];
    let classed = run(&cfg, &presets::recommended(), &faults);
    assert_eq!(classed.remediations_by_step.get("reboot"), None, "{:?}", classed.remediations_by_step);
    assert_eq!(classed.remediations_by_step.get("reimage"), None);
    assert_eq!(classed.remediations_by_step.get("replace"), Some(&1), "{:?} {:?}", classed.remediations_by_step, classed.gate_holds);
    assert_close(classed.gpu_hours_lost.ineffective_repairs, 0.0, "no repair that could not fix");
    let blind = run(&cfg, &nodemedic_sim::baselines::nodemedic_noclass(), &faults);
    assert_eq!(blind.remediations_by_step.get("reboot"), Some(&1), "{:?}", blind.remediations_by_step);
    assert!(blind.gpu_hours_lost.ineffective_repairs > 0.0);
    assert!(classed.gpu_hours_lost.policy_controlled < blind.gpu_hours_lost.policy_controlled);
}
