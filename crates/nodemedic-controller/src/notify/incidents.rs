//! From decisions and records to incidents: what to tell whom about a node or a policy, and writing
//! each delivery's outcome back on the record it concerns.

use super::*;

/// Where an incident's outcomes are recorded, read from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Node(String),
    Policy(String),
}

/// `policy:<policy>/…` is a policy incident, `<node>/…` a node incident (neither name can hold a `/`).
pub fn target_of(key: &str) -> Option<Target> {
    match key.strip_prefix("policy:") {
        Some(rest) => rest.split('/').next().filter(|p| !p.is_empty()).map(|p| Target::Policy(p.to_string())),
        None => key.split('/').next().filter(|n| !n.is_empty() && key.contains('/')).map(|n| Target::Node(n.to_string())),
    }
}

/// The (key, channel) pairs some status shows as delivered.
pub fn delivered_pairs<'a>(lists: impl IntoIterator<Item = &'a [NotificationRecord]>) -> BTreeSet<(String, String)> {
    lists.into_iter().flatten().filter(|n| n.ok).map(|n| (n.key.clone(), n.channel.clone())).collect()
}

/// Adds a try to a status list, keeping it bounded: the oldest failed tries go first.
pub fn append_outcome(list: &mut Vec<NotificationRecord>, outcome: &DeliveryOutcome) {
    list.push(NotificationRecord {
        key: outcome.key.clone(),
        channel: outcome.channel.clone(),
        attempt: outcome.attempt,
        ok: outcome.ok,
        error: outcome.error.clone(),
        at: outcome.at,
        gave_up: outcome.gave_up,
    });
    while list.len() > NOTIFICATION_HISTORY_LIMIT {
        let drop_at = list.iter().position(|n| !n.ok).unwrap_or(0);
        list.remove(drop_at);
    }
}

/// The Node as a notification shows it: addresses, labels, taints, conditions.
pub fn node_details(node: &Node) -> NodeDetails {
    let mut d = NodeDetails::named(&node.name_any());
    d.labels = node.labels().clone();
    if let Some(taints) = node.spec.as_ref().and_then(|s| s.taints.as_ref()) {
        d.taints = taints.iter().map(|t| Taint { key: t.key.clone(), value: t.value.clone(), effect: t.effect.clone() }).collect();
    }
    if let Some(status) = &node.status {
        for a in status.addresses.iter().flatten() {
            match a.type_.as_str() {
                "InternalIP" => d.internal_ips.push(a.address.clone()),
                "ExternalIP" => d.external_ips.push(a.address.clone()),
                _ => {}
            }
        }
        d.conditions = status
            .conditions
            .iter()
            .flatten()
            .map(|c| Condition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
                last_transition: c.last_transition_time.as_ref().map(|t| Time(t.0.as_millisecond())),
            })
            .collect();
    }
    d
}

