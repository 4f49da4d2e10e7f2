//! The controller as it runs in a cluster: `nodemedic controller` processes (two replicas) against
//! a real kube-apiserver with kwok nodes. An in-test "agent" plays the node side (reboots through
//! the test environment, reports the attempt).

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nodemedic_controller::install_crds;
use nodemedic_core::observe::{ReportedOutcome, StepReport};
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_core::{Policy, RemediationStep, Time};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation, field_managers, report_step};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reboot, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: reimage, timeout: 30m}
- {step: manual}
monitorOnly: false
"#;

/// One controller replica as a child process, killed when dropped.
struct Replica {
    name: String,
    child: Child,
    port: u16,
}

impl Replica {
    fn start(cp: &ControlPlane, name: &str) -> anyhow::Result<Replica> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("nodemedic-e2e-{}-{name}.log", std::process::id())))?;
        let child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(["controller", "--identity", name, "--lease-duration", "6", "--listen", &format!("127.0.0.1:{port}"), "--resync", "2"])
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Replica { name: name.to_string(), child, port })
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics").unwrap_or_default()
    }

    fn is_leader(&self) -> bool {
        self.metrics().lines().any(|l| l.trim() == "nodemedic_leader 1")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        Command::new("kill").args([signal, &self.child.id().to_string()]).status()?;
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(std::env::temp_dir().join(format!("nodemedic-e2e-{}-{}.log", std::process::id(), self.name)))
            .unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

fn taints(n: &Node) -> Vec<String> {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default()
}

async fn holder(cp: &ControlPlane) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(cp.client(), "default");
    leases.get("nodemedic-controller").await.ok()?.spec?.holder_identity
}

async fn setup(cp: &ControlPlane, nodes: usize, policy: &str) -> anyhow::Result<()> {
    install_crds(&cp.client()).await?;
    cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), nodes).await?;
    Api::<NodeHealthPolicy>::all(cp.client())
        .create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(policy)? }))
        .await?;
    Ok(())
}

async fn record(cp: &ControlPlane, node: &str) -> Option<nodemedic_core::NodeRecord> {
    Api::<NodeRemediation>::all(cp.client()).get(node).await.ok()?.status.map(|s| s.record)
}

