//! The gates a disruptive step must pass: the circuit breaker, concurrency and min-healthy limits, and
//! which unhealthy node may start next.

use super::*;

/// What the gates need to know about the whole fleet in this decision.
pub(super) struct GateState<'a> {
    pub(super) breaker_open: bool,
    pub(super) selected: usize,
    pub(super) pool_sizes: &'a HashMap<&'a str, usize>,
}

pub(super) fn update_breaker(ctx: &Ctx, work: &[Work], selected: usize, rec: &mut PolicyRecord, out: &mut Out) -> bool {
    let now = ctx.now;
    let Some(b) = &ctx.policy.gates.circuit_breaker else {
        if rec.breaker_tripped_at.take().is_some() {
            rec.breaker_extended_at = None;
            rec.breaker_reason = None;
            out.events.push(Event {
                node: None,
                kind: EventKind::BreakerClosed,
                message: "circuit breaker removed from the policy".into(),
            });
        }
        return false;
    };
    let window_start = now - b.window;
    let recent =
        work.iter().filter(|w| w.selected).filter(|w| w.turned_unhealthy_at(ctx.policy).is_some_and(|t| t >= window_start)).count();
    let exceeded = b.max_unhealthy.exceeded_by(recent, selected);
    let reason = || {
        format!(
            "{recent} of {selected} selected nodes turned unhealthy within {} (limit {}): halting new remediations for at least {}{}",
            b.window,
            b.max_unhealthy,
            b.cooldown,
            if b.manual_reset { " and until a person resets the breaker" } else { "" }
        )
    };
    if let Some(tripped) = rec.breaker_tripped_at {
        let cooling_from = rec.breaker_extended_at.map_or(tripped, |e| e.max(tripped));
        let cooled = now >= cooling_from + b.cooldown;
        let reset = !b.manual_reset || rec.breaker_reset_requested_at.is_some_and(|r| r >= tripped);
        if !(cooled && reset) {
            if !cooled {
                out.wake_at(cooling_from + b.cooldown);
            }
            return true;
        }
        if exceeded && !b.manual_reset {
            // The mass failure is still there: stay open for another cooldown rather than close and
            // trip again in the same breath (one trip, one notification). Deciding again at the same
            // instant changes nothing (a zero cooldown would otherwise extend on every pass).
            if now == cooling_from {
                return true;
            }
            rec.breaker_extended_at = Some(now);
            rec.breaker_reason = Some(reason());
            out.wake_at(now + b.cooldown);
            return true;
        }
        rec.breaker_tripped_at = None;
        rec.breaker_extended_at = None;
        rec.breaker_reason = None;
        out.events.push(Event {
            node: None,
            kind: EventKind::BreakerClosed,
            message: if b.manual_reset {
                "circuit breaker closed: cooldown passed and a person reset it".into()
            } else {
                "circuit breaker closed: cooldown passed".into()
            },
        });
    }
    if exceeded {
        let reason = reason();
        rec.breaker_tripped_at = Some(now);
        rec.breaker_extended_at = None;
        rec.breaker_reason = Some(reason.clone());
        out.events.push(Event { node: None, kind: EventKind::BreakerTripped, message: reason });
        out.wake_at(now + b.cooldown);
        return true;
    }
    false
}

pub(super) fn describe(ctx: &Ctx, w: &Work, rule: usize) -> String {
    let r = &ctx.policy.rules[rule];
    let e = &w.evals[rule];
    let mut s = format!("rule `{}` {}", r.name, e.reason.as_str());
    if let Some(c) = &r.condition {
        if let Some(cond) = w.obs.condition(&c.type_) {
            s += &format!(": {}={} ({}) since {}", cond.type_, cond.status.as_str(), cond.reason, cond.last_transition_time);
            if !cond.message.is_empty() {
                s += &format!(", \"{}\"", cond.message);
            }
        }
    } else if let Some(c) = &r.check {
        if let Some(chk) = crate::probe::check_evidence(w.obs, c) {
            // The agent's conditions carry no run counts: its own thresholds were met.
            s += &match chk.evidence {
                ProbeEvidence::Failing { since } => format!(": check `{}` failing since {since} (the agent's threshold met)", c.name),
                ProbeEvidence::Passing { .. } => format!(": check `{}` passing", c.name),
                ProbeEvidence::Unknown => format!(": check `{}` unknown (the agent's probes cannot tell)", c.name),
            };
            if !chk.message.is_empty() {
                s += &format!(", \"{}\"", chk.message);
            }
        }
    } else if r.gpu_count.is_some() {
        let detail: Vec<String> = ctx
            .vendors
            .iter()
            .filter_map(|v| {
                let expected = w.obs.labels.get(&v.count_label)?;
                let alloc = w.obs.allocatable.get(&v.resource).copied().unwrap_or(0);
                Some(format!("{}={} vs allocatable {}={}", v.count_label, expected, v.resource, alloc))
            })
            .collect();
        if !detail.is_empty() {
            s += &format!(": {}", detail.join(", "));
        }
    }
    if !r.duration.0.eq(&0) {
        s += &format!(", held {}", r.duration);
    }
    s
}

