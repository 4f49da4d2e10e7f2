//! The scenario's StatefulSets: one replica each, with a ReadWriteOnce CSI volume, preferring a node.
//! kube-controller-manager (StatefulSet, attach-detach, pod GC) and kube-scheduler do the real work;
//! the demo plays the CSI external-attacher (it marks the VolumeAttachments the attach-detach
//! controller creates as attached; a detach is that controller deleting one).

use crate::demo::{Scenario, StatefulWorkload};
use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nodemedic_testenv::{ControlPlane, wait_for};
use std::time::Duration;

/// The namespace of the demo's StatefulSets.
pub const NAMESPACE: &str = "db";
const DRIVER: &str = "fake.csi.nodemedic.io";

/// Where a StatefulSet's pod and volume are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulEnd {
    pub name: String,
    /// The node it prefers (the one that dies).
    pub home: String,
    /// The node its pod runs on, when it is Running and not being deleted.
    pub running_on: Option<String>,
    /// The nodes its volume is attached to (VolumeAttachments).
    pub attached_to: Vec<String>,
}

fn pod_name(w: &StatefulWorkload) -> String {
    format!("{}-0", w.name)
}

fn pv_name(w: &StatefulWorkload) -> String {
    format!("pv-{}", w.name)
}

async fn create<K>(api: &Api<K>, json: serde_json::Value) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), &serde_json::from_value(json)?).await {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// Lets kube-controller-manager attach volumes on every node (as a kubelet announces), then creates
/// each StatefulSet and waits until its pod runs on its node with its volume attached there.
pub async fn create_stateful_sets(cp: &ControlPlane, scenario: &Scenario) -> Result<()> {
    if scenario.stateful_sets.is_empty() {
        return Ok(());
    }
    let nodes: Api<Node> = Api::all(cp.client());
    let managed = serde_json::json!({"metadata": {"annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}}});
    for n in nodes.list(&ListParams::default()).await?.items {
        nodes.patch(&n.name_any(), &PatchParams::default(), &Patch::Merge(&managed)).await?;
    }
    create(&Api::<Namespace>::all(cp.client()), serde_json::json!({"metadata": {"name": NAMESPACE}})).await?;
    create(&Api::<ServiceAccount>::namespaced(cp.client(), NAMESPACE), serde_json::json!({"metadata": {"name": "default"}})).await?;
    create(
        &Api::<StorageClass>::all(cp.client()),
        serde_json::json!({"metadata": {"name": "manual"}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}),
    )
    .await?;
    for w in &scenario.stateful_sets {
        // Its pod only prefers the node: the node lifecycle controller's startup taints must be gone
        // first, or the scheduler places it elsewhere.
        let what = format!("{} to be Ready and untainted", w.node);
        wait_for(Duration::from_secs(60), &what, || async {
            let n = nodes.get(&w.node).await.ok()?;
            let untainted = n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty());
            let ready = n.status?.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && untainted).then_some(())
        })
        .await?;
        create_one(cp, w).await.with_context(|| format!("creating StatefulSet {NAMESPACE}/{}", w.name))?;
    }
    for w in &scenario.stateful_sets {
        let what = format!("{} to run on {} with its volume attached there", pod_name(w), w.node);
        wait_for(Duration::from_secs(120), &what, || async {
            attach(cp).await;
            let end = end(cp, w).await.ok()?;
            (end.running_on.as_deref() == Some(w.node.as_str()) && end.attached_to.contains(&w.node)).then_some(())
        })
        .await?;
        println!(
            "statefulset {NAMESPACE}/{}: pod {} Running on {}, ReadWriteOnce volume {} attached there",
            w.name,
            pod_name(w),
            w.node,
            pv_name(w)
        );
    }
    Ok(())
}

async fn create_one(cp: &ControlPlane, w: &StatefulWorkload) -> Result<()> {
    let claim = format!("data-{}", pod_name(w));
    create(
        &Api::<PersistentVolume>::all(cp.client()),
        serde_json::json!({
            "metadata": {"name": pv_name(w)},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                     "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": NAMESPACE, "name": claim},
                     "csi": {"driver": DRIVER, "volumeHandle": format!("vol-{}", w.name)}},
        }),
    )
    .await?;
    let prefer = serde_json::json!([{"weight": 100, "preference": {"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [w.node]}]}}]);
    create(
        &Api::<StatefulSet>::namespaced(cp.client(), NAMESPACE),
        serde_json::json!({
            "metadata": {"name": w.name},
            "spec": {
                "replicas": 1, "serviceName": w.name, "selector": {"matchLabels": {"app": w.name}},
                "template": {
                    "metadata": {"labels": {"app": w.name}},
                    "spec": {
                        "containers": [{"name": "db", "image": "postgres", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": prefer}},
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "resources": {"requests": {"storage": "1Gi"}}}}],
            },
        }),
    )
    .await
}

/// One pass of the CSI external-attacher: every VolumeAttachment not yet attached is marked attached.
/// Best effort: the next pass tries again.
pub async fn attach(cp: &ControlPlane) {
    let api: Api<VolumeAttachment> = Api::all(cp.client());
    let Ok(list) = api.list(&ListParams::default()).await else { return };
    for va in list.items.iter().filter(|va| !va.status.as_ref().is_some_and(|s| s.attached)) {
        let patch = serde_json::json!({"status": {"attached": true}});
        let _ = api.patch_status(&va.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
    }
}

async fn end(cp: &ControlPlane, w: &StatefulWorkload) -> Result<StatefulEnd> {
    let pod = Api::<Pod>::namespaced(cp.client(), NAMESPACE).get_opt(&pod_name(w)).await?;
    let running_on = pod.and_then(|p| {
        let running = p.status.as_ref()?.phase.as_deref() == Some("Running") && p.metadata.deletion_timestamp.is_none();
        running.then_some(p.spec?.node_name).flatten()
    });
    let attachments = Api::<VolumeAttachment>::all(cp.client()).list(&ListParams::default()).await?.items;
    let attached_to = attachments
        .into_iter()
        .filter(|va| va.spec.source.persistent_volume_name.as_deref() == Some(pv_name(w).as_str()))
        .map(|va| va.spec.node_name)
        .collect();
    Ok(StatefulEnd { name: w.name.clone(), home: w.node.clone(), running_on, attached_to })
}

/// Every StatefulSet of the scenario, as it is now.
pub async fn ends(cp: &ControlPlane, scenario: &Scenario) -> Result<Vec<StatefulEnd>> {
    let mut out = Vec::with_capacity(scenario.stateful_sets.len());
    for w in &scenario.stateful_sets {
        out.push(end(cp, w).await?);
    }
    Ok(out)
}
