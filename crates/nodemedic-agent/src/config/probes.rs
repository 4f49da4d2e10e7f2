//! Each probe's section of the agent config: its tool (path, arguments, timeout) and what it expects.

use super::*;

/// A tool invocation: program (path or PATH name), arguments and timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    pub path: String,
    pub args: Vec<String>,
    pub timeout: TextDuration,
}

/// A probe section that runs one tool: `path`, `args`, `timeout`, plus the probe's own fields.
macro_rules! tool_probe {
    ($(#[$doc:meta])* $name:ident, $path:expr, [$($arg:expr),*], $timeout:expr $(, $(#[$fdoc:meta])* $field:ident : $ty:ty)*) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            pub path: String,
            pub args: Vec<String>,
            pub timeout: TextDuration,
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    path: $path.to_string(),
                    args: vec![$($arg.to_string()),*],
                    timeout: TextDuration(Duration::from_secs($timeout)),
                    $($field: Default::default(),)*
                }
            }
        }

        impl $name {
            pub fn tool(&self) -> ToolSpec {
                ToolSpec { path: self.path.clone(), args: self.args.clone(), timeout: self.timeout }
            }
        }
    };
}

/// Which nvidia-smi output the configured arguments produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NvidiaSmiFormat {
    /// `-q -x`
    #[default]
    Xml,
    /// `-q` (any `-d`)
    QueryText,
    /// `--query-gpu=… --format=csv`
    Csv,
    /// plain `nvidia-smi` (the default table: GPU count, ERR! and the volatile uncorrectable ECC column)
    Table,
}

/// Which rocm-smi output the configured arguments produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RocmSmiFormat {
    /// `--json`
    #[default]
    Json,
    /// the text listing (`GPU[n] : …` lines and `ERROR:` lines)
    Text,
}

