//! Executors: how the steps the engine decides are carried out.
//!
//! - [`DrainExecutor`] (in [`crate::drain`]) evicts a node's pods through the Eviction API, honouring
//!   PodDisruptionBudgets and the policy's drain settings.
//! - [`WebhookExecutor`] hands a step to a site's HTTP endpoint (a provisioning system, a script host).
//! - [`CommandExecutor`] runs a site script with the request in its environment.
//! - [`NoopExecutor`] only logs (monitor-only mode).
//! - [`StepRouter`] sends each step to the executor configured for it ([`ExecutorsConfig`]).
//!
//! Every executor follows the [`Executor`] contract: `execute` returns once the request is
//! accepted, and the outcome arrives later as a `stepReport` on the node's NodeRemediation
//! ([`nodemedic_k8s::report_step`]). Work that runs in the background (a drain, a command) is started
//! at most once per (node, attempt, step) by one executor, however often it is asked. A new leader
//! calls [`Executor::resume`] for the steps its records show in flight without a report: the drain
//! carries on from its recorded progress, a command runs again (`NODEMEDIC_RESUMED=1`), a webhook is
//! sent again with the same idempotency key so the site can answer with the outcome. A command or
//! provider whose report could not be written is resumed the same way on the next pass
//! (`report_or_resume`), and a webhook whose send failed is sent again.

pub use crate::drain::{DrainExecutor, MIRROR_POD_ANNOTATION, PodDisposition, pod_disposition};
use crate::providers::{ProviderConfig, ProviderExecutor};
pub use crate::webhook::{WebhookExecutor, WebhookRequest};
use crate::{AgentExecutor, ExecFuture, Executor, StepRequest};
use kube::Client;
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
    /// How `external` steps (medik8s External Remediation API) wait for the remediator.
    #[serde(default)]
    pub external: crate::external::ExternalConfig,
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
    /// A machine provider carries it out (`provider: {clusterApi: {}}`, `{gce: {}}`,
    /// `{civo: {region, apiKeyFile}}`, `{recreateNode: {}}`).
    Provider(ProviderConfig),
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

pub(crate) fn std_duration(d: Duration) -> std::time::Duration {
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

    /// Forgets the work started for this (node, attempt, step), so that the next `resume` starts it
    /// again; work for another attempt or step is left alone.
    pub(crate) fn forget(&self, req: &StepRequest) {
        let mut map = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&req.node).is_some_and(|(attempt, step, _)| *attempt == req.attempt && *step == req.step) {
            map.remove(&req.node);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Work dies with the executor that started it, as it would with its process.
impl Drop for Started {
    fn drop(&mut self) {
        let map = self.by_node.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, _, handle) in map.values() {
            if let Some(h) = handle {
                h.abort();
            }
        }
    }
}

/// Writes the step's outcome on the node's NodeRemediation, retrying a few times when the API server
/// does not answer. A record that is gone is not an error: nothing waits for the report any more.
pub(crate) async fn report(
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

/// Like [`report`], for background work that can be resumed: a report that could not be written for
/// a passing reason (the API server away, overloaded or in conflict) is logged and the work forgotten,
/// so the next pass hands the step, still without a report, back to `resume`, which starts it again
/// (a command runs resumed and reads back its outcome; a provider is asked again) instead of leaving
/// the step to time out unheard. A refusal (403, 422 …) would be refused again: only logged.
pub(crate) async fn report_or_resume(
    client: &Client,
    field_manager: &str,
    req: &StepRequest,
    outcome: ReportedOutcome,
    message: String,
    started: &std::sync::Weak<Started>,
) {
    match report(client, field_manager, req, outcome, message).await {
        Ok(()) => {}
        Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 => {
            tracing::error!(node = %req.node, step = %req.step, attempt = req.attempt, error = %s, "the step report was refused; the engine will time the step out");
        }
        Err(e) => {
            tracing::error!(node = %req.node, step = %req.step, attempt = req.attempt, error = %e, "the step report could not be written; the step is resumed on the next pass");
            // A weak handle: work must not keep its executor's bookkeeping alive (dropping the
            // executor stops its work).
            if let Some(started) = started.upgrade() {
                started.forget(req);
            }
        }
    }
}

/// The end of `text`, at most `max` bytes (cut on a character boundary), marked when cut.
pub(crate) fn tail(text: &str, max: usize) -> String {
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

    fn spawn(&self, request: &StepRequest, resumed: bool) -> Result<AbortHandle, String> {
        let program = &self.argv[0];
        let mut command = tokio::process::Command::new(program);
        if resumed {
            command.env("NODEMEDIC_RESUMED", "1");
        }
        let child = command
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
        let (client, req, program, started) =
            (self.client.clone(), request.clone(), program.clone(), std::sync::Arc::downgrade(&self.started));
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
            report_or_resume(&client, field_managers::EXECUTOR, &req, outcome, message, &started).await;
        })
        .abort_handle())
    }
}

