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

mod config;
mod incidents;

pub use config::*;
pub use incidents::*;

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
