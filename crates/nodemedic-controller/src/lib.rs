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
mod reconciler;
pub mod records;
pub mod run;
pub mod selffence;
pub mod webhook;

use events::publish_events;
pub use kube::runtime::events::Recorder;
pub use leader::Leadership;
pub use metrics::Metrics;
pub use reconciler::{FleetCache, Reconciler};
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
