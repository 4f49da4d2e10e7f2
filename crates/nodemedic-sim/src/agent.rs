//! What the simulated node agent, kubelet and node-problem-detector report: probe rounds, conditions
//! and the observation the engine reads, rebuilt from the simulated truth. The agent's side is the
//! production contract (nodemedic-core's `probe` module): each probe feeds the agent's threshold machine,
//! the machine's verdict is published as the family's condition (`GPUProblem`, `NetworkProblem`), and the
//! GPU probes run only when `probes_may_run` says so.

use crate::faults::{Fix, Symptom};
use crate::sim::{KUBELET_STATUS_REPORT, ProbeState, Sim};
use nodemedic_core::Duration;
use nodemedic_core::Time;
use nodemedic_core::class::FaultClass;
use nodemedic_core::observe::NodeCondition;
use nodemedic_core::policy::ConditionStatus;
use nodemedic_core::probe::{self, ProbeFamily, Published, RunOutcome};
use nodemedic_core::testkit::{self, set_condition};

/// The condition a node-problem-detector custom plugin running the DCGM health check sets.
pub const NPD_GPU_CONDITION: &str = "GpuUnhealthy";
/// The condition Cilium owns (seed 003's Cilium rule).
pub const CNI_CONDITION: &str = "NetworkUnavailable";

