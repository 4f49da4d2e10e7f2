//! The discrete-event fleet simulation: faults from the fault model, a node agent that probes every
//! `probe_interval`, an executor that reboots, reimages and replaces, people who answer escalations
//! and find what automation leaves alone, and nodemedic-core's engine deciding in between — the same
//! engine the controller runs.
//!
//! Time advances from event to event; the engine is consulted whenever something it can see changed
//! or when it asked to be woken, never on a fixed tick, so a 54-day run of 2,048 nodes takes seconds.
//! Every fault's durations are drawn before the run ([`crate::draws`]), so policies compared over one
//! seed face the same faults with the same durations.

use crate::agent::{CNI_CONDITION, NPD_GPU_CONDITION};
use crate::draws::FaultDraws;
use crate::faults::{Cause, Fault, FaultModel, Fix, FleetSpec, generate, lemon_nodes};
pub use crate::report::{CapacityLost, FaultCounts, Report, Stats};
use nodemedic_core::engine::{Action, EventKind, Gate};
use nodemedic_core::observe::{NodeObservation, OperatorAction, OperatorRequest, ReportedOutcome, StepReport};
use nodemedic_core::policy::{CheckMatch, ConditionStatus};
use nodemedic_core::probe::{ProbeFamily, ThresholdMachine, Thresholds};
use nodemedic_core::record::{Records, Stage};
use nodemedic_core::testkit::set_condition;
use nodemedic_core::{Duration, Policy, RemediationStep, Time, apply, decide};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

mod events;

/// The kubelet re-posts node status at least this often.
pub const KUBELET_STATUS_REPORT: Duration = Duration::from_mins(5);

/// Simulated wall-clock origin: 2026-01-05T00:00:00Z (a Monday), so maintenance windows line up.
pub const SIM_EPOCH: Time = Time(1_767_571_200_000);

