//! The agent against a real control plane: a fake `nvidia-smi` on the agent's search path decides what the GPU
//! probe sees, the agent publishes `GPUProblem` on its own node, the controller (in-process, as in
//! `nodemedic-controller/tests/ladder.rs`) taints it for a reboot, and the agent reboots it once through a
//! test hook that gives the node a new boot ID.

mod common;

use common::{NoActions, agent, condition, while_running};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodemedic_agent::AgentConfig;
use nodemedic_agent::config::{NvidiaSmiFormat, NvidiaSmiProbe};
use nodemedic_agent::plugin::{Family, PluginSpec};
use nodemedic_agent::probe::{ProbeSchedule, TextDuration};
use nodemedic_agent::remediate::{AttemptLog, HostActions, HostFuture};
use nodemedic_controller::{AgentExecutor, Reconciler, install_crds, now};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_core::{Policy, RemediationStep};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};

const HEALTHY: &str = "nvidia-smi-csv/query-gpu-8xH100.csv.txt";
// Eight GPUs, as the kwok nodes' `nvidia.com/gpu.count` label says, one of them lost.
const GPU_LOST: &str = "handmade/nvidia-smi-csv/query_gpu_8x_one_requires_reset.csv.txt";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A node's disk and tools: a fake `nvidia-smi` printing whatever capture `show` last put in place, a network
/// plugin that always passes, and the agent's state file.
struct FakeHost {
    dir: tempfile::TempDir,
}

impl FakeHost {
    fn new(capture: &str) -> anyhow::Result<FakeHost> {
        let host = FakeHost { dir: tempfile::tempdir()? };
        host.show(capture)?;
        let smi = host.dir.path().join("nvidia-smi");
        std::fs::write(&smi, format!("#!/bin/sh\ncat '{}'\n", host.capture().display()))?;
        std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755))?;
        let ping = host.dir.path().join("check_fabric.sh");
        std::fs::write(&ping, "#!/bin/sh\necho 'fabric reachable'\nexit 0\n")?;
        std::fs::set_permissions(&ping, std::fs::Permissions::from_mode(0o755))?;
        Ok(host)
    }

    fn capture(&self) -> PathBuf {
        self.dir.path().join("current.csv")
    }

    /// What `nvidia-smi` prints from now on.
    fn show(&self, capture: &str) -> std::io::Result<()> {
        std::fs::copy(fixture(capture), self.capture()).map(|_| ())
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("var/lib/nodemedic/attempts.json")
    }

    /// The same agent as [`FakeHost::config`], as the YAML file the binary reads.
    fn config_file(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.path().display();
        let yaml = format!(
            "schedule: {{ interval: 700ms, timeout: 700ms, jitter: 100ms, failures_before_unhealthy: 2, passes_before_healthy: 2 }}\n\
             probes:\n  nvidia_smi: {{ path: {dir}/nvidia-smi, format: csv }}\n  \
             plugins:\n    - {{ name: fabric, path: {dir}/check_fabric.sh, family: network }}\n\
             remediation:\n  state_file: {}\n",
            self.state_file().display()
        );
        let path = self.dir.path().join("agent.yaml");
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    fn config(&self) -> AgentConfig {
        let fast = ProbeSchedule {
            interval: TextDuration(Duration::from_millis(700)),
            timeout: TextDuration(Duration::from_millis(700)),
            jitter: TextDuration(Duration::from_millis(100)),
            failures_before_unhealthy: 2,
            passes_before_healthy: 2,
            stale_after: None,
        };
        // No configured count: each node's `nvidia.com/gpu.count` label gives it.
        let mut config = AgentConfig { expected_gpus: None, schedule: fast, ..AgentConfig::default() };
        config.probes.nvidia_smi = Some(NvidiaSmiProbe {
            path: self.dir.path().join("nvidia-smi").display().to_string(),
            format: NvidiaSmiFormat::Csv,
            ..NvidiaSmiProbe::default()
        });
        config.probes.plugins.push(PluginSpec {
            name: "fabric".to_string(),
            path: self.dir.path().join("check_fabric.sh").display().to_string(),
            args: vec![],
            timeout: TextDuration(Duration::from_millis(500)),
            max_output_bytes: 80,
            family: Some(Family::Network),
        });
        config.remediation.state_file = self.state_file();
        config.remediation.boot_id_wait = TextDuration(Duration::from_secs(2));
        config.remediation.reboot_grace = TextDuration(Duration::from_secs(5));
        config
    }
}