/// The agent's checks as the node shows them (the latest result of each), then what the engine saw per
/// rule when it escalated.
pub(super) fn probes(node: Option<&Node>, record: Option<&NodeRemediation>, notice: Option<&Notice>, at: Time) -> Vec<ProbeHistory> {
    let mut out: Vec<ProbeHistory> = Vec::new();
    if let Some(obs) = node.and_then(|n| observe_node(n, record).ok()) {
        for family in nodemedic_core::ProbeFamily::ALL {
            let Some(c) = obs.condition(family.condition_type()).map(nodemedic_core::probe::evidence_from_condition) else {
                continue;
            };
            let passed = !matches!(c.evidence, nodemedic_core::probe::ProbeEvidence::Failing { .. });
            out.push(ProbeHistory {
                probe: family.check_name().to_string(),
                results: vec![ProbeResult { at: c.last_run, passed, message: c.message }],
            });
        }
    }
    let passed = |reason: &str| matches!(reason, "Healthy" | "GPUCountMatch" | "NotApplicable" | "NonGPUNode");
    // What the engine saw per rule at each step start (the record keeps the last few), then at escalation.
    let mut by_rule: Vec<ProbeHistory> = Vec::new();
    let history = record.and_then(|r| r.status.as_ref()).map(|s| s.record.diagnostics.as_slice()).unwrap_or_default();
    for d in history {
        let result = ProbeResult { at: d.at, passed: passed(&d.reason), message: d.detail.clone() };
        let probe = format!("rule {}", d.rule);
        match by_rule.iter_mut().find(|p| p.probe == probe) {
            Some(p) => p.results.push(result),
            None => by_rule.push(ProbeHistory { probe, results: vec![result] }),
        }
    }
    for (rule, reason, detail) in notice.map(|n| n.checks.as_slice()).unwrap_or_default() {
        let result = ProbeResult { at, passed: passed(reason), message: detail.clone() };
        let probe = format!("rule {rule}");
        match by_rule.iter_mut().find(|p| p.probe == probe) {
            Some(p) if p.results.last().is_some_and(|r| r.message == result.message) => {}
            Some(p) => p.results.push(result),
            None => by_rule.push(ProbeHistory { probe, results: vec![result] }),
        }
    }
    out.extend(by_rule);
    out
}

/// Everything needed to describe one node at one moment.
pub struct NodeView<'a> {
    pub policy: &'a str,
    pub node: Option<&'a Node>,
    pub name: &'a str,
    /// The record after the decision was persisted.
    pub record: Option<&'a NodeRecord>,
    /// The NodeRemediation object as last read (for the agent's step report and the operator request).
    pub object: Option<&'a NodeRemediation>,
}

/// Builds a node incident with the node's diagnostics and the record's attempts.
pub fn node_incident(
    view: &NodeView,
    kind: IncidentKind,
    attempt: u32,
    summary: &str,
    notice: Option<&Notice>,
    probe_results: usize,
    at: Time,
) -> Incident {
    let details = view.node.map(node_details).unwrap_or_else(|| NodeDetails::named(view.name));
    let mut incident = Incident::for_node(kind, view.policy, details, attempt, at).with_summary(summary);
    let rule = notice
        .map(|n| n.trigger.clone())
        .or_else(|| view.record.and_then(|r| r.active.as_ref()).map(|a| a.trigger.clone()))
        .or_else(|| view.record.map(|r| r.failing_since.keys().cloned().collect::<Vec<_>>().join(", ")).filter(|s| !s.is_empty()));
    if let Some(rule) = rule {
        incident = incident.with_rule(&rule);
    }
    if let Some(record) = view.record {
        incident = incident.with_attempts(Attempt::all_from_record(record));
    }
    incident.with_probes(probes(view.node, view.object, notice, at), probe_results)
}

pub(super) fn node_kind(kind: EventKind) -> Option<IncidentKind> {
    Some(match kind {
        EventKind::LemonNode => IncidentKind::LemonNode,
        EventKind::StepTimedOut => IncidentKind::StepTimedOut,
        EventKind::RemediationStarted => IncidentKind::RemediationStarted,
        EventKind::Recovered => IncidentKind::NodeRecovered,
        EventKind::NodeReleased => IncidentKind::RemediationFinished,
        EventKind::DrainHeld => IncidentKind::DrainBlocked,
        // The Manual escalation comes as a Notify action, with the engine's notice.
        _ => return None,
    })
}

