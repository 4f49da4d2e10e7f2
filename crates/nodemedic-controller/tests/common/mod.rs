//! Helpers shared by the executor and drain tests: records, pods, budgets and policies on a real
//! API server, and waiting for a step report.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nodemedic_controller::executors::DrainConfig;
use nodemedic_controller::{StepRequest, now};
use nodemedic_core::drain::DrainProgress;
use nodemedic_core::observe::StepReport;
use nodemedic_core::{Duration as EngineDuration, Policy, RemediationStep, Time};
use nodemedic_k8s::{NodeHealthPolicy, NodeHealthPolicySpec, NodeRemediation, NodeRemediationSpec, field_managers};
use nodemedic_testenv::{ControlPlane, wait_for};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The policy the records name (`gpu-workers`), with the drain settings given (YAML flow mapping).
pub async fn drain_policy(cp: &ControlPlane, drain: &str) -> anyhow::Result<()> {
    let yaml = format!(
        "rules: [{{name: gpu, condition: {{type: GPUProblem, status: \"True\"}}}}]\nladder: [{{step: drain, timeout: 10m}}, {{step: reboot, timeout: 10m}}, {{step: manual}}]\ndrain: {drain}\nmonitorOnly: false\n"
    );
    let policy = NodeHealthPolicy::new("gpu-workers", NodeHealthPolicySpec { policy: Policy::from_yaml(&yaml)? });
    Api::<NodeHealthPolicy>::all(cp.client()).create(&PostParams::default(), &policy).await?;
    Ok(())
}

/// The drain progress on the node's record, if any.
pub async fn progress(cp: &ControlPlane, node: &str) -> Option<DrainProgress> {
    Api::<NodeRemediation>::all(cp.client()).get(node).await.ok()?.status?.drain_progress
}

pub fn request(node: &str, step: RemediationStep, attempt: u32, deadline_in: Duration) -> StepRequest {
    let ms = i64::try_from(deadline_in.as_millis()).unwrap_or(i64::MAX);
    StepRequest {
        node: node.into(),
        step,
        attempt,
        deadline: Some(Time(now().as_millis() + ms)),
        reason: "Xid 79: GPU has fallen off the bus".into(),
        template: None,
    }
}

/// The node's NodeRemediation as the controller leaves it before executing a step: spec and record
/// (a drain in its executing stage).
pub async fn open_record(cp: &ControlPlane, node: &str, attempt: u32) -> anyhow::Result<()> {
    let api: Api<NodeRemediation> = Api::all(cp.client());
    api.create(
        &PostParams::default(),
        &NodeRemediation::new(node, NodeRemediationSpec { node: node.into(), policy: "gpu-workers".into() }),
    )
    .await?;
    draining_attempt(cp, node, attempt).await
}

/// The record's drain moves on to `attempt`, as the controller writes it.
pub async fn draining_attempt(cp: &ControlPlane, node: &str, attempt: u32) -> anyhow::Result<()> {
    let at = now();
    let status = serde_json::json!({
        "apiVersion": "nodemedic.io/v1alpha1", "kind": "NodeRemediation", "metadata": {"name": node},
        "status": {"node": node, "phase": "Remediating", "attempt": attempt, "active": {
            "trigger": "gpu", "reason": "Xid 79", "startedAt": at, "unhealthySince": at, "stepIndex": 0, "step": "drain",
            "stepStartedAt": at, "stage": {"name": "executing"}, "executed": true}},
    });
    let api: Api<NodeRemediation> = Api::all(cp.client());
    api.patch_status(node, &PatchParams::apply(field_managers::CONTROLLER).force(), &Patch::Apply(&status)).await?;
    Ok(())
}

/// Waits for the step report of `attempt` on the node's record.
pub async fn report_of(cp: &ControlPlane, node: &str, attempt: u32, limit: Duration) -> anyhow::Result<StepReport> {
    let api: Api<NodeRemediation> = Api::all(cp.client());
    let what = format!("the step report of attempt {attempt} on {node}");
    Ok(wait_for(limit, &what, || async { api.get(node).await.ok()?.status?.step_report.filter(|r| r.attempt == attempt) }).await?)
}

