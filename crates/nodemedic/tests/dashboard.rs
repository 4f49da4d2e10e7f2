//! The Grafana dashboard (`deploy/helm/nodemedic/files/dashboard.json`) reads real series: a
//! Prometheus (Debian's, installed by scripts/ship-peers/setup) scrapes a controller and a node agent
//! on each node while the controller quarantines one node, its agent reboots it and it recovers, and a
//! gate holds another back; every panel's query then returns series over the scenario's time range.

mod common;

use common::agents::{TestHost, node_agent};
use common::{Replica, record, setup};
use nodemedic_core::record::Phase;
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// One node at a time in a disruptive step: the second failing node is held by the gate.
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

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(controller_port: u16, agent_ports: &[u16]) -> anyhow::Result<Prometheus> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prometheus.yml");
    let agents: Vec<String> = agent_ports.iter().map(|port| format!("'127.0.0.1:{port}'")).collect();
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n\
             - job_name: nodemedic-controller\n  static_configs:\n  - targets: ['127.0.0.1:{controller_port}']\n\
             - job_name: nodemedic-agent\n  static_configs:\n  - targets: [{}]\n",
            agents.join(", ")
        ),
    )?;
    // Prometheus cannot report a port it picked itself; a port free a moment ago is taken instead.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log"))?)
        .spawn()
        .map_err(|e| anyhow::anyhow!("prometheus could not be started ({e}); scripts/ship-peers/setup installs it"))?;
    Ok(Prometheus { child, port, _dir: dir })
}

/// Every panel's queries, with the dashboard's variables as "All" and Grafana's intervals filled in.
fn panel_queries() -> anyhow::Result<Vec<(String, String)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/nodemedic/files/dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let filled =
                expr.replace("$policy", ".*").replace("$agent_node", ".*").replace("$node", ".*").replace("$__rate_interval", "10s");
            assert!(!filled.contains('$'), "a dashboard variable the test does not fill: {filled}");
            queries.push((panel["title"].as_str().unwrap_or_default().to_string(), filled));
        }
    }
    Ok(queries)
}

async fn range_query(http: &reqwest::Client, port: u16, expr: &str, start: f64, end: f64) -> anyhow::Result<serde_json::Value> {
    let (start, end) = (format!("{start:.3}"), format!("{end:.3}"));
    let url = format!("http://127.0.0.1:{port}/api/v1/query_range");
    let params = [("query", expr), ("start", start.as_str()), ("end", end.as_str()), ("step", "1")];
    let body: serde_json::Value = http.get(url).query(&params).send().await?.json().await?;
    anyhow::ensure!(body["status"] == "success", "query `{expr}` failed: {body}");
    Ok(body["data"]["result"].clone())
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_panel_returns_series_from_a_prometheus_that_scraped_a_remediation() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 3, POLICY).await?;
        let hosts: Vec<TestHost> = (0..3).map(|i| TestHost { cp, node: format!("gpu-{i:03}") }).collect();
        let mut agents = Vec::new();
        for host in &hosts {
            agents.push(node_agent(cp, cp.client(), &host.node, host).await?);
        }
        let replica = Replica::start(cp, "dashboard-replica")?;
        let agent_ports: Vec<u16> = agents.iter().map(|a| a.port).collect();
        let prometheus = start_prometheus(replica.port, &agent_ports)?;
        let start = now_secs();
        let scenario = async {
            wait_for(Duration::from_secs(30), "the leader", || async { replica.is_leader().then_some(()) }).await?;
            // The hold lasts only while the first node reboots (seconds): faults start once Prometheus
            // scrapes the leader, so a Prometheus slow to start cannot miss it.
            let http = reqwest::Client::new();
            wait_for(Duration::from_secs(60), "Prometheus to scrape the leader", || async {
                let now = now_secs();
                let result = range_query(&http, prometheus.port, "nodemedic_leader == 1", now - 2.0, now).await.ok()?;
                result.as_array().is_some_and(|r| !r.is_empty()).then_some(())
            })
            .await?;
            cp.set_node_condition("gpu-001", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
            cp.set_node_condition("gpu-002", "GPUProblem", "True", "XidCritical", "Xid 79").await?;
            let (rebooting, held) = wait_for(Duration::from_secs(30), "one node rebooting and the other held by the gate", || async {
                let held = replica.metrics().contains("nodemedic_gate_holds{");
                let first = record(cp, "gpu-001").await.filter(|r| r.phase == Phase::Remediating);
                let second = record(cp, "gpu-002").await.filter(|r| r.phase == Phase::Remediating);
                match (held, first, second) {
                    (true, Some(_), None) => Some(("gpu-001", "gpu-002")),
                    (true, None, Some(_)) => Some(("gpu-002", "gpu-001")),
                    _ => None,
                }
            })
            .await?;
            // The rebooting node's agent reboots it (the test host takes a few seconds, so scrapes see
            // the hold); the controller then verifies it and lets the held one start.
            wait_for(Duration::from_secs(60), "the first node to recover and the held one to start", || async {
                let first = record(cp, rebooting).await.filter(|r| r.phase == Phase::Healthy);
                let second = record(cp, held).await.filter(|r| r.phase == Phase::Remediating);
                (first.is_some() && second.is_some()).then_some(())
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(4)).await;
            anyhow::Ok(())
        };
        let running = futures::future::join_all(agents.iter().map(|a| a.agent.run_measured(&a.metrics)));
        tokio::select! {
            stopped = running => anyhow::bail!("the agents stopped: {stopped:?}"),
            done = scenario => done?,
        }

        let http = reqwest::Client::new();
        let end = now_secs();
        let queries = panel_queries()?;
        assert!(queries.len() >= 22, "{} queries", queries.len());
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            let result = range_query(&http, prometheus.port, expr, start, end).await?;
            if result.as_array().is_none_or(|r| r.is_empty()) {
                empty.push(format!("{title}: {expr}"));
            }
        }
        assert!(empty.is_empty(), "panels without series:\n{}\n--- controller log\n{}", empty.join("\n"), replica.log());
        // Every agent was scraped, and the rebooting node's agent counted its reboot.
        let agents_up = range_query(&http, prometheus.port, "count(up{job=\"nodemedic-agent\"} == 1)", end - 2.0, end).await?;
        assert_eq!(agents_up[0]["values"].as_array().and_then(|v| v.last()).and_then(|v| v[1].as_str()), Some("3"), "{agents_up}");
        let reboots = range_query(
            &http,
            prometheus.port,
            "sum(nodemedic_agent_remediations_total{step=\"reboot\", outcome=\"succeeded\"})",
            end - 2.0,
            end,
        )
        .await?;
        let counted =
            reboots[0]["values"].as_array().and_then(|v| v.last()).and_then(|v| v[1].as_str()).and_then(|v| v.parse::<f64>().ok());
        assert!(counted.is_some_and(|n| n >= 1.0), "the agents' reboots: {reboots}");
        // The repair figure is a real duration, not NaN from an empty histogram.
        let repair = range_query(
            &http,
            prometheus.port,
            "histogram_quantile(0.5, sum by (le) (nodemedic_time_to_repair_seconds_bucket))",
            end - 2.0,
            end,
        )
        .await?;
        let last = repair[0]["values"].as_array().and_then(|v| v.last()).and_then(|v| v[1].as_str()).unwrap_or("NaN");
        assert!(last.parse::<f64>().is_ok_and(f64::is_finite), "time to repair: {repair}");
        Ok(())
    })
    .await
}
