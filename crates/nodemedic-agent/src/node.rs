//! Probe-family verdicts as Node conditions, written through this node's status subresource.
//!
//! One condition per family, node-problem-detector style: `GPUProblem`, `NetworkProblem`, `DiskProblem`,
//! `CustomProblem` (the names are nodemedic-core's [`nodemedic_core::ProbeFamily`]), and one per custom plugin
//! without a family, named after the plugin. Status `True` means a problem (after the probe's own failure threshold), `False` means the
//! family passes (after its pass threshold), `Unknown` means the probes could not tell. `lastHeartbeatTime` is
//! the family's last probe run and `lastTransitionTime` only moves when the status flips. The patch is a
//! strategic merge keyed on the condition type, so the kubelet's and other writers' conditions are untouched,
//! and it names only this node.

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::api::{Api, Patch, PatchParams};

use crate::verdict::{Health, Reason, Verdict};

/// The field manager the agent writes under (conditions and step reports).
pub const FIELD_MANAGER: &str = nodemedic_k8s::field_managers::AGENT;

/// A condition's status for a verdict: True is a problem.
pub fn condition_status(health: Health) -> &'static str {
    match health {
        Health::Unhealthy => "True",
        Health::Healthy => "False",
        Health::Unknown => "Unknown",
    }
}

/// Kubernetes condition times: whole seconds, UTC.
pub fn rfc3339(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One family's verdict from its probes' published verdicts (probe name, verdict): the unhealthy probe whose
/// reason carries the most severe fault class (else the first unhealthy one) gives the reason (the others are
/// listed after "also:"), then the first unknown one; all healthy is healthy.
/// None when no probe has published anything yet (the condition is then left as it is).
pub fn family_verdict(probes: &[(String, Verdict)]) -> Option<Verdict> {
    let evidence: Vec<&(String, Verdict)> = probes.iter().filter(|(_, v)| v.reason != Reason::NotYetRun).collect();
    let first = evidence.first()?;
    if evidence.len() == 1 {
        return Some(first.1.clone());
    }
    let described = |(name, verdict): &&(String, Verdict)| format!("{name}: {}", verdict.message);
    let mut unhealthy: Vec<&&(String, Verdict)> = evidence.iter().filter(|(_, v)| v.is_unhealthy()).collect();
    // The most severe fault class leads (its reason carries the class the controller starts from); a stable
    // sort keeps probe order otherwise.
    unhealthy.sort_by_key(|(_, v)| std::cmp::Reverse(nodemedic_core::class::FaultClass::from_condition_reason(v.reason.as_str())));
    if let Some(worst) = unhealthy.first() {
        let mut message = described(worst);
        if unhealthy.len() > 1 {
            let others: Vec<String> = unhealthy[1..].iter().map(|p| described(p)).collect();
            message = format!("{message}; also: {}", others.join("; "));
        }
        return Some(Verdict::unhealthy(worst.1.reason, message));
    }
    if let Some(unknown) = evidence.iter().find(|(_, v)| v.health == Health::Unknown) {
        return Some(Verdict::unknown(unknown.1.reason, described(unknown)));
    }
    let all: Vec<String> = evidence.iter().map(described).collect();
    Some(Verdict::healthy(all.join("; ")))
}

/// The condition of type `type_` (a family's, or a plugin's own; see [`nodemedic_core::probe`]) to write: the
/// transition time of `existing` is kept while the status is the same.
pub fn condition_json(type_: &str, verdict: &Verdict, heartbeat: jiff::Timestamp, existing: Option<&NodeCondition>) -> serde_json::Value {
    let status = condition_status(verdict.health);
    let kept = existing.filter(|c| c.status == status).and_then(|c| c.last_transition_time.as_ref()).map(|t| rfc3339(t.0));
    serde_json::json!({
        "type": type_,
        "status": status,
        "reason": verdict.reason.as_str(),
        "message": verdict.message,
        "lastHeartbeatTime": rfc3339(heartbeat),
        "lastTransitionTime": kept.unwrap_or_else(|| rfc3339(heartbeat)),
    })
}

/// The node's condition of `type_`, if it has one.
pub fn existing_condition<'n>(node: &'n Node, type_: &str) -> Option<&'n NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// The node's taint keys.
pub fn taint_keys(node: &Node) -> Vec<String> {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default()
}

/// The boot ID the kubelet reports for the node (`status.nodeInfo.bootID`).
pub fn boot_id(node: &Node) -> Option<String> {
    node.status.as_ref()?.node_info.as_ref().map(|i| i.boot_id.clone()).filter(|b| !b.is_empty())
}

