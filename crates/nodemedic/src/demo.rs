//! `nodemedic demo`: a local control plane with kwok GPU nodes, two controller replicas (child
//! processes of this binary, monitor-only off), and simulated node agents that publish probe
//! conditions and perform fake reboots and reimages (a new bootID through the test environment).
//! It plays a scenario file, prints a timeline of the controller's decisions (its Kubernetes
//! Events, with reasons) and a table of the nodes that are not healthy, and ends with a summary
//! that checks each fault's expected outcome.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nodemedic_core::observe::{ReportedOutcome, StepReport};
use nodemedic_core::record::{Phase, Stage};
use nodemedic_core::{Duration, Policy, RemediationStep, Time};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation, field_managers, report_step};
use nodemedic_testenv::{ControlPlane, FakeNode, Options};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub const DEFAULT_SCENARIO: &str = include_str!("../../../examples/demo-scenario.yaml");

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "default_nodes")]
    pub nodes: usize,
    #[serde(default = "default_pools")]
    pub pools: usize,
    #[serde(default = "default_gpus")]
    pub gpus_per_node: u32,
    /// Longest the demo runs after the start.
    pub duration: Duration,
    /// The NodeHealthPolicy spec the controller runs.
    pub policy: Policy,
    /// SIGKILL the leading controller replica at this time (a replacement starts at once): the
    /// standby takes over when the lease expires and carries on from the records.
    #[serde(default)]
    pub kill_leader_at: Option<Duration>,
    #[serde(default)]
    pub faults: Vec<Fault>,
}

fn default_nodes() -> usize {
    16
}
fn default_pools() -> usize {
    2
}
fn default_gpus() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// When, after the start.
    pub at: Duration,
    pub nodes: Vec<String>,
    pub kind: FaultKind,
    pub message: String,
    /// The repair that clears it (the simulated agent's probe passes after it).
    #[serde(default)]
    pub fixed_by: Option<FixedBy>,
    /// Clears by itself this long after it began (a flaky link, a power event that passes).
    #[serde(default)]
    pub recovers_after: Option<Duration>,
    /// The outcome the summary checks.
    #[serde(default)]
    pub expect: Option<Expect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// The agent's GPU probe fails: condition GPUProblem=True.
    Gpu,
    /// The agent's network probe fails: condition NetworkProblem=True.
    Network,
}

