//! Issue 11 §3 on a real control plane: kube-controller-manager (node lifecycle, taint eviction, pod
//! GC, attach-detach, StatefulSet, PV binder), kube-scheduler and kwok, with the controller's power
//! steps going to real BMC peers (sushy-tools, ipmi_sim). The test plays the CSI external-attacher:
//! it marks the VolumeAttachments the attach-detach controller creates as attached, and a detach is
//! the controller deleting one.
//!
//! The scenario is shared with the benchmark (`scripts/fencing-bench`, the ignored test
//! `fencing_bench`), which times node death → StatefulSet pod Running elsewhere with nodemedic and
//! without it.

#[allow(dead_code)]
mod bmc_peers;

use bmc_peers::{Chassis, PASSWORD, Peer, Redfish, USER};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nodemedic_controller::bmc::{BmcAddress, BmcTarget, PowerConfig, SecretRef};
use nodemedic_controller::executors::{ExecutorsConfig, StepRouter};
use nodemedic_controller::run::{RunConfig, run};
use nodemedic_controller::{Metrics, install_crds};
use nodemedic_core::Policy;
use nodemedic_core::fencing::{OUT_OF_SERVICE_TAINT, OUT_OF_SERVICE_VALUE};
use nodemedic_core::record::NodeRecord;
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRIVER: &str = "fake.csi.nodemedic.io";
/// The node whose BMC confirms power Off, and the one whose BMC refuses the credentials.
const FENCED: &str = "gpu-000";
const REFUSED: &str = "gpu-001";

fn policy(not_ready_for: &str) -> String {
    format!(
        r#"
rules:
- {{name: ready-false, condition: {{type: Ready, status: "False"}}, duration: {not_ready_for}}}
- {{name: ready-unknown, condition: {{type: Ready, status: Unknown}}, duration: {not_ready_for}}}
ladder:
- {{step: powerOff, timeout: 2m}}
- {{step: manual}}
monitorOnly: false
"#
    )
}

async fn create<K>(api: &Api<K>, json: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    Ok(api.create(&PostParams::default(), &serde_json::from_value(json)?).await?)
}

/// Five kwok nodes whose volumes kube-controller-manager attaches (as a kubelet would announce), a
/// namespace `db`, and the BMC Secrets (the right password for gpu-000, a wrong one for gpu-001).
async fn cluster(cp: &ControlPlane) -> anyhow::Result<()> {
    install_crds(&cp.client()).await?;
    cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 5).await?;
    let nodes: Api<Node> = Api::all(cp.client());
    for i in 0..5 {
        let name = format!("gpu-{i:03}");
        let patch = serde_json::json!({"metadata": {"annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}}});
        nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        // Ready, and the node lifecycle controller's not-ready taint gone, so the scheduler may use it.
        wait_for(Duration::from_secs(60), "kwok to make the nodes Ready and schedulable", || async {
            let n = nodes.get(&name).await.ok()?;
            let untainted = n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty());
            (ready(&n).as_deref() == Some("True") && untainted).then_some(())
        })
        .await?;
    }
    let namespaces: Api<Namespace> = Api::all(cp.client());
    for ns in ["db", "nodemedic"] {
        create(&namespaces, serde_json::json!({"metadata": {"name": ns}})).await?;
    }
    let sas: Api<ServiceAccount> = Api::namespaced(cp.client(), "db");
    wait_for(Duration::from_secs(60), "the default service account", || async { sas.get_opt("default").await.ok().flatten() }).await?;
    let secrets: Api<Secret> = Api::namespaced(cp.client(), "nodemedic");
    for (name, password) in [("bmc-gpu-000", PASSWORD), ("bmc-gpu-001", "not-the-password")] {
        create(&secrets, serde_json::json!({"metadata": {"name": name}, "stringData": {"username": USER, "password": password}})).await?;
    }
    Ok(())
}

fn ready(n: &Node) -> Option<String> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

/// A StatefulSet `name` of one replica with a ReadWriteOnce volume (a statically provisioned CSI
/// PersistentVolume bound to its claim), preferring to run on `node`.
async fn stateful_set(cp: &ControlPlane, name: &str, node: &str) -> anyhow::Result<()> {
    let classes: Api<StorageClass> = Api::all(cp.client());
    if classes.get_opt("manual").await?.is_none() {
        create(
            &classes,
            serde_json::json!({"metadata": {"name": "manual"}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}),
        )
        .await?;
    }
    let claim = format!("data-{name}-0");
    create(
        &Api::<PersistentVolume>::all(cp.client()),
        serde_json::json!({
            "metadata": {"name": format!("pv-{name}")},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                     "persistentVolumeReclaimPolicy": "Retain",
                     "claimRef": {"namespace": "db", "name": claim},
                     "csi": {"driver": DRIVER, "volumeHandle": format!("vol-{name}")}},
        }),
    )
    .await?;
    create(
        &Api::<StatefulSet>::namespaced(cp.client(), "db"),
        serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [{"name": "db", "image": "postgres", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 100, "preference": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}}]}},
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "resources": {"requests": {"storage": "1Gi"}}}}],
            },
        }),
    )
    .await?;
    Ok(())
}

