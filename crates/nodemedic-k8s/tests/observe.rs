//! The engine deciding on real Node objects read from a real API server (kwok runs the nodes).

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use nodemedic_core::engine::Action;
use nodemedic_core::{Duration, FleetIndex, Records, RemediationStep, Time, presets};
use nodemedic_k8s::{lean, observe_node};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_lost_a_gpu_is_chosen_for_reboot_and_its_healthy_peers_are_not() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 4).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let all_ready = |list: &[Node]| {
            list.len() == 4
                && list.iter().all(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
        };
        wait_for(std::time::Duration::from_secs(60), "kwok to make every node Ready", || async {
            let list = nodes.list(&Default::default()).await.ok()?;
            all_ready(&list.items).then_some(())
        })
        .await?;
        // One GPU fell off the bus: allocatable drops to 7 while the count label still says 8. kwok may
        // write its cached status back once after initialising a node, so patch until the API server shows it.
        let allocatable =
            |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.as_ref()).and_then(|a| a.get("nvidia.com/gpu")).map(|q| q.0.clone());
        let ready = wait_for(std::time::Duration::from_secs(60), "gpu-002 to report 7 allocatable GPUs", || async {
            nodes
                .patch_status(
                    "gpu-002",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": {"allocatable": {"nvidia.com/gpu": "7"}}})),
                )
                .await
                .ok()?;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let list = nodes.list(&Default::default()).await.ok()?;
            let lost = list.items.iter().find(|n| n.metadata.name.as_deref() == Some("gpu-002")).and_then(allocatable);
            (all_ready(&list.items) && lost.as_deref() == Some("7")).then_some(list.items)
        })
        .await?;

        let mut index = FleetIndex::new();
        for mut n in ready {
            lean(&mut n);
            index.upsert(observe_node(&n, None)?);
        }
        let mut policy = presets::seed003();
        for r in policy.rules.iter_mut().filter(|r| r.gpu_count.is_some()) {
            r.duration = Duration::ZERO;
        }
        let now = Time(jiff::Timestamp::now().as_millisecond());
        let d = index.decide(&policy, &Records::default(), now);
        let gpu: Vec<(String, &str, u32)> =
            d.summary.rule_reasons.iter().filter(|(r, _, _)| r == "gpu-count").map(|(r, reason, n)| (r.clone(), *reason, *n)).collect();
        assert_eq!(gpu, [("gpu-count".to_string(), "GPUCountMatch", 3), ("gpu-count".to_string(), "GPUCountMismatch", 1)]);
        assert!(d.actions.is_empty(), "seed 003 is monitor-only by default: nothing executes");
        let would: Vec<(&str, RemediationStep)> = d
            .would_execute
            .iter()
            .filter_map(|a| if let Action::Execute { node, step, .. } = a { Some((node.as_str(), *step)) } else { None })
            .collect();
        assert_eq!(would, [("gpu-002", RemediationStep::Reboot)]);
        let event = d.events.iter().find(|e| e.node.as_deref() == Some("gpu-002")).map(|e| e.message.clone()).unwrap_or_default();
        assert!(event.contains("nvidia.com/gpu.count=8 vs allocatable nvidia.com/gpu=7"), "{event}");
        Ok(())
    })
    .await
}
