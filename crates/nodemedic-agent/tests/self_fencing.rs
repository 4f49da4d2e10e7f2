//! Issue 11 §2 end to end: three real `nodemedic-agent run` processes, each in a network namespace
//! the test makes (`ip netns`, macvlan links on one host segment), against the real kube-apiserver
//! (reached through a forwarder on a host address of its own, so a namespace can lose the route to
//! the API server and keep its peers). The self-fencing test hook records a reboot in a file instead
//! of rebooting the machine.
//!
//! Needs root and iproute2; it fails (never skips) without them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nodemedic_core::selffence::{PROMISE_ANNOTATION, SelfFencingPromise, lease_name};
use nodemedic_testenv::{ControlPlane, Options, wait_for};

const AGENTS: usize = 3;
const PEER_PORT: u16 = 9450;
/// The API loss window the agents run with.
const WINDOW: Duration = Duration::from_secs(4);

/// `ip` with arguments; a failure is an error naming the command and what it printed.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip` (iproute2 is needed)")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The test's network: a veth pair as the segment's parent, a host macvlan with the node subnet's
/// gateway and the API server's address, and one namespace per agent with a macvlan of its own.
/// Dropped (a failed test included), it removes every link, namespace and `/etc/netns` file it made.
struct Net {
    prefix: String,
    /// Which subnet: nodes are 10.(200+n).0.0/24, the API server 10.(210+n).0.1.
    n: u8,
}

impl Net {
    fn parent(&self) -> String {
        format!("{}-d", self.prefix)
    }
    fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }
    fn link(&self, i: usize) -> String {
        format!("{}-a{i}", self.prefix)
    }
    fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200 + self.n, 0, 10 + i as u8)
    }
    fn api_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 210 + self.n, 0, 1)
    }
    fn api_route(&self) -> String {
        format!("10.{}.0.0/24", 210 + self.n)
    }

    fn build(n: u8) -> anyhow::Result<Net> {
        let net = Net { prefix: format!("nmsf{n}"), n };
        net.clean(); // leftovers of a run that was killed
        let (parent, host) = (net.parent(), format!("{}-h", net.prefix));
        ip(&["link", "add", &parent, "type", "veth", "peer", "name", &format!("{}-e", net.prefix)])?;
        ip(&["link", "set", &parent, "up"])?;
        ip(&["link", "set", &format!("{}-e", net.prefix), "up"])?;
        ip(&["link", "add", &host, "link", &parent, "type", "macvlan", "mode", "bridge"])?;
        ip(&["addr", "add", &format!("10.{}.0.1/24", 200 + n), "dev", &host])?;
        ip(&["addr", "add", &format!("{}/32", net.api_ip()), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        for i in 0..AGENTS {
            let (ns, link) = (net.ns(i), net.link(i));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &link, "link", &parent, "type", "macvlan", "mode", "bridge"])?;
            ip(&["link", "set", &link, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.node_ip(i)), "dev", &link])?;
            ip(&["-n", &ns, "link", "set", &link, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "route", "add", &net.api_route(), "via", &format!("10.{}.0.1", 200 + n)])?;
            // `ip netns exec` bind-mounts this over /etc/hosts: the API server's certificate names `kubernetes`.
            let etc = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc)?;
            std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{} kubernetes\n", net.api_ip()))?;
        }
        Ok(net)
    }

    /// Cuts namespace `i` off from everything: its link goes down.
    fn isolate(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.ns(i), "link", "set", &self.link(i), "down"])
    }

    /// Cuts namespace `i` off from the API server only: its route to it is deleted.
    fn cut_api_only(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.ns(i), "route", "del", &self.api_route()])
    }

    fn clean(&self) {
        for i in 0..AGENTS {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).stderr(Stdio::null()).status();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(self.ns(i)));
        }
        // Deleting the parent deletes its macvlans and its veth peer.
        let _ = Command::new("ip").args(["link", "del", &self.parent()]).stderr(Stdio::null()).status();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Forwards TCP from the API server's address on the test network to kube-apiserver on loopback.
async fn forward_api_server(listen: Ipv4Addr, server: &str) -> anyhow::Result<u16> {
    let target = server.trim_start_matches("https://").to_string();
    let listener = tokio::net::TcpListener::bind((listen, 0)).await.context("binding the API server forwarder")?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                // While kube-apiserver is stopped this fails and the agent's connection is closed.
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(port)
}

