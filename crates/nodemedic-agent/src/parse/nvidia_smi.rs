//! `nvidia-smi` outputs: `-q -x` XML (DTD v11 `clocks_throttle_reasons` and v12+ `clocks_event_reasons`),
//! `-q` text (also `-q -d PAGE_RETIREMENT`), `--query-gpu --format=csv`, `nvlink -s` / `c2c -s` text, the default
//! table, and multi-section captures. XML, `-q` text and CSV all become the same [`GpuReport`] (a flat list of
//! normalised `section/field` paths), so one health reading and one verdict serve all three.

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde::Serialize;
use thiserror::Error;

use crate::verdict::{Health, Reason, Verdict, worst_of};

pub use super::nvidia_smi_views::{LinkStatusGpu, TableGpu, link_status_verdict, parse_link_status, parse_table, table_verdict};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NvidiaSmiError {
    #[error("nvidia-smi XML is malformed at byte {position}: {message}")]
    Xml { position: u64, message: String },
    #[error("nvidia-smi XML has no <nvidia_smi_log> root element")]
    NoLogElement,
    #[error("nvidia-smi -q text has no 'Attached GPUs' line and no GPU section")]
    NoQuerySections,
    #[error("nvidia-smi CSV is empty")]
    EmptyCsv,
    #[error("nvidia-smi CSV header names none of index, pci.bus_id, uuid, name, count, timestamp: {0:?}")]
    NotCsvHeader(String),
    #[error("nvidia-smi CSV row {row} has {found} fields but the header has {expected}")]
    CsvWidth { row: usize, found: usize, expected: usize },
    #[error("nvidia-smi link status has no 'GPU n:' line")]
    NoLinkGpus,
    #[error("nvidia-smi link status line {line} is not 'Link N: <speed>': {text:?}")]
    BadLinkLine { line: usize, text: String },
    #[error("nvidia-smi table shows no GPU rows")]
    NoTableRows,
}

/// One GPU's fields as normalised `a/b/c` paths (lower-case, words joined by `_`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuReport {
    /// PCI bus id or index.
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl GpuReport {
    pub fn field(&self, path: &str) -> Option<&str> {
        self.fields.iter().find(|(p, _)| p == path).map(|(_, v)| v.as_str())
    }
}

/// What `nvidia-smi` reported for the whole node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NvidiaSmiReport {
    pub driver_version: Option<String>,
    /// The `attached_gpus` / "Attached GPUs" count, when the output has one.
    pub attached_gpus: Option<u32>,
    pub gpus: Vec<GpuReport>,
}

/// The health-relevant facts read from one GPU's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GpuHealth {
    pub id: String,
    pub uncorrectable_volatile_ecc: u64,
    pub retired_pages_pending: bool,
    pub row_remap_pending: bool,
    pub row_remap_failure: bool,
    /// Active hardware slowdown reasons (hw_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown).
    pub hardware_slowdowns: Vec<String>,
    pub pcie_replays: Option<u64>,
    /// Field values that say the GPU is lost or needs a reset.
    pub lost_errors: Vec<String>,
    /// How many fields this reading looked at (ECC, retired pages, remapped rows, slowdown reasons, PCIe
    /// replays). Zero means the output did not say anything about this GPU's health.
    pub health_fields: u32,
}

/// Bounds for the NVIDIA verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvidiaThresholds {
    pub expected_gpus: Option<u32>,
    /// PCIe replays since reset above which the GPU is unhealthy.
    pub max_pcie_replays: u64,
}

impl Default for NvidiaThresholds {
    fn default() -> Self {
        NvidiaThresholds { expected_gpus: None, max_pcie_replays: 1000 }
    }
}

/// Texts nvidia-smi and NVML put into fields (or print) when a GPU is gone.
pub const GPU_LOST_MARKERS: &[&str] = &["unknown error", "gpu is lost", "gpu requires reset", "fallen off the bus"];

fn lost_marker(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    GPU_LOST_MARKERS.iter().any(|m| lower.contains(m))
}

/// Lower-cases and joins words with `_`: "Pending Page Blacklist" → "pending_page_blacklist".
pub fn normalise_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut gap = false;
    for c in key.trim().chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// Parses `nvidia-smi -q -x` output.
