//! Node-local remediation: the GPU reset, reboot and reimage steps the controller asks this node for
//! (the reset itself is [`crate::gpu_reset`]; its outcome is the tool's and the GPU probes', not a boot ID's).
//!
//! The controller's request is its persisted record: `active.step` is `reboot` or `reimage`, the stage is
//! `executing`, `executed` is true, and `attempt` is N. Before acting, the agent writes (record uid, N, step,
//! current boot ID) to its state file on the node's disk and fsyncs it; an attempt found there is never acted on
//! again, also after the reboot (the file is on a hostPath). The outcome goes back as the record's
//! `stepReport`: Succeeded when the node's boot ID changed since the attempt started ("rebooted; boot ID X → Y"),
//! Failed when it did not (with the command's error).

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use nodemedic_core::RemediationStep;
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::record::Stage;
use nodemedic_k8s::NodeRemediation;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{CommandSpec, RemediationConfig};

/// Attempts kept in the state file; older ones are dropped first.
pub const STATE_LIMIT: usize = 64;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("reading attempt state {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("attempt state {path} is unreadable: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("writing attempt state {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// What the record asks this node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The NodeRemediation's uid: a record deleted and made again starts counting attempts from 1.
    pub record_uid: String,
    pub attempt: u32,
    pub step: RemediationStep,
    /// The GPU a `resetGpu` step resets (the record's `active.gpu`).
    pub gpu: Option<nodemedic_core::gpu::GpuDevice>,
}

/// The node-local step the record asks for, if any: a GPU reset, reboot or reimage, executing, really executed (not
/// monitor-only), with no step report for this attempt yet.
pub fn requested(record: &NodeRemediation, node: &str) -> Option<Request> {
    if record.spec.node != node {
        return None;
    }
    let status = record.status.as_ref()?;
    let active = status.record.active.as_ref()?;
    if !active.executed || !matches!(active.stage, Stage::Executing) {
        return None;
    }
    if !matches!(active.step, RemediationStep::ResetGpu | RemediationStep::Reboot | RemediationStep::Reimage) {
        return None;
    }
    let attempt = status.record.attempt;
    if status.step_report.as_ref().is_some_and(|r| r.attempt == attempt) {
        return None;
    }
    let uid = record.metadata.uid.clone().unwrap_or_default();
    Some(Request { record_uid: uid, attempt, step: active.step, gpu: active.gpu.clone() })
}

/// True while the controller wants fresh GPU results despite the repair taint: nodemedic-core's rule
/// ([`nodemedic_core::probe::verifying`]) on this node's record.
pub fn verifying(record: Option<&NodeRemediation>) -> bool {
    let Some(status) = record.and_then(|r| r.status.as_ref()) else {
        return false;
    };
    nodemedic_core::probe::verifying(status.record.active.as_ref(), status.operator_request.as_ref())
}

/// One attempt as the state file remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptEntry {
    pub record_uid: String,
    pub attempt: u32,
    pub step: RemediationStep,
    /// The node's boot ID when the attempt started.
    pub boot_id: String,
    pub started_at: String,
    /// Set once the outcome is decided (before it is reported), so a restart re-sends the same report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ReportedOutcome>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The state file: every attempt this node started, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    pub attempts: Vec<AttemptEntry>,
}

impl AttemptLog {
    /// Reads the state file; a missing file is an empty log. Only this agent writes it (atomically,
    /// below), so it is not outside input and is read with plain serde_json.
    pub fn load(path: &Path) -> Result<AttemptLog, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path: path.display().to_string(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AttemptLog::default()),
            Err(source) => Err(StateError::Read { path: path.display().to_string(), source }),
        }
    }

    /// Writes the log durably: a temp file beside it, fsynced, renamed over it, and the directory fsynced.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let failed = |source| StateError::Write { path: path.display().to_string(), source };
        let text = serde_json::to_vec_pretty(self).map_err(|e| failed(std::io::Error::other(e)))?;
        crate::durable::write_atomically(path, &text).map_err(failed)?;
        Ok(())
    }

    pub fn find(&self, record_uid: &str, attempt: u32) -> Option<&AttemptEntry> {
        self.attempts.iter().find(|a| a.record_uid == record_uid && a.attempt == attempt)
    }

    pub fn find_mut(&mut self, record_uid: &str, attempt: u32) -> Option<&mut AttemptEntry> {
        self.attempts.iter_mut().find(|a| a.record_uid == record_uid && a.attempt == attempt)
    }

    /// Adds an attempt, dropping the oldest beyond [`STATE_LIMIT`].
    pub fn push(&mut self, entry: AttemptEntry) {
        self.attempts.push(entry);
        let excess = self.attempts.len().saturating_sub(STATE_LIMIT);
        self.attempts.drain(..excess);
    }
}

/// The message of a step report for a boot-ID comparison.
pub fn boot_outcome(before: &str, now: &str) -> (ReportedOutcome, String) {
    if before != now {
        (ReportedOutcome::Succeeded, format!("rebooted; boot ID {before} → {now}"))
    } else {
        (ReportedOutcome::Failed, format!("the node did not reboot: boot ID {before} unchanged"))
    }
}

