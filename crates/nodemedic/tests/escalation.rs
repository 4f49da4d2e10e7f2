//! Escalation to people, end to end: a `nodemedic controller` process against a real kube-apiserver
//! (kwok nodes), telling a real SMTP server (aiosmtpd) and a real Alertmanager, with the SMTP password
//! and the Alertmanager token read from a Kubernetes Secret; and the operator commands people use.

#[path = "../../nodemedic-notify/tests/common/mod.rs"]
mod peers;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodemedic_controller::install_crds;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_core::{Policy, RemediationStep};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation, NotificationRecord};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use peers::{Alertmanager, SmtpSink, SmtpSinkOptions};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A GPU rule, a reboot nobody reports on (it times out after 3 s), then a person.
const NEVER_RECOVERS: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 3s}
- {step: manual}
monitorOnly: false
"#;

/// A reboot that takes long enough to be aborted, and a breaker that needs a person to reset it.
const SLOW_REBOOT: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10m}
- {step: reimage, timeout: 30m}
- {step: manual}
gates:
  circuitBreaker: {maxUnhealthy: 90%, window: 5m, cooldown: 1m, manualReset: true}
monitorOnly: false
"#;

/// A breaker that trips when more than one node turns unhealthy within 5 minutes and stays open until a
/// person resets it.
const FRAGILE_BREAKER: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10m}
- {step: manual}
gates:
  circuitBreaker: {maxUnhealthy: 1, window: 5m, cooldown: 2s, manualReset: true}
monitorOnly: false
"#;

const SMTP_PASSWORD: &str = "correct-horse-battery";
const ALERTMANAGER_TOKEN: &str = "am-token-5f3a9c";

/// One controller process, killed when dropped; its log goes to a file.
struct Controller {
    child: Child,
    log: std::path::PathBuf,
}

