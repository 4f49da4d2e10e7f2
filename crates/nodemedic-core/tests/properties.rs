//! Properties of the engine over random fleets, policies and event sequences.
//!
//! Each case builds a fleet (1–40 nodes, some with GPUs, in 1–3 pools), a live policy derived from a
//! preset with random gates, and a sequence of events (probe runs, condition changes, executor
//! reports, people acting, time passing), then drives `decide` + `apply` once per event and checks an
//! invariant after every decision.

use nodemedic_core::engine::{Action, EventKind};
use nodemedic_core::observe::{NodeObservation, OperatorAction, OperatorRequest, ReportedOutcome};
use nodemedic_core::policy::{CircuitBreaker, ConditionStatus, IntOrPercent, MaintenanceWindow, NodeRole, Policy, RetryBudget, Weekday};
use nodemedic_core::testkit::{EPOCH, gpu_node, node, probe, report, set_condition};
use nodemedic_core::{Decision, Duration, Records, Time, apply, decide, presets};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};

const WORKER_LABEL: &str = "node-role.kubernetes.io/worker";

// ---------------------------------------------------------------------------------------------------
// Scenario model
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct NodeSpec {
    gpu: bool,
    pool: usize,
    /// Seed 004 selects only nodes with the worker label.
    worker: bool,
}

#[derive(Debug, Clone, Copy)]
enum Health {
    /// Whatever the preset sets.
    Keep,
    Neither,
    Min(IntOrPercent),
    Max(IntOrPercent),
}

#[derive(Debug, Clone)]
struct Gates {
    max_concurrent: Option<IntOrPercent>,
    per_pool: Option<IntOrPercent>,
    health: Health,
    breaker: Option<CircuitBreaker>,
    retry: Option<RetryBudget>,
    window: Option<MaintenanceWindow>,
    paused: bool,
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Gpu,
    Network,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Gpu => "gpu",
            Check::Network => "network",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Cond {
    Ready(ConditionStatus),
    DiskPressure(bool),
    /// Cilium's (`CiliumIsDown`/`CiliumIsUp`) or another CNI's.
    NetworkUnavailable {
        down: bool,
        cilium: bool,
    },
}

/// One thing that happens between two decisions. Node indices are taken modulo the current fleet;
/// `pick` chooses among the nodes that are on the ladder (by name), falling back to any node.
#[derive(Debug, Clone)]
enum Op {
    /// The GPU check fails three times in a row (enough for every preset's check rule).
    FailGpu {
        node: usize,
    },
    Probe {
        node: usize,
        check: Check,
        passed: bool,
    },
    Condition {
        node: usize,
        cond: Cond,
    },
    /// The executor reports on the record's current attempt (or, `late`, on the one before).
    Report {
        pick: usize,
        outcome: ReportedOutcome,
        late: bool,
    },
    /// Back from a reboot: fresh agent counters, Ready again, the executor reports success.
    Rebooted {
        pick: usize,
    },
    /// Some GPUs fall out of (or come back to) allocatable.
    Allocatable {
        node: usize,
        gpus: i64,
    },
    ToggleExclude {
        node: usize,
    },
    /// A person marks the node resolved.
    Resolve {
        pick: usize,
    },
    TogglePause,
    ResetBreaker,
    Delete {
        node: usize,
    },
    /// Several nodes' GPU checks fail at once.
    MassFailure {
        first: usize,
        count: usize,
    },
    Advance(Duration),
}

#[derive(Debug, Clone)]
struct Scenario {
    preset: usize,
    gates: Gates,
    nodes: Vec<NodeSpec>,
    ops: Vec<Op>,
    /// Seed for the fleet permutation in `same_input_same_output`.
    shuffle: u64,
}

fn int_or_percent(max_count: u32) -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![(0..=max_count).prop_map(IntOrPercent::Count), (0u32..=100).prop_map(IntOrPercent::Percent)]
}

fn minutes(lo: i64, hi: i64) -> impl Strategy<Value = Duration> {
    (lo..=hi).prop_map(Duration::from_mins)
}

