//! `nodemedic action` against the actions API served by `nodemedic controller --api-listen`, two
//! replicas with leader election: the leader carries the action out; the standby refuses the write
//! with 503 and names the leader. The controller refuses to serve the API without TLS or an
//! explicit `--insecure-no-tls`.

mod common;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

struct Replica {
    child: Child,
    url: String,
}

impl Replica {
    fn start(cp: &ControlPlane, name: &str) -> anyhow::Result<Replica> {
        let log_path = std::env::temp_dir().join(format!(
            "nodemedic-action-{}-{}-{name}.log",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
        ));
        let log = std::fs::File::create(&log_path)?;
        // Port 0 for both listeners (picking free ports here could race other tests); the API's
        // address is read back from the replica's log.
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
            .args(["controller", "--identity", name, "--lease-duration", "6", "--listen", "127.0.0.1:0"])
            .args(["--api-listen", "127.0.0.1:0", "--insecure-no-tls", "--insecure-no-auth", "--repair-provider", "recreate-node"])
            .env("KUBECONFIG", cp.kubeconfig())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let address = common::bound_address(&mut child, &log_path, "serving the actions API", name)?;
        Ok(Replica { child, url: format!("http://{address}") })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn action(server: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_nodemedic"))
        .args(["action"])
        .args(args)
        .args(["--requestor", "erin@example.com", "--reason", "NCCL timeouts on the pool", "--server", server])
        .output()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_carries_out_a_cli_action_and_the_standby_names_the_leader() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        nodemedic_controller::install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 2).await?;
        let replicas = [Replica::start(cp, "replica-a")?, Replica::start(cp, "replica-b")?];
        let leases: Api<Lease> = Api::namespaced(cp.client(), "default");
        let leader = wait_for(Duration::from_secs(60), "a leader", || async {
            leases.get("nodemedic-controller").await.ok()?.spec?.holder_identity
        })
        .await?;
        let (lead, standby) = if leader == "replica-a" { (&replicas[0], &replicas[1]) } else { (&replicas[1], &replicas[0]) };
        // Both serve the API once they listen.
        wait_for(Duration::from_secs(30), "the APIs to listen", || async {
            let up = |url: &str| reqwest::get(format!("{url}/openapi.json"));
            (up(&lead.url).await.is_ok() && up(&standby.url).await.is_ok()).then_some(())
        })
        .await?;

        let refused = action(&standby.url, &["cordon_nodepool", "--pool", "pool-a"])?;
        assert!(!refused.status.success());
        let said = String::from_utf8_lossy(&refused.stdout);
        assert!(said.contains(&format!("\"leader\":\"{leader}\"")), "{said}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("503"));

        let dry = action(&lead.url, &["cordon_nodepool", "--pool", "pool-a", "--dry-run"])?;
        assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stdout));
        let nodes: Api<Node> = Api::all(cp.client());
        let cordoned = |n: Node| n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
        assert!(!cordoned(nodes.get("gpu-000").await?));

        let done = action(&lead.url, &["cordon_node", "--node", "gpu-000", "--id", "cli-1"])?;
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stdout));
        assert_eq!(String::from_utf8_lossy(&done.stdout).trim(), r#"{"id":"cli-1"}"#);
        assert!(cordoned(nodes.get("gpu-000").await?));
        assert!(!cordoned(nodes.get("gpu-001").await?));

        // The record is readable from either replica.
        let record: serde_json::Value = reqwest::get(format!("{}/actions/cli-1", standby.url)).await?.json().await?;
        assert_eq!(record["state"], "Succeeded");
        assert_eq!(record["request"]["requestor"], "erin@example.com");
        Ok::<_, anyhow::Error>(())
    })
    .await
}

#[test]
fn the_api_is_not_served_in_the_clear_unless_asked() -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
        .args(["controller", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent")
        .output()?;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--insecure-no-tls"), "{said}");
    Ok(())
}

/// Issue 16 §3: a controller whose API server accepts connections and never answers. `POST
/// /actions` is answered 504 within `--api-server-timeout` (not after minutes, or never), and the
/// controller's log says so.
#[tokio::test(flavor = "multi_thread")]
async fn with_an_api_server_that_never_answers_an_action_gets_504_within_the_deadline_and_a_log_line() -> anyhow::Result<()> {
    let hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let server = format!("http://{}", hole.local_addr()?);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in hole.incoming().flatten() {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: hole, cluster: {{server: \"{server}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: hole, user: u}}}}]\ncurrent-context: c\n"
        ),
    )?;
    let log_path = dir.path().join("controller.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
        .args(["controller", "--identity", "lonely", "--listen", "127.0.0.1:0", "--api-server-timeout", "2"])
        .args(["--api-listen", "127.0.0.1:0", "--insecure-no-tls", "--insecure-no-auth", "--repair-provider", "recreate-node"])
        .env("KUBECONFIG", &kubeconfig)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let result = async {
        let address = common::bound_address(&mut child, &log_path, "serving the actions API", "lonely")?;
        let body = r#"{"requestor": "erin", "reason": "test", "type": "cordon_nodepool", "node_pool": "pool-a"}"#;
        let started = std::time::Instant::now();
        let answer = reqwest::Client::new()
            .post(format!("http://{address}/actions"))
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        let took = started.elapsed();
        assert_eq!(answer.status().as_u16(), 504, "{}", answer.text().await.unwrap_or_default());
        assert!(took < Duration::from_secs(6), "answered after {took:?}");
        wait_for(Duration::from_secs(5), "the controller to log it", || async {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            (log.contains("did not answer within the deadline") || log.contains("the API server call failed")).then_some(())
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
