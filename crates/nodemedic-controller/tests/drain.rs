//! The drain executor against a real API server (kube-controller-manager keeps the budgets' status
//! and runs Jobs, kwok runs the pods): a PodDisruptionBudget-blocked drain holds past its deadline
//! and finishes when the budget allows it; namespaces drain by their modes; `force` deletes past
//! the budgets and says so; a drain taken over by another executor resumes from its recorded
//! progress without asking a pod twice.

mod common;

use common::{
    budget, current_report, drain_policy, namespace, open_record, pod_on, pods_on, progress, quick_drains, report_of, request, wait_running,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nodemedic_controller::executors::DrainExecutor;
use nodemedic_controller::{Executor, install_crds};
use nodemedic_core::RemediationStep;
use nodemedic_core::drain::PodAnswer;
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::time::Duration;

/// Waits until the disruption controller counts the budget's pods and allows no disruption.
async fn budget_in_force(cp: &ControlPlane, ns: &str, name: &str) -> anyhow::Result<()> {
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cp.client(), ns);
    wait_for(Duration::from_secs(90), &format!("the disruption controller to process {name}"), || async {
        let p = pdbs.get(name).await.ok()?;
        let s = p.status?;
        (s.current_healthy >= 1 && s.disruptions_allowed == 0 && s.observed_generation == p.metadata.generation).then_some(())
    })
    .await?;
    Ok(())
}

