//! Executors: how the steps the engine decides are carried out.
//!
//! - [`DrainExecutor`] evicts a node's pods through the Eviction API, honouring PodDisruptionBudgets.
//! - [`WebhookExecutor`] hands a step to a site's HTTP endpoint (a provisioning system, a script host).
//! - [`CommandExecutor`] runs a site script with the request in its environment.
//! - [`NoopExecutor`] only logs (monitor-only mode).
//! - [`StepRouter`] sends each step to the executor configured for it ([`ExecutorsConfig`]).
//!
//! Every executor follows the [`Executor`] contract: `execute` returns once the request is
//! accepted, and the outcome arrives later as a `stepReport` on the node's NodeRemediation
//! ([`nodemedic_k8s::report_step`]). Work that runs in the background (a drain, a command) is started
//! at most once per (node, attempt, step) by one executor, however often it is asked.

use crate::{AgentExecutor, ExecFuture, Executor, StepRequest};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Preconditions};
use kube::{Client, ResourceExt};
use nodemedic_core::observe::{ReportedOutcome, StepReport};
use nodemedic_core::{Duration, RemediationStep, Time};
use nodemedic_k8s::field_managers;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;

/// Why an executor could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("executor for step {step}: {message}")]
    Config { step: RemediationStep, message: String },
    #[error("webhook {url}: {message}")]
    Webhook { url: String, message: String },
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Which executor carries out each step, as a YAML or flags layer writes it (camelCase):
///
/// ```yaml
/// drain: {timeout: 15m, backoff: 2s, maxBackoff: 1m}
/// steps:
///   replace: {webhook: {url: "https://provisioning.example/replace", tokenFile: /etc/nodemedic/token}}
///   reimage: {command: [/opt/site/reimage.sh, --wipe]}
/// ```
///
/// A step not listed under `steps` gets its default: `drain` the drain executor, `reboot` and
/// `reimage` the node agent. `replace` has no default; asking for it without a configured executor
/// is an error naming the step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutorsConfig {
    /// How drains are paced.
    #[serde(default)]
    pub drain: DrainConfig,
    /// How long a command may run when the engine's request carries no deadline (default 30m).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Duration,
    /// Per step, the executor that carries it out; overrides the defaults.
    #[serde(default)]
    pub steps: BTreeMap<RemediationStep, StepExecutorConfig>,
    /// BMCs for the power steps (`powerOff`, `powerCycle`), which go to the BMC power executor.
    #[serde(default)]
    pub power: crate::bmc::PowerConfig,
}

fn default_command_timeout() -> Duration {
    Duration::from_mins(30)
}

/// One step's executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepExecutorConfig {
    /// The node agent acts on the persisted record and reports back itself (`agent`).
    Agent,
    /// Nothing is done; the request is only logged (`noop`).
    Noop,
    /// The node's pods are evicted (`drain`), paced by the top-level `drain` settings.
    Drain,
    /// The request is POSTed to a site endpoint (`webhook: {url, tokenFile, timeout}`).
    Webhook(WebhookConfig),
    /// A site script runs (`command: [argv...]`), its exit status is the outcome.
    Command(Vec<String>),
}

/// How a drain is paced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DrainConfig {
    /// How long a drain may take when the request carries no deadline (normally the step's timeout
    /// in the policy sets the deadline). Default 10m.
    pub timeout: Duration,
    /// The first pause before refused evictions are tried again; it doubles each round. Default 1s.
    pub backoff: Duration,
    /// The longest pause between rounds. Default 30s.
    pub max_backoff: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { timeout: Duration::from_mins(10), backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(30) }
    }
}

/// Where a webhook executor sends its requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint, `http://` or `https://`.
    pub url: String,
    /// A file holding a bearer token, read at every request so a rotated token is picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// How long to wait for the endpoint's answer (default 30s).
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(30)
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

/// Time left until `deadline`, or `fallback` when the request has none; zero once it has passed.
pub(crate) fn time_left(deadline: Option<Time>, fallback: Duration) -> std::time::Duration {
    let ms = match deadline {
        Some(d) => d.as_millis() - crate::now().as_millis(),
        None => fallback.as_millis(),
    };
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn std_duration(d: Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(0))
}

/// The attempt and step of a node's background work, and the handle to stop it.
type StartedWork = (u32, RemediationStep, Option<AbortHandle>);