impl FaultKind {
    fn condition(self) -> &'static str {
        match self {
            FaultKind::Gpu => "GPUProblem",
            FaultKind::Network => "NetworkProblem",
        }
    }
    fn reasons(self) -> (&'static str, &'static str) {
        match self {
            FaultKind::Gpu => ("GPUFault", "GPUsHealthy"),
            FaultKind::Network => ("SlowNetwork", "NetworkHealthy"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FixedBy {
    Reboot,
    Reimage,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Expect {
    /// Healthy again, without a person.
    Recovered,
    /// Escalated to `repair-manual`.
    Manual,
    /// The circuit breaker tripped while it was failing, and it ended healthy.
    Breaker,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario> {
        let s: Scenario = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
        s.policy.validate().map_err(|e| anyhow::anyhow!("scenario policy: {e}"))?;
        let names: BTreeSet<String> = (0..s.nodes).map(node_name).collect();
        for (i, f) in s.faults.iter().enumerate() {
            for n in &f.nodes {
                if !names.contains(n) {
                    bail!("scenario faults[{i}].nodes: no node `{n}` (the demo has gpu-000 … {})", node_name(s.nodes.saturating_sub(1)));
                }
            }
            if f.fixed_by.is_none() && f.recovers_after.is_none() {
                bail!("scenario faults[{i}]: say what ends it: fixedBy (reboot, reimage, never) or recoversAfter");
            }
        }
        Ok(s)
    }
}

fn node_name(i: usize) -> String {
    format!("gpu-{i:03}")
}

/// What the simulated agents know: which nodes are faulty, and since when.
#[derive(Default)]
struct FaultState {
    /// node → (fault index, began at)
    active: BTreeMap<String, (usize, Instant)>,
    /// (node, attempt) handled, so a step is performed once.
    handled: BTreeSet<(String, u32)>,
}

/// One controller replica as a child process.
struct Replica {
    name: String,
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first so the lease is handed over cleanly; then make sure.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct DemoArgs {
    pub scenario: Option<PathBuf>,
    /// Run without the SMTP server and Alertmanager (and so without notifications).
    pub no_notify: bool,
    /// Keep the cluster running after the summary, until Ctrl-C.
    pub keep: bool,
}

fn elapsed(start: Instant) -> String {
    format!("{:>6.1}s", start.elapsed().as_secs_f64())
}

async fn publish(cp: &ControlPlane, node: &str, kind: FaultKind, failing: bool, message: &str, since: &str) -> Result<()> {
    let (bad, good) = kind.reasons();
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": kind.condition(),
        "status": if failing { "True" } else { "False" },
        "reason": if failing { bad } else { good },
        "message": message,
        "lastTransitionTime": since,
        "lastHeartbeatTime": now,
    }]}});
    Api::<Node>::all(cp.client())
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .with_context(|| format!("publishing {} on {node}", kind.condition()))?;
    Ok(())
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let text = match &args.scenario {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => DEFAULT_SCENARIO.to_string(),
    };
    let scenario = Scenario::parse(&text)?;
    println!("nodemedic demo — scenario `{}`: {} fake GPU nodes in {} pools", scenario.name, scenario.nodes, scenario.pools);
    println!("starting etcd, kube-apiserver and kwok (the first run builds them from Go modules; that takes a while)…");
    let cp = Arc::new(ControlPlane::start(Options { kwok: true, ..Options::default() }).await.context("starting the control plane")?);
    let peers = if args.no_notify {
        None
    } else {
        println!("starting the notification peers: an SMTP server (aiosmtpd) and Alertmanager…");
        Some(crate::demo_peers::Peers::start().context("starting the SMTP server and Alertmanager (or pass --no-notify)")?)
    };
    let result = play(&cp, &scenario, peers.as_ref()).await;
    if args.keep {
        println!("\nthe cluster keeps running; Ctrl-C stops it");
        println!("  KUBECONFIG={} {} get nhp,nrem", cp.kubeconfig().display(), cp.binaries().path("kubectl").display());
        let _ = tokio::signal::ctrl_c().await;
    }
    result
}

