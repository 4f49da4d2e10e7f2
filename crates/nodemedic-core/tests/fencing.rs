//! Issue 11 §3: the `node.kubernetes.io/out-of-service` taint follows confirmed fencing only (the
//! BMC confirmed power Off, or the node came back with a new boot ID), is recorded on the
//! NodeRemediation before it is put on, and comes off when the node is back and Ready.

use nodemedic_core::engine::{Action, EventKind};
use nodemedic_core::fencing::{FencingSource, OUT_OF_SERVICE_TAINT, OUT_OF_SERVICE_VALUE};
use nodemedic_core::observe::{ReportedOutcome, TaintEffect};
use nodemedic_core::policy::{ConditionStatus, Policy};
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node, set_condition};
use nodemedic_core::{Decision, Duration, RemediationStep, apply, decide};
use proptest::prelude::*;
use std::collections::BTreeSet;

/// A dead node (Ready Unknown for 60 s) is powered off through its BMC, then goes to a person.
const POWER_OFF: &str = r#"
rules:
- {name: ready-false, condition: {type: Ready, status: "False"}, duration: 60s}
- {name: ready-unknown, condition: {type: Ready, status: Unknown}, duration: 60s}
ladder:
- {step: powerOff, timeout: 5m}
- {step: manual}
monitorOnly: false
"#;

/// A ladder with every step that could confirm fencing, and some that cannot.
const LONG_LADDER: &str = r#"
rules:
- {name: ready-unknown, condition: {type: Ready, status: Unknown}, duration: 60s}
ladder:
- {step: drain, timeout: 5m}
- {step: reboot, timeout: 5m, settle: 0s, verifyTimeout: 5m}
- {step: powerCycle, timeout: 5m, settle: 0s, verifyTimeout: 5m}
- {step: powerOff, timeout: 5m}
- {step: manual}
monitorOnly: false
"#;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn oos(d: &Decision) -> Vec<(String, bool)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::SetOutOfService { node, present, .. } => Some((node.clone(), *present)),
            _ => None,
        })
        .collect()
}

fn kinds(d: &Decision) -> Vec<EventKind> {
    d.events.iter().map(|e| e.kind).collect()
}

/// gpu-1 dies (its kubelet stops: Ready Unknown) and the power-off step starts after 60 s.
fn dead_node_powering_off(policy: &str) -> Result<Harness, Box<dyn std::error::Error>> {
    let mut h = Harness::new(Policy::from_yaml(policy)?, vec![gpu_node("gpu-1", "a", 8, EPOCH), gpu_node("gpu-2", "a", 8, EPOCH)]);
    h.node("gpu-1").boot_id = Some("boot-1".into());
    h.advance(Duration::from_mins(10));
    let now = h.now;
    set_condition(h.node("gpu-1"), "Ready", ConditionStatus::Unknown, "NodeStatusUnknown", now);
    h.advance(Duration::from_secs(61));
    h.decide();
    Ok(h)
}

#[test]
fn the_bmc_confirming_power_off_puts_the_out_of_service_taint_on_and_records_when_and_why() -> TestResult {
    let mut h = dead_node_powering_off(POWER_OFF)?;
    assert_eq!(h.records.nodes["gpu-1"].active.as_ref().map(|a| a.step), Some(RemediationStep::PowerOff));
    assert!(h.records.nodes["gpu-1"].out_of_service.is_none(), "suspicion alone (NotReady, a power-off under way) is not fencing");
    assert!(!h.taints("gpu-1").contains(&OUT_OF_SERVICE_TAINT.to_string()));

    h.advance(Duration::from_secs(20));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    let d = h.decide();
    assert_eq!(oos(&d), [("gpu-1".to_string(), true)]);
    assert!(kinds(&d).contains(&EventKind::OutOfServiceAdded), "{:?}", d.events);
    let record = &h.records.nodes["gpu-1"];
    let o = record.out_of_service.as_ref().ok_or("no outOfService on the record")?;
    assert_eq!((o.source, o.added_at, o.attempt), (FencingSource::BmcPowerOff, h.now, 1));
    assert!(o.reason.contains("BMC confirmed power Off"), "{}", o.reason);
    let taint = h.fleet[0].taints.iter().find(|t| t.key == OUT_OF_SERVICE_TAINT).ok_or("no taint")?;
    assert_eq!((taint.value.as_deref(), taint.effect), (Some(OUT_OF_SERVICE_VALUE), TaintEffect::NoExecute));
    // The ladder went on to a person; the taint stays while the node is off.
    h.advance(Duration::from_mins(30));
    let d = h.decide();
    assert!(oos(&d).is_empty() && h.taints("gpu-1").contains(&OUT_OF_SERVICE_TAINT.to_string()), "{d:?}");
    Ok(())
}

