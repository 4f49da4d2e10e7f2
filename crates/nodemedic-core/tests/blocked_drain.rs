//! A drain that PodDisruptionBudgets keep from finishing never turns into the next disruptive step:
//! the policy's `drain.whenBlocked` holds it, hands it to a person, or (only when it says so) forces it.

use nodemedic_core::drain::{DrainProgress, DrainedPod, PodAnswer};
use nodemedic_core::engine::{Action, EventKind};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node};
use nodemedic_core::{Duration, Policy, RemediationStep};

fn policy(when_blocked: &str) -> Policy {
    let yaml = format!(
        r#"
rules:
- name: gpu
  check: {{name: gpu}}
ladder:
- {{step: drain, timeout: 10m}}
- {{step: reboot, timeout: 10m}}
- {{step: manual}}
drain: {{whenBlocked: {when_blocked}}}
monitorOnly: false
"#
    );
    match Policy::from_yaml(&yaml) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// A node whose drain started, with one pod a budget refuses.
fn draining(when_blocked: &str) -> Harness {
    let mut h = Harness::new(policy(when_blocked), vec![gpu_node("gpu-1", "a", 8, EPOCH)]).with_thresholds(1, 1);
    h.probe("gpu-1", "gpu", false);
    let d = h.decide();
    assert!(d.actions.iter().any(|a| matches!(a, Action::Execute { step: RemediationStep::Drain, .. })), "{d:?}");
    let (attempt, now) = (h.attempt("gpu-1"), h.now);
    h.node("gpu-1").drain_progress = Some(DrainProgress {
        attempt,
        started_at: now,
        updated_at: now,
        pods: vec![DrainedPod {
            pod: "shop/db-0".into(),
            uid: "u-1".into(),
            asked_at: now,
            answer: PodAnswer::Refused,
            answered_at: now,
            detail: "blocked by PodDisruptionBudget db (needs 1 healthy pods and has 1 currently)".into(),
        }],
        forced: false,
    });
    h
}

fn step(h: &Harness) -> Option<RemediationStep> {
    h.records.nodes.get("gpu-1").and_then(|r| r.active.as_ref()).map(|a| a.step)
}

#[test]
fn a_pdb_blocked_drain_holds_instead_of_rebooting_and_tells_people_once_naming_the_pod_and_budget() {
    let mut h = draining("hold");
    h.advance(Duration::from_mins(11));
    let d = h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Drain), "still draining, no reboot");
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Execute { .. })), "nothing else runs: {d:?}");
    let held: Vec<&str> = d.events.iter().filter(|e| e.kind == EventKind::DrainHeld).map(|e| e.message.as_str()).collect();
    assert_eq!(held.len(), 1, "{d:?}");
    assert!(held[0].contains("shop/db-0") && held[0].contains("PodDisruptionBudget db"), "{}", held[0]);
    assert_eq!(h.taints("gpu-1"), ["nodemedic.io/draining"], "the node stays cordoned");

    // An hour later: still held, not told again.
    h.advance(Duration::from_hours(1));
    let d = h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Drain));
    assert!(d.events.iter().all(|e| e.kind != EventKind::DrainHeld), "{d:?}");

    // The budget allows it at last: the drain reports success and the reboot starts, once.
    h.report("gpu-1", ReportedOutcome::Succeeded);
    let d = h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Reboot));
    let reboots = d.actions.iter().filter(|a| matches!(a, Action::Execute { step: RemediationStep::Reboot, .. })).count();
    assert_eq!(reboots, 1);
}

#[test]
fn a_failed_drain_report_under_hold_holds_too() {
    let mut h = draining("hold");
    h.report("gpu-1", ReportedOutcome::Failed);
    let d = h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Drain), "{d:?}");
    assert!(d.events.iter().any(|e| e.kind == EventKind::DrainHeld));
}

#[test]
fn a_blocked_drain_under_escalate_goes_to_a_person_not_to_a_reboot() {
    let mut h = draining("escalate");
    h.advance(Duration::from_mins(11));
    let d = h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Manual));
    assert_eq!(h.records.nodes["gpu-1"].phase, Phase::Manual);
    let last = h.records.nodes["gpu-1"].history.last().map(|s| (s.step, s.outcome, s.reason.contains("shop/db-0")));
    assert_eq!(last, Some((RemediationStep::Drain, StepOutcome::Failed, true)));
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Execute { step: RemediationStep::Reboot, .. })));
    assert!(d.actions.iter().any(|a| matches!(a, Action::Notify { .. })), "people are told");
}

#[test]
fn a_forced_drain_waits_for_the_forced_deletions_and_records_the_override() {
    let mut h = draining("force");
    h.advance(Duration::from_mins(11));
    h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Drain), "the executor gets a second timeout to delete and report");
    if let Some(p) = h.node("gpu-1").drain_progress.as_mut() {
        p.forced = true;
    }
    h.report("gpu-1", ReportedOutcome::Succeeded);
    h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Reboot));
    let drain = h.records.nodes["gpu-1"].history.iter().find(|s| s.step == RemediationStep::Drain).map(|s| s.reason.clone());
    assert!(drain.is_some_and(|r| r.contains("override")), "{:?}", h.records.nodes["gpu-1"].history);
}

#[test]
fn a_forced_drain_that_never_reports_times_out_after_its_second_timeout() {
    let mut h = draining("force");
    h.advance(Duration::from_mins(11));
    h.decide();
    h.advance(Duration::from_mins(10));
    h.decide();
    let drain = h.records.nodes["gpu-1"].history.iter().find(|s| s.step == RemediationStep::Drain).map(|s| s.outcome);
    assert_eq!(drain, Some(StepOutcome::TimedOut));
}

#[test]
fn escalate_needs_a_manual_step_and_delete_after_needs_its_mode() {
    let no_manual = policy("escalate").ladder.into_iter().filter(|s| s.step != RemediationStep::Manual).collect();
    let p = Policy { ladder: no_manual, ..policy("escalate") };
    let err = p.validate().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("drain.whenBlocked"), "{err}");
    let yaml = "rules: [{name: g, check: {name: gpu}}]\nladder: [{step: drain, timeout: 1m}]\ndrain: {namespaceModes: [{namespaces: [a], mode: Immediate, deleteAfter: 1m}]}\n";
    let err = Policy::from_yaml(yaml).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("deleteAfter"), "{err}");
}

#[test]
fn monitor_only_drains_are_not_held() {
    let mut p = policy("hold");
    p.monitor_only = true;
    let mut h = Harness::new(p, vec![gpu_node("gpu-1", "a", 8, EPOCH)]).with_thresholds(1, 1);
    h.probe("gpu-1", "gpu", false);
    h.decide();
    h.advance(Duration::from_mins(11));
    h.decide();
    assert_eq!(step(&h), Some(RemediationStep::Reboot), "nothing was drained, so nothing is held");
}
