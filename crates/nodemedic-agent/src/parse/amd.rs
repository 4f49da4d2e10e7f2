//! AMD tools: `amd-smi` JSON (bare array or `{"gpu_data": [...]}`, numbers as `{"value","unit"}` or "N/A") and
//! its CSV output, `rocm-smi --json` (one object per `cardN`, string values) and its text output, and `rocminfo`.
//!
//! `rocm-smi` exits 0 when the driver is not loaded and hides errors in JSON mode, so output without cards, or
//! output that is not JSON at all, is a fault with a message that says so.

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::verdict::{Health, Reason, Verdict, worst_of};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AmdError {
    #[error("amd-smi output is not JSON ({message}); first line: {first_line:?}")]
    AmdSmiNotJson { message: String, first_line: String },
    #[error("amd-smi says the driver is not loaded: {first_line:?}")]
    AmdSmiDriverNotLoaded { first_line: String },
    #[error("amd-smi JSON is neither a list of GPUs nor an object with \"gpu_data\"")]
    AmdSmiShape,
    #[error("amd-smi entry {index} is not an object")]
    AmdSmiEntry { index: usize },
    #[error("amd-smi CSV is empty")]
    AmdSmiCsvEmpty,
    #[error("amd-smi CSV header has no \"gpu\" column: {header:?}")]
    AmdSmiCsvNoGpuColumn { header: String },
    #[error("amd-smi CSV row {row} has {found} fields but the header has {expected}")]
    AmdSmiCsvWidth { row: usize, found: usize, expected: usize },
    #[error("rocm-smi output is not JSON and says the amdgpu driver is not loaded: {first_line:?}")]
    RocmSmiNotJson { first_line: String },
    #[error("rocm-smi printed no JSON object (and nothing about the driver): {first_line:?}")]
    RocmSmiNoJson { first_line: String },
    #[error("rocm-smi JSON is not an object of cards")]
    RocmSmiShape,
    /// A repeated key makes the data ambiguous: unreadable, never a reason to remediate.
    #[error("rocm-smi JSON is ambiguous: {0}")]
    RocmSmiDuplicateKey(String),
    #[error("rocm-smi JSON lists no cardN entries: the amdgpu driver is probably not loaded")]
    RocmSmiNoCards,
    #[error("rocm-smi text shows no GPU[n] lines")]
    RocmSmiTextNoGpus,
    #[error("rocminfo output has no agents ('Device Type:' lines): {first_line:?}")]
    RocminfoNoAgents { first_line: String },
}

fn first_line(text: &str) -> String {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(200).collect()
}

/// Reads a metric that may be a number, a numeric string, `{"value": n, "unit": u}` or "N/A".
pub fn metric_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.split_whitespace().next().and_then(|v| v.parse().ok()),
        Value::Object(map) => map.get("value").and_then(metric_number),
        _ => None,
    }
}

/// Looks up a dotted path ("ecc.total_uncorrectable_count") in a JSON object.
pub fn lookup<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut value = object.get(first)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Every (path, count) under `value` whose key names uncorrectable errors, with a count above zero.
fn uncorrectable_counts(prefix: &str, value: &Value, out: &mut Vec<(String, f64)>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            let lower = key.to_ascii_lowercase();
            let names_uncorrectable =
                lower.contains("uncorrectable") || lower == "ue" || lower.ends_with("_ue") || lower.starts_with("ue_");
            if names_uncorrectable
                && !lower.contains("deferred")
                && let Some(n) = metric_number(inner)
                && n > 0.0
            {
                out.push((path.clone(), n));
            }
            if inner.is_object() && !inner.as_object().is_some_and(|m| m.contains_key("value")) {
                uncorrectable_counts(&path, inner, out);
            }
        }
    }
}

/// One GPU in amd-smi output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmdSmiGpu {
    pub index: String,
    pub metrics: Map<String, Value>,
}

