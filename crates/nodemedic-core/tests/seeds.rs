//! The seeds' behaviour, in the seeds' words, against the pure engine.

use nodemedic_core::engine::{Action, EventKind, Gate};
use nodemedic_core::observe::{OperatorAction, OperatorRequest, ReportedOutcome};
use nodemedic_core::policy::{CircuitBreaker, ConditionStatus, IntOrPercent, MaintenanceWindow, Policy, RetryBudget, Weekday};
use nodemedic_core::record::{Phase, Stage, StepOutcome};
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node, node, set_condition};
use nodemedic_core::{Decision, Duration, RemediationStep, presets, probes_may_run};

fn selector(yaml: &str) -> nodemedic_core::selector::LabelSelector {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("test selector {yaml:?}: {e}"))
}

fn live(mut p: Policy) -> Policy {
    p.monitor_only = false;
    p
}

fn executes(d: &Decision) -> Vec<(String, RemediationStep, u32)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute { node, step, attempt, .. } => Some((node.clone(), *step, *attempt)),
            _ => None,
        })
        .collect()
}

/// Each started step's time allowed, from `now`.
fn step_timeouts(d: &Decision, now: nodemedic_core::Time) -> Vec<(String, Option<Duration>)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute { node, deadline, .. } => Some((node.clone(), deadline.map(|t| t.since(now)))),
            _ => None,
        })
        .collect()
}

fn holds(d: &Decision) -> Vec<(String, Gate)> {
    d.holds.iter().map(|h| (h.node.clone(), h.gate)).collect()
}

/// The node comes back from a reboot: the agent restarts (fresh counters), kubelet posts Ready again,
/// and the executor reports the step done.
fn rebooted(h: &mut Harness, name: &str) {
    let now = h.now;
    h.restart_agent(name);
    let n = h.node(name);
    set_condition(n, "Ready", ConditionStatus::True, "KubeletReady", now);
    h.report(name, ReportedOutcome::Succeeded);
}

fn fail_gpu_three_times(h: &mut Harness, name: &str) -> Decision {
    for _ in 0..2 {
        h.probe(name, "gpu", false);
        let d = h.decide();
        assert!(d.actions.is_empty(), "fewer than three failures must not act: {:?}", d.actions);
        h.advance(Duration::from_secs(30));
    }
    h.probe(name, "gpu", false);
    h.decide()
}

/// The seeds' agents: three failed runs publish a failure and the first pass clears it (seed 000's
/// words; thresholds are the agent's probe schedule, see nodemedic_core::probe).
fn harness(policy: Policy, fleet: Vec<nodemedic_core::NodeObservation>) -> Harness {
    Harness::new(policy, fleet).with_thresholds(3, 1)
}

fn seed000_harness() -> Harness {
    harness(live(presets::seed000()), vec![gpu_node("gpu-1", "a", 8, EPOCH), gpu_node("gpu-2", "a", 8, EPOCH)])
}

#[test]
fn three_gpu_failures_taint_node_for_reboot() {
    let mut h = seed000_harness();
    let d = fail_gpu_three_times(&mut h, "gpu-1");
    assert_eq!(h.taints("gpu-1"), ["repair-reboot"]);
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::Reboot, 1)]);
    assert!(h.taints("gpu-2").is_empty());
    let started = d.events.iter().find(|e| e.kind == EventKind::RemediationStarted).unwrap();
    assert!(
        started.message.contains("check `gpu` failing since") && started.message.contains("the agent's threshold met"),
        "{}",
        started.message
    );
}

#[test]
fn a_passing_recheck_after_reboot_clears_the_taint() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.advance(Duration::from_mins(4));
    rebooted(&mut h, "gpu-1");
    assert!(h.decide().actions.is_empty());
    // Seed 000 waits five minutes before re-running the GPU tests.
    h.advance(Duration::from_mins(4));
    h.probe("gpu-1", "gpu", true);
    assert!(h.decide().actions.is_empty(), "still settling");
    assert_eq!(h.taints("gpu-1"), ["repair-reboot"]);
    h.advance(Duration::from_mins(1));
    h.probe("gpu-1", "gpu", true);
    let d = h.decide();
    assert!(h.taints("gpu-1").is_empty(), "healthy nodes are cleared of taints");
    assert!(d.events.iter().any(|e| e.kind == EventKind::Recovered));
    let rec = &h.records.nodes["gpu-1"];
    assert_eq!(rec.phase, Phase::Healthy);
    assert_eq!(rec.history.last().map(|s| (s.step, s.outcome)), Some((RemediationStep::Reboot, StepOutcome::Recovered)));
}

#[test]
fn a_failing_recheck_after_reboot_moves_to_reimage() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.advance(Duration::from_mins(4));
    rebooted(&mut h, "gpu-1");
    h.decide();
    h.advance(Duration::from_mins(5));
    let mut d = Decision::default();
    for _ in 0..3 {
        h.probe("gpu-1", "gpu", false);
        d = h.decide();
        h.advance(Duration::from_secs(30));
    }
    assert_eq!(h.taints("gpu-1"), ["repair-reimage"], "repair-reboot removed, repair-reimage applied");
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::Reimage, 2)]);
}

#[test]
fn a_failing_recheck_after_reimage_escalates_to_manual_with_diagnostics() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    for _ in 0..2 {
        h.advance(Duration::from_mins(4));
        rebooted(&mut h, "gpu-1");
        h.decide();
        h.advance(Duration::from_mins(5));
        for _ in 0..3 {
            h.probe("gpu-1", "gpu", false);
            h.decide();
        }
    }
    assert_eq!(h.taints("gpu-1"), ["repair-manual"]);
    let rec = &h.records.nodes["gpu-1"];
    assert_eq!(rec.phase, Phase::Manual);
    let steps: Vec<_> = rec.history.iter().map(|s| (s.step, s.outcome)).collect();
    assert_eq!(steps, [(RemediationStep::Reboot, StepOutcome::Failed), (RemediationStep::Reimage, StepOutcome::Failed)]);
}

