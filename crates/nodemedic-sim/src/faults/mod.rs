//! The fault model of the fleet simulator: what goes wrong, where, when, how it
//! shows up, and what it takes to fix it.
//!
//! Everything here is plain data plus one pure function, [`generate`], which
//! turns a [`FaultModel`] and a [`FleetSpec`] into a deterministic, sorted list
//! of [`Fault`]s for a seed. Nothing reads a clock; times are milliseconds
//! since the start of the simulated run.
//!
//! The default model is calibrated on published data; see
//! `docs/fault-model.md` for every number, its source and the assumptions
//! made where no source was found.
//!
//! Three independent populations are generated, each as a Poisson process
//! (exponential inter-arrival times) over the whole fleet:
//!
//! 1. **Unexpected interruptions**: the Llama 3 Table 5 root causes, at the
//!    Llama 3 rate, with a per-cause symptom split and fix split. A small set of
//!    *lemon* nodes receives a multiplied share of these, and most of a lemon's
//!    faults repeat the same latent defect (same cause, same GPU), so repairing
//!    one occurrence does not stop the next.
//! 2. **Network flaps**: bursts of short slow-network episodes on one node that
//!    clear by themselves.
//! 3. **Probe false positives**: a health probe reports a GPU or network problem
//!    on healthy hardware; it clears on the next probe round.
//! 4. **Rack power events** (off by default): every node of one rack goes down
//!    within a short spread and comes back when power returns: the correlated
//!    mass failure a circuit breaker exists for.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Exp1, StandardNormal};
use serde::{Deserialize, Serialize};
use std::fmt;

mod generate;
mod model;
mod repair;
#[cfg(test)]
mod tests;

pub use generate::*;
pub use model::*;
pub use repair::*;

/// Milliseconds in a second.
pub const MS_PER_SECOND: i64 = 1_000;
/// Milliseconds in a minute.
pub const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
/// Milliseconds in an hour.
pub const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// GPUs in the Llama 3 405B pre-training cluster (Llama 3 paper, section 3.3.4).
pub const LLAMA3_GPUS: u32 = 16_384;
/// Length of the Llama 3 pre-training snapshot that Table 5 covers, in days.
pub const LLAMA3_DAYS: u32 = 54;
/// Unexpected interruptions in that snapshot (sum of Table 5).
pub const LLAMA3_UNEXPECTED_INTERRUPTIONS: u32 = 419;
/// Planned interruptions in that snapshot (not modelled; see the docs).
pub const LLAMA3_PLANNED_INTERRUPTIONS: u32 = 47;
/// GPUs per server in the Llama 3 cluster (Grand Teton, 8x H100).
pub const LLAMA3_GPUS_PER_NODE: u8 = 8;

/// Upper bound on the faults one population may produce, so that an absurd
/// model cannot exhaust memory. Far above anything a sane model produces.
pub const MAX_FAULTS_PER_POPULATION: usize = 20_000_000;

/// Upper bound on flaps in one flap episode.
pub const MAX_FLAPS_PER_EPISODE: u32 = 64;

/// The simulated fleet: how many nodes, how many GPUs each, for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSpec {
    /// Number of nodes; nodes are numbered `0..nodes`.
    pub nodes: u32,
    /// GPUs per node; GPUs are numbered `0..gpus_per_node`. 0 means CPU nodes.
    pub gpus_per_node: u8,
    /// Length of the simulated run in milliseconds.
    pub duration_ms: i64,
}

impl Default for FleetSpec {
    /// The Llama 3 pre-training cluster: 2048 nodes x 8 GPUs = 16,384 GPUs,
    /// for the 54-day snapshot of Table 5.
    fn default() -> Self {
        Self {
            nodes: LLAMA3_GPUS / u32::from(LLAMA3_GPUS_PER_NODE),
            gpus_per_node: LLAMA3_GPUS_PER_NODE,
            duration_ms: i64::from(LLAMA3_DAYS) * MS_PER_DAY,
        }
    }
}

impl FleetSpec {
    /// Total GPUs in the fleet.
    pub fn gpu_count(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }

