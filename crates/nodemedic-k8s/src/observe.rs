//! From Kubernetes objects to what the engine observes. A field that cannot be read is an error
//! naming the node and the field: the engine never decides on data that could not be read.

use crate::NodeRemediation;
use k8s_openapi::api::core::v1::Node;
use nodemedic_core::observe::{NodeCondition, NodeObservation, Taint, TaintEffect};
use nodemedic_core::policy::ConditionStatus;
use nodemedic_core::time::Time;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveError {
    pub node: String,
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for ObserveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}: {}: {}", self.node, self.field, self.reason)
    }
}

impl std::error::Error for ObserveError {}

fn millis(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Time {
    Time(t.0.as_millisecond())
}

/// Builds the engine's view of a node, with the executor's report and a person's request taken from
/// the node's NodeRemediation when there is one. Agent check results arrive as conditions.
pub fn observe_node(node: &Node, remediation: Option<&NodeRemediation>) -> Result<NodeObservation, ObserveError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let err = |field: String, reason: String| ObserveError {
        node: if name.is_empty() { "<unnamed>".into() } else { name.clone() },
        field,
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name".into(), "missing".into()));
    }
    let mut obs = NodeObservation::new(name.clone());
    obs.labels = node.metadata.labels.clone().unwrap_or_default();
    for (i, t) in node.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten().enumerate() {
        let effect = match t.effect.as_str() {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            other => return Err(err(format!("spec.taints[{i}].effect"), format!("unknown effect `{other}`"))),
        };
        obs.taints.push(Taint { key: t.key.clone(), value: t.value.clone(), effect });
    }
    let faulty_gpus = faulty_gpus(node);
    let status = node.status.as_ref();
    for (i, c) in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten().enumerate() {
        let cond_status = match c.status.as_str() {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            "Unknown" => ConditionStatus::Unknown,
            other => return Err(err(format!("status.conditions[{i}].status"), format!("`{other}` is not True, False or Unknown"))),
        };
        let heartbeat = c.last_heartbeat_time.as_ref().map(millis);
        let Some(transition) = c.last_transition_time.as_ref().map(millis).or(heartbeat) else {
            return Err(err(
                format!("status.conditions[{i}] ({})", c.type_),
                "has neither lastTransitionTime nor lastHeartbeatTime".into(),
            ));
        };
        obs.conditions.push(NodeCondition {
            type_: c.type_.clone(),
            status: cond_status,
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
            last_transition_time: transition,
            last_heartbeat_time: heartbeat,
            gpu: faulty_gpus.get(&c.type_).cloned(),
        });
    }
    // Whole-number resources only (GPUs, pods); cpu and memory quantities are not the engine's business.
    for (resource, q) in status.and_then(|s| s.allocatable.as_ref()).into_iter().flatten() {
        if let Ok(n) = q.0.trim().parse::<i64>() {
            obs.allocatable.insert(resource.clone(), n);
        } else if resource.ends_with("/gpu") {
            return Err(err(format!("status.allocatable[{resource}]"), format!("`{}` is not a whole number of GPUs", q.0)));
        }
    }
    obs.boot_id = status.and_then(|s| s.node_info.as_ref()).map(|i| i.boot_id.clone()).filter(|b| !b.is_empty());
    if let Some(st) = remediation.and_then(|r| r.status.as_ref()) {
        obs.step_report = st.step_report.clone();
        obs.operator_request = st.operator_request.clone();
        obs.drain_progress = st.drain_progress.clone();
    }
    Ok(obs)
}

/// The agent's faulty-GPU annotation ([`nodemedic_core::gpu::FAULTY_GPU_ANNOTATION`]). One that does
/// not read names no GPU (every fault's GPU is then unknown, so no reset is aimed at a guess); it does
/// not make the node unreadable, since the conditions still say what is wrong.
fn faulty_gpus(node: &Node) -> std::collections::BTreeMap<String, nodemedic_core::gpu::GpuDevice> {
    let Some(text) = node.metadata.annotations.as_ref().and_then(|a| a.get(nodemedic_core::gpu::FAULTY_GPU_ANNOTATION)) else {
        return Default::default();
    };
    nodemedic_core::gpu::faulty_gpus_from_annotation(text).unwrap_or_default()
}