async fn answer_of(cp: &ControlPlane, node: &str, pod: &str) -> Option<PodAnswer> {
    progress(cp, node).await?.pod(pod).map(|p| p.answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pdb_blocked_drain_holds_past_its_deadline_and_finishes_once_the_budget_allows_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { controller_manager: true, kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        namespace(cp, "shop").await?;
        pod_on(cp, "shop", "db-0", "gpu-0", serde_json::json!({"labels": {"app": "db"}})).await?;
        pod_on(cp, "shop", "web-0", "gpu-0", serde_json::json!({"labels": {"app": "web"}})).await?;
        wait_running(cp, "shop", &["db-0", "web-0"]).await?;
        budget(cp, "shop", "db-pdb", "db", 1).await?;
        budget_in_force(cp, "shop", "db-pdb").await?;
        drain_policy(cp, "{whenBlocked: hold}").await?;
        open_record(cp, "gpu-0", 1).await?;

        let drain = DrainExecutor::new(cp.client(), quick_drains());
        drain.execute(&request("gpu-0", RemediationStep::Drain, 1, Duration::from_secs(3))).await.map_err(anyhow::Error::msg)?;
        // Well past the deadline: no report (the engine would move on at a report), the node keeps
        // its guarded pod, and the progress names the pod and its budget.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(current_report(cp, "gpu-0").await?, None, "a held drain does not report");
        assert_eq!(pods_on(cp, "gpu-0").await?, ["shop/db-0"]);
        let p = progress(cp, "gpu-0").await.ok_or_else(|| anyhow::anyhow!("no drain progress"))?;
        let db = p.pod("shop/db-0").ok_or_else(|| anyhow::anyhow!("db-0 not in {p:?}"))?;
        assert_eq!(db.answer, PodAnswer::Refused);
        assert!(db.detail.contains("PodDisruptionBudget db-pdb"), "{db:?}");
        assert_eq!(p.pod("shop/web-0").map(|w| w.answer), Some(PodAnswer::Gone));

        // The budget allows it now: the held drain's next try succeeds.
        let relaxed = serde_json::json!({"spec": {"minAvailable": 0}});
        Api::<PodDisruptionBudget>::namespaced(cp.client(), "shop")
            .patch("db-pdb", &PatchParams::default(), &Patch::Merge(&relaxed))
            .await?;
        let report = report_of(cp, "gpu-0", 1, Duration::from_secs(60)).await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{report:?}");
        assert_eq!(pods_on(cp, "gpu-0").await?, Vec::<String>::new());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_modes_wait_for_completion_delete_after_their_timeout_and_completed_job_pods_are_skipped() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::full()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        for ns in ["batch", "scratch", "jobs"] {
            namespace(cp, ns).await?;
        }
        pod_on(cp, "batch", "train-0", "gpu-0", serde_json::json!({"labels": {"app": "train"}})).await?;
        pod_on(cp, "scratch", "cache-0", "gpu-0", serde_json::json!({"labels": {"app": "cache"}})).await?;
        wait_running(cp, "batch", &["train-0"]).await?;
        wait_running(cp, "scratch", &["cache-0"]).await?;
        budget(cp, "scratch", "cache-pdb", "cache", 1).await?;
        budget_in_force(cp, "scratch", "cache-pdb").await?;
        // A real Job, scheduled onto the node; kwok runs it to completion.
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "etl"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": "gpu-0"},
                "tolerations": [{"operator": "Exists"}], "containers": [{"name": "c", "image": "busybox"}]}}},
        }))?;
        Api::<Job>::namespaced(cp.client(), "jobs").create(&PostParams::default(), &job).await?;
        let job_pods: Api<Pod> = Api::namespaced(cp.client(), "jobs");
        wait_for(Duration::from_secs(90), "the Job's pod to complete on gpu-0", || async {
            let pods = job_pods.list(&Default::default()).await.ok()?;
            pods.items.iter().any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")).then_some(())
        })
        .await?;
        drain_policy(
            cp,
            "{namespaceModes: [{namespaces: [batch], mode: AllowCompletion}, {namespaces: [scratch], mode: DeleteAfterTimeout, deleteAfter: 2s}]}",
        )
        .await?;
        open_record(cp, "gpu-0", 1).await?;

        let drain = DrainExecutor::new(cp.client(), quick_drains());
        drain.execute(&request("gpu-0", RemediationStep::Drain, 1, Duration::from_secs(120))).await.map_err(anyhow::Error::msg)?;
        // The budget refuses cache-0's eviction; two seconds after it was first asked it is deleted.
        wait_for(Duration::from_secs(30), "cache-0 to be deleted after its timeout", || async {
            (answer_of(cp, "gpu-0", "scratch/cache-0").await? == PodAnswer::Deleted).then_some(())
        })
        .await?;
        // train-0 is left to finish: never evicted, and the drain waits for it.
        assert_eq!(answer_of(cp, "gpu-0", "batch/train-0").await, Some(PodAnswer::AwaitingCompletion));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(current_report(cp, "gpu-0").await?, None);
        assert!(pods_on(cp, "gpu-0").await?.contains(&"batch/train-0".to_string()));
        // The workload finishes and goes away by itself: the drain is done.
        Api::<Pod>::namespaced(cp.client(), "batch").delete("train-0", &DeleteParams::default()).await?;
        let report = report_of(cp, "gpu-0", 1, Duration::from_secs(60)).await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{report:?}");
        assert!(report.message.contains("1 deleted past their budgets"), "{}", report.message);
        assert!(report.message.contains("1 completed pods"), "the Job's pod is left in place: {}", report.message);
        assert_eq!(answer_of(cp, "gpu-0", "batch/train-0").await, Some(PodAnswer::Gone), "never evicted, gone by itself");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn under_force_the_pods_left_at_the_deadline_are_deleted_past_their_budget_and_the_override_is_recorded() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { controller_manager: true, kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        namespace(cp, "shop").await?;
        pod_on(cp, "shop", "db-0", "gpu-0", serde_json::json!({"labels": {"app": "db"}})).await?;
        wait_running(cp, "shop", &["db-0"]).await?;
        budget(cp, "shop", "db-pdb", "db", 1).await?;
        budget_in_force(cp, "shop", "db-pdb").await?;
        drain_policy(cp, "{whenBlocked: force}").await?;
        open_record(cp, "gpu-0", 1).await?;

        let drain = DrainExecutor::new(cp.client(), quick_drains());
        drain.execute(&request("gpu-0", RemediationStep::Drain, 1, Duration::from_secs(3))).await.map_err(anyhow::Error::msg)?;
        let report = report_of(cp, "gpu-0", 1, Duration::from_secs(60)).await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{report:?}");
        assert!(report.message.contains("override"), "{}", report.message);
        let p = progress(cp, "gpu-0").await.ok_or_else(|| anyhow::anyhow!("no drain progress"))?;
        assert!(p.forced, "{p:?}");
        assert_eq!(p.pod("shop/db-0").map(|d| d.answer), Some(PodAnswer::Deleted));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_resumed_by_another_executor_carries_on_from_its_progress_without_asking_a_pod_twice() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        namespace(cp, "train").await?;
        // A finalizer the test holds: the pod takes as long to terminate as the test wants.
        pod_on(cp, "train", "slow-0", "gpu-0", serde_json::json!({"finalizers": ["test.nodemedic.io/slow"]})).await?;
        wait_running(cp, "train", &["slow-0"]).await?;
        drain_policy(cp, "{}").await?;
        open_record(cp, "gpu-0", 1).await?;
        let req = request("gpu-0", RemediationStep::Drain, 1, Duration::from_secs(120));

        let first = DrainExecutor::new(cp.client(), quick_drains());
        first.execute(&req).await.map_err(anyhow::Error::msg)?;
        let asked = wait_for(Duration::from_secs(30), "slow-0 to be evicted", || async {
            progress(cp, "gpu-0").await?.pod("train/slow-0").filter(|p| p.answer == PodAnswer::Evicted).map(|p| p.asked_at)
        })
        .await?;
        drop(first); // its process is gone (the task is left without its executor; a new one takes over)

        let second = DrainExecutor::new(cp.client(), quick_drains());
        second.resume(&req).await.map_err(anyhow::Error::msg)?;
        second.resume(&req).await.map_err(anyhow::Error::msg)?;
        assert_eq!(second.drains_started(), 1, "resumed once however often asked");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p = progress(cp, "gpu-0").await.ok_or_else(|| anyhow::anyhow!("no drain progress"))?;
        assert_eq!(p.pod("train/slow-0").map(|s| (s.answer, s.asked_at)), Some((PodAnswer::Evicted, asked)), "not asked again");

        let pods: Api<Pod> = Api::namespaced(cp.client(), "train");
        pods.patch("slow-0", &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}))).await?;
        let report = report_of(cp, "gpu-0", 1, Duration::from_secs(30)).await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{report:?}");
        assert!(report.message.starts_with("evicted 1 pods"), "{}", report.message);
        Ok(())
    })
    .await
}
