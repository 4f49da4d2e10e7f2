//! The discrete-event fleet simulation: faults from the fault model, a node agent that probes every
//! `probe_interval`, an executor that reboots, reimages and replaces, people who answer escalations,
//! and nodemedic-core's engine deciding in between — the same engine the controller runs.
//!
//! Time advances from event to event; the engine is consulted whenever something it can see changed
//! or when it asked to be woken, never on a fixed tick, so a 54-day run of 2,048 nodes takes seconds.

use crate::faults::{Fault, FaultModel, Fix, FleetSpec, NodeClass, RepairKind, Symptom, generate, lemon_nodes};
use nodemedic_core::engine::{Action, EventKind, Gate};
use nodemedic_core::observe::{CheckObservation, NodeObservation, OperatorAction, OperatorRequest, ReportedOutcome, StepReport};
use nodemedic_core::policy::ConditionStatus;
use nodemedic_core::record::{Records, Stage};
use nodemedic_core::testkit::set_condition;
use nodemedic_core::{Duration, Policy, RemediationStep, Time, apply, decide};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// The kubelet re-posts node status at least this often.
pub const KUBELET_STATUS_REPORT: Duration = Duration::from_mins(5);

/// Simulated wall-clock origin: 2026-01-05T00:00:00Z (a Monday), so maintenance windows line up.
pub const SIM_EPOCH: Time = Time(1_767_571_200_000);

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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub mean_minutes: f64,
    pub p95_minutes: f64,
}

impl Stats {
    fn from_millis(mut v: Vec<i64>) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_unstable();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let idx = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
        Stats { count: v.len() as u64, mean_minutes: mean / 60_000.0, p95_minutes: v[idx] as f64 / 60_000.0 }
    }
}

/// Capacity lost, in GPU-hours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityLost {
    /// A faulty node still taking work: fault → quarantine. Policy-controlled.
    pub faulty_node_serving: f64,
    /// Out of service in repair steps that did not fix the fault. Policy-controlled.
    pub ineffective_repairs: f64,
    /// Healthy nodes (false positives, flaps) out of service. Policy-controlled.
    pub healthy_nodes_disrupted: f64,
    /// Cordoned and waiting: gates, settling, verification, a person's response. Policy-controlled.
    pub waiting: f64,
    /// The inherent duration of the repair that finally worked.
    pub effective_repair: f64,
    pub total: f64,
    pub policy_controlled: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Real faults (hardware or software), excluding false positives and flaps.
    pub real: u64,
    pub false_positives: u64,
    pub network_flaps: u64,
    /// Real faults the policy never acted on; people found them.
    pub found_by_people: u64,
    /// Real faults still active when the run ended.
    pub unresolved_at_end: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub policy: String,
    pub nodes: u32,
    pub gpus_per_node: u8,
    pub days: f64,
    pub seed: u64,
    pub faults: FaultCounts,
    pub gpu_hours_lost: CapacityLost,
    /// Share of the fleet's GPU-hours lost.
    pub fleet_share_lost: f64,
    pub time_to_quarantine: Stats,
    pub time_to_repair: Stats,
    pub remediations_by_step: BTreeMap<String, u64>,
    pub escalations_to_manual: u64,
    /// Times a node was held back, by gate (counted when a hold begins).
    pub gate_holds: BTreeMap<String, u64>,
    pub decisions: u64,
    /// The engine's events with their reasons, when tracing: "time node kind: message".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    FaultStart(u32),
    FaultClear(u32),
    Tick(u32),
    StepDone { node: u32, attempt: u32 },
    PersonDone(u32),
    PersonNotices(u32),
    Wake,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bucket {
    Fine,
    FaultyServing,
    Ineffective,
    Healthy,
    Waiting,
    Effective,
}

#[derive(Default, Clone)]
struct ProbeState {
    bad: bool,
    count: u32,
    failing_since: Option<Time>,
    last_run: Option<Time>,
    ticking: bool,
}

