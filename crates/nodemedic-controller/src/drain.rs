//! The drain executor: evicts a node's pods through the Eviction API (PodDisruptionBudgets
//! respected), following the policy's per-namespace drain modes and what it says a blocked drain
//! does, and keeps its progress on the NodeRemediation (`status.drainProgress`) so that a new
//! leader resumes it where it stood.

use crate::executors::{DrainConfig, Started, report_or_log, std_duration, time_left};
use crate::{ExecFuture, Executor, StepRequest};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Preconditions};
use kube::{Client, ResourceExt};
use nodemedic_core::RemediationStep;
#[cfg(test)]
use nodemedic_core::Time;
use nodemedic_core::drain::{DrainMode, DrainPolicy, DrainProgress, DrainedPod, PodAnswer, WhenDrainBlocked};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation, field_managers, write_drain_progress};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a drain does with a pod on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDisposition {
    /// Ask it to leave (evict, or wait for it to complete, by its namespace's mode).
    Evict,
    /// Already being deleted: wait until it is gone.
    Terminating,
    /// Run by a DaemonSet, which would put it straight back (and tolerates the repair taints): left alone.
    DaemonSet,
    /// The API server's mirror of a static pod the kubelet runs from a file: eviction cannot remove it.
    Mirror,
    /// Finished (`Succeeded` or `Failed`): holds no workload, left alone.
    Completed,
}

/// The annotation the kubelet sets on the mirror pod of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// How a drain treats `pod`. Pods with local storage (`emptyDir`, `hostPath`) are evicted like any
/// other: the data is lost, as it would be by the reboot the drain prepares.
pub fn pod_disposition(pod: &Pod) -> PodDisposition {
    if pod.annotations().contains_key(MIRROR_POD_ANNOTATION) {
        return PodDisposition::Mirror;
    }
    let daemon_set = pod.owner_references().iter().any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    if daemon_set {
        return PodDisposition::DaemonSet;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodDisposition::Terminating;
    }
    if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return PodDisposition::Completed;
    }
    PodDisposition::Evict
}

/// Why an eviction was refused, in words: a budget's refusal names the budget.
pub(crate) fn refusal(status: &kube::core::Status) -> String {
    let mut causes = status.details.iter().flat_map(|d| d.causes.iter());
    if let Some(cause) = causes.find(|c| c.reason == "DisruptionBudget") {
        // The API server writes "The disruption budget NAME needs N healthy pods and has M currently"
        // (or "... is still being processed by the server.").
        let Some(rest) = cause.message.strip_prefix("The disruption budget ") else {
            return format!("blocked by a PodDisruptionBudget: {}", cause.message);
        };
        let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
        let why = why.trim().trim_end_matches('.');
        return if why.is_empty() {
            format!("blocked by PodDisruptionBudget {name}")
        } else {
            format!("blocked by PodDisruptionBudget {name} ({why})")
        };
    }
    format!("eviction refused ({} {}): {}", status.code, status.reason, status.message)
}

/// Drains nodes. The node is already cordoned by the repair taints. Pods go by their namespace's
/// mode (`Immediate` by default: evicted; `AllowCompletion`: waited for; `DeleteAfterTimeout`:
/// evicted, deleted after the mode's time); DaemonSet, mirror and completed pods are left. Refused
/// evictions are retried with backoff. At the step's deadline the policy's `drain.whenBlocked`
/// decides: `hold` keeps retrying (at the longest backoff) without reporting, `escalate` reports
/// `Failed` naming the pods and budgets, `force` deletes what is left and reports once it is gone.
/// Every answer is written to `status.drainProgress` as it comes, so a resumed drain neither asks a
/// pod twice nor forgets when it first asked.
pub struct DrainExecutor {
    client: Client,
    config: DrainConfig,
    started: Arc<Started>,
}

impl DrainExecutor {
    pub fn new(client: Client, config: DrainConfig) -> DrainExecutor {
        DrainExecutor { client, config, started: Arc::default() }
    }

    /// How many drains this executor has started or resumed (repeated requests for one attempt count once).
    pub fn drains_started(&self) -> u64 {
        self.started.count()
    }

    fn start(&self, request: &StepRequest, resumed: bool) -> Result<(), String> {
        if request.step != RemediationStep::Drain {
            return Err(format!("the drain executor cannot run step {}", request.step));
        }
        let started = self.started.start(request, || {
            let (client, config, req) = (self.client.clone(), self.config.clone(), request.clone());
            Ok(tokio::spawn(async move {
                if let Some((outcome, message)) = drain(&client, &config, &req).await {
                    report_or_log(&client, field_managers::DRAIN, &req, outcome, message).await;
                }
            })
            .abort_handle())
        })?;
        match (started, resumed) {
            (true, false) => tracing::info!(node = %request.node, attempt = request.attempt, "drain started"),
            (true, true) => tracing::info!(node = %request.node, attempt = request.attempt, "drain resumed from its recorded progress"),
            (false, _) => tracing::debug!(node = %request.node, attempt = request.attempt, "drain already running for this attempt"),
        }
        Ok(())
    }
}

