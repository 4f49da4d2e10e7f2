//! Cluster API: a node's machine is a `Machine` (cluster.x-k8s.io/v1beta1) owned by a MachineSet.
//! Deleting the Machine drains and removes the node and makes the MachineSet create a new Machine,
//! whose node joins under a new name: a replacement on any CAPI-managed cluster.

use super::{Provider, ProviderFuture};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, ResourceExt};
use nodemedic_core::RemediationStep;

/// The annotation Cluster API puts on a node naming its Machine.
pub const MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/machine";
/// The annotation Cluster API puts on a node naming its Machine's namespace.
pub const MACHINE_NAMESPACE_ANNOTATION: &str = "cluster.x-k8s.io/cluster-namespace";

/// Deletes the Machine that owns the node: the one the node's annotations name, else the one
/// whose `status.nodeRef.name` is the node.
pub struct ClusterApiProvider {
    pub client: Client,
    /// Only Machines in this namespace (None: the node's annotation, else all namespaces).
    pub namespace: Option<String>,
}

fn machines() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Machine"))
}

impl ClusterApiProvider {
    /// The (namespace, name) of the node's Machine.
    async fn machine_of(&self, node: &Node) -> Result<(String, String), String> {
        let name = node.name_any();
        let annotations = node.annotations();
        let namespace = self.namespace.clone().or_else(|| annotations.get(MACHINE_NAMESPACE_ANNOTATION).cloned());
        if let (Some(ns), Some(machine)) = (&namespace, annotations.get(MACHINE_ANNOTATION)) {
            return Ok((ns.clone(), machine.clone()));
        }
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &machines()),
            None => Api::all_with(self.client.clone(), &machines()),
        };
        let list = api.list(&ListParams::default()).await.map_err(|e| format!("listing Machines: {e}"))?;
        list.items
            .iter()
            .find(|m| m.data.pointer("/status/nodeRef/name").and_then(|v| v.as_str()) == Some(name.as_str()))
            .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
            .ok_or_else(|| {
                format!(
                    "no Cluster API Machine owns node {name} (no {MACHINE_ANNOTATION} annotation, no Machine with status.nodeRef {name})"
                )
            })
    }
}

impl Provider for ClusterApiProvider {
    fn name(&self) -> &'static str {
        "cluster-api"
    }

    fn steps(&self) -> &'static [RemediationStep] {
        &[RemediationStep::Replace]
    }

    fn repair<'a>(&'a self, node: &'a Node) -> ProviderFuture<'a> {
        Box::pin(async move {
            let (ns, machine) = self.machine_of(node).await?;
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &machines());
            match api.delete(&machine, &DeleteParams::default()).await {
                Ok(_) => Ok(format!("Machine {ns}/{machine} deleted; its MachineSet creates a replacement")),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(format!("Machine {ns}/{machine} was already deleted")),
                Err(e) => Err(format!("deleting Machine {ns}/{machine}: {e}")),
            }
        })
    }
}
