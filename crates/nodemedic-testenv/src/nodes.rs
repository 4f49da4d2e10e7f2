//! Fake nodes for tests: GPU or CPU nodes with pools, labels, capacity, conditions and boot IDs,
//! managed by kwok (simulated kubelets) unless told otherwise.

use crate::{ControlPlane, TestEnvError};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Nodes carrying this annotation with value `fake` are run by kwok.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
const POOL_LABEL: &str = "cloud.google.com/gke-nodepool";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuVendor {
    Nvidia,
    Amd,
}

/// What a fake node looks like.
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub pool: Option<String>,
    pub gpus: u32,
    pub vendor: GpuVendor,
    pub labels: BTreeMap<String, String>,
    /// Extra conditions (type, status, reason) beside kwok's own.
    pub conditions: Vec<(String, String, String)>,
    /// Managed by kwok (heartbeats, Ready); false for a node whose status the test owns entirely.
    pub kwok: bool,
}

impl FakeNode {
    /// A worker with `gpus` NVIDIA GPUs: the `nvidia.com/gpu.count` label and allocatable agree.
    pub fn gpu(name: &str, pool: &str, gpus: u32) -> FakeNode {
        FakeNode {
            name: name.into(),
            pool: Some(pool.into()),
            gpus,
            vendor: GpuVendor::Nvidia,
            labels: BTreeMap::from([("node-role.kubernetes.io/worker".into(), String::new())]),
            conditions: Vec::new(),
            kwok: true,
        }
    }

    pub fn amd(name: &str, pool: &str, gpus: u32) -> FakeNode {
        FakeNode { vendor: GpuVendor::Amd, ..FakeNode::gpu(name, pool, gpus) }
    }

    pub fn cpu(name: &str, pool: &str) -> FakeNode {
        FakeNode { gpus: 0, ..FakeNode::gpu(name, pool, 0) }
    }

    fn resource(&self) -> &'static str {
        match self.vendor {
            GpuVendor::Nvidia => "nvidia.com/gpu",
            GpuVendor::Amd => "amd.com/gpu",
        }
    }

    /// The Node object (metadata and spec) to create.
    pub fn object(&self) -> Node {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("type".into(), "kwok".into());
        if let Some(pool) = &self.pool {
            labels.insert(POOL_LABEL.into(), pool.clone());
        }
        if self.gpus > 0 {
            labels.insert(format!("{}.count", self.resource()), self.gpus.to_string());
        }
        let mut annotations = BTreeMap::new();
        if self.kwok {
            annotations.insert(KWOK_ANNOTATION.to_string(), "fake".to_string());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": annotations},
            "spec": {},
        }))
        .unwrap_or_default()
    }

    /// The status to set: capacity and allocatable (with GPUs), boot ID and extra conditions.
    pub fn status(&self, boot_id: &str) -> serde_json::Value {
        let mut resources = BTreeMap::from([
            ("cpu".to_string(), Quantity("96".into())),
            ("memory".to_string(), Quantity("1Ti".into())),
            ("pods".to_string(), Quantity("110".into())),
        ]);
        if self.gpus > 0 {
            resources.insert(self.resource().into(), Quantity(self.gpus.to_string()));
        }
        let now = now_rfc3339();
        let conditions: Vec<serde_json::Value> = self
            .conditions
            .iter()
            .map(|(t, s, r)| serde_json::json!({"type": t, "status": s, "reason": r, "message": "", "lastTransitionTime": now, "lastHeartbeatTime": now}))
            .collect();
        serde_json::json!({"status": {
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {"bootID": boot_id, "machineID": self.name, "systemUUID": self.name, "kernelVersion": "6.1.0", "osImage": "kwok", "containerRuntimeVersion": "kwok", "kubeletVersion": "fake", "kubeProxyVersion": "fake", "operatingSystem": "linux", "architecture": "amd64"},
            "conditions": conditions,
        }})
    }
}

/// Now, truncated to the second as Kubernetes condition times are (never rounded up into the future).
fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The status of the node's Ready condition, if it has one.
fn ready_status(node: &Node) -> Option<String> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

