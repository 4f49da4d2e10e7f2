//! `nodemedic demo`: a local control plane with kwok GPU nodes, two controller replicas (child
//! processes of this binary, monitor-only off), and simulated node agents that publish probe
//! conditions and perform fake reboots and reimages (a new bootID through the test environment).
//! It plays a scenario file, prints a timeline of the controller's decisions (its Kubernetes
//! Events, with reasons) and a table of the nodes that are not healthy, and ends with a summary
//! that checks each fault's expected outcome.

use crate::demo_agent::{agent_repair, heartbeat, publish};
use crate::demo_chaos::{Chaos, Strike};
use crate::demo_judge::{Asks, judge};
use crate::demo_summary::{summary, table};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, PostParams};
use nodemedic_core::RemediationStep;
use nodemedic_core::record::Stage;
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, FakeNode, Options};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub const DEFAULT_SCENARIO: &str = include_str!("../../../examples/demo-scenario.yaml");
/// What `--chaos` plays unless a scenario is given: many faults, some nodes hit twice.
pub const CHAOS_SCENARIO: &str = include_str!("../../../examples/chaos-scenario.yaml");

pub use nodemedic::scenario::{Expect, Fault, FixedBy, Probe, Scenario, StatefulWorkload, Workload, node_name};

/// What the simulated agents know: which nodes are faulty, and since when.
#[derive(Default)]
pub(crate) struct FaultState {
    /// node → (fault index, began at)
    pub(crate) active: BTreeMap<String, (usize, Instant)>,
    /// (node, attempt) handled, so a step is performed once.
    pub(crate) handled: BTreeSet<(String, u32)>,
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
    /// Strike at random moments with this seed (see [`crate::demo_chaos`]).
    pub chaos: Option<u64>,
}

fn elapsed(start: Instant) -> String {
    format!("{:>6.1}s", start.elapsed().as_secs_f64())
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let text = match &args.scenario {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None if args.chaos.is_some() => CHAOS_SCENARIO.to_string(),
        None => DEFAULT_SCENARIO.to_string(),
    };
    let scenario = Scenario::parse(&text)?;
    println!("nodemedic demo — scenario `{}`: {} fake GPU nodes in {} pools", scenario.name, scenario.nodes, scenario.pools);
    println!("starting etcd, kube-apiserver and kwok (the first run builds them from Go modules; that takes a while)…");
    // kube-controller-manager keeps the PodDisruptionBudgets' status, which the Eviction API reads,
    // and marks a dead node Unknown; with kube-scheduler it moves a fenced node's StatefulSet pods.
    let dead = scenario.dead_nodes();
    let scheduler = !scenario.stateful_sets.is_empty();
    let controller_manager = !scenario.workloads.is_empty() || !dead.is_empty() || scheduler;
    if controller_manager {
        println!(
            "(and kube-controller-manager{}: the disruption controller guards the scenario's workloads; node lifecycle, pod GC, attach-detach and StatefulSet controllers act on a dead node)",
            if scheduler { " and kube-scheduler" } else { "" }
        );
    }
    let cp = Arc::new(
        ControlPlane::start(Options { kwok: true, controller_manager, scheduler, ..Options::default() })
            .await
            .context("starting the control plane")?,
    );
    let bmc = if dead.is_empty() {
        None
    } else {
        let names: Vec<&str> = dead.iter().copied().collect();
        println!("starting the BMC of {}: the Redfish emulator sushy-tools, over HTTPS with basic auth…", names.join(", "));
        Some(crate::demo_bmc::Bmc::start(&names).context("starting sushy-tools (scripts/bmc-peers/setup installs it)")?)
    };
    let peers = if args.no_notify {
        None
    } else {
        println!("starting the notification peers: an SMTP server (aiosmtpd) and Alertmanager…");
        Some(crate::demo_peers::Peers::start().context("starting the SMTP server and Alertmanager (or pass --no-notify)")?)
    };
    if let Some(seed) = args.chaos {
        println!("chaos (seed {seed}): the leader is SIGKILLed, the API server paused and restarted at random moments");
    }
    let result = play(&cp, &scenario, Peers { notify: peers.as_ref(), bmc: bmc.as_ref() }, args.chaos).await;
    if args.keep {
        println!("\nthe cluster keeps running; Ctrl-C stops it");
        println!("  KUBECONFIG={} {} get nhp,nrem", cp.kubeconfig().display(), cp.binaries().path("kubectl").display());
        let _ = tokio::signal::ctrl_c().await;
    }
    result
}

