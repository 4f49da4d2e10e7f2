//! The webhook executor: hands a step to a site's HTTP endpoint (a provisioning system, a script
//! host), with an idempotency key so a resend (a new leader resuming the step) is recognised.

use crate::executors::{ExecutorError, WebhookConfig, report, std_duration, tail};
use crate::{ExecFuture, Executor, StepRequest};
use kube::Client;
use nodemedic_core::observe::ReportedOutcome;
use nodemedic_core::{RemediationStep, Time};
use nodemedic_k8s::field_managers;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Mutex;

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
    /// Sent again by a new leader for work whose outcome it has not seen (absent on a first send).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
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
            resumed: false,
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
    /// (node, attempt, step) this process has sent, so a resume after its own send is not a resend.
    sent: Mutex<HashSet<(String, u32, RemediationStep)>>,
}

impl WebhookExecutor {
    pub fn new(client: Client, config: WebhookConfig) -> Result<WebhookExecutor, ExecutorError> {
        let bad = |message: String| ExecutorError::Webhook { url: config.url.clone(), message };
        let url = reqwest::Url::parse(&config.url).map_err(|e| bad(format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("only http and https are supported".into()));
        }
        let http = reqwest::Client::builder().timeout(std_duration(config.timeout)).build().map_err(|e| bad(e.to_string()))?;
        Ok(WebhookExecutor { client, http, config, sent: Mutex::default() })
    }

    /// Marks the request sent by this process; false when it already was.
    fn first_send(&self, request: &StepRequest) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.insert((request.node.clone(), request.attempt, request.step))
    }

    /// Forgets a send that failed, so the next pass's `resume` sends it again (same idempotency key)
    /// instead of leaving the step to time out unheard.
    fn forget(&self, request: &StepRequest) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.remove(&(request.node.clone(), request.attempt, request.step));
    }

    /// Sends, forgetting the send when it failed.
    async fn send_or_forget(&self, request: &StepRequest, resumed: bool) -> Result<(), String> {
        let result = self.send(request, resumed).await;
        if result.is_err() {
            self.forget(request);
        }
        result
    }

    async fn send(&self, request: &StepRequest, resumed: bool) -> Result<(), String> {
        let url = &self.config.url;
        let body = WebhookRequest { resumed, ..WebhookRequest::new(request) };
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
        let answer = match nodemedic_core::input::from_json_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(answer)) => answer,
            // `{"outcome": "failed", …, "outcome": "succeeded"}` says two things: refused, not guessed.
            Err(e @ nodemedic_core::input::InputError::DuplicateKey { .. }) => {
                return Err(format!("webhook {url} answered {status} with an ambiguous body: {e}"));
            }
            _ => return Ok(()), // Accepted; the site reports when it is done.
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
        self.first_send(request);
        Box::pin(self.send_or_forget(request, false))
    }

    fn executor_for(&self, _step: RemediationStep) -> Option<String> {
        Some(format!("the webhook {}", self.config.url))
    }

    /// Sent again (once per process, and again on the next pass while the site cannot be reached or
    /// refuses) with the same idempotency key and `resumed: true`: a site that has the work
    /// deduplicates it and may answer with its outcome, which is reported at once.
    fn resume<'a>(&'a self, request: &'a StepRequest) -> ExecFuture<'a> {
        let first = self.first_send(request);
        Box::pin(async move { if first { self.send_or_forget(request, true).await } else { Ok(()) } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_key_is_node_attempt_step() {
        let req = StepRequest {
            node: "gpu-7".into(),
            step: RemediationStep::Replace,
            attempt: 3,
            deadline: None,
            reason: "r".into(),
            template: None,
        };
        assert_eq!(WebhookRequest::new(&req).idempotency_key, "gpu-7/3/replace");
    }
}