impl Controller {
    fn start(cp: &ControlPlane, identity: &str, notifications: Option<&std::path::Path>) -> Result<Controller> {
        let log = std::env::temp_dir().join(format!(
            "nodemedic-escalation-{}-{}-{identity}.log",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
        ));
        let mut args: Vec<String> = ["controller", "--identity", identity, "--lease-duration", "4", "--resync", "2"]
            .into_iter()
            .map(String::from)
            .chain(["--listen".to_string(), "127.0.0.1:0".to_string()])
            .collect();
        if let Some(file) = notifications {
            args.extend(["--notifications".to_string(), file.display().to_string()]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(&args)
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::options().create(true).append(true).open(&log)?)
            .spawn()?;
        Ok(Controller { child, log })
    }

    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The controller's `/metrics`, at the address its log announced.
    fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let log = self.log();
        let address = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .map(|a| a.trim_matches('"').to_string())
            .ok_or_else(|| anyhow::anyhow!("no metrics address in the log:\n{log}"))?;
        let mut stream = std::net::TcpStream::connect(address.as_str())?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nodemedic <args>` against the test cluster.
fn nodemedic(cp: &ControlPlane, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_nodemedic")).args(args).env("KUBECONFIG", cp.kubeconfig()).env("USER", "tester").output()?)
}

fn succeeds(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = nodemedic(cp, args)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("nodemedic {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}

async fn setup(cp: &ControlPlane, policy: &str) -> Result<()> {
    install_crds(&cp.client()).await?;
    cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 3).await?;
    Api::<NodeHealthPolicy>::all(cp.client())
        .create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(policy)? }))
        .await?;
    Ok(())
}

async fn remediation(cp: &ControlPlane, node: &str) -> Option<NodeRemediation> {
    Api::<NodeRemediation>::all(cp.client()).get(node).await.ok()
}

async fn phase(cp: &ControlPlane, node: &str) -> Option<Phase> {
    remediation(cp, node).await?.status.map(|s| s.record.phase)
}

fn notifications(r: &NodeRemediation) -> Vec<NotificationRecord> {
    r.status.as_ref().map(|s| s.notifications.clone()).unwrap_or_default()
}

fn taints(n: &Node) -> Vec<String> {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default()
}

fn annotation<K: kube::ResourceExt>(object: &K, key: &str) -> String {
    object.annotations().get(key).cloned().unwrap_or_default()
}

/// The credentials live in a Secret; the notifications file only refers to them.
async fn credentials(cp: &ControlPlane) -> Result<()> {
    let namespace: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "nodemedic"}}))?;
    Api::<Namespace>::all(cp.client()).create(&PostParams::default(), &namespace).await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "notify-credentials", "namespace": "nodemedic"},
        "stringData": {"smtp-password": SMTP_PASSWORD, "alertmanager-token": ALERTMANAGER_TOKEN},
    }))?;
    Api::<Secret>::namespaced(cp.client(), "nodemedic").create(&PostParams::default(), &secret).await?;
    Ok(())
}

fn notifications_file(dir: &std::path::Path, smtp_port: u16, alertmanager_url: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("notifications.yaml");
    std::fs::write(
        &path,
        format!(
            r#"retry: {{maxAttempts: 5, initialBackoffSeconds: 0.5, maxBackoffSeconds: 2}}
channels:
- name: email-infra
  minSeverity: critical
  smtp:
    host: 127.0.0.1
    port: {smtp_port}
    security: plain
    username: nodemedic
    password: {{secretRef: {{namespace: nodemedic, name: notify-credentials, key: smtp-password}}}}
    from: nodemedic@example.com
    to: [infra@example.com, oncall@example.com]
- name: alertmanager
  alertmanager:
    url: {alertmanager_url}
    token: {{secretRef: {{namespace: nodemedic, name: notify-credentials, key: alertmanager-token}}}}
"#
        ),
    )?;
    Ok(path)
}

async fn manual_alert(alertmanager: &Alertmanager, node: &str) -> Result<Option<serde_json::Value>> {
    Ok(alertmanager.alerts().await?.into_iter().find(|a| a["labels"]["alertname"] == "NodemedicNodeManual" && a["labels"]["node"] == node))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_never_recovers_reaches_people_once_and_a_person_brings_it_back() -> Result<()> {
    let sink =
        SmtpSink::start(SmtpSinkOptions { auth: Some(("nodemedic".into(), SMTP_PASSWORD.into())), ..SmtpSinkOptions::default() }).await?;
    let alertmanager = Alertmanager::start().await?;
    let config_dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, NEVER_RECOVERS).await?;
        credentials(cp).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let file = notifications_file(config_dir.path(), sink.port, &alertmanager.url)?;
        let controller = Controller::start(cp, "controller-1", Some(&file))?;

        let addresses = serde_json::json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "10.42.0.11"}, {"type": "ExternalIP", "address": "198.51.100.11"}
        ]}});
        nodes.patch_status("gpu-001", &PatchParams::default(), &Patch::Strategic(addresses)).await?;
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 119: GSP RPC timeout").await?;
        wait_for(Duration::from_secs(60), "gpu-001 to reach Manual", || async {
            (phase(cp, "gpu-001").await? == Phase::Manual).then_some(())
        })
        .await?;
        // Taints follow the record (records are written first, then the taints).
        let node = wait_for(Duration::from_secs(10), "the repair-manual taint", || async {
            let node = nodes.get("gpu-001").await.ok()?;
            taints(&node).contains(&"nodemedic.io/repair-manual".to_string()).then_some(node)
        })
        .await?;
        let ips: Vec<String> =
            node.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default().into_iter().map(|a| a.address).collect();
        assert!(!ips.is_empty(), "the node shows its addresses");
        assert!(taints(&node).contains(&"nodemedic.io/repair-manual".to_string()), "{:?}", taints(&node));

        // One email, sent with the password from the Secret, with the node's diagnostics and the attempts.
        let mail = sink.message(1).await?;
        assert_eq!(mail["login"], "nodemedic");
        assert_eq!(mail["incidentKey"], "gpu-001/NodeManual/2");
        let text = mail["text"].as_str().unwrap_or_default();
        for want in [
            "Node gpu-001",
            "cloud.google.com/gke-nodepool=pool-a",
            "nvidia.com/gpu.count=8",
            "GPUProblem=True",
            "Xid 119",
            "#1 reboot",
            "timed_out",
            "#2 manual",
            "Rule fired:    gpu",
        ] {
            assert!(text.contains(want), "`{want}` in the email:\n{text}");
        }
        for ip in &ips {
            assert!(text.contains(ip.as_str()), "IP {ip} in the email:\n{text}");
        }

        // An alert fires in Alertmanager with the same diagnostics.
        let alert =
            peers::eventually("the NodeManual alert", Duration::from_secs(30), || async { manual_alert(&alertmanager, "gpu-001").await })
                .await?;
        assert_eq!(alert["labels"]["policy"], "gpu-workers");
        let diagnostics = alert["annotations"]["diagnostics"].as_str().unwrap_or_default();
        assert!(diagnostics.contains("\"gpu-001\"") && diagnostics.contains("Xid 119"), "{diagnostics}");

        // The NodeRemediation status records both deliveries.
        let delivered = wait_for(Duration::from_secs(30), "both deliveries in the status", || async {
            let list = notifications(&remediation(cp, "gpu-001").await?);
            let ok: Vec<String> = list.iter().filter(|n| n.ok && n.key == "gpu-001/NodeManual/2").map(|n| n.channel.clone()).collect();
            (ok.contains(&"email-infra".to_string()) && ok.contains(&"alertmanager".to_string())).then_some(list)
        })
        .await?;
        assert!(delivered.iter().all(|n| n.error.is_none()), "{delivered:?}");
        // …and the controller counts them for the NodemedicNotificationsFailing alert and the dashboard.
        let metrics = controller.metrics()?;
        for channel in ["email-infra", "alertmanager"] {
            let series = format!(r#"nodemedic_notification_deliveries_total{{channel="{channel}",outcome="delivered"}}"#);
            assert!(metrics.contains(&series), "{series} in:\n{metrics}");
        }

        // Killed and restarted: the record says the email went out, so it is not sent again.
        let first_log = controller.log();
        controller.kill()?;
        let restarted = Controller::start(cp, "controller-2", Some(&file))?;
        wait_for(Duration::from_secs(40), "the restarted controller to load the deliveries", || async {
            restarted.log().contains("notifications started").then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sink.message_count()?, 1, "no second email after the restart");
        let after = notifications(&remediation(cp, "gpu-001").await.context("record")?);
        assert_eq!(after.iter().filter(|n| n.ok && n.channel == "email-infra").count(), 1, "{after:?}");

        // A person repaired it: resume, then the check passes on fresh data.
        let said = succeeds(cp, &["resume", "gpu-001", "--as", "alice"])?;
        assert!(said.contains("resume requested by alice"), "{said}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        cp.set_node_condition("gpu-001", "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
        wait_for(Duration::from_secs(30), "gpu-001 back to Healthy", || async {
            (phase(cp, "gpu-001").await? == Phase::Healthy).then_some(())
        })
        .await?;
        let record = remediation(cp, "gpu-001").await.and_then(|r| r.status).map(|s| s.record).context("record")?;
        let last = record.history.last().context("history")?;
        assert_eq!((last.step, last.outcome), (RemediationStep::Manual, StepOutcome::Recovered));
        assert!(last.reason.contains("resolved by alice"), "{}", last.reason);
        wait_for(Duration::from_secs(10), "the repair taints to be lifted", || async {
            (!taints(&nodes.get("gpu-001").await.ok()?).iter().any(|t| t.starts_with("nodemedic.io/"))).then_some(())
        })
        .await?;
        peers::eventually("the alert to be resolved", Duration::from_secs(30), || async {
            Ok(manual_alert(&alertmanager, "gpu-001").await?.is_none().then_some(()))
        })
        .await?;
        assert_eq!(sink.message_count()?, 1, "the recovery is not mailed to a critical-only channel");

        // The story, as a timeline.
        let history = succeeds(cp, &["history", "gpu-001"])?;
        for want in [
            "signal",
            "step reboot (attempt 1) started",
            "timed_out",
            "step manual (attempt 2)",
            "resume (repaired by hand) requested by alice",
            "gpu-001/NodeManual/2 to email-infra (try 1): delivered",
            "recovered",
        ] {
            assert!(history.contains(want), "`{want}` in the history:\n{history}");
        }

        // Secrets never reach the logs.
        let logs = format!("{first_log}{}", restarted.log());
        assert!(!logs.contains(SMTP_PASSWORD) && !logs.contains(ALERTMANAGER_TOKEN), "a secret in the controller log");
        Ok::<(), anyhow::Error>(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_change_what_they_should_and_record_who() -> Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, SLOW_REBOOT).await?;
        let _controller = Controller::start(cp, "controller-1", None)?;
        let policies: Api<NodeHealthPolicy> = Api::all(cp.client());
        let nodes: Api<Node> = Api::all(cp.client());

        // pause: a pause request naming who and why; the controller holds new remediations.
        succeeds(cp, &["pause", "gpu-workers", "--reason", "rack maintenance", "--as", "bob"])?;
        let p = policies.get("gpu-workers").await?;
        assert_eq!(p.spec.policy.pause_requests, vec!["bob: rack maintenance".to_string()]);
        assert!(annotation(&p, "nodemedic.io/pause-by").starts_with("bob at "), "{:?}", p.metadata.annotations);
        wait_for(Duration::from_secs(30), "Paused=True naming bob", || async {
            let st = policies.get("gpu-workers").await.ok()?.status?;
            st.conditions
                .iter()
                .any(|c| c.type_ == "Paused" && c.status == "True" && c.message.contains("bob: rack maintenance"))
                .then_some(())
        })
        .await?;

        // Someone else cannot withdraw bob's pause by accident; bob can.
        let refused = nodemedic(cp, &["unpause", "gpu-workers", "--as", "eve"])?;
        assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("no pause request by eve"));
        succeeds(cp, &["unpause", "gpu-workers", "--as", "bob"])?;
        let p = policies.get("gpu-workers").await?;
        assert!(p.spec.policy.pause_requests.is_empty());
        assert!(annotation(&p, "nodemedic.io/unpause-by").starts_with("bob at "));

        // reset-breaker: the request the engine honours, and who made it.
        succeeds(cp, &["reset-breaker", "gpu-workers", "--as", "dave"])?;
        let p = policies.get("gpu-workers").await?;
        assert!(p.status.as_ref().is_some_and(|s| s.record.breaker_reset_requested_at.is_some()), "{:?}", p.status);
        assert!(annotation(&p, "nodemedic.io/reset-breaker-by").starts_with("dave at "));

        // abort: the ladder stops during the reboot and the node stays cordoned for a person.
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        wait_for(Duration::from_secs(30), "gpu-000 rebooting", || async {
            (phase(cp, "gpu-000").await? == Phase::Remediating).then_some(())
        })
        .await?;
        let early = nodemedic(cp, &["resume", "gpu-000", "--as", "carol"])?;
        assert!(
            !early.status.success() && String::from_utf8_lossy(&early.stderr).contains("nothing to resume"),
            "only a Manual node can be resumed"
        );
        succeeds(cp, &["abort", "gpu-000", "--as", "carol"])?;
        wait_for(Duration::from_secs(30), "gpu-000 in Manual", || async { (phase(cp, "gpu-000").await? == Phase::Manual).then_some(()) })
            .await?;
        let r = remediation(cp, "gpu-000").await.context("record")?;
        let status = r.status.clone().context("status")?;
        let last = status.record.history.last().context("history")?;
        assert_eq!(last.step, RemediationStep::Reboot);
        assert!(last.reason.contains("aborted by carol"), "{}", last.reason);
        assert_eq!(status.operator_request.as_ref().map(|o| o.by.as_str()), Some("carol"));
        assert!(annotation(&r, "nodemedic.io/abort-by").starts_with("carol at "));
        let t = wait_for(Duration::from_secs(20), "the manual taint", || async {
            let t = taints(&nodes.get("gpu-000").await.ok()?);
            t.contains(&"nodemedic.io/repair-manual".to_string()).then_some(t)
        })
        .await?;
        assert!(!t.contains(&"nodemedic.io/repair-reboot".to_string()), "{t:?}");
        let history = succeeds(cp, &["history", "gpu-000"])?;
        assert!(history.contains("abort (stop the ladder) requested by carol"), "{history}");
        Ok::<(), anyhow::Error>(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}"))
}

async fn breaker_alert(alertmanager: &Alertmanager) -> Result<Option<serde_json::Value>> {
    Ok(alertmanager
        .alerts()
        .await?
        .into_iter()
        .find(|a| a["labels"]["alertname"] == "NodemedicBreakerTripped" && a["labels"]["policy"] == "gpu-workers"))
}

async fn breaker_open(policies: &Api<NodeHealthPolicy>) -> Option<bool> {
    let status = policies.get("gpu-workers").await.ok()?.status?;
    status.conditions.iter().find(|c| c.type_ == "BreakerOpen").map(|c| c.status == "True")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tripped_breaker_is_told_and_recorded_on_the_policy_and_reset_breaker_closes_it() -> Result<()> {
    let sink =
        SmtpSink::start(SmtpSinkOptions { auth: Some(("nodemedic".into(), SMTP_PASSWORD.into())), ..SmtpSinkOptions::default() }).await?;
    let alertmanager = Alertmanager::start().await?;
    let config_dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, FRAGILE_BREAKER).await?;
        credentials(cp).await?;
        let file = notifications_file(config_dir.path(), sink.port, &alertmanager.url)?;
        let _controller = Controller::start(cp, "controller-1", Some(&file))?;
        let policies: Api<NodeHealthPolicy> = Api::all(cp.client());

        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79 (rack power event)").await?;
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79 (rack power event)").await?;
        wait_for(Duration::from_secs(30), "the breaker to trip", || async { breaker_open(&policies).await.filter(|open| *open) }).await?;

        // People hear about it once, by email and in Alertmanager, and the policy status records both.
        let mail = sink.message(1).await?;
        assert!(mail["incidentKey"].as_str().is_some_and(|k| k.starts_with("policy:gpu-workers/BreakerTripped/")), "{mail}");
        peers::eventually("the breaker alert", Duration::from_secs(30), || async { breaker_alert(&alertmanager).await }).await?;
        let recorded = wait_for(Duration::from_secs(30), "the deliveries on the policy status", || async {
            let list = policies.get("gpu-workers").await.ok()?.status?.notifications;
            let ok: Vec<String> = list.iter().filter(|n| n.ok && n.key.contains("/BreakerTripped/")).map(|n| n.channel.clone()).collect();
            (ok.contains(&"email-infra".to_string()) && ok.contains(&"alertmanager".to_string())).then_some(list)
        })
        .await?;
        assert!(recorded.iter().all(|n| n.key.starts_with("policy:gpu-workers/")), "{recorded:?}");

        // The cooldown passes, but a manual-reset breaker stays open until a person resets it.
        cp.set_node_condition("gpu-001", "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(breaker_open(&policies).await, Some(true));
        succeeds(cp, &["reset-breaker", "gpu-workers", "--as", "dave"])?;
        wait_for(Duration::from_secs(30), "the breaker to close", || async { breaker_open(&policies).await.filter(|open| !*open) }).await?;
        peers::eventually("the breaker alert to be resolved", Duration::from_secs(30), || async {
            Ok(breaker_alert(&alertmanager).await?.is_none().then_some(()))
        })
        .await?;
        let p = policies.get("gpu-workers").await?;
        assert!(annotation(&p, "nodemedic.io/reset-breaker-by").starts_with("dave at "));
        let list = p.status.map(|s| s.notifications).unwrap_or_default();
        assert!(list.iter().any(|n| n.ok && n.channel == "alertmanager" && n.key.contains("/BreakerReset/")), "{list:?}");
        assert_eq!(sink.message_count()?, 1, "the reset (info) is not mailed to a critical-only channel");
        Ok::<(), anyhow::Error>(())
    })
    .await
}