impl Sim<'_> {
    /// Whether the node's probes see a GPU and a network fault: only faults the probe can see
    /// (drawn per fault; silent data corruption never).
    pub(crate) fn truth(&self, n: u32) -> (bool, bool) {
        let mut gpu = false;
        let mut net = false;
        for f in &self.nodes[n as usize].faults {
            let visible = self.draws[*f as usize].probe_visible;
            match self.faults[*f as usize].symptom {
                Symptom::Gpu | Symptom::GpuCount if visible => gpu = true,
                Symptom::Network if visible => net = true,
                _ => {}
            }
        }
        (gpu, net)
    }

    /// The fault class the agent's catalog gives node `n`'s GPU failure: `replace` when a probe-visible GPU
    /// fault on it needs a part (the catalog's RMA codes: Xid 79 repeating, row-remap failure), else none
    /// (the ladder from its first rung). Generous to the catalog: every such fault is named right, and no
    /// other fault is named `replace` (see docs/fault-model.md).
    fn gpu_fault_class(&self, n: u32) -> Option<FaultClass> {
        let replace = self.nodes[n as usize].faults.iter().any(|f| {
            let fault = &self.faults[*f as usize];
            self.draws[*f as usize].probe_visible && fault.symptom == Symptom::Gpu && fault.fix == Fix::Replace
        });
        replace.then_some(FaultClass::Replace)
    }

    /// GPU probes run unless a repair or a drain is in progress; they run again while the repair is verified
    /// or a person's resolve is checked (the production rule, [`nodemedic_core::probe`]).
    pub(crate) fn gpu_probe_allowed(&self, n: u32) -> bool {
        let o = &self.obs[n as usize];
        let active = self.records.nodes.get(&o.name).and_then(|r| r.active.as_ref());
        let verifying = probe::verifying(active, o.operator_request.as_ref());
        let keys: Vec<&str> = o.taints.iter().map(|t| t.key.as_str()).collect();
        probe::probes_may_run(ProbeFamily::Gpu, &keys, &self.policy.taint_prefix, verifying)
    }

    /// Keeps reported evidence current before a decision: the agent probes every interval and the
    /// kubelet re-posts its conditions at least every five minutes (nodeStatusReportFrequency), even
    /// when nothing changes. Between decisions nothing reads them, so they are brought up to date
    /// here rather than on every tick; where the engine waits for fresh evidence and nothing else
    /// would wake it, the simulator schedules a decision at the next report (`Ev::Heartbeat`).
    pub(crate) fn touch_checks(&mut self, now: Time) {
        let iv = self.cfg.probe_interval.0.max(1);
        let report = KUBELET_STATUS_REPORT.0;
        for n in 0..self.obs.len() as u32 {
            let phase = self.probe_phase(n);
            let kubelet_up = self.nodes[n as usize].down_until.is_none();
            if kubelet_up && self.obs[n as usize].condition("Ready").is_some_and(|c| c.status == ConditionStatus::True) {
                let latest = Self::last_tick(phase, report, now);
                // The agent's own conditions beat with its probes, not with the kubelet.
                let kubelets = |c: &&mut NodeCondition| ProbeFamily::from_condition_type(&c.type_).is_none();
                for c in self.obs[n as usize].conditions.iter_mut().filter(kubelets) {
                    if c.last_heartbeat_time.is_none_or(|h| h < latest) {
                        c.last_heartbeat_time = Some(latest);
                    }
                }
            }
            if self.nodes[n as usize].down_until.is_some() {
                continue;
            }
            let gpu_allowed = self.gpu_probe_allowed(n);
            let latest = Self::last_tick(phase, iv, now);
            for (family, allowed) in [(ProbeFamily::Gpu, gpu_allowed), (ProbeFamily::Network, true)] {
                if allowed && self.agent_publishes(n, family) {
                    let o = &mut self.obs[n as usize];
                    if let Some(c) = o.conditions.iter_mut().find(|c| c.type_ == family.condition_type())
                        && c.last_heartbeat_time.is_none_or(|h| h < latest)
                    {
                        c.last_heartbeat_time = Some(latest);
                    }
                }
            }
        }
    }

    /// Whether node `n`'s agent writes `family`'s condition: a policy reads it, and the agent's machine has a
    /// verdict (after a restart nothing is written until the thresholds are met again).
    fn agent_publishes(&self, n: u32, family: ProbeFamily) -> bool {
        let (used, p) = match family {
            ProbeFamily::Gpu => (self.gpu_check_used, &self.nodes[n as usize].gpu_probe),
            _ => (self.net_check_used, &self.nodes[n as usize].net_probe),
        };
        used && p.machine.published() != Published::NotYetRun
    }

    /// The latest tick at or before `now` of a clock that ticks every `period` from `phase`.
    pub(crate) fn last_tick(phase: i64, period: i64, now: Time) -> Time {
        Time(phase + (now.0 - phase).div_euclid(period) * period)
    }

    pub(crate) fn probe_phase(&self, n: u32) -> i64 {
        (i64::from(n) * 7_919) % self.cfg.probe_interval.0.max(1)
    }

    pub(crate) fn next_tick(&self, n: u32, after: Time) -> Time {
        let iv = self.cfg.probe_interval.0.max(1);
        let phase = self.probe_phase(n);
        let k = (after.0 - phase).div_euclid(iv) + 1;
        Time(phase + k * iv)
    }

    /// The kubelet's next status report on node `n` after `after`.
    pub(crate) fn next_heartbeat(&self, n: u32, after: Time) -> Time {
        let report = KUBELET_STATUS_REPORT.0;
        Self::last_tick(self.probe_phase(n), report, after) + Duration(report)
    }

    pub(crate) fn ensure_ticking(&mut self, n: u32, now: Time) {
        let node = &mut self.nodes[n as usize];
        if node.down_until.is_some() || (node.gpu_probe.ticking && node.net_probe.ticking) {
            return;
        }
        let already = node.gpu_probe.ticking || node.net_probe.ticking;
        node.gpu_probe.ticking = true;
        node.net_probe.ticking = true;
        if !already {
            let t = self.next_tick(n, now);
            self.push(t, crate::sim::Ev::Tick(n));
        }
    }

    /// Rebuilds node `n`'s observation from the simulated truth.
    pub(crate) fn refresh(&mut self, n: u32, now: Time) {
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
        self.refresh_problem_conditions(n, now, !not_ready);
        self.publish_probe_conditions(n, now);
    }

    /// Conditions set by node-problem-detector (a DCGM health plugin) and by the CNI, from the
    /// agent's latest probe results; only when a simulated policy reads them. A node that is down
    /// reports nothing new, and after a restart a condition changes only once its check has run
    /// again: a reboot alone must not read as a passing health check.
    fn refresh_problem_conditions(&mut self, n: u32, now: Time, up: bool) {
        let ni = n as usize;
        if !up {
            return;
        }
        let (gpu, net) = (&self.nodes[ni].gpu_probe, &self.nodes[ni].net_probe);
        let (gpu_ran, net_ran) = (gpu.last_run.is_some(), net.last_run.is_some());
        let (gpu_bad, net_bad) = (gpu.bad, net.bad);
        let o = &mut self.obs[ni];
        if self.npd_gpu_used && gpu_ran {
            let (status, reason) =
                if gpu_bad { (ConditionStatus::True, "DcgmHealthFailed") } else { (ConditionStatus::False, "DcgmHealthy") };
            if o.condition(NPD_GPU_CONDITION).is_none_or(|c| c.status != status) {
                set_condition(o, NPD_GPU_CONDITION, status, reason, now);
            }
        }
        if self.cni_used && net_ran {
            let (status, reason) = if net_bad { (ConditionStatus::True, "CiliumIsDown") } else { (ConditionStatus::False, "CiliumIsUp") };
            if o.condition(CNI_CONDITION).is_none_or(|c| c.status != status) {
                set_condition(o, CNI_CONDITION, status, reason, now);
            }
        }
    }

    /// The agent's conditions, as it writes them after a probe round: the machine's verdict, the transition
    /// only when the status flips, the heartbeat at the latest run. A node that is down writes nothing.
    fn publish_probe_conditions(&mut self, n: u32, now: Time) {
        let ni = n as usize;
        if self.nodes[ni].down_until.is_some() {
            return;
        }
        let gpu_allowed = self.gpu_probe_allowed(n);
        let gpu_class = self.gpu_fault_class(n);
        let (phase, iv) = (self.probe_phase(n), self.cfg.probe_interval.0.max(1));
        for (family, allowed) in [(ProbeFamily::Gpu, gpu_allowed), (ProbeFamily::Network, true)] {
            if !self.agent_publishes(n, family) {
                continue;
            }
            let p = if family == ProbeFamily::Gpu { &self.nodes[ni].gpu_probe } else { &self.nodes[ni].net_probe };
            let (published, Some(last)) = (p.machine.published(), p.last_run) else { continue };
            // Between state changes the agent keeps probing; its last run is the latest tick.
            let last_run = if allowed { Self::last_tick(phase, iv, now).max(last) } else { last };
            let o = &mut self.obs[ni];
            let unchanged = o.condition(family.condition_type()).map(|c| c.status) == published.condition_status();
            if unchanged && !allowed {
                continue;
            }
            testkit::publish_with_class(o, family.check_name(), published, last, if family == ProbeFamily::Gpu { gpu_class } else { None });
            if let Some(c) = o.conditions.iter_mut().find(|c| c.type_ == family.condition_type()) {
                c.last_heartbeat_time = Some(last_run);
            }
        }
    }

    /// One agent probe round on node `n`. Returns whether the engine should look.
    pub(crate) fn tick(&mut self, n: u32, now: Time) -> bool {
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
        for (which, bad, allowed) in [(0, gpu_bad, gpu_allowed), (1, net_bad, true)] {
            if !allowed {
                continue;
            }
            let p: &mut ProbeState = if which == 0 { &mut self.nodes[ni].gpu_probe } else { &mut self.nodes[ni].net_probe };
            let first = p.last_run.is_none();
            p.last_run = Some(now);
            p.bad = bad;
            let changed = p.machine.record(if bad { RunOutcome::Failed } else { RunOutcome::Passed }, now);
            // A first result after a (re)start, or a new verdict, is news to the engine.
            interesting |= first || changed;
            keep |= !p.machine.settled() || bad;
        }
        // Keep ticking while a count still matters; a steady state needs no further rounds.
        let steady = !keep || (!gpu_allowed && !net_bad && !gpu_bad);
        if steady {
            self.nodes[ni].gpu_probe.ticking = false;
            self.nodes[ni].net_probe.ticking = false;
        } else {
            let t = self.next_tick(n, now);
            self.push(t, crate::sim::Ev::Tick(n));
        }
        interesting
    }
}
