//! The event loop of one run: what each event does to the fleet, when the engine decides, and the
//! report at the end.

use super::*;

impl Sim<'_> {
    pub(super) fn run(mut self, progress: &mut dyn FnMut(f64)) -> Report {
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

    pub(super) fn handle(&mut self, ev: Ev, now: Time) -> bool {
        match ev {
            Ev::FaultStart(f) => self.fault_starts(f, now),
            Ev::FaultClear(f) => {
                let n = self.faults[f as usize].node;
                let ni = n as usize;
                let Some(pos) = self.nodes[ni].faults.iter().position(|x| *x == f) else { return false };
                self.account(n, now);
                self.nodes[ni].faults.remove(pos);
                self.fault_cleared(f, now);
                self.account(n, now);
                self.ensure_ticking(n, now);
                self.refresh(n, now);
                true
            }
            Ev::Tick(n) => {
                let interesting = self.tick(n, now);
                if interesting {
                    self.refresh(n, now);
                }
                interesting
            }
            Ev::Heartbeat(n) => {
                let node = &mut self.nodes[n as usize];
                if node.heartbeat_due == Some(now) {
                    node.heartbeat_due = None;
                }
                node.down_until.is_none()
            }
            Ev::StepDone { node: n, attempt } => self.step_done(n, attempt, now),
            Ev::PersonFinds(f) => {
                let n = self.faults[f as usize].node;
                let ni = n as usize;
                // Only if the fault is still there and neither automation nor a person is on it.
                let active = self.nodes[ni].faults.contains(&f);
                let automated = self.records.nodes.get(&self.obs[ni].name).is_some_and(|r| r.active.is_some());
                // A soft taint (slow-network) alerts nobody, so people still find those in their own time.
                if active && !automated && !self.nodes[ni].person && !self.nodes[ni].person_cordon {
                    self.report.faults.found_by_people += 1;
                    self.account(n, now);
                    self.nodes[ni].person_cordon = true;
                    self.account(n, now);
                    // Finding it is the response: work starts at once, with no second draw.
                    self.start_person(n, now, Duration::ZERO);
                }
                false
            }
            Ev::PersonArrives(n) => {
                if self.nodes[n as usize].person && !self.nodes[n as usize].person_working {
                    self.person_arrives(n, now);
                }
                false
            }
            Ev::PersonDone(n) => self.person_done(n, now),
            Ev::Wake => false,
        }
    }

    pub(super) fn fault_starts(&mut self, f: u32, now: Time) -> bool {
        let fault = &self.faults[f as usize];
        let (n, false_positive, cause, clear) = (fault.node, fault.false_positive, fault.cause, fault.self_clear_after_ms);
        let ni = n as usize;
        match (false_positive, cause) {
            (true, _) => self.report.faults.false_positives += 1,
            (_, Cause::NetworkFlap) => self.report.faults.network_flaps += 1,
            _ => self.report.faults.real += 1,
        }
        if self.nodes[ni].replaced_lemon && self.draws[f as usize].cured_by_replacement {
            // The replaced machine no longer carries the lemon's defect: this fault never happens.
            self.report.faults.prevented_by_replacement += 1;
            self.fstate[f as usize].cleared_at = Some(now);
            return false;
        }
        let real = self.is_real(f);
        self.account(n, now);
        self.nodes[ni].faults.push(f);
        self.nodes[ni].last_fault = Some(f);
        self.account(n, now);
        if let Some(ms) = clear {
            self.push(now + Duration(ms), Ev::FaultClear(f));
        }
        if real {
            // People find what automation does not act on, in their own time.
            let response = Duration(self.draws[f as usize].response_ms);
            self.push(now + response, Ev::PersonFinds(f));
        }
        self.ensure_ticking(n, now);
        self.refresh(n, now);
        true
    }

    pub(super) fn step_done(&mut self, n: u32, attempt: u32, now: Time) -> bool {
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

    pub(super) fn person_done(&mut self, n: u32, now: Time) -> bool {
        let ni = n as usize;
        if !self.nodes[ni].person {
            return false;
        }
        self.account(n, now);
        self.clear_faults(n, Fix::Replace, now);
        let node = &mut self.nodes[ni];
        node.person = false;
        node.person_working = false;
        node.person_cordon = false;
        node.down_until = None;
        node.gpu_probe = ProbeState::default();
        node.net_probe = ProbeState::default();
        self.account(n, now);
        self.obs[ni].operator_request = Some(OperatorRequest { action: OperatorAction::Resolve, by: "oncall".into(), at: now });
        self.refresh(n, now);
        self.ensure_ticking(n, now);
        true
    }

    pub(super) fn decide_at(&mut self, now: Time) {
        self.touch_checks(now);
        let d = decide(self.policy, &self.obs, &self.records, now);
        self.report.decisions += 1;
        let tainting: Vec<u32> = d
            .actions
            .iter()
            .filter_map(|a| if let Action::SetTaints { node, .. } = a { self.index.get(node).copied() } else { None })
            .collect();
        for n in &tainting {
            self.account(*n, now);
        }
        apply(&d, &mut self.obs, &mut self.records);
        for n in &tainting {
            self.account(*n, now);
            self.refresh(*n, now);
            self.ensure_ticking(*n, now);
        }
        self.note_holds(&d.holds, now);
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
        // The agent re-runs its checks once a repair is being verified, and the kubelet's next report
        // after verification starts is news the controller would decide on.
        for c in &d.record_changes {
            if let nodemedic_core::RecordChange::Upsert(r) = c
                && let Some(Stage::Verifying { verify_from, .. }) = r.active.as_ref().map(|a| &a.stage)
                && let Some(&n) = self.index.get(&r.node)
            {
                self.ensure_ticking(n, now);
                self.schedule_heartbeat(n, (*verify_from).max(now));
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

    /// Counts a hold when it begins, and schedules the kubelet's next report for a node whose
    /// person's resolve waits on fresh evidence: the controller would see that report as a watch
    /// event and decide again; without it nothing wakes the engine until some other node changes.
    pub(super) fn note_holds(&mut self, holds: &[nodemedic_core::Hold], now: Time) {
        let mut held_now: HashMap<u32, Gate> = HashMap::new();
        for h in holds {
            if let Some(&n) = self.index.get(&h.node) {
                held_now.insert(n, h.gate);
            }
        }
        for (n, g) in &held_now {
            if self.nodes[*n as usize].held != Some(*g) {
                *self.report.gate_holds.entry(g.as_str().into()).or_default() += 1;
            }
            if *g == Gate::AwaitingOperator {
                self.schedule_heartbeat(*n, now);
            }
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.held.is_some() || held_now.contains_key(&(i as u32)) {
                node.held = held_now.get(&(i as u32)).copied();
            }
        }
    }

    /// A decision at node `n`'s first kubelet report after `after`, unless one is already due by then.
    pub(super) fn schedule_heartbeat(&mut self, n: u32, after: Time) {
        let t = self.next_heartbeat(n, after);
        if self.nodes[n as usize].heartbeat_due.is_some_and(|due| due > after && due <= t) {
            return;
        }
        self.nodes[n as usize].heartbeat_due = Some(t);
        self.push(t, Ev::Heartbeat(n));
    }

    pub(super) fn finish(mut self, end: Time) -> Report {
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