/// What a person does on a node whose faults would all clear by themselves.
pub const PERSON_LOOK_ONLY: Duration = Duration::from_mins(15);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub fleet: FleetSpec,
    pub seed: u64,
    /// The agent's probe period (seed 000: 30 s).
    pub probe_interval: Duration,
    /// How long a drain takes when it succeeds.
    pub drain_time: Duration,
    pub model: FaultModel,
    /// Keep a timeline of every engine event (for `simulate --trace` and debugging small fleets).
    #[serde(default)]
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            fleet: FleetSpec::default(),
            seed: 1,
            probe_interval: Duration::from_secs(30),
            drain_time: Duration::from_mins(3),
            model: FaultModel::default(),
            trace: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ev {
    FaultStart(u32),
    FaultClear(u32),
    Tick(u32),
    /// The kubelet's status report, scheduled only where the engine waits on fresh evidence.
    Heartbeat(u32),
    StepDone {
        node: u32,
        attempt: u32,
    },
    /// People look at a real fault (by id) in their own time: one response draw after it starts.
    PersonFinds(u32),
    /// The person answering an escalation starts work on the node.
    PersonArrives(u32),
    PersonDone(u32),
    Wake,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Bucket {
    Fine,
    FaultyServing,
    Ineffective,
    Healthy,
    Waiting,
    Effective,
}

/// One simulated agent probe: the latest raw result, and the agent's own threshold machine (nodemedic-core's,
/// with the agent's default thresholds) that decides what its condition says.
#[derive(Clone)]
pub(crate) struct ProbeState {
    /// The latest raw result (what a node-problem-detector plugin without thresholds reports).
    pub(crate) bad: bool,
    pub(crate) machine: ThresholdMachine,
    pub(crate) last_run: Option<Time>,
    pub(crate) ticking: bool,
}

impl Default for ProbeState {
    fn default() -> Self {
        ProbeState { bad: false, machine: ThresholdMachine::new(Thresholds::AGENT_DEFAULT), last_run: None, ticking: false }
    }
}

#[derive(Default, Clone)]
pub(crate) struct SimNode {
    pub(crate) faults: Vec<u32>,
    /// The last fault that started on the node: whose draws time a step when no fault is active.
    pub(crate) last_fault: Option<u32>,
    pub(crate) down_until: Option<Time>,
    /// Step being executed: (attempt, step, fixes up to).
    pub(crate) executing: Option<(u32, RemediationStep, Option<Fix>)>,
    /// A person is on it (escalation or found by hand), from the request until the work is done.
    pub(crate) person: bool,
    /// The person has arrived and works on the node.
    pub(crate) person_working: bool,
    pub(crate) person_cordon: bool,
    pub(crate) gpu_probe: ProbeState,
    pub(crate) net_probe: ProbeState,
    pub(crate) bucket: Option<Bucket>,
    pub(crate) bucket_since: Time,
    pub(crate) replaced_lemon: bool,
    pub(crate) held: Option<Gate>,
    pub(crate) heartbeat_due: Option<Time>,
}

struct FaultState {
    quarantined_at: Option<Time>,
    cleared_at: Option<Time>,
}

fn fix_rank(f: Fix) -> u8 {
    match f {
        Fix::SelfClears => 0,
        Fix::Reboot => 1,
        Fix::Reimage => 2,
        Fix::Replace => 3,
    }
}

fn step_fixes(step: RemediationStep) -> Option<Fix> {
    match step {
        RemediationStep::Reboot => Some(Fix::Reboot),
        RemediationStep::Reimage => Some(Fix::Reimage),
        RemediationStep::Replace => Some(Fix::Replace),
        _ => None,
    }
}

pub(crate) struct Sim<'a> {
    pub(crate) cfg: &'a SimConfig,
    pub(crate) policy: &'a Policy,
    pub(crate) faults: Vec<Fault>,
    pub(crate) draws: Vec<FaultDraws>,
    fstate: Vec<FaultState>,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) obs: Vec<NodeObservation>,
    index: HashMap<String, u32>,
    pub(crate) records: Records,
    queue: BinaryHeap<Reverse<(Time, u64, Ev)>>,
    seq: u64,
    lemons: Vec<bool>,
    pub(crate) gpu_check_used: bool,
    pub(crate) net_check_used: bool,
    pub(crate) npd_gpu_used: bool,
    pub(crate) cni_used: bool,
    acc: [f64; 6],
    report: Report,
    quarantine_times: Vec<i64>,
    repair_times: Vec<i64>,
    pending_wake: Option<Time>,
}

fn node_name(i: u32) -> String {
    format!("gpu-{i:05}")
}

/// FNV-1a over the words of every fault and its draws: equal digests, equal fault timelines.
fn digest(faults: &[Fault], draws: &[FaultDraws]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (f, d) in faults.iter().zip(draws) {
        for x in [u64::from(f.id), u64::from(f.node), f.gpu.map_or(u64::MAX, u64::from), f.start_ms as u64, f.cause as u64] {
            mix(x);
        }
        for x in [f.symptom as u64, f.fix as u64, f.self_clear_after_ms.unwrap_or(-1) as u64, u64::from(f.false_positive)] {
            mix(x);
        }
        for x in [d.response_ms, d.reboot_ms, d.reimage_ms, d.replace_lead_ms, d.replace_ms] {
            mix(x as u64);
        }
        mix(u64::from(d.probe_visible) | u64::from(d.cured_by_replacement) << 1);
    }
    h
}

/// Whether a policy has a rule on this node condition type.
fn reads_condition(policy: &Policy, type_: &str) -> bool {
    policy.rules.iter().any(|r| r.condition.as_ref().is_some_and(|c| c.type_ == type_))
}