#[test]
fn manual_escalation_notifies_once_with_node_details_and_repair_history() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    let mut notices = Vec::new();
    for _ in 0..2 {
        h.advance(Duration::from_mins(4));
        rebooted(&mut h, "gpu-1");
        h.decide();
        h.advance(Duration::from_mins(5));
        for _ in 0..3 {
            h.probe("gpu-1", "gpu", false);
            let d = h.decide();
            notices.extend(d.actions.into_iter().filter(|a| matches!(a, Action::Notify { .. })));
        }
    }
    for _ in 0..3 {
        h.advance(Duration::from_mins(10));
        assert!(h.decide().actions.is_empty(), "notified once, nothing more to do");
    }
    assert_eq!(notices.len(), 1);
    let Action::Notify { notice, .. } = &notices[0] else { unreachable!() };
    assert_eq!(notice.history.len(), 2);
    assert_eq!(notice.labels.get("nvidia.com/gpu.count").map(String::as_str), Some("8"));
    assert!(notice.checks.iter().any(|(rule, reason, _)| rule == "gpu" && reason == "Unhealthy"), "{:?}", notice.checks);
}

#[test]
fn slow_network_comes_and_goes_with_the_network_check() {
    let mut h = seed000_harness();
    for _ in 0..2 {
        h.probe("gpu-1", "network", false);
        h.decide();
    }
    assert!(h.taints("gpu-1").is_empty());
    h.probe("gpu-1", "network", false);
    let d = h.decide();
    assert_eq!(h.taints("gpu-1"), ["slow-network"]);
    assert!(d.events.iter().any(|e| e.kind == EventKind::SoftTaintAdded));
    assert!(executes(&d).is_empty(), "slow-network never escalates");
    for _ in 0..20 {
        h.advance(Duration::from_secs(30));
        h.probe("gpu-1", "network", false);
        assert!(executes(&h.decide()).is_empty());
    }
    assert!(!h.records.nodes.contains_key("gpu-1"), "a soft condition starts no remediation");
    h.probe("gpu-1", "network", true);
    let d = h.decide();
    assert!(h.taints("gpu-1").is_empty(), "removed as soon as the agent publishes the network check passing");
    assert!(d.events.iter().any(|e| e.kind == EventKind::SoftTaintRemoved));
}

#[test]
fn a_repair_tainted_node_is_not_rechecked_for_gpu_health() {
    assert!(!probes_may_run(nodemedic_core::ProbeFamily::Gpu, &["repair-reboot"], "", false));
    assert!(!probes_may_run(nodemedic_core::ProbeFamily::Gpu, &["nodemedic.io/repair-manual"], "nodemedic.io/", false));
    assert!(probes_may_run(nodemedic_core::ProbeFamily::Network, &["slow-network", "repair-reboot"], "", false));
    assert!(probes_may_run(nodemedic_core::ProbeFamily::Gpu, &["slow-network"], "", false));
    assert!(probes_may_run(nodemedic_core::ProbeFamily::Gpu, &["repair-reboot"], "", true), "the re-check after the reboot runs them");

    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    for _ in 0..10 {
        h.advance(Duration::from_secs(30));
        h.probe("gpu-1", "gpu", false);
        let d = h.decide();
        assert!(d.actions.is_empty(), "no second reboot while the first is in progress: {:?}", d.actions);
        assert!(d.summary.rule_reasons.contains(&("gpu".into(), "RepairInProgress", 1)), "{:?}", d.summary.rule_reasons);
    }
    assert_eq!(h.attempt("gpu-1"), 1);
}

fn six_workers() -> Harness {
    let fleet = (1..=6)
        .map(|i| {
            let mut n = node(&format!("worker-{i}"), "a", EPOCH);
            n.labels.insert("node-role.kubernetes.io/worker".into(), String::new());
            n
        })
        .collect();
    harness(live(presets::seed004()), fleet)
}

#[test]
fn six_workers_at_min_healthy_51_percent_remediate_only_with_four_healthy() {
    let mut h = six_workers();
    for i in 1..=3 {
        let now = h.now;
        set_condition(h.node(&format!("worker-{i}")), "Ready", ConditionStatus::False, "KubeletNotReady", now);
    }
    h.advance(Duration::from_secs(300));
    let d = h.decide();
    assert!(executes(&d).is_empty(), "3 of 6 healthy is below 51% rounded up (4)");
    assert_eq!(holds(&d).iter().filter(|(_, g)| *g == Gate::MinHealthy).count(), 3);
    assert!(d.holds[0].message.contains("only 3 of 6 nodes healthy, minHealthy 51% needs 4"), "{}", d.holds[0].message);
    let now = h.now;
    set_condition(h.node("worker-3"), "Ready", ConditionStatus::True, "KubeletReady", now);
    let d = h.decide();
    let started: Vec<_> = executes(&d).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["worker-1", "worker-2"], "4 of 6 healthy: remediation allowed");
}

#[test]
fn pause_stops_new_remediations_but_not_in_flight_ones() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.policy.pause_requests = vec!["cluster upgrade".into()];
    let d = fail_gpu_three_times(&mut h, "gpu-2");
    assert!(executes(&d).is_empty());
    assert_eq!(holds(&d), [("gpu-2".to_string(), Gate::Paused)]);
    assert!(d.holds[0].message.contains("cluster upgrade"));
    // gpu-1's reboot carries on to the end.
    rebooted(&mut h, "gpu-1");
    h.decide();
    h.advance(Duration::from_mins(5));
    h.probe("gpu-1", "gpu", true);
    h.decide();
    assert!(h.taints("gpu-1").is_empty());
    assert!(h.taints("gpu-2").is_empty());
    h.policy.pause_requests.clear();
    h.probe("gpu-2", "gpu", false);
    assert_eq!(executes(&h.decide()), [("gpu-2".to_string(), RemediationStep::Reboot, 1)]);
}

