//! The `external` ladder step (issue 11 §4, the medik8s External Remediation API): what it means for
//! the ladder. The remediator's `Succeeded=True` arrives as a succeeded report and the node is then
//! verified like after any repair; `Succeeded=False` arrives as a failed report and the ladder moves
//! on; a remediator that never answers times the step out to the next rung. The policy must name the
//! template completely, and only an external step may name one.

use nodemedic_core::engine::{Action, EventKind};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::policy::{ExternalTemplate, Policy};
use nodemedic_core::record::Stage;
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node};
use nodemedic_core::{Decision, Duration, RemediationStep};
use proptest::prelude::*;

const EXTERNAL_LADDER: &str = r#"
rules:
- name: gpu
  check: {name: gpu}
ladder:
- step: external
  timeout: 10m
  settle: 0s
  verifyTimeout: 5m
  template:
    apiVersion: self-node-remediation.medik8s.io/v1alpha1
    kind: SelfNodeRemediationTemplate
    name: self-node-remediation-automatic-strategy-template
    namespace: medik8s
- {step: reboot, timeout: 10m}
- {step: manual}
monitorOnly: false
"#;

type Exec = (String, RemediationStep, u32, Option<ExternalTemplate>);

fn executes(d: &Decision) -> Vec<Exec> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute { node, step, attempt, template, .. } => Some((node.clone(), *step, *attempt, template.clone())),
            _ => None,
        })
        .collect()
}

fn snr_template() -> ExternalTemplate {
    ExternalTemplate {
        api_version: "self-node-remediation.medik8s.io/v1alpha1".into(),
        kind: "SelfNodeRemediationTemplate".into(),
        name: "self-node-remediation-automatic-strategy-template".into(),
        namespace: "medik8s".into(),
    }
}

fn unhealthy_node() -> Result<Harness, Box<dyn std::error::Error>> {
    Ok(Harness::one_failing_gpu_node(Policy::from_yaml(EXTERNAL_LADDER)?))
}

#[test]
fn an_external_step_hands_its_template_to_the_executor_and_is_recorded_before_it_runs() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = unhealthy_node()?;
    let d = h.decide();
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::External, 1, Some(snr_template()))]);
    let change = d.record_changes.iter().any(|c| matches!(c, nodemedic_core::RecordChange::Upsert(r) if r.active.as_ref().is_some_and(|a| a.step == RemediationStep::External) && r.attempt == 1));
    assert!(change, "the record names the step and its attempt: {:?}", d.record_changes);
    assert!(h.taints("gpu-1").iter().any(|t| t.ends_with("repair-external")), "{:?}", h.taints("gpu-1"));
    let again = h.decide();
    assert!(executes(&again).is_empty(), "asked once per attempt: {:?}", again.actions);
    Ok(())
}

#[test]
fn a_remediator_that_succeeded_is_verified_by_the_checks_without_needing_a_new_boot_id() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = unhealthy_node()?;
    h.decide();
    h.advance(Duration::from_secs(30));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    h.decide();
    assert!(matches!(h.stage("gpu-1"), Some(Stage::Verifying { .. })), "{:?}", h.stage("gpu-1"));
    h.advance(Duration::from_secs(5));
    h.probe("gpu-1", "gpu", true);
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::Recovered), "{:?}", d.events);
    assert!(h.records.nodes.get("gpu-1").is_none_or(|r| r.active.is_none()), "the remediation is over");
    assert!(executes(&d).is_empty());
    Ok(())
}

#[test]
fn a_remediator_that_reports_failure_moves_the_ladder_to_the_next_rung() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = unhealthy_node()?;
    h.decide();
    h.advance(Duration::from_secs(30));
    h.report("gpu-1", ReportedOutcome::Failed);
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::StepFailed), "{:?}", d.events);
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::Reboot, 2, None)]);
    Ok(())
}

#[test]
fn a_remediator_that_never_answers_times_out_to_the_next_rung() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = unhealthy_node()?;
    h.decide();
    h.advance(Duration::from_mins(9));
    assert!(executes(&h.decide()).is_empty(), "still within the step's timeout");
    h.advance(Duration::from_mins(1) + Duration::from_secs(1));
    let d = h.decide();
    assert!(d.events.iter().any(|e| e.kind == EventKind::StepTimedOut), "{:?}", d.events);
    assert_eq!(executes(&d), [("gpu-1".to_string(), RemediationStep::Reboot, 2, None)]);
    Ok(())
}

#[test]
fn an_external_step_is_disruptive_so_the_concurrency_gate_holds_a_second_node() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = EXTERNAL_LADDER.replace("monitorOnly: false", "monitorOnly: false\ngates: {maxConcurrent: 1}");
    let mut h = Harness::new(Policy::from_yaml(&yaml)?, vec![gpu_node("gpu-1", "a", 8, EPOCH), gpu_node("gpu-2", "a", 8, EPOCH)])
        .with_thresholds(1, 1);
    h.probe("gpu-1", "gpu", false);
    h.probe("gpu-2", "gpu", false);
    let d = h.decide();
    assert_eq!(executes(&d).len(), 1, "one external remediation at a time: {:?}", d.actions);
    Ok(())
}

