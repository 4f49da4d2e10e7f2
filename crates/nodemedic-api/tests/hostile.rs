//! Issue 16: the actions API under hostile input and an API server that does not answer, against
//! a real control plane. A repeated key is refused (400 naming it) and changes nothing; every field
//! is checked before it reaches the API server (400 naming it, 415 for a body not declared JSON);
//! an API server that accepts connections and never answers gets the caller a 504 within the
//! deadline and an error line in the log; `/metrics` on the API listener needs a token.

mod common;

use common::*;
use nodemedic_api::{ApiConfig, ApiState, RecreateNodeProvider};
use nodemedic_testenv::{ControlPlane, FakeNode, Options, wait_for};
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn request(pool: &str) -> serde_json::Value {
    json!({"requestor": "mallory", "type": "cordon_nodepool", "node_pool": pool, "reason": "testing the API"})
}

/// `{"dry_run": true, …, "dry_run": false}`: serde keeps the last value, which made a dry run real.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_repeats_dry_run_is_refused_naming_it_and_cordons_nothing() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        cp.create_nodes(&FakeNode::cpu("slice-a", "slice-a"), 2).await?;
        let api = serve(cp, no_auth(), None).await?;
        let body = br#"{"dry_run": true, "requestor": "mallory", "type": "cordon_nodepool", "node_pool": "slice-a",
            "reason": "only looking", "id": "dup-1", "dry_run": false}"#;
        let (status, answer) = api.post_raw(body.to_vec(), None).await?;
        assert_eq!((status, answer["field"].clone()), (400, json!("dry_run")), "{answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains("duplicate key `dry_run`"), "{answer}");
        for n in ["slice-a-000", "slice-a-001"] {
            assert!(!unschedulable(cp, n).await?, "{n} was cordoned");
        }
        let (status, _) = api.get("/actions/dup-1").await?;
        assert_eq!(status, 404, "no action was recorded");
        Ok(())
    })
    .await
}

/// Label-selector syntax, lengths, control characters and empty ids never reach the API server:
/// each is the caller's 400 naming the field (415 for a body not declared as JSON), nothing is
/// cordoned and no action is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn caller_errors_are_400_naming_the_field_and_never_reach_the_api_server() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        cp.create_nodes(&FakeNode::cpu("pool-1", "pool-1"), 2).await?;
        let api = serve(cp, no_auth(), None).await?;
        let with = |key: &str, value: serde_json::Value| {
            let mut body = request("pool-1");
            body["id"] = json!("probe-1");
            body[key] = value;
            body
        };
        let restart = |name: &str| {
            let mut body = with("type", json!("cordon_nodepool_and_restart_jobset"));
            body["jobset_name"] = json!(name);
            body
        };
        let cases = [
            ("node_pool", with("node_pool", json!("pool-1,key!=x"))),
            ("node_pool", with("node_pool", json!("x in (a,b)"))),
            ("node_pool", with("node_pool", json!("p".repeat(10 * 1024)))),
            ("jobset_name", restart("job\u{0}set\u{1b}[2J")),
            ("namespace", with("namespace", json!("Kube System"))),
            ("id", with("id", json!(""))),
            ("requestor", with("requestor", json!("eve\r\nX-Injected: 1"))),
        ];
        for (field, body) in cases {
            let (status, answer) = api.post(&body).await?;
            assert_eq!((status, answer["field"].clone()), (400, json!(field)), "{answer}");
        }
        let resp = api
            .http
            .post(format!("{}/actions", api.url))
            .header("content-type", "text/plain")
            .body(request("pool-1").to_string())
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 415);
        let resp = api.http.post(format!("{}/actions", api.url)).body(request("pool-1").to_string()).send().await?;
        assert_eq!(resp.status().as_u16(), 415, "no Content-Type is not JSON either");
        for n in ["pool-1-000", "pool-1-001"] {
            assert!(!unschedulable(cp, n).await?, "{n} was cordoned");
        }
        assert_eq!(api.get("/actions/probe-1").await?.0, 404, "no action was recorded");
        // The same request with a plain pool name is carried out.
        let (status, answer) = api.post(&request("pool-1")).await?;
        assert_eq!(status, 200, "{answer}");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// An API server that accepts connections and never answers
