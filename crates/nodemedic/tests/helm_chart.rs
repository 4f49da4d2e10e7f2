//! The Helm chart (`deploy/helm/nodemedic`) as an operator installs it: `helm lint` passes, the
//! schema refuses wrong values naming them, every object rendered for several value sets is accepted
//! by the real API server (server-side dry run, the Prometheus Operator's CRDs installed for the
//! optional ServiceMonitor and PrometheusRule), and after `helm install` a controller authenticated as
//! the chart's ServiceAccount (nothing more than the chart's RBAC) drains, reboots and recovers a node
//! that runs pods; deleting the chart's generated certificate and upgrading rotates it under a running
//! controller, which serves the new one without a restart. `helm` is v4, built from its Go module by
//! scripts/helm/build.

mod common;

use common::helm::{chart, helm, install_chart, kubectl_ok, ok, repo};
use common::{agent_reboots, record, taints};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use nodemedic_core::RemediationStep;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: drain, timeout: 1m}
- {step: reboot, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: manual}
monitorOnly: false
"#;

/// Value sets an operator would use: the defaults, the smallest install, and everything on.
fn value_sets() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("defaults", vec![]),
        ("controller only, no API", vec!["--set", "agent.enabled=false", "--set", "api.enabled=false"]),
        (
            "everything on",
            vec![
                "--set",
                "metrics.serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true,agent.selfFencing.enabled=true",
                "--set",
                "api.tls.secretName=my-tls,api.repairProvider=recreate-node,controller.replicas=3",
                "--set",
                "api.callers[0].kind=Group,api.callers[0].name=sre,api.callers[0].apiGroup=rbac.authorization.k8s.io",
                "--set-string",
                "controller.notifications=channels: []",
            ],
        ),
    ]
}

#[test]
fn helm_lint_passes_on_the_chart() -> anyhow::Result<()> {
    let chart = chart();
    let out = ok("helm lint --strict", helm(&["lint", "--strict", chart.to_str().unwrap_or_default()], None)?)?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    Ok(())
}

#[test]
fn a_wrong_value_fails_the_install_with_a_message_naming_it() -> anyhow::Result<()> {
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    for (set, named) in [
        ("controller.replicas=0", "/controller/replicas"),
        ("controller.replicaCount=2", "replicaCount"),
        ("api.repairProvider=aws", "/api/repairProvider"),
        ("agent.image.pullPolicy=Sometimes", "/agent/image/pullPolicy"),
        ("api.actionRetention=forever", "/api/actionRetention"),
    ] {
        let out = helm(&["template", "t", chart, "--set", set], None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`--set {set}` was accepted");
        assert!(stderr.contains(named), "`--set {set}` failed without naming {named}: {stderr}");
    }
    Ok(())
}

#[test]
fn the_chart_names_only_images_the_repository_builds() -> anyhow::Result<()> {
    let chart = chart();
    let rendered = ok("helm template", helm(&["template", "t", chart.to_str().unwrap_or_default()], None)?)?;
    let out = Command::new(repo().join("scripts/images/build")).arg("--print").env_remove("NODEMEDIC_IMAGE_REGISTRY").output()?;
    let built = ok("scripts/images/build --print", out)?;
    let built: Vec<&str> = built.lines().collect();
    let mut images: Vec<&str> = rendered.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
    images.sort_unstable();
    images.dedup();
    assert_eq!(images.len(), 2, "{images:?}");
    for image in images {
        assert!(built.contains(&image), "the chart names {image}; scripts/images/build builds {built:?}");
    }
    Ok(())
}

fn prometheus_operator_crds() -> anyhow::Result<PathBuf> {
    let out = Command::new(repo().join("scripts/prometheus-operator-crds")).stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "scripts/prometheus-operator-crds failed");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_object_the_chart_renders_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let chart = chart();
        let chart = chart.to_str().unwrap_or_default();
        let crds = chart.to_string() + "/crds";
        let monitoring = prometheus_operator_crds()?;
        for dir in [crds.as_str(), monitoring.to_str().unwrap_or_default()] {
            kubectl_ok(cp, "applying CRDs", &["apply", "--server-side", "-f", dir])?;
        }
        kubectl_ok(cp, "creating the namespace", &["create", "namespace", "nodemedic"])?;
        kubectl_ok(cp, "waiting for the CRDs", &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
        let dir = tempfile::tempdir()?;
        for (name, args) in value_sets() {
            let mut all = vec!["template", "nodemedic", chart, "--namespace", "nodemedic"];
            all.extend(args);
            let rendered = ok(&format!("helm template ({name})"), helm(&all, None)?)?;
            let kinds = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
            assert!(kinds >= 8, "{name}: only {kinds} objects rendered");
            // A strict reader (duplicate keys refused) reads every object as the API server does.
            for document in rendered.split("\n---") {
                serde_saphyr::from_str::<serde_json::Value>(document).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            }
            let file = dir.path().join("rendered.yaml");
            std::fs::write(&file, &rendered)?;
            let file = file.to_str().unwrap_or_default();
            let out =
                kubectl_ok(cp, &format!("server-side dry run ({name})"), &["apply", "--server-side", "--dry-run=server", "-f", file])?;
            let applied = out.lines().filter(|l| l.contains("(server dry run)")).count();
            assert_eq!(applied, kinds, "{name}: every rendered object must be accepted:\n{out}");
        }
        Ok(())
    })
    .await
}

