//! The `external` step: a node handed to an external remediator through the medik8s External
//! Remediation API, as NodeHealthCheck does it, so Self Node Remediation, Fence Agents Remediation,
//! Machine Deletion Remediation (or any remediator following the API) run unchanged.
//!
//! - The ladder step names a `*Template` object (apiVersion, kind, namespace, name). Its
//!   `spec.template.spec` is copied into the `spec` of a remediation CR of the same group and version,
//!   of the template's kind without `Template`, named after the node, in the template's namespace,
//!   with an owner reference (controller: false) to the node's NodeRemediation. Both kinds are found
//!   by API discovery at each step, so any remediator's API works without code here.
//! - The step succeeds when the CR's status has condition `Succeeded=True`, fails on
//!   `Succeeded=False`, and otherwise waits (`Processing` is logged) until the step's deadline, when
//!   the CR gets NodeHealthCheck's `remediation.medik8s.io/nhc-timed-out` annotation so the
//!   remediator can stop, and the step is reported failed.
//! - A CR this node's NodeRemediation owns for the same attempt is adopted (a new leader resuming
//!   the step, or a second replica, never creates a second one: the name is the node's); one left by
//!   an earlier attempt is deleted first; one nodemedic does not own fails the step.
//! - [`ExternalExecutor::release_finished`] deletes the CRs of nodes whose remediation is over (healthy again,
//!   or resolved by a person), as NodeHealthCheck does once a node is healthy.

use crate::executors::{Started, report_or_log, std_duration, time_left};
use crate::{CheckFuture, ExecFuture, Executor, StepRequest};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use nodemedic_core::external::{RemediatorCondition, RemediatorVerdict, remediator_verdict};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::policy::ExternalTemplate;
use nodemedic_core::{Duration, Policy, Records, RemediationStep, Time};
use nodemedic_k8s::{NodeRemediation, field_managers};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Set on every remediation CR nodemedic creates; [`ExternalExecutor::release_finished`] lists by it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "nodemedic";
/// The attempt the CR was created for.
pub const ATTEMPT_ANNOTATION: &str = "nodemedic.io/attempt";
/// The node the CR remediates (medik8s remediators also read it when the name is not the node's).
pub const NODE_NAME_ANNOTATION: &str = "remediation.medik8s.io/node-name";
/// NodeHealthCheck's signal to a remediator that it timed out and should stop.
pub const TIMED_OUT_ANNOTATION: &str = "remediation.medik8s.io/nhc-timed-out";

/// How the external executor waits (`external:` in the executors config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ExternalConfig {
    /// How often the remediation CR's status is read. Default 1s.
    pub poll_interval: Duration,
    /// How long to wait for the remediator when the request carries no deadline. Default 30m.
    pub timeout: Duration,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        ExternalConfig { poll_interval: Duration::from_secs(1), timeout: Duration::from_mins(30) }
    }
}

/// Why one look at the remediation CR did not give an answer.
enum Problem {
    /// Will not change by waiting: the step fails with this message.
    Fatal(String),
    /// Might (the API server did not answer, an old CR is still going): try again.
    Transient(String),
}

/// The remediator's verdict in the CR's status.
enum Verdict {
    Succeeded(String),
    Failed(String),
    Waiting(String),
}

/// Runs `external` steps through the medik8s External Remediation API.
pub struct ExternalExecutor {
    client: Client,
    config: ExternalConfig,
    started: Arc<Started>,
    /// Templates found when a policy loaded, and when.
    found: std::sync::Mutex<std::collections::HashMap<ExternalTemplate, std::time::Instant>>,
    /// Nodes whose finished remediation's CRs are gone, by the end of that remediation's last step.
    released: std::sync::Mutex<BTreeMap<String, Time>>,
}

/// How long a template found at load is believed to exist before it is read again.
pub const TEMPLATE_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

impl ExternalExecutor {
    pub fn new(client: Client, config: ExternalConfig) -> ExternalExecutor {
        ExternalExecutor { client, config, started: Arc::default(), found: Default::default(), released: Default::default() }
    }

    fn spawn(&self, request: &StepRequest) -> Result<tokio::task::AbortHandle, String> {
        let Some(template) = request.template.clone() else {
            return Err(format!("step {} on {} names no remediation template", request.step, request.node));
        };
        let (client, config, req) = (self.client.clone(), self.config.clone(), request.clone());
        Ok(tokio::spawn(async move { run_step(&client, &config, &req, &template).await }).abort_handle())
    }

