//! Issue 11 §2, the controller's side: a node whose agent promised to fence itself (its Lease carries
//! the promise; `renewTime` is its last contact) is taken for fenced — the out-of-service taint goes
//! on — only once `safeTimeToAssumeRebooted` has passed, read through the real API server.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use nodemedic_controller::{ExecFuture, Executor, FleetCache, Reconciler, StepRequest, install_crds, now};
use nodemedic_core::fencing::{FencingSource, OUT_OF_SERVICE_TAINT};
use nodemedic_core::selffence::{PROMISE_ANNOTATION, SelfFenceTimings, SelfFencingPromise, lease_name};
use nodemedic_core::{Duration, Policy};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options};

struct Accepting;

impl Executor for Accepting {
    fn execute<'a>(&'a self, _: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

const POLICY: &str = r#"
rules:
- {name: ready-unknown, condition: {type: Ready, status: Unknown}, duration: 0s}
ladder:
- {step: reboot, timeout: 30m, settle: 0s, verifyTimeout: 5m}
- {step: manual}
monitorOnly: false
"#;

/// Timeouts of one second each: a floor of six seconds.
fn promise(safe_secs: i64) -> SelfFencingPromise {
    let s = Duration::from_secs(1);
    let timings = SelfFenceTimings { api_loss_window: s, check_interval: s, peer_timeout: s, watchdog_timeout: s, reboot_time: s };
    SelfFencingPromise { timings, safe_time_to_assume_rebooted: Duration::from_secs(safe_secs), watchdog: true, peers: 2 }
}

async fn publish(cp: &ControlPlane, node: &str, promise: &SelfFencingPromise) -> anyhow::Result<()> {
    let lease = serde_json::json!({
        "metadata": {"name": lease_name(node), "annotations": {PROMISE_ANNOTATION: serde_json::to_string(promise)?}},
        "spec": {"holderIdentity": node, "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    });
    Api::<Lease>::namespaced(cp.client(), "default").create(&PostParams::default(), &serde_json::from_value(lease)?).await?;
    Ok(())
}

fn has_taint(n: &Node, key: &str) -> bool {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == key))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_fencing_node_gets_the_out_of_service_taint_only_after_its_safe_time() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        // Three of five stay Ready: a Ready majority (a cut-off group that is a majority may be up).
        for i in 0..5 {
            let node = FakeNode { kwok: false, ..FakeNode::gpu(&format!("gpu-{i:03}"), "pool-a", 8) };
            cp.create_node(&node).await?;
            cp.set_node_condition(&node.name, "Ready", "True", "KubeletReady", "").await?;
        }
        let policy = Policy::from_yaml(POLICY)?;
        Api::<NodeHealthPolicy>::all(cp.client())
            .create(&PostParams::default(), &NodeHealthPolicy::new("workers", NodeHealthPolicySpec { policy }))
            .await?;
        // gpu-001's agent fences itself with an 8 s safe time; gpu-002's promise is below its floor.
        publish(cp, "gpu-001", &promise(8)).await?;
        publish(cp, "gpu-002", &promise(5)).await?;
        for node in ["gpu-001", "gpu-002"] {
            cp.set_node_condition(node, "Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.").await?;
        }
        let cache = FleetCache::new();
        let controller =
            Reconciler { agent_lease_namespace: "default", ..Reconciler::new(cp.client(), &Accepting) }.with_fleet_cache(&cache);
        let nodes: Api<Node> = Api::all(cp.client());
        let started = std::time::Instant::now();
        controller.reconcile("workers", now()).await?;
        assert!(!has_taint(&nodes.get("gpu-001").await?, OUT_OF_SERVICE_TAINT), "a cut-off node is not a fenced one");
        // Until 8 s after the later of the last contact and the step's start, nothing.
        while started.elapsed() < std::time::Duration::from_secs(6) {
            controller.reconcile("workers", now()).await?;
            assert!(!has_taint(&nodes.get("gpu-001").await?, OUT_OF_SERVICE_TAINT), "tainted after {:?}", started.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        controller.reconcile("workers", now()).await?;
        controller.reconcile("workers", now()).await?;
        assert!(has_taint(&nodes.get("gpu-001").await?, OUT_OF_SERVICE_TAINT), "the safe time has passed");
        let rec = Api::<NodeRemediation>::all(cp.client()).get("gpu-001").await?.status.map(|s| s.record).unwrap_or_default();
        let oos = rec.out_of_service.ok_or_else(|| anyhow::anyhow!("no outOfService on gpu-001's record"))?;
        assert_eq!(oos.source, FencingSource::SelfFenced);
        assert!(oos.reason.contains("safeTimeToAssumeRebooted 8s"), "{}", oos.reason);
        // A promise below its floor counts for nothing.
        assert!(!has_taint(&nodes.get("gpu-002").await?, OUT_OF_SERVICE_TAINT));
        Ok(())
    })
    .await
}
