//! `GET /nodes`: every node with its health as the cluster and nodemedic see it.

use crate::auth::authorize;
use crate::{ApiError, ApiState};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use nodemedic_k8s::NodeRemediation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One node in `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeSummary {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    /// The Ready condition: `True`, `False` or `Unknown`.
    pub ready: String,
    pub unschedulable: bool,
    /// nodemedic's phase from the node's NodeRemediation: `Healthy`, `Remediating`, `Manual`.
    pub phase: String,
    /// The remediation step in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Taint keys on the node.
    #[serde(default)]
    pub taints: Vec<String>,
}

/// `GET /nodes`: every node with its health as the cluster and nodemedic see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodesSummary {
    pub total: usize,
    pub ready: usize,
    pub unschedulable: usize,
    pub remediating: usize,
    pub manual: usize,
    pub nodes: Vec<NodeSummary>,
}

pub(crate) async fn get_nodes(State(state): State<ApiState>, headers: HeaderMap) -> Result<Json<NodesSummary>, ApiError> {
    crate::deadline(&state, "GET /nodes", nodes_summary(&state, &headers)).await
}

async fn nodes_summary(state: &ApiState, headers: &HeaderMap) -> Result<Json<NodesSummary>, ApiError> {
    authorize(state, headers, "list", "nodes").await?;
    let nodes =
        Api::<Node>::all(state.client.clone()).list(&ListParams::default()).await.map_err(|e| ApiError::kube("listing nodes", e))?.items;
    let recs: BTreeMap<String, NodeRemediation> =
        crate::actions::remediations(state).await?.into_iter().map(|r| (r.spec.node.clone(), r)).collect();
    let mut out = Vec::with_capacity(nodes.len());
    for n in &nodes {
        let name = n.name_any();
        let rec = recs.get(&name);
        let record = rec.and_then(|r| r.status.as_ref()).map(|s| &s.record);
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map_or("Unknown".to_string(), |c| c.status.clone());
        out.push(NodeSummary {
            node_pool: n.labels().get(&state.config.node_pool_label).cloned(),
            ready,
            unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
            phase: record.map_or("Healthy", |r| r.phase.as_str()).to_string(),
            step: record.and_then(|r| r.active.as_ref()).map(|a| a.step.as_str().to_string()),
            policy: rec.map(|r| r.spec.policy.clone()),
            taints: n.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default(),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(NodesSummary {
        total: out.len(),
        ready: out.iter().filter(|n| n.ready == "True").count(),
        unschedulable: out.iter().filter(|n| n.unschedulable).count(),
        remediating: out.iter().filter(|n| n.phase == "Remediating").count(),
        manual: out.iter().filter(|n| n.phase == "Manual").count(),
        nodes: out,
    }))
}
