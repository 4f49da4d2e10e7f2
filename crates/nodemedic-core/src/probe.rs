//! The probe contract: what the node agent publishes and what the controller, the simulator and `plan`
//! read, defined once. The agent runs probes, smooths their results with [`ThresholdMachine`] and
//! publishes one Node condition per probe family (or per custom plugin); the engine reads that
//! condition back through [`check_evidence`]. The simulator drives the same machine and publishes the
//! same conditions, so it measures what production does.
//!
//! Thresholds have one owner: the agent's probe schedule (`failuresBeforeUnhealthy`,
//! `passesBeforeHealthy`). A condition only turns `True` once the agent's failure threshold is met and
//! `False` once its pass threshold is met; a policy's `check` rule says how long a published failure
//! must last (`duration`) and what to do, never how many runs make one.

use crate::class::FaultClass;
use crate::observe::{NodeCondition, NodeObservation, OperatorAction, OperatorRequest};
use crate::policy::{CheckMatch, ConditionStatus, RemediationStep};
use crate::record::{ActiveRemediation, Stage};
use crate::time::Time;

/// A probe family: one Node condition per family, node-problem-detector style (`True` is a problem).
/// Written in lowercase in the agent's configuration (`family: gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeFamily {
    Gpu,
    Network,
    Disk,
    Custom,
}

impl ProbeFamily {
    pub const ALL: [ProbeFamily; 4] = [ProbeFamily::Gpu, ProbeFamily::Network, ProbeFamily::Disk, ProbeFamily::Custom];

    /// The name a policy's `check` rule uses for the family.
    pub fn check_name(self) -> &'static str {
        match self {
            ProbeFamily::Gpu => "gpu",
            ProbeFamily::Network => "network",
            ProbeFamily::Disk => "disk",
            ProbeFamily::Custom => "custom",
        }
    }

    /// The Node condition type the agent publishes for the family.
    pub fn condition_type(self) -> &'static str {
        match self {
            ProbeFamily::Gpu => "GPUProblem",
            ProbeFamily::Network => "NetworkProblem",
            ProbeFamily::Disk => "DiskProblem",
            ProbeFamily::Custom => "CustomProblem",
        }
    }

    pub fn from_check_name(name: &str) -> Option<ProbeFamily> {
        ProbeFamily::ALL.into_iter().find(|f| f.check_name() == name)
    }

    pub fn from_condition_type(type_: &str) -> Option<ProbeFamily> {
        ProbeFamily::ALL.into_iter().find(|f| f.condition_type() == type_)
    }
}

/// Conditions the kubelet owns: no plugin may publish one of these.
pub const KUBELET_CONDITIONS: [&str; 5] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable"];

/// Why a name cannot be a custom plugin's condition type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginNameError {
    #[error("a plugin name must be 1 to 63 characters")]
    Length,
    #[error("a plugin name is letters, digits, `-`, `_` and `.`, and starts and ends with a letter or digit")]
    Characters,
    #[error("`{0}` is a probe family's or the kubelet's name; a plugin that feeds a family sets `family` instead")]
    Reserved(String),
}

/// A custom plugin without a family publishes a condition whose type is its own name, so a policy can
/// name it (`check: {name: NAME, plugin: true}`). The name must not be a family's or a kubelet condition.
pub fn validate_plugin_name(name: &str) -> Result<(), PluginNameError> {
    if name.is_empty() || name.len() > 63 {
        return Err(PluginNameError::Length);
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let body_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !body_ok || !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Err(PluginNameError::Characters);
    }
    let reserved =
        ProbeFamily::ALL.iter().any(|f| f.check_name() == name || f.condition_type() == name) || KUBELET_CONDITIONS.contains(&name);
    if reserved {
        return Err(PluginNameError::Reserved(name.to_string()));
    }
    Ok(())
}

/// Why a policy's check names nothing an agent publishes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckNameError {
    #[error("no agent publishes a check `{0}`: use gpu, network, disk or custom, or declare a plugin with `plugin: true`")]
    Unknown(String),
    #[error("plugin `{name}`: {error}")]
    Plugin { name: String, error: PluginNameError },
}

/// The Node condition a policy's check reads: the family's, or the declared plugin's own.
pub fn check_condition_type(check: &CheckMatch) -> Result<&str, CheckNameError> {
    if check.plugin {
        validate_plugin_name(&check.name).map_err(|error| CheckNameError::Plugin { name: check.name.clone(), error })?;
        return Ok(&check.name);
    }
    ProbeFamily::from_check_name(&check.name).map(ProbeFamily::condition_type).ok_or_else(|| CheckNameError::Unknown(check.name.clone()))
}

