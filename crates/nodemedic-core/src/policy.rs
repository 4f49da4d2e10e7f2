//! The policy model: which nodes, what counts as unhealthy, the remediation ladder and the safety gates.
//!
//! One model expresses every seed: seed 000's taint ladder (`repair-reboot` → `repair-reimage` →
//! `repair-manual`, three failed checks, `slow-network`), seed 003's per-checker thresholds and
//! GPU-count rule with monitor-only on by default, and seed 004's selector, `unhealthyConditions`,
//! `minHealthy` and `pauseRequests`. Field names are camelCase so the same type can back a CRD.

use crate::class::FaultClassRungs;
use crate::drain::DrainPolicy;
use crate::selector::{LabelSelector, Labels};
use crate::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Label whose value `true` takes a node out of nodemedic's hands.
pub const DEFAULT_EXCLUDE_LABEL: &str = "nodemedic.io/exclude";
/// The node-pool label (GKE's, as seed 002 uses; configurable per policy).
pub const DEFAULT_NODE_POOL_LABEL: &str = "cloud.google.com/gke-nodepool";
pub const DEFAULT_TAINT_PREFIX: &str = "nodemedic.io/";
/// Node class every node with GPUs belongs to unless a custom class matched first.
pub const GPU_NODE_CLASS: &str = "gpu";
/// Node class of nodes that match no custom class and have no GPUs.
pub const STANDARD_NODE_CLASS: &str = "standard";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Which nodes the policy manages (AND'ed with `nodePools`, `nodeRole` and the exclude label).
    #[serde(default)]
    pub selector: LabelSelector,
    /// Node pools to manage; empty means all pools (seed 003).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_pools: Vec<String>,
    #[serde(default = "default_node_pool_label")]
    pub node_pool_label: String,
    /// Nodes labelled `<excludeLabel>=true` are never touched.
    #[serde(default = "default_exclude_label")]
    pub exclude_label: String,
    /// Control-plane and worker nodes get separate policies; `any` opts out of the split.
    #[serde(default)]
    pub node_role: NodeRole,
    /// Named node classes for per-class step timeouts; checked in order. `gpu` and `standard` are built in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_classes: Vec<NodeClass>,
    /// Unhealthy rules; a node is unhealthy when any remediating rule fires (medik8s: OR'ed).
    pub rules: Vec<Rule>,
    /// The remediation ladder, tried in order.
    pub ladder: Vec<LadderStep>,
    /// The rung a remediation starts at for each fault class the agent's catalog reports (`replace:
    /// replace`, `restartApplication: events`…); unset classes take the defaults (docs/controller.md,
    /// "Fault classes").
    #[serde(default, skip_serializing_if = "FaultClassRungs::is_default")]
    pub fault_classes: FaultClassRungs,
    /// Taint keys are `<taintPrefix><name>`: `nodemedic.io/repair-reboot` by default, bare `repair-reboot`
    /// with an empty prefix (seed 000's keys).
    #[serde(default = "default_taint_prefix")]
    pub taint_prefix: String,
    #[serde(default)]
    pub gates: Gates,
    /// Decide and record everything, execute nothing. On unless turned off explicitly (seed 003).
    #[serde(default = "default_true")]
    pub monitor_only: bool,
    /// While non-empty, no new remediation starts; in-flight ones continue (medik8s `pauseRequests`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_requests: Vec<String>,
    /// How drains treat pods: per-namespace modes, and what a drain still blocked at its timeout
    /// does (default: hold the node cordoned, never move on to a reboot past a budget).
    #[serde(default, skip_serializing_if = "DrainPolicy::is_default")]
    pub drain: DrainPolicy,
}

