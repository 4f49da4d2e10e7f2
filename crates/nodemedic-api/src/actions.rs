//! The handlers: `POST /actions` (authorise, read, check, record, tell, act), `GET /actions/{id}`,
//! `GET /nodes` and `GET /openapi.json`.
//!
//! `POST /actions` answers, in this order: 401/403 (auth), 413/400 (the body), 503 (not the
//! leader), 409 (the id was used), 404 (no such pool, node or JobSet, or no leader pod), 422 (the
//! expected-node-counts preflight), 409 (a remediation is in flight on a node, or a safety gate
//! refuses without `force`), then 200 `{"id"}` once the action is done, or 500 `{"id","error"}`
//! when carrying it out failed (the record says how far it got).

use crate::auth::{Caller, authorize};
pub use crate::nodes::{NodeSummary, NodesSummary};
use crate::request::{ActionRequest, RequestError, expected_node_count, generate_id, parse_action_request};
use crate::store::{ActionRecord, ActionState, Store, StoreError};
use crate::{ActionResponse, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use nodemedic_core::manual::may_take_out;
use nodemedic_core::{Records, Time};
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation, observe_node};
use std::collections::BTreeMap;

/// JobSet labels on the pods of a JobSet (sigs.k8s.io/jobset) and the Job completion index.
pub const JOBSET_NAME_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";
pub const REPLICATED_JOB_LABEL: &str = "jobset.sigs.k8s.io/replicatedjob-name";
pub const JOB_INDEX_LABEL: &str = "jobset.sigs.k8s.io/job-index";
pub const COMPLETION_INDEX_LABEL: &str = "batch.kubernetes.io/job-completion-index";

/// The API's routes merged with `extra` (the controller's `/metrics`, `/healthz`, `/readyz`), which
/// need a token like the API's own routes when auth is on: only `/openapi.json` is open.
pub fn router_with(state: ApiState, extra: Router) -> Router {
    crate::auth::require_token(state.clone(), extra).merge(router(state))
}

/// The API's routes, with the body limit applied. Merge into the controller's router.
pub fn router(state: ApiState) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/actions", post(post_action))
        .route("/actions/{id}", get(get_action))
        .route("/nodes", get(crate::nodes::get_nodes))
        .route("/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// Whether this replica may write now: it holds the leader Lease and the Lease has not expired.
/// `Err` names the holder (503).
async fn ensure_leader(state: &ApiState) -> Result<(), ApiError> {
    let Some(lease) = &state.config.leader else { return Ok(()) };
    let api: Api<Lease> = Api::namespaced(state.client.clone(), &lease.namespace);
    let current = api.get_opt(&lease.name).await.map_err(|e| ApiError::kube("reading the leader lease", e))?;
    let spec = current.and_then(|l| l.spec);
    let holder = spec.as_ref().and_then(|s| s.holder_identity.clone());
    let valid = spec.as_ref().is_some_and(|s| {
        let duration = i64::from(s.lease_duration_seconds.unwrap_or(15));
        s.renew_time.as_ref().is_some_and(|t| t.0.as_second() + duration > jiff::Timestamp::now().as_second())
    });
    if valid && holder.as_deref() == Some(lease.identity.as_str()) {
        return Ok(());
    }
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        match (&holder, valid) {
            (Some(h), true) => format!("this replica ({}) is not the leader; send writes to {h}", lease.identity),
            _ => format!("this replica ({}) is not the leader and no leader is elected yet; retry shortly", lease.identity),
        },
    );
    e.body.leader = holder.filter(|_| valid);
    Err(e)
}

async fn post_action(State(state): State<ApiState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    match post_action_inner(&state, &headers, body).await {
        Ok(id) => (StatusCode::OK, Json(ActionResponse { id: Some(id), ..Default::default() })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn post_action_inner(state: &ApiState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    // One deadline for all of this request's API-server work (authorisation, then the action).
    let until = tokio::time::Instant::now() + state.config.api_server_timeout;
    let caller = crate::deadline_at(state, until, "POST /actions", authorize(state, headers, "create", "actions")).await?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {} bytes", state.config.body_limit))
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
        }
    })?;
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let mut request = parse_action_request(content_type, &body).map_err(|e| match e {
        RequestError::UnsupportedMediaType(_) => ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string()),
        RequestError::Invalid(e) => {
            let mut err = ApiError::new(StatusCode::BAD_REQUEST, e.to_string());
            err.body.field = e.field;
            err
        }
    })?;
    let id = request.id.clone().unwrap_or_else(generate_id);
    request.id = Some(id.clone());
    crate::deadline_at(state, until, &format!("action {id}"), run(state, request, caller)).await.map_err(|e| e.with_id(&id))?;
    Ok(id)
}