/// What the host does for a step. `Ok` carries a description of what was done; a reboot that works usually
/// never returns (the agent goes down with the node).
pub type HostFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

pub trait HostActions: Send + Sync {
    fn perform<'a>(&'a self, step: RemediationStep) -> HostFuture<'a>;
}

/// The real host: the configured commands (by default `systemctl reboot` in the host's namespaces through
/// nsenter, the sysrq trigger when that fails or hangs, and the site's reimage script before a reboot).
pub struct CommandHost {
    pub config: RemediationConfig,
}

/// Runs `spec` with its time limit; the error names the exit status and the end of stderr.
pub async fn run_command(spec: &CommandSpec) -> Result<String, String> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err("empty command".to_string());
    };
    let shown = spec.argv.join(" ");
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    let output = match tokio::time::timeout(spec.timeout.0, command.output()).await {
        Err(_) => return Err(format!("`{shown}` did not finish within {}", crate::probe::format_duration(spec.timeout.0))),
        Ok(Err(e)) => return Err(format!("`{shown}` could not start: {e}")),
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(format!("`{shown}` succeeded"));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = crate::verdict::truncate_message(stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(""), 200);
    Err(format!("`{shown}` failed ({}): {tail}", output.status))
}

impl CommandHost {
    async fn reboot(&self) -> Result<String, String> {
        match run_command(&self.config.reboot).await {
            Ok(done) => Ok(done),
            Err(error) => match &self.config.sysrq_trigger {
                None => Err(error),
                Some(trigger) => match sysrq_reboot(trigger) {
                    Ok(()) => Ok(format!("{error}; rebooted through {}", trigger.display())),
                    Err(sysrq) => Err(format!("{error}; writing {}: {sysrq}", trigger.display())),
                },
            },
        }
    }
}

/// Syncs the disks and reboots at once through the kernel's sysrq trigger (works when userspace is wedged).
pub fn sysrq_reboot(trigger: &Path) -> std::io::Result<()> {
    for key in [b"s", b"b"] {
        let mut file = std::fs::OpenOptions::new().write(true).open(trigger)?;
        file.write_all(key)?;
    }
    Ok(())
}

impl HostActions for CommandHost {
    fn perform<'a>(&'a self, step: RemediationStep) -> HostFuture<'a> {
        Box::pin(async move {
            match step {
                RemediationStep::Reboot => self.reboot().await,
                RemediationStep::Reimage => {
                    let Some(script) = &self.config.reimage else {
                        return Err("no reimage command is configured (remediation.reimage)".to_string());
                    };
                    let reimaged = run_command(script).await?;
                    let rebooted = self.reboot().await.map_err(|e| format!("{reimaged}, then the reboot failed: {e}"))?;
                    Ok(format!("{reimaged}; {rebooted}"))
                }
                other => Err(format!("{} is not a node-local step", other.as_str())),
            }
        })
    }
}

