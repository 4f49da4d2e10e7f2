//! The engine's events as Kubernetes Events (events.k8s.io): one per node and decision on the Node,
//! with its NodeRemediation as the related object (`kubectl describe node`, or `kubectl get events
//! --field-selector regarding.name=NODE`); policy-wide events (the breaker) go on the policy.
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
        | EventKind::OutOfServiceAdded
        | EventKind::RemediationStarted => EventType::Warning,
        _ => EventType::Normal,
    }
}

/// Which of a node's engine events names the one Event a decision publishes: an escalation over a
/// failure over the start of a repair over its end over a step's routine progress, so a recovery
/// reads `Recovered` (not `StepSucceeded`) and a repair's start `RemediationStarted`.
fn significance(kind: EventKind) -> u8 {
    match kind {
        EventKind::EscalatedToManual | EventKind::LemonNode | EventKind::BreakerTripped => 6,
        EventKind::StepFailed | EventKind::StepTimedOut | EventKind::DrainHeld => 5,
        EventKind::RemediationStarted | EventKind::OutOfServiceAdded => 4,
        EventKind::Recovered
        | EventKind::ResolvedByOperator
        | EventKind::NodeReleased
        | EventKind::NodeDeleted
        | EventKind::OutOfServiceRemoved => 3,
        EventKind::SoftTaintAdded | EventKind::SoftTaintRemoved | EventKind::BreakerClosed => 2,
        EventKind::StepSucceeded | EventKind::StepStarted => 1,
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

/// A decision's events as few Kubernetes Events as tell the story: one per node (the engine's
/// events about it in order, the most significant one's kind as the reason, a Warning if any is one) on the
/// Node with its NodeRemediation as the related object, and one per policy-wide event on the policy.
/// One request per node and decision instead of one per engine event and object.
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
    for (target, event) in node_events(&nodes, records, decision).into_iter().chain(policy_events(policy, decision)) {
        if let Err(err) = recorder.publish(&event, &target).await {
            tracing::warn!(error = %err, reason = %event.reason, object = ?target.name, "could not publish an event");
        }
    }
}

fn node_events(
    nodes: &BTreeMap<String, &Node>,
    records: &BTreeMap<String, NodeRemediation>,
    decision: &Decision,
) -> Vec<(ObjectReference, Event)> {
    let mut by_node: BTreeMap<&str, Vec<&nodemedic_core::engine::Event>> = BTreeMap::new();
    for e in &decision.events {
        if let Some(node) = &e.node {
            by_node.entry(node.as_str()).or_default().push(e);
        }
    }
    by_node
        .into_iter()
        .filter_map(|(node, events)| {
            // The most significant event names it; the first of equals.
            let named = events.iter().rev().max_by_key(|e| significance(e.kind))?;
            let record_ref = match records.get(node) {
                Some(r) => Some(r.object_ref(&())),
                // Created by this very decision: refer to it by name.
                None => decision.record_changes.iter().any(|c| matches!(c, RecordChange::Upsert(r) if r.node == node)).then(|| {
                    ObjectReference {
                        api_version: Some("nodemedic.io/v1alpha1".into()),
                        kind: Some("NodeRemediation".into()),
                        name: Some(node.to_string()),
                        ..Default::default()
                    }
                }),
            };
            let warning = events.iter().any(|e| matches!(event_type(e.kind), EventType::Warning));
            let note = events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
            let event = Event {
                type_: if warning { EventType::Warning } else { EventType::Normal },
                reason: reason(named.kind),
                note: Some(truncate(&note)),
                action: action(&named.message),
                secondary: record_ref,
            };
            let target = nodes.get(node).map(|n| n.object_ref(&())).unwrap_or_else(|| ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            });
            Some((target, event))
        })
        .collect()
}

fn policy_events(policy: &NodeHealthPolicy, decision: &Decision) -> Vec<(ObjectReference, Event)> {
    decision
        .events
        .iter()
        .filter(|e| e.node.is_none())
        .map(|e| {
            let event = Event {
                type_: event_type(e.kind),
                reason: reason(e.kind),
                note: Some(truncate(&e.message)),
                action: action(&e.message),
                secondary: None,
            };
            (policy.object_ref(&()), event)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemedic_core::engine::Event as EngineEvent;

    fn event(node: Option<&str>, kind: EventKind, message: &str) -> EngineEvent {
        EngineEvent { node: node.map(String::from), kind, message: message.into() }
    }

    #[test]
    fn a_decision_that_starts_repairs_publishes_one_event_per_node_telling_all_of_it() {
        let decision = Decision {
            events: vec![
                event(Some("gpu-1"), EventKind::RemediationStarted, "node unhealthy: gpu"),
                event(Some("gpu-2"), EventKind::RemediationStarted, "node unhealthy: gpu"),
                event(Some("gpu-1"), EventKind::StepStarted, "step reboot (attempt 1) started"),
                event(Some("gpu-2"), EventKind::StepStarted, "step reboot (attempt 1) started"),
            ],
            ..Decision::default()
        };
        let published = node_events(&BTreeMap::new(), &BTreeMap::new(), &decision);
        assert_eq!(published.len(), 2, "one Event per node, not one per engine event and object");
        let (target, e) = &published[0];
        assert_eq!((target.kind.as_deref(), target.name.as_deref()), (Some("Node"), Some("gpu-1")));
        assert_eq!(e.reason, "RemediationStarted");
        assert!(matches!(e.type_, EventType::Warning));
        assert_eq!(e.note.as_deref(), Some("node unhealthy: gpu; step reboot (attempt 1) started"));
        let recovery = Decision {
            events: vec![
                event(Some("gpu-1"), EventKind::StepSucceeded, "step reboot succeeded"),
                event(Some("gpu-1"), EventKind::Recovered, "node healthy again after reboot"),
            ],
            ..Decision::default()
        };
        let published = node_events(&BTreeMap::new(), &BTreeMap::new(), &recovery);
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].1.reason, "Recovered", "a recovery is told as one, not as its last step's success");
        assert!(matches!(published[0].1.type_, EventType::Normal));
    }

    #[test]
    fn step_events_carry_their_step_as_the_action_so_they_are_not_folded_together() {
        assert_eq!(action("step drain completed: drain finished"), "Drain");
        assert_eq!(action("step reboot (attempt 2) started, tainted nodemedic.io/repair-reboot"), "Reboot");
        assert_eq!(action("node healthy again after reboot; repair taints removed"), "Remediate");
        assert_eq!(action("step "), "Remediate");
    }
}
