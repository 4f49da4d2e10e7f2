//! The controller as it runs in a cluster: `nodemedic controller` processes (two replicas) against
//! a real kube-apiserver with kwok nodes. An in-test "agent" plays the node side (reboots through
//! the test environment, reports the attempt).

mod common;

use common::{Replica, agent_reboots, holder, http_get, record, setup, taints};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams};
use nodemedic_core::RemediationStep;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation};
use nodemedic_testenv::{ControlPlane, Options, wait_for};
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
        // Taints follow the record (records are written first, then the taints).
        wait_for(Duration::from_secs(10), "the repair taints to be lifted", || async {
            (!taints(&nodes.get("gpu-001").await.ok()?).iter().any(|t| t.starts_with("nodemedic.io/"))).then_some(())
        })
        .await?;
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
        // The transitions are Kubernetes Events on the Node (published right after the writes), one
        // per decision: the start names the step it started.
        let events: Api<K8sEvent> = Api::namespaced(cp.client(), "default");
        let wanted = ["RemediationStarted", "Recovered"];
        let seen = wait_for(Duration::from_secs(20), "the Events on gpu-002", || async {
            let seen: Vec<(String, String)> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("gpu-002"))
                .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Node"))
                .filter_map(|e| Some((e.reason?, e.note.unwrap_or_default())))
                .collect();
            wanted.iter().all(|w| seen.iter().any(|(r, _)| r == w)).then_some(seen)
        })
        .await?;
        let started = seen.iter().find(|(r, _)| r == "RemediationStarted").map(|(_, note)| note.as_str()).unwrap_or_default();
        assert!(started.contains("step reboot"), "{started}");
        assert!(!seen.iter().any(|(r, _)| r == "StepStarted"), "the step's start is told in the same Event: {seen:?}");
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
        // Issue 12 §3: what it would have done, with which executor, per node and on the policy.
        let would = wait_for(Duration::from_secs(10), "the would-run log line", || async {
            a.log()
                .lines()
                .find(|l| l.contains("monitor-only: would run the step with the node agent") && l.contains("gpu-000"))
                .map(str::to_string)
        })
        .await?;
        assert!(would.contains("reboot"), "{would}");
        let policy = Api::<NodeHealthPolicy>::all(cp.client()).get("gpu-workers").await?;
        let executors = policy.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Executors");
        assert!(
            executors.is_some_and(
                |c| c.reason == "MonitorOnly" && c.message.contains("would go to reboot: the node agent; reimage: the node agent")
            ),
            "the policy names each step's executor"
        );
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
