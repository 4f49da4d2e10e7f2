//! Seed 002's replace: delete the GKE node's Compute Engine instance and let its managed instance
//! group create a fresh one.

use super::{Provider, ProviderFuture};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use nodemedic_core::RemediationStep;

/// A GCE instance named by a node's `spec.providerID` (`gce://PROJECT/ZONE/INSTANCE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceInstance {
    pub project: String,
    pub zone: String,
    pub instance: String,
}

impl GceInstance {
    pub fn from_provider_id(id: &str) -> Option<GceInstance> {
        let rest = id.strip_prefix("gce://")?;
        let mut parts = rest.split('/');
        let (project, zone, instance) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [project, zone, instance].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(GceInstance { project: project.into(), zone: zone.into(), instance: instance.into() })
    }

    /// The Compute Engine API call that deletes the instance (its managed instance group then
    /// creates a replacement).
    pub fn delete_url(&self, endpoint: &str) -> String {
        format!("{}/compute/v1/projects/{}/zones/{}/instances/{}", endpoint.trim_end_matches('/'), self.project, self.zone, self.instance)
    }
}

/// Deletes the node's Compute Engine instance through the Compute API, authenticating with the
/// workload's service account token from the GCE metadata server (Workload Identity on GKE).
pub struct GceProvider {
    pub http: reqwest::Client,
    /// `https://compute.googleapis.com` unless overridden (tests, private endpoints).
    pub endpoint: String,
    /// `http://metadata.google.internal` unless overridden.
    pub metadata: String,
}

impl GceProvider {
    pub fn new() -> Result<GceProvider, String> {
        GceProvider::with_endpoints("https://compute.googleapis.com", "http://metadata.google.internal")
    }

    /// A provider that talks to other endpoints (a private endpoint; a test's local server).
    pub fn with_endpoints(endpoint: &str, metadata: &str) -> Result<GceProvider, String> {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().map_err(|e| e.to_string())?;
        Ok(GceProvider { http, endpoint: endpoint.into(), metadata: metadata.into() })
    }

    async fn token(&self) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
        }
        let url = format!("{}/computeMetadata/v1/instance/service-accounts/default/token", self.metadata.trim_end_matches('/'));
        let resp = self.http.get(&url).header("Metadata-Flavor", "Google").send().await.map_err(|e| format!("metadata server: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("metadata server answered {}", resp.status()));
        }
        let t: Token = resp.json().await.map_err(|e| format!("metadata server token: {e}"))?;
        Ok(t.access_token)
    }
}

impl Provider for GceProvider {
    fn name(&self) -> &'static str {
        "gce"
    }

    fn steps(&self) -> &'static [RemediationStep] {
        &[RemediationStep::Replace]
    }

    fn repair<'a>(&'a self, node: &'a Node) -> ProviderFuture<'a> {
        Box::pin(async move {
            let name = node.name_any();
            let id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref()).unwrap_or_default();
            let instance = GceInstance::from_provider_id(id)
                .ok_or_else(|| format!("node {name}: providerID `{id}` is not gce://PROJECT/ZONE/INSTANCE"))?;
            let token = self.token().await?;
            let url = instance.delete_url(&self.endpoint);
            let resp = self.http.delete(&url).bearer_auth(token).send().await.map_err(|e| format!("DELETE {url}: {e}"))?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                // Already deleted (a resumed step asking again): its group replaces it all the same.
                return Ok(format!("instance {} in {}/{} was already deleted", instance.instance, instance.project, instance.zone));
            }
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                return Err(format!("DELETE {url} answered {status}: {}", text.chars().take(300).collect::<String>()));
            }
            Ok(format!("instance {} in {}/{} deleted; its instance group replaces it", instance.instance, instance.project, instance.zone))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gke_provider_id_names_the_instance_to_delete() {
        let i = GceInstance::from_provider_id("gce://my-project/us-central2-b/gke-tpu-pool-abc-1234");
        assert_eq!(
            i.as_ref().map(|i| i.delete_url("https://compute.googleapis.com/")),
            Some(
                "https://compute.googleapis.com/compute/v1/projects/my-project/zones/us-central2-b/instances/gke-tpu-pool-abc-1234".into()
            )
        );
        assert_eq!(GceInstance::from_provider_id("aws:///us-east-1a/i-0abc"), None);
        assert_eq!(GceInstance::from_provider_id("gce://p/z"), None);
        assert_eq!(GceInstance::from_provider_id("gce://p//i"), None);
    }
}
