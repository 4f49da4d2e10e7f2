//! InfiniBand / RoCE ports from three sources that all become [`IbPort`]: the sysfs tree
//! (`<root>/<dev>/ports/<n>/{state,phys_state,rate,link_layer,counters/link_downed}`, read from a configurable
//! root so tests use temp dirs), `ibstat` text and `rdma link -j` JSON.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::verdict::{Reason, Verdict, worst_of};

#[derive(Debug, Error)]
pub enum InfinibandError {
    #[error("reading InfiniBand sysfs {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("InfiniBand sysfs {path} has {value:?}, which is not {expected}")]
    BadValue { path: String, value: String, expected: &'static str },
    #[error("ibstat output has no \"CA '<name>'\" section")]
    IbstatNoAdapters,
    #[error("ibstat line {line} sits outside a CA/port section: {text:?}")]
    IbstatOrphanLine { line: usize, text: String },
    #[error("ibstat failed part-way (ibpanic): {0:?}")]
    IbstatPanic(String),
    #[error("rdma link JSON is invalid: {0}")]
    RdmaJson(String),
}

/// One port's state, whichever source it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IbPort {
    pub device: String,
    pub port: u32,
    /// Upper-case state word: ACTIVE, DOWN, INIT, ARMED.
    pub state: String,
    /// Physical state as printed: LinkUp, Polling, Disabled, LINK_UP …
    pub phys_state: String,
    pub rate_gbps: Option<f64>,
    pub link_layer: Option<String>,
    pub link_downed: Option<u64>,
    /// The error counters of [`ERROR_COUNTERS`] this source had, by sysfs name (cumulative since the counters
    /// were last cleared).
    #[serde(default)]
    pub error_counters: Vec<(String, u64)>,
}

/// Port error counters (sysfs `counters/`) whose size or growth means a bad cable, transceiver or port.
pub const ERROR_COUNTERS: &[&str] =
    &["symbol_error", "link_error_recovery", "port_rcv_errors", "local_link_integrity_errors", "excessive_buffer_overrun_errors"];

impl IbPort {
    pub fn name(&self) -> String {
        format!("{}/{}", self.device, self.port)
    }

    pub fn is_active(&self) -> bool {
        self.state.eq_ignore_ascii_case("active")
    }

    pub fn is_link_up(&self) -> bool {
        let squashed: String = self.phys_state.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        squashed.eq_ignore_ascii_case("linkup")
    }
}

fn read_value(path: &Path) -> Result<String, InfinibandError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| InfinibandError::Io { path: path.display().to_string(), source })
}