    /// Node-days covered by the run (0 for a non-positive duration).
    pub fn node_days(&self) -> f64 {
        f64::from(self.nodes) * self.duration_days()
    }

    /// GPU-days covered by the run (0 for a non-positive duration).
    pub fn gpu_days(&self) -> f64 {
        self.gpu_count() as f64 * self.duration_days()
    }

    /// Length of the run in days (0 for a non-positive duration).
    pub fn duration_days(&self) -> f64 {
        self.duration_ms.max(0) as f64 / MS_PER_DAY as f64
    }

    /// The node class of this fleet's nodes, for repair durations.
    pub fn node_class(&self) -> NodeClass {
        if self.gpus_per_node > 0 { NodeClass::Gpu } else { NodeClass::Cpu }
    }
}

/// Which health signal the fault shows up on (what the node agent would see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Symptom {
    /// A GPU health check fails (XID, ECC, DCGM diagnostic, GPU probe).
    Gpu,
    /// Fewer GPUs are visible than the node should have (fell off the bus).
    GpuCount,
    /// Network probe fails or is slow (NIC, link, fabric).
    Network,
    /// The node stops reporting Ready (kubelet, OS, power, host hardware).
    NodeNotReady,
    /// Local disk errors or a read-only / missing filesystem.
    Disk,
}

/// The cheapest remedy that clears the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fix {
    /// Nothing to do: the fault clears by itself after `self_clear_after_ms`.
    SelfClears,
    /// A reboot (or GPU reset, which the simulator treats as a reboot) clears it.
    Reboot,
    /// The node must be re-imaged (OS / driver / firmware reinstall).
    Reimage,
    /// A hardware part (or the whole node) must be swapped.
    Replace,
}

/// Root cause category: the Llama 3 Table 5 categories, plus `FalsePositive`
/// and `NetworkFlap` for the two extra populations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// "Faulty GPU" (includes NVLink failures).
    FaultyGpu,
    /// "GPU HBM3 Memory".
    Hbm3,
    /// "Software Bug".
    SoftwareBug,
    /// "Network Switch/Cable".
    NetworkSwitchCable,
    /// "Host Maintenance" (unplanned).
    HostMaintenance,
    /// "GPU SRAM Memory".
    GpuSram,
    /// "GPU System Processor" (GSP).
    GpuSystemProcessor,
    /// "NIC".
    Nic,
    /// "NCCL Watchdog Timeouts".
    NcclWatchdog,
    /// "Silent Data Corruption".
    SilentDataCorruption,
    /// "GPU Thermal Interface + Sensor".
    GpuThermal,
    /// "SSD".
    Ssd,
    /// "Power Supply".
    PowerSupply,
    /// "Server Chassis".
    ServerChassis,
    /// "IO Expansion Board".
    IoExpansionBoard,
    /// "Dependency".
    Dependency,
    /// "CPU".
    Cpu,
    /// "System Memory".
    SystemMemory,
    /// A health probe reported a problem on healthy hardware.
    FalsePositive,
    /// A transient slow-network episode that comes and goes.
    NetworkFlap,
    /// A rack lost power: all its nodes go down together (its own population).
    RackPower,
}

impl Cause {
    /// Every cause, in declaration order.
    pub const ALL: [Cause; 21] = [
        Cause::FaultyGpu,
        Cause::Hbm3,
        Cause::SoftwareBug,
        Cause::NetworkSwitchCable,
        Cause::HostMaintenance,
        Cause::GpuSram,
        Cause::GpuSystemProcessor,
        Cause::Nic,
        Cause::NcclWatchdog,
        Cause::SilentDataCorruption,
        Cause::GpuThermal,
        Cause::Ssd,
        Cause::PowerSupply,
        Cause::ServerChassis,
        Cause::IoExpansionBoard,
        Cause::Dependency,
        Cause::Cpu,
        Cause::SystemMemory,
        Cause::FalsePositive,
        Cause::NetworkFlap,
        Cause::RackPower,
    ];

