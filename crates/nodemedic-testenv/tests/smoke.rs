//! Proof that the test environment is a real control plane: RBAC, server-side apply, the Eviction
//! API with PodDisruptionBudgets, the node lifecycle and taint-eviction controllers, the scheduler,
//! and the fake-node helpers, each against real binaries.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use nodemedic_testenv::{ControlPlane, FakeNode, GpuVendor, Options, wait_for};
use std::time::Duration;

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The status of the node's Ready condition.
fn ready(n: &Node) -> Option<String> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

fn boot_id(n: &Node) -> String {
    n.status.as_ref().and_then(|s| s.node_info.as_ref()).map(|i| i.boot_id.clone()).unwrap_or_default()
}

fn has_taint(n: &Node, key: &str, effect: &str) -> bool {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == key && t.effect == effect))
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
async fn a_kwok_node_whose_heartbeat_stops_becomes_unknown_and_unreachable_and_its_pods_are_evicted() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options {
        controller_manager: true,
        kwok: true,
        node_monitor_grace_period: Duration::from_secs(15),
        ..Options::default()
    })
    .await?;
    cp.run(|cp| async move {
        // A second, healthy node: with every node unhealthy the node lifecycle controller assumes a
        // zone-wide outage ("master disruption mode") and holds back NoExecute taints and evictions.
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        cp.create_node(&FakeNode::gpu("gpu-1", "pool-a", 8)).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        for name in ["gpu-0", "gpu-1"] {
            wait_for(Duration::from_secs(60), "kwok to make the nodes Ready", || async {
                (ready(&nodes.get(name).await.ok()?).as_deref() == Some("True")).then_some(())
            })
            .await?;
        }
        // A pod on the node that tolerates its being unreachable for one second only (the default
        // toleration would be 300 s).
        namespace_for_pods(cp, "work").await?;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "on-gpu-0"},
            "spec": {"nodeName": "gpu-0", "containers": [{"name": "c", "image": "busybox"}],
                     "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}]},
        }))?;
        let pods: Api<Pod> = Api::namespaced(cp.client(), "work");
        pods.create(&PostParams::default(), &pod).await?;

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

        // The taint-eviction controller deletes the pod once its toleration runs out. Its kubelet is
        // gone, so it stays terminating (deletionTimestamp set) rather than disappearing.
        wait_for(Duration::from_secs(60), "the NoExecute taint and the taint-eviction controller to delete the pod", || async {
            let tainted = has_taint(&nodes.get("gpu-0").await.ok()?, "node.kubernetes.io/unreachable", "NoExecute");
            let deleting = match pods.get_opt("on-gpu-0").await.ok()? {
                Some(p) => p.metadata.deletion_timestamp.is_some(),
                None => true,
            };
            (tainted && deleting).then_some(())
        })
        .await?;

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
async fn fake_gpu_nodes_carry_counts_labels_conditions_and_reboot_down_then_up_with_a_new_boot_id() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        let names = cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 3).await?;
        assert_eq!(names, ["gpu-000", "gpu-001", "gpu-002"]);
        let mut mi300 = FakeNode::amd("mi300", "pool-b", 8);
        assert_eq!(mi300.vendor, GpuVendor::Amd);
        mi300.labels.insert("topology.example.com/rack".into(), "rack-7".into());
        mi300.conditions.push(("GPUHealthy".into(), "True".into(), "ProbesPassing".into()));
        cp.create_node(&mi300).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let n = nodes.get("gpu-001").await?;
        assert_eq!(n.metadata.labels.as_ref().and_then(|l| l.get("nvidia.com/gpu.count")).map(String::as_str), Some("8"));
        let alloc = n.status.as_ref().and_then(|s| s.allocatable.as_ref()).and_then(|a| a.get("nvidia.com/gpu")).map(|q| q.0.clone());
        assert_eq!(alloc.as_deref(), Some("8"));

        // kwok initialises the node beside our status patch; what we set must survive it.
        let amd = wait_for(Duration::from_secs(20), "kwok to make mi300 Ready", || async {
            let n = nodes.get("mi300").await.ok()?;
            (ready(&n).as_deref() == Some("True")).then_some(n)
        })
        .await?;
        let label = |key: &str| amd.metadata.labels.as_ref().and_then(|l| l.get(key)).cloned();
        assert_eq!(label("amd.com/gpu.count").as_deref(), Some("8"));
        assert_eq!(label("topology.example.com/rack").as_deref(), Some("rack-7"));
        assert_eq!(label("cloud.google.com/gke-nodepool").as_deref(), Some("pool-b"));
        let status = amd.status.clone().unwrap_or_default();
        for (what, resources) in [("allocatable", status.allocatable), ("capacity", status.capacity)] {
            let resources = resources.unwrap_or_default();
            assert_eq!(resources.get("amd.com/gpu").map(|q| q.0.as_str()), Some("8"), "{what}: {resources:?}");
            assert!(!resources.contains_key("nvidia.com/gpu"), "{what}: {resources:?}");
        }
        let healthy = status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "GPUHealthy");
        assert_eq!(healthy.map(|c| (c.status, c.reason)), Some(("True".to_string(), Some("ProbesPassing".to_string()))));

        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79 on GPU 3").await?;
        let cond =
            nodes.get("gpu-001").await?.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "GPUProblem");
        assert_eq!(cond.map(|c| (c.status, c.reason)), Some(("True".to_string(), Some("XidCritical".to_string()))));

        // A watcher sees the reboot: Ready False first, and the node's next Ready True carries the new
        // boot ID (kwok does not bring it back early on the old one).
        let rebooting = nodes.get("gpu-002").await?;
        let before = boot_id(&rebooting);
        let since = rebooting.metadata.resource_version.unwrap_or_default();
        let mut watch = nodes.watch(&WatchParams::default().fields("metadata.name=gpu-002"), &since).await?.boxed();
        let after = cp.simulate_reboot("gpu-002").await?;
        assert_ne!(before, after);
        assert_eq!(boot_id(&nodes.get("gpu-002").await?), after);
        let mut seen: Vec<(String, String)> = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = watch.try_next().await? {
                if let WatchEvent::Added(n) | WatchEvent::Modified(n) = event {
                    seen.push((ready(&n).unwrap_or_default(), boot_id(&n)));
                    if seen.last().is_some_and(|(r, b)| r == "True" && *b == after) {
                        break;
                    }
                }
            }
            anyhow::Ok(())
        })
        .await??;
        let went_down = seen.iter().position(|(r, _)| r == "False");
        assert!(went_down.is_some(), "the watcher never saw Ready False: {seen:?}");
        let came_up = went_down.and_then(|i| seen[i..].iter().find(|(r, _)| r == "True"));
        assert_eq!(came_up.map(|(_, b)| b), Some(&after), "the first Ready True after False: {seen:?}");

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