/// The (attempt, step) each node's background work was last started for, so that a repeated
/// request does not start it again.
#[derive(Default)]
pub(crate) struct Started {
    by_node: Mutex<HashMap<String, StartedWork>>,
    count: std::sync::atomic::AtomicU64,
}

impl Started {
    /// Starts the work with `start` unless this (node, attempt, step) was started before or a newer
    /// attempt already runs; returns whether it started. Work for an older attempt of the node is
    /// stopped: the engine has moved on and would ignore its report.
    pub(crate) fn start(&self, req: &StepRequest, start: impl FnOnce() -> Result<AbortHandle, String>) -> Result<bool, String> {
        let mut map = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((attempt, step, handle)) = map.get(&req.node) {
            if *attempt > req.attempt || (*attempt == req.attempt && *step == req.step) {
                return Ok(false);
            }
            if let Some(h) = handle {
                h.abort();
            }
        }
        let handle = start()?;
        map.insert(req.node.clone(), (req.attempt, req.step, Some(handle)));
        self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Writes the step's outcome on the node's NodeRemediation, retrying a few times when the API server
/// does not answer. A record that is gone is not an error: nothing waits for the report any more.
async fn report(
    client: &Client,
    field_manager: &str,
    req: &StepRequest,
    outcome: ReportedOutcome,
    message: String,
) -> Result<(), kube::Error> {
    let report = StepReport { attempt: req.attempt, outcome, at: crate::now(), message };
    let mut pause = std::time::Duration::from_millis(500);
    let mut tries = 0;
    loop {
        tries += 1;
        match nodemedic_k8s::report_step(client, field_manager, &req.node, &report).await {
            Ok(_) => {
                tracing::info!(node = %req.node, step = %req.step, attempt = req.attempt, outcome = ?outcome, message = %report.message, "step reported");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::warn!(node = %req.node, step = %req.step, attempt = req.attempt, "the NodeRemediation is gone; the report is dropped");
                return Ok(());
            }
            // A refusal other than a conflict or throttling will not change by asking again.
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 => {
                return Err(kube::Error::Api(s));
            }
            Err(e) if tries >= 5 => return Err(e),
            Err(e) => {
                tracing::warn!(node = %req.node, step = %req.step, attempt = req.attempt, error = %e, "writing the step report failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

/// Like [`report`], for background tasks: a report that cannot be written is logged.
pub(crate) async fn report_or_log(client: &Client, field_manager: &str, req: &StepRequest, outcome: ReportedOutcome, message: String) {
    if let Err(e) = report(client, field_manager, req, outcome, message).await {
        tracing::error!(node = %req.node, step = %req.step, attempt = req.attempt, error = %e, "the step report could not be written; the engine will time the step out");
    }
}

/// The end of `text`, at most `max` bytes (cut on a character boundary), marked when cut.
fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

// ---------------------------------------------------------------------------------------------
// Drain
// ---------------------------------------------------------------------------------------------

/// What a drain does with a pod on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDisposition {
    /// Evict it.
    Evict,
    /// Already being deleted: wait until it is gone.
    Terminating,
    /// Run by a DaemonSet, which would put it straight back (and tolerates the repair taints): left alone.
    DaemonSet,
    /// The API server's mirror of a static pod the kubelet runs from a file: eviction cannot remove it.
    Mirror,
}

/// The annotation the kubelet sets on the mirror pod of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// How a drain treats `pod`.
pub fn pod_disposition(pod: &Pod) -> PodDisposition {
    if pod.annotations().contains_key(MIRROR_POD_ANNOTATION) {
        return PodDisposition::Mirror;
    }
    let daemon_set = pod.owner_references().iter().any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    if daemon_set {
        return PodDisposition::DaemonSet;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodDisposition::Terminating;
    }
    PodDisposition::Evict
}

/// Why an eviction was refused, in words: a budget's refusal names the budget.
fn refusal(status: &kube::core::Status) -> String {
    let mut causes = status.details.iter().flat_map(|d| d.causes.iter());
    if let Some(cause) = causes.find(|c| c.reason == "DisruptionBudget") {
        // The API server writes "The disruption budget NAME needs N healthy pods and has M currently"
        // (or "... is still being processed by the server.").
        let Some(rest) = cause.message.strip_prefix("The disruption budget ") else {
            return format!("blocked by a PodDisruptionBudget: {}", cause.message);
        };
        let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
        let why = why.trim().trim_end_matches('.');
        return if why.is_empty() {
            format!("blocked by PodDisruptionBudget {name}")
        } else {
            format!("blocked by PodDisruptionBudget {name} ({why})")
        };
    }
    format!("eviction refused ({} {}): {}", status.code, status.reason, status.message)
}

/// Evicts the pods of a node through the Eviction API, so PodDisruptionBudgets are honoured. The node
/// is already cordoned by the repair taints. An allowed eviction deletes the pod (with its grace
/// period); the drain waits until it is gone. DaemonSet and mirror pods are left in place. A refused eviction (429) is tried again with backoff
/// until the step's deadline; the drain reports `Succeeded` once every evictable pod is gone, or
/// `Failed` at the deadline naming the pods that remain and why.
pub struct DrainExecutor {
    client: Client,
    config: DrainConfig,
    started: Arc<Started>,
}

impl DrainExecutor {
    pub fn new(client: Client, config: DrainConfig) -> DrainExecutor {
        DrainExecutor { client, config, started: Arc::default() }
    }

    /// How many drains this executor has started (repeated requests for one attempt count once).
    pub fn drains_started(&self) -> u64 {
        self.started.count()
    }
}

impl Executor for DrainExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move {
            if request.step != RemediationStep::Drain {
                return Err(format!("the drain executor cannot run step {}", request.step));
            }
            let started = self.started.start(request, || {
                let (client, config, req) = (self.client.clone(), self.config.clone(), request.clone());
                Ok(tokio::spawn(async move {
                    let (outcome, message) = drain(&client, &config, &req).await;
                    report_or_log(&client, field_managers::DRAIN, &req, outcome, message).await;
                })
                .abort_handle())
            })?;
            if started {
                tracing::info!(node = %request.node, attempt = request.attempt, "drain started");
            } else {
                tracing::info!(node = %request.node, attempt = request.attempt, "drain already started for this attempt");
            }
            Ok(())
        })
    }
}

/// Runs one drain to its end: the outcome and the message for the report.
async fn drain(client: &Client, config: &DrainConfig, req: &StepRequest) -> (ReportedOutcome, String) {
    let until = tokio::time::Instant::now() + time_left(req.deadline, config.timeout);
    let all: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", req.node));
    let mut evicted = std::collections::BTreeSet::new();
    let mut pause = std_duration(config.backoff);
    loop {
        // Pod (namespace/name) → why it is still there.
        let mut remaining: BTreeMap<String, String> = BTreeMap::new();
        let (mut daemon_sets, mut mirrors) = (0, 0);
        let mut refused = false;
        match all.list(&on_node).await {
            Err(e) => {
                remaining.insert(String::new(), format!("listing the node's pods failed: {e}"));
                refused = true;
            }
            Ok(pods) => {
                for pod in &pods.items {
                    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
                    match pod_disposition(pod) {
                        PodDisposition::DaemonSet => daemon_sets += 1,
                        PodDisposition::Mirror => mirrors += 1,
                        PodDisposition::Terminating => {
                            remaining.insert(key, "still terminating".into());
                        }
                        PodDisposition::Evict => {
                            if let Some(why) = evict(client, pod, &mut evicted).await {
                                refused = true;
                                remaining.insert(key, why);
                            } else if pod.uid().is_some_and(|u| evicted.contains(&u)) {
                                remaining.insert(key, "evicted, still terminating".into());
                            }
                        }
                    }
                }
            }
        }
        if remaining.is_empty() {
            let mut message = format!("evicted {} pods", evicted.len());
            let left: Vec<String> = [(daemon_sets, "DaemonSet"), (mirrors, "mirror")]
                .into_iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, kind)| format!("{n} {kind} pods"))
                .collect();
            if !left.is_empty() {
                message.push_str(&format!("; left in place: {}", left.join(", ")));
            }
            return (ReportedOutcome::Succeeded, message);
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return (ReportedOutcome::Failed, unfinished(&req.node, evicted.len(), &remaining));
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = if refused { (pause * 2).min(std_duration(config.max_backoff)) } else { std_duration(config.backoff) };
    }
}

/// Asks the Eviction API to evict `pod`; `None` when it was accepted (or the pod is gone), else why not.
async fn evict(client: &Client, pod: &Pod, evicted: &mut std::collections::BTreeSet<String>) -> Option<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    // The UID precondition keeps a pod that replaced this one under the same name from being
    // evicted by mistake; it is looked at afresh in the next round.
    let params = EvictParams {
        delete_options: Some(DeleteParams {
            preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
            ..DeleteParams::default()
        }),
        ..EvictParams::default()
    };
    match api.evict(&pod.name_any(), &params).await {
        Ok(_) => {
            evicted.extend(pod.uid());
            None
        }
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(kube::Error::Api(s)) if s.code == 409 => Some("replaced while being evicted".into()),
        Err(kube::Error::Api(s)) => Some(refusal(&s)),
        Err(e) => Some(format!("eviction failed: {e}")),
    }
}

/// The failure report: which pods remain and why (at most ten named).
fn unfinished(node: &str, evicted: usize, remaining: &BTreeMap<String, String>) -> String {
    const NAMED: usize = 10;
    let mut parts: Vec<String> =
        remaining.iter().take(NAMED).map(|(pod, why)| if pod.is_empty() { why.clone() } else { format!("pod {pod} {why}") }).collect();
    if remaining.len() > NAMED {
        parts.push(format!("and {} more", remaining.len() - NAMED));
    }
    format!("drain of node {node} did not finish by its deadline (evicted {evicted} pods): {}", parts.join("; "))
}

// ---------------------------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------------------------

/// The JSON a webhook receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRequest {
    pub node: String,
    pub step: RemediationStep,
    pub attempt: u32,
    /// When the engine stops waiting for the report (RFC 3339), if it will.
    pub deadline: Option<Time>,
    pub reason: String,
    /// `<node>/<attempt>/<step>`: the same for every retry of one request, so the site can deduplicate.
    pub idempotency_key: String,
}