impl<'a> Sim<'a> {
    /// A run over `faults`; `lemon_ids` are the nodes whose replacement can cure their recurring defect.
    fn new(cfg: &'a SimConfig, policy: &'a Policy, name: &str, faults: Vec<Fault>, lemon_ids: &[u32]) -> Self {
        let mut lemons = vec![false; cfg.fleet.nodes as usize];
        for l in lemon_ids {
            if let Some(x) = lemons.get_mut(*l as usize) {
                *x = true;
            }
        }
        let npd_gpu_used = reads_condition(policy, NPD_GPU_CONDITION);
        let cni_used = reads_condition(policy, CNI_CONDITION);
        let gpus = i64::from(cfg.fleet.gpus_per_node);
        let obs: Vec<NodeObservation> = (0..cfg.fleet.nodes)
            .map(|i| {
                let mut n = if gpus > 0 {
                    nodemedic_core::testkit::gpu_node(&node_name(i), &format!("pool-{}", i / 64), gpus, SIM_EPOCH)
                } else {
                    nodemedic_core::testkit::node(&node_name(i), &format!("pool-{}", i / 64), SIM_EPOCH)
                };
                n.labels.insert("node-role.kubernetes.io/worker".into(), String::new());
                if npd_gpu_used {
                    set_condition(&mut n, NPD_GPU_CONDITION, ConditionStatus::False, "DcgmHealthy", SIM_EPOCH);
                }
                if cni_used {
                    set_condition(&mut n, CNI_CONDITION, ConditionStatus::False, "CiliumIsUp", SIM_EPOCH);
                }
                n
            })
            .collect();
        let index = obs.iter().enumerate().map(|(i, n)| (n.name.clone(), i as u32)).collect();
        let reads_check =
            |family: ProbeFamily| policy.rules.iter().filter_map(|r| r.check.as_ref()).any(|c| *c == CheckMatch::family(family));
        let class = cfg.fleet.node_class();
        let draws: Vec<FaultDraws> = faults.iter().map(|f| FaultDraws::for_fault(&cfg.model, f, class, cfg.seed)).collect();
        let fstate = faults.iter().map(|_| FaultState { quarantined_at: None, cleared_at: None }).collect();
        let mut report = Report {
            policy: name.into(),
            nodes: cfg.fleet.nodes,
            gpus_per_node: cfg.fleet.gpus_per_node,
            days: cfg.fleet.duration_days(),
            seed: cfg.seed,
            ..Default::default()
        };
        report.faults.digest = digest(&faults, &draws);
        let mut sim = Sim {
            cfg,
            policy,
            fstate,
            nodes: vec![SimNode { bucket_since: SIM_EPOCH, ..Default::default() }; cfg.fleet.nodes as usize],
            obs,
            index,
            records: Records::default(),
            queue: BinaryHeap::new(),
            seq: 0,
            lemons,
            gpu_check_used: reads_check(ProbeFamily::Gpu),
            net_check_used: reads_check(ProbeFamily::Network),
            npd_gpu_used,
            cni_used,
            acc: [0.0; 6],
            report,
            quarantine_times: Vec::new(),
            repair_times: Vec::new(),
            pending_wake: None,
            faults,
            draws,
        };
        for i in 0..sim.faults.len() {
            let t = SIM_EPOCH + Duration(sim.faults[i].start_ms);
            sim.push(t, Ev::FaultStart(i as u32));
        }
        sim
    }

