//! Civo (seed 003's cloud): a hard reboot of the node's instance, for a node too far gone for the
//! node agent to reboot it. `POST {endpoint}/v2/instances/{id}/hard_reboots` with the region as a
//! form field and the API key as a bearer token; Civo answers `{"result": "success"}`. The shapes
//! follow Civo's public API reference as reproduced by third-party clients; no Civo endpoint is
//! reachable from the tests, which run against a local server answering in those shapes.

use super::{Provider, ProviderFuture};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use nodemedic_core::RemediationStep;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of the Civo provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CivoConfig {
    /// The region the cluster's instances live in (`LON1`, `NYC1`, `FRA1`, ...).
    pub region: String,
    /// A file holding the API key, read at every request so a rotated key is picked up.
    pub api_key_file: PathBuf,
    /// `https://api.civo.com` unless overridden (tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Hard-reboots the instance a node's `spec.providerID` (`civo://INSTANCE-ID`) names.
pub struct CivoProvider {
    http: reqwest::Client,
    config: CivoConfig,
}

impl CivoProvider {
    pub fn new(config: CivoConfig) -> Result<CivoProvider, String> {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().map_err(|e| e.to_string())?;
        Ok(CivoProvider { http, config })
    }
}

/// The instance ID in a `civo://ID` provider ID.
pub fn civo_instance(provider_id: &str) -> Option<&str> {
    provider_id.strip_prefix("civo://").filter(|id| !id.is_empty() && !id.contains('/'))
}

impl Provider for CivoProvider {
    fn name(&self) -> &'static str {
        "civo"
    }

    fn steps(&self) -> &'static [RemediationStep] {
        &[RemediationStep::Reboot]
    }

    fn repair<'a>(&'a self, node: &'a Node) -> ProviderFuture<'a> {
        Box::pin(async move {
            let name = node.name_any();
            let id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref()).unwrap_or_default();
            let instance = civo_instance(id).ok_or_else(|| format!("node {name}: providerID `{id}` is not civo://INSTANCE-ID"))?;
            let key = tokio::fs::read_to_string(&self.config.api_key_file)
                .await
                .map_err(|e| format!("reading the API key file {}: {e}", self.config.api_key_file.display()))?;
            let endpoint = self.config.endpoint.as_deref().unwrap_or("https://api.civo.com").trim_end_matches('/');
            let url = format!("{endpoint}/v2/instances/{instance}/hard_reboots");
            let resp = self
                .http
                .post(&url)
                .bearer_auth(key.trim())
                .form(&[("region", self.config.region.as_str())])
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(format!("POST {url} answered {status}: {}", text.chars().take(300).collect::<String>()));
            }
            let result = nodemedic_core::input::from_json_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["result"].as_str().map(str::to_string));
            match result.as_deref() {
                Some("success") => Ok(format!("Civo instance {instance} ({}) hard-rebooted", self.config.region)),
                _ => Err(format!("POST {url} answered {status} without result success: {}", text.chars().take(300).collect::<String>())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_civo_provider_id_names_the_instance() {
        assert_eq!(civo_instance("civo://3f2c7b1e-1234-4c9a-9f6e-0a1b2c3d4e5f"), Some("3f2c7b1e-1234-4c9a-9f6e-0a1b2c3d4e5f"));
        assert_eq!(civo_instance("gce://p/z/i"), None);
        assert_eq!(civo_instance("civo://"), None);
        assert_eq!(civo_instance("civo://a/b"), None);
    }
}