fn gates() -> impl Strategy<Value = Gates> {
    let health = prop_oneof![
        Just(Health::Keep),
        Just(Health::Neither),
        int_or_percent(40).prop_map(Health::Min),
        int_or_percent(10).prop_map(Health::Max),
    ];
    let breaker = proptest::option::weighted(
        0.5,
        (int_or_percent(8), minutes(1, 60), minutes(0, 120), any::<bool>())
            .prop_map(|(max_unhealthy, window, cooldown, manual_reset)| CircuitBreaker { max_unhealthy, window, cooldown, manual_reset }),
    );
    let retry = proptest::option::weighted(
        0.5,
        (1u32..=4, minutes(60, 7 * 24 * 60)).prop_map(|(max_remediations, window)| RetryBudget { max_remediations, window }),
    );
    let window = proptest::option::weighted(
        0.15,
        (proptest::collection::vec(0usize..7, 0..3), 0i64..24, 0i64..60, minutes(30, 8 * 60)).prop_map(|(days, h, m, duration)| {
            const DAYS: [Weekday; 7] = [Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri, Weekday::Sat, Weekday::Sun];
            MaintenanceWindow { days: days.into_iter().map(|d| DAYS[d]).collect(), start: format!("{h:02}:{m:02}"), duration }
        }),
    );
    (
        proptest::option::weighted(0.7, int_or_percent(4)),
        proptest::option::weighted(0.4, int_or_percent(3)),
        health,
        breaker,
        retry,
        window,
        proptest::bool::weighted(0.15),
    )
        .prop_map(|(max_concurrent, per_pool, health, breaker, retry, window, paused)| Gates {
            max_concurrent,
            per_pool,
            health,
            breaker,
            retry,
            window,
            paused,
        })
}

fn nodes() -> impl Strategy<Value = Vec<NodeSpec>> {
    (1usize..=3).prop_flat_map(|pools| {
        proptest::collection::vec(
            (proptest::bool::weighted(0.7), 0..pools, proptest::bool::weighted(0.9)).prop_map(|(gpu, pool, worker)| NodeSpec {
                gpu,
                pool,
                worker,
            }),
            1..=40,
        )
    })
}

fn advance() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => (1i64..=60).prop_map(Duration::from_secs),
        4 => (1i64..=30).prop_map(Duration::from_mins),
        1 => (1i64..=8).prop_map(Duration::from_hours),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0usize..64;
    let cond = prop_oneof![
        prop_oneof![Just(ConditionStatus::True), Just(ConditionStatus::False), Just(ConditionStatus::Unknown)].prop_map(Cond::Ready),
        any::<bool>().prop_map(Cond::DiskPressure),
        (any::<bool>(), proptest::bool::weighted(0.7)).prop_map(|(down, cilium)| Cond::NetworkUnavailable { down, cilium }),
    ];
    let check = prop_oneof![Just(Check::Gpu), Just(Check::Network)];
    let outcome = prop_oneof![3 => Just(ReportedOutcome::Succeeded), 2 => Just(ReportedOutcome::Failed)];
    prop_oneof![
        6 => n.clone().prop_map(|node| Op::FailGpu { node }),
        5 => (n.clone(), check, any::<bool>()).prop_map(|(node, check, passed)| Op::Probe { node, check, passed }),
        5 => (n.clone(), cond).prop_map(|(node, cond)| Op::Condition { node, cond }),
        4 => (n.clone(), outcome, proptest::bool::weighted(0.15)).prop_map(|(pick, outcome, late)| Op::Report { pick, outcome, late }),
        3 => n.clone().prop_map(|pick| Op::Rebooted { pick }),
        2 => (n.clone(), 0i64..=8).prop_map(|(node, gpus)| Op::Allocatable { node, gpus }),
        1 => n.clone().prop_map(|node| Op::ToggleExclude { node }),
        1 => n.clone().prop_map(|pick| Op::Resolve { pick }),
        1 => Just(Op::TogglePause),
        1 => Just(Op::ResetBreaker),
        1 => n.clone().prop_map(|node| Op::Delete { node }),
        1 => (n, 2usize..=12).prop_map(|(first, count)| Op::MassFailure { first, count }),
        8 => advance().prop_map(Op::Advance),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (0usize..4, gates(), nodes(), proptest::collection::vec(op(), 1..60), any::<u64>())
        .prop_map(|(preset, gates, nodes, ops, shuffle)| Scenario { preset, gates, nodes, ops, shuffle })
}