/// What an action is about, resolved against the cluster.
struct Plan {
    /// Nodes to cordon (all of the pool, or the one node).
    cordon: Vec<Node>,
    /// The node to repair.
    repair: Option<Node>,
    /// The JobSet and its leader pod.
    jobset: Option<(DynamicObject, ApiResource, Pod)>,
    /// Every node of the pool, for the preflight (a single node's pool when it asks for the preflight).
    pool: Vec<Node>,
}

fn node_ready(n: &Node) -> bool {
    n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn pool_nodes(state: &ApiState, pool: &str) -> Result<Vec<Node>, ApiError> {
    let label = &state.config.node_pool_label;
    let lp = ListParams::default().labels(&format!("{label}={pool}"));
    let mut found =
        Api::<Node>::all(state.client.clone()).list(&lp).await.map_err(|e| ApiError::kube("listing the pool's nodes", e))?.items;
    found.sort_by_key(|n| n.name_any());
    Ok(found)
}

async fn resolve(state: &ApiState, req: &ActionRequest) -> Result<Plan, ApiError> {
    let (targets, pool) = if req.type_.single_node() {
        let name = req.node_name.clone().unwrap_or_default();
        let node = Api::<Node>::all(state.client.clone())
            .get_opt(&name)
            .await
            .map_err(|e| ApiError::kube("reading the node", e))?
            .ok_or_else(|| ApiError::field(StatusCode::NOT_FOUND, "node_name", format!("no node named `{name}`")))?;
        // The preflight looks at the node's whole pool.
        let pool = match node.labels().get(&state.config.node_pool_label) {
            Some(p) if req.preflight_checks.expected_node_counts => pool_nodes(state, p).await?,
            _ => vec![node.clone()],
        };
        (vec![node], pool)
    } else {
        let pool = req.node_pool.clone().unwrap_or_default();
        let found = pool_nodes(state, &pool).await?;
        if found.is_empty() {
            let label = &state.config.node_pool_label;
            return Err(ApiError::field(StatusCode::NOT_FOUND, "node_pool", format!("no nodes labelled {label}={pool}")));
        }
        (found.clone(), found)
    };
    let cordon = if req.type_.cordons() { targets.clone() } else { Vec::new() };
    // Repair the worst target: one that is not Ready, else the first by name.
    let repair = req.type_.repairs().then(|| targets.iter().find(|n| !node_ready(n)).or(targets.first()).cloned()).flatten();
    let jobset = if req.type_.restarts_jobset() { Some(find_leader_pod(state, req).await?) } else { None };
    Ok(Plan { cordon, repair, jobset, pool })
}

async fn find_leader_pod(state: &ApiState, req: &ActionRequest) -> Result<(DynamicObject, ApiResource, Pod), ApiError> {
    let name = req.jobset_name.clone().unwrap_or_default();
    let ns = &req.namespace;
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("jobset.x-k8s.io", "v1alpha2", "JobSet"), "jobsets");
    let jobsets: Api<DynamicObject> = Api::namespaced_with(state.client.clone(), ns, &ar);
    let not_found = || ApiError::field(StatusCode::NOT_FOUND, "jobset_name", format!("no JobSet `{name}` in namespace `{ns}`"));
    let jobset = match jobsets.get_opt(&name).await {
        Ok(Some(j)) => j,
        Ok(None) => return Err(not_found()),
        // The JobSet CRD is not installed: there is no such JobSet either.
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(not_found()),
        Err(e) => return Err(ApiError::kube("reading the JobSet", e)),
    };
    // The leader is the first pod of the first Job of the first replicated job.
    let first_replicated =
        jobset.data.pointer("/spec/replicatedJobs/0/name").and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| {
            ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "jobset_name", format!("JobSet `{name}` has no replicated jobs"))
        })?;
    let selector =
        format!("{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={first_replicated},{JOB_INDEX_LABEL}=0,{COMPLETION_INDEX_LABEL}=0");
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), ns);
    let leader = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| ApiError::kube("listing the JobSet's pods", e))?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .ok_or_else(|| {
            ApiError::field(
                StatusCode::NOT_FOUND,
                "jobset_name",
                format!("JobSet `{name}` has no running leader pod (pods matching {selector})"),
            )
        })?;
    Ok((jobset, ar, leader))
}

