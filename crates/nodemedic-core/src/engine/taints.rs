//! The taints a decision puts on or takes off, and applying a decision to the observed fleet.

use super::*;

pub(super) fn reconcile_taints(ctx: &Ctx, w: &Work, breaker_open: bool, out: &mut Out) {
    let mut desired: Vec<&str> = Vec::new();
    if let Some(a) = w.active() {
        desired.push(&ctx.step_taints[a.step_index.min(ctx.step_taints.len() - 1)]);
    }
    let mut soft_changes = Vec::new();
    if w.selected {
        for (i, key) in ctx.soft_keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let present = w.obs.has_taint(key);
            let want = match (w.evals[i].verdict, w.evals[i].reason) {
                (Verdict::Firing { .. }, _) => present || !breaker_open,
                (_, Reason::CheckAbsent | Reason::ConditionAbsent | Reason::NotApplicable) => false,
                (Verdict::Ok, _) => false,
                // Failing but not yet often enough, recovering but not yet often enough, or unknown: keep as is.
                _ => present,
            };
            if want {
                desired.push(key);
            }
            if want != present {
                soft_changes.push((i, key.as_str(), want));
            }
        }
    }
    let add: Vec<String> = desired.iter().filter(|k| !w.obs.has_taint(k)).map(|k| k.to_string()).collect();
    let mut remove: Vec<String> = w
        .obs
        .taints
        .iter()
        .filter(|t| ctx.manages(&t.key) && !desired.contains(&t.key.as_str()))
        .filter(|t| w.selected || !ctx.soft_keys.iter().flatten().any(|k| *k == t.key))
        .map(|t| t.key.clone())
        .collect();
    remove.sort();
    remove.dedup();
    let mut why: Vec<String> = Vec::new();
    let step_taint = w.active().map(|a| (a, ctx.step_taints[a.step_index.min(ctx.step_taints.len() - 1)].as_str()));
    if let Some((a, key)) = step_taint
        && add.iter().any(|k| k == key)
    {
        why.push(format!("{key} shows remediation step {} (attempt {}): {}", a.step, w.record.as_ref().map_or(0, |r| r.attempt), a.reason));
    }
    let lifted: Vec<&str> = remove.iter().map(String::as_str).filter(|k| !ctx.soft_keys.iter().flatten().any(|s| s == k)).collect();
    if !lifted.is_empty() {
        let because = match (w.selected, step_taint) {
            (false, _) => "the node is no longer selected by the policy".to_string(),
            (true, Some((a, _))) => format!("the node moved on to step {}", a.step),
            (true, None) => "the remediation ended".to_string(),
        };
        why.push(format!("{} lifted: {because}", lifted.join(", ")));
    }
    for (i, key, want) in soft_changes {
        let rule = &ctx.policy.rules[i];
        let text = if want {
            format!("{}; tainted {key} (never escalates)", describe(ctx, w, i))
        } else {
            format!("rule `{}` {}; removed {key}", rule.name, w.evals[i].reason.as_str())
        };
        why.push(text.clone());
        out.event(w.name(), if want { EventKind::SoftTaintAdded } else { EventKind::SoftTaintRemoved }, text);
    }
    if !add.is_empty() || !remove.is_empty() {
        if why.is_empty() {
            why.push("taints brought in line with the node's record".into());
        }
        out.actions.push(Action::SetTaints { node: w.obs.name.clone(), add, remove, reason: why.join("; ") });
    }
}

/// Applies a decision to records and, unless monitor-only, to the observed nodes' taints: what the
/// controller's writes would produce. Used by the simulator and by tests.
pub fn apply(decision: &Decision, fleet: &mut [NodeObservation], records: &mut Records) {
    for c in &decision.record_changes {
        match c {
            RecordChange::Upsert(r) => {
                records.nodes.insert(r.node.clone(), r.clone());
            }
            RecordChange::Delete(n) => {
                records.nodes.remove(n);
            }
        }
    }
    if let Some(p) = &decision.policy_record {
        records.policy = p.clone();
    }
    let mut by_name: HashMap<&str, &Action> = HashMap::new();
    for a in &decision.actions {
        match a {
            Action::SetTaints { node, .. } => {
                by_name.insert(node.as_str(), a);
            }
            Action::SetOutOfService { node, present, .. } => {
                if let Some(n) = fleet.iter_mut().find(|n| n.name == *node) {
                    crate::fencing::apply_taint(n, *present);
                }
            }
            _ => {}
        }
    }
    if by_name.is_empty() {
        return;
    }
    for n in fleet.iter_mut() {
        if let Some(Action::SetTaints { add, remove, .. }) = by_name.get(n.name.as_str()) {
            n.taints.retain(|t| !remove.contains(&t.key));
            for k in add {
                if !n.has_taint(k) {
                    n.taints.push(crate::observe::Taint { key: k.clone(), value: None, effect: crate::observe::TaintEffect::NoSchedule });
                }
            }
        }
    }
}