/// The incidents a decision calls for. `before` is the policy as read before the decision (for the
/// breaker's trip time when it closes); `objects` the NodeRemediations as last read.
pub fn incidents_for(
    policy: &NodeHealthPolicy,
    decision: &Decision,
    nodes: &[Arc<Node>],
    objects: &[Arc<NodeRemediation>],
    probe_results: usize,
    now: Time,
) -> Vec<Incident> {
    let policy_name = policy.name_any();
    let mut out = Vec::new();
    for e in decision.events.iter().filter(|e| e.node.is_none()) {
        let before = policy.status.as_ref().and_then(|s| s.record.breaker_tripped_at);
        let (kind, since) = match e.kind {
            EventKind::BreakerTripped => (IncidentKind::BreakerTripped, decision.policy_record.as_ref().and_then(|r| r.breaker_tripped_at)),
            EventKind::BreakerClosed => (IncidentKind::BreakerReset, before),
            _ => continue,
        };
        out.push(Incident::for_policy(kind, &policy_name, since.unwrap_or(now), now).with_summary(&e.message));
    }
    // Nothing was done to nodes in monitor-only mode: nobody is told about what would have been.
    if policy.spec.policy.monitor_only {
        return out;
    }
    let upserted: BTreeMap<&str, &NodeRecord> = decision
        .record_changes
        .iter()
        .filter_map(|c| match c {
            RecordChange::Upsert(r) => Some((r.node.as_str(), r)),
            RecordChange::Delete(_) => None,
        })
        .collect();
    let by_name: BTreeMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
    let objects: BTreeMap<&str, &NodeRemediation> = objects.iter().map(|o| (o.spec.node.as_str(), o.as_ref())).collect();
    let view = |name: &str| {
        let object = objects.get(name).copied();
        let record = upserted.get(name).copied().or_else(|| object.and_then(|o| o.status.as_ref()).map(|s| &s.record));
        (by_name.get(name).copied(), record, object)
    };
    for action in &decision.actions {
        let Action::Notify { node, notice } = action else { continue };
        let (n, record, object) = view(node);
        let v = NodeView { policy: &policy_name, node: n, name: node, record, object };
        let attempt = record.map_or(0, |r| r.attempt);
        out.push(node_incident(&v, IncidentKind::NodeManual, attempt, &notice.summary, Some(notice), probe_results, now));
    }
    for e in &decision.events {
        let (Some(node), Some(kind)) = (&e.node, node_kind(e.kind)) else { continue };
        let (n, record, object) = view(node);
        let v = NodeView { policy: &policy_name, node: n, name: node, record, object };
        let attempt = match kind {
            // The attempt that timed out, not the step that started after it.
            IncidentKind::StepTimedOut => record
                .and_then(|r| r.history.iter().rev().find(|h| h.outcome == StepOutcome::TimedOut))
                .map_or_else(|| record.map_or(0, |r| r.attempt), |h| h.attempt),
            _ => record.map_or(0, |r| r.attempt),
        };
        out.push(node_incident(&v, kind, attempt, &e.message, None, probe_results, now));
    }
    out
}

/// The incidents that must not be lost across a restart: every node waiting in Manual, every open
/// breaker. Submitted again at start; the dispatcher skips the channels that already have them.
pub fn standing_incidents<'a>(
    policies: impl IntoIterator<Item = &'a NodeHealthPolicy>,
    objects: impl IntoIterator<Item = &'a NodeRemediation>,
    node: impl Fn(&str) -> Option<&'a Node>,
    probe_results: usize,
    now: Time,
) -> Vec<Incident> {
    let mut out = Vec::new();
    for p in policies {
        if let Some(since) = p.status.as_ref().and_then(|s| s.record.breaker_tripped_at) {
            let reason = p.status.as_ref().and_then(|s| s.record.breaker_reason.clone()).unwrap_or_else(|| "circuit breaker open".into());
            out.push(Incident::for_policy(IncidentKind::BreakerTripped, &p.name_any(), since, now).with_summary(reason));
        }
    }
    for o in objects {
        let Some(status) = &o.status else { continue };
        let record = &status.record;
        let Some(active) = record.active.as_ref().filter(|_| record.phase == Phase::Manual) else { continue };
        if !active.executed {
            continue;
        }
        let name = o.spec.node.as_str();
        let v = NodeView { policy: &o.spec.policy, node: node(name), name, record: Some(record), object: Some(o) };
        let summary = format!("node {name} needs a person: automated repair did not fix it ({})", active.reason);
        out.push(node_incident(&v, IncidentKind::NodeManual, record.attempt, &summary, None, probe_results, active.step_started_at));
    }
    out
}

