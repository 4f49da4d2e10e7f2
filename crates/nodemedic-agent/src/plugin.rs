//! Custom checks with node-problem-detector's custom-plugin protocol, so existing NPD plugins work unchanged:
//! exit 0 means OK, exit 1 means a problem, any other exit (or a timeout) means unknown; stdout is the message,
//! cut to a bound.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::{ExecError, SearchPath, run_with_timeout};
use crate::probe::TextDuration;
use crate::verdict::{Reason, Verdict};

/// NPD's default message bound.
pub const PLUGIN_MESSAGE_LIMIT_BYTES: usize = 80;

/// One configured plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub name: String,
    /// The program (a path, or a name looked up on PATH).
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_plugin_timeout")]
    pub timeout: TextDuration,
    /// Bytes of stdout kept as the message.
    #[serde(default = "default_message_limit")]
    pub max_output_bytes: usize,
    /// The condition family the plugin reports into (`custom` → `CustomProblem` unless set, so an existing GPU
    /// plugin can feed `GPUProblem`).
    #[serde(default)]
    pub family: Family,
}

/// A probe family: one Node condition, `<Family>Problem`, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Gpu,
    Network,
    Disk,
    #[default]
    Custom,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Gpu, Family::Network, Family::Disk, Family::Custom];

    /// The Node condition type the family publishes (node-problem-detector style: True means a problem).
    pub fn condition_type(self) -> &'static str {
        match self {
            Family::Gpu => "GPUProblem",
            Family::Network => "NetworkProblem",
            Family::Disk => "DiskProblem",
            Family::Custom => "CustomProblem",
        }
    }

    /// The family as the controller's probe rules know it.
    pub fn core(self) -> nodemedic_core::ProbeFamily {
        match self {
            Family::Gpu => nodemedic_core::ProbeFamily::Gpu,
            Family::Network => nodemedic_core::ProbeFamily::Network,
            Family::Disk => nodemedic_core::ProbeFamily::Disk,
            Family::Custom => nodemedic_core::ProbeFamily::Custom,
        }
    }
}

fn default_plugin_timeout() -> TextDuration {
    TextDuration(Duration::from_secs(5))
}

fn default_message_limit() -> usize {
    PLUGIN_MESSAGE_LIMIT_BYTES
}

/// Maps a plugin's exit to a verdict (the protocol, without running anything).
pub fn plugin_verdict(name: &str, exit_code: Option<i32>, timed_out: bool, stdout: &str, limit: usize) -> Verdict {
    let message = crate::verdict::truncate_message(stdout, limit);
    match (timed_out, exit_code) {
        (true, _) => Verdict::unknown(Reason::CustomCheckUnknown, format!("{name}: timed out")),
        (false, Some(0)) => Verdict::healthy(if message.is_empty() { format!("{name}: ok") } else { message }),
        (false, Some(1)) => {
            Verdict::unhealthy(Reason::CustomCheckProblem, if message.is_empty() { format!("{name}: problem") } else { message })
        }
        (false, Some(code)) => Verdict::unknown(Reason::CustomCheckUnknown, format!("{name}: exit {code}: {message}")),
        (false, None) => Verdict::unknown(Reason::CustomCheckUnknown, format!("{name}: killed by a signal")),
    }
}

/// Runs one plugin.
pub fn run_plugin(spec: &PluginSpec, search: &SearchPath) -> Verdict {
    match run_with_timeout(&spec.path, &spec.args, spec.timeout.0, search) {
        Ok(output) => plugin_verdict(&spec.name, output.exit_code, output.timed_out, &output.stdout, spec.max_output_bytes),
        Err(ExecError::NotFound { program }) => Verdict::unknown(Reason::ToolMissing, format!("{}: {program} not found", spec.name)),
        Err(other) => Verdict::unknown(Reason::CustomCheckUnknown, format!("{}: {other}", spec.name)),
    }
}
