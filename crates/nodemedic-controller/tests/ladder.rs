//! The taint ladder on real Nodes: a GPU fault taints the node for reboot and records the step
//! before the executor runs it; a restarted controller does not reboot again; the agent's report and
//! passing checks clear the node.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodemedic_controller::{ExecFuture, Executor, FleetCache, Reconciler, StepRequest, install_crds, now};
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_core::{Policy, RemediationStep};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::sync::Mutex;

#[derive(Default)]
struct RecordingExecutor(Mutex<Vec<(String, RemediationStep, u32)>>);

impl Executor for RecordingExecutor {
    fn execute<'a>(&'a self, r: &'a StepRequest) -> ExecFuture<'a> {
        let result = self.0.lock().map(|mut calls| calls.push((r.node.clone(), r.step, r.attempt))).map_err(|e| e.to_string());
        Box::pin(async move { result })
    }
}

impl RecordingExecutor {
    fn calls(&self) -> Vec<(String, RemediationStep, u32)> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10m, verifyTimeout: 2m}
- {step: reimage, timeout: 30m}
- {step: manual}
monitorOnly: false
"#;

fn taints(n: &Node) -> Vec<String> {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_fault_is_rebooted_once_and_cleared_when_the_checks_pass() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 3).await?;
        let policy = Policy::from_yaml(POLICY)?;
        Api::<NodeHealthPolicy>::all(cp.client())
            .create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy }))
            .await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let remediations: Api<NodeRemediation> = Api::all(cp.client());

        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        let executor = RecordingExecutor::default();
        let controller = Reconciler::new(cp.client(), &executor);
        controller.reconcile("gpu-workers", now()).await?;
        // Ours is added beside the taints others set (no controller-manager runs here to lift the
        // admission-time not-ready taint); theirs are never lost.
        let on_node = taints(&nodes.get("gpu-001").await?);
        assert!(on_node.contains(&"nodemedic.io/repair-reboot".to_string()), "{on_node:?}");
        assert!(!taints(&nodes.get("gpu-000").await?).iter().any(|t| t.starts_with("nodemedic.io/")));
        assert_eq!(executor.calls(), [("gpu-001".to_string(), RemediationStep::Reboot, 1)]);
        let rec = remediations.get("gpu-001").await?.status.map(|s| s.record).unwrap_or_default();
        assert_eq!((rec.phase, rec.attempt), (Phase::Remediating, 1));
        // The evidence is kept on the record for `kubectl describe`.
        assert!(rec.diagnostics.iter().any(|d| d.rule == "gpu" && d.reason == "Unhealthy" && d.detail.contains("Xid 79")), "{rec:?}");
        let status = Api::<NodeHealthPolicy>::all(cp.client()).get("gpu-workers").await?.status.unwrap_or_default();
        assert_eq!((status.selected, status.unhealthy, status.remediating), (3, 1, 1));
        let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t).map(|c| c.status.clone());
        assert_eq!(
            (cond("Valid").as_deref(), cond("Paused").as_deref(), cond("BreakerOpen").as_deref()),
            (Some("True"), Some("False"), Some("False"))
        );
        let out = cp.kubectl(&["get", "nhp", "gpu-workers", "--no-headers"])?;
        let row: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        assert_eq!(&row[..4], ["gpu-workers", "True", "false", "3"], "NAME VALID MONITOR-ONLY SELECTED: {row:?}");
        assert!(rec.active.as_ref().is_some_and(|a| a.reason.contains("Xid 79")), "{rec:?}");

        // A new controller process (nothing in memory) reloads the record and does not reboot again.
        // It decides incrementally, as `nodemedic controller` does: each pass re-reads only the
        // nodes and records that changed, so the reboot, the report and the passing check below
        // must each reach the engine through the cache.
        let restarted = RecordingExecutor::default();
        let cache = FleetCache::new();
        let again = Reconciler::new(cp.client(), &restarted).with_fleet_cache(&cache);
        for _ in 0..3 {
            again.reconcile("gpu-workers", now()).await?;
        }
        assert!(restarted.calls().is_empty(), "{:?}", restarted.calls());

        // The agent reboots the node, reports the attempt done, and the GPU check passes again.
        cp.simulate_reboot("gpu-001").await?;
        let report = serde_json::json!({
            "apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation", "metadata": {"name": "gpu-001"},
            "status": {"stepReport": {"attempt": 1, "outcome": "succeeded", "at": jiff::Timestamp::now().to_string()}},
        });
        remediations.patch_status("gpu-001", &PatchParams::apply("nodemedic-agent").force(), &Patch::Apply(&report)).await?;
        cp.set_node_condition("gpu-001", "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
        let rec = wait_for(std::time::Duration::from_secs(30), "the node to be cleared", || async {
            again.reconcile("gpu-workers", now()).await.ok()?;
            let rec = remediations.get("gpu-001").await.ok()?.status?.record;
            (rec.phase == Phase::Healthy).then_some(rec)
        })
        .await?;
        assert!(!taints(&nodes.get("gpu-001").await?).iter().any(|t| t.starts_with("nodemedic.io/")), "cleared of all repair taints");
        assert_eq!(rec.history.last().map(|h| (h.step, h.outcome)), Some((RemediationStep::Reboot, StepOutcome::Recovered)));
        assert!(restarted.calls().is_empty(), "still exactly one reboot");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_the_schema_accepts_but_the_engine_refuses_is_marked_invalid_and_acts_on_nothing() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 2).await?;
        // Two rules with one name: fine for the schema, ambiguous for the engine.
        let mut policy = Policy::from_yaml(POLICY)?;
        policy.rules.push(policy.rules[0].clone());
        let api: Api<NodeHealthPolicy> = Api::all(cp.client());
        api.create(&PostParams::default(), &NodeHealthPolicy::new("dup", NodeHealthPolicySpec { policy })).await?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        let executor = RecordingExecutor::default();
        let err = Reconciler::new(cp.client(), &executor).reconcile("dup", now()).await.expect_err("invalid policy");
        assert_eq!(err.metric_label(), "invalid_policy");
        let status = api.get("dup").await?.status.unwrap_or_default();
        let valid = status.conditions.iter().find(|c| c.type_ == "Valid").cloned();
        assert_eq!(valid.as_ref().map(|c| c.status.as_str()), Some("False"));
        assert!(valid.is_some_and(|c| c.message.contains("rules[1].name") && c.message.contains("used by another rule")));
        assert!(executor.calls().is_empty());
        assert!(
            !taints(&Api::<Node>::all(cp.client()).get("gpu-000").await?).iter().any(|t| t.starts_with("nodemedic.io/")),
            "acts on nothing"
        );
        Ok(())
    })
    .await
}
