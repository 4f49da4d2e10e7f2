//! What the demo puts on its nodes besides faults: workloads guarded by a PodDisruptionBudget that
//! lets none of their pods go (the drain holds until the demo, as the workload's owner, relaxes the
//! budget), and Cluster API Machines for some nodes, with the demo playing the MachineSet
//! controller: when the controller's replace step deletes a Machine, the demo deletes its node and
//! creates a new Machine whose node joins under a new name, as a MachineSet and its
//! infrastructure provider would.

use crate::demo::{Probe, Scenario, Workload, node_name};
use crate::demo_agent::publish;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use nodemedic_controller::providers::{MACHINE_ANNOTATION, MACHINE_NAMESPACE_ANNOTATION};
use nodemedic_testenv::{ControlPlane, FakeNode, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

/// The namespace of the demo's workloads.
pub const NAMESPACE: &str = "training";
/// The namespace of the demo's Machines.
const MACHINE_NAMESPACE: &str = "default";

/// The budget guarding a workload's pods.
pub fn budget_name(w: &Workload) -> String {
    format!("{}-budget", w.name)
}

/// Creation that tolerates an object already there (a ServiceAccount the controller manager made).
async fn create_once<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// Runs each workload's pods on its node (kwok runs them) and puts a budget with
/// `minAvailable: <pods>` over them, waiting until the disruption controller allows no disruption.
pub async fn create_workloads(cp: &ControlPlane, scenario: &Scenario) -> Result<()> {
    if scenario.workloads.is_empty() {
        return Ok(());
    }
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?;
    create_once(&Api::<Namespace>::all(cp.client()), &ns).await.context("creating the workloads' namespace")?;
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))?;
    create_once(&Api::<ServiceAccount>::namespaced(cp.client(), NAMESPACE), &sa).await?;
    let pods: Api<Pod> = Api::namespaced(cp.client(), NAMESPACE);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(cp.client(), NAMESPACE);
    for w in &scenario.workloads {
        for i in 0..w.pods {
            let name = format!("{}-{i}", w.name);
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": w.name}},
                "spec": {"nodeName": w.node, "containers": [{"name": "train", "image": "trainer:demo"}]}}))?;
            pods.create(&PostParams::default(), &pod).await.with_context(|| format!("creating pod {name}"))?;
        }
        let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": budget_name(w)},
            "spec": {"minAvailable": w.pods, "selector": {"matchLabels": {"app": w.name}}}}))?;
        budgets.create(&PostParams::default(), &budget).await.with_context(|| format!("creating {}", budget_name(w)))?;
        let what = format!("kwok to run {}'s pods and the disruption controller to guard them", w.name);
        wait_for(Duration::from_secs(120), &what, || async {
            let b = budgets.get(&budget_name(w)).await.ok()?;
            let s = b.status?;
            let guarded =
                s.current_healthy == w.pods as i32 && s.disruptions_allowed == 0 && s.observed_generation == b.metadata.generation;
            guarded.then_some(())
        })
        .await?;
        println!(
            "workload {NAMESPACE}/{}: {} pods on {}, PodDisruptionBudget {} minAvailable {} (none may leave)",
            w.name,
            w.pods,
            w.node,
            budget_name(w),
            w.pods
        );
    }
    Ok(())
}

/// The workload's owner lets its pods go: `minAvailable: 0`.
pub async fn relax(cp: &ControlPlane, w: &Workload) -> Result<()> {
    let patch = serde_json::json!({"spec": {"minAvailable": 0}});
    Api::<PodDisruptionBudget>::namespaced(cp.client(), NAMESPACE)
        .patch(&budget_name(w), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("relaxing {}", budget_name(w)))?;
    Ok(())
}

/// The workload's pods still on its node.
pub async fn pods_left(cp: &ControlPlane, w: &Workload) -> Result<usize> {
    let pods = Api::<Pod>::namespaced(cp.client(), NAMESPACE).list(&ListParams::default().labels(&format!("app={}", w.name))).await?;
    Ok(pods.items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(w.node.as_str())).count())
}

fn machines() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine"))
}

/// Cluster API's Machine (cluster.x-k8s.io/v1beta1) as a minimal CRD (any fields, a status
/// subresource): the same one the provider tests use.
pub async fn install_machine_crd(cp: &ControlPlane) -> Result<()> {
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "machines.cluster.x-k8s.io"},
        "spec": {"group": "cluster.x-k8s.io", "scope": "Namespaced",
            "names": {"plural": "machines", "singular": "machine", "kind": "Machine", "listKind": "MachineList"},
            "versions": [{"name": "v1beta1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))?;
    create_once(&Api::<CustomResourceDefinition>::all(cp.client()), &crd).await.context("installing the Machine CRD")?;
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), MACHINE_NAMESPACE, &machines());
    wait_for(Duration::from_secs(30), "the Machine CRD to be served", || async { api.list(&ListParams::default()).await.ok().map(|_| ()) })
        .await?;
    Ok(())
}