fn default_node_pool_label() -> String {
    DEFAULT_NODE_POOL_LABEL.into()
}
fn default_exclude_label() -> String {
    DEFAULT_EXCLUDE_LABEL.into()
}
fn default_taint_prefix() -> String {
    DEFAULT_TAINT_PREFIX.into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NodeRole {
    #[default]
    Worker,
    ControlPlane,
    Any,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClass {
    pub name: String,
    pub selector: LabelSelector,
}

/// One unhealthy rule. Exactly one of `condition`, `gpuCount`, `check` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<GpuCountMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckMatch>,
    /// How long the bad state must hold before the rule fires.
    #[serde(default)]
    pub duration: Duration,
    /// Evidence older than this (condition heartbeat, check run) is stale: "unknown", never a repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Duration>,
    #[serde(default)]
    pub effect: RuleEffect,
}

/// A Node condition in a given status. `False` and `Unknown` are distinct (medik8s semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// The rule applies only when the condition's reason is one of these; otherwise it is skipped as
    /// not applicable (seed 003's Cilium rule: `NetworkUnavailable` owned by Cilium says `CiliumIsUp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_with_reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// Seed 003's GPU rule: the expected count label (static, set by GPU feature discovery) against the
/// allocatable resource (dynamic; drops when a GPU falls off the bus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuCountMatch {
    #[serde(default = "default_gpu_vendors")]
    pub vendors: Vec<GpuVendor>,
}

