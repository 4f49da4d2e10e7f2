//! The two passes of a decision: pass 1 summarises every node (cached between decisions by the fleet index),
//! pass 2 works the interesting ones through gates, ladder and taints.

use super::*;

/// Whether `policy` manages `node` (selector, node pools, role, exclude label), exactly as `decide` selects.
pub fn selects(policy: &Policy, node: &NodeObservation) -> bool {
    Ctx::new(policy, Time(0)).selects(node)
}

/// Decides what to do now. Nodes are considered in name order, unhealthy candidates oldest first.
pub fn decide(policy: &Policy, fleet: &[NodeObservation], records: &Records, now: Time) -> Decision {
    decide_with(policy, fleet, records, now, None)
}

/// What pass 1 learns about one node: enough to count it, and whether pass 2 must look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NodeSummary {
    pub selected: bool,
    pub unhealthy: bool,
    pub unknown: bool,
    /// Pass 2 must evaluate it (a record, a firing or soft rule, or one of our taints).
    pub interesting: bool,
    /// The earliest time a pending rule fires (nodes not on the ladder).
    pub wake: Option<Time>,
    /// The summary may change without a new observation at this time (a rule's duration elapses,
    /// evidence turns stale); never for nodes with records, which are always re-evaluated.
    pub valid_until: Option<Time>,
}

pub(super) fn earliest(a: Option<Time>, b: Time) -> Option<Time> {
    Some(a.map_or(b, |x| x.min(b)))
}

/// Pass 1 for one node; `reasons[rule]` receives the reason shown in the metrics for each rule.
pub(super) fn summarize(ctx: &Ctx, obs: &NodeObservation, record: Option<&NodeRecord>, reasons: &mut [u8]) -> NodeSummary {
    let now = ctx.now;
    let policy = ctx.policy;
    let mut s = NodeSummary::default();
    if !ctx.selects(obs) {
        s.interesting = record.is_some_and(|r| r.active.is_some());
        reasons.fill(u8::MAX);
        return s;
    }
    s.selected = true;
    let active = record.and_then(|r| r.active.as_ref());
    let repairing = active.is_some_and(|a| a.step != RemediationStep::Quarantine && !matches!(a.stage, Stage::Verifying { .. }));
    let (mut firing, mut stale, mut attention) = (false, false, record.is_some());
    for (ri, rule) in policy.rules.iter().enumerate() {
        let remembered = record.and_then(|r| r.failing_since.get(&rule.name)).copied();
        let e = evaluate_rule(rule, obs, remembered, now);
        if let (Some(limit), Some(evidence)) = (rule.stale_after, e.evidence_at)
            && e.verdict != Verdict::Unknown
        {
            // Turns stale one millisecond after the limit.
            s.valid_until = earliest(s.valid_until, evidence + limit + Duration(1));
        }
        if let Some(key) = &ctx.soft_keys[ri] {
            reasons[ri] = e.reason.index() as u8;
            attention |= e.verdict != Verdict::Ok || obs.has_taint(key);
            continue;
        }
        let shown = if repairing { Reason::RepairInProgress } else { e.reason };
        reasons[ri] = shown.index() as u8;
        match e.verdict {
            Verdict::Firing { .. } => firing = true,
            Verdict::Pending { fires_at: Some(t), .. } => {
                s.valid_until = earliest(s.valid_until, t);
                if active.is_none() {
                    s.wake = earliest(s.wake, t);
                }
            }
            Verdict::Unknown => stale = true,
            _ => {}
        }
        if rule.gpu_count.is_some() && e.bad_now() != remembered.is_some() {
            attention = true;
        }
    }
    s.unhealthy = active.is_some() || firing;
    s.unknown = !s.unhealthy && stale;
    s.interesting = attention || firing || obs.taints.iter().any(|t| ctx.manages(&t.key));
    s
}

