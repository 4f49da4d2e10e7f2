//! The `POST /actions` request as seed 002 defines it, read field by field so that every refusal
//! names the field it is about. Pure: nothing here talks to a cluster.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to do. Seed 002's four node-pool actions, plus two for a single node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    /// Mark every node of `node_pool` unschedulable.
    CordonNodepool,
    /// Cordon `node_pool`, then restart the JobSet `jobset_name` by deleting its leader pod.
    CordonNodepoolAndRestartJobset,
    /// Cordon `node_pool`, then replace one of its instances through the provider.
    CordonAndRepairNodepool,
    /// Replace one instance of `node_pool` through the provider, without cordoning.
    RepairNodepool,
    /// Mark `node_name` unschedulable.
    CordonNode,
    /// Replace the instance behind `node_name` through the provider.
    RepairNode,
}

impl ActionType {
    pub const ALL: [ActionType; 6] = [
        ActionType::CordonNodepool,
        ActionType::CordonNodepoolAndRestartJobset,
        ActionType::CordonAndRepairNodepool,
        ActionType::RepairNodepool,
        ActionType::CordonNode,
        ActionType::RepairNode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::CordonNodepool => "cordon_nodepool",
            ActionType::CordonNodepoolAndRestartJobset => "cordon_nodepool_and_restart_jobset",
            ActionType::CordonAndRepairNodepool => "cordon_and_repair_nodepool",
            ActionType::RepairNodepool => "repair_nodepool",
            ActionType::CordonNode => "cordon_node",
            ActionType::RepairNode => "repair_node",
        }
    }

    pub fn parse(s: &str) -> Option<ActionType> {
        ActionType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn cordons(self) -> bool {
        matches!(
            self,
            ActionType::CordonNodepool
                | ActionType::CordonNodepoolAndRestartJobset
                | ActionType::CordonAndRepairNodepool
                | ActionType::CordonNode
        )
    }

    pub fn repairs(self) -> bool {
        matches!(self, ActionType::CordonAndRepairNodepool | ActionType::RepairNodepool | ActionType::RepairNode)
    }

    pub fn restarts_jobset(self) -> bool {
        self == ActionType::CordonNodepoolAndRestartJobset
    }

    /// Acts on one node (`node_name`) rather than a pool (`node_pool`).
    pub fn single_node(self) -> bool {
        matches!(self, ActionType::CordonNode | ActionType::RepairNode)
    }

    /// The fields this type needs beside `requestor`, `reason` and `type`.
    pub fn required_fields(self) -> &'static [&'static str] {
        match self {
            ActionType::CordonNodepoolAndRestartJobset => &["node_pool", "jobset_name"],
            ActionType::CordonNode | ActionType::RepairNode => &["node_name"],
            _ => &["node_pool"],
        }
    }
}

impl std::fmt::Display for ActionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Optional checks before anything is done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreflightChecks {
    /// Refuse (422) unless the pool has as many nodes as its TPU topology needs: the chips of the
    /// topology label (`8x8x8` = 512) divided by the accelerator-count label (chips per node).
    #[serde(default)]
    pub expected_node_counts: bool,
}

/// The request body of `POST /actions` (seed 002's fields, plus `force`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Unique identifier of the action; generated when absent or null. Letters, digits, `-`, `_`
    /// and `.`, at most 63, beginning and ending with a letter or digit.
    #[serde(default)]
    #[schemars(regex(pattern = crate::validate::LABEL_VALUE_PATTERN))]
    pub id: Option<String>,
    /// Only log and publish events; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Who (person or system) asks for the action. No control characters.
    #[schemars(length(min = 1, max = crate::validate::MAX_REQUESTOR), regex(pattern = crate::validate::ONE_LINE_PATTERN))]
    pub requestor: String,
    /// Why, in words people read in the events. No control characters but line breaks and tabs.
    #[schemars(length(min = 1, max = crate::validate::MAX_REASON), regex(pattern = crate::validate::MULTI_LINE_PATTERN))]
    pub reason: String,
    #[serde(rename = "type")]
    pub type_: ActionType,
    /// Namespace of the JobSet (a DNS-1123 label). Defaults to `default`.
    #[serde(default = "default_namespace")]
    #[schemars(regex(pattern = crate::validate::DNS1123_LABEL_PATTERN))]
    pub namespace: String,
    /// The JobSet to restart (`cordon_nodepool_and_restart_jobset`): a DNS-1123 label.
    #[serde(default)]
    #[schemars(regex(pattern = crate::validate::DNS1123_LABEL_PATTERN))]
    pub jobset_name: Option<String>,
    /// The node pool (value of the node-pool label) for the `*_nodepool*` types: a label value,
    /// at most 63 letters, digits, `-`, `_` and `.`, beginning and ending with a letter or digit.
    #[serde(default)]
    #[schemars(regex(pattern = crate::validate::LABEL_VALUE_PATTERN))]
    pub node_pool: Option<String>,
    /// The node for `cordon_node` and `repair_node`: a DNS-1123 subdomain, at most 253 characters.
    #[serde(default)]
    #[schemars(length(max = 253), regex(pattern = crate::validate::DNS1123_SUBDOMAIN_PATTERN))]
    pub node_name: Option<String>,
    #[serde(default)]
    pub preflight_checks: PreflightChecks,
    /// Go ahead although a safety gate (pause, circuit breaker, minHealthy, maxConcurrent) refuses;
    /// recorded as such in the events and the action record.
    #[serde(default)]
    pub force: bool,
}

