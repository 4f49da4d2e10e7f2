//! The agent's configuration file (YAML): which probes run, where their tools are, and what the node should
//! look like (GPU count, InfiniBand rate, iperf peer, custom plugins). A probe runs when its section is present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::parse::infiniband::IbExpectations;
use crate::plugin::{Family, PluginSpec};
use crate::probe::{ProbeSchedule, ScheduleError, TextDuration};

mod probes;

pub use probes::*;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading agent config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("agent config is invalid: {0}")]
    Yaml(String),
    #[error("agent config probe {probe}: {source}")]
    Schedule { probe: String, source: ScheduleError },
    #[error("agent config: {0}")]
    Invalid(String),
}

/// Node-local remediation: how this node is rebooted or reimaged when its NodeRemediation asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemediationConfig {
    /// Attempts are written here (and fsynced) before anything is done; it must survive a reboot (a hostPath).
    pub state_file: PathBuf,
    /// The reboot, in the host's namespaces (the pod runs with hostPID).
    pub reboot: CommandSpec,
    /// Written `s` (sync) then `b` (reboot now) when the reboot command fails or hangs; none disables it.
    pub sysrq_trigger: Option<PathBuf>,
    /// The site's reimage script, run before the reboot; without it a reimage request is reported Failed.
    pub reimage: Option<CommandSpec>,
    /// After the reboot command returned, how long the node may take to come back with a new boot ID before the
    /// attempt is reported Failed (only reached when the node did not go down).
    pub reboot_grace: TextDuration,
    /// At start, how long a boot ID that still matches the attempt's may take to change (the kubelet may not have
    /// posted the new one yet) before the attempt is reported Failed.
    pub boot_id_wait: TextDuration,
    /// The `resetGpu` step: the vendor tool and its deadline.
    pub gpu_reset: crate::gpu_reset::GpuResetConfig,
}

impl Default for RemediationConfig {
    fn default() -> Self {
        let host = ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "systemctl", "reboot"];
        RemediationConfig {
            state_file: PathBuf::from("/var/lib/nodemedic/attempts.json"),
            reboot: CommandSpec { argv: host.iter().map(|w| w.to_string()).collect(), timeout: default_command_timeout() },
            sysrq_trigger: Some(PathBuf::from("/proc/sysrq-trigger")),
            reimage: None,
            reboot_grace: TextDuration(Duration::from_secs(600)),
            boot_id_wait: TextDuration(Duration::from_secs(60)),
            gpu_reset: Default::default(),
        }
    }
}

/// Every probe section; a present section turns the probe on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    pub nvml: Option<NvmlProbe>,
    pub nvidia_smi: Option<NvidiaSmiProbe>,
    pub nvlink: Option<NvlinkProbe>,
    pub rocm_smi: Option<RocmSmiProbe>,
    pub amd_smi: Option<AmdSmiProbe>,
    pub rocminfo: Option<RocminfoProbe>,
    pub dcgmi_health: Option<DcgmiProbe>,
    pub kernel_log: Option<KernelLogProbe>,
    pub infiniband: Option<InfinibandProbe>,
    pub ethtool: Option<EthtoolProbe>,
    pub iperf3: Option<Iperf3Probe>,
    pub ping: Option<PingProbe>,
    pub speedtest: Option<SpeedtestProbe>,
    pub disk: Option<DiskProbe>,
    pub plugins: Vec<PluginSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NvmlProbe {}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// GPUs this node should have. When set it is used for every vendor; when absent the running agent reads
    /// the node's `nvidia.com/gpu.count` / `amd.com/gpu.count` labels, and without those skips the count check.
    pub expected_gpus: Option<u32>,
    /// PCIe replays since reset above which a GPU is unhealthy.
    pub max_pcie_replays: u64,
    /// PATH used to find tools (and given to them); the agent's own PATH when absent.
    pub search_path: Option<String>,
    /// A fault catalog replacing the embedded default.
    pub catalog_file: Option<PathBuf>,
    /// Schedule shared by all probes.
    pub schedule: ProbeSchedule,
    /// Per-probe schedules by probe name (as `check --once` prints them: `nvidia-smi`, `kernel-log`,
    /// `plugin/<name>`…), replacing `schedule` for that probe.
    pub schedules: BTreeMap<String, ProbeSchedule>,
    pub probes: ProbesConfig,
    /// Repair taints start with this: while `<prefix>repair-*` or `<prefix>draining` is on the node the GPU
    /// probes pause (unless the controller is verifying a repair).
    pub taint_prefix: String,
    pub remediation: RemediationConfig,
    /// Self-fencing (off when absent): see [`crate::selffence`].
    pub self_fencing: Option<crate::selffence::SelfFencingConfig>,
}