    pub(crate) fn push(&mut self, t: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn end(&self) -> Time {
        SIM_EPOCH + Duration(self.cfg.fleet.duration_ms)
    }

    fn is_real(&self, f: u32) -> bool {
        let f = &self.faults[f as usize];
        !f.false_positive && f.cause != Cause::NetworkFlap
    }

    fn tainted(&self, n: u32) -> bool {
        let node = &self.nodes[n as usize];
        node.person_cordon || !self.obs[n as usize].taints.is_empty()
    }

    fn bucket_of(&self, n: u32) -> Bucket {
        let node = &self.nodes[n as usize];
        let mut real = node.faults.iter().copied().filter(|f| self.is_real(*f)).peekable();
        let out = self.tainted(n) || node.down_until.is_some();
        match (real.peek().is_none(), out) {
            (true, false) => Bucket::Fine,
            (true, true) => Bucket::Healthy,
            (false, false) => Bucket::FaultyServing,
            (false, true) => match node.executing {
                Some((_, _, Some(fix))) => {
                    if real.all(|f| fix_rank(self.faults[f as usize].fix) <= fix_rank(fix)) {
                        Bucket::Effective
                    } else {
                        Bucket::Ineffective
                    }
                }
                _ if node.person_working => Bucket::Effective,
                _ => Bucket::Waiting,
            },
        }
    }

    /// Closes the accounting interval of node `n` at `now` and opens the next one.
    fn account(&mut self, n: u32, now: Time) {
        let b = self.bucket_of(n);
        let node = &mut self.nodes[n as usize];
        if let Some(prev) = node.bucket {
            let hours = now.since(node.bucket_since).0 as f64 / 3_600_000.0;
            self.acc[prev as usize] += hours;
        }
        node.bucket = Some(b);
        node.bucket_since = now;
        if b != Bucket::FaultyServing && self.tainted(n) {
            for i in 0..self.nodes[n as usize].faults.len() {
                let f = self.nodes[n as usize].faults[i];
                let start = SIM_EPOCH + Duration(self.faults[f as usize].start_ms);
                if self.is_real(f) && self.fstate[f as usize].quarantined_at.is_none() {
                    self.fstate[f as usize].quarantined_at = Some(now);
                    self.quarantine_times.push(now.since(start).0);
                }
            }
        }
    }

    /// The draws that time work on node `n`: those of its earliest active real fault, else of its
    /// earliest active fault, else of the last fault it had. Every policy that works on the node
    /// for the same fault gets the same durations.
    fn node_draws(&self, n: u32) -> Option<FaultDraws> {
        let node = &self.nodes[n as usize];
        let f = node.faults.iter().copied().find(|f| self.is_real(*f)).or(node.faults.first().copied()).or(node.last_fault)?;
        self.draws.get(f as usize).copied()
    }

    fn clear_faults(&mut self, n: u32, up_to: Fix, now: Time) {
        let ni = n as usize;
        let faults = std::mem::take(&mut self.nodes[ni].faults);
        let mut kept = Vec::new();
        for f in faults {
            if fix_rank(self.faults[f as usize].fix) <= fix_rank(up_to) {
                self.fault_cleared(f, now);
            } else {
                kept.push(f);
            }
        }
        self.nodes[ni].faults = kept;
        if up_to == Fix::Replace && self.lemons[ni] {
            self.nodes[ni].replaced_lemon = true;
        }
    }

    fn fault_cleared(&mut self, f: u32, now: Time) {
        if self.fstate[f as usize].cleared_at.is_none() {
            self.fstate[f as usize].cleared_at = Some(now);
            if self.is_real(f) {
                self.repair_times.push(now.since(SIM_EPOCH + Duration(self.faults[f as usize].start_ms)).0);
            }
        }
    }

    /// Carries out the engine's actions as the executors and people would.
    fn act(&mut self, actions: &[Action], now: Time) {
        for a in actions {
            let Some(&n) = self.index.get(a.node()) else { continue };
            match a {
                // The simulator has no pods to free: the out-of-service taint changes nothing here.
                Action::SetTaints { .. } | Action::SetOutOfService { .. } => {}
                Action::Execute { step, attempt, .. } => self.execute(n, *step, *attempt, now),
                Action::Notify { .. } => {
                    self.report.escalations_to_manual += 1;
                    let response = self.node_draws(n).map_or(0, |d| d.response_ms);
                    self.start_person(n, now, Duration(response));
                }
            }
        }
    }

    fn execute(&mut self, n: u32, step: RemediationStep, attempt: u32, now: Time) {
        let ni = n as usize;
        *self.report.remediations_by_step.entry(step.as_str().into()).or_default() += 1;
        let d = self.node_draws(n);
        let draw = |pick: fn(&FaultDraws) -> i64| Duration(d.as_ref().map_or(0, pick));
        let (lead, work) = match step {
            RemediationStep::Drain => (Duration::ZERO, self.cfg.drain_time),
            RemediationStep::Reboot => (Duration::ZERO, draw(|d| d.reboot_ms)),
            RemediationStep::Reimage => (Duration::ZERO, draw(|d| d.reimage_ms + d.reboot_ms)),
            RemediationStep::Replace => (draw(|d| d.replace_lead_ms), draw(|d| d.replace_ms)),
            _ => (Duration::ZERO, Duration::ZERO),
        };
        self.account(n, now);
        self.nodes[ni].executing = Some((attempt, step, step_fixes(step)));
        if step.is_repair() {
            self.nodes[ni].down_until = Some(now + lead + work);
            self.nodes[ni].gpu_probe = ProbeState::default();
            self.nodes[ni].net_probe = ProbeState::default();
            self.refresh(n, now);
        }
        self.account(n, now);
        self.push(now + lead + work, Ev::StepDone { node: n, attempt });
    }

    /// A person is asked to take node `n` over; they start work after `response`.
    fn start_person(&mut self, n: u32, now: Time, response: Duration) {
        let ni = n as usize;
        if self.nodes[ni].person {
            return;
        }
        self.nodes[ni].person = true;
        if response > Duration::ZERO {
            self.push(now + response, Ev::PersonArrives(n));
        } else {
            self.person_arrives(n, now);
        }
    }

    /// The person starts on the node: it is down from now on. A fault that needs a part waits for
    /// the replacement's lead time first, as when automation asks for the replacement.
    fn person_arrives(&mut self, n: u32, now: Time) {
        let ni = n as usize;
        let worst = self.nodes[ni].faults.iter().map(|f| self.faults[*f as usize].fix).max_by_key(|f| fix_rank(*f));
        let d = self.node_draws(n);
        let ms = |pick: fn(&FaultDraws) -> i64| Duration(d.as_ref().map_or(0, pick));
        let (lead, work) = match worst {
            Some(Fix::Replace) => (ms(|d| d.replace_lead_ms), ms(|d| d.replace_ms)),
            Some(Fix::Reimage) => (Duration::ZERO, ms(|d| d.reimage_ms)),
            Some(Fix::Reboot) => (Duration::ZERO, ms(|d| d.reboot_ms)),
            Some(Fix::SelfClears) | None => (Duration::ZERO, PERSON_LOOK_ONLY),
        };
        self.account(n, now);
        self.nodes[ni].down_until = Some(Time(i64::MAX));
        self.nodes[ni].person_working = true;
        self.account(n, now);
        self.push(now + lead + work, Ev::PersonDone(n));
    }
}

/// The faults of a run and its lemon nodes: what every policy simulated with `cfg` faces.
pub fn fault_plan(cfg: &SimConfig) -> (Vec<Fault>, Vec<u32>) {
    (generate(&cfg.model, &cfg.fleet, cfg.seed), lemon_nodes(&cfg.model, &cfg.fleet, cfg.seed))
}

/// Runs one policy over the configured fleet. `progress` receives the simulated fraction done.
pub fn simulate(cfg: &SimConfig, name: &str, policy: &Policy, progress: &mut dyn FnMut(f64)) -> Report {
    let (faults, lemons) = fault_plan(cfg);
    run_live(cfg, name, policy, faults, &lemons, progress)
}

/// Runs one policy against exactly these faults instead of the fault model's draw, with no lemon
/// nodes: scenarios whose figures can be worked out by hand (tests, what-ifs). The model still
/// supplies repair and response durations (make them fixed for exact figures) and probe sensitivity.
/// Faults on nodes outside the fleet are ignored.
pub fn simulate_faults(cfg: &SimConfig, name: &str, policy: &Policy, faults: &[Fault], progress: &mut dyn FnMut(f64)) -> Report {
    let faults = faults.iter().filter(|f| f.node < cfg.fleet.nodes).cloned().collect();
    run_live(cfg, name, policy, faults, &[], progress)
}

fn run_live(cfg: &SimConfig, name: &str, policy: &Policy, faults: Vec<Fault>, lemons: &[u32], progress: &mut dyn FnMut(f64)) -> Report {
    let mut policy = policy.clone();
    // The simulator measures what the policy would do if it acted.
    policy.monitor_only = false;
    Sim::new(cfg, &policy, name, faults, lemons).run(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::MS_PER_DAY;
    use nodemedic_core::presets;

    fn small(days: i64, seed: u64) -> SimConfig {
        SimConfig { fleet: FleetSpec { nodes: 256, gpus_per_node: 8, duration_ms: days * MS_PER_DAY }, seed, ..SimConfig::default() }
    }

    #[test]
    fn the_same_seed_reproduces_the_same_run() {
        let cfg = small(20, 7);
        let a = simulate(&cfg, "nodemedic", &presets::recommended(), &mut |_| {});
        let b = simulate(&cfg, "nodemedic", &presets::recommended(), &mut |_| {});
        assert_eq!(a, b);
        let c = simulate(&small(20, 8), "nodemedic", &presets::recommended(), &mut |_| {});
        assert_ne!(a.faults, c.faults, "another seed, another history");
    }

    #[test]
    fn the_recommended_policy_quarantines_faster_and_loses_less_than_the_ready_only_baseline() {
        let cfg = small(54, 11);
        let ours = simulate(&cfg, "nodemedic", &presets::recommended(), &mut |_| {});
        let nhc = simulate(&cfg, "seed004", &presets::seed004(), &mut |_| {});
        assert!(
            ours.time_to_quarantine.mean_minutes < nhc.time_to_quarantine.mean_minutes,
            "{:?} vs {:?}",
            ours.time_to_quarantine,
            nhc.time_to_quarantine
        );
        assert!(ours.gpu_hours_lost.faulty_node_serving < nhc.gpu_hours_lost.faulty_node_serving);
        assert!(ours.decisions > 0 && ours.remediations_by_step.contains_key("reboot"));
    }

    #[test]
    fn the_accounting_adds_up() {
        let r = simulate(&small(20, 5), "seed000", &presets::seed000(), &mut |_| {});
        let l = &r.gpu_hours_lost;
        let parts = l.faulty_node_serving + l.ineffective_repairs + l.healthy_nodes_disrupted + l.waiting;
        assert!((parts - l.policy_controlled).abs() < 1e-6);
        assert!((l.policy_controlled + l.effective_repair - l.total).abs() < 1e-6);
        assert!(r.fleet_share_lost > 0.0 && r.fleet_share_lost < 0.2);
        assert!(r.time_to_quarantine.p95_minutes >= r.time_to_quarantine.mean_minutes * 0.5);
    }

    #[test]
    fn a_trace_tells_the_ladder_with_reasons() {
        let cfg = SimConfig { trace: true, ..small(10, 2) };
        let r = simulate(&cfg, "nodemedic", &presets::recommended(), &mut |_| {});
        assert!(
            r.timeline.iter().any(|l| l.contains("RemediationStarted") && l.contains("rule `")),
            "{:?}",
            &r.timeline[..r.timeline.len().min(5)]
        );
        assert!(r.timeline.iter().any(|l| l.contains("StepStarted: step reboot")));
        let untraced = simulate(&small(10, 2), "nodemedic", &presets::recommended(), &mut |_| {});
        assert!(untraced.timeline.is_empty());
    }

    #[test]
    fn monitor_only_policies_are_simulated_as_if_live() {
        let cfg = small(10, 4);
        let mut p = presets::seed000();
        p.monitor_only = true;
        let r = simulate(&cfg, "seed000", &p, &mut |_| {});
        assert!(r.remediations_by_step.values().sum::<u64>() > 0);
    }
}
