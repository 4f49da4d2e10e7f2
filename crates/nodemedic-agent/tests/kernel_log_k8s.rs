//! The kernel-log follower and stale conditions against a real control plane: a log file the test appends to
//! stands for /dev/kmsg, the agent publishes `GPUProblem` on its kwok node, and the controller runs in-process.

mod common;

use common::{NoActions, agent, condition, while_running};

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::api::{Api, PostParams};
use nodemedic_agent::AgentConfig;
use nodemedic_agent::config::KernelLogProbe;
use nodemedic_agent::probe::{ProbeSchedule, TextDuration};
use nodemedic_controller::{AgentExecutor, Reconciler, install_crds, now};
use nodemedic_core::record::Phase;
use nodemedic_core::{Policy, RemediationStep};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};

const XID_79: &str = "[ 8012.000001] NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.\n";

/// The node's disk: a kernel log the test appends to, a boot ID, the agent's state files.
struct FakeKernel {
    dir: tempfile::TempDir,
}

impl FakeKernel {
    fn new() -> anyhow::Result<FakeKernel> {
        let kernel = FakeKernel { dir: tempfile::tempdir()? };
        std::fs::write(kernel.log(), "[    0.000000] Linux version 6.8.0\n")?;
        std::fs::write(kernel.dir.path().join("boot_id"), "boot-1\n")?;
        Ok(kernel)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("kmsg")
    }

    fn append(&self, line: &str) -> anyhow::Result<()> {
        let mut log = std::fs::OpenOptions::new().append(true).open(self.log())?;
        log.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Only the kernel-log probe, on the default 30 s interval and three-strike schedule: a fault must be
    /// published by the follower, not by the next poll.
    fn config(&self) -> AgentConfig {
        let mut config = AgentConfig {
            schedule: ProbeSchedule { jitter: TextDuration(Duration::ZERO), ..ProbeSchedule::default() },
            ..AgentConfig::default()
        };
        config.probes.kernel_log = Some(KernelLogProbe {
            source: self.log(),
            state_file: self.dir.path().join("var/lib/nodemedic/kernel-faults.json"),
            hold: TextDuration(Duration::from_secs(1800)),
            boot_id_file: self.dir.path().join("boot_id"),
        });
        config.remediation.state_file = self.dir.path().join("var/lib/nodemedic/attempts.json");
        config
    }
}

/// Waits up to 30 s for this node's `GPUProblem` to read `status`.
async fn gpu_problem(nodes: &Api<Node>, node: &str, status: &str) -> Result<NodeCondition, nodemedic_testenv::TestEnvError> {
    wait_for(Duration::from_secs(30), &format!("GPUProblem={status}"), || async {
        condition(nodes, node, "GPUProblem").await.filter(|c| c.status == status)
    })
    .await
}

/// `count` kwok GPU nodes; the name of the first.
async fn gpu_nodes(cp: &ControlPlane, count: usize) -> anyhow::Result<String> {
    install_crds(&cp.client()).await?;
    let names = cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), count).await?;
    names.into_iter().next().context("a node")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fatal_kernel_log_line_is_published_within_two_seconds_not_after_three_polls() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        let node = gpu_nodes(cp, 1).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let kernel = FakeKernel::new()?;
        let agent = agent(cp, &node, kernel.config(), &NoActions)?;
        while_running(&agent, async {
            gpu_problem(&nodes, &node, "False").await?;
            let appended = Instant::now();
            kernel.append(XID_79)?;
            let published = loop {
                if let Some(c) = condition(&nodes, &node, "GPUProblem").await.filter(|c| c.status == "True") {
                    break c;
                }
                anyhow::ensure!(appended.elapsed() < Duration::from_secs(10), "GPUProblem still not True 10 s after the Xid 79 line");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let latency = appended.elapsed();
            println!("kernel-log line to GPUProblem=True: {} ms", latency.as_millis());
            assert_eq!(published.reason.as_deref(), Some("KernelFaultReboot"), "{published:?}");
            // Target 2 s; the bound leaves room for a loaded test machine.
            assert!(latency < Duration::from_secs(5), "published {latency:?} after the line appeared");
            Ok(())
        })
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_class_fault_publishes_the_gpu_it_is_on_for_the_controller_to_read() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        let node = gpu_nodes(cp, 1).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let kernel = FakeKernel::new()?;
        let agent = agent(cp, &node, kernel.config(), &NoActions)?;
        while_running(&agent, async {
            gpu_problem(&nodes, &node, "False").await?;
            kernel.append("[ 9001.000001] NVRM: Xid (PCI:0000:3b:00): 48, pid=1234, name=python, An uncorrectable double bit error\n")?;
            let observed = wait_for(Duration::from_secs(20), "GPUProblem=True naming its GPU", || async {
                let read = nodes.get(&node).await.ok()?;
                let obs = nodemedic_k8s::observe_node(&read, None).ok()?;
                obs.condition("GPUProblem").filter(|c| c.gpu.is_some()).cloned()
            })
            .await?;
            assert_eq!(observed.reason, "KernelFaultResetGpu");
            assert_eq!(observed.gpu.map(|g| g.pci_bus_id), Some("0000:3b:00.0".to_string()));
            Ok(())
        })
        .await
    })
    .await
}

