//! Out-of-band power against real BMC peers (sushy-tools' Redfish emulator, OpenIPMI's ipmi_sim with
//! ipmitool; both installed by `scripts/bmc-peers/setup`): a power step succeeds only when the BMC
//! confirms the power state, and every way a BMC can fail names the BMC and what it said.

mod bmc_peers;

use bmc_peers::{Chassis, PASSWORD, Redfish, USER};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodemedic_controller::bmc::{
    BMC_ANNOTATION, BmcAddress, BmcTarget, Credentials, PowerAction, PowerConfig, PowerExecutor, SecretRef, run_power_action,
};
use nodemedic_controller::{Executor, StepRequest, install_crds, now};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::{RemediationStep, Time};
use nodemedic_k8s::{NodeRemediation, NodeRemediationSpec, field_managers};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

fn credentials(password: &str) -> Credentials {
    Credentials { username: USER.into(), password: password.into() }
}

fn secret_ref() -> SecretRef {
    SecretRef { namespace: "nodemedic".into(), name: "bmc-gpu-000".into() }
}

fn redfish_target(peer: &Redfish) -> BmcTarget {
    BmcTarget {
        address: BmcAddress::Redfish(peer.system_url()),
        credentials: secret_ref(),
        ca_bundle: Some(peer.ca_bundle()),
        insecure_skip_tls_verify: false,
    }
}

fn ipmi_target(port: u16) -> BmcTarget {
    BmcTarget {
        address: BmcAddress::Ipmi(format!("127.0.0.1:{port}")),
        credentials: secret_ref(),
        ca_bundle: None,
        insecure_skip_tls_verify: false,
    }
}

/// The emulator's PowerState, read by the test itself (not through the code under test).
async fn redfish_power_state(peer: &Redfish) -> anyhow::Result<String> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(peer.ca_bundle())?)?;
    let http = reqwest::Client::builder().add_root_certificate(ca).build()?;
    let system: serde_json::Value =
        http.get(peer.system_url()).basic_auth(USER, Some(PASSWORD)).send().await?.error_for_status()?.json().await?;
    Ok(system["PowerState"].as_str().unwrap_or_default().to_string())
}

fn ipmi_power_status(port: u16) -> anyhow::Result<String> {
    let out = std::process::Command::new("ipmitool")
        .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-P", PASSWORD, "chassis", "power", "status"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Redfish
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_redfish_power_off_succeeds_only_once_the_bmc_says_off() -> anyhow::Result<()> {
    let peer = bmc_peers::start_redfish()?;
    assert_eq!(redfish_power_state(&peer).await?, "On");
    let confirmed = run_power_action(&redfish_target(&peer), &credentials(PASSWORD), PowerAction::Off, LIMIT, POLL).await?;
    assert!(confirmed.contains(&peer.system_url()) && confirmed.contains("Off confirmed"), "{confirmed}");
    assert_eq!(redfish_power_state(&peer).await?, "Off", "the emulator's own state agrees");
    Ok(())
}

#[tokio::test]
async fn a_redfish_power_cycle_confirms_off_and_then_on() -> anyhow::Result<()> {
    let peer = bmc_peers::start_redfish()?;
    let confirmed = run_power_action(&redfish_target(&peer), &credentials(PASSWORD), PowerAction::Cycle, LIMIT, POLL).await?;
    assert!(confirmed.contains("power cycled, Off confirmed") && confirmed.contains("On after"), "{confirmed}");
    assert_eq!(redfish_power_state(&peer).await?, "On");
    Ok(())
}

#[tokio::test]
async fn a_redfish_bmc_that_refuses_the_credentials_fails_naming_the_bmc_and_leaves_the_power_on() -> anyhow::Result<()> {
    let peer = bmc_peers::start_redfish()?;
    let err = run_power_action(&redfish_target(&peer), &credentials("wrong"), PowerAction::Off, LIMIT, POLL).await.err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains(&peer.system_url()) && message.contains("refused the credentials") && message.contains("401"), "{message}");
    assert!(!message.contains("wrong"), "the password is never in the error: {message}");
    assert_eq!(redfish_power_state(&peer).await?, "On");
    Ok(())
}

