//! Which pods hold a GPU: the selection a partial drain (only the pods using the GPU being reset) needs,
//! over the kubelet's pod-resources `List` answer (`/var/lib/kubelet/pod-resources/kubelet.sock`, v1
//! `ListPodResourcesResponse`) in its protobuf JSON mapping. Nothing reads that socket yet (no gRPC client
//! is in the dependency tree) and no drain uses this selection: see docs/controller.md.

use serde::{Deserialize, Serialize};

/// `ListPodResourcesResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodResourcesList {
    #[serde(default)]
    pub pod_resources: Vec<PodResources>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodResources {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub containers: Vec<ContainerResources>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerResources {
    pub name: String,
    #[serde(default)]
    pub devices: Vec<ContainerDevices>,
}

/// The devices of one extended resource a container was given: for the NVIDIA device plugin the GPU
/// UUIDs (`GPU-…`) under `nvidia.com/gpu`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDevices {
    pub resource_name: String,
    #[serde(default)]
    pub device_ids: Vec<String>,
}

impl PodResourcesList {
    /// Reads a `List` answer in its JSON mapping, strictly (a key given twice is refused).
    pub fn from_json(text: &str) -> Result<PodResourcesList, crate::input::InputError> {
        crate::input::from_json_str(text)
    }
}

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// The pods with a container given `device_id` of `resource` (e.g. `nvidia.com/gpu`, `GPU-8f…`), each
/// once, sorted. Device ids are compared exactly: a device plugin's ids are opaque.
pub fn pods_using(list: &PodResourcesList, resource: &str, device_id: &str) -> Vec<PodRef> {
    let mut pods: Vec<PodRef> = list
        .pod_resources
        .iter()
        .filter(|p| {
            p.containers
                .iter()
                .flat_map(|c| &c.devices)
                .any(|d| d.resource_name == resource && d.device_ids.iter().any(|id| id == device_id))
        })
        .map(|p| PodRef { namespace: p.namespace.clone(), name: p.name.clone() })
        .collect();
    pods.sort();
    pods.dedup();
    pods
}