#[test]
fn the_template_round_trips_through_yaml_under_its_camel_case_names() -> Result<(), Box<dyn std::error::Error>> {
    let policy = Policy::from_yaml(EXTERNAL_LADDER)?;
    assert_eq!(policy.ladder[0].template, Some(snr_template()));
    assert_eq!(snr_template().remediation_kind(), "SelfNodeRemediation");
    let json = serde_json::to_value(&policy)?;
    assert_eq!(json["ladder"][0]["template"]["apiVersion"], "self-node-remediation.medik8s.io/v1alpha1");
    assert!(json["ladder"][1].get("template").is_none(), "no template written for other steps: {}", json["ladder"][1]);
    assert_eq!(Policy::from_yaml(&serde_json::to_string(&json)?)?, policy);
    Ok(())
}

fn refusal(yaml: &str) -> String {
    match Policy::from_yaml(yaml) {
        Ok(p) => format!("accepted: {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_external_step_without_a_template_is_refused_naming_the_field() {
    let yaml = "rules: [{name: gpu, check: {name: gpu}}]\nladder: [{step: external}, {step: manual}]\n";
    let e = refusal(yaml);
    assert!(e.contains("ladder[0].template") && e.contains("external needs a template"), "{e}");
}

#[test]
fn an_incomplete_template_is_refused_naming_each_field() {
    let yaml = r#"
rules: [{name: gpu, check: {name: gpu}}]
ladder:
- {step: external, template: {apiVersion: v1alpha1, kind: SelfNodeRemediation, name: "", namespace: " "}}
- {step: manual}
"#;
    let e = refusal(yaml);
    for field in ["ladder[0].template.apiVersion", "ladder[0].template.kind", "ladder[0].template.name", "ladder[0].template.namespace"] {
        assert!(e.contains(field), "{field} missing from: {e}");
    }
    let missing_key =
        "rules: [{name: gpu, check: {name: gpu}}]\nladder: [{step: external, template: {apiVersion: a.io/v1, kind: XTemplate, name: x}}]\n";
    assert!(refusal(missing_key).contains("namespace"), "{}", refusal(missing_key));
}

#[test]
fn a_template_on_a_step_other_than_external_is_refused() {
    let yaml = r#"
rules: [{name: gpu, check: {name: gpu}}]
ladder:
- {step: reboot, template: {apiVersion: a.io/v1, kind: XTemplate, name: x, namespace: y}}
- {step: manual}
"#;
    let e = refusal(yaml);
    assert!(e.contains("ladder[0].template") && e.contains("only an external step takes a template"), "{e}");
}

/// What the remediator does at each turn of the property test.
#[derive(Debug, Clone, Copy)]
enum Remediator {
    Silent,
    Succeeds,
    Fails,
}

proptest! {
    /// Whatever the remediator says and however time passes: each attempt is executed at most once,
    /// the ladder never goes back to the external rung within one remediation, and the external
    /// rung is left only by success (verification), failure or its timeout.
    #[test]
    fn whatever_the_remediator_answers_each_attempt_runs_once_and_the_ladder_only_moves_forward(
        turns in proptest::collection::vec((prop_oneof![Just(Remediator::Silent), Just(Remediator::Succeeds), Just(Remediator::Fails)], 1i64..400, any::<bool>()), 1..25)
    ) {
        let mut h = unhealthy_node().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        let mut last_index = 0;
        let first = h.decide();
        for (node, step, attempt, _) in executes(&first) {
            prop_assert!(seen.insert((node, attempt)));
            prop_assert_eq!(step, RemediationStep::External);
        }
        for (answer, secs, healthy) in turns {
            h.advance(Duration::from_secs(secs));
            let on_external = h.records.nodes.get("gpu-1").and_then(|r| r.active.as_ref()).is_some_and(|a| a.step == RemediationStep::External && a.stage == Stage::Executing);
            match answer {
                Remediator::Succeeds if on_external => h.report("gpu-1", ReportedOutcome::Succeeded),
                Remediator::Fails if on_external => h.report("gpu-1", ReportedOutcome::Failed),
                _ => {}
            }
            h.probe("gpu-1", "gpu", healthy);
            let d = h.decide();
            for (node, step, attempt, template) in executes(&d) {
                prop_assert!(seen.insert((node, attempt)), "attempt {} executed twice", attempt);
                prop_assert_eq!(template.is_some(), step == RemediationStep::External);
            }
            if let Some(a) = h.records.nodes.get("gpu-1").and_then(|r| r.active.as_ref()) {
                prop_assert!(a.step_index >= last_index, "went back from rung {} to {}", last_index, a.step_index);
                last_index = a.step_index;
            } else {
                last_index = 0;
            }
        }
    }
}
