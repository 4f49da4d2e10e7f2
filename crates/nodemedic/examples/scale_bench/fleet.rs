//! Realistic GKE GPU Node objects (two dozen labels, GPU capacity and allocatable, the node problem
//! detector's conditions beside the kubelet's, optionally `status.images`), created in parallel, and
//! the faults the benchmark injects.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::collections::BTreeMap;

/// The condition the benchmark's policy watches (`GPUHealthy=False for 10s`).
pub const GPU_CONDITION: &str = "GPUHealthy";
pub const RULE_SECONDS: i64 = 10;

/// The policy both replicas run: one rule, a reboot the node agent would carry out, then a person.
pub const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUHealthy, status: "False"}
  duration: 10s
ladder:
- {step: reboot, timeout: 15m}
- {step: manual}
monitorOnly: false
"#;

/// Kubernetes writes condition times to the second.
pub fn now_second() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_else(|_| jiff::Timestamp::now())
}

pub fn node_name(i: usize) -> String {
    format!("gke-gpu-{:02}-{i:06}", i % 50)
}

fn labels(i: usize) -> BTreeMap<String, String> {
    let pool = format!("a3-pool-{:02}", i % 50);
    let zone = ["us-central1-a", "us-central1-b", "us-central1-c"][i % 3];
    let name = node_name(i);
    [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/instance-type", "a3-highgpu-8g"),
        ("beta.kubernetes.io/os", "linux"),
        ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb"),
        ("cloud.google.com/gke-boot-disk", "pd-balanced"),
        ("cloud.google.com/gke-container-runtime", "containerd"),
        ("cloud.google.com/gke-cpu-scaling-level", "208"),
        ("cloud.google.com/gke-gpu-driver-version", "latest"),
        ("cloud.google.com/gke-logging-variant", "DEFAULT"),
        ("cloud.google.com/gke-max-pods-per-node", "110"),
        ("cloud.google.com/gke-nodepool", pool.as_str()),
        ("cloud.google.com/gke-os-distribution", "cos"),
        ("cloud.google.com/gke-provisioning", "standard"),
        ("cloud.google.com/gke-stack-type", "IPV4"),
        ("cloud.google.com/machine-family", "a3"),
        ("cloud.google.com/private-node", "false"),
        ("failure-domain.beta.kubernetes.io/region", "us-central1"),
        ("failure-domain.beta.kubernetes.io/zone", zone),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "a3-highgpu-8g"),
        ("nvidia.com/gpu.count", "8"),
        ("topology.kubernetes.io/region", "us-central1"),
        ("topology.kubernetes.io/zone", zone),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// metadata and spec, as a node registers itself.
pub fn node_object(i: usize) -> serde_json::Value {
    let name = node_name(i);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels(i),
            "annotations": {
                "container.googleapis.com/instance_id": format!("{}", 4_000_000_000_000_000_000u64 + i as u64),
                "csi.volume.kubernetes.io/nodeid": format!("{{\"pd.csi.storage.gke.io\":\"projects/bench/zones/us-central1-a/instances/{name}\"}}"),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "podCIDR": format!("10.{}.{}.0/24", 64 + i / 65536 % 64, i / 256 % 256),
            "providerID": format!("gce://bench/us-central1-a/{name}"),
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        },
    })
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, at: &str) -> serde_json::Value {
    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at, "lastHeartbeatTime": at})
}

/// The status a healthy node reports: the kubelet's and the node problem detector's conditions,
/// the GPU condition, capacity with 8 GPUs, node info and (optionally) 40 container images.
pub fn node_status(i: usize, images: bool) -> serde_json::Value {
    let at = now_second().to_string();
    let name = node_name(i);
    let resources = serde_json::json!({
        "cpu": "208", "ephemeral-storage": "253869360Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
        "memory": "1891737368Ki", "nvidia.com/gpu": "8", "pods": "110",
    });
    let conditions = vec![
        condition("FrequentUnregisterNetDevice", "False", "NoFrequentUnregisterNetDevice", "node is functioning properly", &at),
        condition("FrequentKubeletRestart", "False", "NoFrequentKubeletRestart", "kubelet is functioning properly", &at),
        condition("FrequentContainerdRestart", "False", "NoFrequentContainerdRestart", "containerd is functioning properly", &at),
        condition("KernelDeadlock", "False", "KernelHasNoDeadlock", "kernel has no deadlock", &at),
        condition("ReadonlyFilesystem", "False", "FilesystemIsNotReadOnly", "Filesystem is not read-only", &at),
        condition("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route", &at),
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", &at),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", &at),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", &at),
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", &at),
        condition(GPU_CONDITION, "True", "AllGPUsHealthy", "8 of 8 GPUs healthy", &at),
    ];
    let image_list: Vec<serde_json::Value> = if images {
        (0..40)
            .map(|k| {
                serde_json::json!({
                    "names": [
                        format!("us-docker.pkg.dev/bench/images/training-{k}@sha256:{:064x}", k * 7919 + 1),
                        format!("us-docker.pkg.dev/bench/images/training-{k}:v1.{k}.0"),
                    ],
                    "sizeBytes": 1_000_000_000 + k * 1_000_000,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut status = serde_json::json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": format!("10.128.{}.{}", i / 256 % 256, i % 256)},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "bootID": format!("{:08x}-0000-4000-8000-{:012x}", i, i), "machineID": format!("{i:032x}"),
            "systemUUID": format!("{i:08x}-0000-4000-8000-000000000000"), "kernelVersion": "6.6.56+",
            "osImage": "Container-Optimized OS from Google", "containerRuntimeVersion": "containerd://1.7.24",
            "kubeletVersion": "v1.35.4-gke.1000", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    });
    if images {
        status["images"] = serde_json::Value::Array(image_list);
    }
    serde_json::json!({"status": status})
}

/// Creates nodes `0..count` (metadata and spec, then status), `parallel` at a time.
pub async fn create(api: &Api<Node>, count: usize, images: bool, parallel: usize) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|i| async move {
            let node: Node = serde_json::from_value(node_object(i))?;
            api.create(&PostParams::default(), &node).await?;
            api.patch_status(&node_name(i), &PatchParams::default(), &Patch::Merge(node_status(i, images))).await?;
            Ok(())
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The GPU condition turns False now; returns the condition time as the API server stores it.
pub async fn break_gpu(api: &Api<Node>, node: &str) -> anyhow::Result<jiff::Timestamp> {
    let at = now_second();
    let patch = serde_json::json!({"status": {"conditions": [
        condition(GPU_CONDITION, "False", "XidCritical", "Xid 79: GPU has fallen off the bus", &at.to_string())
    ]}});
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch)).await?;
    Ok(at)
}
