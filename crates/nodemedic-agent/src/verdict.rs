//! The verdict every probe publishes: a health, an enumerable reason (a CamelCase word that can go into a
//! Node condition's `reason`) and a short human message.

use serde::{Deserialize, Serialize};

/// The longest message a verdict carries, in bytes. Node conditions are read by people in `kubectl describe`;
/// anything longer is cut at a character boundary and marked with an ellipsis.
pub const MESSAGE_LIMIT_BYTES: usize = 512;

/// What a probe concluded about the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    Healthy,
    Unhealthy,
    /// The probe could not tell: it never ran, its result is stale, its tool is missing or broken.
    /// Unknown never means broken hardware and must never trigger a repair on its own.
    Unknown,
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {
        /// Why a verdict is what it is. The set is closed so the controller can match on it; the serialised
        /// form is the variant name (CamelCase), which is also what goes into a condition's `reason`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Reason {
            $($(#[$doc])* $name,)+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];

            /// The CamelCase word for this reason.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)+
                }
            }
        }
    };
}

reasons! {
    /// Everything the probe looked at was fine.
    AllChecksPassed,
    /// The probe has not produced a result yet.
    NotYetRun,
    /// The last result is older than the probe allows.
    Stale,
    /// Failures seen, but not yet enough in a row to call the node unhealthy.
    Settling,
    /// The tool could not be found or started.
    ToolMissing,
    /// The tool ran but failed (non-zero exit, error output).
    ToolFailed,
    /// The tool did not finish within the probe's timeout.
    ToolTimedOut,
    /// The tool's output could not be understood.
    OutputUnparseable,
    /// The tool's output parsed but is cut short: it announces more than it shows, or lacks the health fields.
    OutputIncomplete,
    /// The tool printed a format this probe does not read (not a tool failure).
    UnsupportedFormat,
    /// The node has no GPUs of this vendor (and none are expected).
    NonGpuNode,
    /// The NVML library could not be loaded.
    NvmlUnavailable,
    /// Fewer (or more) GPUs than expected.
    GpuCountMismatch,
    /// A GPU reports it is lost, unreachable or needs a reset.
    GpuLost,
    /// Uncorrectable (double-bit) ECC errors since the driver loaded.
    UncorrectableEcc,
    /// A row remap is pending: the GPU needs a reset to apply it.
    RowRemapPending,
    /// Row remapping failed: the GPU ran out of spare rows.
    RowRemapFailure,
    /// Pages are waiting to be retired (older GPUs without row remapping).
    RetiredPagesPending,
    /// The GPU is in a hardware slowdown (thermal, power brake or HW slowdown).
    HardwareSlowdown,
    /// PCIe replays above the configured bound.
    PcieReplays,
    /// An NVLink is inactive.
    NvlinkInactive,
    /// The AMD GPU driver is not loaded or shows no cards.
    AmdDriverNotLoaded,
    /// An expected metric is missing from a GPU's report.
    MetricMissing,
    /// The kernel log shows a fault whose recommended action is restarting the application (only after it repeats).
    KernelFaultRestartApplication,
    /// The kernel log shows a fault whose recommended action is a GPU reset.
    KernelFaultResetGpu,
    /// The kernel log shows a fault whose recommended action is a node reboot.
    KernelFaultReboot,
    /// The kernel log shows a fault whose recommended action is replacing the hardware (RMA).
    KernelFaultReplace,
    /// The kernel log shows a fault that needs a human / the vendor.
    KernelFaultContactSupport,
    /// An InfiniBand/RoCE port is not ACTIVE / LinkUp.
    IbPortDown,
    /// An InfiniBand/RoCE port runs slower than expected.
    IbRateLow,
    /// An InfiniBand/RoCE port's link-down counter grew (the link flaps).
    IbLinkFlapping,
    /// An InfiniBand/RoCE port's error counters (symbol errors, receive errors, link recoveries …) are high or grew.
    IbPortErrors,
    /// Expected InfiniBand/RoCE devices are missing.
    IbDeviceMissing,
    /// Measured throughput is below the threshold.
    ThroughputLow,
    /// The throughput test reported an error.
    ThroughputTestFailed,
    /// Ping lost packets beyond the threshold.
    PacketLoss,
    /// Ping latency above the threshold.
    LatencyHigh,
    /// DCGM diagnostics reported a failed test.
    DcgmDiagFailed,
    /// DCGM health watches report a problem.
    DcgmHealthDegraded,
    /// An ethernet link is down or slower than expected.
    NicLinkDown,
    /// A watched filesystem is mounted read-only.
    FilesystemReadOnly,
    /// A watched mount point is not mounted.
    MountMissing,
    /// A watched filesystem has less free space than allowed.
    DiskSpaceLow,
    /// A custom (node-problem-detector protocol) plugin reported a problem.
    CustomCheckProblem,
    /// A custom plugin exited with a code other than 0 or 1, or timed out.
    CustomCheckUnknown,
    /// The probe is misconfigured.
    ConfigInvalid,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe's verdict: health, reason and a message no longer than [`MESSAGE_LIMIT_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub health: Health,
    pub reason: Reason,
    pub message: String,
}

