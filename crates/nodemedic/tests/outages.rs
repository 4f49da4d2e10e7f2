//! The controller when its API server goes away (issue 16, points 4 and 6): `nodemedic controller`
//! processes against a real kube-apiserver that the test kills and starts again on the same port
//! and data, or pauses (SIGSTOP) and resumes.

mod common;

use common::{Replica, agent_reboots, holder, http_get, record, setup, taints};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use nodemedic_core::RemediationStep;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10s, settle: 1s, verifyTimeout: 1m}
- {step: reimage, timeout: 30m}
- {step: manual}
monitorOnly: false
"#;

fn readyz(replica: &Replica) -> String {
    http_get(replica.port, "/readyz").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_started_while_the_api_server_is_down_waits_not_ready_and_leads_when_it_returns() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 2, &POLICY.replace("timeout: 10s", "timeout: 10m")).await?;
        cp.stop_api_server()?;
        let mut a = Replica::start(cp, "replica-a")?;
        // Refused connections: it keeps trying and says it is not ready.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(a.running(), "the controller exited while the API server was down:\n{}", a.log());
        assert!(readyz(&a).contains("not ready"), "readyz: {}", readyz(&a));

        cp.start_api_server().await?;
        wait_for(Duration::from_secs(40), "replica-a to lead", || async { holder(cp).await.filter(|h| h == "replica-a") }).await?;
        wait_for(Duration::from_secs(15), "replica-a to be ready", || async { (readyz(&a) == "ready\n").then_some(()) })
            .await
            .map_err(|e| anyhow::anyhow!("{e}; readyz: {}\n{}", readyz(&a), a.log()))?;
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        let nodes: Api<Node> = Api::all(cp.client());
        wait_for(Duration::from_secs(30), "the reboot taint", || async {
            taints(&nodes.get("gpu-001").await.ok()?).contains(&"nodemedic.io/repair-reboot".to_string()).then_some(())
        })
        .await?;

        // The API server restarts in the middle of the reboot: not ready while it is away, then
        // the same remediation carries on.
        cp.stop_api_server()?;
        wait_for(Duration::from_secs(15), "readyz to say not ready", || async { readyz(&a).contains("not ready").then_some(()) }).await?;
        cp.start_api_server().await?;
        wait_for(Duration::from_secs(20), "replica-a to be ready again", || async { (readyz(&a) == "ready\n").then_some(()) }).await?;
        agent_reboots(cp, "gpu-001", 1).await?;
        let rec = wait_for(Duration::from_secs(40), "the node to be cleared", || async {
            record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Healthy)
        })
        .await?;
        assert_eq!(rec.attempt, 1, "one reboot, not repeated: {rec:?}");
        assert_eq!(rec.history.last().map(|h| (h.step, h.outcome)), Some((RemediationStep::Reboot, StepOutcome::Recovered)));
        assert!(a.running(), "{}", a.log());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_paused_past_a_reboot_timeout_does_not_start_a_reimage_when_the_report_follows() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 2, POLICY).await?;
        let a = Replica::start(cp, "replica-a")?;
        wait_for(Duration::from_secs(30), "replica-a to lead", || async { holder(cp).await.filter(|h| h == "replica-a") }).await?;
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        let started = wait_for(Duration::from_secs(30), "the reboot to be recorded", || async {
            record(cp, "gpu-001").await.filter(|r| r.active.as_ref().is_some_and(|a| a.step == RemediationStep::Reboot))
        })
        .await?;
        assert_eq!(started.attempt, 1);

        // Paused for longer than the reboot's 10 s timeout; the node reports right after.
        cp.pause_api_server()?;
        tokio::time::sleep(Duration::from_secs(16)).await;
        cp.resume_api_server()?;
        // The moved deadline is on the record before anything else is decided: a new leader would
        // see it too.
        let moved = wait_for(Duration::from_secs(20), "the unobserved time on the record", || async {
            record(cp, "gpu-001").await?.active.filter(|a| a.unobserved >= nodemedic_core::Duration::from_secs(8))
        })
        .await?;
        assert!(moved.deadline > started.active.as_ref().and_then(|a| a.deadline), "{moved:?}");
        agent_reboots(cp, "gpu-001", 1).await?;

        let rec = wait_for(Duration::from_secs(60), "the node to be cleared", || async {
            record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Healthy)
        })
        .await?;
        let steps: Vec<(RemediationStep, StepOutcome)> = rec.history.iter().map(|h| (h.step, h.outcome)).collect();
        assert_eq!(steps, vec![(RemediationStep::Reboot, StepOutcome::Recovered)], "no timeout, no reimage: {rec:?}\n{}", a.log());
        assert_eq!(rec.attempt, 1);
        assert!(a.log().contains("its deadline moves on by that time"), "the controller said why the deadline moved:\n{}", a.log());
        Ok(())
    })
    .await
}
