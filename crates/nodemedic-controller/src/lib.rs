//! nodemedic-controller owns putting the engine's decisions to work on a cluster: it reads Nodes,
//! NodeRemediations and a NodeHealthPolicy, runs nodemedic-core's `decide`, persists the records
//! *before* it acts, then patches taints (with resourceVersion preconditions) and hands steps to an
//! executor. It must not decide anything itself: every choice comes from the engine.

use k8s_openapi::api::core::v1::{Node, Taint as K8sTaint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use nodemedic_core::drain::step_to_resume;
use nodemedic_core::engine::{Action, Decision, RecordChange};
use nodemedic_core::fencing::{OUT_OF_SERVICE_TAINT, OUT_OF_SERVICE_VALUE};
use nodemedic_core::{FleetIndex, NodeObservation, Outage, Records, RemediationStep, Time, account_for_outages, apply, decide};
use nodemedic_k8s::{
    NodeHealthPolicy, NodeHealthPolicyStatus, NodeRemediation, NodeRemediationSpec, NodeRemediationStatus, lean, observe_node,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub mod bmc;
pub mod client;
pub mod contact;
pub mod drain;
pub mod events;
pub mod external;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod providers;
pub mod records;
pub mod run;
pub mod selffence;
pub mod webhook;

use events::publish_events;
pub use kube::runtime::events::Recorder;
pub use leader::Leadership;
pub use metrics::Metrics;
pub use records::RecordCache;

pub mod executors;

/// How long after the API server answers again a step in flight may still report before its
/// deadline counts (docs/controller.md).
pub const DEFAULT_RECONNECT_GRACE: nodemedic_core::Duration = nodemedic_core::Duration::from_secs(30);

/// The field manager nodemedic writes with.
pub const FIELD_MANAGER: &str = "nodemedic-controller";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("policy {0}: {1}")]
    InvalidPolicy(String, String),
    #[error("{0}")]
    Observe(#[from] nodemedic_k8s::ObserveError),
    #[error("node {node}: the taints changed under us {attempts} times in a row")]
    TaintConflict { node: String, attempts: u32 },
    #[error("executor for {step} on {node} (attempt {attempt}): {message}")]
    Executor { node: String, step: RemediationStep, attempt: u32, message: String },
    #[error("this replica no longer holds the leader lease; nothing written")]
    NotLeader,
    #[error("leader election: {0}")]
    Lease(String),
    #[error("fleet cache: {0}")]
    Cache(String),
}

impl ControllerError {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "kube",
            ControllerError::InvalidPolicy(..) => "invalid_policy",
            ControllerError::Observe(_) => "unreadable_node",
            ControllerError::TaintConflict { .. } => "taint_conflict",
            ControllerError::Executor { .. } => "executor",
            ControllerError::NotLeader => "not_leader",
            ControllerError::Lease(_) => "lease",
            ControllerError::Cache(_) => "cache",
        }
    }
}

/// What an executor is asked to do: one step of one attempt on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRequest {
    pub node: String,
    pub step: RemediationStep,
    pub attempt: u32,
    /// When the engine gives up waiting for a report (the step's timeout).
    pub deadline: Option<Time>,
    pub reason: String,
    /// The ladder step's remediation template (an `external` step's; None for the others).
    pub template: Option<nodemedic_core::policy::ExternalTemplate>,
}

/// A boxed future, so executors can be chosen at run time (`&dyn Executor`).
pub type ExecFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// What [`Executor::check_policy`] returns: a problem in words, or None.
pub type CheckFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>>;

/// Runs a step. The record naming the step and its attempt is already persisted when this is
/// called, and the engine asks once per attempt, so a step runs at most once per attempt even
/// across restarts. `execute` returns once the request is accepted; long work (a drain) goes on in
/// the background and ends with a `stepReport` on the node's NodeRemediation
/// ([`nodemedic_k8s::report_step`]), which is what the engine waits for.
pub trait Executor: Send + Sync {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a>;

    /// Picks up a step that the records show in flight without a report, after a leader change or
    /// a restart: the process that started it may be gone. Called on every pass for every such step,
    /// so it must be cheap and idempotent; the default does nothing (the node agent acts on the
    /// record itself, and a no-op has nothing to resume).
    fn resume<'a>(&'a self, _request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    /// Which executor carries out `step`, in words (`the node agent`, `the cluster-api provider`);
    /// None when this executor cannot. A policy whose ladder has a step without one is refused.
    fn executor_for(&self, _step: RemediationStep) -> Option<String> {
        Some("a custom executor".into())
    }