/// The controller replicas, child processes of this binary.
struct Replicas {
    exe: PathBuf,
    log_dir: PathBuf,
    kubeconfig: PathBuf,
    notifications: Option<PathBuf>,
    executors: PathBuf,
    running: Vec<Replica>,
    started: usize,
}

impl Replicas {
    fn spawn(&mut self) -> Result<()> {
        let name = format!("controller-{}", (b'a' + (self.started % 26) as u8) as char);
        let name = if self.started >= 26 { format!("{name}{}", self.started / 26) } else { name };
        self.started += 1;
        let log = std::fs::File::create(self.log_dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&self.exe);
        command.arg("controller").arg("--executors").arg(&self.executors);
        if let Some(n) = &self.notifications {
            command.arg("--notifications").arg(n);
        }
        let child = command
            .args(["--identity", &name, "--lease-duration", "10", "--listen", "127.0.0.1:0", "--resync", "5", "--log-format", "json"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a controller replica")?;
        self.running.push(Replica { name, child });
        Ok(())
    }

    /// SIGKILL (no lease release) the replica named `leader`, and start a replacement.
    fn kill(&mut self, leader: &str) -> Result<bool> {
        let Some(i) = self.running.iter().position(|r| r.name == leader) else { return Ok(false) };
        let mut dead = self.running.remove(i);
        let _ = dead.child.kill();
        let _ = dead.child.wait();
        self.spawn()?;
        Ok(true)
    }
}

/// The NodeHealthPolicy made from the scenario's `fencingPolicy`.
pub const FENCING_POLICY: &str = "demo-fencing";

/// The executors file the demo's replicas run with (a `power:` section follows when nodes have a BMC).
const EXECUTORS: &str = "drain: {backoff: 500ms, maxBackoff: 2s}\nsteps:\n  replace: {provider: {clusterApi: {}}}\n";

/// What the demo saw happen that the summary judges with the cluster's state at the end.
#[derive(Default)]
pub struct Ends {
    /// Old node → the node that joined for its new Machine.
    pub replacements: BTreeMap<String, String>,
    /// Node → the note of the controller's DrainHeld Event.
    pub held: BTreeMap<String, String>,
    /// Node → when the demo relaxed the budget of the workload on it.
    pub relaxed: BTreeMap<String, nodemedic_core::Time>,
}

pub(crate) fn lock(state: &Mutex<FaultState>) -> Result<std::sync::MutexGuard<'_, FaultState>> {
    state.lock().map_err(|_| anyhow::anyhow!("state lock"))
}

/// Everything the demo loop keeps between ticks.
struct Play<'a> {
    cp: &'a Arc<ControlPlane>,
    scenario: &'a Scenario,
    start: Instant,
    state: Arc<Mutex<FaultState>>,
    replicas: Replicas,
    next_fault: usize,
    /// Event name → times seen (the recorder folds a repeat into the same Event as a series).
    seen_events: BTreeMap<String, i32>,
    last_table: String,
    last_heartbeat: Instant,
    breaker_tripped_at: Option<f64>,
    breaker_open: bool,
    leader: Option<String>,
    killed_leader: bool,
    agents: tokio::task::JoinSet<Result<String>>,
    /// The reboots and reimages the agents were asked for (the chaos count of duplicates).
    asks: Asks,
    /// The demo as the MachineSet controller of the scenario's `machines`.
    machine_set: crate::demo_workloads::MachineSet,
    /// Node → when the controller said its drain is held, and what it said.
    held: BTreeMap<String, (Instant, String)>,
    /// Node → when the demo relaxed the budget of the workload on it.
    relaxed: BTreeMap<String, nodemedic_core::Time>,
    /// The dead nodes' BMC, and what the demo saw through it.
    bmc: Option<&'a crate::demo_bmc::Bmc>,
    power: crate::demo_bmc::PowerWatch,
    /// StatefulSet pods already told as running away from their node.
    moved: BTreeSet<String>,
}