#[test]
fn the_civo_thresholds_each_trigger_at_their_own_duration_and_not_before() {
    let t0 = EPOCH;
    let mut ready = node("ready", "a", t0);
    set_condition(&mut ready, "Ready", ConditionStatus::False, "KubeletNotReady", t0);
    let mut gpu = gpu_node("gpu", "a", 8, t0);
    gpu.allocatable.insert("nvidia.com/gpu".into(), 7);
    let mut disk = node("disk", "a", t0);
    set_condition(&mut disk, "DiskPressure", ConditionStatus::True, "KubeletHasDiskPressure", t0);
    let mut cilium = node("cilium", "a", t0);
    set_condition(&mut cilium, "NetworkUnavailable", ConditionStatus::True, "CiliumIsDown", t0);
    let mut other_cni = node("other-cni", "a", t0);
    set_condition(&mut other_cni, "NetworkUnavailable", ConditionStatus::True, "NoRouteCreated", t0);
    let mut h = harness(live(presets::seed003()), vec![ready, gpu, disk, cilium, other_cni]);

    let mut started_at = std::collections::BTreeMap::new();
    for minute in 0..=31 {
        h.now = t0 + Duration::from_mins(minute);
        for (n, _, _) in executes(&h.decide()) {
            started_at.entry(n).or_insert(minute);
        }
        // Just before each threshold nothing has started for that node.
        h.now = t0 + Duration::from_mins(minute) + Duration::from_secs(59);
        h.decide();
    }
    let expected = std::collections::BTreeMap::from([
        ("ready".to_string(), 5),
        ("gpu".to_string(), 10),
        ("cilium".to_string(), 10),
        ("disk".to_string(), 30),
    ]);
    assert_eq!(started_at, expected, "other-cni is skipped: NetworkUnavailable is not Cilium's there");
}

#[test]
fn gpu_count_rule_reports_enumerable_reasons() {
    let mut matching = gpu_node("match", "a", 8, EPOCH);
    matching.labels.insert("amd.com/gpu.count".into(), "0".into());
    let mut mismatch = gpu_node("mismatch", "a", 8, EPOCH);
    mismatch.allocatable.insert("nvidia.com/gpu".into(), 6);
    let mut none = gpu_node("none", "a", 8, EPOCH);
    none.allocatable.remove("nvidia.com/gpu");
    let mut amd = node("amd", "a", EPOCH);
    amd.labels.insert("amd.com/gpu.count".into(), "8".into());
    amd.allocatable.insert("amd.com/gpu".into(), 8);
    let mut garbled = gpu_node("garbled", "a", 8, EPOCH);
    garbled.labels.insert("nvidia.com/gpu.count".into(), "eight".into());
    let cpu = node("cpu", "a", EPOCH);
    let mut h = harness(live(presets::seed003()), vec![matching, mismatch, none, amd, garbled, cpu]);
    let d = h.decide();
    let gpu: Vec<_> = d.summary.rule_reasons.iter().filter(|(r, _, _)| r == "gpu-count").map(|(_, reason, n)| (*reason, *n)).collect();
    assert_eq!(gpu, [("Failing", 2), ("GPUCountMatch", 2), ("NonGPUNode", 1), ("InvalidGPUCountLabel", 1)]);
    h.advance(Duration::from_mins(10));
    let d = h.decide();
    let gpu: Vec<_> = d.summary.rule_reasons.iter().filter(|(r, _, _)| r == "gpu-count").map(|(_, reason, n)| (*reason, *n)).collect();
    assert_eq!(
        gpu,
        [("GPUCountMatch", 2), ("GPUCountMismatch", 1), ("NoAllocatableGPU", 1), ("NonGPUNode", 1), ("InvalidGPUCountLabel", 1)]
    );
    let started: Vec<_> = executes(&d).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["mismatch", "none"], "an unreadable label never triggers a repair");
}

#[test]
fn gpu_nodes_wait_40_minutes_and_others_10() {
    let mut cpu = node("cpu", "a", EPOCH);
    set_condition(&mut cpu, "Ready", ConditionStatus::False, "KubeletNotReady", EPOCH);
    let mut gpu = gpu_node("gpu", "a", 8, EPOCH);
    set_condition(&mut gpu, "Ready", ConditionStatus::False, "KubeletNotReady", EPOCH);
    let mut h = harness(live(presets::seed003()), vec![cpu, gpu]);
    h.advance(Duration::from_mins(5));
    let d = h.decide();
    let deadlines = step_timeouts(&d, h.now);
    assert_eq!(deadlines, [("cpu".to_string(), Some(Duration::from_mins(10))), ("gpu".to_string(), Some(Duration::from_mins(40)))]);
    // Seed 003 waits the full time, whatever happens meanwhile.
    h.advance(Duration::from_mins(10));
    h.decide();
    let stage = |h: &Harness, n: &str| h.records.nodes[n].active.as_ref().map(|a| a.stage.clone());
    assert!(matches!(stage(&h, "cpu"), Some(Stage::Verifying { .. })), "the standard node's 10-minute wait is over: re-checking");
    assert_eq!(stage(&h, "gpu"), Some(Stage::Executing), "the GPU node still waits");
    // The re-check window is one kubelet report period (5 min): no fresh Ready within it.
    h.advance(Duration::from_mins(5));
    h.decide();
    assert_eq!(h.records.nodes["cpu"].attempt, 2, "still NotReady after the re-check window: next reboot");
    h.advance(Duration::from_mins(25));
    h.decide();
    assert!(matches!(stage(&h, "gpu"), Some(Stage::Verifying { .. })), "40 minutes after the reboot: re-checking");
    h.advance(Duration::from_mins(5));
    h.decide();
    assert_eq!(h.records.nodes["gpu"].attempt, 2);
}

#[test]
fn a_step_that_reports_failure_early_skips_straight_to_the_next_one() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Failed);
    let d = h.decide();
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::Reimage, 2)]);
    assert_eq!(h.taints("gpu-1"), ["repair-reimage"]);
    // A late report about the old attempt changes nothing.
    let now = h.now;
    nodemedic_core::testkit::report(h.node("gpu-1"), 1, ReportedOutcome::Succeeded, now);
    assert!(h.decide().actions.is_empty());
}

#[test]
fn a_step_without_a_report_times_out_and_the_ladder_moves_on() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.advance(Duration::from_mins(29));
    assert!(h.decide().actions.is_empty());
    h.advance(Duration::from_mins(1));
    let d = h.decide();
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::Reimage, 2)]);
    assert!(d.events.iter().any(|e| e.kind == EventKind::StepTimedOut));
}

#[test]
fn stale_evidence_never_triggers_a_repair() {
    let mut h = harness(live(presets::recommended()), vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    for _ in 0..3 {
        h.probe("gpu-1", "gpu", false);
        h.advance(Duration::from_secs(1));
    }
    // The agent died: its last report (three failures) is now older than staleAfter.
    h.advance(Duration::from_mins(6));
    let d = h.decide();
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.summary.unknown, 1);
    assert!(d.summary.rule_reasons.contains(&("gpu".into(), "Stale", 1)));
}

