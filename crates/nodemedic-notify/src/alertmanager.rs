//! Alertmanager's v2 API: a firing alert per open incident, resolved when the node recovers or the breaker
//! resets.
//!
//! Labels are `alertname` (`Nodemedic<Kind>`, e.g. `NodemedicNodeManual`), `node` (node incidents only),
//! `policy` and `severity`; annotations are `summary`, `description` (the plain-text report) and
//! `diagnostics` (the incident as JSON). Alertmanager resolves an alert by itself once its `endsAt` has
//! passed, so firing alerts carry `endsAt = now + firing_lifetime`; a resolved alert is the same labels with
//! `endsAt = now`.

use crate::channel::{Channel, DeliveryError, DeliveryFuture, send_http};
use crate::incident::{Incident, IncidentKind, Severity};
use crate::now;
use crate::render;
use crate::secret::Secret;
use nodemedic_core::time::Time;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AlertmanagerConfig {
    /// The channel's name in outcomes and the idempotency record.
    pub name: String,
    /// Alertmanager's base URL, e.g. `http://alertmanager.monitoring:9093`.
    pub url: String,
    pub bearer_token: Option<Secret>,
    /// How long a firing alert stays firing without being sent again.
    pub firing_lifetime: Duration,
    /// Set as each alert's `generatorURL` (e.g. a dashboard), when given.
    pub generator_url: Option<String>,
    pub timeout: Duration,
}

impl AlertmanagerConfig {
    pub fn new(name: &str, url: &str) -> Self {
        AlertmanagerConfig {
            name: name.to_string(),
            url: url.to_string(),
            bearer_token: None,
            firing_lifetime: Duration::from_secs(7 * 24 * 3600),
            generator_url: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
pub struct AlertmanagerChannel {
    config: AlertmanagerConfig,
    client: reqwest::Client,
}

/// The alert name for incidents of a kind: `Nodemedic<Kind>`.
pub fn alert_name(kind: IncidentKind) -> String {
    format!("Nodemedic{}", kind.as_str())
}

/// The labels that identify the alert for an incident of `kind` and `severity` about this incident's node
/// and policy.
pub fn alert_labels(incident: &Incident, kind: IncidentKind, severity: Severity) -> BTreeMap<&'static str, String> {
    let mut labels = BTreeMap::new();
    labels.insert("alertname", alert_name(kind));
    if let Some(node) = &incident.node {
        labels.insert("node", node.name.clone());
    }
    labels.insert("policy", incident.policy.clone());
    labels.insert("severity", severity.as_str().to_string());
    labels
}

/// The alerts to post for an incident: one firing alert for an open problem, a resolved alert for each
/// incident it closes, nothing for purely informational kinds.
pub fn alerts_for(incident: &Incident, now: Time, firing_lifetime: Duration, generator_url: Option<&str>) -> Vec<Value> {
    let mut alerts = Vec::new();
    if incident.kind.is_alert() {
        let lifetime_ms = i64::try_from(firing_lifetime.as_millis()).unwrap_or(i64::MAX);
        let ends_at = Time(now.as_millis().saturating_add(lifetime_ms));
        let diagnostics = render::json(incident).unwrap_or_default();
        let mut alert = json!({
            "labels": alert_labels(incident, incident.kind, incident.severity),
            "annotations": {
                "summary": incident.summary,
                "description": render::text(incident),
                "diagnostics": diagnostics,
                "nextAction": incident.next_action,
                "incidentKey": incident.key,
            },
            "startsAt": incident.at.to_string(),
            "endsAt": ends_at.to_string(),
        });
        if let Some(url) = generator_url {
            alert["generatorURL"] = Value::String(url.to_string());
        }
        alerts.push(alert);
    }
    for resolved in &incident.resolves {
        alerts.push(json!({
            "labels": alert_labels(incident, resolved.kind, resolved.severity),
            "annotations": { "summary": incident.summary },
            "endsAt": now.to_string(),
        }));
    }
    alerts
}

impl AlertmanagerChannel {
    pub fn new(config: AlertmanagerConfig) -> Result<Self, DeliveryError> {
        let client =
            reqwest::Client::builder().timeout(config.timeout).build().map_err(|e| DeliveryError::Config(e.without_url().to_string()))?;
        Ok(AlertmanagerChannel { config, client })
    }

    async fn send(&self, incident: &Incident) -> Result<(), DeliveryError> {
        let alerts = alerts_for(incident, now(), self.config.firing_lifetime, self.config.generator_url.as_deref());
        if alerts.is_empty() {
            return Ok(());
        }
        let url = format!("{}/api/v2/alerts", self.config.url.trim_end_matches('/'));
        send_http(self.client.post(url).json_body(&Value::Array(alerts)), self.config.bearer_token.as_ref()).await
    }
}

trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string())
    }
}

impl Channel for AlertmanagerChannel {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn deliver<'a>(&'a self, incident: &'a Incident) -> DeliveryFuture<'a> {
        Box::pin(self.send(incident))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::NodeDetails;

    #[test]
    fn a_manual_node_fires_one_alert_with_its_labels_and_diagnostics() {
        let incident = Incident::for_node(IncidentKind::NodeManual, "gpu-default", NodeDetails::named("gpu-7"), 3, Time(1_000))
            .with_summary("ladder done");
        let alerts = alerts_for(&incident, Time(2_000), Duration::from_secs(60), None);
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert["labels"]["alertname"], "NodemedicNodeManual");
        assert_eq!(alert["labels"]["node"], "gpu-7");
        assert_eq!(alert["labels"]["policy"], "gpu-default");
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["annotations"]["summary"], "ladder done");
        assert!(alert["annotations"]["diagnostics"].as_str().is_some_and(|d| d.contains("\"key\": \"gpu-7/NodeManual/3\"")));
        assert_eq!(alert["startsAt"], "1970-01-01T00:00:01Z");
        assert_eq!(alert["endsAt"], "1970-01-01T00:01:02Z");
    }

    #[test]
    fn a_recovered_node_resolves_its_alerts_with_the_same_labels_ending_now() {
        let incident = Incident::for_node(IncidentKind::NodeRecovered, "gpu-default", NodeDetails::named("gpu-7"), 4, Time(1_000));
        let alerts = alerts_for(&incident, Time(5_000), Duration::from_secs(60), None);
        let names: Vec<&str> = alerts.iter().filter_map(|a| a["labels"]["alertname"].as_str()).collect();
        assert_eq!(names, vec!["NodemedicNodeManual", "NodemedicLemonNode", "NodemedicStepTimedOut", "NodemedicDrainBlocked"]);
        assert!(alerts.iter().all(|a| a["endsAt"] == "1970-01-01T00:00:05Z" && a["labels"]["node"] == "gpu-7"));
        assert_eq!(alerts[0]["labels"]["severity"], "critical");
    }

    #[test]
    fn informational_incidents_post_no_alert() {
        let incident = Incident::for_node(IncidentKind::RemediationStarted, "p", NodeDetails::named("n"), 1, Time(0));
        assert!(alerts_for(&incident, Time(0), Duration::from_secs(60), None).is_empty());
    }
}
