//! Telling people, as the controller does it: a notifications configuration (channels, what each gets,
//! credentials by reference to Kubernetes Secrets) becomes a [`Dispatcher`]; the engine's events and
//! Notify actions become [`Incident`]s with the node's full diagnostics and the record's attempts; every
//! delivery try is written to the NodeRemediation (or, for the breaker, the NodeHealthPolicy) status as
//! `status.notifications`, under the notifier's own field manager so the controller's record apply and
//! the notifier never remove each other's fields.
//!
//! Nothing here waits on a delivery: incidents are queued, a background task delivers them, and another
//! one records the outcomes. After a restart (or a leader change) the delivered (key, channel) pairs are
//! read back from the statuses, and incidents that must not be lost (nodes waiting in Manual, an open
//! breaker) are submitted again; the dispatcher skips what was already delivered.

use k8s_openapi::api::core::v1::{Node, Secret as K8sSecret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use nodemedic_core::engine::{Action, Decision, EventKind, Notice, RecordChange};
use nodemedic_core::record::{NodeRecord, Phase, StepOutcome};
use nodemedic_core::time::Time;
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation, NotificationRecord, field_managers, observe_node};
use nodemedic_notify::{
    AlertmanagerChannel, AlertmanagerConfig, Attempt, Channel, ChannelRoute, Condition, DEFAULT_PROBE_RESULTS, DeliveryOutcome, Dispatcher,
    DispatcherConfig, Incident, IncidentFilter, IncidentKind, NodeDetails, ProbeHistory, ProbeResult, RetryPolicy, Secret, Severity,
    SmtpChannel, SmtpConfig, SmtpSecurity, SubmitError, Taint, WebhookChannel, WebhookConfig, WebhookFormat,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most delivery tries kept per status; failed tries go first, delivered ones are what a restart needs.
pub const NOTIFICATION_HISTORY_LIMIT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifications config: {0}")]
    Config(String),
    #[error("channel {channel}: secret {namespace}/{name} key {key}: {message}")]
    Secret { channel: String, namespace: String, name: String, key: String, message: String },
    #[error("channel {channel}: {message}")]
    Channel { channel: String, message: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// The file given with `nodemedic controller --notifications FILE` (YAML).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationsConfig {
    pub channels: Vec<ChannelSpec>,
    /// Results kept per probe in a notification.
    #[serde(default = "default_probe_results")]
    pub probe_results: usize,
    #[serde(default)]
    pub retry: Option<RetrySpec>,
}

fn default_probe_results() -> usize {
    DEFAULT_PROBE_RESULTS
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub initial_backoff_seconds: f64,
    pub max_backoff_seconds: f64,
}

/// One channel: a stable name, what it gets, and exactly one of `smtp`, `webhook`, `alertmanager`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelSpec {
    /// Outcomes and the idempotency record are keyed by it: keep it stable.
    pub name: String,
    /// Only these incident kinds (`NodeManual`, `BreakerTripped`, …); all when empty.
    #[serde(default)]
    pub kinds: BTreeSet<IncidentKind>,
    /// Only incidents at least this severe (`info`, `warning`, `critical`).
    #[serde(default)]
    pub min_severity: Severity,
    #[serde(default)]
    pub smtp: Option<SmtpSpec>,
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(default)]
    pub alertmanager: Option<AlertmanagerSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpSpec {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    /// `startTls` (default), `tls` or `plain`.
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default)]
    pub subject_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// `json` (default) or `chatText` (Slack/Teams).
    #[serde(default)]
    pub format: WebhookFormat,
    #[serde(default)]
    pub token: Option<SecretSource>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertmanagerSpec {
    pub url: String,
    #[serde(default)]
    pub token: Option<SecretSource>,
    #[serde(default)]
    pub generator_url: Option<String>,
}