    /// Lets go of what steps left behind for nodes whose remediation is over (an external step's
    /// remediation CR). Called after every pass with the records as they are now; idempotent.
    fn release<'a>(&'a self, _policy: &'a nodemedic_core::Policy, _records: &'a Records) -> ExecFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    /// What this executor can tell about a policy when it loads that the policy alone cannot (an
    /// external step's template that does not exist), naming the field; None when nothing is wrong
    /// or it cannot tell. A policy with a problem is marked `Valid=False` and not acted on.
    fn check_policy<'a>(&'a self, _policy: &'a nodemedic_core::Policy) -> CheckFuture<'a> {
        Box::pin(async { None })
    }
}

/// The node agent executes node-local steps: the persisted record *is* the request (the agent on
/// that node watches its NodeRemediation), so nothing more is sent.
pub struct AgentExecutor;

impl Executor for AgentExecutor {
    fn execute<'a>(&'a self, _request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    fn executor_for(&self, _step: RemediationStep) -> Option<String> {
        Some("the node agent".into())
    }
}

/// What one pass read: the Nodes, their NodeRemediations, and the self-fencing promises of the
/// nodes in remediation.
struct Observed<'a> {
    snapshot: &'a [Arc<Node>],
    recs: &'a BTreeMap<String, NodeRemediation>,
    promises: &'a HashMap<String, nodemedic_core::selffence::SelfFencingObservation>,
}

/// The engine's incremental index of each policy's fleet, kept between passes by a long-running
/// controller: a pass re-reads only the nodes whose Node or NodeRemediation changed (by
/// resourceVersion) and the engine re-evaluates only those, the nodes with records, and the nodes
/// whose verdict turns with time. The decision is the one a full pass would make (a property test
/// in nodemedic-core holds `FleetIndex` to that). Memory only: a restarted process starts empty and
/// fills it on its first pass.
#[derive(Default)]
pub struct FleetCache {
    policies: Mutex<HashMap<String, PolicyFleet>>,
}

#[derive(Default)]
struct PolicyFleet {
    index: FleetIndex,
    /// (Node resourceVersion, NodeRemediation resourceVersion) each observation was made from.
    versions: HashMap<String, (String, Option<String>)>,
}

impl FleetCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a deleted policy's fleet.
    pub fn forget(&self, policy: &str) {
        if let Ok(mut p) = self.policies.lock() {
            p.remove(policy);
        }
    }

    /// Brings the policy's index up to date with `observed` and decides over it.
    fn decide(
        &self,
        policy_name: &str,
        policy: &nodemedic_core::Policy,
        observed: Observed<'_>,
        records: &Records,
        now: Time,
    ) -> Result<Decision, ControllerError> {
        let Observed { snapshot, recs, promises } = observed;
        let mut all = self.policies.lock().map_err(|_| ControllerError::Cache("the fleet cache lock was poisoned".into()))?;
        let fleet = all.entry(policy_name.to_string()).or_default();
        let mut seen = HashSet::with_capacity(snapshot.len());
        for n in snapshot {
            let name = n.name_any();
            let rec = recs.get(&name);
            let version = n.resource_version().map(|v| (v, rec.and_then(|r| r.resource_version())));
            // A self-fencing promise renews with its Lease, not with the Node: compared here.
            let promise = promises.get(&name).copied();
            let unchanged = version.is_some()
                && fleet.versions.get(&name) == version.as_ref()
                && fleet.index.get(&name).is_some_and(|o| o.self_fencing == promise);
            if !unchanged {
                // An unreadable node fails the pass before anything is decided (never remediate
                // on data that could not be read); its version is not kept, so it is read again.
                fleet.versions.remove(&name);
                let mut obs: NodeObservation = observe_node(n, rec)?;
                obs.self_fencing = promise;
                fleet.index.upsert(obs);
                if let Some(v) = version {
                    fleet.versions.insert(name.clone(), v);
                }
            }
            seen.insert(name);
        }
        // Every indexed node was seen unless the index holds more: only then look for the deleted.
        let gone: Vec<String> = if fleet.index.len() > seen.len() {
            fleet.index.nodes().iter().map(|o| o.name.clone()).filter(|name| !seen.contains(name)).collect()
        } else {
            Vec::new()
        };
        for name in gone {
            fleet.index.remove(&name);
            fleet.versions.remove(&name);
        }
        Ok(fleet.index.decide(policy, records, now))
    }
}