    /// The ladder's templates that do not exist (or whose kind is not served), each naming its rung;
    /// None when all exist or the API server could not say (a template found is not asked about
    /// again for [`TEMPLATE_RECHECK`]).
    pub async fn missing_templates(&self, policy: &Policy) -> Option<String> {
        let mut missing = Vec::new();
        for (i, template) in policy.ladder.iter().enumerate().filter_map(|(i, ls)| ls.template.as_ref().map(|t| (i, t))) {
            let fresh =
                self.found.lock().unwrap_or_else(|e| e.into_inner()).get(template).is_some_and(|at| at.elapsed() < TEMPLATE_RECHECK);
            if fresh {
                continue;
            }
            match read_template(&self.client, template).await {
                Ok(_) => {
                    self.found.lock().unwrap_or_else(|e| e.into_inner()).insert(template.clone(), std::time::Instant::now());
                }
                Err(Problem::Fatal(m)) => missing.push(format!("ladder[{i}].template: {m}")),
                Err(Problem::Transient(m)) => tracing::warn!(template = %template, error = %m, "could not check the remediation template"),
            }
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Deletes the remediation CRs, made from `policy`'s templates, of the nodes `records` shows with
    /// no remediation in progress. Nodes without a record under this policy are left alone (another
    /// policy's, or gone: the owner reference lets the garbage collector take their CRs).
    /// Only nodes whose finished remediation went through an external step are looked for, and each
    /// finished remediation once per process, so a fleet that is healthy costs no request.
    pub async fn release_finished(&self, policy: &Policy, records: &Records) -> Result<(), String> {
        let candidates: BTreeMap<String, Time> = {
            let released = self.released.lock().unwrap_or_else(|e| e.into_inner());
            records
                .nodes
                .values()
                .filter(|r| r.active.is_none() && r.history.iter().any(|h| h.step == RemediationStep::External))
                .filter_map(|r| r.history.last().map(|h| (r.node.clone(), h.ended_at)))
                .filter(|(node, ended)| released.get(node) != Some(ended))
                .collect()
        };
        if candidates.is_empty() {
            return Ok(());
        }
        let kinds: BTreeSet<(String, String, String)> = policy
            .ladder
            .iter()
            .filter_map(|ls| ls.template.as_ref())
            .map(|t| (t.api_version.clone(), t.remediation_kind().to_string(), t.namespace.clone()))
            .collect();
        let mut first_error = None;
        for (api_version, kind, namespace) in kinds {
            let Some((group, version)) = api_version.split_once('/') else { continue };
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &namespace, &ar);
            let listed = match api.list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))).await {
                Ok(l) => l,
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => {
                    first_error.get_or_insert(format!("listing {kind} in {namespace}: {e}"));
                    continue;
                }
            };
            for cr in listed.items {
                let node = cr.name_any();
                if !candidates.contains_key(&node) || cr.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match api.delete(&node, &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::info!(node = %node, kind = %kind, namespace = %namespace, "node healthy again: its remediation CR is deleted")
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        first_error.get_or_insert(format!("deleting {kind} {namespace}/{node}: {e}"));
                    }
                }
            }
        }
        if first_error.is_none() {
            self.released.lock().unwrap_or_else(|e| e.into_inner()).extend(candidates);
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Executor for ExternalExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move {
            if !self.started.start(request, || self.spawn(request))? {
                tracing::info!(node = %request.node, attempt = request.attempt, "external remediation already followed for this attempt");
            }
            Ok(())
        })
    }

    /// The leader that followed the CR may be gone: follow it again (adopting the CR it created).
    fn resume<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        self.execute(request)
    }

    fn release<'a>(&'a self, policy: &'a Policy, records: &'a Records) -> ExecFuture<'a> {
        Box::pin(self.release_finished(policy, records))
    }

    fn check_policy<'a>(&'a self, policy: &'a Policy) -> CheckFuture<'a> {
        Box::pin(self.missing_templates(policy))
    }

    fn executor_for(&self, step: RemediationStep) -> Option<String> {
        (step == RemediationStep::External).then(|| "an external remediator (medik8s External Remediation API)".into())
    }
}