impl WebhookRequest {
    pub fn new(req: &StepRequest) -> WebhookRequest {
        WebhookRequest {
            node: req.node.clone(),
            step: req.step,
            attempt: req.attempt,
            deadline: req.deadline,
            reason: req.reason.clone(),
            idempotency_key: format!("{}/{}/{}", req.node, req.attempt, req.step),
        }
    }
}

/// A site's answer when it finished the step while answering.
#[derive(Debug, Deserialize)]
struct WebhookAnswer {
    outcome: ReportedOutcome,
    #[serde(default)]
    message: String,
}

/// Hands a step to a site's HTTP endpoint: POSTs a [`WebhookRequest`] (also sending the idempotency
/// key as the `Idempotency-Key` header, and a bearer token when configured). Any 2xx answer means
/// accepted: the site reports the outcome itself later, unless the answer's body is
/// `{"outcome": "succeeded"|"failed", "message": ...}`, which the executor reports at once.
pub struct WebhookExecutor {
    client: Client,
    http: reqwest::Client,
    config: WebhookConfig,
}

impl WebhookExecutor {
    pub fn new(client: Client, config: WebhookConfig) -> Result<WebhookExecutor, ExecutorError> {
        let bad = |message: String| ExecutorError::Webhook { url: config.url.clone(), message };
        let url = reqwest::Url::parse(&config.url).map_err(|e| bad(format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("only http and https are supported".into()));
        }
        let http = reqwest::Client::builder().timeout(std_duration(config.timeout)).build().map_err(|e| bad(e.to_string()))?;
        Ok(WebhookExecutor { client, http, config })
    }