fn default_namespace() -> String {
    "default".into()
}

/// A refusal of the request body: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct FieldError {
    /// The field (dotted for nested ones); `None` when the body as a whole is wrong.
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError { field: Some(field.to_string()), message: message.into() }
    }
}

const FIELDS: &[&str] =
    &["id", "dry_run", "requestor", "reason", "type", "namespace", "jobset_name", "node_pool", "node_name", "preflight_checks", "force"];

/// The fields that may be `null` (the same as absent); the document says so (`nullable`).
const NULLABLE: &[&str] = &["id", "jobset_name", "node_pool", "node_name"];

fn string(obj: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None => Ok(None),
        Some(serde_json::Value::Null) if NULLABLE.contains(&field) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(FieldError::new(field, format!("expected a string, got {}", kind(other)))),
    }
}

fn boolean(obj: &serde_json::Map<String, serde_json::Value>, field: &str, prefix: &str) -> Result<bool, FieldError> {
    match obj.get(field) {
        None => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(FieldError::new(&format!("{prefix}{field}"), format!("expected true or false, got {}", kind(other)))),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A valid action id: usable in a Kubernetes label value and a URL path segment.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Why a `POST /actions` request was refused before anything reached the API server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 415: the body is not declared as JSON.
    #[error("Content-Type `{0}` is not JSON; send `application/json`")]
    UnsupportedMediaType(String),
    /// 400: the body, or one of its fields, is wrong.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

impl RequestError {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::UnsupportedMediaType(_) => 415,
            RequestError::Invalid(_) => 400,
        }
    }
}

/// The whole reading of a `POST /actions` request, the one the handler uses: the `Content-Type`
/// must be JSON (`application/json` or `application/*+json`, parameters allowed), the body strict
/// JSON (a repeated key anywhere is refused, see [`nodemedic_core::input`]) and every field valid
/// by Kubernetes' rules before it is used against the API server. `id` is `None` when absent.
pub fn parse_action_request(content_type: Option<&str>, body: &[u8]) -> Result<ActionRequest, RequestError> {
    let declared = content_type.unwrap_or("");
    let essence = declared.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json {
        return Err(RequestError::UnsupportedMediaType(if declared.is_empty() { "(none)".into() } else { declared.into() }));
    }
    Ok(parse(body)?)
}

/// Reads a request body (no `Content-Type` check: see [`parse_action_request`]). `id` is left
/// `None` when absent (the caller generates one).
pub fn parse(body: &[u8]) -> Result<ActionRequest, FieldError> {
    let value: serde_json::Value = nodemedic_core::input::from_json_slice(body).map_err(|e| match e.duplicate_field() {
        Some(field) => FieldError { field: Some(field), message: format!("{e}; each field may appear once") },
        None => FieldError { field: None, message: format!("the body is not valid JSON: {e}") },
    })?;
    let serde_json::Value::Object(obj) = value else {
        return Err(FieldError { field: None, message: format!("the body must be a JSON object, got {}", kind(&value)) });
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(FieldError::new(unknown, format!("unknown field; the fields are {}", FIELDS.join(", "))));
    }
    // A field given as a string must not be empty (`"id": ""` is not "generate one").
    let given = |field: &str| -> Result<Option<String>, FieldError> {
        match string(&obj, field)? {
            Some(s) if s.is_empty() => Err(FieldError::new(field, "must not be empty")),
            other => Ok(other),
        }
    };
    let required = |field: &str| given(field)?.ok_or_else(|| FieldError::new(field, "is required"));
    let id = given("id")?;
    if let Some(id) = &id
        && !valid_id(id)
    {
        return Err(FieldError::new("id", "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"));
    }
    let type_name = required("type")?;
    let type_ = ActionType::parse(&type_name).ok_or_else(|| {
        let known: Vec<&str> = ActionType::ALL.iter().map(|t| t.as_str()).collect();
        FieldError::new("type", format!("unknown action type `{type_name}`; known types: {}", known.join(", ")))
    })?;
    let request = ActionRequest {
        id,
        dry_run: boolean(&obj, "dry_run", "")?,
        requestor: required("requestor")?,
        reason: required("reason")?,
        type_,
        namespace: given("namespace")?.unwrap_or_else(default_namespace),
        jobset_name: given("jobset_name")?,
        node_pool: given("node_pool")?,
        node_name: given("node_name")?,
        preflight_checks: preflight(&obj)?,
        force: boolean(&obj, "force", "")?,
    };
    for field in type_.required_fields() {
        let present = match *field {
            "node_pool" => request.node_pool.is_some(),
            "jobset_name" => request.jobset_name.is_some(),
            _ => request.node_name.is_some(),
        };
        if !present {
            return Err(FieldError::new(field, format!("is required for type {type_}")));
        }
    }
    check_values(&request)?;
    Ok(request)
}