/// Parses `amd-smi ... --json` in either shape.
pub fn parse_amd_smi_json(text: &str) -> Result<Vec<AmdSmiGpu>, AmdError> {
    let value: Value = nodemedic_core::input::from_json_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| AmdError::AmdSmiNotJson { message: e.to_string(), first_line: first_line(text) })?;
    let entries = match value {
        Value::Array(entries) => entries,
        Value::Object(mut map) => match map.remove("gpu_data") {
            Some(Value::Array(entries)) => entries,
            _ => return Err(AmdError::AmdSmiShape),
        },
        _ => return Err(AmdError::AmdSmiShape),
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(position, entry)| match entry {
            Value::Object(metrics) => {
                let index = metrics.get("gpu").map(|g| g.to_string()).unwrap_or_else(|| position.to_string());
                Ok(AmdSmiGpu { index, metrics })
            }
            _ => Err(AmdError::AmdSmiEntry { index: position }),
        })
        .collect()
}

/// Splits one CSV line on commas that are not inside `[...]` or quotes.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => {
                depth += 1;
                current.push(c);
            }
            ']' if !quoted => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            ',' if !quoted && depth == 0 => fields.push(std::mem::take(&mut current).trim().to_string()),
            _ => current.push(c),
        }
    }
    fields.push(current.trim().to_string());
    fields
}

/// Parses `amd-smi ... --csv` output (a UTF-8 BOM is allowed) into the same shape as the JSON.
pub fn parse_amd_smi_csv(text: &str) -> Result<Vec<AmdSmiGpu>, AmdError> {
    let mut lines = text.lines().map(|l| l.trim_start_matches('\u{feff}')).filter(|l| !l.trim().is_empty());
    let header_line = lines.next().ok_or(AmdError::AmdSmiCsvEmpty)?;
    let header = split_csv_line(header_line);
    if !header.iter().any(|h| h == "gpu") {
        return Err(AmdError::AmdSmiCsvNoGpuColumn { header: header_line.chars().take(120).collect() });
    }
    let mut gpus = Vec::new();
    for (row, line) in lines.enumerate() {
        let values = split_csv_line(line);
        if values.len() != header.len() {
            return Err(AmdError::AmdSmiCsvWidth { row: row + 1, found: values.len(), expected: header.len() });
        }
        let metrics: Map<String, Value> = header.iter().cloned().zip(values.into_iter().map(Value::String)).collect();
        let index = metrics.get("gpu").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| row.to_string());
        gpus.push(AmdSmiGpu { index, metrics });
    }
    Ok(gpus)
}

/// Bounds for AMD verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdExpectations {
    pub expected_gpus: Option<u32>,
    /// Dotted metric paths every GPU must report (a missing key is a fault; "N/A" counts as present).
    pub required_metrics: Vec<String>,
}

fn count_finding(tool: &str, seen: usize, expected: Option<u32>) -> Option<Verdict> {
    let expected = expected?;
    let seen = u32::try_from(seen).unwrap_or(u32::MAX);
    (seen != expected).then(|| Verdict::unhealthy(Reason::GpuCountMismatch, format!("{tool} sees {seen} GPUs, expected {expected}")))
}

fn metric_findings(tool: &str, gpu: &str, metrics: &Map<String, Value>, required: &[String], findings: &mut Vec<Verdict>) {
    for path in required {
        if lookup(metrics, path).is_none() {
            findings.push(Verdict::unhealthy(Reason::MetricMissing, format!("{tool} GPU {gpu} does not report {path}")));
        }
    }
    let mut counts = Vec::new();
    uncorrectable_counts("", &Value::Object(metrics.clone()), &mut counts);
    if let Some((path, n)) = counts.first() {
        findings.push(Verdict::unhealthy(Reason::UncorrectableEcc, format!("{tool} GPU {gpu} reports {n} uncorrectable errors ({path})")));
    }
}

