//! `ethtool <if>` (settings), `ethtool -i` (driver) and `ethtool -S` (statistics) text.

use serde::Serialize;
use thiserror::Error;

use crate::verdict::{Reason, Verdict};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EthtoolError {
    #[error("ethtool settings output has no 'Settings for <if>:' line")]
    NoSettings,
    #[error("ethtool -i output has no 'driver:' line")]
    NoDriver,
    #[error("ethtool -S output has no counters")]
    NoCounters,
    #[error("ethtool -S line {line} is not '<name>: <number>': {text:?}")]
    BadCounter { line: usize, text: String },
}

/// Key/value lines, skipping a leading "# ethtool …" command echo.
fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkSettings {
    pub interface: String,
    /// Mb/s; None when the driver says "Unknown!".
    pub speed_mbps: Option<u64>,
    pub link_detected: Option<bool>,
    /// Lines like "netlink error: Operation not permitted".
    pub warnings: Vec<String>,
}

pub fn parse_settings(text: &str) -> Result<LinkSettings, EthtoolError> {
    let interface = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Settings for ").map(|r| r.trim_end_matches(':').to_string()))
        .ok_or(EthtoolError::NoSettings)?;
    let mut settings = LinkSettings { interface, speed_mbps: None, link_detected: None, warnings: Vec::new() };
    for (key, value) in pairs(text) {
        match key {
            "Speed" => settings.speed_mbps = value.strip_suffix("Mb/s").and_then(|n| n.trim().parse().ok()),
            "Link detected" => settings.link_detected = Some(value.eq_ignore_ascii_case("yes")),
            k if k.to_ascii_lowercase().contains("error") => settings.warnings.push(format!("{key}: {value}")),
            _ => {}
        }
    }
    Ok(settings)
}

pub fn settings_verdict(settings: &LinkSettings, min_speed_mbps: Option<u64>) -> Verdict {
    if settings.link_detected == Some(false) {
        return Verdict::unhealthy(Reason::NicLinkDown, format!("{}: no link detected", settings.interface));
    }
    if let (Some(min), Some(speed)) = (min_speed_mbps, settings.speed_mbps)
        && speed < min
    {
        return Verdict::unhealthy(Reason::NicLinkDown, format!("{} runs at {speed} Mb/s, expected at least {min}", settings.interface));
    }
    let speed = settings.speed_mbps.map(|s| format!("{s} Mb/s")).unwrap_or_else(|| "unknown speed".to_string());
    Verdict::healthy(format!("{}: link up, {speed}", settings.interface))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriverInfo {
    pub driver: String,
    pub version: Option<String>,
    pub bus_info: Option<String>,
}

pub fn parse_driver(text: &str) -> Result<DriverInfo, EthtoolError> {
    let mut driver = None;
    let mut version = None;
    let mut bus_info = None;
    for (key, value) in pairs(text) {
        match key {
            "driver" => driver = Some(value.to_string()),
            "version" => version = Some(value.to_string()),
            "bus-info" => bus_info = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(DriverInfo { driver: driver.ok_or(EthtoolError::NoDriver)?, version, bus_info })
}

pub fn driver_verdict(info: &DriverInfo) -> Verdict {
    let version = info.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
    let bus = info.bus_info.as_deref().filter(|b| !b.is_empty()).map(|b| format!(" at {b}")).unwrap_or_default();
    Verdict::healthy(format!("driver {}{version}{bus}", info.driver))
}

/// `ethtool -S` counters in file order.
pub fn parse_statistics(text: &str) -> Result<Vec<(String, u64)>, EthtoolError> {
    let mut counters = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.ends_with("statistics:") || trimmed.starts_with('#') {
            continue;
        }
        let bad = || EthtoolError::BadCounter { line: number + 1, text: trimmed.to_string() };
        let (name, value) = trimmed.split_once(':').ok_or_else(bad)?;
        counters.push((name.trim().to_string(), value.trim().parse::<u64>().map_err(|_| bad())?));
    }
    if counters.is_empty() {
        return Err(EthtoolError::NoCounters);
    }
    Ok(counters)
}

/// Drop counters are reported but only error counters above the bound make the NIC unhealthy.
pub fn statistics_verdict(counters: &[(String, u64)], max_errors: u64) -> Verdict {
    let errors: u64 = counters.iter().filter(|(n, _)| n.contains("error")).map(|(_, v)| *v).sum();
    if errors > max_errors {
        return Verdict::unhealthy(Reason::NicLinkDown, format!("NIC error counters sum to {errors}, bound {max_errors}"));
    }
    let drops: u64 = counters.iter().filter(|(n, _)| n.contains("drop")).map(|(_, v)| *v).sum();
    Verdict::healthy(format!("{} NIC counters, {errors} errors, {drops} drops", counters.len()))
}