/// Creates or adopts the CR, then follows its status until a verdict or the deadline; reports.
async fn run_step(client: &Client, config: &ExternalConfig, req: &StepRequest, template: &ExternalTemplate) {
    let left = time_left(req.deadline, config.timeout);
    let until = tokio::time::Instant::now() + left;
    let mut last = String::from("no answer from the API server yet");
    let mut created: Option<(ApiResource, String)> = None;
    while tokio::time::Instant::now() < until {
        match look(client, req, template, &mut created).await {
            Ok(Verdict::Succeeded(m)) => return report_or_log(client, field_managers::EXECUTOR, req, ReportedOutcome::Succeeded, m).await,
            Ok(Verdict::Failed(m)) | Err(Problem::Fatal(m)) => {
                return report_or_log(client, field_managers::EXECUTOR, req, ReportedOutcome::Failed, m).await;
            }
            Ok(Verdict::Waiting(m)) | Err(Problem::Transient(m)) => {
                if m != last {
                    tracing::info!(node = %req.node, attempt = req.attempt, state = %m, "waiting for the external remediator");
                }
                last = m;
            }
        }
        // At least 100 ms between looks, whatever the config says.
        let pause = std_duration(config.poll_interval).max(std::time::Duration::from_millis(100));
        tokio::time::sleep(pause.min(until.saturating_duration_since(tokio::time::Instant::now()))).await;
    }
    if let Some((ar, namespace)) = &created {
        mark_timed_out(client, ar, namespace, &req.node).await;
    }
    let message = format!(
        "{} for node {}: the remediator did not report Succeeded before the step's deadline ({}s); last seen: {last}",
        template.remediation_kind(),
        req.node,
        left.as_secs()
    );
    // The engine times the step out at the same deadline and may have started the next attempt,
    // whose report this one must not overwrite.
    let record = Api::<NodeRemediation>::all(client.clone()).get_opt(&req.node).await;
    let moved_on = matches!(&record, Ok(Some(r)) if r.status.as_ref().is_some_and(|s| s.record.attempt != req.attempt));
    if moved_on {
        tracing::info!(node = %req.node, attempt = req.attempt, %message, "the ladder moved on at the deadline; not reported");
        return;
    }
    report_or_log(client, field_managers::EXECUTOR, req, ReportedOutcome::Failed, message).await;
}

/// One look: make sure this attempt's CR exists (creating or adopting it), and read its verdict.
async fn look(
    client: &Client,
    req: &StepRequest,
    template: &ExternalTemplate,
    created: &mut Option<(ApiResource, String)>,
) -> Result<Verdict, Problem> {
    if let Some((ar, namespace)) = created.as_ref() {
        // Fast path once the CR is known: one GET a look.
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
        let cr = api.get_opt(&req.node).await.map_err(|e| transient(&format!("reading the remediation CR of {}", req.node), e))?;
        if let Some(cr) = cr.filter(|cr| cr.annotations().get(ATTEMPT_ANNOTATION) == Some(&req.attempt.to_string())) {
            return Ok(verdict(&cr, template));
        }
    }
    let (ar, cr) = ensure_cr(client, req, template).await?;
    *created = Some((ar, template.namespace.clone()));
    Ok(verdict(&cr, template))
}

async fn discover(client: &Client, api_version: &str, kind: &str, what: &str) -> Result<ApiResource, Problem> {
    let Some((group, version)) = api_version.split_once('/') else {
        return Err(Problem::Fatal(format!("{what}: apiVersion `{api_version}` is not group/version")));
    };
    match kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind)).await {
        Ok((ar, _)) => Ok(ar),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(Problem::Fatal(format!("{what}: the API server does not serve {kind} in {api_version} (is the remediator installed?)")))
        }
        Err(kube::Error::Discovery(e)) => Err(Problem::Fatal(format!("{what}: {kind} in {api_version} is not served: {e}"))),
        Err(e) => Err(Problem::Transient(format!("{what}: discovery of {kind} in {api_version}: {e}"))),
    }
}

fn transient(what: &str, e: kube::Error) -> Problem {
    match e {
        kube::Error::Api(s) if s.code == 403 => Problem::Fatal(format!("{what}: forbidden (check the controller's RBAC): {}", s.message)),
        e => Problem::Transient(format!("{what}: {e}")),
    }
}

