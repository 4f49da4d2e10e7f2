//! Repairs in the model: node classes, which repair a fix needs, and how long each takes.

use super::*;

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

pub(super) fn default_replace_lead() -> DurationDist {
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