/// The demo's peers: the notification peers (unless `--no-notify`) and the BMC of the dead nodes.
#[derive(Clone, Copy)]
struct Peers<'p> {
    notify: Option<&'p crate::demo_peers::Peers>,
    bmc: Option<&'p crate::demo_bmc::Bmc>,
}

/// The fleet with every probe passing, the CRDs and the policies.
async fn prepare(cp: &ControlPlane, scenario: &Scenario, bmc: Option<&crate::demo_bmc::Bmc>) -> Result<()> {
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
        for kind in Probe::ALL {
            publish(cp, &node_name(i), kind, false, "all probes pass", &start_stamp).await?;
        }
    }
    crate::demo_workloads::install_machine_crd(cp).await?;
    crate::demo_workloads::create_workloads(cp, scenario).await?;
    crate::demo_stateful::create_stateful_sets(cp, scenario).await?;
    if let Some(bmc) = bmc {
        bmc.create_secrets(cp).await?;
        let label = serde_json::json!({"metadata": {"labels": {crate::demo_bmc::BMC_LABEL: "redfish"}}});
        for n in scenario.dead_nodes() {
            Api::<Node>::all(client.clone()).patch(n, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label)).await?;
        }
    }
    let policies = Api::<NodeHealthPolicy>::all(client.clone());
    policies
        .create(&PostParams::default(), &NodeHealthPolicy::new("demo", NodeHealthPolicySpec { policy: scenario.policy.clone() }))
        .await
        .context("creating the NodeHealthPolicy")?;
    if let Some(policy) = &scenario.fencing_policy {
        policies
            .create(&PostParams::default(), &NodeHealthPolicy::new(FENCING_POLICY, NodeHealthPolicySpec { policy: policy.clone() }))
            .await
            .context("creating the fencing NodeHealthPolicy")?;
    }

    Ok(())
}