impl Executor for DrainExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move { self.start(request, false) })
    }

    fn resume<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move { self.start(request, true) })
    }

    fn executor_for(&self, step: RemediationStep) -> Option<String> {
        (step == RemediationStep::Drain).then(|| "the drain executor (Eviction API)".into())
    }
}

/// What the drain knows at its start: the policy's drain settings and the progress so far.
async fn read_start(client: &Client, req: &StepRequest) -> (DrainPolicy, DrainProgress) {
    let now = crate::now();
    let fresh = DrainProgress { attempt: req.attempt, started_at: now, updated_at: now, pods: Vec::new(), forced: false };
    let record = match Api::<NodeRemediation>::all(client.clone()).get(&req.node).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node = %req.node, error = %e, "the NodeRemediation could not be read; draining with the default settings (hold when blocked)");
            return (DrainPolicy::default(), fresh);
        }
    };
    let progress = record.status.as_ref().and_then(|s| s.drain_progress.clone()).filter(|p| p.attempt == req.attempt).unwrap_or(fresh);
    let policy = match Api::<NodeHealthPolicy>::all(client.clone()).get(&record.spec.policy).await {
        Ok(p) => p.spec.policy.drain,
        Err(e) => {
            tracing::warn!(node = %req.node, policy = %record.spec.policy, error = %e, "the policy could not be read; draining with the default settings (hold when blocked)");
            DrainPolicy::default()
        }
    };
    (policy, progress)
}

/// Whether the record still asks for this drain (a person may have aborted it, the ladder moved on).
async fn still_wanted(client: &Client, req: &StepRequest) -> bool {
    match Api::<NodeRemediation>::all(client.clone()).get(&req.node).await {
        Ok(r) => r
            .status
            .is_some_and(|s| s.record.attempt == req.attempt && s.record.active.as_ref().is_some_and(|a| a.step == RemediationStep::Drain)),
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        // Unknown: keep going rather than drop the drain on a hiccup.
        Err(_) => true,
    }
}

/// One round's view of the node: pods still there (namespace/name → why), and pods left alone.
#[derive(Default)]
struct Round {
    remaining: BTreeMap<String, String>,
    refused: bool,
    left_alone: BTreeMap<&'static str, usize>,
}

/// Runs one drain to its end: the outcome and message for the report, or None when there is
/// nothing to report (the record no longer asks for this drain).
async fn drain(client: &Client, config: &DrainConfig, req: &StepRequest) -> Option<(ReportedOutcome, String)> {
    let until = tokio::time::Instant::now() + time_left(req.deadline, config.timeout);
    let (policy, mut progress) = read_start(client, req).await;
    let all: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", req.node));
    let mut pause = std_duration(config.backoff);
    loop {
        if !still_wanted(client, req).await {
            tracing::info!(node = %req.node, attempt = req.attempt, "the record no longer asks for this drain; stopping");
            return None;
        }
        let past_deadline = tokio::time::Instant::now() >= until;
        let force = past_deadline && policy.when_blocked == WhenDrainBlocked::Force;
        let before = progress.pods.clone();
        let mut round = Round::default();
        match all.list(&on_node).await {
            Err(e) => {
                round.remaining.insert(String::new(), format!("listing the node's pods failed: {e}"));
                round.refused = true;
            }
            Ok(pods) => {
                for pod in &pods.items {
                    handle_pod(client, &policy, pod, force, &mut progress, &mut round).await;
                }
                mark_gone(&pods.items, &mut progress);
            }
        }
        if progress.pods != before || progress.forced {
            progress.updated_at = crate::now();
            if let Err(e) = write_drain_progress(client, &req.node, &progress).await {
                tracing::warn!(node = %req.node, error = %e, "the drain progress could not be written; retried next round");
            }
        }
        if round.remaining.is_empty() {
            return Some((ReportedOutcome::Succeeded, succeeded(&progress, &round)));
        }
        if past_deadline && policy.when_blocked == WhenDrainBlocked::Escalate {
            return Some((ReportedOutcome::Failed, unfinished(&req.node, &progress, &round.remaining)));
        }
        // Hold (and force, waiting for its deletions) go on past the deadline at the longest pause.
        let now = tokio::time::Instant::now();
        let wait = if now >= until { std_duration(config.max_backoff) } else { pause.min(until - now) };
        tokio::time::sleep(wait).await;
        pause = if round.refused { (pause * 2).min(std_duration(config.max_backoff)) } else { std_duration(config.backoff) };
    }
}

