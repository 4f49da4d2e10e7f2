//! The demo's simulated node agents: they publish probe conditions (and re-publish them as a
//! heartbeat), and perform the reboots and reimages the records ask for, retrying their writes
//! while the API server is away, as a real agent would.

use crate::demo::{FaultState, FixedBy, Probe, Scenario, lock};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use nodemedic_core::observe::{ReportedOutcome, StepReport};
use nodemedic_core::{RemediationStep, Time};
use nodemedic_k8s::{field_managers, report_step};
use nodemedic_testenv::ControlPlane;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub async fn publish(cp: &ControlPlane, node: &str, kind: Probe, failing: bool, message: &str, since: &str) -> Result<()> {
    let (bad, good) = kind.reasons();
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": kind.condition(),
        "status": if failing { "True" } else { "False" },
        "reason": if failing { bad } else { good },
        "message": message,
        "lastTransitionTime": since,
        "lastHeartbeatTime": now,
    }]}});
    Api::<Node>::all(cp.client())
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .with_context(|| format!("publishing {} on {node}", kind.condition()))?;
    Ok(())
}

/// The agents' periodic re-publication of every probe condition (the controller treats a
/// condition whose heartbeat is older than the rule's staleAfter as unknown).
pub async fn heartbeat(cp: &ControlPlane, scenario: &Scenario, state: &Arc<Mutex<FaultState>>) -> Result<()> {
    let active = state.lock().map_err(|_| anyhow::anyhow!("state lock"))?.active.clone();
    let nodes = Api::<Node>::all(cp.client()).list(&ListParams::default()).await?.items;
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        // A dead node's agent died with it.
        if active.get(&name).is_some_and(|(i, _)| scenario.faults[*i].kind.probe().is_none()) {
            continue;
        }
        for kind in Probe::ALL {
            let current = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == kind.condition()).cloned());
            let failing = active.get(&name).is_some_and(|(i, _)| scenario.faults[*i].kind.probe() == Some(kind));
            let since = current
                .as_ref()
                .filter(|c| (c.status == "True") == failing)
                .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0.to_string()))
                .unwrap_or_else(|| jiff::Timestamp::now().to_string());
            let message = current.and_then(|c| c.message).unwrap_or_default();
            publish(cp, &name, kind, failing, &message, &since).await?;
        }
    }
    Ok(())
}

/// Tries `op` until it succeeds, for up to two minutes (the API server may be away for a while).
pub(crate) async fn retrying<T, F, Fut>(what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let until = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= until => return Err(e.context(format!("{what}: gave up after 2 minutes"))),
            Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
    }
}

/// A simulated agent performing a reboot or reimage: the node goes NotReady and comes back with a
/// new boot ID; the probe result afterwards depends on whether this repair fixes the fault. Each
/// write is retried while the API server is away, as a real agent's would be.
pub async fn agent_repair(
    cp: &ControlPlane,
    scenario: &Scenario,
    state: &Arc<Mutex<FaultState>>,
    node: &str,
    attempt: u32,
    step: RemediationStep,
) -> Result<String> {
    let dead = lock(state)?.active.get(node).is_some_and(|(i, _)| scenario.faults[*i].kind.probe().is_none());
    if dead {
        return Ok(format!("{node:<11} {:<20} the node is dead and its agent with it: no {step}", "AgentGone"));
    }
    let work = if step == RemediationStep::Reimage { 4 } else { 2 };
    tokio::time::sleep(std::time::Duration::from_secs(work)).await;
    let boot_id = retrying("rebooting", || async { Ok(cp.simulate_reboot(node).await?) }).await?;
    let fault = lock(state)?.active.get(node).map(|(i, _)| *i);
    let fixed = fault.is_none_or(|i| {
        let f = &scenario.faults[i];
        matches!((f.fixed_by, step), (Some(FixedBy::Reboot), _) | (Some(FixedBy::Reimage), RemediationStep::Reimage))
    });
    let mut outcome = String::new();
    if let Some(i) = fault {
        let f = &scenario.faults[i];
        let (message, verdict) = if fixed { ("all probes pass after the repair", "passes") } else { (f.message.as_str(), "still fails") };
        if let Some(probe) = f.kind.probe() {
            retrying("publishing the probe", || async {
                publish(cp, node, probe, !fixed, message, &jiff::Timestamp::now().to_string()).await
            })
            .await?;
        }
        if fixed {
            lock(state)?.active.remove(node);
        }
        outcome = format!("; the probe {verdict}");
    }
    let at = Time(jiff::Timestamp::now().as_millisecond());
    let message = format!("{step} done, new bootID …{}", &boot_id[boot_id.len().saturating_sub(12)..]);
    let report = StepReport { attempt, outcome: ReportedOutcome::Succeeded, at, message: message.clone() };
    retrying("reporting", || async { Ok(report_step(&cp.client(), field_managers::AGENT, node, &report).await?) }).await?;
    Ok(format!("{node:<11} {:<20} {message}{outcome}", "AgentReported"))
}
