//! The escalation ladder: starting, ending and advancing steps, blocked drains, and releasing a node.

use super::*;

/// Starts ladder step `index`. `holds_slot`: the node already counts as a disruptive step in flight.
pub(super) fn start_step(ctx: &Ctx, w: &mut Work, index: usize, holds_slot: bool, inflight: &mut InFlight, out: &mut Out) {
    let now = ctx.now;
    let node = w.obs.name.clone();
    let ls = &ctx.ladder[index];
    let class = ctx.policy.node_class(&w.obs.labels, has_gpus(&ctx.vendors, w.obs));
    let timeout = ls.timeout_for(class);
    let checks: Vec<(String, String, String)> = ctx
        .policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), w.evals[i].reason.as_str().to_string(), describe(ctx, w, i)))
        .collect();
    let Some(record) = w.record.as_mut() else { return };
    record.diagnostics.extend(checks.iter().map(|(rule, reason, detail)| Diagnostic {
        rule: rule.clone(),
        reason: reason.clone(),
        detail: detail.clone(),
        at: now,
    }));
    keep_recent_diagnostics(&mut record.diagnostics);
    let Some(a) = record.active.as_mut() else { return };
    record.attempt += 1;
    a.step_index = index;
    a.step = ls.step;
    a.step_started_at = now;
    a.stage = Stage::Executing;
    a.executed = !ctx.policy.monitor_only;
    a.boot_id_at_start = if matches!(ls.step, RemediationStep::Reboot | RemediationStep::Reimage | RemediationStep::PowerCycle) {
        w.obs.boot_id.clone()
    } else {
        None
    };
    a.deadline = (ls.step != RemediationStep::Manual).then_some(now + timeout);
    // Outages are counted per step: the new one's deadline owes nothing to earlier ones.
    (a.unobserved, a.unobserved_until) = (Duration::ZERO, None);
    let attempt = record.attempt;
    if ls.step.is_disruptive() && !holds_slot {
        inflight.total += 1;
        *inflight.by_pool.entry(ctx.pool(w.obs).to_string()).or_default() += 1;
    } else if !ls.step.is_disruptive() && holds_slot {
        inflight.total = inflight.total.saturating_sub(1);
        if let Some(n) = inflight.by_pool.get_mut(ctx.pool(w.obs)) {
            *n = n.saturating_sub(1);
        }
    }
    let taint = &ctx.step_taints[index];
    match ls.step {
        RemediationStep::Manual => {
            record.phase = Phase::Manual;
            a.notified_at = Some(now);
            let reason = a.reason.clone();
            let trigger = a.trigger.clone();
            let summary = format!("node {node} needs a person: automated repair did not fix it ({reason})");
            out.event(&node, EventKind::EscalatedToManual, format!("{summary}; tainted {taint}"));
            let notice = Notice { summary, trigger, reason, labels: w.obs.labels.clone(), history: record.history.clone(), checks };
            out.actions.push(Action::Notify { node, notice });
        }
        step => {
            let deadline = a.deadline;
            out.event(
                &node,
                EventKind::StepStarted,
                format!("step {step} (attempt {attempt}) started, tainted {taint}, timeout {timeout} for {class} nodes"),
            );
            if step != RemediationStep::Quarantine {
                let template = ls.template.clone();
                out.actions.push(Action::Execute { node, step, attempt, deadline, reason: a.reason.clone(), template });
            }
            if let Some(d) = deadline {
                out.wake_at(d);
            }
        }
    }
}

/// Ends the current step with `outcome`; `recovered` closes the remediation.
pub(super) fn end_step(ctx: &Ctx, w: &mut Work, outcome: StepOutcome, reason: String, out: &mut Out) {
    let now = ctx.now;
    let node = w.obs.name.clone();
    let Some(record) = w.record.as_mut() else { return };
    let Some(a) = record.active.as_mut() else { return };
    let h = StepHistory {
        attempt: record.attempt,
        step: a.step,
        started_at: a.step_started_at,
        ended_at: now,
        outcome,
        reason: reason.clone(),
        executed: a.executed,
    };
    let step = a.step;
    let kind = match outcome {
        StepOutcome::Recovered => EventKind::StepSucceeded,
        StepOutcome::TimedOut => EventKind::StepTimedOut,
        StepOutcome::Failed => EventKind::StepFailed,
        StepOutcome::Completed | StepOutcome::Ended => EventKind::StepSucceeded,
    };
    if matches!(outcome, StepOutcome::Recovered | StepOutcome::Ended) {
        close_remediation(record);
    } else {
        a.stage = Stage::AwaitingNext { ended_at: now };
    }
    record.push_history(h);
    out.event(&node, kind, format!("step {step} {}: {reason}", outcome.as_str()));
    if outcome == StepOutcome::Recovered {
        out.event(&node, EventKind::Recovered, format!("node healthy again after {step}; repair taints removed"));
    }
}

