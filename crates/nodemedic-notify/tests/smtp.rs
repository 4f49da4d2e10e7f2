//! Email against a real SMTP server (aiosmtpd, see scripts/notify-peers).

mod common;

use anyhow::{Context, Result};
use common::{SmtpSink, SmtpSinkOptions, never_recovering_node_incident, self_signed_certificate};
use nodemedic_notify::{Channel, Secret, SmtpChannel, SmtpConfig, SmtpSecurity};

fn config_for(sink: &SmtpSink, security: SmtpSecurity) -> SmtpConfig {
    let mut config = SmtpConfig::new(
        "email-oncall",
        "127.0.0.1",
        "nodemedic <nodemedic@example.com>",
        vec!["infra-oncall@example.com".into(), "Infra Team <infra@example.com>".into()],
    );
    config.port = Some(sink.port);
    config.security = security;
    config
}

fn str_field<'a>(message: &'a serde_json::Value, field: &str) -> &'a str {
    message[field].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_node_reaching_manual_sends_an_email_with_every_attempt() -> Result<()> {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).await?;
    let channel = SmtpChannel::new(config_for(&sink, SmtpSecurity::Plain))?;
    channel.deliver(&never_recovering_node_incident()).await.context("delivering to aiosmtpd")?;

    let message = sink.message(1).await?;
    assert_eq!(str_field(&message, "subject"), "[nodemedic] [critical] NodeManual: gpu-node-3 (policy gpu-default)");
    assert_eq!(message["rcptTos"], serde_json::json!(["infra-oncall@example.com", "infra@example.com"]));
    assert_eq!(str_field(&message, "mailFrom"), "nodemedic@example.com");
    assert_eq!(str_field(&message, "contentType"), "multipart/alternative");
    assert_eq!(str_field(&message, "incidentKey"), "gpu-node-3/NodeManual/4");
    assert_eq!(message["tls"], serde_json::json!(false));

    let text = str_field(&message, "text");
    for expected in [
        "Node gpu-node-3",
        "Internal IPs: 10.0.3.13",
        "External IPs: 198.51.100.13",
        "nvidia.com/gpu.product=H100-SXM",
        "nodemedic.io/repair-manual:NoSchedule",
        "GpuHealthy=False reason=GpuMissing message=7 of 8 GPUs visible",
        "nvidia-smi lists 7 GPUs (run 2)",
        "Rule fired:    gpu-count",
        "#1 reboot started 2023-11-14T22:14:20Z ended 2023-11-14T22:23:20Z outcome failed: still 7 of 8 GPUs after reboot",
        "#2 reimage",
        "#3 replace",
        "outcome timed_out: provider did not answer within 1h",
        "#4 manual",
        "outcome in progress: the ladder is exhausted",
        "nodemedic resume",
    ] {
        assert!(text.contains(expected), "the text part lacks {expected:?}:\n{text}");
    }
    let html = str_field(&message, "html");
    assert!(html.contains("<h3>Node gpu-node-3</h3>"), "the HTML part is missing or wrong:\n{html}");
    assert!(html.contains("<td>reimage</td>") && html.contains("<td>timed_out</td>"));
    assert!(sink.raw_message(1)?.contains("text/html"));
    Ok(())
}

#[tokio::test]
async fn smtp_auth_logs_in_with_the_password_from_the_secret() -> Result<()> {
    let options = SmtpSinkOptions { auth: Some(("nodemedic".into(), "correct horse".into())), ..SmtpSinkOptions::default() };
    let sink = SmtpSink::start(options).await?;

    let mut wrong = config_for(&sink, SmtpSecurity::Plain);
    wrong.username = Some("nodemedic".into());
    wrong.password = Some(Secret::new("wrong password"));
    let refused = SmtpChannel::new(wrong)?.deliver(&never_recovering_node_incident()).await;
    let error = refused.err().context("a wrong password must be refused")?;
    assert!(!error.to_string().contains("wrong password"), "the error leaks the password: {error}");
    assert_eq!(sink.message_count()?, 0, "a refused login must not deliver");

    let mut right = config_for(&sink, SmtpSecurity::Plain);
    right.username = Some("nodemedic".into());
    right.password = Some(Secret::new("correct horse"));
    SmtpChannel::new(right)?.deliver(&never_recovering_node_incident()).await?;
    let message = sink.message(1).await?;
    assert_eq!(str_field(&message, "login"), "nodemedic");
    assert_eq!(sink.message_count()?, 1);
    Ok(())
}

#[tokio::test]
async fn starttls_upgrades_the_connection_and_verifies_the_servers_certificate() -> Result<()> {
    let (_keys, cert_path, key_path, cert_pem) = self_signed_certificate()?;
    let options = SmtpSinkOptions {
        auth: Some(("nodemedic".into(), "tls-only".into())),
        starttls: Some((cert_path, key_path)),
        ..SmtpSinkOptions::default()
    };
    let sink = SmtpSink::start(options).await?;

    // Without trusting the self-signed certificate the upgrade must fail: nothing is sent in the clear.
    let mut untrusted = config_for(&sink, SmtpSecurity::StartTls);
    untrusted.username = Some("nodemedic".into());
    untrusted.password = Some(Secret::new("tls-only"));
    let trusted_config = SmtpConfig { extra_root_certificates_pem: Some(cert_pem), ..untrusted.clone() };
    let refused = SmtpChannel::new(untrusted)?.deliver(&never_recovering_node_incident()).await;
    let error = refused.err().context("an untrusted certificate must stop the delivery")?;
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
    assert_eq!(sink.message_count()?, 0);

    SmtpChannel::new(trusted_config)?.deliver(&never_recovering_node_incident()).await?;
    let message = sink.message(1).await?;
    assert_eq!(message["tls"], serde_json::json!(true));
    assert_eq!(str_field(&message, "login"), "nodemedic");
    assert!(str_field(&message, "text").contains("gpu-node-3"));
    Ok(())
}

#[tokio::test]
async fn implicit_tls_sends_over_an_encrypted_connection_from_the_first_byte() -> Result<()> {
    let (_keys, cert_path, key_path, cert_pem) = self_signed_certificate()?;
    let options = SmtpSinkOptions {
        auth: Some(("nodemedic".into(), "smtps".into())),
        implicit_tls: Some((cert_path, key_path)),
        ..SmtpSinkOptions::default()
    };
    let sink = SmtpSink::start(options).await?;
    let mut config = config_for(&sink, SmtpSecurity::Tls);
    config.username = Some("nodemedic".into());
    config.password = Some(Secret::new("smtps"));
    config.extra_root_certificates_pem = Some(cert_pem);
    SmtpChannel::new(config)?.deliver(&never_recovering_node_incident()).await?;
    let message = sink.message(1).await?;
    assert_eq!(message["tls"], serde_json::json!(true));
    assert_eq!(str_field(&message, "login"), "nodemedic");
    Ok(())
}