/// The probe names `check --once` reports, apart from `plugin/<name>`.
pub const PROBE_NAMES: &[&str] = &[
    "nvml",
    "nvidia-smi",
    "nvlink",
    "rocm-smi",
    "amd-smi",
    "rocminfo",
    "dcgmi",
    "kernel-log",
    "infiniband",
    "ping",
    "iperf3",
    "speedtest",
    "disk",
];

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            expected_gpus: None,
            max_pcie_replays: 1000,
            search_path: None,
            catalog_file: None,
            schedule: ProbeSchedule::default(),
            schedules: BTreeMap::new(),
            probes: ProbesConfig::default(),
            taint_prefix: "nodemedic.io/".to_string(),
            remediation: RemediationConfig::default(),
            self_fencing: None,
        }
    }
}

impl AgentConfig {
    pub fn from_yaml(text: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = nodemedic_core::input::from_yaml_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        AgentConfig::from_yaml(&text)
    }

    /// The schedule that applies to `probe`.
    pub fn schedule_for(&self, probe: &str) -> &ProbeSchedule {
        self.schedules.get(probe).unwrap_or(&self.schedule)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.schedule.validate().map_err(|source| ConfigError::Schedule { probe: "schedule".to_string(), source })?;
        for (probe, schedule) in &self.schedules {
            let plugin = probe.strip_prefix("plugin/").is_some_and(|name| self.probes.plugins.iter().any(|p| p.name == name));
            if !plugin && !PROBE_NAMES.contains(&probe.as_str()) {
                return Err(ConfigError::Invalid(format!("schedules names unknown probe {probe:?}")));
            }
            schedule.validate().map_err(|source| ConfigError::Schedule { probe: probe.clone(), source })?;
        }
        let mut names = std::collections::HashSet::new();
        for plugin in &self.probes.plugins {
            if plugin.name.trim().is_empty() {
                return Err(ConfigError::Invalid("a plugin has an empty name".to_string()));
            }
            if !names.insert(plugin.name.as_str()) {
                return Err(ConfigError::Invalid(format!("two plugins are named {:?}", plugin.name)));
            }
            // Without a family the plugin's name is the condition type it publishes.
            if plugin.family.is_none()
                && let Err(error) = nodemedic_core::probe::validate_plugin_name(&plugin.name)
            {
                return Err(ConfigError::Invalid(format!("plugin {:?}: {error}", plugin.name)));
            }
        }
        if let Some(iperf) = &self.probes.iperf3
            && !(iperf.min_gbits_per_second.is_finite() && iperf.min_gbits_per_second >= 0.0)
        {
            return Err(ConfigError::Invalid("iperf3.min_gbits_per_second must be a non-negative number".to_string()));
        }
        if self.probes.ethtool.as_ref().is_some_and(|e| e.interfaces.is_empty()) {
            return Err(ConfigError::Invalid("ethtool.interfaces must name at least one interface".to_string()));
        }
        if self.remediation.reboot.argv.is_empty() {
            return Err(ConfigError::Invalid("remediation.reboot.argv must name a command".to_string()));
        }
        if self.remediation.reimage.as_ref().is_some_and(|r| r.argv.is_empty()) {
            return Err(ConfigError::Invalid("remediation.reimage.argv must name a command".to_string()));
        }
        if let Some(sf) = &self.self_fencing {
            sf.validate().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The family whose run rules apply to a probe (by its `check --once` name).
    pub fn family_of(&self, probe: &str) -> Family {
        match probe {
            "nvml" | "nvidia-smi" | "nvlink" | "rocm-smi" | "amd-smi" | "rocminfo" | "dcgmi" | "kernel-log" => Family::Gpu,
            "infiniband" | "ethtool" | "ping" | "iperf3" | "speedtest" => Family::Network,
            "disk" => Family::Disk,
            other => self.plugin(other).map_or(Family::Custom, PluginSpec::run_family),
        }
    }

    /// The Node condition a probe's verdict is published in: its family's, or a plugin's own.
    pub fn condition_of(&self, probe: &str) -> String {
        match self.plugin(probe) {
            Some(plugin) => plugin.condition_type().to_string(),
            None => self.family_of(probe).condition_type().to_string(),
        }
    }

    fn plugin(&self, probe: &str) -> Option<&PluginSpec> {
        probe.strip_prefix("plugin/").and_then(|name| self.probes.plugins.iter().find(|p| p.name == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_reads() -> Result<(), ConfigError> {
        let yaml = r#"
expected_gpus: 8
schedule: { interval: 30s, timeout: 20s, jitter: 5s, failures_before_unhealthy: 3, passes_before_healthy: 2 }
probes:
  nvidia_smi: { path: /usr/bin/nvidia-smi, args: ["-q", "-x"], timeout: 15s }
  rocm_smi: {}
  infiniband: { sysfs_root: /sys/class/infiniband, min_rate_gbps: 400, expected_ports: 8 }
  iperf3: { peer: 10.0.0.2, min_gbits_per_second: 100 }
  ping: { peer: 10.0.0.1, max_loss_percent: 1 }
  plugins:
    - { name: ntp, path: /etc/npd/check_ntp.sh, timeout: 5s }
"#;
        let config = AgentConfig::from_yaml(yaml)?;
        assert_eq!(config.expected_gpus, Some(8));
        assert_eq!(config.probes.nvidia_smi.as_ref().map(|p| p.timeout.0), Some(Duration::from_secs(15)));
        assert_eq!(config.probes.rocm_smi.as_ref().map(|p| p.path.as_str()), Some("rocm-smi"));
        assert_eq!(config.probes.infiniband.as_ref().and_then(|p| p.min_rate_gbps), Some(400.0));
        assert_eq!(config.probes.plugins.len(), 1);
        Ok(())
    }

    #[test]
    fn the_example_config_reads() -> Result<(), ConfigError> {
        let config = AgentConfig::from_yaml(include_str!("../../agent.example.yaml"))?;
        assert_eq!(config.expected_gpus, Some(8));
        assert_eq!(config.schedule_for("iperf3").interval.0, Duration::from_secs(600));
        assert_eq!(config.probes.disk.as_ref().map(|d| d.mounts.len()), Some(2));
        assert_eq!(config.probes.plugins.len(), 1);
        Ok(())
    }

    #[test]
    fn a_probe_can_have_its_own_schedule() -> Result<(), ConfigError> {
        let yaml =
            "schedules:\n  iperf3: { interval: 10m, timeout: 1m }\nprobes:\n  iperf3: { peer: 10.0.0.2, min_gbits_per_second: 10 }\n";
        let config = AgentConfig::from_yaml(yaml)?;
        assert_eq!(config.schedule_for("iperf3").interval.0, Duration::from_secs(600));
        assert_eq!(config.schedule_for("iperf3").failures_before_unhealthy, 3);
        assert_eq!(config.schedule_for("nvidia-smi").interval.0, Duration::from_secs(30));
        let typo = AgentConfig::from_yaml("schedules:\n  iperf: { interval: 10m, timeout: 1m }\n").err().map(|e| e.to_string());
        assert!(typo.is_some_and(|e| e.contains("\"iperf\"")));
        Ok(())
    }

    #[test]
    fn the_daemonset_example_config_reads() -> Result<(), ConfigError> {
        let manifest = include_str!("../../../../deploy/agent-daemonset.yaml");
        let block: Vec<&str> = manifest
            .lines()
            .skip_while(|l| l.trim() != "agent.yaml: |")
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| &l[4..])
            .collect();
        let config = AgentConfig::from_yaml(&block.join("\n"))?;
        assert!(config.probes.nvml.is_some());
        assert_eq!(config.remediation.reboot.argv.first().map(String::as_str), Some("nsenter"));
        assert_eq!(config.family_of("kernel-log"), Family::Gpu);
        let safe = config.self_fencing.as_ref().map(|s| s.safe_time(true).map(|d| d.to_string()));
        assert_eq!(safe, Some(Ok("2m55s".to_string())), "the manifest's comment gives this figure");
        Ok(())
    }

    #[test]
    fn a_plugin_without_a_family_publishes_a_condition_of_its_own_name() -> Result<(), ConfigError> {
        let yaml = "probes:\n  plugins:\n    - { name: nccl-allreduce, path: /bin/true }\n    - { name: fabric, path: /bin/true, family: network }\n";
        let config = AgentConfig::from_yaml(yaml)?;
        assert_eq!(config.condition_of("plugin/nccl-allreduce"), "nccl-allreduce");
        assert_eq!(config.family_of("plugin/nccl-allreduce"), Family::Custom, "it runs by the custom family's rule");
        assert_eq!(config.condition_of("plugin/fabric"), "NetworkProblem");
        assert_eq!(config.condition_of("nvidia-smi"), "GPUProblem");
        Ok(())
    }

    #[test]
    fn a_plugin_named_like_a_kubelet_or_family_condition_is_refused() {
        for name in ["Ready", "GPUProblem", "gpu", "bad name"] {
            let yaml = format!("probes:\n  plugins:\n    - {{ name: \"{name}\", path: /bin/true }}\n");
            assert!(AgentConfig::from_yaml(&yaml).is_err(), "{name}");
        }
        let fed = "probes:\n  plugins:\n    - { name: Ready, path: /bin/true, family: gpu }\n";
        assert!(AgentConfig::from_yaml(fed).is_ok(), "a plugin that feeds a family publishes no condition of its own");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = AgentConfig::from_yaml("probes:\n  nvidia_smy: {}\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("nvidia_smy"), "{error}");
    }
}