fn read_optional(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// "4: ACTIVE" → "ACTIVE"; "5: LinkUp" → "LinkUp".
fn state_word(value: &str) -> String {
    value.split_once(':').map(|(_, word)| word).unwrap_or(value).trim().to_string()
}

fn rate_gbps(value: &str) -> Option<f64> {
    value.split_whitespace().next().and_then(|n| n.parse().ok())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, InfinibandError> {
    let entries = std::fs::read_dir(dir).map_err(|source| InfinibandError::Io { path: dir.display().to_string(), source })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

/// Reads every port under a `/sys/class/infiniband`-shaped root.
pub fn read_sysfs(root: &Path) -> Result<Vec<IbPort>, InfinibandError> {
    let mut ports = Vec::new();
    for device_dir in sorted_entries(root)? {
        let Some(device) = device_dir.file_name().map(|n| n.to_string_lossy().to_string()) else { continue };
        let ports_dir = device_dir.join("ports");
        if !ports_dir.is_dir() {
            continue;
        }
        for port_dir in sorted_entries(&ports_dir)? {
            let Some(port_name) = port_dir.file_name().map(|n| n.to_string_lossy().to_string()) else { continue };
            let port: u32 = port_name.parse().map_err(|_| InfinibandError::BadValue {
                path: port_dir.display().to_string(),
                value: port_name.clone(),
                expected: "a port number",
            })?;
            let state = state_word(&read_value(&port_dir.join("state"))?);
            let phys_state = state_word(&read_value(&port_dir.join("phys_state"))?);
            let rate_path = port_dir.join("rate");
            let rate_text = read_value(&rate_path)?;
            let rate = rate_gbps(&rate_text).ok_or(InfinibandError::BadValue {
                path: rate_path.display().to_string(),
                value: rate_text,
                expected: "'<n> Gb/sec …'",
            })?;
            let link_downed_path = port_dir.join("counters").join("link_downed");
            let link_downed = match read_optional(&link_downed_path) {
                Some(text) => Some(text.parse::<u64>().map_err(|_| InfinibandError::BadValue {
                    path: link_downed_path.display().to_string(),
                    value: text.clone(),
                    expected: "a counter",
                })?),
                None => None,
            };
            ports.push(IbPort {
                device: device.clone(),
                port,
                state: state.to_ascii_uppercase(),
                phys_state,
                rate_gbps: Some(rate),
                link_layer: read_optional(&port_dir.join("link_layer")).map(|s| s.lines().next().unwrap_or("").to_string()),
                link_downed,
                error_counters: read_error_counters(&port_dir.join("counters"))?,
            });
        }
    }
    Ok(ports)
}

fn read_error_counters(dir: &Path) -> Result<Vec<(String, u64)>, InfinibandError> {
    let mut counters = Vec::new();
    for name in ERROR_COUNTERS {
        let path = dir.join(name);
        if let Some(text) = read_optional(&path) {
            let value = text.parse::<u64>().map_err(|_| InfinibandError::BadValue {
                path: path.display().to_string(),
                value: text.clone(),
                expected: "a counter",
            })?;
            counters.push(((*name).to_string(), value));
        }
    }
    Ok(counters)
}

/// Parses `ibstat` text.
pub fn parse_ibstat(text: &str) -> Result<Vec<IbPort>, InfinibandError> {
    let mut ports: Vec<IbPort> = Vec::new();
    let mut device: Option<String> = None;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        // ibstat stops with "ibpanic: … stat of IB device 'mlx5_1' failed" when a device vanished mid-listing:
        // the ports it printed before are not the whole fabric.
        if line.starts_with("ibpanic") || line.contains("ibpanic:") {
            return Err(InfinibandError::IbstatPanic(line.chars().take(200).collect()));
        }
        if let Some(rest) = line.strip_prefix("CA '") {
            device = Some(rest.trim_end_matches('\'').to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("Port ")
            && let Some(n) = rest.strip_suffix(':')
            && let Ok(port) = n.trim().parse::<u32>()
        {
            let Some(name) = device.clone() else {
                return Err(InfinibandError::IbstatOrphanLine { line: number + 1, text: line.to_string() });
            };
            ports.push(IbPort {
                device: name,
                port,
                state: String::new(),
                phys_state: String::new(),
                rate_gbps: None,
                link_layer: None,
                link_downed: None,
                error_counters: Vec::new(),
            });
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let Some(port) = ports.last_mut().filter(|p| Some(&p.device) == device.as_ref()) else { continue };
        match key.trim() {
            "State" => port.state = value.to_ascii_uppercase(),
            "Physical state" => port.phys_state = value.to_string(),
            "Rate" => port.rate_gbps = rate_gbps(value),
            "Link layer" => port.link_layer = Some(value.to_string()),
            _ => {}
        }
    }
    if device.is_none() {
        return Err(InfinibandError::IbstatNoAdapters);
    }
    Ok(ports)
}

#[derive(Debug, Deserialize)]
struct RdmaLink {
    ifname: String,
    port: u32,
    state: String,
    physical_state: String,
}

/// Parses `rdma link -j` (or `rdma -j link show`) JSON.
pub fn parse_rdma_link_json(text: &str) -> Result<Vec<IbPort>, InfinibandError> {
    let links: Vec<RdmaLink> = nodemedic_core::input::from_json_str(text).map_err(|e| InfinibandError::RdmaJson(e.to_string()))?;
    Ok(links
        .into_iter()
        .map(|l| IbPort {
            device: l.ifname,
            port: l.port,
            state: l.state.to_ascii_uppercase(),
            phys_state: l.physical_state,
            rate_gbps: None,
            link_layer: None,
            link_downed: None,
            error_counters: Vec::new(),
        })
        .collect())
}

/// What the node's fabric should look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IbExpectations {
    /// How many ports must be present.
    pub expected_ports: Option<u32>,
    /// The slowest acceptable rate in Gb/s.
    pub min_rate_gbps: Option<f64>,
    /// Only these devices are checked (all when empty).
    pub devices: Vec<String>,
    /// A cumulative `link_downed` above this is a flapping link even without a previous reading (None: no bound).
    pub max_link_downed: Option<u64>,
    /// A cumulative error counter ([`ERROR_COUNTERS`]) above this is unhealthy (None: no bound).
    pub max_error_count: Option<u64>,
    /// An error counter that grew by more than this since the previous reading is unhealthy (None: no bound).
    pub max_error_growth: Option<u64>,
}

/// Default bounds. A handful of link-downs and errors from link training at boot are normal (the recorded
/// healthy H100 ports show 14 and 15); these are an order of magnitude or more above that.
pub const DEFAULT_MAX_LINK_DOWNED: u64 = 50;
pub const DEFAULT_MAX_ERROR_COUNT: u64 = 1000;
pub const DEFAULT_MAX_ERROR_GROWTH: u64 = 10;

impl Default for IbExpectations {
    fn default() -> Self {
        IbExpectations {
            expected_ports: None,
            min_rate_gbps: None,
            devices: Vec::new(),
            max_link_downed: Some(DEFAULT_MAX_LINK_DOWNED),
            max_error_count: Some(DEFAULT_MAX_ERROR_COUNT),
            max_error_growth: Some(DEFAULT_MAX_ERROR_GROWTH),
        }
    }
}

/// Findings from a port's cumulative counters, and from their growth since `earlier` (the same port's last
/// reading).
fn counter_findings(port: &IbPort, earlier: Option<&IbPort>, expect: &IbExpectations, findings: &mut Vec<Verdict>) {
    let name = port.name();
    if let (Some(before), Some(now)) = (earlier.and_then(|p| p.link_downed), port.link_downed)
        && now > before
    {
        findings
            .push(Verdict::unhealthy(Reason::IbLinkFlapping, format!("{name} link went down {} times since the last check", now - before)));
    } else if let (Some(bound), Some(now)) = (expect.max_link_downed, port.link_downed)
        && now > bound
    {
        findings.push(Verdict::unhealthy(Reason::IbLinkFlapping, format!("{name} link went down {now} times (bound {bound})")));
    }
    for (counter, now) in &port.error_counters {
        let before = earlier.and_then(|p| p.error_counters.iter().find(|(c, _)| c == counter)).map(|(_, v)| *v);
        let grew = before.map(|b| now.saturating_sub(b));
        if let (Some(growth), Some(bound)) = (grew, expect.max_error_growth)
            && growth > bound
        {
            findings.push(Verdict::unhealthy(
                Reason::IbPortErrors,
                format!("{name} {counter} grew by {growth} since the last check (bound {bound})"),
            ));
        } else if let Some(bound) = expect.max_error_count
            && *now > bound
        {
            findings.push(Verdict::unhealthy(Reason::IbPortErrors, format!("{name} {counter} is {now} (bound {bound})")));
        }
    }
}

/// The fabric verdict; `previous` is the last reading, used to spot link-down counter growth (flaps).
pub fn verdict(ports: &[IbPort], expect: &IbExpectations, previous: Option<&[IbPort]>) -> Verdict {
    let selected: Vec<&IbPort> = ports.iter().filter(|p| expect.devices.is_empty() || expect.devices.contains(&p.device)).collect();
    let mut findings = Vec::new();
    if let Some(expected) = expect.expected_ports {
        let seen = u32::try_from(selected.len()).unwrap_or(u32::MAX);
        if seen < expected {
            findings
                .push(Verdict::unhealthy(Reason::IbDeviceMissing, format!("{seen} InfiniBand/RoCE ports present, expected {expected}")));
        }
    }
    for port in &selected {
        if !port.is_active() || !port.is_link_up() {
            findings.push(Verdict::unhealthy(
                Reason::IbPortDown,
                format!("{} is {} / {} (want ACTIVE / LinkUp)", port.name(), port.state, port.phys_state),
            ));
            continue;
        }
        if let (Some(min), Some(rate)) = (expect.min_rate_gbps, port.rate_gbps)
            && rate < min
        {
            findings.push(Verdict::unhealthy(Reason::IbRateLow, format!("{} runs at {rate} Gb/s, expected at least {min}", port.name())));
        }
        let earlier = previous.and_then(|prev| prev.iter().find(|p| p.device == port.device && p.port == port.port));
        counter_findings(port, earlier, expect, &mut findings);
    }
    worst_of(findings, format!("{} InfiniBand/RoCE ports ACTIVE/LinkUp", selected.len()))
}