/// Plays the CSI external-attacher until dropped: every VolumeAttachment the attach-detach
/// controller creates is marked attached (it has no finalizer, so a detach deletes it at once).
fn external_attacher(client: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<VolumeAttachment> = Api::all(client);
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                for va in list.items.iter().filter(|va| !va.status.as_ref().is_some_and(|s| s.attached)) {
                    let patch = serde_json::json!({"status": {"attached": true}});
                    let _ = api.patch_status(&va.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// The node the pod runs on, once it is Running and not being deleted.
async fn running_on(pods: &Api<Pod>, name: &str) -> Option<String> {
    let p = pods.get_opt(name).await.ok()??;
    let running = p.status.as_ref()?.phase.as_deref() == Some("Running") && p.metadata.deletion_timestamp.is_none();
    running.then(|| p.spec?.node_name).flatten()
}

/// Whether the attach-detach controller has `pv` attached to `node` (a VolumeAttachment exists).
async fn attachment(client: &Client, pv: &str, node: &str) -> anyhow::Result<bool> {
    let list = Api::<VolumeAttachment>::all(client.clone()).list(&ListParams::default()).await?;
    Ok(list.items.iter().any(|va| va.spec.node_name == node && va.spec.source.persistent_volume_name.as_deref() == Some(pv)))
}

fn has_out_of_service(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| {
        t.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT && t.effect == "NoExecute" && t.value.as_deref() == Some(OUT_OF_SERVICE_VALUE))
    })
}

/// The controller (one replica, in this process) with the power executor: gpu-000's Redfish BMC
/// confirms, gpu-001's IPMI BMC refuses the credentials in its Secret.
fn start_controller(
    cp: &ControlPlane,
    redfish: &Redfish,
    ipmi: &Peer,
) -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
    let target = |address, secret: &str, ca| BmcTarget {
        address,
        credentials: SecretRef { namespace: "nodemedic".into(), name: secret.into() },
        ca_bundle: ca,
        insecure_skip_tls_verify: false,
    };
    let power = PowerConfig {
        nodes: [
            (FENCED.to_string(), target(BmcAddress::Redfish(redfish.system_url()), "bmc-gpu-000", Some(redfish.ca_bundle()))),
            (REFUSED.to_string(), target(BmcAddress::Ipmi(format!("127.0.0.1:{}", ipmi.port)), "bmc-gpu-001", None)),
        ]
        .into(),
        poll_interval: nodemedic_core::Duration::from_millis(250),
        ..PowerConfig::default()
    };
    let router = StepRouter::from_config(cp.client(), &ExecutorsConfig { power, ..ExecutorsConfig::default() })?;
    let mut config = RunConfig::new("replica-a");
    config.resync = Duration::from_secs(2);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = cp.client();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = run(client, config, Arc::new(router), Arc::new(Metrics::new()), ready, shutdown).await {
            eprintln!("controller ended: {e}");
        }
    });
    Ok((stop, task))
}

async fn create_policy(cp: &ControlPlane, not_ready_for: &str) -> anyhow::Result<()> {
    let policy = Policy::from_yaml(&policy(not_ready_for))?;
    Api::<NodeHealthPolicy>::all(cp.client())
        .create(&PostParams::default(), &NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy }))
        .await?;
    Ok(())
}

async fn record(cp: &ControlPlane, node: &str) -> Option<NodeRecord> {
    Api::<NodeRemediation>::all(cp.client()).get_opt(node).await.ok()??.status.map(|s| s.record)
}

