//! README's main command, end to end: `nodemedic demo` plays the built-in scenario on a real
//! control plane with two controller replicas and must end with every node as the scenario expects.

use std::process::Command;

#[test]
fn the_demo_scenario_ends_as_it_expects_and_kubectl_tells_the_story() -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodemedic")).arg("demo").output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("every node ended as the scenario expects"), "{stdout}");
    for line in [
        "RemediationStarted",
        "StepStarted",
        "AgentReported",
        "Recovered",
        "EscalatedToManual",
        "SoftTaintAdded",
        "SoftTaintRemoved",
        "BreakerTripped",
        "BreakerClosed",
    ] {
        assert!(stdout.contains(line), "the timeline shows {line}:\n{stdout}");
    }
    // The leader was killed mid-run; another replica took over and finished the job.
    assert!(stdout.contains("LeaderKilled"), "{stdout}");
    assert!(stdout.matches("LeaderElected").count() >= 2, "a second leader after the kill:\n{stdout}");
    // The node left to a person told people, through a real SMTP server and a real Alertmanager.
    assert!(stdout.contains("NodeManual: gpu-011"), "an email about gpu-011:\n{stdout}");
    assert!(stdout.contains("alert NodemedicNodeManual node=gpu-011"), "an alert about gpu-011:\n{stdout}");
    assert!(stdout.contains("✓ gpu-011: email with its attempts received, alert NodemedicNodeManual firing"), "{stdout}");
    assert_eq!(stdout.matches("BreakerTripped: policy demo").count(), 1, "one trip, one email:\n{stdout}");
    // kubectl's view: the policy's counts and the manual node's record.
    let kubectl = stdout.split("$ kubectl get nodehealthpolicies,noderemediations").nth(1).unwrap_or_default();
    assert!(kubectl.lines().any(|l| l.contains("nodehealthpolicy.nodemedic.io/demo") && l.contains("True")), "{kubectl}");
    assert!(kubectl.lines().any(|l| l.contains("noderemediation.nodemedic.io/gpu-011") && l.contains("Manual")), "{kubectl}");
    Ok(())
}