/// The node is done with the ladder: healthy, nothing in flight, no remembered failures.
pub(super) fn close_remediation(record: &mut NodeRecord) {
    record.active = None;
    record.phase = Phase::Healthy;
    record.failing_since.clear();
}

/// Closes a remediation whose node passed its checks before the next step began. The last step keeps
/// its own outcome in the history; its reason says what happened after it.
pub(super) fn recovered_while_waiting(w: &mut Work, next: RemediationStep, out: &mut Out) {
    let node = w.obs.name.clone();
    let Some(record) = w.record.as_mut() else { return };
    let Some(last_step) = record.active.as_ref().map(|a| a.step) else { return };
    close_remediation(record);
    if let Some(h) = record.history.last_mut() {
        h.reason = format!("{}; the node then recovered before {next} started", h.reason);
    }
    out.event(
        &node,
        EventKind::Recovered,
        format!("node healthy again while waiting for {next} (after {last_step}); repair taints removed, {next} not needed"),
    );
}

/// What one look at a node's stage leads to: stop (with [`advance`]'s answer), or look again at once
/// (the stage changed).
enum Then {
    Stop(bool),
    Again,
}

/// Moves a node along the ladder as far as it can go now. With `defer_new_slot`, stops before a step
/// that needs a new disruptive slot and returns true: the caller hands slots out afterwards.
pub(super) fn advance(ctx: &Ctx, w: &mut Work, gates: &GateState, inflight: &mut InFlight, out: &mut Out, defer_new_slot: bool) -> bool {
    // Bounded: each pass either changes the stage or stops.
    for _ in 0..8 {
        let Some(a) = w.active().cloned() else { return false };
        if aborted(ctx, w, &a, inflight, out) {
            return false;
        }
        let then = match a.stage {
            Stage::Executing => match a.step {
                RemediationStep::Manual => manual(ctx, w, &a, out),
                RemediationStep::Quarantine => quarantined(ctx, w, &a, out),
                step => executing(ctx, w, &a, step, inflight, out),
            },
            Stage::Verifying { completed_at, verify_from, verify_deadline } => {
                verifying(ctx, w, &a, (completed_at, verify_from, verify_deadline), out)
            }
            Stage::AwaitingNext { ended_at } => awaiting_next(ctx, w, &a, ended_at, gates, inflight, out, defer_new_slot),
        };
        if let Then::Stop(answer) = then {
            return answer;
        }
    }
    false
}

/// A person stopped the ladder: the step in flight ends, nothing else runs, the node stays cordoned
/// under the Manual taint until someone resolves it. True when that happened now.
fn aborted(ctx: &Ctx, w: &mut Work, a: &ActiveRemediation, inflight: &mut InFlight, out: &mut Out) -> bool {
    let abort = w.obs.operator_request.as_ref().filter(|r| r.action == OperatorAction::Abort && r.at >= a.started_at);
    let Some(req) = abort else { return false };
    if a.step == RemediationStep::Manual {
        return false;
    }
    let msg = format!("ladder aborted by {} at {}; the node stays cordoned for a person", req.by, req.at);
    if matches!(a.stage, Stage::AwaitingNext { .. }) {
        if let Some(h) = w.record.as_mut().and_then(|r| r.history.last_mut()) {
            h.reason = format!("{}; {msg}", h.reason);
        }
    } else {
        end_step(ctx, w, StepOutcome::Failed, msg, out);
    }
    start_step(ctx, w, ctx.ladder.len() - 1, a.step.is_disruptive(), inflight, out);
    true
}

