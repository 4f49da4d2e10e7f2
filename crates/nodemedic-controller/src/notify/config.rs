//! The notifications config (channels, filters, retries, secret references) and building the
//! dispatcher's routes from it.

use super::*;

/// The file given with `nodemedic controller --notifications FILE` (YAML).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationsConfig {
    pub channels: Vec<ChannelSpec>,
    /// Results kept per probe in a notification.
    #[serde(default = "default_probe_results")]
    pub probe_results: usize,
    #[serde(default)]
    pub retry: Option<RetrySpec>,
}

pub(super) fn default_probe_results() -> usize {
    DEFAULT_PROBE_RESULTS
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub initial_backoff_seconds: f64,
    pub max_backoff_seconds: f64,
}

/// One channel: a stable name, what it gets, and exactly one of `smtp`, `webhook`, `alertmanager`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelSpec {
    /// Outcomes and the idempotency record are keyed by it: keep it stable.
    pub name: String,
    /// Only these incident kinds (`NodeManual`, `BreakerTripped`, …); all when empty.
    #[serde(default)]
    pub kinds: BTreeSet<IncidentKind>,
    /// Only incidents at least this severe (`info`, `warning`, `critical`).
    #[serde(default)]
    pub min_severity: Severity,
    #[serde(default)]
    pub smtp: Option<SmtpSpec>,
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(default)]
    pub alertmanager: Option<AlertmanagerSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpSpec {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    /// `startTls` (default), `tls` or `plain`.
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default)]
    pub subject_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// `json` (default) or `chatText` (Slack/Teams).
    #[serde(default)]
    pub format: WebhookFormat,
    #[serde(default)]
    pub token: Option<SecretSource>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertmanagerSpec {
    pub url: String,
    #[serde(default)]
    pub token: Option<SecretSource>,
    #[serde(default)]
    pub generator_url: Option<String>,
}

/// A credential, never written in the config itself: `{secretRef: {namespace, name, key}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSource {
    pub secret_ref: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl NotificationsConfig {
    /// What the types cannot say: unique names, exactly one transport per channel, someone to mail.
    pub fn validate(&self) -> Result<(), NotifyError> {
        let mut names = BTreeSet::new();
        for c in &self.channels {
            if c.name.trim().is_empty() {
                return Err(NotifyError::Config("every channel needs a name".into()));
            }
            if !names.insert(c.name.as_str()) {
                return Err(NotifyError::Config(format!("channel name `{}` is used twice", c.name)));
            }
            let transports = usize::from(c.smtp.is_some()) + usize::from(c.webhook.is_some()) + usize::from(c.alertmanager.is_some());
            if transports != 1 {
                return Err(NotifyError::Config(format!(
                    "channel `{}` needs exactly one of smtp, webhook, alertmanager ({transports} given)",
                    c.name
                )));
            }
            if let Some(s) = &c.smtp
                && s.to.is_empty()
            {
                return Err(NotifyError::Config(format!("channel `{}`: smtp.to needs at least one recipient", c.name)));
            }
        }
        if let Some(r) = &self.retry
            && (r.max_attempts == 0
                || !(r.initial_backoff_seconds.is_finite() && r.initial_backoff_seconds >= 0.0)
                || !(r.max_backoff_seconds.is_finite() && r.max_backoff_seconds >= 0.0))
        {
            return Err(NotifyError::Config("retry: maxAttempts must be at least 1 and the backoffs finite, not negative".into()));
        }
        Ok(())
    }

    pub(super) fn dispatcher_config(&self) -> DispatcherConfig {
        let mut config = DispatcherConfig::default();
        if let Some(r) = &self.retry {
            config.retry = RetryPolicy {
                max_attempts: r.max_attempts,
                initial_backoff: std::time::Duration::from_secs_f64(r.initial_backoff_seconds),
                max_backoff: std::time::Duration::from_secs_f64(r.max_backoff_seconds),
                multiplier: 2.0,
            };
        }
        config
    }
}

/// Reads one key of a Secret. The value is never logged; errors name the reference only.
pub(super) async fn read_secret(client: &Client, channel: &str, source: &SecretSource) -> Result<Secret, NotifyError> {
    let r = &source.secret_ref;
    let fail = |message: String| NotifyError::Secret {
        channel: channel.to_string(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        key: r.key.clone(),
        message,
    };
    let secret = Api::<K8sSecret>::namespaced(client.clone(), &r.namespace).get(&r.name).await.map_err(|e| fail(e.to_string()))?;
    let bytes = secret.data.and_then(|mut d| d.remove(&r.key)).ok_or_else(|| fail("no such key".into()))?;
    let value = String::from_utf8(bytes.0).map_err(|_| fail("the value is not UTF-8".into()))?;
    Ok(Secret::new(value.trim_end_matches(['\n', '\r'])))
}

/// Builds the channels, reading their credentials from the Secrets.
pub async fn build_routes(client: &Client, config: &NotificationsConfig) -> Result<Vec<ChannelRoute>, NotifyError> {
    let mut routes = Vec::with_capacity(config.channels.len());
    for spec in &config.channels {
        let filter = IncidentFilter { kinds: spec.kinds.clone(), min_severity: spec.min_severity };
        let broken = |e: nodemedic_notify::DeliveryError| NotifyError::Channel { channel: spec.name.clone(), message: e.to_string() };
        let channel: Arc<dyn Channel> = if let Some(s) = &spec.smtp {
            let mut c = SmtpConfig::new(&spec.name, &s.host, &s.from, s.to.clone());
            c.port = s.port;
            c.security = s.security;
            c.username = s.username.clone();
            if let Some(p) = &s.password {
                c.password = Some(read_secret(client, &spec.name, p).await?);
            }
            if let Some(prefix) = &s.subject_prefix {
                c.subject_prefix = prefix.clone();
            }
            Arc::new(SmtpChannel::new(c).map_err(broken)?)
        } else if let Some(w) = &spec.webhook {
            let mut c = WebhookConfig::new(&spec.name, &w.url);
            c.format = w.format;
            if let Some(t) = &w.token {
                c.bearer_token = Some(read_secret(client, &spec.name, t).await?);
            }
            Arc::new(WebhookChannel::new(c).map_err(broken)?)
        } else if let Some(a) = &spec.alertmanager {
            let mut c = AlertmanagerConfig::new(&spec.name, &a.url);
            c.generator_url = a.generator_url.clone();
            if let Some(t) = &a.token {
                c.bearer_token = Some(read_secret(client, &spec.name, t).await?);
            }
            Arc::new(AlertmanagerChannel::new(c).map_err(broken)?)
        } else {
            return Err(NotifyError::Config(format!("channel `{}` has no transport", spec.name)));
        };
        routes.push(ChannelRoute::new(channel, filter));
    }
    Ok(routes)
}
