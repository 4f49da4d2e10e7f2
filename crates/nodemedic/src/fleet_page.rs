//! The read-only fleet page, served beside the actions API on the same listener and behind the same
//! authentication: `GET /fleet` is a static page (no data in it), and `GET /fleet/data` is the data it
//! shows, which needs what `GET /nodes` needs (a bearer token allowed to `list` `nodes.nodemedic.io`;
//! the page reads the token from the URL fragment, which browsers never send to the server). It shows
//! nodes by pool with their phase, the incidents with their timelines, and each policy's breaker and
//! gates, all from nodemedic-core's `decide` over what the cluster holds.

use crate::medic_cmd::{observations, records_of};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, Json};
use axum::routing::get;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use nodemedic_api::{ApiError, ApiState};
use nodemedic_core::engine::selects;
use nodemedic_core::{Phase, Time, decide};
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation};
use serde::Serialize;
use std::collections::BTreeMap;

pub fn router(state: ApiState) -> Router {
    Router::new().route("/fleet", get(page)).route("/fleet/data", get(data)).with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("fleet_page.html"))
}

async fn data(State(state): State<ApiState>, headers: HeaderMap) -> Result<Json<FleetView>, ApiError> {
    nodemedic_api::deadline(&state, "GET /fleet/data", async {
        nodemedic_api::auth::authorize(&state, &headers, "list", "nodes").await?;
        let now = Time(jiff::Timestamp::now().as_millisecond());
        fleet_view(&state.client, now).await.map(Json).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))
    })
    .await
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    pub generated_at: String,
    pub policies: Vec<PolicyView>,
    pub incidents: Vec<Incident>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub name: String,
    pub monitor_only: bool,
    pub breaker_open: bool,
    pub breaker_since: Option<String>,
    pub breaker_reason: Option<String>,
    pub pause_requests: Vec<String>,
    pub selected: usize,
    pub healthy: usize,
    pub unhealthy: usize,
    pub unknown: usize,
    pub remediating: usize,
    pub manual: usize,
    /// Pool name → its selected nodes.
    pub pools: BTreeMap<String, Vec<NodeView>>,
    pub holds: Vec<HoldView>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// The record's phase, or `Held` for an unhealthy node a gate keeps off the ladder.
    pub phase: &'static str,
    pub step: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct HoldView {
    pub node: String,
    pub gate: &'static str,
    pub message: String,
}

/// A node with a remediation in progress or behind it: what started it and each step it took.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub node: String,
    pub policy: String,
    pub phase: &'static str,
    pub trigger: Option<String>,
    pub reason: Option<String>,
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub at: String,
    pub step: String,
    pub what: String,
}

pub async fn fleet_view(client: &Client, now: Time) -> anyhow::Result<FleetView> {
    let policies = Api::<NodeHealthPolicy>::all(client.clone()).list(&ListParams::default()).await?.items;
    let remediations = Api::<NodeRemediation>::all(client.clone()).list(&ListParams::default()).await?.items;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let fleet = observations(&nodes, &remediations)?;
    let mut view = FleetView { generated_at: now.to_string(), policies: Vec::new(), incidents: Vec::new() };
    for object in &policies {
        let name = object.name_any();
        let policy = &object.spec.policy;
        let records = records_of(object, &remediations);
        let d = decide(policy, &fleet, &records, now);
        let held: std::collections::BTreeSet<&str> = d.holds.iter().map(|h| h.node.as_str()).collect();
        let mut pools: BTreeMap<String, Vec<NodeView>> = BTreeMap::new();
        for n in fleet.iter().filter(|n| selects(policy, n)) {
            let pool = nodemedic_core::selector::label(&n.labels, &policy.node_pool_label).cloned().unwrap_or_else(|| "-".into());
            let record = records.nodes.get(&n.name);
            let phase = match record.map_or(Phase::Healthy, |r| r.phase) {
                // Unhealthy but not yet on the ladder: a gate holds it back.
                Phase::Healthy if held.contains(n.name.as_str()) => "Held",
                p => p.as_str(),
            };
            let step = record.and_then(|r| r.active.as_ref()).map(|a| a.step.to_string());
            pools.entry(pool).or_default().push(NodeView { name: n.name.clone(), phase, step });
        }
        for (node, r) in &records.nodes {
            if r.active.is_none() && r.history.is_empty() {
                continue;
            }
            let mut timeline: Vec<TimelineEntry> = r
                .history
                .iter()
                .map(|h| TimelineEntry {
                    at: h.started_at.to_string(),
                    step: h.step.to_string(),
                    what: format!("{:?} at {}: {}", h.outcome, h.ended_at, h.reason),
                })
                .collect();
            if let Some(a) = &r.active {
                timeline.push(TimelineEntry { at: a.step_started_at.to_string(), step: a.step.to_string(), what: "in progress".into() });
            }
            view.incidents.push(Incident {
                node: node.clone(),
                policy: name.clone(),
                phase: r.phase.as_str(),
                trigger: r.active.as_ref().map(|a| a.trigger.clone()),
                reason: r.active.as_ref().map(|a| a.reason.clone()),
                timeline,
            });
        }
        let s = &d.summary;
        view.policies.push(PolicyView {
            name,
            monitor_only: policy.monitor_only,
            breaker_open: s.breaker_open,
            breaker_since: records.policy.breaker_tripped_at.map(|t| t.to_string()),
            breaker_reason: records.policy.breaker_reason.clone(),
            pause_requests: policy.pause_requests.clone(),
            selected: s.selected,
            healthy: s.healthy,
            unhealthy: s.unhealthy,
            unknown: s.unknown,
            remediating: s.remediating,
            manual: s.manual,
            pools,
            holds: d.holds.iter().map(|h| HoldView { node: h.node.clone(), gate: h.gate.as_str(), message: h.message.clone() }).collect(),
        });
    }
    Ok(view)
}
