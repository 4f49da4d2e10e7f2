//! Webhooks against a local HTTP receiver, delivered through the dispatcher.

mod common;

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::never_recovering_node_incident;
use nodemedic_notify::{
    ChannelRoute, DeliveryOutcome, Dispatcher, DispatcherConfig, IncidentFilter, RetryPolicy, Secret, WebhookChannel, WebhookConfig,
    WebhookFormat,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What the receiver saw: each request's arrival, authorization header and body.
#[derive(Default)]
struct Received {
    failures_left: u32,
    requests: Vec<(Instant, Option<String>, String)>,
}

type Shared = Arc<Mutex<Received>>;

async fn receive(State(state): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let mut received = state.lock().unwrap_or_else(PoisonError::into_inner);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    received.requests.push((Instant::now(), authorization, body));
    if received.failures_left > 0 {
        received.failures_left -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// Starts a receiver that answers 503 to its first `failures` requests; returns its URL and what it saw.
async fn start_receiver(failures: u32) -> Result<(String, Shared)> {
    let state: Shared = Arc::new(Mutex::new(Received { failures_left: failures, requests: Vec::new() }));
    let app = Router::new().route("/hook", post(receive)).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, state))
}

fn requests(state: &Shared) -> Vec<(Instant, Option<String>, String)> {
    state.lock().unwrap_or_else(PoisonError::into_inner).requests.clone()
}

async fn deliver_through_dispatcher(config: WebhookConfig, retry: RetryPolicy) -> Result<Vec<DeliveryOutcome>> {
    let channel = Arc::new(WebhookChannel::new(config)?);
    let config = DispatcherConfig { retry, ..DispatcherConfig::default() };
    let (dispatcher, mut outcomes) = Dispatcher::start(vec![ChannelRoute::new(channel, IncidentFilter::all())], config, []);
    dispatcher.submit(never_recovering_node_incident()).map_err(|e| anyhow!("submit: {e}"))?;
    tokio::time::timeout(Duration::from_secs(30), dispatcher.shutdown()).await.context("the dispatcher did not finish")?;
    let mut all = Vec::new();
    while let Some(outcome) = outcomes.recv().await {
        all.push(outcome);
    }
    Ok(all)
}

#[tokio::test]
async fn a_webhook_receives_the_incident_as_json_with_the_bearer_token() -> Result<()> {
    let (url, state) = start_receiver(0).await?;
    let mut config = WebhookConfig::new("hook", &url);
    config.bearer_token = Some(Secret::new("tok-123"));
    assert!(!format!("{config:?}").contains("tok-123"), "the token shows in Debug output");
    let outcomes = deliver_through_dispatcher(config, RetryPolicy::default()).await?;
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].ok, "{outcomes:?}");
    assert_eq!(outcomes[0].key, "gpu-node-3/NodeManual/4");
    assert_eq!(outcomes[0].channel, "hook");

    let seen = requests(&state);
    assert_eq!(seen.len(), 1);
    let (_, authorization, body) = &seen[0];
    assert_eq!(authorization.as_deref(), Some("Bearer tok-123"));
    let json: serde_json::Value = serde_json::from_str(body)?;
    assert_eq!(json["kind"], "NodeManual");
    assert_eq!(json["severity"], "critical");
    assert_eq!(json["key"], "gpu-node-3/NodeManual/4");
    assert_eq!(json["policy"], "gpu-default");
    assert_eq!(json["rule"], "gpu-count");
    assert_eq!(json["node"]["name"], "gpu-node-3");
    assert_eq!(json["node"]["internalIps"][0], "10.0.3.13");
    assert_eq!(json["node"]["labels"]["pool"], "training");
    assert_eq!(json["node"]["conditions"][0]["type"], "GpuHealthy");
    assert_eq!(json["probes"][0]["results"].as_array().map(Vec::len), Some(3));
    let steps: Vec<&str> = json["attempts"].as_array().into_iter().flatten().filter_map(|a| a["step"].as_str()).collect();
    assert_eq!(steps, vec!["reboot", "reimage", "replace", "manual"]);
    assert_eq!(json["attempts"][2]["outcome"], "timedOut");
    Ok(())
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_incident_on_the_third_try_after_growing_waits() -> Result<()> {
    let (url, state) = start_receiver(2).await?;
    let retry =
        RetryPolicy { max_attempts: 5, initial_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(2), multiplier: 2.0 };
    let outcomes = deliver_through_dispatcher(WebhookConfig::new("hook", &url), retry).await?;
    let summary: Vec<(u32, bool)> = outcomes.iter().map(|o| (o.attempt, o.ok)).collect();
    assert_eq!(summary, vec![(1, false), (2, false), (3, true)]);
    assert!(outcomes[0].error.as_deref().is_some_and(|e| e.contains("503")), "{outcomes:?}");

    let seen = requests(&state);
    assert_eq!(seen.len(), 3);
    let first_wait = seen[1].0.duration_since(seen[0].0);
    let second_wait = seen[2].0.duration_since(seen[1].0);
    assert!(first_wait >= Duration::from_millis(200), "first wait {first_wait:?}");
    assert!(second_wait >= Duration::from_millis(400), "second wait {second_wait:?} should be about twice the first");
    Ok(())
}

#[tokio::test]
async fn after_a_restart_an_incident_delivered_before_is_not_sent_again() -> Result<()> {
    let (url, state) = start_receiver(0).await?;
    let before_restart = deliver_through_dispatcher(WebhookConfig::new("hook", &url), RetryPolicy::default()).await?;
    assert_eq!(requests(&state).len(), 1);

    // The controller records the outcomes; after a restart it starts the dispatcher with the delivered ones
    // and submits the same incident again (it cannot tell whether it was sent).
    let delivered: Vec<(String, String)> = before_restart.iter().filter(|o| o.ok).map(|o| (o.key.clone(), o.channel.clone())).collect();
    let channel = Arc::new(WebhookChannel::new(WebhookConfig::new("hook", &url))?);
    let (dispatcher, mut outcomes) =
        Dispatcher::start(vec![ChannelRoute::new(channel, IncidentFilter::all())], DispatcherConfig::default(), delivered);
    dispatcher.submit(never_recovering_node_incident()).map_err(|e| anyhow!("submit: {e}"))?;
    dispatcher.shutdown().await;
    assert!(outcomes.recv().await.is_none(), "nothing should be delivered again");
    assert_eq!(requests(&state).len(), 1);
    Ok(())
}

#[tokio::test]
async fn the_slack_text_mode_posts_only_a_short_text_field() -> Result<()> {
    let (url, state) = start_receiver(0).await?;
    let mut config = WebhookConfig::new("slack", &url);
    config.format = WebhookFormat::ChatText;
    let outcomes = deliver_through_dispatcher(config, RetryPolicy::default()).await?;
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
    let seen = requests(&state);
    let json: serde_json::Value = serde_json::from_str(&seen[0].2)?;
    let object = json.as_object().context("the body is not an object")?;
    assert_eq!(object.keys().collect::<Vec<_>>(), vec!["text"]);
    let text = json["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("*[critical] NodeManual: gpu-node-3 (policy gpu-default)*"), "{text}");
    assert!(text.contains("Attempts: 4 (last: #4 manual in progress)"), "{text}");
    assert!(text.contains("Next: Inspect and repair the node by hand"), "{text}");
    Ok(())
}
