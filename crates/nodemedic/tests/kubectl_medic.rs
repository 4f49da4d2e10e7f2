//! `kubectl medic`: the nodemedic binary on PATH as `kubectl-medic` is found by the real kubectl as a
//! plugin, and its commands read (status, plan, history) and write (abort, pause) the live cluster
//! while a controller remediates a node; `plan` also works offline from `kubectl get nodes -o json`.

mod common;

use common::{Replica, record, setup};
use nodemedic_core::record::Phase;
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: manual}
monitorOnly: false
"#;

/// A directory holding `kubectl-medic`, a link to the nodemedic binary, to put on PATH.
fn plugin_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nodemedic"), dir.path().join("kubectl-medic"))?;
    Ok(dir)
}

/// `kubectl medic ARGS` through the test environment's kubectl, with the plugin on PATH.
fn kubectl_medic(cp: &ControlPlane, plugins: &Path, args: &[&str]) -> anyhow::Result<String> {
    let path = format!("{}:{}", plugins.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(cp.binaries().path("kubectl"))
        .arg("medic")
        .args(args)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("PATH", path)
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "kubectl medic {}: {text}", args.join(" "));
    Ok(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_medic_shows_the_fleet_plans_ahead_and_takes_requests_on_a_live_cluster() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 3, POLICY).await?;
        let plugins = plugin_dir()?;
        let plugins = plugins.path();
        let status = kubectl_medic(cp, plugins, &["status"])?;
        assert!(status.contains("POLICY gpu-workers") && status.contains("3 selected: 3 healthy"), "{status}");
        assert!(status.contains("pool-a") && status.contains("breaker closed"), "{status}");

        let _replica = Replica::start(cp, "medic-replica")?;
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        wait_for(Duration::from_secs(30), "the reboot", || async { record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Remediating) })
            .await?;
        let status = kubectl_medic(cp, plugins, &["status"])?;
        assert!(status.contains("remediating: gpu-001  step reboot"), "{status}");

        // Now the reboot is in flight: nothing new. Past its 10-minute timeout, the ladder's next step.
        let now = kubectl_medic(cp, plugins, &["plan", "gpu-workers"])?;
        assert!(now.contains("nothing to do"), "{now}");
        let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_mins(11)).to_string();
        let ahead = kubectl_medic(cp, plugins, &["plan", "gpu-workers", "--at", &later])?;
        assert!(
            ahead.contains(r#"taint gpu-001: add ["nodemedic.io/repair-manual"]"#) && ahead.contains("tell people about gpu-001"),
            "{ahead}"
        );

        // Offline: a policy file and `kubectl get nodes -o json`, no cluster reachable.
        let out = cp.kubectl(&["get", "nodes", "-o", "json"])?;
        anyhow::ensure!(out.status.success(), "kubectl get nodes");
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("nodes.json"), &out.stdout)?;
        std::fs::write(dir.path().join("policy.yaml"), POLICY)?;
        let offline = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .arg0_kubectl_medic()
            .args(["plan", "policy.yaml", "--nodes-json", "nodes.json"])
            .current_dir(dir.path())
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .output()?;
        let text = String::from_utf8_lossy(&offline.stdout);
        assert!(offline.status.success(), "{text}{}", String::from_utf8_lossy(&offline.stderr));
        assert!(text.contains("run reboot on gpu-001 (attempt 1)"), "{text}");

        kubectl_medic(cp, plugins, &["abort", "gpu-001", "--as", "alice"])?;
        wait_for(Duration::from_secs(30), "the abort to hand the node to a person", || async {
            record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Manual)
        })
        .await?;
        kubectl_medic(cp, plugins, &["pause", "gpu-workers", "--reason", "driver rollout", "--as", "bob"])?;
        let status = kubectl_medic(cp, plugins, &["status"])?;
        assert!(status.contains("NEEDS A PERSON: gpu-001"), "{status}");
        assert!(status.contains("paused: bob"), "{status}");
        let history = kubectl_medic(cp, plugins, &["history", "gpu-001"])?;
        assert!(history.contains("reboot"), "{history}");

        // Repaired by hand: `resume`, and once the check passes on newer data the node is back.
        let resumed = kubectl_medic(cp, plugins, &["resume", "gpu-001", "--as", "carol"])?;
        assert!(resumed.contains("resume requested by carol"), "{resumed}");
        let unpaused = kubectl_medic(cp, plugins, &["unpause", "gpu-workers", "--as", "bob"])?;
        assert!(unpaused.contains("unpaused by bob"), "{unpaused}");
        cp.set_node_condition("gpu-001", "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
        wait_for(Duration::from_secs(60), "the resumed node to be healthy again", || async {
            record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Healthy)
        })
        .await?;
        let status = kubectl_medic(cp, plugins, &["status"])?;
        assert!(!status.contains("NEEDS A PERSON") && !status.contains("paused: bob"), "{status}");
        Ok(())
    })
    .await
}

/// Runs a command with argv[0] `kubectl-medic` (how kubectl starts a plugin it found on PATH).
trait Arg0 {
    fn arg0_kubectl_medic(&mut self) -> &mut Self;
}

impl Arg0 for Command {
    fn arg0_kubectl_medic(&mut self) -> &mut Self {
        std::os::unix::process::CommandExt::arg0(self, "kubectl-medic")
    }
}

#[test]
fn the_krew_manifest_names_the_packaged_archive_its_checksum_and_the_plugin_binary() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir()?;
    let packaged = Command::new(repo.join("scripts/krew/package"))
        .args(["--binary", env!("CARGO_BIN_EXE_nodemedic"), "--out"])
        .arg(out.path())
        .output()?;
    anyhow::ensure!(packaged.status.success(), "scripts/krew/package: {}", String::from_utf8_lossy(&packaged.stderr));
    let archive = out.path().join("kubectl-medic-linux-amd64.tar.gz");
    let listing = Command::new("tar").arg("-tzf").arg(&archive).output()?;
    assert_eq!(String::from_utf8_lossy(&listing.stdout).trim(), "kubectl-medic");
    let sum = Command::new("sha256sum").arg(&archive).output()?;
    let sum = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap_or_default().to_string();
    let manifest: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(out.path().join("medic.yaml"))?)?;
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "medic");
    assert_eq!(manifest["spec"]["version"], format!("v{}", env!("CARGO_PKG_VERSION")));
    let platform = &manifest["spec"]["platforms"][0];
    assert_eq!(platform["sha256"], sum.as_str());
    assert_eq!(platform["bin"], "kubectl-medic");
    assert!(platform["uri"].as_str().is_some_and(|u| u.ends_with("/kubectl-medic-linux-amd64.tar.gz")), "{platform}");
    Ok(())
}
