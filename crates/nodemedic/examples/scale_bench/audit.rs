//! Counts the controllers' requests in the API server's audit log, by phase, verb and resource.

use std::collections::BTreeMap;
use std::path::Path;

/// A span of the run; a request belongs to the phase in which the API server received it.
pub struct Phase {
    pub name: &'static str,
    pub start: jiff::Timestamp,
    pub end: jiff::Timestamp,
}

/// (verb, resource[/subresource]) → requests, per phase, both replicas together.
pub type Counts = BTreeMap<(String, String), u64>;

/// One request: a watch when it starts (`ResponseStarted`), anything else when it completes.
fn request(line: &str) -> Option<(jiff::Timestamp, String, String)> {
    let e: serde_json::Value = serde_json::from_str(line).ok()?;
    let verb = e["verb"].as_str()?.to_string();
    let stage = e["stage"].as_str()?;
    let counted = if verb == "watch" { stage == "ResponseStarted" } else { stage == "ResponseComplete" };
    if !counted {
        return None;
    }
    let at: jiff::Timestamp = e["requestReceivedTimestamp"].as_str()?.parse().ok()?;
    let object = &e["objectRef"];
    let mut resource = object["resource"].as_str().unwrap_or("(none)").to_string();
    if let Some(sub) = object["subresource"].as_str() {
        resource = format!("{resource}/{sub}");
    }
    Some((at, verb, resource))
}

pub fn count(log: &Path, phases: &[Phase]) -> anyhow::Result<Vec<Counts>> {
    let text = std::fs::read_to_string(log)?;
    let mut out: Vec<Counts> = phases.iter().map(|_| Counts::new()).collect();
    for (at, verb, resource) in text.lines().filter_map(request) {
        if let Some(i) = phases.iter().position(|p| p.start <= at && at < p.end) {
            *out[i].entry((verb, resource)).or_default() += 1;
        }
    }
    Ok(out)
}

pub fn is_write(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete" | "deletecollection")
}
