//! `nvidia-smi` views besides the full query: `nvlink -s` / `c2c -s` link status and the default table. Their
//! items are re-exported from [`crate::parse::nvidia_smi`], where callers name them.

use serde::Serialize;

use super::nvidia_smi::NvidiaSmiError;
use crate::verdict::{Reason, Verdict, worst_of};

/// One GPU in `nvidia-smi nvlink -s` / `c2c -s` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkStatusGpu {
    pub gpu: String,
    /// (link number, speed in GB/s; None when inactive).
    pub links: Vec<(u32, Option<f64>)>,
    /// The GPU said it has no such links.
    pub unsupported: bool,
}

/// Parses `nvidia-smi nvlink -s` (or `c2c -s`) text.
pub fn parse_link_status(text: &str) -> Result<Vec<LinkStatusGpu>, NvidiaSmiError> {
    let mut gpus: Vec<LinkStatusGpu> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("GPU ") && !line.contains("Link ") {
            let name = line.split(" (UUID").next().unwrap_or(line).to_string();
            gpus.push(LinkStatusGpu { gpu: name, links: Vec::new(), unsupported: false });
            continue;
        }
        let Some(gpu) = gpus.last_mut() else { continue };
        if let Some(at) = line.find("Link ") {
            let rest = &line[at + 5..];
            let (number_text, speed_text) =
                rest.split_once(':').ok_or_else(|| NvidiaSmiError::BadLinkLine { line: number + 1, text: line.to_string() })?;
            let link: u32 =
                number_text.trim().parse().map_err(|_| NvidiaSmiError::BadLinkLine { line: number + 1, text: line.to_string() })?;
            let speed_text = speed_text.trim();
            let speed = if speed_text.to_ascii_lowercase().contains("inactive") {
                None
            } else {
                let value = speed_text.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
                Some(value.ok_or_else(|| NvidiaSmiError::BadLinkLine { line: number + 1, text: line.to_string() })?)
            };
            gpu.links.push((link, speed));
        } else if line.to_ascii_lowercase().contains("not have or support") {
            gpu.unsupported = true;
        }
    }
    if gpus.is_empty() {
        return Err(NvidiaSmiError::NoLinkGpus);
    }
    Ok(gpus)
}

/// Inactive links are unhealthy; GPUs without NVLink are fine.
pub fn link_status_verdict(gpus: &[LinkStatusGpu]) -> Verdict {
    let mut inactive = Vec::new();
    let mut active = 0;
    for gpu in gpus {
        for (link, speed) in &gpu.links {
            match speed {
                Some(_) => active += 1,
                None => inactive.push(format!("{} link {link}", gpu.gpu)),
            }
        }
    }
    if !inactive.is_empty() {
        return Verdict::unhealthy(Reason::NvlinkInactive, format!("{} inactive: {}", inactive.len(), inactive.join(", ")));
    }
    Verdict::healthy(format!("{active} links active on {} GPUs", gpus.len()))
}

/// One GPU row of the default `nvidia-smi` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableGpu {
    pub index: u32,
    pub bus_id: String,
    pub volatile_uncorrectable_ecc: String,
}

/// Parses the default `nvidia-smi` table (GPU rows only).
pub fn parse_table(text: &str) -> Result<Vec<TableGpu>, NvidiaSmiError> {
    let mut gpus = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let first = cells[1].split_whitespace().next().unwrap_or("");
        let Ok(index) = first.parse::<u32>() else { continue };
        let bus_id = cells[2].split_whitespace().next().unwrap_or("");
        if !bus_id.contains(':') {
            continue;
        }
        gpus.push(TableGpu { index, bus_id: bus_id.to_string(), volatile_uncorrectable_ecc: cells[3].to_string() });
    }
    if gpus.is_empty() {
        return Err(NvidiaSmiError::NoTableRows);
    }
    Ok(gpus)
}

pub fn table_verdict(gpus: &[TableGpu], expected_gpus: Option<u32>) -> Verdict {
    let mut findings = Vec::new();
    let seen = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
    if let Some(expected) = expected_gpus
        && expected != seen
    {
        findings.push(Verdict::unhealthy(Reason::GpuCountMismatch, format!("nvidia-smi table shows {seen} GPUs, expected {expected}")));
    }
    for gpu in gpus {
        let ecc = gpu.volatile_uncorrectable_ecc.as_str();
        if ecc.contains("ERR!") {
            findings.push(Verdict::unhealthy(Reason::GpuLost, format!("GPU {} ({}) shows ERR!", gpu.index, gpu.bus_id)));
        } else if let Ok(n) = ecc.parse::<u64>()
            && n > 0
        {
            findings.push(Verdict::unhealthy(
                Reason::UncorrectableEcc,
                format!("GPU {} ({}) has {n} uncorrectable volatile ECC errors", gpu.index, gpu.bus_id),
            ));
        }
    }
    worst_of(findings, format!("{seen} NVIDIA GPUs in the table, no ECC errors"))
}