/// The agent's smoothing, owned by its probe schedule: consecutive runs before a verdict is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub failures_before_unhealthy: u32,
    pub passes_before_healthy: u32,
}

impl Thresholds {
    /// The agent's defaults (`ProbeSchedule::default`): three failures, two passes.
    pub const AGENT_DEFAULT: Thresholds = Thresholds { failures_before_unhealthy: 3, passes_before_healthy: 2 };

    /// Thresholds of at least one run each.
    pub fn new(failures_before_unhealthy: u32, passes_before_healthy: u32) -> Self {
        Thresholds { failures_before_unhealthy: failures_before_unhealthy.max(1), passes_before_healthy: passes_before_healthy.max(1) }
    }
}

/// One raw probe run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Failed,
    Passed,
    /// The probe could not tell (tool missing, timed out, unreadable output).
    Unknown,
}

/// What the machine lets the agent publish, with when that state began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    NotYetRun,
    Unhealthy { since: Time },
    Healthy { since: Time },
    Unknown { since: Time },
}

impl Published {
    /// When the published state began; none before the first verdict.
    pub fn since(self) -> Option<Time> {
        match self {
            Published::NotYetRun => None,
            Published::Unhealthy { since } | Published::Healthy { since } | Published::Unknown { since } => Some(since),
        }
    }

    /// The condition status this state is published as; none before the first verdict.
    pub fn condition_status(self) -> Option<ConditionStatus> {
        match self {
            Published::NotYetRun => None,
            Published::Unhealthy { .. } => Some(ConditionStatus::True),
            Published::Healthy { .. } => Some(ConditionStatus::False),
            Published::Unknown { .. } => Some(ConditionStatus::Unknown),
        }
    }
}

/// Turns a stream of raw runs into a published state that does not flap: a run of failures must reach
/// `failures_before_unhealthy` before it publishes unhealthy, a run of passes `passes_before_healthy`
/// before healthy, and a run of unknowns the failure threshold before unknown (an unknown replaces
/// "not yet run" at once). An input that alternates never changes what is published while both
/// thresholds are above one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdMachine {
    thresholds: Thresholds,
    failure_streak: u32,
    pass_streak: u32,
    unknown_streak: u32,
    published: Published,
}

impl ThresholdMachine {
    pub fn new(thresholds: Thresholds) -> Self {
        ThresholdMachine {
            thresholds: Thresholds::new(thresholds.failures_before_unhealthy, thresholds.passes_before_healthy),
            failure_streak: 0,
            pass_streak: 0,
            unknown_streak: 0,
            published: Published::NotYetRun,
        }
    }

    /// Feeds one run made at `at`; returns true when the published state changed.
    pub fn record(&mut self, outcome: RunOutcome, at: Time) -> bool {
        let before = self.published;
        let (streak, publish) = match outcome {
            RunOutcome::Failed => {
                self.failure_streak = self.failure_streak.saturating_add(1);
                (self.failure_streak, Published::Unhealthy { since: at })
            }
            RunOutcome::Passed => {
                self.pass_streak = self.pass_streak.saturating_add(1);
                (self.pass_streak, Published::Healthy { since: at })
            }
            RunOutcome::Unknown => {
                self.unknown_streak = self.unknown_streak.saturating_add(1);
                (self.unknown_streak, Published::Unknown { since: at })
            }
        };
        if outcome != RunOutcome::Failed {
            self.failure_streak = 0;
        }
        if outcome != RunOutcome::Passed {
            self.pass_streak = 0;
        }
        if outcome != RunOutcome::Unknown {
            self.unknown_streak = 0;
        }
        let needed = match outcome {
            RunOutcome::Passed => self.thresholds.passes_before_healthy,
            RunOutcome::Failed | RunOutcome::Unknown => self.thresholds.failures_before_unhealthy,
        };
        let same_kind = std::mem::discriminant(&before) == std::mem::discriminant(&publish)
            || (outcome == RunOutcome::Unknown && before == Published::NotYetRun);
        if same_kind && before != Published::NotYetRun {
            return false;
        }
        if streak >= needed || same_kind {
            self.published = publish;
        }
        self.published != before
    }

    pub fn published(&self) -> Published {
        self.published
    }

    pub fn failure_streak(&self) -> u32 {
        self.failure_streak
    }

    pub fn pass_streak(&self) -> u32 {
        self.pass_streak
    }

    /// Whether more runs of the same outcome could still change what is published (a simulator may stop
    /// ticking a probe in a steady state).
    pub fn settled(&self) -> bool {
        let t = self.thresholds;
        self.failure_streak >= t.failures_before_unhealthy
            || self.pass_streak >= t.passes_before_healthy
            || self.unknown_streak >= t.failures_before_unhealthy
    }
}