#[test]
fn monitor_only_records_everything_and_executes_nothing() {
    let mut h = seed000_harness();
    h.policy.monitor_only = true;
    let d = fail_gpu_three_times(&mut h, "gpu-1");
    assert!(d.actions.is_empty());
    assert!(d.would_execute.iter().any(|a| matches!(a, Action::Execute { step: RemediationStep::Reboot, .. })));
    assert!(h.taints("gpu-1").is_empty(), "nothing changes on the node");
    let rec = &h.records.nodes["gpu-1"];
    assert_eq!(rec.phase, Phase::Remediating);
    assert_eq!(rec.active.as_ref().map(|a| a.executed), Some(false));
}

#[test]
fn the_circuit_breaker_halts_a_mass_failure_until_the_cooldown_and_a_reset() {
    let fleet = (0..20).map(|i| gpu_node(&format!("gpu-{i:02}"), "a", 8, EPOCH)).collect();
    let mut p = live(presets::seed000());
    p.gates.circuit_breaker = Some(CircuitBreaker {
        max_unhealthy: IntOrPercent::Percent(20),
        window: Duration::from_mins(10),
        cooldown: Duration::from_mins(30),
        manual_reset: true,
    });
    let mut h = harness(p, fleet);
    for i in 0..5 {
        for _ in 0..3 {
            h.probe(&format!("gpu-{i:02}"), "gpu", false);
        }
    }
    let d = h.decide();
    assert!(executes(&d).is_empty(), "5 of 20 (25%) at once is more than 20%: halt");
    assert!(d.events.iter().any(|e| e.kind == EventKind::BreakerTripped && e.message.contains("5 of 20")));
    assert_eq!(holds(&d).len(), 5);
    h.advance(Duration::from_mins(31));
    assert!(executes(&h.decide()).is_empty(), "cooldown passed but nobody reset the breaker");
    h.records.policy.breaker_reset_requested_at = Some(h.now);
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::BreakerClosed));
    assert_eq!(executes(&d).len(), 5, "the old failures are outside the window now");
}

#[test]
fn a_lemon_node_goes_straight_to_manual() {
    let mut p = live(presets::seed000());
    p.gates.retry_budget = Some(RetryBudget { max_remediations: 2, window: Duration::from_days(7) });
    let mut h = harness(p, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    for _ in 0..2 {
        fail_gpu_three_times(&mut h, "gpu-1");
        rebooted(&mut h, "gpu-1");
        h.decide();
        h.advance(Duration::from_mins(5));
        h.probe("gpu-1", "gpu", true);
        h.decide();
        assert!(h.taints("gpu-1").is_empty());
        h.advance(Duration::from_hours(6));
    }
    let d = fail_gpu_three_times(&mut h, "gpu-1");
    assert_eq!(h.taints("gpu-1"), ["repair-manual"]);
    assert!(executes(&d).is_empty());
    assert!(d.events.iter().any(|e| e.kind == EventKind::LemonNode && e.message.contains("remediated 2 times")));
}

#[test]
fn max_concurrent_limits_disruptive_remediations() {
    let fleet = (0..10).map(|i| gpu_node(&format!("gpu-{i}"), "a", 8, EPOCH)).collect();
    let mut p = live(presets::seed000());
    p.gates.max_concurrent = Some(IntOrPercent::Count(2));
    let mut h = harness(p, fleet);
    for i in 0..4 {
        for _ in 0..3 {
            h.probe(&format!("gpu-{i}"), "gpu", false);
        }
    }
    let d = h.decide();
    assert_eq!(executes(&d).len(), 2);
    assert_eq!(holds(&d).iter().filter(|(_, g)| *g == Gate::MaxConcurrent).count(), 2);
}

#[test]
fn disruptive_steps_wait_for_a_maintenance_window() {
    let mut p = live(presets::seed000());
    // EPOCH is Monday 00:00 UTC; the window opens Tuesday 02:00 for two hours.
    p.gates.maintenance_windows =
        vec![MaintenanceWindow { days: vec![Weekday::Tue], start: "02:00".into(), duration: Duration::from_hours(2) }];
    let mut h = harness(p, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    let d = fail_gpu_three_times(&mut h, "gpu-1");
    assert_eq!(holds(&d), [("gpu-1".to_string(), Gate::MaintenanceWindow)]);
    assert_eq!(d.next_wakeup, Some(EPOCH + Duration::from_hours(26)));
    h.now = EPOCH + Duration::from_hours(26);
    assert_eq!(executes(&h.decide()).len(), 1);
}

#[test]
fn a_person_resolves_a_manual_node_and_it_returns_once_the_checks_pass() {
    let mut p = live(presets::seed000());
    p.ladder = vec![nodemedic_core::policy::LadderStep::new(RemediationStep::Manual, Duration::ZERO)];
    let mut h = harness(p, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    fail_gpu_three_times(&mut h, "gpu-1");
    assert_eq!(h.taints("gpu-1"), ["repair-manual"]);
    h.advance(Duration::from_hours(3));
    let now = h.now;
    h.node("gpu-1").operator_request = Some(OperatorRequest { action: OperatorAction::Resolve, by: "alice".into(), at: now });
    let d = h.decide();
    assert_eq!(holds(&d), [("gpu-1".to_string(), Gate::AwaitingOperator)], "checks have not run since");
    h.advance(Duration::from_secs(30));
    // The GPU probes run again (the resolve asks for a re-check) and pass the agent's two runs.
    h.probe("gpu-1", "gpu", true);
    h.probe("gpu-1", "gpu", true);
    let d = h.decide();
    assert!(h.taints("gpu-1").is_empty());
    assert!(d.events.iter().any(|e| e.kind == EventKind::ResolvedByOperator && e.message.contains("alice")));
}

#[test]
fn a_deleted_nodes_record_is_dropped() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.fleet.retain(|n| n.name != "gpu-1");
    let d = h.decide();
    assert!(d.record_changes.contains(&nodemedic_core::RecordChange::Delete("gpu-1".into())));
    assert!(h.records.nodes.is_empty());
}

#[test]
fn an_excluded_node_is_released_and_its_taints_lifted() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.node("gpu-1").labels.insert("nodemedic.io/exclude".into(), "true".into());
    let d = h.decide();
    assert!(h.taints("gpu-1").is_empty());
    assert!(d.events.iter().any(|e| e.kind == EventKind::NodeReleased));
    h.probe("gpu-1", "gpu", false);
    assert!(h.decide().actions.is_empty(), "excluded nodes are never touched");
}

#[test]
fn control_plane_nodes_need_their_own_policy() {
    let mut cp = gpu_node("cp-1", "a", 8, EPOCH);
    cp.labels.insert("node-role.kubernetes.io/control-plane".into(), String::new());
    let mut h = harness(live(presets::seed000()), vec![cp]);
    let d = fail_gpu_three_times(&mut h, "cp-1");
    assert_eq!(d.summary.selected, 0);
    assert!(d.actions.is_empty());
    h.policy.node_role = nodemedic_core::policy::NodeRole::ControlPlane;
    h.probe("cp-1", "gpu", false);
    assert_eq!(executes(&h.decide()).len(), 1);
}

#[test]
fn a_restarted_process_reloading_its_records_decides_exactly_the_same() {
    let mut h = seed000_harness();
    fail_gpu_three_times(&mut h, "gpu-1");
    h.advance(Duration::from_mins(3));
    rebooted(&mut h, "gpu-1");
    let json = serde_json::to_string(&h.records).unwrap();
    let reloaded: nodemedic_core::Records = serde_json::from_str(&json).unwrap();
    assert_eq!(reloaded, h.records);
    let a = nodemedic_core::decide(&h.policy, &h.fleet, &h.records, h.now);
    let b = nodemedic_core::decide(&h.policy, &h.fleet, &reloaded, h.now);
    assert_eq!(a, b);
}

// Regressions found by the property tests (tests/properties.rs).

fn recommended_fleet(n: usize) -> Harness {
    let fleet = (0..n).map(|i| gpu_node(&format!("gpu-{i:02}"), "a", 8, EPOCH)).collect();
    harness(live(presets::recommended()), fleet)
}

#[test]
fn a_zero_quarantine_window_moves_on_in_the_same_decision() {
    let mut h = recommended_fleet(20);
    let d = fail_gpu_three_times(&mut h, "gpu-07");
    assert_eq!(executes(&d), [("gpu-07".to_string(), RemediationStep::Drain, 2)], "quarantine (0s) is over at once: drain now");
    assert_eq!(h.taints("gpu-07"), ["nodemedic.io/draining"]);
    let again = h.decide();
    assert!(
        again.actions.is_empty() && again.record_changes.is_empty(),
        "deciding again at the same instant does nothing: {:?}",
        again.actions
    );
}

#[test]
fn a_slot_freed_by_a_recovery_goes_to_a_waiting_node_in_the_same_decision() {
    // maxConcurrent 5% of 20 nodes: one disruptive step at a time.
    let mut h = recommended_fleet(20);
    assert_eq!(executes(&fail_gpu_three_times(&mut h, "gpu-19")), [("gpu-19".to_string(), RemediationStep::Drain, 2)]);
    h.advance(Duration::from_secs(30));
    let d = fail_gpu_three_times(&mut h, "gpu-00");
    assert!(executes(&d).is_empty());
    assert_eq!(holds(&d), [("gpu-00".to_string(), Gate::MaxConcurrent)], "quarantined, its drain waits for the slot");
    h.advance(Duration::from_mins(1));
    h.report("gpu-19", ReportedOutcome::Succeeded);
    assert_eq!(executes(&h.decide()), [("gpu-19".to_string(), RemediationStep::Reboot, 3)], "the slot moves with gpu-19 to its reboot");
    h.advance(Duration::from_mins(4));
    rebooted(&mut h, "gpu-19");
    h.decide();
    h.advance(Duration::from_mins(2));
    h.probe("gpu-19", "gpu", true);
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::Recovered && e.node.as_deref() == Some("gpu-19")));
    assert_eq!(executes(&d), [("gpu-00".to_string(), RemediationStep::Drain, 2)], "gpu-19's slot is free this time, not next time");
    assert_eq!(d.summary.disruptive_in_flight, 1);
    let again = h.decide();
    assert!(again.actions.is_empty() && again.record_changes.is_empty(), "{:?}", again.actions);
}

