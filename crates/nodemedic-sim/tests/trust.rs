//! What makes the simulator's comparison fair, each on a fleet small enough for CI: common random
//! numbers, one people-response draw, the same replacement lead time whoever asks, imperfect probes,
//! the stronger baselines and the fixes found on the way, intervals over seeds and the sweep.

use nodemedic_core::{Policy, presets};
use nodemedic_sim::baselines;
use nodemedic_sim::faults::{
    Cause, DurationDist, Fault, FaultModel, Fix, FleetSpec, MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, ProbeSensitivity, Symptom,
};
use nodemedic_sim::seeds::{self, run_seeds, summarize};
use nodemedic_sim::sim::{Report, SimConfig, fault_plan, simulate, simulate_faults};
use nodemedic_sim::sweep::{self, Param, Point, run_sweep};

const GPUS: f64 = 8.0;

fn small(nodes: u32, days: i64, seed: u64) -> SimConfig {
    SimConfig { fleet: FleetSpec { nodes, gpus_per_node: 8, duration_ms: days * MS_PER_DAY }, seed, ..SimConfig::default() }
}

/// Fixed durations: reboot 10 min, reimage 40 min, replacement lead 24 h then 12 h of work, people
/// respond in 4 h; probes see everything.
fn fixed(nodes: u32, days: i64) -> SimConfig {
    let mut model = FaultModel::default();
    model.repair.gpu_node_reboot = DurationDist::fixed(10 * MS_PER_MINUTE);
    model.repair.reimage = DurationDist::fixed(40 * MS_PER_MINUTE);
    model.repair.replace = DurationDist::fixed(12 * MS_PER_HOUR);
    model.repair.replace_lead = DurationDist::fixed(24 * MS_PER_HOUR);
    model.repair.manual_response = DurationDist::fixed(4 * MS_PER_HOUR);
    model.probe_sensitivity = ProbeSensitivity { gpu: 1.0, network: 1.0 };
    SimConfig { model, ..small(nodes, days, 1) }
}

fn fault(node: u32, cause: Cause, symptom: Symptom, fix: Fix) -> Fault {
    let gpu = matches!(symptom, Symptom::Gpu | Symptom::GpuCount).then_some(0);
    Fault { id: node, node, gpu, start_ms: MS_PER_HOUR, cause, symptom, fix, self_clear_after_ms: None, false_positive: false }
}

fn run(cfg: &SimConfig, policy: &Policy, faults: &[Fault]) -> Report {
    simulate_faults(cfg, "scenario", policy, faults, &mut |_| {})
}

fn gpu_hours(minutes: f64) -> f64 {
    minutes / 60.0 * GPUS
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-6, "{what}: got {got}, want {want}");
}

#[test]
fn every_policy_faces_exactly_the_same_fault_timeline_with_the_same_durations() {
    let cfg = small(128, 30, 3);
    let policies = baselines::all().into_iter().chain(baselines::by_name_only());
    let reports: Vec<Report> = policies.map(|(n, p)| simulate(&cfg, n, &p, &mut |_| {})).collect();
    let first = &reports[0].faults;
    assert_ne!(first.digest, 0);
    for r in &reports {
        assert_eq!(
            (r.faults.digest, r.faults.real, r.faults.false_positives, r.faults.network_flaps),
            (first.digest, first.real, first.false_positives, first.network_flaps),
            "{}",
            r.policy
        );
    }
    // The digest covers the draws: another seed, another digest; the plan itself is the model's.
    assert_ne!(simulate(&small(128, 30, 4), "nodemedic", &presets::recommended(), &mut |_| {}).faults.digest, first.digest);
    assert_eq!(fault_plan(&cfg), fault_plan(&cfg));
}

#[test]
fn a_fault_takes_the_same_reboot_under_two_policies_that_reboot_it() {
    // Random (not fixed) reboot durations: the fault's own draw times the reboot, whoever orders it.
    let model = FaultModel { probe_sensitivity: ProbeSensitivity { gpu: 1.0, network: 1.0 }, ..FaultModel::default() };
    // 64 nodes: the recommended policy's gates (minHealthy 80 %, maxConcurrent 5 %) let one node in.
    let cfg = SimConfig { model, ..small(64, 1, 9) };
    let f = [fault(0, Cause::GpuSystemProcessor, Symptom::Gpu, Fix::Reboot)];
    let a = run(&cfg, &presets::seed000(), &f);
    let b = run(&cfg, &presets::recommended(), &f);
    assert_eq!((a.remediations_by_step.get("reboot"), b.remediations_by_step.get("reboot")), (Some(&1), Some(&1)));
    assert!(a.gpu_hours_lost.effective_repair > 0.0);
    close(a.gpu_hours_lost.effective_repair, b.gpu_hours_lost.effective_repair, "the reboot that worked");
}