/// Per-node pass-1 results kept between decisions by [`crate::index::FleetIndex`].
pub(crate) struct Pass1Cache<'c> {
    /// `Some` where the node's summary can be reused (no new observation since it was made).
    pub summaries: &'c mut Vec<Option<NodeSummary>>,
    /// Reason index per node and rule, `rules` entries per node.
    pub reasons: &'c mut Vec<u8>,
    /// Nodes that had a record at the last decision: they are re-evaluated once more after it goes.
    pub had_record: &'c mut HashSet<String>,
    pub slots: &'c HashMap<String, usize>,
}

/// What pass 1 counted over the whole fleet.
struct Pass1<'f> {
    selected: usize,
    unhealthy: usize,
    unknown: usize,
    /// Fleet indices pass 2 must look at (unsorted, may repeat).
    interesting: Vec<usize>,
    pool_sizes: HashMap<&'f str, usize>,
    reason_counts: Vec<[u32; Reason::ALL.len()]>,
    /// Pools are counted only when a per-pool percentage needs their sizes.
    need_pool_sizes: bool,
    /// How many records belong to a node in the fleet (fewer than all: some nodes were deleted).
    seen_records: usize,
}

impl<'f> Pass1<'f> {
    fn new(policy: &Policy) -> Self {
        Pass1 {
            need_pool_sizes: matches!(policy.gates.max_concurrent_per_pool, Some(crate::policy::IntOrPercent::Percent(_))),
            selected: 0,
            unhealthy: 0,
            unknown: 0,
            interesting: Vec::new(),
            pool_sizes: HashMap::new(),
            reason_counts: vec![[0u32; Reason::ALL.len()]; policy.rules.len()],
            seen_records: 0,
        }
    }

    fn count(&mut self, ctx: &Ctx, obs: &'f NodeObservation, s: &NodeSummary, reasons: &[u8], idx: usize, out: &mut Out) {
        tally(ctx, obs, s, reasons, idx, self.need_pool_sizes, &mut self.pool_sizes, &mut self.reason_counts, &mut self.interesting, out);
        self.selected += usize::from(s.selected);
        self.unhealthy += usize::from(s.selected && s.unhealthy);
        self.unknown += usize::from(s.selected && s.unknown);
    }
}

/// Pass 1: evaluates every node cheaply (reusing the cache's summaries where they still hold) and keeps
/// only those that need more than counting.
fn pass1<'f>(ctx: &Ctx, fleet: &'f [NodeObservation], records: &Records, cache: Option<&mut Pass1Cache>, out: &mut Out) -> Pass1<'f> {
    let rules = ctx.policy.rules.len();
    let mut p = Pass1::new(ctx.policy);
    if let Some(c) = cache {
        // Nodes with records now or at the last decision are evaluated afresh, the rest reuse their
        // summary until it expires.
        c.reasons.resize(fleet.len() * rules, u8::MAX);
        c.summaries.resize(fleet.len(), None);
        for name in records.nodes.keys().map(String::as_str).chain(c.had_record.iter().map(String::as_str)) {
            if let Some(&i) = c.slots.get(name) {
                c.summaries[i] = None;
            }
        }
        p.seen_records = records.nodes.keys().filter(|n| c.slots.contains_key(n.as_str())).count();
        c.had_record.clear();
        c.had_record.extend(records.nodes.keys().cloned());
        for (idx, obs) in fleet.iter().enumerate() {
            let cached = c.summaries[idx].filter(|s| s.valid_until.is_none_or(|t| ctx.now < t));
            let s = match cached {
                Some(s) => s,
                None => {
                    let record = records.nodes.get(&obs.name);
                    let s = summarize(ctx, obs, record, &mut c.reasons[idx * rules..(idx + 1) * rules]);
                    // A summary with a record behind it is never reused (see above).
                    c.summaries[idx] = if record.is_some() { None } else { Some(s) };
                    s
                }
            };
            p.count(ctx, obs, &s, &c.reasons[idx * rules..(idx + 1) * rules], idx, out);
        }
    } else {
        // Records by name: a hash lookup per node beats a tree search comparing names.
        let by_name: HashMap<&str, &NodeRecord> = records.nodes.iter().map(|(name, r)| (name.as_str(), r)).collect();
        let mut row = vec![u8::MAX; rules];
        for (idx, obs) in fleet.iter().enumerate() {
            let record = by_name.get(obs.name.as_str()).copied();
            p.seen_records += usize::from(record.is_some());
            let s = summarize(ctx, obs, record, &mut row);
            p.count(ctx, obs, &s, &row, idx, out);
        }
    }
    p
}