#[test]
fn releasing_a_node_frees_its_slot_and_the_summary_says_so() {
    let mut h = recommended_fleet(20);
    fail_gpu_three_times(&mut h, "gpu-19");
    h.advance(Duration::from_secs(30));
    fail_gpu_three_times(&mut h, "gpu-00");
    h.node("gpu-19").labels.insert("nodemedic.io/exclude".into(), "true".into());
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::NodeReleased));
    assert_eq!(executes(&d), [("gpu-00".to_string(), RemediationStep::Drain, 2)]);
    assert_eq!(d.summary.disruptive_in_flight, 1, "gpu-19 is no longer in flight, gpu-00 is");
    assert!(h.decide().actions.is_empty());
}

#[test]
fn a_resolve_request_already_there_when_a_node_escalates_is_seen_in_the_same_decision() {
    let mut p = live(presets::seed000());
    p.ladder.remove(1); // reboot → manual
    let mut h = harness(p, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    fail_gpu_three_times(&mut h, "gpu-1");
    h.advance(Duration::from_mins(10));
    // At one instant: a person marks the node resolved, it comes back and passes its GPU check, and
    // the executor reports the reboot failed.
    let now = h.now;
    h.node("gpu-1").operator_request = Some(OperatorRequest { action: OperatorAction::Resolve, by: "alice".into(), at: now });
    rebooted(&mut h, "gpu-1");
    h.probe("gpu-1", "gpu", true);
    h.report("gpu-1", ReportedOutcome::Failed);
    let d = h.decide();
    let kinds: Vec<EventKind> = d.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::StepFailed,
            EventKind::EscalatedToManual,
            EventKind::ResolvedByOperator,
            EventKind::StepSucceeded,
            EventKind::Recovered
        ]
    );
    assert!(h.taints("gpu-1").is_empty());
    let again = h.decide();
    assert!(again.actions.is_empty() && again.record_changes.is_empty(), "deciding again changes nothing: {:?}", again.actions);
}