/// The standing incidents no status has any delivery try for: decided, but never handed over (the
/// pass that decided them failed after persisting, or the replica stopped before submitting).
pub fn unattempted_incidents<'a>(
    policies: &'a [Arc<NodeHealthPolicy>],
    objects: &'a [Arc<NodeRemediation>],
    nodes: &'a [Arc<Node>],
    probe_results: usize,
    now: Time,
) -> Vec<Incident> {
    let tried: BTreeSet<&str> = objects
        .iter()
        .filter_map(|o| o.status.as_ref().map(|s| &s.notifications))
        .chain(policies.iter().filter_map(|p| p.status.as_ref().map(|s| &s.notifications)))
        .flatten()
        .map(|n| n.key.as_str())
        .collect();
    let by_name: BTreeMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
    standing_incidents(
        policies.iter().map(AsRef::as_ref),
        objects.iter().map(AsRef::as_ref),
        |name| by_name.get(name).copied(),
        probe_results,
        now,
    )
    .into_iter()
    .filter(|i| !tried.contains(i.key.as_str()))
    .collect()
}

/// Writes each delivery outcome to the status of the object it is about, under the notifier's field
/// manager. Runs until the dispatcher is gone and every outcome is written.
pub(super) async fn record_outcomes(client: Client, metrics: Option<Arc<crate::Metrics>>, mut outcomes: mpsc::Receiver<DeliveryOutcome>) {
    while let Some(outcome) = outcomes.recv().await {
        if let Some(m) = &metrics {
            let counted = match (outcome.ok, outcome.gave_up) {
                (true, _) => "delivered",
                (false, false) => "failed",
                (false, true) => "gave_up",
            };
            m.notification_delivery(&outcome.channel, counted);
        }
        if outcome.ok {
            tracing::info!(key = %outcome.key, channel = %outcome.channel, attempt = outcome.attempt, "notification delivered");
        } else {
            tracing::warn!(key = %outcome.key, channel = %outcome.channel, attempt = outcome.attempt, error = ?outcome.error, gave_up = outcome.gave_up, "notification not delivered");
        }
        if let Err(e) = record_outcome(&client, &outcome).await {
            tracing::warn!(key = %outcome.key, channel = %outcome.channel, error = %e, "could not record a notification outcome");
        }
    }
}

pub(super) async fn record_outcome(client: &Client, outcome: &DeliveryOutcome) -> Result<(), kube::Error> {
    let ssa = PatchParams::apply(field_managers::NOTIFIER).force();
    match target_of(&outcome.key) {
        Some(Target::Node(node)) => {
            let api: Api<NodeRemediation> = Api::all(client.clone());
            let mut list = api.get(&node).await?.status.map(|s| s.notifications).unwrap_or_default();
            append_outcome(&mut list, outcome);
            let body = serde_json::json!({
                "apiVersion": "nodemedic.io/v1alpha1",
                "kind": "NodeRemediation",
                "metadata": {"name": node},
                "status": {"notifications": list},
            });
            api.patch_status(&node, &ssa, &Patch::Apply(&body)).await?;
        }
        Some(Target::Policy(policy)) => {
            let api: Api<NodeHealthPolicy> = Api::all(client.clone());
            let mut list = api.get(&policy).await?.status.map(|s| s.notifications).unwrap_or_default();
            append_outcome(&mut list, outcome);
            let body = serde_json::json!({
                "apiVersion": "nodemedic.io/v1alpha1",
                "kind": "NodeHealthPolicy",
                "metadata": {"name": policy},
                "status": {"notifications": list},
            });
            api.patch_status(&policy, &ssa, &Patch::Apply(&body)).await?;
        }
        None => tracing::warn!(key = %outcome.key, "a notification key names neither a node nor a policy"),
    }
    Ok(())
}
