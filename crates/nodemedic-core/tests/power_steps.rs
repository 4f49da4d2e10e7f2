//! The BMC power steps in the ladder (issue 11 §1): `powerCycle` is a repair like a reboot (a
//! reported success counts only with a new boot ID), `powerOff` ends when the executor reports
//! success, and a failed power step moves the ladder on like any failed step.

use nodemedic_core::engine::{Action, EventKind};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::policy::Policy;
use nodemedic_core::record::Stage;
use nodemedic_core::testkit::Harness;
use nodemedic_core::{Decision, Duration, RemediationStep};

const POWER_LADDER: &str = r#"
rules:
- name: gpu
  check: {name: gpu}
ladder:
- {step: powerCycle, timeout: 10m, settle: 0s, verifyTimeout: 5m}
- {step: powerOff, timeout: 5m}
- {step: manual}
monitorOnly: false
"#;

fn executes(d: &Decision) -> Vec<(String, RemediationStep, u32)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute { node, step, attempt, .. } => Some((node.clone(), *step, *attempt)),
            _ => None,
        })
        .collect()
}

fn unhealthy_node() -> Result<Harness, Box<dyn std::error::Error>> {
    Ok(Harness::one_failing_gpu_node(Policy::from_yaml(POWER_LADDER)?))
}

#[test]
fn a_power_cycle_reported_done_counts_only_once_the_node_shows_a_new_boot_id() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = unhealthy_node()?;
    assert_eq!(executes(&h.decide()), [("gpu-1".to_string(), RemediationStep::PowerCycle, 1)]);
    h.advance(Duration::from_secs(30));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    h.decide();
    assert_eq!(h.stage("gpu-1"), Some(Stage::Executing), "the BMC confirmed the cycle, but the node has not rebooted yet");
    h.advance(Duration::from_secs(30));
    h.node("gpu-1").boot_id = Some("boot-2".into());
    h.decide();
    assert!(matches!(h.stage("gpu-1"), Some(Stage::Verifying { .. })), "{:?}", h.stage("gpu-1"));
    Ok(())
}

#[test]
fn a_failed_power_cycle_moves_on_to_power_off_which_ends_on_the_executors_report() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = unhealthy_node()?;
    h.decide();
    h.advance(Duration::from_secs(30));
    h.report("gpu-1", ReportedOutcome::Failed);
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::StepFailed), "{:?}", d.events);
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::PowerOff, 2)]);
    h.advance(Duration::from_secs(30));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::StepSucceeded), "{:?}", d.events);
    Ok(())
}
