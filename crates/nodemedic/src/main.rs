//! The `nodemedic` command line. It owns argument parsing, file reading and printing only; every
//! decision comes from nodemedic-core and every simulation from nodemedic-sim. It must not hold
//! remediation logic of its own (no gate, rule or ladder decision is made here), and it is the only
//! crate besides the other binaries that picks the k8s-openapi version feature.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nodemedic_core::{Policy, Records, Time, decide};
use simulate_cmd::load_policy;
use std::path::PathBuf;

// The system allocator (glibc) on purpose: with mimalloc the controller kept as much or more
// resident at 2,000 nodes and gave nothing back either (scripts/scale-bench, docs/benchmarks.md).

mod action_cmd;
mod controller_cmd;
mod demo;
mod demo_agent;
mod demo_bmc;
mod demo_chaos;
mod demo_judge;
mod demo_peers;
mod demo_stateful;
mod demo_summary;
mod demo_workloads;
mod fleet_page;
mod medic_cmd;
mod operator_cmd;
mod simulate_cmd;

#[derive(Parser)]
#[command(name = "nodemedic", version, about = "Keeps Kubernetes GPU clusters healthy: detect, quarantine, repair, escalate — safely.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a GPU fleet over weeks of published fault data and report what a policy costs.
    Simulate(simulate_cmd::SimulateArgs),
    /// Check a policy file and print every problem, each naming its field.
    Validate { policy: PathBuf },
    /// Preview the decision a policy makes for a snapshot of nodes (JSON list of observations).
    Plan {
        /// Policy file (YAML or JSON) or a built-in preset name.
        #[arg(long)]
        policy: String,
        /// JSON array of node observations.
        #[arg(long)]
        nodes: PathBuf,
        /// JSON records (as the controller stores them); none if omitted.
        #[arg(long)]
        records: Option<PathBuf>,
        /// Decide as of this RFC 3339 time (default: now).
        #[arg(long)]
        at: Option<String>,
    },
    /// Print a built-in policy as YAML (nodemedic, seed000, seed003, seed004, seed003-unbounded, seed004-npd, nodemedic-noclass).
    Preset { name: String },
    /// Print the NodeHealthPolicy and NodeRemediation CRDs (for `kubectl apply -f -`).
    Crds,
    /// Play a scenario on a local control plane: kwok GPU nodes, two controller replicas, simulated
    /// node agents; prints the controller's decisions as they happen and checks the outcome.
    Demo {
        /// Scenario file (YAML; see docs/demo.md). Default: examples/demo-scenario.yaml, built in.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Keep the cluster running after the summary (for kubectl), until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Without the SMTP server and Alertmanager the controllers notify (installed on first use).
        #[arg(long)]
        no_notify: bool,
        /// Strike at random moments: SIGKILL the leader, pause and restart the API server; the
        /// summary counts duplicate disruptive actions, lost remediations and unexplained taints
        /// (all must be 0). Plays examples/chaos-scenario.yaml unless --scenario is given.
        #[arg(long)]
        chaos: bool,
        /// The chaos seed (default: from the clock; printed, so a run can be repeated).
        #[arg(long, requires = "chaos")]
        seed: Option<u64>,
    },
    /// Ask the actions API (served by the controller with --api-listen) to act on a node pool or a node.
    Action(action_cmd::ActionArgs),
    /// Run the controller (one replica; run two or more with leader election).
    Controller(controller_cmd::ControllerArgs),
    #[command(flatten)]
    Operator(operator_cmd::OperatorCommand),
    /// Start a local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    /// kwok) with fake GPU nodes for use with kubectl; stops on Ctrl-C or SIGTERM.
    DevCluster {
        /// Fake GPU nodes to create.
        #[arg(long, default_value_t = 16)]
        nodes: usize,
        #[arg(long, default_value_t = 8)]
        gpus_per_node: u32,
        /// Node pools to spread the nodes over.
        #[arg(long, default_value_t = 2)]
        pools: usize,
    },
}

