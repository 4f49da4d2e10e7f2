//! The chart's agent RBAC and admission policy, proven by a real agent: after `helm install`, the
//! agent loop (in the test process) calls the API server with a token of the chart's agent
//! ServiceAccount bound to a pod on its node — as kubelet gives the DaemonSet's pod — and carries a
//! node through a reboot: it writes its node's conditions, follows the node's NodeRemediation, reports
//! the step and publishes its Event. The same token cannot write another node's status.

mod common;

use common::agents::{TestHost, node_agent};
use common::helm::{install_chart, kubectl_ok};
use common::{Replica, record};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use nodemedic_core::RemediationStep;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: manual}
monitorOnly: false
"#;

/// A token of the chart's agent ServiceAccount bound to a pod placed on `node`: the API server puts
/// the node's name in the token (what the admission policy checks).
fn agent_token_on(cp: &ControlPlane, node: &str) -> anyhow::Result<String> {
    let pod = format!("agent-on-{node}");
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "nodemedic"},
        "spec": {"serviceAccountName": "nodemedic-agent", "nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "agent", "image": "ghcr.io/nodemedic/nodemedic-agent:0.1.0"}]},
    });
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pod.json");
    std::fs::write(&file, manifest.to_string())?;
    kubectl_ok(cp, "creating the agent's pod", &["create", "-f", file.to_str().unwrap_or_default()])?;
    let bound = ["create", "token", "nodemedic-agent", "-n", "nodemedic", "--bound-object-kind", "Pod", "--bound-object-name", &pod];
    Ok(kubectl_ok(cp, "kubectl create token (bound to the pod)", &bound)?.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_agent_account_on_its_node_reboots_it_end_to_end_and_cannot_write_another_node() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_chart(cp, 2, POLICY, &[], &[]).await?;
        let token = agent_token_on(cp, "gpu-000")?;
        let client = cp.client_with_token(&token).await?;

        // Another node's status: refused by the chart's ValidatingAdmissionPolicy (once it is enforced).
        let others: Api<Node> = Api::all(client.clone());
        let forged = serde_json::json!({"status": {"conditions": [{"type": "GPUProblem", "status": "True", "reason": "Forged",
            "message": "x", "lastTransitionTime": "2026-12-03T00:00:00Z", "lastHeartbeatTime": "2026-12-03T00:00:00Z"}]}});
        let refused = wait_for(Duration::from_secs(30), "the admission policy to refuse a write to gpu-001", || async {
            match others.patch_status("gpu-001", &PatchParams::default(), &Patch::Strategic(&forged)).await {
                Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Some(s.message),
                _ => None,
            }
        })
        .await?;
        assert!(refused.contains("own-node-only") || refused.contains("only write its own node"), "{refused}");

        let host = TestHost { cp, node: "gpu-000".to_string() };
        let agent = node_agent(cp, client, "gpu-000", &host).await?;
        let _replica = Replica::start(cp, "chart-agent-replica")?;
        let scenario = async {
            wait_for(Duration::from_secs(30), "the agent's NetworkProblem condition on gpu-000", || async {
                let node = Api::<Node>::all(cp.client()).get("gpu-000").await.ok()?;
                node.status?.conditions?.into_iter().find(|c| c.type_ == "NetworkProblem" && c.status == "False")
            })
            .await?;
            cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
            wait_for(Duration::from_secs(180), "the agent to reboot gpu-000 and the node to recover", || async {
                let r = record(cp, "gpu-000").await?;
                let rebooted = r.history.iter().any(|h| h.step == RemediationStep::Reboot && h.outcome == StepOutcome::Recovered);
                (r.phase == Phase::Healthy && rebooted).then_some(())
            })
            .await?;
            anyhow::Ok(())
        };
        tokio::select! {
            stopped = agent.agent.run_measured(&agent.metrics) => anyhow::bail!("the agent stopped: {stopped:?}"),
            done = scenario => done?,
        }
        let events: Api<Event> = Api::all(cp.client());
        let by_agent: Vec<Event> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some(nodemedic_agent::node::FIELD_MANAGER))
            .collect();
        let started = by_agent.iter().filter(|e| e.reason.as_deref() == Some("RemediationStarted")).count();
        assert_eq!(started, 1, "the agent's RemediationStarted Event, written with the chart's RBAC: {by_agent:?}");
        let text = agent.metrics.encode();
        assert!(text.contains(r#"nodemedic_agent_remediations_total{node="gpu-000",step="reboot",outcome="succeeded"} 1"#), "{text}");
        assert!(text.contains(r#"nodemedic_agent_condition_write_failures_total{node="gpu-000"} 0"#), "{text}");
        Ok(())
    })
    .await
}
