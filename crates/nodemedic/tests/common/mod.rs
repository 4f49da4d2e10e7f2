//! Helpers shared by the end-to-end tests: controller replicas as child processes, the Lease
//! holder, records, and the node agent's half of a reboot.
#![allow(dead_code)]

pub mod agents;
pub mod helm;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use nodemedic_controller::install_crds;
use nodemedic_core::observe::{ReportedOutcome, StepReport};
use nodemedic_core::{Policy, Time};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation, field_managers, report_step};
use nodemedic_testenv::{ControlPlane, FakeNode};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One controller replica as a child process, killed when dropped.
pub struct Replica {
    pub name: String,
    child: Child,
    pub port: u16,
    log_path: std::path::PathBuf,
}

/// Tests in one binary run side by side and may name their replicas alike: every replica gets its own log.
fn unique_log(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("nodemedic-e2e-{}-{n}-{name}.log", std::process::id()))
}

impl Replica {
    pub fn start(cp: &ControlPlane, name: &str) -> anyhow::Result<Replica> {
        Replica::start_with(cp, name, &[])
    }

    /// A replica with extra `nodemedic controller` arguments (`--executors FILE`).
    pub fn start_with(cp: &ControlPlane, name: &str, extra: &[&str]) -> anyhow::Result<Replica> {
        let log_path = unique_log(name);
        let log = std::fs::File::create(&log_path)?;
        // Port 0: the replica binds a free port itself (picking one here could race other tests).
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(["controller", "--identity", name, "--lease-duration", "6", "--listen", "127.0.0.1:0", "--resync", "2"])
            .args(extra)
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let address = bound_address(&mut child, &log_path, "serving /metrics", name)?;
        let port =
            address.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).ok_or_else(|| anyhow::anyhow!("no port in `{address}`"))?;
        Ok(Replica { name: name.to_string(), child, port, log_path })
    }

    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics").unwrap_or_default()
    }

    pub fn is_leader(&self) -> bool {
        self.metrics().lines().any(|l| l.trim() == "nodemedic_leader 1")
    }

    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        Command::new("kill").args([signal, &self.child.id().to_string()]).status()?;
        Ok(())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

pub fn taints(n: &Node) -> Vec<String> {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default()
}

pub async fn holder(cp: &ControlPlane) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(cp.client(), "default");
    leases.get("nodemedic-controller").await.ok()?.spec?.holder_identity
}

pub async fn setup(cp: &ControlPlane, nodes: usize, policy: &str) -> anyhow::Result<()> {
    install_crds(&cp.client()).await?;
    cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), nodes).await?;
    Api::<NodeHealthPolicy>::all(cp.client())
        .create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(policy)? }))
        .await?;
    Ok(())
}

pub async fn record(cp: &ControlPlane, node: &str) -> Option<nodemedic_core::NodeRecord> {
    Api::<NodeRemediation>::all(cp.client()).get(node).await.ok()?.status.map(|s| s.record)
}

/// The agent's half of a reboot: new boot ID, report the attempt, the GPU check passes.
pub async fn agent_reboots(cp: &ControlPlane, node: &str, attempt: u32) -> anyhow::Result<()> {
    cp.simulate_reboot(node).await?;
    let at = Time(jiff::Timestamp::now().as_millisecond());
    let report = StepReport { attempt, outcome: ReportedOutcome::Succeeded, at, message: "rebooted".into() };
    report_step(&cp.client(), field_managers::AGENT, node, &report).await?;
    cp.set_node_condition(node, "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
    Ok(())
}

/// The `address=HOST:PORT` a process started with port 0 logged on the line containing `marker`.
pub fn bound_address(child: &mut Child, log_path: &std::path::Path, marker: &str, name: &str) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        let bound = text
            .lines()
            .find(|l| l.contains(marker))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .map(|a| a.trim_matches('"').to_string());
        if let Some(address) = bound {
            return Ok(address);
        }
        if started.elapsed() > Duration::from_secs(20) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            anyhow::bail!("{name} did not log `{marker}` with its address:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