/// Pass 2's working set: the interesting nodes in name order, each with its rules evaluated in full.
fn work_on<'a>(ctx: &Ctx, fleet: &'a [NodeObservation], records: &'a Records, mut interesting: Vec<usize>) -> Vec<Work<'a>> {
    interesting.sort_by(|a, b| fleet[*a].name.cmp(&fleet[*b].name));
    interesting.dedup_by(|a, b| fleet[*a].name == fleet[*b].name);
    interesting
        .iter()
        .map(|&idx| {
            let obs = &fleet[idx];
            let original = records.nodes.get(&obs.name);
            let evals = ctx
                .policy
                .rules
                .iter()
                .map(|r| evaluate_rule(r, obs, original.and_then(|rec| rec.failing_since.get(&r.name)).copied(), ctx.now))
                .collect();
            Work { obs, evals, original, record: original.cloned(), selected: ctx.selects(obs) }
        })
        .collect()
}

/// Nodes on the ladder move along it; nodes that left the policy are released. A node whose next
/// step needs a new disruptive slot waits until every other node has moved, so that slots freed
/// this time (recovered, released, escalated) are handed out this time, not on the next decision.
/// A node leaves the ladder only once every remediating rule passes: from then on it counts as
/// healthy, for the gates below as on the next decision. Returns how many recovered, and the disruptive
/// steps in flight as the ladder moves counted them (what the nodes that start next are gated on).
fn move_along_ladders(ctx: &Ctx, fleet: &[NodeObservation], work: &mut [Work], gates: &GateState, out: &mut Out) -> (usize, InFlight) {
    let mut inflight = in_flight(ctx, work);
    let mut waiting = Vec::new();
    let mut recovered = 0;
    // Fencing is read off the step in flight before the ladder moves past it (crate::fencing).
    // The Ready count is a scan of the fleet: done only when a node in remediation promises self-fencing.
    let ready_majority = work.iter().any(|w| w.obs.self_fencing.is_some()) && {
        let ready = fleet.iter().filter(|o| o.condition("Ready").is_some_and(|c| c.status == ConditionStatus::True)).count();
        2 * ready > fleet.len()
    };
    for w in work.iter_mut() {
        if let Some(r) = w.record.as_mut() {
            for (kind, message) in crate::fencing::update(r, w.obs, ctx.now, ready_majority) {
                out.event(&w.obs.name, kind, message);
            }
        }
    }
    for (i, w) in work.iter_mut().enumerate() {
        if w.active().is_none() {
            continue;
        }
        if !w.selected {
            release(ctx, w, out);
            continue;
        }
        if advance(ctx, w, gates, &mut inflight, out, true) {
            waiting.push(i);
        }
        recovered += usize::from(w.active().is_none());
    }
    inflight = in_flight(ctx, work);
    for i in waiting {
        advance(ctx, &mut work[i], gates, &mut inflight, out, false);
        recovered += usize::from(work[i].active().is_none());
    }
    (recovered, inflight)
}