pub fn parse_xml(text: &str) -> Result<NvidiaSmiReport, NvidiaSmiError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut report = NvidiaSmiReport { driver_version: None, attached_gpus: None, gpus: Vec::new() };
    let mut seen_root = false;
    let mut current: Option<GpuReport> = None;
    let mut pending_text = String::new();
    let xml_error = |reader: &Reader<&[u8]>, message: String| NvidiaSmiError::Xml { position: reader.buffer_position(), message };
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, e.to_string()))?;
        match event {
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).to_string();
                if stack.is_empty() {
                    if name != "nvidia_smi_log" {
                        return Err(NvidiaSmiError::NoLogElement);
                    }
                    seen_root = true;
                }
                if stack.len() == 1 && name == "gpu" {
                    let id = start
                        .attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == b"id")
                        .map(|a| String::from_utf8_lossy(&a.value).to_string())
                        .unwrap_or_else(|| report.gpus.len().to_string());
                    current = Some(GpuReport { id, fields: Vec::new() });
                }
                stack.push(name);
                pending_text.clear();
            }
            Event::Empty(_) => {}
            Event::Text(content) => {
                let decoded = content.decode().map_err(|e| xml_error(&reader, e.to_string()))?;
                pending_text.push_str(&decoded);
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => match reference.decode().map_err(|e| xml_error(&reader, e.to_string()))?.as_ref() {
                        "amp" => "&".to_string(),
                        "lt" => "<".to_string(),
                        "gt" => ">".to_string(),
                        "quot" => "\"".to_string(),
                        "apos" => "'".to_string(),
                        other => format!("&{other};"),
                    },
                };
                pending_text.push_str(&resolved);
            }
            Event::CData(data) => pending_text.push_str(&String::from_utf8_lossy(&data)),
            Event::End(_) => {
                let value = std::mem::take(&mut pending_text);
                let value = value.trim();
                if stack.len() == 2 && !value.is_empty() {
                    match stack.get(1).map(String::as_str) {
                        Some("driver_version") => report.driver_version = Some(value.to_string()),
                        Some("attached_gpus") => report.attached_gpus = value.parse().ok(),
                        _ => {}
                    }
                }
                if stack.len() == 2 && stack.get(1).map(String::as_str) == Some("gpu") {
                    if let Some(done) = current.take() {
                        report.gpus.push(done);
                    }
                } else if stack.len() > 2
                    && !value.is_empty()
                    && let Some(gpu) = current.as_mut()
                {
                    gpu.fields.push((stack[2..].join("/"), value.to_string()));
                }
                stack.pop();
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) | Event::Comment(_) => {}
        }
    }
    if !seen_root {
        return Err(NvidiaSmiError::NoLogElement);
    }
    if !stack.is_empty() {
        return Err(NvidiaSmiError::Xml { position: text.len() as u64, message: format!("document ends inside <{}>", stack.join("><")) });
    }
    Ok(report)
}

fn split_key_value(line: &str) -> Option<(&str, &str)> {
    let at = line.find(" :").or_else(|| line.find(": "))?;
    let key = line[..at].trim();
    let value = line[at..].trim_start_matches(' ').trim_start_matches(':').trim();
    if key.is_empty() { None } else { Some((key, value)) }
}