async fn pod_on(cp: &ControlPlane, name: &str, node: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }))?;
    Api::<Pod>::namespaced(cp.client(), "default").create(&PostParams::default(), &pod).await?;
    Ok(())
}

async fn pods_on(cp: &ControlPlane, node: &str) -> anyhow::Result<usize> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    Ok(Api::<Pod>::all(cp.client()).list(&lp).await?.items.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_helm_install_the_charts_service_account_drains_reboots_and_recovers_a_node_with_pods_and_serves_the_api_with_its_tls()
-> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        let caller = "api.callers[0].kind=ServiceAccount,api.callers[0].name=oncall,api.callers[0].namespace=default";
        install_chart(cp, 2, POLICY, &[], &["--set", caller]).await?;
        let status = ok("helm status", helm(&["status", "nodemedic", "-n", "nodemedic"], Some(cp.kubeconfig()))?)?;
        assert!(status.contains("STATUS: deployed"), "{status}");
        // No controller-manager here makes the default ServiceAccount pods need.
        kubectl_ok(cp, "creating the default ServiceAccount", &["create", "serviceaccount", "default", "-n", "default"])?;
        pod_on(cp, "trainer-0", "gpu-001").await?;
        pod_on(cp, "trainer-1", "gpu-001").await?;

        let token = kubectl_ok(cp, "kubectl create token", &["create", "token", "nodemedic-controller", "-n", "nodemedic"])?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("sa.kubeconfig");
        cp.write_kubeconfig_with_token(token.trim(), &kubeconfig)?;
        let (cert, key, cert_pem) = chart_tls_files(cp, dir.path()).await?;
        let log_path = dir.path().join("controller.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(["controller", "--identity", "chart-replica", "--lease-namespace", "nodemedic", "--lease-duration", "6"])
            .args(["--listen", "127.0.0.1:0", "--resync", "2", "--api-listen", "127.0.0.1:0", "--repair-provider", "recreate-node"])
            .arg(format!("--api-tls-cert={}", cert.display()))
            .arg(format!("--api-tls-key={}", key.display()))
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?;
        let api = common::bound_address(&mut child, &log_path, "serving the actions API", "chart-replica")?;
        let result = async {
            fleet_data_over_the_charts_tls(cp, &api, &cert_pem).await?;
            remediate_with_pods(cp).await
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
        result.map_err(|e| anyhow::anyhow!("{e}\n--- controller log\n{logs}"))?;
        assert!(!logs.contains("forbidden"), "the chart's RBAC lacks something:\n{logs}");
        Ok(())
    })
    .await
}

/// The certificate and key the chart generated into its TLS Secret, written to files.
async fn chart_tls_files(cp: &ControlPlane, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, Vec<u8>)> {
    let secret = Api::<Secret>::namespaced(cp.client(), "nodemedic").get("nodemedic-api-tls").await?;
    let data = secret.data.unwrap_or_default();
    let part = |name: &str| data.get(name).map(|b| b.0.clone()).ok_or_else(|| anyhow::anyhow!("the chart's TLS Secret has no {name}"));
    let (cert_pem, key_pem) = (part("tls.crt")?, part("tls.key")?);
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &cert_pem)?;
    std::fs::write(&key, key_pem)?;
    Ok((cert, key, cert_pem))
}

