//! `nodemedic-agent bench`: the footprint of probe cycles. Runs every configured probe `cycles` times, the way
//! the agent does (one threshold machine per probe, the catalog loaded once), and reports peak resident memory
//! (`VmHWM` in /proc/self/status) and CPU per cycle, the agent's own and its tools' (child processes) apart.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::Catalog;
use crate::check::{configured_probes, run_probe, search_path};
use crate::config::AgentConfig;
use crate::probe::ProbeState;

/// What a benchmark run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub cycles: u32,
    pub probes: Vec<String>,
    /// Peak resident memory of the agent process (not its tools), KiB.
    pub peak_rss_kib: Option<u64>,
    /// Resident memory after the last cycle, KiB.
    pub rss_kib: Option<u64>,
    /// Of that, anonymous memory (heap, stacks), KiB.
    pub rss_anon_kib: Option<u64>,
    /// Of that, file-backed pages (the binary's and libc's code, shared with the page cache), KiB.
    pub rss_file_kib: Option<u64>,
    pub wall_ms_per_cycle: f64,
    /// User + system CPU of the agent process per cycle.
    pub agent_cpu_ms_per_cycle: f64,
    /// User + system CPU of the tools it ran (waited-for children) per cycle.
    pub tools_cpu_ms_per_cycle: f64,
}

/// A `Vm…:` field of /proc/self/status in KiB.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu(who: nix::sys::resource::UsageWho) -> Duration {
    let Ok(usage) = nix::sys::resource::getrusage(who) else {
        return Duration::ZERO;
    };
    let part = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0)) + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    part(usage.user_time()) + part(usage.system_time())
}

/// Runs `cycles` probe cycles.
pub fn run(config: &AgentConfig, catalog: &Catalog, cycles: u32) -> BenchReport {
    let probes = configured_probes(config);
    let search = search_path(config);
    let mut states: Vec<ProbeState> = probes.iter().map(|p| ProbeState::new(config.schedule_for(p))).collect();
    let (agent_before, tools_before) = (cpu(nix::sys::resource::UsageWho::RUSAGE_SELF), cpu(nix::sys::resource::UsageWho::RUSAGE_CHILDREN));
    let started = Instant::now();
    for _ in 0..cycles {
        for (probe, state) in probes.iter().zip(states.iter_mut()) {
            if let Some(verdict) = run_probe(config, catalog, &search, probe) {
                state.record(verdict, Instant::now());
            }
        }
    }
    let wall = started.elapsed();
    let agent = cpu(nix::sys::resource::UsageWho::RUSAGE_SELF).saturating_sub(agent_before);
    let tools = cpu(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).saturating_sub(tools_before);
    let per_cycle = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(cycles.max(1));
    BenchReport {
        cycles,
        probes,
        peak_rss_kib: proc_status_kib("VmHWM"),
        rss_kib: proc_status_kib("VmRSS"),
        rss_anon_kib: proc_status_kib("RssAnon"),
        rss_file_kib: proc_status_kib("RssFile"),
        wall_ms_per_cycle: per_cycle(wall),
        agent_cpu_ms_per_cycle: per_cycle(agent),
        tools_cpu_ms_per_cycle: per_cycle(tools),
    }
}

/// The report as a few lines of text.
pub fn render(report: &BenchReport) -> String {
    let kib = |v: Option<u64>| v.map(|k| format!("{k} KiB ({:.2} MiB)", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".to_string());
    format!(
        "cycles: {}\nprobes: {}\npeak RSS (VmHWM): {}\nRSS after the last cycle: {} (anonymous {}, file-backed {})\nwall per cycle: {:.2} ms\nagent CPU per cycle: {:.3} ms\ntools CPU per cycle: {:.3} ms\n",
        report.cycles,
        report.probes.join(", "),
        kib(report.peak_rss_kib),
        kib(report.rss_kib),
        kib(report.rss_anon_kib),
        kib(report.rss_file_kib),
        report.wall_ms_per_cycle,
        report.agent_cpu_ms_per_cycle,
        report.tools_cpu_ms_per_cycle
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_of_the_disk_probe_reports_memory_and_cpu() -> Result<(), crate::catalog::CatalogError> {
        let mut config = AgentConfig::default();
        config.probes.disk = Some(Default::default());
        let report = run(&config, &Catalog::embedded()?, 3);
        assert_eq!(report.probes, ["disk"]);
        assert!(report.peak_rss_kib.is_some_and(|k| k > 0));
        assert!(report.wall_ms_per_cycle >= 0.0);
        Ok(())
    }
}
