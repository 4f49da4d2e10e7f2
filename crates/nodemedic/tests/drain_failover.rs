//! A drain survives its leader: `nodemedic controller` replicas against a real kube-apiserver
//! (kube-controller-manager keeps the PodDisruptionBudget's status, kwok runs the pods). The
//! leader is killed mid-drain, with one pod slow to terminate and one guarded by a budget; the
//! standby resumes the drain from the record, finishes it once the budget allows, and the reboot
//! after it starts exactly once.

mod common;

use common::{Replica, agent_reboots, holder, record, setup};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodemedic_core::RemediationStep;
use nodemedic_core::drain::PodAnswer;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_k8s::NodeRemediation;
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: drain, timeout: 10m}
- {step: reboot, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: manual}
monitorOnly: false
"#;

const NODE: &str = "gpu-000";

async fn shop_with_a_slow_pod_and_a_guarded_pod(cp: &ControlPlane) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}}))?;
    Api::<Namespace>::all(cp.client()).create(&PostParams::default(), &ns).await?;
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))?;
    match Api::<ServiceAccount>::namespaced(cp.client(), "shop").create(&PostParams::default(), &sa).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        other => {
            other?;
        }
    }
    let pods: Api<Pod> = Api::namespaced(cp.client(), "shop");
    for (name, meta) in [
        // A finalizer the test holds: the pod takes as long to terminate as the test wants.
        ("slow-0", serde_json::json!({"name": "slow-0", "finalizers": ["test.nodemedic.io/slow"]})),
        ("db-0", serde_json::json!({"name": "db-0", "labels": {"app": "db"}})),
    ] {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": meta,
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}], "tolerations": [{"operator": "Exists"}]}}))?;
        pods.create(&PostParams::default(), &pod).await?;
        wait_for(Duration::from_secs(60), &format!("kwok to run {name}"), || async {
            (pods.get(name).await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await?;
    }
    let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-pdb"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}}}))?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cp.client(), "shop");
    pdbs.create(&PostParams::default(), &pdb).await?;
    wait_for(Duration::from_secs(90), "the disruption controller to process db-pdb", || async {
        let p = pdbs.get("db-pdb").await.ok()?;
        let s = p.status?;
        (s.current_healthy == 1 && s.disruptions_allowed == 0 && s.observed_generation == p.metadata.generation).then_some(())
    })
    .await?;
    Ok(())
}

async fn answer(cp: &ControlPlane, pod: &str) -> Option<(PodAnswer, nodemedic_core::Time)> {
    let progress = Api::<NodeRemediation>::all(cp.client()).get(NODE).await.ok()?.status?.drain_progress?;
    progress.pod(pod).map(|p| (p.answer, p.asked_at))
}

fn step(rec: &nodemedic_core::NodeRecord) -> Option<RemediationStep> {
    rec.active.as_ref().map(|a| a.step)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_mid_drain_is_replaced_and_the_standby_finishes_the_drain_and_starts_the_reboot_once() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { controller_manager: true, kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 2, POLICY).await?;
        shop_with_a_slow_pod_and_a_guarded_pod(cp).await?;
        let executors = tempfile::NamedTempFile::new()?;
        std::fs::write(executors.path(), "drain: {backoff: 200ms, maxBackoff: 1s}\n")?;
        let path = executors.path().to_string_lossy().to_string();
        let args = ["--executors", path.as_str()];
        let a = Replica::start_with(cp, "replica-a", &args)?;
        wait_for(Duration::from_secs(30), "replica-a to lead", || async { holder(cp).await.filter(|h| h == "replica-a") }).await?;
        let b = Replica::start_with(cp, "replica-b", &args)?;

        cp.set_node_condition(NODE, "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        let (_, slow_asked) = wait_for(Duration::from_secs(60), "slow-0 evicted and db-0 refused", || async {
            let slow = answer(cp, "shop/slow-0").await.filter(|(a, _)| *a == PodAnswer::Evicted)?;
            answer(cp, "shop/db-0").await.filter(|(a, _)| *a == PodAnswer::Refused)?;
            Some(slow)
        })
        .await?;

        // SIGKILL mid-drain: the drain's process is gone, the standby waits out the lease.
        a.signal("-KILL")?;
        wait_for(Duration::from_secs(40), "replica-b to take over", || async { holder(cp).await.filter(|h| h == "replica-b") }).await?;
        wait_for(Duration::from_secs(30), "replica-b to resume the drain", || async {
            b.log().contains("drain resumed from its recorded progress").then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rec = record(cp, NODE).await.ok_or_else(|| anyhow::anyhow!("record gone"))?;
        assert_eq!((step(&rec), rec.attempt), (Some(RemediationStep::Drain), 1), "still draining, nothing started early: {rec:?}");
        assert_eq!(answer(cp, "shop/slow-0").await, Some((PodAnswer::Evicted, slow_asked)), "slow-0 is not asked again");

        // The slow pod finishes terminating and the budget allows db-0 to go: the drain finishes.
        let pods: Api<Pod> = Api::namespaced(cp.client(), "shop");
        pods.patch("slow-0", &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}))).await?;
        Api::<PodDisruptionBudget>::namespaced(cp.client(), "shop")
            .patch("db-pdb", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"minAvailable": 0}})))
            .await?;
        let rec = wait_for(Duration::from_secs(60), "the reboot to start after the drain", || async {
            record(cp, NODE).await.filter(|r| step(r) == Some(RemediationStep::Reboot))
        })
        .await?;
        assert_eq!(rec.attempt, 2, "{rec:?}");
        let drains: Vec<(u32, StepOutcome)> =
            rec.history.iter().filter(|h| h.step == RemediationStep::Drain).map(|h| (h.attempt, h.outcome)).collect();
        assert_eq!(drains, [(1, StepOutcome::Completed)], "one drain, completed once");
        // Several passes later the reboot is still the one that started.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rec = record(cp, NODE).await.ok_or_else(|| anyhow::anyhow!("record gone"))?;
        assert_eq!((step(&rec), rec.attempt), (Some(RemediationStep::Reboot), 2), "the reboot starts exactly once: {rec:?}");

        agent_reboots(cp, NODE, 2).await?;
        let rec = wait_for(Duration::from_secs(30), "the node to be cleared", || async {
            record(cp, NODE).await.filter(|r| r.phase == Phase::Healthy)
        })
        .await?;
        assert_eq!(rec.attempt, 2);
        Ok(())
    })
    .await
}