#[test]
fn an_automated_replacement_waits_the_same_lead_time_as_one_a_person_asks_for() {
    let cfg = fixed(64, 4);
    let f = [fault(0, Cause::PowerSupply, Symptom::NodeNotReady, Fix::Replace)];
    // nodemedic: quarantine, drain, reboot, reimage, then the Replace step (lead 24 h, work 12 h).
    let auto = run(&cfg, &presets::recommended(), &f);
    assert_eq!(auto.remediations_by_step.get("replace"), Some(&1), "{:?}", auto.remediations_by_step);
    // seed004: reboot, then a person: response 4 h, lead 24 h, work 12 h.
    let person = run(&cfg, &presets::seed004(), &f);
    assert_eq!(person.escalations_to_manual, 1);
    // The lead time and the swap are "the repair that finally worked" for both, whoever asked; only
    // the person's response is waiting.
    close(auto.gpu_hours_lost.effective_repair, gpu_hours(36.0 * 60.0), "automated: lead time and swap");
    close(person.gpu_hours_lost.effective_repair, gpu_hours(36.0 * 60.0), "person: lead time and swap");
    assert!(auto.gpu_hours_lost.waiting < gpu_hours(60.0), "{:?}", auto.gpu_hours_lost);
    assert!(person.gpu_hours_lost.waiting >= gpu_hours(4.0 * 60.0), "{:?}", person.gpu_hours_lost);
}

#[test]
fn a_fault_people_find_waits_one_response_draw_not_two() {
    // seed000 watches no Ready: people find the dead power supply after 4 h and start at once.
    let cfg = fixed(4, 4);
    let r = run(&cfg, &presets::seed000(), &[fault(0, Cause::PowerSupply, Symptom::NodeNotReady, Fix::Replace)]);
    assert_eq!(r.faults.found_by_people, 1);
    close(r.time_to_quarantine.mean_minutes, 4.0 * 60.0, "cordoned when found");
    close(r.time_to_repair.mean_minutes, (4.0 + 24.0 + 12.0) * 60.0, "found, lead time, swap");
}

#[test]
fn silent_data_corruption_escapes_every_probe_and_is_left_to_people() {
    let cfg = fixed(64, 4);
    let r = run(&cfg, &presets::recommended(), &[fault(0, Cause::SilentDataCorruption, Symptom::Gpu, Fix::Replace)]);
    assert!(r.remediations_by_step.is_empty(), "{:?}", r.remediations_by_step);
    assert_eq!(r.faults.found_by_people, 1);
    close(r.gpu_hours_lost.faulty_node_serving, gpu_hours(4.0 * 60.0), "served while corrupting results");
}

#[test]
fn a_gpu_fault_the_probe_misses_is_found_by_people_and_one_it_sees_is_not() {
    let mut cfg = fixed(64, 4);
    let f = [fault(0, Cause::Hbm3, Symptom::Gpu, Fix::Reboot)];
    assert_eq!(run(&cfg, &presets::recommended(), &f).faults.found_by_people, 0);
    cfg.model.probe_sensitivity.gpu = 0.0;
    let missed = run(&cfg, &presets::recommended(), &f);
    assert_eq!(missed.faults.found_by_people, 1);
    assert!(missed.remediations_by_step.is_empty());
}

#[test]
fn seed004_fed_by_node_problem_detector_repairs_a_gpu_fault_that_ready_alone_never_sees() {
    let cfg = fixed(4, 2);
    let f = [fault(0, Cause::GpuSystemProcessor, Symptom::Gpu, Fix::Reboot)];
    let ready_only = run(&cfg, &presets::seed004(), &f);
    assert_eq!(ready_only.faults.found_by_people, 1);
    let npd = run(&cfg, &baselines::seed004_npd(), &f);
    assert_eq!(npd.remediations_by_step.get("reboot"), Some(&1), "{:?}", npd.remediations_by_step);
    assert_eq!(npd.faults.found_by_people, 0);
    // GpuUnhealthy after the first failed probe (30 s), plus NHC's 300 s.
    close(npd.time_to_quarantine.mean_minutes, 5.5, "time to quarantine");
}

#[test]
fn seed003_s_cilium_rule_fires_on_a_network_fault_and_unbounded_seed003_never_calls_a_person() {
    let cfg = fixed(4, 3);
    let nic = [fault(0, Cause::Nic, Symptom::Network, Fix::Reboot)];
    let r = run(&cfg, &presets::seed003(), &nic);
    assert_eq!(r.remediations_by_step.get("reboot"), Some(&1), "the Cilium rule fired: {:?}", r.remediations_by_step);
    assert_eq!(r.faults.found_by_people, 0);

    let part = [fault(0, Cause::PowerSupply, Symptom::NodeNotReady, Fix::Replace)];
    let bounded = run(&cfg, &presets::seed003(), &part);
    assert_eq!(bounded.escalations_to_manual, 1, "three reboots, then a person");
    let unbounded = run(&cfg, &baselines::seed003_unbounded(), &part);
    assert_eq!(unbounded.escalations_to_manual, 0);
    assert!(unbounded.remediations_by_step.get("reboot").is_some_and(|n| *n > 10), "{:?}", unbounded.remediations_by_step);
    assert_eq!(unbounded.faults.unresolved_at_end, 1, "it reboots a dead power supply until the run ends");
}

