//! The done-criterion through the dispatcher: the demo's never-recovering node produces an email in a
//! real SMTP server and an alert in a real Alertmanager, both carrying the diagnostics; its recovery resolves
//! the alert; every try is reported.

mod common;

use anyhow::{Context, Result, anyhow};
use common::{Alertmanager, SmtpSink, SmtpSinkOptions, eventually, never_recovering_node_incident};
use nodemedic_core::time::Time;
use nodemedic_notify::{
    AlertmanagerChannel, AlertmanagerConfig, ChannelRoute, DeliveryOutcome, Dispatcher, DispatcherConfig, Incident, IncidentFilter,
    IncidentKind, NodeDetails, Severity, SmtpChannel, SmtpConfig, SmtpSecurity,
};
use std::sync::Arc;
use std::time::Duration;

async fn next_outcomes(outcomes: &mut tokio::sync::mpsc::Receiver<DeliveryOutcome>, n: usize) -> Result<Vec<DeliveryOutcome>> {
    let mut all = Vec::new();
    while all.len() < n {
        let outcome = tokio::time::timeout(Duration::from_secs(30), outcomes.recv())
            .await
            .context("waiting for delivery outcomes")?
            .ok_or_else(|| anyhow!("the dispatcher stopped early"))?;
        all.push(outcome);
    }
    Ok(all)
}

#[tokio::test]
async fn the_never_recovering_node_reaches_people_by_email_and_alertmanager_and_its_recovery_resolves_the_alert() -> Result<()> {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).await?;
    let alertmanager = Alertmanager::start().await?;

    let mut email = SmtpConfig::new("email-infra", "127.0.0.1", "nodemedic@example.com", vec!["infra@example.com".into()]);
    email.port = Some(sink.port);
    email.security = SmtpSecurity::Plain;
    let routes = vec![
        // People get mail for problems only; Alertmanager gets everything (it posts only alerts and resolutions).
        ChannelRoute::new(Arc::new(SmtpChannel::new(email)?), IncidentFilter::all().min_severity(Severity::Warning)),
        ChannelRoute::new(
            Arc::new(AlertmanagerChannel::new(AlertmanagerConfig::new("alertmanager", &alertmanager.url))?),
            IncidentFilter::all(),
        ),
    ];
    let (dispatcher, mut outcomes) = Dispatcher::start(routes, DispatcherConfig::default(), []);

    dispatcher.submit(never_recovering_node_incident()).map_err(|e| anyhow!("submit: {e}"))?;
    let delivered = next_outcomes(&mut outcomes, 2).await?;
    assert!(delivered.iter().all(|o| o.ok && o.key == "gpu-node-3/NodeManual/4"), "{delivered:?}");
    let mut channels: Vec<&str> = delivered.iter().map(|o| o.channel.as_str()).collect();
    channels.sort_unstable();
    assert_eq!(channels, vec!["alertmanager", "email-infra"]);

    let mail = sink.message(1).await?;
    let text = mail["text"].as_str().unwrap_or_default();
    assert!(text.contains("Node gpu-node-3") && text.contains("#4 manual") && text.contains("10.0.3.13"), "{text}");
    let alert = eventually("the NodeManual alert", Duration::from_secs(20), || async {
        Ok(alertmanager.alerts().await?.into_iter().find(|a| a["labels"]["alertname"] == "NodemedicNodeManual"))
    })
    .await?;
    assert_eq!(alert["labels"]["node"], "gpu-node-3");
    assert!(alert["annotations"]["description"].as_str().is_some_and(|d| d.contains("#3 replace")));

    let recovered =
        Incident::for_node(IncidentKind::NodeRecovered, "gpu-default", NodeDetails::named("gpu-node-3"), 5, Time(1_700_001_000_000));
    dispatcher.submit(recovered).map_err(|e| anyhow!("submit: {e}"))?;
    let resolution = next_outcomes(&mut outcomes, 1).await?;
    assert_eq!((resolution[0].channel.as_str(), resolution[0].ok), ("alertmanager", true), "the info incident must not be mailed");
    eventually("the alert to resolve", Duration::from_secs(20), || async {
        Ok(alertmanager.alerts().await?.iter().all(|a| a["labels"]["node"] != "gpu-node-3").then_some(()))
    })
    .await?;

    dispatcher.shutdown().await;
    assert!(outcomes.recv().await.is_none());
    assert_eq!(sink.message_count()?, 1);
    Ok(())
}
