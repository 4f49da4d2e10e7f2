//! Shared setup for the API tests: the API served in-process against a real control plane, the
//! JobSet CRD, JobSets with their pods, and a small HTTP client.

#![allow(dead_code)]

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use nodemedic_api::{ApiConfig, ApiState, Provider, RecreateNodeProvider};
use nodemedic_testenv::ControlPlane;
use std::sync::Arc;

pub const TOPOLOGY: &str = "cloud.google.com/gke-tpu-topology";
pub const CHIPS: &str = "cloud.google.com/gke-accelerator-count";

pub struct Server {
    pub url: String,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serves the API for `cp` on a free loopback port (plain HTTP unless `tls` is given).
pub async fn serve(cp: &ControlPlane, config: ApiConfig, tls: Option<Arc<rustls::ServerConfig>>) -> anyhow::Result<Server> {
    serve_with(cp, config, tls, Arc::new(RecreateNodeProvider { client: cp.client() })).await
}

pub async fn serve_with(
    cp: &ControlPlane,
    config: ApiConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    provider: Arc<dyn Provider>,
) -> anyhow::Result<Server> {
    let state = ApiState::new(cp.client(), config, provider);
    serve_router(nodemedic_api::router(state), tls).await
}

/// Serves `router` on a free loopback port (plain HTTP unless `tls` is given).
pub async fn serve_router(router: axum::Router, tls: Option<Arc<rustls::ServerConfig>>) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(nodemedic_api::tls::serve(listener, router, tls, async {
        let _ = stopped.await;
    }));
    Ok(Server { url: format!("{scheme}://{addr}"), http: reqwest::Client::new(), stop: Some(stop) })
}

/// Auth off, as `--insecure-no-auth` runs it.
pub fn no_auth() -> ApiConfig {
    ApiConfig { auth: false, ..ApiConfig::default() }
}

impl Server {
    pub async fn post(&self, body: &serde_json::Value) -> anyhow::Result<(u16, serde_json::Value)> {
        self.post_raw(body.to_string().into_bytes(), None).await
    }

    pub async fn post_raw(&self, body: Vec<u8>, token: Option<&str>) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut req = self.http.post(format!("{}/actions", self.url)).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let resp = self.http.get(format!("{}{path}", self.url)).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))))
    }
}

/// The `default` service account, which pods need before the controller manager would make it.
pub async fn default_service_account(cp: &ControlPlane, namespace: &str) -> anyhow::Result<()> {
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))?;
    match Api::<ServiceAccount>::namespaced(cp.client(), namespace).create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Installs the JobSet CRD from the sigs.k8s.io/jobset Go module (scripts/jobset-crd) with
/// server-side apply (it is too large for a client-side apply's annotation) and waits until it is served.
pub async fn install_jobset_crd(cp: &ControlPlane) -> anyhow::Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/jobset-crd");
    let out = std::process::Command::new("bash").arg(&script).output()?;
    anyhow::ensure!(out.status.success(), "scripts/jobset-crd failed: {}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8(out.stdout)?.trim().to_string();
    let applied = cp.kubectl(&["apply", "--server-side", "-f", &path])?;
    anyhow::ensure!(applied.status.success(), "applying the JobSet CRD: {}", String::from_utf8_lossy(&applied.stderr));
    for _ in 0..150 {
        if cp.kubectl(&["get", "jobsets", "-A"])?.status.success() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!("the JobSet CRD is not served")
}

/// A JobSet with one replicated job (`workers`, two pods), as the JobSet controller would leave
/// it: the JobSet object and its pods, the leader (job 0, completion index 0) on `leader_node`.
pub async fn create_jobset(cp: &ControlPlane, namespace: &str, name: &str, leader_node: &str, other_node: &str) -> anyhow::Result<()> {
    default_service_account(cp, namespace).await?;
    let jobset = serde_json::json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicatedJobs": [{"name": "workers", "replicas": 1, "template": {"spec": {
            "parallelism": 2, "completions": 2, "completionMode": "Indexed",
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "train", "image": "busybox"}]}}
        }}}]}
    });
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), jobset.to_string())?;
    let path = file.path().display().to_string();
    let out = cp.kubectl(&["apply", "--server-side", "-f", &path])?;
    anyhow::ensure!(out.status.success(), "creating the JobSet: {}", String::from_utf8_lossy(&out.stderr));
    for (index, node) in [(0, leader_node), (1, other_node)] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("{name}-workers-0-{index}"),
                "namespace": namespace,
                "labels": {
                    "jobset.sigs.k8s.io/jobset-name": name,
                    "jobset.sigs.k8s.io/replicatedjob-name": "workers",
                    "jobset.sigs.k8s.io/job-index": "0",
                    "batch.kubernetes.io/job-completion-index": index.to_string(),
                },
            },
            "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [{"name": "train", "image": "busybox"}]},
        }))?;
        Api::<Pod>::namespaced(cp.client(), namespace).create(&PostParams::default(), &pod).await?;
    }
    Ok(())
}

/// Whether the pod is gone or going.
pub async fn pod_deleted(cp: &ControlPlane, namespace: &str, name: &str) -> anyhow::Result<bool> {
    Ok(Api::<Pod>::namespaced(cp.client(), namespace).get_opt(name).await?.is_none_or(|p| p.metadata.deletion_timestamp.is_some()))
}

pub async fn unschedulable(cp: &ControlPlane, node: &str) -> anyhow::Result<bool> {
    Ok(Api::<Node>::all(cp.client()).get(node).await?.spec.and_then(|s| s.unschedulable).unwrap_or(false))
}

pub async fn uid(cp: &ControlPlane, node: &str) -> anyhow::Result<Option<String>> {
    Ok(Api::<Node>::all(cp.client()).get_opt(node).await?.and_then(|n| n.metadata.uid))
}

/// Notes of the events (events.k8s.io) about `name` with `reason`.
pub async fn event_notes(cp: &ControlPlane, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(cp.client());
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name) && e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect())
}

/// A provider whose cloud refuses every repair.
pub struct BrokenCloud;

impl Provider for BrokenCloud {
    fn name(&self) -> &'static str {
        "broken-cloud"
    }
    fn repair<'a>(&'a self, node: &'a Node) -> nodemedic_api::provider::ProviderFuture<'a> {
        let name = node.metadata.name.clone().unwrap_or_default();
        Box::pin(async move { Err(format!("quota exceeded replacing {name}")) })
    }
}

pub async fn service_account_token(cp: &ControlPlane, name: &str) -> anyhow::Result<String> {
    default_service_account(cp, "default").await?;
    let sas: Api<ServiceAccount> = Api::namespaced(cp.client(), "default");
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    sas.create(&PostParams::default(), &sa).await?;
    let request: TokenRequest = serde_json::from_value(serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let answer = sas.create_token_request(name, &PostParams::default(), &request).await?;
    answer.status.map(|s| s.token).ok_or_else(|| anyhow::anyhow!("no token issued"))
}

pub fn self_signed() -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, String)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let dir = tempfile::tempdir()?;
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let pem = cert.cert.pem();
    std::fs::write(&cert_path, &pem)?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
    Ok((dir, cert_path, key_path, pem))
}

/// Binds `role_rules` to the service account `account` (namespace `default`) in a ClusterRole
/// named after it.
pub fn grant(cp: &ControlPlane, account: &str, rules: serde_json::Value) -> anyhow::Result<()> {
    let role = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": account}, "rules": rules});
    let binding = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": account},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": "default"}]});
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), format!("{role}\n---\n{binding}\n"))?;
    let out = cp.kubectl(&["apply", "-f", &file.path().display().to_string()])?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