pub async fn current_report(cp: &ControlPlane, node: &str) -> anyhow::Result<Option<StepReport>> {
    Ok(Api::<NodeRemediation>::all(cp.client()).get(node).await?.status.and_then(|s| s.step_report))
}

/// A namespace pods can be created in: its `default` service account exists (made here, as no
/// controller-manager may run to make it).
pub async fn namespace(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(cp.client()).create(&PostParams::default(), &ns).await?;
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))?;
    match Api::<ServiceAccount>::namespaced(cp.client(), name).create(&PostParams::default(), &sa).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    Ok(())
}

/// A pod bound straight to `node` (kwok runs it), optionally with extra metadata.
pub async fn pod_on(cp: &ControlPlane, ns: &str, name: &str, node: &str, metadata: serde_json::Value) -> anyhow::Result<()> {
    let mut meta = serde_json::json!({"name": name});
    if let (Some(m), Some(extra)) = (meta.as_object_mut(), metadata.as_object()) {
        m.extend(extra.clone());
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], "tolerations": [{"operator": "Exists"}]},
    }))?;
    Api::<Pod>::namespaced(cp.client(), ns).create(&PostParams::default(), &pod).await?;
    Ok(())
}

pub async fn pods_on(cp: &ControlPlane, node: &str) -> anyhow::Result<Vec<String>> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut names: Vec<String> = Api::<Pod>::all(cp.client())
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|p| format!("{}/{}", p.metadata.namespace.unwrap_or_default(), p.metadata.name.unwrap_or_default()))
        .collect();
    names.sort();
    Ok(names)
}

pub async fn wait_running(cp: &ControlPlane, ns: &str, names: &[&str]) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(cp.client(), ns);
    for name in names {
        wait_for(Duration::from_secs(60), &format!("kwok to run pod {ns}/{name}"), || async {
            (pods.get(name).await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await?;
    }
    Ok(())
}

pub async fn budget(cp: &ControlPlane, ns: &str, name: &str, app: &str, min_available: i32) -> anyhow::Result<()> {
    let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }))?;
    Api::<PodDisruptionBudget>::namespaced(cp.client(), ns).create(&PostParams::default(), &pdb).await?;
    Ok(())
}

/// Fast pacing for tests; the deadline comes from each request.
pub fn quick_drains() -> DrainConfig {
    DrainConfig { backoff: EngineDuration::from_millis(200), max_backoff: EngineDuration::from_secs(1), ..DrainConfig::default() }
}

/// What the test's HTTP receiver saw: method and path, headers (lower-case names), JSON body.
#[derive(Debug, Clone)]
pub struct Received {
    pub line: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
    /// The body as sent (a form, say).
    pub raw: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A one-purpose HTTP/1.1 server: answers each request with the next of `answers` (status, body).
pub async fn receiver(answers: Vec<(u16, &'static str)>) -> anyhow::Result<(String, Arc<Mutex<Vec<Received>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/nodemedic/steps", listener.local_addr()?);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for (code, body) in answers {
            let Ok((stream, _)) = listener.accept().await else { return };
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            if stream.read_line(&mut line).await.is_err() {
                return;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if stream.read_line(&mut h).await.is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((n, v)) = h.split_once(':') {
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()).unwrap_or(0);
            let mut raw = vec![0; length];
            if stream.read_exact(&mut raw).await.is_err() {
                return;
            }
            let body_seen = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
            if let Ok(mut v) = log.lock() {
                v.push(Received {
                    line: line.trim().to_string(),
                    headers,
                    body: body_seen,
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                });
            }
            let answer = format!(
                "HTTP/1.1 {code} Answer\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.get_mut().write_all(answer.as_bytes()).await;
            let _ = stream.get_mut().shutdown().await;
        }
    });
    Ok((url, seen))
}

/// Reconciles the `gpu-workers` policy with `executor` until `check` holds, every 300 ms for at most 60 s.
pub async fn reconcile_until<T, F, Fut>(
    cp: &ControlPlane,
    executor: &dyn nodemedic_controller::Executor,
    what: &str,
    check: F,
) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        nodemedic_controller::Reconciler::new(cp.client(), executor).reconcile("gpu-workers", now()).await?;
        if let Some(t) = check().await {
            return Ok(t);
        }
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
