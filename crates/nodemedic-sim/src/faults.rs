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

/// Kind of node, for repair durations: GPU servers reboot more slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeClass {
    /// A GPU server (long POST: GPUs, NVSwitch, many NICs, big memory).
    Gpu,
    /// A CPU-only server.
    Cpu,
}

/// A remedy whose execution takes time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairKind {
    /// Reboot (or GPU reset) until the node is back and Ready.
    Reboot,
    /// Re-image until the node is back and Ready.
    Reimage,
    /// Hardware swap until the node is back in service (spares / RMA).
    Replace,
    /// Time until a human picks up an escalated node (not the repair itself).
    Manual,
}

impl RepairKind {
    /// The repair that carries out a fix; `None` for `Fix::SelfClears`.
    pub fn for_fix(fix: Fix) -> Option<RepairKind> {
        match fix {
            Fix::SelfClears => None,
            Fix::Reboot => Some(RepairKind::Reboot),
            Fix::Reimage => Some(RepairKind::Reimage),
            Fix::Replace => Some(RepairKind::Replace),
        }
    }
}

/// How long each remedy takes to execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairDurations {
    /// Reboot of a GPU server, until Ready.
    pub gpu_node_reboot: DurationDist,
    /// Reboot of a CPU server, until Ready.
    pub cpu_node_reboot: DurationDist,
    /// Re-image, end to end (any node class).
    pub reimage: DurationDist,
    /// Hands-on hardware swap, from the moment the part and the technician are there until the node
    /// is back in service.
    pub replace: DurationDist,
    /// Lead time of a replacement: from the moment a replacement is asked for (by automation or by a
    /// person) until the part and a technician are at the node (spares, RMA, scheduling). No policy
    /// shortens it, so it is booked with the repair that worked, whoever asked. Absent from older
    /// model files (then the default).
    #[serde(default = "default_replace_lead")]
    pub replace_lead: DurationDist,
    /// People's response time: from a fault that automation escalates, or that automation never acts
    /// on, until a person starts work on the node. One draw per fault, whichever way it reaches people.
    pub manual_response: DurationDist,
}

fn default_replace_lead() -> DurationDist {
    RepairDurations::default().replace_lead
}

impl Default for RepairDurations {
    fn default() -> Self {
        Self {
            gpu_node_reboot: DurationDist::lognormal(10 * MS_PER_MINUTE, 0.3, 5 * MS_PER_MINUTE, 30 * MS_PER_MINUTE),
            cpu_node_reboot: DurationDist::lognormal(3 * MS_PER_MINUTE, 0.35, MS_PER_MINUTE, 10 * MS_PER_MINUTE),
            reimage: DurationDist::lognormal(40 * MS_PER_MINUTE, 0.4, 20 * MS_PER_MINUTE, 3 * MS_PER_HOUR),
            replace: DurationDist::lognormal(4 * MS_PER_HOUR, 0.5, MS_PER_HOUR, 24 * MS_PER_HOUR),
            replace_lead: DurationDist::lognormal(24 * MS_PER_HOUR, 0.9, MS_PER_HOUR, 21 * MS_PER_DAY),
            manual_response: DurationDist::lognormal(2 * MS_PER_HOUR, 0.9, 10 * MS_PER_MINUTE, 72 * MS_PER_HOUR),
        }
    }
}

impl RepairDurations {
    /// The distribution used for a repair kind on a node class. Only reboots
    /// depend on the class.
    pub fn dist(&self, kind: RepairKind, class: NodeClass) -> &DurationDist {
        match (kind, class) {
            (RepairKind::Reboot, NodeClass::Gpu) => &self.gpu_node_reboot,
            (RepairKind::Reboot, NodeClass::Cpu) => &self.cpu_node_reboot,
            (RepairKind::Reimage, _) => &self.reimage,
            (RepairKind::Replace, _) => &self.replace,
            (RepairKind::Manual, _) => &self.manual_response,
        }
    }

    /// Draw how long a repair of `kind` takes on a node of `class`, in ms.
    pub fn sample(&self, kind: RepairKind, class: NodeClass, rng: &mut impl Rng) -> i64 {
        self.dist(kind, class).sample(rng)
    }
}

/// Why a [`FaultModel`] or [`FleetSpec`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A rate or weight is negative, NaN or infinite.
    #[error("{field} must be a finite, non-negative number (got {value})")]
    NegativeOrNonFinite {
        /// Which field.
        field: String,
        /// The offending value.
        value: f64,
    },
    /// A probability is outside [0, 1].
    #[error("{field} must lie in [0, 1] (got {value})")]
    NotAProbability {
        /// Which field.
        field: String,
        /// The offending value.
        value: f64,
    },
    /// A cause's fix shares do not sum to 1.
    #[error("fix split of {cause} sums to {sum}, expected 1 (within 0.001)")]
    FixSplitNotNormalized {
        /// Which cause.
        cause: Cause,
        /// The sum found.
        sum: f64,
    },
    /// A cause has no symptom with a positive weight.
    #[error("symptom split of {cause} has no positive weight")]
    EmptySymptomSplit {
        /// Which cause.
        cause: Cause,
    },
    /// The unexpected rate is positive but no cause has a positive weight.
    #[error("unexpected_per_gpu_day is positive but no cause has a positive weight")]
    NoCauses,
    /// A cause appears twice in the cause table.
    #[error("cause {0} is listed more than once")]
    DuplicateCause(Cause),
    /// `FalsePositive` or `NetworkFlap` appears in the cause table.
    #[error("cause {0} has its own population and cannot be in the cause table")]
    ReservedCause(Cause),
    /// A duration distribution is malformed.
    #[error("duration {field}: {reason}")]
    BadDuration {
        /// Which field.
        field: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A rack with no nodes.
    #[error("rack_power.nodes_per_rack must be at least 1")]
    EmptyRack,
    /// The fleet is malformed.
    #[error("fleet: {0}")]
    BadFleet(&'static str),
}

/// The whole fault model: rates, splits, the extra populations and repair
/// durations. `FaultModel::default()` is the published-data model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultModel {
    /// Fleet-average unexpected interruptions per GPU-day:
    /// 419 / (16,384 GPUs x 54 days) by default.
    pub unexpected_per_gpu_day: f64,
    /// GPUs per node of the reference cluster the rate was measured on (8).
    /// Node-scoped causes get `unexpected_per_gpu_day x share x this` per
    /// node-day, so their rate does not change with `gpus_per_node`.
    pub reference_gpus_per_node: u8,
    /// Per-cause weight (Table 5 count), scope, symptom split and fix split.
    pub causes: Vec<CauseSpec>,
    /// How long an unexpected fault with `Fix::SelfClears` lasts.
    pub transient_self_clear: DurationDist,
    /// Lemon nodes.
    pub lemons: LemonSpec,
    /// Network flaps.
    pub flaps: FlapSpec,
    /// Probe false positives.
    pub false_positives: FalsePositiveSpec,
    /// Rack power events (off by default; absent from older model files).
    #[serde(default)]
    pub rack_power: RackPowerSpec,
    /// How likely a health probe is to see a fault, per symptom (absent from older model files:
    /// the default).
    #[serde(default)]
    pub probe_sensitivity: ProbeSensitivity,
    /// How long remedies take.
    pub repair: RepairDurations,
}