/// NodeRemediations (empty when the CRD is not installed).
pub(crate) async fn remediations(state: &ApiState) -> Result<Vec<NodeRemediation>, ApiError> {
    match Api::<NodeRemediation>::all(state.client.clone()).list(&ListParams::default()).await {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(ApiError::kube("listing NodeRemediations", e)),
    }
}

async fn policies(state: &ApiState) -> Result<Vec<NodeHealthPolicy>, ApiError> {
    match Api::<NodeHealthPolicy>::all(state.client.clone()).list(&ListParams::default()).await {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(ApiError::kube("listing NodeHealthPolicies", e)),
    }
}

/// Runs the gates of every policy that selects the nodes. Returns the refusals, each
/// `policy/gate: message`, and the gate names.
async fn gates(
    state: &ApiState,
    out_of_service: &[String],
    repairs: &[String],
    recs: &[NodeRemediation],
) -> Result<Vec<(String, String)>, ApiError> {
    let policies = policies(state).await?;
    if policies.is_empty() {
        return Ok(Vec::new());
    }
    let nodes =
        Api::<Node>::all(state.client.clone()).list(&ListParams::default()).await.map_err(|e| ApiError::kube("listing nodes", e))?.items;
    let now = Time(jiff::Timestamp::now().as_millisecond());
    // Nodes already cordoned (by a person or an earlier action) are out of service too, though no
    // record of the engine says so.
    let cordoned: Vec<String> =
        nodes.iter().filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)).map(|n| n.name_any()).collect();
    let mut refusals = Vec::new();
    for policy in &policies {
        if policy.validate().is_err() {
            continue;
        }
        let name = policy.name_any();
        let mine: BTreeMap<String, &NodeRemediation> =
            recs.iter().filter(|r| r.spec.policy == name).map(|r| (r.spec.node.clone(), r)).collect();
        let mut fleet = Vec::with_capacity(nodes.len());
        for n in &nodes {
            match observe_node(n, mine.get(&n.name_any()).copied()) {
                Ok(o) => fleet.push(o),
                Err(e) => tracing::warn!(node = %n.name_any(), error = %e, "node not readable for the gates"),
            }
        }
        let mut records = Records::default();
        for (node, r) in &mine {
            if let Some(st) = &r.status {
                records.nodes.insert(node.clone(), st.record.clone());
            }
        }
        if let Some(st) = &policy.status {
            records.policy = st.record.clone();
        }
        let check = may_take_out(&policy.spec.policy, &fleet, &records, out_of_service, repairs, &cordoned, now);
        for h in check.holds {
            refusals.push((h.gate.as_str().to_string(), format!("policy {name}, gate {}: {}", h.gate.as_str(), h.message)));
        }
    }
    Ok(refusals)
}

fn truncate(s: String) -> String {
    if s.len() <= 1000 {
        return s;
    }
    let mut end = 1000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

async fn tell(state: &ApiState, target: &ObjectReference, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(truncate(note)), action: "ManualAction".into(), secondary: None };
    if let Err(e) = state.recorder.publish(&event, target).await {
        tracing::warn!(error = %e, reason, object = ?target.name, "could not publish an event");
    }
}

