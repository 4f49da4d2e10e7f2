//! The actions API on the command line: the controller's flags that serve it (`--api-listen`, TLS,
//! auth, node-pool label, repair provider) and `nodemedic action`, which calls it.

use anyhow::{Context, Result, bail};
use nodemedic_api::cert_reload::ReloadingCertificate;
use nodemedic_api::provider::ClusterApiProvider;
use nodemedic_api::{ApiConfig, ApiState, GceProvider, LeaderLease, Provider, RecreateNodeProvider};
use std::path::PathBuf;
use std::sync::Arc;

#[cfg(test)]
mod retention_tests {
    use super::{Retention, parse_retention};

    #[test]
    fn retention_reads_durations_and_never_and_refuses_nonsense() {
        assert_eq!(parse_retention("30d"), Ok(Retention::For(std::time::Duration::from_secs(30 * 86_400))));
        assert_eq!(parse_retention("never"), Ok(Retention::Never));
        assert!(parse_retention("0s").is_err_and(|e| e.contains("more than zero")));
        assert!(parse_retention("soon").is_err());
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairProvider {
    /// Delete the node's Compute Engine instance (GKE: its instance group replaces it).
    Gce,
    /// Delete the node's Cluster API Machine (its MachineSet creates a replacement).
    ClusterApi,
    /// Delete the Node object and create it again (test clusters, kwok).
    RecreateNode,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Serve the actions API (POST /actions, GET /actions/{id}, GET /nodes, /openapi.json, and
    /// /healthz, /readyz, /metrics) on this address, e.g. 0.0.0.0:8080. Off when not given.
    #[arg(long)]
    pub api_listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain for the API's TLS. Re-read while serving (see
    /// `--api-tls-reload-interval`): a rotated Secret is picked up without a restart.
    #[arg(long, requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key for the API's TLS.
    #[arg(long, requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Seconds between checks of the certificate and key files for a new pair. A pair that does not
    /// load is logged and the one already served stays.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub api_tls_reload_interval: u64,
    /// Serve the API over plain HTTP (local use only).
    #[arg(long, conflicts_with_all = ["api_tls_cert", "api_tls_key"])]
    pub insecure_no_tls: bool,
    /// Accept API requests without a bearer token and without an RBAC check (local use only).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// The label naming a node's pool.
    #[arg(long, default_value = nodemedic_api::DEFAULT_NODE_POOL_LABEL)]
    pub node_pool_label: String,
    /// How repair actions replace an instance.
    #[arg(long, value_enum, default_value_t = RepairProvider::Gce)]
    pub repair_provider: RepairProvider,
    /// Namespace of the action records (ConfigMaps); default: the lease namespace.
    #[arg(long)]
    pub actions_namespace: Option<String>,
    /// How long the record of an ended action is kept (`30d`, `12h`); `never` keeps every record.
    /// The leader deletes older ones hourly; a pruned action's id may be used again.
    #[arg(long, default_value = "30d", value_parser = parse_retention)]
    pub action_retention: Retention,
    /// Seconds any call to the API server may take (connect, send, answer) before it fails; also
    /// the deadline of one actions-API request's API-server work, after which it is answered 504.
    #[arg(long, default_value_t = nodemedic_controller::client::DEFAULT_API_SERVER_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub api_server_timeout: u64,
}

impl ApiArgs {
    pub fn api_server_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.api_server_timeout)
    }
}

/// How long ended action records are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    Never,
    For(std::time::Duration),
}

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s.trim() == "never" {
        return Ok(Retention::Never);
    }
    let d = nodemedic_core::Duration::parse(s).map_err(|e| e.to_string())?;
    if d <= nodemedic_core::Duration::ZERO {
        return Err("must be more than zero (or `never`)".into());
    }
    Ok(Retention::For(std::time::Duration::from_millis(d.0.unsigned_abs())))
}

impl ApiArgs {
    /// Refuses a plain-text API unless `--insecure-no-tls` says so (checked before anything starts).
    pub fn check(&self) -> Result<()> {
        if self.api_listen.is_some() && self.api_tls_cert.is_none() && !self.insecure_no_tls {
            bail!("the actions API needs --api-tls-cert and --api-tls-key, or --insecure-no-tls for local use");
        }
        Ok(())
    }
}

/// Starts the API server when `--api-listen` is given. `extra` (the controller's health and
/// metrics routes) is served beside it.
pub async fn start_api(
    args: &ApiArgs,
    client: kube::Client,
    extra: axum::Router,
    leader: LeaderLease,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = args.api_listen else { return Ok(None) };
    let tls = match (&args.api_tls_cert, &args.api_tls_key) {
        (Some(cert), Some(key)) => {
            let certificate = ReloadingCertificate::load(cert, key).context("loading the API's TLS certificate")?;
            let config = certificate.server_config().context("configuring the API's TLS")?;
            tokio::spawn(certificate.watch(std::time::Duration::from_secs(args.api_tls_reload_interval)));
            Some(config)
        }
        _ if args.insecure_no_tls => None,
        _ => bail!("the actions API needs --api-tls-cert and --api-tls-key, or --insecure-no-tls for local use"),
    };
    if !args.insecure_no_auth {
        tracing::info!("actions API: bearer tokens checked by TokenReview, permissions by SubjectAccessReview");
    } else {
        tracing::warn!("actions API: authentication and authorisation are OFF (--insecure-no-auth)");
    }
    let provider: Arc<dyn Provider> = match args.repair_provider {
        RepairProvider::Gce => Arc::new(GceProvider::new().map_err(|e| anyhow::anyhow!("building the GCE provider: {e}"))?),
        RepairProvider::ClusterApi => Arc::new(ClusterApiProvider { client: client.clone(), namespace: None }),
        RepairProvider::RecreateNode => Arc::new(RecreateNodeProvider { client: client.clone() }),
    };
    let config = ApiConfig {
        node_pool_label: args.node_pool_label.clone(),
        auth: !args.insecure_no_auth,
        namespace: args.actions_namespace.clone().unwrap_or_else(|| leader.namespace.clone()),
        instance: leader.identity.clone(),
        leader: Some(leader),
        api_server_timeout: args.api_server_timeout(),
        ..ApiConfig::default()
    };
    let state = ApiState::new(client, config, provider);
    if let Retention::For(retention) = args.action_retention {
        tokio::spawn(nodemedic_api::actions::prune_records_forever(state.clone(), retention, std::time::Duration::from_secs(3600)));
    }
    // The controller's /metrics, /healthz and /readyz need a token here like everything but /openapi.json.
    let router = nodemedic_api::router_with(state.clone(), extra).merge(crate::fleet_page::router(state));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().context("reading the API's address")?;
    tracing::info!(address = %bound, tls = tls.is_some(), "serving the actions API");
    Ok(Some(tokio::spawn(nodemedic_api::tls::serve(listener, router, tls, shutdown))))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "snake_case")]
