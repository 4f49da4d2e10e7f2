//! `kubectl medic`: the nodemedic binary installed (or linked) as `kubectl-medic` is a kubectl plugin.
//! `status` shows fleet health at a glance (pools, phases, who needs a person, the breaker, the gates
//! holding nodes back); `plan` shows what the engine would do now or at `--at`, from the live cluster
//! or from `kubectl get nodes -o json` output; `history`, `resume`, `abort`, `pause`, `unpause` and
//! `reset-breaker` are the operator commands of `nodemedic` itself. Every figure comes from
//! nodemedic-core's `decide` over what the cluster holds: nothing here decides on its own.

use crate::operator_cmd::{self, OperatorCommand};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use nodemedic_core::engine::selects;
use nodemedic_core::{Decision, NodeObservation, Phase, Policy, Records, Time, decide};
use nodemedic_k8s::{NodeHealthPolicy, NodeRemediation, observe_node};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kubectl medic",
    bin_name = "kubectl medic",
    version,
    about = "nodemedic as a kubectl plugin: fleet health, plans and operator requests"
)]
pub struct MedicCli {
    #[command(subcommand)]
    command: MedicCommand,
}

#[derive(Subcommand)]
enum MedicCommand {
    /// Fleet health at a glance: per policy, nodes by pool and phase, who needs a person, the breaker.
    Status,
    /// What the engine would do for a policy now (or at --at): steps, taints, gates holding nodes.
    Plan {
        /// A NodeHealthPolicy in the cluster, or a policy file (YAML or JSON).
        policy: String,
        /// Nodes from `kubectl get nodes -o json` output instead of the cluster.
        #[arg(long, value_name = "FILE")]
        nodes_json: Option<PathBuf>,
        /// Decide as of this RFC 3339 time (default: now).
        #[arg(long)]
        at: Option<String>,
        /// Print the whole decision as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Operator(OperatorCommand),
}

/// Whether this process was started as the kubectl plugin (argv[0] named `kubectl-medic`).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|name| name == "kubectl-medic")
}

pub fn main() -> Result<()> {
    let cli = MedicCli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            MedicCommand::Operator(cmd) => operator_cmd::run(cmd).await,
            MedicCommand::Status => {
                let client = client().await?;
                print!("{}", status(&client, now()).await?);
                Ok(())
            }
            MedicCommand::Plan { policy, nodes_json, at, json } => {
                let at = match at {
                    Some(s) => Time::parse_rfc3339(&s).map_err(|e| anyhow::anyhow!("--at: {e}"))?,
                    None => now(),
                };
                let decision = plan(&policy, nodes_json.as_deref(), at).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&decision)?);
                } else {
                    print!("{}", render_plan(&policy, &decision, at));
                }
                Ok(())
            }
        }
    })
}

async fn client() -> Result<Client> {
    Client::try_default().await.context("reading the Kubernetes client configuration (kubeconfig or in-cluster)")
}

fn now() -> Time {
    Time(jiff::Timestamp::now().as_millisecond())
}

/// The records of one policy as the controller stores them (NodeRemediation and policy statuses).
pub(crate) fn records_of(policy: &NodeHealthPolicy, remediations: &[NodeRemediation]) -> Records {
    let name = policy.name_any();
    let nodes = remediations
        .iter()
        .filter(|r| r.spec.policy == name)
        .filter_map(|r| r.status.as_ref().map(|s| (r.spec.node.clone(), s.record.clone())))
        .collect();
    Records { nodes, policy: policy.status.as_ref().map(|s| s.record.clone()).unwrap_or_default() }
}

pub(crate) fn observations(nodes: &[Node], remediations: &[NodeRemediation]) -> Result<Vec<NodeObservation>> {
    let by_node: BTreeMap<&str, &NodeRemediation> = remediations.iter().map(|r| (r.spec.node.as_str(), r)).collect();
    nodes.iter().map(|n| Ok(observe_node(n, by_node.get(n.name_any().as_str()).copied())?)).collect()
}

async fn status(client: &Client, now: Time) -> Result<String> {
    let policies = Api::<NodeHealthPolicy>::all(client.clone()).list(&ListParams::default()).await?.items;
    let remediations = Api::<NodeRemediation>::all(client.clone()).list(&ListParams::default()).await?.items;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let fleet = observations(&nodes, &remediations)?;
    let mut out = String::new();
    if policies.is_empty() {
        out.push_str("No NodeHealthPolicy in this cluster: nodemedic manages no node.\n");
    }
    for policy in &policies {
        let records = records_of(policy, &remediations);
        let decision = decide(&policy.spec.policy, &fleet, &records, now);
        render_status(&mut out, &policy.name_any(), &policy.spec.policy, &fleet, &records, &decision);
    }
    Ok(out)
}

