//! The ladder's replace step through the providers. Cluster API against a real API server: a
//! minimal Machine CRD of Cluster API's group, version and kind, and the test playing the
//! MachineSet controller. GCE and Civo against a local HTTP server answering in the request and
//! response shapes of the providers' public API documentation (no cloud is reachable from tests).

mod common;

use common::{receiver, reconcile_until};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use nodemedic_controller::executors::{ExecutorsConfig, StepRouter};
use nodemedic_controller::providers::{CivoConfig, CivoProvider, GceProvider, Provider};
use nodemedic_controller::{Reconciler, install_crds, now};
use nodemedic_core::{Policy, RemediationStep};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::time::Duration;

const REPLACE: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: replace, timeout: 10m, settle: 1s, verifyTimeout: 1m}
- {step: manual}
gates: {maxConcurrent: 1}
monitorOnly: false
"#;

fn machines() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine"))
}

/// Cluster API's Machine (cluster.x-k8s.io/v1beta1), as a minimal CRD: any fields, a status subresource.
async fn machine_crd(cp: &ControlPlane) -> anyhow::Result<()> {
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "machines.cluster.x-k8s.io"},
        "spec": {"group": "cluster.x-k8s.io", "scope": "Namespaced",
            "names": {"plural": "machines", "singular": "machine", "kind": "Machine", "listKind": "MachineList"},
            "versions": [{"name": "v1beta1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))?;
    Api::<CustomResourceDefinition>::all(cp.client()).create(&PostParams::default(), &crd).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), "default", &machines());
    wait_for(Duration::from_secs(30), "the Machine CRD to be served", || async { api.list(&Default::default()).await.ok().map(|_| ()) })
        .await?;
    Ok(())
}

/// What a MachineSet's Machine looks like once its node joined: `status.nodeRef` names the node.
async fn machine(cp: &ControlPlane, name: &str, node: &str) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), "default", &machines());
    let mut m = DynamicObject::new(name, &machines());
    m.data = serde_json::json!({"spec": {"clusterName": "gpu-cluster"}});
    api.create(&PostParams::default(), &m).await?;
    let status = serde_json::json!({"status": {"nodeRef": {"kind": "Node", "name": node}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

async fn machine_exists(cp: &ControlPlane, name: &str) -> bool {
    Api::<DynamicObject>::namespaced_with(cp.client(), "default", &machines()).get_opt(name).await.ok().flatten().is_some()
}

async fn policy(cp: &ControlPlane, name: &str, yaml: &str) -> anyhow::Result<()> {
    let spec = NodeHealthPolicySpec { policy: Policy::from_yaml(yaml)? };
    Api::<NodeHealthPolicy>::all(cp.client()).create(&PostParams::default(), &NodeHealthPolicy::new(name, spec)).await?;
    Ok(())
}

fn router(cp: &ControlPlane, yaml: &str) -> anyhow::Result<StepRouter> {
    let config: ExecutorsConfig = serde_saphyr::from_str(yaml)?;
    Ok(StepRouter::from_config(cp.client(), &config)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replace_step_deletes_the_cluster_api_machine_and_the_replacement_is_tracked_and_counted() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        machine_crd(cp).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 2).await?;
        machine(cp, "pool-a-m0", "gpu-000").await?;
        machine(cp, "pool-a-m1", "gpu-001").await?;
        policy(cp, "gpu-workers", REPLACE).await?;
        let executor = router(cp, "steps: {replace: {provider: {clusterApi: {}}}}")?;
        let records: Api<NodeRemediation> = Api::all(cp.client());

        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        reconcile_until(cp, &executor, "gpu-000's Machine to be deleted", || async {
            (!machine_exists(cp, "pool-a-m0").await).then_some(())
        })
        .await?;
        let report =
            wait_for(Duration::from_secs(30), "the provider's report", || async { records.get("gpu-000").await.ok()?.status?.step_report })
                .await?;
        assert!(report.message.contains("Machine default/pool-a-m0 deleted"), "{}", report.message);

        // gpu-001 fails too, but maxConcurrent 1: it waits while gpu-000's replacement is in flight.
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 48").await?;
        for _ in 0..3 {
            Reconciler::new(cp.client(), &executor).reconcile("gpu-workers", now()).await?;
        }
        assert!(machine_exists(cp, "pool-a-m1").await, "the budget holds gpu-001 back");

        // The MachineSet controller: the old Machine's node goes, a new Machine's node joins.
        Api::<Node>::all(cp.client()).delete("gpu-000", &Default::default()).await?;
        cp.create_node(&FakeNode::gpu("gpu-002", "pool-a", 8)).await?;
        machine(cp, "pool-a-m2", "gpu-002").await?;

        // The old node's record ends, the new node is tracked, and the freed slot goes to gpu-001.
        reconcile_until(cp, &executor, "gpu-000's record to end", || async {
            records.get_opt("gpu-000").await.ok().flatten().is_none().then_some(())
        })
        .await?;
        reconcile_until(cp, &executor, "gpu-001's replacement to start", || async {
            (!machine_exists(cp, "pool-a-m1").await).then_some(())
        })
        .await?;
        let status = Api::<NodeHealthPolicy>::all(cp.client()).get("gpu-workers").await?.status.unwrap_or_default();
        assert_eq!((status.selected, status.remediating), (2, 1), "gpu-001 and the new gpu-002: {status:?}");
        assert!(machine_exists(cp, "pool-a-m2").await, "the replacement is left alone");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ladder_step_no_executor_can_carry_out_is_refused_at_load_and_monitor_only_names_its_executors() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 1).await?;
        policy(cp, "gpu-workers", REPLACE).await?;
        let policies: Api<NodeHealthPolicy> = Api::all(cp.client());
        let defaults = router(cp, "{}")?;
        let err = Reconciler::new(cp.client(), &defaults).reconcile("gpu-workers", now()).await.err();
        assert_eq!(err.map(|e| e.metric_label()), Some("invalid_policy"));
        let status = policies.get("gpu-workers").await?.status.unwrap_or_default();
        let valid = status.conditions.iter().find(|c| c.type_ == "Valid").cloned();
        assert_eq!(valid.as_ref().map(|c| (c.status.as_str(), c.reason.as_str())), Some(("False", "MissingExecutor")));
        assert!(valid.is_some_and(|c| c.message.contains("ladder[0] step replace: no executor")), "{status:?}");

        // Monitor-only, with a provider configured: valid, and the status says where each step would go.
        policy(cp, "watching", &REPLACE.replace("monitorOnly: false", "monitorOnly: true")).await?;
        let capi = router(cp, "steps: {replace: {provider: {clusterApi: {}}}}")?;
        Reconciler::new(cp.client(), &capi).reconcile("watching", now()).await?;
        let status = policies.get("watching").await?.status.unwrap_or_default();
        let executors = status.conditions.iter().find(|c| c.type_ == "Executors").map(|c| c.message.clone()).unwrap_or_default();
        assert!(executors.contains("monitor-only") && executors.contains("replace: the cluster-api provider"), "{executors}");
        Ok(())
    })
    .await
}