#[tokio::test]
async fn a_redfish_certificate_from_an_untrusted_ca_fails_unless_verification_is_disabled_for_that_bmc() -> anyhow::Result<()> {
    let peer = bmc_peers::start_redfish()?;
    let untrusted = BmcTarget { ca_bundle: None, ..redfish_target(&peer) };
    let err = run_power_action(&untrusted, &credentials(PASSWORD), PowerAction::Off, LIMIT, POLL).await.err();
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains(&peer.system_url()) && message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(redfish_power_state(&peer).await?, "On", "nothing was sent over an unverified connection");

    let insecure = BmcTarget { insecure_skip_tls_verify: true, ..untrusted };
    run_power_action(&insecure, &credentials(PASSWORD), PowerAction::Off, LIMIT, POLL).await?;
    assert_eq!(redfish_power_state(&peer).await?, "Off");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_bmc_fails_naming_it() -> anyhow::Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let redfish = BmcTarget {
        address: BmcAddress::Redfish(format!("https://127.0.0.1:{closed}/redfish/v1/Systems/1")),
        credentials: secret_ref(),
        ca_bundle: None,
        insecure_skip_tls_verify: false,
    };
    let message = run_power_action(&redfish, &credentials(PASSWORD), PowerAction::Off, LIMIT, POLL)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains(&format!("127.0.0.1:{closed}")) && message.contains("ForceOff"), "{message}");

    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let message = run_power_action(&ipmi_target(udp), &credentials(PASSWORD), PowerAction::Off, LIMIT, POLL)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains(&format!("ipmi 127.0.0.1:{udp}")) && message.contains("ipmitool chassis power off failed"), "{message}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// IPMI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_ipmi_power_off_and_a_power_cycle_are_confirmed_by_chassis_status() -> anyhow::Result<()> {
    let peer = bmc_peers::start_ipmi(Chassis::Obeys)?;
    let target = ipmi_target(peer.port);
    let off = run_power_action(&target, &credentials(PASSWORD), PowerAction::Off, LIMIT, POLL).await?;
    assert!(off.contains("Off confirmed"), "{off}");
    assert_eq!(ipmi_power_status(peer.port)?, "Chassis Power is off");
    let cycled = run_power_action(&target, &credentials(PASSWORD), PowerAction::Cycle, LIMIT, POLL).await?;
    assert!(cycled.contains("power cycled"), "{cycled}");
    assert_eq!(ipmi_power_status(peer.port)?, "Chassis Power is on");
    Ok(())
}

#[tokio::test]
async fn an_ipmi_bmc_that_refuses_the_credentials_fails_naming_it() -> anyhow::Result<()> {
    let peer = bmc_peers::start_ipmi(Chassis::Obeys)?;
    let message = run_power_action(&ipmi_target(peer.port), &credentials("wrong"), PowerAction::Off, LIMIT, POLL)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains(&format!("ipmi 127.0.0.1:{}", peer.port)) && message.contains("Unable to establish"), "{message}");
    assert_eq!(ipmi_power_status(peer.port)?, "Chassis Power is on");
    Ok(())
}

#[tokio::test]
async fn a_bmc_that_accepts_the_command_but_never_confirms_fails_at_the_deadline() -> anyhow::Result<()> {
    let peer = bmc_peers::start_ipmi(Chassis::Stuck)?;
    let message = run_power_action(&ipmi_target(peer.port), &credentials(PASSWORD), PowerAction::Off, Duration::from_secs(3), POLL)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("did not confirm power Off before the deadline; it still says On"), "{message}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The executor against the API server
// ---------------------------------------------------------------------------------------------

async fn bmc_secret(cp: &ControlPlane, password: &str) -> anyhow::Result<()> {
    let ns: Api<Namespace> = Api::all(cp.client());
    ns.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "nodemedic"}}))?).await?;
    let secrets: Api<Secret> = Api::namespaced(cp.client(), "nodemedic");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bmc-gpu-000"}, "stringData": {"username": USER, "password": password}}))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