/// The Manual step ends only when a person marks the node resolved and the checks pass on fresh data.
fn manual(ctx: &Ctx, w: &mut Work, a: &ActiveRemediation, out: &mut Out) -> Then {
    let req = w.obs.operator_request.as_ref().filter(|r| r.action == OperatorAction::Resolve && r.at >= a.step_started_at);
    let Some(req) = req else { return Then::Stop(false) };
    if w.healthy_since(ctx.policy, req.at) {
        let msg = format!("resolved by {} at {}; the checks pass", req.by, req.at);
        out.event(w.name(), EventKind::ResolvedByOperator, msg.clone());
        end_step(ctx, w, StepOutcome::Recovered, msg, out);
    } else {
        out.hold(
            w.name(),
            Gate::AwaitingOperator,
            format!("{} marked the node resolved at {}; waiting for the checks to pass on fresh data", req.by, req.at),
        );
    }
    Then::Stop(false)
}

/// Quarantine ends when the node heals by itself, or when its window is over.
fn quarantined(ctx: &Ctx, w: &mut Work, a: &ActiveRemediation, out: &mut Out) -> Then {
    if w.healthy_since(ctx.policy, a.started_at) {
        end_step(ctx, w, StepOutcome::Recovered, "recovered by itself while quarantined".into(), out);
        return Then::Stop(false);
    }
    match a.deadline {
        Some(d) if ctx.now < d => {
            out.wake_at(d);
            Then::Stop(false)
        }
        _ => {
            end_step(ctx, w, StepOutcome::Completed, "quarantine window over, node still unhealthy".into(), out);
            Then::Again
        }
    }
}

/// A step an executor carries out: it ends on its report (a reboot also on a new boot ID), on its
/// deadline, or holds while a drain is blocked; a repair then goes on to verification.
fn executing(ctx: &Ctx, w: &mut Work, a: &ActiveRemediation, step: RemediationStep, inflight: &mut InFlight, out: &mut Out) -> Then {
    let now = ctx.now;
    let ls = &ctx.ladder[a.step_index.min(ctx.ladder.len() - 1)];
    let report = w.obs.step_report.as_ref().filter(|r| w.record.as_ref().is_some_and(|rec| rec.attempt == r.attempt));
    if step == RemediationStep::Drain
        && a.executed
        && ls.completion == Completion::Reported
        && blocked_drain(ctx, w, a, inflight, out) != BlockedDrain::NotBlocked
    {
        return Then::Stop(false);
    }
    let completed_at = match (report.map(|r| (r.outcome, r.at, r.message.clone())), ls.completion) {
        (Some((ReportedOutcome::Failed, _, msg)), _) => {
            end_step(ctx, w, StepOutcome::Failed, format!("executor reported failure: {msg}"), out);
            return Then::Again;
        }
        (Some((ReportedOutcome::Succeeded, at, _)), Completion::Reported) if rebooted(a, w.obs) => at,
        (_, Completion::FixedWait) if a.deadline.is_some_and(|d| now >= d) => a.deadline.unwrap_or(now),
        (_, Completion::Reported) if a.deadline.is_some_and(|d| now >= d) => {
            let reason = if report.is_some_and(|r| r.outcome == ReportedOutcome::Succeeded) {
                format!(
                    "the executor reported success, but within {} the node did not come back Ready with a new boot ID (still {})",
                    now.since(a.step_started_at),
                    w.obs.boot_id.as_deref().unwrap_or("unknown")
                )
            } else if a.executed {
                format!("no completion report within {}", now.since(a.step_started_at))
            } else {
                "monitor-only: not executed".into()
            };
            end_step(ctx, w, StepOutcome::TimedOut, reason, out);
            return Then::Again;
        }
        _ => {
            if let Some(d) = a.deadline {
                out.wake_at(d);
            }
            return Then::Stop(false);
        }
    };
    if step.is_repair() {
        let verify_from = completed_at + ls.settle;
        let verify_deadline = verify_from + ls.verify_timeout;
        if let Some(act) = w.record.as_mut().and_then(|r| r.active.as_mut()) {
            act.stage = Stage::Verifying { completed_at, verify_from, verify_deadline };
        }
    } else {
        end_step(ctx, w, StepOutcome::Completed, finished(w, step), out);
    }
    Then::Again
}

