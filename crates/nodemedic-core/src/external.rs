//! What an external remediator's answer means (the medik8s External Remediation API): the
//! remediation CR's status conditions decide the `external` step's outcome. Pure: the controller
//! reads the conditions and reports what this says.

use serde::{Deserialize, Serialize};

/// One status condition of a remediation CR, as the remediator wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RemediatorCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl RemediatorCondition {
    /// `Type=Status (reason: message)`, the parts that are set.
    pub fn describe(&self) -> String {
        let detail: Vec<&str> = [self.reason.as_str(), self.message.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
        let detail = if detail.is_empty() { String::new() } else { format!(" ({})", detail.join(": ")) };
        format!("{}={}{detail}", self.type_, self.status)
    }
}

/// The condition medik8s remediators set when they are done: `True` fixed, `False` gave up.
pub const SUCCEEDED: &str = "Succeeded";

/// The step's outcome so far, with what the remediator said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemediatorVerdict {
    Succeeded(String),
    Failed(String),
    /// No `Succeeded` True or False yet (`Processing`, no conditions, `Succeeded=Unknown`): wait.
    Waiting(String),
}

/// Only `Succeeded` decides: `True` → succeeded, `False` → failed; anything else → still waiting.
pub fn remediator_verdict(conditions: &[RemediatorCondition]) -> RemediatorVerdict {
    match conditions.iter().find(|c| c.type_ == SUCCEEDED) {
        Some(c) if c.status == "True" => RemediatorVerdict::Succeeded(c.describe()),
        Some(c) if c.status == "False" => RemediatorVerdict::Failed(format!("the remediator reports {}", c.describe())),
        _ if conditions.is_empty() => RemediatorVerdict::Waiting("no status conditions yet".into()),
        _ => RemediatorVerdict::Waiting(conditions.iter().map(RemediatorCondition::describe).collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(type_: &str, status: &str, reason: &str, message: &str) -> RemediatorCondition {
        RemediatorCondition { type_: type_.into(), status: status.into(), reason: reason.into(), message: message.into() }
    }

    #[test]
    fn only_succeeded_decides_and_what_the_remediator_said_is_kept() {
        assert_eq!(remediator_verdict(&[]), RemediatorVerdict::Waiting("no status conditions yet".into()));
        assert_eq!(
            remediator_verdict(&[c("Processing", "True", "RemediationStarted", "")]),
            RemediatorVerdict::Waiting("Processing=True (RemediationStarted)".into())
        );
        assert!(matches!(remediator_verdict(&[c("Succeeded", "Unknown", "", "")]), RemediatorVerdict::Waiting(_)));
        assert_eq!(
            remediator_verdict(&[
                c("Processing", "False", "", ""),
                c("Succeeded", "False", "FenceAgentFailed", "fence_ipmilan: timed out")
            ]),
            RemediatorVerdict::Failed("the remediator reports Succeeded=False (FenceAgentFailed: fence_ipmilan: timed out)".into())
        );
        assert_eq!(remediator_verdict(&[c("Succeeded", "True", "", "")]), RemediatorVerdict::Succeeded("Succeeded=True".into()));
    }

    #[test]
    fn conditions_read_from_json_tolerate_missing_fields() -> Result<(), serde_json::Error> {
        let read: Vec<RemediatorCondition> =
            serde_json::from_str(r#"[{"type": "Succeeded", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]"#)?;
        assert_eq!(read, [c("Succeeded", "True", "", "")]);
        Ok(())
    }
}