/// One policy's block of `status`.
fn render_status(out: &mut String, name: &str, policy: &Policy, fleet: &[NodeObservation], records: &Records, d: &Decision) {
    let s = &d.summary;
    let breaker = match (&records.policy.breaker_tripped_at, s.breaker_open) {
        (Some(at), true) => format!("OPEN since {at} ({})", records.policy.breaker_reason.as_deref().unwrap_or("")),
        _ => "closed".to_string(),
    };
    let mode = if policy.monitor_only { "monitor-only" } else { "enforcing" };
    let paused = if policy.pause_requests.is_empty() { "no".to_string() } else { policy.pause_requests.join(", ") };
    let _ = writeln!(out, "POLICY {name}  ({mode}; breaker {breaker}; paused: {paused})");
    let _ = writeln!(
        out,
        "  {} selected: {} healthy, {} unhealthy, {} unknown, {} remediating, {} manual",
        s.selected, s.healthy, s.unhealthy, s.unknown, s.remediating, s.manual
    );
    let mut pools: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for n in fleet.iter().filter(|n| selects(policy, n)) {
        let pool = nodemedic_core::selector::label(&n.labels, &policy.node_pool_label).map_or("-", String::as_str);
        let phase = records.nodes.get(&n.name).map_or(Phase::Healthy, |r| r.phase);
        let column = match phase {
            Phase::Healthy => 0,
            Phase::Remediating => 1,
            Phase::Manual => 2,
        };
        pools.entry(pool.to_string()).or_default()[column] += 1;
    }
    let _ = writeln!(out, "  {:<24} {:>6} {:>12} {:>7}", "POOL", "OK", "REMEDIATING", "MANUAL");
    for (pool, [ok, remediating, manual]) in &pools {
        let _ = writeln!(out, "  {pool:<24} {ok:>6} {remediating:>12} {manual:>7}");
    }
    for (node, r) in records.nodes.iter().filter(|(_, r)| r.phase != Phase::Healthy) {
        let Some(a) = &r.active else { continue };
        let who = if r.phase == Phase::Manual { "NEEDS A PERSON" } else { "remediating" };
        let _ = writeln!(out, "  {who}: {node}  step {}  since {}  ({}: {})", a.step, a.step_started_at, a.trigger, a.reason);
    }
    for h in &d.holds {
        let _ = writeln!(out, "  held by {}: {}  ({})", h.gate.as_str(), h.node, h.message);
    }
}

/// The policy: a file when one exists at that path, else the NodeHealthPolicy of that name.
async fn plan(policy_arg: &str, nodes_json: Option<&std::path::Path>, at: Time) -> Result<Decision> {
    let from_file = std::path::Path::new(policy_arg).is_file();
    let (policy, records, remediations, cluster) = if from_file {
        let text = std::fs::read_to_string(policy_arg).with_context(|| format!("reading {policy_arg}"))?;
        let policy = if policy_arg.ends_with(".json") { Policy::from_json(&text) } else { Policy::from_yaml(&text) }
            .map_err(|e| anyhow::anyhow!("{policy_arg}: {e}"))?;
        (policy, Records::default(), Vec::new(), None)
    } else {
        let client = client().await?;
        let object = Api::<NodeHealthPolicy>::all(client.clone())
            .get_opt(policy_arg)
            .await?
            .with_context(|| format!("no policy file and no NodeHealthPolicy named `{policy_arg}`"))?;
        let remediations = Api::<NodeRemediation>::all(client.clone()).list(&ListParams::default()).await?.items;
        let records = records_of(&object, &remediations);
        (object.spec.policy, records, remediations, Some(client))
    };
    let nodes: Vec<Node> = match (nodes_json, &cluster) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            nodes_from_kubectl_json(&text).with_context(|| format!("{} is not `kubectl get nodes -o json` output", path.display()))?
        }
        (None, Some(c)) => Api::<Node>::all(c.clone()).list(&ListParams::default()).await?.items,
        (None, None) => Api::<Node>::all(client().await?).list(&ListParams::default()).await?.items,
    };
    let fleet = observations(&nodes, &remediations)?;
    Ok(decide(&policy, &fleet, &records, at))
}

/// The Nodes of a `kubectl get nodes -o json` document (a `List`, or a single Node).
fn nodes_from_kubectl_json(text: &str) -> Result<Vec<Node>> {
    let doc: serde_json::Value = nodemedic_core::input::from_json_str(text)?;
    match doc.get("items") {
        Some(items) => Ok(serde_json::from_value(items.clone())?),
        None => Ok(vec![serde_json::from_value(doc)?]),
    }
}

fn render_plan(policy: &str, d: &Decision, at: Time) -> String {
    use nodemedic_core::Action;
    let mut out = String::new();
    let s = &d.summary;
    let _ = writeln!(
        out,
        "Plan of {policy} at {at}: {} selected, {} unhealthy, {} remediating, {} manual",
        s.selected, s.unhealthy, s.remediating, s.manual
    );
    let acts: Vec<&Action> = d.actions.iter().chain(&d.would_execute).collect();
    if acts.is_empty() && d.holds.is_empty() {
        out.push_str("  nothing to do\n");
    }
    let monitor = if d.actions.is_empty() && !d.would_execute.is_empty() { " (monitor-only: would)" } else { "" };
    for a in acts {
        let line = match a {
            Action::Execute { node, step, attempt, reason, .. } => format!("run {step} on {node} (attempt {attempt}): {reason}"),
            Action::SetTaints { node, add, remove, .. } => format!("taint {node}: add {add:?} remove {remove:?}"),
            Action::Notify { node, .. } => format!("tell people about {node}"),
            Action::SetOutOfService { node, present: true, reason } => format!("mark {node} out of service: {reason}"),
            Action::SetOutOfService { node, present: false, reason } => format!("lift {node}'s out-of-service taint: {reason}"),
        };
        let _ = writeln!(out, "  {line}{monitor}");
    }
    for h in &d.holds {
        let _ = writeln!(out, "  hold {} ({}): {}", h.node, h.gate.as_str(), h.message);
    }
    out
}
