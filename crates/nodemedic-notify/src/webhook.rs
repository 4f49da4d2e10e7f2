//! A generic webhook: the incident as JSON, or the `{"text": …}` form for Slack and Teams incoming webhooks.

use crate::channel::{Channel, DeliveryError, DeliveryFuture, send_http};
use crate::incident::Incident;
use crate::render;
use crate::secret::Secret;
use serde::Deserialize;
use std::time::Duration;

/// What the POST body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WebhookFormat {
    /// The whole incident as JSON (see [`render::json`]).
    #[default]
    Json,
    /// `{"text": "..."}`, which Slack and Teams incoming webhooks accept.
    ChatText,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The channel's name in outcomes and the idempotency record.
    pub name: String,
    pub url: String,
    pub format: WebhookFormat,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub bearer_token: Option<Secret>,
    /// For one request, connection included.
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(name: &str, url: &str) -> Self {
        WebhookConfig {
            name: name.to_string(),
            url: url.to_string(),
            format: WebhookFormat::Json,
            bearer_token: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
pub struct WebhookChannel {
    config: WebhookConfig,
    client: reqwest::Client,
}

impl WebhookChannel {
    pub fn new(config: WebhookConfig) -> Result<Self, DeliveryError> {
        let client =
            reqwest::Client::builder().timeout(config.timeout).build().map_err(|e| DeliveryError::Config(e.without_url().to_string()))?;
        Ok(WebhookChannel { config, client })
    }

    async fn send(&self, incident: &Incident) -> Result<(), DeliveryError> {
        let body = match self.config.format {
            WebhookFormat::Json => render::json(incident).map_err(|e| DeliveryError::Message(e.to_string()))?,
            WebhookFormat::ChatText => render::chat_text(incident).to_string(),
        };
        let request = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", incident.key.as_str())
            .body(body);
        send_http(request, self.config.bearer_token.as_ref()).await
    }
}

impl Channel for WebhookChannel {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn deliver<'a>(&'a self, incident: &'a Incident) -> DeliveryFuture<'a> {
        Box::pin(self.send(incident))
    }
}