/// One reconcile pass for one policy: read, decide, persist records, act, tell.
pub struct Reconciler<'e> {
    pub client: Client,
    pub executor: &'e dyn Executor,
    /// Publishes the engine's events on Nodes, records and the policy.
    pub events: Option<&'e Recorder>,
    pub metrics: Option<&'e Metrics>,
    /// Checked right before anything is written: only the lease holder writes.
    pub fence: Option<&'e Leadership>,
    /// Incremental decisions across passes; without it every pass is a full pass.
    pub fleet_cache: Option<&'e FleetCache>,
    /// When this replica could not observe the cluster, and the grace after sight returned: the
    /// deadlines of steps in flight move on by that time before anything is decided.
    pub outages: &'e [Outage],
    pub reconnect_grace: nodemedic_core::Duration,
    /// The records from the watch cache with this process's writes laid over it; without it every
    /// pass lists them from the API server.
    pub records: Option<&'e RecordCache>,
    /// The namespace of the node agents' self-fencing Leases.
    pub agent_lease_namespace: &'e str,
}

impl<'e> Reconciler<'e> {
    pub fn new(client: Client, executor: &'e dyn Executor) -> Self {
        Reconciler {
            client,
            executor,
            events: None,
            metrics: None,
            fence: None,
            fleet_cache: None,
            outages: &[],
            reconnect_grace: DEFAULT_RECONNECT_GRACE,
            records: None,
            agent_lease_namespace: selffence::DEFAULT_AGENT_LEASE_NAMESPACE,
        }
    }

    pub fn with_fleet_cache(mut self, cache: &'e FleetCache) -> Self {
        self.fleet_cache = Some(cache);
        self
    }

    /// Reads everything from the API server, then reconciles.
    pub async fn reconcile(&self, policy_name: &str, now: Time) -> Result<Decision, ControllerError> {
        self.reconcile_with(policy_name, None, now).await
    }

    /// Reconciles with `nodes` from a watch cache when given (lean objects). The policy is always
    /// read fresh, and the records are either listed or taken from the [`RecordCache`], which lays
    /// this process's own writes over the watch: the engine must see its own last writes (the
    /// attempt counter, the breaker) or it could start the same step twice.
    pub async fn reconcile_with(&self, policy_name: &str, nodes: Option<&[Arc<Node>]>, now: Time) -> Result<Decision, ControllerError> {
        let started = std::time::Instant::now();
        let result = self.reconcile_inner(policy_name, nodes, now).await;
        if let Some(m) = self.metrics {
            m.reconcile_took(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                m.reconcile_error(e.metric_label());
            }
        }
        result
    }

