//! helm v4 (built by scripts/helm/build) and the chart, for the tests that install it.

use nodemedic_testenv::ControlPlane;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn chart() -> PathBuf {
    repo().join("deploy/helm/nodemedic")
}

/// `NODEMEDIC_HELM` (scripts/test sets it), else whatever scripts/helm/build prints (it builds once).
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("NODEMEDIC_HELM") {
        return Ok(PathBuf::from(path));
    }
    let out = Command::new(repo().join("scripts/helm/build")).stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "scripts/helm/build failed");
    let text = String::from_utf8(out.stdout)?;
    let last = text.lines().last().ok_or_else(|| anyhow::anyhow!("scripts/helm/build printed nothing"))?;
    Ok(PathBuf::from(last.trim()))
}

pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> anyhow::Result<Output> {
    let home = std::env::temp_dir().join(format!("nodemedic-helm-home-{}", std::process::id()));
    let mut cmd = Command::new(helm_binary()?);
    cmd.args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    Ok(cmd.output()?)
}

pub fn ok(what: &str, out: Output) -> anyhow::Result<String> {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "{what} failed:\n{text}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn kubectl_ok(cp: &ControlPlane, what: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = cp.kubectl(args)?;
    ok(what, out)
}

/// The chart installed as a test starts it: its CRDs applied first (the policy needs them; helm leaves
/// existing ones alone), `nodes` nodes and the policy created ([`super::setup`]), the `managed` nodes
/// labelled for the agent, then `helm install` into `nodemedic` with `extra` arguments, not waiting.
pub async fn install_chart(cp: &ControlPlane, nodes: usize, policy: &str, managed: &[&str], extra: &[&str]) -> anyhow::Result<()> {
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    kubectl_ok(cp, "applying the chart's CRDs", &["apply", "--server-side", "-f", &format!("{chart}/crds")])?;
    super::setup(cp, nodes, policy).await?;
    for node in managed {
        kubectl_ok(cp, "labelling a node for the agent", &["label", "node", node, "nodemedic.io/managed=true"])?;
    }
    let mut install = vec!["install", "nodemedic", chart, "--namespace", "nodemedic", "--create-namespace", "--wait=false"];
    install.extend_from_slice(extra);
    ok("helm install", helm(&install, Some(cp.kubeconfig()))?)?;
    Ok(())
}
