//! One pass over every configured probe: what `nodemedic-agent check --once` prints.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::{Catalog, CatalogError, FaultTracker};
use crate::config::{AgentConfig, IbSource};
use crate::exec::SearchPath;
use crate::gpu_count::ExpectedGpus;
use crate::kernel_follow::KernelLogFollower;
use crate::nvml::NvmlHandle;
use crate::parse::infiniband::IbPort;
use crate::plugin::run_plugin;
use crate::tools;
use crate::verdict::Verdict;

/// One probe's result in a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    pub probe: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub elapsed_ms: u64,
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

/// The names of the configured probes, in the fixed order `check --once` runs them (`plugin/<name>` last).
pub fn configured_probes(config: &AgentConfig) -> Vec<String> {
    let probes = &config.probes;
    let present = [
        ("nvml", probes.nvml.is_some()),
        ("nvidia-smi", probes.nvidia_smi.is_some()),
        ("nvlink", probes.nvlink.is_some()),
        ("rocm-smi", probes.rocm_smi.is_some()),
        ("amd-smi", probes.amd_smi.is_some()),
        ("rocminfo", probes.rocminfo.is_some()),
        ("dcgmi", probes.dcgmi_health.is_some()),
        ("kernel-log", probes.kernel_log.is_some()),
        ("infiniband", probes.infiniband.is_some()),
        ("ethtool", probes.ethtool.is_some()),
        ("ping", probes.ping.is_some()),
        ("iperf3", probes.iperf3.is_some()),
        ("speedtest", probes.speedtest.is_some()),
        ("disk", probes.disk.is_some()),
    ];
    present
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name.to_string())
        .chain(probes.plugins.iter().map(|p| format!("plugin/{}", p.name)))
        .collect()
}

/// The search path tools are looked up on: the config's, or the agent's own PATH.
pub fn search_path(config: &AgentConfig) -> SearchPath {
    config.search_path.as_ref().map(|p| SearchPath(p.into())).unwrap_or_else(SearchPath::from_environment)
}

/// What probes keep between runs for the agent's lifetime: the last InfiniBand reading, so counter growth
/// between two runs (a flapping link, errors piling up) is seen; the NVML library handle; and the kernel-log
/// follower with its fault history.
#[derive(Default)]
pub struct ProbeMemory {
    infiniband: Mutex<Option<Vec<IbPort>>>,
    pub nvml: NvmlHandle,
    pub kernel_log: Option<KernelLogFollower>,
}

impl std::fmt::Debug for ProbeMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeMemory").field("nvml", &self.nvml).field("kernel_log", &self.kernel_log.is_some()).finish()
    }
}

impl ProbeMemory {
    fn infiniband(&self, read: impl FnOnce(Option<&[IbPort]>) -> (Verdict, Vec<IbPort>)) -> Verdict {
        let mut last = self.infiniband.lock().unwrap_or_else(PoisonError::into_inner);
        let (verdict, ports) = read(last.as_deref());
        // A failed read keeps the older reading to compare the next one with.
        if !ports.is_empty() {
            *last = Some(ports);
        }
        verdict
    }
}

/// Runs one probe by the name [`configured_probes`] gives it, with nothing remembered from earlier runs (a
/// one-off `check`: the kernel log is read whole, NVML loaded for this run); None when no such probe is configured.
pub fn run_probe(config: &AgentConfig, catalog: &Catalog, search: &SearchPath, name: &str) -> Option<Verdict> {
    run_probe_remembering(config, catalog, search, name, &ProbeMemory::default(), ExpectedGpus::configured(config))
}

/// [`run_probe`] comparing with, and updating, what `memory` kept from the previous run, with the GPU counts
/// `expected` for this node.
pub fn run_probe_remembering(
    config: &AgentConfig,
    catalog: &Catalog,
    search: &SearchPath,
    name: &str,
    memory: &ProbeMemory,
    expected: ExpectedGpus,
) -> Option<Verdict> {
    let probes = &config.probes;
    let (nvidia, amd) = (expected.nvidia, expected.amd);
    match name {
        "nvml" => probes.nvml.as_ref().map(|_| memory.nvml.probe(nvidia, config.max_pcie_replays)),
        "nvidia-smi" => probes.nvidia_smi.as_ref().map(|p| tools::nvidia_smi(p, nvidia, config.max_pcie_replays, search)),
        "nvlink" => probes.nvlink.as_ref().map(|p| tools::nvlink(&p.tool(), search)),
        "rocm-smi" => probes.rocm_smi.as_ref().map(|p| tools::rocm_smi(p, amd, search)),
        "amd-smi" => probes.amd_smi.as_ref().map(|p| tools::amd_smi(p, amd, search)),
        "rocminfo" => probes.rocminfo.as_ref().map(|p| tools::rocminfo(&p.tool(), amd, search)),
        "dcgmi" => probes.dcgmi_health.as_ref().map(|p| tools::dcgmi_health(&p.tool(), search)),
        "kernel-log" => probes.kernel_log.as_ref().map(|p| match &memory.kernel_log {
            Some(follower) => follower.verdict(),
            None => {
                let source: PathBuf = p.source.clone();
                tools::kernel_log(&source, catalog, &mut FaultTracker::new(), uptime().unwrap_or(Duration::ZERO))
            }
        }),
        "infiniband" => probes.infiniband.as_ref().map(|p| match p.source {
            IbSource::Sysfs => memory.infiniband(|previous| tools::infiniband(&p.sysfs_root, &p.expectations(), previous)),
            source => tools::infiniband_from_tool(source, &p.tool_for_source(), &p.expectations(), search).0,
        }),
        "ethtool" => probes.ethtool.as_ref().map(|p| tools::ethtool(p, search)),
        "ping" => probes.ping.as_ref().map(|p| tools::ping(p, search)),
        "iperf3" => probes.iperf3.as_ref().map(|p| tools::iperf3(p, search)),
        "speedtest" => probes.speedtest.as_ref().map(|p| tools::speedtest(p, search)),
        "disk" => probes.disk.as_ref().map(tools::disk),
        other => {
            let plugin = other.strip_prefix("plugin/").and_then(|n| probes.plugins.iter().find(|p| p.name == n));
            plugin.map(|p| run_plugin(p, search))
        }
    }
}

/// Runs every configured probe once, in a fixed order.
pub fn run_once(config: &AgentConfig, catalog: &Catalog) -> Vec<ProbeReport> {
    let search = search_path(config);
    configured_probes(config)
        .into_iter()
        .filter_map(|name| {
            let started = Instant::now();
            let verdict = run_probe(config, catalog, &search, &name)?;
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            Some(ProbeReport { probe: name, verdict, elapsed_ms })
        })
        .collect()
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