    async fn send(&self, request: &StepRequest) -> Result<(), String> {
        let url = &self.config.url;
        let body = WebhookRequest::new(request);
        let mut post = self.http.post(url).header("Idempotency-Key", &body.idempotency_key).json(&body);
        if let Some(file) = &self.config.token_file {
            let token = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| format!("webhook {url}: reading the token file {}: {e}", file.display()))?;
            post = post.bearer_auth(token.trim());
        }
        let response = post.send().await.map_err(|e| format!("webhook {url} could not be reached: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("webhook {url} answered {status} but its body could not be read: {e}"))?;
        if !status.is_success() {
            return Err(format!("webhook {url} answered {status}: {}", tail(&text, 300)));
        }
        let Ok(serde_json::Value::Object(answer)) = serde_json::from_str::<serde_json::Value>(&text) else {
            return Ok(()); // Accepted; the site reports when it is done.
        };
        if !answer.contains_key("outcome") {
            return Ok(());
        }
        let answer: WebhookAnswer = serde_json::from_value(serde_json::Value::Object(answer))
            .map_err(|e| format!("webhook {url} answered {status} with an outcome nodemedic does not understand: {e}"))?;
        report(&self.client, field_managers::EXECUTOR, request, answer.outcome, answer.message)
            .await
            .map_err(|e| format!("webhook {url} reported the step done, but writing the report failed: {e}"))
    }
}

impl Executor for WebhookExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(self.send(request))
    }
}