fn preflight(obj: &serde_json::Map<String, serde_json::Value>) -> Result<PreflightChecks, FieldError> {
    match obj.get("preflight_checks") {
        None => Ok(PreflightChecks::default()),
        Some(serde_json::Value::Object(p)) => {
            if let Some(unknown) = p.keys().find(|k| k.as_str() != "expected_node_counts") {
                return Err(FieldError::new(&format!("preflight_checks.{unknown}"), "unknown field; the checks are expected_node_counts"));
            }
            Ok(PreflightChecks { expected_node_counts: boolean(p, "expected_node_counts", "preflight_checks.")? })
        }
        Some(other) => Err(FieldError::new("preflight_checks", format!("expected an object, got {}", kind(other)))),
    }
}

/// Every string against the rule of the place it goes to in the API server.
fn check_values(r: &ActionRequest) -> Result<(), FieldError> {
    use crate::validate;
    let check = |field: &str, result: Result<(), String>| result.map_err(|m| FieldError::new(field, m));
    check("requestor", validate::text(&r.requestor, validate::MAX_REQUESTOR, false))?;
    check("reason", validate::text(&r.reason, validate::MAX_REASON, true))?;
    check("namespace", validate::dns1123_label(&r.namespace))?;
    if let Some(v) = &r.node_pool {
        check("node_pool", validate::label_value(v))?;
    }
    if let Some(v) = &r.jobset_name {
        check("jobset_name", validate::dns1123_label(v))?;
    }
    if let Some(v) = &r.node_name {
        check("node_name", validate::dns1123_subdomain(v))?;
    }
    Ok(())
}

/// A new action id: the time and some randomness, so ids sort by creation.
pub fn generate_id() -> String {
    let now = jiff::Timestamp::now();
    format!("act-{}-{:08x}", now.strftime("%Y%m%d%H%M%S"), rand::random::<u32>())
}