fn cause_spec(cause: Cause, count: u32, scope: FaultScope, symptoms: &[(Symptom, f64)], fixes: FixSplit) -> CauseSpec {
    CauseSpec { cause, weight: f64::from(count), scope, symptoms: symptoms.to_vec(), fixes, hidden_from_probes: false }
}

impl Default for FaultModel {
    /// The published-data model (see `docs/fault-model.md`).
    fn default() -> Self {
        use Cause as C;
        use FaultScope::{Gpu as G, Node as N};
        use Symptom as S;
        // Fix splits are (self_clears, reboot, reimage, replace).
        let causes = vec![
            cause_spec(C::FaultyGpu, 148, G, &[(S::Gpu, 0.7), (S::GpuCount, 0.3)], FixSplit::new(0.0, 0.32, 0.0, 0.68)),
            cause_spec(C::Hbm3, 72, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.55, 0.0, 0.45)),
            cause_spec(C::SoftwareBug, 54, N, &[(S::Gpu, 0.4), (S::NodeNotReady, 0.6)], FixSplit::new(0.15, 0.50, 0.35, 0.0)),
            cause_spec(C::NetworkSwitchCable, 35, N, &[(S::Network, 1.0)], FixSplit::new(0.15, 0.10, 0.0, 0.75)),
            cause_spec(C::HostMaintenance, 32, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.45, 0.35, 0.20)),
            cause_spec(C::GpuSram, 19, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.60, 0.0, 0.40)),
            cause_spec(C::GpuSystemProcessor, 17, G, &[(S::Gpu, 0.6), (S::GpuCount, 0.4)], FixSplit::new(0.0, 0.85, 0.0, 0.15)),
            cause_spec(C::Nic, 7, N, &[(S::Network, 1.0)], FixSplit::new(0.0, 0.30, 0.0, 0.70)),
            cause_spec(C::NcclWatchdog, 7, N, &[(S::Network, 1.0)], FixSplit::new(0.50, 0.50, 0.0, 0.0)),
            CauseSpec {
                hidden_from_probes: true,
                ..cause_spec(C::SilentDataCorruption, 6, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.0, 0.0, 1.0))
            },
            cause_spec(C::GpuThermal, 6, G, &[(S::Gpu, 1.0)], FixSplit::new(0.0, 0.25, 0.0, 0.75)),
            cause_spec(C::Ssd, 3, N, &[(S::Disk, 1.0)], FixSplit::new(0.0, 0.0, 0.20, 0.80)),
            cause_spec(C::PowerSupply, 3, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.0, 0.0, 1.0)),
            cause_spec(C::ServerChassis, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.0, 0.0, 1.0)),
            cause_spec(C::IoExpansionBoard, 2, N, &[(S::GpuCount, 1.0)], FixSplit::new(0.0, 0.20, 0.0, 0.80)),
            cause_spec(C::Dependency, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.70, 0.30, 0.0, 0.0)),
            cause_spec(C::Cpu, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.20, 0.0, 0.80)),
            cause_spec(C::SystemMemory, 2, N, &[(S::NodeNotReady, 1.0)], FixSplit::new(0.0, 0.30, 0.0, 0.70)),
        ];
        Self {
            unexpected_per_gpu_day: f64::from(LLAMA3_UNEXPECTED_INTERRUPTIONS) / (f64::from(LLAMA3_GPUS) * f64::from(LLAMA3_DAYS)),
            reference_gpus_per_node: LLAMA3_GPUS_PER_NODE,
            causes,
            transient_self_clear: DurationDist::lognormal(10 * MS_PER_MINUTE, 1.0, MS_PER_MINUTE, 6 * MS_PER_HOUR),
            lemons: LemonSpec { node_fraction: 0.01, rate_multiplier: 10.0, recurrence_probability: 0.7 },
            flaps: FlapSpec {
                episodes_per_node_day: 0.002,
                mean_flaps_per_episode: 4.0,
                flap_duration: DurationDist::lognormal(2 * MS_PER_MINUTE, 0.7, 10 * MS_PER_SECOND, 30 * MS_PER_MINUTE),
                gap: DurationDist::lognormal(10 * MS_PER_MINUTE, 0.8, 30 * MS_PER_SECOND, 2 * MS_PER_HOUR),
            },
            false_positives: FalsePositiveSpec {
                per_node_day: 0.005,
                gpu_share: 0.6,
                self_clear: DurationDist::lognormal(90 * MS_PER_SECOND, 0.7, 10 * MS_PER_SECOND, 15 * MS_PER_MINUTE),
            },
            rack_power: RackPowerSpec::default(),
            probe_sensitivity: ProbeSensitivity::default(),
            repair: RepairDurations::default(),
        }
    }
}

