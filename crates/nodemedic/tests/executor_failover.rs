//! Command and webhook steps survive their leader (issue 12 §1): `nodemedic controller` replicas
//! against a real kube-apiserver. A site script (the `command` executor) and a site endpoint (the
//! `webhook` executor) are in the middle of their work when the leader is SIGKILLed; the standby
//! runs the script again with `NODEMEDIC_RESUMED=1`, which reads back the outcome of the run the dead
//! leader started, and sends the webhook again with the same idempotency key and `resumed: true`,
//! which the site answers with its outcome. Each time the next step starts exactly once.

mod common;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use common::{Replica, holder, record, setup};
use nodemedic_core::RemediationStep;
use nodemedic_core::record::{Phase, StepOutcome};
use nodemedic_testenv::{ControlPlane, Options, wait_for};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const POLICY: &str = r#"
rules:
- name: gpu
  condition: {type: GPUProblem, status: "True"}
ladder:
- {step: reimage, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: replace, timeout: 10m, settle: 1s, verifyTimeout: 2m}
- {step: manual}
monitorOnly: false
"#;

const NODE: &str = "gpu-000";

/// The site's reimage script: the first run works until the test says `go`, then keeps its outcome
/// under the node and attempt, as a site's provisioning system would; a resumed run reads that
/// outcome back instead of reimaging again. Every run is logged with `NODEMEDIC_RESUMED`.
const SCRIPT: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
echo "attempt=$NODEMEDIC_ATTEMPT resumed=${NODEMEDIC_RESUMED:-0}" >> "$dir/runs"
out="$dir/$NODEMEDIC_NODE-$NODEMEDIC_ATTEMPT.outcome"
if [ ! -f "$out" ]; then
  while [ ! -f "$dir/go" ]; do sleep 0.1; done
  [ -f "$out" ] || echo "the image server refused the reimage of $NODEMEDIC_NODE" > "$out"
fi
cat "$out" >&2
exit 1
"#;

/// What the site's endpoint received: (Idempotency-Key header, body).
type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// The provisioning site: accepts a new request (202, it reports later); a resent one (`resumed`) is
/// the same work, so it answers with the work's outcome.
async fn site(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<serde_json::Value>) -> (StatusCode, Json<serde_json::Value>) {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let resumed = body.get("resumed") == Some(&serde_json::json!(true));
    if let Ok(mut s) = seen.lock() {
        s.push((key, body));
    }
    if resumed {
        (StatusCode::OK, Json(serde_json::json!({"outcome": "failed", "message": "no spare machine in pool-a"})))
    } else {
        (StatusCode::ACCEPTED, Json(serde_json::json!({"ticket": "PROV-42"})))
    }
}

async fn start_site() -> anyhow::Result<(String, Seen)> {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/replace", listener.local_addr()?);
    let app = Router::new().route("/replace", axum::routing::post(site)).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs")).unwrap_or_default().lines().map(str::to_string).collect()
}

fn seen(s: &Seen) -> Vec<(String, serde_json::Value)> {
    s.lock().map(|v| v.clone()).unwrap_or_default()
}

fn active(rec: &nodemedic_core::NodeRecord) -> Option<(RemediationStep, u32)> {
    rec.active.as_ref().map(|a| (a.step, rec.attempt))
}