// ---------------------------------------------------------------------------------------------
// Command
// ---------------------------------------------------------------------------------------------

/// Runs a site script for a step. The script gets `NODEMEDIC_NODE`, `NODEMEDIC_STEP`,
/// `NODEMEDIC_ATTEMPT` and `NODEMEDIC_REASON` in its environment; exit status 0 is reported as
/// `Succeeded`, anything else as `Failed` with the end of its stderr. It is killed at the step's
/// deadline (reported `Failed`).
pub struct CommandExecutor {
    client: Client,
    argv: Vec<String>,
    fallback_timeout: Duration,
    started: Arc<Started>,
}

/// How much of a failed command's stderr goes into the report.
const STDERR_TAIL: usize = 1024;

impl CommandExecutor {
    /// `fallback_timeout` bounds a run whose request carries no deadline.
    pub fn new(client: Client, argv: Vec<String>, fallback_timeout: Duration) -> Result<CommandExecutor, String> {
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err("the command is empty".into());
        }
        Ok(CommandExecutor { client, argv, fallback_timeout, started: Arc::default() })
    }

    /// How many runs this executor has started (repeated requests for one attempt count once).
    pub fn runs_started(&self) -> u64 {
        self.started.count()
    }

    fn spawn(&self, request: &StepRequest) -> Result<AbortHandle, String> {
        let program = &self.argv[0];
        let child = tokio::process::Command::new(program)
            .args(&self.argv[1..])
            .env("NODEMEDIC_NODE", &request.node)
            .env("NODEMEDIC_STEP", request.step.as_str())
            .env("NODEMEDIC_ATTEMPT", request.attempt.to_string())
            .env("NODEMEDIC_REASON", &request.reason)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("command {program} could not be started: {e}"))?;
        let left = time_left(request.deadline, self.fallback_timeout);
        let (client, req, program) = (self.client.clone(), request.clone(), program.clone());
        Ok(tokio::spawn(async move {
            // Dropping the child at the deadline kills it (kill_on_drop).
            let (outcome, message) = match tokio::time::timeout(left, child.wait_with_output()).await {
                Ok(Ok(out)) if out.status.success() => {
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
                    (
                        ReportedOutcome::Succeeded,
                        format!("{program} succeeded{}", if last.is_empty() { String::new() } else { format!(": {}", tail(last, 300)) }),
                    )
                }
                Ok(Ok(out)) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    (ReportedOutcome::Failed, format!("{program} failed ({}): {}", out.status, tail(&stderr, STDERR_TAIL)))
                }
                Ok(Err(e)) => (ReportedOutcome::Failed, format!("{program}: waiting for it failed: {e}")),
                Err(_) => (
                    ReportedOutcome::Failed,
                    format!("{program} did not finish by the step's deadline ({}s) and was killed", left.as_secs()),
                ),
            };
            report_or_log(&client, field_managers::EXECUTOR, &req, outcome, message).await;
        })
        .abort_handle())
    }
}

impl Executor for CommandExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move {
            let started = self.started.start(request, || self.spawn(request))?;
            if !started {
                tracing::info!(node = %request.node, step = %request.step, attempt = request.attempt, "command already started for this attempt");
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// No-op and router
// ---------------------------------------------------------------------------------------------

/// Monitor-only: logs what would be done, does nothing, reports nothing.
pub struct NoopExecutor;

impl Executor for NoopExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        tracing::info!(node = %request.node, step = %request.step, attempt = request.attempt, reason = %request.reason, "monitor-only: step not executed");
        Box::pin(async { Ok(()) })
    }
}