    /// Stable snake_case label for reports (identical to the serde name).
    pub fn label(&self) -> &'static str {
        match self {
            Cause::FaultyGpu => "faulty_gpu",
            Cause::Hbm3 => "hbm3",
            Cause::SoftwareBug => "software_bug",
            Cause::NetworkSwitchCable => "network_switch_cable",
            Cause::HostMaintenance => "host_maintenance",
            Cause::GpuSram => "gpu_sram",
            Cause::GpuSystemProcessor => "gpu_system_processor",
            Cause::Nic => "nic",
            Cause::NcclWatchdog => "nccl_watchdog",
            Cause::SilentDataCorruption => "silent_data_corruption",
            Cause::GpuThermal => "gpu_thermal",
            Cause::Ssd => "ssd",
            Cause::PowerSupply => "power_supply",
            Cause::ServerChassis => "server_chassis",
            Cause::IoExpansionBoard => "io_expansion_board",
            Cause::Dependency => "dependency",
            Cause::Cpu => "cpu",
            Cause::SystemMemory => "system_memory",
            Cause::FalsePositive => "false_positive",
            Cause::NetworkFlap => "network_flap",
            Cause::RackPower => "rack_power",
        }
    }

    /// True for the Llama 3 Table 5 categories (the unexpected-interruption
    /// population); false for `FalsePositive`, `NetworkFlap` and `RackPower`.
    pub fn is_unexpected_interruption(&self) -> bool {
        !matches!(self, Cause::FalsePositive | Cause::NetworkFlap | Cause::RackPower)
    }

    /// True for the categories the Llama 3 authors count as confirmed or
    /// suspected hardware (every Table 5 row except software bug, NCCL
    /// watchdog timeouts, dependency and unplanned host maintenance).
    pub fn is_hardware(&self) -> bool {
        matches!(
            self,
            Cause::FaultyGpu
                | Cause::Hbm3
                | Cause::NetworkSwitchCable
                | Cause::GpuSram
                | Cause::GpuSystemProcessor
                | Cause::Nic
                | Cause::SilentDataCorruption
                | Cause::GpuThermal
                | Cause::Ssd
                | Cause::PowerSupply
                | Cause::ServerChassis
                | Cause::IoExpansionBoard
                | Cause::Cpu
                | Cause::SystemMemory
        )
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One fault injected into the simulated fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Position in the generated list (faults are sorted by `start_ms`, then `id`).
    pub id: u32,
    /// The node it hits, in `0..nodes`.
    pub node: u32,
    /// Which GPU, for GPU-scoped causes (and GPU false positives).
    pub gpu: Option<u8>,
    /// Milliseconds since simulation start.
    pub start_ms: i64,
    /// Root cause.
    pub cause: Cause,
    /// Health signal it shows up on.
    pub symptom: Symptom,
    /// Cheapest remedy that clears this occurrence.
    pub fix: Fix,
    /// For `Fix::SelfClears` (transients, false positives, flaps): how long
    /// until it clears by itself. `None` for every other fix.
    pub self_clear_after_ms: Option<i64>,
    /// A probe false positive: the hardware is healthy; any disruptive repair
    /// is a wasted disruption.
    pub false_positive: bool,
}

impl Fault {
    /// True if this fault belongs to the unexpected-interruption population
    /// (a Llama 3 Table 5 cause): not a flap, a false positive or a rack power event.
    pub fn is_unexpected_interruption(&self) -> bool {
        self.cause.is_unexpected_interruption()
    }
}

/// Whether a cause's rate scales with the GPUs in a node or with the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    /// A GPU component fails: the rate is per GPU, and the fault names a GPU.
    Gpu,
    /// A host, network or software fault: the rate is per node.
    Node,
}

/// A clamped log-normal duration: `median_ms * exp(sigma * z)` with
/// `z ~ N(0, 1)`, clamped to `[min_ms, max_ms]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DurationDist {
    /// Median (before clamping), in ms.
    pub median_ms: i64,
    /// Standard deviation of the underlying normal (spread); 0 = constant.
    pub sigma: f64,
    /// Lower clamp, in ms.
    pub min_ms: i64,
    /// Upper clamp, in ms.
    pub max_ms: i64,
}