tool_probe!(
    /// `nvidia-smi` (the fallback for NVML).
    NvidiaSmiProbe, "nvidia-smi", ["-q", "-x"], 20, format: NvidiaSmiFormat
);
tool_probe!(
    /// `rocm-smi --json`.
    RocmSmiProbe, "rocm-smi", ["--showuse", "--showtemp", "--showrasinfo", "all", "--json"], 20,
    /// Dotted metric paths each card must report (JSON format only).
    required_metrics: Vec<String>,
    /// The output the arguments produce.
    format: RocmSmiFormat
);
tool_probe!(
    /// `amd-smi … --json` (or `--csv`).
    AmdSmiProbe, "amd-smi", ["metric", "--json"], 20,
    /// Dotted metric paths each GPU must report.
    required_metrics: Vec<String>
);
tool_probe!(
    /// `nvidia-smi nvlink -s` (or `c2c -s`): every NVLink / C2C link active.
    NvlinkProbe, "nvidia-smi", ["nvlink", "-s"], 20
);
tool_probe!(
    /// `rocminfo` (GPU agent count).
    RocminfoProbe, "rocminfo", [], 20
);
tool_probe!(
    /// `dcgmi health -c -j`.
    DcgmiProbe, "dcgmi", ["health", "-c", "-j"], 20
);
tool_probe!(
    /// Ookla `speedtest --format=json`.
    SpeedtestProbe, "speedtest", ["--format=json", "--accept-license", "--accept-gdpr"], 60,
    /// Download below this is unhealthy.
    min_download_mbits_per_second: f64
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelLogProbe {
    /// /dev/kmsg (followed record by record), a FIFO, or a log file (followed as it grows).
    pub source: PathBuf,
    /// The fault history (escalation counts, active faults, how far the log was read); it must survive a reboot
    /// (a hostPath, like the remediation state file).
    pub state_file: PathBuf,
    /// How long a fault line keeps the probe unhealthy within the boot it was logged in.
    pub hold: TextDuration,
    /// Where this boot's ID is read (a new ID is a new boot: kmsg numbering restarts, active faults end).
    pub boot_id_file: PathBuf,
}

impl Default for KernelLogProbe {
    fn default() -> Self {
        KernelLogProbe {
            source: PathBuf::from("/dev/kmsg"),
            state_file: PathBuf::from("/var/lib/nodemedic/kernel-faults.json"),
            hold: TextDuration(Duration::from_secs(30 * 60)),
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfinibandProbe {
    /// Where the ports are read from.
    pub source: IbSource,
    /// The command for the `ibstat` / `rdma-link` sources (default `ibstat`, or `rdma -j link show`).
    pub tool: Option<ToolSpec>,
    pub sysfs_root: PathBuf,
    pub expected_ports: Option<u32>,
    pub min_rate_gbps: Option<f64>,
    /// Only these devices are checked (all when empty).
    pub devices: Vec<String>,
    /// Cumulative `link_downed` above this is a flapping link (default 50; null: no bound).
    pub max_link_downed: Option<u64>,
    /// Cumulative port error counter above this is unhealthy (default 1000; null: no bound).
    pub max_error_count: Option<u64>,
    /// Growth of a port error counter between two readings above this is unhealthy (default 10; null: no bound).
    pub max_error_growth: Option<u64>,
}

impl Default for InfinibandProbe {
    fn default() -> Self {
        let bounds = IbExpectations::default();
        InfinibandProbe {
            source: IbSource::Sysfs,
            tool: None,
            sysfs_root: PathBuf::from("/sys/class/infiniband"),
            expected_ports: None,
            min_rate_gbps: None,
            devices: Vec::new(),
            max_link_downed: bounds.max_link_downed,
            max_error_count: bounds.max_error_count,
            max_error_growth: bounds.max_error_growth,
        }
    }
}

/// Where the InfiniBand probe reads its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IbSource {
    /// `sysfs_root` (state, rate and counters: the only source with flap and error-counter findings).
    #[default]
    Sysfs,
    /// `ibstat` text.
    Ibstat,
    /// `rdma -j link show` JSON.
    RdmaLink,
}

impl InfinibandProbe {
    /// The command for a tool source: the configured one, or the source's usual command.
    pub fn tool_for_source(&self) -> ToolSpec {
        self.tool.clone().unwrap_or_else(|| {
            let (path, args): (&str, &[&str]) = match self.source {
                IbSource::Ibstat | IbSource::Sysfs => ("ibstat", &[]),
                IbSource::RdmaLink => ("rdma", &["-j", "link", "show"]),
            };
            ToolSpec {
                path: path.to_string(),
                args: args.iter().map(|a| a.to_string()).collect(),
                timeout: TextDuration(Duration::from_secs(20)),
            }
        })
    }

    pub fn expectations(&self) -> IbExpectations {
        IbExpectations {
            expected_ports: self.expected_ports,
            min_rate_gbps: self.min_rate_gbps,
            devices: self.devices.clone(),
            max_link_downed: self.max_link_downed,
            max_error_count: self.max_error_count,
            max_error_growth: self.max_error_growth,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iperf3Probe {
    pub peer: String,
    #[serde(default = "default_iperf_path")]
    pub path: String,
    #[serde(default = "default_iperf_seconds")]
    pub seconds: u32,
    pub min_gbits_per_second: f64,
    #[serde(default = "default_iperf_timeout")]
    pub timeout: TextDuration,
}

pub(super) fn default_iperf_path() -> String {
    "iperf3".to_string()
}
pub(super) fn default_iperf_seconds() -> u32 {
    5
}
pub(super) fn default_iperf_timeout() -> TextDuration {
    TextDuration(Duration::from_secs(20))
}

/// `ethtool <if>` for each interface (link detected, speed), and `ethtool -S <if>` when `max_errors` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EthtoolProbe {
    pub interfaces: Vec<String>,
    #[serde(default = "default_ethtool_path")]
    pub path: String,
    /// A link slower than this (Mb/s) is unhealthy.
    #[serde(default)]
    pub min_speed_mbps: Option<u64>,
    /// Error counters of `ethtool -S` summing above this are unhealthy; None skips `-S`.
    #[serde(default)]
    pub max_errors: Option<u64>,
    #[serde(default = "default_ethtool_timeout")]
    pub timeout: TextDuration,
}

pub(super) fn default_ethtool_path() -> String {
    "ethtool".to_string()
}
pub(super) fn default_ethtool_timeout() -> TextDuration {
    TextDuration(Duration::from_secs(10))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingProbe {
    pub peer: String,
    #[serde(default = "default_ping_path")]
    pub path: String,
    #[serde(default = "default_ping_count")]
    pub count: u32,
    #[serde(default)]
    pub max_loss_percent: f64,
    #[serde(default)]
    pub max_avg_rtt_ms: Option<f64>,
    #[serde(default = "default_ping_timeout")]
    pub timeout: TextDuration,
}

pub(super) fn default_ping_path() -> String {
    "ping".to_string()
}
pub(super) fn default_ping_count() -> u32 {
    5
}
pub(super) fn default_ping_timeout() -> TextDuration {
    TextDuration(Duration::from_secs(15))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskProbe {
    /// Mount points that must be mounted read-write.
    pub mounts: Vec<String>,
    /// Less free space than this (percent, as `df` counts it) is unhealthy.
    pub min_free_percent: f64,
    /// Where the mount table is read from.
    pub mounts_file: PathBuf,
}

impl Default for DiskProbe {
    fn default() -> Self {
        DiskProbe { mounts: vec!["/".to_string()], min_free_percent: 5.0, mounts_file: PathBuf::from("/proc/mounts") }
    }
}

/// A command the agent runs on the host: argv (the first word a path or a PATH name) and a time limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    #[serde(default = "default_command_timeout")]
    pub timeout: TextDuration,
}

pub(super) fn default_command_timeout() -> TextDuration {
    TextDuration(Duration::from_secs(120))
}