async fn open_record(cp: &ControlPlane, node: &str, attempt: u32) -> anyhow::Result<()> {
    let api: Api<NodeRemediation> = Api::all(cp.client());
    api.create(
        &PostParams::default(),
        &NodeRemediation::new(node, NodeRemediationSpec { node: node.into(), policy: "gpu-workers".into() }),
    )
    .await?;
    let status = serde_json::json!({"apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation", "metadata": {"name": node},
        "status": {"node": node, "phase": "Remediating", "attempt": attempt}});
    api.patch_status(node, &PatchParams::apply(field_managers::CONTROLLER).force(), &Patch::Apply(&status)).await?;
    Ok(())
}

fn power_request(step: RemediationStep, attempt: u32) -> StepRequest {
    StepRequest {
        node: "gpu-000".into(),
        step,
        attempt,
        deadline: Some(Time(now().as_millis() + 60_000)),
        reason: "node unreachable".into(),
        template: None,
    }
}

async fn reported(cp: &ControlPlane, attempt: u32) -> anyhow::Result<nodemedic_core::observe::StepReport> {
    let api: Api<NodeRemediation> = Api::all(cp.client());
    Ok(wait_for(LIMIT, "the power step's report", || async {
        api.get("gpu-000").await.ok()?.status?.step_report.filter(|r| r.attempt == attempt)
    })
    .await?)
}

#[tokio::test]
async fn the_power_executor_finds_the_bmc_by_annotation_reads_the_secret_and_reports_the_confirmed_power_off() -> anyhow::Result<()> {
    let peer = bmc_peers::start_redfish()?;
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-000", "pool-a", 8)).await?;
        bmc_secret(cp, PASSWORD).await?;
        let annotation = serde_json::to_string(&redfish_target(&peer))?;
        let patch = serde_json::json!({"metadata": {"annotations": {BMC_ANNOTATION: annotation}}});
        Api::<Node>::all(cp.client()).patch("gpu-000", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        open_record(cp, "gpu-000", 1).await?;

        let executor = PowerExecutor::new(
            cp.client(),
            PowerConfig { poll_interval: nodemedic_core::Duration::from_millis(250), ..PowerConfig::default() },
        );
        let request = power_request(RemediationStep::PowerOff, 1);
        executor.execute(&request).await.map_err(anyhow::Error::msg)?;
        executor.execute(&request).await.map_err(anyhow::Error::msg)?;
        let report = reported(cp, 1).await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{report:?}");
        assert!(report.message.contains("Off confirmed") && !report.message.contains(PASSWORD), "{}", report.message);
        assert_eq!(executor.actions_started(), 1, "the same attempt powers off once");
        assert_eq!(redfish_power_state(&peer).await?, "Off");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_power_step_whose_bmc_refuses_the_secrets_credentials_is_reported_failed_naming_the_bmc() -> anyhow::Result<()> {
    let peer = bmc_peers::start_ipmi(Chassis::Obeys)?;
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-000", "pool-a", 8)).await?;
        bmc_secret(cp, "not-the-password").await?;
        open_record(cp, "gpu-000", 2).await?;
        let config = PowerConfig { nodes: [("gpu-000".to_string(), ipmi_target(peer.port))].into(), ..PowerConfig::default() };
        let executor = PowerExecutor::new(cp.client(), config);
        executor.execute(&power_request(RemediationStep::PowerCycle, 2)).await.map_err(anyhow::Error::msg)?;
        let report = reported(cp, 2).await?;
        assert_eq!(report.outcome, ReportedOutcome::Failed, "{report:?}");
        assert!(report.message.contains(&format!("BMC ipmi 127.0.0.1:{}", peer.port)), "{}", report.message);
        assert!(!report.message.contains("not-the-password"), "{}", report.message);
        assert_eq!(ipmi_power_status(peer.port)?, "Chassis Power is on", "the node was not fenced");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_node_without_a_bmc_is_reported_failed_naming_the_annotation() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-000", "pool-a", 8)).await?;
        open_record(cp, "gpu-000", 1).await?;
        let executor = PowerExecutor::new(cp.client(), PowerConfig::default());
        executor.execute(&power_request(RemediationStep::PowerOff, 1)).await.map_err(anyhow::Error::msg)?;
        let report = reported(cp, 1).await?;
        assert_eq!(report.outcome, ReportedOutcome::Failed, "{report:?}");
        assert!(report.message.contains("gpu-000 has no BMC") && report.message.contains(BMC_ANNOTATION), "{}", report.message);
        Ok(())
    })
    .await
}

