//! The single-GPU reset step (`resetGpu`): a reset-class fault whose GPU the agent named starts there;
//! a reset is never aimed at an unknown GPU, and without one (or without the step) the ladder reboots.

use nodemedic_core::class::FaultClass;
use nodemedic_core::engine::Action;
use nodemedic_core::gpu::{GpuDevice, faulty_gpus_from_annotation};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::policy::{ConditionStatus, Policy};
use nodemedic_core::testkit::{EPOCH, Harness, gpu_node, set_condition, set_condition_gpu};
use nodemedic_core::{Decision, Duration, RemediationStep};
use proptest::prelude::*;

const LADDER: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: quarantine, timeout: 0s}
- {step: drain, timeout: 10m}
- {step: resetGpu, timeout: 5m}
- {step: reboot, timeout: 30m}
- {step: reimage, timeout: 90m}
- {step: manual}
monitorOnly: false
"#;

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn gpu3() -> GpuDevice {
    GpuDevice::from_bus_id("00000000:3B:00.0", Some(3)).unwrap_or_else(|e| panic!("{e}"))
}

fn started(d: &Decision) -> Vec<RemediationStep> {
    d.actions.iter().filter_map(|a| if let Action::Execute { step, .. } = a { Some(*step) } else { None }).collect()
}

/// A node whose agent publishes a GPU fault with `reason`, on `gpu` when it names one; after the drain
/// (reported done) returns the harness and the step the ladder went on to.
fn after_drain(policy: Policy, reason: &str, gpu: Option<GpuDevice>) -> (Harness, Vec<RemediationStep>) {
    let mut h = Harness::new(policy, vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
    set_condition(h.node("gpu-1"), "GPUProblem", ConditionStatus::True, reason, EPOCH);
    set_condition_gpu(h.node("gpu-1"), "GPUProblem", gpu);
    assert_eq!(started(&h.decide()), [RemediationStep::Drain], "preparation is never skipped");
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Succeeded);
    let next = started(&h.decide());
    (h, next)
}

#[test]
fn a_reset_class_fault_on_a_known_gpu_resets_that_gpu_and_records_it() {
    let (h, next) = after_drain(policy(LADDER), "KernelFaultResetGpu", Some(gpu3()));
    assert_eq!(next, [RemediationStep::ResetGpu]);
    let active = h.records.nodes["gpu-1"].active.clone().unwrap_or_else(|| panic!("no active remediation"));
    assert_eq!(active.gpu, Some(gpu3()), "the record says which GPU to reset");
    assert_eq!(active.fault_class, Some(FaultClass::ResetGpu));
}

#[test]
fn a_reset_class_fault_on_an_unknown_gpu_reboots_instead() {
    let (h, next) = after_drain(policy(LADDER), "KernelFaultResetGpu", None);
    assert_eq!(next, [RemediationStep::Reboot]);
    assert!(h.records.nodes["gpu-1"].history.iter().all(|s| s.step != RemediationStep::ResetGpu));
}

#[test]
fn a_reset_class_fault_reboots_when_the_ladder_has_no_reset_step() {
    let (_, next) = after_drain(policy(&LADDER.replace("- {step: resetGpu, timeout: 5m}\n", "")), "KernelFaultResetGpu", Some(gpu3()));
    assert_eq!(next, [RemediationStep::Reboot], "today's fallback");
}

#[test]
fn a_reboot_class_fault_skips_the_reset_even_on_a_known_gpu() {
    let (_, next) = after_drain(policy(LADDER), "KernelFaultReboot", Some(gpu3()));
    assert_eq!(next, [RemediationStep::Reboot]);
}

#[test]
fn a_failed_reset_goes_on_to_the_reboot() {
    let (mut h, next) = after_drain(policy(LADDER), "KernelFaultResetGpu", Some(gpu3()));
    assert_eq!(next, [RemediationStep::ResetGpu]);
    h.advance(Duration::from_mins(1));
    h.report("gpu-1", ReportedOutcome::Failed);
    assert_eq!(started(&h.decide()), [RemediationStep::Reboot]);
}

#[test]
fn the_reset_step_is_a_disruptive_repair_with_its_own_taint() {
    assert!(RemediationStep::ResetGpu.is_repair());
    assert!(RemediationStep::ResetGpu.is_disruptive());
    assert_eq!(RemediationStep::ResetGpu.taint_name(), "repair-reset-gpu");
    assert_eq!(RemediationStep::ResetGpu.as_str(), "resetGpu");
}

#[test]
fn bus_ids_are_read_in_the_kernel_log_and_tool_spellings_and_junk_is_refused() {
    for raw in ["PCI:0000:3b:00", "00000000:3B:00.0", "3b:00.0", "0000:3B:00.0"] {
        assert_eq!(GpuDevice::from_bus_id(raw, None).map(|g| g.pci_bus_id), Ok("0000:3b:00.0".to_string()), "{raw}");
    }
    for raw in ["", "3b", "zz:00.0", "0000:3b:00.9", "0000:3b:20.0", "0000:3b:00.0.1", "1:2:3:4", "0000:100:00.0"] {
        assert!(GpuDevice::from_bus_id(raw, None).is_err(), "{raw:?} accepted");
    }
}

#[test]
fn the_agents_annotation_is_read_strictly() {
    let read = faulty_gpus_from_annotation(r#"{"GPUProblem":{"pciBusId":"PCI:0000:3B:00","index":3}}"#);
    assert_eq!(read.map(|m| m.get("GPUProblem").cloned()), Ok(Some(gpu3())));
    for bad in [
        "",
        "{",
        r#"{"GPUProblem":{"pciBusId":"nope"}}"#,
        r#"{"GPUProblem":{"pciBusId":"3b:00.0"},"GPUProblem":{"pciBusId":"86:00.0"}}"#,
        r#"{"GPUProblem":{"pciBusId":"3b:00.0","uuid":"x"}}"#,
        "[]",
    ] {
        assert!(faulty_gpus_from_annotation(bad).is_err(), "{bad:?} accepted");
    }
}

proptest! {
    /// Whatever the fault class, whether its GPU is known and whatever the steps report, a reset step
    /// never starts without a known GPU, and every reset started is aimed at the recorded GPU.
    #[test]
    fn a_reset_never_runs_without_a_known_gpu(
        class in proptest::sample::select(FaultClass::ALL.to_vec()),
        known in any::<bool>(),
        outcomes in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        let mut h = Harness::new(policy(LADDER), vec![gpu_node("gpu-1", "a", 8, EPOCH)]);
        let reason = class.condition_reason().unwrap_or("Unclassified");
        set_condition(h.node("gpu-1"), "GPUProblem", ConditionStatus::True, reason, EPOCH);
        set_condition_gpu(h.node("gpu-1"), "GPUProblem", known.then(gpu3));
        let mut steps = started(&h.decide());
        for ok in outcomes {
            h.advance(Duration::from_hours(8));
            h.report("gpu-1", if ok { ReportedOutcome::Succeeded } else { ReportedOutcome::Failed });
            steps.extend(started(&h.decide()));
            if let Some(a) = h.records.nodes.get("gpu-1").and_then(|r| r.active.as_ref()) {
                prop_assert!(a.step != RemediationStep::ResetGpu || a.gpu == Some(gpu3()));
            }
        }
        if !known {
            prop_assert!(!steps.contains(&RemediationStep::ResetGpu), "{:?}", steps);
        }
    }
}
