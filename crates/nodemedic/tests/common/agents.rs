//! Real node agents for end-to-end tests, run in the test process (the agent library's loop and
//! metrics endpoint) with a test host that reboots a kwok node instead of the machine.

use nodemedic_agent::agent::Agent;
use nodemedic_agent::metrics::AgentMetrics;
use nodemedic_agent::remediate::{HostActions, HostFuture};
use nodemedic_agent::{AgentConfig, Catalog};
use nodemedic_core::RemediationStep;
use nodemedic_testenv::ControlPlane;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The node's reboot as the test host performs it: it takes a few seconds (long enough for scrapes to
/// see the gate hold the other node), the node comes back with a new boot ID, and its GPUs are fine.
pub struct TestHost<'a> {
    pub cp: &'a ControlPlane,
    pub node: String,
}

impl HostActions for TestHost<'_> {
    fn perform<'a>(&'a self, step: RemediationStep) -> HostFuture<'a> {
        Box::pin(async move {
            if step != RemediationStep::Reboot {
                return Err(format!("the test only reboots, not {}", step.as_str()));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            self.cp.simulate_reboot(&self.node).await.map_err(|e| e.to_string())?;
            self.cp
                .set_node_condition(&self.node, "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy")
                .await
                .map_err(|e| e.to_string())?;
            Ok("rebooted by the test host".to_string())
        })
    }
}

/// An agent's configuration: a network check that passes (the GPU condition is the test's to set), fast.
pub fn agent_config(dir: &Path) -> anyhow::Result<AgentConfig> {
    let check = dir.join("check_fabric.sh");
    std::fs::write(&check, "#!/bin/sh\necho 'fabric reachable'\nexit 0\n")?;
    std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755))?;
    let yaml = format!(
        "schedule: {{interval: 700ms, timeout: 700ms, jitter: 100ms, failures_before_unhealthy: 2, passes_before_healthy: 2}}\n\
         probes:\n  plugins:\n    - {{name: fabric, path: {}, family: network}}\n\
         remediation:\n  state_file: {}\n  boot_id_wait: 5s\n  reboot_grace: 30s\n",
        check.display(),
        dir.join("attempts.json").display()
    );
    Ok(AgentConfig::from_yaml(&yaml)?)
}

/// Until the node shows a boot ID three reads in a row (kwok may write its own status over a new node's).
pub async fn settle_boot_id(cp: &ControlPlane, node: &str) -> anyhow::Result<()> {
    use kube::api::{Api, Patch, PatchParams};
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cp.client());
    let mut steady = 0;
    while steady < 3 {
        if nodemedic_agent::node::boot_id(&nodes.get(node).await?).is_some() {
            steady += 1;
        } else {
            steady = 0;
            let patch = serde_json::json!({"status": {"nodeInfo": {"bootID": format!("{node}-first-boot")}}});
            nodes.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch)).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// A node's agent (calling the API server as `client`) with its metrics served on a free loopback port.
pub struct NodeAgent<'a> {
    pub agent: Agent<'a>,
    pub metrics: Arc<AgentMetrics>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub async fn node_agent<'a>(cp: &ControlPlane, client: kube::Client, node: &str, host: &'a TestHost<'a>) -> anyhow::Result<NodeAgent<'a>> {
    settle_boot_id(cp, node).await?;
    let dir = tempfile::tempdir()?;
    let config = agent_config(dir.path())?;
    let agent = Agent { client, node: node.to_string(), config: Arc::new(config), catalog: Arc::new(Catalog::embedded()?), host };
    let metrics = Arc::new(AgentMetrics::new(node));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(nodemedic_agent::metrics::serve(listener, metrics.clone(), std::future::pending()));
    Ok(NodeAgent { agent, metrics, port, _dir: dir })
}