/// Every Event note about `node` (the controller publishes one Event per node and decision).
async fn event_notes(cp: &ControlPlane, node: &str) -> anyhow::Result<Vec<String>> {
    let events = Api::<Event>::all(cp.client()).list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node))
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_pod_on_a_node_whose_power_off_the_bmc_confirmed_runs_elsewhere_and_its_volume_is_detached() -> anyhow::Result<()> {
    let redfish = bmc_peers::start_redfish()?;
    let ipmi = bmc_peers::start_ipmi(Chassis::Obeys)?;
    let cp = ControlPlane::start(Options { node_monitor_grace_period: Duration::from_secs(10), ..Options::full() }).await?;
    cp.run(|cp| async move {
        cluster(cp).await?;
        stateful_set(cp, "db-a", FENCED).await?;
        stateful_set(cp, "db-b", REFUSED).await?;
        let attacher = external_attacher(cp.client());
        let pods: Api<Pod> = Api::namespaced(cp.client(), "db");
        let nodes: Api<Node> = Api::all(cp.client());
        let limit = Duration::from_secs(120);
        for (pod, node) in [("db-a-0", FENCED), ("db-b-0", REFUSED)] {
            let placed = wait_for(limit, "the StatefulSet pods to run", || async { running_on(&pods, pod).await }).await?;
            assert_eq!(placed, node, "{pod} prefers {node}");
        }
        wait_for(limit, "db-a's volume to be attached to gpu-000", || async {
            attachment(&cp.client(), "pv-db-a", FENCED).await.ok()?.then_some(())
        })
        .await?;
        create_policy(cp, "5s").await?;
        let (stop, controller) = start_controller(cp, &redfish, &ipmi)?;

        // Both kubelets stop. Kubernetes marks the nodes Unknown; nodemedic powers them off.
        cp.stop_heartbeat(FENCED).await?;
        cp.stop_heartbeat(REFUSED).await?;
        let moved = wait_for(Duration::from_secs(240), "db-a-0 to run on another node", || async {
            running_on(&pods, "db-a-0").await.filter(|n| n != FENCED)
        })
        .await?;
        assert_ne!(moved, REFUSED);
        wait_for(limit, "db-a's VolumeAttachment on gpu-000 to be gone", || async {
            (!attachment(&cp.client(), "pv-db-a", FENCED).await.ok()?).then_some(())
        })
        .await?;
        wait_for(limit, "db-a's volume to be attached where the pod runs", || async {
            attachment(&cp.client(), "pv-db-a", &moved).await.ok()?.then_some(())
        })
        .await?;
        assert!(has_out_of_service(&nodes.get(FENCED).await?), "gpu-000 carries {OUT_OF_SERVICE_TAINT}={OUT_OF_SERVICE_VALUE}:NoExecute");
        let fenced = record(cp, FENCED)
            .await
            .and_then(|r| r.out_of_service)
            .ok_or_else(|| anyhow::anyhow!("no outOfService on gpu-000's record"))?;
        assert!(fenced.reason.contains("BMC confirmed power Off") && fenced.removed_at.is_none(), "{fenced:?}");
        let notes = event_notes(cp, FENCED).await?;
        assert!(notes.iter().any(|n| n.contains("fencing confirmed") && n.contains(OUT_OF_SERVICE_TAINT)), "{notes:#?}");

        // The refused node: its power-off failed, it went to a person, and it was never marked.
        let refused =
            wait_for(limit, "gpu-001's power-off to fail", || async { record(cp, REFUSED).await.filter(|r| !r.history.is_empty()) })
                .await?;
        assert!(refused.out_of_service.is_none(), "{refused:?}");
        assert!(!has_out_of_service(&nodes.get(REFUSED).await?), "a node the BMC did not confirm off is never marked out of service");
        assert_eq!(pods.get("db-b-0").await?.spec.and_then(|s| s.node_name).as_deref(), Some(REFUSED), "db-b-0 was not freed");

        // gpu-000 is powered on again: its kubelet returns and, as a machine that was off does, it
        // boots with a new boot ID and turns Ready (kwok itself keeps a node's boot ID and its Ready
        // transition time). The taint comes off and the record says when and why.
        cp.resume_heartbeat(FENCED).await?;
        cp.simulate_reboot(FENCED).await?;
        wait_for(limit, "the out-of-service taint to come off gpu-000", || async {
            let lifted = !has_out_of_service(&nodes.get(FENCED).await.ok()?);
            let removed = record(cp, FENCED).await?.out_of_service?.removed_at.is_some();
            (lifted && removed).then_some(())
        })
        .await?;
        let notes = event_notes(cp, FENCED).await?;
        assert!(notes.iter().any(|n| n.contains(&format!("{OUT_OF_SERVICE_TAINT} removed"))), "{notes:#?}");
        assert!(!has_out_of_service(&nodes.get(REFUSED).await?));
        let _ = stop.send(());
        let _ = controller.await;
        attacher.abort();
        Ok(())
    })
    .await
}