/// How often the node's boot ID is read while waiting for it to change.
pub fn boot_poll_interval(limit: Duration) -> Duration {
    (limit / 10).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::TextDuration;

    fn entry(uid: &str, attempt: u32) -> AttemptEntry {
        AttemptEntry {
            record_uid: uid.to_string(),
            attempt,
            step: RemediationStep::Reboot,
            boot_id: "boot-a".to_string(),
            started_at: "2026-11-21T10:00:00Z".to_string(),
            outcome: None,
            message: String::new(),
        }
    }

    #[test]
    fn the_state_file_survives_a_reload_and_is_keyed_by_record_and_attempt() -> Result<(), StateError> {
        let dir = tempfile::tempdir().map_err(|source| StateError::Write { path: "tempdir".into(), source })?;
        let path = dir.path().join("nested/attempts.json");
        assert_eq!(AttemptLog::load(&path)?, AttemptLog::default());
        let mut log = AttemptLog::default();
        log.push(entry("uid-1", 1));
        log.save(&path)?;
        let again = AttemptLog::load(&path)?;
        assert!(again.find("uid-1", 1).is_some());
        assert!(again.find("uid-1", 2).is_none());
        assert!(again.find("uid-2", 1).is_none(), "a recreated record is a new series of attempts");
        Ok(())
    }

    #[test]
    fn the_state_file_keeps_only_the_newest_attempts() {
        let mut log = AttemptLog::default();
        for attempt in 0..(STATE_LIMIT as u32 + 5) {
            log.push(entry("uid", attempt));
        }
        assert_eq!(log.attempts.len(), STATE_LIMIT);
        assert_eq!(log.attempts.first().map(|a| a.attempt), Some(5));
    }

    fn record(
        step: &str,
        stage: serde_json::Value,
        executed: bool,
        report_attempt: Option<u32>,
    ) -> Result<NodeRemediation, serde_json::Error> {
        let mut status = serde_json::json!({
            "node": "gpu-001", "phase": "Remediating", "attempt": 2,
            "active": {
                "trigger": "gpu", "reason": "check `gpu` failing", "startedAt": "2026-11-21T10:00:00Z",
                "unhealthySince": "2026-11-21T10:00:00Z", "stepIndex": 0, "step": step,
                "stepStartedAt": "2026-11-21T10:00:00Z", "stage": stage, "executed": executed,
            },
        });
        if let Some(attempt) = report_attempt {
            status["stepReport"] = serde_json::json!({"attempt": attempt, "outcome": "succeeded", "at": "2026-11-21T10:05:00Z"});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation",
            "metadata": {"name": "gpu-001", "uid": "uid-1"},
            "spec": {"node": "gpu-001", "policy": "gpu-workers"},
            "status": status,
        }))
    }

    #[test]
    fn only_an_executed_reboot_or_reimage_without_a_report_for_its_attempt_is_a_request() -> Result<(), serde_json::Error> {
        let executing = serde_json::json!({"name": "executing"});
        let asked = record("reboot", executing.clone(), true, None)?;
        assert_eq!(
            requested(&asked, "gpu-001"),
            Some(Request { record_uid: "uid-1".to_string(), attempt: 2, step: RemediationStep::Reboot, gpu: None })
        );
        assert_eq!(
            requested(&record("reimage", executing.clone(), true, Some(1))?, "gpu-001").map(|r| r.step),
            Some(RemediationStep::Reimage)
        );
        assert_eq!(requested(&asked, "gpu-002"), None, "another node's record");
        assert_eq!(requested(&record("reboot", executing.clone(), false, None)?, "gpu-001"), None, "monitor-only");
        assert_eq!(requested(&record("reboot", executing.clone(), true, Some(2))?, "gpu-001"), None, "already reported");
        assert_eq!(requested(&record("drain", executing, true, None)?, "gpu-001"), None, "not node-local");
        let verifying = serde_json::json!({"name": "verifying", "completedAt": "2026-11-21T10:05:00Z",
            "verifyFrom": "2026-11-21T10:05:00Z", "verifyDeadline": "2026-11-21T10:15:00Z"});
        let checking = record("reboot", verifying, true, Some(2))?;
        assert_eq!(requested(&checking, "gpu-001"), None);
        assert!(super::verifying(Some(&checking)));
        assert!(!super::verifying(Some(&asked)));
        let mut manual = record("manual", serde_json::json!({"name": "executing"}), true, None)?;
        assert!(!super::verifying(Some(&manual)), "a Manual node waits for a person");
        if let Some(status) = manual.status.as_mut() {
            status.operator_request =
                serde_json::from_value(serde_json::json!({"action": "resolve", "by": "alice", "at": "2026-11-21T11:00:00Z"}))?;
        }
        assert!(super::verifying(Some(&manual)), "resolved by hand: the GPU probes must confirm it");
        Ok(())
    }

    #[test]
    fn a_changed_boot_id_is_a_successful_reboot() {
        assert_eq!(boot_outcome("a", "b"), (ReportedOutcome::Succeeded, "rebooted; boot ID a → b".to_string()));
        assert_eq!(boot_outcome("a", "a").0, ReportedOutcome::Failed);
    }

    fn command(argv: &[&str]) -> CommandSpec {
        CommandSpec { argv: argv.iter().map(|w| w.to_string()).collect(), timeout: TextDuration(Duration::from_secs(5)) }
    }

    #[tokio::test]
    async fn a_failing_reboot_command_falls_back_to_sysrq() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let trigger = dir.path().join("sysrq-trigger");
        std::fs::write(&trigger, "").map_err(|e| e.to_string())?;
        let host = CommandHost {
            config: RemediationConfig {
                reboot: command(&["sh", "-c", "echo 'Failed to connect to bus' >&2; exit 1"]),
                sysrq_trigger: Some(trigger.clone()),
                ..RemediationConfig::default()
            },
        };
        let done = host.perform(RemediationStep::Reboot).await?;
        assert!(done.contains("Failed to connect to bus") && done.contains("sysrq-trigger"), "{done}");
        assert_eq!(std::fs::read_to_string(&trigger).map_err(|e| e.to_string())?, "b", "sync, then reboot");
        Ok(())
    }

    #[tokio::test]
    async fn a_reimage_without_a_script_or_with_a_failing_one_is_an_error() {
        let mut config = RemediationConfig { reboot: command(&["true"]), sysrq_trigger: None, ..RemediationConfig::default() };
        let host = CommandHost { config: config.clone() };
        assert!(host.perform(RemediationStep::Reimage).await.is_err_and(|e| e.contains("no reimage command")));
        config.reimage = Some(command(&["sh", "-c", "echo 'rocm reinstall failed' >&2; exit 3"]));
        let host = CommandHost { config };
        assert!(host.perform(RemediationStep::Reimage).await.is_err_and(|e| e.contains("rocm reinstall failed")));
    }
}