pub fn amd_smi_verdict(gpus: &[AmdSmiGpu], expect: &AmdExpectations) -> Verdict {
    if gpus.is_empty() && expect.expected_gpus.unwrap_or(0) == 0 {
        return Verdict::new(Health::Healthy, Reason::NonGpuNode, "amd-smi lists no GPUs and none are expected");
    }
    let mut findings: Vec<Verdict> = count_finding("amd-smi", gpus.len(), expect.expected_gpus).into_iter().collect();
    for gpu in gpus {
        metric_findings("amd-smi", &gpu.index, &gpu.metrics, &expect.required_metrics, &mut findings);
    }
    worst_of(findings, format!("{} AMD GPUs healthy (amd-smi)", gpus.len()))
}

/// One card in `rocm-smi --json` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RocmSmiCard {
    pub card: String,
    pub fields: Map<String, Value>,
}

/// Parses `rocm-smi --json`. No `cardN` keys, or text that is not JSON, is an error naming the likely cause.
/// Texts rocm-smi prints instead of JSON when the amdgpu driver is absent.
const ROCM_SMI_DRIVER_MISSING: &[&str] = &["driver not initialized", "amdgpu not found", "driver not loaded"];

/// Parses `rocm-smi --json`. rocm-smi prints WARNING lines (low-power state, permissions) before its JSON, or
/// only those: the JSON starts at the first line opening with `{`, and output with no JSON is "driver not
/// loaded" only when it says so.
pub fn parse_rocm_smi_json(text: &str) -> Result<Vec<RocmSmiCard>, AmdError> {
    let json_start = text.lines().scan(0usize, |offset, line| {
        let start = *offset;
        *offset += line.len() + 1;
        Some((start, line))
    });
    let json_at = json_start.filter(|(_, line)| line.trim_start().starts_with('{')).map(|(start, _)| start).next();
    let Some(body) = json_at.and_then(|at| text.get(at..)) else {
        let lower = text.to_ascii_lowercase();
        return Err(if ROCM_SMI_DRIVER_MISSING.iter().any(|m| lower.contains(m)) {
            AmdError::RocmSmiNotJson { first_line: first_line(text) }
        } else {
            AmdError::RocmSmiNoJson { first_line: first_line(text) }
        });
    };
    let value: Value = nodemedic_core::input::from_json_str(body.trim()).map_err(|e| match e {
        nodemedic_core::input::InputError::DuplicateKey { .. } => AmdError::RocmSmiDuplicateKey(e.to_string()),
        _ => AmdError::RocmSmiNoJson { first_line: first_line(body) },
    })?;
    let Value::Object(map) = value else { return Err(AmdError::RocmSmiShape) };
    let mut cards: Vec<RocmSmiCard> = map
        .into_iter()
        .filter(|(key, _)| key.strip_prefix("card").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())))
        .filter_map(|(card, value)| match value {
            Value::Object(fields) => Some(RocmSmiCard { card, fields }),
            _ => None,
        })
        .collect();
    if cards.is_empty() {
        return Err(AmdError::RocmSmiNoCards);
    }
    cards.sort_by_key(|c| c.card.trim_start_matches("card").parse::<u32>().unwrap_or(u32::MAX));
    Ok(cards)
}

pub fn rocm_smi_verdict(cards: &[RocmSmiCard], expect: &AmdExpectations) -> Verdict {
    let mut findings: Vec<Verdict> = count_finding("rocm-smi", cards.len(), expect.expected_gpus).into_iter().collect();
    for card in cards {
        metric_findings("rocm-smi", &card.card, &card.fields, &expect.required_metrics, &mut findings);
    }
    worst_of(findings, format!("{} AMD GPUs healthy (rocm-smi)", cards.len()))
}

/// The verdict for a rocm-smi/amd-smi failure to parse: the driver is probably not loaded.
pub fn amd_failure_verdict(error: &AmdError, expected_gpus: Option<u32>) -> Verdict {
    match error {
        AmdError::RocmSmiNoCards
        | AmdError::RocmSmiNotJson { .. }
        | AmdError::RocminfoNoAgents { .. }
        | AmdError::AmdSmiDriverNotLoaded { .. } => {
            if expected_gpus == Some(0) {
                Verdict::new(Health::Healthy, Reason::NonGpuNode, error.to_string())
            } else {
                Verdict::unhealthy(Reason::AmdDriverNotLoaded, error.to_string())
            }
        }
        other => Verdict::unknown(Reason::OutputUnparseable, other.to_string()),
    }
}