pub enum ActionKind {
    CordonNodepool,
    CordonNodepoolAndRestartJobset,
    CordonAndRepairNodepool,
    RepairNodepool,
    CordonNode,
    RepairNode,
}

impl ActionKind {
    fn api_type(self) -> nodemedic_api::ActionType {
        use nodemedic_api::ActionType as T;
        match self {
            ActionKind::CordonNodepool => T::CordonNodepool,
            ActionKind::CordonNodepoolAndRestartJobset => T::CordonNodepoolAndRestartJobset,
            ActionKind::CordonAndRepairNodepool => T::CordonAndRepairNodepool,
            ActionKind::RepairNodepool => T::RepairNodepool,
            ActionKind::CordonNode => T::CordonNode,
            ActionKind::RepairNode => T::RepairNode,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ActionArgs {
    /// The action.
    #[arg(value_enum)]
    pub kind: ActionKind,
    /// The node pool (value of the node-pool label).
    #[arg(long)]
    pub pool: Option<String>,
    /// The node (cordon_node, repair_node).
    #[arg(long)]
    pub node: Option<String>,
    /// The JobSet to restart (cordon_nodepool_and_restart_jobset).
    #[arg(long)]
    pub jobset: Option<String>,
    /// Namespace of the JobSet.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Who asks.
    #[arg(long, env = "NODEMEDIC_REQUESTOR")]
    pub requestor: String,
    /// Why.
    #[arg(long)]
    pub reason: String,
    /// The action's id (generated by the server when absent).
    #[arg(long)]
    pub id: Option<String>,
    /// Check and tell, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse unless the pool has the node count its TPU topology needs.
    #[arg(long)]
    pub expected_nodes: bool,
    /// Override a refusing safety gate (recorded as such).
    #[arg(long)]
    pub force: bool,
    /// The API's base URL.
    #[arg(long, env = "NODEMEDIC_SERVER", default_value = "http://localhost:8080")]
    pub server: String,
    /// Bearer token (a Kubernetes user or service account token).
    #[arg(long, env = "NODEMEDIC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for the server's TLS certificate.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// The request body the arguments describe.
pub fn request_body(args: &ActionArgs) -> serde_json::Value {
    let mut body = serde_json::json!({
        "requestor": args.requestor,
        "reason": args.reason,
        "type": args.kind.api_type().as_str(),
    });
    let mut set = |k: &str, v: serde_json::Value| {
        if let Some(o) = body.as_object_mut() {
            o.insert(k.into(), v);
        }
    };
    for (k, v) in [
        ("id", &args.id),
        ("node_pool", &args.pool),
        ("node_name", &args.node),
        ("jobset_name", &args.jobset),
        ("namespace", &args.namespace),
    ] {
        if let Some(v) = v {
            set(k, v.clone().into());
        }
    }
    if args.dry_run {
        set("dry_run", true.into());
    }
    if args.force {
        set("force", true.into());
    }
    if args.expected_nodes {
        set("preflight_checks", serde_json::json!({"expected_node_counts": true}));
    }
    body
}

pub fn action(args: ActionArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300));
        if let Some(ca) = &args.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem).with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        let http = builder.build().context("building the HTTP client")?;
        let url = format!("{}/actions", args.server.trim_end_matches('/'));
        let mut req = http.post(&url).json(&request_body(&args));
        if let Some(t) = &args.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        println!("{}", text.trim_end());
        if !status.is_success() {
            bail!("the server answered {status}");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_become_seed_002_fields() {
        let args = ActionArgs {
            kind: ActionKind::CordonNodepoolAndRestartJobset,
            pool: Some("test-pool".into()),
            node: None,
            jobset: Some("example-jobset".into()),
            namespace: None,
            requestor: "test-user".into(),
            reason: "High error rate".into(),
            id: None,
            dry_run: true,
            expected_nodes: true,
            force: false,
            server: String::new(),
            token: None,
            ca_file: None,
        };
        assert_eq!(
            request_body(&args),
            serde_json::json!({
                "requestor": "test-user", "reason": "High error rate", "type": "cordon_nodepool_and_restart_jobset",
                "node_pool": "test-pool", "jobset_name": "example-jobset", "dry_run": true,
                "preflight_checks": {"expected_node_counts": true}
            })
        );
    }
}