fn node_with_provider_id(id: &str) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(serde_json::json!({"metadata": {"name": "gpu-7"}, "spec": {"providerID": id}}))?)
}

#[tokio::test]
async fn gce_deletes_the_instance_with_the_metadata_servers_token() -> anyhow::Result<()> {
    // Shapes from the Compute Engine docs: the metadata server's token, then instances.delete
    // answering with a zonal Operation.
    let token = r#"{"access_token":"ya29.c.test-token","expires_in":3599,"token_type":"Bearer"}"#;
    let operation = r#"{"kind":"compute#operation","id":"4817697984863411195","name":"operation-1700000000000-abc","zone":"https://www.googleapis.com/compute/v1/projects/my-project/zones/us-central2-b","operationType":"delete","targetLink":"https://www.googleapis.com/compute/v1/projects/my-project/zones/us-central2-b/instances/gke-tpu-pool-abc-1234","status":"RUNNING","progress":0}"#;
    let (url, seen) = receiver(vec![(200, token), (200, operation)]).await?;
    let base = url.trim_end_matches("/nodemedic/steps");
    let gce = GceProvider::with_endpoints(base, base).map_err(anyhow::Error::msg)?;
    let node = node_with_provider_id("gce://my-project/us-central2-b/gke-tpu-pool-abc-1234")?;
    let done = gce.repair(&node).await.map_err(anyhow::Error::msg)?;
    assert!(done.contains("gke-tpu-pool-abc-1234") && done.contains("deleted"), "{done}");
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].line, "GET /computeMetadata/v1/instance/service-accounts/default/token HTTP/1.1");
    assert_eq!(seen[0].header("metadata-flavor"), Some("Google"));
    assert_eq!(seen[1].line, "DELETE /compute/v1/projects/my-project/zones/us-central2-b/instances/gke-tpu-pool-abc-1234 HTTP/1.1");
    assert_eq!(seen[1].header("authorization"), Some("Bearer ya29.c.test-token"));
    assert_eq!(gce.steps(), [RemediationStep::Replace]);
    Ok(())
}

#[tokio::test]
async fn civo_hard_reboots_the_instance_in_its_region_and_a_refusal_names_the_status() -> anyhow::Result<()> {
    // Shapes from Civo's API reference: POST /v2/instances/:id/hard_reboots, region as a form field,
    // answering {"result": "success"}.
    let (url, seen) = receiver(vec![
        (200, r#"{"result":"success"}"#),
        (404, r#"{"code":"database_instance_not_found","reason":"The requested instance could not be found"}"#),
    ])
    .await?;
    let key = tempfile_with("civo-key", "civo-api-key-123\n")?;
    let config =
        CivoConfig { region: "LON1".into(), api_key_file: key.clone(), endpoint: Some(url.trim_end_matches("/nodemedic/steps").into()) };
    let civo = CivoProvider::new(config).map_err(anyhow::Error::msg)?;
    let node = node_with_provider_id("civo://3f2c7b1e-1234-4c9a-9f6e-0a1b2c3d4e5f")?;
    let done = civo.repair(&node).await.map_err(anyhow::Error::msg)?;
    assert!(done.contains("hard-rebooted"), "{done}");
    let err = civo.repair(&node).await.err().unwrap_or_default();
    assert!(err.contains("404") && err.contains("could not be found"), "{err}");
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen[0].line, "POST /v2/instances/3f2c7b1e-1234-4c9a-9f6e-0a1b2c3d4e5f/hard_reboots HTTP/1.1");
    assert_eq!(seen[0].header("authorization"), Some("Bearer civo-api-key-123"));
    assert_eq!(seen[0].raw, "region=LON1");
    assert_eq!(civo.steps(), [RemediationStep::Reboot], "seed 003's executor: a hard reboot, not a replacement");
    let _ = std::fs::remove_file(key);
    Ok(())
}

fn tempfile_with(name: &str, content: &str) -> std::io::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("nodemedic-{}-{name}", std::process::id()));
    std::fs::write(&path, content)?;
    Ok(path)
}
