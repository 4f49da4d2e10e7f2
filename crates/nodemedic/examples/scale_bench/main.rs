//! The scale benchmark (`scripts/scale-bench N`): a real control plane with an audit log, N
//! realistic GPU nodes, two `nodemedic controller` replicas, then K nodes made unhealthy over time.
//! It prints each replica's memory (from /proc), how long decisions took from the moment each was
//! due, how long the start-up took, and the controllers' API requests by phase, verb and resource
//! (from the API server's audit log). See docs/benchmarks.md for recorded runs.

mod audit;
mod fleet;
mod replica;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use nodemedic_core::Policy;
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation};
use nodemedic_testenv::{ControlPlane, Options};
use replica::{Memory, Replica};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Nodes in the fleet.
    nodes: usize,
    /// Nodes made unhealthy during the burst.
    #[arg(long, default_value_t = 40)]
    faults: usize,
    /// Time between two faults of the burst (milliseconds).
    #[arg(long, default_value_t = 250)]
    fault_spacing_ms: u64,
    /// How long both replicas sit idle between the start-up and the burst (seconds).
    #[arg(long, default_value_t = 120)]
    idle_seconds: u64,
    /// Give every node 40 container images in `status.images`, as real nodes have.
    #[arg(long)]
    images: bool,
    /// The `nodemedic` binary to run as the controller.
    #[arg(long, env = "NODEMEDIC_BIN")]
    bin: PathBuf,
}

const REPLICAS: [&str; 2] = ["replica-a", "replica-b"];
const POLICY_NAME: &str = "gpu-bench";
const REPAIR_TAINT: &str = "nodemedic.io/repair-reboot";

fn service_account_user(replica: &str) -> String {
    format!("system:serviceaccount:default:{replica}")
}

/// Each replica runs as its own service account (bound to cluster-admin), so the audit log tells
/// the controllers' requests from the benchmark's own.
async fn kubeconfig_for(cp: &ControlPlane, replica: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let client = cp.client();
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": replica}}))?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.create(&PostParams::default(), &sa).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{replica}-admin")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": replica, "namespace": "default"}],
    }))?;
    Api::<ClusterRoleBinding>::all(client).create(&PostParams::default(), &binding).await?;
    let request = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 86400}}),
    )?;
    let token = sas.create_token_request(replica, &PostParams::default(), &request).await?;
    let token = token.status.map(|s| s.token).context("the API server issued no token")?;
    let path = dir.join(format!("{replica}.kubeconfig"));
    cp.write_kubeconfig_with_token(&token, &path)?;
    Ok(path)
}

/// The first time the benchmark's watch saw each wanted object satisfy `done`.
type FirstSeen = Arc<Mutex<HashMap<String, jiff::Timestamp>>>;

fn watch_first<K>(api: Api<K>, done: fn(&K) -> bool) -> (FirstSeen, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
{
    let seen: FirstSeen = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(object)) = stream.next().await {
            if done(&object)
                && let Some(name) = object.meta().name.clone()
                && let Ok(mut seen) = out.lock()
            {
                seen.entry(name).or_insert_with(jiff::Timestamp::now);
            }
        }
    });
    (seen, task)
}

fn tainted(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == REPAIR_TAINT))
}

fn recorded(r: &NodeRemediation) -> bool {
    r.status.as_ref().is_some_and(|s| s.record.active.is_some())
}

/// p50, p99 and max of latencies in milliseconds.
fn quantiles(mut ms: Vec<i64>) -> String {
    if ms.is_empty() {
        return "none seen".into();
    }
    ms.sort_unstable();
    let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    format!("p50 {} ms, p99 {} ms, max {} ms ({} nodes)", at(0.5), at(0.99), ms[ms.len() - 1], ms.len())
}