const STALE_POLICY: &str = r#"
rules:
- name: gpu
  check: {name: gpu}
  staleAfter: 3s
ladder:
- {step: reboot, timeout: 10m}
- {step: manual}
monitorOnly: false
"#;

#[tokio::test(flavor = "multi_thread")]
async fn conditions_left_by_a_stopped_agent_go_stale_and_start_no_repair() -> anyhow::Result<()> {
    let recommended = nodemedic_core::presets::recommended();
    let checks = recommended.rules.iter().filter(|r| r.check.is_some());
    assert!(checks.clone().count() > 0 && checks.clone().all(|r| r.stale_after.is_some()), "the recommended preset sets staleAfter");

    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        let node = gpu_nodes(cp, 3).await?;
        let policy = NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(STALE_POLICY)? });
        Api::<NodeHealthPolicy>::all(cp.client()).create(&PostParams::default(), &policy).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let kernel = FakeKernel::new()?;
        kernel.append(XID_79)?;
        let first = agent(cp, &node, kernel.config(), &NoActions)?;
        let published = while_running(&first, async { Ok(gpu_problem(&nodes, &node, "True").await?) }).await?;
        drop(first);
        let heartbeat = published.last_heartbeat_time.as_ref().map(|t| t.0).context("the condition carries the agent's heartbeat")?;

        // The agent is gone; its True condition ages past staleAfter before the controller looks.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let controller = Reconciler::new(cp.client(), &AgentExecutor);
        for _ in 0..3 {
            controller.reconcile("gpu-workers", now()).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let still = condition(&nodes, &node, "GPUProblem").await.context("GPUProblem")?;
        assert_eq!(still.last_heartbeat_time.map(|t| t.0), Some(heartbeat), "nothing published after the agent stopped");
        let taints: Vec<String> =
            nodes.get(&node).await?.spec.and_then(|s| s.taints).unwrap_or_default().into_iter().map(|t| t.key).collect();
        assert!(!taints.iter().any(|t| t.starts_with("nodemedic.io/repair-")), "no repair taint: {taints:?}");
        let record = Api::<NodeRemediation>::all(cp.client()).get_opt(&node).await?.and_then(|r| r.status).map(|s| s.record);
        assert!(record.as_ref().is_none_or(|r| r.phase == Phase::Healthy && r.history.is_empty()), "no step started: {record:?}");

        // The control: the agent starts again (same boot, so the fault is still active in its saved history), the
        // evidence is fresh, and the same controller starts the repair.
        let restarted = agent(cp, &node, kernel.config(), &NoActions)?;
        while_running(&restarted, async {
            wait_for(Duration::from_secs(30), "a repair taint once the evidence is fresh", || async {
                controller.reconcile("gpu-workers", now()).await.ok()?;
                let node = nodes.get(&node).await.ok()?;
                let taints = node.spec?.taints?;
                taints.iter().any(|t| t.key == "nodemedic.io/repair-reboot").then_some(())
            })
            .await?;
            Ok(())
        })
        .await?;
        Ok(())
    })
    .await
}