impl DurationDist {
    /// A clamped log-normal duration.
    pub const fn lognormal(median_ms: i64, sigma: f64, min_ms: i64, max_ms: i64) -> Self {
        Self { median_ms, sigma, min_ms, max_ms }
    }

    /// A fixed duration.
    pub const fn fixed(ms: i64) -> Self {
        Self { median_ms: ms, sigma: 0.0, min_ms: ms, max_ms: ms }
    }

    /// Draw one duration in ms, always within `[max(min_ms, 0), max(max_ms, min_ms)]`.
    pub fn sample(&self, rng: &mut impl Rng) -> i64 {
        let lo = self.min_ms.max(0);
        let hi = self.max_ms.max(lo);
        let z: f64 = rng.sample(StandardNormal);
        let sigma = if self.sigma.is_finite() { self.sigma } else { 0.0 };
        let value = self.median_ms as f64 * (sigma * z).exp();
        if value.is_finite() {
            // `as` saturates, so huge values land on i64::MAX before clamping.
            (value.round() as i64).clamp(lo, hi)
        } else {
            self.median_ms.clamp(lo, hi)
        }
    }

    /// The mean of the unclamped log-normal, in ms (a planning figure only).
    pub fn unclamped_mean_ms(&self) -> f64 {
        self.median_ms as f64 * (self.sigma * self.sigma / 2.0).exp()
    }

    fn check(&self, field: &str) -> Result<(), ModelError> {
        let bad = |reason: &'static str| ModelError::BadDuration { field: field.to_owned(), reason };
        if self.median_ms < 0 || self.min_ms < 0 || self.max_ms < 0 {
            return Err(bad("durations must not be negative"));
        }
        if self.min_ms > self.max_ms {
            return Err(bad("min_ms is greater than max_ms"));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(bad("sigma must be finite and non-negative"));
        }
        Ok(())
    }
}

/// Probability of each [`Fix`] for one cause. Must sum to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixSplit {
    /// Share that clears by itself.
    pub self_clears: f64,
    /// Share cleared by a reboot / GPU reset.
    pub reboot: f64,
    /// Share that needs a re-image.
    pub reimage: f64,
    /// Share that needs a hardware swap.
    pub replace: f64,
}

impl FixSplit {
    /// A fix split; the four shares should sum to 1.
    pub const fn new(self_clears: f64, reboot: f64, reimage: f64, replace: f64) -> Self {
        Self { self_clears, reboot, reimage, replace }
    }

    /// The share of one fix.
    pub fn share(&self, fix: Fix) -> f64 {
        match fix {
            Fix::SelfClears => self.self_clears,
            Fix::Reboot => self.reboot,
            Fix::Reimage => self.reimage,
            Fix::Replace => self.replace,
        }
    }

    /// Sum of the four shares.
    pub fn total(&self) -> f64 {
        self.self_clears + self.reboot + self.reimage + self.replace
    }

    /// Draw a fix. Falls back to `Fix::Reboot` if every share is zero or invalid.
    pub fn sample(&self, rng: &mut impl Rng) -> Fix {
        const FIXES: [Fix; 4] = [Fix::SelfClears, Fix::Reboot, Fix::Reimage, Fix::Replace];
        let cat = Categorical::new(FIXES.iter().map(|f| self.share(*f)));
        cat.sample(rng).and_then(|i| FIXES.get(i).copied()).unwrap_or(Fix::Reboot)
    }
}

/// How one root cause behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CauseSpec {
    /// The cause. Must be a Table 5 category (not `FalsePositive` / `NetworkFlap`).
    pub cause: Cause,
    /// Relative weight; the default model uses the Table 5 interruption count.
    pub weight: f64,
    /// Whether the rate scales with GPUs per node or with nodes.
    pub scope: FaultScope,
    /// Relative weights of the symptoms this cause shows up on.
    pub symptoms: Vec<(Symptom, f64)>,
    /// Probability of each cheapest fix.
    pub fixes: FixSplit,
    /// No health probe can see this cause (silent data corruption: only a validation run that checks
    /// results would, and the simulated agent runs none). Absent from older model files (false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden_from_probes: bool,
}