fn latencies(due: &HashMap<String, jiff::Timestamp>, seen: &FirstSeen) -> (Vec<i64>, usize) {
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let ms: Vec<i64> = due.iter().filter_map(|(n, d)| seen.get(n).map(|s| s.as_millisecond() - d.as_millisecond())).collect();
    let missed = due.len() - ms.len();
    (ms, missed)
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn print_memory(when: &str, replicas: &[Replica], leader: &str) -> anyhow::Result<Vec<Memory>> {
    let mut out = Vec::new();
    for r in replicas {
        let m = r.memory()?;
        let role = if r.name == leader { "leader" } else { "standby" };
        println!("| {when} | {} ({role}) | {} | {} | {} | {} |", r.name, kib(m.rss), kib(m.peak), kib(m.anon), kib(m.file));
        out.push(m);
    }
    Ok(out)
}

async fn leader(cp: &ControlPlane) -> String {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(cp.client(), "default");
    leases.get("nodemedic-controller").await.ok().and_then(|l| l.spec?.holder_identity).unwrap_or_default()
}

/// How many nodes the policy's status says it selects (a status is written after a decision).
async fn selected(cp: &ControlPlane) -> anyhow::Result<u64> {
    let policy = Api::<NodeHealthPolicy>::all(cp.client()).get(POLICY_NAME).await?;
    Ok(policy.status.map_or(0, |s| s.selected))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new().prefix("nodemedic-scale-bench-").tempdir()?;
    let users = REPLICAS.iter().map(|r| service_account_user(r)).collect();
    let cp = ControlPlane::start(Options { audit_users: users, ..Options::default() }).await?;
    let result = bench(&args, &cp, dir.path()).await;
    if result.is_err() {
        eprintln!("control plane logs:\n{}", cp.logs(30));
        eprintln!("the replicas' logs are kept in {}", dir.keep().display());
    }
    result
}

async fn bench(args: &Args, cp: &ControlPlane, dir: &Path) -> anyhow::Result<()> {
    let n = args.nodes;
    nodemedic_controller::install_crds(&cp.client()).await?;
    let mut kubeconfigs = Vec::new();
    for r in REPLICAS {
        kubeconfigs.push(kubeconfig_for(cp, r, dir).await?);
    }
    let nodes: Api<Node> = Api::all(cp.client());
    let t = Instant::now();
    fleet::create(&nodes, n, args.images, 16).await?;
    let spec = NodeHealthPolicySpec { policy: Policy::from_yaml(fleet::POLICY)? };
    Api::<NodeHealthPolicy>::all(cp.client()).create(&PostParams::default(), &NodeHealthPolicy::new(POLICY_NAME, spec)).await?;
    println!("# scale-bench: {n} nodes{}, {} faults", if args.images { " with status.images" } else { "" }, args.faults);
    println!("fleet created in {:.1} s\n", t.elapsed().as_secs_f64());

    // Start-up: both replicas at once; done when one decided over the whole fleet and both are ready.
    let startup_at = jiff::Timestamp::now();
    let started = Instant::now();
    let mut replicas = Vec::new();
    for (name, kubeconfig) in REPLICAS.iter().zip(&kubeconfigs) {
        replicas.push(Replica::start(&args.bin, kubeconfig, name, dir)?);
    }
    let mut first_decision = None;
    let mut ready_after: HashMap<String, Duration> = HashMap::new();
    // Generous: a cold start lists every node and decides over all of them on a shared 2-core machine.
    let limit = Duration::from_secs(60) + Duration::from_millis(30) * n as u32;
    let mut reported = Instant::now();
    while first_decision.is_none() || ready_after.len() < replicas.len() {
        anyhow::ensure!(
            started.elapsed() < limit,
            "no decision over the whole fleet within {limit:?} (leader: `{}`, ready: {:?}); logs in {}",
            leader(cp).await,
            ready_after.keys().collect::<Vec<_>>(),
            dir.display()
        );
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!("  … {:.0} s: policy status selects {:?} of {n}", started.elapsed().as_secs_f64(), selected(cp).await);
            reported = Instant::now();
        }
        for r in &mut replicas {
            if let Some(status) = r.exited() {
                anyhow::bail!("{} exited ({status}); its log is {}", r.name, r.log.display());
            }
            if !ready_after.contains_key(&r.name) && r.ready() {
                ready_after.insert(r.name.clone(), started.elapsed());
            }
        }
        if first_decision.is_none() && selected(cp).await.is_ok_and(|s| s == n as u64) {
            first_decision = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = leader(cp).await;
    println!(
        "start-up: first decision over all {n} nodes {:.2} s after both replicas were started",
        first_decision.unwrap_or_default().as_secs_f64()
    );
    for r in &replicas {
        println!(
            "  {} ready (every watch listed) after {:.2} s",
            r.name,
            ready_after.get(&r.name).copied().unwrap_or_default().as_secs_f64()
        );
    }
    println!("\n| when | replica | RSS | peak (VmHWM) | anon | file |\n|---|---|---|---|---|---|");
    print_memory("after start-up", &replicas, &leader)?;
    let idle_at = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_memory = print_memory(&format!("after {} s idle", args.idle_seconds), &replicas, &leader)?;

    // Burst: K nodes, evenly spread over the fleet, turn unhealthy one after another.
    let (records, record_watch) = watch_first(Api::<NodeRemediation>::all(cp.client()), recorded);
    let (taints, taint_watch) = watch_first(nodes.clone(), tainted);
    let burst_at = jiff::Timestamp::now();
    let mut due = HashMap::new();
    let step = (n / args.faults.max(1)).max(1);
    for k in 0..args.faults.min(n) {
        let name = fleet::node_name(k * step);
        let at = fleet::break_gpu(&nodes, &name).await?;
        due.insert(name, at + jiff::SignedDuration::from_secs(fleet::RULE_SECONDS));
        tokio::time::sleep(Duration::from_millis(args.fault_spacing_ms)).await;
    }
    let wanted: HashSet<&String> = due.keys().collect();
    let all_seen = |seen: &FirstSeen| seen.lock().is_ok_and(|s| wanted.iter().all(|n| s.contains_key(*n)));
    let waited = Instant::now();
    while !(all_seen(&records) && all_seen(&taints)) && waited.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the decisions still write afterwards (events, statuses) belongs to the burst.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let end_at = jiff::Timestamp::now();
    record_watch.abort();
    taint_watch.abort();
    let burst_memory = print_memory("after the burst", &replicas, &leader)?;

    println!("\nfrom (condition time + rule duration) to what the benchmark's watch saw, over {} faults:", due.len());
    for (what, seen) in [("record", &records), ("taint", &taints)] {
        let (ms, missed) = latencies(&due, seen);
        println!("  to {what}: {}{}", quantiles(ms), if missed > 0 { format!(", {missed} never seen") } else { String::new() });
    }
    let growth: Vec<String> = idle_memory.iter().map(|m| format!("{:.1} KB", m.rss as f64 * 1024.0 / 1000.0 / n as f64)).collect();
    println!("RSS per node after idle (whole process / nodes): {}", growth.join(", "));
    let _ = burst_memory;

    let phases = [
        audit::Phase { name: "start-up", start: startup_at, end: idle_at },
        audit::Phase { name: "idle", start: idle_at, end: burst_at },
        audit::Phase { name: "burst", start: burst_at, end: end_at },
    ];
    let decided = latencies(&due, &records).0.len();
    print_requests(cp, &phases, decided, args.idle_seconds)?;
    Ok(())
}

/// Totals per phase; during the burst also per node that got a record (`decided`), without the
/// leader election's Lease requests (they do not grow with decisions).
fn print_requests(cp: &ControlPlane, phases: &[audit::Phase], decided: usize, idle_seconds: u64) -> anyhow::Result<()> {
    let counts = audit::count(&cp.audit_log(), phases)?;
    println!("\nAPI requests of both replicas (audit log), by phase:\n\n| phase | verb | resource | requests |\n|---|---|---|---|");
    for (phase, counts) in phases.iter().zip(&counts) {
        for ((verb, resource), c) in counts {
            println!("| {} | {verb} | {resource} | {c} |", phase.name);
        }
    }
    for (phase, counts) in phases.iter().zip(&counts) {
        let total: u64 = counts.values().sum();
        let lists: u64 = counts.iter().filter(|((v, _), _)| v == "list").map(|(_, c)| c).sum();
        let writes: u64 = counts.iter().filter(|((v, _), _)| audit::is_write(v)).map(|(_, c)| c).sum();
        let events: u64 = counts.iter().filter(|((v, r), _)| audit::is_write(v) && r == "events").map(|(_, c)| c).sum();
        let leases: u64 = counts.iter().filter(|((_, r), _)| r == "leases").map(|(_, c)| c).sum();
        let lease_writes: u64 = counts.iter().filter(|((v, r), _)| r == "leases" && audit::is_write(v)).map(|(_, c)| c).sum();
        let mut line =
            format!("{}: {total} requests ({leases} on the Lease), {lists} LIST, {writes} writes ({events} to events)", phase.name);
        if phase.name == "burst" && decided > 0 {
            let d = decided as f64;
            line += &format!(
                "; per decided node ({decided}), Lease aside: {:.1} requests, {:.1} writes, {:.1} event writes",
                (total - leases) as f64 / d,
                (writes - lease_writes) as f64 / d,
                events as f64 / d
            );
        }
        if phase.name == "idle" {
            line += &format!(" over {idle_seconds} s");
        }
        println!("{line}");
    }
    Ok(())
}