/// Trims a Node to what the controller reads (the engine's observation, the notifications' node
/// details, the taint patch and Event references): name, uid, resourceVersion, labels, taints,
/// conditions, allocatable, internal and external addresses, the boot ID and the agent's faulty-GPU
/// annotation. Everything else (managed fields, other annotations, capacity, the image list, the rest of the node info, pod CIDRs, volumes) is
/// dropped before a watch cache stores the node, so the cache holds what a node says about its
/// health, not what it says about everything else.
pub fn lean(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    meta.annotations = meta.annotations.take().and_then(|mut a| {
        let kept = a.remove(nodemedic_core::gpu::FAULTY_GPU_ANNOTATION)?;
        Some(std::iter::once((nodemedic_core::gpu::FAULTY_GPU_ANNOTATION.to_string(), kept)).collect())
    });
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.creation_timestamp = None;
    if let Some(spec) = node.spec.as_mut() {
        *spec =
            k8s_openapi::api::core::v1::NodeSpec { taints: spec.taints.take(), unschedulable: spec.unschedulable, ..Default::default() };
    }
    if let Some(s) = node.status.as_mut() {
        let boot_id = s.node_info.as_ref().map(|i| i.boot_id.clone()).filter(|b| !b.is_empty());
        let addresses = s.addresses.take().map(|a| a.into_iter().filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP").collect());
        *s = k8s_openapi::api::core::v1::NodeStatus {
            conditions: s.conditions.take(),
            allocatable: s.allocatable.take(),
            addresses,
            node_info: boot_id.map(|boot_id| k8s_openapi::api::core::v1::NodeSystemInfo { boot_id, ..Default::default() }),
            ..Default::default()
        };
    }
}

/// Trims what a record cache does not need: the managed fields (several managers write a record).
pub fn lean_record(record: &mut NodeRemediation) {
    record.metadata.managed_fields = None;
}

/// The node agent's self-fencing promise on its Lease (`nodemedic.io/self-fencing`) with the Lease's
/// `renewTime` as its last contact; None when either is missing or the promise does not read.
pub fn self_fencing(lease: &k8s_openapi::api::coordination::v1::Lease) -> Option<nodemedic_core::selffence::SelfFencingObservation> {
    let text = lease.metadata.annotations.as_ref()?.get(nodemedic_core::selffence::PROMISE_ANNOTATION)?;
    let promise = serde_json::from_str(text).ok()?;
    let renewed = lease.spec.as_ref()?.renew_time.as_ref()?;
    Some(nodemedic_core::selffence::SelfFencingObservation { promise, last_contact: Time(renewed.0.as_millisecond()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("node fixture")
    }

    fn gpu_node() -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.count": "8"}, "managedFields": [{"manager": "kubelet"}]},
            "spec": {"taints": [{"key": "nodemedic.io/repair-reboot", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"nvidia.com/gpu": "7", "cpu": "96", "memory": "1Ti"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": "2026-11-21T10:00:00Z", "lastHeartbeatTime": "2026-11-21T10:05:00Z"}],
                "images": [{"names": ["cuda:12"], "sizeBytes": 1}],
            },
        })
    }

    #[test]
    fn a_gpu_node_becomes_an_observation() {
        let obs = observe_node(&node(gpu_node()), None).expect("readable");
        assert_eq!(obs.name, "gpu-1");
        assert_eq!(obs.allocatable.get("nvidia.com/gpu"), Some(&7));
        assert!(!obs.allocatable.contains_key("memory"));
        assert!(obs.has_taint("nodemedic.io/repair-reboot"));
        let ready = obs.condition("Ready").expect("Ready");
        assert_eq!(ready.status, ConditionStatus::True);
        assert_eq!(ready.last_transition_time, Time::parse_rfc3339("2026-11-21T10:00:00Z").expect("time"));
        assert_eq!(ready.last_heartbeat_time, Time::parse_rfc3339("2026-11-21T10:05:00Z").ok());
    }

    #[test]
    fn unreadable_fields_are_errors_naming_the_node_and_field() {
        let mut bad = gpu_node();
        bad["status"]["conditions"][0]["status"] = "Maybe".into();
        let e = observe_node(&node(bad), None).expect_err("bad status");
        assert_eq!(e.to_string(), "node gpu-1: status.conditions[0].status: `Maybe` is not True, False or Unknown");
        let mut bad = gpu_node();
        bad["status"]["allocatable"]["nvidia.com/gpu"] = "7.5".into();
        assert!(observe_node(&node(bad), None).expect_err("half a GPU").to_string().contains("status.allocatable[nvidia.com/gpu]"));
        let mut bad = gpu_node();
        bad["spec"]["taints"][0]["effect"] = "Sometimes".into();
        assert!(observe_node(&node(bad), None).expect_err("effect").to_string().contains("spec.taints[0].effect"));
    }

    #[test]
    fn an_agent_problem_condition_is_read_through_the_core_probe_contract() {
        use nodemedic_core::policy::CheckMatch;
        use nodemedic_core::probe::{ProbeEvidence, ProbeFamily, check_evidence};
        let mut n = gpu_node();
        n["status"]["conditions"].as_array_mut().expect("conditions").push(serde_json::json!({
            "type": "GPUProblem", "status": "True", "reason": "XidCritical", "message": "Xid 79",
            "lastTransitionTime": "2026-11-21T10:01:00Z", "lastHeartbeatTime": "2026-11-21T10:04:30Z",
        }));
        n["status"]["conditions"].as_array_mut().expect("conditions").push(serde_json::json!({
            "type": "NetworkProblem", "status": "Unknown", "lastTransitionTime": "2026-11-21T10:01:00Z",
        }));
        n["status"]["conditions"].as_array_mut().expect("conditions").push(serde_json::json!({
            "type": "nccl-allreduce", "status": "False", "lastTransitionTime": "2026-11-21T10:02:00Z",
        }));
        let obs = observe_node(&node(n), None).expect("readable");
        let gpu = check_evidence(&obs, &CheckMatch::family(ProbeFamily::Gpu)).expect("gpu evidence");
        let since = Time::parse_rfc3339("2026-11-21T10:01:00Z").expect("time");
        assert_eq!(gpu.evidence, ProbeEvidence::Failing { since });
        assert_eq!(gpu.last_run, Time::parse_rfc3339("2026-11-21T10:04:30Z").expect("time"));
        assert_eq!(gpu.message, "Xid 79");
        let network = check_evidence(&obs, &CheckMatch::family(ProbeFamily::Network)).map(|e| e.evidence);
        assert_eq!(network, Some(ProbeEvidence::Unknown), "unknown is no evidence either way");
        let plugin = CheckMatch { name: "nccl-allreduce".into(), plugin: true };
        assert!(matches!(check_evidence(&obs, &plugin).map(|e| e.evidence), Some(ProbeEvidence::Passing { .. })));
        assert!(check_evidence(&obs, &CheckMatch::family(ProbeFamily::Disk)).is_none());
    }

    #[test]
    fn the_agents_faulty_gpu_annotation_names_the_gpu_of_its_condition_and_junk_names_none() {
        use nodemedic_core::gpu::{FAULTY_GPU_ANNOTATION, GpuDevice};
        let mut n = gpu_node();
        n["status"]["conditions"].as_array_mut().expect("conditions").push(serde_json::json!({
            "type": "GPUProblem", "status": "True", "reason": "KernelFaultResetGpu", "lastTransitionTime": "2026-11-21T10:01:00Z",
        }));
        n["metadata"]["annotations"] =
            serde_json::json!({FAULTY_GPU_ANNOTATION: r#"{"GPUProblem":{"pciBusId":"PCI:0000:3b:00","index":3}}"#});
        let mut lean_node = node(n.clone());
        lean(&mut lean_node);
        for kept in [node(n.clone()), lean_node] {
            let obs = observe_node(&kept, None).expect("readable");
            let gpu = obs.condition("GPUProblem").and_then(|c| c.gpu.clone());
            assert_eq!(gpu, Some(GpuDevice { pci_bus_id: "0000:3b:00.0".into(), index: Some(3) }));
            assert_eq!(obs.condition("Ready").and_then(|c| c.gpu.clone()), None);
        }
        n["metadata"]["annotations"] = serde_json::json!({FAULTY_GPU_ANNOTATION: r#"{"GPUProblem":{"pciBusId":"bus 3"}}"#});
        let obs = observe_node(&node(n), None).expect("a bad annotation does not make the node unreadable");
        assert_eq!(obs.condition("GPUProblem").and_then(|c| c.gpu.clone()), None);
    }

    #[test]
    fn the_lean_cache_keeps_what_the_engine_reads_and_drops_the_rest() {
        let mut full = gpu_node();
        full["metadata"]["annotations"] = serde_json::json!({"node.alpha.kubernetes.io/ttl": "0"});
        full["status"]["capacity"] = serde_json::json!({"nvidia.com/gpu": "8"});
        full["status"]["nodeInfo"] = serde_json::json!({"bootID": "b-1", "kernelVersion": "6.6", "machineID": "m", "systemUUID": "u",
            "osImage": "cos", "containerRuntimeVersion": "containerd", "kubeletVersion": "v1.35", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64"});
        full["status"]["addresses"] =
            serde_json::json!([{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "gpu-1"}]);
        full["spec"]["podCIDR"] = "10.64.0.0/24".into();
        let before = observe_node(&node(full.clone()), None).expect("readable");
        let mut n = node(full);
        lean(&mut n);
        assert_eq!(observe_node(&n, None).expect("still readable"), before, "the engine sees the same node");
        assert!(n.metadata.managed_fields.is_none() && n.metadata.annotations.is_none());
        let status = n.status.as_ref().expect("status");
        assert!(status.images.is_none() && status.capacity.is_none());
        assert_eq!(status.addresses.as_ref().map(Vec::len), Some(1), "only the internal and external addresses");
        assert_eq!(status.node_info.as_ref().map(|i| (i.boot_id.as_str(), i.kernel_version.as_str())), Some(("b-1", "")));
        assert!(n.spec.as_ref().is_some_and(|s| s.pod_cidr.is_none() && s.taints.as_ref().is_some_and(|t| t.len() == 1)));
    }
}