async fn run(state: &ApiState, req: ActionRequest, caller: Option<Caller>) -> Result<(), ApiError> {
    let id = req.id.clone().unwrap_or_default();
    ensure_leader(state).await?;
    let store = Store::new(state.client.clone(), &state.config.namespace);
    let store_err = |e: StoreError| match e {
        StoreError::Exists(_) => ApiError::field(StatusCode::CONFLICT, "id", e.to_string()),
        StoreError::Kube(e) => ApiError::kube("the action record", e),
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    };
    if store.exists(&id).await.map_err(store_err)? {
        return Err(ApiError::field(StatusCode::CONFLICT, "id", format!("an action with id `{id}` already exists")));
    }
    let plan = resolve(state, &req).await?;
    let checked = check(state, &req, &plan).await;
    let (out_of_service, refusals) = match checked {
        Ok(v) => v,
        Err(e) => {
            record_refusal(&store, &req, caller.as_ref(), &e).await;
            return Err(e);
        }
    };

    let who = match &caller {
        Some(c) => format!("{} (authenticated as {})", req.requestor, c.username),
        None => req.requestor.clone(),
    };
    let mut record = ActionRecord {
        id: id.clone(),
        state: if req.dry_run { ActionState::DryRun } else { ActionState::Running },
        request: req.clone(),
        user: caller.as_ref().map(|c| c.username.clone()),
        created_at: now_rfc3339(),
        finished_at: None,
        nodes: out_of_service.clone(),
        forced_gates: refusals.iter().map(|(_, m)| m.clone()).collect(),
        steps: Vec::new(),
        error: None,
    };
    store.create(&record).await.map_err(store_err)?;
    let prefix = if req.dry_run { "[dry run] " } else { "" };
    let intro = format!("{prefix}{} requested by {who}: {} (action {id})", req.type_, req.reason);
    tracing::info!(action = %id, type_ = %req.type_, requestor = %req.requestor, user = ?record.user, dry_run = req.dry_run, nodes = ?out_of_service, reason = %req.reason, "manual action");

    // Tell every object the action touches, before touching it.
    let overridden = (!refusals.is_empty())
        .then(|| format!("{prefix}safety gates overridden with force by {who} (action {id}): {}", record.forced_gates.join("; ")));
    announce(state, &plan, req.dry_run, &intro, overridden).await;

    if req.dry_run {
        record.steps = dry_run_steps(state, &plan);
        record.finished_at = Some(now_rfc3339());
        store.update(&record).await.map_err(store_err)?;
        return Ok(());
    }

    let result = carry_out(state, &req, &plan, &who, &id, &mut record).await;
    record.finished_at = Some(now_rfc3339());
    record.state = if result.is_ok() { ActionState::Succeeded } else { ActionState::Failed };
    record.error = result.as_ref().err().cloned();
    if let Err(e) = store.update(&record).await {
        tracing::error!(action = %id, error = %e, "could not update the action record");
    }
    result.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// A refusal is kept too (a conflict or an unprocessable request): who asked for what, and why it was
/// refused. Best effort: the caller gets the refusal either way.
async fn record_refusal(store: &Store, req: &ActionRequest, caller: Option<&Caller>, e: &ApiError) {
    let id = req.id.clone().unwrap_or_default();
    let refused = ActionRecord {
        id: id.clone(),
        state: ActionState::Refused,
        request: req.clone(),
        user: caller.map(|c| c.username.clone()),
        created_at: now_rfc3339(),
        finished_at: Some(now_rfc3339()),
        nodes: Vec::new(),
        forced_gates: Vec::new(),
        steps: Vec::new(),
        error: e.body.error.clone(),
    };
    let is_refusal = matches!(e.status, StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY);
    if is_refusal && let Err(err) = store.create(&refused).await {
        tracing::warn!(action = %id, error = %err, "could not record the refused action");
    }
    tracing::info!(action = %id, type_ = %req.type_, requestor = %req.requestor, status = %e.status, error = ?e.body.error, "manual action refused");
}

/// An Event on every object the action touches (each node once, the JobSet and its pod), and a
/// warning beside it when safety gates were overridden.
async fn announce(state: &ApiState, plan: &Plan, dry_run: bool, intro: &str, overridden: Option<String>) {
    let mut touched: Vec<ObjectReference> = Vec::new();
    for n in plan.cordon.iter().chain(plan.repair.iter()) {
        if !touched.iter().any(|t| t.name.as_deref() == n.metadata.name.as_deref()) {
            touched.push(n.object_ref(&()));
        }
    }
    if let Some((jobset, ar, pod)) = &plan.jobset {
        touched.push(jobset.object_ref(ar));
        touched.push(pod.object_ref(&()));
    }
    for target in &touched {
        tell(state, target, EventType::Normal, if dry_run { "ManualActionDryRun" } else { "ManualActionRequested" }, intro.to_string())
            .await;
        if let Some(note) = &overridden {
            tell(state, target, EventType::Warning, "SafetyGateOverridden", note.clone()).await;
        }
    }
}

/// What a dry run says it would do, step by step.
fn dry_run_steps(state: &ApiState, plan: &Plan) -> Vec<String> {
    let mut steps = Vec::new();
    for n in &plan.cordon {
        steps.push(format!("would cordon node {}", n.name_any()));
    }
    if let Some((jobset, _, pod)) = &plan.jobset {
        steps.push(format!("would delete pod {} to restart JobSet {}", pod.name_any(), jobset.name_any()));
    }
    if let Some(n) = &plan.repair {
        steps.push(format!("would repair node {} through the {} provider", n.name_any(), state.provider.name()));
    }
    steps
}

/// The checks before anything is recorded as accepted: the preflight, remediations in flight and
/// the safety gates. Returns the nodes taken out of service and the gate refusals `force` overrides.
async fn check(state: &ApiState, req: &ActionRequest, plan: &Plan) -> Result<(Vec<String>, Vec<(String, String)>), ApiError> {
    let target_field = if req.type_.single_node() { "node_name" } else { "node_pool" };

    if req.preflight_checks.expected_node_counts {
        let labelled: Vec<(String, BTreeMap<String, String>)> = plan.pool.iter().map(|n| (n.name_any(), n.labels().clone())).collect();
        expected_node_count(
            labelled.iter().map(|(n, l)| (n.as_str(), l)),
            &state.config.topology_label,
            &state.config.accelerator_count_label,
        )
        .map_err(|e| {
            ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "preflight_checks.expected_node_counts", format!("preflight failed: {e}"))
        })?;
    }

    let out_of_service: Vec<String> = plan.cordon.iter().chain(plan.repair.iter()).map(|n| n.name_any()).fold(Vec::new(), |mut v, n| {
        if !v.contains(&n) {
            v.push(n);
        }
        v
    });
    let repairs: Vec<String> = plan.repair.iter().map(|n| n.name_any()).collect();

    let recs = remediations(state).await?;
    if let Some((node, step)) = recs
        .iter()
        .filter(|r| out_of_service.contains(&r.spec.node))
        .find_map(|r| r.status.as_ref().and_then(|s| s.record.active.as_ref()).map(|a| (r.spec.node.clone(), a.step.as_str().to_string())))
    {
        return Err(ApiError::field(
            StatusCode::CONFLICT,
            target_field,
            format!("node {node} is being remediated (step {step}); wait until that ends or resolve it first"),
        ));
    }

    let refusals = gates(state, &out_of_service, &repairs, &recs).await?;
    if !refusals.is_empty() && !req.force {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "refused by the safety gates: {}; set force: true to override (recorded)",
                refusals.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ")
            ),
        );
        e.body.gates = refusals.iter().map(|(g, _)| g.clone()).collect();
        return Err(e);
    }
    Ok((out_of_service, refusals))
}