impl FaultModel {
    /// The spec of one cause, if it is in the table.
    pub fn cause_spec(&self, cause: Cause) -> Option<&CauseSpec> {
        self.causes.iter().find(|c| c.cause == cause)
    }

    /// Per-node rate of each cause in the table, in faults per node-day, for
    /// an average node of `fleet` (lemons not yet taken into account; they
    /// redistribute this rate between nodes without changing the fleet total).
    pub fn cause_rates_per_node_day(&self, fleet: &FleetSpec) -> Vec<(Cause, f64)> {
        let total_weight: f64 = self.causes.iter().map(|c| sane(c.weight)).sum();
        if total_weight <= 0.0 {
            return self.causes.iter().map(|c| (c.cause, 0.0)).collect();
        }
        let base = sane(self.unexpected_per_gpu_day);
        self.causes
            .iter()
            .map(|c| {
                let gpus = match c.scope {
                    FaultScope::Gpu => fleet.gpus_per_node,
                    FaultScope::Node => self.reference_gpus_per_node,
                };
                let rate = base * sane(c.weight) / total_weight * f64::from(gpus);
                (c.cause, rate)
            })
            .collect()
    }

    /// Expected number of unexpected interruptions over the whole run
    /// (exactly 419 for the default model on the default fleet).
    pub fn expected_unexpected(&self, fleet: &FleetSpec) -> f64 {
        let per_node_day: f64 = self.cause_rates_per_node_day(fleet).iter().map(|(_, r)| r).sum();
        per_node_day * fleet.node_days()
    }

    /// Expected share of each cause among unexpected interruptions on `fleet`
    /// (the Table 5 split when `gpus_per_node` equals the reference).
    pub fn expected_cause_shares(&self, fleet: &FleetSpec) -> Vec<(Cause, f64)> {
        let rates = self.cause_rates_per_node_day(fleet);
        let total: f64 = rates.iter().map(|(_, r)| r).sum();
        rates.into_iter().map(|(c, r)| (c, if total > 0.0 { r / total } else { 0.0 })).collect()
    }

    /// Expected number of flap episodes over the run (each has >= 1 flap).
    pub fn expected_flap_episodes(&self, fleet: &FleetSpec) -> f64 {
        sane(self.flaps.episodes_per_node_day) * fleet.node_days()
    }

    /// Expected number of probe false positives over the run.
    pub fn expected_false_positives(&self, fleet: &FleetSpec) -> f64 {
        sane(self.false_positives.per_node_day) * fleet.node_days()
    }

    /// Check the model: rates and weights finite and non-negative,
    /// probabilities in [0, 1], every fix split summing to 1, every cause with
    /// a usable symptom split, no duplicate or reserved causes, durations sane.
    pub fn validate(&self) -> Result<(), ModelError> {
        non_negative("unexpected_per_gpu_day", self.unexpected_per_gpu_day)?;
        let mut seen: Vec<Cause> = Vec::with_capacity(self.causes.len());
        for spec in &self.causes {
            if !spec.cause.is_unexpected_interruption() {
                return Err(ModelError::ReservedCause(spec.cause));
            }
            if seen.contains(&spec.cause) {
                return Err(ModelError::DuplicateCause(spec.cause));
            }
            seen.push(spec.cause);
            non_negative(&format!("causes[{}].weight", spec.cause), spec.weight)?;
            for (symptom, w) in &spec.symptoms {
                non_negative(&format!("causes[{}].symptoms[{symptom:?}]", spec.cause), *w)?;
            }
            if !spec.symptoms.iter().any(|(_, w)| *w > 0.0) {
                return Err(ModelError::EmptySymptomSplit { cause: spec.cause });
            }
            for fix in [Fix::SelfClears, Fix::Reboot, Fix::Reimage, Fix::Replace] {
                probability(&format!("causes[{}].fixes.{fix:?}", spec.cause), spec.fixes.share(fix))?;
            }
            let sum = spec.fixes.total();
            if (sum - 1.0).abs() > 1e-3 {
                return Err(ModelError::FixSplitNotNormalized { cause: spec.cause, sum });
            }
        }
        if self.unexpected_per_gpu_day > 0.0 && !self.causes.iter().any(|c| c.weight > 0.0) {
            return Err(ModelError::NoCauses);
        }
        self.transient_self_clear.check("transient_self_clear")?;
        probability("lemons.node_fraction", self.lemons.node_fraction)?;
        non_negative("lemons.rate_multiplier", self.lemons.rate_multiplier)?;
        probability("lemons.recurrence_probability", self.lemons.recurrence_probability)?;
        non_negative("flaps.episodes_per_node_day", self.flaps.episodes_per_node_day)?;
        non_negative("flaps.mean_flaps_per_episode", self.flaps.mean_flaps_per_episode)?;
        self.flaps.flap_duration.check("flaps.flap_duration")?;
        self.flaps.gap.check("flaps.gap")?;
        non_negative("false_positives.per_node_day", self.false_positives.per_node_day)?;
        probability("false_positives.gpu_share", self.false_positives.gpu_share)?;
        self.false_positives.self_clear.check("false_positives.self_clear")?;
        non_negative("rack_power.per_rack_day", self.rack_power.per_rack_day)?;
        if self.rack_power.nodes_per_rack == 0 {
            return Err(ModelError::EmptyRack);
        }
        if self.rack_power.spread_ms < 0 {
            return Err(ModelError::BadDuration { field: "rack_power.spread_ms".into(), reason: "durations must not be negative" });
        }
        self.rack_power.outage.check("rack_power.outage")?;
        self.repair.gpu_node_reboot.check("repair.gpu_node_reboot")?;
        self.repair.cpu_node_reboot.check("repair.cpu_node_reboot")?;
        self.repair.reimage.check("repair.reimage")?;
        self.repair.replace.check("repair.replace")?;
        self.repair.replace_lead.check("repair.replace_lead")?;
        probability("probe_sensitivity.gpu", self.probe_sensitivity.gpu)?;
        probability("probe_sensitivity.network", self.probe_sensitivity.network)?;
        self.repair.manual_response.check("repair.manual_response")?;
        Ok(())
    }
}