fn policy(s: &Scenario) -> Policy {
    let mut p = match s.preset {
        0 => presets::seed000(),
        1 => presets::seed003(),
        2 => presets::seed004(),
        _ => presets::recommended(),
    };
    p.monitor_only = false;
    let g = &s.gates;
    p.gates.max_concurrent = g.max_concurrent;
    p.gates.max_concurrent_per_pool = g.per_pool;
    match g.health {
        Health::Keep => {}
        Health::Neither => (p.gates.min_healthy, p.gates.max_unhealthy) = (None, None),
        Health::Min(m) => (p.gates.min_healthy, p.gates.max_unhealthy) = (Some(m), None),
        Health::Max(m) => (p.gates.min_healthy, p.gates.max_unhealthy) = (None, Some(m)),
    }
    p.gates.circuit_breaker = g.breaker.clone();
    p.gates.retry_budget = g.retry.clone();
    p.gates.maintenance_windows = g.window.iter().cloned().collect();
    if g.paused {
        p.pause_requests = vec!["upgrade".into()];
    }
    p
}

fn fleet(s: &Scenario) -> Vec<NodeObservation> {
    s.nodes
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (name, pool) = (format!("node-{i:02}"), format!("pool-{}", spec.pool));
            let mut n = if spec.gpu { gpu_node(&name, &pool, 8, EPOCH) } else { node(&name, &pool, EPOCH) };
            if spec.worker {
                n.labels.insert(WORKER_LABEL.into(), String::new());
            }
            n
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Driving the engine
// ---------------------------------------------------------------------------------------------------

struct Sim {
    policy: Policy,
    fleet: Vec<NodeObservation>,
    records: Records,
    now: Time,
}

/// One decision and what it was made on.
struct Step<'a> {
    policy: &'a Policy,
    /// The fleet and records the decision was made on.
    fleet: &'a [NodeObservation],
    before: &'a Records,
    decision: &'a Decision,
    /// The fleet and records with the decision applied.
    fleet_after: &'a [NodeObservation],
    after: &'a Records,
    now: Time,
}

impl Sim {
    fn new(s: &Scenario) -> Self {
        Sim { policy: policy(s), fleet: fleet(s), records: Records::default(), now: EPOCH }
    }

    fn index(&self, i: usize) -> Option<usize> {
        (!self.fleet.is_empty()).then(|| i % self.fleet.len())
    }

    /// A node on the ladder if there is one, else any node.
    fn pick(&self, i: usize) -> Option<usize> {
        let active: Vec<usize> =
            (0..self.fleet.len()).filter(|&k| self.records.nodes.get(&self.fleet[k].name).is_some_and(|r| r.active.is_some())).collect();
        if active.is_empty() { self.index(i) } else { Some(active[i % active.len()]) }
    }

    fn attempt(&self, k: usize) -> u32 {
        self.records.nodes.get(&self.fleet[k].name).map_or(0, |r| r.attempt)
    }