/// `GET /fleet/data` as the chart's `api.callers` ServiceAccount, over TLS verified against the chart's
/// certificate for the API Service's DNS name.
async fn fleet_data_over_the_charts_tls(cp: &ControlPlane, address: &str, cert_pem: &[u8]) -> anyhow::Result<()> {
    kubectl_ok(cp, "creating the caller's ServiceAccount", &["create", "serviceaccount", "oncall", "-n", "default"])?;
    let token = kubectl_ok(cp, "kubectl create token", &["create", "token", "oncall", "-n", "default"])?;
    let host = "nodemedic-api.nodemedic.svc";
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem)?)
        .resolve(host, address.parse()?)
        .build()?;
    let port = address.rsplit(':').next().unwrap_or_default();
    let url = format!("https://{host}:{port}/fleet/data");
    let view: serde_json::Value = wait_for(Duration::from_secs(20), "the fleet data over TLS", || async {
        let response = http.get(&url).bearer_auth(token.trim()).send().await.ok()?;
        response.status().is_success().then_some(response.json().await.ok()?)
    })
    .await?;
    assert_eq!(view["policies"][0]["name"], "gpu-workers", "{view}");
    let anonymous = http.get(&url).send().await?;
    assert_eq!(anonymous.status(), 401);
    Ok(())
}

/// A GPU failure on a node running two pods: drained (the pods evicted), rebooted once, recovered,
/// untainted.
async fn remediate_with_pods(cp: &ControlPlane) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(30), "the pods to be scheduled", || async { (pods_on(cp, "gpu-001").await.ok()? == 2).then_some(()) })
        .await?;
    cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
    let nodes: Api<Node> = Api::all(cp.client());
    wait_for(Duration::from_secs(60), "the drain to evict the pods and the reboot to start", || async {
        let rec = record(cp, "gpu-001").await?;
        let rebooting = rec.active.as_ref().is_some_and(|a| a.step == RemediationStep::Reboot);
        (rebooting && pods_on(cp, "gpu-001").await.ok()? == 0).then_some(())
    })
    .await?;
    let attempt = record(cp, "gpu-001").await.map(|r| r.attempt).unwrap_or_default();
    agent_reboots(cp, "gpu-001", attempt).await?;
    let rec = wait_for(Duration::from_secs(40), "the node to recover", || async {
        record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Healthy)
    })
    .await?;
    assert_eq!(rec.history.last().map(|h| (h.step, h.outcome)), Some((RemediationStep::Reboot, StepOutcome::Recovered)), "{rec:?}");
    wait_for(Duration::from_secs(15), "the repair taints to be lifted", || async {
        (!taints(&nodes.get("gpu-001").await.ok()?).iter().any(|t| t.starts_with("nodemedic.io/"))).then_some(())
    })
    .await?;
    Ok(())
}

#[test]
fn the_charts_crds_are_the_ones_the_binary_installs() -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodemedic")).arg("crds").output()?;
    let printed = ok("nodemedic crds", out)?;
    let shipped = std::fs::read_to_string(chart().join("crds/nodemedic.yaml"))?;
    assert!(
        printed == shipped,
        "deploy/helm/nodemedic/crds/nodemedic.yaml is stale: regenerate it with `nodemedic crds > deploy/helm/nodemedic/crds/nodemedic.yaml`"
    );
    Ok(())
}