pub use crate::preflight::{PreflightError, expected_node_count, topology_chips};

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn refused(v: serde_json::Value) -> FieldError {
        match parse(&body(v)) {
            Ok(r) => panic!("accepted: {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_seeds_first_example_parses_with_its_defaults() -> Result<(), FieldError> {
        let r = parse(&body(serde_json::json!({
            "requestor": "test-user",
            "type": "cordon_nodepool_and_restart_jobset",
            "jobset_name": "example-jobset",
            "node_pool": "test-pool",
            "preflight_checks": {"expected_node_counts": false},
            "reason": "High error rate detected in node pool"
        })))?;
        assert_eq!(r.type_, ActionType::CordonNodepoolAndRestartJobset);
        assert_eq!(r.namespace, "default");
        assert_eq!(r.id, None);
        assert!(!r.dry_run && !r.force && !r.preflight_checks.expected_node_counts);
        Ok(())
    }

    #[test]
    fn every_refusal_names_its_field() {
        let base = serde_json::json!({"requestor": "r", "reason": "x", "type": "cordon_nodepool", "node_pool": "p"});
        let without = |f: &str| {
            let mut v = base.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove(f);
            }
            v
        };
        let with = |f: &str, x: serde_json::Value| {
            let mut v = base.clone();
            if let Some(o) = v.as_object_mut() {
                o.insert(f.into(), x);
            }
            v
        };
        assert_eq!(refused(without("requestor")).field.as_deref(), Some("requestor"));
        assert_eq!(refused(without("reason")).field.as_deref(), Some("reason"));
        assert_eq!(refused(without("type")).field.as_deref(), Some("type"));
        assert_eq!(refused(without("node_pool")).field.as_deref(), Some("node_pool"));
        let unknown_type = refused(with("type", "reboot_everything".into()));
        assert_eq!(unknown_type.field.as_deref(), Some("type"));
        assert!(unknown_type.message.contains("cordon_nodepool"), "lists the known types: {}", unknown_type.message);
        assert_eq!(refused(with("dry_run", "yes".into())).field.as_deref(), Some("dry_run"));
        assert_eq!(refused(with("colour", "red".into())).field.as_deref(), Some("colour"));
        assert_eq!(refused(with("id", "no spaces please".into())).field.as_deref(), Some("id"));
        assert_eq!(
            refused(with("preflight_checks", serde_json::json!({"expected_node_counts": 1}))).field.as_deref(),
            Some("preflight_checks.expected_node_counts")
        );
        let restart = with("type", "cordon_nodepool_and_restart_jobset".into());
        assert_eq!(refused(restart).field.as_deref(), Some("jobset_name"));
        assert_eq!(refused(with("type", "repair_node".into())).field.as_deref(), Some("node_name"));
        assert_eq!(parse(b"{not json").err().and_then(|e| e.field), None);
    }

    fn base() -> serde_json::Value {
        serde_json::json!({"requestor": "r", "reason": "x", "type": "cordon_nodepool", "node_pool": "p"})
    }

    fn with(f: &str, x: serde_json::Value) -> serde_json::Value {
        let mut v = base();
        if let Some(o) = v.as_object_mut() {
            o.insert(f.into(), x);
        }
        v
    }

    #[test]
    fn a_body_that_repeats_dry_run_is_refused_naming_dry_run() {
        let body = br#"{"dry_run": true, "requestor": "r", "reason": "x", "type": "cordon_nodepool", "node_pool": "p", "dry_run": false}"#;
        let Err(e) = parse_action_request(Some("application/json"), body) else { panic!("accepted") };
        assert_eq!(e.status(), 400);
        let RequestError::Invalid(e) = e else { panic!("not a 400") };
        assert_eq!(e.field.as_deref(), Some("dry_run"));
        let nested = br#"{"requestor": "r", "reason": "x", "type": "cordon_nodepool", "node_pool": "p",
            "preflight_checks": {"expected_node_counts": false, "expected_node_counts": true}}"#;
        assert_eq!(parse(nested).err().and_then(|e| e.field).as_deref(), Some("preflight_checks.expected_node_counts"));
    }

    #[test]
    fn a_body_not_declared_as_json_is_refused_with_415() {
        let body = body(base());
        for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data"), Some("json")] {
            let status = parse_action_request(ct, &body).err().map(|e| e.status());
            assert_eq!(status, Some(415), "{ct:?}");
        }
        for ct in ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"] {
            assert!(parse_action_request(Some(ct), &body).is_ok(), "{ct}");
        }
    }

    #[test]
    fn label_selector_syntax_in_node_pool_is_refused_naming_node_pool() {
        for pool in ["x in (a,b)", "pool-1,key!=x", "a=b", "!p"] {
            assert_eq!(refused(with("node_pool", pool.into())).field.as_deref(), Some("node_pool"), "{pool}");
        }
        let long = "p".repeat(10 * 1024);
        assert_eq!(refused(with("node_pool", long.into())).field.as_deref(), Some("node_pool"));
    }

    #[test]
    fn names_and_namespaces_are_checked_before_they_reach_the_api_server() {
        let restart = |name: &str| {
            let mut v = with("type", "cordon_nodepool_and_restart_jobset".into());
            v["jobset_name"] = name.into();
            v
        };
        assert_eq!(refused(restart("job\u{0}set\u{1b}[2J")).field.as_deref(), Some("jobset_name"));
        assert_eq!(refused(restart("Example_JobSet")).field.as_deref(), Some("jobset_name"));
        assert!(parse(&body(restart("example-jobset"))).is_ok());
        assert_eq!(refused(with("namespace", "kube system".into())).field.as_deref(), Some("namespace"));
        assert_eq!(refused(with("namespace", "a".repeat(64).into())).field.as_deref(), Some("namespace"));
        let node = |name: &str| serde_json::json!({"requestor": "r", "reason": "x", "type": "cordon_node", "node_name": name});
        assert_eq!(refused(node("node/../../x")).field.as_deref(), Some("node_name"));
        assert!(parse(&body(node("gpu-node-1.zone-a"))).is_ok());
        assert_eq!(refused(with("requestor", "bob\u{7}".into())).field.as_deref(), Some("requestor"));
        assert_eq!(refused(with("reason", "x".repeat(2000).into())).field.as_deref(), Some("reason"));
    }

    #[test]
    fn an_empty_id_is_refused_rather_than_replaced_by_a_generated_one() {
        assert_eq!(refused(with("id", "".into())).field.as_deref(), Some("id"));
        assert_eq!(refused(with("node_pool", "".into())).field.as_deref(), Some("node_pool"));
        assert_eq!(parse(&body(with("id", serde_json::Value::Null))).map(|r| r.id), Ok(None));
    }

    #[test]
    fn generated_ids_are_valid_ids() {
        assert!(valid_id(&generate_id()));
        assert_ne!(generate_id(), generate_id());
    }
}
