//! The `nodemedic` command line. It owns argument parsing, file reading and printing only; every
//! decision comes from nodemedic-core and every simulation from nodemedic-sim. It must not hold
//! remediation logic of its own (no gate, rule or ladder decision is made here), and it is the only
//! crate besides the other binaries that picks the k8s-openapi version feature.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nodemedic_core::{Policy, Records, Time, decide, presets};
use nodemedic_sim::faults::{FleetSpec, MS_PER_DAY};
use nodemedic_sim::progress::{progress_line, shows_progress};
use nodemedic_sim::sim::{Report, SimConfig, simulate};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

// The system allocator (glibc) on purpose: with mimalloc the controller kept as much or more
// resident at 2,000 nodes and gave nothing back either (scripts/scale-bench, docs/benchmarks.md).

mod action_cmd;
mod controller_cmd;
mod demo;
mod demo_peers;
mod operator_cmd;

#[derive(Parser)]
#[command(name = "nodemedic", version, about = "Keeps Kubernetes GPU clusters healthy: detect, quarantine, repair, escalate — safely.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a GPU fleet over weeks of published fault data and report what a policy costs.
    Simulate(SimulateArgs),
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
    /// Print a built-in policy as YAML (nodemedic, seed000, seed003, seed004).
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

#[derive(clap::Args)]
struct SimulateArgs {
    /// Policy to simulate: a file, or a preset name (nodemedic, seed000, seed003, seed004).
    #[arg(long, default_value = "nodemedic")]
    policy: String,
    /// Also run these (files or presets) side by side; `--compare` alone compares all presets.
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    compare: Option<Vec<String>>,
    #[arg(long, default_value_t = 2048)]
    nodes: u32,
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u8,
    #[arg(long, default_value_t = 54.0)]
    days: f64,
    /// Random seed: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
    /// Also print every engine event with its reason, per policy (best with a small fleet).
    #[arg(long)]
    trace: bool,
}