/// `(pod name, node name)` of the pods matching `selector` in the release namespace.
async fn placed_pods(cp: &ControlPlane, selector: &str) -> anyhow::Result<Vec<(String, String)>> {
    let pods = Api::<Pod>::namespaced(cp.client(), "nodemedic").list(&ListParams::default().labels(selector)).await?.items;
    Ok(pods
        .into_iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then(|| (p.metadata.name.unwrap_or_default(), node))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_pods_are_admitted_the_controller_replicas_run_on_different_nodes_and_an_upgrade_keeps_the_certificate()
-> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::full()).await?;
    cp.run(|cp| async move {
        install_chart(cp, 3, POLICY, &["gpu-000", "gpu-001"], &[]).await?;
        let controllers = wait_for(Duration::from_secs(90), "two running controller replicas", || async {
            let pods = placed_pods(cp, "app.kubernetes.io/name=nodemedic-controller").await.ok()?;
            (pods.len() == 2).then_some(pods)
        })
        .await?;
        assert_ne!(controllers[0].1, controllers[1].1, "the anti-affinity keeps replicas apart: {controllers:?}");
        let agents = wait_for(Duration::from_secs(60), "an agent on each labelled node", || async {
            let pods = placed_pods(cp, "app.kubernetes.io/name=nodemedic-agent").await.ok()?;
            (pods.len() == 2).then_some(pods)
        })
        .await?;
        let mut agent_nodes: Vec<&str> = agents.iter().map(|(_, n)| n.as_str()).collect();
        agent_nodes.sort_unstable();
        assert_eq!(agent_nodes, ["gpu-000", "gpu-001"], "the agent runs on labelled nodes only");
        let pdb = kubectl_ok(
            cp,
            "reading the PDB",
            &["get", "pdb", "nodemedic-controller", "-n", "nodemedic", "-o", "jsonpath={.spec.maxUnavailable}"],
        )?;
        assert_eq!(pdb.trim(), "1");

        // The generated certificate is kept across upgrades (clients that pinned it keep working).
        let jsonpath = r"jsonpath={.data.tls\.crt}";
        let certificate =
            || kubectl_ok(cp, "reading the TLS Secret", &["get", "secret", "nodemedic-api-tls", "-n", "nodemedic", "-o", jsonpath]);
        let before = certificate()?;
        assert!(before.len() > 100, "no certificate: {before}");
        ok(
            "helm upgrade",
            helm(
                &["upgrade", "nodemedic", chart().to_str().unwrap_or_default(), "--namespace", "nodemedic", "--wait=false"],
                Some(cp.kubeconfig()),
            )?,
        )?;
        assert_eq!(certificate()?, before, "helm upgrade replaced the API certificate");
        Ok(())
    })
    .await
}

/// The chart's TLS Secret as kubelet projects it into the pod: a new directory per version, then the
/// `..data` link swapped to it in one rename; `tls.crt` and `tls.key` link through `..data`.
async fn project_tls_secret(cp: &ControlPlane, volume: &Path, version: u32) -> anyhow::Result<Vec<u8>> {
    let generation = volume.join(format!("..version-{version}"));
    std::fs::create_dir_all(&generation)?;
    let (_, _, cert_pem) = chart_tls_files(cp, &generation).await?;
    let link = volume.join("..data_tmp");
    std::os::unix::fs::symlink(generation.file_name().unwrap_or_default(), &link)?;
    std::fs::rename(&link, volume.join("..data"))?;
    for file in ["tls.crt", "tls.key"] {
        if !volume.join(file).exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), volume.join(file))?;
        }
    }
    Ok(cert_pem)
}

