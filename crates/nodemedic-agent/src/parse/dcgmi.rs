//! `dcgmi diag -r N -j` and `dcgmi health -c -j` JSON.

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::verdict::{Reason, Verdict};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DcgmiError {
    #[error("dcgmi output is not JSON: {0}")]
    NotJson(String),
    #[error("dcgmi diag JSON has no \"DCGM GPU Diagnostic\" > test_categories")]
    NoDiagnostic,
    #[error("dcgmi health JSON has no body > \"Overall Health\" > value")]
    NoOverallHealth,
    /// Keys are looked up without regard to case (dcgmi versions differ in it), so two keys that
    /// differ only in case say two things: unreadable, never a reason to remediate.
    #[error("dcgmi output is ambiguous: keys `{0}` and `{1}` differ only in case")]
    Ambiguous(String, String),
}

/// Reads dcgmi JSON strictly: a key given twice, or two keys that differ only in case, is refused.
fn read(text: &str) -> Result<Value, DcgmiError> {
    let value: Value = nodemedic_core::input::from_json_str(text).map_err(|e| DcgmiError::NotJson(e.to_string()))?;
    match same_but_case(&value) {
        Some((a, b)) => Err(DcgmiError::Ambiguous(a, b)),
        None => Ok(value),
    }
}

fn same_but_case(value: &Value) -> Option<(String, String)> {
    match value {
        Value::Object(map) => {
            let mut seen: std::collections::HashMap<String, &String> = std::collections::HashMap::new();
            for (k, v) in map {
                if let Some(first) = seen.insert(k.to_ascii_lowercase(), k) {
                    return Some((first.clone(), k.clone()));
                }
                if let Some(found) = same_but_case(v) {
                    return Some(found);
                }
            }
            None
        }
        Value::Array(items) => items.iter().find_map(same_but_case),
        _ => None,
    }
}

/// One test result line of a diag run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiagResult {
    pub category: String,
    pub test: String,
    pub status: String,
    pub gpu_ids: Option<String>,
    pub info: Option<String>,
}

fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn get_ci<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
}

/// Parses `dcgmi diag -j`.
pub fn parse_diag(text: &str) -> Result<Vec<DiagResult>, DcgmiError> {
    let value = read(text)?;
    let categories = get_ci(&value, "DCGM GPU Diagnostic")
        .and_then(|d| get_ci(d, "test_categories"))
        .and_then(Value::as_array)
        .ok_or(DcgmiError::NoDiagnostic)?;
    let mut results = Vec::new();
    for category in categories {
        let category_name = text_of(get_ci(category, "category")).unwrap_or_default();
        for test in get_ci(category, "tests").and_then(Value::as_array).into_iter().flatten() {
            let test_name = text_of(get_ci(test, "name")).unwrap_or_default();
            for result in get_ci(test, "results").and_then(Value::as_array).into_iter().flatten() {
                let warning = get_ci(result, "warnings")
                    .and_then(Value::as_array)
                    .and_then(|w| w.first())
                    .and_then(|w| text_of(get_ci(w, "warning")).or_else(|| text_of(Some(w))));
                results.push(DiagResult {
                    category: category_name.clone(),
                    test: test_name.clone(),
                    status: text_of(get_ci(result, "status")).unwrap_or_default(),
                    gpu_ids: text_of(get_ci(result, "gpu_ids")),
                    info: warning.or_else(|| text_of(get_ci(result, "info"))),
                });
            }
        }
    }
    Ok(results)
}

pub fn diag_verdict(results: &[DiagResult]) -> Verdict {
    let failed: Vec<&DiagResult> = results.iter().filter(|r| r.status.eq_ignore_ascii_case("fail")).collect();
    if let Some(first) = failed.first() {
        let gpus = first.gpu_ids.as_deref().map(|g| format!(" on GPU {g}")).unwrap_or_default();
        let info = first.info.as_deref().map(|i| format!(": {}", i.replace('\t', " "))).unwrap_or_default();
        return Verdict::unhealthy(
            Reason::DcgmDiagFailed,
            format!("dcgmi diag: {} / {} failed{gpus}{info} ({} failed results)", first.category, first.test, failed.len()),
        );
    }
    let passed = results.iter().filter(|r| r.status.eq_ignore_ascii_case("pass")).count();
    // A run that passed nothing (no results, or all skipped) proves nothing about the GPUs.
    if passed == 0 {
        return Verdict::unknown(
            Reason::OutputIncomplete,
            format!("dcgmi diag: no result passed ({} results, none failed): the diagnostic did not test the GPUs", results.len()),
        );
    }
    Verdict::healthy(format!("dcgmi diag: {passed} of {} results passed, none failed", results.len()))
}

/// `dcgmi health -c -j`: the overall word and any incident messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    pub overall: String,
    pub incidents: Vec<String>,
}

fn collect_messages(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if (key.eq_ignore_ascii_case("message") || key.eq_ignore_ascii_case("error")) && inner.is_string() {
                    out.extend(text_of(Some(inner)));
                } else {
                    collect_messages(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_messages(i, out)),
        _ => {}
    }
}

pub fn parse_health(text: &str) -> Result<HealthReport, DcgmiError> {
    let value = read(text)?;
    let body = get_ci(&value, "body").ok_or(DcgmiError::NoOverallHealth)?;
    let overall = get_ci(body, "Overall Health").and_then(|o| text_of(get_ci(o, "value"))).ok_or(DcgmiError::NoOverallHealth)?;
    let mut incidents = Vec::new();
    collect_messages(body, &mut incidents);
    Ok(HealthReport { overall, incidents })
}

pub fn health_verdict(report: &HealthReport) -> Verdict {
    if report.overall.eq_ignore_ascii_case("healthy") {
        return Verdict::healthy("dcgmi health: Healthy");
    }
    let detail = report.incidents.first().map(|m| format!(": {m}")).unwrap_or_default();
    Verdict::unhealthy(Reason::DcgmHealthDegraded, format!("dcgmi health: {}{detail}", report.overall))
}