fn non_negative(field: &str, value: f64) -> Result<(), ModelError> {
    if value.is_finite() && value >= 0.0 { Ok(()) } else { Err(ModelError::NegativeOrNonFinite { field: field.to_owned(), value }) }
}

fn probability(field: &str, value: f64) -> Result<(), ModelError> {
    if (0.0..=1.0).contains(&value) { Ok(()) } else { Err(ModelError::NotAProbability { field: field.to_owned(), value }) }
}

/// A weight or rate made safe: NaN, infinities and negatives become 0.
fn sane(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// A discrete distribution over indices, by cumulative weights.
struct Categorical {
    cumulative: Vec<f64>,
    last_positive: Option<usize>,
}

impl Categorical {
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut cumulative = Vec::new();
        let mut last_positive = None;
        let mut acc = 0.0;
        for (i, w) in weights.into_iter().enumerate() {
            let w = sane(w);
            if w > 0.0 {
                last_positive = Some(i);
            }
            acc += w;
            cumulative.push(acc);
        }
        Self { cumulative, last_positive }
    }

    fn total(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    /// An index with probability proportional to its weight; `None` if all
    /// weights are zero. Zero-weight indices are never returned.
    fn sample(&self, rng: &mut impl Rng) -> Option<usize> {
        let last = self.last_positive?;
        let x = rng.random::<f64>() * self.total();
        let i = self.cumulative.partition_point(|c| *c <= x);
        Some(i.min(last))
    }
}

/// Independent random streams, so that changing one population does not
/// reshuffle the others.
mod stream {
    pub const LEMONS: u64 = 1;
    pub const UNEXPECTED: u64 = 2;
    pub const FLAPS: u64 = 3;
    pub const FALSE_POSITIVES: u64 = 4;
    pub const RACK_POWER: u64 = 5;
    /// Per-fault draws use streams `DRAWS + fault id`.
    pub const DRAWS: u64 = 1 << 32;
}

/// The random stream of one fault's own draws ([`FaultDraws`]): a function of the seed and the fault
/// id only, so every policy run over the same seed draws the same numbers for the same fault.
pub(crate) fn fault_rng(seed: u64, fault_id: u32) -> ChaCha8Rng {
    rng_for(seed, stream::DRAWS + u64::from(fault_id))
}

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Poisson arrivals: successive times `t` in `[0, duration_ms)` with
/// exponential gaps of mean `1 / rate_per_ms`.
struct Arrivals {
    t: f64,
    rate_per_ms: f64,
    end: f64,
}

impl Arrivals {
    fn new(rate_per_day: f64, duration_ms: i64) -> Self {
        Self { t: 0.0, rate_per_ms: sane(rate_per_day) / MS_PER_DAY as f64, end: duration_ms.max(0) as f64 }
    }

    fn next(&mut self, rng: &mut impl Rng) -> Option<i64> {
        if self.rate_per_ms <= 0.0 {
            return None;
        }
        let gap: f64 = rng.sample(Exp1);
        self.t += gap / self.rate_per_ms;
        if self.t < self.end { Some(self.t as i64) } else { None }
    }
}

/// The lemon nodes of a run, with each lemon's recurring defect.
struct Lemons {
    /// Lemon node ids, ascending.
    nodes: Vec<u32>,
    /// The recurring defect of `nodes[i]`: cause-table index and GPU.
    defects: Vec<Option<(usize, Option<u8>)>>,
    /// Non-lemon node ids, ascending.
    normal: Vec<u32>,
}

fn lemon_count(model: &FaultModel, fleet: &FleetSpec) -> u32 {
    let fraction = sane(model.lemons.node_fraction).min(1.0);
    let count = (f64::from(fleet.nodes) * fraction).round();
    (count as u32).min(fleet.nodes)
}

fn pick_lemons(model: &FaultModel, fleet: &FleetSpec, causes: &Categorical, seed: u64) -> Lemons {
    let mut rng = rng_for(seed, stream::LEMONS);
    let count = lemon_count(model, fleet);
    let mut nodes: Vec<u32> =
        rand::seq::index::sample(&mut rng, fleet.nodes as usize, count as usize).into_iter().map(|i| i as u32).collect();
    nodes.sort_unstable();
    let defects = nodes
        .iter()
        .map(|_| {
            causes.sample(&mut rng).map(|idx| {
                let gpu = model.causes.get(idx).and_then(|spec| pick_gpu(spec.scope, fleet, &mut rng));
                (idx, gpu)
            })
        })
        .collect();
    let mut normal = Vec::with_capacity((fleet.nodes - count) as usize);
    let mut lemon_iter = nodes.iter().peekable();
    for n in 0..fleet.nodes {
        if lemon_iter.peek() == Some(&&n) {
            lemon_iter.next();
        } else {
            normal.push(n);
        }
    }
    Lemons { nodes, defects, normal }
}

fn pick_gpu(scope: FaultScope, fleet: &FleetSpec, rng: &mut impl Rng) -> Option<u8> {
    match scope {
        FaultScope::Gpu if fleet.gpus_per_node > 0 => Some(rng.random_range(0..fleet.gpus_per_node)),
        _ => None,
    }
}

/// The lemon nodes `generate` uses for this model, fleet and seed, ascending.
pub fn lemon_nodes(model: &FaultModel, fleet: &FleetSpec, seed: u64) -> Vec<u32> {
    let rates = model.cause_rates_per_node_day(fleet);
    let causes = Categorical::new(rates.iter().map(|(_, r)| *r));
    pick_lemons(model, fleet, &causes, seed).nodes
}

/// Generate every fault of a run: deterministic for a seed, sorted by
/// `start_ms` then `id` (ids are `0..len` in that order).
///
/// `generate` never panics: invalid numbers in the model (negative or NaN
/// rates and weights) are treated as zero. Call [`FaultModel::validate`] or
/// use [`try_generate`] to reject such a model instead.
pub fn generate(model: &FaultModel, fleet: &FleetSpec, seed: u64) -> Vec<Fault> {
    let mut faults = Vec::new();
    if fleet.nodes == 0 || fleet.duration_ms <= 0 {
        return faults;
    }
    generate_unexpected(model, fleet, seed, &mut faults);
    generate_flaps(model, fleet, seed, &mut faults);
    generate_false_positives(model, fleet, seed, &mut faults);
    generate_rack_power_events(model, fleet, seed, &mut faults);
    // Stable: ties keep population order, then generation order.
    faults.sort_by_key(|f| f.start_ms);
    for (i, fault) in faults.iter_mut().enumerate() {
        fault.id = u32::try_from(i).unwrap_or(u32::MAX);
    }
    faults
}

/// [`generate`] after validating the model and the fleet.
pub fn try_generate(model: &FaultModel, fleet: &FleetSpec, seed: u64) -> Result<Vec<Fault>, ModelError> {
    model.validate()?;
    if fleet.duration_ms < 0 {
        return Err(ModelError::BadFleet("duration_ms must not be negative"));
    }
    Ok(generate(model, fleet, seed))
}

fn generate_unexpected(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let rates = model.cause_rates_per_node_day(fleet);
    let causes = Categorical::new(rates.iter().map(|(_, r)| *r));
    let per_node_day = causes.total();
    let lemons = pick_lemons(model, fleet, &causes, seed);
    let mut rng = rng_for(seed, stream::UNEXPECTED);

    // Lemons redistribute the fleet rate: a lemon weighs `multiplier`, a
    // normal node 1, and the fleet total stays `nodes x per_node_day`.
    let multiplier = sane(model.lemons.rate_multiplier);
    let lemon_weight = lemons.nodes.len() as f64 * multiplier;
    let normal_weight = lemons.normal.len() as f64;
    let total_weight = lemon_weight + normal_weight;
    if total_weight <= 0.0 {
        return;
    }
    let p_lemon = lemon_weight / total_weight;
    let recurrence = sane(model.lemons.recurrence_probability).min(1.0);

    let mut arrivals = Arrivals::new(per_node_day * f64::from(fleet.nodes), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(start_ms) = arrivals.next(&mut rng) {
        if produced >= MAX_FAULTS_PER_POPULATION {
            break;
        }
        let on_lemon = !lemons.nodes.is_empty() && rng.random::<f64>() < p_lemon;
        let (node, recurring) = if on_lemon || lemons.normal.is_empty() {
            let i = rng.random_range(0..lemons.nodes.len());
            let defect = lemons.defects.get(i).copied().flatten();
            let recurring = match defect {
                Some(d) if rng.random::<f64>() < recurrence => Some(d),
                _ => None,
            };
            (lemons.nodes.get(i).copied().unwrap_or(0), recurring)
        } else {
            let i = rng.random_range(0..lemons.normal.len());
            (lemons.normal.get(i).copied().unwrap_or(0), None)
        };
        let (idx, gpu) = match recurring {
            Some(defect) => defect,
            None => {
                let Some(idx) = causes.sample(&mut rng) else {
                    break;
                };
                let gpu = model.causes.get(idx).and_then(|spec| pick_gpu(spec.scope, fleet, &mut rng));
                (idx, gpu)
            }
        };
        let Some(spec) = model.causes.get(idx) else {
            break;
        };
        let symptom = match spec.sample_symptom(&mut rng) {
            // A CPU-only fleet has no GPU probe to fail.
            Symptom::Gpu | Symptom::GpuCount if fleet.gpus_per_node == 0 => Symptom::NodeNotReady,
            symptom => symptom,
        };
        let fix = spec.fixes.sample(&mut rng);
        let self_clear_after_ms = match fix {
            Fix::SelfClears => Some(model.transient_self_clear.sample(&mut rng).max(1)),
            _ => None,
        };
        out.push(Fault { id: 0, node, gpu, start_ms, cause: spec.cause, symptom, fix, self_clear_after_ms, false_positive: false });
        produced += 1;
    }
}

fn generate_flaps(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let spec = &model.flaps;
    let mut rng = rng_for(seed, stream::FLAPS);
    let mean = sane(spec.mean_flaps_per_episode);
    // Geometric number of flaps with mean `mean` (at least one).
    let continue_p = if mean > 1.0 { 1.0 - 1.0 / mean } else { 0.0 };
    let mut arrivals = Arrivals::new(sane(spec.episodes_per_node_day) * f64::from(fleet.nodes), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(episode_start) = arrivals.next(&mut rng) {
        let node = rng.random_range(0..fleet.nodes);
        let mut start_ms = episode_start;
        for _ in 0..MAX_FLAPS_PER_EPISODE {
            if start_ms >= fleet.duration_ms || produced >= MAX_FAULTS_PER_POPULATION {
                break;
            }
            let lasts = spec.flap_duration.sample(&mut rng).max(1);
            out.push(Fault {
                id: 0,
                node,
                gpu: None,
                start_ms,
                cause: Cause::NetworkFlap,
                symptom: Symptom::Network,
                fix: Fix::SelfClears,
                self_clear_after_ms: Some(lasts),
                false_positive: false,
            });
            produced += 1;
            if rng.random::<f64>() >= continue_p {
                break;
            }
            start_ms = start_ms.saturating_add(lasts).saturating_add(spec.gap.sample(&mut rng).max(1));
        }
        if produced >= MAX_FAULTS_PER_POPULATION {
            break;
        }
    }
}

fn generate_false_positives(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let spec = &model.false_positives;
    let mut rng = rng_for(seed, stream::FALSE_POSITIVES);
    let gpu_share = sane(spec.gpu_share).min(1.0);
    let mut arrivals = Arrivals::new(sane(spec.per_node_day) * f64::from(fleet.nodes), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(start_ms) = arrivals.next(&mut rng) {
        if produced >= MAX_FAULTS_PER_POPULATION {
            break;
        }
        let node = rng.random_range(0..fleet.nodes);
        let on_gpu = fleet.gpus_per_node > 0 && rng.random::<f64>() < gpu_share;
        let (symptom, gpu) = if on_gpu { (Symptom::Gpu, Some(rng.random_range(0..fleet.gpus_per_node))) } else { (Symptom::Network, None) };
        out.push(Fault {
            id: 0,
            node,
            gpu,
            start_ms,
            cause: Cause::FalsePositive,
            symptom,
            fix: Fix::SelfClears,
            self_clear_after_ms: Some(spec.self_clear.sample(&mut rng).max(1)),
            false_positive: true,
        });
        produced += 1;
    }
}

fn generate_rack_power_events(model: &FaultModel, fleet: &FleetSpec, seed: u64, out: &mut Vec<Fault>) {
    let spec = &model.rack_power;
    let per_rack = spec.nodes_per_rack.max(1);
    let racks = fleet.nodes.div_ceil(per_rack);
    let mut rng = rng_for(seed, stream::RACK_POWER);
    let mut arrivals = Arrivals::new(sane(spec.per_rack_day) * f64::from(racks), fleet.duration_ms);
    let mut produced = 0usize;
    while let Some(event_ms) = arrivals.next(&mut rng) {
        let rack = rng.random_range(0..racks);
        let outage = spec.outage.sample(&mut rng).max(1);
        let first = rack * per_rack;
        for node in first..(first + per_rack).min(fleet.nodes) {
            if produced >= MAX_FAULTS_PER_POPULATION {
                return;
            }
            let offset = if spec.spread_ms > 0 { rng.random_range(0..spec.spread_ms) } else { 0 };
            let start_ms = event_ms.saturating_add(offset);
            if start_ms >= fleet.duration_ms {
                continue;
            }
            out.push(Fault {
                id: 0,
                node,
                gpu: None,
                start_ms,
                cause: Cause::RackPower,
                symptom: Symptom::NodeNotReady,
                fix: Fix::SelfClears,
                self_clear_after_ms: Some(outage),
                false_positive: false,
            });
            produced += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn unexpected(faults: &[Fault]) -> impl Iterator<Item = &Fault> {
        faults.iter().filter(|f| f.is_unexpected_interruption())
    }

    #[test]
    fn the_same_seed_yields_identical_faults() {
        let model = FaultModel::default();
        let fleet = FleetSpec::default();
        assert_eq!(generate(&model, &fleet, 42), generate(&model, &fleet, 42));
    }

    #[test]
    fn different_seeds_yield_different_faults() {
        let model = FaultModel::default();
        let fleet = FleetSpec::default();
        assert_ne!(generate(&model, &fleet, 1), generate(&model, &fleet, 2));
    }

    #[test]
    fn the_default_model_expects_exactly_419_unexpected_interruptions_on_the_default_fleet() {
        let expected = FaultModel::default().expected_unexpected(&FleetSpec::default());
        assert!((expected - 419.0).abs() < 1e-6, "expected {expected}");
    }

    #[test]
    fn the_default_fleet_averages_close_to_419_unexpected_interruptions() {
        let model = FaultModel::default();
        let fleet = FleetSpec::default();
        let total: usize = SEEDS.iter().map(|s| unexpected(&generate(&model, &fleet, *s)).count()).sum();
        let mean = total as f64 / SEEDS.len() as f64;
        assert!((mean - 419.0).abs() <= 41.9, "mean unexpected interruptions {mean}, want 419 +- 10%");
    }

    #[test]
    fn the_cause_split_matches_llama3_table5() {
        let model = FaultModel::default();
        let fleet = FleetSpec::default();
        let table5: [(Cause, u32); 18] = [
            (Cause::FaultyGpu, 148),
            (Cause::Hbm3, 72),
            (Cause::SoftwareBug, 54),
            (Cause::NetworkSwitchCable, 35),
            (Cause::HostMaintenance, 32),
            (Cause::GpuSram, 19),
            (Cause::GpuSystemProcessor, 17),
            (Cause::Nic, 7),
            (Cause::NcclWatchdog, 7),
            (Cause::SilentDataCorruption, 6),
            (Cause::GpuThermal, 6),
            (Cause::Ssd, 3),
            (Cause::PowerSupply, 3),
            (Cause::ServerChassis, 2),
            (Cause::IoExpansionBoard, 2),
            (Cause::Dependency, 2),
            (Cause::Cpu, 2),
            (Cause::SystemMemory, 2),
        ];
        assert_eq!(table5.iter().map(|(_, n)| n).sum::<u32>(), 419);

        // The analytic split is exactly Table 5 on an 8-GPU fleet.
        let shares: HashMap<Cause, f64> = model.expected_cause_shares(&fleet).into_iter().collect();
        for (cause, count) in table5 {
            let want = f64::from(count) / 419.0;
            let got = shares.get(&cause).copied().unwrap_or(0.0);
            assert!((got - want).abs() < 1e-9, "{cause}: {got} vs {want}");
        }

        // The generated split, pooled over seeds, is close to it.
        let mut counts: HashMap<Cause, usize> = HashMap::new();
        let mut total = 0usize;
        for seed in SEEDS {
            for f in unexpected(&generate(&model, &fleet, seed)) {
                *counts.entry(f.cause).or_default() += 1;
                total += 1;
            }
        }
        for (cause, count) in table5 {
            let want = f64::from(count) / 419.0;
            let got = counts.get(&cause).copied().unwrap_or(0) as f64 / total as f64;
            assert!((got - want).abs() < 0.025, "{cause}: generated share {got:.3}, Table 5 share {want:.3}");
        }
    }

    #[test]
    fn lemon_nodes_get_more_faults_than_average() {
        let model = FaultModel::default();
        let fleet = FleetSpec::default();
        let (mut lemon_faults, mut lemon_nodes_seen) = (0usize, 0usize);
        let (mut other_faults, mut other_nodes_seen) = (0usize, 0usize);
        for seed in SEEDS {
            let lemons = lemon_nodes(&model, &fleet, seed);
            assert_eq!(lemons.len(), 20, "1% of 2048 nodes, rounded");
            let faults = generate(&model, &fleet, seed);
            let on_lemons = unexpected(&faults).filter(|f| lemons.binary_search(&f.node).is_ok()).count();
            lemon_faults += on_lemons;
            lemon_nodes_seen += lemons.len();
            other_faults += unexpected(&faults).count() - on_lemons;
            other_nodes_seen += fleet.nodes as usize - lemons.len();
        }
        let lemon_mean = lemon_faults as f64 / lemon_nodes_seen as f64;
        let other_mean = other_faults as f64 / other_nodes_seen as f64;
        assert!(lemon_mean > 5.0 * other_mean, "lemon mean {lemon_mean:.3} vs normal mean {other_mean:.3}");
    }

    #[test]
    fn lemon_faults_mostly_recur_with_the_same_cause_and_gpu() {
        let model = FaultModel::default();
        let fleet = FleetSpec { duration_ms: 540 * MS_PER_DAY, ..FleetSpec::default() };
        let lemons = lemon_nodes(&model, &fleet, 9);
        let faults = generate(&model, &fleet, 9);
        let (mut modal, mut total) = (0usize, 0usize);
        for node in &lemons {
            let mut per_defect: BTreeMap<(Cause, Option<u8>), usize> = BTreeMap::new();
            for f in unexpected(&faults).filter(|f| f.node == *node) {
                *per_defect.entry((f.cause, f.gpu)).or_default() += 1;
            }
            modal += per_defect.values().max().copied().unwrap_or(0);
            total += per_defect.values().sum::<usize>();
        }
        assert!(total > 100, "lemon faults {total}");
        let share = modal as f64 / total as f64;
        assert!(share > 0.6, "recurring share {share:.2}");
    }

    #[test]
    fn false_positives_self_clear_and_are_flagged() {
        let faults = generate(&FaultModel::default(), &FleetSpec::default(), 7);
        let fps: Vec<&Fault> = faults.iter().filter(|f| f.false_positive).collect();
        assert!(!fps.is_empty());
        for f in &fps {
            assert_eq!(f.cause, Cause::FalsePositive);
            assert_eq!(f.fix, Fix::SelfClears);
            assert!(matches!(f.symptom, Symptom::Gpu | Symptom::Network));
            assert_eq!(f.gpu.is_some(), f.symptom == Symptom::Gpu);
            let clears = f.self_clear_after_ms.unwrap_or(0);
            assert!((10 * MS_PER_SECOND..=15 * MS_PER_MINUTE).contains(&clears));
        }
        assert!(faults.iter().filter(|f| f.cause == Cause::FalsePositive).all(|f| f.false_positive));
    }

    #[test]
    fn network_flaps_are_self_clearing_network_faults_that_come_in_bursts() {
        let faults = generate(&FaultModel::default(), &FleetSpec::default(), 11);
        let flaps: Vec<&Fault> = faults.iter().filter(|f| f.cause == Cause::NetworkFlap).collect();
        assert!(!flaps.is_empty());
        for f in &flaps {
            assert_eq!(f.symptom, Symptom::Network);
            assert_eq!(f.fix, Fix::SelfClears);
            assert!(!f.false_positive);
            assert!(f.self_clear_after_ms.is_some_and(|ms| ms > 0));
        }
        let mut nodes: Vec<u32> = flaps.iter().map(|f| f.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert!(flaps.len() as f64 > 2.0 * nodes.len() as f64, "{} flaps on {} nodes", flaps.len(), nodes.len());
    }

    #[test]
    fn faults_are_sorted_with_sequential_ids_and_stay_in_range() {
        let model = FaultModel::default();
        let fleet = FleetSpec::default();
        let faults = generate(&model, &fleet, 3);
        for (i, f) in faults.iter().enumerate() {
            assert_eq!(f.id as usize, i);
            assert!(f.node < fleet.nodes);
            assert!((0..fleet.duration_ms).contains(&f.start_ms));
            assert!(f.gpu.is_none_or(|g| g < fleet.gpus_per_node));
            assert_eq!(f.self_clear_after_ms.is_some(), f.fix == Fix::SelfClears);
            if let Some(spec) = model.cause_spec(f.cause) {
                assert_eq!(f.gpu.is_some(), spec.scope == FaultScope::Gpu);
            }
        }
        assert!(faults.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
    }

    #[test]
    fn rack_power_events_are_off_by_default() {
        assert_eq!(FaultModel::default().rack_power.per_rack_day, 0.0);
        let faults = generate(&FaultModel::default(), &FleetSpec::default(), 1);
        assert!(faults.iter().all(|f| f.cause != Cause::RackPower));
    }

    #[test]
    fn a_rack_power_event_takes_down_every_node_of_one_rack_within_the_spread_for_one_outage() {
        let mut model = FaultModel { unexpected_per_gpu_day: 0.0, ..FaultModel::default() };
        model.flaps.episodes_per_node_day = 0.0;
        model.false_positives.per_node_day = 0.0;
        model.rack_power = RackPowerSpec { per_rack_day: 0.05, nodes_per_rack: 16, ..RackPowerSpec::default() };
        let fleet = FleetSpec { nodes: 256, gpus_per_node: 8, duration_ms: 30 * MS_PER_DAY };
        let faults = generate(&model, &fleet, 4);
        assert!(faults.len() >= 32, "{} rack power faults", faults.len());
        // An event's faults all start within the one-minute spread of each other; events are rare
        // enough here that two never start within a minute on the same rack.
        let mut events: Vec<(u32, i64, Vec<&Fault>)> = Vec::new();
        for f in &faults {
            assert_eq!(
                (f.cause, f.symptom, f.fix, f.false_positive, f.gpu),
                (Cause::RackPower, Symptom::NodeNotReady, Fix::SelfClears, false, None)
            );
            let rack = f.node / 16;
            match events.iter_mut().rev().find(|(r, first, _)| *r == rack && f.start_ms - first < MS_PER_MINUTE) {
                Some((_, _, group)) => group.push(f),
                None => events.push((rack, f.start_ms, vec![f])),
            }
        }
        for (rack, _, group) in &events {
            let mut nodes: Vec<u32> = group.iter().map(|f| f.node).collect();
            nodes.sort_unstable();
            assert_eq!(nodes, (rack * 16..rack * 16 + 16).collect::<Vec<_>>(), "the whole rack, once");
            assert!(group.iter().all(|f| f.self_clear_after_ms == group[0].self_clear_after_ms), "one outage per event");
        }
        assert_eq!(model.validate(), Ok(()));
        model.rack_power.nodes_per_rack = 0;
        assert_eq!(model.validate(), Err(ModelError::EmptyRack));
    }

    #[test]
    fn the_default_model_is_valid_and_its_fix_splits_sum_to_one() {
        let model = FaultModel::default();
        assert_eq!(model.validate(), Ok(()));
        assert_eq!(model.causes.len(), 18);
    }

    #[test]
    fn validation_rejects_negative_rates_and_unnormalised_fix_splits() {
        let model = FaultModel { unexpected_per_gpu_day: -1.0, ..FaultModel::default() };
        assert!(matches!(model.validate(), Err(ModelError::NegativeOrNonFinite { .. })));

        let mut model = FaultModel::default();
        model.causes[0].fixes = FixSplit::new(0.5, 0.5, 0.5, 0.0);
        assert!(matches!(model.validate(), Err(ModelError::FixSplitNotNormalized { cause: Cause::FaultyGpu, .. })));

        let mut model = FaultModel::default();
        model.lemons.node_fraction = 1.5;
        assert!(matches!(model.validate(), Err(ModelError::NotAProbability { .. })));
        assert!(try_generate(&model, &FleetSpec::default(), 1).is_err());
        // generate itself never panics on a bad model.
        let _ = generate(&model, &FleetSpec::default(), 1);
    }

    #[test]
    fn an_empty_fleet_or_run_has_no_faults() {
        let model = FaultModel::default();
        let no_nodes = FleetSpec { nodes: 0, ..FleetSpec::default() };
        let no_time = FleetSpec { duration_ms: 0, ..FleetSpec::default() };
        assert!(generate(&model, &no_nodes, 1).is_empty());
        assert!(generate(&model, &no_time, 1).is_empty());
    }

    #[test]
    fn gpu_scoped_rates_scale_with_gpus_per_node_and_node_scoped_rates_do_not() {
        let model = FaultModel::default();
        let eight = FleetSpec::default();
        let cpu_only = FleetSpec { gpus_per_node: 0, ..FleetSpec::default() };
        // 268 of 419 Table 5 interruptions are GPU components.
        let ratio = model.expected_unexpected(&cpu_only) / model.expected_unexpected(&eight);
        assert!((ratio - 151.0 / 419.0).abs() < 1e-9, "ratio {ratio}");
        let faults = generate(&model, &cpu_only, 5);
        assert!(faults.iter().all(|f| f.gpu.is_none()));
        assert!(!faults.is_empty());
        assert!(faults.iter().all(|f| !matches!(f.symptom, Symptom::Gpu | Symptom::GpuCount)));
    }

    #[test]
    fn repair_durations_respect_their_ranges_and_gpu_nodes_reboot_slower() {
        let repair = RepairDurations::default();
        let mut rng = rng_for(1, 0);
        let mut gpu = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..2000 {
            gpu.push(repair.sample(RepairKind::Reboot, NodeClass::Gpu, &mut rng));
            cpu.push(repair.sample(RepairKind::Reboot, NodeClass::Cpu, &mut rng));
            let replace = repair.sample(RepairKind::Replace, NodeClass::Gpu, &mut rng);
            assert!((MS_PER_HOUR..=24 * MS_PER_HOUR).contains(&replace));
            let lead = repair.replace_lead.sample(&mut rng);
            assert!((MS_PER_HOUR..=21 * MS_PER_DAY).contains(&lead));
            let manual = repair.sample(RepairKind::Manual, NodeClass::Gpu, &mut rng);
            assert!((10 * MS_PER_MINUTE..=72 * MS_PER_HOUR).contains(&manual));
        }
        assert!(gpu.iter().all(|ms| (5 * MS_PER_MINUTE..=30 * MS_PER_MINUTE).contains(ms)));
        gpu.sort_unstable();
        cpu.sort_unstable();
        assert!(gpu[1000] > cpu[1000]);
        assert_eq!(RepairKind::for_fix(Fix::SelfClears), None);
        assert_eq!(RepairKind::for_fix(Fix::Replace), Some(RepairKind::Replace));
    }

    #[test]
    fn labels_match_serde_names() {
        for cause in Cause::ALL {
            let json = serde_json::to_string(&cause).expect("serialize cause");
            assert_eq!(json, format!("\"{}\"", cause.label()));
        }
    }

    #[test]
    fn the_model_round_trips_through_json() {
        let model = FaultModel::default();
        let json = serde_json::to_string(&model).expect("serialize model");
        let back: FaultModel = serde_json::from_str(&json).expect("deserialize model");
        assert_eq!(back, model);
        let faults = generate(&model, &FleetSpec::default(), 1);
        let json = serde_json::to_string(&faults).expect("serialize faults");
        let back: Vec<Fault> = serde_json::from_str(&json).expect("deserialize faults");
        assert_eq!(back, faults);
    }
}
