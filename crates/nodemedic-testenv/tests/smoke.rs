//! Proof that the test environment is a real control plane: RBAC, server-side apply, the Eviction
//! API with PodDisruptionBudgets, and the node lifecycle controller, each against real binaries.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, Patch, PatchParams, PostParams};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::time::Duration;

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

async fn namespace(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(cp.client()).create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// A namespace pods can run in: the service-account controller has created its default account.
async fn namespace_for_pods(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    namespace(cp, name).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(cp.client(), name);
    wait_for(Duration::from_secs(60), "the default service account", || async { sas.get_opt("default").await.ok().flatten() }).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_without_permission_is_refused_by_rbac() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        namespace(cp, "rbac").await?;
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "nobody"}}))?;
        let sas: Api<ServiceAccount> = Api::namespaced(cp.client(), "rbac");
        sas.create(&PostParams::default(), &sa).await?;
        let req: TokenRequest = serde_json::from_value(
            serde_json::json!({"spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 600}}),
        )?;
        let token = sas.create_token_request("nobody", &PostParams::default(), &req).await?;
        let token = token.status.map(|s| s.token).unwrap_or_default();
        assert!(!token.is_empty(), "the API server issued a token");

        let nobody = cp.client_with_token(&token).await?;
        let err = Api::<Node>::all(nobody.clone()).list(&Default::default()).await.expect_err("listing nodes must be forbidden");
        assert_eq!(status_code(&err), Some(403), "{err}");
        let err = Api::<ConfigMap>::namespaced(nobody, "rbac").list(&Default::default()).await.expect_err("no role was granted");
        assert_eq!(status_code(&err), Some(403), "{err}");
        // The admin identity can.
        Api::<Node>::all(cp.client()).list(&Default::default()).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_side_apply_conflict_between_two_field_managers_is_reported() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let cms: Api<ConfigMap> = Api::namespaced(cp.client(), "default");
        let cm = |value: &str| serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"key": value}});
        cms.patch("owned", &PatchParams::apply("manager-a"), &Patch::Apply(cm("a"))).await?;
        let err = cms.patch("owned", &PatchParams::apply("manager-b"), &Patch::Apply(cm("b"))).await.expect_err("manager-b does not own .data.key");
        assert_eq!(status_code(&err), Some(409), "{err}");
        assert!(err.to_string().contains("manager-a"), "the conflict names the owner: {err}");
        // Forcing takes ownership.
        cms.patch("owned", &PatchParams::apply("manager-b").force(), &Patch::Apply(cm("b"))).await?;
        let got = cms.get("owned").await?;
        assert_eq!(got.data.and_then(|d| d.get("key").cloned()).as_deref(), Some("b"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn evicting_a_pod_protected_by_a_disruption_budget_is_refused() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { controller_manager: true, kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        namespace_for_pods(cp, "work").await?;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "trainer", "labels": {"app": "trainer"}},
            "spec": {"nodeName": "gpu-0", "containers": [{"name": "c", "image": "busybox"}],
                     "tolerations": [{"operator": "Exists"}]},
        }))?;
        let pods: Api<Pod> = Api::namespaced(cp.client(), "work");
        pods.create(&PostParams::default(), &pod).await?;
        let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "trainer"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "trainer"}}},
        }))?;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cp.client(), "work");
        pdbs.create(&PostParams::default(), &pdb).await?;
        // kwok runs the pod; the disruption controller counts it healthy and allows no disruption.
        wait_for(Duration::from_secs(90), "the disruption controller to observe the ready pod", || async {
            let p = pdbs.get("trainer").await.ok()?;
            let s = p.status?;
            (s.current_healthy == 1 && s.disruptions_allowed == 0 && s.observed_generation.is_some()).then_some(())
        })
        .await?;
        let err = pods.evict("trainer", &EvictParams::default()).await.expect_err("the budget forbids it");
        assert_eq!(status_code(&err), Some(429), "{err}");
        assert!(pods.get_opt("trainer").await?.is_some(), "the pod is still there");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kwok_node_whose_heartbeat_stops_becomes_unknown_and_unreachable() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options {
        controller_manager: true,
        kwok: true,
        node_monitor_grace_period: Duration::from_secs(15),
        ..Options::default()
    })
    .await?;
    cp.run(|cp| async move {
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone()))
        };
        wait_for(Duration::from_secs(60), "kwok to make the node Ready", || async {
            (ready(&nodes.get("gpu-0").await.ok()?).as_deref() == Some("True")).then_some(())
        })
        .await?;

        cp.stop_heartbeat("gpu-0").await?;
        let node = wait_for(Duration::from_secs(120), "the node lifecycle controller to mark the node Unknown and taint it", || async {
            let n = nodes.get("gpu-0").await.ok()?;
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/unreachable"));
            (ready(&n).as_deref() == Some("Unknown") && tainted).then_some(n)
        })
        .await?;
        let effects: Vec<String> = node
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key == "node.kubernetes.io/unreachable")
            .map(|t| t.effect)
            .collect();
        assert!(effects.contains(&"NoSchedule".to_string()) || effects.contains(&"NoExecute".to_string()), "{effects:?}");

        // The heartbeat comes back: Ready again, the unreachable taints lifted.
        cp.resume_heartbeat("gpu-0").await?;
        wait_for(Duration::from_secs(120), "the node to be Ready and untainted again", || async {
            let n = nodes.get("gpu-0").await.ok()?;
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/unreachable"));
            (ready(&n).as_deref() == Some("True") && !tainted).then_some(())
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_gpu_nodes_carry_counts_conditions_and_reboot_with_a_new_boot_id() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        let names = cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 3).await?;
        assert_eq!(names, ["gpu-000", "gpu-001", "gpu-002"]);
        cp.create_node(&FakeNode::amd("mi300", "pool-b", 8)).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let n = nodes.get("gpu-001").await?;
        assert_eq!(n.metadata.labels.as_ref().and_then(|l| l.get("nvidia.com/gpu.count")).map(String::as_str), Some("8"));
        let alloc = n.status.as_ref().and_then(|s| s.allocatable.as_ref()).and_then(|a| a.get("nvidia.com/gpu")).map(|q| q.0.clone());
        assert_eq!(alloc.as_deref(), Some("8"));
        let amd = nodes.get("mi300").await?;
        assert_eq!(amd.metadata.labels.as_ref().and_then(|l| l.get("amd.com/gpu.count")).map(String::as_str), Some("8"));

        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79 on GPU 3").await?;
        let cond =
            nodes.get("gpu-001").await?.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "GPUProblem");
        assert_eq!(cond.map(|c| (c.status, c.reason)), Some(("True".to_string(), Some("XidCritical".to_string()))));

        let before = nodes.get("gpu-002").await?.status.and_then(|s| s.node_info).map(|i| i.boot_id).unwrap_or_default();
        let after = cp.simulate_reboot("gpu-002").await?;
        assert_ne!(before, after);
        let now = nodes.get("gpu-002").await?.status.and_then(|s| s.node_info).map(|i| i.boot_id).unwrap_or_default();
        assert_eq!(now, after);

        // kubectl works against it too.
        let out = cp.kubectl(&["get", "nodes", "-o", "name"])?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_places_a_gpu_pod_on_the_gpu_node_and_kwok_runs_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::full()).await?;
    cp.run(|cp| async move {
        cp.create_node(&FakeNode::cpu("cpu-0", "pool-cpu")).await?;
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-gpu", 8)).await?;
        namespace_for_pods(cp, "train").await?;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "needs-a-gpu"},
            "spec": {"containers": [{"name": "c", "image": "cuda", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
                     "tolerations": [{"operator": "Exists"}]},
        }))?;
        let pods: Api<Pod> = Api::namespaced(cp.client(), "train");
        pods.create(&PostParams::default(), &pod).await?;
        let placed = wait_for(Duration::from_secs(90), "the pod to be scheduled and running", || async {
            let p = pods.get("needs-a-gpu").await.ok()?;
            let node = p.spec.as_ref()?.node_name.clone()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(node)
        })
        .await?;
        assert_eq!(placed, "gpu-0", "only gpu-0 has nvidia.com/gpu allocatable");
        Ok(())
    })
    .await
}