/// Deals with one pod of the node this round, recording what answered.
async fn handle_pod(client: &Client, policy: &DrainPolicy, pod: &Pod, force: bool, progress: &mut DrainProgress, round: &mut Round) {
    let namespace = pod.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", pod.name_any());
    let uid = pod.uid().unwrap_or_default();
    let disposition = pod_disposition(pod);
    let alone = match disposition {
        PodDisposition::DaemonSet => Some("DaemonSet"),
        PodDisposition::Mirror => Some("mirror"),
        PodDisposition::Completed => Some("completed"),
        PodDisposition::Terminating | PodDisposition::Evict => None,
    };
    if let Some(kind) = alone {
        *round.left_alone.entry(kind).or_default() += 1;
        return;
    }
    let now = crate::now();
    let known = progress.pods.iter().position(|p| p.uid == uid);
    if disposition == PodDisposition::Terminating {
        round.remaining.insert(key, "still terminating".into());
        return;
    }
    let (mode, delete_after) = policy.mode_for(&namespace);
    let asked_at = known.map_or(now, |i| progress.pods[i].asked_at);
    let (answer, detail) = if force || (mode == DrainMode::DeleteAfterTimeout && known.is_some() && now >= asked_at + delete_after) {
        progress.forced |= force;
        match delete(client, pod).await {
            None => (
                PodAnswer::Deleted,
                if force {
                    "deleted past its budget (drain.whenBlocked: force)".to_string()
                } else {
                    format!("deleted after {delete_after} (DeleteAfterTimeout)")
                },
            ),
            Some(why) => (PodAnswer::Refused, why),
        }
    } else if mode == DrainMode::AllowCompletion {
        (PodAnswer::AwaitingCompletion, "left to complete by itself (AllowCompletion)".to_string())
    } else {
        match evict(client, pod).await {
            None => (PodAnswer::Evicted, String::new()),
            Some(why) => (PodAnswer::Refused, why),
        }
    };
    if answer != PodAnswer::Evicted && answer != PodAnswer::Deleted {
        round.refused |= answer == PodAnswer::Refused;
        round.remaining.insert(key.clone(), detail.clone());
    } else {
        round.remaining.insert(key.clone(), "asked to leave, still terminating".into());
    }
    let entry = DrainedPod { pod: key, uid, asked_at, answer, answered_at: now, detail };
    match known {
        // The same answer again is not news: keep the first time it was given.
        Some(i) if progress.pods[i].answer == entry.answer && progress.pods[i].detail == entry.detail => {}
        Some(i) => progress.pods[i] = entry,
        None => progress.pods.push(entry),
    }
}

/// Pods of the progress that are no longer on the node have left (a deleted pod keeps its answer:
/// the override stays on record).
fn mark_gone(listed: &[Pod], progress: &mut DrainProgress) {
    let now = crate::now();
    for p in progress.pods.iter_mut().filter(|p| !matches!(p.answer, PodAnswer::Gone | PodAnswer::Deleted)) {
        if !listed.iter().any(|l| l.uid().as_deref() == Some(p.uid.as_str())) {
            p.answer = PodAnswer::Gone;
            p.answered_at = now;
        }
    }
}

/// Asks the Eviction API to evict `pod`; `None` when it was accepted (or the pod is gone), else why not.
async fn evict(client: &Client, pod: &Pod) -> Option<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let params = EvictParams { delete_options: Some(uid_precondition(pod)), ..EvictParams::default() };
    match api.evict(&pod.name_any(), &params).await {
        Ok(_) => None,
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(kube::Error::Api(s)) if s.code == 409 => Some("replaced while being evicted".into()),
        Err(kube::Error::Api(s)) => Some(refusal(&s)),
        Err(e) => Some(format!("eviction failed: {e}")),
    }
}

/// Deletes `pod` past its budget (DeleteAfterTimeout, force); `None` when done or already gone.
async fn delete(client: &Client, pod: &Pod) -> Option<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    match api.delete(&pod.name_any(), &uid_precondition(pod)).await {
        Ok(_) => None,
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => Some(format!("deleting it failed: {e}")),
    }
}

/// The UID precondition keeps a pod that replaced this one under the same name from being evicted
/// or deleted by mistake; it is looked at afresh in the next round.
fn uid_precondition(pod: &Pod) -> DeleteParams {
    DeleteParams { preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..DeleteParams::default() }
}

