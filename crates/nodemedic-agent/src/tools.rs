//! Tool runners: run a configured tool with its timeout and feed what it printed to the right parser. A tool
//! that is missing, times out or prints nothing useful gives an Unknown verdict (never Unhealthy), except
//! where the failure output itself is evidence (nvidia-smi's "GPU is lost", rocm-smi without cards).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use crate::catalog::{Catalog, FaultTracker};
use crate::config::{
    AmdSmiProbe, DiskProbe, EthtoolProbe, IbSource, Iperf3Probe, NvidiaSmiFormat, NvidiaSmiProbe, PingProbe, RocmSmiFormat, RocmSmiProbe,
    SpeedtestProbe, ToolSpec,
};
use crate::exec::{CommandOutput, ExecError, OUTPUT_LIMIT_BYTES, SearchPath, run_with_timeout};
use crate::parse::{amd, dcgmi, disk, ethtool, infiniband, kernel, netperf, nvidia_smi};
use crate::probe::format_duration;
use crate::verdict::{Health, Reason, Verdict, worst_of};

fn first_line(text: &str) -> &str {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output")
}

/// The line of a failed tool's output that says what went wrong: the first line naming an error or failure
/// (stderr before stdout), else the first line with words in it, so a JSON error report is quoted by its
/// message and not by its opening `{`.
pub fn what_it_said(output: &CommandOutput) -> String {
    let lines = || output.stderr.lines().chain(output.stdout.lines()).map(str::trim);
    let says_error = |line: &&str| {
        let lower = line.to_ascii_lowercase();
        ["error", "fail", "unable", "cannot", "not found", "not supported", "invalid"].iter().any(|w| lower.contains(w))
    };
    let has_words = |line: &&str| line.chars().filter(|c| c.is_alphanumeric()).count() >= 3;
    let line = lines().find(says_error).or_else(|| lines().find(has_words)).unwrap_or("no output");
    line.trim_matches(|c: char| c == ',' || c.is_whitespace()).chars().take(200).collect()
}

/// Texts a tool prints when it does not know the requested output format or option.
const UNSUPPORTED_FORMAT_MARKERS: &[&str] = &[
    "not supported",
    "is not a valid field to query",
    "invalid combination of input arguments",
    "unrecognized option",
    "unknown option",
    "invalid option",
];

fn says_unsupported_format(output: &CommandOutput) -> bool {
    let lower = format!("{}\n{}", output.stdout, output.stderr).to_ascii_lowercase();
    UNSUPPORTED_FORMAT_MARKERS.iter().any(|m| lower.contains(m))
}

/// Runs a tool; Err carries the Unknown verdict for a tool that could not give output.
pub fn run_tool(name: &str, tool: &ToolSpec, search: &SearchPath) -> Result<CommandOutput, Verdict> {
    match run_with_timeout(&tool.path, &tool.args, tool.timeout.0, search) {
        Ok(output) if output.timed_out => {
            Err(Verdict::unknown(Reason::ToolTimedOut, format!("{name} did not finish within {}", format_duration(tool.timeout.0))))
        }
        // Past the limit the output is not whole: no verdict read from it can say the node is healthy.
        Ok(output) if output.stdout_cut => Err(Verdict::unknown(
            Reason::OutputIncomplete,
            format!("{name} printed more than {} MiB; its output was cut there", OUTPUT_LIMIT_BYTES / (1024 * 1024)),
        )),
        Ok(output) => Ok(output),
        Err(ExecError::NotFound { program }) => Err(Verdict::unknown(Reason::ToolMissing, format!("{name}: {program} not found"))),
        Err(other) => Err(Verdict::unknown(Reason::ToolFailed, format!("{name}: {other}"))),
    }
}

/// The usual fallback when a tool's output could not be parsed.
fn unparseable(name: &str, output: &CommandOutput, error: &dyn std::fmt::Display) -> Verdict {
    if says_unsupported_format(output) {
        return Verdict::unknown(Reason::UnsupportedFormat, format!("{name}: unsupported format: {}", what_it_said(output)));
    }
    match output.exit_code {
        Some(0) => Verdict::unknown(Reason::OutputUnparseable, format!("{name}: {error}")),
        code => {
            let code = code.map(|c| c.to_string()).unwrap_or_else(|| "signal".to_string());
            Verdict::unknown(Reason::ToolFailed, format!("{name} exited {code}: {}", what_it_said(output)))
        }
    }
}

