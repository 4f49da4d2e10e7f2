//! `nodemedic-agent run`: the continuous agent on one node.
//!
//! Three loops share one record watch:
//! - the probe loop runs each probe on its own interval plus jitter, feeds its threshold machine
//!   (nodemedic-core's [`nodemedic_core::probe::ThresholdMachine`]) and publishes one condition per family
//!   that ran, and one per own-condition plugin ([`crate::node`]). GPU probes (and the GPU kernel-log probe)
//!   pause while the node carries `<prefix>repair-*` or `<prefix>draining`, unless the record is verifying a
//!   repair (or a person marked a Manual node resolved after the Manual step began), the rule being
//!   [`nodemedic_core::probes_may_run`]: nothing
//!   new is published for the GPU family then, so its heartbeat ages and the controller reads it as unknown,
//!   never as broken. The network probe keeps running on `slow-network` nodes.
//! - the record watch follows this node's NodeRemediation (a field selector on its name);
//! - the remediation loop performs a requested reboot, reimage or GPU reset once per attempt
//!   ([`crate::remediate`]); a confirmed GPU reset ends the kernel-log faults it fixed, and the record starting
//!   to verify wakes the paused GPU probes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use nodemedic_core::RemediationStep;
use nodemedic_core::observe::{ReportedOutcome, StepReport};
use nodemedic_k8s::NodeRemediation;
use thiserror::Error;
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::check::{ProbeMemory, configured_probes, run_probe_remembering, search_path};
use crate::config::AgentConfig;
use crate::gpu_count::ExpectedGpus;
use crate::kernel_follow::KernelLogFollower;
use crate::metrics::AgentMetrics;
use crate::node::{FIELD_MANAGER, boot_id, condition_json, existing_condition, family_verdict, publish_conditions, rfc3339, taint_keys};
use crate::plugin::Family;
use crate::probe::{ProbeSchedule, ProbeState};

/// The kernel-log probe's name, as [`configured_probes`] gives it.
const KERNEL_LOG_PROBE: &str = "kernel-log";
use crate::remediate::{
    AttemptEntry, AttemptLog, HostActions, Request, StateError, boot_outcome, boot_poll_interval, requested, verifying,
};
use crate::verdict::{Reason, Verdict};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("node {0} reports no boot ID (status.nodeInfo.bootID)")]
    NoBootId(String),
}

/// The agent for one node.
pub struct Agent<'h> {
    pub client: Client,
    pub node: String,
    pub config: Arc<AgentConfig>,
    pub catalog: Arc<Catalog>,
    pub host: &'h dyn HostActions,
}

/// A probe with its schedule and threshold machine.
struct Scheduled {
    name: String,
    family: Family,
    /// The Node condition its verdict is published in.
    condition: String,
    schedule: ProbeSchedule,
    state: ProbeState,
    next_at: Instant,
}