/// After a repair (and its settle time): recovered when the checks pass on evidence newer than the
/// repair, failed when one fails again or nothing confirms recovery before the deadline.
fn verifying(ctx: &Ctx, w: &mut Work, a: &ActiveRemediation, times: (Time, Time, Time), out: &mut Out) -> Then {
    let (completed_at, verify_from, verify_deadline) = times;
    let (now, p) = (ctx.now, ctx.policy);
    let ls = &ctx.ladder[a.step_index.min(ctx.ladder.len() - 1)];
    if now < verify_from {
        out.wake_at(verify_from);
        return Then::Stop(false);
    }
    if w.healthy_since(p, completed_at) {
        end_step(ctx, w, StepOutcome::Recovered, "the checks pass again".into(), out);
        return Then::Stop(false);
    }
    if let Some(rule) = w.failing_since(p, completed_at) {
        let why = describe(ctx, w, rule);
        end_step(ctx, w, StepOutcome::Failed, format!("re-check failed: {why}"), out);
        return Then::Again;
    }
    if now >= verify_deadline {
        end_step(
            ctx,
            w,
            StepOutcome::Failed,
            format!("the checks did not confirm recovery within {} after settling", ls.verify_timeout),
            out,
        );
        return Then::Again;
    }
    out.wake_at(verify_deadline);
    Then::Stop(false)
}

/// Between steps: the next rung (the fault class may skip repairs below its own), unless the node
/// healed while it waited, the slot is deferred, or a gate holds it.
#[allow(clippy::too_many_arguments)]
fn awaiting_next(
    ctx: &Ctx,
    w: &mut Work,
    a: &ActiveRemediation,
    ended_at: Time,
    gates: &GateState,
    inflight: &mut InFlight,
    out: &mut Out,
    defer_new_slot: bool,
) -> Then {
    let p = ctx.policy;
    let next = class::next_index(&ctx.ladder, a.step_index + 1, p.fault_classes.rung(a.fault_class), a.gpu.is_some());
    let step = ctx.ladder[next].step;
    // A quarantined node held back from its first disruptive step (a gate, a busy slot)
    // may heal meanwhile (a power blip): checks that pass on evidence newer than the
    // quarantine end the remediation instead of draining and rebooting a healthy node.
    // Not after a disruptive step: a repair whose re-check failed has shown the fault
    // is real, and one passing probe must not return the node to service.
    if !a.step.is_disruptive() && step != RemediationStep::Manual && w.healthy_since(p, ended_at) {
        recovered_while_waiting(w, step, out);
        return Then::Stop(false);
    }
    if defer_new_slot && step.is_disruptive() && !a.step.is_disruptive() {
        return Then::Stop(true);
    }
    if step.is_disruptive()
        && let Err((gate, msg)) = disruptive_gate(ctx, w.obs, a.step.is_disruptive(), gates, inflight, out)
    {
        out.hold(w.name(), gate, format!("next step {step} waits: {msg}"));
        return Then::Stop(false);
    }
    // Loop on: a Manual step looks at once for a person's resolve request, as it will on
    // every later decision.
    start_step(ctx, w, next, a.step.is_disruptive(), inflight, out);
    Then::Again
}

/// What [`blocked_drain`] made of a drain step.
#[derive(PartialEq)]
pub(super) enum BlockedDrain {
    /// Not blocked (yet): the usual report and deadline handling applies.
    NotBlocked,
    /// Held or forced past its deadline: the step stays, nothing else happens now.
    Waiting,
    /// Ended and handed to a person.
    Escalated,
}