/// The reboot as a test sees it: the GPU fault is gone after it, the node comes back with a new boot ID, and —
/// as on a real node — the process that asked for it never gets an answer.
struct RebootHook<'a> {
    cp: &'a ControlPlane,
    node: String,
    host: &'a FakeHost,
    calls: AtomicU32,
    rebooted: tokio::sync::Notify,
}

impl HostActions for RebootHook<'_> {
    fn perform<'a>(&'a self, step: RemediationStep) -> HostFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if step != RemediationStep::Reboot {
                return Err(format!("the test only reboots, not {}", step.as_str()));
            }
            self.host.show(HEALTHY).map_err(|e| e.to_string())?;
            self.cp.simulate_reboot(&self.node).await.map_err(|e| e.to_string())?;
            self.rebooted.notify_one();
            std::future::pending().await
        })
    }
}

fn heartbeat(c: &NodeCondition) -> Option<jiff::Timestamp> {
    c.last_heartbeat_time.as_ref().map(|t| t.0)
}

fn taints(n: &Node) -> Vec<String> {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).map(|t| t.iter().map(|t| t.key.clone()).collect()).unwrap_or_default()
}

async fn set_taint(nodes: &Api<Node>, node: &str, key: &str, present: bool) -> anyhow::Result<()> {
    let mut list = nodes.get(node).await?.spec.and_then(|s| s.taints).unwrap_or_default();
    list.retain(|t| t.key != key);
    if present {
        list.push(k8s_openapi::api::core::v1::Taint { key: key.to_string(), effect: "NoSchedule".to_string(), ..Default::default() });
    }
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"taints": list}}))).await?;
    Ok(())
}

fn fresh_boot_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:032x}", nanos ^ 0x5bd1_e995_0000_0000_2545_f491_4f6c_dd1d)
}

/// The CRDs and `count` kwok GPU nodes in pool-a (`gpu-000`, …) whose boot IDs have settled.
async fn gpu_cluster(cp: &ControlPlane, count: usize) -> anyhow::Result<()> {
    install_crds(&cp.client()).await?;
    let names = cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), count).await?;
    settle_boot_ids(&Api::all(cp.client()), &names).await
}

/// The `gpu-workers` policy (`POLICY`).
async fn gpu_workers_policy(cp: &ControlPlane) -> anyhow::Result<()> {
    let policy = NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(POLICY)? });
    Api::<NodeHealthPolicy>::all(cp.client()).create(&PostParams::default(), &policy).await?;
    Ok(())
}