#[test]
fn a_power_off_the_bmc_refused_or_never_confirmed_never_puts_the_taint_on() -> TestResult {
    let mut h = dead_node_powering_off(POWER_OFF)?;
    h.advance(Duration::from_secs(20));
    h.report("gpu-1", ReportedOutcome::Failed);
    let d = h.decide();
    assert!(oos(&d).is_empty(), "{d:?}");
    assert_eq!(h.records.nodes["gpu-1"].active.as_ref().map(|a| a.step), Some(RemediationStep::Manual));

    let mut h = dead_node_powering_off(POWER_OFF)?;
    h.advance(Duration::from_mins(6));
    let d = h.decide();
    assert!(kinds(&d).contains(&EventKind::StepTimedOut) && oos(&d).is_empty(), "{d:?}");
    for _ in 0..5 {
        h.advance(Duration::from_hours(1));
        assert!(oos(&h.decide()).is_empty());
    }
    assert!(h.records.nodes["gpu-1"].out_of_service.is_none());
    Ok(())
}

#[test]
fn the_taint_comes_off_when_the_node_is_back_and_ready_and_is_then_left_alone() -> TestResult {
    let mut h = dead_node_powering_off(POWER_OFF)?;
    h.advance(Duration::from_secs(20));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    h.decide();
    // Someone powers it on: the kubelet posts Ready with a new boot ID.
    h.advance(Duration::from_mins(20));
    let now = h.now;
    h.node("gpu-1").boot_id = Some("boot-2".into());
    set_condition(h.node("gpu-1"), "Ready", ConditionStatus::True, "KubeletReady", now);
    let d = h.decide();
    assert_eq!(oos(&d), [("gpu-1".to_string(), false)]);
    assert!(kinds(&d).contains(&EventKind::OutOfServiceRemoved), "{:?}", d.events);
    let o = h.records.nodes["gpu-1"].out_of_service.clone().ok_or("the record forgot the taint")?;
    assert_eq!(o.removed_at, Some(now));
    assert!(o.removed_reason.as_deref().is_some_and(|r| r.contains("back and Ready")), "{o:?}");
    assert!(!h.taints("gpu-1").contains(&OUT_OF_SERVICE_TAINT.to_string()));
    h.advance(Duration::from_secs(30));
    h.decide();
    assert!(h.records.nodes["gpu-1"].out_of_service.as_ref().is_some_and(|o| o.lifted));
    // A person's own out-of-service taint later is theirs.
    nodemedic_core::fencing::apply_taint(h.node("gpu-1"), true);
    h.advance(Duration::from_secs(30));
    assert!(oos(&h.decide()).is_empty());
    Ok(())
}

