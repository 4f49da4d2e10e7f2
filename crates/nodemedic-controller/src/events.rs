//! The engine's events as Kubernetes Events (events.k8s.io): on the Node (with its NodeRemediation
//! as the related object) and on the NodeRemediation itself, so both `kubectl describe node` and
//! `kubectl describe nrem` tell the story; policy-wide events (the breaker) go on the policy.
//! Publishing is best effort: a lost event is logged, never a reason to undo a decision.

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::Resource;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType, Recorder};
use nodemedic_core::engine::{Decision, EventKind, RecordChange};
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Warnings are what an operator should look at; the rest is the normal course of a repair.
pub fn event_type(kind: EventKind) -> EventType {
    match kind {
        EventKind::StepFailed
        | EventKind::StepTimedOut
        | EventKind::DrainHeld
        | EventKind::EscalatedToManual
        | EventKind::LemonNode
        | EventKind::BreakerTripped
        | EventKind::RemediationStarted => EventType::Warning,
        _ => EventType::Normal,
    }
}

/// The event's reason: the kind in PascalCase, as Kubernetes reasons are written.
pub fn reason(kind: EventKind) -> String {
    format!("{kind:?}")
}

/// The Events API folds events with the same reason, action and objects into one series (keeping the
/// first note), so a step's events carry the step as their action: "drain completed" and, later,
/// "reboot recovered" stay two events instead of one counted twice under the first note.
pub fn action(message: &str) -> String {
    let step = message.strip_prefix("step ").and_then(|rest| rest.split_whitespace().next());
    match step {
        Some(step) => {
            let mut chars = step.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_else(|| "Remediate".into())
        }
        None => "Remediate".into(),
    }
}

fn truncate(message: &str) -> String {
    // The Events API caps the note at 1 kB.
    const LIMIT: usize = 1000;
    if message.len() <= LIMIT {
        return message.to_string();
    }
    let mut end = LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

pub async fn publish_events(
    recorder: &Recorder,
    policy: &NodeHealthPolicy,
    nodes: &[Arc<Node>],
    records: &BTreeMap<String, NodeRemediation>,
    decision: &Decision,
) {
    if decision.events.is_empty() {
        return;
    }
    let nodes: BTreeMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
    for e in &decision.events {
        let record_ref = e.node.as_ref().and_then(|n| match records.get(n) {
            Some(r) => Some(r.object_ref(&())),
            // Created by this very decision: refer to it by name.
            None => decision.record_changes.iter().any(|c| matches!(c, RecordChange::Upsert(r) if &r.node == n)).then(|| ObjectReference {
                api_version: Some("nodemedic.io/v1alpha1".into()),
                kind: Some("NodeRemediation".into()),
                name: Some(n.clone()),
                ..Default::default()
            }),
        });
        let event = Event {
            type_: event_type(e.kind),
            reason: reason(e.kind),
            note: Some(truncate(&e.message)),
            action: action(&e.message),
            secondary: record_ref.clone(),
        };
        let mut targets: Vec<ObjectReference> = Vec::new();
        match &e.node {
            Some(node) => {
                let node_ref = nodes.get(node).map(|n| n.object_ref(&())).unwrap_or_else(|| ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    ..Default::default()
                });
                targets.push(node_ref);
                targets.extend(record_ref);
            }
            None => targets.push(policy.object_ref(&())),
        }
        for target in &targets {
            if let Err(err) = recorder.publish(&event, target).await {
                tracing::warn!(error = %err, reason = %event.reason, object = ?target.name, "could not publish an event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::action;

    #[test]
    fn step_events_carry_their_step_as_the_action_so_they_are_not_folded_together() {
        assert_eq!(action("step drain completed: drain finished"), "Drain");
        assert_eq!(action("step reboot (attempt 2) started, tainted nodemedic.io/repair-reboot"), "Reboot");
        assert_eq!(action("node healthy again after reboot; repair taints removed"), "Remediate");
        assert_eq!(action("step "), "Remediate");
    }
}