#[derive(Default, Clone)]
struct SimNode {
    faults: Vec<u32>,
    down_until: Option<Time>,
    /// Step being executed: (attempt, step, fixes up to).
    executing: Option<(u32, RemediationStep, Option<Fix>)>,
    /// A person is working on it (escalation or found by hand).
    person: bool,
    person_cordon: bool,
    gpu_probe: ProbeState,
    net_probe: ProbeState,
    bucket: Option<Bucket>,
    bucket_since: Time,
    replaced_lemon: bool,
    held: Option<Gate>,
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

struct Sim<'a> {
    cfg: &'a SimConfig,
    policy: &'a Policy,
    faults: Vec<Fault>,
    fstate: Vec<FaultState>,
    nodes: Vec<SimNode>,
    obs: Vec<NodeObservation>,
    index: HashMap<String, u32>,
    records: Records,
    queue: BinaryHeap<Reverse<(Time, u64, Ev)>>,
    seq: u64,
    rng: ChaCha8Rng,
    lemons: Vec<bool>,
    class: NodeClass,
    gpu_check_used: bool,
    net_check_used: bool,
    gpu_thresholds: Vec<u32>,
    net_thresholds: Vec<u32>,
    acc: [f64; 6],
    report: Report,
    quarantine_times: Vec<i64>,
    repair_times: Vec<i64>,
    pending_wake: Option<Time>,
}