fn load_policy(spec: &str) -> Result<(String, Policy)> {
    if let Some(p) = presets::by_name(spec) {
        return Ok((spec.to_string(), p));
    }
    let path = Path::new(spec);
    if !path.exists() {
        bail!(
            "`{spec}` is neither a policy file nor a preset (presets: {})",
            presets::all().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {spec}"))?;
    let policy = if spec.ends_with(".json") { Policy::from_json(&text) } else { Policy::from_yaml(&text) }
        .with_context(|| format!("policy {spec}"))?;
    let name = path.file_stem().map_or(spec.to_string(), |s| s.to_string_lossy().into_owned());
    Ok((name, policy))
}

fn run_simulate(args: SimulateArgs) -> Result<()> {
    if args.nodes == 0 || !args.days.is_finite() || args.days <= 0.0 {
        bail!("--nodes and --days must be more than zero");
    }
    let mut policies = vec![load_policy(&args.policy)?];
    match &args.compare {
        Some(list) if list.is_empty() => {
            policies.extend(presets::all().into_iter().filter(|(n, _)| *n != args.policy).map(|(n, p)| (n.to_string(), p)));
        }
        Some(list) => {
            for spec in list {
                policies.push(load_policy(spec)?);
            }
        }
        None => {}
    }
    let cfg = SimConfig {
        fleet: FleetSpec { nodes: args.nodes, gpus_per_node: args.gpus_per_node, duration_ms: (args.days * MS_PER_DAY as f64) as i64 },
        seed: args.seed,
        trace: args.trace,
        ..SimConfig::default()
    };
    cfg.model.validate().context("fault model")?;
    let started = Instant::now();
    let progress: Vec<AtomicU64> = policies.iter().map(|_| AtomicU64::new(0)).collect();
    let mut reports: Vec<Option<Report>> = vec![None; policies.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = policies
            .iter()
            .zip(&progress)
            .map(|((name, policy), prog)| {
                let cfg = &cfg;
                s.spawn(move || simulate(cfg, name, policy, &mut |f| prog.store((f * 1000.0) as u64, Ordering::Relaxed)))
            })
            .collect();
        // A progress bar only for runs that take more than a second, and only for a person at a
        // terminal; drawn by rewriting one stderr line, cleared before the report is printed.
        let stderr_is_terminal = std::io::stderr().is_terminal();
        let mut drawn = false;
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if shows_progress(started.elapsed(), stderr_is_terminal, args.json) {
                let done = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum::<u64>() as f64 / (1000.0 * policies.len() as f64);
                let mut err = std::io::stderr().lock();
                // A lost progress line is not worth failing the run for.
                let _ = write!(err, "\r{}", progress_line(done, started.elapsed()));
                let _ = err.flush();
                drawn = true;
            }
        }
        if drawn {
            // Carriage return, then erase the line (ANSI EL2): stderr is a terminal here.
            eprint!("\r\x1b[2K");
        }
        for (slot, h) in reports.iter_mut().zip(handles) {
            *slot = h.join().ok();
        }
    });
    let reports: Vec<Report> = reports.into_iter().collect::<Option<_>>().context("a simulation thread panicked")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", render(&reports, started.elapsed().as_secs_f64()));
        for r in reports.iter().filter(|r| !r.timeline.is_empty()) {
            println!("\ntimeline: {}", r.policy);
            for line in &r.timeline {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

fn render(reports: &[Report], secs: f64) -> String {
    let Some(first) = reports.first() else { return String::new() };
    let mut out = format!(
        "nodemedic simulate: {} nodes x {} GPUs, {:.0} days, seed {} ({:.1}s)\nfaults: {} real, {} probe false positives, {} network flaps\n\n",
        first.nodes,
        first.gpus_per_node,
        first.days,
        first.seed,
        secs,
        first.faults.real,
        first.faults.false_positives,
        first.faults.network_flaps
    );
    let w = 34;
    out += &format!("{:w$}", "");
    for r in reports {
        out += &format!("{:>14}", r.policy);
    }
    out += "\n";
    type Row = (&'static str, fn(&Report) -> String);
    let rows: Vec<Row> = vec![
        ("GPU-hours lost, total", |r| format!("{:.0}", r.gpu_hours_lost.total)),
        ("  share of fleet capacity", |r| format!("{:.3}%", r.fleet_share_lost * 100.0)),
        ("  policy-controlled", |r| format!("{:.0}", r.gpu_hours_lost.policy_controlled)),
        ("    faulty node still taking work", |r| format!("{:.0}", r.gpu_hours_lost.faulty_node_serving)),
        ("    repairs that did not fix", |r| format!("{:.0}", r.gpu_hours_lost.ineffective_repairs)),
        ("    healthy nodes disrupted", |r| format!("{:.0}", r.gpu_hours_lost.healthy_nodes_disrupted)),
        ("    waiting (gates/verify/people)", |r| format!("{:.0}", r.gpu_hours_lost.waiting)),
        ("  repair that finally worked", |r| format!("{:.0}", r.gpu_hours_lost.effective_repair)),
        ("time to quarantine, mean (min)", |r| format!("{:.1}", r.time_to_quarantine.mean_minutes)),
        ("time to quarantine, p95 (min)", |r| format!("{:.1}", r.time_to_quarantine.p95_minutes)),
        ("time to repair, mean (h)", |r| format!("{:.1}", r.time_to_repair.mean_minutes / 60.0)),
        ("time to repair, p95 (h)", |r| format!("{:.1}", r.time_to_repair.p95_minutes / 60.0)),
        ("faults found by people", |r| r.faults.found_by_people.to_string()),
        ("escalations to manual", |r| r.escalations_to_manual.to_string()),
        ("unresolved at end", |r| r.faults.unresolved_at_end.to_string()),
        ("engine decisions", |r| r.decisions.to_string()),
    ];
    for (label, f) in rows {
        out += &format!("{label:w$}");
        for r in reports {
            out += &format!("{:>14}", f(r));
        }
        out += "\n";
    }
    let mut steps: Vec<String> = reports.iter().flat_map(|r| r.remediations_by_step.keys().cloned()).collect();
    steps.sort();
    steps.dedup();
    for s in steps {
        out += &format!("{:w$}", format!("remediations: {s}"));
        for r in reports {
            out += &format!("{:>14}", r.remediations_by_step.get(&s).copied().unwrap_or(0));
        }
        out += "\n";
    }
    let mut gates: Vec<String> = reports.iter().flat_map(|r| r.gate_holds.keys().cloned()).collect();
    gates.sort();
    gates.dedup();
    for g in gates {
        out += &format!("{:w$}", format!("gate holds: {g}"));
        for r in reports {
            out += &format!("{:>14}", r.gate_holds.get(&g).copied().unwrap_or(0));
        }
        out += "\n";
    }
    out
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
        Command::Demo { scenario, keep, no_notify } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(demo::demo(demo::DemoArgs { scenario, no_notify, keep })),
        Command::Operator(cmd) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(operator_cmd::run(cmd)),
        Command::Action(args) => action_cmd::action(args),
        Command::Simulate(args) => run_simulate(args),
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
            let fleet: Vec<nodemedic_core::NodeObservation> =
                serde_json::from_str(&text).with_context(|| format!("{} is not a JSON list of node observations", nodes.display()))?;
            let records: Records = match records {
                Some(p) => serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?)
                    .with_context(|| format!("{} is not a records document", p.display()))?,
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
            let p = presets::by_name(&name).with_context(|| format!("no preset `{name}`"))?;
            print!("{}", serde_saphyr::to_string(&p).context("rendering the preset")?);
            Ok(())
        }
    }
}