/// SIGKILLs the leader and waits for another replica to hold the lease; returns the new holder.
async fn kill_leader(cp: &ControlPlane, replicas: &[&Replica]) -> anyhow::Result<String> {
    let leader = holder(cp).await.ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let dead = replicas.iter().find(|r| r.name == leader).ok_or_else(|| anyhow::anyhow!("{leader} is not one of ours"))?;
    dead.signal("-KILL")?;
    let next = wait_for(Duration::from_secs(40), "a standby to take over", || async { holder(cp).await.filter(|h| *h != leader) }).await?;
    Ok(next)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_mid_command_and_mid_webhook_is_replaced_and_the_standby_reads_back_each_outcome_and_starts_the_next_step_once()
-> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        setup(cp, 1, POLICY).await?;
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("reimage.sh");
        std::fs::write(&script, SCRIPT)?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let (url, site_seen) = start_site().await?;
        let executors = dir.path().join("executors.yaml");
        let config = format!("steps:\n  reimage: {{command: [{}]}}\n  replace: {{webhook: {{url: \"{url}\"}}}}\n", script.display());
        std::fs::write(&executors, config)?;
        let path = executors.to_string_lossy().to_string();
        let args = ["--executors", path.as_str()];
        let a = Replica::start_with(cp, "replica-a", &args)?;
        wait_for(Duration::from_secs(30), "replica-a to lead", || async { holder(cp).await.filter(|h| h == "replica-a") }).await?;
        let b = Replica::start_with(cp, "replica-b", &args)?;

        // The command: the leader starts the site script, which is still working when the leader dies.
        cp.set_node_condition(NODE, "GPUProblem", "True", "XidCritical", "Xid 79: GPU has fallen off the bus").await?;
        wait_for(Duration::from_secs(60), "the reimage script to start", || async { (!runs(dir.path()).is_empty()).then_some(()) }).await?;
        let second = kill_leader(cp, &[&a, &b]).await?;
        // The dead leader's run finishes meanwhile (its outcome stays with the site; nobody reports it).
        std::fs::write(dir.path().join("go"), "")?;
        let rec = wait_for(Duration::from_secs(60), "the replace step to start after the failed reimage", || async {
            record(cp, NODE).await.filter(|r| active(r).map(|(s, _)| s) == Some(RemediationStep::Replace))
        })
        .await?;
        assert_eq!(runs(dir.path()), ["attempt=1 resumed=0", "attempt=1 resumed=1"], "run once, then run again resumed");
        let reimage = rec.history.iter().find(|h| h.step == RemediationStep::Reimage);
        assert_eq!(reimage.map(|h| (h.attempt, h.outcome)), Some((1, StepOutcome::Failed)), "{rec:?}");
        assert!(
            reimage.is_some_and(|h| h.reason.contains("the image server refused the reimage of gpu-000")),
            "the outcome read back: {rec:?}"
        );
        assert_eq!(active(&rec), Some((RemediationStep::Replace, 2)));

        // The webhook: the site accepted the replace and works on it when the second leader dies.
        wait_for(Duration::from_secs(30), "the site to receive the replace", || async { (!seen(&site_seen).is_empty()).then_some(()) })
            .await?;
        let c = Replica::start_with(cp, "replica-c", &args)?;
        let replicas: Vec<&Replica> = [&a, &b, &c].into_iter().filter(|r| r.name != "replica-a").collect();
        let third = kill_leader(cp, &replicas).await?;
        assert_ne!(third, second);
        let rec = wait_for(Duration::from_secs(60), "the manual step after the failed replace", || async {
            record(cp, NODE).await.filter(|r| r.phase == Phase::Manual)
        })
        .await?;
        let got = seen(&site_seen);
        assert_eq!(got.len(), 2, "sent once, then once again by the new leader: {got:?}");
        assert!(got.iter().all(|(key, _)| key == "gpu-000/2/replace"), "one idempotency key: {got:?}");
        assert_eq!(got[0].1.get("resumed"), None);
        assert_eq!(got[1].1.get("resumed"), Some(&serde_json::json!(true)));
        let replace = rec.history.iter().find(|h| h.step == RemediationStep::Replace);
        assert_eq!(replace.map(|h| (h.attempt, h.outcome)), Some((2, StepOutcome::Failed)), "{rec:?}");
        assert!(replace.is_some_and(|h| h.reason.contains("no spare machine in pool-a")), "{rec:?}");

        // Several passes later: nothing ran again and the manual step is the one that started.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let later = record(cp, NODE).await.ok_or_else(|| anyhow::anyhow!("record gone"))?;
        assert_eq!(active(&later).map(|(s, _)| s), Some(RemediationStep::Manual), "{later:?}");
        assert_eq!(active(&later), active(&rec), "the manual step starts exactly once: {later:?}");
        let rec = later;
        let steps: Vec<(RemediationStep, u32)> = rec.history.iter().map(|h| (h.step, h.attempt)).collect();
        assert_eq!(steps, [(RemediationStep::Reimage, 1), (RemediationStep::Replace, 2)], "each step once: {rec:?}");
        assert_eq!(runs(dir.path()).len(), 2, "the script ran twice in all");
        assert_eq!(seen(&site_seen).len(), 2, "the site heard twice in all");
        Ok(())
    })
    .await
}
