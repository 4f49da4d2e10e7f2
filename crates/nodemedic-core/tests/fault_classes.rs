//! The fault class chooses the rung (nodemedic_core::class): the catalog's class travels in the agent's
//! condition reason, and the policy's `faultClasses` says where a remediation starts.

use nodemedic_core::class::{ClassRung, FaultClass, FaultClassRungs, step_rank};
use nodemedic_core::engine::{Action, Gate};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::policy::{ConditionStatus, Policy};
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node, set_condition};
use nodemedic_core::{Decision, Duration, RemediationStep, presets};
use proptest::prelude::*;

const LADDER: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: quarantine, timeout: 0s}
- {step: drain, timeout: 10m}
- {step: reboot, timeout: 30m}
- {step: reimage, timeout: 90m}
- {step: replace, timeout: 7d}
- {step: manual}
monitorOnly: false
"#;

fn policy(fault_classes: &str) -> Policy {
    Policy::from_yaml(&format!("{LADDER}{fault_classes}")).unwrap_or_else(|e| panic!("{e}"))
}

fn started(d: &Decision) -> Vec<RemediationStep> {
    d.actions.iter().filter_map(|a| if let Action::Execute { step, .. } = a { Some(*step) } else { None }).collect()
}

/// A node whose agent publishes a GPU fault of `class`; returns the harness after the first decision.
fn faulty(policy: Policy, class: FaultClass) -> (Harness, Decision) {
    let mut h = Harness::new(policy, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    let reason = class.condition_reason().unwrap_or("Unclassified");
    set_condition(h.node("gpu-1"), "GPUProblem", ConditionStatus::True, reason, EPOCH);
    let d = h.decide();
    (h, d)
}

#[test]
fn every_class_travels_in_its_condition_reason_and_back() {
    for class in FaultClass::ALL {
        let reason = class.condition_reason().unwrap_or_default();
        assert_eq!(FaultClass::from_condition_reason(reason), Some(class));
    }
    assert_eq!(FaultClass::from_condition_reason("XidCritical"), None);
}

#[test]
fn a_replace_class_fault_drains_then_goes_straight_to_replace_skipping_reboot_and_reimage() {
    let (mut h, d) = faulty(policy(""), FaultClass::Replace);
    assert_eq!(started(&d), [RemediationStep::Drain], "quarantine (0s) is over at once; preparation is never skipped");
    let start = d.events.iter().find(|e| e.message.contains("node unhealthy")).map(|e| e.message.clone()).unwrap_or_default();
    assert!(start.contains("fault class replace"), "{start}");
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    assert_eq!(started(&h.decide()), [RemediationStep::Replace]);
    assert_eq!(h.records.nodes["gpu-1"].active.as_ref().and_then(|a| a.fault_class), Some(FaultClass::Replace));
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Failed);
    h.decide();
    assert_eq!(h.records.nodes["gpu-1"].active.as_ref().map(|a| a.step), Some(RemediationStep::Manual), "then a person");
}

#[test]
fn a_replace_class_fault_goes_to_a_person_when_the_ladder_has_no_replace_step() {
    let yaml = LADDER.replace("- {step: replace, timeout: 7d}\n", "");
    let mut h = Harness::new(Policy::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}")), vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    set_condition(h.node("gpu-1"), "GPUProblem", ConditionStatus::True, "KernelFaultReplace", EPOCH);
    h.decide();
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    h.decide();
    assert_eq!(h.records.nodes["gpu-1"].active.as_ref().map(|a| a.step), Some(RemediationStep::Manual));
    assert!(h.records.nodes["gpu-1"].history.iter().all(|s| step_rank(s.step) == 0), "no reboot or reimage was tried");
}

#[test]
fn an_application_class_fault_starts_no_remediation_and_says_why() {
    let (h, d) = faulty(policy(""), FaultClass::RestartApplication);
    assert!(d.actions.iter().all(|a| !matches!(a, Action::Execute { .. } | Action::SetTaints { .. })), "{:?}", d.actions);
    assert!(h.records.nodes.get("gpu-1").is_none_or(|r| r.active.is_none()));
    assert!(d.holds.iter().any(|x| x.gate == Gate::FaultClass && x.message.contains("restart-application")), "{:?}", d.holds);
}