#[test]
fn a_resolve_waiting_on_fresh_conditions_is_decided_at_the_next_kubelet_report() {
    // seed003 reboots a dead power supply three times, then calls a person, who replaces it and marks
    // the node resolved. Ready turns True at that moment, but the engine also wants Cilium's
    // NetworkUnavailable condition reported after the resolve, and the kubelet re-posts unchanged
    // conditions only every 5 minutes. The simulator decides again at that report, as the controller
    // does on the Node's watch event; before, nothing woke the engine until another node changed,
    // and on this quiet fleet the healthy node stayed cordoned to the end of the run. The fault
    // starts 2 minutes off the kubelet's 5-minute grid, so the resolve is not on a report.
    let cfg = fixed(4, 4);
    let psu = Fault { start_ms: MS_PER_HOUR + 2 * MS_PER_MINUTE, ..fault(0, Cause::PowerSupply, Symptom::NodeNotReady, Fix::Replace) };
    let r = run(&cfg, &presets::seed003(), &[psu]);
    assert_eq!((r.escalations_to_manual, r.faults.unresolved_at_end), (1, 0));
    assert_eq!(r.gate_holds.get("awaiting_operator"), Some(&1), "the resolve waited for fresh conditions");
    assert!(r.gpu_hours_lost.healthy_nodes_disrupted > 0.0);
    assert!(r.gpu_hours_lost.healthy_nodes_disrupted <= gpu_hours(5.0), "{:?}", r.gpu_hours_lost);
}

#[test]
fn intervals_over_seeds_say_which_differences_are_significant() {
    let cfg = small(64, 20, 1);
    let policies: Vec<(String, Policy)> =
        vec![("nodemedic".into(), presets::recommended()), ("seed004".into(), presets::seed004()), ("seed000".into(), presets::seed000())];
    let seed_list: Vec<u64> = (1..=5).collect();
    let runs = run_seeds(&cfg, &policies, &seed_list, 2, &|_, _| {});
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|p| p.reports.len() == 5 && p.reports.iter().map(|r| r.seed).eq(1..=5)));
    // Running one seed alone gives the same report as inside the batch.
    assert_eq!(runs[1].reports[2], simulate(&SimConfig { seed: 3, ..cfg.clone() }, "seed004", &presets::seed004(), &mut |_| {}));
    let s = summarize(&seed_list, &runs);
    assert!(s.same_faults);
    assert_eq!(s.differences.len(), 3);
    for p in &s.policies {
        for (label, i) in &p.metrics {
            assert!(i.low <= i.mean && i.mean <= i.high && i.n == 5, "{} {label}: {i:?}", p.policy);
        }
    }
    let d = s.difference("nodemedic", "seed004").expect("a pair");
    let mean_gap = s.policies[0].metrics[1].1.mean - s.policies[1].metrics[1].1.mean;
    close(d.diff.mean, mean_gap, "the paired mean difference is the difference of means");
    assert_eq!(d.significant, d.diff.excludes_zero());
    let text = seeds::render(&s);
    assert!(text.contains("5 seeds (1..=5)") && text.contains("same faults per seed: yes") && text.contains("ranking"), "{text}");
    assert!(text.contains("nodemedic") && text.contains("significant"), "{text}");
}

#[test]
fn a_sweep_reports_the_ranking_and_the_gaps_per_scenario() {
    let cfg = small(32, 10, 1);
    let policies: Vec<(String, Policy)> = vec![("nodemedic".into(), presets::recommended()), ("seed004".into(), presets::seed004())];
    let points = [Point { param: Param::ManualResponseHours, value: 0.5 }, Point { param: Param::ProbeSensitivity, value: 0.5 }];
    let scenarios = run_sweep(&cfg, &policies, &[1, 2, 3], 2, &points, &|_, _| {});
    assert_eq!(scenarios.len(), 3, "the base model, then each point");
    assert!(scenarios[0].point.is_none() && scenarios[1].point == Some(points[0]));
    assert!(scenarios.iter().all(|s| s.summary.same_faults && s.summary.policies.len() == 2));
    let text = sweep::render(&scenarios);
    assert!(text.contains("base model") && text.contains("manual response median (h) = 0.5"), "{text}");
    assert!(text.contains("probe sensitivity = 0.5") && text.contains("nodemedic vs seed004"), "{text}");
}
