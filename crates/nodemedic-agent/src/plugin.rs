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
    /// The probe family the plugin reports into (its verdict joins that family's condition, so an existing GPU
    /// plugin can feed `GPUProblem`). Unset, the plugin publishes a condition of its own name, which a policy
    /// names with `check: {name: <plugin name>, plugin: true}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
}

/// A probe family: the contract's, owned by nodemedic-core.
pub use nodemedic_core::ProbeFamily as Family;

impl PluginSpec {
    /// The Node condition the plugin's verdict is published in.
    pub fn condition_type(&self) -> &str {
        match self.family {
            Some(family) => family.condition_type(),
            None => &self.name,
        }
    }

    /// The family whose run rules apply to the plugin ([`nodemedic_core::probes_may_run`]); a plugin with
    /// its own condition runs like the custom family.
    pub fn run_family(&self) -> Family {
        self.family.unwrap_or(Family::Custom)
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