/// Parses `nvidia-smi -q` text (any `-d` selection).
pub fn parse_query_text(text: &str) -> Result<NvidiaSmiReport, NvidiaSmiError> {
    let mut report = NvidiaSmiReport { driver_version: None, attached_gpus: None, gpus: Vec::new() };
    let mut current: Option<GpuReport> = None;
    let mut sections: Vec<(usize, String)> = Vec::new();
    let mut saw_attached = false;
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with("=====") {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        if indent == 0 {
            if let Some(rest) = body.strip_prefix("GPU ")
                && split_key_value(body).is_none()
            {
                if let Some(done) = current.take() {
                    report.gpus.push(done);
                }
                current = Some(GpuReport { id: rest.trim().to_string(), fields: Vec::new() });
                sections.clear();
                continue;
            }
            if let Some((key, value)) = split_key_value(body) {
                match normalise_key(key).as_str() {
                    "driver_version" => report.driver_version = Some(value.to_string()),
                    "attached_gpus" => {
                        saw_attached = true;
                        report.attached_gpus = value.parse().ok();
                    }
                    _ => {}
                }
            }
            continue;
        }
        let Some(gpu) = current.as_mut() else { continue };
        while sections.last().is_some_and(|(depth, _)| *depth >= indent) {
            sections.pop();
        }
        match split_key_value(body) {
            Some((key, value)) => {
                let mut path: Vec<&str> = sections.iter().map(|(_, s)| s.as_str()).collect();
                let leaf = normalise_key(key);
                path.push(&leaf);
                gpu.fields.push((path.join("/"), value.to_string()));
            }
            None => sections.push((indent, normalise_key(body))),
        }
    }
    if let Some(done) = current.take() {
        report.gpus.push(done);
    }
    if !saw_attached && report.gpus.is_empty() {
        return Err(NvidiaSmiError::NoQuerySections);
    }
    Ok(report)
}

