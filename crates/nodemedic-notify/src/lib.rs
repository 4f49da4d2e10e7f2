//! nodemedic-notify owns telling people about nodes: the [`Incident`] a notification carries (node details,
//! probe results, every repair attempt, the policy and rule, the next action, an idempotency key), its
//! renderings (plain text and HTML for email, JSON, a Slack/Teams `{"text": …}` form), the channels that
//! deliver it (SMTP, webhook, Alertmanager) and the [`Dispatcher`] that delivers in the background with
//! retries. It takes plain data and reports [`DeliveryOutcome`]s; it must not touch Kubernetes (no kube,
//! no reading Nodes or Secrets, no writing status) and must not decide when to notify — the controller
//! does both and records the outcomes in the NodeRemediation status.

pub mod alertmanager;
pub mod channel;
pub mod dispatch;
pub mod incident;
pub mod render;
pub mod secret;
pub mod smtp;
pub mod webhook;

pub use alertmanager::{AlertmanagerChannel, AlertmanagerConfig};
pub use channel::{Channel, DeliveryError, DeliveryFuture};
pub use dispatch::{ChannelRoute, DeliveryOutcome, Dispatcher, DispatcherConfig, IncidentFilter, RetryPolicy, SubmitError};
pub use incident::{
    Attempt, Condition, DEFAULT_PROBE_RESULTS, Incident, IncidentKind, NodeDetails, ProbeHistory, ProbeResult, Resolved, Severity, Taint,
};
pub use secret::Secret;
pub use smtp::{SmtpChannel, SmtpConfig, SmtpSecurity};
pub use webhook::{WebhookChannel, WebhookConfig, WebhookFormat};

/// The wall clock as a core `Time` (alert times, outcome times).
pub(crate) fn now() -> nodemedic_core::time::Time {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    nodemedic_core::time::Time(elapsed.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}
