//! Email over SMTP (lettre on tokio with rustls): a multipart message with the plain-text and HTML reports,
//! to several recipients, over STARTTLS, implicit TLS or (for a local relay) plain SMTP, with optional AUTH.

use crate::channel::{Channel, DeliveryError, DeliveryFuture};
use crate::incident::Incident;
use crate::render;
use crate::secret::Secret;
use lettre::message::{Mailbox, MultiPart, header};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::time::Duration;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SmtpSecurity {
    /// Plain SMTP, then STARTTLS, which is required (port 587).
    #[default]
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption at all: only for a relay on the same host or in the same pod.
    Plain,
}

impl SmtpSecurity {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Plain => 25,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// The channel's name in outcomes and the idempotency record.
    pub name: String,
    pub host: String,
    /// The security mode's usual port when not set.
    pub port: Option<u16>,
    pub security: SmtpSecurity,
    /// AUTH (PLAIN or LOGIN) when both are set.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `From:`, e.g. `nodemedic <nodemedic@example.com>`.
    pub from: String,
    /// Every recipient gets the same message.
    pub to: Vec<String>,
    /// Put before each subject, e.g. `[nodemedic]`.
    pub subject_prefix: String,
    /// PEM certificates trusted besides the public roots (a private CA or a self-signed relay).
    pub extra_root_certificates_pem: Option<String>,
    pub timeout: Duration,
}

impl SmtpConfig {
    pub fn new(name: &str, host: &str, from: &str, to: Vec<String>) -> Self {
        SmtpConfig {
            name: name.to_string(),
            host: host.to_string(),
            port: None,
            security: SmtpSecurity::StartTls,
            username: None,
            password: None,
            from: from.to_string(),
            to,
            subject_prefix: "[nodemedic]".to_string(),
            extra_root_certificates_pem: None,
            timeout: Duration::from_secs(30),
        }
    }
}

pub struct SmtpChannel {
    config: SmtpConfig,
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

/// Shows the configuration (its password redacted), not the transport.
impl std::fmt::Debug for SmtpChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpChannel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl SmtpChannel {
    /// Checks the addresses and certificates and builds the transport; connects only when delivering.
    pub fn new(config: SmtpConfig) -> Result<Self, DeliveryError> {
        let from: Mailbox = config.from.parse().map_err(|e| DeliveryError::Config(format!("from address {:?}: {e}", config.from)))?;
        if config.to.is_empty() {
            return Err(DeliveryError::Config("no recipients".to_string()));
        }
        let to = config
            .to
            .iter()
            .map(|address| address.parse::<Mailbox>().map_err(|e| DeliveryError::Config(format!("recipient {address:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;

        let port = config.port.unwrap_or(config.security.default_port());
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str()).port(port).timeout(Some(config.timeout));
        builder = match config.security {
            SmtpSecurity::Plain => builder.tls(Tls::None),
            SmtpSecurity::StartTls => builder.tls(Tls::Required(tls_parameters(&config)?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters(&config)?)),
        };
        match (&config.username, &config.password) {
            (Some(user), Some(password)) => builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_string())),
            (None, None) => {}
            _ => return Err(DeliveryError::Config("SMTP auth needs both a username and a password".to_string())),
        }
        Ok(SmtpChannel { transport: builder.build(), config, from, to })
    }

    /// The message for an incident: subject with the title, both reports as multipart/alternative.
    pub fn message(&self, incident: &Incident) -> Result<Message, DeliveryError> {
        let subject = if self.config.subject_prefix.is_empty() {
            incident.title()
        } else {
            format!("{} {}", self.config.subject_prefix, incident.title())
        };
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for recipient in &self.to {
            builder = builder.to(recipient.clone());
        }
        builder = builder.header(IncidentKeyHeader(incident.key.clone()));
        builder
            .multipart(MultiPart::alternative_plain_html(render::text(incident), render::html(incident)))
            .map_err(|e| DeliveryError::Message(e.to_string()))
    }

    async fn send(&self, incident: &Incident) -> Result<(), DeliveryError> {
        let message = self.message(incident)?;
        self.transport.send(message).await.map_err(|e| DeliveryError::Transport(e.to_string()))?;
        Ok(())
    }
}

fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters, DeliveryError> {
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(pem) = &config.extra_root_certificates_pem {
        let certificate =
            Certificate::from_pem(pem.as_bytes()).map_err(|e| DeliveryError::Config(format!("extra root certificate: {e}")))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build_rustls().map_err(|e| DeliveryError::Config(format!("TLS: {e}")))
}

/// `X-Nodemedic-Incident: <key>`, so mail filters and people can match a message to its incident.
#[derive(Clone)]
struct IncidentKeyHeader(String);

impl header::Header for IncidentKeyHeader {
    fn name() -> header::HeaderName {
        header::HeaderName::new_from_ascii_str("X-Nodemedic-Incident")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(IncidentKeyHeader(s.to_string()))
    }
    fn display(&self) -> header::HeaderValue {
        header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Channel for SmtpChannel {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn deliver<'a>(&'a self, incident: &'a Incident) -> DeliveryFuture<'a> {
        Box::pin(self.send(incident))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_debug_output_hides_the_password() -> Result<(), DeliveryError> {
        let mut config = SmtpConfig::new("email", "smtp.example.com", "nodemedic <nm@example.com>", vec!["ops@example.com".into()]);
        config.username = Some("nm".into());
        config.password = Some(Secret::new("s3cr3t-pass"));
        let channel = SmtpChannel::new(config)?;
        let debug = format!("{channel:?}");
        assert!(!debug.contains("s3cr3t-pass"), "{debug}");
        assert!(debug.contains("<redacted>"));
        Ok(())
    }

    #[test]
    fn a_username_without_a_password_is_refused() {
        let mut config = SmtpConfig::new("email", "smtp.example.com", "nm@example.com", vec!["ops@example.com".into()]);
        config.username = Some("nm".into());
        assert!(matches!(SmtpChannel::new(config), Err(DeliveryError::Config(_))));
    }
}
