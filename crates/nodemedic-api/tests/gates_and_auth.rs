//! Manual actions are held to the safety gates of the NodeHealthPolicy that selects the nodes and
//! to remediations in flight; `force` overrides a gate and says so. With auth on, a request needs a
//! bearer token the API server accepts (401) and the RBAC permission `create actions.nodemedic.io`
//! (403); the API is served over TLS.

mod common;

use common::*;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodemedic_api::ApiConfig;
use nodemedic_core::Policy;
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation, NodeRemediationSpec, field_managers};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use serde_json::json;
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: not-ready
  condition: {type: Ready, status: "False"}
  duration: 1m
ladder:
- {step: reboot, timeout: 10m}
- {step: manual}
nodePools: [pool-a]
gates:
  minHealthy: 3
monitorOnly: false
"#;

fn cordon(node: &str) -> serde_json::Value {
    json!({"requestor": "carol", "type": "cordon_node", "node_name": node, "reason": "suspect NVLink"})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policys_gates_hold_a_manual_action_unless_forced_and_a_remediation_in_flight_conflicts() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        nodemedic_controller::install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 4).await?;
        // kwok reports the nodes Ready: four healthy nodes, minHealthy 3.
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cp.client());
        wait_for(Duration::from_secs(60), "kwok to report the nodes Ready", || async {
            let list = nodes.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .all(|n| n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
                .then_some(())
        })
        .await?;
        Api::<NodeHealthPolicy>::all(cp.client())
            .create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(POLICY)? }))
            .await?;
        let api = serve(cp, no_auth(), None).await?;

        // One node out leaves three healthy: allowed. A second would leave two: refused by minHealthy.
        let (status, body) = api.post(&cordon("gpu-000")).await?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = api.post(&cordon("gpu-001")).await?;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["gates"], json!(["min_healthy"]));
        assert!(body["error"].as_str().unwrap_or_default().contains("policy gpu-workers"), "{body}");
        assert!(!unschedulable(cp, "gpu-001").await?);

        // force overrides the gate, and the record and an event say so.
        let forced = {
            let mut v = cordon("gpu-001");
            v["force"] = json!(true);
            v["id"] = json!("forced-1");
            v
        };
        let (status, body) = api.post(&forced).await?;
        assert_eq!(status, 200, "{body}");
        assert!(unschedulable(cp, "gpu-001").await?);
        let (_, record) = api.get("/actions/forced-1").await?;
        assert!(record["forced_gates"][0].as_str().unwrap_or_default().contains("min_healthy"), "{record}");
        let notes = event_notes(cp, "gpu-001", "SafetyGateOverridden").await?;
        assert!(notes.iter().any(|n| n.contains("carol") && n.contains("min_healthy")), "{notes:?}");

        // A node in the middle of a remediation is not the API's to touch: 409 naming the node.
        let records: Api<NodeRemediation> = Api::all(cp.client());
        records
            .create(&PostParams::default(), &NodeRemediation::new("gpu-003", NodeRemediationSpec { node: "gpu-003".into(), policy: "other".into() }))
            .await?;
        let status_body = json!({"apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation", "metadata": {"name": "gpu-003"},
            "status": {"node": "gpu-003", "phase": "Remediating", "attempt": 1, "active": {
                "trigger": "gpu", "reason": "Xid 79", "startedAt": "2026-11-21T10:00:00Z", "unhealthySince": "2026-11-21T10:00:00Z",
                "stepIndex": 0, "step": "reboot", "stepStartedAt": "2026-11-21T10:00:00Z", "stage": {"name": "executing"}, "executed": true}}});
        records.patch_status("gpu-003", &PatchParams::apply(field_managers::CONTROLLER).force(), &Patch::Apply(&status_body)).await?;
        let mut in_flight = cordon("gpu-003");
        in_flight["force"] = json!(true);
        let (status, body) = api.post(&in_flight).await?;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["field"], "node_name");
        assert!(body["error"].as_str().unwrap_or_default().contains("gpu-003 is being remediated (step reboot)"), "{body}");

        // GET /nodes shows the remediation.
        let (_, nodes) = api.get("/nodes").await?;
        assert_eq!(nodes["remediating"], 1, "{nodes}");
        assert_eq!(nodes["nodes"][3]["step"], "reboot");
        Ok::<_, anyhow::Error>(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_on_a_token_needs_rbac_permission_and_the_api_speaks_tls() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        cp.create_nodes(&FakeNode::cpu("n", "pool"), 1).await?;
        let (_dir, cert, key, pem) = self_signed()?;
        let tls = nodemedic_api::tls::server_config(&cert, &key)?;
        let mut api = serve(cp, ApiConfig::default(), Some(tls)).await?;
        api.http = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?).build()?;
        let body = json!({"requestor": "dave", "type": "cordon_nodepool", "node_pool": "pool", "reason": "test"}).to_string().into_bytes();

        // No token, or a token the API server does not know: 401.
        let (status, answer) = api.post_raw(body.clone(), None).await?;
        assert_eq!(status, 401, "{answer}");
        let (status, answer) = api.post_raw(body.clone(), Some("not-a-token")).await?;
        assert_eq!(status, 401, "{answer}");

        // A service account without the permission: 403 naming it.
        let token = service_account_token(cp, "oncall").await?;
        let (status, answer) = api.post_raw(body.clone(), Some(&token)).await?;
        assert_eq!(status, 403, "{answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains("system:serviceaccount:default:oncall"), "{answer}");
        assert!(!unschedulable(cp, "n-000").await?);

        // Granted `create` on actions.nodemedic.io: 200, and the record names the authenticated user.
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "nodemedic-actions"},
            "rules": [{"apiGroups": ["nodemedic.io"], "resources": ["actions"], "verbs": ["create", "get"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "oncall-actions"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "nodemedic-actions"},
            "subjects": [{"kind": "ServiceAccount", "name": "oncall", "namespace": "default"}]});
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), format!("{role}\n---\n{binding}\n"))?;
        let out = cp.kubectl(&["apply", "-f", &file.path().display().to_string()])?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let allowed = wait_for(Duration::from_secs(30), "RBAC to allow the service account", || async {
            let (status, answer) = api.post_raw(body.clone(), Some(&token)).await.ok()?;
            (status != 403).then_some((status, answer))
        })
        .await?;
        assert_eq!(allowed.0, 200, "{}", allowed.1);
        assert!(unschedulable(cp, "n-000").await?);
        let id = allowed.1["id"].as_str().unwrap_or_default().to_string();
        let resp = api.http.get(format!("{}/actions/{id}", api.url)).bearer_auth(&token).send().await?;
        assert_eq!(resp.status().as_u16(), 200);
        let record: serde_json::Value = resp.json().await?;
        assert_eq!(record["user"], "system:serviceaccount:default:oncall");

        // Reads need their own permission: this account may not list nodes.
        let resp = api.http.get(format!("{}/nodes", api.url)).bearer_auth(&token).send().await?;
        assert_eq!(resp.status().as_u16(), 403);

        // Plain HTTP to the TLS port gets nowhere.
        let plain = reqwest::Client::new().get(format!("{}/openapi.json", api.url.replacen("https", "http", 1))).send().await;
        assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
        Ok::<_, anyhow::Error>(())
    })
    .await
}