/// The CR of this attempt: the existing one if this node's NodeRemediation owns it and it was made
/// for this attempt, else a new one from the template.
async fn ensure_cr(client: &Client, req: &StepRequest, template: &ExternalTemplate) -> Result<(ApiResource, DynamicObject), Problem> {
    let kind = template.remediation_kind();
    let cr_ar = discover(client, &template.api_version, kind, &format!("remediation template {template}")).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &template.namespace, &cr_ar);
    let name = format!("{kind} {}/{}", template.namespace, req.node);
    let owner = Api::<NodeRemediation>::all(client.clone())
        .get(&req.node)
        .await
        .map_err(|e| transient(&format!("reading the NodeRemediation {}", req.node), e))?;
    let owner_uid = owner.uid().unwrap_or_default();
    if let Some(cr) = api.get_opt(&req.node).await.map_err(|e| transient(&format!("reading {name}"), e))? {
        let ours = cr.owner_references().iter().any(|o| o.kind == "NodeRemediation" && o.uid == owner_uid);
        if !ours {
            let owners: Vec<String> = cr.owner_references().iter().map(|o| format!("{} {}", o.kind, o.name)).collect();
            return Err(Problem::Fatal(format!(
                "{name} already exists and nodemedic did not create it (owners: {}); another controller's remediation is left alone",
                if owners.is_empty() { "none".to_string() } else { owners.join(", ") }
            )));
        }
        let attempt = cr.annotations().get(ATTEMPT_ANNOTATION).cloned().unwrap_or_default();
        if attempt == req.attempt.to_string() {
            return Ok((cr_ar, cr));
        }
        if cr.metadata.deletion_timestamp.is_none() {
            api.delete(&req.node, &DeleteParams::default()).await.map_err(|e| transient(&format!("deleting the old {name}"), e))?;
        }
        return Err(Problem::Transient(format!("{name} of attempt {attempt} is being deleted before attempt {} starts", req.attempt)));
    }
    let spec = read_template(client, template).await?;
    let mut cr = DynamicObject::new(&req.node, &cr_ar).within(&template.namespace);
    cr.data = serde_json::json!({ "spec": spec });
    cr.labels_mut().insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    cr.annotations_mut().insert(ATTEMPT_ANNOTATION.into(), req.attempt.to_string());
    cr.annotations_mut().insert(NODE_NAME_ANNOTATION.into(), req.node.clone());
    cr.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: format!("{}/v1alpha1", nodemedic_k8s::GROUP),
        kind: "NodeRemediation".into(),
        name: req.node.clone(),
        uid: owner_uid,
        controller: Some(false),
        block_owner_deletion: None,
    }]);
    match api.create(&PostParams { field_manager: Some(field_managers::EXECUTOR.into()), ..Default::default() }, &cr).await {
        Ok(cr) => {
            tracing::info!(node = %req.node, attempt = req.attempt, cr = %name, template = %template, "remediation CR created");
            Ok((cr_ar, cr))
        }
        // Another replica created it meanwhile: the next look adopts it.
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Problem::Transient(format!("{name} was created meanwhile"))),
        Err(e) => Err(transient(&format!("creating {name}"), e)),
    }
}

/// The template's `spec.template.spec`: what every remediation CR made from it gets as `spec`.
async fn read_template(client: &Client, template: &ExternalTemplate) -> Result<serde_json::Value, Problem> {
    let template_ar = discover(client, &template.api_version, &template.kind, &format!("remediation template {template}")).await?;
    let templates: Api<DynamicObject> = Api::namespaced_with(client.clone(), &template.namespace, &template_ar);
    let Some(t) = templates.get_opt(&template.name).await.map_err(|e| transient(&format!("reading the template {template}"), e))? else {
        return Err(Problem::Fatal(format!("the remediation template {template} does not exist")));
    };
    t.data
        .pointer("/spec/template/spec")
        .cloned()
        .ok_or_else(|| Problem::Fatal(format!("the remediation template {template} has no spec.template.spec")))
}

/// The remediator's verdict (core's [`remediator_verdict`]: only `Succeeded` decides), naming the CR.
fn verdict(cr: &DynamicObject, template: &ExternalTemplate) -> Verdict {
    let name = format!("{} {}/{}", template.remediation_kind(), template.namespace, cr.name_any());
    // A condition that is not an object with string fields counts as absent.
    let conditions: Vec<RemediatorCondition> = cr
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .map(|list| list.iter().filter_map(|c| serde_json::from_value(c.clone()).ok()).collect())
        .unwrap_or_default();
    match remediator_verdict(&conditions) {
        RemediatorVerdict::Succeeded(m) => Verdict::Succeeded(format!("{name}: {m}")),
        RemediatorVerdict::Failed(m) => Verdict::Failed(format!("{name}: {m}")),
        RemediatorVerdict::Waiting(m) => Verdict::Waiting(format!("{name}: {m}")),
    }
}