/// Makes sure each node shows a boot ID that stays: kwok's first write of a new node's status can land after the
/// test environment's and drop `nodeInfo.bootID`, and the agent never acts on a node without one.
async fn settle_boot_ids(nodes: &Api<Node>, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        let mut steady = 0;
        while steady < 3 {
            let node = nodes.get(name).await?;
            if nodemedic_agent::node::boot_id(&node).is_some() {
                steady += 1;
            } else {
                steady = 0;
                let patch = serde_json::json!({"status": {"nodeInfo": {"bootID": fresh_boot_id()}}});
                nodes.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch)).await?;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

/// Waits until the condition's heartbeat is later than `after`.
async fn heartbeat_after(nodes: &Api<Node>, node: &str, type_: &str, after: jiff::Timestamp) -> anyhow::Result<NodeCondition> {
    Ok(wait_for(Duration::from_secs(20), &format!("{type_} heartbeat to advance on {node}"), || async {
        condition(nodes, node, type_).await.filter(|c| heartbeat(c).is_some_and(|h| h > after))
    })
    .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_gpu_probe_sets_gpu_problem_on_its_own_node_only_with_a_steady_transition_and_a_moving_heartbeat() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        gpu_cluster(cp, 2).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let host = FakeHost::new(GPU_LOST)?;
        let agent = agent(cp, "gpu-001", host.config(), &NoActions)?;
        while_running(&agent, async {
            let first = wait_for(Duration::from_secs(30), "GPUProblem=True on gpu-001", || async {
                condition(&nodes, "gpu-001", "GPUProblem").await.filter(|c| c.status == "True")
            })
            .await?;
            assert_eq!(first.reason.as_deref(), Some("GpuLost"));
            assert!(first.message.as_deref().is_some_and(|m| !m.is_empty() && m.len() <= 512), "{first:?}");
            let beat = heartbeat(&first).context("a heartbeat")?;
            let later = heartbeat_after(&nodes, "gpu-001", "GPUProblem", beat).await?;
            assert_eq!(later.status, "True");
            assert_eq!(
                later.last_transition_time, first.last_transition_time,
                "the status did not change, so neither does its transition time"
            );
            assert!(condition(&nodes, "gpu-000", "GPUProblem").await.is_none(), "no other node is touched");
            let fabric = condition(&nodes, "gpu-001", "NetworkProblem").await.context("the network family is published too")?;
            assert_eq!((fabric.status.as_str(), fabric.reason.as_deref()), ("False", Some("AllChecksPassed")));
            let ready = condition(&nodes, "gpu-001", "Ready").await.context("the kubelet's Ready condition stays")?;
            assert_eq!(ready.status, "True");
            Ok(())
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_probes_pause_while_a_repair_taint_is_on_the_node_and_the_network_probe_keeps_running() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        gpu_cluster(cp, 1).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let host = FakeHost::new(HEALTHY)?;
        let agent = agent(cp, "gpu-000", host.config(), &NoActions)?;
        while_running(&agent, async {
            wait_for(Duration::from_secs(30), "GPUProblem=False", || async {
                condition(&nodes, "gpu-000", "GPUProblem").await.filter(|c| c.status == "False")
            })
            .await?;
            set_taint(&nodes, "gpu-000", "nodemedic.io/repair-reboot", true).await?;
            set_taint(&nodes, "gpu-000", "nodemedic.io/slow-network", true).await?;
            // A run that started before the taint may still land; after that the GPU heartbeat stands still.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let paused = condition(&nodes, "gpu-000", "GPUProblem").await.context("GPUProblem")?;
            let network = condition(&nodes, "gpu-000", "NetworkProblem").await.context("NetworkProblem")?;
            heartbeat_after(&nodes, "gpu-000", "NetworkProblem", heartbeat(&network).context("heartbeat")?).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let still = condition(&nodes, "gpu-000", "GPUProblem").await.context("GPUProblem")?;
            assert_eq!(heartbeat(&still), heartbeat(&paused), "no GPU probe runs during the repair");
            assert_eq!(still.status, "False", "the last verdict stays; the controller reads its ageing heartbeat as unknown");

            set_taint(&nodes, "gpu-000", "nodemedic.io/repair-reboot", false).await?;
            heartbeat_after(&nodes, "gpu-000", "GPUProblem", heartbeat(&still).context("heartbeat")?).await?;
            Ok(())
        })
        .await
    })
    .await
}

/// Two GPUs, one of them lost.
const TWO_GPUS_ONE_LOST: &str = "handmade/nvidia-smi-csv/query_gpu_requires_reset.csv.txt";

#[tokio::test(flavor = "multi_thread")]
async fn one_agent_config_takes_each_nodes_gpu_count_from_its_own_label() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        let big = cp.create_nodes(&FakeNode::gpu("big", "pool-a", 8), 1).await?;
        let small = cp.create_nodes(&FakeNode::gpu("small", "pool-b", 2), 1).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let host = FakeHost::new(TWO_GPUS_ONE_LOST)?;
        for (node, want) in [(&big[0], "GpuCountMismatch"), (&small[0], "GpuLost")] {
            let agent = agent(cp, node, host.config(), &NoActions)?;
            let published = while_running(&agent, async {
                Ok(wait_for(Duration::from_secs(30), &format!("GPUProblem=True on {node}"), || async {
                    condition(&nodes, node, "GPUProblem").await.filter(|c| c.status == "True")
                })
                .await?)
            })
            .await?;
            assert_eq!(published.reason.as_deref(), Some(want), "{node}: {published:?}");
        }
        Ok(())
    })
    .await
}

// `settle`: the GPU verdict published just before the reboot, in the same second as the report of a test's
// instant reboot, must not count as a re-check.
const POLICY: &str = r#"
rules:
- name: gpu
  check: {name: gpu}