impl Default for GpuCountMatch {
    fn default() -> Self {
        GpuCountMatch { vendors: default_gpu_vendors() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuVendor {
    /// Label with the expected GPU count, e.g. `nvidia.com/gpu.count`.
    pub count_label: String,
    /// Extended resource name in allocatable, e.g. `nvidia.com/gpu`.
    pub resource: String,
}

pub fn default_gpu_vendors() -> Vec<GpuVendor> {
    vec![
        GpuVendor { count_label: "nvidia.com/gpu.count".into(), resource: "nvidia.com/gpu".into() },
        GpuVendor { count_label: "amd.com/gpu.count".into(), resource: "amd.com/gpu".into() },
    ]
}

/// A check the node agent publishes: a probe family (`gpu`, `network`, `disk`, `custom`) read from the
/// family's condition, or a custom plugin's own condition (`plugin: true`). How many runs make a failure
/// or a pass is the agent's probe schedule (docs/agent-probes.md); the rule's `duration` says how long
/// a published failure must last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckMatch {
    /// `gpu`, `network`, `disk` or `custom`; with `plugin: true`, the custom plugin's name.
    pub name: String,
    /// The check is a custom plugin of this name, which publishes a condition of its own name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plugin: bool,
}

impl CheckMatch {
    /// A probe family's check.
    pub fn family(family: crate::probe::ProbeFamily) -> Self {
        CheckMatch { name: family.check_name().into(), plugin: false }
    }
}

/// What a firing rule does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleEffect {
    /// Set: a soft condition that never escalates; the node only carries this NoSchedule taint while
    /// the rule fires (seed 000's `slow-network`). Unset: the node enters the remediation ladder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taint: Option<String>,
}

impl Rule {
    pub fn is_soft(&self) -> bool {
        self.effect.taint.is_some()
    }
}

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

/// An absolute count or a percentage of the selected nodes (`3` or `"51%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// Scales against `total`, rounding up as medik8s does (6 nodes at 51% → 4).
    pub fn scaled_up(self, total: usize) -> usize {
        match self {
            IntOrPercent::Count(n) => n as usize,
            IntOrPercent::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
    /// Scales against `total`, rounding down (a cap should not let more through than the share).
    pub fn scaled_down(self, total: usize) -> usize {
        match self {
            IntOrPercent::Count(n) => n as usize,
            IntOrPercent::Percent(p) => total * p as usize / 100,
        }
    }
    /// `count` is strictly more than this share of `total` (exact: no rounding).
    pub fn exceeded_by(self, count: usize, total: usize) -> bool {
        match self {
            IntOrPercent::Count(n) => count > n as usize,
            IntOrPercent::Percent(p) => count * 100 > total * p as usize,
        }
    }
}

impl schemars::JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A count (3) or a percentage of the selected nodes (\"51%\", at most 100%).",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^([0-9]|[1-9][0-9]|100)%$"}]
        })
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Count(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(n) => s.serialize_u32(*n),
            IntOrPercent::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let bad = |what: &str| serde::de::Error::custom(format!("{what}: expected a count like 3 or a percentage like \"51%\""));
        match Raw::deserialize(d)? {
            Raw::Int(n) if n < 0 => Err(bad(&format!("{n} is negative"))),
            Raw::Int(n) => u32::try_from(n).map(IntOrPercent::Count).map_err(|_| bad(&format!("{n} is too large"))),
            Raw::Str(s) => {
                let t = s.trim();
                if let Some(p) = t.strip_suffix('%') {
                    match p.trim().parse::<i64>() {
                        Ok(v) if v < 0 => Err(bad(&format!("`{s}` is negative"))),
                        Ok(v) => u32::try_from(v).map(IntOrPercent::Percent).map_err(|_| bad(&format!("`{s}` is too large"))),
                        Err(_) => Err(bad(&format!("`{s}` is not a percentage"))),
                    }
                } else {
                    match t.parse::<i64>() {
                        Ok(v) if v >= 0 => u32::try_from(v).map(IntOrPercent::Count).map_err(|_| bad(&format!("`{s}` is too large"))),
                        Ok(_) => Err(bad(&format!("`{s}` is negative"))),
                        Err(_) => Err(bad(&format!("`{s}` is neither"))),
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gates {
    /// Remediate only while at least this many selected nodes are healthy (medik8s `minHealthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy: Option<IntOrPercent>,
    /// Remediate only while at most this many selected nodes are unhealthy (exclusive with `minHealthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unhealthy: Option<IntOrPercent>,
    /// Most nodes in a disruptive step at once, cluster-wide (count or share of selected nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<IntOrPercent>,
    /// Most nodes in a disruptive step at once within one node pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_per_pool: Option<IntOrPercent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// When set, disruptive steps start only inside one of these windows (UTC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

/// Halts new remediations when too many nodes turn unhealthy at once: a mass failure is more likely a
/// broken probe, network or control plane than many broken machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Trip when more than this many selected nodes turned unhealthy within `window`.
    pub max_unhealthy: IntOrPercent,
    pub window: Duration,
    /// Stay open at least this long.
    pub cooldown: Duration,
    /// Also stay open until a person resets it.
    #[serde(default)]
    pub manual_reset: bool,
}

/// The "lemon node" rule: a node remediated `maxRemediations` times within `window` goes straight to Manual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    pub max_remediations: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Days the window opens on; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` UTC.
    pub start: String,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Weekday {
    #[serde(alias = "Monday")]
    Mon,
    #[serde(alias = "Tuesday")]
    Tue,
    #[serde(alias = "Wednesday")]
    Wed,
    #[serde(alias = "Thursday")]
    Thu,
    #[serde(alias = "Friday")]
    Fri,
    #[serde(alias = "Saturday")]
    Sat,
    #[serde(alias = "Sunday")]
    Sun,
}

impl Weekday {
    pub fn index(self) -> u8 {
        self as u8
    }
}

impl MaintenanceWindow {
    pub fn start_millis(&self) -> Option<i64> {
        let (h, m) = self.start.split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        ((0..24).contains(&h) && (0..60).contains(&m) && self.start.len() == 5).then_some((h * 60 + m) * 60_000)
    }
}

/// A policy field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The document could not be read as a policy (syntax, unknown field or step name, bad duration).
    #[error("policy could not be read: {0}")]
    Parse(String),
    /// It was read, but some fields are invalid.
    #[error("policy is invalid: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

impl Policy {
    /// Reads a policy from YAML (or JSON, which is YAML) and validates it.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        // A repeated key is refused first, with its path (crate::input).
        crate::input::check_yaml_keys(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        // The path of the bad field (`rules[0].duration`) leads the message; serde-saphyr's own
        // message adds the line and column.
        let mut path = None;
        let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = Some(e.path().to_string());
                e.into_inner()
            })
        });
        let policy: Policy = parsed.map_err(|e| {
            PolicyError::Parse(match path.filter(|p| p != ".") {
                Some(p) => format!("{p}: {e}"),
                None => e.to_string(),
            })
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a policy from JSON with the path of a bad field in the error, and validates it.
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        crate::input::check_json_keys(text.as_bytes()).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let de = &mut serde_json::Deserializer::from_str(text);
        let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            PolicyError::Parse(format!("{path}: {}", e.inner()))
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Every problem at once, each naming its field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut errs = Vec::new();
        let mut err = |field: String, reason: String| errs.push(FieldError { field, reason });
        for (f, r) in self.selector.problems() {
            err(format!("selector.{f}"), r);
        }
        if self.rules.is_empty() {
            err("rules".into(), "at least one unhealthy rule is needed".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if rule.name.trim().is_empty() {
                err(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(rule.name.as_str()) {
                err(format!("{at}.name"), format!("`{}` is used by another rule", rule.name));
            }
            let sources = [rule.condition.is_some(), rule.gpu_count.is_some(), rule.check.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                err(at.clone(), "exactly one of condition, gpuCount, check must be set".into());
            }
            if let Some(c) = &rule.condition
                && c.type_.trim().is_empty()
            {
                err(format!("{at}.condition.type"), "must not be empty".into());
            }
            if let Some(c) = &rule.check
                && let Err(e) = crate::probe::check_condition_type(c)
            {
                err(format!("{at}.check.name"), e.to_string());
            }
            if let Some(g) = &rule.gpu_count
                && g.vendors.is_empty()
            {
                err(format!("{at}.gpuCount.vendors"), "at least one vendor is needed".into());
            }
            if let Some(t) = &rule.effect.taint
                && t.trim().is_empty()
            {
                err(format!("{at}.effect.taint"), "must not be empty".into());
            }
            if rule.stale_after == Some(Duration::ZERO) {
                err(format!("{at}.staleAfter"), "must be more than zero (omit it to never treat evidence as stale)".into());
            }
        }
        if !self.rules.is_empty() && self.rules.iter().all(Rule::is_soft) && self.ladder.is_empty() {
            // Only soft rules: a ladder is pointless but harmless; still demand one below for clarity.
        }
        if self.ladder.is_empty() {
            err("ladder".into(), "the remediation ladder needs at least one step".into());
        }
        for (f, r) in self.drain.problems() {
            err(f, r);
        }
        if self.drain.when_blocked == crate::drain::WhenDrainBlocked::Escalate
            && self.ladder.last().is_some_and(|l| l.step != RemediationStep::Manual)
        {
            err("drain.whenBlocked".into(), "escalate hands a blocked drain to the ladder's manual step; the ladder has none".into());
        }
        let class_names: std::collections::BTreeSet<&str> =
            self.node_classes.iter().map(|c| c.name.as_str()).chain([GPU_NODE_CLASS, STANDARD_NODE_CLASS]).collect();
        for (i, c) in self.node_classes.iter().enumerate() {
            if c.name.trim().is_empty() {
                err(format!("nodeClasses[{i}].name"), "must not be empty".into());
            }
            for (f, r) in c.selector.problems() {
                err(format!("nodeClasses[{i}].selector.{f}"), r);
            }
        }
        for (i, step) in self.ladder.iter().enumerate() {
            let at = format!("ladder[{i}]");
            for class in step.timeout_by_class.keys() {
                if !class_names.contains(class.as_str()) {
                    err(
                        format!("{at}.timeoutByClass.{class}"),
                        format!("unknown node class `{class}` (known: {})", class_names.iter().copied().collect::<Vec<_>>().join(", ")),
                    );
                }
            }
            if step.step == RemediationStep::Manual && i + 1 != self.ladder.len() {
                err(at.clone(), "manual must be the last step: nothing runs after a person takes over".into());
            }
            match (&step.template, step.step) {
                (None, RemediationStep::External) => {
                    err(format!("{at}.template"), "external needs a template: apiVersion, kind, name and namespace".into())
                }
                (Some(t), RemediationStep::External) => {
                    for (f, r) in t.problems() {
                        err(format!("{at}.template.{f}"), r);
                    }
                }
                (Some(_), other) => err(format!("{at}.template"), format!("only an external step takes a template, not {other}")),
                (None, _) => {}
            }
            if step.completion == Completion::FixedWait && !step.step.is_repair() && step.step != RemediationStep::Drain {
                err(format!("{at}.completion"), format!("fixedWait applies to drain and repair steps, not {}", step.step));
            }
        }
        let g = &self.gates;
        if g.min_healthy.is_some() && g.max_unhealthy.is_some() {
            err("gates".into(), "set minHealthy or maxUnhealthy, not both".into());
        }
        for (name, v) in [
            ("gates.minHealthy", g.min_healthy),
            ("gates.maxUnhealthy", g.max_unhealthy),
            ("gates.maxConcurrent", g.max_concurrent),
            ("gates.maxConcurrentPerPool", g.max_concurrent_per_pool),
            ("gates.circuitBreaker.maxUnhealthy", g.circuit_breaker.as_ref().map(|b| b.max_unhealthy)),
        ] {
            if let Some(IntOrPercent::Percent(p)) = v
                && p > 100
            {
                err(name.into(), format!("{p}% is over 100%"));
            }
        }
        if let Some(b) = &g.circuit_breaker
            && b.window == Duration::ZERO
        {
            err("gates.circuitBreaker.window".into(), "must be more than zero".into());
        }
        if let Some(r) = &g.retry_budget {
            if r.max_remediations == 0 {
                err("gates.retryBudget.maxRemediations".into(), "must be at least 1".into());
            }
            if r.window == Duration::ZERO {
                err("gates.retryBudget.window".into(), "must be more than zero".into());
            }
        }
        for (i, w) in g.maintenance_windows.iter().enumerate() {
            if w.start_millis().is_none() {
                err(format!("gates.maintenanceWindows[{i}].start"), format!("`{}` is not a time of day in HH:MM", w.start));
            }
            if w.duration == Duration::ZERO {
                err(format!("gates.maintenanceWindows[{i}].duration"), "must be more than zero".into());
            }
        }
        // Parsing refuses negative durations; a policy built in code (the simulator, tests, a
        // library caller) is held to the same rule here.
        for (field, d) in self.durations() {
            if d < Duration::ZERO {
                err(field, format!("{d} is negative"));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(PolicyError::Invalid(errs)) }
    }

    /// Every duration in the policy with its field path.
    fn durations(&self) -> Vec<(String, Duration)> {
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            out.push((format!("rules[{i}].duration"), rule.duration));
            if let Some(s) = rule.stale_after {
                out.push((format!("rules[{i}].staleAfter"), s));
            }
        }
        for (i, step) in self.ladder.iter().enumerate() {
            out.push((format!("ladder[{i}].timeout"), step.timeout));
            out.push((format!("ladder[{i}].settle"), step.settle));
            out.push((format!("ladder[{i}].verifyTimeout"), step.verify_timeout));
            out.extend(step.timeout_by_class.iter().map(|(c, d)| (format!("ladder[{i}].timeoutByClass.{c}"), *d)));
        }
        let g = &self.gates;
        if let Some(b) = &g.circuit_breaker {
            out.push(("gates.circuitBreaker.window".into(), b.window));
            out.push(("gates.circuitBreaker.cooldown".into(), b.cooldown));
        }
        if let Some(r) = &g.retry_budget {
            out.push(("gates.retryBudget.window".into(), r.window));
        }
        out.extend(g.maintenance_windows.iter().enumerate().map(|(i, w)| (format!("gates.maintenanceWindows[{i}].duration"), w.duration)));
        out
    }

    pub fn taint_key(&self, name: &str) -> String {
        if name.contains('/') { name.to_string() } else { format!("{}{}", self.taint_prefix, name) }
    }

    pub fn step_taint(&self, step: RemediationStep) -> String {
        self.taint_key(step.taint_name())
    }

    /// The node class used for per-class timeouts: the first matching custom class, else `gpu` for
    /// nodes with GPUs (by label or allocatable), else `standard`.
    pub fn node_class<'a>(&'a self, labels: &Labels, has_gpus: bool) -> &'a str {
        for c in &self.node_classes {
            if c.selector.matches(labels) {
                return &c.name;
            }
        }
        if has_gpus { GPU_NODE_CLASS } else { STANDARD_NODE_CLASS }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: &str) -> String {
        format!("rules:\n- name: ready\n  condition: {{type: Ready, status: \"False\"}}\n  duration: 5m\nladder:\n- step: reboot\n{extra}")
    }

    #[test]
    fn a_minimal_policy_reads_with_safe_defaults() {
        let p = Policy::from_yaml(&minimal("")).unwrap();
        assert!(p.monitor_only, "monitor-only is on unless turned off (seed 003)");
        assert_eq!(p.exclude_label, "nodemedic.io/exclude");
        assert_eq!(p.step_taint(RemediationStep::Reboot), "nodemedic.io/repair-reboot");
        assert_eq!(p.ladder[0].timeout, Duration::from_mins(10));
        assert_eq!(p.rules[0].duration, Duration::from_mins(5));
    }

    #[test]
    fn seed_000_bare_taint_keys_come_from_an_empty_prefix() {
        let p = Policy::from_yaml(&minimal("taintPrefix: \"\"\n")).unwrap();
        assert_eq!(p.step_taint(RemediationStep::Reimage), "repair-reimage");
        assert_eq!(p.taint_key("slow-network"), "slow-network");
    }

    #[test]
    fn min_healthy_over_100_percent_is_refused_naming_the_field() {
        let err = Policy::from_yaml(&minimal("gates: {minHealthy: \"120%\"}\n")).unwrap_err();
        assert_eq!(err.to_string(), "policy is invalid: gates.minHealthy: 120% is over 100%");
    }

    #[test]
    fn both_min_healthy_and_max_unhealthy_are_refused() {
        let err = Policy::from_yaml(&minimal("gates: {minHealthy: 2, maxUnhealthy: \"10%\"}\n")).unwrap_err();
        assert!(err.to_string().contains("gates: set minHealthy or maxUnhealthy, not both"), "{err}");
    }

    #[test]
    fn negative_durations_are_refused() {
        let text = minimal("").replace("duration: 5m", "duration: -5m");
        let err = Policy::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("rules[0].duration") && err.contains("negative"), "{err}");
        let json =
            r#"{"rules":[{"name":"r","condition":{"type":"Ready","status":"False"},"duration":"-1s"}],"ladder":[{"step":"reboot"}]}"#;
        let err = Policy::from_json(json).unwrap_err().to_string();
        assert!(err.contains("rules[0].duration") && err.contains("negative"), "{err}");
    }

    #[test]
    fn negative_durations_built_in_code_are_refused_naming_the_field() {
        let mut p = Policy::from_yaml(&minimal("")).unwrap();
        p.rules[0].duration = Duration(-1_000);
        p.ladder[0].settle = Duration(-5);
        let Err(PolicyError::Invalid(errs)) = p.validate() else { panic!("expected invalid") };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["rules[0].duration", "ladder[0].settle"]);
    }

    #[test]
    fn a_badly_typed_yaml_field_is_named_by_its_path() {
        let err = Policy::from_yaml(&minimal("gates: {minHealthy: lots}\n")).unwrap_err().to_string();
        assert!(err.contains("gates.minHealthy"), "{err}");
        let err = Policy::from_yaml(&minimal("").replace("status: \"False\"", "status: Maybe")).unwrap_err().to_string();
        assert!(err.contains("rules[0].condition.status") && err.contains("Maybe"), "{err}");
    }

    #[test]
    fn an_empty_ladder_is_refused() {
        let text = "rules:\n- name: ready\n  condition: {type: Ready, status: \"False\"}\nladder: []\n";
        let err = Policy::from_yaml(text).unwrap_err();
        assert!(err.to_string().contains("ladder: the remediation ladder needs at least one step"), "{err}");
    }

    #[test]
    fn unknown_step_names_are_refused() {
        let json = r#"{"rules":[{"name":"r","condition":{"type":"Ready","status":"False"}}],"ladder":[{"step":"rebot"}]}"#;
        let err = Policy::from_json(json).unwrap_err().to_string();
        assert!(err.contains("ladder[0].step") && err.contains("unknown variant `rebot`"), "{err}");
        let err = Policy::from_yaml(&minimal("").replace("step: reboot", "step: rebot")).unwrap_err().to_string();
        assert!(err.contains("ladder[0].step") && err.contains("rebot"), "{err}");
    }

    #[test]
    fn a_policy_that_repeats_a_key_is_refused_naming_the_key_and_where() {
        let json =
            r#"{"rules":[{"name":"r","condition":{"type":"Ready","status":"False"}}],"ladder":[{"step":"reboot","step":"reimage"}]}"#;
        let err = Policy::from_json(json).unwrap_err().to_string();
        assert!(err.contains("duplicate key `step` in `ladder[0]`"), "{err}");
        let err = Policy::from_yaml(&minimal("taintPrefix: a/\ntaintPrefix: b/\n")).unwrap_err().to_string();
        assert!(err.contains("duplicate key `taintPrefix` at the top level"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Policy::from_yaml(&minimal("minHealty: 3\n")).unwrap_err();
        assert!(err.to_string().contains("minHealty"), "{err}");
    }

    #[test]
    fn a_rule_needs_exactly_one_source() {
        let text = "rules:\n- name: both\n  condition: {type: Ready, status: \"False\"}\n  check: {name: gpu}\nladder:\n- step: reboot\n";
        let err = Policy::from_yaml(text).unwrap_err();
        assert!(err.to_string().contains("rules[0]: exactly one of condition, gpuCount, check"), "{err}");
    }

    #[test]
    fn manual_must_be_last_and_classes_must_exist() {
        let text = "rules:\n- name: r\n  check: {name: gpu}\nladder:\n- step: manual\n- step: reboot\n  timeoutByClass: {tpu: 1h}\n";
        let Err(PolicyError::Invalid(errs)) = Policy::from_yaml(text) else { panic!("expected invalid") };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["ladder[0]", "ladder[1].timeoutByClass.tpu"]);
    }

    #[test]
    fn min_healthy_rounds_up_like_medik8s() {
        assert_eq!(IntOrPercent::Percent(51).scaled_up(6), 4);
        assert_eq!(IntOrPercent::Count(3).scaled_up(6), 3);
        assert!(IntOrPercent::Percent(20).exceeded_by(4, 16));
        assert!(!IntOrPercent::Percent(25).exceeded_by(4, 16));
    }

    #[test]
    fn maintenance_window_times_are_checked() {
        let err = Policy::from_yaml(&minimal("gates:\n  maintenanceWindows:\n  - {start: \"25:00\", duration: 1h}\n")).unwrap_err();
        assert!(err.to_string().contains("gates.maintenanceWindows[0].start"), "{err}");
    }
}
