//! One pass over every configured probe: what `nodemedic-agent check --once` prints.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::{Catalog, CatalogError, FaultTracker};
use crate::config::AgentConfig;
use crate::exec::SearchPath;
use crate::plugin::run_plugin;
use crate::verdict::Verdict;
use crate::{nvml, tools};

/// One probe's result in a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    pub probe: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub elapsed_ms: u64,
}

fn timed(probe: impl Into<String>, run: impl FnOnce() -> Verdict) -> ProbeReport {
    let started = Instant::now();
    let verdict = run();
    ProbeReport { probe: probe.into(), verdict, elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX) }
}

/// Loads the catalog the config names, or the embedded default.
pub fn load_catalog(config: &AgentConfig) -> Result<Catalog, CatalogError> {
    match &config.catalog_file {
        Some(path) => Catalog::load(path),
        None => Catalog::embedded(),
    }
}

/// Time since boot from /proc/uptime: the clock kmsg records are stamped with, so lines without a stamp count
/// as seen now on the same clock.
pub fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Runs every configured probe once, in a fixed order.
pub fn run_once(config: &AgentConfig, catalog: &Catalog) -> Vec<ProbeReport> {
    let search = config.search_path.as_ref().map(|p| SearchPath(p.into())).unwrap_or_else(SearchPath::from_environment);
    let probes = &config.probes;
    let expected = config.expected_gpus;
    let mut reports = Vec::new();
    if probes.nvml.is_some() {
        reports.push(timed("nvml", || nvml::probe(expected, config.max_pcie_replays)));
    }
    if let Some(probe) = &probes.nvidia_smi {
        reports.push(timed("nvidia-smi", || tools::nvidia_smi(probe, expected, config.max_pcie_replays, &search)));
    }
    if let Some(probe) = &probes.rocm_smi {
        reports.push(timed("rocm-smi", || tools::rocm_smi(probe, expected, &search)));
    }
    if let Some(probe) = &probes.amd_smi {
        reports.push(timed("amd-smi", || tools::amd_smi(probe, expected, &search)));
    }
    if let Some(probe) = &probes.rocminfo {
        reports.push(timed("rocminfo", || tools::rocminfo(&probe.tool(), expected, &search)));
    }
    if let Some(probe) = &probes.dcgmi_health {
        reports.push(timed("dcgmi", || tools::dcgmi_health(&probe.tool(), &search)));
    }
    if let Some(probe) = &probes.kernel_log {
        let source: PathBuf = probe.source.clone();
        reports.push(timed("kernel-log", || {
            let mut tracker = FaultTracker::new();
            tools::kernel_log(&source, catalog, &mut tracker, uptime().unwrap_or(Duration::ZERO))
        }));
    }
    if let Some(probe) = &probes.infiniband {
        reports.push(timed("infiniband", || tools::infiniband(&probe.sysfs_root, &probe.expectations(), None).0));
    }
    if let Some(probe) = &probes.ping {
        reports.push(timed("ping", || tools::ping(probe, &search)));
    }
    if let Some(probe) = &probes.iperf3 {
        reports.push(timed("iperf3", || tools::iperf3(probe, &search)));
    }
    if let Some(probe) = &probes.speedtest {
        reports.push(timed("speedtest", || tools::speedtest(probe, &search)));
    }
    if let Some(probe) = &probes.disk {
        reports.push(timed("disk", || tools::disk(probe)));
    }
    for plugin in &probes.plugins {
        reports.push(timed(format!("plugin/{}", plugin.name), || run_plugin(plugin, &search)));
    }
    reports
}

/// A fixed-width table: probe, health, reason, message.
pub fn render_table(reports: &[ProbeReport]) -> String {
    let headers = ["PROBE", "HEALTH", "REASON", "MESSAGE"];
    let rows: Vec<[String; 4]> = reports
        .iter()
        .map(|r| [r.probe.clone(), format!("{:?}", r.verdict.health), r.verdict.reason.to_string(), r.verdict.message.replace('\n', " ")])
        .collect();
    let width = |column: usize| rows.iter().map(|r| r[column].chars().count()).chain([headers[column].len()]).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2)];
    let mut out = format!(
        "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
        headers[0],
        headers[1],
        headers[2],
        headers[3],
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2]
    );
    for row in &rows {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out
}
