//! When a node counts as fenced, and the `node.kubernetes.io/out-of-service` taint that frees its
//! workloads once it is (issue 11 §3).
//!
//! The taint tells kube-controller-manager that the node is shut down: its pod GC force-deletes the
//! node's terminating pods and its attach-detach controller detaches their volumes at once, so a
//! StatefulSet pod and its ReadWriteOnce volume can start elsewhere. Done to a node that still runs,
//! that is two writers on one volume. So the taint follows **confirmed** fencing only — never a
//! NotReady node, a timed-out step or an executor's failure — and this module is the one place
//! that says what confirms it ([`confirmed`]). The engine records the taint on the node's record
//! ([`OutOfService`]) before it is put on the node, so another replica carries on from the record.

use crate::engine::{Action, EventKind};
use crate::observe::{NodeObservation, ReportedOutcome};
use crate::policy::{ConditionStatus, RemediationStep};
use crate::record::{ActiveRemediation, NodeRecord};
use crate::time::Time;
use serde::{Deserialize, Serialize};

/// The taint's key, value and effect, as Kubernetes' non-graceful node shutdown defines them.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
pub const OUT_OF_SERVICE_VALUE: &str = "nodeshutdown";

/// What proved that the node's previous incarnation, and every process of its pods, is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FencingSource {
    /// A `powerOff` or `powerCycle` step reported success: the power executor reports success only
    /// after the node's BMC read back power Off (and, for a cycle, On again).
    BmcPowerOff,
    /// The node showed a new boot ID during a step that restarts it (reboot, reimage, powerCycle)
    /// and was still not Ready when the step's time was up.
    NewBootId,
    /// The node's agent promised to fence itself (a watchdog armed, peers known) and
    /// `safeTimeToAssumeRebooted` has passed since its last contact and the step's start, the node
    /// not Ready ([`crate::selffence::self_fenced`]).
    SelfFenced,
}

/// Fencing confirmed by the step in flight, with what confirmed it, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub source: FencingSource,
    pub detail: String,
}

/// The rule: is the node fenced, as the step in flight (`attempt` on the record) shows at `now`?
/// Three proofs count: the BMC confirmed power Off, the agent's self-fencing time passed
/// ([`crate::selffence::self_fenced`]), or the node came back with a new boot ID.
/// Only a step that was executed can confirm anything (monitor-only runs nothing); a failed report,
/// a timeout or a node that merely stopped answering confirms nothing. A new boot ID counts only
/// once the step's deadline has passed: a kubelet that has just booted reports NotReady for a
/// moment, and a node that turns Ready within the step needs nothing freed.
/// `ready_majority`: more than half of the fleet's nodes are Ready (the self-fencing proof needs it,
/// see [`crate::selffence::self_fenced`]).
pub fn confirmed(active: &ActiveRemediation, attempt: u32, obs: &NodeObservation, now: Time, ready_majority: bool) -> Option<Confirmation> {
    if !active.executed {
        return None;
    }
    let report = obs.step_report.as_ref().filter(|r| r.attempt == attempt && r.outcome == ReportedOutcome::Succeeded);
    if let Some(r) = report
        && matches!(active.step, RemediationStep::PowerOff | RemediationStep::PowerCycle)
    {
        let detail = format!("the BMC confirmed power Off ({} attempt {attempt} reported at {}: {})", active.step, r.at, r.message);
        return Some(Confirmation { source: FencingSource::BmcPowerOff, detail });
    }
    if let Some(detail) = crate::selffence::self_fenced(active, obs, now, ready_majority) {
        return Some(Confirmation { source: FencingSource::SelfFenced, detail });
    }
    let (Some(before), Some(booted)) = (&active.boot_id_at_start, &obs.boot_id) else { return None };
    let over = active.deadline.is_some_and(|d| now >= d);
    (before != booted && over).then(|| Confirmation {
        source: FencingSource::NewBootId,
        detail: format!(
            "the node came back with a new boot ID during {} attempt {attempt} ({before} → {booted}) and was not Ready by the step's deadline",
            active.step
        ),
    })
}

/// The node is back: Ready, and either a new boot ID since `boot_before` or a Ready transition after
/// `since` (a Ready condition from before the fencing is stale, not a node that came back).
pub fn back(obs: &NodeObservation, since: Time, boot_before: Option<&str>) -> bool {
    let Some(ready) = obs.condition("Ready").filter(|c| c.status == ConditionStatus::True) else { return false };
    ready.last_transition_time > since || boot_before.is_some_and(|b| obs.boot_id.as_deref().is_some_and(|now| now != b))
}