const RESET_POLICY: &str = r#"
rules:
- name: gpu
  check: {name: gpu}
  staleAfter: 2m
ladder:
- {step: resetGpu, timeout: 2m, settle: 1s, verifyTimeout: 30s}
- {step: reboot, timeout: 10m}
- {step: manual}
monitorOnly: false
"#;

/// A fake `nvidia-smi` in `dir`: `-r` records its arguments and exits 0, anything else prints a healthy
/// one-GPU `-q -x` capture.
fn fake_nvidia_smi(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let capture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvidia-smi-xml/tesla-t4.xml");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = -r ]; then\n  echo \"$@\" >> '{}/resets'\n  exit 0\nfi\ncat '{}'\n",
        dir.display(),
        capture.display()
    );
    let path = dir.join("nvidia-smi");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Issue 13: an Xid the catalog says a GPU reset fixes goes through the whole chain on a real API server — the
/// agent names the GPU, the controller starts `resetGpu` on it, the agent resets it with the vendor tool, and
/// the good reset ends the kernel-log fault at once (not after the 30 min hold), so the node recovers on the
/// reset alone: no reboot is asked for (the host refuses any) and the kernel-log probe reads healthy again.
#[tokio::test(flavor = "multi_thread")]
async fn a_good_gpu_reset_ends_the_kernel_log_fault_it_fixed_and_the_node_recovers_without_a_reboot() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        let node = cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 1), 3).await?.into_iter().next().context("a node")?;
        let policy = NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(RESET_POLICY)? });
        Api::<NodeHealthPolicy>::all(cp.client()).create(&PostParams::default(), &policy).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        let records: Api<NodeRemediation> = Api::all(cp.client());
        let kernel = FakeKernel::new()?;
        fake_nvidia_smi(kernel.dir.path())?;
        let mut config = kernel.config();
        // Polls 5 min apart: only the follower, and the record starting to verify, can make a probe run in
        // time; without the wake on verifying, the reset's verification would time out and ask for a reboot.
        config.schedule = ProbeSchedule {
            interval: TextDuration(Duration::from_secs(300)),
            jitter: TextDuration(Duration::ZERO),
            passes_before_healthy: 1,
            ..ProbeSchedule::default()
        };
        config.probes.nvidia_smi = Some(nodemedic_agent::config::NvidiaSmiProbe::default());
        config.expected_gpus = Some(1);
        config.search_path = Some(format!("{}:/usr/bin:/bin", kernel.dir.path().display()));
        let agent = agent(cp, &node, config, &NoActions)?;
        let controller = Reconciler::new(cp.client(), &AgentExecutor);
        while_running(&agent, async {
            gpu_problem(&nodes, &node, "False").await?;
            kernel.append("[ 9001.000001] NVRM: Xid (PCI:0000:3b:00): 48, pid=1234, name=python, An uncorrectable double bit error\n")?;
            let record = wait_for(Duration::from_secs(60), "the record recovered after its resetGpu step", || async {
                controller.reconcile("gpu-workers", now()).await.ok()?;
                let record = records.get_opt(&node).await.ok()??.status?.record;
                let reset = record.history.iter().any(|h| h.step == RemediationStep::ResetGpu);
                (reset && record.phase == Phase::Healthy && record.active.is_none()).then_some(record)
            })
            .await?;
            let steps: Vec<(RemediationStep, nodemedic_core::record::StepOutcome)> =
                record.history.iter().map(|h| (h.step, h.outcome)).collect();
            assert_eq!(steps, vec![(RemediationStep::ResetGpu, nodemedic_core::record::StepOutcome::Recovered)], "{record:?}");
            let resets = std::fs::read_to_string(kernel.dir.path().join("resets"))?;
            assert_eq!(resets.trim(), "-r -i 0000:3b:00.0", "one reset, aimed at the GPU the Xid named");
            let gpu = condition(&nodes, &node, "GPUProblem").await.context("GPUProblem")?;
            assert_eq!(gpu.status, "False", "the kernel-log fault ended with the reset, well inside its 30 min hold: {gpu:?}");
            let state = std::fs::read_to_string(kernel.dir.path().join("var/lib/nodemedic/kernel-faults.json"))?;
            let state: nodemedic_agent::faults::FaultState = serde_json::from_str(&state)?;
            assert!(state.active.is_empty(), "no active fault is saved: {state:?}");
            assert!(!state.sightings.is_empty(), "the sighting stays for escalation windows: {state:?}");
            Ok(())
        })
        .await
    })
    .await
}