/// Writes `conditions` (as [`condition_json`] builds them) on `node` through its status subresource.
pub async fn publish_conditions(
    nodes: &Api<Node>,
    node: &str,
    conditions: Vec<serde_json::Value>,
    faulty_gpus: Option<serde_json::Value>,
) -> Result<Node, kube::Error> {
    let mut patch = serde_json::json!({"status": {"conditions": conditions}});
    if let Some(annotation) = faulty_gpus {
        patch["metadata"] = serde_json::json!({"annotations": {nodemedic_core::gpu::FAULTY_GPU_ANNOTATION: annotation}});
    }
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
    nodes.patch_status(node, &params, &Patch::Strategic(patch)).await
}

/// The value [`nodemedic_core::gpu::FAULTY_GPU_ANNOTATION`] must get, or None when the node already has
/// it: `{condition: gpu}` while the kernel-log fault history names one GPU, JSON null (remove) when it
/// names none.
pub fn faulty_gpus_annotation(node: &Node, condition: &str, gpu: Option<&nodemedic_core::gpu::GpuDevice>) -> Option<serde_json::Value> {
    let current = node.metadata.annotations.as_ref().and_then(|a| a.get(nodemedic_core::gpu::FAULTY_GPU_ANNOTATION));
    let wanted = gpu.map(|g| serde_json::json!({condition: g}).to_string());
    if current == wanted.as_ref() {
        return None;
    }
    Some(wanted.map_or(serde_json::Value::Null, serde_json::Value::String))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Family;

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(second).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    fn existing(status: &str, transition: i64) -> NodeCondition {
        NodeCondition {
            type_: "GPUProblem".to_string(),
            status: status.to_string(),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(transition))),
            ..NodeCondition::default()
        }
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time_and_moves_its_heartbeat() {
        let failing = Verdict::unhealthy(Reason::GpuLost, "GPU 0000:3b:00.0 is lost");
        let c = condition_json(Family::Gpu.condition_type(), &failing, at(2000), Some(&existing("True", 1000)));
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], "GpuLost");
        assert_eq!(c["lastTransitionTime"], rfc3339(at(1000)));
        assert_eq!(c["lastHeartbeatTime"], rfc3339(at(2000)));
    }

    #[test]
    fn a_flipped_status_transitions_now() {
        let passing = Verdict::healthy("8 of 8 GPUs healthy");
        let c = condition_json(Family::Gpu.condition_type(), &passing, at(2000), Some(&existing("True", 1000)));
        assert_eq!((c["status"].as_str(), c["lastTransitionTime"].as_str()), (Some("False"), Some(rfc3339(at(2000)).as_str())));
    }

    #[test]
    fn a_family_is_unhealthy_when_any_probe_is_and_silent_before_any_has_evidence() {
        let not_yet = Verdict::unknown(Reason::NotYetRun, "the probe has not run yet");
        assert_eq!(family_verdict(&[("nvml".into(), not_yet.clone())]), None);
        let probes = vec![
            ("nvml".to_string(), Verdict::healthy("ok")),
            ("nvidia-smi".to_string(), Verdict::unhealthy(Reason::RowRemapPending, "row remap pending on GPU 2")),
            ("kernel-log".to_string(), not_yet),
        ];
        let verdict = family_verdict(&probes);
        assert_eq!(verdict.as_ref().map(|v| (v.health, v.reason)), Some((Health::Unhealthy, Reason::RowRemapPending)));
        assert!(verdict.is_some_and(|v| v.message.starts_with("nvidia-smi: row remap")));
        let unknown = vec![("nvml".to_string(), Verdict::healthy("ok")), ("dcgmi".to_string(), Verdict::unknown(Reason::ToolMissing, "x"))];
        assert_eq!(family_verdict(&unknown).map(|v| v.health), Some(Health::Unknown));
    }

    #[test]
    fn the_most_severe_fault_class_gives_the_family_its_reason() {
        let probes = vec![
            ("nvidia-smi".to_string(), Verdict::unhealthy(Reason::GpuLost, "GPU 0 lost")),
            ("kernel-log".to_string(), Verdict::unhealthy(Reason::KernelFaultReboot, "Xid 79: reboot")),
            ("dcgmi".to_string(), Verdict::unhealthy(Reason::KernelFaultReplace, "row remap failure: RMA")),
        ];
        let verdict = family_verdict(&probes);
        assert_eq!(verdict.as_ref().map(|v| v.reason), Some(Reason::KernelFaultReplace));
        assert!(verdict.is_some_and(|v| v.message.starts_with("dcgmi: row remap") && v.message.contains("also: kernel-log")));
    }
}
