//! The fault class chooses the rung: the node agent's fault catalog says what a fault needs (restart the
//! application, reset the GPU, reboot, replace the part, call the vendor), the class travels with the
//! agent's condition, and the policy maps each class to the rung a remediation starts at. Repair steps
//! below that rung are skipped; preparation (quarantine, drain) never is, so a node is still emptied
//! before it is worked on.

use crate::policy::{LadderStep, RemediationStep};
use serde::{Deserialize, Serialize};

/// What a fault needs, weakest first (the derived order is the severity order). Written in kebab-case
/// (`reset-gpu`) in the agent's catalog and in policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FaultClass {
    Ignore,
    RestartApplication,
    ResetGpu,
    Reboot,
    Replace,
    ContactSupport,
}

impl FaultClass {
    pub const ALL: [FaultClass; 6] = [
        FaultClass::Ignore,
        FaultClass::RestartApplication,
        FaultClass::ResetGpu,
        FaultClass::Reboot,
        FaultClass::Replace,
        FaultClass::ContactSupport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultClass::Ignore => "ignore",
            FaultClass::RestartApplication => "restart-application",
            FaultClass::ResetGpu => "reset-gpu",
            FaultClass::Reboot => "reboot",
            FaultClass::Replace => "replace",
            FaultClass::ContactSupport => "contact-support",
        }
    }

    /// The condition reason that carries this class. The agent publishes the last four for catalog faults
    /// (it leaves the node healthy on the first two); a plugin or a site's own agent may publish any.
    pub fn condition_reason(self) -> Option<&'static str> {
        match self {
            FaultClass::Ignore => Some("KernelFaultIgnore"),
            FaultClass::RestartApplication => Some("KernelFaultRestartApplication"),
            FaultClass::ResetGpu => Some("KernelFaultResetGpu"),
            FaultClass::Reboot => Some("KernelFaultReboot"),
            FaultClass::Replace => Some("KernelFaultReplace"),
            FaultClass::ContactSupport => Some("KernelFaultContactSupport"),
        }
    }

    /// The class a condition's reason carries, if it carries one.
    pub fn from_condition_reason(reason: &str) -> Option<FaultClass> {
        FaultClass::ALL.into_iter().find(|c| c.condition_reason() == Some(reason))
    }

    /// Where a remediation of this class starts unless the policy says otherwise: an application's fault
    /// is the application's (events only); a GPU reset starts at the ladder's `resetGpu` step, and at
    /// the reboot-level steps when the ladder has none or the faulty GPU is not known;
    /// a part that must be replaced goes to the Replace step, or to a person when the ladder has none.
    pub fn default_rung(self) -> ClassRung {
        match self {
            FaultClass::Ignore | FaultClass::RestartApplication => ClassRung::Events,
            FaultClass::ResetGpu => ClassRung::ResetGpu,
            FaultClass::Reboot => ClassRung::Reboot,
            FaultClass::Replace => ClassRung::Replace,
            FaultClass::ContactSupport => ClassRung::Manual,
        }
    }
}

impl std::fmt::Display for FaultClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rung a remediation of a class starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ClassRung {
    /// No remediation: the fault is reported (a `faultClass` hold), nothing is done to the node.
    Events,
    /// The ladder from its first step.
    Ladder,
    /// Repair steps below a GPU reset (none) are skipped: the ladder's `resetGpu` step, when the faulty
    /// GPU is known, else the reboot-level steps.
    ResetGpu,
    /// Repair steps below a reboot (a GPU reset) are skipped.
    Reboot,
    /// Reboot-level steps are skipped.
    Reimage,
    /// Reboot- and reimage-level steps are skipped: straight to Replace.
    Replace,
    /// Every repair step is skipped: a person, with the diagnostics.
    Manual,
}

impl ClassRung {
    pub fn as_str(self) -> &'static str {
        match self {
            ClassRung::Events => "events",
            ClassRung::Ladder => "ladder",
            ClassRung::ResetGpu => "resetGpu",
            ClassRung::Reboot => "reboot",
            ClassRung::Reimage => "reimage",
            ClassRung::Replace => "replace",
            ClassRung::Manual => "manual",
        }
    }

    fn rank(self) -> u8 {
        match self {
            ClassRung::Events | ClassRung::Ladder => 0,
            ClassRung::ResetGpu => 1,
            ClassRung::Reboot => 2,
            ClassRung::Reimage => 3,
            ClassRung::Replace => 4,
            ClassRung::Manual => 5,
        }
    }
}

/// A step's place on the repair ladder: 0 for preparation (never skipped), then a GPU reset,
/// reboot-level, reimage-level, replace and a person.
pub fn step_rank(step: RemediationStep) -> u8 {
    match step {
        RemediationStep::Quarantine | RemediationStep::Drain => 0,
        RemediationStep::ResetGpu => 1,
        RemediationStep::Reboot | RemediationStep::PowerCycle | RemediationStep::PowerOff | RemediationStep::External => 2,
        RemediationStep::Reimage => 3,
        RemediationStep::Replace => 4,
        RemediationStep::Manual => 5,
    }
}

/// A policy's `faultClasses`: the rung each class starts at; an unset class takes
/// [`FaultClass::default_rung`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultClassRungs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<ClassRung>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_application: Option<ClassRung>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_gpu: Option<ClassRung>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<ClassRung>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<ClassRung>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_support: Option<ClassRung>,
}

impl FaultClassRungs {
    /// Every class climbs the whole ladder (the seeds' designs, which know nothing of fault classes).
    pub fn class_blind() -> Self {
        let all = Some(ClassRung::Ladder);
        FaultClassRungs { ignore: all, restart_application: all, reset_gpu: all, reboot: all, replace: all, contact_support: all }
    }

    pub fn is_default(&self) -> bool {
        *self == FaultClassRungs::default()
    }

    /// The rung for `class` (a fault without a class climbs the whole ladder).
    pub fn rung(&self, class: Option<FaultClass>) -> ClassRung {
        let Some(class) = class else { return ClassRung::Ladder };
        let set = match class {
            FaultClass::Ignore => self.ignore,
            FaultClass::RestartApplication => self.restart_application,
            FaultClass::ResetGpu => self.reset_gpu,
            FaultClass::Reboot => self.reboot,
            FaultClass::Replace => self.replace,
            FaultClass::ContactSupport => self.contact_support,
        };
        set.unwrap_or_else(|| class.default_rung())
    }
}

/// The first ladder index at or after `from` that a remediation at `rung` may run: preparation, or a repair
/// at or above the rung. A `resetGpu` step runs only when `gpu_known` (the fault's GPU is recorded):
/// a reset that cannot be aimed is skipped, so the ladder goes on to its reboot. When the ladder has
/// none left, its last step (a person, in a valid ladder).
pub fn next_index(ladder: &[LadderStep], from: usize, rung: ClassRung, gpu_known: bool) -> usize {
    let last = ladder.len().saturating_sub(1);
    let may_run = |step: RemediationStep| {
        let rank = step_rank(step);
        (rank == 0 || rank >= rung.rank()) && (step != RemediationStep::ResetGpu || gpu_known)
    };
    (from..ladder.len()).find(|&i| may_run(ladder[i].step)).unwrap_or(last).min(last)
}