/// The success report: how many pods left, and what was left in place.
fn succeeded(progress: &DrainProgress, round: &Round) -> String {
    let left = progress.pods.iter().filter(|p| p.answer == PodAnswer::Gone).count();
    let deleted = progress.pods.iter().filter(|p| p.answer == PodAnswer::Deleted).count();
    let mut message = format!("evicted {left} pods");
    if deleted > 0 || progress.forced {
        message.push_str(&format!("; {deleted} deleted past their budgets"));
    }
    if progress.forced {
        message.push_str(" (override: drain.whenBlocked force)");
    }
    let alone: Vec<String> = round.left_alone.iter().map(|(kind, n)| format!("{n} {kind} pods")).collect();
    if !alone.is_empty() {
        message.push_str(&format!("; left in place: {}", alone.join(", ")));
    }
    message
}

/// The failure report: which pods remain and why (at most ten named).
pub(crate) fn unfinished(node: &str, progress: &DrainProgress, remaining: &BTreeMap<String, String>) -> String {
    const NAMED: usize = 10;
    let mut parts: Vec<String> =
        remaining.iter().take(NAMED).map(|(pod, why)| if pod.is_empty() { why.clone() } else { format!("pod {pod} {why}") }).collect();
    if remaining.len() > NAMED {
        parts.push(format!("and {} more", remaining.len() - NAMED));
    }
    let left = progress.pods.iter().filter(|p| p.answer == PodAnswer::Gone).count();
    format!("drain of node {node} did not finish by its deadline ({left} pods left): {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Result<Pod, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn a_plain_pod_and_a_pod_with_local_storage_are_evicted() -> Result<(), serde_json::Error> {
        let p = pod(serde_json::json!({"metadata": {"name": "web-0", "namespace": "default"}}))?;
        assert_eq!(pod_disposition(&p), PodDisposition::Evict);
        let local = pod(serde_json::json!({"metadata": {"name": "cache-0", "namespace": "default"},
            "spec": {"containers": [], "volumes": [{"name": "scratch", "emptyDir": {}}]}}))?;
        assert_eq!(pod_disposition(&local), PodDisposition::Evict, "the stated rule: local data goes, as at a reboot");
        Ok(())
    }

    #[test]
    fn a_daemonset_pod_is_left_alone_but_a_replicaset_pod_is_evicted() -> Result<(), serde_json::Error> {
        let owned_by = |kind: &str| {
            pod(serde_json::json!({"metadata": {"name": "p", "namespace": "kube-system", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": "u-1", "controller": true}]}}))
        };
        assert_eq!(pod_disposition(&owned_by("DaemonSet")?), PodDisposition::DaemonSet);
        assert_eq!(pod_disposition(&owned_by("ReplicaSet")?), PodDisposition::Evict);
        Ok(())
    }

    #[test]
    fn a_mirror_pod_and_a_completed_pod_are_left_alone() -> Result<(), serde_json::Error> {
        let p = pod(serde_json::json!({"metadata": {"name": "etcd-node", "namespace": "kube-system",
            "annotations": {MIRROR_POD_ANNOTATION: "abc"}}}))?;
        assert_eq!(pod_disposition(&p), PodDisposition::Mirror);
        for phase in ["Succeeded", "Failed"] {
            let done = pod(serde_json::json!({"metadata": {"name": "job-x", "namespace": "batch"}, "status": {"phase": phase}}))?;
            assert_eq!(pod_disposition(&done), PodDisposition::Completed);
        }
        Ok(())
    }

    #[test]
    fn a_pod_being_deleted_is_waited_for_not_evicted_again() -> Result<(), serde_json::Error> {
        let p = pod(serde_json::json!({"metadata": {"name": "p", "namespace": "default", "deletionTimestamp": "2026-01-01T00:00:00Z"}}))?;
        assert_eq!(pod_disposition(&p), PodDisposition::Terminating);
        Ok(())
    }

    #[test]
    fn a_budget_refusal_names_the_budget() -> Result<(), serde_json::Error> {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget db-pdb needs 1 healthy pods and has 1 currently"}]},
        }))?;
        assert_eq!(refusal(&status), "blocked by PodDisruptionBudget db-pdb (needs 1 healthy pods and has 1 currently)");
        let other: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 500, "reason": "InternalError", "message": "This pod has more than one PodDisruptionBudget"}))?;
        assert!(refusal(&other).contains("more than one PodDisruptionBudget"));
        Ok(())
    }

    #[test]
    fn the_failure_message_names_at_most_ten_pods() {
        let remaining: BTreeMap<String, String> = (0..12).map(|i| (format!("ns/p-{i:02}"), "blocked".to_string())).collect();
        let progress = DrainProgress { attempt: 3, started_at: Time(0), updated_at: Time(0), pods: vec![], forced: false };
        let m = unfinished("gpu-1", &progress, &remaining);
        assert!(m.contains("pod ns/p-00 blocked") && m.contains("and 2 more") && !m.contains("p-11"), "{m}");
    }
}