// ---------------------------------------------------------------------------------------------

/// Everything this test binary logs, for the checks on log lines.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .with_max_level(tracing::Level::WARN)
            .try_init();
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    log().lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// A TCP listener that accepts every connection and never answers (the connections are kept).
async fn black_hole() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(url)
}

async fn serve_against(url: &str, client_timeout: Option<Duration>, deadline: Duration) -> anyhow::Result<Server> {
    let mut config = kube::Config::new(url.parse()?);
    config.default_retry = false;
    if let Some(t) = client_timeout {
        config = nodemedic_controller::client::with_timeouts(config, t);
    }
    let client = kube::Client::try_from(config)?;
    let api_config = ApiConfig { auth: false, api_server_timeout: deadline, ..ApiConfig::default() };
    let state = ApiState::new(client.clone(), api_config, Arc::new(RecreateNodeProvider { client }));
    serve_router(nodemedic_api::router(state), None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_that_never_answers_gets_the_caller_a_504_within_the_deadline_and_a_log_line() -> anyhow::Result<()> {
    log();
    let url = black_hole().await?;
    // The request's deadline (a client without a read timeout, as kube's default is).
    let api = serve_against(&url, None, Duration::from_secs(2)).await?;
    let started = Instant::now();
    let (status, answer) = api.post(&request("pool-1")).await?;
    let took = started.elapsed();
    assert_eq!(status, 504, "{answer}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("did not answer within 2 s"), "{answer}");
    wait_for(Duration::from_secs(5), "the log line", || async { logged().contains("did not answer within the deadline").then_some(()) })
        .await?;
    let (status, _) = api.get("/nodes").await?;
    assert_eq!(status, 504, "reads have the deadline too");

    // The client's own read timeout (what the controller's client has) ends a call sooner.
    let api = serve_against(&url, Some(Duration::from_secs(1)), Duration::from_secs(30)).await?;
    let started = Instant::now();
    let (status, answer) = api.post(&request("pool-1")).await?;
    assert_eq!(status, 504, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    wait_for(Duration::from_secs(5), "the log line", || async { logged().contains("the API server call failed").then_some(()) }).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /metrics on the API listener
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_on_metrics_on_the_api_listener_need_a_token_and_only_the_openapi_document_is_open() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    cp.run(|cp| async move {
        let (_dir, cert, key, pem) = self_signed()?;
        let tls = nodemedic_api::tls::server_config(&cert, &key)?;
        let state = ApiState::new(cp.client(), ApiConfig::default(), Arc::new(RecreateNodeProvider { client: cp.client() }));
        let controller = nodemedic_controller::http::router(nodemedic_controller::http::HttpState {
            metrics: Arc::new(nodemedic_controller::Metrics::new()),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        });
        let mut api = serve_router(nodemedic_api::router_with(state, controller), Some(tls)).await?;
        api.http = reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?).build()?;
        let get = |path: &str, token: Option<&str>| {
            let mut req = api.http.get(format!("{}{path}", api.url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { anyhow::Ok(req.send().await?.status().as_u16()) }
        };
        assert_eq!(get("/openapi.json", None).await?, 200);
        for path in ["/metrics", "/healthz", "/readyz", "/nodes"] {
            assert_eq!(get(path, None).await?, 401, "{path} without a token");
            assert_eq!(get(path, Some("not-a-token")).await?, 401, "{path} with a bad token");
        }
        let token = service_account_token(cp, "prometheus").await?;
        assert_eq!(get("/metrics", Some(&token)).await?, 403, "a token without the permission");
        grant(cp, "prometheus", json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]))?;
        let status = wait_for(Duration::from_secs(30), "RBAC to allow /metrics", || async {
            get("/metrics", Some(&token)).await.ok().filter(|s| *s != 403)
        })
        .await?;
        assert_eq!(status, 200);
        Ok(())
    })
    .await
}