/// The out-of-service taint nodemedic put on a node, kept on its record (`status.outOfService`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutOfService {
    /// The attempt whose step confirmed the fencing; it confirms once.
    pub attempt: u32,
    pub source: FencingSource,
    pub added_at: Time,
    pub reason: String,
    /// The node's boot ID when the fencing was confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_reason: Option<String>,
    /// The taint was seen gone after its removal: from then on nodemedic leaves the key alone (a
    /// person may put it on again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lifted: bool,
}

impl OutOfService {
    /// nodemedic wants the taint on the node.
    pub fn wanted(&self) -> bool {
        self.removed_at.is_none()
    }
}

/// Moves the record's out-of-service state on for what is observed now: adds it when the step in
/// flight confirms fencing and the node is not back yet, removes it when the node is back, marks it
/// lifted once the taint is gone (`ready_majority` as for [`confirmed`]). Returns the events to publish. Call it before the ladder moves
/// past the step (the confirmation is that step's report).
pub fn update(record: &mut NodeRecord, obs: &NodeObservation, now: Time, ready_majority: bool) -> Vec<(EventKind, String)> {
    let mut events = Vec::new();
    if let Some(oos) = record.out_of_service.as_mut() {
        if oos.wanted() && back(obs, oos.added_at, oos.boot_id.as_deref()) {
            let why = format!("node {} is back and Ready (fenced at {} by {})", obs.name, oos.added_at, source_words(oos.source));
            events.push((EventKind::OutOfServiceRemoved, format!("{OUT_OF_SERVICE_TAINT} removed: {why}")));
            oos.removed_at = Some(now);
            oos.removed_reason = Some(why);
        } else if !oos.wanted() && !oos.lifted && !obs.has_taint(OUT_OF_SERVICE_TAINT) {
            oos.lifted = true;
        }
    }
    let Some(active) = record.active.as_ref() else { return events };
    let already = record.out_of_service.as_ref().is_some_and(|o| o.attempt == record.attempt || o.wanted());
    if already {
        return events;
    }
    let Some(c) = confirmed(active, record.attempt, obs, now, ready_majority) else { return events };
    if back(obs, active.step_started_at, active.boot_id_at_start.as_deref()) {
        // Fenced, but already back and Ready: nothing of the old incarnation is left to free.
        return events;
    }
    let reason = format!("fencing confirmed: {}", c.detail);
    events.push((
        EventKind::OutOfServiceAdded,
        format!(
            "{reason}; tainted {OUT_OF_SERVICE_TAINT}={OUT_OF_SERVICE_VALUE}:NoExecute so the node's pods are force-deleted and their volumes detached"
        ),
    ));
    record.out_of_service = Some(OutOfService {
        attempt: record.attempt,
        source: c.source,
        added_at: now,
        reason,
        boot_id: obs.boot_id.clone(),
        removed_at: None,
        removed_reason: None,
        lifted: false,
    });
    events
}

/// The taint change the record asks for, if the node does not show it yet.
pub fn taint_action(record: Option<&NodeRecord>, obs: &NodeObservation) -> Option<Action> {
    let oos = record?.out_of_service.as_ref()?;
    let present = obs.has_taint(OUT_OF_SERVICE_TAINT);
    let node = obs.name.clone();
    if oos.wanted() && !present {
        return Some(Action::SetOutOfService { node, present: true, reason: oos.reason.clone() });
    }
    if !oos.wanted() && !oos.lifted && present {
        let reason = oos.removed_reason.clone().unwrap_or_else(|| "the node is back".into());
        return Some(Action::SetOutOfService { node, present: false, reason });
    }
    None
}

/// Nothing about the taint is pending: the record may be dropped.
pub fn settled(record: &NodeRecord) -> bool {
    record.out_of_service.as_ref().is_none_or(|o| o.lifted)
}

fn source_words(source: FencingSource) -> &'static str {
    match source {
        FencingSource::BmcPowerOff => "a BMC power-off",
        FencingSource::NewBootId => "a new boot ID",
        FencingSource::SelfFenced => "the agent's self-fencing",
    }
}

/// What the controller's patch does to the observed node: used by [`crate::apply`].
pub fn apply_taint(obs: &mut NodeObservation, present: bool) {
    obs.taints.retain(|t| t.key != OUT_OF_SERVICE_TAINT);
    if present {
        obs.taints.push(crate::observe::Taint {
            key: OUT_OF_SERVICE_TAINT.into(),
            value: Some(OUT_OF_SERVICE_VALUE.into()),
            effect: crate::observe::TaintEffect::NoExecute,
        });
    }
}