async fn play(cp: &Arc<ControlPlane>, scenario: &Scenario, peers: Option<&crate::demo_peers::Peers>) -> Result<()> {
    let client = cp.client();
    nodemedic_controller::install_crds(&client).await.context("installing the CRDs")?;
    let pools = scenario.pools.max(1);
    for i in 0..scenario.nodes {
        cp.create_node(&FakeNode::gpu(&node_name(i), &format!("pool-{}", i % pools), scenario.gpus_per_node))
            .await
            .with_context(|| format!("creating {}", node_name(i)))?;
    }
    let start_stamp = jiff::Timestamp::now().to_string();
    for i in 0..scenario.nodes {
        for kind in [FaultKind::Gpu, FaultKind::Network] {
            publish(cp, &node_name(i), kind, false, "all probes pass", &start_stamp).await?;
        }
    }
    Api::<NodeHealthPolicy>::all(client.clone())
        .create(&PostParams::default(), &NodeHealthPolicy::new("demo", NodeHealthPolicySpec { policy: scenario.policy.clone() }))
        .await
        .context("creating the NodeHealthPolicy")?;

    let exe = std::env::current_exe().context("locating this binary")?;
    let log_dir = std::env::temp_dir().join(format!("nodemedic-demo-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;
    let notifications = log_dir.join("notifications.yaml");
    if let Some(p) = peers {
        std::fs::write(&notifications, p.notifications_yaml())?;
    }
    let spawn_replica = |name: &str| -> Result<Replica> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&exe);
        command.arg("controller");
        if peers.is_some() {
            command.arg("--notifications").arg(&notifications);
        }
        let child = command
            .args(["--identity", name, "--lease-duration", "10", "--listen", "127.0.0.1:0", "--resync", "5", "--log-format", "json"])
            .env("KUBECONFIG", cp.kubeconfig())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a controller replica")?;
        Ok(Replica { name: name.to_string(), child })
    };
    let mut replicas = vec![spawn_replica("controller-a")?, spawn_replica("controller-b")?];
    println!("2 controller replicas running (leader election on Lease default/nodemedic-controller); logs in {}", log_dir.display());
    println!("\n  time   object      reason               what happened");

    let start = Instant::now();
    let state = Arc::new(Mutex::new(FaultState::default()));
    let mut next_fault = 0;
    // Event name → times seen (the recorder folds a repeat into the same Event as a series).
    let mut seen_events: BTreeMap<String, i32> = BTreeMap::new();
    let mut last_table = String::new();
    let mut last_heartbeat = Instant::now();
    let mut breaker_tripped_at: Option<f64> = None;
    let mut breaker_open = false;
    let total = std::time::Duration::from_millis(scenario.duration.0.max(0) as u64);
    let mut agents = tokio::task::JoinSet::new();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "default");
    let mut leader: Option<String> = None;
    let mut killed_leader = false;
    loop {
        let holder = leases.get("nodemedic-controller").await.ok().and_then(|l| l.spec).and_then(|s| s.holder_identity);
        if holder.is_some() && holder != leader {
            println!(
                "{} {:<11} {:<20} holds the lease and writes; the other replica stands by",
                elapsed(start),
                holder.clone().unwrap_or_default(),
                "LeaderElected"
            );
            leader = holder;
        }
        if let (Some(at), false, Some(current)) = (scenario.kill_leader_at, killed_leader, leader.clone())
            && start.elapsed().as_millis() as i64 >= at.0
        {
            if let Some(i) = replicas.iter().position(|r| r.name == current) {
                let mut dead = replicas.remove(i);
                let _ = dead.child.kill();
                let _ = dead.child.wait();
                println!(
                    "{} {:<11} {:<20} SIGKILL: no lease release; the standby takes over when it expires (10 s)",
                    elapsed(start),
                    current,
                    "LeaderKilled"
                );
                replicas.push(spawn_replica("controller-c")?);
            }
            killed_leader = true;
        }
        // The scenario: faults that begin now.
        while let Some(f) = scenario.faults.get(next_fault).filter(|f| start.elapsed().as_millis() as i64 >= f.at.0) {
            for n in &f.nodes {
                state.lock().map_err(|_| anyhow::anyhow!("state lock"))?.active.insert(n.clone(), (next_fault, Instant::now()));
                publish(cp, n, f.kind, true, &f.message, &jiff::Timestamp::now().to_string()).await?;
            }
            println!("{} {:<11} {:<20} {}", elapsed(start), f.nodes.join(","), "FaultInjected", f.message);
            next_fault += 1;
        }
        // Faults that pass by themselves.
        let expired: Vec<(String, usize)> = {
            let st = state.lock().map_err(|_| anyhow::anyhow!("state lock"))?;
            st.active
                .iter()
                .filter(|(_, (i, began))| scenario.faults[*i].recovers_after.is_some_and(|d| began.elapsed().as_millis() as i64 >= d.0))
                .map(|(n, (i, _))| (n.clone(), *i))
                .collect()
        };
        for (n, i) in expired {
            state.lock().map_err(|_| anyhow::anyhow!("state lock"))?.active.remove(&n);
            publish(cp, &n, scenario.faults[i].kind, false, "probe passes again", &jiff::Timestamp::now().to_string()).await?;
            println!("{} {n:<11} FaultCleared         the fault passed by itself; the agent's probe passes", elapsed(start));
        }
        // The controller's decisions, as it published them.
        let mut events = Api::<K8sEvent>::namespaced(client.clone(), "default").list(&ListParams::default()).await?.items;
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        for e in events {
            let Some(name) = e.metadata.name.clone() else { continue };
            let regarding = e.regarding.as_ref();
            let kind = regarding.and_then(|r| r.kind.as_deref()).unwrap_or_default();
            let count = e.series.as_ref().map_or(1, |s| s.count);
            if kind == "NodeRemediation" || seen_events.insert(name, count) == Some(count) {
                continue;
            }
            let again = if count > 1 { format!(" (×{count})") } else { String::new() };
            let object = regarding.and_then(|r| r.name.clone()).unwrap_or_default();
            let reason = e.reason.clone().unwrap_or_default();
            if reason == "BreakerTripped" {
                breaker_open = true;
                breaker_tripped_at.get_or_insert(start.elapsed().as_secs_f64());
            }
            if reason == "BreakerClosed" {
                breaker_open = false;
            }
            println!("{} {:<11} {:<20} {}{again}", elapsed(start), object, reason, e.note.unwrap_or_default());
        }
        // The agents: heartbeats, and the reboots and reimages the records ask for.
        if last_heartbeat.elapsed() > std::time::Duration::from_secs(20) {
            heartbeat(cp, scenario, &state).await?;
            last_heartbeat = Instant::now();
        }
        let records = Api::<NodeRemediation>::all(client.clone()).list(&ListParams::default()).await?.items;
        for r in &records {
            let Some(rec) = r.status.as_ref().map(|s| &s.record) else { continue };
            let Some(active) = rec.active.as_ref() else { continue };
            if !matches!(active.stage, Stage::Executing) || !active.executed {
                continue;
            }
            if !matches!(active.step, RemediationStep::Reboot | RemediationStep::Reimage) {
                continue;
            }
            let key = (rec.node.clone(), rec.attempt);
            if !state.lock().map_err(|_| anyhow::anyhow!("state lock"))?.handled.insert(key) {
                continue;
            }
            let (cp2, state2, scenario2) = (cp.clone(), state.clone(), scenario.clone());
            let (node, attempt, step) = (rec.node.clone(), rec.attempt, active.step);
            println!("{} {:<11} {:<20} agent starts the {step} (attempt {attempt})", elapsed(start), node, "AgentExecuting");
            agents.spawn(async move { agent_repair(&cp2, &scenario2, &state2, &node, attempt, step).await });
        }
        while let Some(done) = agents.try_join_next() {
            match done {
                Ok(Ok(line)) => println!("{} {line}", elapsed(start)),
                Ok(Err(e)) => println!("{} agent error: {e:#}", elapsed(start)),
                Err(e) => println!("{} agent task failed: {e}", elapsed(start)),
            }
        }
        let table = table(&client, &records).await?;
        if table != last_table {
            println!("{table}");
            last_table = table;
        }
        let all_begun = next_fault >= scenario.faults.len();
        let quiet = all_begun
            && state
                .lock()
                .map_err(|_| anyhow::anyhow!("state lock"))?
                .active
                .iter()
                .all(|(_, (i, _))| scenario.faults[*i].recovers_after.is_none());
        if start.elapsed() >= total || (quiet && !breaker_open && settled(scenario, &records, breaker_tripped_at.is_some())) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Give a notification sent in the last pass a moment to arrive before the replicas stop.
    if peers.is_some() {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    drop(replicas);
    summary(cp, scenario, breaker_tripped_at, peers).await
}

/// Every expectation already holds: no reason to wait out the full duration.
fn settled(scenario: &Scenario, records: &[NodeRemediation], breaker_tripped: bool) -> bool {
    let phase = |n: &str| {
        records.iter().find(|r| r.spec.node == n).and_then(|r| r.status.as_ref()).map(|s| (s.record.phase, s.record.active.is_some()))
    };
    scenario.faults.iter().all(|f| {
        f.nodes.iter().all(|n| match f.expect {
            Some(Expect::Recovered) => phase(n).is_none_or(|(p, active)| p == Phase::Healthy && !active),
            Some(Expect::Manual) => phase(n).is_some_and(|(p, _)| p == Phase::Manual),
            Some(Expect::Breaker) => breaker_tripped && phase(n).is_none_or(|(p, active)| p == Phase::Healthy && !active),
            None => true,
        })
    })
}

/// The agents' periodic re-publication of every probe condition (the controller treats a
/// condition whose heartbeat is older than the rule's staleAfter as unknown).
async fn heartbeat(cp: &ControlPlane, scenario: &Scenario, state: &Arc<Mutex<FaultState>>) -> Result<()> {
    let active = state.lock().map_err(|_| anyhow::anyhow!("state lock"))?.active.clone();
    let nodes = Api::<Node>::all(cp.client()).list(&ListParams::default()).await?.items;
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        for kind in [FaultKind::Gpu, FaultKind::Network] {
            let current = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == kind.condition()).cloned());
            let failing = active.get(&name).is_some_and(|(i, _)| scenario.faults[*i].kind == kind);
            let since = current
                .as_ref()
                .filter(|c| (c.status == "True") == failing)
                .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0.to_string()))
                .unwrap_or_else(|| jiff::Timestamp::now().to_string());
            let message = current.and_then(|c| c.message).unwrap_or_default();
            publish(cp, &name, kind, failing, &message, &since).await?;
        }
    }
    Ok(())
}