#[test]
fn a_node_that_recovers_counts_as_healthy_for_the_gates_in_the_same_decision() {
    let mut p = live(presets::seed000());
    p.ladder.remove(1); // reboot → manual
    p.gates.max_unhealthy = Some(IntOrPercent::Count(1));
    let fleet = (1..=3).map(|i| gpu_node(&format!("gpu-{i}"), "a", 8, EPOCH)).collect();
    let mut h = harness(p, fleet);
    fail_gpu_three_times(&mut h, "gpu-1");
    h.report("gpu-1", ReportedOutcome::Failed);
    h.decide();
    assert_eq!(h.taints("gpu-1"), ["repair-manual"]);
    h.advance(Duration::from_hours(1));
    let d = fail_gpu_three_times(&mut h, "gpu-2");
    assert_eq!(holds(&d), [("gpu-2".to_string(), Gate::MaxUnhealthy)], "2 unhealthy, maxUnhealthy 1");
    // A person fixes gpu-1; its GPU check passes again.
    h.advance(Duration::from_mins(1));
    let now = h.now;
    h.node("gpu-1").operator_request = Some(OperatorRequest { action: OperatorAction::Resolve, by: "alice".into(), at: now });
    h.probe("gpu-1", "gpu", true);
    h.probe("gpu-1", "gpu", true);
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::ResolvedByOperator));
    assert_eq!(executes(&d), [("gpu-2".to_string(), RemediationStep::Reboot, 1)], "gpu-1 is healthy again in this decision");
    assert_eq!((d.summary.healthy, d.summary.unhealthy), (2, 1));
    let again = h.decide();
    assert!(again.actions.is_empty() && again.record_changes.is_empty(), "{:?}", again.actions);
}

#[test]
fn every_taint_change_says_why() {
    let mut h = harness(live(presets::seed000()), vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    let d = fail_gpu_three_times(&mut h, "gpu-1");
    let reasons: Vec<&str> =
        d.actions.iter().filter_map(|a| if let Action::SetTaints { reason, .. } = a { Some(reason.as_str()) } else { None }).collect();
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("repair-reboot shows remediation step reboot (attempt 1)") && reasons[0].contains("check `gpu` failing since"),
        "{reasons:?}"
    );
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Failed);
    let d = h.decide();
    let reason = d
        .actions
        .iter()
        .find_map(|a| if let Action::SetTaints { reason, .. } = a { Some(reason.clone()) } else { None })
        .unwrap_or_default();
    assert!(
        reason.contains("repair-reimage shows remediation step reimage")
            && reason.contains("repair-reboot lifted: the node moved on to step reimage"),
        "{reason}"
    );
}

const REPORTED_REBOOT: &str = r#"
rules:
- name: gpu
  check: {name: gpu}
ladder:
- {step: reboot, timeout: 10m, settle: 0s, verifyTimeout: 5m}
- {step: reimage, timeout: 30m}
- {step: manual}
monitorOnly: false
"#;

#[test]
fn a_reboot_reported_done_counts_only_once_the_node_shows_a_new_boot_id() {
    let policy = Policy::from_yaml(REPORTED_REBOOT).unwrap();
    let mut h = Harness::one_failing_gpu_node(policy);
    assert_eq!(executes(&h.decide()), [("gpu-1".to_string(), RemediationStep::Reboot, 1)]);
    h.advance(Duration::from_secs(30));
    // The executor says done, but the node still runs the same boot: not believed.
    h.report("gpu-1", ReportedOutcome::Succeeded);
    let d = h.decide();
    assert!(!d.events.iter().any(|e| e.kind == EventKind::StepSucceeded || e.kind == EventKind::StepFailed), "{:?}", d.events);
    assert_eq!(h.stage("gpu-1"), Some(Stage::Executing));
    // It comes back with a new boot ID: now the reboot is done and the checks are re-run.
    h.advance(Duration::from_secs(30));
    h.node("gpu-1").boot_id = Some("boot-2".into());
    h.decide();
    assert!(matches!(h.stage("gpu-1"), Some(Stage::Verifying { .. })), "{:?}", h.stage("gpu-1"));
}

#[test]
fn a_reboot_whose_node_never_shows_a_new_boot_id_times_out_saying_so() {
    let policy = Policy::from_yaml(REPORTED_REBOOT).unwrap();
    let mut h = Harness::one_failing_gpu_node(policy);
    h.decide();
    h.report("gpu-1", ReportedOutcome::Succeeded);
    h.advance(Duration::from_mins(11));
    let d = h.decide();
    let timed_out = d.events.iter().find(|e| e.kind == EventKind::StepTimedOut).expect("timed out");
    assert!(timed_out.message.contains("did not come back Ready with a new boot ID (still boot-1)"), "{}", timed_out.message);
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::Reimage, 2)]);
}

#[test]
fn a_mass_failure_still_there_after_the_cooldown_keeps_the_breaker_open_without_a_second_trip() {
    let fleet: Vec<_> = (0..10).map(|i| gpu_node(&format!("gpu-{i:02}"), "a", 8, EPOCH)).collect();
    let mut p = live(presets::seed000());
    p.gates.circuit_breaker = Some(CircuitBreaker {
        max_unhealthy: IntOrPercent::Percent(20),
        window: Duration::from_mins(10),
        cooldown: Duration::from_mins(2),
        manual_reset: false,
    });
    let mut h = harness(p, fleet);
    let fail_all = |h: &mut Harness| {
        for i in 0..4 {
            for _ in 0..3 {
                h.probe(&format!("gpu-{i:02}"), "gpu", false);
            }
        }
    };
    fail_all(&mut h);
    let d = h.decide();
    assert_eq!(d.events.iter().filter(|e| e.kind == EventKind::BreakerTripped).count(), 1);
    // Cooldown over, the four nodes still failing within the window: still open, no new trip, no close.
    h.advance(Duration::from_mins(3));
    fail_all(&mut h);
    let d = h.decide();
    assert!(executes(&d).is_empty(), "{:?}", d.actions);
    assert!(!d.events.iter().any(|e| e.kind == EventKind::BreakerTripped || e.kind == EventKind::BreakerClosed), "{:?}", d.events);
    assert!(d.summary.breaker_open);
    assert_eq!(h.records.policy.breaker_tripped_at, Some(EPOCH), "the same trip (one notification), extended");
    // Once the window has no mass failure any more, it closes after the next cooldown.
    for i in 0..4 {
        h.probe(&format!("gpu-{i:02}"), "gpu", true);
    }
    h.advance(Duration::from_mins(11));
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::BreakerClosed), "{:?}", d.events);
}