/// What the engine sees of one check: the agent's published state, never raw run counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEvidence {
    /// The agent published a failure (its threshold met) at `since`.
    Failing { since: Time },
    /// The agent published a pass (its threshold met) at `since`.
    Passing { since: Time },
    /// The agent's probes could not tell.
    Unknown,
}

/// One check's evidence as read from the agent's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckEvidence {
    pub evidence: ProbeEvidence,
    /// The agent's last run: the condition's heartbeat (or its transition when it has none).
    pub last_run: Time,
    pub message: String,
    /// The fault class the condition's reason carries (the agent's catalog), if any.
    pub fault_class: Option<FaultClass>,
    /// The GPU the fault is on, when the agent knows it (a `resetGpu` step needs it).
    pub gpu: Option<crate::gpu::GpuDevice>,
}

/// Reads an agent-published condition: `True` is failing since the transition, `False` passing,
/// `Unknown` unknown; the heartbeat is the last run, so a stopped agent shows as stale evidence.
pub fn evidence_from_condition(c: &NodeCondition) -> CheckEvidence {
    let since = c.last_transition_time;
    let evidence = match c.status {
        ConditionStatus::True => ProbeEvidence::Failing { since },
        ConditionStatus::False => ProbeEvidence::Passing { since },
        ConditionStatus::Unknown => ProbeEvidence::Unknown,
    };
    CheckEvidence {
        evidence,
        last_run: c.last_heartbeat_time.map_or(since, |h| h.max(since)),
        message: c.message.clone(),
        fault_class: FaultClass::from_condition_reason(&c.reason),
        gpu: c.gpu.clone(),
    }
}

/// The condition a rule reads (a check's or a condition rule's), if the node has it.
fn rule_condition<'a>(node: &'a NodeObservation, rule: &crate::policy::Rule) -> Option<&'a NodeCondition> {
    let type_ = match (&rule.check, &rule.condition) {
        (Some(check), _) => check_condition_type(check).ok()?,
        (None, Some(condition)) => condition.type_.as_str(),
        (None, None) => return None,
    };
    node.condition(type_)
}

/// The fault class the condition a rule reads carries while it is bad (a check's or a condition rule's).
pub fn rule_fault_class(node: &NodeObservation, rule: &crate::policy::Rule) -> Option<FaultClass> {
    rule_condition(node, rule).and_then(|c| FaultClass::from_condition_reason(&c.reason))
}

/// The GPU the condition a rule reads names as faulty, if the agent knows it.
pub fn rule_fault_gpu(node: &NodeObservation, rule: &crate::policy::Rule) -> Option<crate::gpu::GpuDevice> {
    rule_condition(node, rule).and_then(|c| c.gpu.clone())
}

/// The evidence for a policy's check on `node`: None when the agent has published nothing for it (or
/// the check names nothing an agent publishes, which policy validation rejects).
pub fn check_evidence(node: &NodeObservation, check: &CheckMatch) -> Option<CheckEvidence> {
    let type_ = check_condition_type(check).ok()?;
    node.condition(type_).map(evidence_from_condition)
}

/// True while the controller wants fresh probe results despite a repair taint: the record is verifying a
/// finished step, or a person marked a Manual node resolved and the checks must confirm it. A resolve
/// request counts only when made at or after the Manual step began: an older one was about an earlier
/// escalation, and an abort never asks for a re-check.
pub fn verifying(active: Option<&ActiveRemediation>, request: Option<&OperatorRequest>) -> bool {
    let Some(active) = active else {
        return false;
    };
    let resolved = active.step == RemediationStep::Manual
        && request.is_some_and(|r| r.action == OperatorAction::Resolve && r.at >= active.step_started_at);
    matches!(active.stage, Stage::Verifying { .. }) || resolved
}

/// Which probes the node agent may run on a node with these taint keys: GPU probes pause while a repair
/// (`<prefix>repair-*`) or a drain (`<prefix>draining`) taint is on the node, since the GPUs are being
/// worked on or emptied, and run again when the controller wants a re-check ([`verifying`]). The other
/// families always run, so recovery of a `slow-network` node is seen.
pub fn probes_may_run(family: ProbeFamily, taint_keys: &[&str], taint_prefix: &str, verifying: bool) -> bool {
    match family {
        ProbeFamily::Gpu => {
            verifying
                || !taint_keys.iter().any(|k| {
                    k.strip_prefix(taint_prefix)
                        .is_some_and(|name| name.starts_with("repair-") || name == RemediationStep::Drain.taint_name())
                })
        }
        ProbeFamily::Network | ProbeFamily::Disk | ProbeFamily::Custom => true,
    }
}