pub fn nvidia_smi(probe: &NvidiaSmiProbe, expected_gpus: Option<u32>, max_pcie_replays: u64, search: &SearchPath) -> Verdict {
    let output = match run_tool("nvidia-smi", &probe.tool(), search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    if probe.format == NvidiaSmiFormat::Table {
        return match nvidia_smi::parse_table(&output.stdout) {
            Ok(gpus) => nvidia_smi::table_verdict(&gpus, expected_gpus),
            Err(error) => match nvidia_smi::failure_verdict(&format!("{}\n{}", output.stdout, output.stderr), expected_gpus) {
                failed if failed.reason == Reason::ToolFailed => unparseable("nvidia-smi", &output, &error),
                failed => failed,
            },
        };
    }
    let thresholds = nvidia_smi::NvidiaThresholds { expected_gpus, max_pcie_replays };
    let parsed = match probe.format {
        NvidiaSmiFormat::Xml => nvidia_smi::parse_xml(&output.stdout),
        NvidiaSmiFormat::QueryText => nvidia_smi::parse_query_text(&output.stdout),
        // (Table returned above.)
        NvidiaSmiFormat::Csv | NvidiaSmiFormat::Table => nvidia_smi::parse_query_csv(&output.stdout),
    };
    match parsed {
        Ok(report) if output.exit_code == Some(0) => nvidia_smi::verdict(&report, &thresholds),
        Ok(report) => {
            let verdict = nvidia_smi::verdict(&report, &thresholds);
            if verdict.health == Health::Unhealthy {
                return verdict;
            }
            let failed = nvidia_smi::failure_verdict(&format!("{}\n{}", output.stdout, output.stderr), expected_gpus);
            if failed.reason == Reason::ToolFailed { unparseable("nvidia-smi", &output, &"non-zero exit") } else { failed }
        }
        Err(error) => {
            let verdict = nvidia_smi::failure_verdict(&format!("{}\n{}", output.stdout, output.stderr), expected_gpus);
            if verdict.reason == Reason::ToolFailed { unparseable("nvidia-smi", &output, &error) } else { verdict }
        }
    }
}

/// `nvidia-smi nvlink -s` / `c2c -s`: an inactive link is unhealthy; GPUs without links are fine.
pub fn nvlink(tool: &ToolSpec, search: &SearchPath) -> Verdict {
    let output = match run_tool("nvidia-smi nvlink", tool, search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    match nvidia_smi::parse_link_status(&output.stdout) {
        Ok(gpus) if output.exit_code == Some(0) => nvidia_smi::link_status_verdict(&gpus),
        Ok(_) => unparseable("nvidia-smi nvlink", &output, &"non-zero exit"),
        Err(error) => match nvidia_smi::failure_verdict(&format!("{}\n{}", output.stdout, output.stderr), None) {
            lost if lost.reason == Reason::GpuLost => lost,
            _ => unparseable("nvidia-smi nvlink", &output, &error),
        },
    }
}

pub fn rocm_smi(probe: &RocmSmiProbe, expected_gpus: Option<u32>, search: &SearchPath) -> Verdict {
    let output = match run_tool("rocm-smi", &probe.tool(), search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    if probe.format == RocmSmiFormat::Text {
        return match amd::parse_rocm_smi_text(&output.stdout) {
            Ok(parsed) => amd::rocm_smi_text_verdict(&parsed, expected_gpus),
            Err(error) => unparseable("rocm-smi", &output, &error),
        };
    }
    let expect = amd::AmdExpectations { expected_gpus, required_metrics: probe.required_metrics.clone() };
    match amd::parse_rocm_smi_json(&output.stdout) {
        Ok(cards) => amd::rocm_smi_verdict(&cards, &expect),
        Err(error) => amd::amd_failure_verdict(&error, expected_gpus),
    }
}

pub fn amd_smi(probe: &AmdSmiProbe, expected_gpus: Option<u32>, search: &SearchPath) -> Verdict {
    let output = match run_tool("amd-smi", &probe.tool(), search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    let text = output.stdout.trim_start_matches('\u{feff}').trim_start();
    let parsed = if text.starts_with('[') || text.starts_with('{') { amd::parse_amd_smi_json(text) } else { amd::parse_amd_smi_csv(text) };
    let expect = amd::AmdExpectations { expected_gpus, required_metrics: probe.required_metrics.clone() };
    match parsed {
        Ok(gpus) if output.exit_code == Some(0) => amd::amd_smi_verdict(&gpus, &expect),
        _ if format!("{}{}", output.stdout, output.stderr).to_ascii_lowercase().replace('_', " ").contains("driver not loaded") => {
            amd::amd_failure_verdict(
                &amd::AmdError::AmdSmiDriverNotLoaded { first_line: first_line(&output.stdout).to_string() },
                expected_gpus,
            )
        }
        Ok(_) => unparseable("amd-smi", &output, &"non-zero exit"),
        Err(error) => unparseable("amd-smi", &output, &error),
    }
}

pub fn rocminfo(tool: &ToolSpec, expected_gpus: Option<u32>, search: &SearchPath) -> Verdict {
    let output = match run_tool("rocminfo", tool, search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    match amd::parse_rocminfo(&output.stdout) {
        Ok(agents) => amd::rocminfo_verdict(&agents, expected_gpus),
        Err(error) => {
            let lower = format!("{}{}", output.stdout, output.stderr).to_ascii_lowercase();
            if lower.contains("not loaded") || lower.contains("hsa_status_error") {
                amd::amd_failure_verdict(&error, expected_gpus)
            } else {
                unparseable("rocminfo", &output, &error)
            }
        }
    }
}

pub fn dcgmi_health(tool: &ToolSpec, search: &SearchPath) -> Verdict {
    let output = match run_tool("dcgmi", tool, search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    if tool.args.iter().any(|a| a == "diag") {
        return match dcgmi::parse_diag(&output.stdout) {
            Ok(results) => dcgmi::diag_verdict(&results),
            Err(error) => unparseable("dcgmi diag", &output, &error),
        };
    }
    match dcgmi::parse_health(&output.stdout) {
        Ok(report) => dcgmi::health_verdict(&report),
        Err(error) => unparseable("dcgmi health", &output, &error),
    }
}

pub fn iperf3(probe: &Iperf3Probe, search: &SearchPath) -> Verdict {
    let tool = ToolSpec {
        path: probe.path.clone(),
        args: vec!["-c".to_string(), probe.peer.clone(), "-J".to_string(), "-t".to_string(), probe.seconds.to_string()],
        timeout: probe.timeout,
    };
    let output = match run_tool("iperf3", &tool, search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    match netperf::parse_iperf3(&output.stdout) {
        Ok(result) => netperf::iperf3_verdict(&result, probe.min_gbits_per_second * 1e9),
        Err(error) => unparseable("iperf3", &output, &error),
    }
}

pub fn ping(probe: &PingProbe, search: &SearchPath) -> Verdict {
    let tool = ToolSpec {
        path: probe.path.clone(),
        args: vec!["-c".to_string(), probe.count.to_string(), probe.peer.clone()],
        timeout: probe.timeout,
    };
    let output = match run_tool("ping", &tool, search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    match netperf::parse_ping(&output.stdout) {
        Ok(summary) => netperf::ping_verdict(&summary, probe.max_loss_percent, probe.max_avg_rtt_ms),
        Err(error) => unparseable("ping", &output, &error),
    }
}

pub fn speedtest(probe: &SpeedtestProbe, search: &SearchPath) -> Verdict {
    let output = match run_tool("speedtest", &probe.tool(), search) {
        Ok(output) => output,
        Err(verdict) => return verdict,
    };
    // The CLI writes error log lines to stderr.
    let text = if output.stdout.trim().is_empty() { &output.stderr } else { &output.stdout };
    match netperf::parse_speedtest(text) {
        Ok(result) => netperf::speedtest_verdict(&result, probe.min_download_mbits_per_second * 1e6),
        Err(error) => unparseable("speedtest", &output, &error),
    }
}

pub fn infiniband(
    root: &Path,
    expect: &infiniband::IbExpectations,
    previous: Option<&[infiniband::IbPort]>,
) -> (Verdict, Vec<infiniband::IbPort>) {
    match infiniband::read_sysfs(root) {
        Ok(ports) => (infiniband::verdict(&ports, expect, previous), ports),
        Err(infiniband::InfinibandError::Io { path, source })
            if source.kind() == std::io::ErrorKind::NotFound && path == root.display().to_string() =>
        {
            let verdict = if expect.expected_ports.unwrap_or(0) > 0 {
                Verdict::unhealthy(Reason::IbDeviceMissing, format!("{path} does not exist: no InfiniBand/RoCE devices"))
            } else {
                Verdict::healthy(format!("{path} does not exist and no ports are expected"))
            };
            (verdict, Vec::new())
        }
        Err(error) => (Verdict::unknown(Reason::OutputUnparseable, error.to_string()), Vec::new()),
    }
}

/// The InfiniBand verdict from `ibstat` text or `rdma link -j` JSON instead of sysfs (no counters there, so
/// no flap or error-counter findings).
pub fn infiniband_from_tool(
    source: IbSource,
    tool: &ToolSpec,
    expect: &infiniband::IbExpectations,
    search: &SearchPath,
) -> (Verdict, Vec<infiniband::IbPort>) {
    let name = match source {
        IbSource::Ibstat => "ibstat",
        IbSource::RdmaLink | IbSource::Sysfs => "rdma link",
    };
    let output = match run_tool(name, tool, search) {
        Ok(output) => output,
        Err(verdict) => return (verdict, Vec::new()),
    };
    let parsed = match source {
        IbSource::Ibstat => infiniband::parse_ibstat(&output.stdout),
        IbSource::RdmaLink | IbSource::Sysfs => infiniband::parse_rdma_link_json(&output.stdout),
    };
    match parsed {
        Ok(ports) if output.exit_code == Some(0) => (infiniband::verdict(&ports, expect, None), ports),
        Ok(_) => (unparseable(name, &output, &"non-zero exit"), Vec::new()),
        Err(error) => (unparseable(name, &output, &error), Vec::new()),
    }
}

/// `ethtool <if>` (and `ethtool -S <if>` when an error bound is set) for every configured interface.
pub fn ethtool(probe: &EthtoolProbe, search: &SearchPath) -> Verdict {
    let run = |args: Vec<String>| {
        let tool = ToolSpec { path: probe.path.clone(), args, timeout: probe.timeout };
        run_tool("ethtool", &tool, search)
    };
    let mut findings = Vec::new();
    for interface in &probe.interfaces {
        findings.push(match run(vec![interface.clone()]) {
            Ok(output) => match ethtool::parse_settings(&output.stdout) {
                Ok(settings) => ethtool::settings_verdict(&settings, probe.min_speed_mbps),
                Err(error) => unparseable("ethtool", &output, &error),
            },
            Err(verdict) => verdict,
        });
        let Some(max_errors) = probe.max_errors else { continue };
        findings.push(match run(vec!["-S".to_string(), interface.clone()]) {
            Ok(output) => match ethtool::parse_statistics(&output.stdout) {
                Ok(counters) => ethtool::statistics_verdict(&counters, max_errors),
                Err(error) => unparseable("ethtool -S", &output, &error),
            },
            Err(verdict) => verdict,
        });
    }
    worst_of(findings, format!("{} interfaces with link up", probe.interfaces.len()))
}

/// Reads what the kernel log holds right now: /dev/kmsg (or any character device) without blocking, one record
/// per read, until it has nothing more; a regular file in one go.
pub fn read_kernel_log(source: &Path) -> std::io::Result<String> {
    let metadata = std::fs::metadata(source)?;
    if metadata.is_file() {
        // A saved log may hold bytes that are not UTF-8 (a device name, a corrupted record): keep reading past them
        // so a fault logged after one is still seen.
        return std::fs::read(source).map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    }
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(source)?;
    let mut text = String::new();
    let mut record = vec![0u8; 16 * 1024];
    loop {
        match file.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                text.push_str(&String::from_utf8_lossy(&record[..n]));
                if !text.ends_with('\n') {
                    text.push('\n');
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record overwritten while we read: skip it.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPIPE as i32) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(text)
}

pub fn kernel_log(source: &Path, catalog: &Catalog, tracker: &mut FaultTracker, now: Duration) -> Verdict {
    match read_kernel_log(source) {
        Ok(text) => {
            let events = kernel::scan(&text, catalog);
            kernel::verdict(&events, catalog, tracker, now).0
        }
        Err(error) => Verdict::unknown(Reason::ToolFailed, format!("reading {}: {error}", source.display())),
    }
}

/// Read-only and free-space checks for the configured mount points.
pub fn disk(probe: &DiskProbe) -> Verdict {
    let mounts = match std::fs::read_to_string(&probe.mounts_file)
        .map_err(|e| e.to_string())
        .and_then(|t| disk::parse_mounts(&t).map_err(|e| e.to_string()))
    {
        Ok(mounts) => mounts,
        Err(error) => return Verdict::unknown(Reason::OutputUnparseable, format!("{}: {error}", probe.mounts_file.display())),
    };
    let mut findings = vec![disk::read_only_verdict(&mounts, &probe.mounts)];
    for point in &probe.mounts {
        match disk::free_space(Path::new(point)) {
            Ok(space) => findings.push(disk::free_space_verdict(point, &space, probe.min_free_percent)),
            Err(error) => findings.push(Verdict::unknown(Reason::ToolFailed, error.to_string())),
        }
    }
    worst_of(findings, format!("{} filesystems read-write with at least {}% free", probe.mounts.len(), probe.min_free_percent))
}