/// Unhealthy nodes not yet on the ladder start it, oldest first, as far as the gates allow.
fn start_ladders(ctx: &Ctx, work: &mut [Work], gates: &GateState, counts: (usize, usize), mut inflight: InFlight, out: &mut Out) {
    let (healthy, unhealthy) = counts;
    let mut candidates: Vec<(Time, usize, usize)> = work
        .iter()
        .enumerate()
        .filter(|(_, w)| w.selected && w.active().is_none())
        .filter_map(|(i, w)| w.firing(ctx.policy).map(|(rule, since)| (since, i, rule)))
        .collect();
    candidates.sort_by(|a, b| (a.0, work[a.1].name()).cmp(&(b.0, work[b.1].name())));
    for (since, i, rule) in candidates {
        let w = &mut work[i];
        try_start(ctx, w, rule, since, gates, healthy, unhealthy, &mut inflight, out);
        if w.active().is_some() {
            // A first step that is over at once (a zero quarantine window) moves on now, not on the
            // next decision.
            advance(ctx, w, gates, &mut inflight, out, false);
        }
    }
}

/// Records to write or drop: changed records are written; idle ones past their retention, and those of
/// nodes that no longer exist, are deleted.
fn record_changes(
    ctx: &Ctx,
    fleet: &[NodeObservation],
    records: &Records,
    work: &mut [Work],
    seen_records: usize,
    out: &mut Out,
) -> Vec<RecordChange> {
    let (policy, now) = (ctx.policy, ctx.now);
    let mut changes = Vec::new();
    for w in work.iter_mut() {
        let retention = policy.gates.retry_budget.as_ref().map_or(RECORD_RETENTION, |b| b.window.max(RECORD_RETENTION));
        if let Some(r) = w.record.as_mut() {
            if let Some(b) = &policy.gates.retry_budget {
                r.remediation_starts.retain(|t| now.since(*t) < b.window);
            }
            let idle = r.active.is_none() && r.failing_since.is_empty() && crate::fencing::settled(r);
            let last = r.history.last().map(|h| h.ended_at);
            let expired = idle && r.remediation_starts.is_empty() && last.is_none_or(|t| now.since(t) >= retention);
            if expired {
                if w.original.is_some() {
                    changes.push(RecordChange::Delete(r.node.clone()));
                }
                continue;
            }
            if idle && let Some(t) = last {
                out.wake_at(t + retention);
            }
        }
        if w.record.as_ref() != w.original
            && let Some(r) = &w.record
        {
            changes.push(RecordChange::Upsert(r.clone()));
        }
    }
    if seen_records < records.nodes.len() {
        let names: HashSet<&str> = fleet.iter().map(|n| n.name.as_str()).collect();
        for name in records.nodes.keys().filter(|n| !names.contains(n.as_str())) {
            changes.push(RecordChange::Delete(name.clone()));
            out.event(name, EventKind::NodeDeleted, format!("node {name} no longer exists; its record is dropped"));
        }
    }
    changes
}

/// The decision's summary: counts, phases, disruptive steps in flight and each rule's reasons.
fn decision_summary(
    ctx: &Ctx,
    work: &[Work],
    counts: (usize, usize, usize, usize),
    breaker_open: bool,
    reason_counts: &[[u32; Reason::ALL.len()]],
) -> Summary {
    let (selected, healthy, unhealthy, unknown) = counts;
    let mut summary = Summary { selected, healthy, unhealthy, unknown, breaker_open, ..Default::default() };
    for w in work.iter().filter(|w| w.selected) {
        match w.record.as_ref().map(|r| r.phase) {
            Some(Phase::Remediating) => summary.remediating += 1,
            Some(Phase::Manual) => summary.manual += 1,
            _ => {}
        }
    }
    summary.disruptive_in_flight = in_flight(ctx, work).total;
    for (ri, counts) in reason_counts.iter().enumerate() {
        for reason in Reason::ALL {
            let n = counts[reason.index()];
            if n > 0 {
                summary.rule_reasons.push((ctx.policy.rules[ri].name.clone(), reason.as_str(), n));
            }
        }
    }
    summary
}

