//! The agent's Prometheus metrics (`nodemedic-agent run --metrics-listen`), one set per node.
//!
//! What the controller cannot see from the API server: how each probe ran on this node (raw results
//! and how long they took), what each probe publishes after its thresholds, when this node's
//! conditions were last written (the heartbeat the controller ages into `Stale`), failed writes,
//! probes paused by a repair, and the reboots and reimages this agent carried out. Every series
//! carries `node`, so a fleet's agents can be told apart whatever the scrape's relabelling. The
//! dashboard's agent panels read them (`deploy/helm/nodemedic/files/dashboard.json`).

use crate::plugin::Family;
use crate::verdict::{Health, Verdict};
use nodemedic_core::RemediationStep;
use nodemedic_core::observe::ReportedOutcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    node: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    node: String,
    probe: String,
    condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeHealthLabels {
    node: String,
    probe: String,
    condition: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    node: String,
    condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemediationLabels {
    node: String,
    step: String,
    outcome: String,
}

fn health_label(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::Unknown => "unknown",
    }
}

const HEALTHS: [Health; 3] = [Health::Healthy, Health::Unhealthy, Health::Unknown];

fn probe_duration_histogram() -> Histogram {
    // 10 ms … about 40 s: a sysfs read to a tool that runs into its timeout.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// The metrics of the agent on `node`.
pub struct AgentMetrics {
    node: String,
    registry: Registry,
    probe_runs: MetricFamily<ProbeHealthLabels, Counter>,
    probe_health: MetricFamily<ProbeHealthLabels, Gauge>,
    probe_seconds: MetricFamily<ProbeLabels, Histogram, fn() -> Histogram>,
    probes_paused: MetricFamily<ProbeLabels, Counter>,
    heartbeat: MetricFamily<ConditionLabels, Gauge<f64, AtomicU64>>,
    publish_failures: MetricFamily<NodeLabels, Counter>,
    remediations: MetricFamily<RemediationLabels, Counter>,
}

impl AgentMetrics {
    pub fn new(node: &str) -> AgentMetrics {
        let mut registry = Registry::with_prefix("nodemedic_agent");
        let info = MetricFamily::<InfoLabels, Gauge>::default();
        registry.register("info", "1 for the running agent, with its node and version", info.clone());
        info.get_or_create(&InfoLabels { node: node.to_string(), version: env!("CARGO_PKG_VERSION").to_string() }).set(1);
        let probe_runs = MetricFamily::<ProbeHealthLabels, Counter>::default();
        registry.register("probe_runs", "Probe runs by the raw result's health (before the thresholds)", probe_runs.clone());
        let probe_health = MetricFamily::<ProbeHealthLabels, Gauge>::default();
        registry.register(
            "probe_health",
            "1 for the health each probe publishes now (after its thresholds and staleness), 0 for the others",
            probe_health.clone(),
        );
        let probe_seconds = MetricFamily::<ProbeLabels, Histogram>::new_with_constructor(probe_duration_histogram as fn() -> Histogram);
        registry.register("probe_duration_seconds", "How long each probe run took", probe_seconds.clone());
        let probes_paused = MetricFamily::<ProbeLabels, Counter>::default();
        registry.register("probe_pauses", "Probe runs skipped because a repair is in progress on the node", probes_paused.clone());
        let heartbeat = MetricFamily::<ConditionLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "condition_heartbeat_timestamp_seconds",
            "When this agent last wrote the condition (Unix seconds): the heartbeat the controller ages",
            heartbeat.clone(),
        );
        let publish_failures = MetricFamily::<NodeLabels, Counter>::default();
        registry.register("condition_write_failures", "Failed writes of this node's conditions", publish_failures.clone());
        // Present from the start, so `rate()` over it works before the first failure.
        drop(publish_failures.get_or_create(&NodeLabels { node: node.to_string() }));
        let remediations = MetricFamily::<RemediationLabels, Counter>::default();
        registry.register("remediations", "Reboots and reimages this agent carried out, by outcome", remediations.clone());
        AgentMetrics {
            node: node.to_string(),
            registry,
            probe_runs,
            probe_health,
            probe_seconds,
            probes_paused,
            heartbeat,
            publish_failures,
            remediations,
        }
    }

    fn probe(&self, probe: &str, family: Family) -> ProbeLabels {
        ProbeLabels { node: self.node.clone(), probe: probe.to_string(), condition: family.condition_type().to_string() }
    }

    fn probe_health_labels(&self, probe: &str, family: Family, health: Health) -> ProbeHealthLabels {
        let ProbeLabels { node, probe, condition } = self.probe(probe, family);
        ProbeHealthLabels { node, probe, condition, health: health_label(health).to_string() }
    }

    /// One run of `probe`: its raw verdict, how long it took, and what the probe publishes after it.
    pub fn probe_ran(&self, probe: &str, family: Family, raw: &Verdict, took: Duration, published: &Verdict) {
        self.probe_runs.get_or_create(&self.probe_health_labels(probe, family, raw.health)).inc();
        self.probe_seconds.get_or_create(&self.probe(probe, family)).observe(took.as_secs_f64());
        for health in HEALTHS {
            let value = i64::from(health == published.health);
            self.probe_health.get_or_create(&self.probe_health_labels(probe, family, health)).set(value);
        }
    }

    pub fn probe_paused(&self, probe: &str, family: Family) {
        self.probes_paused.get_or_create(&self.probe(probe, family)).inc();
    }

    /// These conditions (by type) were written with these heartbeat times.
    pub fn conditions_written(&self, heartbeats: &[(String, jiff::Timestamp)]) {
        for (condition, at) in heartbeats {
            let seconds = at.as_millisecond() as f64 / 1000.0;
            let labels = ConditionLabels { node: self.node.clone(), condition: condition.clone() };
            self.heartbeat.get_or_create(&labels).set(seconds);
        }
    }

    pub fn condition_write_failed(&self) {
        self.publish_failures.get_or_create(&NodeLabels { node: self.node.clone() }).inc();
    }

    pub fn remediation_done(&self, step: RemediationStep, outcome: ReportedOutcome) {
        let outcome = match outcome {
            ReportedOutcome::Succeeded => "succeeded",
            ReportedOutcome::Failed => "failed",
        };
        let labels = RemediationLabels { node: self.node.clone(), step: step.as_str().to_string(), outcome: outcome.to_string() };
        self.remediations.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<AgentMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics.encode();
                async move { ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Reason;

    #[test]
    fn a_probe_run_sets_exactly_one_published_health_and_counts_the_raw_one() {
        let metrics = AgentMetrics::new("gpu-007");
        let raw = Verdict::new(Health::Unhealthy, Reason::ToolFailed, "once");
        let published = Verdict::new(Health::Healthy, Reason::ToolFailed, "threshold not reached");
        metrics.probe_ran("nvml", Family::Gpu, &raw, Duration::from_millis(30), &published);
        let text = metrics.encode();
        let line = |health: &str, value: &str| {
            format!("nodemedic_agent_probe_health{{node=\"gpu-007\",probe=\"nvml\",condition=\"GPUProblem\",health=\"{health}\"}} {value}")
        };
        assert!(text.contains(&line("healthy", "1")), "{text}");
        assert!(text.contains(&line("unhealthy", "0")), "{text}");
        assert!(text.contains(&line("unknown", "0")), "{text}");
        assert!(
            text.contains(
                "nodemedic_agent_probe_runs_total{node=\"gpu-007\",probe=\"nvml\",condition=\"GPUProblem\",health=\"unhealthy\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("nodemedic_agent_info{node=\"gpu-007\",version=\""), "{text}");
        assert!(text.contains("nodemedic_agent_condition_write_failures_total{node=\"gpu-007\"} 0"), "{text}");
    }
}