/// A fresh boot ID in the kernel's format.
pub fn new_boot_id() -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = format!("{:032x}", n ^ 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl ControlPlane {
    /// Creates one fake node and sets its status.
    pub async fn create_node(&self, spec: &FakeNode) -> Result<Node, TestEnvError> {
        let api: Api<Node> = Api::all(self.client());
        api.create(&PostParams::default(), &spec.object()).await?;
        let patched = api.patch_status(&spec.name, &PatchParams::default(), &Patch::Strategic(spec.status(&new_boot_id()))).await?;
        Ok(patched)
    }

    /// Creates `count` nodes like `template`, named `<template.name>-000`, `-001`, ….
    pub async fn create_nodes(&self, template: &FakeNode, count: usize) -> Result<Vec<String>, TestEnvError> {
        let mut names = Vec::with_capacity(count);
        for i in 0..count {
            let spec = FakeNode { name: format!("{}-{i:03}", template.name), ..template.clone() };
            self.create_node(&spec).await?;
            names.push(spec.name);
        }
        Ok(names)
    }

    /// Sets (or adds) one Node condition through the status subresource.
    pub async fn set_node_condition(&self, node: &str, type_: &str, status: &str, reason: &str, message: &str) -> Result<(), TestEnvError> {
        let api: Api<Node> = Api::all(self.client());
        let now = now_rfc3339();
        let patch = serde_json::json!({"status": {"conditions": [
            {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now, "lastHeartbeatTime": now}
        ]}});
        api.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch)).await?;
        Ok(())
    }

    /// A reboot with the node down for one second; see [`ControlPlane::simulate_reboot_with`].
    pub async fn simulate_reboot(&self, node: &str) -> Result<String, TestEnvError> {
        self.simulate_reboot_with(node, Duration::from_secs(1)).await
    }

    /// A reboot as the API server sees it: Ready goes False, and once the API server shows that, the
    /// node stays down for `down`; then it comes back with a new `status.nodeInfo.bootID` and Ready
    /// True. Returns the new boot ID once the API server shows it, with Ready True.
    ///
    /// kwok sets Ready True again as soon as it sees anything else (its node-initialize stage), so a
    /// watcher might never see the node down: a kwok node is taken from kwok while it is down and
    /// handed back once it is up. kwok may then still write its cached status (the old boot ID) back
    /// over ours, so the new one is re-applied until it holds.
    pub async fn simulate_reboot_with(&self, node: &str, down: Duration) -> Result<String, TestEnvError> {
        let api: Api<Node> = Api::all(self.client());
        let annotations = api.get(node).await?.metadata.annotations.unwrap_or_default();
        let run_by_kwok = annotations.get(KWOK_ANNOTATION).is_some_and(|v| v == "fake");
        if run_by_kwok {
            self.set_kwok(node, None).await?;
        }
        let rebooted = self.reboot(&api, node, down, run_by_kwok).await;
        if rebooted.is_err() && run_by_kwok {
            // Best effort: leave the node with kwok as it was; the reboot's own error is the one to report.
            let _ = self.set_kwok(node, Some("fake")).await;
        }
        rebooted
    }

    async fn reboot(&self, api: &Api<Node>, node: &str, down: Duration, run_by_kwok: bool) -> Result<String, TestEnvError> {
        const LIMIT: Duration = Duration::from_secs(20);
        let started = Instant::now();
        loop {
            self.set_node_condition(node, "Ready", "False", "KubeletNotReady", "node is rebooting").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if ready_status(&api.get(node).await?).as_deref() == Some("False") {
                break;
            }
            if started.elapsed() > LIMIT {
                return Err(TestEnvError::Timeout(LIMIT, format!("node {node} to show Ready False")));
            }
        }
        tokio::time::sleep(down).await;

        let boot_id = new_boot_id();
        let started = Instant::now();
        let mut handed_back = !run_by_kwok;
        loop {
            let now = now_rfc3339();
            let patch = serde_json::json!({"status": {
                "nodeInfo": {"bootID": boot_id},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastTransitionTime": now, "lastHeartbeatTime": now}],
            }});
            api.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch)).await?;
            if !handed_back {
                // Only now: kwok would have re-initialised a node it saw with Ready False.
                self.set_kwok(node, Some("fake")).await?;
                handed_back = true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let n = api.get(node).await?;
            let shown = n.status.as_ref().and_then(|s| s.node_info.as_ref()).is_some_and(|i| i.boot_id == boot_id);
            if shown && ready_status(&n).as_deref() == Some("True") {
                return Ok(boot_id);
            }
            if started.elapsed() > LIMIT {
                return Err(TestEnvError::Timeout(LIMIT, format!("node {node} to show boot ID {boot_id} and Ready")));
            }
        }
    }

    /// The node's kubelet "dies": kwok stops posting its status, and its Lease in `kube-node-lease`
    /// stops being renewed, so the node lifecycle controller marks it Unknown after its grace period.
    /// (kwok keeps renewing a lease until the node is deleted, so the lease is handed to a holder
    /// that never renews it; kwok does not take over a lease another holder has not let expire.)
    pub async fn stop_heartbeat(&self, node: &str) -> Result<(), TestEnvError> {
        self.set_kwok(node, None).await?;
        let leases: Api<Lease> = Api::namespaced(self.client(), "kube-node-lease");
        let renew = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let patch = serde_json::json!({"spec": {"holderIdentity": "nodemedic-testenv/heartbeat-stopped", "leaseDurationSeconds": 86_400, "renewTime": renew}});
        leases.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await?;
        Ok(())
    }

    /// Undoes [`ControlPlane::stop_heartbeat`]: kwok creates a fresh lease and runs the node again.
    pub async fn resume_heartbeat(&self, node: &str) -> Result<(), TestEnvError> {
        let leases: Api<Lease> = Api::namespaced(self.client(), "kube-node-lease");
        match leases.delete(node, &Default::default()).await {
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        self.set_kwok(node, Some("fake")).await
    }

    async fn set_kwok(&self, node: &str, value: Option<&str>) -> Result<(), TestEnvError> {
        let api: Api<Node> = Api::all(self.client());
        let patch = serde_json::json!({"metadata": {"annotations": {KWOK_ANNOTATION: value}}});
        api.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_ids_look_like_the_kernels_and_differ() {
        let a = super::new_boot_id();
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_ne!(a, super::new_boot_id());
    }

    #[test]
    fn rfc3339_now_is_well_formed() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