/// Sends each step to the executor configured for it; a step without one is an error naming it.
#[derive(Clone, Default)]
pub struct StepRouter {
    routes: BTreeMap<RemediationStep, Arc<dyn Executor>>,
}

impl StepRouter {
    /// A router with no routes.
    pub fn new() -> StepRouter {
        StepRouter::default()
    }

    /// Routes `step` to `executor` (replacing an earlier route).
    pub fn route(mut self, step: RemediationStep, executor: Arc<dyn Executor>) -> StepRouter {
        self.routes.insert(step, executor);
        self
    }

    /// Every step to the [`NoopExecutor`]: monitor-only mode.
    pub fn monitor_only() -> StepRouter {
        let noop: Arc<dyn Executor> = Arc::new(NoopExecutor);
        RemediationStep::ALL.into_iter().fold(StepRouter::new(), |r, step| r.route(step, noop.clone()))
    }

    /// The steps that have an executor.
    pub fn steps(&self) -> impl Iterator<Item = RemediationStep> + '_ {
        self.routes.keys().copied()
    }

    /// Builds the executors `config` names: the defaults (drain, agent for reboot and reimage), then
    /// the configured steps. One drain executor serves every step routed to `drain`.
    pub fn from_config(client: Client, config: &ExecutorsConfig) -> Result<StepRouter, ExecutorError> {
        let drain: Arc<dyn Executor> = Arc::new(DrainExecutor::new(client.clone(), config.drain.clone()));
        let agent: Arc<dyn Executor> = Arc::new(AgentExecutor);
        let mut router = StepRouter::new()
            .route(RemediationStep::Drain, drain.clone())
            .route(RemediationStep::Reboot, agent.clone())
            .route(RemediationStep::Reimage, agent.clone());
        let power: Arc<dyn Executor> = Arc::new(crate::bmc::PowerExecutor::new(client.clone(), config.power.clone()));
        router = router.route(RemediationStep::PowerOff, power.clone()).route(RemediationStep::PowerCycle, power);
        for (step, chosen) in &config.steps {
            let executor: Arc<dyn Executor> = match chosen {
                StepExecutorConfig::Agent => agent.clone(),
                StepExecutorConfig::Noop => Arc::new(NoopExecutor),
                StepExecutorConfig::Drain => drain.clone(),
                StepExecutorConfig::Webhook(w) => Arc::new(WebhookExecutor::new(client.clone(), w.clone())?),
                StepExecutorConfig::Command(argv) => Arc::new(
                    CommandExecutor::new(client.clone(), argv.clone(), config.command_timeout)
                        .map_err(|message| ExecutorError::Config { step: *step, message })?,
                ),
            };
            router = router.route(*step, executor);
        }
        Ok(router)
    }
}

