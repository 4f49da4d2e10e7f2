//! The ladder's steps: what each step is, its taint and timeouts, and the external remediation template.

use super::*;

/// A rung of the remediation ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RemediationStep {
    /// NoSchedule taint only; its timeout is a window in which the node may recover by itself.
    Quarantine,
    /// Evict pods through the Eviction API (PodDisruptionBudgets respected).
    Drain,
    /// Reset the one faulty GPU on the node (`nvidia-smi -r -i <bus id>` / `amd-smi reset -G <index>`,
    /// done by the node agent). Runs only for a fault whose GPU is known; otherwise it is skipped.
    ResetGpu,
    Reboot,
    Reimage,
    /// Hand the machine back to the provider for a new one.
    Replace,
    /// Cut and restore power through the node's BMC (Redfish or IPMI), confirmed by the BMC's power
    /// state; then, like a reboot, a new bootID and Ready again.
    PowerCycle,
    /// Cut power through the node's BMC, confirmed by the BMC's power state: the node is off.
    PowerOff,
    /// Hand the node to an external remediator through the medik8s External Remediation API: a
    /// remediation CR made from the ladder step's `template`, done when the remediator's status says
    /// `Succeeded` (docs/external-remediation.md).
    External,
    /// A person takes over; the node keeps `repair-manual` until they resolve it.
    Manual,
}

impl RemediationStep {
    pub const ALL: [RemediationStep; 10] = [
        RemediationStep::Quarantine,
        RemediationStep::Drain,
        RemediationStep::ResetGpu,
        RemediationStep::Reboot,
        RemediationStep::Reimage,
        RemediationStep::Replace,
        RemediationStep::PowerCycle,
        RemediationStep::PowerOff,
        RemediationStep::External,
        RemediationStep::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RemediationStep::Quarantine => "quarantine",
            RemediationStep::Drain => "drain",
            RemediationStep::ResetGpu => "resetGpu",
            RemediationStep::Reboot => "reboot",
            RemediationStep::Reimage => "reimage",
            RemediationStep::Replace => "replace",
            RemediationStep::PowerCycle => "powerCycle",
            RemediationStep::PowerOff => "powerOff",
            RemediationStep::External => "external",
            RemediationStep::Manual => "manual",
        }
    }

    /// Disruptive steps take running work off the node; they count against concurrency limits and
    /// wait for maintenance windows.
    pub fn is_disruptive(self) -> bool {
        matches!(
            self,
            RemediationStep::Drain
                | RemediationStep::ResetGpu
                | RemediationStep::Reboot
                | RemediationStep::Reimage
                | RemediationStep::Replace
                | RemediationStep::PowerCycle
                | RemediationStep::PowerOff
                | RemediationStep::External
        )
    }

    /// Repair steps change the node; the checks run again after them.
    pub fn is_repair(self) -> bool {
        matches!(
            self,
            RemediationStep::ResetGpu
                | RemediationStep::Reboot
                | RemediationStep::Reimage
                | RemediationStep::Replace
                | RemediationStep::PowerCycle
                | RemediationStep::External
        )
    }

    /// Taint name (without prefix) that shows this step on the node.
    pub fn taint_name(self) -> &'static str {
        match self {
            RemediationStep::Quarantine => "quarantine",
            RemediationStep::Drain => "draining",
            RemediationStep::ResetGpu => "repair-reset-gpu",
            RemediationStep::Reboot => "repair-reboot",
            RemediationStep::Reimage => "repair-reimage",
            RemediationStep::Replace => "repair-replace",
            RemediationStep::PowerCycle => "repair-power-cycle",
            RemediationStep::PowerOff => "repair-power-off",
            RemediationStep::External => "repair-external",
            RemediationStep::Manual => "repair-manual",
        }
    }
}