    fn happen(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::FailGpu { node } => {
                if let Some(k) = self.index(node) {
                    for _ in 0..3 {
                        probe(&mut self.fleet[k], "gpu", false, now);
                    }
                }
            }
            Op::Probe { node, check, passed } => {
                if let Some(k) = self.index(node) {
                    probe(&mut self.fleet[k], check.name(), passed, now);
                }
            }
            Op::Condition { node, cond } => {
                if let Some(k) = self.index(node) {
                    let n = &mut self.fleet[k];
                    match cond {
                        Cond::Ready(status) => {
                            let reason = if status == ConditionStatus::True { "KubeletReady" } else { "KubeletNotReady" };
                            set_condition(n, "Ready", status, reason, now);
                        }
                        Cond::DiskPressure(on) => {
                            let (status, reason) = if on {
                                (ConditionStatus::True, "KubeletHasDiskPressure")
                            } else {
                                (ConditionStatus::False, "KubeletHasNoDiskPressure")
                            };
                            set_condition(n, "DiskPressure", status, reason, now);
                        }
                        Cond::NetworkUnavailable { down, cilium } => {
                            let status = if down { ConditionStatus::True } else { ConditionStatus::False };
                            let reason = match (cilium, down) {
                                (true, true) => "CiliumIsDown",
                                (true, false) => "CiliumIsUp",
                                (false, _) => "NoRouteCreated",
                            };
                            set_condition(n, "NetworkUnavailable", status, reason, now);
                        }
                    }
                }
            }
            Op::Report { pick, outcome, late } => {
                if let Some(k) = self.pick(pick) {
                    let attempt = self.attempt(k).saturating_sub(u32::from(late));
                    report(&mut self.fleet[k], attempt, outcome, now);
                }
            }
            Op::Rebooted { pick } => {
                if let Some(k) = self.pick(pick) {
                    let attempt = self.attempt(k);
                    let n = &mut self.fleet[k];
                    set_condition(n, "Ready", ConditionStatus::True, "KubeletReady", now);
                    report(n, attempt, ReportedOutcome::Succeeded, now);
                }
            }
            Op::Allocatable { node, gpus } => {
                if let Some(k) = self.index(node) {
                    let n = &mut self.fleet[k];
                    if n.labels.contains_key("nvidia.com/gpu.count") {
                        n.allocatable.insert("nvidia.com/gpu".into(), gpus);
                    }
                }
            }
            Op::ToggleExclude { node } => {
                if let Some(k) = self.index(node) {
                    let labels = &mut self.fleet[k].labels;
                    if labels.remove(nodemedic_core::policy::DEFAULT_EXCLUDE_LABEL).is_none() {
                        labels.insert(nodemedic_core::policy::DEFAULT_EXCLUDE_LABEL.into(), "true".into());
                    }
                }
            }
            Op::Resolve { pick } => {
                if let Some(k) = self.pick(pick) {
                    self.fleet[k].operator_request = Some(OperatorRequest { action: OperatorAction::Resolve, by: "alice".into(), at: now });
                }
            }
            Op::TogglePause => {
                if self.policy.pause_requests.is_empty() {
                    self.policy.pause_requests = vec!["upgrade".into()];
                } else {
                    self.policy.pause_requests.clear();
                }
            }
            Op::ResetBreaker => self.records.policy.breaker_reset_requested_at = Some(now),
            Op::Delete { node } => {
                if let Some(k) = self.index(node) {
                    self.fleet.remove(k);
                }
            }
            Op::MassFailure { first, count } => {
                if !self.fleet.is_empty() {
                    for j in 0..count.min(self.fleet.len()) {
                        let k = (first + j) % self.fleet.len();
                        for _ in 0..3 {
                            probe(&mut self.fleet[k], "gpu", false, now);
                        }
                    }
                }
            }
            Op::Advance(d) => self.now = self.now + d,
        }
    }

    /// Runs the scenario: for each event, decide, hand the step to `check`, apply.
    fn run(s: &Scenario, mut check: impl FnMut(&Step) -> Result<(), TestCaseError>) -> Result<(), TestCaseError> {
        let mut sim = Sim::new(s);
        prop_assert!(sim.policy.validate().is_ok(), "generated an invalid policy: {:?}", sim.policy.validate());
        for op in std::iter::once(None).chain(s.ops.iter().map(Some)) {
            if let Some(op) = op {
                sim.happen(op);
            }
            let decision = decide(&sim.policy, &sim.fleet, &sim.records, sim.now);
            let (mut fleet_after, mut after) = (sim.fleet.clone(), sim.records.clone());
            apply(&decision, &mut fleet_after, &mut after);
            check(&Step {
                policy: &sim.policy,
                fleet: &sim.fleet,
                before: &sim.records,
                decision: &decision,
                fleet_after: &fleet_after,
                after: &after,
                now: sim.now,
            })?;
            sim.fleet = fleet_after;
            sim.records = after;
        }
        Ok(())
    }
}