ladder:
- {step: reboot, timeout: 10m, settle: 2s, verifyTimeout: 2m}
- {step: manual}
monitorOnly: false
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_fault_is_rebooted_by_the_agent_once_and_the_node_is_cleared_when_the_probe_passes() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        gpu_cluster(cp, 3).await?;
        gpu_workers_policy(cp).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let remediations: Api<NodeRemediation> = Api::all(cp.client());
        let controller = Reconciler::new(cp.client(), &AgentExecutor);
        let host = FakeHost::new(GPU_LOST)?;
        let hook =
            RebootHook { cp, node: "gpu-001".to_string(), host: &host, calls: AtomicU32::new(0), rebooted: tokio::sync::Notify::new() };
        let boot_before = nodes.get("gpu-001").await?.status.and_then(|s| s.node_info).map(|i| i.boot_id).context("a boot ID")?;

        // The agent sees the fault; the controller taints the node for a reboot; the agent reboots it. The
        // reboot never returns to the agent: its process ends there.
        let first = agent(cp, "gpu-001", host.config(), &hook)?;
        while_running(&first, async {
            wait_for(Duration::from_secs(30), "the controller to taint gpu-001 for a reboot", || async {
                controller.reconcile("gpu-workers", now()).await.ok()?;
                taints(&nodes.get("gpu-001").await.ok()?).contains(&"nodemedic.io/repair-reboot".to_string()).then_some(())
            })
            .await?;
            tokio::time::timeout(Duration::from_secs(30), hook.rebooted.notified()).await.context("the agent to reboot gpu-001")?;
            Ok(())
        })
        .await?;
        drop(first);
        let log = AttemptLog::load(&host.state_file())?;
        let started = log.attempts.iter().map(|a| (a.attempt, a.step, a.boot_id.as_str(), a.outcome)).collect::<Vec<_>>();
        assert_eq!(started, [(1, RemediationStep::Reboot, boot_before.as_str(), None)], "attempt 1 was written down before acting");
        let events = Api::<k8s_openapi::api::events::v1::Event>::all(cp.client()).list(&Default::default()).await?;
        let started: Vec<String> = events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RemediationStarted"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("gpu-001"))
            .filter_map(|e| e.note.clone())
            .collect();
        assert_eq!(started, [format!("reboot attempt 1 started on gpu-001 (boot ID {boot_before})")], "the start is announced");
        let boot_after = nodes.get("gpu-001").await?.status.and_then(|s| s.node_info).map(|i| i.boot_id).context("a boot ID")?;
        assert_ne!(boot_after, boot_before);

        // The agent starts again after the reboot: it reports the attempt from its state file, does not reboot
        // again, and the GPU probe (running again while the controller verifies) clears the node.
        let second = agent(cp, "gpu-001", host.config(), &hook)?;
        let record = while_running(&second, async {
            let report = wait_for(Duration::from_secs(30), "the agent's step report for attempt 1", || async {
                remediations.get("gpu-001").await.ok()?.status?.step_report.filter(|r| r.attempt == 1)
            })
            .await?;
            assert_eq!(report.outcome, ReportedOutcome::Succeeded);
            assert_eq!(report.message, format!("rebooted; boot ID {boot_before} → {boot_after}"));
            Ok(wait_for(Duration::from_secs(60), "gpu-001 to be cleared", || async {
                controller.reconcile("gpu-workers", now()).await.ok()?;
                let record = remediations.get("gpu-001").await.ok()?.status?.record;
                (record.phase == Phase::Healthy).then_some(record)
            })
            .await?)
        })
        .await?;
        assert_eq!(record.history.last().map(|h| (h.step, h.outcome)), Some((RemediationStep::Reboot, StepOutcome::Recovered)));
        assert!(!taints(&nodes.get("gpu-001").await?).iter().any(|t| t.starts_with("nodemedic.io/")), "the repair taint is gone");
        assert_eq!(condition(&nodes, "gpu-001", "GPUProblem").await.map(|c| c.status), Some("False".to_string()));
        assert_eq!(hook.calls.load(Ordering::SeqCst), 1, "one reboot for attempt 1, across the restart");
        let log = AttemptLog::load(&host.state_file())?;
        assert_eq!(log.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(), [Some(ReportedOutcome::Succeeded)]);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_command_that_fails_without_rebooting_is_reported_failed_and_not_retried() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        gpu_cluster(cp, 3).await?;
        gpu_workers_policy(cp).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let remediations: Api<NodeRemediation> = Api::all(cp.client());
        let controller = Reconciler::new(cp.client(), &AgentExecutor);
        let host = FakeHost::new(GPU_LOST)?;
        let mut config = host.config();
        config.remediation.reboot.argv =
            vec!["sh".into(), "-c".into(), "echo 'System has not been booted with systemd' >&2; exit 1".into()];
        config.remediation.sysrq_trigger = None;
        let commands = nodemedic_agent::remediate::CommandHost { config: config.remediation.clone() };
        let agent = agent(cp, "gpu-001", config, &commands)?;
        let report = while_running(&agent, async {
            Ok(wait_for(Duration::from_secs(40), "a step report for attempt 1", || async {
                controller.reconcile("gpu-workers", now()).await.ok()?;
                remediations.get("gpu-001").await.ok()?.status?.step_report.filter(|r| r.attempt == 1)
            })
            .await?)
        })
        .await?;
        assert_eq!(report.outcome, ReportedOutcome::Failed);
        assert!(report.message.contains("System has not been booted with systemd"), "{}", report.message);
        assert!(taints(&nodes.get("gpu-001").await?).iter().any(|t| t.starts_with("nodemedic.io/repair-")));
        Ok(())
    })
    .await
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_takes_its_node_from_node_name_and_publishes_conditions_through_the_kubeconfig() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        gpu_cluster(cp, 2).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let host = FakeHost::new(GPU_LOST)?;
        // NODEMEDIC_AGENT_BIN measures another build (e.g. release) of the same binary.
        let bin = std::env::var("NODEMEDIC_AGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_nodemedic-agent").to_string());
        let mut agent = tokio::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(host.config_file()?)
            .env("NODE_NAME", "gpu-001")
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let result = wait_for(Duration::from_secs(30), "GPUProblem=True on gpu-001", || async {
            condition(&nodes, "gpu-001", "GPUProblem").await.filter(|c| c.status == "True")
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let peak = agent.id().and_then(peak_rss_kib);
        eprintln!("nodemedic-agent run: peak RSS {peak:?} KiB after ~30 probe runs and their condition writes");
        agent.start_kill()?;
        let first = result?;
        assert_eq!(first.reason.as_deref(), Some("GpuLost"));
        assert!(condition(&nodes, "gpu-000", "GPUProblem").await.is_none(), "no other node is touched");
        assert!(condition(&nodes, "gpu-001", "NetworkProblem").await.is_some_and(|c| c.status == "False"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_without_a_family_publishes_a_condition_of_its_own_name_that_a_policy_check_reads() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        gpu_cluster(cp, 1).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let host = FakeHost::new(HEALTHY)?;
        let mut config = host.config();
        config.probes.plugins.push(PluginSpec {
            name: "nccl-allreduce".to_string(),
            path: host.dir.path().join("check_fabric.sh").display().to_string(),
            args: vec![],
            timeout: TextDuration(Duration::from_millis(500)),
            max_output_bytes: 80,
            family: None,
        });
        let agent = agent(cp, "gpu-000", config, &NoActions)?;
        while_running(&agent, async {
            let own = wait_for(Duration::from_secs(30), "the plugin's own condition on gpu-000", || async {
                condition(&nodes, "gpu-000", "nccl-allreduce").await
            })
            .await?;
            assert_eq!(own.status, "False", "{own:?}");
            // The controller's reading of it: the node as the engine observes it, a policy check on the plugin.
            let node = nodes.get("gpu-000").await?;
            let obs = nodemedic_k8s::observe_node(&node, None)?;
            let check = nodemedic_core::policy::CheckMatch { name: "nccl-allreduce".into(), plugin: true };
            let evidence = nodemedic_core::probe::check_evidence(&obs, &check).context("evidence for the plugin check")?;
            assert!(matches!(evidence.evidence, nodemedic_core::probe::ProbeEvidence::Passing { .. }), "{evidence:?}");
            assert!(condition(&nodes, "gpu-000", "CustomProblem").await.is_none(), "nothing folds it into a family");
            Ok(())
        })
        .await
    })
    .await
}