/// Whether a fresh TLS connection that trusts only `cert_pem` for the API Service's name gets
/// `/openapi.json` from `address`.
async fn openapi_trusted_by(address: &str, cert_pem: &[u8]) -> anyhow::Result<bool> {
    let host = "nodemedic-api.nodemedic.svc";
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem)?)
        .resolve(host, address.parse()?)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    let port = address.rsplit(':').next().unwrap_or_default();
    Ok(http.get(format!("https://{host}:{port}/openapi.json")).send().await.is_ok_and(|r| r.status().is_success()))
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_charts_certificate_and_upgrading_rotates_it_under_a_running_controller_without_a_restart() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_chart(cp, 1, POLICY, &[], &[]).await?;
        let volume = tempfile::tempdir()?;
        let first = project_tls_secret(cp, volume.path(), 1).await?;
        let log_path = volume.path().join("controller.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(["controller", "--identity", "rotating-replica", "--lease-namespace", "nodemedic", "--listen", "127.0.0.1:0"])
            .args(["--api-listen", "127.0.0.1:0", "--repair-provider", "recreate-node", "--api-tls-reload-interval", "1"])
            .arg(format!("--api-tls-cert={}", volume.path().join("tls.crt").display()))
            .arg(format!("--api-tls-key={}", volume.path().join("tls.key").display()))
            .env("KUBECONFIG", cp.kubeconfig())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?;
        let api = common::bound_address(&mut child, &log_path, "serving the actions API", "rotating-replica")?;
        let result = async {
            wait_for(Duration::from_secs(20), "the API over the installed certificate", || async {
                openapi_trusted_by(&api, &first).await.ok().filter(|trusted| *trusted)
            })
            .await?;
            // The rotation docs/shipping.md gives: delete the Secret, upgrade (a new one is generated).
            kubectl_ok(cp, "deleting the TLS Secret", &["delete", "secret", "nodemedic-api-tls", "-n", "nodemedic"])?;
            ok(
                "helm upgrade",
                helm(
                    &["upgrade", "nodemedic", chart().to_str().unwrap_or_default(), "--namespace", "nodemedic", "--wait=false"],
                    Some(cp.kubeconfig()),
                )?,
            )?;
            let second = project_tls_secret(cp, volume.path(), 2).await?;
            anyhow::ensure!(second != first, "helm upgrade after deleting the Secret made the same certificate");
            wait_for(Duration::from_secs(20), "the controller to serve the new certificate", || async {
                openapi_trusted_by(&api, &second).await.ok().filter(|trusted| *trusted)
            })
            .await?;
            anyhow::ensure!(!openapi_trusted_by(&api, &first).await?, "the old certificate still serves new connections");
            Ok(())
        }
        .await;
        let still_running = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
        result.map_err(|e| anyhow::anyhow!("{e}\n--- controller log\n{logs}"))?;
        assert!(still_running, "the controller restarted or stopped:\n{logs}");
        assert!(logs.contains("changed on disk"), "no rotation in the log:\n{logs}");
        Ok(())
    })
    .await
}

/// The pod templates the chart renders (Deployment and DaemonSet), each as a Pod in `namespace`.
fn chart_pods(namespace: &str) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    let rendered = ok("helm template", helm(&["template", "nodemedic", chart, "--namespace", namespace], None)?)?;
    let mut pods = Vec::new();
    for document in rendered.split("\n---") {
        let object: serde_json::Value = serde_saphyr::from_str(document)?;
        if !matches!(object["kind"].as_str(), Some("Deployment" | "DaemonSet")) {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-pod"), "namespace": namespace},
            "spec": object["spec"]["template"]["spec"],
        });
        pods.push((name, pod));
    }
    Ok(pods)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_pod_meets_the_restricted_pod_security_standard_and_the_privileged_agent_does_not() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let namespace = "restricted";
        kubectl_ok(cp, "creating the namespace", &["create", "namespace", namespace])?;
        let label = "pod-security.kubernetes.io/enforce=restricted";
        kubectl_ok(cp, "enforcing the restricted standard", &["label", "namespace", namespace, label])?;
        let dir = tempfile::tempdir()?;
        let pods = chart_pods(namespace)?;
        let verdict = |name: &str, pod: &serde_json::Value| -> anyhow::Result<(bool, String)> {
            let account = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            let _ = cp.kubectl(&["create", "serviceaccount", account, "-n", namespace])?;
            let file = dir.path().join(format!("{name}.json"));
            std::fs::write(&file, pod.to_string())?;
            let out = cp.kubectl(&["create", "--dry-run=server", "-f", file.to_str().unwrap_or_default()])?;
            Ok((out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))))
        };
        let find = |name: &str| pods.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()).ok_or_else(|| anyhow::anyhow!("no {name}"));
        let (admitted, out) = verdict("nodemedic-controller", &find("nodemedic-controller")?)?;
        assert!(admitted, "the controller's pod is refused under restricted:\n{out}");
        // The same namespace refuses the agent (hostPID, privileged): the standard is really enforced.
        let (admitted, out) = verdict("nodemedic-agent", &find("nodemedic-agent")?)?;
        assert!(!admitted && out.contains("violates PodSecurity"), "the privileged agent was admitted under restricted:\n{out}");
        Ok(())
    })
    .await
}