/// A credential, never written in the config itself: `{secretRef: {namespace, name, key}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSource {
    pub secret_ref: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl NotificationsConfig {
    /// What the types cannot say: unique names, exactly one transport per channel, someone to mail.
    pub fn validate(&self) -> Result<(), NotifyError> {
        let mut names = BTreeSet::new();
        for c in &self.channels {
            if c.name.trim().is_empty() {
                return Err(NotifyError::Config("every channel needs a name".into()));
            }
            if !names.insert(c.name.as_str()) {
                return Err(NotifyError::Config(format!("channel name `{}` is used twice", c.name)));
            }
            let transports = usize::from(c.smtp.is_some()) + usize::from(c.webhook.is_some()) + usize::from(c.alertmanager.is_some());
            if transports != 1 {
                return Err(NotifyError::Config(format!(
                    "channel `{}` needs exactly one of smtp, webhook, alertmanager ({transports} given)",
                    c.name
                )));
            }
            if let Some(s) = &c.smtp
                && s.to.is_empty()
            {
                return Err(NotifyError::Config(format!("channel `{}`: smtp.to needs at least one recipient", c.name)));
            }
        }
        if let Some(r) = &self.retry
            && (r.max_attempts == 0
                || !(r.initial_backoff_seconds.is_finite() && r.initial_backoff_seconds >= 0.0)
                || !(r.max_backoff_seconds.is_finite() && r.max_backoff_seconds >= 0.0))
        {
            return Err(NotifyError::Config("retry: maxAttempts must be at least 1 and the backoffs finite, not negative".into()));
        }
        Ok(())
    }

    fn dispatcher_config(&self) -> DispatcherConfig {
        let mut config = DispatcherConfig::default();
        if let Some(r) = &self.retry {
            config.retry = RetryPolicy {
                max_attempts: r.max_attempts,
                initial_backoff: std::time::Duration::from_secs_f64(r.initial_backoff_seconds),
                max_backoff: std::time::Duration::from_secs_f64(r.max_backoff_seconds),
                multiplier: 2.0,
            };
        }
        config
    }
}