const POWER_OFF_POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: powerOff, timeout: 2m}
- {step: manual}
monitorOnly: false
"#;

#[tokio::test(flavor = "multi_thread")]
async fn through_the_controller_a_confirmed_power_off_completes_the_step_and_a_refused_one_escalates_instead() -> anyhow::Result<()> {
    use nodemedic_controller::Reconciler;
    use nodemedic_controller::executors::{ExecutorsConfig, StepRouter};
    use nodemedic_core::Policy;
    use nodemedic_core::record::{Phase, StepOutcome};
    use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec};

    let redfish = bmc_peers::start_redfish()?;
    let ipmi = bmc_peers::start_ipmi(Chassis::Obeys)?;
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 2).await?;
        bmc_secret(cp, PASSWORD).await?;
        let wrong: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bmc-gpu-001"}, "stringData": {"username": USER, "password": "not-the-password"}}))?;
        Api::<Secret>::namespaced(cp.client(), "nodemedic").create(&PostParams::default(), &wrong).await?;
        let refused =
            BmcTarget { credentials: SecretRef { namespace: "nodemedic".into(), name: "bmc-gpu-001".into() }, ..ipmi_target(ipmi.port) };
        let power = PowerConfig {
            nodes: [("gpu-000".to_string(), redfish_target(&redfish)), ("gpu-001".to_string(), refused)].into(),
            poll_interval: nodemedic_core::Duration::from_millis(250),
            ..PowerConfig::default()
        };
        let router = StepRouter::from_config(cp.client(), &ExecutorsConfig { power, ..ExecutorsConfig::default() })?;
        let policy = Policy::from_yaml(POWER_OFF_POLICY)?;
        Api::<NodeHealthPolicy>::all(cp.client())
            .create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy }))
            .await?;
        for node in ["gpu-000", "gpu-001"] {
            cp.set_node_condition(node, "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        }
        let controller = Reconciler::new(cp.client(), &router);
        let remediations: Api<NodeRemediation> = Api::all(cp.client());
        let history = |node: &'static str| {
            let remediations = remediations.clone();
            async move { remediations.get(node).await.ok()?.status.map(|s| s.record) }
        };
        let records = wait_for(LIMIT, "both power steps to end", || async {
            controller.reconcile("gpu-workers", now()).await.ok()?;
            let (a, b) = (history("gpu-000").await?, history("gpu-001").await?);
            (!a.history.is_empty() && !b.history.is_empty()).then_some((a, b))
        })
        .await?;
        let (fenced, refused) = records;
        let first = |r: &nodemedic_core::record::NodeRecord| r.history.first().map(|h| (h.step, h.outcome, h.reason.clone()));
        let (step, outcome, _) = first(&fenced).unwrap_or((RemediationStep::Manual, StepOutcome::Failed, String::new()));
        assert_eq!((step, outcome), (RemediationStep::PowerOff, StepOutcome::Completed), "{fenced:?}");
        assert_eq!(redfish_power_state(&redfish).await?, "Off");
        let (step, outcome, reason) = first(&refused).unwrap_or((RemediationStep::Manual, StepOutcome::Completed, String::new()));
        assert_eq!((step, outcome), (RemediationStep::PowerOff, StepOutcome::Failed), "{refused:?}");
        assert!(reason.contains(&format!("BMC ipmi 127.0.0.1:{}", ipmi.port)), "{reason}");
        assert_eq!(refused.phase, Phase::Manual, "a node whose power-off was not confirmed goes to a person, not on as fenced");
        assert_eq!(ipmi_power_status(ipmi.port)?, "Chassis Power is on");
        Ok(())
    })
    .await
}