fn node_name(i: u32) -> String {
    format!("gpu-{i:05}")
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
        let gpus = i64::from(cfg.fleet.gpus_per_node);
        let obs: Vec<NodeObservation> = (0..cfg.fleet.nodes)
            .map(|i| {
                let mut n = if gpus > 0 {
                    nodemedic_core::testkit::gpu_node(&node_name(i), &format!("pool-{}", i / 64), gpus, SIM_EPOCH)
                } else {
                    nodemedic_core::testkit::node(&node_name(i), &format!("pool-{}", i / 64), SIM_EPOCH)
                };
                n.labels.insert("node-role.kubernetes.io/worker".into(), String::new());
                n
            })
            .collect();
        let index = obs.iter().enumerate().map(|(i, n)| (n.name.clone(), i as u32)).collect();
        let thresholds = |check: &str| -> Vec<u32> {
            policy.rules.iter().filter_map(|r| r.check.as_ref()).filter(|c| c.name == check).flat_map(|c| [c.failures, c.passes]).collect()
        };
        let gpu_thresholds = thresholds("gpu");
        let net_thresholds = thresholds("network");
        let fstate = faults.iter().map(|_| FaultState { quarantined_at: None, cleared_at: None }).collect();
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
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_51de),
            lemons,
            class: cfg.fleet.node_class(),
            gpu_check_used: !gpu_thresholds.is_empty(),
            net_check_used: !net_thresholds.is_empty(),
            gpu_thresholds,
            net_thresholds,
            acc: [0.0; 6],
            report: Report {
                policy: name.into(),
                nodes: cfg.fleet.nodes,
                gpus_per_node: cfg.fleet.gpus_per_node,
                days: cfg.fleet.duration_days(),
                seed: cfg.seed,
                ..Default::default()
            },
            quarantine_times: Vec::new(),
            repair_times: Vec::new(),
            pending_wake: None,
            faults,
        };
        for i in 0..sim.faults.len() {
            let f = &sim.faults[i];
            let t = SIM_EPOCH + Duration(f.start_ms);
            sim.push(t, Ev::FaultStart(i as u32));
        }
        sim
    }

    fn push(&mut self, t: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn end(&self) -> Time {
        SIM_EPOCH + Duration(self.cfg.fleet.duration_ms)
    }

    fn is_real(&self, f: u32) -> bool {
        let f = &self.faults[f as usize];
        !f.false_positive && f.cause != crate::faults::Cause::NetworkFlap
    }

    fn tainted(&self, n: u32) -> bool {
        let node = &self.nodes[n as usize];
        node.person_cordon || !self.obs[n as usize].taints.is_empty()
    }

    fn bucket_of(&self, n: u32) -> Bucket {
        let node = &self.nodes[n as usize];
        let real: Vec<u32> = node.faults.iter().copied().filter(|f| self.is_real(*f)).collect();
        let out = self.tainted(n) || node.down_until.is_some();
        match (real.is_empty(), out) {
            (true, false) => Bucket::Fine,
            (true, true) => Bucket::Healthy,
            (false, false) => Bucket::FaultyServing,
            (false, true) => match node.executing {
                Some((_, _, Some(fix))) => {
                    if real.iter().all(|f| fix_rank(self.faults[*f as usize].fix) <= fix_rank(fix)) {
                        Bucket::Effective
                    } else {
                        Bucket::Ineffective
                    }
                }
                _ if node.person && node.down_until.is_some() => Bucket::Effective,
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
            let faults = self.nodes[n as usize].faults.clone();
            for f in faults {
                let start = SIM_EPOCH + Duration(self.faults[f as usize].start_ms);
                if self.is_real(f) && self.fstate[f as usize].quarantined_at.is_none() {
                    self.fstate[f as usize].quarantined_at = Some(now);
                    self.quarantine_times.push(now.since(start).0);
                }
            }
        }
    }

    fn truth(&self, n: u32) -> (bool, bool) {
        let node = &self.nodes[n as usize];
        let mut gpu = false;
        let mut net = false;
        for f in &node.faults {
            match self.faults[*f as usize].symptom {
                Symptom::Gpu | Symptom::GpuCount => gpu = true,
                Symptom::Network => net = true,
                _ => {}
            }
        }
        (gpu, net)
    }

    /// GPU probes run unless a repair is in progress; they run again while the repair is verified.
    fn gpu_probe_allowed(&self, n: u32) -> bool {
        let o = &self.obs[n as usize];
        let verifying = self.records.nodes.get(&o.name).and_then(|r| r.active.as_ref()).is_some_and(|a| {
            matches!(a.stage, Stage::Verifying { .. }) || (a.step == RemediationStep::Manual && o.operator_request.is_some())
        });
        let keys: Vec<&str> = o.taints.iter().map(|t| t.key.as_str()).collect();
        nodemedic_core::probe_may_run(nodemedic_core::ProbeFamily::Gpu, &keys, &self.policy.taint_prefix, verifying)
    }

    /// Keeps reported evidence current: the agent probes every interval and the kubelet re-posts its
    /// conditions at least every five minutes (nodeStatusReportFrequency), even when nothing changes.
    fn touch_checks(&mut self, now: Time) {
        let iv = self.cfg.probe_interval.0.max(1);
        let report = KUBELET_STATUS_REPORT.0;
        for n in 0..self.obs.len() as u32 {
            let phase = self.probe_phase(n);
            let kubelet_up = self.nodes[n as usize].down_until.is_none();
            if kubelet_up && self.obs[n as usize].condition("Ready").is_some_and(|c| c.status == ConditionStatus::True) {
                let latest = Self::last_tick(phase, report, now);
                for c in self.obs[n as usize].conditions.iter_mut() {
                    if c.last_heartbeat_time.is_none_or(|h| h < latest) {
                        c.last_heartbeat_time = Some(latest);
                    }
                }
            }
            if self.obs[n as usize].checks.is_empty() || self.nodes[n as usize].down_until.is_some() {
                continue;
            }
            let gpu_allowed = self.gpu_probe_allowed(n);
            let latest = Self::last_tick(phase, iv, now);
            for c in self.obs[n as usize].checks.iter_mut() {
                if (c.name != "gpu" || gpu_allowed) && latest > c.last_run {
                    c.last_run = latest;
                }
            }
        }
    }

    /// The latest tick at or before `now` of a clock that ticks every `period` from `phase`.
    fn last_tick(phase: i64, period: i64, now: Time) -> Time {
        Time(phase + (now.0 - phase).div_euclid(period) * period)
    }

    fn probe_phase(&self, n: u32) -> i64 {
        (i64::from(n) * 7_919) % self.cfg.probe_interval.0.max(1)
    }

    fn next_tick(&self, n: u32, after: Time) -> Time {
        let iv = self.cfg.probe_interval.0.max(1);
        let phase = self.probe_phase(n);
        let k = (after.0 - phase).div_euclid(iv) + 1;
        Time(phase + k * iv)
    }

    fn ensure_ticking(&mut self, n: u32, now: Time) {
        let node = &mut self.nodes[n as usize];
        if node.down_until.is_some() || (node.gpu_probe.ticking && node.net_probe.ticking) {
            return;
        }
        let already = node.gpu_probe.ticking || node.net_probe.ticking;
        node.gpu_probe.ticking = true;
        node.net_probe.ticking = true;
        if !already {
            let t = self.next_tick(n, now);
            self.push(t, Ev::Tick(n));
        }
    }

    /// Rebuilds node `n`'s observation from the simulated truth.
    fn refresh(&mut self, n: u32, now: Time) {
        let ni = n as usize;
        let gpus = i64::from(self.cfg.fleet.gpus_per_node);
        let mut not_ready = self.nodes[ni].down_until.is_some();
        let mut disk = false;
        let mut lost_gpus = 0;
        for f in &self.nodes[ni].faults {
            match self.faults[*f as usize].symptom {
                Symptom::NodeNotReady => not_ready = true,
                Symptom::Disk => disk = true,
                Symptom::GpuCount => lost_gpus += 1,
                _ => {}
            }
        }
        let o = &mut self.obs[ni];
        if gpus > 0 {
            o.allocatable.insert("nvidia.com/gpu".into(), (gpus - lost_gpus).max(0));
        }
        let ready_now = o.condition("Ready").map(|c| c.status);
        if not_ready && ready_now == Some(ConditionStatus::True) {
            // The node lifecycle controller marks it Unknown; the heartbeat stops.
            if let Some(c) = o.conditions.iter_mut().find(|c| c.type_ == "Ready") {
                c.status = ConditionStatus::Unknown;
                c.reason = "NodeStatusUnknown".into();
                c.last_transition_time = now;
            }
        } else if !not_ready && ready_now != Some(ConditionStatus::True) {
            set_condition(o, "Ready", ConditionStatus::True, "KubeletReady", now);
        }
        let disk_now = o.condition("DiskPressure").is_some_and(|c| c.status == ConditionStatus::True);
        if disk != disk_now {
            set_condition(o, "DiskPressure", if disk { ConditionStatus::True } else { ConditionStatus::False }, "KubeletDiskPressure", now);
        }
        let up = self.nodes[ni].down_until.is_none();
        let gpu_allowed = self.gpu_probe_allowed(n);
        let (phase, iv) = (self.probe_phase(n), self.cfg.probe_interval.0.max(1));
        let o = &mut self.obs[ni];
        o.checks.clear();
        for (name, used, p) in
            [("gpu", self.gpu_check_used, &self.nodes[ni].gpu_probe), ("network", self.net_check_used, &self.nodes[ni].net_probe)]
        {
            let Some(last) = p.last_run else { continue };
            if !used {
                continue;
            }
            // Between state changes the agent keeps probing; its last run is the latest tick.
            let paused = name == "gpu" && !gpu_allowed;
            let last_run = if up && !paused { Self::last_tick(phase, iv, now).max(last) } else { last };
            o.checks.push(CheckObservation {
                name: name.into(),
                consecutive_failures: if p.bad { p.count } else { 0 },
                consecutive_passes: if p.bad { 0 } else { p.count },
                last_run,
                failing_since: p.failing_since,
                message: String::new(),
            });
        }
    }

    /// One agent probe round on node `n`. Returns whether the engine should look.
    fn tick(&mut self, n: u32, now: Time) -> bool {
        let ni = n as usize;
        if self.nodes[ni].down_until.is_some() {
            self.nodes[ni].gpu_probe.ticking = false;
            self.nodes[ni].net_probe.ticking = false;
            return false;
        }
        let (gpu_bad, net_bad) = self.truth(n);
        let gpu_allowed = self.gpu_probe_allowed(n);
        let mut interesting = false;
        let mut keep = false;
        for (which, bad, allowed, thresholds) in
            [(0, gpu_bad, gpu_allowed, self.gpu_thresholds.clone()), (1, net_bad, true, self.net_thresholds.clone())]
        {
            let p = if which == 0 { &mut self.nodes[ni].gpu_probe } else { &mut self.nodes[ni].net_probe };
            if !allowed {
                continue;
            }
            let cap = thresholds.iter().copied().max().unwrap_or(1);
            let first = p.last_run.is_none();
            p.last_run = Some(now);
            if first || p.bad != bad {
                p.bad = bad;
                p.count = 1;
                p.failing_since = bad.then_some(now);
                // A first result after a (re)start is news to the engine.
                interesting = true;
            } else if p.count < cap {
                p.count += 1;
                interesting |= thresholds.contains(&p.count);
            }
            keep |= p.count < cap || bad;
        }
        // Keep ticking while a count still matters; a steady state needs no further rounds.
        let (gpu_bad2, _) = (gpu_bad, net_bad);
        let steady = !keep || (!gpu_allowed && !net_bad && !gpu_bad2);
        if steady {
            self.nodes[ni].gpu_probe.ticking = false;
            self.nodes[ni].net_probe.ticking = false;
        } else {
            let t = self.next_tick(n, now);
            self.push(t, Ev::Tick(n));
        }
        interesting
    }

    fn sample(&mut self, kind: RepairKind) -> Duration {
        Duration(self.cfg.model.repair.sample(kind, self.class, &mut self.rng))
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
            let ni = n as usize;
            match a {
                Action::SetTaints { .. } => {}
                Action::Execute { step, attempt, .. } => {
                    *self.report.remediations_by_step.entry(step.as_str().into()).or_default() += 1;
                    let dur = match step {
                        RemediationStep::Drain => self.cfg.drain_time,
                        RemediationStep::Reboot => self.sample(RepairKind::Reboot),
                        RemediationStep::Reimage => self.sample(RepairKind::Reimage) + self.sample(RepairKind::Reboot),
                        RemediationStep::Replace => self.sample(RepairKind::Replace),
                        _ => Duration::ZERO,
                    };
                    self.account(n, now);
                    self.nodes[ni].executing = Some((*attempt, *step, step_fixes(*step)));
                    if step.is_repair() {
                        self.nodes[ni].down_until = Some(now + dur);
                        self.nodes[ni].gpu_probe = ProbeState::default();
                        self.nodes[ni].net_probe = ProbeState::default();
                        self.refresh(n, now);
                    }
                    self.account(n, now);
                    self.push(now + dur, Ev::StepDone { node: n, attempt: *attempt });
                }
                Action::Notify { .. } => {
                    self.report.escalations_to_manual += 1;
                    self.start_person(n, now);
                }
            }
        }
    }

    fn start_person(&mut self, n: u32, now: Time) {
        let ni = n as usize;
        if self.nodes[ni].person {
            return;
        }
        self.nodes[ni].person = true;
        let respond = self.sample(RepairKind::Manual);
        let worst = self.nodes[ni].faults.iter().map(|f| self.faults[*f as usize].fix).max_by_key(|f| fix_rank(*f));
        let work = match worst.and_then(RepairKind::for_fix) {
            Some(kind) => self.sample(kind),
            None => Duration::from_mins(15),
        };
        self.push(now + respond, Ev::PersonNotices(n));
        self.push(now + respond + work, Ev::PersonDone(n));
    }

    fn run(mut self, progress: &mut dyn FnMut(f64)) -> Report {
        let end = self.end();
        let total = (end.0 - SIM_EPOCH.0).max(1) as f64;
        let mut last_progress = 0.0;
        while let Some(Reverse((now, _, _))) = self.queue.peek().copied() {
            if now > end {
                break;
            }
            let mut dirty = false;
            let mut woke = false;
            while let Some(Reverse((t, _, ev))) = self.queue.peek().copied() {
                if t != now {
                    break;
                }
                self.queue.pop();
                match ev {
                    Ev::Wake => {
                        if self.pending_wake == Some(now) {
                            self.pending_wake = None;
                        }
                        woke = true;
                    }
                    other => dirty |= self.handle(other, now),
                }
            }
            if dirty || woke {
                self.decide_at(now);
            }
            let frac = (now.0 - SIM_EPOCH.0) as f64 / total;
            if frac - last_progress > 0.01 {
                last_progress = frac;
                progress(frac);
            }
        }
        progress(1.0);
        self.finish(end)
    }

    fn handle(&mut self, ev: Ev, now: Time) -> bool {
        match ev {
            Ev::FaultStart(f) => {
                let fault = &self.faults[f as usize];
                let n = fault.node;
                let ni = n as usize;
                if self.nodes[ni].replaced_lemon && self.rng.random::<f64>() < 0.9 {
                    // The replaced machine no longer carries the lemon's defect.
                    self.fstate[f as usize].cleared_at = Some(now);
                    return false;
                }
                match (fault.false_positive, fault.cause) {
                    (true, _) => self.report.faults.false_positives += 1,
                    (_, crate::faults::Cause::NetworkFlap) => self.report.faults.network_flaps += 1,
                    _ => self.report.faults.real += 1,
                }
                let clear = fault.self_clear_after_ms;
                let real = self.is_real(f);
                self.account(n, now);
                self.nodes[ni].faults.push(f);
                self.account(n, now);
                if let Some(ms) = clear {
                    self.push(now + Duration(ms), Ev::FaultClear(f));
                }
                if real {
                    // People find what automation does not act on, in their own time.
                    let notice = self.sample(RepairKind::Manual);
                    self.push(now + notice, Ev::PersonNotices(n | 0x8000_0000));
                }
                self.ensure_ticking(n, now);
                self.refresh(n, now);
                true
            }
            Ev::FaultClear(f) => {
                let n = self.faults[f as usize].node;
                let ni = n as usize;
                if let Some(pos) = self.nodes[ni].faults.iter().position(|x| *x == f) {
                    self.account(n, now);
                    self.nodes[ni].faults.remove(pos);
                    self.fault_cleared(f, now);
                    self.account(n, now);
                    self.ensure_ticking(n, now);
                    self.refresh(n, now);
                    return true;
                }
                false
            }
            Ev::Tick(n) => {
                let interesting = self.tick(n, now);
                if interesting {
                    self.refresh(n, now);
                }
                interesting
            }
            Ev::StepDone { node: n, attempt } => {
                let ni = n as usize;
                let Some((a, step, fixes)) = self.nodes[ni].executing else { return false };
                if a != attempt {
                    return false;
                }
                self.account(n, now);
                if let Some(fix) = fixes {
                    self.clear_faults(n, fix, now);
                }
                self.nodes[ni].executing = None;
                self.nodes[ni].down_until = None;
                self.account(n, now);
                let o = &mut self.obs[ni];
                o.step_report = Some(StepReport { attempt, outcome: ReportedOutcome::Succeeded, at: now, message: format!("{step} done") });
                self.refresh(n, now);
                self.ensure_ticking(n, now);
                true
            }
            Ev::PersonNotices(raw) => {
                let by_hand = raw & 0x8000_0000 != 0;
                let n = raw & 0x7fff_ffff;
                let ni = n as usize;
                if by_hand {
                    // Only if automation is not on it and something real is still wrong.
                    let real = self.nodes[ni].faults.iter().any(|f| self.is_real(*f));
                    let automated = self.records.nodes.get(&self.obs[ni].name).is_some_and(|r| r.active.is_some());
                    // A soft taint (slow-network) alerts nobody, so people still find those in their own time.
                    if real && !automated && !self.nodes[ni].person && !self.nodes[ni].person_cordon {
                        self.report.faults.found_by_people += 1;
                        self.account(n, now);
                        self.nodes[ni].person_cordon = true;
                        self.account(n, now);
                        self.start_person(n, now);
                    }
                    return false;
                }
                // The escalated person starts the hands-on work: the node is down meanwhile.
                self.account(n, now);
                self.nodes[ni].down_until = Some(Time(i64::MAX));
                self.account(n, now);
                false
            }
            Ev::PersonDone(n) => {
                let ni = n as usize;
                if !self.nodes[ni].person {
                    return false;
                }
                self.account(n, now);
                self.clear_faults(n, Fix::Replace, now);
                self.nodes[ni].person = false;
                self.nodes[ni].person_cordon = false;
                self.nodes[ni].down_until = None;
                self.nodes[ni].gpu_probe = ProbeState::default();
                self.nodes[ni].net_probe = ProbeState::default();
                self.account(n, now);
                self.obs[ni].operator_request = Some(OperatorRequest { action: OperatorAction::Resolve, by: "oncall".into(), at: now });
                self.refresh(n, now);
                self.ensure_ticking(n, now);
                true
            }
            Ev::Wake => false,
        }
    }

    fn decide_at(&mut self, now: Time) {
        self.touch_checks(now);
        let d = decide(self.policy, &self.obs, &self.records, now);
        self.report.decisions += 1;
        let before: Vec<(u32, bool)> = d
            .actions
            .iter()
            .filter_map(
                |a| if let Action::SetTaints { node, .. } = a { self.index.get(node).map(|n| (*n, self.tainted(*n))) } else { None },
            )
            .collect();
        for (n, _) in &before {
            self.account(*n, now);
        }
        apply(&d, &mut self.obs, &mut self.records);
        for (n, _) in &before {
            self.account(*n, now);
            self.refresh(*n, now);
            self.ensure_ticking(*n, now);
        }
        // Holds: count when a node starts being held by a gate.
        let mut held_now: HashMap<u32, Gate> = HashMap::new();
        for h in &d.holds {
            if let Some(&n) = self.index.get(&h.node) {
                held_now.insert(n, h.gate);
            }
        }
        for (n, g) in &held_now {
            if self.nodes[*n as usize].held != Some(*g) {
                *self.report.gate_holds.entry(g.as_str().into()).or_default() += 1;
            }
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.held.is_some() || held_now.contains_key(&(i as u32)) {
                node.held = held_now.get(&(i as u32)).copied();
            }
        }
        if self.cfg.trace {
            for e in &d.events {
                self.report.timeline.push(format!("{now} {} {:?}: {}", e.node.as_deref().unwrap_or("-"), e.kind, e.message));
            }
        }
        for e in &d.events {
            if e.kind == EventKind::Recovered
                && let Some(&n) = e.node.as_ref().and_then(|x| self.index.get(x))
            {
                self.obs[n as usize].operator_request = None;
            }
        }
        // The agent re-runs its checks once a repair is being verified.
        for c in &d.record_changes {
            if let nodemedic_core::RecordChange::Upsert(r) = c
                && r.active.as_ref().is_some_and(|a| matches!(a.stage, Stage::Verifying { .. }))
                && let Some(&n) = self.index.get(&r.node)
            {
                self.ensure_ticking(n, now);
            }
        }
        self.act(&d.actions, now);
        if let Some(w) = d.next_wakeup
            && w > now
            && self.pending_wake.is_none_or(|p| w < p)
        {
            self.pending_wake = Some(w);
            self.push(w, Ev::Wake);
        }
    }

    fn finish(mut self, end: Time) -> Report {
        for n in 0..self.nodes.len() as u32 {
            self.account(n, end);
        }
        let gpus = f64::from(self.cfg.fleet.gpus_per_node.max(1));
        let a = self.acc;
        let lost = &mut self.report.gpu_hours_lost;
        lost.faulty_node_serving = a[Bucket::FaultyServing as usize] * gpus;
        lost.ineffective_repairs = a[Bucket::Ineffective as usize] * gpus;
        lost.healthy_nodes_disrupted = a[Bucket::Healthy as usize] * gpus;
        lost.waiting = a[Bucket::Waiting as usize] * gpus;
        lost.effective_repair = a[Bucket::Effective as usize] * gpus;
        lost.policy_controlled = lost.faulty_node_serving + lost.ineffective_repairs + lost.healthy_nodes_disrupted + lost.waiting;
        lost.total = lost.policy_controlled + lost.effective_repair;
        let fleet_gpu_hours = f64::from(self.cfg.fleet.nodes) * gpus * self.cfg.fleet.duration_ms as f64 / 3_600_000.0;
        self.report.fleet_share_lost = if fleet_gpu_hours > 0.0 { lost.total / fleet_gpu_hours } else { 0.0 };
        self.report.time_to_quarantine = Stats::from_millis(std::mem::take(&mut self.quarantine_times));
        self.report.time_to_repair = Stats::from_millis(std::mem::take(&mut self.repair_times));
        self.report.faults.unresolved_at_end = self
            .fstate
            .iter()
            .enumerate()
            .filter(|(i, s)| s.cleared_at.is_none() && self.is_real(*i as u32) && self.faults[*i].start_ms <= self.cfg.fleet.duration_ms)
            .count() as u64;
        self.report
    }
}

