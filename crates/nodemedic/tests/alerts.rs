//! The alerts shipped in the chart (`deploy/helm/nodemedic/files/alerts.yaml`) are valid Prometheus
//! rules, behave as their unit tests say (`deploy/prometheus/alerts.test.yaml`, run by Debian's
//! promtool, installed by `scripts/ship-peers/setup`), and read only series the controller exposes.

use nodemedic_controller::Metrics;
use nodemedic_core::engine::Summary;
use nodemedic_core::record::{ActiveRemediation, Stage};
use nodemedic_core::{Decision, NodeRecord, Phase, Records, RemediationStep, Time};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("promtool").args(args).current_dir(repo()).output().map_err(|e| {
        anyhow::anyhow!("promtool could not be run ({e}); scripts/ship-peers/setup installs it (Debian's prometheus package)")
    })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    Ok(text)
}

#[test]
fn promtool_accepts_the_shipped_alert_rules() -> anyhow::Result<()> {
    let out = promtool(&["check", "rules", "deploy/helm/nodemedic/files/alerts.yaml"])?;
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    Ok(())
}

#[test]
fn every_alert_fires_when_its_unit_test_says_and_stays_quiet_otherwise() -> anyhow::Result<()> {
    let out = promtool(&["test", "rules", "deploy/prometheus/alerts.test.yaml"])?;
    assert!(out.contains("SUCCESS"), "{out}");
    Ok(())
}

/// Sample names a family of the given type exposes (counters get `_total`, histograms their parts).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => names.insert(format!("{name}_total")),
            "histogram" => {
                for part in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{part}"));
                }
                true
            }
            _ => names.insert(name.to_string()),
        };
    }
    names
}

/// Every `nodemedic_…` identifier in a text: what a rule or a panel query reads.
pub fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("nodemedic_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        found.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    found
}

/// A controller's metrics after one decision with a node in Manual past its deadline, a stale rule,
/// an open breaker and a failed delivery: every family then has a series.
fn metrics_with_every_series() -> Metrics {
    let metrics = Metrics::new();
    let at = Time::from_millis(1_800_000_000_000);
    let active = ActiveRemediation {
        trigger: "gpu".into(),
        reason: "XidCritical".into(),
        started_at: at,
        unhealthy_since: at,
        step_index: 2,
        step: RemediationStep::Manual,
        step_started_at: at,
        deadline: Some(at),
        stage: Stage::Executing,
        executed: true,
        boot_id_at_start: None,
        notified_at: None,
        drain_held_at: None,
        fault_class: None,
        gpu: None,
        unobserved: nodemedic_core::Duration::ZERO,
        unobserved_until: None,
    };
    let record = NodeRecord { node: "gpu-001".into(), phase: Phase::Manual, active: Some(active), ..NodeRecord::default() };
    let records = Records { nodes: BTreeMap::from([("gpu-001".to_string(), record)]), ..Records::default() };
    let summary = Summary { manual: 1, breaker_open: true, rule_reasons: vec![("gpu".into(), "Stale", 1)], ..Summary::default() };
    let decision = Decision { summary, ..Decision::default() };
    let pools = BTreeMap::from([("gpu-001".to_string(), "h100".to_string())]);
    metrics.observe("gpu", &decision, &records, &pools, at);
    metrics.notification_delivery("email", "failed");
    metrics.set_leader(true);
    metrics
}

#[test]
fn the_alerts_read_only_series_the_controller_exposes() -> anyhow::Result<()> {
    let rules = std::fs::read_to_string(repo().join("deploy/helm/nodemedic/files/alerts.yaml"))?;
    let exposed = exposed_names(&metrics_with_every_series().encode());
    let read = metric_names_in(&rules);
    assert!(read.len() >= 6, "the rules read {read:?}");
    let missing: Vec<_> = read.difference(&exposed).collect();
    assert!(missing.is_empty(), "the rules read series the controller does not expose: {missing:?}\nexposed: {exposed:?}");
    Ok(())
}
