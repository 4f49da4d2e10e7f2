//! nodemedic-api owns the actions API: seed 002's `POST /actions` (people and automation cordon node
//! pools, restart JobSets, repair instances over HTTP), `GET /actions/{id}`, `GET /nodes` and the
//! OpenAPI document at `/openapi.json`. Requests are authenticated (TokenReview) and authorised
//! (SubjectAccessReview on resource `actions` in group `nodemedic.io`), held to the same safety
//! gates as automatic remediation (`nodemedic_core::manual`), recorded durably (one ConfigMap per
//! action) and told as Kubernetes Events on every object they touch.
//!
//! Every controller replica serves the API; only the leader writes. A replica that does not hold
//! the leader Lease answers writes with 503, a `Retry-After` header and the leader's identity.
//!
//! It must not decide remediation itself: the gates come from nodemedic-core.

pub mod actions;
pub mod auth;
pub mod cert_reload;
pub mod nodes;
pub mod openapi;
pub mod preflight;
pub mod request;
pub mod store;
pub mod tls;
pub mod validate;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
/// The providers live with the executors, so the ladder's replace step and the actions API share one interface.
pub use nodemedic_controller::providers::{self as provider, GceProvider, Provider, RecreateNodeProvider};
pub use request::{ActionRequest, ActionType};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// GKE's node-pool label (seed 002).
pub const DEFAULT_NODE_POOL_LABEL: &str = "cloud.google.com/gke-nodepool";
pub const DEFAULT_TOPOLOGY_LABEL: &str = "cloud.google.com/gke-tpu-topology";
pub const DEFAULT_ACCELERATOR_COUNT_LABEL: &str = "cloud.google.com/gke-accelerator-count";
/// Requests with a larger body are refused with 413.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// How long one request may wait on the API server, all its calls together, before it is answered
/// 504 (`--api-server-timeout`, which is also each call's timeout on the client).
pub const DEFAULT_API_SERVER_TIMEOUT: std::time::Duration = nodemedic_controller::client::DEFAULT_API_SERVER_TIMEOUT;

/// The leader Lease this replica campaigns for; writes are served only while it holds it.
#[derive(Debug, Clone)]
pub struct LeaderLease {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub node_pool_label: String,
    pub topology_label: String,
    pub accelerator_count_label: String,
    /// TokenReview + SubjectAccessReview on every request but `/openapi.json`. Off only when asked
    /// for explicitly (`--insecure-no-auth`).
    pub auth: bool,
    /// Where the action records (ConfigMaps) live.
    pub namespace: String,
    pub body_limit: usize,
    /// `None`: this process is the only writer (tests, `--insecure` local use without election).
    pub leader: Option<LeaderLease>,
    /// The events' reporting instance.
    pub instance: String,
    /// The deadline of one request's API-server work (see [`DEFAULT_API_SERVER_TIMEOUT`]).
    pub api_server_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            node_pool_label: DEFAULT_NODE_POOL_LABEL.into(),
            topology_label: DEFAULT_TOPOLOGY_LABEL.into(),
            accelerator_count_label: DEFAULT_ACCELERATOR_COUNT_LABEL.into(),
            auth: true,
            namespace: "default".into(),
            body_limit: DEFAULT_BODY_LIMIT,
            leader: None,
            instance: "nodemedic-api".into(),
            api_server_timeout: DEFAULT_API_SERVER_TIMEOUT,
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub client: kube::Client,
    pub config: Arc<ApiConfig>,
    pub provider: Arc<dyn Provider>,
    pub recorder: kube::runtime::events::Recorder,
}

impl ApiState {
    pub fn new(client: kube::Client, config: ApiConfig, provider: Arc<dyn Provider>) -> ApiState {
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter { controller: "nodemedic-api".into(), instance: Some(config.instance.clone()) },
        );
        ApiState { client, config: Arc::new(config), provider, recorder }
    }
}

pub use actions::{router, router_with};

/// The body of every answer to `POST /actions` (seed 002's `{"id"}` / `{"id", "error"}`), with the
/// field, gate or leader an error is about where there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionResponse {
    /// The action's id (as given, or generated); absent only when the request was refused before one was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What went wrong; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request field the error is about (dotted for nested fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The safety gates that refused (`paused`, `circuit_breaker`, `min_healthy`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<String>,
    /// On 503 from a standby replica: the replica that holds the leader lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// An error answer: a status and a JSON body naming what it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {}", body.error.as_deref().unwrap_or(""))]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ActionResponse,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, body: ActionResponse { error: Some(message.into()), ..Default::default() } }
    }
    pub fn field(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(status, message);
        e.body.field = Some(field.to_string());
        e
    }
    pub fn with_id(mut self, id: &str) -> Self {
        self.body.id = Some(id.to_string());
        self
    }
    /// A failed API-server call: 504 when it timed out, else 503 (the API server is away or
    /// refused what nodemedic itself asked, which the caller cannot fix either). Logged.
    pub fn kube(what: &str, e: kube::Error) -> Self {
        let status = if timed_out(&e) { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::SERVICE_UNAVAILABLE };
        tracing::error!(error = %e, status = status.as_u16(), "{what}: the API server call failed");
        ApiError::new(status, format!("{what}: the API server call failed: {e}"))
    }
}

/// Whether a kube error is a timeout (connect, read or write) rather than a refusal.
fn timed_out(e: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || err.to_string().to_ascii_lowercase().contains("timed out")
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Runs one request's API-server work under the deadline: 504 naming `what` when it expires (and
/// an error line in the log), so a caller never waits on an API server that does not answer.
pub async fn deadline<T>(
    state: &ApiState,
    what: &str,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    deadline_at(state, tokio::time::Instant::now() + state.config.api_server_timeout, what, work).await
}

/// As [`deadline`], with the instant given (several steps of one request share one deadline).
pub async fn deadline_at<T>(
    state: &ApiState,
    until: tokio::time::Instant,
    what: &str,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout_at(until, work).await {
        Ok(result) => result,
        Err(_) => {
            let limit = state.config.api_server_timeout;
            tracing::error!(deadline = ?limit, "{what}: the API server did not answer within the deadline");
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{what}: the API server did not answer within {} s; retry later", limit.as_secs_f64()),
            ))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_answer_says_when_to_retry_and_an_unauthenticated_one_how_to_authenticate() {
        let standby = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not the leader").into_response();
        assert_eq!(standby.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"5"[..]));
        let anonymous = ApiError::new(StatusCode::UNAUTHORIZED, "no token").into_response();
        assert_eq!(anonymous.headers().get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    }
}