/// Parses `nvidia-smi --query-gpu=... --format=csv` (with or without units in the header).
pub fn parse_query_csv(text: &str) -> Result<NvidiaSmiReport, NvidiaSmiError> {
    let mut lines = text.lines().map(|l| l.trim_start_matches('\u{feff}')).filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or(NvidiaSmiError::EmptyCsv)?;
    let known = ["index", "pci.bus_id", "uuid", "name", "count", "timestamp"];
    if !header.split(',').any(|h| known.contains(&h.trim().split(" [").next().unwrap_or(""))) {
        return Err(NvidiaSmiError::NotCsvHeader(header.chars().take(120).collect()));
    }
    let names: Vec<String> = header
        .split(',')
        .map(|h| {
            let name = h.trim();
            let name = name.split(" [").next().unwrap_or(name);
            name.replace('.', "/")
        })
        .collect();
    let mut report = NvidiaSmiReport { driver_version: None, attached_gpus: None, gpus: Vec::new() };
    for (row, line) in lines.enumerate() {
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        if values.len() != names.len() {
            return Err(NvidiaSmiError::CsvWidth { row: row + 1, found: values.len(), expected: names.len() });
        }
        let fields: Vec<(String, String)> = names.iter().cloned().zip(values.iter().map(|v| v.to_string())).collect();
        let id = ["pci/bus_id", "index"]
            .iter()
            .find_map(|k| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .unwrap_or_else(|| row.to_string());
        if report.driver_version.is_none() {
            report.driver_version = fields.iter().find(|(n, _)| n == "driver_version").map(|(_, v)| v.clone());
        }
        if let Some((_, count)) = fields.iter().find(|(n, _)| n == "count") {
            report.attached_gpus = count.parse().ok();
        }
        report.gpus.push(GpuReport { id, fields });
    }
    Ok(report)
}

fn parse_count(value: &str) -> Option<u64> {
    value.split_whitespace().next().and_then(|n| n.parse().ok())
}

fn is_yes(value: &str) -> bool {
    value.eq_ignore_ascii_case("yes")
}

/// Reads the health facts out of one GPU's fields, whichever output shape they came from.
pub fn gpu_health(gpu: &GpuReport) -> GpuHealth {
    let mut health = GpuHealth { id: gpu.id.clone(), ..GpuHealth::default() };
    for (path, value) in &gpu.fields {
        if lost_marker(value) {
            health.lost_errors.push(format!("{path}: {value}"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let leaf = segments.last().copied().unwrap_or("");
        let in_ecc = path.starts_with("ecc_errors/") || path.starts_with("ecc/errors/");
        if in_ecc || segments.iter().any(|s| s.starts_with("retired_pages") || s.starts_with("remapped_rows")) {
            health.health_fields += 1;
        }
        if in_ecc && segments.contains(&"volatile") && !leaf.contains("threshold") {
            let double_bit = segments.contains(&"double_bit");
            let counts = if double_bit { leaf == "total" } else { leaf.contains("uncorrectable") || segments.contains(&"uncorrected") };
            if counts && let Some(n) = parse_count(value) {
                health.uncorrectable_volatile_ecc = health.uncorrectable_volatile_ecc.max(n);
            }
        }
        if segments.iter().any(|s| s.starts_with("retired_pages")) && leaf.contains("pending") && is_yes(value) {
            health.retired_pages_pending = true;
        }
        if segments.first().is_some_and(|s| s.starts_with("remapped_rows")) {
            if leaf.contains("pending") && is_yes(value) {
                health.row_remap_pending = true;
            }
            if leaf.contains("failure") && is_yes(value) {
                health.row_remap_failure = true;
            }
        }
        let in_reasons = segments.iter().any(|s| *s == "clocks_throttle_reasons" || *s == "clocks_event_reasons");
        let slowdown = ["hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"].iter().find(|k| leaf.ends_with(*k));
        if in_reasons {
            health.health_fields += 1;
        }
        if in_reasons
            && let Some(kind) = slowdown
            && value.eq_ignore_ascii_case("active")
        {
            health.hardware_slowdowns.push((*kind).to_string());
        }
        if segments.first() == Some(&"pci") && (leaf == "replay_counter" || leaf == "replays_since_reset") {
            health.health_fields += 1;
            health.pcie_replays = parse_count(value);
        }
    }
    health
}

/// The verdict for one `nvidia-smi` report.
pub fn verdict(report: &NvidiaSmiReport, thresholds: &NvidiaThresholds) -> Verdict {
    let mut findings = Vec::new();
    let seen = report.attached_gpus.unwrap_or(u32::try_from(report.gpus.len()).unwrap_or(u32::MAX));
    if let Some(expected) = thresholds.expected_gpus
        && seen != expected
    {
        findings.push(Verdict::unhealthy(Reason::GpuCountMismatch, format!("nvidia-smi sees {seen} GPUs, expected {expected}")));
    }
    if seen == 0 && thresholds.expected_gpus.unwrap_or(0) == 0 {
        return Verdict::new(Health::Healthy, Reason::NonGpuNode, "nvidia-smi sees no NVIDIA GPUs and none are expected");
    }
    if let Some(cut_short) = incompleteness(report) {
        findings.push(cut_short);
    }
    for gpu in &report.gpus {
        let health = gpu_health(gpu);
        let id = &health.id;
        if let Some(first) = health.lost_errors.first() {
            findings.push(Verdict::unhealthy(Reason::GpuLost, format!("GPU {id} reports it is lost or needs a reset ({first})")));
        }
        if health.uncorrectable_volatile_ecc > 0 {
            findings.push(Verdict::unhealthy(
                Reason::UncorrectableEcc,
                format!("GPU {id} has {} uncorrectable volatile ECC errors", health.uncorrectable_volatile_ecc),
            ));
        }
        if health.row_remap_failure {
            findings.push(Verdict::unhealthy(Reason::RowRemapFailure, format!("GPU {id} row remapping failed: replace the GPU")));
        }
        if health.row_remap_pending {
            findings.push(Verdict::unhealthy(Reason::RowRemapPending, format!("GPU {id} has a row remap pending: reset the GPU")));
        }
        if health.retired_pages_pending {
            findings.push(Verdict::unhealthy(Reason::RetiredPagesPending, format!("GPU {id} has pages pending retirement: reset the GPU")));
        }
        if !health.hardware_slowdowns.is_empty() {
            findings.push(Verdict::unhealthy(
                Reason::HardwareSlowdown,
                format!("GPU {id} is in hardware slowdown ({})", health.hardware_slowdowns.join(", ")),
            ));
        }
        if let Some(replays) = health.pcie_replays
            && replays > thresholds.max_pcie_replays
        {
            findings.push(Verdict::unhealthy(
                Reason::PcieReplays,
                format!("GPU {id} has {replays} PCIe replays since reset (bound {})", thresholds.max_pcie_replays),
            ));
        }
    }
    worst_of(findings, format!("{seen} NVIDIA GPUs healthy"))
}

/// Why a parsed report cannot prove the GPUs healthy: the header announces more GPUs than the output shows (an
/// output cut short), or a GPU section carries none of the fields the verdict reads (cut inside the section,
/// or a `-d` selection such as SUPPORTED_CLOCKS that says nothing about health). A lost-GPU marker still counts.
fn incompleteness(report: &NvidiaSmiReport) -> Option<Verdict> {
    let shown = u32::try_from(report.gpus.len()).unwrap_or(u32::MAX);
    if let Some(announced) = report.attached_gpus
        && shown < announced
    {
        return Some(Verdict::unknown(
            Reason::OutputIncomplete,
            format!("nvidia-smi announces {announced} GPUs but its output shows {shown}: the output is cut short"),
        ));
    }
    let silent: Vec<&str> = report
        .gpus
        .iter()
        .filter(|gpu| {
            let health = gpu_health(gpu);
            health.health_fields == 0 && health.lost_errors.is_empty()
        })
        .map(|gpu| gpu.id.as_str())
        .collect();
    if silent.is_empty() {
        return None;
    }
    Some(Verdict::unknown(
        Reason::OutputIncomplete,
        format!(
            "nvidia-smi output has no ECC, remapping, slowdown or PCIe fields for GPU {} (cut short, or a -d selection without health fields)",
            silent.join(", ")
        ),
    ))
}

/// What to conclude when `nvidia-smi` failed (non-zero exit or unparseable output), from what it printed.
pub fn failure_verdict(output: &str, expected_gpus: Option<u32>) -> Verdict {
    let lower = output.to_ascii_lowercase();
    let first_line = output.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output");
    if lost_marker(output) {
        return Verdict::unhealthy(Reason::GpuLost, format!("nvidia-smi: {first_line}"));
    }
    let no_gpus = lower.contains("no devices were found") || lower.contains("couldn't communicate with the nvidia driver");
    if no_gpus {
        return match expected_gpus {
            Some(n) if n > 0 => Verdict::unhealthy(Reason::GpuCountMismatch, format!("nvidia-smi: {first_line} (expected {n} GPUs)")),
            _ => Verdict::new(Health::Healthy, Reason::NonGpuNode, format!("nvidia-smi: {first_line}")),
        };
    }
    Verdict::unknown(Reason::ToolFailed, format!("nvidia-smi failed: {first_line}"))
}

/// One section of a multi-command capture file: the command (after `# $ `) and its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSection {
    pub command: String,
    pub output: String,
}

/// Splits a capture made of `#####` banners with `# $ <command>` lines into sections.
pub fn split_capture(text: &str) -> Vec<CaptureSection> {
    let mut sections = Vec::new();
    let mut current: Option<CaptureSection> = None;
    let mut in_banner = false;
    for line in text.lines() {
        if line.starts_with("#####") {
            if in_banner {
                in_banner = false;
            } else {
                if let Some(done) = current.take() {
                    sections.push(done);
                }
                in_banner = true;
            }
            continue;
        }
        if in_banner {
            if let Some(command) = line.strip_prefix("# $ ") {
                current = Some(CaptureSection { command: command.trim().to_string(), output: String::new() });
            }
            continue;
        }
        if let Some(section) = current.as_mut() {
            section.output.push_str(line);
            section.output.push('\n');
        }
    }
    if let Some(done) = current.take() {
        sections.push(done);
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised_to_snake_case() {
        assert_eq!(normalise_key("Pending Page Blacklist"), "pending_page_blacklist");
        assert_eq!(normalise_key("HW Power Brake Slowdown"), "hw_power_brake_slowdown");
        assert_eq!(normalise_key("Replays Since Reset"), "replays_since_reset");
    }

    #[test]
    fn csv_without_a_known_column_is_not_taken_for_zero_gpus() {
        assert!(matches!(parse_query_csv("No devices were found\n"), Err(NvidiaSmiError::NotCsvHeader(_))));
        assert!(matches!(parse_query_csv(""), Err(NvidiaSmiError::EmptyCsv)));
    }

    #[test]
    fn truncated_xml_is_an_error_not_a_panic() {
        let err = parse_xml("<nvidia_smi_log><gpu id=\"0\"><ecc_errors>").err();
        assert!(matches!(err, Some(NvidiaSmiError::Xml { .. })), "{err:?}");
        assert_eq!(parse_xml("<other/>").err(), Some(NvidiaSmiError::NoLogElement));
        assert_eq!(parse_xml("").err(), Some(NvidiaSmiError::NoLogElement));
    }
}