async fn carry_out(
    state: &ApiState,
    req: &ActionRequest,
    plan: &Plan,
    who: &str,
    id: &str,
    record: &mut ActionRecord,
) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(state.client.clone());
    let by = format!("by {who}: {} (action {id})", req.reason);
    for n in &plan.cordon {
        let name = n.name_any();
        let patch = serde_json::json!({"spec": {"unschedulable": true}});
        nodes.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(|e| format!("cordoning node {name}: {e}"))?;
        record.steps.push(format!("cordoned node {name}"));
        tell(state, &n.object_ref(&()), EventType::Normal, "Cordoned", format!("cordoned {by}")).await;
    }
    if let Some((jobset, ar, pod)) = &plan.jobset {
        let pods: Api<Pod> = Api::namespaced(state.client.clone(), &req.namespace);
        let pod_name = pod.name_any();
        match pods.delete(&pod_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(format!("deleting leader pod {pod_name}: {e}")),
        }
        record.steps.push(format!("deleted leader pod {pod_name} to restart JobSet {}", jobset.name_any()));
        let note = format!("leader pod {pod_name} deleted to restart the JobSet {by}");
        tell(state, &jobset.object_ref(ar), EventType::Normal, "JobSetRestarted", note.clone()).await;
    }
    if let Some(n) = &plan.repair {
        let name = n.name_any();
        tell(
            state,
            &n.object_ref(&()),
            EventType::Warning,
            "RepairRequested",
            format!("{} provider replaces the instance {by}", state.provider.name()),
        )
        .await;
        let done = state.provider.repair(n).await.map_err(|e| format!("repairing node {name}: {e}"))?;
        record.steps.push(done);
    }
    Ok(())
}

async fn get_action(State(state): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<ActionRecord>, ApiError> {
    crate::deadline(&state, "GET /actions/{id}", async {
        authorize(&state, &headers, "get", "actions").await?;
        let store = Store::new(state.client.clone(), &state.config.namespace);
        match store.get(&id).await {
            Ok(Some(r)) => Ok(Json(r)),
            Ok(None) => Err(ApiError::field(StatusCode::NOT_FOUND, "id", format!("no action with id `{id}`"))),
            Err(StoreError::Kube(e)) => Err(ApiError::kube("reading the action record", e)),
            Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    })
    .await
    .map_err(|e| e.with_id(&id))
}

/// Keeps the action records from piling up: every `every`, the leader deletes the records of
/// actions that ended more than `retention` ago (see [`Store::prune`]). Standbys skip the round.
pub async fn prune_records_forever(state: ApiState, retention: std::time::Duration, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ensure_leader(&state).await.is_err() {
            continue;
        }
        let store = Store::new(state.client.clone(), &state.config.namespace);
        match store.prune(retention, jiff::Timestamp::now()).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(count = ids.len(), retention_secs = retention.as_secs(), "pruned the records of ended actions")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning action records failed; tried again next round"),
        }
    }
}