async fn play(cp: &Arc<ControlPlane>, scenario: &Scenario, all_peers: Peers<'_>, chaos_seed: Option<u64>) -> Result<()> {
    let peers = all_peers.notify;
    prepare(cp, scenario, all_peers.bmc).await?;
    let log_dir = std::env::temp_dir().join(format!("nodemedic-demo-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;
    let notifications = log_dir.join("notifications.yaml");
    if let Some(p) = peers {
        std::fs::write(&notifications, p.notifications_yaml())?;
    }
    // Drains paced for a demo; the replace step goes to Cluster API (delete the node's Machine).
    let executors = log_dir.join("executors.yaml");
    let power = match all_peers.bmc {
        // YAML takes JSON: the power executor's section as the controller's own type writes it.
        Some(bmc) => format!("power: {}\n", serde_json::to_string(&bmc.power_config()?)?),
        None => String::new(),
    };
    std::fs::write(&executors, format!("{EXECUTORS}{power}"))?;
    let machine_set = crate::demo_workloads::MachineSet::start(cp, scenario).await?;
    let mut replicas = Replicas {
        exe: std::env::current_exe().context("locating this binary")?,
        log_dir: log_dir.clone(),
        kubeconfig: cp.kubeconfig().to_path_buf(),
        notifications: peers.map(|_| notifications),
        executors,
        running: Vec::new(),
        started: 0,
    };
    replicas.spawn()?;
    replicas.spawn()?;
    println!("2 controller replicas running (leader election on Lease default/nodemedic-controller); logs in {}", log_dir.display());
    println!("\n  time   object      reason               what happened");

    let start = Instant::now();
    let mut play = Play {
        cp,
        scenario,
        start,
        state: Arc::new(Mutex::new(FaultState::default())),
        replicas,
        next_fault: 0,
        seen_events: BTreeMap::new(),
        last_table: String::new(),
        last_heartbeat: Instant::now(),
        breaker_tripped_at: None,
        breaker_open: false,
        leader: None,
        killed_leader: false,
        agents: tokio::task::JoinSet::new(),
        asks: Asks::new(),
        machine_set,
        held: BTreeMap::new(),
        relaxed: BTreeMap::new(),
        bmc: all_peers.bmc,
        power: crate::demo_bmc::PowerWatch::default(),
        moved: BTreeSet::new(),
    };
    let total = std::time::Duration::from_millis(scenario.duration.0.max(0) as u64);
    let mut chaos = chaos_seed.map(|seed| Chaos::new(seed, start));
    // Strikes stop a while after the last fault began, so that the repairs can finish.
    let last_fault = scenario.faults.iter().map(|f| f.at.0.max(0) as u64).max().unwrap_or(0);
    let strikes_until = start + std::time::Duration::from_millis(last_fault) + std::time::Duration::from_secs(45);
    loop {
        if let Some(c) = chaos.as_mut()
            && Instant::now() < strikes_until
            && let Some(strike) = c.due(Instant::now())
        {
            play.strike(strike).await;
        }
        let calm = chaos.is_none() || Instant::now() >= strikes_until;
        match play.tick().await {
            Ok(settled) if settled && calm => break,
            Ok(_) => {}
            // The API server may be away (a restart): the demo and its replicas carry on.
            Err(e) => println!("{} {:<11} {:<20} {e:#}; carrying on", elapsed(start), "-", "ApiUnavailable"),
        }
        if start.elapsed() >= total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Give a notification sent in the last pass a moment to arrive before the replicas stop.
    if peers.is_some() {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    let (breaker_tripped_at, asks) = (play.breaker_tripped_at, std::mem::take(&mut play.asks));
    let ends = Ends {
        replacements: std::mem::take(&mut play.machine_set.replacements),
        held: play.held.iter().map(|(n, (_, note))| (n.clone(), note.clone())).collect(),
        relaxed: std::mem::take(&mut play.relaxed),
    };
    drop(play);
    summary(cp, scenario, breaker_tripped_at, peers, chaos.as_ref().map(|c| (c, &asks)), &ends).await
}

impl Play<'_> {
    fn line(&self, object: &str, reason: &str, what: impl std::fmt::Display) {
        println!("{} {object:<11} {reason:<20} {what}", elapsed(self.start));
    }

    async fn strike(&mut self, strike: Strike) {
        match strike {
            Strike::KillLeader => {
                let Some(current) = self.leader.clone() else { return };
                match self.replicas.kill(&current) {
                    Ok(true) => self.line(&current, "ChaosLeaderKilled", "SIGKILL at a random moment; a replacement replica starts"),
                    Ok(false) => {}
                    Err(e) => self.line(&current, "ChaosLeaderKilled", format!("could not start a replacement: {e:#}")),
                }
            }
            Strike::PauseApiServer(d) => {
                self.line("apiserver", "ChaosPaused", format!("SIGSTOP for {:.1}s", d.as_secs_f64()));
                let paused = self.cp.pause_api_server();
                tokio::time::sleep(d).await;
                let resumed = self.cp.resume_api_server();
                if let Err(e) = paused.and(resumed) {
                    self.line("apiserver", "ChaosPaused", format!("signal failed: {e}"));
                }
            }
            Strike::RestartApiServer(d) => {
                self.line(
                    "apiserver",
                    "ChaosRestarted",
                    format!("killed, down {:.1}s, started again on the same port and data", d.as_secs_f64()),
                );
                if let Err(e) = self.cp.restart_api_server(d).await {
                    self.line("apiserver", "ChaosRestarted", format!("restart failed: {e}"));
                }
            }
        }
    }

    /// One look at the cluster: faults that begin or pass, the controller's Events, the agents'
    /// work, the table. True once every expectation holds on the cluster as it is now.
    async fn tick(&mut self) -> Result<bool> {
        let (cp, scenario, start) = (self.cp, self.scenario, self.start);
        let client = cp.client();
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "default");
        let holder = leases.get("nodemedic-controller").await.ok().and_then(|l| l.spec).and_then(|s| s.holder_identity);
        if holder.is_some() && holder != self.leader {
            self.line(holder.as_deref().unwrap_or_default(), "LeaderElected", "holds the lease and writes; the other replica stands by");
            self.leader = holder;
        }
        if let (Some(at), false, Some(current)) = (scenario.kill_leader_at, self.killed_leader, self.leader.clone())
            && start.elapsed().as_millis() as i64 >= at.0
        {
            if self.replicas.kill(&current)? {
                self.line(&current, "LeaderKilled", "SIGKILL: no lease release; the standby takes over when it expires (10 s)");
            }
            self.killed_leader = true;
        }
        // The scenario: faults that begin now (published before they count as begun, so a fault
        // the API server could not take is tried again on the next tick).
        while let Some(f) = scenario.faults.get(self.next_fault).filter(|f| start.elapsed().as_millis() as i64 >= f.at.0) {
            for n in &f.nodes {
                match f.kind.probe() {
                    Some(probe) => publish(cp, n, probe, true, &f.message, &jiff::Timestamp::now().to_string()).await?,
                    // Its kubelet and agent stop: the node lifecycle controller marks it Unknown.
                    None => cp.stop_heartbeat(n).await?,
                }
            }
            for n in &f.nodes {
                lock(&self.state)?.active.insert(n.clone(), (self.next_fault, Instant::now()));
            }
            self.line(&f.nodes.join(","), "FaultInjected", &f.message);
            self.next_fault += 1;
        }
        // Faults that pass by themselves.
        let expired: Vec<(String, usize)> = lock(&self.state)?
            .active
            .iter()
            .filter(|(_, (i, began))| scenario.faults[*i].recovers_after.is_some_and(|d| began.elapsed().as_millis() as i64 >= d.0))
            .map(|(n, (i, _))| (n.clone(), *i))
            .collect();
        for (n, i) in expired {
            if let Some(probe) = scenario.faults[i].kind.probe() {
                publish(cp, &n, probe, false, "probe passes again", &jiff::Timestamp::now().to_string()).await?;
            }
            lock(&self.state)?.active.remove(&n);
            self.line(&n, "FaultCleared", "the fault passed by itself; the agent's probe passes");
        }
        self.print_events(&client).await?;
        self.relax_budgets().await?;
        crate::demo_stateful::attach(cp).await;
        let stateful = crate::demo_stateful::ends(cp, scenario).await?;
        self.power_on_the_dead(&stateful).await?;
        for (old, new) in self.machine_set.reconcile(cp).await? {
            lock(&self.state)?.active.remove(&old);
            self.line(
                &old,
                "MachineReplaced",
                format!("its Machine was deleted: the MachineSet deletes {old} and a new Machine's node {new} joins"),
            );
        }
        // The agents: heartbeats, and the reboots and reimages the records ask for.
        if self.last_heartbeat.elapsed() > std::time::Duration::from_secs(20) {
            heartbeat(cp, scenario, &self.state).await?;
            self.last_heartbeat = Instant::now();
        }
        let records = Api::<NodeRemediation>::all(client.clone()).list(&ListParams::default()).await?.items;
        self.start_agents(&records)?;
        while let Some(done) = self.agents.try_join_next() {
            match done {
                Ok(Ok(line)) => println!("{} {line}", elapsed(start)),
                Ok(Err(e)) => println!("{} agent error: {e:#}", elapsed(start)),
                Err(e) => println!("{} agent task failed: {e}", elapsed(start)),
            }
        }
        let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
        let table = table(&nodes, &records);
        if table != self.last_table {
            println!("{table}");
            self.last_table = table;
        }
        let all_begun = self.next_fault >= scenario.faults.len();
        let quiet = all_begun && lock(&self.state)?.active.iter().all(|(_, (i, _))| scenario.faults[*i].recovers_after.is_none());
        let replacements = &self.machine_set.replacements;
        let expected = judge(scenario, &records, &nodes, self.breaker_tripped_at.is_some(), replacements, &stateful).iter().all(|v| v.ok);
        Ok(quiet && !self.breaker_open && self.agents.is_empty() && expected)
    }

    /// The controller's decisions, as it published them.
    async fn print_events(&mut self, client: &kube::Client) -> Result<()> {
        let mut events = Api::<K8sEvent>::namespaced(client.clone(), "default").list(&ListParams::default()).await?.items;
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        for e in events {
            let Some(name) = e.metadata.name.clone() else { continue };
            let regarding = e.regarding.as_ref();
            let kind = regarding.and_then(|r| r.kind.as_deref()).unwrap_or_default();
            let count = e.series.as_ref().map_or(1, |s| s.count);
            // Only the controller's decisions (kube-controller-manager, when it runs, registers nodes too).
            let ours = e.reporting_controller.as_deref().is_none_or(|c| c.starts_with("nodemedic"));
            if kind == "NodeRemediation" || !ours || self.seen_events.insert(name, count) == Some(count) {
                continue;
            }
            let again = if count > 1 { format!(" (×{count})") } else { String::new() };
            let object = regarding.and_then(|r| r.name.clone()).unwrap_or_default();
            let reason = e.reason.clone().unwrap_or_default();
            if reason == "BreakerTripped" {
                self.breaker_open = true;
                self.breaker_tripped_at.get_or_insert(self.start.elapsed().as_secs_f64());
            }
            if reason == "BreakerClosed" {
                self.breaker_open = false;
            }
            if reason == "DrainHeld" {
                self.held.entry(object.clone()).or_insert_with(|| (Instant::now(), e.note.clone().unwrap_or_default()));
            }
            self.line(&object, &reason, format!("{}{again}", e.note.unwrap_or_default()));
        }
        Ok(())
    }

    /// The dead nodes through their BMC: told when it says Off, powered on by a person once their
    /// StatefulSet pods run elsewhere ([`crate::demo_bmc::PowerWatch`]).
    async fn power_on_the_dead(&mut self, stateful: &[crate::demo_stateful::StatefulEnd]) -> Result<()> {
        let Some(bmc) = self.bmc else { return Ok(()) };
        for s in stateful {
            // Told once it runs elsewhere with its volume attached there and nowhere else.
            let away = s.running_on.as_ref().filter(|n| **n != s.home && s.attached_to == [n.to_string()]);
            if let Some(node) = away.filter(|_| !self.moved.contains(&s.name)) {
                self.moved.insert(s.name.clone());
                self.line(&s.home, "StatefulPodMoved", format!("{}-0 Running on {node}, its volume attached there only", s.name));
            }
        }
        let down: BTreeMap<String, bool> = lock(&self.state)?
            .active
            .iter()
            .filter(|(_, (i, _))| self.scenario.faults[*i].kind.probe().is_none())
            .map(|(n, _)| {
                let moved = stateful.iter().filter(|s| &s.home == n).all(|s| s.running_on.as_ref().is_some_and(|o| o != n));
                (n.clone(), moved)
            })
            .collect();
        let (lines, back) = self.power.look(bmc, self.cp, &down).await?;
        for (node, reason, text) in lines {
            self.line(&node, reason, text);
        }
        for n in back {
            lock(&self.state)?.active.remove(&n);
        }
        Ok(())
    }

    /// The workload's owner relaxes its budget `relaxAfterHeld` after the controller held its drain.
    async fn relax_budgets(&mut self) -> Result<()> {
        for w in &self.scenario.workloads {
            let due = self.held.get(&w.node).is_some_and(|(at, _)| at.elapsed().as_millis() as i64 >= w.relax_after_held.0);
            if !due || self.relaxed.contains_key(&w.node) {
                continue;
            }
            crate::demo_workloads::relax(self.cp, w).await?;
            self.relaxed.insert(w.node.clone(), nodemedic_core::Time(jiff::Timestamp::now().as_millisecond()));
            let budget = crate::demo_workloads::budget_name(w);
            self.line(&w.node, "BudgetRelaxed", format!("the owner of {} sets {budget} to minAvailable 0: its pods may leave", w.name));
        }
        Ok(())
    }

    /// Hands each reboot or reimage a record asks for to a simulated agent, once per attempt.
    fn start_agents(&mut self, records: &[NodeRemediation]) -> Result<()> {
        for r in records {
            let Some(rec) = r.status.as_ref().map(|s| &s.record) else { continue };
            let Some(active) = rec.active.as_ref() else { continue };
            if !matches!(active.stage, Stage::Executing) || !active.executed {
                continue;
            }
            if !matches!(active.step, RemediationStep::Reboot | RemediationStep::Reimage) {
                continue;
            }
            self.asks.entry((rec.node.clone(), active.started_at, active.step)).or_default().insert(rec.attempt);
            if !lock(&self.state)?.handled.insert((rec.node.clone(), rec.attempt)) {
                continue;
            }
            let (cp, state, scenario) = (self.cp.clone(), self.state.clone(), self.scenario.clone());
            let (node, attempt, step) = (rec.node.clone(), rec.attempt, active.step);
            self.line(&node, "AgentExecuting", format!("agent starts the {step} (attempt {attempt})"));
            self.agents.spawn(async move { agent_repair(&cp, &scenario, &state, &node, attempt, step).await });
        }
        Ok(())
    }
}