/// Runs one policy over the configured fleet. `progress` receives the simulated fraction done.
pub fn simulate(cfg: &SimConfig, name: &str, policy: &Policy, progress: &mut dyn FnMut(f64)) -> Report {
    let faults = generate(&cfg.model, &cfg.fleet, cfg.seed);
    let lemons = lemon_nodes(&cfg.model, &cfg.fleet, cfg.seed);
    run_live(cfg, name, policy, faults, &lemons, progress)
}

/// Runs one policy against exactly these faults instead of the fault model's draw, with no lemon
/// nodes: scenarios whose figures can be worked out by hand (tests, what-ifs). The model still
/// supplies repair and response durations (make them fixed for exact figures). Faults on nodes outside
/// the fleet are ignored.
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
    fn compared_policies_face_the_same_faults() {
        let cfg = small(30, 3);
        let reports: Vec<Report> = presets::all().iter().map(|(n, p)| simulate(&cfg, n, p, &mut |_| {})).collect();
        for r in &reports[1..] {
            assert_eq!(
                (r.faults.real, r.faults.false_positives, r.faults.network_flaps),
                (reports[0].faults.real, reports[0].faults.false_positives, reports[0].faults.network_flaps)
            );
        }
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
        assert!(ours.gpu_hours_lost.policy_controlled < nhc.gpu_hours_lost.policy_controlled);
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
    fn stats_report_the_mean_and_the_nearest_rank_95th_percentile_in_minutes() {
        let minutes = |m: i64| m * 60_000;
        let s = Stats::from_millis((1..=100).rev().map(minutes).collect());
        assert_eq!(s, Stats { count: 100, mean_minutes: 50.5, p95_minutes: 95.0 });
        let s = Stats::from_millis(vec![minutes(1), minutes(2), minutes(30)]);
        assert_eq!(s, Stats { count: 3, mean_minutes: 11.0, p95_minutes: 30.0 }, "p95 of a few values is the largest");
        assert_eq!(Stats::from_millis(Vec::new()), Stats::default(), "nothing measured reads as zero");
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