#[allow(clippy::too_many_arguments)]
pub(super) fn try_start(
    ctx: &Ctx,
    w: &mut Work,
    rule: usize,
    since: Time,
    gates: &GateState,
    healthy: usize,
    unhealthy: usize,
    inflight: &mut InFlight,
    out: &mut Out,
) {
    let p = ctx.policy;
    let node = w.obs.name.clone();
    let why = describe(ctx, w, rule);
    if !p.pause_requests.is_empty() {
        out.hold(&node, Gate::Paused, format!("{why}; remediation paused by: {}", p.pause_requests.join(", ")));
        return;
    }
    if gates.breaker_open {
        out.hold(&node, Gate::CircuitBreaker, format!("{why}; circuit breaker is open"));
        return;
    }
    if let Some(min) = p.gates.min_healthy {
        let need = min.scaled_up(gates.selected);
        if healthy < need {
            out.hold(
                &node,
                Gate::MinHealthy,
                format!("{why}; only {healthy} of {} nodes healthy, minHealthy {min} needs {need}", gates.selected),
            );
            return;
        }
    }
    if let Some(max) = p.gates.max_unhealthy {
        let allowed = max.scaled_down(gates.selected);
        if unhealthy > allowed {
            out.hold(
                &node,
                Gate::MaxUnhealthy,
                format!("{why}; {unhealthy} of {} nodes unhealthy, maxUnhealthy {max} allows {allowed}", gates.selected),
            );
            return;
        }
    }
    let fault_class = crate::probe::rule_fault_class(w.obs, &p.rules[rule]);
    let rung = p.fault_classes.rung(fault_class);
    if rung == ClassRung::Events {
        let class = fault_class.map_or("none", FaultClass::as_str);
        out.hold(&node, Gate::FaultClass, format!("{why}; fault class {class}: events only, no remediation (policy faultClasses)"));
        return;
    }
    let record = w.record.get_or_insert_with(|| NodeRecord::new(&node));
    let lemon = p.gates.retry_budget.as_ref().and_then(|b| {
        let recent = record.remediation_starts.iter().filter(|t| ctx.now.since(**t) < b.window).count();
        (recent >= b.max_remediations as usize).then(|| {
            format!("remediated {recent} times within {} (budget {}): a lemon node goes straight to manual", b.window, b.max_remediations)
        })
    });
    let gpu = crate::probe::rule_fault_gpu(w.obs, &p.rules[rule]);
    let first = if lemon.is_some() { ctx.ladder.len() - 1 } else { class::next_index(&ctx.ladder, 0, rung, gpu.is_some()) };
    let step = ctx.ladder[first].step;
    if step.is_disruptive()
        && let Err((gate, msg)) = disruptive_gate(ctx, w.obs, false, gates, inflight, out)
    {
        out.hold(&node, gate, format!("{why}; {msg}"));
        return;
    }
    let record = w.record.get_or_insert_with(|| NodeRecord::new(&node));
    record.remediation_starts.push(ctx.now);
    record.phase = Phase::Remediating;
    record.active = Some(ActiveRemediation {
        trigger: p.rules[rule].name.clone(),
        reason: why.clone(),
        started_at: ctx.now,
        unhealthy_since: since,
        step_index: first,
        step,
        step_started_at: ctx.now,
        deadline: None,
        stage: Stage::Executing,
        executed: false,
        boot_id_at_start: None,
        notified_at: None,
        unobserved: Duration::ZERO,
        unobserved_until: None,
        drain_held_at: None,
        fault_class,
        gpu,
    });
    let skipped = match fault_class {
        Some(c) if lemon.is_none() => format!("; fault class {c}: repairs start at rung {}", rung.as_str()),
        _ => String::new(),
    };
    out.event(&node, EventKind::RemediationStarted, format!("node unhealthy: {why}{skipped}"));
    if let Some(l) = lemon {
        out.event(&node, EventKind::LemonNode, l);
    }
    start_step(ctx, w, first, false, inflight, out);
}

/// Checks the gates for starting a disruptive step. `holds_slot`: the node already counts as in flight.
pub(super) fn disruptive_gate(
    ctx: &Ctx,
    obs: &NodeObservation,
    holds_slot: bool,
    gates: &GateState,
    inflight: &InFlight,
    out: &mut Out,
) -> Result<(), (Gate, String)> {
    let g = &ctx.policy.gates;
    if gates.breaker_open {
        return Err((Gate::CircuitBreaker, "circuit breaker is open".into()));
    }
    if !ctx.maintenance_open() {
        let next = ctx.next_maintenance_opening();
        if let Some(t) = next {
            out.wake_at(t);
        }
        return Err((
            Gate::MaintenanceWindow,
            format!("outside maintenance windows (next opens {})", next.map_or("never".into(), |t| t.to_string())),
        ));
    }
    if holds_slot {
        return Ok(());
    }
    if let Some(max) = g.max_concurrent {
        let limit = max.scaled_down(gates.selected).max(1);
        if inflight.total >= limit {
            return Err((
                Gate::MaxConcurrent,
                format!("{} disruptive remediations in flight, maxConcurrent {max} allows {limit}", inflight.total),
            ));
        }
    }
    if let Some(max) = g.max_concurrent_per_pool {
        let pool = ctx.pool(obs);
        let size = gates.pool_sizes.get(pool).copied().unwrap_or(0);
        let limit = max.scaled_down(size).max(1);
        let current = inflight.by_pool.get(pool).copied().unwrap_or(0);
        if current >= limit {
            return Err((
                Gate::MaxConcurrentPerPool,
                format!("{current} disruptive remediations in flight in pool `{pool}`, maxConcurrentPerPool {max} allows {limit}"),
            ));
        }
    }
    Ok(())
}