impl CauseSpec {
    fn sample_symptom(&self, rng: &mut impl Rng) -> Symptom {
        let cat = Categorical::new(self.symptoms.iter().map(|(_, w)| *w));
        cat.sample(rng).and_then(|i| self.symptoms.get(i).map(|(s, _)| *s)).unwrap_or(match self.scope {
            FaultScope::Gpu => Symptom::Gpu,
            FaultScope::Node => Symptom::NodeNotReady,
        })
    }
}

/// Lemon nodes: a few nodes with a latent defect that fail far more often and
/// keep failing the same way after each repair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LemonSpec {
    /// Fraction of nodes that are lemons (rounded to a whole number of nodes).
    pub node_fraction: f64,
    /// A lemon's unexpected-fault rate relative to a normal node's.
    pub rate_multiplier: f64,
    /// Probability that a lemon's fault is its recurring defect (same cause,
    /// same GPU) rather than an ordinary draw from the cause split.
    pub recurrence_probability: f64,
}

/// Network flaps: slow-network episodes that come and go on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlapSpec {
    /// Flap episodes per node per day.
    pub episodes_per_node_day: f64,
    /// Mean number of flaps in an episode (geometric, at least 1).
    pub mean_flaps_per_episode: f64,
    /// How long one flap lasts before it clears.
    pub flap_duration: DurationDist,
    /// Quiet time between two flaps of the same episode.
    pub gap: DurationDist,
}

/// Probe false positives: a probe fails on healthy hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FalsePositiveSpec {
    /// False positives per node per day.
    pub per_node_day: f64,
    /// Share that shows up on a GPU probe (`Symptom::Gpu`); the rest on the
    /// network probe (`Symptom::Network`).
    pub gpu_share: f64,
    /// How long until the probe passes again.
    pub self_clear: DurationDist,
}

/// Rack power events: a rack's power feed (PDU, busway, upstream breaker) drops and every node in
/// the rack goes down; power returns after an outage and the nodes boot back. Off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RackPowerSpec {
    /// Events per rack per day; 0 turns the population off (the default).
    pub per_rack_day: f64,
    /// Nodes per rack: rack `r` holds nodes `r * nodes_per_rack ..` (the last rack may be short).
    pub nodes_per_rack: u32,
    /// Each node of the rack goes down at a uniform offset in `[0, spread_ms)` after the event.
    pub spread_ms: i64,
    /// How long each node stays down (drawn once per event: the power comes back for all).
    pub outage: DurationDist,
}

impl Default for RackPowerSpec {
    fn default() -> Self {
        Self {
            per_rack_day: 0.0,
            nodes_per_rack: 4,
            spread_ms: MS_PER_MINUTE,
            outage: DurationDist::lognormal(30 * MS_PER_MINUTE, 0.6, 5 * MS_PER_MINUTE, 4 * MS_PER_HOUR),
        }
    }
}

/// The chance that the node agent's health probe sees a fault, per symptom it shows up on. Drawn once
/// per fault (see [`FaultDraws`]): a fault the probe misses stays invisible to it while it lasts.
/// Symptoms the kubelet reports (`NodeNotReady`, `Disk`) and missing GPUs (`GpuCount`, from the
/// device plugin's allocatable count) are always seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSensitivity {
    /// `Symptom::Gpu`: the GPU probe (XID, ECC, DCGM health) catches the fault.
    pub gpu: f64,
    /// `Symptom::Network`: the network probe catches the fault.
    pub network: f64,
}

impl Default for ProbeSensitivity {
    fn default() -> Self {
        Self { gpu: 0.9, network: 0.9 }
    }
}

impl ProbeSensitivity {
    /// The chance a probe sees a fault of this symptom (1 for symptoms no probe is needed for).
    pub fn of(&self, symptom: Symptom) -> f64 {
        match symptom {
            Symptom::Gpu => self.gpu,
            Symptom::Network => self.network,
            Symptom::GpuCount | Symptom::NodeNotReady | Symptom::Disk => 1.0,
        }
    }
}