/// Tells the remediator to stop, as NodeHealthCheck does when a remediation times out. Best effort:
/// the step is reported failed either way.
async fn mark_timed_out(client: &Client, ar: &ApiResource, namespace: &str, node: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    let now = rfc3339_now();
    let patch = serde_json::json!({"metadata": {"annotations": {TIMED_OUT_ANNOTATION: now}}});
    if let Err(e) = api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
        tracing::warn!(node = %node, error = %e, "could not mark the remediation CR timed out");
    }
}

/// RFC 3339 UTC of the controller's clock.
fn rfc3339_now() -> String {
    serde_json::to_value(crate::now()).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemedic_core::NodeRecord;

    fn snr_ladder() -> Result<Policy, Box<dyn std::error::Error>> {
        Ok(Policy::from_yaml(
            "rules: [{name: gpu, check: {name: gpu}}]\nladder:\n- {step: external, template: {apiVersion: self-node-remediation.medik8s.io/v1alpha1, kind: SelfNodeRemediationTemplate, name: t, namespace: medik8s}}\n- {step: manual}\n",
        )?)
    }

    /// A client for an address where nothing answers: any request it makes fails.
    fn nowhere() -> Result<Client, Box<dyn std::error::Error>> {
        Ok(Client::try_from(kube::Config::new("http://127.0.0.1:9".parse()?))?)
    }

    #[tokio::test]
    async fn a_fleet_whose_remediations_never_went_through_an_external_step_costs_no_request() -> Result<(), Box<dyn std::error::Error>> {
        let executor = ExternalExecutor::new(nowhere()?, ExternalConfig::default());
        let mut records = Records::default();
        records.nodes.insert("gpu-1".into(), NodeRecord::new("gpu-1"));
        assert_eq!(executor.release_finished(&snr_ladder()?, &records).await, Ok(()));
        Ok(())
    }

    #[tokio::test]
    async fn a_finished_external_remediation_is_looked_for_and_an_unreachable_api_server_is_an_error()
    -> Result<(), Box<dyn std::error::Error>> {
        let executor = ExternalExecutor::new(nowhere()?, ExternalConfig::default());
        let mut record = NodeRecord::new("gpu-1");
        record.history.push(nodemedic_core::record::StepHistory {
            attempt: 1,
            step: RemediationStep::External,
            started_at: Time(0),
            ended_at: Time(1),
            outcome: nodemedic_core::record::StepOutcome::Recovered,
            reason: "checks passed".into(),
            executed: true,
        });
        let mut records = Records::default();
        records.nodes.insert("gpu-1".into(), record);
        let err = executor.release_finished(&snr_ladder()?, &records).await.err().unwrap_or_default();
        assert!(err.contains("listing SelfNodeRemediation in medik8s"), "{err}");
        Ok(())
    }

    #[test]
    fn only_succeeded_decides_and_the_message_names_the_cr_and_the_condition() {
        let template = ExternalTemplate {
            api_version: "fence-agents-remediation.medik8s.io/v1alpha1".into(),
            kind: "FenceAgentsRemediationTemplate".into(),
            name: "t".into(),
            namespace: "medik8s".into(),
        };
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("fence-agents-remediation.medik8s.io", "v1alpha1", "FenceAgentsRemediation"));
        let with = |conditions: serde_json::Value| {
            let mut cr = DynamicObject::new("gpu-1", &ar).within("medik8s");
            cr.data = serde_json::json!({"status": {"conditions": conditions}});
            verdict(&cr, &template)
        };
        let processing = serde_json::json!({"type": "Processing", "status": "True", "reason": "RemediationStarted"});
        assert!(matches!(with(serde_json::json!([])), Verdict::Waiting(m) if m.contains("no status conditions")));
        assert!(matches!(with(serde_json::json!([processing])), Verdict::Waiting(m) if m.contains("Processing=True (RemediationStarted)")));
        let failed = serde_json::json!([{"type": "Succeeded", "status": "False", "reason": "FenceAgentFailed", "message": "fence_ipmilan: timed out"}]);
        assert!(
            matches!(with(failed), Verdict::Failed(m) if m == "FenceAgentsRemediation medik8s/gpu-1: the remediator reports Succeeded=False (FenceAgentFailed: fence_ipmilan: timed out)")
        );
        let unknown = serde_json::json!([{"type": "Succeeded", "status": "Unknown"}]);
        assert!(matches!(with(unknown), Verdict::Waiting(_)));
        assert!(
            matches!(with(serde_json::json!([{"type": "Succeeded", "status": "True"}])), Verdict::Succeeded(m) if m.contains("Succeeded=True"))
        );
    }
}
