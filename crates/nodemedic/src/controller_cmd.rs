//! `nodemedic controller`: the controller process (one replica). Reads the kubeconfig from the
//! environment (in-cluster service account, `KUBECONFIG` or `~/.kube/config`).

use anyhow::{Context, Result};
use nodemedic_controller::executors::{ExecutorsConfig, StepRouter};
use nodemedic_controller::http::{HttpState, serve};
use nodemedic_controller::leader::LeaseConfig;
use nodemedic_controller::run::{RunConfig, run};
use nodemedic_controller::{Executor, Metrics, install_crds};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// This replica's identity in the leader lease (default: $POD_NAME, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    #[arg(long, default_value = "nodemedic-controller")]
    pub lease_name: String,
    /// Seconds a lease stays valid without renewal; a standby takes over after that.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9464")]
    pub listen: std::net::SocketAddr,
    /// Reconcile at least this often (seconds) even when nothing changes.
    #[arg(long, default_value_t = 30)]
    pub resync: u64,
    /// After the API server answers again, a step in flight has at least this long (seconds) to
    /// report before its deadline counts; the time it did not answer never counts.
    #[arg(long, default_value_t = 30)]
    pub reconnect_grace: u64,
    /// Install or update the CRDs at start (needs permission on customresourcedefinitions).
    #[arg(long)]
    pub install_crds: bool,
    /// Which executor carries out each step (YAML, see ExecutorsConfig): drain, agent, webhook,
    /// command, noop. Default: drain by eviction, reboot and reimage by the node agent.
    #[arg(long)]
    pub executors: Option<std::path::PathBuf>,
    /// Who is told about nodes that need a person, the breaker, lemons and timeouts (YAML, see
    /// docs/notifications.md): channels, what each gets, credentials by Secret reference.
    #[arg(long)]
    pub notifications: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub api: crate::action_cmd::ApiArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube_lease_manager=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    // A second init (tests running several commands in one process) is harmless: keep the first.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Reads and checks a notifications file; its Secrets are read once the controller leads.
pub fn load_notifications(path: &std::path::Path) -> Result<nodemedic_controller::notify::NotificationsConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    nodemedic::config_files::parse_notifications(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

/// The API server may not answer yet (it starts with us, or restarts): connection errors are
/// retried with backoff (0.5 s doubling to 10 s); what the API server refuses is not.
async fn install_crds_with_retry(client: &kube::Client) -> Result<(), nodemedic_controller::ControllerError> {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match install_crds(client).await {
            Err(nodemedic_controller::ControllerError::Kube(e)) if !matches!(e, kube::Error::Api(_)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the API server to install the CRDs; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

pub async fn controller(args: ControllerArgs) -> Result<()> {
    init_logging(args.log_format);
    args.api.check()?;
    let mut kube_config = kube::Config::infer().await.context("reading the Kubernetes client configuration (kubeconfig or in-cluster)")?;
    // An eviction refused by a PodDisruptionBudget answers 429: the drain must see it, not a
    // client-side retry loop.
    kube_config.default_retry = false;
    // Every call has a deadline (an API server that accepts and never answers must not hold a
    // lease renewal or an API request forever); the watches, idle for long stretches, a longer one.
    let timeout = args.api.api_server_timeout();
    let watch_client = kube::Client::try_from(nodemedic_controller::client::for_watches(kube_config.clone(), timeout))
        .context("building the Kubernetes client")?;
    let client = kube::Client::try_from(nodemedic_controller::client::with_timeouts(kube_config, timeout))
        .context("building the Kubernetes client")?;
    if args.install_crds {
        install_crds_with_retry(&client).await.context("installing the CRDs")?;
    }
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "nodemedic".into());
        format!("{host}-{}", std::process::id())
    });
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, http) = serve(args.listen, HttpState { metrics: metrics.clone(), ready: ready.clone() }, async {
        let _ = http_stopped.await;
    })
    .await
    .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
    let mut config = RunConfig::new(identity);
    config.lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        duration_seconds: args.lease_duration,
        grace_seconds: (args.lease_duration / 3).max(1),
        ..config.lease
    };
    config.resync = std::time::Duration::from_secs(args.resync.max(1));
    config.reconnect_grace = std::time::Duration::from_secs(args.reconnect_grace);
    config.watch_client = Some(nodemedic_controller::run::WatchClient(watch_client));
    config.notifications = args.notifications.as_deref().map(load_notifications).transpose()?;
    let executors: ExecutorsConfig = match &args.executors {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            nodemedic::config_files::parse_executors(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", p.display()))?
        }
        None => ExecutorsConfig::default(),
    };
    let executor: Arc<dyn Executor> = Arc::new(StepRouter::from_config(client.clone(), &executors).context("building the executors")?);
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = crate::action_cmd::start_api(
        &args.api,
        client.clone(),
        nodemedic_controller::http::router(HttpState { metrics: metrics.clone(), ready: ready.clone() }),
        nodemedic_api::LeaderLease {
            namespace: config.lease.namespace.clone(),
            name: config.lease.name.clone(),
            identity: config.lease.identity.clone(),
        },
        async {
            let _ = api_stopped.await;
        },
    )
    .await?;
    let result = run(client, config, executor, metrics, ready, shutdown_signal()).await;
    let _ = stop_http.send(());
    let _ = stop_api.send(());
    let _ = http.await;
    if let Some(api) = api {
        let _ = api.await;
    }
    result.context("controller")
}