#[test]
fn the_record_keeps_the_evidence_of_each_attempt_for_a_person_to_read() {
    let policy = Policy::from_yaml(REPORTED_REBOOT).unwrap();
    let mut h = Harness::one_failing_gpu_node(policy);
    h.decide();
    h.advance(Duration::from_mins(11));
    h.decide(); // the reboot timed out: the reimage starts, with a second snapshot
    let rec = &h.records.nodes["gpu-1"];
    let gpu: Vec<&str> = rec.diagnostics.iter().filter(|d| d.rule == "gpu").map(|d| d.reason.as_str()).collect();
    assert_eq!(gpu, ["Unhealthy", "Unhealthy"], "{:?}", rec.diagnostics);
    assert!(rec.diagnostics.iter().all(|d| d.detail.contains("check `gpu`")), "{:?}", rec.diagnostics);
}

#[test]
fn a_rule_for_ready_false_ignores_ready_unknown_and_the_other_way_round() {
    let mut p = live(presets::seed000());
    p.rules = vec![
        Policy::from_yaml(
            "rules:\n- name: ready-false\n  condition: {type: Ready, status: \"False\"}\n  duration: 5m\nladder:\n- step: reboot\n",
        )
        .unwrap()
        .rules
        .remove(0),
    ];
    let mut unknown = gpu_node("unknown", "a", 8, EPOCH);
    set_condition(&mut unknown, "Ready", ConditionStatus::Unknown, "NodeStatusUnknown", EPOCH);
    let mut not_ready = gpu_node("not-ready", "a", 8, EPOCH);
    set_condition(&mut not_ready, "Ready", ConditionStatus::False, "KubeletNotReady", EPOCH);
    let fleet = vec![unknown, not_ready, gpu_node("fine-1", "a", 8, EPOCH), gpu_node("fine-2", "a", 8, EPOCH)];
    let mut h = harness(p.clone(), fleet.clone());
    h.advance(Duration::from_mins(6));
    let started: Vec<_> = executes(&h.decide()).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["not-ready"], "Unknown is not False");

    p.rules[0].condition.as_mut().unwrap().status = ConditionStatus::Unknown;
    p.rules[0].name = "ready-unknown".into();
    let mut h = harness(p, fleet);
    h.advance(Duration::from_mins(6));
    let started: Vec<_> = executes(&h.decide()).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["unknown"], "False is not Unknown");
}

#[test]
fn match_labels_and_match_expressions_both_have_to_hold() {
    let mut p = live(presets::seed000());
    p.selector = selector(
        "matchLabels: {cloud.google.com/gke-accelerator: nvidia-h100-80gb}\nmatchExpressions:\n- {key: tier, operator: NotIn, values: [canary]}\n",
    );
    let mut h100 = gpu_node("h100", "a", 8, EPOCH);
    h100.labels.insert("cloud.google.com/gke-accelerator".into(), "nvidia-h100-80gb".into());
    let mut canary = h100.clone();
    canary.name = "h100-canary".into();
    canary.labels.insert("tier".into(), "canary".into());
    let mut a100 = gpu_node("a100", "a", 8, EPOCH);
    a100.labels.insert("cloud.google.com/gke-accelerator".into(), "nvidia-a100-80gb".into());
    let mut h = harness(p, vec![h100, canary, a100]);
    for n in ["h100", "h100-canary", "a100"] {
        for _ in 0..3 {
            h.probe(n, "gpu", false);
        }
    }
    let d = h.decide();
    assert_eq!(d.summary.selected, 1);
    let started: Vec<_> = executes(&d).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["h100"]);
}

#[test]
fn a_node_pool_filter_selects_only_the_named_pools_and_empty_means_all() {
    let fleet =
        vec![gpu_node("train-1", "training", 8, EPOCH), gpu_node("infer-1", "inference", 8, EPOCH), gpu_node("other-1", "batch", 8, EPOCH)];
    let mut p = live(presets::seed000());
    p.node_pools = vec!["training".into(), "inference".into()];
    let mut h = harness(p, fleet.clone());
    for n in ["train-1", "infer-1", "other-1"] {
        for _ in 0..3 {
            h.probe(n, "gpu", false);
        }
    }
    let d = h.decide();
    assert_eq!(d.summary.selected, 2);
    let started: Vec<_> = executes(&d).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["infer-1", "train-1"]);

    let mut h = harness(live(presets::seed000()), fleet);
    for n in ["train-1", "infer-1", "other-1"] {
        for _ in 0..3 {
            h.probe(n, "gpu", false);
        }
    }
    assert_eq!(h.decide().summary.selected, 3, "no pool filter: every pool");
}

#[test]
fn a_custom_node_class_gets_its_own_step_timeout() {
    let mut p = live(presets::seed003());
    p.node_classes = vec![nodemedic_core::policy::NodeClass {
        name: "bare-metal".into(),
        selector: selector("matchLabels: {node.kubernetes.io/instance-type: bm-gpu}\n"),
    }];
    p.ladder[0].timeout_by_class.insert("bare-metal".into(), Duration::from_mins(90));
    p.validate().unwrap();
    let mut metal = gpu_node("metal", "a", 8, EPOCH);
    metal.labels.insert("node.kubernetes.io/instance-type".into(), "bm-gpu".into());
    set_condition(&mut metal, "Ready", ConditionStatus::False, "KubeletNotReady", EPOCH);
    let mut vm = gpu_node("vm", "a", 8, EPOCH);
    set_condition(&mut vm, "Ready", ConditionStatus::False, "KubeletNotReady", EPOCH);
    let mut h = harness(p, vec![metal, vm, gpu_node("ok-1", "a", 8, EPOCH), gpu_node("ok-2", "a", 8, EPOCH)]);
    h.advance(Duration::from_mins(5));
    let d = h.decide();
    let deadlines = step_timeouts(&d, h.now);
    assert_eq!(
        deadlines,
        [("metal".to_string(), Some(Duration::from_mins(90))), ("vm".to_string(), Some(Duration::from_mins(40)))],
        "the first class a node matches wins over the built-in gpu class"
    );
}