    async fn reconcile_inner(&self, policy_name: &str, cached: Option<&[Arc<Node>]>, now: Time) -> Result<Decision, ControllerError> {
        let policies: Api<NodeHealthPolicy> = Api::all(self.client.clone());
        let policy = policies.get(policy_name).await?;
        let invalid = match policy.validate() {
            Err(e) => Some(("InvalidPolicy", e.to_string())),
            Ok(()) => match self.missing_executors(&policy.spec.policy) {
                Some(m) => Some(("MissingExecutor", m)),
                None => self.executor.check_policy(&policy.spec.policy).await.map(|m| ("TemplateNotFound", m)),
            },
        };
        if let Some((reason, e)) = invalid {
            // What the schema and CEL could not catch: say so on the policy and act on nothing.
            let status = NodeHealthPolicyStatus {
                observed_generation: policy.metadata.generation,
                conditions: conditions(policy.status.as_ref(), &[("Valid", false, reason, e.clone())]),
                notifications: Vec::new(),
                ..policy.status.clone().unwrap_or_default()
            };
            self.fenced().await?;
            self.write_policy_status(policy_name, &policy, status).await?;
            return Err(ControllerError::InvalidPolicy(policy_name.to_string(), e));
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let remediations: Api<NodeRemediation> = Api::all(self.client.clone());
        let all_records: Vec<NodeRemediation> = match self.records {
            Some(cache) => cache.state().iter().map(|r| r.as_ref().clone()).collect(),
            None => remediations.list(&ListParams::default()).await?.items,
        };
        let recs: BTreeMap<String, NodeRemediation> =
            all_records.into_iter().filter(|r| r.spec.policy == policy_name).map(|r| (r.spec.node.clone(), r)).collect();
        let listed: Vec<Arc<Node>>;
        let snapshot = match cached {
            Some(c) => c,
            None => {
                listed = nodes
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .map(|mut n| {
                        lean(&mut n);
                        Arc::new(n)
                    })
                    .collect();
                &listed
            }
        };
        let mut records = Records::default();
        for (node, r) in &recs {
            if let Some(st) = &r.status {
                records.nodes.insert(node.clone(), st.record.clone());
            }
        }
        if let Some(st) = &policy.status {
            records.policy = st.record.clone();
        }
        self.account_for_outages(policy_name, &mut records, &recs).await?;
        let promises = selffence::promises(&self.client, self.agent_lease_namespace, &recs).await;
        let decision = match self.fleet_cache {
            Some(cache) => {
                cache.decide(policy_name, &policy.spec.policy, Observed { snapshot, recs: &recs, promises: &promises }, &records, now)?
            }
            None => {
                let mut fleet = Vec::with_capacity(snapshot.len());
                for n in snapshot {
                    let mut obs = observe_node(n, recs.get(&n.name_any()))?;
                    obs.self_fencing = promises.get(&obs.name).copied();
                    fleet.push(obs);
                }
                decide(&policy.spec.policy, &fleet, &records, now)
            }
        };
        self.fenced().await?;
        self.persist(policy_name, &decision, &recs).await?;
        let p = &policy.spec.policy;
        let sum = &decision.summary;
        let paused = (
            !p.pause_requests.is_empty(),
            "PauseRequested",
            if p.pause_requests.is_empty() {
                "no pause requests".to_string()
            } else {
                format!("paused by: {}", p.pause_requests.join(", "))
            },
        );
        let breaker = decision.policy_record.as_ref().unwrap_or(&records.policy);
        let status = NodeHealthPolicyStatus {
            observed_generation: policy.metadata.generation,
            conditions: conditions(
                policy.status.as_ref(),
                &[
                    ("Valid", true, "Validated", "the policy passed validation".into()),
                    ("Paused", paused.0, paused.1, paused.2),
                    ("BreakerOpen", sum.breaker_open, "CircuitBreaker", breaker.breaker_reason.clone().unwrap_or_else(|| "closed".into())),
                    ("Executors", true, if p.monitor_only { "MonitorOnly" } else { "Configured" }, self.executors_in_words(p)),
                ],
            ),
            selected: sum.selected as u64,
            healthy: sum.healthy as u64,
            unhealthy: sum.unhealthy as u64,
            unknown: sum.unknown as u64,
            remediating: sum.remediating as u64,
            manual: sum.manual as u64,
            record: breaker.clone(),
            // Owned by the notifier's field manager; this apply leaves them alone.
            notifications: Vec::new(),
        };
        // The records are persisted: the steps they name are carried out even if the policy status
        // cannot be written this time (the engine asks for a step once; skipping it would lose it).
        let status_written = self.write_policy_status(policy_name, &policy, status).await;
        for a in &decision.would_execute {
            if let Action::Execute { node, step, attempt, .. } = a {
                let executor = self.executor.executor_for(*step).unwrap_or_else(|| "no executor".into());
                tracing::info!(node = %node, step = %step, attempt, executor = %executor, "monitor-only: would run the step with {executor}");
            }
        }
        let acted = self.act(policy_name, &decision, snapshot).await;
        // The records only; the nodes' taints need not be replayed.
        let mut after = records.clone();
        apply(&decision, &mut [], &mut after);
        self.resume_in_flight(&policy.spec.policy, &decision, &after, &recs).await;
        if let Err(message) = self.executor.release(&policy.spec.policy, &after).await {
            tracing::warn!(policy = %policy_name, error = %message, "releasing what finished remediations left behind failed; tried again next pass");
        }
        if let Some(m) = self.metrics {
            let pools = metrics::pools_of(snapshot, &p.node_pool_label, &after);
            m.observe(policy_name, &decision, &after, &pools, now);
        }
        if let Some(recorder) = self.events {
            publish_events(recorder, &policy, snapshot, &recs, &decision).await;
        }
        if let Err(e) = &status_written {
            tracing::warn!(policy = %policy_name, error = %e, "could not write the policy status; retried next pass");
        }
        acted?;
        status_written?;
        Ok(decision)
    }

    /// Moves the deadlines of steps in flight past the time this replica could not observe the
    /// cluster (the engine's rule), persisting the records first so a new leader sees them too.
    async fn account_for_outages(
        &self,
        policy_name: &str,
        records: &mut Records,
        recs: &BTreeMap<String, NodeRemediation>,
    ) -> Result<(), ControllerError> {
        let moved = account_for_outages(records, self.outages, self.reconnect_grace);
        if moved.is_empty() {
            return Ok(());
        }
        self.fenced().await?;
        let changes: Vec<RecordChange> = moved.into_iter().map(RecordChange::Upsert).collect();
        self.persist_records(policy_name, &changes, recs).await?;
        for change in changes {
            if let RecordChange::Upsert(r) = change {
                let a = r.active.as_ref();
                tracing::info!(
                    node = %r.node,
                    unobserved = %a.map(|a| a.unobserved).unwrap_or_default(),
                    deadline = ?a.and_then(|a| a.deadline),
                    "the API server did not answer for part of this step: its deadline moves on by that time"
                );
                records.nodes.insert(r.node.clone(), r);
            }
        }
        Ok(())
    }

    /// The ladder steps no executor can carry out, in words; None when every step has one.
    fn missing_executors(&self, policy: &nodemedic_core::Policy) -> Option<String> {
        let missing: Vec<String> = policy
            .ladder
            .iter()
            .enumerate()
            .filter(|(_, ls)| !matches!(ls.step, RemediationStep::Quarantine | RemediationStep::Manual))
            .filter(|(_, ls)| self.executor.executor_for(ls.step).is_none())
            .map(|(i, ls)| {
                format!(
                    "ladder[{i}] step {step}: no executor can carry it out (configure steps.{step} in --executors: a provider, webhook or command)",
                    step = ls.step
                )
            })
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Which executor each step of the ladder goes to (what monitor-only would have used).
    fn executors_in_words(&self, policy: &nodemedic_core::Policy) -> String {
        let steps: Vec<String> = policy
            .ladder
            .iter()
            .filter(|ls| !matches!(ls.step, RemediationStep::Quarantine | RemediationStep::Manual))
            .map(|ls| format!("{}: {}", ls.step, self.executor.executor_for(ls.step).unwrap_or_else(|| "none".into())))
            .collect();
        let prefix = if policy.monitor_only { "monitor-only, nothing is executed; the steps would go to " } else { "" };
        format!("{prefix}{}", steps.join("; "))
    }

    async fn fenced(&self) -> Result<(), ControllerError> {
        match self.fence {
            Some(f) if !f.confirm().await.map_err(|e| ControllerError::Lease(format!("reading the lease: {e}")))? => {
                Err(ControllerError::NotLeader)
            }
            _ => Ok(()),
        }
    }

    /// Server-side applies the policy status when it changed (condition times aside).
    async fn write_policy_status(
        &self,
        name: &str,
        policy: &NodeHealthPolicy,
        status: NodeHealthPolicyStatus,
    ) -> Result<(), ControllerError> {
        let notifications = policy.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default();
        if policy.status.as_ref() == Some(&NodeHealthPolicyStatus { notifications, ..status.clone() }) {
            return Ok(());
        }
        let api: Api<NodeHealthPolicy> = Api::all(self.client.clone());
        let body = serde_json::json!({"apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeHealthPolicy", "metadata": {"name": name}, "status": status});
        api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
        Ok(())
    }

    /// Records first: nothing is executed that is not recorded. A record that exists with this
    /// spec only gets its status written (one request, not two).
    async fn persist(
        &self,
        policy_name: &str,
        decision: &Decision,
        recs: &BTreeMap<String, NodeRemediation>,
    ) -> Result<(), ControllerError> {
        self.persist_records(policy_name, &decision.record_changes, recs).await
    }

    async fn persist_records(
        &self,
        policy_name: &str,
        changes: &[RecordChange],
        recs: &BTreeMap<String, NodeRemediation>,
    ) -> Result<(), ControllerError> {
        let api: Api<NodeRemediation> = Api::all(self.client.clone());
        let ssa = PatchParams::apply(FIELD_MANAGER).force();
        for change in changes {
            match change {
                RecordChange::Upsert(record) => {
                    let spec = NodeRemediationSpec { node: record.node.clone(), policy: policy_name.to_string() };
                    if recs.get(&record.node).is_none_or(|r| r.spec != spec) {
                        let written = api.patch(&record.node, &ssa, &Patch::Apply(&NodeRemediation::new(&record.node, spec))).await?;
                        if let Some(cache) = self.records {
                            cache.wrote(written);
                        }
                    }
                    // Server-side apply of the whole record: fields the engine dropped are removed,
                    // fields others own (the executor's report, a person's request) are kept.
                    let status = serde_json::json!({
                        "apiVersion": "nodemedic.io/v1alpha1",
                        "kind": "NodeRemediation",
                        "metadata": {"name": record.node},
                        "status": NodeRemediationStatus { record: record.clone(), ..Default::default() },
                    });
                    let written = api.patch_status(&record.node, &ssa, &Patch::Apply(&status)).await?;
                    if let Some(cache) = self.records {
                        cache.wrote(written);
                    }
                }
                RecordChange::Delete(node) => {
                    match api.delete(node, &DeleteParams::default()).await {
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(e.into()),
                        Ok(_) => {}
                    }
                    if let Some(cache) = self.records {
                        cache.deleted(node);
                    }
                }
            }
        }
        Ok(())
    }

    /// Carries out every action, even after one failed (a node whose taint patch failed must not
    /// keep another node's reboot from being handed over); the first error is returned.
    async fn act(&self, policy_name: &str, decision: &Decision, nodes: &[Arc<Node>]) -> Result<(), ControllerError> {
        let tainted: HashSet<&str> = decision
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::SetTaints { node, .. } | Action::SetOutOfService { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        let cached: HashMap<&str, &Node> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref().filter(|name| tainted.contains(name)).map(|name| (name, n.as_ref())))
            .collect();
        let mut first_error = None;
        for action in &decision.actions {
            let result = match action {
                Action::SetTaints { node, add, remove, reason } => {
                    tracing::info!(node = %node, add = ?add, remove = ?remove, reason = %reason, "setting taints");
                    self.set_taints(node, add, remove, cached.get(node.as_str()).copied()).await
                }
                Action::Execute { node, step, attempt, deadline, reason, template } => {
                    tracing::info!(node = %node, step = %step, attempt, reason = %reason, "executing step");
                    let request = StepRequest {
                        node: node.clone(),
                        step: *step,
                        attempt: *attempt,
                        deadline: *deadline,
                        reason: reason.clone(),
                        template: template.clone(),
                    };
                    self.executor.execute(&request).await.map_err(|message| {
                        if let Some(m) = self.metrics {
                            m.executor_error(policy_name, &step.to_string());
                        }
                        ControllerError::Executor { node: node.clone(), step: *step, attempt: *attempt, message }
                    })
                }
                Action::Notify { node, notice } => {
                    tracing::warn!(node = %node, notice = ?notice, "notification due");
                    Ok(())
                }
                Action::SetOutOfService { node, present, reason } => {
                    tracing::warn!(node = %node, present, reason = %reason, "out-of-service taint");
                    let (add, remove) =
                        if *present { (vec![out_of_service_taint()], vec![]) } else { (vec![], vec![OUT_OF_SERVICE_TAINT.to_string()]) };
                    self.patch_taints(node, &add, &remove, cached.get(node.as_str()).copied()).await
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "action failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Hands every step the records show in flight without a report (and not just started by this
    /// pass) back to its executor, which resumes it or reads its outcome back: the process that
    /// started it may have been the previous leader. Executors make this idempotent.
    async fn resume_in_flight(
        &self,
        policy: &nodemedic_core::Policy,
        decision: &Decision,
        after: &Records,
        recs: &BTreeMap<String, NodeRemediation>,
    ) {
        for record in after.nodes.values() {
            let report = recs.get(&record.node).and_then(|r| r.status.as_ref()).and_then(|s| s.step_report.as_ref());
            let Some(step) = step_to_resume(record, report) else { continue };
            let just_started = decision.actions.iter().any(|a| matches!(a, Action::Execute { node, .. } if *node == step.node));
            if just_started {
                continue;
            }
            // The template of the rung the record names (recorded before it was executed).
            let template = record
                .active
                .as_ref()
                .and_then(|a| policy.ladder.get(a.step_index).filter(|ls| ls.step == a.step))
                .and_then(|ls| ls.template.clone());
            let request = StepRequest {
                node: step.node,
                step: step.step,
                attempt: step.attempt,
                deadline: step.deadline,
                reason: step.reason,
                template,
            };
            if let Err(message) = self.executor.resume(&request).await {
                tracing::error!(node = %request.node, step = %request.step, attempt = request.attempt, error = %message, "resuming the step failed; tried again next pass");
            }
        }
    }

    /// Read-modify-write of the node's taints with a resourceVersion precondition, so taints others
    /// set meanwhile (the node lifecycle controller's, a person's) are never lost. The first try
    /// starts from the watch cache's copy (no GET); a stale copy is refused (409) and read again.
    async fn set_taints(&self, node: &str, add: &[String], remove: &[String], cached: Option<&Node>) -> Result<(), ControllerError> {
        let add: Vec<K8sTaint> =
            add.iter().map(|key| K8sTaint { key: key.clone(), effect: "NoSchedule".into(), value: None, time_added: None }).collect();
        self.patch_taints(node, &add, remove, cached).await
    }

    /// Adds `add` (where no taint has its key) and removes the keys in `remove`, keeping every other taint.
    async fn patch_taints(&self, node: &str, add: &[K8sTaint], remove: &[String], cached: Option<&Node>) -> Result<(), ControllerError> {
        let api: Api<Node> = Api::all(self.client.clone());
        const ATTEMPTS: u32 = 5;
        let mut cached = cached.filter(|n| n.resource_version().is_some()).cloned();
        for _ in 0..ATTEMPTS {
            let current = match cached.take() {
                Some(n) => n,
                None => api.get(node).await?,
            };
            let mut taints: Vec<K8sTaint> = current.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            taints.retain(|t| !remove.contains(&t.key));
            for taint in add {
                if !taints.iter().any(|t| t.key == taint.key) {
                    taints.push(taint.clone());
                }
            }
            let patch = serde_json::json!({"metadata": {"resourceVersion": current.resource_version()}, "spec": {"taints": taints}});
            match api.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::TaintConflict { node: node.to_string(), attempts: ATTEMPTS })
    }
}

/// `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`, which kube-controller-manager reads as
/// "this node is shut down": it force-deletes the node's terminating pods and detaches their volumes.
fn out_of_service_taint() -> K8sTaint {
    K8sTaint { key: OUT_OF_SERVICE_TAINT.into(), value: Some(OUT_OF_SERVICE_VALUE.into()), effect: "NoExecute".into(), time_added: None }
}

/// Installs (or updates) the CRDs with server-side apply and waits until the API server serves them.
pub async fn install_crds(client: &Client) -> Result<(), ControllerError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [nodemedic_k8s::policy_crd(), nodemedic_k8s::remediation_crd()] {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)).await?;
        for _ in 0..150 {
            let established = crds
                .get(&name)
                .await?
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // Established is not yet served: a new resource's storage answers 429 "(re)initializing" for a
    // moment. Wait until both can be listed.
    let lp = ListParams::default().limit(1);
    for _ in 0..150 {
        let policies = Api::<NodeHealthPolicy>::all(client.clone()).list(&lp).await;
        let records = Api::<NodeRemediation>::all(client.clone()).list(&lp).await;
        match (policies, records) {
            (Ok(_), Ok(_)) => return Ok(()),
            (Err(kube::Error::Api(s)), _) | (_, Err(kube::Error::Api(s))) if s.code == 429 || s.code == 404 || s.code == 503 => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Standard conditions, keeping a condition's lastTransitionTime while its status does not change.
fn conditions(previous: Option<&NodeHealthPolicyStatus>, wanted: &[(&str, bool, &str, String)]) -> Vec<Condition> {
    // Truncated to the second, as Kubernetes writes condition times.
    let second = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_else(|_| jiff::Timestamp::now());
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(second);
    wanted
        .iter()
        .map(|(type_, on, reason, message)| {
            let status = if *on { "True" } else { "False" }.to_string();
            let old = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == *type_));
            let last_transition_time = old.filter(|c| c.status == status).map_or(now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.clone(),
                last_transition_time,
                observed_generation: None,
            }
        })
        .collect()
}

/// The wall clock as the engine's time (the controller is the only place that reads it).
pub fn now() -> Time {
    Time(jiff::Timestamp::now().as_millisecond())
}
