//! The probe contract the agent, the controller and the simulator share (nodemedic_core::probe).

use nodemedic_core::engine::Action;
use nodemedic_core::observe::{OperatorAction, OperatorRequest};
use nodemedic_core::policy::{CheckMatch, ConditionStatus, Policy};
use nodemedic_core::probe::{
    CheckNameError, ProbeEvidence, ProbeFamily, Published, RunOutcome, ThresholdMachine, Thresholds, check_condition_type, check_evidence,
    probes_may_run, validate_plugin_name, verifying,
};
use nodemedic_core::record::{ActiveRemediation, Stage};
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node, set_condition};
use nodemedic_core::{Duration, RemediationStep, Time};
use proptest::prelude::*;

#[test]
fn every_family_maps_to_one_condition_and_back() {
    for family in ProbeFamily::ALL {
        assert_eq!(ProbeFamily::from_condition_type(family.condition_type()), Some(family));
        assert_eq!(ProbeFamily::from_check_name(family.check_name()), Some(family));
        assert_eq!(check_condition_type(&CheckMatch::family(family)), Ok(family.condition_type()));
    }
    assert_eq!(ProbeFamily::Gpu.condition_type(), "GPUProblem");
    // No suffix stripping: a condition merely ending in "Problem" is no family's.
    assert_eq!(ProbeFamily::from_condition_type("KernelProblem"), None);
    assert_eq!(ProbeFamily::from_condition_type("gpuProblem"), None);
}

#[test]
fn a_plugin_check_reads_the_condition_of_the_plugins_own_name() {
    let plugin = CheckMatch { name: "nccl-allreduce".into(), plugin: true };
    assert_eq!(check_condition_type(&plugin), Ok("nccl-allreduce"));
    let undeclared = CheckMatch { name: "nccl-allreduce".into(), plugin: false };
    assert_eq!(check_condition_type(&undeclared), Err(CheckNameError::Unknown("nccl-allreduce".into())));
    for reserved in ["gpu", "GPUProblem", "Ready", "DiskPressure", "NetworkUnavailable"] {
        assert!(validate_plugin_name(reserved).is_err(), "{reserved}");
    }
    for bad in ["", "-x", "x-", "a b", "ünïcode", &"x".repeat(64)] {
        assert!(validate_plugin_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(validate_plugin_name("ntp.drift_check-2"), Ok(()));
}

#[test]
fn policy_validation_rejects_a_check_no_agent_can_publish() {
    let policy = |check: &str| Policy::from_yaml(&format!("rules:\n- name: r\n  check: {check}\nladder:\n- step: reboot\n"));
    let err = policy("{name: nccl}").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("rules[0].check.name") && err.contains("no agent publishes a check `nccl`"), "{err}");
    assert!(policy("{name: nccl, plugin: true}").is_ok());
    assert!(policy("{name: Ready, plugin: true}").is_err(), "the kubelet's condition is no plugin's");
    // Run counts are the agent's; a policy cannot set them.
    let err = policy("{name: gpu, failures: 3}").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("failures"), "{err}");
}

#[test]
fn a_policy_naming_a_plugin_fires_on_the_plugins_condition() {
    let yaml = "rules:\n- name: nccl\n  check: {name: nccl-allreduce, plugin: true}\nladder:\n- step: reboot\nmonitorOnly: false\n";
    let policy = Policy::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut h = Harness::new(policy, vec![gpu_node("gpu-1", "a", 8, EPOCH)]).with_thresholds(2, 1);
    h.probe("gpu-1", "nccl-allreduce", false);
    assert!(h.decide().actions.is_empty(), "one failure is below the agent's threshold");
    h.advance(Duration::from_secs(30));
    h.probe("gpu-1", "nccl-allreduce", false);
    let d = h.decide();
    assert!(d.actions.iter().any(|a| matches!(a, Action::Execute { step: RemediationStep::Reboot, .. })), "{:?}", d.actions);
}

#[test]
fn the_engine_sees_the_agents_published_state_not_run_counts() {
    let mut node = gpu_node("gpu-1", "a", 8, EPOCH);
    let gpu = CheckMatch::family(ProbeFamily::Gpu);
    assert_eq!(check_evidence(&node, &gpu), None);
    set_condition(&mut node, "GPUProblem", ConditionStatus::True, "XidCritical", EPOCH + Duration::from_secs(5));
    assert_eq!(check_evidence(&node, &gpu).map(|e| e.evidence), Some(ProbeEvidence::Failing { since: EPOCH + Duration::from_secs(5) }));
    set_condition(&mut node, "GPUProblem", ConditionStatus::Unknown, "ToolMissing", EPOCH + Duration::from_secs(9));
    assert_eq!(check_evidence(&node, &gpu).map(|e| e.evidence), Some(ProbeEvidence::Unknown));
}

#[test]
fn the_default_thresholds_are_three_failures_and_two_passes() {
    let mut m = ThresholdMachine::new(Thresholds::AGENT_DEFAULT);
    let t = |s: i64| EPOCH + Duration::from_secs(s);
    assert!(!m.record(RunOutcome::Failed, t(0)));
    assert!(!m.record(RunOutcome::Failed, t(30)));
    assert!(m.record(RunOutcome::Failed, t(60)));
    assert_eq!(m.published(), Published::Unhealthy { since: t(60) });
    assert!(!m.record(RunOutcome::Failed, t(90)), "still unhealthy: the start of the failure stays");
    assert_eq!(m.published(), Published::Unhealthy { since: t(60) });
    assert!(!m.record(RunOutcome::Passed, t(120)));
    assert!(m.record(RunOutcome::Passed, t(150)));
    assert_eq!(m.published(), Published::Healthy { since: t(150) });
    assert!(!m.record(RunOutcome::Unknown, t(180)), "one unknown run is below the threshold too");
}