/// The agents' processes, killed when dropped.
struct Agents {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Agents {
    fn node(i: usize) -> String {
        format!("sf-node-{i}")
    }
    fn reboots(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("reboots-{i}.log"))
    }
    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log"))).unwrap_or_default()
    }
    fn rebooted(&self) -> Vec<usize> {
        (0..AGENTS).filter(|i| self.reboots(*i).exists()).collect()
    }

    /// Writes each agent's config and kubeconfig and starts it in its namespace.
    fn start(cp: &ControlPlane, net: &Net, api_port: u16) -> anyhow::Result<Agents> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = std::fs::read_to_string(cp.kubeconfig())?.replace(cp.server(), &format!("https://kubernetes:{api_port}"));
        ensure!(kubeconfig.contains(&format!("kubernetes:{api_port}")), "the kubeconfig does not name {}", cp.server());
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig)?;
        std::fs::write(dir.path().join("token"), "s3cret-peer-token\n")?;
        let mut agents = Agents { children: Vec::new(), dir };
        for i in 0..AGENTS {
            let d = agents.dir.path();
            let config = format!(
                "remediation: {{state_file: {state}}}\nself_fencing:\n  listen: \"{ip}:{PEER_PORT}\"\n  token_file: {token}\n  lease_namespace: default\n  api_loss_window: {window}s\n  check_interval: 1s\n  peer_timeout: 1s\n  peer_refresh: 2s\n  reboot_time: 1s\n  watchdog: {{device: {dog}}}\n  test_reboot_record: {record}\n",
                state = d.join(format!("attempts-{i}.json")).display(),
                ip = net.node_ip(i),
                token = d.join("token").display(),
                window = WINDOW.as_secs(),
                dog = d.join("no-watchdog").display(),
                record = agents.reboots(i).display(),
            );
            let config_path = d.join(format!("agent-{i}.yaml"));
            std::fs::write(&config_path, config)?;
            let log = std::fs::File::create(d.join(format!("agent-{i}.log")))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &net.ns(i), env!("CARGO_BIN_EXE_nodemedic-agent"), "run", "--config"])
                .arg(&config_path)
                .env("KUBECONFIG", d.join("kubeconfig"))
                .env("NODE_NAME", Agents::node(i))
                .env("RUST_LOG", "info,nodemedic_agent::selffence=debug")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting nodemedic-agent in its namespace")?;
            agents.children.push(child);
        }
        Ok(agents)
    }
}

/// Creates the agents' nodes, with their namespace addresses as InternalIP.
async fn create_nodes(cp: &ControlPlane, net: &Net) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(cp.client());
    for i in 0..AGENTS {
        let node: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": Agents::node(i)}}))?;
        nodes.create(&PostParams::default(), &node).await?;
        let status = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": net.node_ip(i).to_string()}]}});
        nodes.patch_status(&Agents::node(i), &PatchParams::default(), &Patch::Merge(&status)).await?;
    }
    Ok(())
}

