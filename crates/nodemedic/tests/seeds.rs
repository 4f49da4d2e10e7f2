//! The seeds' behaviour end to end: the built-in presets (timers shortened) run by a `nodemedic
//! controller` process against a real API server, with kwok nodes and, where node lifecycle matters,
//! the real kube-controller-manager.

mod common;

use common::{Replica, record, setup, taints};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use nodemedic_core::record::Phase;
use nodemedic_core::{Duration as PolicyDuration, Policy, RemediationStep, presets};
use nodemedic_k8s::NodeHealthPolicy;
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::time::Duration;

fn yaml(p: &Policy) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(p)?)
}

fn short(mut p: Policy) -> Policy {
    p.monitor_only = false;
    for r in &mut p.rules {
        r.duration = PolicyDuration::from_secs(2);
    }
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn seed000_three_gpu_failures_taint_the_node_with_the_bare_repair_reboot_key() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        let policy = short(presets::seed000());
        assert_eq!(policy.taint_prefix, "", "seed 000's keys are bare");
        setup(cp, 3, &yaml(&policy)?).await?;
        let _a = Replica::start(cp, "replica-a")?;
        // The agent flips GPUProblem after its three consecutive failures (seed 000's threshold).
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "GPUTestFailed", "3 consecutive GPU test failures").await?;
        let nodes: Api<Node> = Api::all(cp.client());
        wait_for(Duration::from_secs(30), "the bare repair-reboot taint", || async {
            taints(&nodes.get("gpu-001").await.ok()?).contains(&"repair-reboot".to_string()).then_some(())
        })
        .await?;
        let rec = record(cp, "gpu-001").await.ok_or_else(|| anyhow::anyhow!("no record"))?;
        assert_eq!(rec.active.as_ref().map(|a| a.step), Some(RemediationStep::Reboot));
        assert!(taints(&nodes.get("gpu-000").await?).iter().all(|t| !t.starts_with("repair-")));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn seed003_a_gpu_count_label_above_allocatable_is_remediated_and_monitor_only_is_its_default() -> anyhow::Result<()> {
    assert!(presets::seed003().monitor_only, "seed 003 watches before it acts");
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 3, &yaml(&short(presets::seed003()))?).await?;
        let _a = Replica::start(cp, "replica-a")?;
        let nodes: Api<Node> = Api::all(cp.client());
        // One GPU fell off the bus: allocatable 7 under a count label of 8. kwok may write its cached
        // status back once, so patch until the taint shows.
        let tainted = wait_for(Duration::from_secs(60), "the reboot taint for the GPU count mismatch", || async {
            let _ = nodes
                .patch_status(
                    "gpu-002",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": {"allocatable": {"nvidia.com/gpu": "7"}}})),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            taints(&nodes.get("gpu-002").await.ok()?).contains(&"nodemedic.io/repair-reboot".to_string()).then_some(())
        })
        .await;
        tainted?;
        let rec = record(cp, "gpu-002").await.ok_or_else(|| anyhow::anyhow!("no record"))?;
        let reason = rec.active.map(|a| a.reason).unwrap_or_default();
        assert!(reason.contains("nvidia.com/gpu.count=8 vs allocatable nvidia.com/gpu=7"), "{reason}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn seed004_a_node_whose_kubelet_stops_is_remediated_and_min_healthy_holds_the_next() -> anyhow::Result<()> {
    // The real node lifecycle controller turns Ready Unknown when heartbeats stop.
    let cp = ControlPlane::start(Options {
        kwok: true,
        controller_manager: true,
        node_monitor_grace_period: Duration::from_secs(5),
        ..Options::default()
    })
    .await?;
    cp.run(|cp| async move {
        // 3 workers, minHealthy 51%: one node may be out, not two.
        setup(cp, 3, &yaml(&short(presets::seed004()))?).await?;
        let a = Replica::start(cp, "replica-a")?;
        cp.stop_heartbeat("gpu-000").await?;
        let rec = wait_for(Duration::from_secs(60), "gpu-000 (Ready Unknown) to be remediated", || async {
            record(cp, "gpu-000").await.filter(|r| r.phase == Phase::Remediating)
        })
        .await?;
        assert!(rec.active.as_ref().is_some_and(|a| a.trigger == "ready-unknown"), "{rec:?}");
        let nodes: Api<Node> = Api::all(cp.client());
        // Taints follow the record (records are written first, then the taints).
        wait_for(Duration::from_secs(10), "the reboot taint", || async {
            taints(&nodes.get("gpu-000").await.ok()?).contains(&"nodemedic.io/repair-reboot".to_string()).then_some(())
        })
        .await?;

        cp.stop_heartbeat("gpu-001").await?;
        wait_for(Duration::from_secs(60), "the minHealthy hold on gpu-001", || async {
            a.metrics().contains(r#"nodemedic_gate_holds{policy="gpu-workers",gate="min_healthy"} 1"#).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", a.metrics()))?;
        assert!(record(cp, "gpu-001").await.is_none_or(|r| r.active.is_none()), "held, not started");
        let status = Api::<NodeHealthPolicy>::all(cp.client()).get("gpu-workers").await?.status.unwrap_or_default();
        assert_eq!((status.selected, status.remediating), (3, 1), "{status:?}");
        Ok(())
    })
    .await
}