/// A drain that failed or is still unfinished at its deadline is blocked (PodDisruptionBudgets,
/// pods left to complete). It never simply turns into the next disruptive step: the policy's
/// `drain.whenBlocked` holds it (people told once), escalates it to a person, or (force) gives the
/// executor a second timeout to delete the pods past their budgets and report.
pub(super) fn blocked_drain(ctx: &Ctx, w: &mut Work, a: &ActiveRemediation, inflight: &mut InFlight, out: &mut Out) -> BlockedDrain {
    let now = ctx.now;
    let report = w.obs.step_report.as_ref().filter(|r| w.record.as_ref().is_some_and(|rec| rec.attempt == r.attempt));
    let failed = report.is_some_and(|r| r.outcome == ReportedOutcome::Failed);
    let past_deadline = report.is_none() && a.deadline.is_some_and(|d| now >= d);
    if !failed && !past_deadline {
        return BlockedDrain::NotBlocked;
    }
    let attempt = w.record.as_ref().map_or(0, |r| r.attempt);
    let progress = w.obs.drain_progress.as_ref().filter(|p| p.attempt == attempt);
    let mut why = progress.map(|p| p.blocking(10)).unwrap_or_default().join("; ");
    if let Some(r) = report.filter(|_| failed) {
        why = if why.is_empty() { r.message.clone() } else { format!("{why} ({})", r.message) };
    }
    if why.is_empty() {
        why = "no completion report".into();
    }
    match ctx.policy.drain.when_blocked {
        WhenDrainBlocked::Hold => {
            if a.drain_held_at.is_none() {
                if let Some(act) = w.record.as_mut().and_then(|r| r.active.as_mut()) {
                    act.drain_held_at = Some(now);
                }
                let msg = format!(
                    "drain of node {} blocked after {}: {why}; holding the node cordoned (drain.whenBlocked: hold), evictions are retried and no later step runs until the pods have left",
                    w.obs.name,
                    now.since(a.step_started_at)
                );
                out.event(w.name(), EventKind::DrainHeld, msg);
            }
            BlockedDrain::Waiting
        }
        WhenDrainBlocked::Escalate if ctx.ladder.last().is_some_and(|l| l.step == RemediationStep::Manual) => {
            let msg = format!("drain blocked: {why}; escalated to a person (drain.whenBlocked: escalate)");
            end_step(ctx, w, StepOutcome::Failed, msg, out);
            start_step(ctx, w, ctx.ladder.len() - 1, true, inflight, out);
            BlockedDrain::Escalated
        }
        WhenDrainBlocked::Escalate => BlockedDrain::NotBlocked,
        WhenDrainBlocked::Force => {
            // The executor deletes what is left at the deadline and then reports; a second timeout
            // bounds the wait for that report.
            let ls = &ctx.ladder[a.step_index.min(ctx.ladder.len() - 1)];
            let class = ctx.policy.node_class(&w.obs.labels, has_gpus(&ctx.vendors, w.obs));
            match a.deadline.map(|d| d + ls.timeout_for(class)) {
                Some(second) if past_deadline && now < second => {
                    out.wake_at(second);
                    BlockedDrain::Waiting
                }
                _ => BlockedDrain::NotBlocked,
            }
        }
    }
}

/// The history's reason for a finished preparatory step; a forced drain says it was an override.
pub(super) fn finished(w: &Work, step: RemediationStep) -> String {
    let attempt = w.record.as_ref().map_or(0, |r| r.attempt);
    let forced = w.obs.drain_progress.as_ref().is_some_and(|p| p.attempt == attempt && p.forced);
    if step == RemediationStep::Drain && forced {
        "drain finished; override: pods were deleted past their PodDisruptionBudgets (drain.whenBlocked: force)".into()
    } else {
        format!("{step} finished")
    }
}

/// The node left the policy (exclude label, selector change): stop managing it and lift our taints.
pub(super) fn release(ctx: &Ctx, w: &mut Work, out: &mut Out) {
    end_step(ctx, w, StepOutcome::Ended, "node no longer selected by the policy (exclude label or selector change)".into(), out);
    out.event(w.name(), EventKind::NodeReleased, "nodemedic stopped managing this node; its repair taints are removed".into());
}

pub(super) fn remember_gpu_failures(ctx: &Ctx, w: &mut Work) {
    for (i, rule) in ctx.policy.rules.iter().enumerate() {
        if rule.gpu_count.is_none() {
            continue;
        }
        let bad = w.evals[i].bad_now();
        let known = w.record.as_ref().is_some_and(|r| r.failing_since.contains_key(&rule.name));
        if bad && !known && w.active().is_none() {
            let name = w.obs.name.clone();
            w.record.get_or_insert_with(|| NodeRecord::new(&name)).failing_since.insert(rule.name.clone(), ctx.now);
        } else if !bad
            && known
            && let Some(r) = w.record.as_mut()
        {
            r.failing_since.remove(&rule.name);
        }
    }
}