/// `rocm-smi` text output: the GPUs it mentions and any ERROR lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RocmSmiText {
    pub gpus: Vec<u32>,
    pub errors: Vec<String>,
}

pub fn parse_rocm_smi_text(text: &str) -> Result<RocmSmiText, AmdError> {
    let mut gpus = Vec::new();
    let mut errors = Vec::new();
    for line in text.lines() {
        if let Some(start) = line.find("GPU[")
            && let Some(end) = line[start + 4..].find(']')
            && let Ok(n) = line[start + 4..start + 4 + end].parse::<u32>()
            && !gpus.contains(&n)
        {
            gpus.push(n);
        }
        let trimmed = line.trim();
        if trimmed.starts_with("ERROR") || trimmed.to_ascii_lowercase().contains("permission denied") {
            errors.push(trimmed.replace('\t', " "));
        }
    }
    if gpus.is_empty() {
        return Err(AmdError::RocmSmiTextNoGpus);
    }
    Ok(RocmSmiText { gpus, errors })
}

/// Errors in text mode mean the command did not do its job; they are not evidence about the hardware.
pub fn rocm_smi_text_verdict(parsed: &RocmSmiText, expected_gpus: Option<u32>) -> Verdict {
    if let Some(finding) = count_finding("rocm-smi", parsed.gpus.len(), expected_gpus) {
        return finding;
    }
    if let Some(first) = parsed.errors.first() {
        return Verdict::unknown(Reason::ToolFailed, format!("rocm-smi reported {} errors, first: {first}", parsed.errors.len()));
    }
    Verdict::healthy(format!("rocm-smi shows {} GPUs", parsed.gpus.len()))
}

/// `rocminfo`: the number of GPU and CPU agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RocminfoAgents {
    pub gpus: u32,
    pub cpus: u32,
}

pub fn parse_rocminfo(text: &str) -> Result<RocminfoAgents, AmdError> {
    let mut agents = RocminfoAgents { gpus: 0, cpus: 0 };
    let mut any = false;
    for line in text.lines() {
        if let Some((key, value)) = line.trim().split_once(':')
            && key.trim() == "Device Type"
        {
            any = true;
            match value.trim() {
                "GPU" => agents.gpus += 1,
                "CPU" => agents.cpus += 1,
                _ => {}
            }
        }
    }
    if !any {
        return Err(AmdError::RocminfoNoAgents { first_line: first_line(text) });
    }
    Ok(agents)
}

pub fn rocminfo_verdict(agents: &RocminfoAgents, expected_gpus: Option<u32>) -> Verdict {
    match expected_gpus {
        Some(expected) if expected != agents.gpus => {
            Verdict::unhealthy(Reason::GpuCountMismatch, format!("rocminfo shows {} GPU agents, expected {expected}", agents.gpus))
        }
        _ if agents.gpus == 0 => Verdict::new(Health::Healthy, Reason::NonGpuNode, "rocminfo shows no GPU agents"),
        _ => Verdict::healthy(format!("rocminfo shows {} GPU agents", agents.gpus)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_numbers_come_in_three_shapes() {
        assert_eq!(metric_number(&serde_json::json!(3)), Some(3.0));
        assert_eq!(metric_number(&serde_json::json!({"value": 41, "unit": "C"})), Some(41.0));
        assert_eq!(metric_number(&serde_json::json!("N/A")), None);
        assert_eq!(metric_number(&serde_json::json!("12 W")), Some(12.0));
    }

    #[test]
    fn csv_fields_with_bracketed_lists_stay_whole() {
        assert_eq!(split_csv_line("0,98,[0, 0],N/A"), vec!["0", "98", "[0, 0]", "N/A"]);
    }
}