/// The agent's half of a reboot: new boot ID, report the attempt, the GPU check passes.
async fn agent_reboots(cp: &ControlPlane, node: &str, attempt: u32) -> anyhow::Result<()> {
    cp.simulate_reboot(node).await?;
    let at = Time(jiff::Timestamp::now().as_millisecond());
    let report = StepReport { attempt, outcome: ReportedOutcome::Succeeded, at, message: "rebooted".into() };
    report_step(&cp.client(), field_managers::AGENT, node, &report).await?;
    cp.set_node_condition(node, "GPUProblem", "False", "GPUsHealthy", "8 of 8 GPUs healthy").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_sigterm_hands_over_at_once() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 3, POLICY).await?;
        let a = Replica::start(cp, "replica-a")?;
        let b = Replica::start(cp, "replica-b")?;
        let first = wait_for(Duration::from_secs(30), "a leader", || async { holder(cp).await }).await?;
        let (leader, standby) = if first == "replica-a" { (&a, &b) } else { (&b, &a) };
        wait_for(Duration::from_secs(15), "the leader to say so in its metrics", || async { leader.is_leader().then_some(()) }).await?;
        assert!(!standby.is_leader(), "the standby must not claim to lead");
        assert!(http_get(standby.port, "/healthz")?.contains("ok"));

        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        let nodes: Api<Node> = Api::all(cp.client());
        wait_for(Duration::from_secs(30), "the reboot taint", || async {
            taints(&nodes.get("gpu-001").await.ok()?).contains(&"nodemedic.io/repair-reboot".to_string()).then_some(())
        })
        .await?;

        // SIGTERM: the leader gives the lease back; the standby leads well before the 6 s lease expires.
        let t0 = std::time::Instant::now();
        leader.signal("-TERM")?;
        let next =
            wait_for(Duration::from_secs(20), "the standby to take over", || async { holder(cp).await.filter(|h| *h == standby.name) })
                .await?;
        assert_eq!(next, standby.name);
        assert!(t0.elapsed() < Duration::from_secs(6), "handed over in {:?}, not by expiry", t0.elapsed());
        assert!(leader.log().contains("releasing the leader lease"), "{}", leader.log());

        // The new leader carries on from the record: the node recovers without a second reboot.
        agent_reboots(cp, "gpu-001", 1).await?;
        let rec = wait_for(Duration::from_secs(30), "the node to be cleared", || async {
            record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Healthy)
        })
        .await?;
        assert_eq!(rec.attempt, 1, "exactly one reboot: {rec:?}");
        assert_eq!(rec.history.last().map(|h| (h.step, h.outcome)), Some((RemediationStep::Reboot, StepOutcome::Recovered)));
        assert!(!taints(&nodes.get("gpu-001").await?).iter().any(|t| t.starts_with("nodemedic.io/")));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_mid_remediation_is_replaced_and_the_reboot_is_not_repeated() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 3, POLICY).await?;
        let a = Replica::start(cp, "replica-a")?;
        let first = wait_for(Duration::from_secs(30), "a leader", || async { holder(cp).await }).await?;
        assert_eq!(first, "replica-a");
        let b = Replica::start(cp, "replica-b")?;
        cp.set_node_condition("gpu-002", "GPUProblem", "True", "XidCritical", "Xid 48: double-bit ECC").await?;
        let rec = wait_for(Duration::from_secs(30), "the reboot to be recorded", || async {
            record(cp, "gpu-002").await.filter(|r| r.phase == Phase::Remediating)
        })
        .await?;
        assert_eq!(rec.attempt, 1);

        // SIGKILL: no release. The standby waits out the lease, then leads.
        a.signal("-KILL")?;
        wait_for(Duration::from_secs(40), "replica-b to take over", || async { holder(cp).await.filter(|h| h == "replica-b") }).await?;
        wait_for(Duration::from_secs(15), "replica-b to reconcile as leader", || async { b.is_leader().then_some(()) }).await?;
        // Several passes of the new leader over the same record.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rec = record(cp, "gpu-002").await.ok_or_else(|| anyhow::anyhow!("record gone"))?;
        assert_eq!((rec.phase, rec.attempt), (Phase::Remediating, 1), "the reboot is not started again: {rec:?}");
        assert!(rec.history.is_empty(), "{rec:?}");

        agent_reboots(cp, "gpu-002", 1).await?;
        let rec = wait_for(Duration::from_secs(30), "the node to be cleared", || async {
            record(cp, "gpu-002").await.filter(|r| r.phase == Phase::Healthy)
        })
        .await?;
        assert_eq!(rec.attempt, 1);
        // The transitions are Kubernetes Events on the Node.
        let events: Api<K8sEvent> = Api::namespaced(cp.client(), "default");
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("gpu-002"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Node"))
            .filter_map(|e| e.reason)
            .collect();
        for want in ["RemediationStarted", "StepStarted", "Recovered"] {
            assert!(reasons.iter().any(|r| r == want), "{want} in {reasons:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_only_changes_nothing_on_the_nodes_but_records_what_it_would_do() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 2, &POLICY.replace("monitorOnly: false", "")).await?;
        let a = Replica::start(cp, "replica-a")?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        let rec = wait_for(Duration::from_secs(30), "the would-be reboot to be recorded", || async {
            record(cp, "gpu-000").await.filter(|r| r.active.is_some())
        })
        .await?;
        assert!(rec.active.as_ref().is_some_and(|a| !a.executed && a.step == RemediationStep::Reboot), "{rec:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let node = Api::<Node>::all(cp.client()).get("gpu-000").await?;
        assert!(!taints(&node).iter().any(|t| t.starts_with("nodemedic.io/")), "monitor-only taints nothing");
        assert!(node.spec.as_ref().and_then(|s| s.unschedulable) != Some(true));
        wait_for(Duration::from_secs(10), "the would-start counter", || async {
            a.metrics()
                .contains(r#"nodemedic_remediation_actions_total{policy="gpu-workers",step="reboot",outcome="would_start"} 1"#)
                .then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", a.metrics()))?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_request_holds_new_remediations_and_a_deleted_node_leaves_no_record_or_series() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 3, POLICY).await?;
        let a = Replica::start(cp, "replica-a")?;
        cp.set_node_condition("gpu-000", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        wait_for(Duration::from_secs(30), "gpu-000 in remediation", || async {
            record(cp, "gpu-000").await.filter(|r| r.phase == Phase::Remediating)
        })
        .await?;
        wait_for(Duration::from_secs(10), "the per-node series", || async {
            a.metrics().contains(r#"nodemedic_node_unhealthy_seconds{policy="gpu-workers",node="gpu-000"}"#).then_some(())
        })
        .await?;

        // A pause request: a second faulty node is held, named in the metrics and the policy status.
        let policies: Api<NodeHealthPolicy> = Api::all(cp.client());
        policies
            .patch(
                "gpu-workers",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"pauseRequests": ["ops: rack maintenance"]}})),
            )
            .await?;
        wait_for(Duration::from_secs(20), "Paused=True", || async {
            let st = policies.get("gpu-workers").await.ok()?.status?;
            st.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True" && c.message.contains("rack maintenance")).then_some(())
        })
        .await?;
        cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
        wait_for(Duration::from_secs(20), "the pause hold in the metrics", || async {
            a.metrics().contains(r#"nodemedic_gate_holds{policy="gpu-workers",gate="paused"} 1"#).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", a.metrics()))?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(record(cp, "gpu-001").await.is_none_or(|r| r.active.is_none()), "nothing starts while paused");
        let n1 = Api::<Node>::all(cp.client()).get("gpu-001").await?;
        assert!(!taints(&n1).iter().any(|t| t.starts_with("nodemedic.io/")));

        // The node in remediation is deleted (replaced by the cloud): its record and series go.
        Api::<Node>::all(cp.client()).delete("gpu-000", &Default::default()).await?;
        wait_for(Duration::from_secs(30), "the record to be deleted", || async {
            match Api::<NodeRemediation>::all(cp.client()).get("gpu-000").await {
                Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
                _ => None,
            }
        })
        .await?;
        wait_for(Duration::from_secs(15), "the node's series to be dropped", || async {
            (!a.metrics().contains(r#"node="gpu-000""#)).then_some(())
        })
        .await?;

        // Unpause: the held node is taken on.
        policies.patch("gpu-workers", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"pauseRequests": []}}))).await?;
        wait_for(Duration::from_secs(30), "gpu-001 to be remediated after unpause", || async {
            record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Remediating)
        })
        .await?;
        Ok(())
    })
    .await
}