pub(crate) fn decide_with(
    policy: &Policy,
    fleet: &[NodeObservation],
    records: &Records,
    now: Time,
    mut cache: Option<Pass1Cache>,
) -> Decision {
    let ctx = Ctx::new(policy, now);
    let mut out = Out { actions: Vec::new(), events: Vec::new(), holds: Vec::new(), wake: None };
    let p = pass1(&ctx, fleet, records, cache.as_mut(), &mut out);
    let (selected, mut unhealthy, unknown) = (p.selected, p.unhealthy, p.unknown);
    let mut healthy = selected - unhealthy - unknown;

    // Pass 2: full evaluation of the few nodes that need it, in name order.
    let mut work = work_on(&ctx, fleet, records, p.interesting);
    let mut policy_record = records.policy.clone();
    let breaker_open = update_breaker(&ctx, &work, selected, &mut policy_record, &mut out);
    let gates = GateState { breaker_open, selected, pool_sizes: &p.pool_sizes };
    let (recovered, inflight) = move_along_ladders(&ctx, fleet, &mut work, &gates, &mut out);
    healthy += recovered;
    unhealthy -= recovered;
    start_ladders(&ctx, &mut work, &gates, (healthy, unhealthy), inflight, &mut out);

    // Memory for rules whose data has no timestamp (the GPU count rule).
    for w in work.iter_mut().filter(|w| w.selected) {
        remember_gpu_failures(&ctx, w);
    }
    // Taints follow the records and the soft rules.
    for w in &work {
        reconcile_taints(&ctx, w, breaker_open, &mut out);
        out.actions.extend(crate::fencing::taint_action(w.record.as_ref(), w.obs));
    }
    let record_changes = record_changes(&ctx, fleet, records, &mut work, p.seen_records, &mut out);
    let summary = decision_summary(&ctx, &work, (selected, healthy, unhealthy, unknown), breaker_open, &p.reason_counts);

    let (actions, would_execute) = if policy.monitor_only { (Vec::new(), out.actions) } else { (out.actions, Vec::new()) };
    Decision {
        actions,
        would_execute,
        record_changes,
        policy_record: (policy_record != records.policy).then_some(policy_record),
        events: out.events,
        holds: out.holds,
        next_wakeup: out.wake,
        summary,
    }
}

/// Snapshots of each rule's verdict kept on a record: enough to show a person how the evidence evolved
/// over the attempts, bounded so a lemon node's record does not grow without end.
pub const DIAGNOSTICS_PER_RULE: usize = 5;

pub(super) fn keep_recent_diagnostics(d: &mut Vec<Diagnostic>) {
    let mut per_rule: HashMap<String, usize> = HashMap::new();
    let mut keep = vec![false; d.len()];
    for (i, entry) in d.iter().enumerate().rev() {
        let n = per_rule.entry(entry.rule.clone()).or_default();
        *n += 1;
        keep[i] = *n <= DIAGNOSTICS_PER_RULE;
    }
    let mut i = 0;
    d.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// A reboot or reimage reported done is believed once the node shows a new boot ID and is not
/// NotReady; other steps (and nodes whose boot ID was unknown at the start) need only the report.
pub(super) fn rebooted(a: &ActiveRemediation, obs: &NodeObservation) -> bool {
    let Some(before) = &a.boot_id_at_start else { return true };
    let ready = obs.condition("Ready").is_none_or(|c| c.status == ConditionStatus::True);
    obs.boot_id.as_ref().is_some_and(|now| now != before) && ready
}

/// Counts the disruptive steps in flight as the (updated) records say.
pub(super) fn in_flight(ctx: &Ctx, work: &[Work]) -> InFlight {
    let mut inflight = InFlight { total: 0, by_pool: HashMap::new() };
    for w in work {
        if w.active().is_some_and(|a| a.step.is_disruptive()) {
            inflight.total += 1;
            *inflight.by_pool.entry(ctx.pool(w.obs).to_string()).or_default() += 1;
        }
    }
    inflight
}