#[test]
fn a_ready_condition_from_before_the_power_off_is_stale_and_not_the_node_coming_back() -> TestResult {
    // A GPU fault powers off a node whose Ready condition still says True (nobody noticed it die).
    let policy = r#"
rules:
- {name: gpu, condition: {type: GPUProblem, status: "True"}}
ladder:
- {step: powerOff, timeout: 5m}
- {step: manual}
monitorOnly: false
"#;
    let mut h = Harness::new(Policy::from_yaml(policy)?, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    let now = h.now;
    set_condition(h.node("gpu-1"), "GPUProblem", ConditionStatus::True, "Xid79", now);
    h.advance(Duration::from_secs(1));
    h.decide();
    h.advance(Duration::from_secs(20));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    assert_eq!(oos(&h.decide()), [("gpu-1".to_string(), true)]);
    h.advance(Duration::from_mins(5));
    assert!(oos(&h.decide()).is_empty(), "still Ready=True from before: not back");
    assert!(h.taints("gpu-1").contains(&OUT_OF_SERVICE_TAINT.to_string()));
    Ok(())
}

#[test]
fn a_node_back_from_its_reboot_with_a_new_boot_id_but_not_ready_by_the_steps_deadline_is_fenced() -> TestResult {
    let policy = POWER_OFF.replace("- {step: powerOff, timeout: 5m}", "- {step: reboot, timeout: 5m, settle: 0s, verifyTimeout: 5m}");
    let mut h = dead_node_powering_off(&policy)?;
    assert_eq!(h.records.nodes["gpu-1"].active.as_ref().map(|a| a.step), Some(RemediationStep::Reboot));
    h.advance(Duration::from_secs(90));
    h.node("gpu-1").boot_id = Some("boot-2".into());
    let now = h.now;
    set_condition(h.node("gpu-1"), "Ready", ConditionStatus::False, "ContainerRuntimeNotReady", now);
    let d = h.decide();
    assert!(oos(&d).is_empty(), "a kubelet that has just booted is NotReady for a moment: not yet {d:?}");
    // Still not Ready when the reboot's 5 minutes are up: the old incarnation is gone, free its pods.
    h.advance(Duration::from_mins(4));
    let d = h.decide();
    assert_eq!(oos(&d), [("gpu-1".to_string(), true)]);
    assert!(kinds(&d).contains(&EventKind::StepTimedOut), "{:?}", d.events);
    assert_eq!(h.records.nodes["gpu-1"].out_of_service.as_ref().map(|o| o.source), Some(FencingSource::NewBootId));
    // The same reboot returning Ready with its new boot ID needs no taint at all.
    let mut h = dead_node_powering_off(&policy)?;
    h.advance(Duration::from_secs(90));
    h.node("gpu-1").boot_id = Some("boot-2".into());
    let now = h.now;
    set_condition(h.node("gpu-1"), "Ready", ConditionStatus::True, "KubeletReady", now);
    let d = h.decide();
    assert!(oos(&d).is_empty() && h.records.nodes["gpu-1"].out_of_service.is_none(), "{d:?}");
    Ok(())
}

#[test]
fn the_record_is_written_before_the_taint_so_another_replica_puts_it_on_without_telling_twice() -> TestResult {
    let mut h = dead_node_powering_off(POWER_OFF)?;
    h.advance(Duration::from_secs(20));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    // The leader persists the record and dies before patching the node.
    let d = decide(&h.policy, &h.fleet, &h.records, h.now);
    assert_eq!(oos(&d), [("gpu-1".to_string(), true)]);
    apply(&d, &mut [], &mut h.records);
    assert!(h.records.nodes["gpu-1"].out_of_service.is_some(), "recorded before it is put on");
    h.advance(Duration::from_secs(15));
    let d = h.decide();
    assert_eq!(oos(&d), [("gpu-1".to_string(), true)], "the next leader puts the recorded taint on");
    assert!(!kinds(&d).contains(&EventKind::OutOfServiceAdded), "{:?}", d.events);
    let again = h.decide();
    assert!(oos(&again).is_empty() && again.record_changes.is_empty(), "{again:?}");
    Ok(())
}

#[test]
fn monitor_only_never_fences() -> TestResult {
    let mut h = dead_node_powering_off(&POWER_OFF.replace("monitorOnly: false", "monitorOnly: true"))?;
    h.advance(Duration::from_secs(20));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    let d = h.decide();
    assert!(oos(&d).is_empty() && d.would_execute.iter().all(|a| !matches!(a, Action::SetOutOfService { .. })), "{d:?}");
    assert!(h.records.nodes["gpu-1"].out_of_service.is_none());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Property: never without confirmation
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Wait(u32),
    Ready(ConditionStatus),
    Report(bool),
    NewBootId,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..400).prop_map(Op::Wait),
        prop_oneof![Just(ConditionStatus::True), Just(ConditionStatus::False), Just(ConditionStatus::Unknown)].prop_map(Op::Ready),
        any::<bool>().prop_map(Op::Report),
        Just(Op::NewBootId),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever happens (NotReady, reports of any outcome for any step, boot IDs, time), the taint
    /// goes on only for an attempt the test confirmed: a power step's success report, or a new boot
    /// ID during a step that restarts the node (the engine waits for that step's deadline too). It
    /// never goes on in monitor-only mode.
    #[test]
    fn the_out_of_service_taint_never_goes_on_without_confirmed_fencing(ops in proptest::collection::vec(op(), 1..60), monitor in any::<bool>()) {
        let policy = LONG_LADDER.replace("monitorOnly: false", &format!("monitorOnly: {monitor}"));
        let mut h = Harness::new(Policy::from_yaml(&policy).map_err(|e| TestCaseError::fail(e.to_string()))?, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
        h.node("gpu-1").boot_id = Some("boot-0".into());
        let mut boots = 0;
        // Attempts the test confirmed (the oracle), independent of the engine's rule.
        let mut confirmed: BTreeSet<u32> = BTreeSet::new();
        for op in &ops {
            let active = h.records.nodes.get("gpu-1").and_then(|r| r.active.clone());
            let attempt = h.attempt("gpu-1");
            match op {
                Op::Wait(s) => h.advance(Duration::from_secs(i64::from(*s))),
                Op::Ready(status) => {
                    let now = h.now;
                    set_condition(h.node("gpu-1"), "Ready", *status, "Test", now);
                }
                Op::Report(ok) => {
                    h.report("gpu-1", if *ok { ReportedOutcome::Succeeded } else { ReportedOutcome::Failed });
                    let power = active.as_ref().is_some_and(|a| a.executed && matches!(a.step, RemediationStep::PowerOff | RemediationStep::PowerCycle));
                    if *ok && power {
                        confirmed.insert(attempt);
                    }
                }
                Op::NewBootId => {
                    boots += 1;
                    h.node("gpu-1").boot_id = Some(format!("boot-{boots}"));
                    if active.as_ref().is_some_and(|a| a.executed && a.boot_id_at_start.is_some()) {
                        confirmed.insert(attempt);
                    }
                }
            }
            let d = h.decide();
            for a in d.actions.iter().chain(&d.would_execute) {
                if let Action::SetOutOfService { present: true, .. } = a {
                    let o = h.records.nodes.get("gpu-1").and_then(|r| r.out_of_service.clone());
                    let at = o.as_ref().map(|o| o.attempt).unwrap_or_default();
                    prop_assert!(!monitor, "monitor-only put the taint on: {o:?}");
                    prop_assert!(confirmed.contains(&at), "taint on for attempt {at}, confirmed only {confirmed:?}: {o:?}");
                }
            }
            let again = decide(&h.policy, &h.fleet, &h.records, h.now);
            prop_assert!(oos(&again).is_empty(), "deciding again changes the taint again: {again:?}");
        }
    }
}