#[test]
fn an_unknown_replaces_not_yet_run_at_once_but_a_verdict_only_after_the_threshold() {
    let mut m = ThresholdMachine::new(Thresholds::AGENT_DEFAULT);
    assert!(m.record(RunOutcome::Unknown, EPOCH));
    assert_eq!(m.published(), Published::Unknown { since: EPOCH });
    let mut m = ThresholdMachine::new(Thresholds::AGENT_DEFAULT);
    m.record(RunOutcome::Passed, EPOCH);
    assert_eq!(m.published(), Published::NotYetRun);
}

fn outcome() -> impl Strategy<Value = RunOutcome> {
    prop_oneof![Just(RunOutcome::Failed), Just(RunOutcome::Passed), Just(RunOutcome::Unknown)]
}

proptest! {
    /// With both thresholds above one, a probe that alternates pass and fail never changes what is published.
    #[test]
    fn alternating_results_never_flip_the_published_state(f in 2u32..6, p in 2u32..6, start_fail in any::<bool>(), n in 1usize..60) {
        let mut m = ThresholdMachine::new(Thresholds::new(f, p));
        for i in 0..n {
            let fail = (i % 2 == 0) == start_fail;
            let changed = m.record(if fail { RunOutcome::Failed } else { RunOutcome::Passed }, EPOCH + Duration::from_secs(i as i64));
            prop_assert!(!changed);
        }
        prop_assert_eq!(m.published(), Published::NotYetRun);
    }

    /// Unhealthy is published only once the last `failures_before_unhealthy` runs all failed, and healthy only once
    /// the last `passes_before_healthy` runs all passed (or it already was).
    #[test]
    fn a_published_change_is_backed_by_a_full_streak(f in 1u32..5, p in 1u32..5, runs in proptest::collection::vec(outcome(), 1..80)) {
        let mut m = ThresholdMachine::new(Thresholds::new(f, p));
        for (i, run) in runs.iter().enumerate() {
            let before = m.published();
            let changed = m.record(*run, EPOCH + Duration::from_secs(i as i64));
            prop_assert_eq!(changed, m.published() != before);
            let streak = runs[..=i].iter().rev().take_while(|r| *r == run).count() as u32;
            match (changed, m.published()) {
                (true, Published::Unhealthy { .. }) => prop_assert!(*run == RunOutcome::Failed && streak >= f),
                (true, Published::Healthy { .. }) => prop_assert!(*run == RunOutcome::Passed && streak >= p),
                (true, Published::Unknown { .. }) => prop_assert!(*run == RunOutcome::Unknown && (streak >= f || before == Published::NotYetRun)),
                _ => {}
            }
        }
    }
}

fn active(step: RemediationStep, stage: Stage, started: Time) -> ActiveRemediation {
    ActiveRemediation {
        trigger: "gpu".into(),
        reason: String::new(),
        started_at: started,
        unhealthy_since: started,
        step_index: 0,
        step,
        step_started_at: started,
        deadline: None,
        stage,
        executed: true,
        boot_id_at_start: None,
        notified_at: None,
        unobserved: Duration::ZERO,
        unobserved_until: None,
        drain_held_at: None,
        fault_class: None,
        gpu: None,
    }
}

#[test]
fn only_a_resolve_made_after_the_manual_step_began_asks_for_a_recheck() {
    let began = EPOCH + Duration::from_hours(1);
    let manual = active(RemediationStep::Manual, Stage::Executing, began);
    let request = |action, at| OperatorRequest { action, by: "alice".into(), at };
    assert!(!verifying(Some(&manual), None), "a Manual node waits for a person");
    assert!(verifying(Some(&manual), Some(&request(OperatorAction::Resolve, began))));
    assert!(verifying(Some(&manual), Some(&request(OperatorAction::Resolve, began + Duration::from_mins(5)))));
    assert!(
        !verifying(Some(&manual), Some(&request(OperatorAction::Resolve, began - Duration::from_mins(5)))),
        "a resolve left from an earlier escalation is not this one's"
    );
    assert!(!verifying(Some(&manual), Some(&request(OperatorAction::Abort, began + Duration::from_mins(5)))), "an abort asks for nothing");
    let reboot = active(RemediationStep::Reboot, Stage::Executing, began);
    assert!(!verifying(Some(&reboot), Some(&request(OperatorAction::Resolve, began + Duration::from_mins(5)))));
    let checking = active(
        RemediationStep::Reboot,
        Stage::Verifying { completed_at: began, verify_from: began, verify_deadline: began + Duration::from_mins(10) },
        began,
    );
    assert!(verifying(Some(&checking), None));
    assert!(!verifying(None, Some(&request(OperatorAction::Resolve, began))));
}

#[test]
fn gpu_probes_pause_while_a_repair_or_a_drain_runs_unless_verifying() {
    let p = "nodemedic.io/";
    assert!(!probes_may_run(ProbeFamily::Gpu, &["nodemedic.io/draining"], p, false));
    assert!(!probes_may_run(ProbeFamily::Gpu, &["nodemedic.io/repair-reboot"], p, false));
    assert!(probes_may_run(ProbeFamily::Gpu, &["nodemedic.io/draining"], p, true));
    assert!(probes_may_run(ProbeFamily::Gpu, &["nodemedic.io/quarantine", "nodemedic.io/slow-network"], p, false));
    assert!(probes_may_run(ProbeFamily::Gpu, &["other.io/draining"], p, false), "another prefix is another owner's");
    for family in [ProbeFamily::Network, ProbeFamily::Disk, ProbeFamily::Custom] {
        assert!(probes_may_run(family, &["nodemedic.io/draining", "nodemedic.io/repair-reboot"], p, false));
    }
}