/// A simulated agent performing a reboot or reimage: the node goes NotReady and comes back with a
/// new boot ID; the probe result afterwards depends on whether this repair fixes the fault.
async fn agent_repair(
    cp: &ControlPlane,
    scenario: &Scenario,
    state: &Arc<Mutex<FaultState>>,
    node: &str,
    attempt: u32,
    step: RemediationStep,
) -> Result<String> {
    let work = if step == RemediationStep::Reimage { 4 } else { 2 };
    tokio::time::sleep(std::time::Duration::from_secs(work)).await;
    let boot_id = cp.simulate_reboot(node).await?;
    let fault = state.lock().map_err(|_| anyhow::anyhow!("state lock"))?.active.get(node).map(|(i, _)| *i);
    let fixed = fault.is_none_or(|i| {
        let f = &scenario.faults[i];
        matches!((f.fixed_by, step), (Some(FixedBy::Reboot), _) | (Some(FixedBy::Reimage), RemediationStep::Reimage))
    });
    let mut outcome = String::new();
    if let Some(i) = fault {
        let f = &scenario.faults[i];
        if fixed {
            state.lock().map_err(|_| anyhow::anyhow!("state lock"))?.active.remove(node);
            publish(cp, node, f.kind, false, "all probes pass after the repair", &jiff::Timestamp::now().to_string()).await?;
            outcome = "; the probe passes now".into();
        } else {
            publish(cp, node, f.kind, true, &f.message, &jiff::Timestamp::now().to_string()).await?;
            outcome = "; the probe still fails".into();
        }
    }
    let at = Time(jiff::Timestamp::now().as_millisecond());
    let message = format!("{step} done, new bootID …{}", &boot_id[boot_id.len().saturating_sub(12)..]);
    report_step(
        &cp.client(),
        field_managers::AGENT,
        node,
        &StepReport { attempt, outcome: ReportedOutcome::Succeeded, at, message: message.clone() },
    )
    .await?;
    Ok(format!("{node:<11} {:<20} {message}{outcome}", "AgentReported"))
}