/// A small xorshift generator for the jitter: a fleet needs spread, not cryptography.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Jitter((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// A fraction in [0, 1).
    fn fraction(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Whether `family` may run now: nodemedic-core's rule ([`nodemedic_core::probes_may_run`]).
pub fn family_may_run(family: Family, taints: &[String], prefix: &str, verifying: bool) -> bool {
    let keys: Vec<&str> = taints.iter().map(String::as_str).collect();
    nodemedic_core::probes_may_run(family, &keys, prefix, verifying)
}

/// What wakes the probe loop besides its schedule: a kernel-log fault (the kernel-log probe runs at once) and
/// the record starting to verify a repair (the GPU probes, paused under the repair taint, run at once, so a
/// `resetGpu` step, which no reboot follows, is judged on fresh results rather than after a full interval).
struct RecordWake {
    /// False once the record watch has ended (the agent is stopping).
    open: bool,
    was_verifying: bool,
}

impl RecordWake {
    async fn until_due(&mut self, probes: &mut [Scheduled], memory: &ProbeMemory, records: &mut watch::Receiver<Option<NodeRemediation>>) {
        let Some(wake) = probes.iter().map(|p| p.next_at).min() else { return };
        let fault = async {
            match &memory.kernel_log {
                Some(follower) => follower.fault_recorded().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = fault => {
                probes.iter_mut().filter(|p| p.name == KERNEL_LOG_PROBE).for_each(|p| p.next_at = Instant::now());
            }
            changed = records.changed(), if self.open => {
                self.open = changed.is_ok();
                let now_verifying = verifying(records.borrow().as_ref());
                if now_verifying && !self.was_verifying {
                    probes.iter_mut().filter(|p| p.family == Family::Gpu).for_each(|p| p.next_at = Instant::now());
                }
                self.was_verifying = now_verifying;
            }
        }
    }
}

impl Agent<'_> {
    /// Runs until an unrecoverable error (a broken state file); API errors are logged and retried.
    pub async fn run(&self) -> Result<(), AgentError> {
        self.run_measured(&AgentMetrics::new(&self.node)).await
    }

    /// [`Agent::run`], recording what it does in `metrics` (served by `run --metrics-listen`).
    pub async fn run_measured(&self, metrics: &AgentMetrics) -> Result<(), AgentError> {
        let (records_tx, records_rx) = watch::channel(None::<NodeRemediation>);
        // One memory for both loops: a successful GPU reset ends the kernel-log faults it fixed.
        let memory = self.probe_memory();
        tokio::try_join!(
            self.watch_record(records_tx),
            self.probe_loop(records_rx.clone(), metrics, &memory),
            self.remediation_loop(records_rx, metrics, &memory)
        )?;
        Ok(())
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    async fn watch_record(&self, records: watch::Sender<Option<NodeRemediation>>) -> Result<(), AgentError> {
        let api: Api<NodeRemediation> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.node));
        let mut events = std::pin::pin!(watcher::watcher(api, config));
        let mut backoff = Duration::from_millis(500);
        loop {
            match events.next().await {
                None => return Ok(()),
                Some(Ok(watcher::Event::Apply(record) | watcher::Event::InitApply(record))) => {
                    backoff = Duration::from_millis(500);
                    records.send_replace(Some(record));
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    records.send_replace(None);
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching this node's NodeRemediation; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// The probes with their schedules. The kernel-log probe publishes what its follower holds at once: a fault
    /// line is evidence in itself (the fault history, not a failure streak, decides how long it counts), so its
    /// threshold machine passes every result through.
    fn scheduled_probes(&self, jitter: &mut Jitter) -> Vec<Scheduled> {
        let start = Instant::now();
        configured_probes(&self.config)
            .into_iter()
            .map(|name| {
                let schedule = self.config.schedule_for(&name).clone();
                let first = start + schedule.jitter.0.mul_f64(jitter.fraction());
                let thresholds = if name == KERNEL_LOG_PROBE {
                    ProbeSchedule { failures_before_unhealthy: 1, passes_before_healthy: 1, ..schedule.clone() }
                } else {
                    schedule.clone()
                };
                Scheduled {
                    family: self.config.family_of(&name),
                    condition: self.config.condition_of(&name),
                    state: ProbeState::new(&thresholds),
                    schedule,
                    next_at: first,
                    name,
                }
            })
            .collect()
    }

    /// What the probes keep for the agent's lifetime: the kernel-log follower (its thread starts here) and the
    /// NVML handle, with NVML's Xid events fed into the same fault history where NVML is present.
    fn probe_memory(&self) -> Arc<ProbeMemory> {
        let mut memory = ProbeMemory::default();
        if let Some(probe) = &self.config.probes.kernel_log {
            memory.kernel_log = Some(KernelLogFollower::start(probe, self.catalog.clone()));
        }
        let memory = Arc::new(memory);
        if memory.kernel_log.is_some() {
            match memory.nvml.get() {
                Ok(nvml) => {
                    let weak = Arc::downgrade(&memory);
                    let sink = move |device: &str, key: &crate::catalog::FaultKey| {
                        if let Some(follower) = weak.upgrade().as_ref().and_then(|m| m.kernel_log.as_ref()) {
                            follower.record(device, key);
                        }
                    };
                    match crate::nvml::follow_xid_events(nvml, sink) {
                        Ok(()) => tracing::info!("receiving Xid events from NVML as well as from the kernel log"),
                        Err(why) => tracing::info!(%why, "no NVML Xid events; Xids come from the kernel log only"),
                    }
                }
                Err(error) => tracing::info!(%error, "NVML is not present; Xids come from the kernel log only"),
            }
        }
        memory
    }

    async fn probe_loop(
        &self,
        mut records: watch::Receiver<Option<NodeRemediation>>,
        metrics: &AgentMetrics,
        memory: &Arc<ProbeMemory>,
    ) -> Result<(), AgentError> {
        let mut jitter = Jitter::new();
        let mut probes = self.scheduled_probes(&mut jitter);
        let search = Arc::new(search_path(&self.config));
        let nodes = self.nodes();
        let mut last_run: std::collections::BTreeMap<String, jiff::Timestamp> = Default::default();
        let mut watch = RecordWake { open: true, was_verifying: false };
        loop {
            if probes.is_empty() {
                tracing::info!("no probes are configured; only remediation requests are served");
                return Ok(());
            }
            watch.until_due(&mut probes, memory, &mut records).await;
            if !probes.iter().any(|p| p.next_at <= Instant::now()) {
                continue;
            }
            let node = match nodes.get(&self.node).await {
                Ok(node) => node,
                Err(error) => {
                    tracing::warn!(%error, node = %self.node, "reading this node; probes wait");
                    let retry = Instant::now() + Duration::from_secs(2);
                    probes.iter_mut().filter(|p| p.next_at <= retry).for_each(|p| p.next_at = retry);
                    continue;
                }
            };
            let taints = taint_keys(&node);
            let verifying = verifying(records.borrow().as_ref());
            let expected = ExpectedGpus::resolve(self.config.expected_gpus, node.metadata.labels.as_ref().unwrap_or(&Default::default()));
            let mut ran = BTreeSet::new();
            for probe in probes.iter_mut().filter(|p| p.next_at <= Instant::now()) {
                probe.next_at = Instant::now() + probe.schedule.next_delay(jitter.fraction());
                if !family_may_run(probe.family, &taints, &self.config.taint_prefix, verifying) {
                    tracing::debug!(probe = %probe.name, "skipped: a repair is in progress on this node");
                    metrics.probe_paused(&probe.name, probe.family);
                    continue;
                }
                let (config, catalog, search, name) = (self.config.clone(), self.catalog.clone(), search.clone(), probe.name.clone());
                let memory = memory.clone();
                let started = Instant::now();
                let verdict =
                    tokio::task::spawn_blocking(move || run_probe_remembering(&config, &catalog, &search, &name, &memory, expected))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| Verdict::unknown(Reason::ToolFailed, "the probe did not finish"));
                tracing::debug!(probe = %probe.name, health = ?verdict.health, reason = %verdict.reason, "probe ran");
                let raw = verdict.clone();
                probe.state.record(verdict, Instant::now());
                metrics.probe_ran(&probe.name, probe.family, &raw, started.elapsed(), &probe.state.published(Instant::now()));
                ran.insert(probe.condition.clone());
                last_run.insert(probe.condition.clone(), jiff::Timestamp::now());
            }
            let faulty_gpus = self.faulty_gpus(&node, &probes, memory);
            self.publish_round(&nodes, &node, &probes, ran, &last_run, metrics, faulty_gpus).await;
        }
    }

    /// The change to the node's faulty-GPU annotation, if any: the GPU the kernel-log fault history names,
    /// under the kernel-log probe's condition (what a `resetGpu` step is aimed at).
    fn faulty_gpus(&self, node: &Node, probes: &[Scheduled], memory: &ProbeMemory) -> Option<serde_json::Value> {
        let follower = memory.kernel_log.as_ref()?;
        let condition = &probes.iter().find(|p| p.name == "kernel-log")?.condition;
        crate::node::faulty_gpus_annotation(node, condition, follower.faulty_gpu().as_ref())
    }

    /// Publishes one condition per condition type whose probes ran this round (and, with them, a changed
    /// faulty-GPU annotation).
    #[allow(clippy::too_many_arguments)]
    async fn publish_round(
        &self,
        nodes: &Api<Node>,
        node: &Node,
        probes: &[Scheduled],
        ran: BTreeSet<String>,
        last_run: &std::collections::BTreeMap<String, jiff::Timestamp>,
        metrics: &AgentMetrics,
        faulty_gpus: Option<serde_json::Value>,
    ) {
        let now = Instant::now();
        let mut conditions = Vec::new();
        let mut written = Vec::new();
        for condition in ran {
            let members: Vec<(String, Verdict)> =
                probes.iter().filter(|p| p.condition == condition).map(|p| (p.name.clone(), p.state.published(now))).collect();
            let (Some(verdict), Some(heartbeat)) = (family_verdict(&members), last_run.get(&condition)) else {
                continue;
            };
            conditions.push(condition_json(&condition, &verdict, *heartbeat, existing_condition(node, &condition)));
            written.push((condition, *heartbeat));
        }
        if conditions.is_empty() {
            return;
        }
        match publish_conditions(nodes, &self.node, conditions, faulty_gpus).await {
            Ok(_) => metrics.conditions_written(&written),
            Err(error) => {
                metrics.condition_write_failed();
                tracing::warn!(%error, node = %self.node, "publishing conditions");
            }
        }
    }

    async fn remediation_loop(
        &self,
        mut records: watch::Receiver<Option<NodeRemediation>>,
        metrics: &AgentMetrics,
        memory: &ProbeMemory,
    ) -> Result<(), AgentError> {
        loop {
            let record = records.borrow_and_update().clone();
            let request = record.as_ref().and_then(|r| requested(r, &self.node).map(|q| (r, q)));
            if let Some((record, request)) = request {
                match self.serve(record, &request, memory).await {
                    Ok(outcome) => metrics.remediation_done(request.step, outcome),
                    Err(AgentError::State(error)) => return Err(AgentError::State(error)),
                    Err(error) => {
                        tracing::warn!(%error, attempt = request.attempt, "serving the remediation request; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                }
            }
            if records.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    async fn current_boot_id(&self) -> Result<String, AgentError> {
        let node = self.nodes().get(&self.node).await?;
        boot_id(&node).ok_or_else(|| AgentError::NoBootId(self.node.clone()))
    }

    /// Waits up to `limit` for the boot ID to differ from `before`; returns the last one read. Failed reads are
    /// retried until the limit (the API server may be out of reach while the node goes down).
    async fn wait_for_new_boot(&self, before: &str, limit: Duration) -> Result<String, AgentError> {
        let deadline = Instant::now() + limit;
        loop {
            let read = self.current_boot_id().await;
            match &read {
                Ok(now) if now != before => return read,
                Err(error) if Instant::now() < deadline => tracing::warn!(%error, "reading this node's boot ID; retrying"),
                _ if Instant::now() >= deadline => return read,
                _ => {}
            }
            tokio::time::sleep(boot_poll_interval(limit)).await;
        }
    }

    /// One request: act once per attempt, then report.
    async fn serve(&self, record: &NodeRemediation, request: &Request, memory: &ProbeMemory) -> Result<ReportedOutcome, AgentError> {
        let path = &self.config.remediation.state_file;
        let mut log = AttemptLog::load(path)?;
        let (outcome, message) = match log.find(&request.record_uid, request.attempt) {
            Some(AttemptEntry { outcome: Some(outcome), message, .. }) => (*outcome, message.clone()),
            Some(_) if request.step == RemediationStep::ResetGpu => {
                let message = "the agent stopped during the GPU reset; attempt not run twice".to_string();
                self.decide(&mut log, request, ReportedOutcome::Failed, &message)?;
                (ReportedOutcome::Failed, message)
            }
            Some(entry) => {
                // Started before this process: the node went down (or the agent died) during the attempt.
                let before = entry.boot_id.clone();
                let now = self.wait_for_new_boot(&before, self.config.remediation.boot_id_wait.0).await?;
                let (outcome, message) = boot_outcome(&before, &now);
                let message = if before == now { format!("{message} after the agent restarted; attempt not run twice") } else { message };
                self.decide(&mut log, request, outcome, &message)?;
                (outcome, message)
            }
            None => {
                let before = self.current_boot_id().await?;
                log.push(AttemptEntry {
                    record_uid: request.record_uid.clone(),
                    attempt: request.attempt,
                    step: request.step,
                    boot_id: before.clone(),
                    started_at: rfc3339(jiff::Timestamp::now()),
                    outcome: None,
                    message: String::new(),
                });
                log.save(path)?;
                tracing::info!(node = %self.node, attempt = request.attempt, step = request.step.as_str(), boot_id = %before, "remediation started");
                self.announce_start(record, request, &before).await;
                let (outcome, message) = if request.step == RemediationStep::ResetGpu {
                    self.reset_gpu(request, memory).await
                } else {
                    self.reboot_or_reimage(request, &before).await?
                };
                self.decide(&mut log, request, outcome, &message)?;
                (outcome, message)
            }
        };
        let at = nodemedic_core::Time(jiff::Timestamp::now().as_millisecond());
        let report = StepReport { attempt: request.attempt, outcome, at, message: message.clone() };
        nodemedic_k8s::report_step(&self.client, crate::node::FIELD_MANAGER, &self.node, &report).await?;
        tracing::info!(node = %self.node, attempt = request.attempt, outcome = ?outcome, %message, "remediation reported");
        Ok(outcome)
    }

    /// The `resetGpu` step on the record's GPU, with this node's GPU tool probes as the judge.
    async fn reset_gpu(&self, request: &Request, memory: &ProbeMemory) -> (ReportedOutcome, String) {
        let Some(gpu) = request.gpu.clone() else {
            return (ReportedOutcome::Failed, "the record names no GPU to reset".to_string());
        };
        let (config, catalog) = (self.config.clone(), self.catalog.clone());
        let reset = move || {
            let search = search_path(&config);
            let expected = ExpectedGpus::configured(&config);
            let verify = || crate::gpu_reset::gpu_tool_verdicts(&config, &catalog, &search, expected);
            crate::gpu_reset::reset_and_verify(&config.remediation.gpu_reset, &gpu, &search, verify)
        };
        let (outcome, message) = tokio::task::spawn_blocking(reset)
            .await
            .unwrap_or_else(|error| (ReportedOutcome::Failed, format!("the GPU reset did not finish: {error}")));
        if outcome == ReportedOutcome::Succeeded
            && let Some((follower, gpu)) = memory.kernel_log.as_ref().zip(request.gpu.as_ref())
        {
            let cleared = follower.reset_succeeded(gpu);
            tracing::info!(%gpu, cleared, "GPU reset succeeded; the kernel-log faults it fixed have ended");
        }
        (outcome, message)
    }

    /// A reboot or reimage through the host, judged by the boot ID.
    async fn reboot_or_reimage(&self, request: &Request, before: &str) -> Result<(ReportedOutcome, String), AgentError> {
        match self.host.perform(request.step).await {
            Ok(description) => {
                let now = self.wait_for_new_boot(before, self.config.remediation.reboot_grace.0).await?;
                let (outcome, message) = boot_outcome(before, &now);
                Ok((outcome, format!("{message} ({description})")))
            }
            // A command that failed (sysrq included) did not reboot the node.
            Err(error) => Ok((ReportedOutcome::Failed, error)),
        }
    }

    /// A Kubernetes Event on the record saying the step started (the step report only carries the outcome).
    /// Best effort: the attempt is already on disk, and a lost event must not hold up the reboot.
    async fn announce_start(&self, record: &NodeRemediation, request: &Request, boot_id: &str) {
        let reporter = Reporter { controller: FIELD_MANAGER.to_string(), instance: Some(self.node.clone()) };
        let recorder = Recorder::new(self.client.clone(), reporter);
        let event = Event {
            type_: EventType::Normal,
            reason: "RemediationStarted".to_string(),
            note: Some(format!("{} attempt {} started on {} (boot ID {boot_id})", request.step.as_str(), request.attempt, self.node)),
            action: match request.step {
                RemediationStep::Reimage => "Reimage".to_string(),
                RemediationStep::ResetGpu => "ResetGpu".to_string(),
                _ => "Reboot".to_string(),
            },
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &record.object_ref(&())).await {
            tracing::warn!(%error, "publishing the RemediationStarted event");
        }
    }

    fn decide(&self, log: &mut AttemptLog, request: &Request, outcome: ReportedOutcome, message: &str) -> Result<(), AgentError> {
        if let Some(entry) = log.find_mut(&request.record_uid, request.attempt) {
            entry.outcome = Some(outcome);
            entry.message = message.to_string();
        }
        log.save(&self.config.remediation.state_file)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gpu_probes_pause_under_a_repair_taint_unless_a_repair_is_being_verified() {
        let prefix = "nodemedic.io/";
        assert!(family_may_run(Family::Gpu, &keys(&["node.kubernetes.io/not-ready"]), prefix, false));
        assert!(!family_may_run(Family::Gpu, &keys(&["nodemedic.io/repair-reboot"]), prefix, false));
        assert!(!family_may_run(Family::Gpu, &keys(&["nodemedic.io/draining"]), prefix, false));
        assert!(family_may_run(Family::Gpu, &keys(&["nodemedic.io/repair-reboot"]), prefix, true));
        assert!(family_may_run(Family::Network, &keys(&["nodemedic.io/slow-network", "nodemedic.io/repair-reboot"]), prefix, false));
        assert!(!family_may_run(Family::Gpu, &keys(&["example.com/repair-reimage"]), "example.com/", false));
    }

    #[test]
    fn jitter_fractions_stay_in_range() {
        let mut jitter = Jitter::new();
        assert!((0..1000).map(|_| jitter.fraction()).all(|f| (0.0..1.0).contains(&f)));
    }
}
