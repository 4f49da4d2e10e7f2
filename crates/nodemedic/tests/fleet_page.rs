//! The fleet page in a real browser: headless Chromium (Debian's, installed by
//! scripts/ship-peers/setup) opens `/fleet` on a controller's API listener while it reboots one node
//! and a gate holds another, and the page shows the nodes by pool with their phases, the incident's
//! timeline and the gate — for a token allowed to list nodes.nodemedic.io; without a token, or with
//! one RBAC does not allow, it shows the API's refusal and no fleet data.

mod common;

use common::{bound_address, record, setup};
use nodemedic_core::record::Phase;
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: manual}
gates:
  maxConcurrent: 1
monitorOnly: false
"#;

const VIEWER_RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: fleet-viewer, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: fleet-viewer}
rules:
- apiGroups: [nodemedic.io]
  resources: [nodes]
  verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: fleet-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: fleet-viewer}
subjects:
- {kind: ServiceAccount, name: fleet-viewer, namespace: default}
"#;

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium with the flags a shared CI machine needs and a fresh profile; `extra` says what
/// to produce (`--dump-dom`, `--screenshot=…`).
fn chromium(url: &str, extra: &[String]) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        .args(["--disable-sync", "--no-first-run", "--virtual-time-budget=15000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .map_err(|e| anyhow::anyhow!("chromium could not be run ({e}); scripts/ship-peers/setup installs it"))?;
    anyhow::ensure!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn token(cp: &ControlPlane, account: &str) -> anyhow::Result<String> {
    let out = cp.kubectl(&["create", "token", account, "-n", "default"])?;
    anyhow::ensure!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_page_shows_pools_phases_incidents_and_gates_to_an_allowed_viewer_only() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 3, POLICY).await?;
        let dir = tempfile::tempdir()?;
        let rbac = dir.path().join("rbac.yaml");
        std::fs::write(&rbac, VIEWER_RBAC)?;
        let out = cp.kubectl(&["apply", "-f", rbac.to_str().unwrap_or_default()])?;
        anyhow::ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));

        let log_path = dir.path().join("controller.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(["controller", "--identity", "fleet-replica", "--lease-duration", "6", "--listen", "127.0.0.1:0", "--resync", "2"])
            .args(["--api-listen", "127.0.0.1:0", "--insecure-no-tls", "--repair-provider", "recreate-node"])
            .env("KUBECONFIG", cp.kubeconfig())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?;
        let address = bound_address(&mut child, &log_path, "serving the actions API", "fleet-replica")?;
        let _controller = Controller(child);

        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        cp.set_node_condition("gpu-002", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        let rebooting = wait_for(Duration::from_secs(30), "one node rebooting", || async {
            for node in ["gpu-001", "gpu-002"] {
                if record(cp, node).await.is_some_and(|r| r.phase == Phase::Remediating) {
                    return Some(node);
                }
            }
            None
        })
        .await?;
        let held = if rebooting == "gpu-001" { "gpu-002" } else { "gpu-001" };

        let page = format!("http://{address}/fleet");
        let viewer = token(cp, "fleet-viewer")?;
        let dom = chromium(&format!("{page}#token={viewer}"), &["--dump-dom".into()])?;
        assert!(dom.contains(r#"data-loaded="true""#), "the page did not load its data:\n{dom}");
        assert!(dom.contains("Policy gpu-workers") && dom.contains("Pool pool-a (3)"), "{dom}");
        assert!(dom.contains(&format!(r#"data-node="{rebooting}" data-phase="Remediating""#)), "{dom}");
        assert!(dom.contains(r#"data-node="gpu-000" data-phase="Healthy""#), "{dom}");
        assert!(dom.contains(&format!(r#"data-node="{held}" data-phase="Held""#)), "{dom}");
        assert!(dom.contains(&format!(r#"data-incident="{rebooting}""#)) && dom.contains("in progress"), "{dom}");
        assert!(dom.contains("Gates holding nodes back") && dom.contains(held) && dom.contains("max_concurrent"), "{dom}");
        assert!(dom.contains("breaker closed"), "{dom}");
        assert!(!dom.contains(&viewer), "the token must not stay in the page");

        let anonymous = chromium(&page, &["--dump-dom".into()])?;
        assert!(anonymous.contains(r#"data-loaded="error""#) && anonymous.contains("401"), "{anonymous}");
        assert!(!anonymous.contains("gpu-001"), "{anonymous}");
        let nobody = token(cp, "nobody")?;
        let refused = chromium(&format!("{page}#token={nobody}"), &["--dump-dom".into()])?;
        assert!(refused.contains(r#"data-loaded="error""#) && refused.contains("403"), "{refused}");

        // The screenshot in the docs comes from here (NODEMEDIC_FLEET_SCREENSHOT=docs/fleet-page.png).
        let shot = dir.path().join("fleet.png");
        chromium(&format!("{page}#token={viewer}"), &[format!("--screenshot={}", shot.display()), "--window-size=1200,900".into()])?;
        let png = std::fs::read(&shot)?;
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a {} byte screenshot", png.len());
        if let Ok(path) = std::env::var("NODEMEDIC_FLEET_SCREENSHOT") {
            std::fs::copy(&shot, Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path))?;
        }
        Ok(())
    })
    .await
}
