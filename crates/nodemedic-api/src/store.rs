//! Action records, kept durably as one ConfigMap per action (`nodemedic-action-<hash of id>`,
//! labelled `nodemedic.io/action-id=<id>`, the record as JSON under `action.json`), so that
//! `GET /actions/{id}` answers from any replica and across restarts, and an id is never used twice.

use crate::request::ActionRequest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ID_LABEL: &str = "nodemedic.io/action-id";
const KEY: &str = "action.json";
const FIELD_MANAGER: &str = "nodemedic-api";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ActionState {
    /// Accepted and being carried out.
    Running,
    Succeeded,
    Failed,
    /// A dry run: checked and told, nothing changed.
    DryRun,
    /// Refused by the preflight, a remediation in flight or a safety gate; nothing changed.
    Refused,
}

/// The durable record of one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionRecord {
    pub id: String,
    pub state: ActionState,
    pub request: ActionRequest,
    /// The authenticated user (TokenReview), when authentication is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The nodes the action takes out of service (cordons) or repairs.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Gates that refused and were overridden by `force: true`, with the policy and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forced_gates: Vec<String>,
    /// What was done (or, for a dry run, would have been), in order.
    #[serde(default)]
    pub steps: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A short, stable, DNS-safe name for an id (FNV-1a, 64 bits).
pub fn object_name(id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("nodemedic-action-{h:016x}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an action with id `{0}` already exists")]
    Exists(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("action record: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct Store {
    api: Api<ConfigMap>,
}

impl Store {
    pub fn new(client: Client, namespace: &str) -> Store {
        Store { api: Api::namespaced(client, namespace) }
    }

    fn config_map(record: &ActionRecord) -> Result<ConfigMap, StoreError> {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(object_name(&record.id));
        cm.metadata.labels = Some(BTreeMap::from([
            (ID_LABEL.to_string(), record.id.clone()),
            ("app.kubernetes.io/managed-by".to_string(), "nodemedic".to_string()),
        ]));
        cm.data = Some(BTreeMap::from([(KEY.to_string(), serde_json::to_string_pretty(record)?)]));
        Ok(cm)
    }

    /// Records a new action; fails with [`StoreError::Exists`] when the id was used before.
    pub async fn create(&self, record: &ActionRecord) -> Result<(), StoreError> {
        match self
            .api
            .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &Self::config_map(record)?)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(StoreError::Exists(record.id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn update(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let cm = Self::config_map(record)?;
        let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm.name_any(), "labels": cm.metadata.labels}, "data": cm.data});
        self.api.patch(&cm.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        let Some(cm) = self.api.get_opt(&object_name(id)).await? else { return Ok(None) };
        if cm.labels().get(ID_LABEL).map(String::as_str) != Some(id) {
            return Ok(None);
        }
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(KEY)) else { return Ok(None) };
        // Our own record, read back from our API server: not outside input.
        Ok(Some(serde_json::from_str(text)?))
    }

    /// Deletes the records of actions that ended more than `retention` before `now` (by `finishedAt`,
    /// else `createdAt`), and returns their ids. A running action is never pruned, nor a record that
    /// cannot be read (a person should look at it); each delete is conditional on the record being
    /// unchanged since it was listed. After pruning, an id may be used again.
    pub async fn prune(&self, retention: std::time::Duration, now: jiff::Timestamp) -> Result<Vec<String>, StoreError> {
        let retention = jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX);
        let listed = self.api.list(&ListParams::default().labels(ID_LABEL)).await?;
        let mut pruned = Vec::new();
        for cm in listed.items {
            let Some(record) = cm.data.as_ref().and_then(|d| d.get(KEY)).and_then(|t| serde_json::from_str::<ActionRecord>(t).ok()) else {
                tracing::warn!(configmap = %cm.name_any(), "an action record that cannot be read is kept for a person to look at");
                continue;
            };
            if record.state == ActionState::Running {
                continue;
            }
            let ended = record.finished_at.as_deref().unwrap_or(&record.created_at);
            let Ok(ended) = ended.parse::<jiff::Timestamp>() else {
                tracing::warn!(id = %record.id, time = %ended, "an action record with an unreadable time is kept");
                continue;
            };
            if now.duration_since(ended) <= retention {
                continue;
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions { resource_version: cm.resource_version(), uid: cm.uid() }),
                ..DeleteParams::default()
            };
            match self.api.delete(&cm.name_any(), &dp).await {
                Ok(_) => pruned.push(record.id),
                // Gone already (another replica) or changed since listed: leave it to the next round.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pruned)
    }

    pub async fn exists(&self, id: &str) -> Result<bool, StoreError> {
        let lp = ListParams::default().labels(&format!("{ID_LABEL}={id}")).limit(1);
        Ok(!self.api.list(&lp).await?.items.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_stable_dns_names() {
        let a = object_name("Mixed_Case.id-1");
        assert_eq!(a, object_name("Mixed_Case.id-1"));
        assert_ne!(a, object_name("mixed_case.id-1"));
        assert!(a.len() <= 63 && a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }
}