/// `scripts/fencing-bench`: node death (its kubelet stops) → its StatefulSet pod Running on another
/// node, with nodemedic (a 60 s NotReady rule, then a Redfish power-off) and without it, on a node
/// lifecycle grace period of 40 s (Kubernetes' long-standing default). Prints the figures.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run by scripts/fencing-bench"]
async fn fencing_bench() -> anyhow::Result<()> {
    let wait_without = Duration::from_secs(std::env::var("FENCING_BENCH_WITHOUT_S").ok().and_then(|s| s.parse().ok()).unwrap_or(420));
    for with_nodemedic in [true, false] {
        let redfish = bmc_peers::start_redfish()?;
        let ipmi = bmc_peers::start_ipmi(Chassis::Obeys)?;
        let cp = ControlPlane::start(Options { node_monitor_grace_period: Duration::from_secs(40), ..Options::full() }).await?;
        let (redfish, ipmi) = (&redfish, &ipmi);
        cp.run(|cp| async move {
            cluster(cp).await?;
            stateful_set(cp, "db-a", FENCED).await?;
            let attacher = external_attacher(cp.client());
            let pods: Api<Pod> = Api::namespaced(cp.client(), "db");
            let placed = wait_for(Duration::from_secs(120), "db-a-0 to run", || async { running_on(&pods, "db-a-0").await }).await?;
            anyhow::ensure!(placed == FENCED, "db-a-0 runs on {placed}, not {FENCED}");
            let controller = if with_nodemedic {
                create_policy(cp, "60s").await?;
                Some(start_controller(cp, redfish, ipmi)?)
            } else {
                None
            };
            let started = Instant::now();
            let started_at = nodemedic_controller::now();
            cp.stop_heartbeat(FENCED).await?;
            let limit = if with_nodemedic { Duration::from_secs(480) } else { wait_without };
            let moved = wait_for(limit, "db-a-0 to run on another node", || async {
                running_on(&pods, "db-a-0").await.filter(|n| n != FENCED)
            })
            .await;
            let took = started.elapsed();
            let since = |t: nodemedic_core::Time| (t.0 - started_at.0) as f64 / 1000.0;
            let rec = record(cp, FENCED).await;
            let mut fenced_after = String::new();
            if let Some(h) = rec.as_ref().and_then(|r| r.history.first()) {
                fenced_after += &format!("; {} started at {:.1} s, ended at {:.1} s", h.step, since(h.started_at), since(h.ended_at));
            }
            if let Some(o) = rec.and_then(|r| r.out_of_service) {
                fenced_after += &format!("; out-of-service taint recorded at {:.1} s", since(o.added_at));
            }
            match moved {
                Ok(node) => println!(
                    "FENCING-BENCH with_nodemedic={with_nodemedic}: db-a-0 Running on {node} {:.1} s after the kubelet stopped{fenced_after}",
                    took.as_secs_f64()
                ),
                Err(_) => {
                    let state = pods.get_opt("db-a-0").await?.map(|p| (p.spec.and_then(|s| s.node_name), p.metadata.deletion_timestamp.is_some()));
                    println!(
                        "FENCING-BENCH with_nodemedic={with_nodemedic}: db-a-0 not Running elsewhere {:.1} s after the kubelet stopped (node, terminating) = {state:?}",
                        took.as_secs_f64()
                    )
                }
            }
            if let Some((stop, task)) = controller {
                let _ = stop.send(());
                let _ = task.await;
            }
            attacher.abort();
            Ok(())
        })
        .await?;
    }
    Ok(())
}