/// The engine's node selection, restated.
fn selected(p: &Policy, n: &NodeObservation) -> bool {
    let role = match p.node_role {
        NodeRole::Any => true,
        NodeRole::Worker => !n.is_control_plane(),
        NodeRole::ControlPlane => n.is_control_plane(),
    };
    n.labels.get(&p.exclude_label).is_none_or(|v| v != "true")
        && role
        && (p.node_pools.is_empty() || n.labels.get(&p.node_pool_label).is_some_and(|pool| p.node_pools.contains(pool)))
        && p.selector.matches(&n.labels)
}

fn pool<'a>(p: &Policy, n: &'a NodeObservation) -> &'a str {
    n.labels.get(&p.node_pool_label).map_or("", String::as_str)
}

/// Nodes whose record has a remediation in a disruptive step.
fn disruptive(records: &Records) -> BTreeSet<&str> {
    records.nodes.values().filter(|r| r.active.as_ref().is_some_and(|a| a.step.is_disruptive())).map(|r| r.node.as_str()).collect()
}

fn started(d: &Decision) -> Vec<&str> {
    d.events.iter().filter(|e| e.kind == EventKind::RemediationStarted).filter_map(|e| e.node.as_deref()).collect()
}

fn shuffled(fleet: &[NodeObservation], seed: u64) -> Vec<NodeObservation> {
    // Fisher–Yates with splitmix64: reproducible from the case's seed.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v = fleet.to_vec();
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Whether `now` is inside a maintenance window, worked out from each window's latest daily opening
/// (the generated windows last under a day) rather than the engine's today-or-yesterday scan.
fn in_maintenance_window(p: &Policy, now: Time) -> bool {
    const DAY_MS: i64 = 86_400_000;
    let windows = &p.gates.maintenance_windows;
    windows.is_empty()
        || windows.iter().any(|w| {
            let Some(start) = w.start_millis() else { return false };
            let since_opening = (now.0 - start).rem_euclid(DAY_MS);
            let opened = Time(now.0 - since_opening);
            since_opening < w.duration.0 && (w.days.is_empty() || w.days.iter().any(|d| d.index() == opened.weekday()))
        })
}

/// 128 cases each by default; `PROPTEST_CASES=5000` for a deeper search.
#[allow(clippy::disallowed_methods)] // the test harness's setting, not the engine's
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    ProptestConfig { cases, max_shrink_iters: 4096, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// maxConcurrent and maxConcurrentPerPool bound the nodes in a disruptive step (percentages scale
    /// down against the selected nodes, with a minimum of one). A node already holding a slot may move
    /// from one disruptive step to the next; a node entering a disruptive step needs a free slot.
    #[test]
    fn never_more_disruptive_remediations_in_flight_than_allowed(s in scenario()) {
        Sim::run(&s, |st| {
            let gates = &st.policy.gates;
            let chosen: Vec<&NodeObservation> = st.fleet.iter().filter(|n| selected(st.policy, n)).collect();
            prop_assert_eq!(chosen.len(), st.decision.summary.selected);
            let before = disruptive(st.before);
            let after = disruptive(st.after);
            prop_assert_eq!(after.len(), st.decision.summary.disruptive_in_flight, "the summary counts what the records say");
            let entered: Vec<&str> = after.difference(&before).copied().collect();
            if entered.is_empty() {
                return Ok(());
            }
            if let Some(max) = gates.max_concurrent {
                let limit = max.scaled_down(chosen.len()).max(1);
                prop_assert!(after.len() <= limit, "at {}: {:?} entered a disruptive step, {} in flight ({:?}), maxConcurrent {} of {} selected allows {}", st.now, entered, after.len(), after, max, chosen.len(), limit);
            }
            if let Some(max) = gates.max_concurrent_per_pool {
                let pool_of: BTreeMap<&str, &str> = st.fleet.iter().map(|n| (n.name.as_str(), pool(st.policy, n))).collect();
                let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
                for n in &chosen {
                    *sizes.entry(pool(st.policy, n)).or_default() += 1;
                }
                for node in &entered {
                    let p = pool_of.get(node).copied().unwrap_or("");
                    let limit = max.scaled_down(sizes.get(p).copied().unwrap_or(0)).max(1);
                    let in_pool: Vec<&&str> = after.iter().filter(|n| pool_of.get(**n).copied() == Some(p)).collect();
                    prop_assert!(in_pool.len() <= limit, "at {}: {} entered a disruptive step in pool `{}`: {:?} in flight there, maxConcurrentPerPool {} allows {}", st.now, node, p, in_pool, max, limit);
                }
            }
            Ok(())
        })?;
    }

    /// The incremental index, fed only the nodes that changed (as a watch stream would), decides
    /// exactly what a full pass over the same nodes decides.
    #[test]
    fn the_index_decides_exactly_like_a_full_pass(s in scenario()) {
        let mut index = nodemedic_core::FleetIndex::new();
        Sim::run(&s, |st| {
            let names: BTreeSet<&str> = st.fleet.iter().map(|n| n.name.as_str()).collect();
            let gone: Vec<String> = index.nodes().iter().filter(|n| !names.contains(n.name.as_str())).map(|n| n.name.clone()).collect();
            for name in gone {
                index.remove(&name);
            }
            for n in st.fleet {
                if index.get(&n.name) != Some(n) {
                    index.upsert(n.clone());
                }
            }
            let incremental = index.decide(st.policy, st.before, st.now);
            prop_assert_eq!(&incremental, st.decision, "at {}", st.now);
            Ok(())
        })?;
    }

    /// Paused, breaker open, minHealthy or maxUnhealthy failing: no remediation starts.
    #[test]
    fn never_starts_a_remediation_while_a_gate_fails(s in scenario()) {
        Sim::run(&s, |st| {
            let started = started(st.decision);
            if started.is_empty() {
                return Ok(());
            }
            let sum = &st.decision.summary;
            let gates = &st.policy.gates;
            prop_assert!(st.policy.pause_requests.is_empty(), "started {:?} while paused", started);
            prop_assert!(st.after.policy.breaker_tripped_at.is_none(), "started {:?} with the breaker open ({:?})", started, st.after.policy.breaker_reason);
            prop_assert!(!sum.breaker_open, "started {:?} with the breaker open", started);
            if let Some(min) = gates.min_healthy {
                let need = min.scaled_up(sum.selected);
                prop_assert!(sum.healthy >= need, "started {:?} with {} of {} healthy, minHealthy {} needs {}", started, sum.healthy, sum.selected, min, need);
            }
            if let Some(max) = gates.max_unhealthy {
                let allowed = max.scaled_down(sum.selected);
                prop_assert!(sum.unhealthy <= allowed, "started {:?} with {} of {} unhealthy, maxUnhealthy {} allows {}", started, sum.unhealthy, sum.selected, max, allowed);
            }
            Ok(())
        })?;
    }

    /// Outside every maintenance window no disruptive step starts, executed or (monitor-only) not.
    #[test]
    fn no_disruptive_step_starts_outside_the_maintenance_windows(s in scenario()) {
        Sim::run(&s, |st| {
            if in_maintenance_window(st.policy, st.now) {
                return Ok(());
            }
            let disruptive: Vec<_> = st
                .decision
                .actions
                .iter()
                .chain(&st.decision.would_execute)
                .filter_map(|a| match a {
                    Action::Execute { node, step, .. } if step.is_disruptive() => Some((node.as_str(), *step)),
                    _ => None,
                })
                .collect();
            prop_assert!(disruptive.is_empty(), "at {} (outside every window): {:?}", st.now, disruptive);
            Ok(())
        })?;
    }

    /// Deciding again on the applied result, at the same instant, does nothing more.
    #[test]
    fn deciding_twice_on_the_same_input_yields_no_new_action(s in scenario()) {
        Sim::run(&s, |st| {
            let again = decide(st.policy, st.fleet_after, st.after, st.now);
            prop_assert!(again.actions.is_empty(), "at {}: new actions {:#?}\nafter first decision events {:#?}", st.now, again.actions, st.decision.events);
            prop_assert!(again.record_changes.is_empty(), "at {}: new record changes {:#?}\nafter first decision events {:#?}", st.now, again.record_changes, st.decision.events);
            prop_assert!(again.policy_record.is_none(), "at {}: policy record changed again: {:?}", st.now, again.policy_record);
            Ok(())
        })?;
    }

    /// Records and policy survive serialisation (JSON; the policy also as YAML) and decide the same.
    #[test]
    fn serialise_reload_same_decisions(s in scenario()) {
        let mut reloaded: Option<(Policy, Policy, Policy)> = None;
        Sim::run(&s, |st| {
            if reloaded.as_ref().is_none_or(|(orig, _, _)| orig != st.policy) {
                let json = serde_json::to_string(st.policy).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let from_json = Policy::from_json(&json).map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
                let yaml = serde_saphyr::to_string(st.policy).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let from_yaml = Policy::from_yaml(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
                prop_assert_eq!(&from_json, st.policy);
                prop_assert_eq!(&from_yaml, st.policy, "YAML:\n{}", yaml);
                reloaded = Some((st.policy.clone(), from_json, from_yaml));
            }
            let Some((_, from_json, from_yaml)) = reloaded.as_ref() else { unreachable!() };
            let json = serde_json::to_string(st.before).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let records: Records = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
            prop_assert_eq!(&records, st.before);
            let d = decide(from_json, st.fleet, &records, st.now);
            prop_assert_eq!(&d, st.decision);
            let d = decide(from_yaml, st.fleet, &records, st.now);
            prop_assert_eq!(&d, st.decision);
            Ok(())
        })?;
    }

    /// `decide` is a function of its input; the order the nodes are listed in does not matter.
    #[test]
    fn same_input_same_output(s in scenario()) {
        let mut step = 0u64;
        Sim::run(&s, |st| {
            step += 1;
            let again = decide(st.policy, st.fleet, st.before, st.now);
            prop_assert_eq!(&again, st.decision);
            let fleet = shuffled(st.fleet, s.shuffle ^ step);
            let other = decide(st.policy, &fleet, st.before, st.now);
            prop_assert_eq!(&other.actions, &st.decision.actions);
            prop_assert_eq!(&other.events, &st.decision.events);
            prop_assert_eq!(&other.record_changes, &st.decision.record_changes);
            prop_assert_eq!(&other, st.decision, "beyond actions, events and record changes");
            Ok(())
        })?;
    }
}

/// The generators reach the interesting states: remediations start, disruptive steps run, gates hold.
#[test]
fn the_generated_scenarios_exercise_the_ladder_and_the_gates() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut starts, mut disruptive_steps, mut holds, mut manual) = (0usize, 0usize, BTreeSet::new(), 0usize);
    for _ in 0..64 {
        let s = scenario().new_tree(&mut runner).expect("a scenario").current();
        Sim::run(&s, |st| {
            starts += started(st.decision).len();
            disruptive_steps +=
                st.decision.actions.iter().filter(|a| matches!(a, Action::Execute { step, .. } if step.is_disruptive())).count();
            manual += st.decision.events.iter().filter(|e| e.kind == EventKind::EscalatedToManual).count();
            holds.extend(st.decision.holds.iter().map(|h| h.gate));
            Ok(())
        })
        .expect("runs");
    }
    assert!(starts > 20, "{starts} remediations started");
    assert!(disruptive_steps > 20, "{disruptive_steps} disruptive steps executed");
    assert!(manual > 0);
    assert!(holds.len() >= 5, "gates seen holding: {holds:?}");
}