#[test]
fn a_policy_can_send_a_class_up_the_whole_ladder_or_hold_it() {
    let (_, d) = faulty(policy("faultClasses: {replace: ladder}\n"), FaultClass::Replace);
    assert_eq!(started(&d), [RemediationStep::Drain]);
    let (mut h, _) = faulty(policy("faultClasses: {replace: ladder}\n"), FaultClass::Replace);
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    assert_eq!(started(&h.decide()), [RemediationStep::Reboot], "ladder: the class chooses nothing");
    let (_, d) = faulty(policy("faultClasses: {resetGpu: events}\n"), FaultClass::ResetGpu);
    assert!(started(&d).is_empty());
    assert!(Policy::from_yaml(&format!("{LADDER}faultClasses: {{rma: replace}}\n")).is_err(), "unknown class");
}

#[test]
fn the_seed_presets_are_class_blind_and_the_recommended_policy_takes_the_defaults() {
    for p in [presets::seed000(), presets::seed003(), presets::seed004()] {
        assert_eq!(p.fault_classes, FaultClassRungs::class_blind());
    }
    let recommended = presets::recommended();
    assert_eq!(recommended.fault_classes.rung(Some(FaultClass::Replace)), ClassRung::Replace);
    assert_eq!(recommended.fault_classes.rung(Some(FaultClass::RestartApplication)), ClassRung::Events);
    assert_eq!(recommended.fault_classes.rung(Some(FaultClass::ResetGpu)), ClassRung::ResetGpu);
    assert_eq!(recommended.fault_classes.rung(None), ClassRung::Ladder);
}

fn class() -> impl Strategy<Value = FaultClass> {
    proptest::sample::select(FaultClass::ALL.to_vec())
}

fn rung() -> impl Strategy<Value = Option<&'static str>> {
    proptest::option::of(proptest::sample::select(vec!["events", "ladder", "resetGpu", "reboot", "reimage", "replace", "manual"]))
}

proptest! {
    /// A remediation never runs a repair step below its class's rung, whatever the ladder's steps report,
    /// and a class mapped to `events` (application faults by default) never starts one.
    #[test]
    fn no_repair_below_the_class_rung_and_no_remediation_for_an_events_class(
        class in class(),
        mapped in rung(),
        outcomes in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        let classes = mapped.map_or(String::new(), |r| format!("faultClasses: {{{}: {r}}}\n", camel(class)));
        let (mut h, d) = faulty(policy(&classes), class);
        let rungs = h.policy.fault_classes.clone();
        let rung = rungs.rung(Some(class));
        let mut steps = started(&d);
        for ok in outcomes {
            h.advance(Duration::from_hours(8));
            h.report("gpu-1", if ok { ReportedOutcome::Succeeded } else { ReportedOutcome::Failed });
            steps.extend(started(&h.decide()));
        }
        if rung == ClassRung::Events {
            prop_assert!(steps.is_empty(), "{:?}", steps);
        }
        let floor = match rung {
            ClassRung::Events | ClassRung::Ladder | ClassRung::ResetGpu => 1,
            ClassRung::Reboot => 2,
            ClassRung::Reimage => 3,
            ClassRung::Replace => 4,
            ClassRung::Manual => 5,
        };
        for step in steps {
            prop_assert!(step_rank(step) == 0 || step_rank(step) >= floor, "{:?} ran for {:?} at rung {:?}", step, class, rung);
        }
    }
}

fn camel(class: FaultClass) -> &'static str {
    match class {
        FaultClass::Ignore => "ignore",
        FaultClass::RestartApplication => "restartApplication",
        FaultClass::ResetGpu => "resetGpu",
        FaultClass::Reboot => "reboot",
        FaultClass::Replace => "replace",
        FaultClass::ContactSupport => "contactSupport",
    }
}
