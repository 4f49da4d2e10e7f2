//! The `resetGpu` step: reset the one GPU the controller's record names with the vendor's tool
//! (`nvidia-smi -r -i <bus id>`, `amd-smi reset --gpureset -g <bus id>`), under a deadline, then run this
//! node's GPU tool probes. Succeeded only when the tool exited 0 and every one of those probes then passes:
//! a tool that says "done" proves nothing about the GPU.

use std::time::Duration;

use nodemedic_core::gpu::GpuDevice;
use nodemedic_core::observe::ReportedOutcome;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::check::{ProbeMemory, configured_probes, run_probe_remembering};
use crate::config::AgentConfig;
use crate::exec::{SearchPath, run_with_timeout};
use crate::gpu_count::ExpectedGpus;
use crate::probe::{TextDuration, format_duration};
use crate::verdict::{Health, Verdict};

/// Which vendor tool resets a GPU on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetTool {
    #[default]
    NvidiaSmi,
    AmdSmi,
}

/// `remediation.gpu_reset`: the tool, where it is (a name is looked up on the agent's search path) and how
/// long a reset may take before it is killed and reported Failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuResetConfig {
    pub tool: ResetTool,
    /// The program; by default `nvidia-smi` or `amd-smi`.
    pub path: Option<String>,
    pub timeout: TextDuration,
}

impl Default for GpuResetConfig {
    fn default() -> Self {
        GpuResetConfig { tool: ResetTool::NvidiaSmi, path: None, timeout: TextDuration(Duration::from_secs(60)) }
    }
}

impl GpuResetConfig {
    /// The program and its arguments for resetting `gpu`. Both tools take a PCI bus id, which names the
    /// same GPU whatever order a tool numbers them in (indices differ between tools and CUDA).
    pub fn command(&self, gpu: &GpuDevice) -> (String, Vec<String>) {
        let bus = gpu.pci_bus_id.clone();
        match self.tool {
            ResetTool::NvidiaSmi => (self.path.clone().unwrap_or_else(|| "nvidia-smi".into()), vec!["-r".into(), "-i".into(), bus]),
            ResetTool::AmdSmi => {
                (self.path.clone().unwrap_or_else(|| "amd-smi".into()), vec!["reset".into(), "--gpureset".into(), "-g".into(), bus])
            }
        }
    }
}

/// Resets `gpu`, then asks `verify` for the GPU probes' verdicts (by probe name). Failed when the tool is
/// missing, exits non-zero (a GPU still in use is refused), outlives its deadline, or when any verdict is
/// not Healthy or there is none to ask.
pub fn reset_and_verify(
    config: &GpuResetConfig,
    gpu: &GpuDevice,
    search: &SearchPath,
    verify: impl FnOnce() -> Vec<(String, Verdict)>,
) -> (ReportedOutcome, String) {
    let (program, args) = config.command(gpu);
    let shown = format!("{program} {}", args.join(" "));
    let output = match run_with_timeout(&program, &args, config.timeout.0, search) {
        Ok(output) => output,
        Err(error) => return (ReportedOutcome::Failed, format!("resetting {gpu}: {error}")),
    };
    if output.timed_out {
        let limit = format_duration(config.timeout.0);
        return (ReportedOutcome::Failed, format!("resetting {gpu}: `{shown}` did not finish within {limit} and was killed"));
    }
    if output.exit_code != Some(0) {
        let said = crate::tools::what_it_said(&output);
        let status = output.exit_code.map_or("a signal".to_string(), |c| format!("exit {c}"));
        return (ReportedOutcome::Failed, format!("resetting {gpu}: `{shown}` refused ({status}): {said}"));
    }
    let verdicts = verify();
    if verdicts.is_empty() {
        return (ReportedOutcome::Failed, format!("`{shown}` exited 0 but no GPU probe is configured to confirm {gpu} works"));
    }
    let failing: Vec<String> = verdicts
        .iter()
        .filter(|(_, v)| v.health != Health::Healthy)
        .map(|(name, v)| format!("{name}: {:?} {}", v.health, v.message))
        .collect();
    if failing.is_empty() {
        let names: Vec<&str> = verdicts.iter().map(|(n, _)| n.as_str()).collect();
        (ReportedOutcome::Succeeded, format!("reset {gpu} (`{shown}`); {} pass", names.join(", ")))
    } else {
        (ReportedOutcome::Failed, format!("`{shown}` exited 0 but {gpu} still fails: {}", failing.join("; ")))
    }
}

/// This node's GPU tool probes, run once afresh: every configured GPU-family probe but the kernel log,
/// whose fault history still holds the fault the reset was for (the agent ends it once this verdict
/// confirms the reset, [`crate::kernel_follow::KernelLogFollower::reset_succeeded`]).
pub fn gpu_tool_verdicts(config: &AgentConfig, catalog: &Catalog, search: &SearchPath, expected: ExpectedGpus) -> Vec<(String, Verdict)> {
    let memory = ProbeMemory::default();
    configured_probes(config)
        .into_iter()
        .filter(|name| name != "kernel-log" && config.family_of(name) == crate::plugin::Family::Gpu)
        .filter_map(|name| run_probe_remembering(config, catalog, search, &name, &memory, expected).map(|v| (name, v)))
        .collect()
}
