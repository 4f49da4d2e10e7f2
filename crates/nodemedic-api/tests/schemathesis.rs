//! schemathesis (PyPI, scripts/schemathesis/setup) against the OpenAPI document the API serves,
//! with TLS and authentication on as a controller serves it (the controller's `/metrics`,
//! `/healthz` and `/readyz` included) and a service account token that RBAC allows everything the
//! document describes: every check passes, so every status the API answers is in the document and
//! every request the document calls valid is accepted (and every invalid one refused).
//! Without schemathesis the test fails naming NODEMEDIC_SCHEMATHESIS; it never skips.

mod common;

use common::*;
use nodemedic_api::{ApiConfig, ApiState, Provider};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A cloud that always has a spare machine: the stateful phase finds the real pools in `GET /nodes`
/// and repairs their nodes, concurrently; what the provider does is not what this test is about.
struct SpareMachines;

impl Provider for SpareMachines {
    fn name(&self) -> &'static str {
        "spare-machines"
    }
    fn repair<'a>(&'a self, node: &'a k8s_openapi::api::core::v1::Node) -> nodemedic_api::provider::ProviderFuture<'a> {
        let name = node.metadata.name.clone().unwrap_or_default();
        Box::pin(async move { Ok(format!("replaced {name}")) })
    }
}

/// Examples per operation and phase: enough to reach every status, short enough for CI (~15 s).
/// NODEMEDIC_SCHEMATHESIS_EXAMPLES and NODEMEDIC_SCHEMATHESIS_SEED make a longer or another run.
const MAX_EXAMPLES: &str = "20";
const SEED: &str = "16";

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure_against_the_served_document_with_auth_on() -> anyhow::Result<()> {
    let exe = std::env::var("NODEMEDIC_SCHEMATHESIS").map_err(|_| {
        anyhow::anyhow!("NODEMEDIC_SCHEMATHESIS is not set: run scripts/schemathesis/setup and export its last line (scripts/test does)")
    })?;
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        nodemedic_controller::install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::cpu("pool-a", "pool-a"), 3).await?;
        let (_dir, cert, key, pem) = self_signed()?;
        let tls = nodemedic_api::tls::server_config(&cert, &key)?;
        let state = ApiState::new(cp.client(), ApiConfig::default(), Arc::new(SpareMachines));
        let controller = nodemedic_controller::http::router(nodemedic_controller::http::HttpState {
            metrics: Arc::new(nodemedic_controller::Metrics::new()),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        });
        let mut api = serve_router(nodemedic_api::router_with(state, controller), Some(tls)).await?;
        api.http = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?).build()?;

        let token = service_account_token(cp, "schemathesis").await?;
        grant(
            cp,
            "schemathesis",
            json!([
                {"apiGroups": ["nodemedic.io"], "resources": ["actions"], "verbs": ["create", "get"]},
                {"apiGroups": ["nodemedic.io"], "resources": ["nodes"], "verbs": ["list"]},
                {"nonResourceURLs": ["/metrics", "/healthz", "/readyz"], "verbs": ["get"]}
            ]),
        )?;
        wait_for(Duration::from_secs(30), "RBAC to allow the service account", || async {
            let resp = api.http.get(format!("{}/nodes", api.url)).bearer_auth(&token).send().await.ok()?;
            (resp.status().as_u16() == 200).then_some(())
        })
        .await?;

        let report = tempfile::tempdir()?;
        let examples = std::env::var("NODEMEDIC_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.into());
        let seed = std::env::var("NODEMEDIC_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
        let run = tokio::process::Command::new(&exe)
            .args(["--config-file", &config.display().to_string()])
            .args(["run", &format!("{}/openapi.json", api.url)])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--tls-verify", &cert.display().to_string()])
            .args(["--checks", "all", "--max-examples", &examples, "--seed", &seed, "--workers", "2"])
            .args(["--generation-database", "none", "--request-timeout", "30", "--no-color"])
            .args(["--report-dir", &report.path().display().to_string()])
            .current_dir(report.path())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(300), run).await??;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("{text}");
        anyhow::ensure!(out.status.success(), "schemathesis found failures (exit {:?}):\n{text}", out.status.code());
        Ok(())
    })
    .await
}