#[test]
fn amd_gpu_nodes_get_the_same_count_reasons_as_nvidia() {
    let amd = |name: &str, label: &str, allocatable: Option<i64>| {
        let mut n = node(name, "a", EPOCH);
        n.labels.insert("amd.com/gpu.count".into(), label.into());
        if let Some(a) = allocatable {
            n.allocatable.insert("amd.com/gpu".into(), a);
        }
        n
    };
    let fleet = vec![
        amd("mi300-ok", "8", Some(8)),
        amd("mi300-short", "8", Some(7)),
        amd("mi300-none", "8", None),
        amd("mi300-ok-2", "8", Some(8)),
    ];
    let mut h = harness(live(presets::seed003()), fleet);
    h.decide();
    h.advance(Duration::from_mins(10));
    let d = h.decide();
    let gpu: Vec<_> = d.summary.rule_reasons.iter().filter(|(r, _, _)| r == "gpu-count").map(|(_, reason, n)| (*reason, *n)).collect();
    assert_eq!(gpu, [("GPUCountMatch", 2), ("GPUCountMismatch", 1), ("NoAllocatableGPU", 1)]);
    let started: Vec<_> = executes(&d).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["mi300-none", "mi300-short"]);
}

#[test]
fn max_concurrent_per_pool_limits_each_pool_on_its_own() {
    let fleet = (0..6).flat_map(|i| [gpu_node(&format!("a-{i}"), "a", 8, EPOCH), gpu_node(&format!("b-{i}"), "b", 8, EPOCH)]).collect();
    let mut p = live(presets::seed000());
    p.gates.max_concurrent_per_pool = Some(IntOrPercent::Count(1));
    let mut h = harness(p, fleet);
    for n in ["a-0", "a-1", "a-2", "b-0"] {
        for _ in 0..3 {
            h.probe(n, "gpu", false);
        }
    }
    let d = h.decide();
    let started: Vec<_> = executes(&d).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(started, ["a-0", "b-0"], "one per pool; pool b is not held back by pool a");
    let held: Vec<_> = holds(&d).into_iter().filter(|(_, g)| *g == Gate::MaxConcurrentPerPool).map(|(n, _)| n).collect();
    assert_eq!(held, ["a-1", "a-2"]);
}

#[test]
fn a_fleet_wide_disk_pressure_trips_the_breaker_although_its_rule_waits_longer_than_the_window() {
    // The recommended policy waits 30 minutes on DiskPressure; its breaker window is 10 minutes.
    // The breaker must count when a node *became unhealthy by the policy* (the rule fired), not when
    // the pressure began, or no rule slower than the window could ever trip it.
    let fleet: Vec<_> = (0..20).map(|i| gpu_node(&format!("gpu-{i:02}"), "a", 8, EPOCH)).collect();
    let mut p = live(presets::recommended());
    // Only the breaker stands between this mass failure and six drains.
    p.gates.min_healthy = None;
    p.gates.max_concurrent = None;
    let mut h = harness(p, fleet);
    for i in 0..20 {
        let name = format!("gpu-{i:02}");
        let now = h.now;
        let n = h.node(&name);
        nodemedic_core::testkit::probe(n, "gpu", true, now);
        nodemedic_core::testkit::probe(n, "network", true, now);
        if i < 6 {
            set_condition(n, "DiskPressure", ConditionStatus::True, "KubeletHasDiskPressure", now);
        }
    }
    assert!(executes(&h.decide()).is_empty());
    for _ in 0..30 {
        h.advance(Duration::from_mins(1));
        let now = h.now;
        for n in h.fleet.iter_mut() {
            nodemedic_core::testkit::probe(n, "gpu", true, now);
            nodemedic_core::testkit::probe(n, "network", true, now);
            for c in n.conditions.iter_mut() {
                c.last_heartbeat_time = Some(now);
            }
        }
        let d = h.decide();
        assert!(executes(&d).is_empty(), "nothing may start: {:?}", executes(&d));
    }
    assert!(h.records.policy.breaker_tripped_at.is_some(), "6 of 20 (30%) turned unhealthy at once: more than 10%");
}

#[test]
fn a_quarantined_node_that_recovers_while_waiting_for_a_drain_slot_is_released_not_drained() {
    let fleet: Vec<_> = (0..10).map(|i| gpu_node(&format!("gpu-{i}"), "a", 8, EPOCH)).collect();
    let mut p = live(presets::recommended());
    p.gates.max_concurrent = Some(IntOrPercent::Count(1));
    p.gates.circuit_breaker = None;
    let mut h = harness(p, fleet);
    let all: Vec<String> = (0..10).map(|i| format!("gpu-{i}")).collect();
    let fresh = |h: &mut Harness, failing: &[&str]| {
        let now = h.now;
        for n in &all {
            // The kubelet's status report refreshes Ready's heartbeat.
            set_condition(h.node(n), "Ready", ConditionStatus::True, "KubeletReady", now);
            h.probe(n, "network", true);
            if failing.contains(&n.as_str()) {
                h.probe(n, "gpu", false);
            } else if h.agents.get(&(n.clone(), "gpu".to_string())).is_none_or(|m| m.failure_streak() == 0) {
                h.probe(n, "gpu", true);
            }
        }
    };
    fresh(&mut h, &[]);
    h.decide();
    for _ in 0..3 {
        h.advance(Duration::from_secs(30));
        fresh(&mut h, &["gpu-1", "gpu-2"]);
    }
    let d = h.decide();
    let started: Vec<_> = executes(&d).into_iter().map(|(n, step, _)| (n, step)).collect();
    assert_eq!(started, [("gpu-1".to_string(), RemediationStep::Drain)], "one slot: gpu-2 waits");
    assert!(holds(&d).contains(&("gpu-2".to_string(), Gate::MaxConcurrent)));
    assert!(h.taints("gpu-2").iter().any(|t| t.ends_with("quarantine")), "{:?}", h.taints("gpu-2"));

    // gpu-2's GPU check passes again before a slot frees up.
    h.advance(Duration::from_secs(30));
    fresh(&mut h, &["gpu-1"]);
    h.probe("gpu-2", "gpu", true);
    let d = h.decide();
    assert!(executes(&d).is_empty(), "{:?}", executes(&d));
    assert!(h.taints("gpu-2").is_empty(), "released: {:?}", h.taints("gpu-2"));
    assert!(
        d.events
            .iter()
            .any(|e| e.kind == EventKind::Recovered && e.node.as_deref() == Some("gpu-2") && e.message.contains("drain not needed"))
    );
    let rec = &h.records.nodes["gpu-2"];
    assert_eq!(rec.phase, Phase::Healthy);
    assert!(rec.history.last().is_some_and(|s| s.reason.contains("recovered before drain started")), "{:?}", rec.history);
    assert_eq!(h.taints("gpu-1").len(), 1, "gpu-1 is still being drained: {:?}", h.taints("gpu-1"));
}