impl Executor for CommandExecutor {
    fn execute<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move {
            let started = self.started.start(request, || self.spawn(request, false))?;
            if !started {
                tracing::info!(node = %request.node, step = %request.step, attempt = request.attempt, "command already started for this attempt");
            }
            Ok(())
        })
    }

    fn executor_for(&self, _step: RemediationStep) -> Option<String> {
        Some(format!("the command {}", self.argv[0]))
    }

    /// The process that ran the command is gone with its leader: run it again (once per process),
    /// with `NODEMEDIC_RESUMED=1`; site scripts key their work on node and attempt.
    fn resume<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        Box::pin(async move {
            if self.started.start(request, || self.spawn(request, true))? {
                tracing::info!(node = %request.node, step = %request.step, attempt = request.attempt, "command run again for a step in flight without a report");
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

    fn executor_for(&self, _step: RemediationStep) -> Option<String> {
        Some("nothing (noop: logged only)".into())
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

    /// Builds the executors `config` names: the defaults (drain, agent for a GPU reset, reboot and
    /// reimage), then
    /// the configured steps. One drain executor serves every step routed to `drain`.
    pub fn from_config(client: Client, config: &ExecutorsConfig) -> Result<StepRouter, ExecutorError> {
        let drain: Arc<dyn Executor> = Arc::new(DrainExecutor::new(client.clone(), config.drain.clone()));
        let agent: Arc<dyn Executor> = Arc::new(AgentExecutor);
        let mut router = StepRouter::new()
            .route(RemediationStep::Drain, drain.clone())
            .route(RemediationStep::ResetGpu, agent.clone())
            .route(RemediationStep::Reboot, agent.clone())
            .route(RemediationStep::Reimage, agent.clone());
        let power: Arc<dyn Executor> = Arc::new(crate::bmc::PowerExecutor::new(client.clone(), config.power.clone()));
        router = router.route(RemediationStep::PowerOff, power.clone()).route(RemediationStep::PowerCycle, power);
        let external = crate::external::ExternalExecutor::new(client.clone(), config.external.clone());
        router = router.route(RemediationStep::External, Arc::new(external));
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
                StepExecutorConfig::Provider(p) => {
                    let provider = p.build(&client).map_err(|message| ExecutorError::Config { step: *step, message })?;
                    if !provider.steps().contains(step) {
                        let message = format!("the {} provider cannot carry out {step}", provider.name());
                        return Err(ExecutorError::Config { step: *step, message });
                    }
                    Arc::new(ProviderExecutor::new(client.clone(), provider))
                }
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

    fn resume<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        match self.routes.get(&request.step) {
            Some(executor) => executor.resume(request),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn executor_for(&self, step: RemediationStep) -> Option<String> {
        self.routes.get(&step).and_then(|e| e.executor_for(step))
    }

    fn check_policy<'a>(&'a self, policy: &'a nodemedic_core::Policy) -> crate::CheckFuture<'a> {
        match self.routes.get(&RemediationStep::External) {
            Some(executor) if policy.ladder.iter().any(|ls| ls.template.is_some()) => executor.check_policy(policy),
            _ => Box::pin(async { None }),
        }
    }

    /// The external step's executor is the one that leaves something behind (its remediation CR).
    fn release<'a>(&'a self, policy: &'a nodemedic_core::Policy, records: &'a nodemedic_core::Records) -> ExecFuture<'a> {
        match self.routes.get(&RemediationStep::External) {
            Some(executor) if policy.ladder.iter().any(|ls| ls.template.is_some()) => executor.release(policy, records),
            _ => Box::pin(async { Ok(()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let req = StepRequest {
            node: "gpu-7".into(),
            step: RemediationStep::Replace,
            attempt: 2,
            deadline: None,
            reason: "r".into(),
            template: None,
        };
        let err = router.execute(&req).await.err().unwrap_or_default();
        assert!(err.contains("replace") && err.contains("gpu-7"), "{err}");
        let drain = StepRequest { step: RemediationStep::Drain, ..req };
        assert_eq!(router.execute(&drain).await, Ok(()));
        assert_eq!(StepRouter::monitor_only().steps().count(), RemediationStep::ALL.len());
    }
}
