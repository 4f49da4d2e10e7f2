//! Alerts against a real Alertmanager (Debian's prometheus-alertmanager, see scripts/notify-peers).

mod common;

use anyhow::{Context, Result};
use common::{Alertmanager, eventually, never_recovering_node_incident};
use nodemedic_core::time::Time;
use nodemedic_notify::{AlertmanagerChannel, AlertmanagerConfig, Channel, Incident, IncidentKind, NodeDetails, Secret};
use std::time::Duration;

fn alert_for_node<'a>(alerts: &'a [serde_json::Value], node: &str) -> Option<&'a serde_json::Value> {
    alerts.iter().find(|alert| alert["labels"]["node"] == node)
}

#[tokio::test]
async fn a_manual_node_fires_an_alert_with_its_diagnostics_that_resolves_when_the_node_recovers() -> Result<()> {
    let alertmanager = Alertmanager::start().await?;
    let mut config = AlertmanagerConfig::new("alertmanager", &alertmanager.url);
    config.bearer_token = Some(Secret::new("am-token"));
    let channel = AlertmanagerChannel::new(config)?;
    assert!(!format!("{channel:?}").contains("am-token"));

    channel.deliver(&never_recovering_node_incident()).await.context("posting the firing alert")?;
    let firing = eventually("the alert to be firing", Duration::from_secs(20), || async {
        Ok(alert_for_node(&alertmanager.alerts().await?, "gpu-node-3").cloned())
    })
    .await?;
    assert_eq!(firing["labels"]["alertname"], "NodemedicNodeManual");
    assert_eq!(firing["labels"]["policy"], "gpu-default");
    assert_eq!(firing["labels"]["severity"], "critical");
    assert_eq!(firing["status"]["state"], "active");
    assert_eq!(firing["startsAt"].as_str().map(|s| Time::parse_rfc3339(s).ok()), Some(Some(Time(1_700_000_006_000))));
    assert_eq!(firing["annotations"]["summary"], "gpu-node-3 still has 7 of 8 GPUs after reboot, reimage and replace");
    let description = firing["annotations"]["description"].as_str().unwrap_or_default();
    assert!(description.contains("Internal IPs: 10.0.3.13") && description.contains("#3 replace"), "{description}");
    let diagnostics: serde_json::Value = serde_json::from_str(firing["annotations"]["diagnostics"].as_str().unwrap_or("null"))?;
    assert_eq!(diagnostics["attempts"].as_array().map(Vec::len), Some(4));
    assert_eq!(diagnostics["key"], "gpu-node-3/NodeManual/4");

    let recovered =
        Incident::for_node(IncidentKind::NodeRecovered, "gpu-default", NodeDetails::named("gpu-node-3"), 5, Time(1_700_000_900_000));
    channel.deliver(&recovered).await.context("posting the resolution")?;
    // Alertmanager lists only alerts that have not ended; the resolved one disappears from the list.
    eventually("the alert to be resolved", Duration::from_secs(20), || async {
        Ok(alert_for_node(&alertmanager.alerts().await?, "gpu-node-3").is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_tripped_breaker_fires_a_policy_alert_without_a_node_and_its_reset_resolves_it() -> Result<()> {
    let alertmanager = Alertmanager::start().await?;
    let channel = AlertmanagerChannel::new(AlertmanagerConfig::new("alertmanager", &alertmanager.url))?;
    let tripped_at = Time(1_700_000_000_000);
    let trip = Incident::for_policy(IncidentKind::BreakerTripped, "gpu-default", tripped_at, tripped_at)
        .with_summary("5 of 40 nodes unhealthy within 10m (limit 3)");
    channel.deliver(&trip).await?;
    let firing = eventually("the breaker alert", Duration::from_secs(20), || async {
        Ok(alertmanager.alerts().await?.into_iter().find(|a| a["labels"]["alertname"] == "NodemedicBreakerTripped"))
    })
    .await?;
    assert_eq!(firing["labels"]["policy"], "gpu-default");
    assert!(firing["labels"].get("node").is_none(), "{firing}");

    let reset = Incident::for_policy(IncidentKind::BreakerReset, "gpu-default", tripped_at, Time(1_700_000_600_000));
    channel.deliver(&reset).await?;
    eventually("the breaker alert to resolve", Duration::from_secs(20), || async {
        Ok(alertmanager.alerts().await?.iter().all(|a| a["labels"]["alertname"] != "NodemedicBreakerTripped").then_some(()))
    })
    .await?;
    Ok(())
}