/// Waits until every agent has renewed its Lease knowing both peers (so the peer lists are cached).
async fn wait_until_armed(cp: &ControlPlane, agents: &Agents) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(cp.client(), "default");
    let armed = wait_for(Duration::from_secs(60), "every agent's Lease with two peers", || {
        let leases = leases.clone();
        async move {
            for i in 0..AGENTS {
                let lease = leases.get_opt(&lease_name(&Agents::node(i))).await.ok().flatten()?;
                let promise = lease.metadata.annotations.as_ref().and_then(|a| a.get(PROMISE_ANNOTATION))?;
                let promise: SelfFencingPromise = serde_json::from_str(promise).ok()?;
                if promise.peers != 2 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    if let Err(error) = armed {
        bail!("{error}\n{}", (0..AGENTS).map(|i| format!("--- agent {i}\n{}", agents.log(i))).collect::<String>());
    }
    Ok(())
}

/// Sets up the network, the nodes and the agents, and waits until they are armed.
async fn fleet(cp: &ControlPlane, n: u8) -> anyhow::Result<(Net, Agents)> {
    ensure!(nix_is_root(), "this test makes network namespaces and needs root");
    let net = Net::build(n)?;
    nodemedic_controller::install_crds(&cp.client()).await?;
    create_nodes(cp, &net).await?;
    let port = forward_api_server(net.api_ip(), cp.server()).await?;
    let agents = Agents::start(cp, &net, port)?;
    wait_until_armed(cp, &agents).await?;
    Ok((net, agents))
}

fn nix_is_root() -> bool {
    Path::new("/proc/self/status").exists()
        && std::fs::read_to_string("/proc/self/status")
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

/// Long enough for the loss window, a peer round and the decision, with room for a loaded machine.
const DECIDE: Duration = Duration::from_secs(15);

fn logs(agents: &Agents) -> String {
    (0..AGENTS).map(|i| format!("--- agent {i}\n{}", agents.log(i))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_api_server_and_its_peers_reboots_itself() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let (net, agents) = fleet(cp, 1).await?;
        net.isolate(0)?;
        let recorded =
            wait_for(WINDOW + DECIDE, "agent 0 recording its reboot", || async { agents.reboots(0).exists().then_some(()) }).await;
        ensure!(recorded.is_ok(), "the isolated agent did not fence itself\n{}", logs(&agents));
        let line = std::fs::read_to_string(agents.reboots(0))?;
        ensure!(line.contains("sf-node-0 reboot") && line.contains("only 0 of 2 peer(s) answered"), "{line}");
        // The others lost a peer, not the API server.
        tokio::time::sleep(WINDOW).await;
        ensure!(agents.rebooted() == [0], "only the isolated node reboots: {:?}\n{}", agents.rebooted(), logs(&agents));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_api_server_only_stays_up_while_its_peers_vouch_for_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let (net, agents) = fleet(cp, 2).await?;
        net.cut_api_only(0)?;
        let vouched = "2 peer(s) reach it and see this node healthy";
        let stayed =
            wait_for(WINDOW + DECIDE, "agent 0 asking its peers", || async { agents.log(0).contains(vouched).then_some(()) }).await;
        ensure!(stayed.is_ok(), "agent 0 never consulted its peers\n{}", logs(&agents));
        tokio::time::sleep(WINDOW).await;
        ensure!(agents.rebooted().is_empty(), "nobody reboots: {:?}\n{}", agents.rebooted(), logs(&agents));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_reboots_no_agent() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let (_net, agents) = fleet(cp, 3).await?;
        cp.stop_api_server()?;
        let outage = "none reaches it: an API-server outage, not an isolation";
        let all = wait_for(WINDOW + DECIDE, "every agent taking it for an outage", || async {
            (0..AGENTS).all(|i| agents.log(i).contains(outage)).then_some(())
        })
        .await;
        ensure!(all.is_ok(), "not every agent consulted its peers\n{}", logs(&agents));
        tokio::time::sleep(WINDOW).await;
        ensure!(agents.rebooted().is_empty(), "an API-server outage reboots nobody: {:?}\n{}", agents.rebooted(), logs(&agents));
        Ok(())
    })
    .await
}

/// What the controller writes when it acts on a node: a NodeRemediation with an executed step.
async fn remediate(cp: &ControlPlane, node: &str) -> anyhow::Result<()> {
    use nodemedic_core::record::{ActiveRemediation, NodeRecord, Phase, Stage};
    use nodemedic_k8s::{NodeRemediation, NodeRemediationSpec, NodeRemediationStatus};
    let now = nodemedic_core::Time(jiff::Timestamp::now().as_millisecond());
    let records: Api<NodeRemediation> = Api::all(cp.client());
    let spec = NodeRemediationSpec { node: node.into(), policy: "default".into() };
    records.create(&PostParams::default(), &NodeRemediation::new(node, spec)).await?;
    let active = ActiveRemediation {
        trigger: "ready-unknown".into(),
        reason: "Ready=Unknown".into(),
        started_at: now,
        unhealthy_since: now,
        step_index: 0,
        step: nodemedic_core::RemediationStep::Reboot,
        step_started_at: now,
        deadline: None,
        stage: Stage::Executing,
        executed: true,
        boot_id_at_start: None,
        notified_at: None,
        unobserved: nodemedic_core::Duration::ZERO,
        unobserved_until: None,
        drain_held_at: None,
        fault_class: None,
        gpu: None,
    };
    let record = NodeRecord { node: node.into(), phase: Phase::Remediating, active: Some(active), attempt: 1, ..NodeRecord::default() };
    let status = serde_json::json!({"status": NodeRemediationStatus { record, ..NodeRemediationStatus::default() }});
    records.patch_status(node, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_api_server_only_reboots_once_its_peers_see_nodemedic_remediating_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let (net, agents) = fleet(cp, 4).await?;
        net.cut_api_only(0)?;
        let vouched = "peer(s) reach it and see this node healthy";
        let stayed =
            wait_for(WINDOW + DECIDE, "agent 0 asking its peers", || async { agents.log(0).contains(vouched).then_some(()) }).await;
        ensure!(stayed.is_ok() && agents.rebooted().is_empty(), "agent 0 should stay up while vouched for\n{}", logs(&agents));
        // The controller starts remediating the node it cannot hear from: the peers say so.
        remediate(cp, &Agents::node(0)).await?;
        let recorded = wait_for(DECIDE, "agent 0 recording its reboot", || async { agents.reboots(0).exists().then_some(()) }).await;
        ensure!(recorded.is_ok(), "agent 0 did not fence itself\n{}", logs(&agents));
        let line = std::fs::read_to_string(agents.reboots(0))?;
        ensure!(line.contains("says nodemedic is remediating this node"), "{line}");
        ensure!(agents.rebooted() == [0], "{:?}", agents.rebooted());
        Ok(())
    })
    .await
}