async fn table(client: &kube::Client, records: &[NodeRemediation]) -> Result<String> {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut rows = Vec::new();
    let mut healthy = 0;
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let taints: Vec<String> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.key.starts_with("nodemedic.io/"))
            .map(|t| t.key.trim_start_matches("nodemedic.io/").to_string())
            .collect();
        let rec = records.iter().find(|r| r.spec.node == name).and_then(|r| r.status.as_ref()).map(|s| &s.record);
        let active = rec.and_then(|r| r.active.as_ref());
        if taints.is_empty() && active.is_none() && rec.is_none_or(|r| r.phase == Phase::Healthy) {
            healthy += 1;
            continue;
        }
        rows.push(format!(
            "    {:<9} {:<12} {:<9} {:<8} {}",
            name,
            rec.map(|r| format!("{:?}", r.phase)).unwrap_or_else(|| "Healthy".into()),
            active.map(|a| a.step.to_string()).unwrap_or_else(|| "-".into()),
            rec.map(|r| r.attempt.to_string()).unwrap_or_else(|| "-".into()),
            if taints.is_empty() { "-".into() } else { taints.join(",") }
        ));
    }
    Ok(format!(
        "  ┌ nodes: {healthy} healthy, {} need attention\n    {:<9} {:<12} {:<9} {:<8} {}\n{}",
        rows.len(),
        "NODE",
        "PHASE",
        "STEP",
        "ATTEMPT",
        "TAINTS",
        rows.join("\n")
    ))
}

