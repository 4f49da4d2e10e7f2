//! The delivery interface every channel implements.

use crate::incident::Incident;
use std::future::Future;
use std::pin::Pin;

/// The future a delivery returns (boxed so channels can sit behind `dyn Channel`).
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// Somewhere an incident can be delivered. One call is one try; the dispatcher retries.
pub trait Channel: Send + Sync {
    /// A stable name for this channel (`email-oncall`, `slack`, `alertmanager`): delivery outcomes and the
    /// idempotency record are keyed by it, so it must not change across restarts.
    fn name(&self) -> &str;
    /// Delivers one incident once.
    fn deliver<'a>(&'a self, incident: &'a Incident) -> DeliveryFuture<'a>;
}

/// Why a delivery failed. Messages never include secrets.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("channel configuration: {0}")]
    Config(String),
    #[error("building the message: {0}")]
    Message(String),
    #[error("sending: {0}")]
    Transport(String),
    #[error("the receiver answered HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
}

impl DeliveryError {
    /// An HTTP answer that is not 2xx, with at most the first 300 characters of its body.
    pub(crate) fn rejected(status: u16, body: &str) -> Self {
        DeliveryError::Rejected { status, body: body.chars().take(300).collect() }
    }
}

/// Turns a reqwest error into a transport error without the URL's query (which may carry a token).
pub(crate) fn http_error(error: reqwest::Error) -> DeliveryError {
    DeliveryError::Transport(error.without_url().to_string())
}

/// Sends an HTTP request (with the bearer token, if any): a 2xx answer is delivered, anything else
/// is refused with the status and the start of the body. Shared by the webhook and Alertmanager channels.
pub(crate) async fn send_http(mut request: reqwest::RequestBuilder, token: Option<&crate::secret::Secret>) -> Result<(), DeliveryError> {
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let response = request.send().await.map_err(http_error)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(DeliveryError::rejected(status.as_u16(), &text))
}