impl Verdict {
    pub fn new(health: Health, reason: Reason, message: impl Into<String>) -> Self {
        Verdict { health, reason, message: truncate_message(&message.into(), MESSAGE_LIMIT_BYTES) }
    }

    pub fn healthy(message: impl Into<String>) -> Self {
        Verdict::new(Health::Healthy, Reason::AllChecksPassed, message)
    }

    pub fn unhealthy(reason: Reason, message: impl Into<String>) -> Self {
        Verdict::new(Health::Unhealthy, reason, message)
    }

    pub fn unknown(reason: Reason, message: impl Into<String>) -> Self {
        Verdict::new(Health::Unknown, reason, message)
    }

    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy
    }

    pub fn is_unhealthy(&self) -> bool {
        self.health == Health::Unhealthy
    }
}

/// Cuts `text` to at most `limit` bytes on a character boundary, trimming whitespace; a cut text ends in "…".
pub fn truncate_message(text: &str, limit: usize) -> String {
    let trimmed = text.trim();
    if trimmed.len() <= limit {
        return trimmed.to_string();
    }
    let ellipsis = "…";
    let budget = limit.saturating_sub(ellipsis.len());
    let mut end = budget;
    while end > 0 && !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", trimmed[..end].trim_end())
}

/// Folds several findings into one verdict: the first unhealthy finding wins (its message lists how many more
/// there are); with none, an unknown one; with none of those either, healthy with `healthy_message`.
pub fn worst_of(findings: Vec<Verdict>, healthy_message: impl Into<String>) -> Verdict {
    let unhealthy: Vec<&Verdict> = findings.iter().filter(|v| v.is_unhealthy()).collect();
    if let Some(first) = unhealthy.first() {
        if unhealthy.len() == 1 {
            return (*first).clone();
        }
        let others: Vec<&str> = unhealthy[1..].iter().map(|v| v.message.as_str()).collect();
        return Verdict::unhealthy(first.reason, format!("{}; also: {}", first.message, others.join("; ")));
    }
    if let Some(unknown) = findings.iter().find(|v| v.health == Health::Unknown) {
        return unknown.clone();
    }
    Verdict::healthy(healthy_message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_char_boundary_with_an_ellipsis() {
        let text = "é".repeat(400);
        let cut = truncate_message(&text, 21);
        assert!(cut.len() <= 21);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn reasons_are_camel_case_words() {
        for reason in Reason::ALL {
            let word = reason.as_str();
            assert!(word.chars().next().is_some_and(|c| c.is_ascii_uppercase()), "{word}");
            assert!(word.chars().all(|c| c.is_ascii_alphanumeric()), "{word}");
        }
    }
}