async fn summary(
    cp: &ControlPlane,
    scenario: &Scenario,
    breaker_tripped_at: Option<f64>,
    peers: Option<&crate::demo_peers::Peers>,
) -> Result<()> {
    let client = cp.client();
    let records = Api::<NodeRemediation>::all(client.clone()).list(&ListParams::default()).await?.items;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let policy = Api::<NodeHealthPolicy>::all(client.clone()).get("demo").await?;
    println!("\n== summary of scenario `{}`", scenario.name);
    if let Some(st) = &policy.status {
        println!(
            "policy demo: {} selected, {} healthy, {} remediating, {} manual; circuit breaker {}",
            st.selected,
            st.healthy,
            st.remediating,
            st.manual,
            if breaker_tripped_at.is_some() { "tripped during the run" } else { "never tripped" }
        );
    }
    let mut failed = 0;
    for f in &scenario.faults {
        for n in &f.nodes {
            let rec = records.iter().find(|r| r.spec.node == *n).and_then(|r| r.status.as_ref()).map(|s| &s.record);
            let steps: Vec<String> =
                rec.map(|r| r.history.iter().map(|h| format!("{}→{:?}", h.step, h.outcome).to_lowercase()).collect()).unwrap_or_default();
            let phase = rec.map(|r| r.phase).unwrap_or(Phase::Healthy);
            let manual_taint = nodes.iter().any(|node| {
                node.metadata.name.as_deref() == Some(n.as_str())
                    && node
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.key.ends_with("repair-manual")))
            });
            let in_flight = rec.is_some_and(|r| r.active.is_some());
            let ok = match f.expect {
                Some(Expect::Recovered) => phase == Phase::Healthy && !in_flight,
                Some(Expect::Manual) => phase == Phase::Manual && manual_taint,
                Some(Expect::Breaker) => breaker_tripped_at.is_some() && phase == Phase::Healthy && !in_flight,
                None => true,
            };
            failed += usize::from(!ok);
            println!(
                "  {} {:<9} {:<8} expected {:<10} ended {:<12} steps: {}",
                if ok { "✓" } else { "✗" },
                n,
                format!("{:?}", f.kind).to_lowercase(),
                f.expect.map(|e| format!("{e:?}").to_lowercase()).unwrap_or_else(|| "-".into()),
                format!("{phase:?}"),
                if steps.is_empty() { "none".into() } else { steps.join(", ") }
            );
        }
    }
    if let Some(p) = peers {
        let mails = p.mails();
        let alerts = p.alerts().unwrap_or_default();
        println!("\nnotifications — {} email(s) at the SMTP server, {} alert(s) active in Alertmanager:", mails.len(), alerts.len());
        for m in &mails {
            println!("  email to {}: {}", m.to.join(", "), m.subject);
        }
        for (name, node, summary) in &alerts {
            println!("  alert {name}{}: {summary}", if node.is_empty() { String::new() } else { format!(" node={node}") });
        }
        // A node left to a person must have told people: an email naming it, with its attempts, and an alert.
        for f in scenario.faults.iter().filter(|f| f.expect == Some(Expect::Manual)) {
            for n in &f.nodes {
                let mailed = mails.iter().any(|m| m.subject.contains(n.as_str()) && m.text.contains("reimage"));
                let alerted = alerts.iter().any(|(name, node, _)| node == n && name == "NodemedicNodeManual");
                println!(
                    "  {} {n}: email with its attempts {}, alert NodemedicNodeManual {}",
                    if mailed && alerted { "✓" } else { "✗" },
                    if mailed { "received" } else { "MISSING" },
                    if alerted { "firing" } else { "MISSING" }
                );
                failed += usize::from(!(mailed && alerted));
            }
        }
    }
    match cp.kubectl(&["get", "nodehealthpolicies,noderemediations", "-o", "wide"]) {
        Ok(out) => println!("\n$ kubectl get nodehealthpolicies,noderemediations -o wide\n{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => println!("(kubectl: {e})"),
    }
    println!(
        "inspect while it runs with --keep:  KUBECONFIG={} {} get nhp,nrem",
        cp.kubeconfig().display(),
        cp.binaries().path("kubectl").display()
    );
    if failed > 0 {
        bail!("{failed} node(s) did not end as the scenario expects");
    }
    println!("every node ended as the scenario expects");
    Ok(())
}
