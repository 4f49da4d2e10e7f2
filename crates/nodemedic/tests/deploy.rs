//! The shipped manifest is what a cluster runs: `deploy/controller.yaml` applies cleanly, and a
//! controller authenticated as its service account (nothing more than that RBAC) does a whole
//! remediation: leader Lease in its namespace, records, taints, Events, policy status.

mod common;

use common::{record, setup, taints};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use nodemedic_core::record::Phase;
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::process::{Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  check: {name: gpu}
ladder:
- {step: drain, timeout: 1m}
- {step: reboot, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: manual}
monitorOnly: false
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_deploy_manifest_applies_and_its_rbac_is_enough_for_a_whole_remediation() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 2, POLICY).await?;
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/controller.yaml");
        let out = cp.kubectl(&["apply", "--server-side", "-f", manifest])?;
        anyhow::ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        let out = cp.kubectl(&["create", "token", "nodemedic-controller", "-n", "nodemedic"])?;
        anyhow::ensure!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("sa.kubeconfig");
        cp.write_kubeconfig_with_token(&token, &kubeconfig)?;

        let log = std::fs::File::create(dir.path().join("controller.log"))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(["controller", "--identity", "sa-replica", "--lease-namespace", "nodemedic", "--lease-duration", "6"])
            .args(["--listen", "127.0.0.1:0", "--resync", "2", "--log-format", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let result = async {
            cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
            let nodes: Api<Node> = Api::all(cp.client());
            wait_for(Duration::from_secs(40), "the drain and the reboot taint, as the service account", || async {
                let rec = record(cp, "gpu-001").await?;
                let tainted = taints(&nodes.get("gpu-001").await.ok()?).contains(&"nodemedic.io/repair-reboot".to_string());
                (tainted && rec.phase == Phase::Remediating).then_some(())
            })
            .await?;
            anyhow::Ok(())
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let logs = std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
        result.map_err(|e| anyhow::anyhow!("{e}\n--- controller log\n{logs}"))?;
        assert!(!logs.contains("forbidden"), "the RBAC lacks something:\n{logs}");
        // JSON logs, one object per line.
        let first = logs.lines().next().unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_str(first).map_err(|e| anyhow::anyhow!("{e}: {first}"))?;
        assert!(parsed.get("message").is_some() && parsed.get("level").is_some(), "{first}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_manifest_applies_and_its_admission_policy_keeps_the_agent_off_nodes_it_does_not_run_on() -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 2, POLICY).await?;
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/agent-daemonset.yaml");
        let out = cp.kubectl(&["apply", "--server-side", "-f", manifest])?;
        anyhow::ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        // A token of the agent's service account that is not bound to a pod on a node.
        let out = cp.kubectl(&["create", "token", "nodemedic-agent", "-n", "nodemedic-system"])?;
        anyhow::ensure!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
        let agent_client = cp.client_with_token(String::from_utf8_lossy(&out.stdout).trim()).await?;
        let nodes: Api<Node> = Api::all(agent_client.clone());
        // RBAC lets it read nodes…
        nodes.get("gpu-000").await?;
        // …but the admission policy refuses a status write from a token that names no node (or another one),
        // so an agent can only ever mark its own node. The policy may take a moment to be enforced.
        let patch = serde_json::json!({"status": {"conditions": [{"type": "GPUProblem", "status": "True", "reason": "Forged", "message": "x",
            "lastTransitionTime": "2026-11-21T00:00:00Z", "lastHeartbeatTime": "2026-11-21T00:00:00Z"}]}});
        let refused = wait_for(Duration::from_secs(30), "the admission policy to refuse the write", || async {
            match nodes.patch_status("gpu-000", &PatchParams::default(), &Patch::Strategic(&patch)).await {
                Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Some(s.message),
                _ => None,
            }
        })
        .await?;
        assert!(refused.contains("nodemedic-agent-own-node-only") || refused.contains("ValidatingAdmissionPolicy"), "{refused}");
        // Self-fencing: RBAC lets it list its peers and write Leases beside the controller's, but a token that
        // names no node cannot write a node's self-fencing Lease (a forged promise).
        nodes.list(&Default::default()).await?;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(agent_client.clone(), "nodemedic");
        let lease: k8s_openapi::api::coordination::v1::Lease =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "self-fencing-gpu-000"}, "spec": {"holderIdentity": "gpu-000"}}))?;
        let refused = wait_for(Duration::from_secs(30), "the admission policy to refuse the Lease", || async {
            match leases.create(&Default::default(), &lease).await {
                Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Some(s.message),
                _ => None,
            }
        })
        .await?;
        assert!(refused.contains("nodemedic-agent-own-lease-only"), "{refused}");
        Ok(())
    })
    .await
}

/// A key given twice in a manifest is silently resolved by some YAML readers (the last wins: a second
/// `ports:` list dropped the metrics port). Every shipped plain manifest is read with a reader that refuses it.
#[test]
fn no_shipped_manifest_repeats_a_key() -> anyhow::Result<()> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy"));
    let mut read = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for document in text.split("\n---") {
            serde_saphyr::from_str::<serde_json::Value>(document).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        read += 1;
    }
    assert!(read >= 2, "expected deploy/controller.yaml and deploy/agent-daemonset.yaml, read {read} files");
    Ok(())
}