/// A process's memory from /proc: peak, current, anonymous and file-backed resident KiB.
fn rss_kib(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?");
    Some(format!(
        "VmHWM {} KiB, VmRSS {} KiB (anonymous {}, file {}), threads {}",
        field("VmHWM:"),
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:")
    ))
}

/// The binary with the example DaemonSet's probes (nvml, kernel-log, infiniband, disk) on a fast schedule, on a
/// node without GPU labels: a line
/// appended to the followed log is published by the process. It prints the process's memory after the run
/// (`NODEMEDIC_RUN_SECONDS`, default 3) for docs/benchmarks.md; `NODEMEDIC_AGENT_BIN` measures another build.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_follows_the_kernel_log_with_the_default_probes() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        // No GPU label: NVML, absent on a test machine, then reports a node without GPUs instead of Unknown.
        install_crds(&cp.client()).await?;
        let node = cp.create_nodes(&FakeNode::cpu("cpu", "pool-a"), 1).await?.into_iter().next().context("a node")?;
        let nodes: Api<Node> = Api::all(cp.client());
        let kernel = FakeKernel::new()?;
        let dir = kernel.dir.path().display().to_string();
        let sysfs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/infiniband-sysfs/h100_node_ndr");
        let yaml = format!(
            "schedule: {{ interval: 1s, timeout: 1s, jitter: 100ms, failures_before_unhealthy: 3, passes_before_healthy: 2 }}\n\
             probes:\n  nvml: {{}}\n  \
             kernel_log: {{ source: {dir}/kmsg, state_file: {dir}/state/kernel-faults.json, boot_id_file: {dir}/boot_id }}\n  \
             infiniband: {{ sysfs_root: {}, min_rate_gbps: 200 }}\n  \
             disk: {{ mounts: [\"/\"] }}\n\
             remediation:\n  state_file: {dir}/state/attempts.json\n",
            sysfs.display()
        );
        let config = kernel.dir.path().join("agent.yaml");
        std::fs::write(&config, yaml)?;
        let bin = std::env::var("NODEMEDIC_AGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_nodemedic-agent").to_string());
        let seconds: u64 = std::env::var("NODEMEDIC_RUN_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
        let mut agent = tokio::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("NODE_NAME", &node)
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "warn")
            .env("MALLOC_ARENA_MAX", "1")
            .kill_on_drop(true)
            .spawn()?;
        let healthy = gpu_problem(&nodes, &node, "False").await;
        let appended = Instant::now();
        kernel.append(XID_79)?;
        let published = gpu_problem(&nodes, &node, "True").await;
        let latency = appended.elapsed();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let memory = agent.id().and_then(rss_kib);
        println!("nodemedic-agent run, {seconds} s after the fault: {}; published after {latency:?}", memory.unwrap_or_default());
        agent.start_kill()?;
        healthy?;
        let published = published?;
        assert_eq!(published.reason.as_deref(), Some("KernelFaultReboot"), "{published:?}");
        let network = condition(&nodes, &node, "NetworkProblem").await.context("NetworkProblem")?;
        assert_eq!(network.status, "False", "{network:?}");
        Ok(())
    })
    .await
}
