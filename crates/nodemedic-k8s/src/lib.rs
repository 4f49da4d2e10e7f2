//! nodemedic-k8s owns nodemedic's Kubernetes API surface: the cluster-scoped `NodeHealthPolicy` (the
//! engine's policy model as a custom resource) and `NodeRemediation` (the durable per-node record the
//! engine reloads), their CRDs generated from nodemedic-core's types with schema and CEL validation,
//! printer columns and status subresources. It must not decide anything (that is nodemedic-core) and
//! must not run controllers or talk to a cluster itself.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use nodemedic_core::drain::DrainProgress;
use nodemedic_core::observe::{OperatorRequest, StepReport};
use nodemedic_core::record::{NodeRecord, PolicyRecord};
use nodemedic_core::{Policy, PolicyError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod observe;
pub use observe::{ObserveError, lean, lean_record, observe_node, self_fencing};

pub const GROUP: &str = "nodemedic.io";

/// A policy: which nodes, what is unhealthy, the ladder and the gates (see nodemedic-core).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nodemedic.io",
    version = "v1alpha1",
    kind = "NodeHealthPolicy",
    plural = "nodehealthpolicies",
    shortname = "nhp",
    status = "NodeHealthPolicyStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Monitor-only","type":"boolean","jsonPath":".spec.monitorOnly"}"#,
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.selected"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthy"}"#,
    printcolumn = r#"{"name":"Remediating","type":"integer","jsonPath":".status.remediating"}"#,
    printcolumn = r#"{"name":"Manual","type":"integer","jsonPath":".status.manual"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct NodeHealthPolicySpec {
    #[serde(flatten)]
    pub policy: Policy,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealthPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid` (the policy passed validation; False names the problem), `Paused`, `BreakerOpen`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub selected: u64,
    #[serde(default)]
    pub healthy: u64,
    #[serde(default)]
    pub unhealthy: u64,
    #[serde(default)]
    pub unknown: u64,
    #[serde(default)]
    pub remediating: u64,
    #[serde(default)]
    pub manual: u64,
    /// The engine's durable per-policy state (the circuit breaker).
    #[serde(default, flatten)]
    pub record: PolicyRecord,
    /// Every try at telling people about the policy (the breaker), written by the notifier under its own
    /// field manager.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationRecord>,
}

/// One try at delivering one notification to one channel, as recorded in a status. The `ok` entries are
/// what the controller reloads after a restart so that nothing is sent twice.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRecord {
    /// The incident's idempotency key (`<node>/<kind>/<attempt>`, `policy:<policy>/<kind>/<millis>`).
    pub key: String,
    pub channel: String,
    /// 1 for the first try.
    pub attempt: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: nodemedic_core::Time,
    /// The last failed try: no more retries until the incident is submitted again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gave_up: bool,
}

/// One node's remediation record: what happened, what is in flight, and why. Named after the node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nodemedic.io",
    version = "v1alpha1",
    kind = "NodeRemediation",
    plural = "noderemediations",
    shortname = "nrem",
    status = "NodeRemediationStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policy"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.active.step"}"#,
    printcolumn = r#"{"name":"Attempt","type":"integer","jsonPath":".status.attempt"}"#,
    printcolumn = r#"{"name":"Deadline","type":"string","priority":1,"jsonPath":".status.active.deadline"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.active.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeRemediationSpec {
    pub node: String,
    /// The NodeHealthPolicy that manages the node.
    pub policy: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRemediationStatus {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Written by the executor (the node agent or a site script): how the current attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_report: Option<StepReport>,
    /// Written by a person through the CLI or API (e.g. resolved by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_request: Option<OperatorRequest>,
    /// Written by the drain executor as it goes: which pods were asked to leave, when, and what
    /// answered. A new leader resumes the drain from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_progress: Option<DrainProgress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Every try at telling people about this node, written by the notifier under its own field manager.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationRecord>,
}

/// CEL rules for what a structural schema cannot say, each with the message `kubectl` shows.
const POLICY_RULES: &[(&str, &str)] = &[
    (
        "!has(self.gates) || !(has(self.gates.minHealthy) && has(self.gates.maxUnhealthy))",
        "set gates.minHealthy or gates.maxUnhealthy, not both",
    ),
    ("size(self.ladder) > 0", "the remediation ladder needs at least one step"),
    ("size(self.rules) > 0", "at least one unhealthy rule is needed"),
    (
        "!self.ladder.exists(s, s.step == 'manual') || (self.ladder.exists_one(s, s.step == 'manual') && self.ladder[size(self.ladder) - 1].step == 'manual')",
        "manual must be the last step, and appear once: nothing runs after a person takes over",
    ),
    (
        "self.rules.all(r, (has(r.condition) ? 1 : 0) + (has(r.gpuCount) ? 1 : 0) + (has(r.check) ? 1 : 0) == 1)",
        "each rule needs exactly one of condition, gpuCount, check",
    ),
    (
        "self.ladder.all(s, has(s.template) == (s.step == 'external'))",
        "an external step needs a template (apiVersion, kind, name, namespace), and only an external step takes one",
    ),
];

/// Fields that take a count or a percentage; a structural schema cannot bound the percentage, CEL can.
const INT_OR_PERCENT_FIELDS: &[&str] =
    &["gates.minHealthy", "gates.maxUnhealthy", "gates.maxConcurrent", "gates.maxConcurrentPerPool", "gates.circuitBreaker.maxUnhealthy"];

fn int_or_percent_rule(field: &str) -> serde_json::Value {
    // `has()` of every parent, then: an integer, or digits and `%` with the number at most 100.
    let parts: Vec<&str> = field.split('.').collect();
    let guards: Vec<String> = (1..=parts.len()).map(|n| format!("has(self.{})", parts[..n].join("."))).collect();
    let v = format!("self.{field}");
    serde_json::json!({
        "rule": format!("!({}) || type({v}) == int || ({v}.matches('^[0-9]+%$') && int({v}.substring(0, size({v}) - 1)) <= 100)", guards.join(" && ")),
        "message": format!("{field} must be a count or a percentage of at most 100%"),
        "fieldPath": format!(".{field}"),
    })
}

/// The NodeHealthPolicy CRD: the generated schema plus CEL rules on the spec.
pub fn policy_crd() -> CustomResourceDefinition {
    let mut crd = NodeHealthPolicy::crd();
    let rules: Vec<serde_json::Value> = POLICY_RULES
        .iter()
        .map(|(rule, message)| serde_json::json!({"rule": rule, "message": message}))
        .chain(INT_OR_PERCENT_FIELDS.iter().map(|f| int_or_percent_rule(f)))
        .collect();
    for version in &mut crd.spec.versions {
        let Some(spec) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
        else {
            continue;
        };
        spec.x_kubernetes_validations = Some(rules.iter().filter_map(|r| serde_json::from_value(r.clone()).ok()).collect());
    }
    crd
}

pub fn remediation_crd() -> CustomResourceDefinition {
    NodeRemediation::crd()
}

/// Both CRDs as one YAML stream (for `kubectl apply -f`).
pub fn crds_yaml() -> Result<String, String> {
    let mut out = String::new();
    for crd in [policy_crd(), remediation_crd()] {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&crd).map_err(|e| e.to_string())?);
        out.push('\n');
    }
    Ok(out)
}

impl NodeHealthPolicy {
    /// The same validation the engine applies; what the schema and CEL cannot catch ends up here and
    /// in the `Valid=False` condition.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.spec.policy.validate()
    }
}

/// Field managers of the writers that share a NodeRemediation's status: each owns its own fields,
/// so server-side apply keeps them apart.
pub mod field_managers {
    pub const CONTROLLER: &str = "nodemedic-controller";
    pub const AGENT: &str = "nodemedic-agent";
    pub const DRAIN: &str = "nodemedic-drain";
    /// The drain's progress has its own manager: an apply of one field set under a manager drops
    /// the fields it applied before, so the report and the progress cannot share one.
    pub const DRAIN_PROGRESS: &str = "nodemedic-drain-progress";
    pub const EXECUTOR: &str = "nodemedic-executor";
    pub const OPERATOR: &str = "nodemedic-operator";
    pub const NOTIFIER: &str = "nodemedic-notifier";
}

/// Writes how far a drain has come (`status.drainProgress`), server-side applied under the drain's
/// field manager so the controller's record fields and the step report are untouched.
pub async fn write_drain_progress(client: &kube::Client, node: &str, progress: &DrainProgress) -> Result<NodeRemediation, kube::Error> {
    let api: kube::Api<NodeRemediation> = kube::Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "nodemedic.io/v1alpha1",
        "kind": "NodeRemediation",
        "metadata": {"name": node},
        "status": {"drainProgress": progress},
    });
    let params = kube::api::PatchParams::apply(field_managers::DRAIN_PROGRESS).force();
    api.patch_status(node, &params, &kube::api::Patch::Apply(&body)).await
}

/// Reports how a step ended on the node's NodeRemediation (`status.stepReport`), server-side
/// applied under `field_manager` so the controller's record fields are untouched. The engine only
/// accepts a report whose `attempt` matches the record's, so a late report about an older attempt
/// is harmless.
pub async fn report_step(
    client: &kube::Client,
    field_manager: &str,
    node: &str,
    report: &StepReport,
) -> Result<NodeRemediation, kube::Error> {
    let api: kube::Api<NodeRemediation> = kube::Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "nodemedic.io/v1alpha1",
        "kind": "NodeRemediation",
        "metadata": {"name": node},
        "status": {"stepReport": report},
    });
    api.patch_status(node, &kube::api::PatchParams::apply(field_manager).force(), &kube::api::Patch::Apply(&body)).await
}
