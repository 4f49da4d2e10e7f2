//! The executors against a real API server: a drain evicts through the Eviction API and honours
//! PodDisruptionBudgets, leaves DaemonSet pods alone and runs once per attempt; a webhook receives the
//! request as JSON with its idempotency key; a command gets the request in its environment and its
//! exit status becomes the step report.

mod common;

use common::{
    Received, budget, current_report, drain_policy, namespace, open_record, pod_on, pods_on, quick_drains, receiver, report_of, request,
    wait_running,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use nodemedic_controller::executors::{DrainExecutor, ExecutorsConfig, StepRouter, WebhookConfig, WebhookExecutor};
use nodemedic_controller::{Executor, StepRequest, install_crds, now};
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::{Duration as EngineDuration, RemediationStep, Time};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A client for executors that never reach the API server in the test.
fn unused_client() -> anyhow::Result<Client> {
    let mut config = Config::new("http://127.0.0.1:9".parse()?);
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

// ---------------------------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_evicts_every_pod_but_the_daemonset_pod_and_reports_success_once_they_are_gone() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_nodes(&FakeNode::gpu("gpu", "pool-a", 8), 2).await?;
        namespace(cp, "train").await?;
        for name in ["trainer-0", "trainer-1", "notebook"] {
            pod_on(cp, "train", name, "gpu-000", serde_json::json!({})).await?;
        }
        let ds_owner = serde_json::json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "gpu-agent",
            "uid": "6f1c2a4e-0000-4000-8000-000000000001", "controller": true}]});
        pod_on(cp, "train", "gpu-agent-x7k2p", "gpu-000", ds_owner).await?;
        pod_on(cp, "train", "elsewhere", "gpu-001", serde_json::json!({})).await?;
        // Local storage follows the stated rule: evicted like any other pod (its data goes, as it would with the reboot).
        let scratch: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "scratch"},
            "spec": {"nodeName": "gpu-000", "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                "volumes": [{"name": "tmp", "emptyDir": {}}]}}))?;
        Api::<Pod>::namespaced(cp.client(), "train").create(&PostParams::default(), &scratch).await?;
        wait_running(cp, "train", &["trainer-0", "trainer-1", "notebook", "gpu-agent-x7k2p", "elsewhere", "scratch"]).await?;
        open_record(cp, "gpu-000", 1).await?;

        let drain = DrainExecutor::new(cp.client(), quick_drains());
        drain.execute(&request("gpu-000", RemediationStep::Drain, 1, Duration::from_secs(60))).await.map_err(anyhow::Error::msg)?;
        let report = report_of(cp, "gpu-000", 1, Duration::from_secs(60)).await?;
        assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{report:?}");
        assert!(report.message.starts_with("evicted 4 pods"), "{}", report.message);
        assert!(report.message.ends_with("left in place: 1 DaemonSet pods"), "{}", report.message);
        assert_eq!(pods_on(cp, "gpu-000").await?, ["train/gpu-agent-x7k2p"], "only the DaemonSet pod stays");
        assert_eq!(pods_on(cp, "gpu-001").await?, ["train/elsewhere"], "another node's pods are untouched");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn under_escalate_a_pod_guarded_by_a_pdb_fails_the_drain_at_its_deadline_and_names_the_pod() -> anyhow::Result<()> {
    // The disruption controller (in the controller-manager) keeps the budget's status, as in a cluster.
    let cp = ControlPlane::start(Options { controller_manager: true, kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        namespace(cp, "shop").await?;
        pod_on(cp, "shop", "db-0", "gpu-0", serde_json::json!({"labels": {"app": "db"}})).await?;
        pod_on(cp, "shop", "web-0", "gpu-0", serde_json::json!({"labels": {"app": "web"}})).await?;
        pod_on(cp, "shop", "web-1", "gpu-0", serde_json::json!({"labels": {"app": "web"}})).await?;
        wait_running(cp, "shop", &["db-0", "web-0", "web-1"]).await?;
        // minAvailable = every db pod there is: no eviction of db-0 is ever allowed.
        budget(cp, "shop", "db-pdb", "db", 1).await?;
        drain_policy(cp, "{whenBlocked: escalate}").await?;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cp.client(), "shop");
        wait_for(Duration::from_secs(90), "the disruption controller to count db-0 healthy", || async {
            let p = pdbs.get("db-pdb").await.ok()?;
            let s = p.status?;
            (s.current_healthy == 1 && s.disruptions_allowed == 0 && s.observed_generation == p.metadata.generation).then_some(())
        })
        .await?;
        open_record(cp, "gpu-0", 4).await?;

        let drain = DrainExecutor::new(cp.client(), quick_drains());
        let req = request("gpu-0", RemediationStep::Drain, 4, Duration::from_secs(8));
        let asked = Instant::now();
        drain.execute(&req).await.map_err(anyhow::Error::msg)?;
        assert!(asked.elapsed() < Duration::from_secs(2), "execute returns once the drain is under way");
        wait_for(Duration::from_secs(30), "the web pods to be evicted", || async {
            (pods_on(cp, "gpu-0").await.ok()? == ["shop/db-0"]).then_some(())
        })
        .await?;
        assert_eq!(current_report(cp, "gpu-0").await?, None, "no report while the deadline has not passed");

        let report = report_of(cp, "gpu-0", 4, Duration::from_secs(40)).await?;
        assert_eq!(report.outcome, ReportedOutcome::Failed, "{report:?}");
        assert!(report.message.contains("pod shop/db-0 blocked by PodDisruptionBudget db-pdb"), "{}", report.message);
        assert!(report.message.contains("(2 pods left)"), "{}", report.message);
        assert!(!report.message.contains("web-"), "the evicted pods are not named: {}", report.message);
        let deadline = req.deadline.map(|d| d.as_millis()).unwrap_or_default();
        assert!(report.at.as_millis() >= deadline - 500, "reported at the deadline, not before: {:?} vs {deadline}", report.at);
        assert_eq!(pods_on(cp, "gpu-0").await?, ["shop/db-0"], "the guarded pod is still running");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_attempt_requested_twice_starts_one_drain() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        cp.create_node(&FakeNode::gpu("gpu-0", "pool-a", 8)).await?;
        namespace(cp, "batch").await?;
        // Without a disruption controller the budget is never processed, so it blocks every eviction
        // and the drain stays in flight until its deadline.
        pod_on(cp, "batch", "job-0", "gpu-0", serde_json::json!({"labels": {"app": "job"}})).await?;
        budget(cp, "batch", "job-pdb", "job", 1).await?;
        drain_policy(cp, "{whenBlocked: escalate}").await?;
        open_record(cp, "gpu-0", 2).await?;

        let drain = DrainExecutor::new(cp.client(), quick_drains());
        let req = request("gpu-0", RemediationStep::Drain, 2, Duration::from_secs(4));
        let (a, b) = tokio::join!(drain.execute(&req), drain.execute(&req));
        a.map_err(anyhow::Error::msg)?;
        b.map_err(anyhow::Error::msg)?;
        drain.execute(&req).await.map_err(anyhow::Error::msg)?;
        assert_eq!(drain.drains_started(), 1);
        let report = report_of(cp, "gpu-0", 2, Duration::from_secs(30)).await?;
        assert_eq!(report.outcome, ReportedOutcome::Failed);
        assert!(report.message.contains("pod batch/job-0 blocked by PodDisruptionBudget job-pdb"), "{}", report.message);
        // Asked again after it ended: still not run a second time.
        drain.execute(&req).await.map_err(anyhow::Error::msg)?;
        assert_eq!(drain.drains_started(), 1);
        // A new attempt is new work.
        common::draining_attempt(cp, "gpu-0", 3).await?;
        drain.execute(&request("gpu-0", RemediationStep::Drain, 3, Duration::from_secs(1))).await.map_err(anyhow::Error::msg)?;
        assert_eq!(drain.drains_started(), 2);
        report_of(cp, "gpu-0", 3, Duration::from_secs(30)).await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------------------------

fn received(seen: &Arc<Mutex<Vec<Received>>>) -> Vec<Received> {
    seen.lock().map(|v| v.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_receives_the_request_as_json_with_its_idempotency_key_and_token() -> anyhow::Result<()> {
    let (url, seen) = receiver(vec![(202, r#"{"ticket": "PROV-1234"}"#)]).await?;
    let token_file = std::env::temp_dir().join(format!("nodemedic-webhook-token-{}", std::process::id()));
    std::fs::write(&token_file, "s3cret\n")?;
    let webhook = WebhookExecutor::new(
        unused_client()?,
        WebhookConfig { url: url.clone(), token_file: Some(token_file.clone()), timeout: EngineDuration::from_secs(5) },
    )?;
    let req = StepRequest {
        node: "gpu-3".into(),
        step: RemediationStep::Replace,
        attempt: 4,
        deadline: Some(Time::parse_rfc3339("2026-11-21T15:00:00Z")?),
        reason: "reimage did not fix Xid 79".into(),
        template: None,
    };
    let accepted = webhook.execute(&req).await;
    let _ = std::fs::remove_file(&token_file);
    accepted.map_err(anyhow::Error::msg)?;
    let got = received(&seen);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].line, "POST /nodemedic/steps HTTP/1.1");
    assert_eq!(
        got[0].body,
        serde_json::json!({"node": "gpu-3", "step": "replace", "attempt": 4, "deadline": "2026-11-21T15:00:00Z",
            "reason": "reimage did not fix Xid 79", "idempotencyKey": "gpu-3/4/replace"})
    );
    assert_eq!(got[0].header("idempotency-key"), Some("gpu-3/4/replace"));
    assert_eq!(got[0].header("authorization"), Some("Bearer s3cret"));
    assert!(got[0].header("content-type").is_some_and(|c| c.starts_with("application/json")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_refuses_or_cannot_be_reached_is_an_error_naming_the_url_and_status() -> anyhow::Result<()> {
    let (url, _seen) = receiver(vec![(503, r#"{"error": "provisioning is down for maintenance"}"#)]).await?;
    let config = |url: &str| WebhookConfig { url: url.into(), token_file: None, timeout: EngineDuration::from_secs(5) };
    let req = request("gpu-3", RemediationStep::Replace, 1, Duration::from_secs(60));
    let err = WebhookExecutor::new(unused_client()?, config(&url))?.execute(&req).await.err().unwrap_or_default();
    assert!(err.contains(&url) && err.contains("503") && err.contains("down for maintenance"), "{err}");

    // Nothing listens on a port that was just freed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}/steps", l.local_addr()?)
    };
    let err = WebhookExecutor::new(unused_client()?, config(&closed))?.execute(&req).await.err().unwrap_or_default();
    assert!(err.contains(&closed) && err.contains("could not be reached"), "{err}");
    assert!(WebhookExecutor::new(unused_client()?, config("ftp://provisioning/")).is_err(), "only http(s)");
    Ok(())
}

/// Issue 16 §1: `{"outcome": "failed", "outcome": "succeeded"}` says two things; serde would keep
/// the last. It is refused, naming the key, and nothing is reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_answer_that_repeats_outcome_is_refused_not_guessed() -> anyhow::Result<()> {
    let (url, seen) = receiver(vec![(200, r#"{"outcome": "failed", "message": "no spare", "outcome": "succeeded"}"#)]).await?;
    let config = WebhookConfig { url: url.clone(), token_file: None, timeout: EngineDuration::from_secs(5) };
    let req = request("gpu-5", RemediationStep::Replace, 6, Duration::from_secs(600));
    let err = WebhookExecutor::new(unused_client()?, config)?.execute(&req).await.err().unwrap_or_default();
    assert!(err.contains(&url) && err.contains("ambiguous") && err.contains("duplicate key `outcome`"), "{err}");
    assert_eq!(received(&seen).len(), 1);
    Ok(())
}

/// Issue 12 §1: a webhook the site could not take is not silently dropped. The executor used to mark
/// the request sent before it was delivered, so the next pass's resume was a no-op and the step
/// waited for its timeout unheard.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_the_site_refused_is_sent_again_on_the_next_pass_with_the_same_key_and_then_once_only() -> anyhow::Result<()> {
    let (url, seen) = receiver(vec![(503, r#"{"error": "provisioning is restarting"}"#), (202, r#"{"ticket": "PROV-77"}"#)]).await?;
    let webhook = WebhookExecutor::new(unused_client()?, WebhookConfig { url, token_file: None, timeout: EngineDuration::from_secs(5) })?;
    let req = request("gpu-3", RemediationStep::Replace, 2, Duration::from_secs(600));
    assert!(webhook.execute(&req).await.is_err(), "the 503 is an error");
    // The next passes hand the step, in flight without a report, back to the executor.
    webhook.resume(&req).await.map_err(anyhow::Error::msg)?;
    webhook.resume(&req).await.map_err(anyhow::Error::msg)?;
    let got = received(&seen);
    assert_eq!(got.len(), 2, "one refused send, one resend, nothing after it was accepted");
    assert_eq!(got[1].header("idempotency-key"), Some("gpu-3/2/replace"));
    assert_eq!(got[1].body.get("resumed"), Some(&serde_json::json!(true)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_answers_with_an_outcome_is_reported_at_once() -> anyhow::Result<()> {
    let (url, seen) = receiver(vec![(200, r#"{"outcome": "failed", "message": "no spare machine in pool-a"}"#)]).await?;
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        install_crds(&cp.client()).await?;
        open_record(cp, "gpu-5", 6).await?;
        let webhook = WebhookExecutor::new(cp.client(), WebhookConfig { url, token_file: None, timeout: EngineDuration::from_secs(5) })?;
        webhook.execute(&request("gpu-5", RemediationStep::Replace, 6, Duration::from_secs(600))).await.map_err(anyhow::Error::msg)?;
        // Written before execute returned.
        let report = current_report(cp, "gpu-5").await?;
        assert_eq!(
            report.as_ref().map(|r| (r.attempt, r.outcome, r.message.as_str())),
            Some((6, ReportedOutcome::Failed, "no spare machine in pool-a"))
        );
        assert_eq!(received(&seen).len(), 1);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Command (through a router built from configuration)
// ---------------------------------------------------------------------------------------------

const SCRIPT: &str = r#"#!/bin/sh
printf '%s|%s|%s|%s' "$NODEMEDIC_NODE" "$NODEMEDIC_STEP" "$NODEMEDIC_ATTEMPT" "$NODEMEDIC_REASON" > "$(dirname "$0")/seen-$NODEMEDIC_ATTEMPT"
case "$NODEMEDIC_ATTEMPT" in
  1) echo "reimaging"; echo "reimaged with image 2026.11"; exit 0 ;;
  2) echo "lots of noise" >&2; echo "disk /dev/nvme0n1 is read-only" >&2; exit 3 ;;
  *) exec sleep 30 ;;
esac
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_command_gets_the_request_in_its_environment_and_its_exit_status_is_reported() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("nodemedic-command-{}-{}", std::process::id(), now().as_millis()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("reimage.sh");
    std::fs::write(&script, SCRIPT)?;
    std::process::Command::new("chmod").arg("+x").arg(&script).status()?;
    let cp = ControlPlane::start(Options::default()).await?;
    let seen = dir.clone();
    let result = cp
        .run(|cp| async move {
            install_crds(&cp.client()).await?;
            open_record(cp, "gpu-000", 1).await?;
            let yaml = format!("steps:\n  reimage: {{command: [{}]}}\n", script.display());
            let config: ExecutorsConfig = serde_saphyr::from_str(&yaml)?;
            let router = StepRouter::from_config(cp.client(), &config)?;
            let err =
                router.execute(&request("gpu-000", RemediationStep::Replace, 1, Duration::from_secs(5))).await.err().unwrap_or_default();
            assert!(err.contains("no executor is configured for step replace"), "{err}");

            // Exit 0: succeeded, with the script's last line.
            router.execute(&request("gpu-000", RemediationStep::Reimage, 1, Duration::from_secs(30))).await.map_err(anyhow::Error::msg)?;
            let report = report_of(cp, "gpu-000", 1, Duration::from_secs(30)).await?;
            assert_eq!(report.outcome, ReportedOutcome::Succeeded, "{report:?}");
            assert!(report.message.ends_with("reimaged with image 2026.11"), "{}", report.message);
            assert_eq!(std::fs::read_to_string(seen.join("seen-1"))?, "gpu-000|reimage|1|Xid 79: GPU has fallen off the bus");

            // Non-zero: failed, with the end of stderr.
            router.execute(&request("gpu-000", RemediationStep::Reimage, 2, Duration::from_secs(30))).await.map_err(anyhow::Error::msg)?;
            let report = report_of(cp, "gpu-000", 2, Duration::from_secs(30)).await?;
            assert_eq!(report.outcome, ReportedOutcome::Failed, "{report:?}");
            assert!(
                report.message.contains("exit status: 3") && report.message.ends_with("disk /dev/nvme0n1 is read-only"),
                "{}",
                report.message
            );

            // Still running at the deadline: killed, failed.
            let asked = Instant::now();
            router.execute(&request("gpu-000", RemediationStep::Reimage, 3, Duration::from_secs(2))).await.map_err(anyhow::Error::msg)?;
            assert!(asked.elapsed() < Duration::from_secs(1), "execute returns while the command runs");
            let report = report_of(cp, "gpu-000", 3, Duration::from_secs(30)).await?;
            assert_eq!(report.outcome, ReportedOutcome::Failed, "{report:?}");
            assert!(report.message.contains("did not finish by the step's deadline"), "{}", report.message);
            Ok::<(), anyhow::Error>(())
        })
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Issue 12 §1: a command whose outcome could not be written (the API server away past the report's
/// retries) is not silently dropped: the next pass resumes it, and the script runs again with
/// `NODEMEDIC_RESUMED=1` to read its outcome back. It used to be logged and left to time out.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_whose_report_could_not_be_written_is_run_again_resumed_on_the_next_pass() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("reimage.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"resumed=${NODEMEDIC_RESUMED:-0}\" >> \"$(dirname \"$0\")/runs\"\nexit 0\n")?;
    std::process::Command::new("chmod").arg("+x").arg(&script).status()?;
    let runs = || std::fs::read_to_string(dir.path().join("runs")).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    let config: ExecutorsConfig = serde_saphyr::from_str(&format!("steps:\n  reimage: {{command: [{}]}}\n", script.display()))?;
    // No API server answers this client: every report write fails (five tries, about 8 s).
    let router = StepRouter::from_config(unused_client()?, &config)?;
    let req = request("gpu-000", RemediationStep::Reimage, 1, Duration::from_secs(600));
    router.execute(&req).await.map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    // The controller's passes: each hands the step, still without a report, back to resume.
    while runs().len() < 2 && started.elapsed() < Duration::from_secs(40) {
        router.resume(&req).await.map_err(anyhow::Error::msg)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(runs(), ["resumed=0", "resumed=1"], "run again, resumed, once the report was lost");
    assert!(started.elapsed() > Duration::from_secs(3), "not before the report's retries were spent");
    // While the resumed run's own report is being retried, passes start nothing more.
    for _ in 0..4 {
        router.resume(&req).await.map_err(anyhow::Error::msg)?;
    }
    assert_eq!(runs().len(), 2);
    Ok(())
}
