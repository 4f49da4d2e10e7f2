//! `nodemedic-agent run --metrics-listen`: the binary against a real control plane serves its node's
//! probe results and condition heartbeats to Prometheus, and they agree with what it wrote on the Node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::api::{Api, Patch, PatchParams};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};

const GPU_LOST: &str = "handmade/nvidia-smi-csv/query_gpu_8x_one_requires_reset.csv.txt";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn executable(path: &Path, script: &str) -> anyhow::Result<()> {
    std::fs::write(path, script)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A fake `nvidia-smi` that shows a lost GPU and a network plugin that passes; returns the config file.
fn host(dir: &Path) -> anyhow::Result<PathBuf> {
    let capture = fixture(GPU_LOST);
    anyhow::ensure!(capture.exists(), "missing fixture {}", capture.display());
    executable(&dir.join("nvidia-smi"), &format!("#!/bin/sh\ncat '{}'\n", capture.display()))?;
    executable(&dir.join("check_fabric.sh"), "#!/bin/sh\necho 'fabric reachable'\nexit 0\n")?;
    let d = dir.display();
    let yaml = format!(
        "schedule: {{ interval: 700ms, timeout: 700ms, jitter: 100ms, failures_before_unhealthy: 2, passes_before_healthy: 2 }}\n\
         probes:\n  nvidia_smi: {{ path: {d}/nvidia-smi, format: csv }}\n  \
         plugins:\n    - {{ name: fabric, path: {d}/check_fabric.sh, family: network }}\n\
         remediation:\n  state_file: {d}/attempts.json\n"
    );
    let config = dir.join("agent.yaml");
    std::fs::write(&config, yaml)?;
    Ok(config)
}

async fn condition(nodes: &Api<Node>, node: &str, type_: &str) -> Option<NodeCondition> {
    nodes.get(node).await.ok()?.status?.conditions?.into_iter().find(|c| c.type_ == type_)
}

/// The value of the one series of `name` whose labels contain every `label="value"` in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET /metrics` over a plain socket, with a deadline.
async fn scrape(address: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_metrics_show_its_probe_results_and_the_heartbeats_it_wrote_on_its_node() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        nodemedic_controller::install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 1).await?;
        let nodes: Api<Node> = Api::all(cp.client());
        // The agent reads the boot ID before a reboot only; a node without one is still fine to probe.
        let patch = serde_json::json!({"status": {"nodeInfo": {"bootID": "boot-1"}}});
        nodes.patch_status("gpu-000", &PatchParams::default(), &Patch::Strategic(patch)).await?;
        let dir = tempfile::tempdir()?;
        let config = host(dir.path())?;
        let log = dir.path().join("agent.log");
        let _agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_nodemedic-agent"))
            .args(["run", "--metrics-listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("NODE_NAME", "gpu-000")
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let address = wait_for(Duration::from_secs(20), "the agent to log its metrics address", || async {
            let text = std::fs::read_to_string(&log).ok()?;
            let line = text.lines().find(|l| l.contains("serving /metrics"))?.to_string();
            line.split("address=").nth(1)?.split_whitespace().next().map(str::to_string)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n--- agent log\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
        let gpu = wait_for(Duration::from_secs(30), "GPUProblem=True on gpu-000", || async {
            condition(&nodes, "gpu-000", "GPUProblem").await.filter(|c| c.status == "True")
        })
        .await?;

        let text = wait_for(Duration::from_secs(10), "metrics with the unhealthy GPU", || async {
            let text = scrape(&address).await?;
            let unhealthy = sample(&text, "nodemedic_agent_probe_health", &["probe=\"nvidia-smi\"", "health=\"unhealthy\""]);
            (unhealthy == Some(1.0)).then_some(text)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n--- agent log\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
        let on = |extra: &[&'static str]| [&["node=\"gpu-000\""][..], extra].concat();
        assert_eq!(sample(&text, "nodemedic_agent_probe_health", &on(&["probe=\"nvidia-smi\"", "health=\"healthy\""])), Some(0.0));
        assert_eq!(sample(&text, "nodemedic_agent_probe_health", &on(&["probe=\"plugin/fabric\"", "health=\"healthy\""])), Some(1.0));
        let raw_unhealthy = sample(&text, "nodemedic_agent_probe_runs_total", &on(&["probe=\"nvidia-smi\"", "health=\"unhealthy\""]));
        assert!(raw_unhealthy.is_some_and(|n| n >= 2.0), "two failures before the condition turns: {text}");
        assert!(sample(&text, "nodemedic_agent_probe_duration_seconds_count", &on(&["probe=\"plugin/fabric\""])).is_some_and(|n| n >= 1.0));
        assert_eq!(sample(&text, "nodemedic_agent_condition_write_failures_total", &on(&[])), Some(0.0));

        // The heartbeat the agent reports is the one on the Node (to the second), for both families.
        for type_ in ["GPUProblem", "NetworkProblem"] {
            let written = wait_for(Duration::from_secs(10), "a heartbeat the node and the metrics agree on", || async {
                let on_node = condition(&nodes, "gpu-000", type_).await?.last_heartbeat_time?.0.as_second() as f64;
                let label = format!("condition=\"{type_}\"");
                let exported =
                    sample(&scrape(&address).await?, "nodemedic_agent_condition_heartbeat_timestamp_seconds", &[label.as_str()])?;
                ((exported - on_node).abs() < 1.0).then_some(exported)
            })
            .await?;
            let age = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0 - written;
            assert!((0.0..30.0).contains(&age), "{type_} heartbeat {age} s old");
        }
        assert_eq!(gpu.reason.as_deref(), Some("GpuLost"));
        Ok(())
    })
    .await
}