/// A Machine of MachineSet `gpu-pool` whose node has joined: `status.nodeRef` names the node, and
/// the node's annotations name the Machine.
async fn create_machine(cp: &ControlPlane, name: &str, node: &str) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), MACHINE_NAMESPACE, &machines());
    let mut m = DynamicObject::new(name, &machines());
    m.metadata.labels = Some(BTreeMap::from([("cluster.x-k8s.io/set-name".to_string(), "gpu-pool".to_string())]));
    m.data = serde_json::json!({"spec": {"clusterName": "demo", "bootstrap": {"dataSecretName": "gpu-pool-bootstrap"}}});
    api.create(&PostParams::default(), &m).await.with_context(|| format!("creating Machine {name}"))?;
    let status = serde_json::json!({"status": {"nodeRef": {"kind": "Node", "name": node}, "phase": "Running"}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.with_context(|| format!("Machine {name}'s nodeRef"))?;
    // Cluster API names a node's Machine in its annotations.
    let annotations = serde_json::json!({"metadata": {"annotations": {
        MACHINE_ANNOTATION: name, MACHINE_NAMESPACE_ANNOTATION: MACHINE_NAMESPACE}}});
    Api::<Node>::all(cp.client())
        .patch(node, &PatchParams::default(), &Patch::Merge(&annotations))
        .await
        .with_context(|| format!("annotating node {node} with its Machine"))?;
    Ok(())
}

/// The demo as MachineSet controller: Machine name → its node, and the replacements made.
pub struct MachineSet {
    /// Machine → node, for the Machines this MachineSet owns now.
    owned: BTreeMap<String, String>,
    /// Old node → the node that joined for its new Machine.
    pub replacements: BTreeMap<String, String>,
    /// The index of the next node name (gpu-016 after 16 nodes).
    next_node: usize,
    pool: BTreeMap<String, String>,
    gpus: u32,
}

impl MachineSet {
    /// Creates a Machine for each of the scenario's `machines`.
    pub async fn start(cp: &ControlPlane, scenario: &Scenario) -> Result<MachineSet> {
        let mut set = MachineSet {
            owned: BTreeMap::new(),
            replacements: BTreeMap::new(),
            next_node: scenario.nodes,
            pool: BTreeMap::new(),
            gpus: scenario.gpus_per_node,
        };
        let pools = scenario.pools.max(1);
        for (i, node) in (0..scenario.nodes).map(node_name).enumerate() {
            set.pool.insert(node, format!("pool-{}", i % pools));
        }
        for node in &scenario.machines {
            let machine = format!("gpu-pool-{}", node.trim_start_matches("gpu-"));
            create_machine(cp, &machine, node).await?;
            set.owned.insert(machine, node.clone());
        }
        if !scenario.machines.is_empty() {
            println!(
                "Cluster API: Machines of MachineSet gpu-pool own {}; the demo plays the MachineSet controller",
                scenario.machines.join(", ")
            );
        }
        Ok(set)
    }

    /// Replaces every owned Machine that is gone: deletes its node (what Cluster API does on Machine
    /// deletion) and creates a new Machine whose node joins under a new name with every probe
    /// passing. Returns (old node, new node) for each replacement made now.
    pub async fn reconcile(&mut self, cp: &ControlPlane) -> Result<Vec<(String, String)>> {
        if self.owned.is_empty() {
            return Ok(Vec::new());
        }
        let api: Api<DynamicObject> = Api::namespaced_with(cp.client(), MACHINE_NAMESPACE, &machines());
        let present: Vec<String> = api.list(&ListParams::default()).await?.items.iter().map(|m| m.name_any()).collect();
        let gone: Vec<(String, String)> =
            self.owned.iter().filter(|(m, _)| !present.contains(m)).map(|(m, n)| (m.clone(), n.clone())).collect();
        let mut made = Vec::new();
        for (machine, old) in gone {
            match Api::<Node>::all(cp.client()).delete(&old, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting node {old} of Machine {machine}")),
            }
            let new = node_name(self.next_node);
            let pool = self.pool.get(&old).cloned().unwrap_or_else(|| "pool-0".into());
            cp.create_node(&FakeNode::gpu(&new, &pool, self.gpus)).await.with_context(|| format!("creating node {new}"))?;
            let now = jiff::Timestamp::now().to_string();
            for kind in Probe::ALL {
                publish(cp, &new, kind, false, "all probes pass", &now).await?;
            }
            let new_machine = format!("gpu-pool-{}", new.trim_start_matches("gpu-"));
            create_machine(cp, &new_machine, &new).await?;
            self.next_node += 1;
            self.owned.remove(&machine);
            self.owned.insert(new_machine, new.clone());
            self.pool.insert(new.clone(), pool);
            self.replacements.insert(old.clone(), new.clone());
            made.push((old, new));
        }
        Ok(made)
    }
}