impl fmt::Display for RemediationStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the engine learns a step is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Completion {
    /// The executor reports success or failure (for a reboot: a new bootID and Ready again);
    /// the timeout only bounds the wait.
    #[default]
    Reported,
    /// The step counts as done when its timeout has passed, whatever was reported (seed 000/003's fixed waits).
    FixedWait,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LadderStep {
    pub step: RemediationStep,
    /// How long the step may take before it counts as failed (for `fixedWait`: how long to wait).
    #[serde(default = "default_step_timeout")]
    pub timeout: Duration,
    /// Per-node-class timeouts, e.g. `{gpu: 40m}` (seed 003: 10 min standard, 40 min GPU).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timeout_by_class: BTreeMap<String, Duration>,
    #[serde(default)]
    pub completion: Completion,
    /// Wait after completion before the checks are trusted again (seed 000: 5 minutes).
    #[serde(default)]
    pub settle: Duration,
    /// After settling, how long fresh check results may take to confirm recovery before the step counts as failed.
    #[serde(default = "default_verify_timeout")]
    pub verify_timeout: Duration,
    /// For `external` only (and required there): the remediation template the remediation CR is made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<ExternalTemplate>,
}

/// A medik8s External Remediation API template, as NodeHealthCheck's `remediationTemplate` names it:
/// a namespaced `*Template` object whose `spec.template.spec` becomes the `spec` of a remediation CR
/// of the same group and version, of the kind without the `Template` suffix, named after the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalTemplate {
    /// `group/version`, e.g. `self-node-remediation.medik8s.io/v1alpha1`.
    pub api_version: String,
    /// The template's kind, ending in `Template`, e.g. `SelfNodeRemediationTemplate`.
    pub kind: String,
    pub name: String,
    /// Where the template lives; the remediation CR is created there too.
    pub namespace: String,
}

/// The suffix medik8s template kinds carry; the remediation CR's kind is the template's without it.
pub const TEMPLATE_SUFFIX: &str = "Template";

impl ExternalTemplate {
    /// The kind of the remediation CR made from this template (`SelfNodeRemediation`).
    pub fn remediation_kind(&self) -> &str {
        self.kind.strip_suffix(TEMPLATE_SUFFIX).unwrap_or(&self.kind)
    }

    /// `(group, version)` of `apiVersion`; None unless it is `group/version` with both parts set.
    pub fn group_version(&self) -> Option<(&str, &str)> {
        let (group, version) = self.api_version.split_once('/')?;
        (!group.is_empty() && !version.is_empty() && !version.contains('/')).then_some((group, version))
    }

    /// Every problem with the reference, as (field below `template`, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.group_version().is_none() {
            out.push((
                "apiVersion",
                format!("`{}` must be group/version (e.g. self-node-remediation.medik8s.io/v1alpha1)", self.api_version),
            ));
        }
        if self.kind.len() <= TEMPLATE_SUFFIX.len() || !self.kind.ends_with(TEMPLATE_SUFFIX) {
            out.push(("kind", format!("`{}` must name a remediation template kind, ending in {TEMPLATE_SUFFIX}", self.kind)));
        }
        for (field, value) in [("name", &self.name), ("namespace", &self.namespace)] {
            if value.trim().is_empty() {
                out.push((field, "must not be empty".into()));
            }
        }
        out
    }
}

impl fmt::Display for ExternalTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{} ({})", self.kind, self.namespace, self.name, self.api_version)
    }
}

fn default_step_timeout() -> Duration {
    Duration::from_mins(10)
}
fn default_verify_timeout() -> Duration {
    Duration::from_mins(10)
}

impl LadderStep {
    pub fn new(step: RemediationStep, timeout: Duration) -> Self {
        LadderStep {
            step,
            timeout,
            timeout_by_class: BTreeMap::new(),
            completion: Completion::Reported,
            settle: Duration::ZERO,
            verify_timeout: default_verify_timeout(),
            template: None,
        }
    }
    pub fn timeout_for(&self, class: &str) -> Duration {
        self.timeout_by_class.get(class).copied().unwrap_or(self.timeout)
    }
}