async fn dev_cluster(nodes: usize, gpus: u32, pools: usize) -> Result<()> {
    use nodemedic_testenv::{ControlPlane, FakeNode, Options};
    eprintln!("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok…");
    let cp = ControlPlane::start(Options::full()).await.context("starting the control plane")?;
    let pools = pools.max(1);
    for i in 0..nodes {
        let pool = format!("pool-{}", i % pools);
        cp.create_node(&FakeNode::gpu(&format!("gpu-{i:03}"), &pool, gpus)).await.with_context(|| format!("creating node gpu-{i:03}"))?;
    }
    println!("kubeconfig: {}", cp.kubeconfig().display());
    println!("kubectl:    {}", cp.binaries().path("kubectl").display());
    println!("server:     {}", cp.server());
    println!("nodes:      {nodes} fake GPU nodes ({gpus} GPUs each) in {pools} pool(s), run by kwok");
    println!(
        "try:        KUBECONFIG={} {} get nodes -L cloud.google.com/gke-nodepool,nvidia.com/gpu.count",
        cp.kubeconfig().display(),
        cp.binaries().path("kubectl").display()
    );
    println!("ready; Ctrl-C stops the cluster and deletes its files");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping the control plane");
    drop(cp);
    Ok(())
}

fn main() -> Result<()> {
    if medic_cmd::invoked_as_plugin() {
        return medic_cmd::main();
    }
    match Cli::parse().command {
        Command::DevCluster { nodes, gpus_per_node, pools } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(dev_cluster(nodes, gpus_per_node, pools)),
        Command::Controller(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(controller_cmd::controller(args)),
        Command::Demo { scenario, keep, no_notify, chaos, seed } => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?.block_on(demo::demo(
                demo::DemoArgs { scenario, no_notify, keep, chaos: chaos.then(|| seed.unwrap_or_else(demo_chaos::seed_from_clock)) },
            ))
        }
        Command::Operator(cmd) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(operator_cmd::run(cmd)),
        Command::Action(args) => action_cmd::action(args),
        Command::Simulate(args) => simulate_cmd::run_simulate(args),
        Command::Validate { policy } => {
            let text = std::fs::read_to_string(&policy).with_context(|| format!("reading {}", policy.display()))?;
            let parsed = if policy.extension().is_some_and(|e| e == "json") { Policy::from_json(&text) } else { Policy::from_yaml(&text) };
            match parsed {
                Ok(_) => {
                    println!("{}: valid", policy.display());
                    Ok(())
                }
                Err(e) => bail!("{}: {e}", policy.display()),
            }
        }
        Command::Plan { policy, nodes, records, at } => {
            let (_, policy) = load_policy(&policy)?;
            let text = std::fs::read_to_string(&nodes).with_context(|| format!("reading {}", nodes.display()))?;
            let fleet: Vec<nodemedic_core::NodeObservation> = nodemedic_core::input::from_json_str(&text)
                .with_context(|| format!("{} is not a JSON list of node observations", nodes.display()))?;
            let records: Records = match records {
                Some(p) => {
                    nodemedic_core::input::from_json_str(&std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?)
                        .with_context(|| format!("{} is not a records document", p.display()))?
                }
                None => Records::default(),
            };
            let now = match at {
                Some(s) => Time::parse_rfc3339(&s).map_err(|e| anyhow::anyhow!("--at: {e}"))?,
                None => Time(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)),
            };
            let d = decide(&policy, &fleet, &records, now);
            println!("{}", serde_json::to_string_pretty(&d)?);
            Ok(())
        }
        Command::Crds => {
            print!("{}", nodemedic_k8s::crds_yaml().map_err(|e| anyhow::anyhow!("rendering the CRDs: {e}"))?);
            Ok(())
        }
        Command::Preset { name } => {
            let p = nodemedic_sim::baselines::by_name(&name).with_context(|| format!("no preset `{name}`"))?;
            print!("{}", serde_saphyr::to_string(&p).context("rendering the preset")?);
            Ok(())
        }
    }
}