impl Executor for StepRouter {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        match self.routes.get(&request.step) {
            Some(executor) => executor.execute(request),
            None => {
                let message = format!("no executor is configured for step {} (node {})", request.step, request.node);
                Box::pin(async move { Err(message) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Result<Pod, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn a_plain_pod_is_evicted() -> Result<(), serde_json::Error> {
        let p = pod(serde_json::json!({"metadata": {"name": "web-0", "namespace": "default"}}))?;
        assert_eq!(pod_disposition(&p), PodDisposition::Evict);
        Ok(())
    }

    #[test]
    fn a_daemonset_pod_is_left_alone_but_a_replicaset_pod_is_evicted() -> Result<(), serde_json::Error> {
        let owned_by = |kind: &str| {
            pod(serde_json::json!({"metadata": {"name": "p", "namespace": "kube-system", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": "u-1", "controller": true}]}}))
        };
        assert_eq!(pod_disposition(&owned_by("DaemonSet")?), PodDisposition::DaemonSet);
        assert_eq!(pod_disposition(&owned_by("ReplicaSet")?), PodDisposition::Evict);
        Ok(())
    }

    #[test]
    fn a_mirror_pod_is_left_alone() -> Result<(), serde_json::Error> {
        let p = pod(serde_json::json!({"metadata": {"name": "etcd-node", "namespace": "kube-system",
            "annotations": {MIRROR_POD_ANNOTATION: "abc"}}}))?;
        assert_eq!(pod_disposition(&p), PodDisposition::Mirror);
        Ok(())
    }

    #[test]
    fn a_pod_being_deleted_is_waited_for_not_evicted_again() -> Result<(), serde_json::Error> {
        let p = pod(serde_json::json!({"metadata": {"name": "p", "namespace": "default", "deletionTimestamp": "2026-01-01T00:00:00Z"}}))?;
        assert_eq!(pod_disposition(&p), PodDisposition::Terminating);
        Ok(())
    }

    #[test]
    fn a_budget_refusal_names_the_budget() -> Result<(), serde_json::Error> {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget db-pdb needs 1 healthy pods and has 1 currently"}]},
        }))?;
        assert_eq!(refusal(&status), "blocked by PodDisruptionBudget db-pdb (needs 1 healthy pods and has 1 currently)");
        let other: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 500, "reason": "InternalError", "message": "This pod has more than one PodDisruptionBudget"}))?;
        assert!(refusal(&other).contains("more than one PodDisruptionBudget"));
        Ok(())
    }

    #[test]
    fn a_long_stderr_keeps_its_end() {
        let long = format!("{}the real error", "x".repeat(5000));
        let t = tail(&long, 20);
        assert!(t.ends_with("the real error") && t.starts_with('…'), "{t}");
        assert_eq!(tail("  short\n", 20), "short");
        // Never cuts inside a character.
        assert_eq!(tail("ééé", 3), "…é");
    }

    #[test]
    fn the_failure_message_names_at_most_ten_pods() {
        let remaining: BTreeMap<String, String> = (0..12).map(|i| (format!("ns/p-{i:02}"), "blocked".to_string())).collect();
        let m = unfinished("gpu-1", 3, &remaining);
        assert!(m.contains("pod ns/p-00 blocked") && m.contains("and 2 more") && !m.contains("p-11"), "{m}");
    }

    #[test]
    fn the_config_reads_like_the_docs() -> Result<(), Box<dyn std::error::Error>> {
        let yaml = r#"
drain: {timeout: 15m, backoff: 2s}
steps:
  replace: {webhook: {url: "https://provisioning.example/replace", tokenFile: /etc/nodemedic/token}}
  reimage: {command: [/opt/site/reimage.sh, --wipe]}
  reboot: noop
"#;
        let config: ExecutorsConfig = serde_saphyr::from_str(yaml)?;
        assert_eq!(
            config.drain,
            DrainConfig { timeout: Duration::from_mins(15), backoff: Duration::from_secs(2), ..DrainConfig::default() }
        );
        assert_eq!(config.command_timeout, Duration::from_mins(30));
        assert_eq!(
            config.steps.get(&RemediationStep::Replace),
            Some(&StepExecutorConfig::Webhook(WebhookConfig {
                url: "https://provisioning.example/replace".into(),
                token_file: Some("/etc/nodemedic/token".into()),
                timeout: Duration::from_secs(30),
            }))
        );
        assert_eq!(
            config.steps.get(&RemediationStep::Reimage),
            Some(&StepExecutorConfig::Command(vec!["/opt/site/reimage.sh".into(), "--wipe".into()]))
        );
        assert_eq!(config.steps.get(&RemediationStep::Reboot), Some(&StepExecutorConfig::Noop));
        assert!(serde_saphyr::from_str::<ExecutorsConfig>("drian: {}").is_err(), "a misspelt key is refused");
        Ok(())
    }

    #[tokio::test]
    async fn a_step_without_an_executor_is_an_error_naming_it() {
        let router = StepRouter::new().route(RemediationStep::Drain, Arc::new(NoopExecutor));
        let req = StepRequest { node: "gpu-7".into(), step: RemediationStep::Replace, attempt: 2, deadline: None, reason: "r".into() };
        let err = router.execute(&req).await.err().unwrap_or_default();
        assert!(err.contains("replace") && err.contains("gpu-7"), "{err}");
        let drain = StepRequest { step: RemediationStep::Drain, ..req };
        assert_eq!(router.execute(&drain).await, Ok(()));
        assert_eq!(StepRouter::monitor_only().steps().count(), RemediationStep::ALL.len());
    }

    #[test]
    fn the_idempotency_key_is_node_attempt_step() {
        let req = StepRequest { node: "gpu-7".into(), step: RemediationStep::Replace, attempt: 3, deadline: None, reason: "r".into() };
        assert_eq!(WebhookRequest::new(&req).idempotency_key, "gpu-7/3/replace");
    }
}