/// Reads one key of a Secret. The value is never logged; errors name the reference only.
async fn read_secret(client: &Client, channel: &str, source: &SecretSource) -> Result<Secret, NotifyError> {
    let r = &source.secret_ref;
    let fail = |message: String| NotifyError::Secret {
        channel: channel.to_string(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        key: r.key.clone(),
        message,
    };
    let secret = Api::<K8sSecret>::namespaced(client.clone(), &r.namespace).get(&r.name).await.map_err(|e| fail(e.to_string()))?;
    let bytes = secret.data.and_then(|mut d| d.remove(&r.key)).ok_or_else(|| fail("no such key".into()))?;
    let value = String::from_utf8(bytes.0).map_err(|_| fail("the value is not UTF-8".into()))?;
    Ok(Secret::new(value.trim_end_matches(['\n', '\r'])))
}

/// Builds the channels, reading their credentials from the Secrets.
pub async fn build_routes(client: &Client, config: &NotificationsConfig) -> Result<Vec<ChannelRoute>, NotifyError> {
    let mut routes = Vec::with_capacity(config.channels.len());
    for spec in &config.channels {
        let filter = IncidentFilter { kinds: spec.kinds.clone(), min_severity: spec.min_severity };
        let broken = |e: nodemedic_notify::DeliveryError| NotifyError::Channel { channel: spec.name.clone(), message: e.to_string() };
        let channel: Arc<dyn Channel> = if let Some(s) = &spec.smtp {
            let mut c = SmtpConfig::new(&spec.name, &s.host, &s.from, s.to.clone());
            c.port = s.port;
            c.security = s.security;
            c.username = s.username.clone();
            if let Some(p) = &s.password {
                c.password = Some(read_secret(client, &spec.name, p).await?);
            }
            if let Some(prefix) = &s.subject_prefix {
                c.subject_prefix = prefix.clone();
            }
            Arc::new(SmtpChannel::new(c).map_err(broken)?)
        } else if let Some(w) = &spec.webhook {
            let mut c = WebhookConfig::new(&spec.name, &w.url);
            c.format = w.format;
            if let Some(t) = &w.token {
                c.bearer_token = Some(read_secret(client, &spec.name, t).await?);
            }
            Arc::new(WebhookChannel::new(c).map_err(broken)?)
        } else if let Some(a) = &spec.alertmanager {
            let mut c = AlertmanagerConfig::new(&spec.name, &a.url);
            c.generator_url = a.generator_url.clone();
            if let Some(t) = &a.token {
                c.bearer_token = Some(read_secret(client, &spec.name, t).await?);
            }
            Arc::new(AlertmanagerChannel::new(c).map_err(broken)?)
        } else {
            return Err(NotifyError::Config(format!("channel `{}` has no transport", spec.name)));
        };
        routes.push(ChannelRoute::new(channel, filter));
    }
    Ok(routes)
}

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
fn probes(node: Option<&Node>, record: Option<&NodeRemediation>, notice: Option<&Notice>, at: Time) -> Vec<ProbeHistory> {
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

fn node_kind(kind: EventKind) -> Option<IncidentKind> {
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
async fn record_outcomes(client: Client, metrics: Option<Arc<crate::Metrics>>, mut outcomes: mpsc::Receiver<DeliveryOutcome>) {
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

async fn record_outcome(client: &Client, outcome: &DeliveryOutcome) -> Result<(), kube::Error> {
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

struct Running {
    dispatcher: Dispatcher,
    /// Incidents the queue refused, offered again on the next pass.
    backlog: Vec<Incident>,
}

/// The controller's notifier. It starts when this replica leads (reading the Secrets and the delivered
/// pairs then) and stands by when it stops leading, so a new leader starts from what the statuses say.
pub struct Notifier {
    client: Client,
    config: NotificationsConfig,
    running: Option<Running>,
    metrics: Option<Arc<crate::Metrics>>,
}

impl Notifier {
    pub fn new(client: Client, config: NotificationsConfig) -> Self {
        Notifier { client, config, running: None, metrics: None }
    }

    /// Counts every delivery try in `metrics` (`nodemedic_notification_deliveries_total`).
    pub fn with_metrics(mut self, metrics: Arc<crate::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts delivering if not yet started: builds the channels, loads what was delivered, and submits
    /// the standing incidents again. On error nothing is started; the next pass tries again.
    pub async fn ensure_started(&mut self) -> Result<(), NotifyError> {
        if self.running.is_some() {
            return Ok(());
        }
        let routes = build_routes(&self.client, &self.config).await?;
        let policies = Api::<NodeHealthPolicy>::all(self.client.clone()).list(&ListParams::default()).await?.items;
        let objects = Api::<NodeRemediation>::all(self.client.clone()).list(&ListParams::default()).await?.items;
        let delivered = delivered_pairs(
            objects
                .iter()
                .filter_map(|o| o.status.as_ref().map(|s| s.notifications.as_slice()))
                .chain(policies.iter().filter_map(|p| p.status.as_ref().map(|s| s.notifications.as_slice()))),
        );
        let mut nodes = BTreeMap::new();
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        for o in objects.iter().filter(|o| o.status.as_ref().is_some_and(|s| s.record.phase == Phase::Manual)) {
            if let Some(n) = nodes_api.get_opt(&o.spec.node).await? {
                nodes.insert(o.spec.node.clone(), n);
            }
        }
        tracing::info!(channels = routes.len(), delivered = delivered.len(), "notifications started");
        let (dispatcher, outcomes) = Dispatcher::start(routes, self.config.dispatcher_config(), delivered);
        tokio::spawn(record_outcomes(self.client.clone(), self.metrics.clone(), outcomes));
        let mut running = Running { dispatcher, backlog: Vec::new() };
        let standing = standing_incidents(&policies, &objects, |name| nodes.get(name), self.config.probe_results, crate::now());
        submit_all(&mut running, standing);
        self.running = Some(running);
        Ok(())
    }

    /// Stops taking incidents (this replica no longer leads). Deliveries already under way finish and
    /// are recorded.
    pub fn stand_by(&mut self) {
        if self.running.take().is_some() {
            tracing::info!("notifications standing by: not the leader");
        }
    }

    /// Hands over, once per pass, what was decided but never tried (see [`unattempted_incidents`]);
    /// the dispatcher skips what it is delivering or has delivered.
    pub fn catch_up(&mut self, policies: &[Arc<NodeHealthPolicy>], nodes: &[Arc<Node>], objects: &[Arc<NodeRemediation>]) {
        let Some(running) = self.running.as_mut() else { return };
        let missing = unattempted_incidents(policies, objects, nodes, self.config.probe_results, crate::now());
        submit_all(running, missing);
    }

    /// Queues the incidents a decision calls for; never waits.
    pub fn on_decision(&mut self, policy: &NodeHealthPolicy, decision: &Decision, nodes: &[Arc<Node>], objects: &[Arc<NodeRemediation>]) {
        let Some(running) = self.running.as_mut() else { return };
        let incidents = incidents_for(policy, decision, nodes, objects, self.config.probe_results, crate::now());
        submit_all(running, incidents);
    }
}

fn submit_all(running: &mut Running, incidents: Vec<Incident>) {
    let queued: Vec<Incident> = std::mem::take(&mut running.backlog).into_iter().chain(incidents).collect();
    for incident in queued {
        tracing::debug!(key = %incident.key, kind = %incident.kind, "notification queued");
        match running.dispatcher.submit(incident) {
            Ok(()) => {}
            Err(SubmitError::QueueFull(incident)) => running.backlog.push(*incident),
            Err(SubmitError::Stopped(incident)) => {
                tracing::error!(key = %incident.key, "the notification dispatcher stopped; incident kept for later");
                running.backlog.push(*incident);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml_as_json: serde_json::Value) -> Result<NotificationsConfig, serde_json::Error> {
        serde_json::from_value(yaml_as_json)
    }

    #[test]
    fn a_config_names_its_channels_filters_and_secret_references() -> Result<(), Box<dyn std::error::Error>> {
        let c = config(serde_json::json!({
            "channels": [
                {"name": "email-infra", "kinds": ["NodeManual", "BreakerTripped"], "minSeverity": "critical",
                 "smtp": {"host": "smtp.example.com", "security": "startTls", "username": "nodemedic",
                          "password": {"secretRef": {"namespace": "nodemedic", "name": "smtp", "key": "password"}},
                          "from": "nodemedic@example.com", "to": ["infra@example.com", "oncall@example.com"]}},
                {"name": "alertmanager", "alertmanager": {"url": "http://alertmanager:9093"}},
                {"name": "slack", "minSeverity": "warning", "webhook": {"url": "https://hooks.example.com/x", "format": "chatText",
                 "token": {"secretRef": {"namespace": "nodemedic", "name": "slack", "key": "token"}}}}
            ]
        }))?;
        c.validate()?;
        assert_eq!(c.channels[0].min_severity, Severity::Critical);
        assert!(c.channels[0].kinds.contains(&IncidentKind::NodeManual));
        let password = c.channels[0].smtp.as_ref().and_then(|s| s.password.as_ref()).map(|p| p.secret_ref.name.as_str());
        assert_eq!(password, Some("smtp"));
        assert_eq!(c.channels[2].webhook.as_ref().map(|w| w.format), Some(WebhookFormat::ChatText));
        assert_eq!(c.probe_results, DEFAULT_PROBE_RESULTS);
        Ok(())
    }

    #[test]
    fn a_held_drain_is_a_drain_blocked_warning_that_fires_an_alert_until_the_node_recovers() {
        assert_eq!(node_kind(EventKind::DrainHeld), Some(IncidentKind::DrainBlocked));
        assert_eq!(IncidentKind::DrainBlocked.default_severity(), Severity::Warning);
        assert!(IncidentKind::DrainBlocked.is_alert());
    }

    #[test]
    fn a_password_written_into_the_config_is_refused() {
        let inline = config(serde_json::json!({
            "channels": [{"name": "mail", "smtp": {"host": "h", "from": "a@b", "to": ["c@d"], "password": "hunter2"}}]
        }));
        assert!(inline.is_err(), "only secretRef is accepted");
    }

    #[test]
    fn channels_need_unique_names_and_exactly_one_transport() -> Result<(), serde_json::Error> {
        let twice = config(serde_json::json!({"channels": [
            {"name": "a", "alertmanager": {"url": "http://x"}},
            {"name": "a", "webhook": {"url": "http://y"}}
        ]}))?;
        assert!(twice.validate().is_err_and(|e| e.to_string().contains("used twice")));
        let both = config(serde_json::json!({"channels": [
            {"name": "a", "alertmanager": {"url": "http://x"}, "webhook": {"url": "http://y"}}
        ]}))?;
        assert!(both.validate().is_err_and(|e| e.to_string().contains("exactly one")));
        Ok(())
    }

    #[test]
    fn outcomes_go_to_the_node_or_the_policy_their_key_names() {
        assert_eq!(target_of("gpu-011/NodeManual/3"), Some(Target::Node("gpu-011".into())));
        assert_eq!(target_of("policy:gpu-workers/BreakerTripped/1700"), Some(Target::Policy("gpu-workers".into())));
        assert_eq!(target_of("nonsense"), None);
    }

    #[test]
    fn the_status_list_stays_bounded_and_keeps_deliveries_over_failures() {
        let mut list = Vec::new();
        let try_ = |attempt: u32, ok: bool| DeliveryOutcome {
            key: "n/NodeManual/1".into(),
            channel: if ok { "email".into() } else { "hook".into() },
            attempt,
            ok,
            error: (!ok).then(|| "refused".to_string()),
            at: Time(i64::from(attempt)),
            gave_up: false,
        };
        append_outcome(&mut list, &try_(1, true));
        for attempt in 1..=(NOTIFICATION_HISTORY_LIMIT as u32 + 10) {
            append_outcome(&mut list, &try_(attempt, false));
        }
        assert_eq!(list.len(), NOTIFICATION_HISTORY_LIMIT);
        assert!(list.iter().any(|n| n.ok), "the delivery survives the trimming");
        let delivered = delivered_pairs([list.as_slice()]);
        assert_eq!(delivered, BTreeSet::from([("n/NodeManual/1".to_string(), "email".to_string())]));
    }

    fn manual_record(tried: serde_json::Value, executed: bool) -> Result<NodeRemediation, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation",
            "metadata": {"name": "gpu-011"},
            "spec": {"node": "gpu-011", "policy": "gpu-workers"},
            "status": {
                "node": "gpu-011", "phase": "Manual", "attempt": 3,
                "active": {"trigger": "gpu", "reason": "Xid 119", "startedAt": "2026-11-21T10:00:01Z",
                           "unhealthySince": "2026-11-21T10:00:00Z", "stepIndex": 2, "step": "manual",
                           "stepStartedAt": "2026-11-21T10:05:00Z", "stage": {"name": "executing"}, "executed": executed},
                "notifications": tried,
            }
        }))
    }

    #[test]
    fn a_manual_node_nobody_tried_to_tell_is_told_and_one_already_tried_is_left_to_the_dispatcher() -> Result<(), serde_json::Error> {
        let untold = Arc::new(manual_record(serde_json::json!([]), true)?);
        let missing = unattempted_incidents(&[], std::slice::from_ref(&untold), &[], 5, Time(0));
        assert_eq!(missing.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["gpu-011/NodeManual/3"]);
        assert_eq!((missing[0].rule.as_deref(), missing[0].attempts.len()), (Some("gpu"), 1));
        let tried = serde_json::json!([{"key": "gpu-011/NodeManual/3", "channel": "email", "attempt": 1, "ok": false,
                                        "error": "refused", "at": "2026-11-21T10:05:01Z"}]);
        let told = Arc::new(manual_record(tried, true)?);
        assert!(unattempted_incidents(&[], &[told], &[], 5, Time(0)).is_empty());
        let monitor_only = Arc::new(manual_record(serde_json::json!([]), false)?);
        assert!(unattempted_incidents(&[], &[monitor_only], &[], 5, Time(0)).is_empty(), "nothing was done to the node");
        Ok(())
    }

    #[test]
    fn a_node_shows_its_addresses_labels_taints_and_conditions() -> Result<(), serde_json::Error> {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpu-011", "labels": {"pool": "training"}},
            "spec": {"taints": [{"key": "nodemedic.io/repair-manual", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}, {"type": "ExternalIP", "address": "198.51.100.11"},
                              {"type": "Hostname", "address": "gpu-011"}],
                "conditions": [{"type": "GPUProblem", "status": "True", "reason": "XidCritical", "message": "Xid 119",
                                "lastTransitionTime": "2026-11-21T10:00:00Z"}]
            }
        }))?;
        let d = node_details(&node);
        assert_eq!((d.internal_ips, d.external_ips), (vec!["10.0.0.11".to_string()], vec!["198.51.100.11".to_string()]));
        assert_eq!(d.labels.get("pool").map(String::as_str), Some("training"));
        assert_eq!(d.taints[0].to_string(), "nodemedic.io/repair-manual:NoSchedule");
        assert_eq!((d.conditions[0].type_.as_str(), d.conditions[0].message.as_str()), ("GPUProblem", "Xid 119"));
        Ok(())
    }
}
